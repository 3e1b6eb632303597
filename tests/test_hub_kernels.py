"""model.hub_kernels: transformers' Hub kernels (`use_kernels`, on by default from transformers 5.25) are
left to transformers' default on CPUs and GPUs, and turned off on XLA, where the kernels package has no
device: a model kernelized on the CPU and moved to XLA fails at its first model.train()."""

from __future__ import annotations

from pathlib import Path

import pytest
import transformers
from packaging.version import Version

from launcher.recipe import load_recipe, parse_override
from launcher.train.model import hub_kernels_option, load_model, uses_hub_kernels

REPO = Path(__file__).resolve().parents[1]
HAS_HUB_KERNELS = Version(transformers.__version__).release >= (4, 53)


def recipe_with(model_dir: Path, *sets: str):
    overrides = [parse_override(f"model.name_or_path={model_dir}"), *map(parse_override, sets)]
    return load_recipe(REPO / "recipes" / "mrpc.yaml", overrides).recipe


@pytest.mark.parametrize(
    "setting, device, expected",
    [("auto", "cpu", {}), ("auto", "cuda", {}), ("auto", "xla", {"use_kernels": False}),
     ("off", "cpu", {"use_kernels": False}), ("off", "cuda", {"use_kernels": False}), ("on", "cuda", {"use_kernels": True})],
)  # fmt: skip
def test_auto_keeps_transformers_default_except_on_xla(setting, device, expected):
    assert hub_kernels_option(setting, device) == (expected if HAS_HUB_KERNELS else {})


def test_off_loads_a_model_that_trains_without_kernelizing(tiny_model_dir, monkeypatch):
    recipe = recipe_with(tiny_model_dir, "model.hub_kernels=off")
    model = load_model(recipe, "xla")  # as the XLA ranks load it: on the CPU, moved to the device later
    assert uses_hub_kernels(model) is False
    if HAS_HUB_KERNELS:
        import transformers.integrations.hub_kernels as hub_kernels

        def refuse(*args, **kwargs):
            raise AssertionError("kernelize called for a model loaded with model.hub_kernels off")

        monkeypatch.setattr(hub_kernels, "kernelize", refuse)
    model.train()
    model.eval()
    assert uses_hub_kernels(model) is False


def test_the_default_on_cpu_is_transformers_own(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    ours = load_model(recipe_with(tiny_model_dir), "cpu")
    theirs = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    assert uses_hub_kernels(ours) == uses_hub_kernels(theirs)

"""Model and tokenizer from a Hub id or a local Hugging Face directory."""

from __future__ import annotations

from launcher.recipe.schema import Recipe


def load_tokenizer(recipe: Recipe):
    from transformers import AutoTokenizer

    spec = recipe.model
    return AutoTokenizer.from_pretrained(spec.tokenizer or spec.name_or_path, revision=spec.revision)


def hub_kernels_option(setting: str, device: str) -> dict:
    """from_pretrained's `use_kernels`, or nothing where transformers' default is wanted.

    transformers (4.53+) can swap layers for kernels downloaded from the Hub, on by default from 5.25. The
    kernels package knows no XLA device: a model loaded with them on the CPU and moved to XLA fails at its
    first model.train(), which re-kernelizes for the device it is on now. So auto turns them off there.
    """
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__).release < (4, 53):
        return {}  # no Hub kernels in this transformers: nothing to switch
    if setting == "on":
        return {"use_kernels": True}
    if setting == "off" or device == "xla":
        return {"use_kernels": False}
    return {}


def load_model(recipe: Recipe, device: str = "cpu"):
    from transformers import AutoModelForSequenceClassification

    spec = recipe.model
    return AutoModelForSequenceClassification.from_pretrained(
        spec.name_or_path, num_labels=spec.num_labels, revision=spec.revision,
        **hub_kernels_option(spec.hub_kernels, device),
    )  # fmt: skip


def uses_hub_kernels(model) -> bool:
    """Whether transformers kernelized this model (False where it cannot)."""
    return bool(getattr(model, "use_kernels", False))

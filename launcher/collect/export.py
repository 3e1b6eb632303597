"""Export one Hugging Face model directory from a run: the latest or best checkpoint (DDP weights,
or DeepSpeed ZeRO shards consolidated by DeepSpeed's own zero_to_fp32), or the final model.

The result is a plain `from_pretrained` directory: config.json, model.safetensors, tokenizer files,
plus ftlaunch.json saying where it came from (run, checkpoint, step, metrics).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from launcher.errors import UserError

CHOICES = ("latest", "best", "final")


def choose_checkpoint(run_dir: Path, which: str, metric: str | None) -> tuple[Path, dict]:
    from launcher.recipe.schema import metric_goal
    from launcher.rundir.checkpoints import best_of, complete_checkpoints

    complete = complete_checkpoints(run_dir)
    if not complete:
        raise UserError(f"{run_dir}: no complete checkpoint to export (use --from final for the final model)")
    if which == "latest":
        return complete[-1]
    best = best_of(complete, metric, metric_goal(metric))
    if best is None:
        raise UserError(f"{run_dir}: no checkpoint was written right after an evaluation of {metric}")
    return best


def checkpoint_state_dict(state_dir: Path) -> dict:
    from launcher.collect.zero import is_deepspeed_state, zero_state_dict

    if is_deepspeed_state(state_dir):
        return zero_state_dict(state_dir)
    weights = state_dir / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{state_dir}: no model.safetensors and no DeepSpeed shards")
    from safetensors.torch import load_file

    return load_file(weights)


def export_model(run_dir: Path, out_dir: Path, which: str = "latest", metric: str | None = None) -> dict:
    """Write the HF model dir `out_dir` (must not exist yet); returns what was exported."""
    if out_dir.exists():
        raise UserError(f"--export {out_dir}: already exists; exports never overwrite (choose a new directory)")
    if which not in CHOICES:
        raise UserError(f"--from {which}: use one of {', '.join(CHOICES)}")
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    if which == "final":
        final = run_dir / "model"
        if not (final / "config.json").is_file():
            raise UserError(f"{run_dir}: no final model (the run did not finish): export a checkpoint with --from latest")
        shutil.copytree(final, staging)
        info = {"source": str(final), **json.loads((final / "ftlaunch.json").read_text() or "{}")}
    else:
        from launcher.recipe import load_resolved

        recipe = load_resolved(run_dir / "recipe.yaml")
        metric = metric or recipe.selection_metric
        checkpoint, manifest = choose_checkpoint(run_dir, which, metric)
        hf = checkpoint / "hf"
        if not (hf / "config.json").is_file():
            raise UserError(f"{checkpoint}: no hf/config.json (written by an older ftlaunch)")
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(hf))
        state = checkpoint_state_dict(checkpoint / "state")
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = set(getattr(model, "_tied_weights_keys", None) or [])
        missing = [k for k in missing if k not in tied]
        if missing or unexpected:
            raise UserError(f"{checkpoint}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
        model.save_pretrained(staging, safe_serialization=True)
        AutoTokenizer.from_pretrained(hf).save_pretrained(staging)
        info = {"source": str(checkpoint), "step": manifest["step"], "metrics": manifest.get("metrics", {}), "chosen_by": which}
        if which == "best":
            info["metric"] = metric
    info["run"] = str(run_dir)
    (staging / "ftlaunch.json").write_text(json.dumps(info, indent=2) + "\n")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(out_dir)
    return info

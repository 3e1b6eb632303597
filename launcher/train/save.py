"""The final model as a Hugging Face directory (config, model.safetensors, tokenizer), written atomically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def save_model(accelerator, model, tokenizer, out_dir: Path, info: dict) -> None:
    """All ranks must call this (DeepSpeed ZeRO-3 gathers the state dict collectively)."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        staging = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "ftlaunch.json").write_text(json.dumps(info, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    accelerator.wait_for_everyone()

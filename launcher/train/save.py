"""The final model as a Hugging Face directory (config, model.safetensors, tokenizer), written atomically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from launcher import faults
from launcher.rundir.durable import fsync_dir, fsync_tree


def save_model(accelerator, model, tokenizer, out_dir: Path, info: dict) -> None:
    """All ranks must call this (DeepSpeed ZeRO-3 gathers the state dict collectively)."""
    from accelerate.utils import DistributedType

    state_dict = accelerator.get_state_dict(model)
    if accelerator.distributed_type == DistributedType.XLA:  # safetensors writes host memory only
        state_dict = {name: tensor.cpu() for name, tensor in state_dict.items()}
    upcast = _fp32_masters_under_deepspeed(accelerator, model, state_dict)
    if accelerator.is_main_process:
        staging = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        unwrapped = accelerator.unwrap_model(model)
        _keep_used_weight_conversions(unwrapped)
        unwrapped.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
        if upcast:  # save_pretrained wrote the module's 16-bit dtype; the weights are the fp32 masters
            config_path = staging / "config.json"
            config = json.loads(config_path.read_text())
            config["dtype"] = "float32"
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tokenizer.save_pretrained(staging)
        (staging / "ftlaunch.json").write_text(json.dumps(info, indent=2) + "\n")
        fsync_tree(staging)
        faults.reach("model.staged")
        replaced = out_dir.with_name(f".{out_dir.name}.replaced")
        if out_dir.exists():  # a resumed run saves again: the old copy goes only once the new one is in place
            shutil.rmtree(replaced, ignore_errors=True)
            out_dir.rename(replaced)
        staging.rename(out_dir)
        fsync_dir(out_dir.parent)
        shutil.rmtree(replaced, ignore_errors=True)
    accelerator.wait_for_everyone()


def _keep_used_weight_conversions(model) -> None:
    """save_pretrained reverts the key renamings recorded at load time (`_weight_conversions`). The normal
    loader records only those that matched the checkpoint; the DeepSpeed ZeRO-3 loader (zero.Init,
    transformers 5.23) records all of them, so a BERT saved after ZeRO-3 came out with the legacy names
    LayerNorm.gamma/beta instead of weight/bias. Keep only the renamings that were really applied, so
    every backend saves the same keys."""
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [c for c in conversions if getattr(c, "was_used", lambda: True)()]


def _fp32_masters_under_deepspeed(accelerator, model, state_dict: dict) -> bool:
    """DeepSpeed bf16/fp16 keeps the module itself in 16 bit (fp32 master weights live in the optimizer),
    so get_state_dict gives 16-bit weights where DDP's autocast run saves fp32: put the fp32 masters in
    instead, so every backend saves fp32. Collective under ZeRO (every rank runs it, one parameter at a
    time). True when the main process's state dict now holds only fp32 floating-point tensors."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED or accelerator.mixed_precision == "no":
        return False
    import torch
    from deepspeed.utils import safe_get_full_fp32_param

    for name, param in accelerator.unwrap_model(model).named_parameters():
        full = safe_get_full_fp32_param(param)  # None where no fp32 master exists (fp16 without ZeRO)
        if full is not None and accelerator.is_main_process and name in state_dict:
            state_dict[name] = full.detach().to("cpu", torch.float32, copy=True)
    floats = [t for t in state_dict.values() if t.is_floating_point()]
    return bool(floats) and all(t.dtype == torch.float32 for t in floats)

"""Consolidate a DeepSpeed checkpoint into one plain state dict (ZeRO shards -> full fp32 weights).

A checkpoint written by `accelerator.save_state(STATE)` under DeepSpeed holds the engine's own
checkpoint in STATE/pytorch_model/ (accelerate's tag for the first model: `MODEL_NAME`; a second
prepared model would be pytorch_model_1): per rank, `zero_pp_rank_R_mp_rank_00_model_states.pt`
(module buffers, parameter shapes) and `..._optim_states.pt` (this rank's partition of the fp32 master
weights and Adam moments). Rebuilding the weights is DeepSpeed's own job:
`deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint`, which handles ZeRO 1/2
(flat partitions per param group) and ZeRO 3 (per-parameter partitions, padding). Without ZeRO
(stage 0) the full module is in `mp_rank_00_model_states.pt` and is returned as saved.

Imports torch and deepspeed only when called (collect's other commands stay light).
"""

from __future__ import annotations

from pathlib import Path

from launcher.errors import UserError

ACCELERATE_TAG = "pytorch_model"  # accelerate.utils.MODEL_NAME: the tag save_state gives the first model


def is_deepspeed_state(state_dir: str | Path, tag: str = ACCELERATE_TAG) -> bool:
    """Whether `state_dir` (an accelerate save_state dir) holds a DeepSpeed engine checkpoint."""
    return any((Path(state_dir) / tag).glob("*model_states.pt"))


def zero_state_dict(state_dir: str | Path, tag: str = ACCELERATE_TAG) -> dict:
    """STATE dir of `accelerator.save_state` under DeepSpeed -> {parameter/buffer name: full tensor}.

    ZeRO 1-3: the fp32 master weights, gathered from every rank's shard (CPU tensors), exactly what
    `accelerator.get_state_dict(model)` returns for an fp32 run. Raises UserError (one line) when the
    dir is not a DeepSpeed checkpoint or a rank's shard is missing."""
    state_dir = Path(state_dir)
    ckpt = state_dir / tag
    if not ckpt.is_dir():
        raise UserError(f"{state_dir}: no DeepSpeed checkpoint (expected {tag}/ from accelerator.save_state under DeepSpeed)")
    optim_files = sorted(ckpt.glob("*_optim_states.pt"))
    model_files = sorted(ckpt.glob("*model_states.pt"))
    if not model_files:
        raise UserError(f"{ckpt}: no *model_states.pt files (incomplete checkpoint?)")

    import torch

    if not optim_files or not any(f.name.startswith(("zero_pp_rank_", "bf16_zero_pp_rank_")) for f in optim_files):
        # Stage 0: the engine saved the whole module in one file.
        single = ckpt / "mp_rank_00_model_states.pt"
        if not single.is_file():
            raise UserError(f"{ckpt}: neither ZeRO shards nor mp_rank_00_model_states.pt")
        state = torch.load(single, map_location="cpu", weights_only=False)
        return {name: tensor.detach().clone() for name, tensor in state["module"].items()}

    _check_every_rank(ckpt, optim_files)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        state = get_fp32_state_dict_from_zero_checkpoint(str(state_dir), tag=tag)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"{ckpt}: cannot consolidate the ZeRO shards: {' '.join(str(exc).split())}") from None
    return {name: tensor.contiguous() for name, tensor in state.items()}


def _check_every_rank(ckpt: Path, optim_files: list[Path]) -> None:
    """DeepSpeed's own message for a missing shard is an assertion deep in the loader: say it plainly."""
    import re

    ranks = sorted(int(m.group(1)) for f in optim_files if (m := re.search(r"zero_pp_rank_(\d+)_", f.name)))
    expected = list(range(len(ranks)))
    if ranks != expected:
        missing = sorted(set(range(max(ranks) + 1)) - set(ranks))
        raise UserError(f"{ckpt}: optimizer shard(s) of rank(s) {', '.join(map(str, missing))} missing")

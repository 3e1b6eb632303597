"""launcher.collect.zero.zero_state_dict on ZeRO shards produced for real: a 2-process DeepSpeed run on
CPU (tests/zero_state_script.py, launched by `accelerate launch` with the accelerate.yaml + deepspeed.json
that `ftlaunch submit --dry-run` rendered) ends with accelerator.save_state(...) and saves
accelerator.get_state_dict(model) beside it; the consolidated shards must equal those weights exactly."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from deepspeed_support import build_deepspeed_comm_op
from ftl_support import MRPC_RECIPE, REPO, ftlaunch, local_mrpc_overrides, only_run_dir
from launcher.errors import UserError

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parent / "zero_state_script.py"


@pytest.fixture(scope="module")
def zero_states(tmp_path_factory, tiny_model_dir, mrpc_dir):
    """stage -> OUT dir of the script (state/ + full.pt); each stage runs once, when first asked for."""
    build_deepspeed_comm_op()
    done: dict[int, Path] = {}

    def get(stage: int) -> Path:
        if stage not in done:
            done[stage] = _run_script(tmp_path_factory.mktemp(f"zero{stage}"), stage, tiny_model_dir, mrpc_dir)
        return done[stage]

    return get


def _run_script(tmp: Path, stage: int, model_dir: Path, mrpc_dir: Path) -> Path:
    from launcher.plan import Plan
    from launcher.run.node import child_env

    out_runs = tmp / "runs"
    dry = ftlaunch("submit", MRPC_RECIPE, "--local", "--procs-per-node", "2", "--dry-run",
                   *local_mrpc_overrides(model_dir, mrpc_dir, out_runs,
                                         **{"distributed.backend": "deepspeed", "distributed.zero_stage": stage}))  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    run_dir = only_run_dir(out_runs)
    plan = Plan.from_dict(json.loads((run_dir / "plan.json").read_text()))
    argv = plan.launch_argv(0, plan.rendezvous.head, plan.rendezvous.port)
    assert argv[-3:] == ["-m", "launcher.train", str(run_dir)]
    out = tmp / "out"
    out.mkdir()
    argv = [*argv[:-3], str(SCRIPT), str(run_dir), str(out)]  # the node agent's launch, our script instead
    result = subprocess.run(argv, env=child_env(plan, 0), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.mark.parametrize("stage", [3, 2])
def test_consolidated_shards_equal_the_gathered_fp32_weights(zero_states, stage, tiny_model_dir):
    import torch

    from launcher.collect.zero import is_deepspeed_state, zero_state_dict

    out = zero_states(stage)
    state = out / "state"
    shards = sorted(p.name for p in (state / "pytorch_model").glob("*_optim_states.pt"))
    assert len(shards) == 2, shards  # one optimizer partition per rank
    assert is_deepspeed_state(state)

    consolidated = zero_state_dict(state)
    gathered = torch.load(out / "full.pt", weights_only=True)
    assert sorted(consolidated) == sorted(gathered)
    for name, tensor in gathered.items():
        assert consolidated[name].dtype == torch.float32
        assert torch.equal(consolidated[name], tensor), name
    # the weights really moved away from the initial checkpoint (otherwise equality would prove little)
    from safetensors.torch import load_file

    initial = load_file(tiny_model_dir / "model.safetensors")
    moved = [name for name in initial if name in gathered and not torch.equal(initial[name], gathered[name])]
    assert len(moved) > len(initial) // 2, moved


def test_missing_or_incomplete_checkpoints_are_one_line_errors(zero_states, tmp_path):
    from launcher.collect.zero import is_deepspeed_state, zero_state_dict

    with pytest.raises(UserError, match=r"no DeepSpeed checkpoint \(expected pytorch_model/"):
        zero_state_dict(tmp_path)
    assert not is_deepspeed_state(tmp_path)
    broken = tmp_path / "state"
    shutil.copytree(zero_states(3) / "state", broken)
    (broken / "pytorch_model" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(UserError, match=r"optimizer shard\(s\) of rank\(s\) 0 missing"):
        zero_state_dict(broken)

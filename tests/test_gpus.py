"""Local GPU hosts without a GPU here: NVIDIA and AMD (ROCm) hosts as fake /proc and /sys trees
(FTL_SYSROOT), the count the plan takes, and `--local --nodes N` giving each local node its own GPUs
through the variable that vendor's runtime reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.gpus import local_gpu_count, node_share, vendor
from launcher.plan import HostFacts, make_plan
from launcher.recipe import load_recipe, parse_override
from launcher.run.node import child_env

REPO = Path(__file__).resolve().parents[1]


def nvidia_host(root: Path, gpus: int) -> Path:
    for index in range(gpus):
        (root / "proc/driver/nvidia/gpus" / f"0000:{index:02x}:00.0").mkdir(parents=True)
    return root


def amd_host(root: Path, gpus: int) -> Path:
    """KFD topology: node 0 is the CPU (no SIMDs), then one node per GPU."""
    for node in range(gpus + 1):
        path = root / "sys/class/kfd/kfd/topology/nodes" / str(node)
        path.mkdir(parents=True)
        (path / "properties").write_text(f"cpu_cores_count {16 if node == 0 else 0}\nsimd_count {0 if node == 0 else 304}\n")
    return root


def test_nvidia_and_amd_hosts_are_counted(tmp_path):
    nvidia, amd, cpu = nvidia_host(tmp_path / "nv", 4), amd_host(tmp_path / "amd", 8), tmp_path / "cpu"
    assert [vendor(r) for r in (nvidia, amd, cpu)] == ["nvidia", "amd", None]
    assert [local_gpu_count({}, r) for r in (nvidia, amd, cpu)] == [4, 8, 0]
    assert local_gpu_count({"CUDA_VISIBLE_DEVICES": "0,1"}, nvidia) == 2
    assert local_gpu_count({"CUDA_VISIBLE_DEVICES": "-1"}, nvidia) == 0
    assert local_gpu_count({"ROCR_VISIBLE_DEVICES": "0,1,2"}, amd) == 3
    # ROCR narrows first, HIP indexes what is left: HIP decides what the process sees
    assert local_gpu_count({"ROCR_VISIBLE_DEVICES": "4,5,6,7", "HIP_VISIBLE_DEVICES": "0"}, amd) == 1
    assert local_gpu_count({"CUDA_VISIBLE_DEVICES": "0,1"}, amd) == 2  # HIP reads it too


@pytest.mark.parametrize("environ, node1", [
    ({}, {"CUDA_VISIBLE_DEVICES": "2,3"}),
    ({"CUDA_VISIBLE_DEVICES": "4,5,6,7"}, {"CUDA_VISIBLE_DEVICES": "6,7"}),
])  # fmt: skip
def test_local_nodes_share_an_nvidia_host(tmp_path, environ, node1):
    root = nvidia_host(tmp_path, 4)
    assert node_share(environ, 1, 2, root) == node1


@pytest.mark.parametrize("environ, node1", [
    ({}, {"ROCR_VISIBLE_DEVICES": "4,5,6,7"}),  # nothing set: ROCR, AMD's advice on Linux
    ({"ROCR_VISIBLE_DEVICES": "0,2,4,6,8,10,12,14"}, {"ROCR_VISIBLE_DEVICES": "8,10,12,14"}),
    ({"ROCR_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "HIP_VISIBLE_DEVICES": "7,6,5,4,3,2,1,0"}, {"HIP_VISIBLE_DEVICES": "3,2,1,0"}),
    ({"HIP_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}, {"HIP_VISIBLE_DEVICES": "4,5,6,7"}),
])  # fmt: skip
def test_local_nodes_share_an_amd_host(tmp_path, environ, node1):
    """Only the innermost variable set is split: splitting ROCR and HIP both would index twice."""
    root = amd_host(tmp_path, 8)
    assert node_share(environ, 1, 4, root) == node1


def test_local_run_on_a_multi_gpu_amd_host(tmp_path, monkeypatch):
    """`--local --nodes 2` on an 8-GPU ROCm host: the plan sees 8 GPUs, each node agent gives its
    accelerate launch 4 of them."""
    root = amd_host(tmp_path / "host", 8)
    monkeypatch.setenv("FTL_SYSROOT", str(root))
    for name in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    overrides = [parse_override(s) for s in ("cluster.nodes=2", "cluster.gpus_per_node=4")]
    recipe = load_recipe(REPO / "recipes" / "mrpc.yaml", overrides).recipe
    plan = make_plan(recipe, "local", str(tmp_path / "run"), HostFacts(gpus=local_gpu_count()), local_port=29500)
    assert (plan.device, plan.world_size) == ("cuda", 8)
    assert [child_env(plan, rank)["ROCR_VISIBLE_DEVICES"] for rank in (0, 1)] == ["0,1,2,3", "4,5,6,7"]
    with pytest.raises(Exception, match="this host has 8 GPU"):
        make_plan(recipe.model_copy(update={"cluster": recipe.cluster.model_copy(update={"nodes": 3})}), "local",
                  str(tmp_path / "run"), HostFacts(gpus=local_gpu_count()), local_port=29500)  # fmt: skip

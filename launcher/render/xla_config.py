"""The XLA part of the Accelerate config: the TPU fields `accelerate config` writes for a TPU.

`tpu_use_cluster` stays false: accelerate's own pod launcher needs torch_xla's `xla_dist`, which
torch_xla 2.x no longer ships. Instead every TPU worker runs `accelerate launch` itself (tpu_pod.sh
starts the same command on all of them), and accelerate's XLA launcher starts one process per local
device. `tpu_name`/`tpu_zone` let `accelerate tpu-config --config_file RUN/accelerate.yaml` reach the
same TPU.
"""

from __future__ import annotations

from launcher.plan import Plan


def xla_accelerate_settings(plan: Plan) -> dict:
    tpu = (plan.xla or {}).get("tpu") or {}
    return {
        "distributed_type": "XLA",
        "main_process_ip": None,  # PJRT finds its peers itself
        "main_process_port": None,
        "tpu_name": tpu.get("name"),
        "tpu_zone": tpu.get("zone"),
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
        "tpu_env": [],
        "main_training_function": "main",  # launcher.train.__main__.main, called by accelerate's XLA launcher
    }

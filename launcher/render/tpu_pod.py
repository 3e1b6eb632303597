"""The TPU pod script: plan + the recipe's cluster section -> one bash script run on the submitting
machine (pure; nothing written here).

A Cloud TPU slice is one TPU VM per host, reached with gcloud. The script
1. checks the TPU is the accelerator type the run was planned for (hosts x chips come from it),
2. copies the run dir to every worker, at the same absolute path,
3. runs the same command on every worker (`gcloud compute tpus tpu-vm ssh NAME --worker=all
   --command='bash RUN/tpu_worker.sh'`); the worker script runs cluster.setup, then the node agent
   with the worker's number from the TPU VM metadata as its machine rank, its output also going to
   logs/node-N.log,
4. copies every worker's records, status files and logs back, and worker 0's outputs (model,
   results, checkpoints).
`ftlaunch submit` runs it and then writes the report from all workers' records.

Quoting: recipe values are shell-quoted where they land (the TPU name, zone, project, env values).
`cluster.setup` lines are shell code by design and go in verbatim. Run dir paths must
be plain (letters, digits, `._/+=@,-`): scp hands remote paths to the worker's shell.
"""

from __future__ import annotations

import re
import shlex

from launcher import __version__
from launcher.errors import UserError
from launcher.plan import Plan
from launcher.recipe.schema import Recipe
from launcher.render.shell_templates import template

SCRIPT_NAME = "tpu_pod.sh"
WORKER_SCRIPT = "tpu_worker.sh"
# The TPU VM metadata server says which worker of the slice this VM is (as JAX's TPU cluster detection reads it).
WORKER_ID_URL = "http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number"
# What each worker's rank 0 writes beside the records (copied back from worker 0).
MAIN_OUTPUTS = ("model", "results.json", "checkpoints", "tensorboard")
PER_WORKER = ("metrics", "status", "logs")

_PLAIN_PATH = re.compile(r"^/[A-Za-z0-9._/+=@,-]+$")


def render_tpu_files(plan: Plan, recipe: Recipe) -> dict[str, str]:
    """{"tpu_pod.sh": what runs here, "tpu_worker.sh": what every worker runs (copied with the run dir)}."""
    if plan.target != "tpu" or not plan.xla or not plan.xla.get("tpu"):
        raise ValueError(f"a TPU pod script is for the tpu target, not {plan.target!r}")
    if not _PLAIN_PATH.match(plan.run_dir):
        raise UserError(
            f"output_dir: the run dir {plan.run_dir!r} is copied to the TPU workers with scp, which hands the "
            "path to the worker's shell: pick an output_dir of letters, digits and ._/+=@,- only"
        )
    tpu = plan.xla["tpu"]
    where = [f"--zone={tpu['zone']}"] + ([f"--project={tpu['project']}"] if tpu.get("project") else [])
    context = {
        "version": __version__,
        "plan": plan,
        "tpu": tpu,
        "accelerator_type": plan.xla["accelerator_type"],
        "where": where,
        "parent": plan.run_dir.rsplit("/", 1)[0] or "/",
        "worker_script": f"{plan.run_dir}/{WORKER_SCRIPT}",
        "per_worker": [f"{plan.run_dir}/{name}" for name in PER_WORKER],
        "main_outputs": [f"{plan.run_dir}/{name}" for name in MAIN_OUTPUTS],
        "setup": list(recipe.cluster.setup),
        "env": {"PJRT_DEVICE": plan.xla["pjrt_device"], "PYTHONUNBUFFERED": "1", **recipe.cluster.env},
        "worker_id_url": WORKER_ID_URL,
        "node_command": " ".join(
            '"$FTL_WORKER"' if word == "{machine_rank}" else shlex.quote(word) for word in plan.node_command
        ),
    }
    return {name: template(name.replace(".sh", ".j2")).render(**context) for name in (SCRIPT_NAME, WORKER_SCRIPT)}

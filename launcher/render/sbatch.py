"""The sbatch script: plan + the recipe's cluster section -> one batch script (pure; nothing written).

One script per submission: a single run, or a job array whose task N runs the N-th run dir of a
sweep. Every node runs ONE node agent, started by ONE `srun --ntasks-per-node=1`; its machine rank
is `$SLURM_NODEID`, expanded by the task's own shell (never on the batch host, where it is 0).

Quoting: every recipe or CLI value that lands in the script goes through a filter: `sh` (shlex.quote)
for shell code, `sbatch` for `#SBATCH` lines. sbatch reads its `#SBATCH` lines with its own tokenizer
(src/sbatch/opt.c `_get_argument`: '...' and "..." group, a backslash escapes the next character, an
unquoted `#` starts a comment, no expansion of any kind), so shell quoting is not the right
quoting there: a value is double-quoted with `\\` and `"` escaped. Values that cannot be written on one
line (newlines, control characters) are refused. `cluster.setup` lines are shell code by design and go
in verbatim.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from launcher import __version__
from launcher.errors import UserError
from launcher.hfcache import OFFLINE_ENV
from launcher.plan import Plan
from launcher.plan.plan import PORT_SHELL_EXPR
from launcher.recipe.schema import Recipe
from launcher.render.shell_templates import template
from launcher.rundir.layout import REQUEUE_MARKER

SCRIPT_NAME = "sbatch.sh"
NODE_LOG = "logs/node-%n.log"  # srun: %n = node index within the job (0..N-1) = the machine rank
BATCH_LOG = "logs/slurm-%j.out"
ARRAY_BATCH_LOG = "logs/slurm-%A_%a.out"

# Variables of the script (templates/sbatch.j2) that each task's shell expands (exported before srun).
RUN_DIR_VAR = "FTL_RUN_DIR"
PYTHON_VAR = "FTL_PYTHON"
HEAD_VAR = "FTL_HEAD"
PORT_VAR = "FTL_PORT"

_SBATCH_BARE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def sbatch_quote(value: object) -> str:
    """Quote one value for a `#SBATCH` line, as sbatch's own tokenizer reads it (not as a shell does)."""
    text = str(value)
    if _CONTROL.search(text):
        raise ValueError(f"{text!r} has a control character (a #SBATCH option is one line)")
    if _SBATCH_BARE.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def comment(value: object) -> str:
    """Text for a `#` comment line: control characters escaped, so nothing can end the comment."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))


@dataclass(frozen=True)
class ContainerLaunch:
    runtime: str  # pyxis | apptainer
    image: str
    mounts: list[str]  # SRC:DST[:flags]
    gpus: bool


def render_sbatch(plan: Plan, recipe: Recipe, cache_env: Mapping[str, str] | None = None) -> str:
    """The batch script for one run (written to RUN_DIR/sbatch.sh)."""
    _check_slurm_plan(plan)
    script_path = f"{plan.run_dir}/{SCRIPT_NAME}"
    context = _context(plan, recipe, cache_env or {}, script_path)
    context.update(
        array=None,
        run_dirs=[plan.run_dir],
        output=f"{plan.run_dir}/{BATCH_LOG}",
    )
    return template("sbatch.j2").render(**context)


def render_array_sbatch(
    plans: list[Plan], recipe: Recipe, sweep_dir: str, cache_env: Mapping[str, str] | None = None
) -> str:
    """One job array for a sweep: task N runs plans[N] (its own run dir, recipe, plan, accelerate config).

    `recipe` is any point's recipe: the cluster section must be the same for every point (checked
    by the caller, which compares each point's single-run header)."""
    if not plans:
        raise ValueError("a job array needs at least one run")
    for plan in plans:
        _check_slurm_plan(plan)
    _check_path("output_dir", sweep_dir)
    first = plans[0]
    context = _context(first, recipe, cache_env or {}, f"{sweep_dir}/{SCRIPT_NAME}")
    context.update(
        array=f"0-{len(plans) - 1}",
        run_dirs=[plan.run_dir for plan in plans],
        output=f"{sweep_dir}/{ARRAY_BATCH_LOG}",
        sweep_dir=sweep_dir,
    )
    return template("sbatch.j2").render(**context)


def sbatch_header_lines(plan: Plan, recipe: Recipe) -> list[str]:
    """The `#SBATCH` lines of a single-run script without the per-run ones (name, output):
    what every point of a job array must agree on."""
    options = [(k, v) for k, v in _sbatch_options(plan, recipe) if k not in ("--output", "--error")]
    return [f"#SBATCH {k}={sbatch_quote(v)}" if v is not None else f"#SBATCH {k}" for k, v in options]


# ---------------------------------------------------------------------------------------------


def _check_slurm_plan(plan: Plan) -> None:
    if plan.target != "slurm":
        raise ValueError(f"an sbatch script is for the slurm target, not {plan.target!r}")
    _check_path("output_dir", plan.run_dir)


def _check_path(field: str, path: str) -> None:
    # Slurm reads %x in --output/srun --output as a pattern, and a backslash turns patterns off.
    bad = sorted({c for c in path if c in "%\\" or _CONTROL.match(c)})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise UserError(
            f"{field}: {path!r} has {shown}: Slurm reads these in log file names; pick a directory without them"
        )


def _sbatch_options(plan: Plan, recipe: Recipe) -> list[tuple[str, object | None]]:
    cluster = recipe.cluster
    options: list[tuple[str, object | None]] = [
        ("--job-name", plan.name),
        ("--nodes", f"{plan.min_nodes}-{plan.nodes}" if plan.min_nodes else plan.nodes),  # a range: elastic
        ("--ntasks-per-node", 1),  # one node agent per node; it starts the node's ranks itself
    ]
    if plan.gpus_per_node:
        options.append(("--gpus-per-node", plan.gpus_per_node))
    for flag, value in (
        ("--cpus-per-task", cluster.cpus_per_task),
        ("--mem", cluster.mem),
        ("--partition", cluster.partition),
        ("--account", cluster.account),
        ("--qos", cluster.qos),
        ("--time", cluster.time),
        ("--constraint", cluster.constraint),
    ):
        if value is not None:
            options.append((flag, value))
    options.append(("--open-mode", "append"))  # a requeued job appends to its logs
    options.append(("--requeue", None) if cluster.max_requeues else ("--no-requeue", None))
    options.append(("--signal", f"USR2@{cluster.preempt_signal_s}"))  # USR2: NCCL may catch USR1
    return options


def _extra_sbatch_args(recipe: Recipe) -> list[str]:
    args = []
    for index, arg in enumerate(recipe.cluster.sbatch_args):
        if not arg.startswith("-"):
            raise UserError(
                f"cluster.sbatch_args.{index}: {arg!r} is not an option: "
                "one option per item, e.g. --exclusive or --gres=gpu:4"
            )
        args.append(_sbatch_value(f"cluster.sbatch_args.{index}", arg))
    return args


def _sbatch_value(field: str, value: object) -> str:
    try:
        return sbatch_quote(value)
    except ValueError as exc:
        raise UserError(f"{field}: {exc}") from None


_OPTION_FIELDS = {
    "--job-name": "name",
    "--cpus-per-task": "cluster.cpus_per_task",
    "--mem": "cluster.mem",
    "--partition": "cluster.partition",
    "--account": "cluster.account",
    "--qos": "cluster.qos",
    "--time": "cluster.time",
    "--constraint": "cluster.constraint",
}


def _context(plan: Plan, recipe: Recipe, cache_env: Mapping[str, str], script_path: str) -> dict:
    cluster = recipe.cluster
    sbatch = []
    for flag, value in _sbatch_options(plan, recipe):
        if value is None:
            sbatch.append(flag)
        else:
            sbatch.append(f"{flag}={_sbatch_value(_OPTION_FIELDS.get(flag, flag), value)}")
    env = {**OFFLINE_ENV, **{k: v for k, v in cache_env.items() if v}}
    for name, value in cluster.env.items():
        if _CONTROL.search(name):
            raise UserError(f"cluster.env.{comment(name)}: not a valid environment variable name")
        env[name] = value
    container = None
    if cluster.container:
        container = _container_launch(plan, recipe, cache_env)
    return {
        "version": __version__,
        "plan": plan,
        "cluster": cluster,
        "script_path": script_path,
        "sbatch": sbatch,
        "sbatch_args": _extra_sbatch_args(recipe),
        "env": env,
        "setup": list(cluster.setup),
        "python": plan.python,
        "port_expr": PORT_SHELL_EXPR,
        "node_command": _node_command(plan),
        "container": container,
        "max_requeues": cluster.max_requeues,
        "requeue_marker": REQUEUE_MARKER,
        "node_log": NODE_LOG,
    }


def _node_command(plan: Plan) -> str:
    """The plan's node command with the run dir, interpreter and placeholders as the task's own
    variables; returned as ONE shell-quoted word for `bash -c` (expanded inside each task)."""
    variables = {
        "{machine_rank}": '"$SLURM_NODEID"',
        "{head}": f'"${HEAD_VAR}"',
        "{port}": f'"${PORT_VAR}"',
    }
    words = []
    for index, token in enumerate(plan.node_command):
        if index == 0 and token == plan.python:
            words.append(f'"${PYTHON_VAR}"')
        elif token == plan.run_dir:
            words.append(f'"${RUN_DIR_VAR}"')
        elif token in variables:
            words.append(variables[token])
        else:
            words.append(shlex.quote(token))
    return shlex.quote("exec " + " ".join(words))


def _container_launch(plan: Plan, recipe: Recipe, cache_env: Mapping[str, str]) -> ContainerLaunch:
    spec = recipe.cluster.container
    assert spec is not None
    mounts: list[str] = []
    for index, mount in enumerate(spec.mounts):
        if _CONTROL.search(mount) or "," in mount:
            raise UserError(f"cluster.container.mounts.{index}: {mount!r}: one SRC:DST mount per item, no commas")
        mounts.append(mount)
    # What the node agent and the training read must be visible inside at the same path:
    # the run dir (every run dir of an array: they share the parent), the Hugging Face caches,
    # local model/tokenizer dirs, local data files, the datasets cache dir.
    needed = [str(Path(plan.run_dir).parent)]
    needed += [cache_env[k] for k in ("HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE") if cache_env.get(k)]
    if recipe.model is not None:
        for name in (recipe.model.name_or_path, recipe.model.tokenizer):
            if name and name.startswith("/"):
                needed.append(name)
    if recipe.data is not None and recipe.data.files:
        needed += [str(Path(path).parent) for path in recipe.data.files.values()]
    if recipe.data is not None and recipe.data.cache_dir:
        needed.append(recipe.data.cache_dir)
    if recipe.entrypoint is not None:  # modules beside the user's script (on PYTHONPATH; the copy is in the run dir)
        needed.append(str(Path(recipe.entrypoint.script).parent))
    targets = [m.split(":")[1] if ":" in m else m for m in mounts]
    for path in needed:
        if any(path == t or path.startswith(t.rstrip("/") + "/") for t in targets):
            continue
        if "," in path or ":" in path:
            raise UserError(
                f"cluster.container: {path!r} must be mounted in the container but has ',' or ':'; "
                "mount a parent directory in cluster.container.mounts"
            )
        mounts.append(f"{path}:{path}")
        targets.append(path)
    return ContainerLaunch(spec.runtime, spec.image, mounts, gpus=plan.gpus_per_node > 0)

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

GPU nodes get what a careful user would set, each with its reason in a comment of the script:
--cpus-per-task (the node's cores, from the one `sinfo` query of the submit, when the recipe leaves
cluster.cpus_per_task unset), --gpus-per-node, `srun --gpu-bind=none`, NCCL's error handling and
warnings, the submitting shell's NCCL network settings, and how the node agent sets OMP_NUM_THREADS.
"""

from __future__ import annotations

import re
import shlex
import textwrap
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
from launcher.secrets import looks_secret

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
class ClusterFacts:
    """What the submitting side knows beyond the recipe (launcher.submit.preflight.SlurmQuery): the
    partition's nodes as sinfo described them (None: Slurm did not answer), and the NCCL network
    settings of the submitting shell, which the script keeps."""

    partition: str | None = None
    node_cpus: int | None = None  # cores of the nodes the job fits on (the fewest)
    node_gpus: int = 0  # GPUs of those nodes
    nccl_env: tuple[tuple[str, str], ...] = ()


# NCCL's choice of network: set by whoever knows the fabric (a site's docs, a module file), passed on.
NCCL_PASSTHROUGH = ("NCCL_SOCKET_IFNAME", "NCCL_IB_")


def nccl_passthrough(environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """NCCL_SOCKET_IFNAME and NCCL_IB_* as set in `environ` (never a name that looks like a credential)."""
    names = [n for n in environ if n.startswith(NCCL_PASSTHROUGH) and n == n.upper() and not looks_secret(n)]
    return tuple((name, environ[name]) for name in sorted(names) if not _CONTROL.search(environ[name]))


@dataclass(frozen=True)
class ContainerLaunch:
    runtime: str  # pyxis | apptainer
    image: str
    mounts: list[str]  # SRC:DST[:flags]
    gpus: bool


def render_sbatch(
    plan: Plan, recipe: Recipe, cache_env: Mapping[str, str] | None = None, facts: ClusterFacts | None = None
) -> str:
    """The batch script for one run (written to RUN_DIR/sbatch.sh)."""
    _check_slurm_plan(plan)
    script_path = f"{plan.run_dir}/{SCRIPT_NAME}"
    context = _context(plan, recipe, cache_env or {}, script_path, facts or ClusterFacts())
    context.update(
        array=None,
        run_dirs=[plan.run_dir],
        output=f"{plan.run_dir}/{BATCH_LOG}",
    )
    return template("sbatch.j2").render(**context)


def render_array_sbatch(
    plans: list[Plan], recipe: Recipe, sweep_dir: str, cache_env: Mapping[str, str] | None = None,
    facts: ClusterFacts | None = None,
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
    context = _context(first, recipe, cache_env or {}, f"{sweep_dir}/{SCRIPT_NAME}", facts or ClusterFacts())
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


def _sbatch_options(plan: Plan, recipe: Recipe, cpus_per_task: int | None = None) -> list[tuple[str, object | None]]:
    cluster = recipe.cluster
    options: list[tuple[str, object | None]] = [
        ("--job-name", plan.name),
        ("--nodes", f"{plan.min_nodes}-{plan.nodes}" if plan.min_nodes else plan.nodes),  # a range: elastic
        ("--ntasks-per-node", 1),  # one node agent per node; it starts the node's ranks itself
    ]
    if plan.gpus_per_node and not _asks_for_gpus(recipe.cluster.sbatch_args):
        options.append(("--gpus-per-node", plan.gpus_per_node))
    for flag, value in (
        ("--cpus-per-task", cluster.cpus_per_task or cpus_per_task),
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


# cluster.sbatch_args that ask for GPUs themselves (e.g. --gres=gpu:a100:8): then no --gpus-per-node of ftlaunch's
_GPU_OPTIONS = ("--gres", "--gpus", "-G")


def _asks_for_gpus(sbatch_args: list[str]) -> bool:
    return any(arg.startswith(_GPU_OPTIONS) for arg in sbatch_args)


def _default_cpus(plan: Plan, recipe: Recipe, facts: ClusterFacts) -> tuple[int | None, str]:
    """--cpus-per-task when the recipe leaves it unset, and why (a comment of the script)."""
    if recipe.cluster.cpus_per_task or facts.node_cpus is None:
        return None, ""
    ranks = f"all {plan.procs_per_node} rank(s) of its node"
    if plan.gpus_per_node and facts.node_gpus > plan.gpus_per_node:
        cpus = max(1, facts.node_cpus * plan.gpus_per_node // facts.node_gpus)
        share = (f"{cpus} of the node's {facts.node_cpus} cores, the share of its {plan.gpus_per_node} of "
                 f"{facts.node_gpus} GPUs")  # fmt: skip
    else:
        cpus, share = facts.node_cpus, f"the node's {facts.node_cpus} cores"
    return cpus, (
        f"--cpus-per-task={cpus}: the one task per node starts {ranks}, so it gets {share} (partition "
        f"{facts.partition}, as sinfo describes it); with Slurm's default of 1 CPU per task, cgroups can pin "
        "every rank of a node to one core. cluster.cpus_per_task sets another number."
    )


def _option_reasons(plan: Plan, recipe: Recipe, cpus_reason: str) -> dict[str, str]:
    """Why ftlaunch adds the options a user did not write: one comment line above each."""
    reasons = {"--cpus-per-task": cpus_reason} if cpus_reason else {}
    if plan.gpus_per_node and not _asks_for_gpus(recipe.cluster.sbatch_args):
        reasons["--gpus-per-node"] = (
            f"--gpus-per-node={plan.gpus_per_node}: one GPU per rank (cluster.gpus_per_node; a --gres or --gpus "
            "option in cluster.sbatch_args replaces this line)"
        )
    return reasons


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


def _context(plan: Plan, recipe: Recipe, cache_env: Mapping[str, str], script_path: str, facts: ClusterFacts) -> dict:
    cluster = recipe.cluster
    cpus, cpus_reason = _default_cpus(plan, recipe, facts)
    reasons = _option_reasons(plan, recipe, cpus_reason)
    sbatch = []
    for flag, value in _sbatch_options(plan, recipe, cpus):
        line = flag if value is None else f"{flag}={_sbatch_value(_OPTION_FIELDS.get(flag, flag), value)}"
        sbatch.append({"line": line, "why": _lines(reasons.get(flag, ""))})
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
        "cpus_per_task": cluster.cpus_per_task or cpus,
        "gpu": plan.device == "cuda",
        "nccl_env": [(n, v) for n, v in facts.nccl_env if n not in cluster.env],
        "nccl_defaults": [(n, v) for n, v in NCCL_DEFAULTS if n not in cluster.env],
        "omp_threads": _lines(_omp_comment(plan, cluster.cpus_per_task or cpus)),
    }


# What a careful user sets for NCCL; a value set before sbatch (or in cluster.env) wins.
NCCL_DEFAULTS = (
    ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),  # abort NCCL and end the rank on a failed or timed-out collective
    ("NCCL_DEBUG", "WARN"),  # NCCL's warnings (network fallbacks, InfiniBand errors) in the node logs
)


def _lines(text: str) -> list[str]:
    """A reason as comment lines of the script (each passes the `comment` filter)."""
    return textwrap.wrap(text, width=100, break_on_hyphens=False) if text else []


def _omp_comment(plan: Plan, cpus: int | None) -> str:
    ranks = plan.procs_per_node
    if cpus:
        share = f"{cpus} // {ranks} = {max(1, cpus // ranks)} thread(s)"
    else:
        share = f"SLURM_CPUS_PER_TASK // {ranks} threads"
    return (f"OMP_NUM_THREADS: the node agent gives each of the node's {ranks} rank(s) its share of the task's CPUs "
            f"({share}), so that ranks do not oversubscribe the cores; export OMP_NUM_THREADS before sbatch to choose")


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

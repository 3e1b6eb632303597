"""The one path every submission takes: recipe -> plan -> rendered files -> new run dir.

`ftlaunch submit --dry-run` is this path stopped before dispatch, so what it prints is what runs.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass
from pathlib import Path

from launcher.plan import HostFacts, Plan, make_plan
from launcher.plan.datasize import split_rows
from launcher.recipe import Override, Recipe, dump_recipe, load_recipe
from launcher.render import render_files
from launcher.rundir.create import new_run_dir, write_run_dir
from launcher.rundir.layout import ENV_FILE, LOGS_DIR, RECIPE_FILE, STATUS_DIR
from launcher.submit.envrecord import render_env_record
from launcher.submit.preflight import SlurmQuery
from launcher.hfcache import hf_cache_env
from launcher.submit.script import script_files

LISTEN_PORT_FLOOR = 10000  # below: well-known and registered services


@dataclass(frozen=True)
class PreparedRun:
    recipe: Recipe
    plan: Plan
    files: dict[str, str | bytes]  # bytes: the copy of a user's script, exactly as it was
    run_dir: Path


def prepare_run(
    recipe_path: str | None,
    overrides: list[Override],
    target: str,
    host: HostFacts,
    argv: list[str],
    dry_run: bool = False,
    slurm: SlurmQuery | None = None,
) -> PreparedRun:
    """Validate, plan and render in memory; raises UserError before anything touches the disk.
    target: local, slurm, tpu, or remote (slurm, or tpu where the recipe's cluster.accelerator says so).
    A dry run's dir is named <name>-dryrun-...: kept apart from real runs, and pruned.
    slurm: the submit's one query of the cluster, for the sbatch script's defaults (None: no query)."""
    recipe = load_recipe(recipe_path, overrides).recipe
    if target == "remote":  # not this host: the TPU the recipe names, or Slurm
        target = "tpu" if recipe.cluster.accelerator == "tpu" else "slurm"
    run_dir = new_run_dir(recipe.output_dir, recipe.name, dry_run=dry_run)
    port = free_port_pair() if target == "local" else None
    plan = make_plan(recipe, target, str(run_dir), host, split_rows(recipe), local_port=port)
    # A Slurm job reads the Hugging Face caches this host resolves (and the offline check looked in).
    cache_env = hf_cache_env() if target == "slurm" else None
    facts = slurm.facts_for(recipe) if slurm is not None and target == "slurm" else None
    files = {
        RECIPE_FILE: _recipe_header(recipe_path, overrides) + dump_recipe(recipe),
        **render_files(plan, recipe, cache_env, facts),
        ENV_FILE: render_env_record(argv),
        **script_files(plan),  # the user's own script: RUN/script/NAME.py (bytes) + manifest.json
    }
    return PreparedRun(recipe, plan, files, run_dir)


def write_prepared(prepared: PreparedRun) -> None:
    """The run dir, whole; logs/ and status/ exist before anything is launched (sbatch opens its log there)."""
    write_run_dir(prepared.run_dir, prepared.files, dirs=(LOGS_DIR, STATUS_DIR))


def _recipe_header(recipe_path: str | None, overrides: list[Override]) -> str:
    lines = [f"# Resolved by ftlaunch from {recipe_path or 'no recipe file'}"]
    for override in overrides:
        flag = f"--set {override.text}" if override.origin == "--set" else override.text
        lines.append("#   " + flag.encode("unicode_escape").decode("ascii"))  # stays one comment line
    return "\n".join(lines) + "\n"


def free_port_pair() -> int:
    """An even port P with P and P+1 free right now (rendezvous + join check), for local runs.

    Drawn below the kernel's ephemeral range, never from bind(0): an ephemeral port can be taken,
    between this check and the rendezvous' own bind, as the local end of any outgoing connection on
    the host (the ranks' gloo connections included), and the rendezvous then fails with EADDRINUSE.
    """
    low, high = listen_port_range()
    draw = random.Random()  # its own generator: a seeded global `random` must not pick the same port twice
    for _ in range(200):
        port = draw.randrange(low + low % 2, high, 2)  # even, and port + 1 <= high
        if _free(port) and _free(port + 1):
            return port
    raise OSError(f"no free local port pair found in {low}-{high}")


def listen_port_range(proc_file: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int]:
    """Ports a listener can hold without racing outgoing connections: outside the ephemeral range."""
    try:
        ephemeral_low, ephemeral_high = (int(field) for field in proc_file.read_text().split())
    except (OSError, ValueError):
        ephemeral_low, ephemeral_high = 32768, 60999  # Linux's default
    if ephemeral_low - 1 - LISTEN_PORT_FLOOR >= 1000:
        return LISTEN_PORT_FLOOR, ephemeral_low - 1
    if 65535 - ephemeral_high - 1 >= 1000:
        return ephemeral_high + 1, 65535
    return LISTEN_PORT_FLOOR, 65535  # no room outside it: the free-port check is all there is


def _free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True

"""The Jinja environment of every generated shell script (sbatch.sh, tpu_pod.sh, tpu_worker.sh):
strict (an unknown variable is an error, not an empty string), no HTML escaping, and the quoting
filters every recipe or CLI value goes through: `sh` (shlex.quote), `sbatch` (a #SBATCH line's own
quoting) and `comment` (control characters escaped)."""

from __future__ import annotations

import shlex
from functools import lru_cache


@lru_cache(maxsize=None)
def template(name: str):
    import jinja2

    from launcher.render.sbatch import comment, sbatch_quote

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("launcher", "render/templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["sh"] = lambda value: shlex.quote(str(value))
    env.filters["comment"] = comment
    env.filters["sbatch"] = sbatch_quote
    return env.get_template(name)

"""Render: plan -> the text of every generated file (pure functions, nothing written here)."""

from __future__ import annotations

from launcher.plan import Plan
from launcher.render.accelerate_config import render_accelerate_config
from launcher.render.commands import render_plan_json


def render_files(plan: Plan) -> dict[str, str]:
    """File name (relative to the run dir) -> content."""
    files = {
        "plan.json": render_plan_json(plan),
        "accelerate.yaml": render_accelerate_config(plan),
    }
    return files

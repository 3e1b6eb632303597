"""The report's XLA section: graph compilations per epoch and any after the first (a shape leak)."""

from __future__ import annotations

from launcher.collect.records import by_type


def xla_section(merged: list[dict]) -> dict | None:
    """From the summary records (every rank counts its own compilations; the highest count is reported).
    None for a run that did not run on XLA."""
    summaries = [s for s in by_type(merged, "summary") if "xla_compiles" in s]
    if not summaries:
        return None
    worst = max(summaries, key=lambda s: (s.get("xla_compiles_after_first_epoch") or 0, s["xla_compiles"]))
    return {
        "compiles": worst["xla_compiles"],
        "by_epoch": worst.get("xla_compiles_by_epoch") or {},
        "after_first_epoch": worst.get("xla_compiles_after_first_epoch") or 0,
        "leak_steps": worst.get("xla_leak_steps") or [],
        "rank": worst.get("rank"),
    }


def xla_rows(report: dict) -> list[tuple[str, str]]:
    xla = report.get("xla")
    if not xla:
        return []
    epochs = ", ".join(f"epoch {epoch}: {count}" for epoch, count in xla["by_epoch"].items())
    if xla["after_first_epoch"]:
        steps = ", ".join(map(str, xla["leak_steps"][:10])) + (" ..." if len(xla["leak_steps"]) > 10 else "")
        verdict = f"{xla['after_first_epoch']} after the first epoch (steps {steps}): shapes are NOT static"
    else:
        verdict = "none after the first epoch: static shapes"
    return [("XLA compilations", f"{xla['compiles']} ({epochs}); {verdict}")]

"""curves.png: train loss (raw and EMA-smoothed), learning rate and eval metrics against step.

Drawn with matplotlib's Agg canvas directly (no pyplot: no global backend switch, no display, safe
inside a training process). `series()` is the data drawn; tests check the picture from it.
"""

from __future__ import annotations

import io

from launcher.collect.records import by_type

EMA_WEIGHT = 0.6  # TensorBoard's default smoothing
FIGSIZE = (15.0, 4.5)  # inches
DPI = 100  # -> a 1500 x 450 PNG


def ema(values: list[float], weight: float = EMA_WEIGHT) -> list[float]:
    """Debiased exponential moving average (as TensorBoard's smoothing: the first point is unbiased)."""
    out, last, norm = [], 0.0, 0.0
    for value in values:
        last = weight * last + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out.append(last / norm)
    return out


def series(merged: list[dict], eval_history: list[dict]) -> dict[str, tuple[list, list]]:
    """name -> (steps, values). train_loss is the mean over ranks at each logged step (each rank's
    loss is its mean since its last record); lr is the lowest rank's (the same on every rank)."""
    losses: dict[int, list[float]] = {}
    lrs: dict[int, tuple[int, float]] = {}
    for record in by_type(merged, "train"):
        step = record["step"]
        if isinstance(record.get("loss"), (int, float)):
            losses.setdefault(step, []).append(float(record["loss"]))
        if isinstance(record.get("lr"), (int, float)):
            rank = record.get("rank", 0)
            if step not in lrs or rank < lrs[step][0]:
                lrs[step] = (rank, float(record["lr"]))
    steps = sorted(losses)
    loss = [sum(losses[s]) / len(losses[s]) for s in steps]
    out: dict[str, tuple[list, list]] = {
        "train_loss": (steps, loss),
        "train_loss_ema": (steps, ema(loss)),
        "lr": (sorted(lrs), [lrs[s][1] for s in sorted(lrs)]),
    }
    for name in sorted({name for h in eval_history for name in h["metrics"]}):
        points = [(h["step"], h["metrics"][name]) for h in eval_history
                  if isinstance(h["metrics"].get(name), (int, float))]  # fmt: skip
        out[name] = ([p[0] for p in points], [p[1] for p in points])
    return out


def render_png(data: dict[str, tuple[list, list]], title: str, resumed: dict[int, int] | None = None) -> bytes:
    """The three panels; `resumed` (attempt -> step it resumed from) draws a dashed line per restart."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    loss_ax, lr_ax, eval_ax = figure.subplots(1, 3, sharex=True)  # one step axis for the three panels
    figure.suptitle(title)

    steps, raw = data["train_loss"]
    dots = "." if len(steps) < 50 else None
    loss_ax.plot(steps, raw, color="tab:blue", alpha=0.35, linewidth=1, marker=dots, label="train loss")
    loss_ax.plot(*data["train_loss_ema"], color="tab:blue", linewidth=2, label=f"train loss (EMA {EMA_WEIGHT})")
    eval_names = [name for name in data if name not in ("train_loss", "train_loss_ema", "lr")]
    for name in [n for n in eval_names if "loss" in n]:
        loss_ax.plot(*data[name], color="tab:red", marker="o", linewidth=1.5, label=name)
    _finish(loss_ax, "loss", bool(steps))

    lr_ax.plot(*data["lr"], color="tab:green", linewidth=1.5, label="learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    _finish(lr_ax, "learning rate", bool(data["lr"][0]))

    for name in [n for n in eval_names if "loss" not in n]:
        eval_ax.plot(*data[name], marker="o", linewidth=1.5, label=name)
    _finish(eval_ax, "eval metrics", any(data[n][0] for n in eval_names if "loss" not in n))

    for attempt, step in sorted((resumed or {}).items()):
        for ax in (loss_ax, lr_ax, eval_ax):
            ax.axvline(step, color="gray", linestyle="--", linewidth=1)
        loss_ax.annotate(f"resumed (attempt {attempt})", (step, 1.0), xycoords=("data", "axes fraction"),
                         fontsize="small", color="gray", rotation=90, ha="right", va="top")  # fmt: skip
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _finish(ax, title: str, has_data: bool) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if has_data:
        ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data yet", transform=ax.transAxes, ha="center", va="center", color="gray")

"""loss.png: the loss of every step and its moving average (matplotlib, drawn without a GUI)."""

from __future__ import annotations

import logging
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from invokeai_ti.files.atomic import atomic_write

log = logging.getLogger(__name__)

LOSS_PLOT = "loss.png"


def moving_average(losses: list[float], window: int) -> list[float]:
    """Mean of the finite losses among the last `window` steps (NaN where there are none)."""
    out, recent = [], []
    for loss in losses:
        recent = (recent + [loss])[-window:]
        finite = [x for x in recent if math.isfinite(x)]
        out.append(sum(finite) / len(finite) if finite else float("nan"))
    return out


def smoothing_window(num_steps: int) -> int:
    """About a tenth of the run, between 5 and 100 steps."""
    return max(5, min(100, num_steps // 10))


@lru_cache(maxsize=1)
def _matplotlib() -> tuple[Any, Any] | None:
    """matplotlib is optional: without it, one info line per process and no plot."""
    try:
        from matplotlib.figure import Figure  # a bare Figure renders with Agg: no GUI backend
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        log.info("matplotlib is not installed: no loss.png (pip install matplotlib).")
        return None
    return Figure, MaxNLocator


def save_loss_plot(output_dir: Path, losses: list[float],
                   validation: list[list[float]] | None = None) -> Path | None:  # fmt: skip
    """loss.png: the loss of every step (non-finite ones left out), its moving average, and the
    validation losses ([step, loss] pairs) when there are any."""
    matplotlib = _matplotlib()
    if matplotlib is None or not losses:
        return None
    figure_class, integer_ticks = matplotlib
    window = smoothing_window(len(losses))
    steps = list(range(1, len(losses) + 1))
    shown = [x if math.isfinite(x) else float("nan") for x in losses]
    figure = figure_class(figsize=(6.4, 3.6), dpi=100)
    ax = figure.add_subplot()
    ax.plot(steps, shown, linewidth=0.8, alpha=0.45, label="loss per step")
    ax.plot(steps, moving_average(losses, window), linewidth=2, label=f"mean of {window} steps")
    ax.xaxis.set_major_locator(integer_ticks(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("denoising loss (MSE)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if validation:
        # Its own axis: fixed draws move by a few percent, which the noisy per-step loss's range
        # would flatten into a line.
        twin = ax.twinx()
        twin.plot([step for step, _ in validation], [loss for _, loss in validation], "o-",
                  color="C2", linewidth=1.5, label="validation loss (fixed draws, right axis)")  # fmt: skip
        twin.set_ylabel("validation loss")
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels)
    figure.tight_layout()
    return atomic_write(output_dir / LOSS_PLOT, lambda tmp: figure.savefig(tmp, format="png"))

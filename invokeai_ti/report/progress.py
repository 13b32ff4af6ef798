"""Progress output and experiment trackers; the only module that prints progress.

A tqdm bar on a terminal; plain lines or JSON lines (one object per logged step) when stdout is a
pipe or a CI log, so logs are not flooded with carriage returns.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from invokeai_ti.errors import UserError

log = logging.getLogger(__name__)
TASK_EVERY_S = 10  # a plain/JSON progress line of a grid or the report at most this often


@dataclass
class StepStats:
    step: int
    total: int
    loss: float
    lr: float
    steps_per_s: float
    eta_s: float
    embedding_norm: float = float("nan")  # mean L2 norm of the trainable vectors
    nonfinite_steps: int = 0  # updates skipped so far because the loss was not finite


class ProgressReporter:
    """Reports steps; `enabled=False` (non-main processes) makes every call a no-op."""

    def __init__(
        self,
        log_format: str,
        total_steps: int,
        start_step: int,
        every: int,
        enabled: bool = True,
        tracker_dir: Path | None = None,
        report_to: str = "none",
        tracker_config: dict[str, Any] | None = None,
    ) -> None:
        self.enabled = enabled
        self.total = total_steps
        self.every = every
        self.format = _resolve_format(log_format) if enabled else "none"
        self.start_step = start_step
        self.started = time.perf_counter()
        self.bar = None
        if self.format == "tqdm":
            from tqdm import tqdm

            # tqdm shows the rate (step/s) and the ETA itself; the postfix adds loss and lr.
            self.bar = tqdm(total=total_steps, initial=start_step, desc="Steps", unit="step",
                            dynamic_ncols=True)  # fmt: skip
        self.writer = self.wandb = None
        if enabled and tracker_dir is not None:
            self.writer = _tensorboard_writer(tracker_dir, report_to)
            self.wandb = _wandb_run(tracker_dir, report_to, tracker_config or {})

    def stats(self, step: int, loss: float, lr: float, embedding_norm: float = float("nan"),
              nonfinite_steps: int = 0) -> StepStats:  # fmt: skip
        elapsed = time.perf_counter() - self.started
        done = step - self.start_step
        rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
        eta = (self.total - step) / rate if rate else float("nan")
        return StepStats(step, self.total, loss, lr, rate, eta, embedding_norm, nonfinite_steps)

    def step(self, stats: StepStats) -> None:
        if not self.enabled:
            return
        self.scalars({"train/loss": stats.loss, "train/lr": stats.lr,
                      "train/steps_per_s": stats.steps_per_s,
                      "train/embedding_norm": stats.embedding_norm,
                      "train/nonfinite_steps": stats.nonfinite_steps}, stats.step)  # fmt: skip
        if self.bar is not None:
            self.bar.update(stats.step - self.bar.n)
            postfix = dict(loss=f"{stats.loss:.4f}", lr=f"{stats.lr:.2e}")
            if stats.nonfinite_steps:
                postfix["skipped"] = stats.nonfinite_steps
            self.bar.set_postfix(postfix, refresh=False)
            return
        if stats.step % self.every and stats.step != self.total:
            return
        if self.format == "json":
            print(json.dumps(step_record(stats)), flush=True)
        else:
            skipped = (
                f", {stats.nonfinite_steps} skipped (loss not finite)"
                if stats.nonfinite_steps
                else ""
            )
            print(
                f"step {stats.step}/{stats.total} loss {stats.loss:.4f} lr {stats.lr:.3g} "
                f"{stats.steps_per_s:.2f} steps/s eta {format_eta(stats.eta_s)}{skipped}",
                flush=True,
            )

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Numbers for the trackers (TensorBoard, wandb) only."""
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def image(self, tag: str, image: Any, step: int) -> None:
        """A PIL image (a validation grid) for the trackers."""
        if self.writer is not None:
            import numpy as np

            self.writer.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")
            self.writer.flush()
        if self.wandb is not None:
            import wandb

            self.wandb.log({tag: wandb.Image(image)}, step=step)

    @contextmanager
    def task(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        """Progress of a job beside training (a grid, the report): a second bar on a terminal,
        otherwise a line (JSON: an object) every TASK_EVERY_S seconds and, after those, at the end.
        Yields advance(n)."""
        done, last, lines = 0, time.perf_counter(), 0
        if not self.enabled:
            yield lambda n: None
            return
        bar = None
        if self.bar is not None:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=label, leave=False, position=1, dynamic_ncols=True)

        def advance(n: int) -> None:
            nonlocal done, last, lines
            done += n
            if bar is not None:
                bar.update(n)
            elif time.perf_counter() - last >= TASK_EVERY_S:  # a short job prints nothing
                last, lines = time.perf_counter(), lines + 1
                self._task_line(label, done, total)

        try:
            yield advance
        finally:
            if bar is not None:
                bar.close()
            elif lines:
                self._task_line(label, done, total)

    def _task_line(self, label: str, done: int, total: int) -> None:
        if self.format == "json":
            print(json.dumps({"event": "task", "task": label, "done": done, "total": total}),
                  flush=True)  # fmt: skip
        else:
            print(f"{label}: {done}/{total}", flush=True)

    def validation(self, step: int, loss: float, best_step: int, best_loss: float) -> None:
        """A validation loss: for the trackers, and a line (JSON: an object)."""
        if not self.enabled:
            return
        self.scalars({"eval/validation_loss": loss}, step)
        if self.format == "json":
            print(json.dumps({"event": "validation", "step": step, "loss": _finite(loss, 6),
                              "best_step": best_step, "best_loss": _finite(best_loss, 6)}),
                  flush=True)  # fmt: skip
        elif step == 0:
            self.message(f"step 0 (the initializer): validation loss {loss:.4f}")
        else:
            self.message(f"step {step}: validation loss {loss:.4f} (best {best_loss:.4f} at step "
                         f"{best_step})")  # fmt: skip

    def message(self, text: str) -> None:
        """A line for the user that must not break the bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        elif self.format != "json":
            print(text, flush=True)

    def warning(self, text: str) -> None:
        """A warning that must not break the bar; on stderr otherwise, so JSON stdout stays clean."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(f"WARNING: {text}", file=sys.stderr)
        else:
            log.warning(text)

    def finish(self, outputs: dict[str, Any], event: str = "done") -> None:
        """Close the bar and trackers; in JSON mode one last object with `event` and `outputs`."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
        if self.format == "json":
            print(json.dumps({"event": event, **outputs}), flush=True)


def step_record(stats: StepStats) -> dict[str, Any]:
    """One JSON line; non-finite numbers become null so strict JSON parsers accept every line."""
    return {
        "event": "step",
        "step": stats.step,
        "total": stats.total,
        "loss": _finite(stats.loss, 6),
        "lr": stats.lr,
        "steps_per_s": _finite(stats.steps_per_s, 4),
        "eta_s": _finite(stats.eta_s, 1),
        "eta": format_eta(stats.eta_s),
        "embedding_norm": _finite(stats.embedding_norm, 6),
        "nonfinite_steps": stats.nonfinite_steps,
    }


def _finite(value: float, digits: int) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def format_eta(seconds: float) -> str:
    """H:MM:SS, or '?' before the rate is known."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _resolve_format(log_format: str) -> str:
    if log_format != "auto":
        return log_format
    return "tqdm" if sys.stdout.isatty() else "plain"


def check_report_to(report_to: str) -> None:
    """Fail before any model is loaded when the tracker asked for by name is missing.

    `all` (as in accelerate) means every tracker that is installed, so it never fails.
    """
    if report_to == "wandb" and importlib.util.find_spec("wandb") is None:
        raise UserError("--report_to wandb: wandb is not installed; `pip install wandb` or use "
                        "--report_to tensorboard or none.")  # fmt: skip


def _tensorboard_writer(folder: Path, report_to: str):
    if report_to not in ("tensorboard", "all"):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed: no TensorBoard logs (pip install tensorboard).")
        return None
    return SummaryWriter(log_dir=str(folder))


def _wandb_run(folder: Path, report_to: str, config: dict[str, Any]):
    if report_to not in ("wandb", "all") or importlib.util.find_spec("wandb") is None:
        return None
    import wandb

    folder.mkdir(parents=True, exist_ok=True)
    return wandb.init(project="invokeai-ti", dir=str(folder), config=config)


@dataclass
class RunResult:
    """What a run ends with: the exit code and the lines the CLI prints."""

    exit_code: int
    lines: list[str]


def describe_outputs(progress: Any, files: Any, observed: Any) -> list[str]:
    """The lines a finished run ends with: what was trained, where it is, how good it is."""
    if files is None:
        return []
    p = progress
    skipped = (
        f" ({p.nonfinite_steps} updates skipped: loss not finite)" if p.nonfinite_steps else ""
    )
    lines = [f"Trained {p.step} steps{skipped}. Embedding: {files.main}"]
    lines += [f"Also written: {path}" for path in files.others]
    if observed.quality:
        lines.append(observed.quality)
    if observed.loss_plot or observed.validation_grid:
        shown = [str(x) for x in (observed.loss_plot, observed.validation_grid) if x]
        lines.append(f"See what it learned: {', '.join(shown)}")
    if observed.best:
        lines.append(observed.best)
    if observed.evaluation:
        lines.append(f"Evaluation (grids, report, validation loss): {observed.evaluation}.")
    if observed.skipped:
        lines.append(observed.skipped)
    if files.invokeai_copy and not files.invokeai_install:
        lines.append(f"Copied for InvokeAI to {files.invokeai_copy}")
    if files.pipeline_dir:
        lines.append(f"Full pipeline with the new token: {files.pipeline_dir}")
    if files.invokeai_install:
        lines.append(files.invokeai_install)  # last: the one thing left to do
    return lines


def output_paths(*records: Any) -> dict[str, Any]:
    """The set fields of result dataclasses, paths as strings, for the final JSON object."""
    fields = {k: v for record in records if record is not None for k, v in asdict(record).items()}
    return {
        k: [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in fields.items() if v
    }

"""Progress output and experiment trackers; the only module that prints progress.

A tqdm bar on a terminal; plain lines or JSON lines (one object per logged step) when stdout is a
pipe or a CI log, so logs are not flooded with carriage returns.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class StepStats:
    step: int
    total: int
    loss: float
    lr: float
    steps_per_s: float
    eta_s: float
    extra: dict[str, float] = field(default_factory=dict)


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

            self.bar = tqdm(total=total_steps, initial=start_step, desc="Steps", dynamic_ncols=True)
        self.writer = _tensorboard_writer(tracker_dir, report_to) if enabled else None

    def stats(self, step: int, loss: float, lr: float) -> StepStats:
        elapsed = time.perf_counter() - self.started
        done = step - self.start_step
        rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
        eta = (self.total - step) / rate if rate else float("nan")
        return StepStats(step, self.total, loss, lr, rate, eta)

    def step(self, stats: StepStats) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            self.writer.add_scalar("train/loss", stats.loss, stats.step)
            self.writer.add_scalar("train/lr", stats.lr, stats.step)
            self.writer.add_scalar("train/steps_per_s", stats.steps_per_s, stats.step)
            for key, value in stats.extra.items():
                self.writer.add_scalar(f"train/{key}", value, stats.step)
        if self.bar is not None:
            self.bar.update(stats.step - self.bar.n)
            self.bar.set_postfix(loss=f"{stats.loss:.4f}", lr=f"{stats.lr:.2e}")
            return
        if stats.step % self.every and stats.step != self.total:
            return
        if self.format == "json":
            record = {
                "event": "step",
                "step": stats.step,
                "total": stats.total,
                "loss": round(stats.loss, 6),
                "lr": stats.lr,
                "steps_per_s": round(stats.steps_per_s, 4),
                "eta_s": None if stats.eta_s != stats.eta_s else round(stats.eta_s, 1),
                **stats.extra,
            }
            print(json.dumps(record), flush=True)
        else:
            print(
                f"step {stats.step}/{stats.total} loss {stats.loss:.4f} lr {stats.lr:.3g} "
                f"{stats.steps_per_s:.2f} steps/s",
                flush=True,
            )

    def message(self, text: str) -> None:
        """A line for the user that must not break the bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        elif self.format != "json":
            print(text, flush=True)

    def finish(self, outputs: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.format == "json":
            print(json.dumps({"event": "done", **outputs}), flush=True)


def _resolve_format(log_format: str) -> str:
    if log_format != "auto":
        return log_format
    return "tqdm" if sys.stdout.isatty() else "plain"


def _tensorboard_writer(folder: Path | None, report_to: str):
    if folder is None or report_to not in ("tensorboard", "all"):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed: no TensorBoard logs (pip install tensorboard).")
        return None
    return SummaryWriter(log_dir=str(folder))


@dataclass
class RunResult:
    """What a run ends with: the exit code and the lines the CLI prints."""

    exit_code: int
    lines: list[str]


def format_plan(run: Any) -> list[str]:
    """--dry_run's report: what a real run with these flags would do."""
    cfg = run.config
    skipped = ", ".join(f"{p.name} ({why})" for p, why in run.images.skipped) or "none"
    resume = f"resume from {run.resumed_from} at step {run.progress.step}" if run.resumed_from else "new run"
    return [
        f"Dry run OK: model {cfg.model} ({run.components.family}, "
        f"{run.components.weight_dtype}, {run.components.device}), trigger {cfg.placeholder_token} "
        f"x{cfg.num_vectors} from '{cfg.initializer_token}'.",
        f"Images: {len(run.images.paths)} used from {cfg.train_data_dir}; skipped: {skipped}.",
        f"Steps: {run.total_steps} ({resume}); {run.micro_per_epoch} batches per epoch; effective "
        f"batch {cfg.train_batch_size * cfg.gradient_accumulation_steps * run.world_size}; "
        f"learning rate {run.learning_rate:.3g} ({'scaled' if cfg.scale_lr else 'not scaled'}), "
        f"{cfg.lr_scheduler}.",
        f"Outputs: {cfg.output_dir}" + (
            f"; copy to {cfg.root_dir}/embeddings/{cfg.trigger}/" if cfg.copy_to_embeddings else ""),
    ]  # fmt: skip

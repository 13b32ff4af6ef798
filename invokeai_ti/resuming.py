"""What a run keeps on disk while it trains: the checkpoint of its state (saved every
--checkpointing_steps, on Ctrl-C/SIGTERM and at the end), and resuming from one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from invokeai_ti import checkpoint as ckpt
from invokeai_ti import export
from invokeai_ti.config import TrainingConfig
from invokeai_ti.progress import ProgressReporter, RunResult
from invokeai_ti.stopping import StopRequest

if TYPE_CHECKING:  # training imports this module; the Run type is for hints only
    from invokeai_ti.training import Run

log = logging.getLogger(__name__)


def fingerprint(c: TrainingConfig, token_dims: list[int], world_size: int) -> dict[str, Any]:
    """What the vectors of a checkpoint belong to; a resume must match it exactly."""
    return dict(model=c.model, placeholder_token=c.placeholder_token, num_vectors=c.num_vectors,
                resolution=c.resolution, token_dims=token_dims, world_size=world_size)  # fmt: skip


def resume(run: Run, folder: Path) -> None:
    """Vectors, optimizer, scaler and progress from `folder` (RNGs: load_checkpoint restores them)."""
    saved = ckpt.load_checkpoint(folder)  # its fingerprint was checked in setup() step 3
    with torch.no_grad():
        for placeholder, vectors in zip(run.placeholders, saved.vectors):
            placeholder.vectors.copy_(vectors)
    run.optimizer.load_state_dict(saved.optimizer)
    if "scaler" in saved.extra:
        run.scaler.load_state_dict(saved.extra["scaler"])
    run.progress = saved.progress
    run.resumed_from = folder
    if folder == run.config.output_dir / f"{ckpt.PREFIX}{run.progress.step}":
        run.saved_step = run.progress.step
    old_total = TrainingConfig.from_json(saved.config_json).max_train_steps
    if run.config.max_train_steps > old_total:
        log.info("Extending the run from %d to %d steps; the lr schedule is recomputed for the "
                 "new total.", old_total, run.total_steps)  # fmt: skip
    log.info("Resuming from %s at step %d.", folder, run.progress.step)


def save_state(run: Run) -> Path | None:
    """A complete checkpoint of the current step (main process only), then the total limit."""
    folder = run.config.output_dir / f"{ckpt.PREFIX}{run.progress.step}"
    if not run.is_main or run.saved_step == run.progress.step:
        return folder if run.is_main else None  # e.g. a stop right after a periodic checkpoint
    state = ckpt.CheckpointState(
        progress=run.progress,
        vectors=[ph.vectors for ph in run.placeholders],
        optimizer=run.optimizer.state_dict(),
        fingerprint=run.fingerprint,
        config_json=run.config.to_json(),
        extra={"scaler": run.scaler.state_dict()} if run.scaler.is_enabled() else {},
    )
    try:
        folder = ckpt.save_checkpoint(run.config.output_dir, state)
    except OSError as exc:
        raise ckpt.check_disk_error(exc, run.config.output_dir) from exc
    run.saved_step = run.progress.step
    ckpt.prune_checkpoints(run.config.output_dir, run.config.checkpoints_total_limit)
    return folder


def stop_and_save(run: Run, reporter: ProgressReporter, stop: StopRequest) -> RunResult:
    """Ctrl-C/SIGTERM in the loop: a checkpoint and the embedding of the step just done."""
    p, cfg = run.progress, run.config
    folder = save_state(run)
    embeds = None
    if run.is_main:
        embeds = export.save_step_embeds(cfg.output_dir, cfg.placeholder_token,
                                         [ph.vectors for ph in run.placeholders], p.step)  # fmt: skip
    reporter.finish({"stopped_at": p.step, "checkpoint": str(folder), "embedding": str(embeds)},
                    event="stopped")  # fmt: skip
    return RunResult(stop.exit_code, [
        f"Stopped at step {p.step}: checkpoint saved in {folder}, embedding in {embeds}.",
        "Resume with --resume_from_checkpoint=latest."])  # fmt: skip

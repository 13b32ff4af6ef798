"""What a run writes while and after it trains: the checkpoint of its state (every
--checkpointing_steps, on Ctrl-C/SIGTERM and at the end), resuming from one, and the final files
with what the run learned (loss plot, last grid, quality report)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from invokeai_ti.config import TrainingConfig
from invokeai_ti.files import checkpoint as ckpt
from invokeai_ti.files import export
from invokeai_ti.files.atomic import check_disk_error
from invokeai_ti.report import plot, quality, validation
from invokeai_ti.report.progress import ProgressReporter, RunResult
from invokeai_ti.train.run import Run
from invokeai_ti.train.stopping import StopRequest

log = logging.getLogger(__name__)


def resume(run: Run, folder: Path) -> None:
    """Vectors, optimizer, scaler and progress from `folder` (RNGs: load_checkpoint restores them)."""
    saved = ckpt.load_checkpoint(folder)  # its fingerprint was checked in setup() stage 3
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
        raise check_disk_error(exc, run.config.output_dir) from exc
    run.saved_step = run.progress.step
    ckpt.prune_checkpoints(run.config.output_dir, run.config.checkpoints_total_limit)
    return folder


def save_step_embeds(run: Run) -> Path:
    """The embedding of the current step, learned_embeds-steps-N.bin."""
    cfg = run.config
    return export.save_step_embeds(cfg.output_dir, cfg.placeholder_token,
                                   [ph.vectors for ph in run.placeholders], run.progress.step)  # fmt: skip


def stop_and_save(run: Run, reporter: ProgressReporter, stop: StopRequest) -> RunResult:
    """Ctrl-C/SIGTERM in the loop: a checkpoint and the embedding of the step just done."""
    p = run.progress
    folder = save_state(run)
    embeds = save_step_embeds(run) if run.is_main else None
    reporter.finish({"stopped_at": p.step, "checkpoint": str(folder), "embedding": str(embeds)},
                    event="stopped")  # fmt: skip
    return RunResult(stop.exit_code, [
        f"Stopped at step {p.step}: checkpoint saved in {folder}, embedding in {embeds}.",
        "Resume with --resume_from_checkpoint=latest."])  # fmt: skip


def save_outputs(run: Run) -> export.ExportedFiles | None:
    """Final checkpoint (so the run can be extended later) and the embedding files."""
    if not run.is_main:
        return None
    save_state(run)
    cfg, vectors = run.config, [ph.vectors.detach() for ph in run.placeholders]
    source = run.components.source
    try:
        files = export.save_final_embeds(cfg, vectors, run.progress.step, source)
        if not cfg.only_save_embeds:
            files.pipeline_dir = export.save_full_pipeline(
                cfg, source, run.placeholders[0].tokens, vectors
            )
    except OSError as exc:
        raise check_disk_error(exc, cfg.output_dir) from exc
    return files


def validate(run: Run, reporter: ProgressReporter) -> Path | None:
    """The validation grid of the current step from the current vectors, at the run's seed."""
    return validation.save_validation_grid(run.components, run.config, run.progress.step,
                                           run.progress.seed, reporter)  # fmt: skip


def finish(run: Run, reporter: ProgressReporter):
    """The final files, then what the run learned: loss plot, last grid, quality report."""
    files = save_outputs(run)
    observed = validation.Observed()
    if files is None:
        return None, observed
    cfg, p = run.config, run.progress
    observed.loss_plot = plot.save_loss_plot(cfg.output_dir, p.losses)
    if validation.validation_every(cfg):
        observed.validation_grid = validate(run, reporter)
    # No gradients are kept, so twice the training batch fits where training did.
    report = quality.quality_report(run.components, run.placeholders, run.latent_source,
                                       run.prompt_ids, run.time_ids, run.initial_vectors, p.step,
                                       2 * cfg.train_batch_size)  # fmt: skip
    observed.report = quality.save_report(cfg.output_dir, report)
    observed.quality = report.line()
    reporter.scalars({"eval/loss_initializer": report.loss_initializer,
                      "eval/loss_learned": report.loss_learned}, p.step)  # fmt: skip
    if cfg.push_to_hub:
        export.push_to_hub(cfg)  # last, so the upload has the report and the plot too
    return files, observed

"""What a run writes while and after it trains: the checkpoint of its state (every
--checkpointing_steps, on Ctrl-C/SIGTERM and at the end), resuming from one, and the final files
(the grids and the report are train/evaluation.py's)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from invokeai_ti.config import TrainingConfig
from invokeai_ti.files import checkpoint as ckpt
from invokeai_ti.files import config_file, export, pipeline
from invokeai_ti.files.atomic import atomic_write_text, check_disk_error
from invokeai_ti.report.progress import ProgressReporter, RunResult
from invokeai_ti.train.optimizer import FLAG_HYPERPARAMETERS
from invokeai_ti.train.run import Run
from invokeai_ti.train.stopping import StopRequest

log = logging.getLogger(__name__)


# Flags a resume may change: the new values apply from the resumed step on (the optimizer keeps
# its moments; its hyper-parameters, the lr schedule and the data position follow the flags).
RESUMABLE_CHANGES = ("learning_rate", "scale_lr", "adam_beta1", "adam_beta2", "adam_epsilon",
                     "adam_weight_decay", "lr_scheduler", "lr_warmup_steps", "lr_num_cycles",
                     "train_batch_size", "gradient_accumulation_steps", "repeats",
                     "num_train_epochs", "max_grad_norm", "min_snr_gamma", "noise_offset",
                     "embedding_norm", "shuffle_caption", "keep_tokens",
                     "caption_dropout_rate", "masked_prior_preservation_weight")  # fmt: skip


def resume(run: Run, folder: Path) -> None:
    """Vectors, optimizer moments, scaler and progress from `folder` (RNGs: load_checkpoint
    restores them); the hyper-parameters and the data position follow this run's flags."""
    saved = ckpt.load_checkpoint(folder)  # its fingerprint was checked in setup() stage 3
    with torch.no_grad():
        for placeholder, vectors in zip(run.placeholders, saved.vectors):
            placeholder.vectors.copy_(vectors)
    # load_state_dict brings back the saved lr, betas, eps and decay; the flags' values win.
    wanted = [{k: g[k] for k in FLAG_HYPERPARAMETERS if k in g} for g in run.optimizer.param_groups]
    run.optimizer.load_state_dict(saved.optimizer)
    for group, hyper in zip(run.optimizer.param_groups, wanted):
        group.pop("initial_lr", None)  # the schedule is rebuilt from the new lr
        group.update(hyper)
    if "scaler" in saved.extra:
        run.scaler.load_state_dict(saved.extra["scaler"])
    old = TrainingConfig.from_json(saved.config_json)
    run.progress = saved.progress
    move_data_position(run, old.train_batch_size, old.repeats)
    run.resumed_from = folder
    if folder == run.config.output_dir / f"{ckpt.PREFIX}{run.progress.step}":
        run.saved_step = run.progress.step
    run.resume_changes = [
        f"--{name} {getattr(old, name)} -> {getattr(run.config, name)}"
        for name in RESUMABLE_CHANGES
        if getattr(old, name) != getattr(run.config, name)
    ]
    if run.config.max_train_steps > old.max_train_steps:
        log.info("Extending the run from %d to %d steps; the lr schedule is recomputed for the "
                 "new total.", old.max_train_steps, run.total_steps)  # fmt: skip
    log.info("Resuming from %s at step %d.", folder, run.progress.step)
    if run.resume_changes:
        log.info("Changed since the checkpoint, applied from step %d: %s (learning rate now %g; "
                 "the optimizer's moments are kept).", run.progress.step,
                 "; ".join(run.resume_changes), run.learning_rate)  # fmt: skip


def move_data_position(run: Run, old_batch_size: int, old_repeats: int) -> None:
    """Keep the samples already seen in the current epoch when the batch size or the repeats
    changed: the position counts micro-batches, so it is converted through the sample count, and
    an epoch the new settings have already exhausted ends (never a step without samples)."""
    p, cfg = run.progress, run.config
    if (old_batch_size, old_repeats) != (cfg.train_batch_size, cfg.repeats):
        seen = (
            p.position * old_batch_size * run.world_size
        )  # micro-batches before the last are full
        p.position = -(-seen // (cfg.train_batch_size * run.world_size))
    if p.position >= run.micro_per_epoch:  # also when images were removed from the folder
        p.epoch, p.position = p.epoch + 1, 0


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


def save_run_config(run: Run) -> Path | None:
    """OUTPUT/config.toml (config.yaml when given one): the settings this run trains with, the
    seed it drew included, so `--config` with it repeats the run (main process only)."""
    cfg = run.config
    if not run.is_main:
        return None
    values = config_file.written_values(cfg, run.progress.seed)
    name = config_file.config_file_name(cfg)
    text = config_file.config_file_text(values, yaml_format=name.endswith(".yaml"))
    try:
        return atomic_write_text(cfg.output_dir / name, text)
    except OSError as exc:
        raise check_disk_error(exc, cfg.output_dir) from exc


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
            files.pipeline_dir = pipeline.save_full_pipeline(
                cfg, source, run.placeholders[0].tokens, vectors, run.component_copy
            )
    except OSError as exc:
        raise check_disk_error(exc, cfg.output_dir) from exc
    return files

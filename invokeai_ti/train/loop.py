"""train(): set up, loop until the total or a stop request, then the final files. The loop calls
one function per periodic job (log, save, validate, checkpoint)."""

from __future__ import annotations

import math
import time

import torch

from invokeai_ti.config import TrainingConfig
from invokeai_ti.data import dataset
from invokeai_ti.errors import TrainingStopped
from invokeai_ti.files import export, pipeline
from invokeai_ti.files import lock as output_lock
from invokeai_ti.invokeai.root import logging_path
from invokeai_ti.report import plan, plot, progress, validation
from invokeai_ti.report.progress import ProgressReporter, RunResult
from invokeai_ti.train import evaluation, saving
from invokeai_ti.train.run import Run
from invokeai_ti.train.setup import setup
from invokeai_ti.train.step import optimizer_step
from invokeai_ti.train.stopping import StopRequest

MAX_NONFINITE_IN_A_ROW = 10


def train(config: TrainingConfig) -> RunResult:
    """Set up, loop until the total or a stop request, then write the final files."""
    progress.check_report_to(config.report_to)  # flag problems fail before any model is loaded
    validation.check_validation_prompt(config)
    # The output folder's lock before the model loads, so a second run fails at once; Ctrl-C
    # during setup stops at once, in the loop it saves first.
    with output_lock.hold(config), StopRequest() as stop:
        run = setup(config)
        if config.dry_run:
            return RunResult(0, plan.format_plan(run))
        p = run.progress
        saving.save_run_config(run)  # before the first step: a crashed run can be repeated too
        reporter = ProgressReporter(config.log_format, run.total_steps, p.step,
                                    config.log_every_steps, enabled=run.is_main,
                                    tracker_dir=logging_path(config), report_to=config.report_to,
                                    tracker_config=config.to_dict())  # fmt: skip
        if p.step >= run.total_steps:
            reporter.message(f"Already trained {p.step} of {run.total_steps} steps; writing the "
                             "outputs.")  # fmt: skip
        evaluation.start(run, reporter)
        if run.is_main:  # the full pipeline's unchanged components, copied while training runs
            run.component_copy = pipeline.start_component_copy(run.config, run.components.source,
                                                               len(run.placeholders))  # fmt: skip
        stop.arm()
        if not loop(run, reporter, stop):
            return saving.stop_and_save(run, reporter, stop)
        stop.disarm()
        observed = validation.Observed()
        evaluation.final_validation_loss(run, reporter, observed)  # before the last checkpoint
        started = time.perf_counter()
        files = saving.save_outputs(run)
        if files is not None:
            observed.loss_plot = plot.save_loss_plot(
                config.output_dir, p.losses, p.validation_losses
            )
        run.seconds["final files"] = time.perf_counter() - started
        if files is not None:
            evaluation.final_jobs(run, reporter, observed)
            if config.push_to_hub:
                export.push_to_hub(config)  # last, so the upload has the report and the plot too
    if run.world_size > 1:
        torch.distributed.barrier()  # every process ends after the files exist
        torch.distributed.destroy_process_group()
    lines = progress.describe_outputs(p, files, observed)
    seconds = {**run.seconds, "training": run.budget.train_seconds,
               "evaluation": run.budget.spent_seconds}  # fmt: skip
    gpu = {}
    if torch.cuda.is_available():  # what a user sizes --train_batch_size and precision by
        gpu["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated()
        lines.append(f"Peak GPU memory: {gpu['peak_gpu_memory_bytes'] / 2**30:.2f} GiB")
    reporter.finish({**progress.output_paths(files, observed), "nonfinite_steps": p.nonfinite_steps,
                     "seconds": {k: round(v, 3) for k, v in seconds.items()}, **gpu,
                     "summary": lines})  # fmt: skip
    # A script reading --log_format json gets the lines in the final object; stdout stays JSON.
    return RunResult(0, [] if reporter.format == "json" else lines)


def loop(run: Run, reporter: ProgressReporter, stop: StopRequest) -> bool:
    """Optimizer steps up to the total; False when a stop request ended it early."""
    p, config = run.progress, run.config
    last_good = [ph.detached() for ph in run.placeholders]
    samples, samples_epoch = [], -1
    while p.step < run.total_steps:
        if samples_epoch != p.epoch:
            samples_epoch = p.epoch
            samples = dataset.epoch_samples(len(run.images.paths), config.repeats,
                                            run.prompts.num_templates, p.seed, p.epoch,
                                            run.images.bucket_of,
                                            config.train_batch_size * run.world_size)  # fmt: skip
        before = [ph.detached() for ph in run.placeholders]
        started = time.perf_counter()
        p.losses.append(optimizer_step(run, samples))
        run.budget.add_step(time.perf_counter() - started)  # grids and the report are priced by it
        if math.isfinite(p.losses[-1]):
            last_good = before  # the newest vectors whose loss was finite
        report_step(run, reporter)
        if not vectors_finite(run):  # an update overflowed: these vectors are never written
            raise_nonfinite(run, last_good, reporter)
        periodic_jobs(run, reporter)
        if p.nonfinite_streak >= MAX_NONFINITE_IN_A_ROW:
            raise_nonfinite(run, last_good, reporter)
        if stop.requested:
            return False
        if evaluation.patience_spent(run):
            best_step, best = evaluation.best_validation(p.validation_losses)
            reporter.message(f"Early stop at step {p.step}: {config.early_stop_patience} "
                             f"validation(s) without a new best (best {best:.4f} at step "
                             f"{best_step}; --early_stop_patience).")  # fmt: skip
            break
    if p.nonfinite_streak:  # the final vectors gave a non-finite loss: they are not the result
        raise_nonfinite(run, last_good, reporter)
    return True


def vectors_finite(run: Run) -> bool:
    return all(bool(torch.isfinite(ph.vectors).all()) for ph in run.placeholders)


def report_step(run: Run, reporter: ProgressReporter) -> None:
    """Progress and tracker numbers for the step just done; a skipped update is said at once."""
    p = run.progress
    if p.nonfinite_streak:
        reporter.warning(f"step {p.step}: the loss or its gradient is not finite ({p.losses[-1]}); "
                         f"update skipped ({p.nonfinite_steps} so far).")  # fmt: skip
    norm = run.placeholders[0].vectors.detach().float().norm(dim=-1).mean().item()
    reporter.step(reporter.stats(p.step, p.losses[-1], run.schedule.get_last_lr()[0], norm,
                                 p.nonfinite_steps))  # fmt: skip


def periodic_jobs(run: Run, reporter: ProgressReporter) -> None:
    """Intermediate embedding and loss plot every --save_steps, validation grid every
    --validation_steps, checkpoint every --checkpointing_steps."""
    step, cfg = run.progress.step, run.config
    if not run.is_main or step == run.total_steps:
        return  # the final step is saved by finish()
    if step % cfg.save_steps == 0:
        saving.save_step_embeds(run)
        plot.save_loss_plot(cfg.output_dir, run.progress.losses,
                            run.progress.validation_losses)  # fmt: skip
    loss_every = evaluation.validation_loss_every(cfg)
    if loss_every and step % loss_every == 0:
        evaluation.validation_loss(run, reporter)
    every = validation.validation_every(cfg)
    if every and step % every == 0:
        evaluation.periodic_grid(run, reporter)
    if step % cfg.checkpointing_steps == 0:
        reporter.message(f"Saved checkpoint {saving.save_state(run)}")


def raise_nonfinite(run: Run, last_good: list[torch.Tensor], reporter: ProgressReporter) -> None:
    """Stop with the newest vectors whose loss was finite saved as the run's embedding: after
    10 non-finite losses in a row, when an update made the vectors NaN or infinite, or when the
    run ended on a non-finite loss."""
    p = run.progress
    if not vectors_finite(run):
        cause = f"the vectors became NaN or infinite at step {p.step}"
    elif p.nonfinite_streak >= MAX_NONFINITE_IN_A_ROW:
        cause = f"the loss was not finite for {MAX_NONFINITE_IN_A_ROW} steps in a row"
    else:
        cause = f"the loss was not finite for the last {p.nonfinite_streak} step(s)"
    with torch.no_grad():
        for placeholder, vectors in zip(run.placeholders, last_good):
            placeholder.vectors.copy_(vectors)
    files = saving.save_outputs(run)
    if files is not None:
        plot.save_loss_plot(run.config.output_dir, p.losses, p.validation_losses)
    where = f" The last good embedding is in {files.main}." if files else ""
    reporter.finish({"stopped_at": p.step, "nonfinite_steps": p.nonfinite_steps,
                     "embedding": str(files.main) if files else None}, event="stopped")  # fmt: skip
    raise TrainingStopped(
        f"{cause} (step {p.step}, {p.nonfinite_steps} skipped in all).{where} Try "
        "--mixed_precision bf16, or no (fp32), or a lower --learning_rate."
    )

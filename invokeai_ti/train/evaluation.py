"""--eval_only: the quality report of a finished output folder. It is an action beside training,
like the CLI: it needs the run exactly as setup() rebuilds it on resume (SDXL time ids,
single files, --init_embedding), so it calls setup() rather than keep a copy that could drift."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from invokeai_ti.config import TrainingConfig
from invokeai_ti.errors import UserError
from invokeai_ti.files import export
from invokeai_ti.files.checkpoint import list_checkpoints, read_state
from invokeai_ti.report import quality, validation
from invokeai_ti.report.budget import EvaluationBudget
from invokeai_ti.report.progress import ProgressReporter
from invokeai_ti.train.run import Run
from invokeai_ti.train.setup import setup
from invokeai_ti.train.step import masked_prior

log = logging.getLogger(__name__)


def evaluate_output(config: TrainingConfig, seed: int = quality.EVAL_SEED) -> str:
    """--eval_only: the quality report of a finished output folder, from its newest checkpoint
    with the settings it was trained with (model, images, prompts, initializer)."""
    checkpoints = list_checkpoints(config.output_dir)
    if not checkpoints:
        raise UserError(
            f"--eval_only: {config.output_dir} has no checkpoint-<step> folder; train first, or "
            "point --output_dir (or --placeholder_token) at a finished run."
        )
    saved = read_state(checkpoints[-1])["config"]
    trained = dataclasses.replace(TrainingConfig.from_dict(saved), output_dir=config.output_dir,
                                  resume_from_checkpoint=str(checkpoints[-1]), eval_only=True,
                                  dry_run=False)  # fmt: skip
    log.info("Evaluating %s with the settings it was trained with.", checkpoints[-1])
    run = setup(trained)
    report = quality.quality_report(run.components, run.placeholders, run.latent_source, run.prompts,
                            run.time_ids, run.initial_vectors, run.progress.step,
                            2 * trained.train_batch_size, seed, prior=masked_prior(run))  # fmt: skip
    path = quality.save_report(trained.output_dir, report)
    return f"{report.line()} Written to {path}."


# --- grids and the report of a training run, within --evaluation_budget -------------------------

REPORT_DRAWS_PER_IMAGE = (quality.DRAWS_PER_IMAGE, 8, 4)  # shrunk to fit; fewer would be noise
# The validation loss's draws have a seed of their own: never training's nor the report's.
VALIDATION_SEED = 5_550_123
BEST_STEM = "learned_embeds-best"


def start(run: Run, reporter: ProgressReporter) -> None:
    """Before the first step: the budget, and the step-0 grid (the initializer alone). With a
    budget the step-0 grid waits until a step was timed and is drawn from the initializer's
    vectors then, the same picture; without one it is drawn at once, as before."""
    cfg, p = run.config, run.progress
    run.budget = EvaluationBudget(cfg.evaluation_budget, run.total_steps - p.step,
                                  cfg.train_batch_size * cfg.gradient_accumulation_steps)  # fmt: skip
    if not (run.is_main and validation.validation_every(cfg)):
        return
    if p.step == 0:
        validation.remove_stale_grids(cfg)
    run.initial_grid_pending = not validation.grid_path(cfg, 0).is_file()
    if run.initial_grid_pending and cfg.evaluation_budget is None and p.step < run.total_steps:
        draw_grid(run, reporter, 0, run.initial_vectors)


def validation_loss(run: Run, reporter: ProgressReporter) -> None:
    """The deterministic validation loss of this step: the training objective on fixed images,
    noise, timesteps and prompts (--validation_loss_draws per image). Always computed when
    --save_best or --early_stop_patience need it, else only within the budget; the best step's
    embedding is kept as learned_embeds-best.bin with --save_best."""
    cfg, p, budget = run.config, run.progress, run.budget
    forwards = validation_forwards(run)
    # A new run's first validation also measures the initializer (step 0), the curve's baseline.
    baseline = not p.validation_losses and run.resumed_from is None
    needed = cfg.save_best or cfg.early_stop_patience
    if not forwards or (
        not needed and not budget.fits("validation loss", forwards * (1 + baseline))
    ):
        return
    if baseline:
        loss = measure_validation_loss(run, reporter, run.initial_vectors)
        p.validation_losses.append([0, loss])
        reporter.validation(0, loss, 0, loss)
    loss = measure_validation_loss(run, reporter)
    p.validation_losses.append([p.step, loss])
    best_step, best_loss = best_validation(p.validation_losses)
    reporter.validation(p.step, loss, best_step, best_loss)
    if cfg.save_best and best_step == p.step:
        export.save_step_embeds(cfg.output_dir, cfg.placeholder_token or "",
                                [ph.vectors for ph in run.placeholders], p.step, stem=BEST_STEM)  # fmt: skip


def measure_validation_loss(run: Run, reporter: ProgressReporter,
                            vectors: list[torch.Tensor] | None = None) -> float:  # fmt: skip
    """The training objective on the validation draws, with `vectors` (None: the current ones)."""
    cfg = run.config
    forwards = validation_forwards(run)
    draws = quality.fixed_draws(run.components, run.latent_source, run.prompts, VALIDATION_SEED,
                                cfg.validation_loss_draws)  # fmt: skip
    with (run.budget.job("validation loss", forwards),
          reporter.task("Validation loss", forwards) as advance,
          quality.holding(run.placeholders, vectors)):  # fmt: skip
        return quality.denoising_loss(run.components, run.latent_source, run.prompts,
                                      run.time_ids, draws, 2 * cfg.train_batch_size, advance,
                                      masked_prior(run))  # fmt: skip


def validation_forwards(run: Run) -> int:
    """A validation loss's cost in UNet passes: its draws, each with the current vectors (and
    the initial ones too with --masked_prior_preservation_weight)."""
    passes = 2 if masked_prior(run) else 1
    return passes * run.config.validation_loss_draws * run.latent_source.num_images


def validation_loss_every(config: TrainingConfig) -> int:
    """Steps between validation losses: --validation_steps, else --save_steps (grids or not)."""
    if not config.validation_loss_draws:
        return 0
    return config.save_steps if config.validation_steps is None else config.validation_steps


def final_validation_loss(run: Run, reporter: ProgressReporter,
                          observed: validation.Observed) -> None:  # fmt: skip
    """The last step's validation loss (unless it has one), and the best step in the summary."""
    p, cfg = run.progress, run.config
    if not (run.is_main and validation_loss_every(cfg)):
        return
    if not p.validation_losses or p.validation_losses[-1][0] != p.step:
        validation_loss(run, reporter)
    if p.validation_losses:
        step, loss = best_validation(p.validation_losses)
        kept = (f"; its embedding is {cfg.output_dir / BEST_STEM}.*" if cfg.save_best else
                " (--save_best keeps its embedding)")  # fmt: skip
        observed.best = (f"Validation loss: best {loss:.4f} at step {step}, of "
                         f"{len(p.validation_losses)} validation(s){kept}.")  # fmt: skip


def best_validation(losses: list[list[float]]) -> tuple[int, float]:
    """(step, loss) of the lowest validation loss of a trained step (step 0, the initializer, is
    the baseline, not a candidate); the earliest of equal ones."""
    trained = [pair for pair in losses if pair[0] > 0] or losses
    step, loss = min(trained, key=lambda pair: pair[1])
    return int(step), loss


def patience_spent(run: Run) -> bool:
    """--early_stop_patience validations in a row without a new best."""
    patience, losses = run.config.early_stop_patience, run.progress.validation_losses
    if not patience or len(losses) <= patience:
        return False
    best_step, _ = best_validation(losses)
    return sum(1 for step, _ in losses if step > best_step) >= patience


def periodic_grid(run: Run, reporter: ProgressReporter) -> None:
    """A --validation_steps grid (and the step-0 grid still owed) when the budget leaves room for
    the final grids and the report."""
    budget, forwards = run.budget, validation.grid_forwards(run.config)
    reserve = final_reserve(run)
    if run.initial_grid_pending and budget.fits("grid", forwards, reserve):
        draw_grid(run, reporter, 0, run.initial_vectors)
    if run.initial_grid_pending:  # still owed: it goes before any other grid
        reserve += budget.cost("grid", forwards) or 0.0
    if budget.fits("grid", forwards, reserve):
        draw_grid(run, reporter, run.progress.step)
    else:
        run.skipped_grids += 1


def final_jobs(run: Run, reporter: ProgressReporter, observed: validation.Observed) -> None:
    """The last grid, the step-0 grid if still owed, and the quality report (its draws shrunk to
    fit), each only within the budget; what was skipped is said in one line."""
    cfg, budget, step = run.config, run.budget, run.progress.step
    skipped = []
    if validation.validation_every(cfg):
        forwards = validation.grid_forwards(cfg)
        for grid_step, vectors, owed in ((step, None, True),
                                         (0, run.initial_vectors, run.initial_grid_pending)):  # fmt: skip
            if not owed:
                continue
            if budget.fits("grid", forwards):
                path = draw_grid(run, reporter, grid_step, vectors)
                observed.validation_grid = observed.validation_grid or path
            else:
                skipped.append(
                    f"the grid of step {grid_step} (~{_seconds(budget.cost('grid', forwards))})"
                )
    if cfg.quality_report:
        fitting = [
            k for k in REPORT_DRAWS_PER_IMAGE if budget.fits("report", report_forwards(run, k))
        ]
        if fitting:
            write_report(run, reporter, observed, fitting[0])
        else:
            cost = budget.cost("report", report_forwards(run, REPORT_DRAWS_PER_IMAGE[-1]))
            skipped.append(f"the quality report (~{_seconds(cost)}; --eval_only with this run's "
                           "flags writes it)")  # fmt: skip
    if run.skipped_grids:
        skipped.insert(0, f"{run.skipped_grids} grid(s) during training")
    if skipped:  # a summary line, so that --log_format json carries it too
        observed.skipped = (
            f"Skipped to keep grids and the report within {100 * (budget.fraction or 0):g} % of "
            f"the training time (--evaluation_budget; 'none' draws everything): "
            f"{', '.join(skipped)}."
        )
    observed.evaluation = budget.describe()


def final_reserve(run: Run) -> float:
    """Seconds final_jobs() will spend at least: the last grid and the smallest report."""
    cfg, budget = run.config, run.budget
    costs = []
    if validation.validation_every(cfg):
        costs.append(budget.cost("grid", validation.grid_forwards(cfg)))
    if cfg.quality_report:
        costs.append(budget.cost("report", report_forwards(run, REPORT_DRAWS_PER_IMAGE[-1])))
    return sum(cost or 0.0 for cost in costs)


def draw_grid(run: Run, reporter: ProgressReporter, step: int,
              vectors: list[torch.Tensor] | None = None) -> Path:  # fmt: skip
    """The grid of `step`, drawn from `vectors` (None: the current ones), timed on the budget."""
    cfg = run.config
    forwards = validation.grid_forwards(cfg)
    if step == 0:
        run.initial_grid_pending = False
    with (run.budget.job("grid", forwards), reporter.task(f"Grid of step {step}", forwards) as advance,
          quality.holding(run.placeholders, vectors)):  # fmt: skip
        return validation.save_validation_grid(run.components, cfg, step, run.progress.seed,
                                               reporter, advance)  # fmt: skip


def report_forwards(run: Run, per_image: int) -> int:
    """The report's cost in UNet passes: each draw with the initializer and the learned vectors
    (and each of those with the initial ones too with --masked_prior_preservation_weight)."""
    passes = 4 if masked_prior(run) else 2
    return passes * per_image * run.latent_source.num_images


def write_report(run: Run, reporter: ProgressReporter, observed: validation.Observed,
                 per_image: int) -> None:  # fmt: skip
    cfg, p = run.config, run.progress
    forwards = report_forwards(run, per_image)
    with run.budget.job("report", forwards), reporter.task("Quality report", forwards) as advance:
        # No gradients are kept, so twice the training batch fits where training did.
        report = quality.quality_report(run.components, run.placeholders, run.latent_source,
                                        run.prompts, run.time_ids, run.initial_vectors, p.step,
                                        2 * cfg.train_batch_size, per_image=per_image,
                                        advance=advance, prior=masked_prior(run))  # fmt: skip
    observed.report = quality.save_report(cfg.output_dir, report)
    observed.quality = report.line()
    reporter.scalars({"eval/loss_initializer": report.loss_initializer,
                      "eval/loss_learned": report.loss_learned}, p.step)  # fmt: skip


def _seconds(cost: float | None) -> str:
    return "unknown time" if cost is None else f"{cost:.2g} s" if cost < 10 else f"{cost:.0f} s"

"""--eval_only: the quality report of a finished output folder. It is an action beside training,
like the CLI: it needs the run exactly as setup() rebuilds it on resume (SDXL time ids,
single files, --init_embedding), so it calls setup() rather than keep a copy that could drift."""

from __future__ import annotations

import dataclasses
import logging

from invokeai_ti.config import TrainingConfig
from invokeai_ti.errors import UserError
from invokeai_ti.files.checkpoint import list_checkpoints, read_state
from invokeai_ti.report import quality
from invokeai_ti.train.setup import setup

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
                            2 * trained.train_batch_size, seed)  # fmt: skip
    path = quality.save_report(trained.output_dir, report)
    return f"{report.line()} Written to {path}."

"""--dry_run's report: what a real run with these flags would do, with the numbers it would use
(the model, images, steps, learning rate, learning options, prompts, masks and outputs)."""

from __future__ import annotations

from typing import Any

from invokeai_ti.data.buckets import describe_buckets
from invokeai_ti.files.config_file import config_file_name


def format_plan(run: Any) -> list[str]:
    """The plan's lines, in the order a run does what they say."""
    cfg = run.config
    used = [p.name for p in run.images.paths]
    shown = ", ".join(used[:8]) + (f" and {len(used) - 8} more" if len(used) > 8 else "")
    skipped = "; ".join(f"{p.name} ({why})" for p, why in run.images.skipped) or "none"
    resume = (
        f"resume from {run.resumed_from} at step {run.progress.step}"
        if run.resumed_from
        else "new run"
    )
    if run.resume_changes:
        resume += f", changed: {'; '.join(run.resume_changes)}"
    steps_per_epoch = -(-run.micro_per_epoch // cfg.gradient_accumulation_steps)
    epochs = -(-run.total_steps // steps_per_epoch)
    lr_rule = (
        f"{cfg.learning_rate:g} x batch {cfg.train_batch_size} x accumulation "
        f"{cfg.gradient_accumulation_steps} x processes {run.world_size}"
        if cfg.scale_lr
        else "not scaled"
    )
    copy = f"; copied to {cfg.root_dir}/embeddings/{cfg.trigger}/" if cfg.copy_to_embeddings else ""
    return [
        f"Dry run OK: model {cfg.model} ({run.components.family}, "
        f"{run.components.weight_dtype}, {run.components.device}), trigger {cfg.placeholder_token} "
        f"x{cfg.num_vectors} from '{cfg.initializer_token}'.",
        f"Images: {len(used)} used from {cfg.train_data_dir} ({shown}); skipped: {skipped}.",
        f"Steps: {run.total_steps} ({resume}) over {epochs} epoch(s) of {steps_per_epoch} steps "
        f"({run.micro_per_epoch} batches per epoch, {len(used)} images x {cfg.repeats} repeats); "
        f"effective batch {cfg.train_batch_size * cfg.gradient_accumulation_steps * run.world_size}.",
        f"Learning rate: {run.learning_rate:.6g} ({lr_rule}), {cfg.lr_scheduler} schedule.",
        learning_options(cfg, run.target_norms),
        *data_plan(run),
        f"Outputs: {cfg.output_dir} (formats {', '.join(cfg.export_format)}, checkpoint-N every "
        f"{cfg.checkpointing_steps} steps){copy}. Nothing was written.",
    ]  # fmt: skip


def learning_options(cfg: Any, target_norms: list[float] | None) -> str:
    """The plan's line for --optimizer, --max_grad_norm, --min_snr_gamma, --noise_offset and
    --embedding_norm, each with what it does in this run."""
    off = "off"
    norm = (
        "kept at " + ", ".join(f"{n:.4g}" for n in target_norms) + " (vocabulary mean)"
        if target_norms
        else "free"
    )
    return (f"Optimizer {cfg.optimizer}; gradient clipping "
            f"{f'at norm {cfg.max_grad_norm:g}' if cfg.max_grad_norm else off}; min-SNR weighting "
            f"{f'gamma {cfg.min_snr_gamma:g}' if cfg.min_snr_gamma else off}; noise offset "
            f"{f'{cfg.noise_offset:g}' if cfg.noise_offset else off}; embedding norm {norm}.")  # fmt: skip


def data_plan(run: Any) -> list[str]:
    """The plan's lines on prompts (templates, captions), loss masks and the config file."""
    cfg, prompts, images = run.config, run.prompts, run.images
    captions = "no captions"
    if prompts.captions is not None:
        have = sum(1 for c in prompts.captions if c)
        how = [
            f"shuffled after {cfg.keep_tokens} tag(s)" if cfg.shuffle_caption else "",
            f"dropped for {cfg.caption_dropout_rate:g} of samples"
            if cfg.caption_dropout_rate
            else "",
        ]
        extra = "; ".join(h for h in how if h)
        captions = (
            f"captions from {cfg.caption_extension} files ({have} of {len(prompts.captions)} "
            f"images have one{'; ' + extra if extra else ''})"
        )
    example = prompts.text(0, 0)
    masks = "none (every pixel weighs the same)"
    if images.masks is not None:
        source = "alpha channels" if cfg.alpha_mask else f"{cfg.mask_extension} files"
        masks = (
            f"{source} of {len(images.paths)} images, mean weight {float(images.masks.mean()):.2f}"
        )
        if cfg.masked_prior_preservation_weight:
            masks += (
                f"; outside them the prediction is held to the initializer's, weight "
                f"{cfg.masked_prior_preservation_weight:g}"
            )
    given = f"read from {cfg.config}; " if cfg.config else ""
    bucketed = []
    if images.fits is not None:
        bucketed = [
            f"Buckets (width x height): {describe_buckets(images.fits)}; each batch from one."
        ]
    return [*bucketed,
        f"Prompts: {prompts.num_templates} {prompts.template_source} templates, {captions}; "
        f"e.g. '{example}'.",
        f"Loss masks: {masks}.",
        f"Config file: {given}each run writes {cfg.output_dir}/{config_file_name(cfg)}.",
    ]  # fmt: skip

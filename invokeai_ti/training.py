"""The training run: setup() in a fixed order, train_step(), and the loop around it."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from invokeai_ti import checkpoint as ckpt
from invokeai_ti import dataset, export, formats, latents, optim, progress, resuming, validation
from invokeai_ti.config import TrainingConfig
from invokeai_ti.denoising import prediction_and_target
from invokeai_ti.embedding import (
    Placeholder,
    add_placeholder,
    prompt_text,
    sdxl_time_ids,
)
from invokeai_ti.errors import TrainingStopped
from invokeai_ti.models import Components, load_components
from invokeai_ti.progress import ProgressReporter, RunResult, format_plan
from invokeai_ti.root import check_writable, embeddings_dir, logging_path, resolve_model
from invokeai_ti.stopping import StopRequest

log = logging.getLogger(__name__)
MAX_NONFINITE_IN_A_ROW = 10


@dataclass
class Run:
    config: TrainingConfig
    components: Components
    placeholders: list[Placeholder]  # one per text encoder
    images: dataset.TrainingImages
    latent_source: latents.LatentSource | None
    prompt_ids: list[torch.Tensor]  # per tokenizer: [num_templates, max_length]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    progress: ckpt.Progress
    total_steps: int
    micro_per_epoch: int
    rank: int
    world_size: int
    learning_rate: float
    resumed_from: Any = None
    time_ids: torch.Tensor | None = None  # SDXL: [num_images, 6] size and crop conditioning
    initial_vectors: list[torch.Tensor] | None = None  # the initializer's, for the quality report
    saved_step: int = -1  # the step whose checkpoint is on disk already (not written twice)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def fingerprint(self) -> dict[str, Any]:
        return resuming.fingerprint(self.config, self.components.token_dims, self.world_size)


def setup(config: TrainingConfig) -> Run:
    from accelerate import PartialState

    # 1. Processes first: the device decides the weight dtype, the process count the lr and shards.
    # Without a GPU, `accelerate launch --multi_gpu` starts CPU processes: they need cpu=True to
    # join one gloo group instead of each training alone.
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    state = PartialState(cpu=several and not torch.cuda.is_available())
    if not state.is_main_process:
        logging.getLogger("invokeai_ti").setLevel(logging.ERROR)  # one copy of every message
    elif state.num_processes > 1:
        log.info("Training on %d processes (%s, %s).", state.num_processes, state.device,
                 state.backend)  # fmt: skip
    if config.mixed_precision == "fp16" and state.device.type == "cpu":
        log.warning("--mixed_precision fp16 needs a GPU; training in fp32 on the CPU.")
        config = dataclasses.replace(config, mixed_precision="no")
    if config.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    check_writable(config.output_dir, "--output_dir")
    if state.is_main_process and not config.dry_run:  # what a killed save left: never read
        ckpt.remove_temp_files(config.output_dir)
        ckpt.remove_temp_files(embeddings_dir(config.root_dir, config.trigger))
    # 2. Frozen model, in the dtype the precision and device allow.
    source = resolve_model(config)
    log.info("Loading %s (Ctrl-C stops at once until training starts).", source.path)
    components = load_components(config, source, state.device)
    # 3. New tokens need the tokenizers and encoders; --init_embedding and the resume check need
    #    their dims, and fail here, before any time goes into images or latents.
    dims, family = components.token_dims, components.family
    initial = formats.initial_vectors(config.init_embedding, config.num_vectors, dims, family)
    placeholders = [
        add_placeholder(config, tok, enc, init)
        for tok, enc, init in zip(components.tokenizers, components.text_encoders, initial)
    ]
    resume_folder = ckpt.find_resume_folder(config.output_dir, config.resume_from_checkpoint)
    if resume_folder is not None:
        what = f"--resume_from_checkpoint {resume_folder}"
        formats.check_token_dims(what, formats.read_embedding(resume_folder, what).dims, dims, family)
        ckpt.check_fingerprint(resume_folder, ckpt.read_fingerprint(resume_folder),
                               resuming.fingerprint(config, dims, state.num_processes))  # fmt: skip
    # 4. Every image decoded now, so a bad file fails before any GPU time is spent.
    images = dataset.load_training_images(
        config.train_data_dir, config.resolution, config.center_crop, config.dataloader_num_workers
    )
    # 5. Latents need the VAE and the images; the VAE is freed once they are cached.
    latent_source = None
    if not config.dry_run:
        latent_source = latents.build_latent_source(
            components.vae, images.pixels, config.cache_latents
        )
        if config.cache_latents:
            components.vae = None
    # 6. Prompts are tokenized once; they need the tokenizers that know the new tokens.
    templates = [t.format(prompt_text(config)) for t in dataset.templates_for(config.learnable_property)]
    prompt_ids = [
        tok(templates, padding="max_length", truncation=True, max_length=tok.model_max_length,
            return_tensors="pt").input_ids.to(state.device)
        for tok in components.tokenizers
    ]  # fmt: skip
    # 7. Step counts need the image count and the process count; epochs bound the steps too.
    micro = dataset.micro_batches_per_epoch(
        len(images.paths), config.repeats, config.train_batch_size, state.num_processes
    )
    steps_per_epoch = -(-micro // config.gradient_accumulation_steps)
    total = min(config.max_train_steps, config.num_train_epochs * steps_per_epoch)
    # 8. Optimizer over the new vectors only, then the schedule for the known total.
    lr = optim.scaled_learning_rate(config, state.num_processes)
    optimizer = optim.build_optimizer(config, [p.vectors for p in placeholders], lr)
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
    run = Run(config, components, placeholders, images, latent_source, prompt_ids, optimizer,
              None, torch.amp.GradScaler(state.device.type, enabled=components.weight_dtype
                                         == torch.float16),
              ckpt.Progress(seed=seed), total, micro, state.process_index, state.num_processes, lr)  # fmt: skip
    run.initial_vectors = [ph.detached() for ph in placeholders]  # before resume overwrites them
    # 9. Resume last: it loads into the optimizer and may move the schedule's start.
    if resume_folder is not None:
        resuming.resume(run, resume_folder)
    run.schedule = optim.build_lr_schedule(config, optimizer, total, run.progress.step)
    if components.family == "sdxl":  # SDXL conditions on each image's original size and crop
        run.time_ids = sdxl_time_ids(images.sizes, config.resolution, config.center_crop).to(
            state.device
        )
    return run


def train_step(run: Run, samples: list[dataset.Sample], generator: torch.Generator) -> torch.Tensor:
    """One micro-batch: latents, noise, timesteps, prompts with the current vectors, UNet, loss."""
    c, device = run.components, run.components.device
    b, offset = run.config.train_batch_size, run.rank * run.config.train_batch_size
    global_b = b * run.world_size  # draws are made for the global batch, then sliced, so the
    mine = slice(offset, offset + len(samples))  # result does not depend on the process count
    shape = run.latent_source.latent_shape
    latent_draw = torch.randn((global_b, *shape), generator=generator)[mine]
    noise = torch.randn((global_b, *shape), generator=generator)[mine].to(device)
    t = torch.randint(0, c.noise_scheduler.config.num_train_timesteps, (global_b,),
                      generator=generator)[mine].to(device)  # fmt: skip
    image_index = torch.tensor([s.image_index for s in samples])
    flipped = torch.tensor([s.flipped for s in samples])
    templates = torch.tensor([s.template_index for s in samples], device=device)
    x0 = run.latent_source.draw(image_index, flipped, latent_draw)  # [B, 4, h, w] scaled
    time_ids = run.time_ids[image_index] if run.time_ids is not None else None
    pred, target = prediction_and_target(c, x0, noise, t, run.prompt_ids, templates, time_ids)
    return F.mse_loss(pred, target)


def optimizer_step(run: Run, samples_of_epoch: list[dataset.Sample]) -> float:
    """Accumulate up to --gradient_accumulation_steps micro-batches (never across an epoch end),
    average gradients over processes, and update the vectors unless the loss is not finite."""
    p, cfg = run.progress, run.config
    count = min(cfg.gradient_accumulation_steps, run.micro_per_epoch - p.position)
    total_loss = torch.zeros((), device=run.components.device)
    for micro in range(count):
        samples = dataset.micro_batch(samples_of_epoch, p.position, cfg.train_batch_size,
                                      run.rank, run.world_size)  # fmt: skip
        generator = torch.Generator().manual_seed(((p.seed * 1_000_003 + p.step) * 1009 + micro) % 2**63)
        if samples:
            loss = train_step(run, samples, generator)
            run.scaler.scale(loss / count).backward()
            total_loss += loss.detach() / count
        p.position += 1
    params = [ph.vectors for ph in run.placeholders]
    if run.world_size > 1:
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            torch.distributed.all_reduce(param.grad)
            param.grad /= run.world_size
        torch.distributed.all_reduce(total_loss)
        total_loss /= run.world_size
    loss = total_loss.item()
    # The fp16 scaler skips non-finite gradients itself; without it they would poison the vectors.
    grads_finite = run.scaler.is_enabled() or all(
        q.grad is None or bool(torch.isfinite(q.grad).all()) for q in params)  # fmt: skip
    if math.isfinite(loss) and grads_finite:
        run.scaler.step(run.optimizer)
        run.scaler.update()
        p.nonfinite_streak = 0
    else:
        p.nonfinite_steps += 1
        p.nonfinite_streak += 1
    run.optimizer.zero_grad(set_to_none=True)
    run.schedule.step()
    p.step += 1
    if p.position >= run.micro_per_epoch:
        p.epoch, p.position = p.epoch + 1, 0
    return loss


def train(config: TrainingConfig) -> RunResult:
    """Set up, loop until the total or a stop request, then write the final files."""
    progress.check_report_to(config.report_to)  # flag problems fail before any model is loaded
    validation.check_validation_prompt(config)
    with StopRequest() as stop:  # Ctrl-C during setup stops at once; in the loop it saves first
        run = setup(config)
        if config.dry_run:
            return RunResult(0, format_plan(run))
        p = run.progress
        reporter = ProgressReporter(config.log_format, run.total_steps, p.step,
                                    config.log_every_steps, enabled=run.is_main,
                                    tracker_dir=logging_path(config), report_to=config.report_to,
                                    tracker_config=config.to_dict())  # fmt: skip
        if p.step >= run.total_steps:
            reporter.message(f"Already trained {p.step} of {run.total_steps} steps; writing the "
                             "outputs.")  # fmt: skip
        elif p.step == 0 and run.is_main and validation.validation_every(config):
            validate(run, reporter)  # step 0: what the initializer alone gives, to compare against
        stop.arm()
        if not loop(run, reporter, stop):
            return resuming.stop_and_save(run, reporter, stop)
        stop.disarm()
        files, observed = finish(run, reporter)
    if run.world_size > 1:
        torch.distributed.barrier()  # every process ends after the files exist
        torch.distributed.destroy_process_group()
    lines = progress.describe_outputs(p, files, observed)
    reporter.finish({**progress.output_paths(files, observed), "nonfinite_steps": p.nonfinite_steps,
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
                                            run.prompt_ids[0].shape[0], p.seed, p.epoch)  # fmt: skip
        before = [ph.detached() for ph in run.placeholders]
        p.losses.append(optimizer_step(run, samples))
        if math.isfinite(p.losses[-1]):
            last_good = before  # the newest vectors whose loss was finite
        report_step(run, reporter)
        periodic_jobs(run, reporter)
        if p.nonfinite_streak >= MAX_NONFINITE_IN_A_ROW:
            raise_nonfinite(run, last_good, reporter)
        if stop.requested:
            return False
    return True


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
        export.save_step_embeds(cfg.output_dir, cfg.placeholder_token,
                                [ph.vectors for ph in run.placeholders], step)  # fmt: skip
        validation.save_loss_plot(cfg.output_dir, run.progress.losses)
    every = validation.validation_every(cfg)
    if every and step % every == 0:
        validate(run, reporter)
    if step % cfg.checkpointing_steps == 0:
        reporter.message(f"Saved checkpoint {resuming.save_state(run)}")


def validate(run: Run, reporter: ProgressReporter):
    """The validation grid of the current step from the current vectors, at the run's seed."""
    return validation.save_validation_grid(run.components, run.config, run.progress.step,
                                           run.progress.seed, reporter)  # fmt: skip


def raise_nonfinite(run: Run, last_good: list[torch.Tensor], reporter: ProgressReporter) -> None:
    """Stop with the newest vectors whose loss was finite saved as the run's embedding."""
    p = run.progress
    with torch.no_grad():
        for placeholder, vectors in zip(run.placeholders, last_good):
            placeholder.vectors.copy_(vectors)
    files = save_outputs(run)
    if files is not None:
        validation.save_loss_plot(run.config.output_dir, p.losses)
    where = f" The last good embedding is in {files.main}." if files else ""
    reporter.finish({"stopped_at": p.step, "nonfinite_steps": p.nonfinite_steps,
                     "embedding": str(files.main) if files else None}, event="stopped")  # fmt: skip
    raise TrainingStopped(
        f"the loss was not finite for {MAX_NONFINITE_IN_A_ROW} steps in a row (step {p.step}, "
        f"{p.nonfinite_steps} skipped in all).{where} Try --mixed_precision bf16, or no (fp32), "
        "or a lower --learning_rate."
    )


def finish(run: Run, reporter: ProgressReporter):
    """The final files, then what the run learned: loss plot, last grid, quality report."""
    files = save_outputs(run)
    observed = validation.Observed()
    if files is None:
        return None, observed
    cfg, p = run.config, run.progress
    observed.loss_plot = validation.save_loss_plot(cfg.output_dir, p.losses)
    if validation.validation_every(cfg):
        observed.validation_grid = validate(run, reporter)
    # No gradients are kept, so twice the training batch fits where training did.
    report = validation.quality_report(run.components, run.placeholders, run.latent_source,
                                       run.prompt_ids, run.time_ids, run.initial_vectors, p.step,
                                       2 * cfg.train_batch_size)  # fmt: skip
    observed.report = validation.save_report(cfg.output_dir, report)
    observed.quality = report.line()
    reporter.scalars({"eval/loss_initializer": report.loss_initializer,
                      "eval/loss_learned": report.loss_learned}, p.step)  # fmt: skip
    if cfg.push_to_hub:
        export.push_to_hub(cfg)  # last, so the upload has the report and the plot too
    return files, observed


def save_outputs(run: Run) -> export.ExportedFiles | None:
    """Final checkpoint (so the run can be extended later) and the embedding files."""
    if not run.is_main:
        return None
    resuming.save_state(run)
    cfg, vectors = run.config, [ph.vectors.detach() for ph in run.placeholders]
    source = run.components.source
    try:
        files = export.save_final_embeds(cfg, vectors, run.progress.step, source)
        if not cfg.only_save_embeds:
            files.pipeline_dir = export.save_full_pipeline(
                cfg, source, run.placeholders[0].tokens, vectors
            )
    except OSError as exc:
        raise ckpt.check_disk_error(exc, cfg.output_dir) from exc
    return files

"""setup(): build a Run in one fixed order; each stage says what it needs from the ones before.
`--dry_run` runs the same setup() and stops before the loop."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import torch

from invokeai_ti.config import TrainingConfig
from invokeai_ti.data import buckets, captions, dataset, latents, masks
from invokeai_ti.files import atomic, formats
from invokeai_ti.files import checkpoint as ckpt
from invokeai_ti.invokeai.model_source import resolve_model
from invokeai_ti.invokeai.root import check_writable, embeddings_dir
from invokeai_ti.models.loading import Components, load_components
from invokeai_ti.models.placeholder import Placeholder, add_placeholder, prompt_text, sdxl_time_ids
from invokeai_ti.train import optimizer, saving
from invokeai_ti.train.run import Run

log = logging.getLogger(__name__)


def setup(config: TrainingConfig) -> Run:
    # 1. Processes first: the device decides the weight dtype, the process count the lr and shards.
    state, config = start_processes(config)
    check_writable(config.output_dir, "--output_dir")
    if state.is_main_process and not config.dry_run:  # what a killed save left: never read
        atomic.remove_temp_files(config.output_dir)
        atomic.remove_temp_files(embeddings_dir(config.root_dir, config.trigger))
    # 2. Frozen model, in the dtype the precision and device allow.
    source = resolve_model(config)
    log.info("Loading %s (Ctrl-C stops at once until training starts).", source.path)
    started = time.perf_counter()
    components = load_components(config, source, state.device)
    seconds = {"loading": time.perf_counter() - started}
    # 3. New tokens need the tokenizers and encoders; --init_embedding and the resume check need
    #    their dims, and fail here, before any time goes into images or latents.
    placeholders = add_placeholders(config, components)
    resume_folder = check_resume(config, components, state.num_processes)
    # 4. Every image decoded now, so a bad file fails before any GPU time is spent; its caption
    #    and mask with it, and a resume whose captions or masks changed is refused here.
    started = time.perf_counter()
    images, prompts, data_print = load_data(config, resume_folder, components, state.num_processes)
    # 5. Latents need the VAE and the images; the VAE is freed once they are cached.
    latent_source = None
    if not config.dry_run:
        latent_source = latents.build_latent_source(components.vae, images.pixels,
                                                    config.cache_latents, masks=images.masks)  # fmt: skip
        if config.cache_latents:
            components.vae = None
    seconds["images and latents"] = time.perf_counter() - started
    # 6. Step counts need the image count (per bucket) and the process count; epochs bound them.
    micro = dataset.micro_batches_per_epoch(len(images.paths), config.repeats,
                                            config.train_batch_size, state.num_processes,
                                            images.bucket_of)  # fmt: skip
    steps_per_epoch = -(-micro // config.gradient_accumulation_steps)
    total = min(config.max_train_steps, config.num_train_epochs * steps_per_epoch)
    # 7. Optimizer over the new vectors only; the schedule waits for the resume's start step.
    lr = optimizer.scaled_learning_rate(config, state.num_processes)
    adamw = optimizer.build_optimizer(config, [p.vectors for p in placeholders], lr)
    scaler = torch.amp.GradScaler(state.device.type,
                                  enabled=components.weight_dtype == torch.float16)  # fmt: skip
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
    run = Run(config, components, placeholders, images, latent_source, prompts, adamw, None,
              scaler, ckpt.Progress(seed=seed), total, micro, state.process_index,
              state.num_processes, lr, data_fingerprint=data_print)  # fmt: skip
    run.initial_vectors = [ph.detached() for ph in placeholders]  # before resume overwrites them
    run.seconds = seconds
    if config.embedding_norm == "keep":  # from the frozen table, so a resume computes the same
        run.target_norms = [optimizer.vocabulary_norm(ph.lookup.weight) for ph in placeholders]
    # 8. Resume last: it loads into the optimizer and may move the schedule's start.
    if resume_folder is not None:
        saving.resume(run, resume_folder)
    run.schedule = optimizer.build_lr_schedule(config, adamw, total, run.progress.step)
    if components.family == "sdxl":  # SDXL conditions on each image's original size and crop
        run.time_ids = sdxl_time_ids(images.sizes, config.resolution, config.center_crop,
                                     images.fits).to(state.device)  # fmt: skip
    return run


def start_processes(config: TrainingConfig):
    """accelerate's process state, and the config with what this machine cannot do turned off."""
    from accelerate import PartialState

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
    return state, config


def add_placeholders(config: TrainingConfig, components: Components) -> list[Placeholder]:
    """The new tokens in every tokenizer/encoder pair, initialised from the initializer or
    --init_embedding."""
    dims, family = components.token_dims, components.family
    initial = formats.initial_vectors(config.init_embedding, config.num_vectors, dims, family)
    return [
        add_placeholder(config, tok, enc, init)
        for tok, enc, init in zip(components.tokenizers, components.text_encoders, initial)
    ]


def check_resume(config: TrainingConfig, components: Components, world_size: int) -> Path | None:
    """The checkpoint to resume from, refused now if it belongs to another model or token."""
    folder = ckpt.find_resume_folder(config.output_dir, config.resume_from_checkpoint)
    if folder is not None:
        what = f"--resume_from_checkpoint {folder}"
        dims, family = components.token_dims, components.family
        saved = formats.read_embedding(folder, what)
        formats.check_token_dims(what, saved.dims, dims, family)
        ckpt.check_fingerprint(folder, ckpt.read_fingerprint(folder),
                               ckpt.fingerprint(config, dims, world_size))  # fmt: skip
        ckpt.check_vectors(folder, saved.vectors, config.num_vectors)
    return folder


def load_data(config: TrainingConfig, resume_folder: Path | None, components: Components,
              world_size: int) -> tuple[dataset.TrainingImages, captions.Prompts, dict[str, Any]]:  # fmt: skip
    """Images, their loss masks and captions, and what they add to the resume fingerprint (checked
    against `resume_folder` at once)."""
    mask_extension, sizes = config.mask_extension, None
    if config.enable_bucket:
        sizes = buckets.bucket_sizes(config.resolution, config.min_bucket_reso,
                                     config.max_bucket_reso, config.bucket_reso_steps)  # fmt: skip
    images = dataset.load_training_images(config.train_data_dir, config.resolution,
                                          config.center_crop, config.dataloader_num_workers,
                                          mask_extension, sizes)  # fmt: skip
    if config.alpha_mask or mask_extension:
        images.masks = masks.load_masks(images.paths, config.resolution, config.center_crop,
                                        config.alpha_mask, mask_extension, images.fits)  # fmt: skip
    prompts = captions.build_prompts(config, images.paths, prompt_text(config))
    data_print = data_fingerprint(images, prompts)
    if resume_folder is not None:
        current = ckpt.fingerprint(config, components.token_dims, world_size, data_print)
        ckpt.check_fingerprint(resume_folder, ckpt.read_fingerprint(resume_folder), current)
    return images, prompts, data_print


def data_fingerprint(images: dataset.TrainingImages, prompts: captions.Prompts) -> dict[str, Any]:
    """Captions, templates and masks as short hashes, and each image's bucket: a resume must train
    on the same ones. None where a run has none, so older checkpoints still match."""
    names = [path.name for path in images.paths]
    return {
        "buckets": None if images.fits is None else {
            name: f"{fit.width}x{fit.height}" for name, fit in zip(names, images.fits)},
        "captions": None if prompts.captions is None else {
            name: captions.digest_text(text) for name, text in zip(names, prompts.captions)},
        "templates": None if prompts.template_source.startswith("built-in") else
        captions.digest_text("\n".join(prompts.templates)),
        "masks": None if images.masks is None else masks.mask_digests(images.paths, images.masks),
    }  # fmt: skip

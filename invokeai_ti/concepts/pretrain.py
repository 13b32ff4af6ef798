"""Pretraining the miniature Stable Diffusion of the concept world, reproducibly from a seed:
first the VAE on renders, then the UNet and the text encoder together on captioned renders.

The shapes are SD1's (CLIP tokenizer with the real 49,408-word vocabulary, CLIPTextModel,
AutoencoderKL, UNet2DConditionModel, a DDIM/DDPM schedule) at a size this CPU trains in minutes.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from invokeai_ti.concepts.world import GENERIC_SHARE, SIZE, caption, random_scene, render

log = logging.getLogger(__name__)

# DDPM's linear schedule, not SD's scaled_linear: at 16x16 latents scaled_linear leaves enough
# signal at t=999 that the model reads colour from the noise instead of the prompt.
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                prediction_type="epsilon")  # fmt: skip
CAPTION_DROPOUT = 0.1  # empty captions teach the unconditional model classifier-free guidance uses


@dataclass
class PretrainSettings:
    seed: int = 0
    vae_steps: int = 400
    unet_steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 1e-3
    ema_decay: float = 0.999
    log_every: int = 50
    device: str = "cpu"
    # > 0: render this many scenes once, in parallel, encode them once, and draw every UNet batch
    # from them; on a GPU, rendering each batch on one core would take as long as the step.
    pool_size: int = 0
    # > 0: stop the UNet at this wall time; pretrain.json records the step to reproduce it with.
    unet_seconds: float = 0.0
    snapshot_every: int = 500
    # A pipeline folder to go on from (its VAE kept frozen, the UNet and text encoder trained
    # further with a fresh optimizer); pretrain.json then appends that run to "continued".
    continue_from: str = ""
    # The captions' words (world.caption): how often a named shape is called "shape", and how
    # often a round thing called "shape" is said to be round (0: the shipped model's captions).
    generic_share: float = GENERIC_SHARE
    round_share: float = 0.0
    # Train only the text encoder (a continuation): the UNet keeps what it draws, and the
    # encoder learns to ask for it in the captions' words.
    freeze_unet: bool = False
    # Say "round" of circles called by name too ("round red circle"), so the word alone leans
    # to neither round shape.
    round_named: bool = False


def build_untrained(seed: int):
    """Tokenizer, text encoder, VAE and UNet with seeded random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from invokeai_ti.models.tiny import load_clip_tokenizer

    torch.manual_seed(seed)
    text_config = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406,
                                 eos_token_id=49407, pad_token_id=49407, hidden_act="quick_gelu",
                                 hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                 num_hidden_layers=2, projection_dim=32)  # fmt: skip
    text_encoder = CLIPTextModel(text_config)
    # Two blocks: an 8x VAE would leave 4x4 latents for a 32 px picture, too coarse for a ring.
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32),
                        norm_num_groups=8, sample_size=SIZE)  # fmt: skip
    # No attention at 16x16 (it tripled the step time); text enters at 8x8 and 4x4.
    unet = UNet2DConditionModel(sample_size=SIZE // 2, in_channels=4, out_channels=4,
                                layers_per_block=1, block_out_channels=(32, 64, 96),
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                  "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                                "UpBlock2D"),
                                cross_attention_dim=32, attention_head_dim=8,
                                norm_num_groups=16)  # fmt: skip
    return load_clip_tokenizer(), text_encoder, vae, unet


def load_trained(model_dir: Path):
    """Tokenizer, text encoder, VAE and UNet of a saved concept-world pipeline."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from invokeai_ti.models.tiny import load_clip_tokenizer

    return (load_clip_tokenizer(),
            CLIPTextModel.from_pretrained(str(model_dir), subfolder="text_encoder"),
            AutoencoderKL.from_pretrained(str(model_dir), subfolder="vae").eval().requires_grad_(False),
            UNet2DConditionModel.from_pretrained(str(model_dir), subfolder="unet"))  # fmt: skip


def _batch(rng: random.Random, n: int, templates: list[str],
           words: dict | None = None) -> tuple[torch.Tensor, list[str]]:  # fmt: skip
    """n rendered scenes and their captions; `words` are caption's keyword options (its
    defaults: the shipped model's captions)."""
    scenes = [random_scene(rng) for _ in range(n)]
    return _pixels([render(s) for s in scenes]), [caption(s, rng, templates, **(words or {}))
                                                  for s in scenes]  # fmt: skip


def _pixels(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 [H, W, 3] renders -> float [N, 3, H, W] in [-1, 1], the VAE's input."""
    return torch.from_numpy(np.stack(images).astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)


def train_vae(vae, settings: PretrainSettings, templates: list[str]) -> None:
    """Reconstruction plus a small KL term, so latents stay near-deterministic and well scaled."""
    rng = random.Random(settings.seed * 7 + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    for step in range(settings.vae_steps):
        pixels = _batch(rng, 32, templates)[0].to(settings.device)
        dist = vae.encode(pixels).latent_dist
        recon = vae.decode(dist.sample()).sample
        kl = dist.kl().mean() / dist.mean[0].numel()
        loss = torch.nn.functional.mse_loss(recon, pixels) + 1e-4 * kl
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % settings.log_every == 0:
            log.info("vae step %d loss %.5f", step, loss.item())
    vae.eval().requires_grad_(False)


def reconstruction_accuracy(vae, seed: int, count: int = 256) -> float:
    """Share of renders whose VAE round trip the judge still reads as the same concept and
    background: the ceiling of everything the UNet can learn."""
    from invokeai_ti.concepts.judge import judge_image

    rng = random.Random(seed * 7 + 5)
    scenes = [random_scene(rng) for _ in range(count)]
    pixels = _pixels([render(s) for s in scenes]).to(vae.device)
    with torch.no_grad():
        recon = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
    images = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    right = 0
    for scene, image in zip(scenes, images):
        verdict = judge_image(image)
        right += verdict.concept == scene.concept and verdict.background == scene.background
    return right / count


def latent_scale(vae, templates: list[str], seed: int) -> float:
    """SD's scaling_factor: one over the latents' standard deviation, measured on 512 renders."""
    pixels, _ = _batch(random.Random(seed * 7 + 2), 512, templates)
    with torch.no_grad():
        return float(1.0 / vae.encode(pixels.to(vae.device)).latent_dist.mean.std())


class ScenePool:
    """`size` scenes drawn from the seed, rendered once by every core (order kept, so the pool is
    the same on any machine) and encoded once: a batch is then an index draw on the device."""

    def __init__(self, size: int, seed: int) -> None:
        from multiprocessing import get_context

        rng = random.Random(seed * 7 + 6)
        self.scenes = [random_scene(rng) for _ in range(size)]
        # fork before any CUDA work (pretrain builds the pool first); workers only draw with PIL
        with get_context("fork").Pool(os.cpu_count() or 1) as workers:
            self.images = workers.map(render, self.scenes, chunksize=512)
        self.mean = self.std = torch.empty(0)

    def encode(self, vae, chunk: int = 2048) -> None:
        means, stds = [], []
        with torch.no_grad():
            for start in range(0, len(self.images), chunk):
                dist = vae.encode(
                    _pixels(self.images[start : start + chunk]).to(vae.device)
                ).latent_dist
                means.append(dist.mean), stds.append(dist.std)
        self.mean, self.std = torch.cat(means), torch.cat(stds)


class Ema:
    """Exponential moving average of the trained weights; the shipped weights are the average."""

    def __init__(self, params: list[torch.Tensor], decay: float) -> None:
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # warm start: early weights fade fast
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach(), 1 - decay)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for s, p in zip(self.shadow, self.params):
            p.copy_(s)


def train_unet(tokenizer, text_encoder, vae, unet, settings: PretrainSettings,
               templates: list[str], pool: ScenePool | None = None, on_checkpoint=None) -> int:  # fmt: skip
    """Epsilon prediction on VAE latents, captions dropped 10% of the time; warmup, then a
    constant rate (the EMA does the averaging, so a run may stop at any step). Returns the steps
    run: `unet_steps`, or fewer when `unet_seconds` ran out first."""
    from diffusers import DDPMScheduler

    device = settings.device
    scheduler = DDPMScheduler(**SCHEDULE)
    rng = random.Random(settings.seed * 7 + 3)
    gen = torch.Generator(device).manual_seed(settings.seed * 7 + 4)
    unet.requires_grad_(not settings.freeze_unet)
    params = [*([] if settings.freeze_unet else unet.parameters()), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 200))
    ema = Ema(params, settings.ema_decay)
    words = dict(generic_share=settings.generic_share, round_share=settings.round_share,
                 round_named=settings.round_named)  # fmt: skip
    cache: dict[str, torch.Tensor] = {}
    unet.train(not settings.freeze_unet), text_encoder.train()
    started, step = time.time(), 0
    while step < settings.unet_steps:
        if settings.unet_seconds and time.time() - started > settings.unet_seconds:
            log.info("unet stopped by --unet_seconds at step %d", step)
            break
        if pool is None:
            pixels, captions = _batch(rng, settings.batch_size, templates, words)
            with torch.no_grad():
                dist = vae.encode(pixels.to(device)).latent_dist
            mean, std = dist.mean, dist.std
        else:
            index = torch.randint(len(pool.scenes), (settings.batch_size,), generator=gen,
                                  device=device)  # fmt: skip
            captions = [caption(pool.scenes[i], rng, templates, **words) for i in index.tolist()]
            mean, std = pool.mean[index], pool.std[index]
        captions = ["" if rng.random() < CAPTION_DROPOUT else c for c in captions]
        ids = torch.stack([_ids(tokenizer, c, cache) for c in captions]).to(device)
        x0 = mean + std * torch.randn(mean.shape, generator=gen, device=device)
        x0 = x0 * vae.config.scaling_factor
        noise = torch.randn(x0.shape, generator=gen, device=device)
        t = torch.randint(0, SCHEDULE["num_train_timesteps"], (len(x0),), generator=gen,
                          device=device)  # fmt: skip
        hidden = text_encoder(ids)[0]
        pred = unet(scheduler.add_noise(x0, noise, t), t, hidden).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        schedule.step()
        ema.update(step)
        step += 1
        if step % settings.log_every == 1:
            log.info("unet step %d/%d loss %.4f (%.0f s)", step, settings.unet_steps, loss.item(),
                     time.time() - started)  # fmt: skip
        if on_checkpoint and step % settings.snapshot_every == 0 and step < settings.unet_steps:
            on_checkpoint(step, ema)
    ema.copy_to_model()
    unet.eval().requires_grad_(False), text_encoder.eval().requires_grad_(False)
    return step


def _ids(tokenizer, text: str, cache: dict[str, torch.Tensor]) -> torch.Tensor:
    if text not in cache:
        cache[text] = tokenizer(text, padding="max_length", max_length=77, truncation=True,
                                return_tensors="pt").input_ids[0]  # fmt: skip
    return cache[text]


def sampling_scheduler():
    """DDIM on the training betas. The predicted x0 is not clipped: the 1500-step CPU model of
    2026-12-04 needed clipping to +-3 (unclipped samples drifted and decoded as texture), but the
    GPU-pretrained one draws the captioned concept in 0.87 of samples unclipped against 0.63
    clipped (examples/concepts-results-2026-12-04b.md)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1, **SCHEDULE)


def make_pipeline(tokenizer, text_encoder, vae, unet):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=sampling_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)  # fmt: skip


def pretrain(output_dir: Path, settings: PretrainSettings) -> Path:
    """Build, train and save the pipeline as a diffusers folder (safetensors), with pretrain.json
    (the settings and the steps run, to reproduce it); returns the folder."""
    import copy

    from invokeai_ti.data.dataset import OBJECT_TEMPLATES
    from invokeai_ti.models.tiny import write_clip_tokenizer_files

    started = time.time()
    pool = ScenePool(settings.pool_size, settings.seed) if settings.pool_size else None
    torch.manual_seed(settings.seed)
    if settings.continue_from:
        tokenizer, text_encoder, vae, unet = load_trained(Path(settings.continue_from))
    else:
        tokenizer, text_encoder, vae, unet = build_untrained(settings.seed)
    for module in (text_encoder, vae, unet):
        module.to(settings.device)
    if not settings.continue_from:
        train_vae(vae, settings, OBJECT_TEMPLATES)
        vae.register_to_config(scaling_factor=latent_scale(vae, OBJECT_TEMPLATES, settings.seed))
    recon_right = reconstruction_accuracy(vae, settings.seed)
    log.info("vae scaling_factor %.4f, reconstructions judged right: %.3f",
             vae.config.scaling_factor, recon_right)  # fmt: skip
    if pool is not None:
        pool.encode(vae)

    def save(folder: Path, text_encoder, unet) -> None:
        pipe = make_pipeline(tokenizer, text_encoder, vae, unet).to("cpu")
        pipe.save_pretrained(str(folder), safe_serialization=True)
        vae.to(settings.device)
        # vocab.json and merges.txt too: older transformers' slow CLIPTokenizer needs them.
        write_clip_tokenizer_files(folder / "tokenizer")

    def save_snapshot(step: int, ema: Ema) -> None:
        live = [p.detach().clone() for p in ema.params]
        ema.copy_to_model()
        save(output_dir.with_name(f"{output_dir.name}-step{step}"), copy.deepcopy(text_encoder),
             copy.deepcopy(unet))  # fmt: skip
        with torch.no_grad():
            for p, value in zip(ema.params, live):
                p.copy_(value)

    steps = train_unet(tokenizer, text_encoder, vae, unet, settings, OBJECT_TEMPLATES, pool,
                       save_snapshot)  # fmt: skip
    save(output_dir, text_encoder, unet)
    record = dict(asdict(settings), unet_steps_run=steps, vae_reconstructions_right=recon_right,
                  seconds=round(time.time() - started, 1), torch=torch.__version__,
                  reproduce=f"python -m invokeai_ti.concepts model DIR --pretrain --seed {settings.seed} "
                  f"--vae_steps {settings.vae_steps} --unet_steps {steps} --batch_size "
                  f"{settings.batch_size} --pool_size {settings.pool_size} --device {settings.device} "
                  f"--learning_rate {settings.learning_rate}")  # fmt: skip
    if (settings.generic_share, settings.round_share) != (GENERIC_SHARE, 0.0):
        record["reproduce"] += (f" --generic_share {settings.generic_share} "
                                f"--round_share {settings.round_share}")  # fmt: skip
    if settings.round_named:
        record["reproduce"] += " --round_named"
    if settings.freeze_unet:
        record["reproduce"] += " --freeze_unet"
    if settings.continue_from:
        source = Path(settings.continue_from) / "pretrain.json"
        record = chain_record(json.loads(source.read_text()) if source.is_file() else {}, record)
    (output_dir / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n")
    return output_dir


def chain_record(previous: dict, record: dict) -> dict:
    """The source's record with this continuation appended to its "continued" list, and one
    command that rebuilds the whole chain: the source's, then this run from its folder (DIR, DIR2,
    ... for each run) into the next."""
    earlier = continuations(previous)
    number = len(earlier) + 1
    source, target = ("DIR" if number == 1 else f"DIR{number}"), f"DIR{number + 1}"
    command = record["reproduce"].replace("model DIR ", f"model {target} ")
    record["reproduce"] = (f"{previous.get('reproduce', '(unknown source)')} && {command} "
                           f"--continue_from {source}")  # fmt: skip
    return dict(previous, continued=[*earlier, record], reproduce=record["reproduce"])


def continuations(record: dict) -> list[dict]:
    """The continuation runs of a pretrain.json record, oldest first (records before 2026-12-06
    held the one continuation as a dict)."""
    earlier = record.get("continued", [])
    return [earlier] if isinstance(earlier, dict) else earlier


def knows_round_word(model_dir: Path) -> bool:
    """Whether any pretraining run of the model (its pretrain.json) captioned round things as
    'round' (--round_share): then 'round red shape' is the unnamed ring's nearest caption."""
    record_path = model_dir / "pretrain.json"
    if not record_path.is_file():
        return False
    record = json.loads(record_path.read_text())
    return any(run.get("round_share", 0) > 0 for run in [record, *continuations(record)])

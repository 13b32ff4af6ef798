"""Aspect-ratio buckets (issue 19, item 2): kohya's bucket list, a portrait image trains at a
portrait bucket without distortion, batches from one bucket, latents and masks per bucket, SDXL
size conditioning of the bucket, the plan, resume bit-exact and refused on other buckets."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from test_checkpoint import (
    EXACT,
    assert_same_run,
    final_state,
    flags,
    interrupt_after,
    reference_run,
)

from invokeai_ti.data import buckets, dataset
from invokeai_ti.front.cli import parse_config
from invokeai_ti.invokeai.root import apply_root_defaults
from invokeai_ti.report import quality
from invokeai_ti.train.setup import setup
from invokeai_ti.train.step import train_step

TOKEN = "<psychedelic>"
BUCKETS = ("--enable_bucket", "--min_bucket_reso", "32", "--max_bucket_reso", "128",
           "--bucket_reso_steps", "16")  # fmt: skip
SHAPES = [(60, 100), (64, 110), (100, 60), (80, 80), (120, 64)]  # (width, height)


def make_shapes(folder: Path, alpha: bool = False) -> Path:
    """Portrait, landscape and square pictures of a red disc (with a transparent corner)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(SHAPES):
        image = Image.new("RGBA", (w, h), (40 + 30 * i, 50, 60, 255))
        draw = ImageDraw.Draw(image)
        draw.ellipse((5, 5, w - 5, h - 5), fill=(220, 30, 30, 255))
        draw.rectangle((0, 0, 10, 10), fill=(0, 0, 0, 0))
        (image if alpha else image.convert("RGB")).save(folder / f"shape-{i}.png")
    return folder


def test_the_bucket_list_is_kohyas():
    sizes = buckets.bucket_sizes(512, 256, 1024, 64)  # kohya's defaults at SD1's resolution
    assert (512, 512) in sizes and (640, 384) in sizes and (384, 640) in sizes
    assert (576, 448) in sizes and (1024, 256) in sizes and (256, 1024) in sizes
    assert all(h % 64 == 0 and w % 64 == 0 and h * w <= 512 * 512 for h, w in sizes)
    # A 2:3 portrait goes to 384 wide x 640 high: the closest aspect.
    assert buckets.choose_bucket(768, 512, sizes) == (640, 384)
    assert buckets.choose_bucket(512, 512, sizes) == (512, 512)


@pytest.mark.parametrize(
    "height, width", [(768, 512), (512, 768), (1000, 999), (600, 1900), (333, 250)]
)
def test_no_image_is_distorted(height, width):
    """The image is scaled by one factor (aspect kept) to cover its bucket, and the crop takes less
    than one bucket step from either side (its aspect is within one step of the bucket's)."""
    sizes = buckets.bucket_sizes(512, 256, 1024, 64)
    fit = buckets.fit_to_bucket(height, width, buckets.choose_bucket(height, width, sizes))
    scale_h, scale_w = fit.resized[0] / height, fit.resized[1] / width
    assert abs(scale_h - scale_w) <= 1 / min(height, width)  # rounding only
    assert fit.resized[0] >= fit.height and fit.resized[1] >= fit.width
    assert fit.resized[0] - fit.height < 64 and fit.resized[1] - fit.width < 64
    assert abs(math.log(fit.width / fit.height) - math.log(width / height)) < 0.2


def test_every_batch_comes_from_one_bucket():
    bucket_of = [0, 0, 0, 1, 1, 2, 0]  # 7 images in 3 buckets
    for global_batch in (1, 2, 3, 4):
        samples = dataset.epoch_samples(7, 3, 27, seed=5, epoch=2, bucket_of=bucket_of,
                                        global_batch=global_batch)  # fmt: skip
        micro = dataset.micro_batches_per_epoch(7, 3, global_batch, 1, bucket_of)
        assert len(samples) == micro * global_batch
        real = [s for s in samples if s is not None]
        assert sorted(s.image_index for s in real) == sorted(list(range(7)) * 3)  # each, 3 times
        for index in range(micro):
            batch = dataset.micro_batch(samples, index, global_batch, 0, 1)
            assert batch and len({bucket_of[s.image_index] for s in batch}) == 1
        # The same for two processes sharing each global batch.
        if global_batch % 2 == 0:
            halves = [dataset.micro_batch(samples, 0, global_batch // 2, r, 2) for r in (0, 1)]
            assert halves[0] + halves[1] == dataset.micro_batch(samples, 0, global_batch, 0, 1)
    # Without buckets the order, flips and templates are exactly those of before.
    plain = dataset.epoch_samples(7, 3, 27, seed=5, epoch=2)
    assert len(plain) == 21 and None not in plain


def _run(root: Path, data: Path, tmp_path: Path, *extra: str):
    argv = ["--root_dir", root, "--placeholder_token", TOKEN, "--train_data_dir", data,
            "--output_dir", tmp_path / "out", "--resolution", "64", *BUCKETS, *extra]  # fmt: skip
    return setup(apply_root_defaults(parse_config([str(a) for a in argv])[0]))


@pytest.mark.parametrize("cache", [True, False])
def test_a_portrait_image_trains_at_a_portrait_bucket(root, tmp_path, cache):
    data = make_shapes(tmp_path / "data", alpha=True)
    run = _run(root, data, tmp_path, "--alpha_mask", *([] if cache else ["--no-cache_latents"]))
    fits = run.images.fits
    assert [(f.width, f.height) for f in fits] == [(48, 80), (48, 80), (80, 48), (64, 64), (80, 48)]
    assert run.images.pixels[0].shape == (2, 3, 80, 48)  # portrait: taller than wide
    source = run.latent_source
    assert source.shape_of(0) == (4, 10, 6) and source.shape_of(2) == (4, 6, 10)
    assert source.masks[0].shape == (2, 1, 10, 6) and source.masks[0][0, 0, 0, 0] < 0.5
    # One training step on a portrait batch, then the quality report over every bucket.
    samples = [dataset.Sample(0, 0, 1, 3), dataset.Sample(1, 1, 2, 4)]
    assert torch.isfinite(train_step(run, samples, torch.Generator().manual_seed(0)))
    report = quality.quality_report(run.components, run.placeholders, source, run.prompts, None,
                                    run.initial_vectors, 0, 4)  # fmt: skip
    assert report.num_draws == 5 * quality.DRAWS_PER_IMAGE and math.isfinite(report.loss_learned)


def test_sdxl_is_conditioned_on_the_bucket(tmp_path, tiny_sdxl):
    from invokeai_ti.models.placeholder import sdxl_time_ids

    fit = buckets.fit_to_bucket(110, 64, (80, 48))  # a 64x110 portrait in the 48x80 bucket
    rows = sdxl_time_ids([(110, 64)], 64, False, [fit]).tolist()
    assert rows == [[110.0, 64.0, fit.crop_top, 0.0, 80.0, 48.0]] and fit.crop_top == 1
    data = make_shapes(tmp_path / "data")
    argv = ["--model", tiny_sdxl, "--placeholder_token", "<xl>", "--train_data_dir", data,
            "--root_dir", tmp_path, "--output_dir", tmp_path / "out", "--resolution", "64",
            *BUCKETS, "--dry_run"]  # fmt: skip
    run = setup(apply_root_defaults(parse_config([str(a) for a in argv])[0]))
    assert run.time_ids[0, 4:].tolist() == [80.0, 48.0] and run.time_ids[2, 4:].tolist() == [
        48.0,
        80.0,
    ]


def test_the_plan_says_which_bucket_holds_how_many(cli, root, tmp_path):
    data = make_shapes(tmp_path / "data")
    plan = cli("--root_dir", root, "--placeholder_token", TOKEN, "--train_data_dir", data,
               "--resolution", "64", *BUCKETS, "--dry_run")  # fmt: skip
    assert plan.code == 0, plan.err
    assert ("Buckets (width x height): 48x80: 2 images, 64x64: 1 image, 80x48: 2 images; each "
            "batch from one.") in plan.out  # fmt: skip
    bad = cli("--root_dir", root, "--placeholder_token", TOKEN, "--enable_bucket",
              "--bucket_reso_steps", "20", "--dry_run")  # fmt: skip
    assert bad.code == 2 and "--bucket_reso_steps 20 is not a multiple of 8" in bad.err


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_sd1) -> tuple[Path, Path]:
    from invokeai_ti.models.tiny import write_models_yaml

    root = tmp_path_factory.mktemp("bucket-exact") / "invokeai"
    write_models_yaml(root, {"stable-diffusion-1.5": tiny_sd1}, default="stable-diffusion-1.5")
    make_shapes(root / "text-inversion-training-data" / "psychedelic", alpha=True)
    return root, reference_run(root, *BUCKETS, "--alpha_mask")


def test_buckets_resume_bit_exact_and_other_buckets_are_refused(cli, reference, monkeypatch):
    root, ref = reference
    out = root / "stopped"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        stopped = cli(*flags(root, out, *EXACT, *BUCKETS, "--alpha_mask"))
    assert stopped.code == 130, stopped.err
    resume = ("--resume_from_checkpoint", "latest")
    other = cli(*flags(root, out, *EXACT, *BUCKETS[:-1], "32", "--alpha_mask", *resume))
    assert other.code == 2 and "buckets changed for shape-" in other.err, other.err
    resumed = cli(*flags(root, out, *EXACT, *BUCKETS, "--alpha_mask", *resume))
    assert resumed.code == 0 and "Trained 5 steps" in resumed.out, resumed.err
    assert_same_run(out, ref)
    assert final_state(out)[0]["fingerprint"]["buckets"]["shape-0.png"] == "48x80"

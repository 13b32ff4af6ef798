"""Masked loss (issue 19, item 3): --alpha_mask and --mask_extension weights, cropped and flipped
as the image, on the latent grid in the latent cache, applied in train_step's loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_FLAGS
from PIL import Image, ImageDraw

from invokeai_ti.data import dataset, masks
from invokeai_ti.errors import DataError
from invokeai_ti.front.cli import parse_config
from invokeai_ti.invokeai.root import apply_root_defaults
from invokeai_ti.models.denoising import per_sample_loss
from invokeai_ti.report import quality
from invokeai_ti.train import step as training_step
from invokeai_ti.train.setup import setup

TOKEN = "<psychedelic>"


def make_cutouts(folder: Path, count: int = 4, size: tuple[int, int] = (80, 72)) -> Path:
    """The concept as cut-outs: a red disc, opaque, on a transparent left part and an opaque
    grey right part (so a mask is neither all one nor a plain disc)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = Image.new("RGBA", size, (40 + 50 * i, 40, 60, 255))
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, 0, size[0] // 2 - 1, size[1]), fill=(0, 0, 0, 0))
        draw.ellipse((8 + 4 * i, 8, 8 + 4 * i + 48, 56), fill=(220, 30, 30, 255))
        image.save(folder / f"cutout-{i}.png")
    return folder


def test_alpha_masks_follow_the_image_geometry(tmp_path):
    data = make_cutouts(tmp_path / "data", count=1)
    image = data / "cutout-0.png"
    weights = masks.load_masks([image], 64, False, alpha=True, extension=None)  # [1, 2, 1, 64, 64]
    assert weights.shape == (1, 2, 1, 64, 64)
    assert torch.equal(weights[0, 1], weights[0, 0].flip(-1))  # the flipped image's mask
    alpha = torch.tensor(list(Image.open(image).getchannel("A").resize((64, 64), Image.BILINEAR).getdata()),
                         dtype=torch.float32).reshape(64, 64) / 255  # fmt: skip
    assert torch.allclose(weights[0, 0, 0], alpha)
    assert weights[0, 0, 0, 32, 2] == 0 and weights[0, 0, 0, 32, 60] == 1  # transparent / opaque
    # --center_crop crops the mask exactly as the image: a centred 72x72 square of 80x72.
    cropped = masks.load_masks([image], 72, True, alpha=True, extension=None)[0, 0, 0]
    full = torch.tensor(list(Image.open(image).getchannel("A").getdata()),
                        dtype=torch.float32).reshape(72, 80) / 255  # fmt: skip
    assert torch.equal(cropped, full[:, 4:76])
    # An image without alpha is opaque everywhere.
    Image.new("RGB", (64, 64), (9, 9, 9)).save(tmp_path / "plain.png")
    assert bool((masks.load_masks([tmp_path / "plain.png"], 64, False, True, None) == 1).all())


def test_mask_files_beside_images_are_read_and_not_trained_on(tmp_path):
    data = make_cutouts(tmp_path / "data", count=2)
    for i in range(2):
        mask = Image.new("L", (40, 36), 0)  # half size: resized to the image
        ImageDraw.Draw(mask).rectangle((20, 0, 40, 36), fill=255)
        mask.save(data / f"cutout-{i}_mask.png")
    images = dataset.find_image_files(data, "_mask.png")
    assert [p.name for p in images] == ["cutout-0.png", "cutout-1.png"]
    assert len(dataset.find_image_files(data)) == 4  # without the flag they are just images
    weights = masks.load_masks(images, 64, False, alpha=False, extension="_mask.png")
    assert weights[0, 0, 0, :, :28].max() == 0 and weights[0, 0, 0, :, 36:].min() == 1
    (data / "cutout-1_mask.png").unlink()
    with pytest.raises(DataError, match="cutout-1.png has no mask cutout-1_mask.png"):
        masks.load_masks(images, 64, False, alpha=False, extension="_mask.png")


def test_an_all_zero_mask_is_one_line_naming_the_file(cli, root, tmp_path):
    data = make_cutouts(tmp_path / "data", count=2)
    Image.new("L", (80, 72), 255).save(data / "cutout-0_mask.png")
    Image.new("L", (80, 72), 0).save(data / "cutout-1_mask.png")
    result = cli("--root_dir", root, "--placeholder_token", TOKEN, "--train_data_dir", data,
                 *TINY_FLAGS, "--mask_extension", "_mask.png", "--dry_run")  # fmt: skip
    assert result.code == 2 and "Traceback" not in result.err
    assert result.err.strip().splitlines()[-1] == (
        f"invokeai-ti: error: the mask of {data / 'cutout-1_mask.png'} is all zero: nothing of "
        "that image would be learned; paint the subject white or remove the image.")  # fmt: skip
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(data / "cutout-0.png")
    result = cli("--root_dir", root, "--placeholder_token", TOKEN, "--train_data_dir", data,
                 *TINY_FLAGS, "--alpha_mask", "--dry_run")  # fmt: skip
    assert f"the mask of {data / 'cutout-0.png'} (its alpha channel) is all zero" in result.err
    both = cli("--root_dir", root, "--placeholder_token", TOKEN, "--alpha_mask",
               "--mask_extension", "_m.png", "--dry_run")  # fmt: skip
    assert both.code == 2 and "--alpha_mask and --mask_extension both give a loss mask" in both.err


def test_the_weighted_loss_is_the_plain_mean_without_a_mask_and_ignores_weight_zero():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn((3, 4, 8, 8), generator=g), torch.randn((3, 4, 8, 8), generator=g)
    plain = per_sample_loss(pred, target)
    assert torch.allclose(plain.mean(), torch.nn.functional.mse_loss(pred, target))
    weights = torch.zeros((3, 1, 8, 8))
    weights[:, :, 2:6, 2:6] = 1
    masked = per_sample_loss(pred, target, weights)
    inside = (pred - target)[:, :, 2:6, 2:6].pow(2).mean(dim=(1, 2, 3))
    assert torch.allclose(masked, inside)
    changed = pred.clone()
    changed[:, :, :2] += 100  # where the weight is zero
    assert torch.equal(per_sample_loss(changed, target, weights), masked)


@pytest.mark.parametrize("cache", [True, False])
def test_the_latent_cache_holds_the_masks_and_train_step_weights_the_loss(root, tmp_path, cache):
    data = make_cutouts(tmp_path / "data")
    argv = ["--root_dir", root, "--placeholder_token", TOKEN, "--train_data_dir", data,
            "--output_dir", tmp_path / "out", *TINY_FLAGS, "--alpha_mask"]  # fmt: skip
    if not cache:
        argv.append("--no-cache_latents")
    run = setup(apply_root_defaults(parse_config([str(a) for a in argv])[0]))
    source = run.latent_source
    assert source.masks.shape == (4, 2, 1, 8, 8)  # the 64 px images' 8x8 latent grid
    assert (source.vae is None) == cache  # cached: the VAE is gone, the masks stay
    expected = masks.to_latent_grid(run.images.masks, (8, 8))
    assert torch.equal(source.masks.cpu(), expected)
    assert source.masks[0, 0, 0, 0, 0] == 0 and source.masks[0, 0, 0, 0, 7] == 1  # corners
    samples = [dataset.Sample(1, 1, 3, 11), dataset.Sample(2, 0, 5, 12)]
    with torch.no_grad():
        loss = training_step.train_step(run, samples, torch.Generator().manual_seed(7))
        # The quality report measures the same masked objective on the same draws.
        g = torch.Generator().manual_seed(7)
        latent_noise, noise = (
            torch.randn((2, 4, 8, 8), generator=g),
            torch.randn((2, 4, 8, 8), generator=g),
        )
        draws = quality.Draws(torch.tensor([1, 2]), torch.tensor([1, 0]), torch.tensor([3, 5]),
                              latent_noise, noise, torch.randint(0, 1000, (2,), generator=g))  # fmt: skip
        report_loss = quality.denoising_loss(run.components, source, run.prompts, None, draws, 2)
        assert report_loss == pytest.approx(loss.item(), rel=1e-5)
        source.masks = None
        unmasked = training_step.train_step(run, samples, torch.Generator().manual_seed(7))
    assert loss.item() != pytest.approx(unmasked.item(), rel=1e-4)


def test_a_masked_run_trains_and_the_plan_says_so(cli, root, tmp_path):
    data = make_cutouts(tmp_path / "data")
    base = ("--root_dir", root, "--placeholder_token", TOKEN, "--train_data_dir", data,
            *TINY_FLAGS, "--validation_steps", "0", "--alpha_mask")  # fmt: skip
    plan = cli(*base, "--dry_run")
    assert plan.code == 0, plan.err
    assert "Loss masks: alpha channels of 4 images, mean weight 0.68." in plan.out
    held = cli(*base, "--masked_prior_preservation_weight", "0.5", "--dry_run")
    assert (
        "Loss masks: alpha channels of 4 images, mean weight 0.68; outside them the "
        "prediction is held to the initializer's, weight 0.5."
    ) in held.out, held.err
    result = cli(*base, "--output_dir", tmp_path / "out")
    assert result.code == 0 and "Trained 4 steps" in result.out, result.err


def test_masked_prior_preservation_pulls_only_outside_the_mask_toward_the_initial_vectors(
    root, tmp_path
):
    """--masked_prior_preservation_weight W: inside the mask the loss is the masked loss; outside
    it the prediction's mean squared distance from the initial vectors' prediction is added,
    weighted W. At the initial vectors that term is zero; once the vectors move it is exactly that
    distance; and train_step, the validation loss and the report agree."""
    from invokeai_ti.models.denoising import objective, prediction_and_target

    data = make_cutouts(tmp_path / "data")
    argv = ["--root_dir", root, "--placeholder_token", TOKEN, "--train_data_dir", data,
            "--output_dir", tmp_path / "out", *TINY_FLAGS, "--alpha_mask",
            "--masked_prior_preservation_weight", "2"]  # fmt: skip
    run = setup(apply_root_defaults(parse_config([str(a) for a in argv])[0]))
    prior = training_step.masked_prior(run)
    assert prior.weight == 2.0
    c, source = run.components, run.latent_source
    g = torch.Generator().manual_seed(3)
    x0 = source.draw(
        torch.tensor([0, 1]), torch.tensor([0, 1]), torch.randn((2, 4, 8, 8), generator=g)
    )
    noise, t = torch.randn((2, 4, 8, 8), generator=g), torch.tensor([500, 900])
    ids = run.prompts.token_ids(
        [run.prompts.text(0, 0), run.prompts.text(1, 2)], c.tokenizers, c.device
    )
    weights = source.weights(torch.tensor([0, 1]), torch.tensor([0, 1]))
    with torch.no_grad():
        masked = objective(c, x0, noise, t, ids, None, weights)
        at_start = objective(c, x0, noise, t, ids, None, weights, prior)
        assert torch.equal(at_start, masked)  # the initial vectors' own prediction: no pull
        run.placeholders[0].vectors.add_(0.5)
        moved = run.placeholders[0].detached()
        pulled = objective(c, x0, noise, t, ids, None, weights, prior)
        moved_masked = objective(c, x0, noise, t, ids, None, weights)
        outside = 1 - weights
        moved_pred, _ = prediction_and_target(c, x0, noise, t, ids, None)
        with quality.holding(run.placeholders, run.initial_vectors):
            start_pred, _ = prediction_and_target(c, x0, noise, t, ids, None)
    distance = ((moved_pred - start_pred).pow(2) * outside).sum(dim=(1, 2, 3)) / (
        outside.sum(dim=(1, 2, 3)) * 4
    )
    assert bool((distance > 0).all())
    assert torch.allclose(pulled, moved_masked + 2 * distance, rtol=1e-5)
    assert torch.equal(run.placeholders[0].detached(), moved)  # the vectors came back bit for bit
    samples = [dataset.Sample(1, 1, 3, 11), dataset.Sample(2, 0, 5, 12)]
    with torch.no_grad():
        loss = training_step.train_step(run, samples, torch.Generator().manual_seed(7))
        g = torch.Generator().manual_seed(7)
        latent_noise, noise = (
            torch.randn((2, 4, 8, 8), generator=g),
            torch.randn((2, 4, 8, 8), generator=g),
        )
        draws = quality.Draws(torch.tensor([1, 2]), torch.tensor([1, 0]), torch.tensor([3, 5]),
                              latent_noise, noise, torch.randint(0, 1000, (2,), generator=g))  # fmt: skip
        report_loss = quality.denoising_loss(c, source, run.prompts, None, draws, 2, prior=prior)
    assert report_loss == pytest.approx(loss.item(), rel=1e-5)


def test_masked_prior_preservation_needs_a_mask_and_a_weight_of_zero_or_more(cli, root, tmp_path):
    base = ("--root_dir", root, "--placeholder_token", TOKEN, "--output_dir", tmp_path / "o",
            *TINY_FLAGS, "--dry_run")  # fmt: skip
    alone = cli(*base, "--masked_prior_preservation_weight", "1")
    assert alone.code == 2 and alone.err.strip().splitlines() == [
        "invokeai-ti: error: --masked_prior_preservation_weight acts outside a loss mask: add --alpha_mask or "
        "--mask_extension, or leave it out."]  # fmt: skip
    negative = cli(*base, "--alpha_mask", "--masked_prior_preservation_weight=-1")
    assert negative.code == 2 and len(negative.err.strip().splitlines()) <= 2
    assert "--masked_prior_preservation_weight must be in [0, " in negative.err

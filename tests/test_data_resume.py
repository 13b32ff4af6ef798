"""Captions, templates and masks across a resume (issue 19, item 5): the resumed run is bit-exact
(the method of test_checkpoint.py), a change since the checkpoint is refused naming what changed,
and the dry-run plan shows the prompts, masks and config file."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from test_checkpoint import (
    EXACT,
    assert_same_run,
    final_state,
    flags,
    interrupt_after,
    reference_run,
)
from test_masks import make_cutouts

from invokeai_ti.files import checkpoint as ckpt

TOKEN = "<psychedelic>"
# Every per-sample draw of issue 19 at once: shuffled tags, dropped captions, alpha masks.
DATA = ("--caption_extension", ".txt", "--shuffle_caption", "--keep_tokens", "1",
        "--caption_dropout_rate", "0.3", "--alpha_mask")  # fmt: skip
# ... and outside the masks, the pull toward the initial vectors' prediction.
EXACT_DATA = (*DATA, "--masked_prior_preservation_weight", "0.5")


def make_data_root(base: Path, tiny_sd1: Path) -> Path:
    """An InvokeAI root whose training folder holds cut-outs with kohya captions."""
    from invokeai_ti.models.tiny import write_models_yaml

    root = base / "invokeai"
    write_models_yaml(root, {"stable-diffusion-1.5": tiny_sd1}, default="stable-diffusion-1.5")
    data = make_cutouts(root / "text-inversion-training-data" / "psychedelic")
    for i, image in enumerate(sorted(data.glob("*.png"))):
        tags = ", ".join(f"tag{i}{j}" for j in range(5))
        image.with_suffix(".txt").write_text(f"{TOKEN}, red disc, {tags}\n")
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_sd1) -> tuple[Path, Path]:
    root = make_data_root(tmp_path_factory.mktemp("data-exact"), tiny_sd1)
    return root, reference_run(root, *EXACT_DATA)


def test_captions_and_masks_resume_bit_exact(cli, reference, monkeypatch):
    root, ref = reference
    out = root / "stopped"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 3)
        stopped = cli(*flags(root, out, *EXACT, *EXACT_DATA))
    assert stopped.code == 130, stopped.err
    resumed = cli(*flags(root, out, *EXACT, *EXACT_DATA, "--resume_from_checkpoint", "latest"))
    assert resumed.code == 0 and "Trained 5 steps" in resumed.out, resumed.err
    assert_same_run(out, ref)
    fingerprint = final_state(out)[0]["fingerprint"]
    assert sorted(fingerprint["captions"]) == sorted(fingerprint["masks"]) == [
        f"cutout-{i}.png" for i in range(4)]  # fmt: skip


def test_a_resume_with_other_captions_templates_or_masks_is_refused(cli, tmp_path, tiny_sd1):
    root = make_data_root(tmp_path, tiny_sd1)
    data = root / "text-inversion-training-data" / "psychedelic"
    out = tmp_path / "out"
    first = cli(*flags(root, out, "--max_train_steps", "2", *DATA))
    assert first.code == 0, first.err
    resume = ("--max_train_steps", "3", "--resume_from_checkpoint", "latest")
    (data / "cutout-1.txt").write_text(f"{TOKEN}, blue square\n")
    (tmp_path / "t.txt").write_text("a photo of [name], [filewords]\n")
    for argv, difference in [
        (DATA, "captions changed for cutout-1.png"),
        (DATA[2:], "captions: checkpoint has 4 image(s), this run has none"),
        ((*DATA, "--template_file", tmp_path / "t.txt"),
         "templates: checkpoint has the built-in ones, this run has other ones"),
        (DATA[:-1], "masks: checkpoint has 4 image(s), this run has none"),
    ]:  # fmt: skip
        result = cli(*flags(root, out, *resume, *argv))
        lines = result.err.strip().splitlines()
        assert result.code == 2 and difference in lines[-1], result.err
        assert lines[-1].startswith(f"invokeai-ti: error: cannot resume from {out}/checkpoint-2")
    (data / "cutout-1.txt").write_text(
        f"{TOKEN}, red disc, " + ", ".join(f"tag1{j}" for j in range(5))
    )
    image = Image.open(data / "cutout-2.png")
    image.putpixel((60, 5), (1, 2, 3, 0))  # one pixel of the opaque part made transparent
    image.save(data / "cutout-2.png")
    result = cli(*flags(root, out, *resume, *DATA))
    assert result.code == 2 and "masks changed for cutout-2.png" in result.err, result.err
    # The dry-run plan refuses the same way, before any latent is computed.
    plan = cli(*flags(root, out, *resume, *DATA, "--dry_run"))
    assert plan.code == 2 and "masks changed for cutout-2.png" in plan.err


def test_checkpoints_from_before_captions_still_resume(tmp_path):
    saved = {"model": "m", "placeholder_token": TOKEN, "num_vectors": 1, "resolution": 64,
             "token_dims": [32], "world_size": 1}  # fmt: skip
    current = dict(saved, captions=None, templates=None, masks=None)
    ckpt.check_fingerprint(tmp_path, saved, current)  # no error


def test_the_plan_shows_prompts_masks_and_config(cli, tmp_path, tiny_sd1):
    root = make_data_root(tmp_path, tiny_sd1)
    (tmp_path / "run.toml").write_text('caption_extension = ".txt"\nalpha_mask = true\n')
    out = tmp_path / "out"
    plan = cli(*flags(root, out, "--config", tmp_path / "run.toml", "--dry_run"))
    assert plan.code == 0, plan.err
    assert (f"Prompts: 27 built-in object templates, captions from .txt files (4 of 4 images have "
            f"one); e.g. 'a photo of a {TOKEN}, red disc, tag00, tag01, tag02, tag03, tag04'."
            ) in plan.out  # fmt: skip
    assert "Loss masks: alpha channels of 4 images, mean weight 0.68." in plan.out
    assert (f"Config file: read from {tmp_path / 'run.toml'}; each run writes {out}/config.toml."
            in plan.out)  # fmt: skip
    assert not out.exists() or not any(out.iterdir())  # a dry run writes nothing

"""Issue 5: every bad input gets one clear error line (or a warning and a run), never a traceback.

One table row per case. Each row prepares files under a temp InvokeAI root, returns the extra flags,
and states the exit code and the text that must name the culprit: in the last stderr line for an
error, in a warning for a case that carries on. Rows run with and without --dry_run where both mean
something; a failing row must fail the same way in both, before any training.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_FLAGS, make_concept_images, run_subprocess

TRIGGER = "<psychedelic>"
# No validation grids and no InvokeAI copy: a real run of a warning row stays a few steps long.
FAST = [*TINY_FLAGS, "--max_train_steps", "1", "--validation_steps", "0", "--no-copy"]


@dataclass
class Ctx:
    """What a row's prepare function may use: the root, a fresh data folder, pytest helpers."""

    root: Path
    data: Path
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    request: pytest.FixtureRequest

    def checkpoint(self) -> Path:
        return self.request.getfixturevalue("trained_checkpoint")


@dataclass
class Row:
    id: str
    prepare: Callable[[Ctx], list[str]]  # writes files, returns extra flags
    code: int  # expected exit code
    culprit: str  # must be in the last stderr line (code != 0) or in a warning (code 0)
    modes: tuple[str, ...] = ("dry_run", "train")
    check: Callable[[Ctx, str], None] | None = None  # extra assertions, given the run's stdout
    slow: bool = False  # a real run of training steps


# --- image files --------------------------------------------------------------------------------


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height and holds no pixels: a decompression bomb for free."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _encoded(fmt: str, size=(80, 72)) -> bytes:
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, fmt)
    return buffer.getvalue()


def _write(name: str, content: bytes | Callable[[Path], None], with_good: bool = False):
    def prepare(ctx: Ctx) -> list[str]:
        if with_good:
            make_concept_images(ctx.data)
        ctx.data.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(ctx.data / name)
        else:
            (ctx.data / name).write_bytes(content)
        return ["--train_data_dir", ctx.data]

    return prepare


def _cmyk(path: Path) -> None:
    from PIL import Image

    Image.new("CMYK", (80, 72), (0, 255, 255, 0)).save(path)  # red in CMYK


def _png16(path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((72, 80), 32768, dtype=np.uint16)).save(path)  # mid grey, 16 bits


def _palette_transparent(path: Path) -> None:
    from PIL import Image

    image = Image.new("P", (80, 72), 0)
    image.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    image.paste(1, (0, 0, 40, 72))  # left half red, right half index 0: transparent
    image.save(path, transparency=0)


def _animated_gif(path: Path) -> None:
    from PIL import Image

    frames = [Image.new("RGB", (80, 72), color) for color in ((200, 30, 30), (30, 30, 200))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _tiny(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 30, 30)).save(path)


def _exif_rotated(path: Path) -> None:
    """80x40 stored, left half red; EXIF orientation 6 says: show it turned 90 degrees clockwise."""
    from PIL import Image

    image = Image.new("RGB", (80, 40), (30, 30, 200))
    image.paste((200, 30, 30), (0, 0, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif, quality=95)


def _decoded(ctx: Ctx, name: str):
    from invokeai_ti.data.dataset import decode_image

    return np.asarray(decode_image(ctx.data / name, 64), dtype=np.int32)


def _near(pixel, color, tolerance=12) -> bool:
    return all(abs(int(a) - b) <= tolerance for a, b in zip(pixel, color))


def _check_cmyk(ctx, out):
    assert _near(_decoded(ctx, "cmyk.jpg")[36, 40], (255, 0, 0), 40)


def _check_png16(ctx, out):
    assert _near(_decoded(ctx, "deep.png")[0, 0], (128, 128, 128), 2)  # not clipped to white


def _check_palette(ctx, out):
    pixels = _decoded(ctx, "palette.png")
    assert _near(pixels[36, 10], (200, 30, 30)) and _near(pixels[36, 70], (255, 255, 255), 0)


def _check_gif(ctx, out):
    assert _near(_decoded(ctx, "anim.gif")[36, 40], (200, 30, 30))  # the first frame, not the blue


def _check_exif(ctx, out):
    pixels = _decoded(ctx, "rotated.jpg")
    assert pixels.shape == (80, 40, 3)  # turned upright: 40 wide, 80 high
    assert _near(pixels[10, 20], (200, 30, 30), 30) and _near(pixels[70, 20], (30, 30, 200), 30)


def _plan_uses(count: int, *absent: str):
    def check(ctx, out):
        if "Dry run OK" in out:
            assert f"Images: {count} used" in out
            assert not any(name in out for name in absent)

    return check


def _hidden(ctx: Ctx) -> list[str]:
    make_concept_images(ctx.data)
    for name in (".DS_Store", "Thumbs.db", "desktop.ini", "._concept-0.png", ".hidden.png"):
        (ctx.data / name).write_bytes(b"\x00junk")
    return ["--train_data_dir", ctx.data]


def _nested(ctx: Ctx) -> list[str]:
    make_concept_images(ctx.data)
    make_concept_images(ctx.data / "rejects", count=2)
    return ["--train_data_dir", ctx.data]


def _only_nested(ctx: Ctx) -> list[str]:
    make_concept_images(ctx.data / "rejects", count=2)
    return ["--train_data_dir", ctx.data]


def _only_non_images(ctx: Ctx) -> list[str]:
    ctx.data.mkdir(parents=True)
    (ctx.data / "notes.txt").write_text("my cat")
    (ctx.data / "layers.psd").write_bytes(b"8BPS")
    return ["--train_data_dir", ctx.data]


def _empty(ctx: Ctx) -> list[str]:
    ctx.data.mkdir(parents=True)
    return ["--train_data_dir", ctx.data]


def _data_is_file(ctx: Ctx) -> list[str]:
    ctx.tmp.joinpath("x.png").write_bytes(_encoded("PNG"))
    return ["--train_data_dir", ctx.tmp / "x.png"]


def _every_bad_file(ctx: Ctx) -> list[str]:
    make_concept_images(ctx.data)
    (ctx.data / "empty.png").write_bytes(b"")
    (ctx.data / "notes.png").write_text("not a picture")
    (ctx.data / "cut.jpg").write_bytes(_encoded("JPEG")[:300])
    (ctx.data / "huge.png").write_bytes(_png_header(20000, 20000))
    return ["--train_data_dir", ctx.data]


DATA_ROWS = [
    Row("empty-folder", _empty, 2, "holds no images"),
    Row("missing-folder", lambda c: ["--train_data_dir", c.tmp / "nowhere"], 2,
        "nowhere does not exist"),
    Row("data-folder-is-a-file", _data_is_file, 2,
        "x.png is a file, not a folder of images"),
    Row("only-non-images", _only_non_images, 2, "holds no images (it has layers.psd, notes.txt)"),
    Row("zero-byte", _write("empty.png", b""), 2, "empty.png: empty file"),
    Row("truncated-png", _write("cut.png", _encoded("PNG")[:120]), 2, "cut.png: not a readable image"),
    Row("truncated-jpeg", _write("cut.jpg", _encoded("JPEG")[:300]), 2, "cut.jpg: not a readable image"),
    Row("text-named-png", _write("notes.png", b"hello, not a picture"), 2,
        "notes.png: not a readable image"),
    Row("huge-image", _write("huge.png", _png_header(20000, 20000)), 2,
        "huge.png: too large (over 89,478,485 pixels): scale it down"),
    Row("bad-files-among-good", _every_bad_file, 0, "Skipped 4 unreadable file(s)",
        check=_plan_uses(4)),
    Row("cmyk-jpeg", _write("cmyk.jpg", _cmyk), 0, "", check=_check_cmyk),
    Row("png-16-bit", _write("deep.png", _png16), 0, "", check=_check_png16),
    Row("palette-transparency", _write("palette.png", _palette_transparent), 0, "",
        check=_check_palette),
    Row("animated-gif", _write("anim.gif", _animated_gif), 0, "", check=_check_gif),
    Row("tiny-image", _write("tiny.png", _tiny), 0, "tiny.png is 16x16, smaller than --resolution 64"),
    Row("exif-rotated", _write("rotated.jpg", _exif_rotated), 0, "rotated.jpg is 40x80",
        check=_check_exif),
    Row("hidden-and-system-files", _hidden, 0, "",
        check=_plan_uses(4, ".DS_Store", "Thumbs.db", "desktop.ini", ".hidden")),
    Row("nested-folder-not-read", _nested, 0, "Sub-folders of", check=_plan_uses(4)),
    Row("only-nested-folders", _only_nested, 2, "sub-folders are not read: rejects"),
]  # fmt: skip


# --- flags and model ----------------------------------------------------------------------------


def _flags(*argv: str) -> Callable[[Ctx], list[str]]:
    return lambda ctx: list(argv)


def _yaml(text: str) -> Callable[[Ctx], list[str]]:
    def prepare(ctx: Ctx) -> list[str]:
        (ctx.root / "configs" / "models.yaml").write_text(text)
        return []

    return prepare


def _model_folder(*names: str) -> Callable[[Ctx], list[str]]:
    def prepare(ctx: Ctx) -> list[str]:
        folder = ctx.tmp / "not-a-pipeline"
        folder.mkdir()
        for name in names:
            (folder / name).write_text("{}")
        return ["--model", folder]

    return prepare


def _output_under_file(ctx: Ctx) -> list[str]:
    (ctx.tmp / "a-file").write_text("x")
    return ["--output_dir", ctx.tmp / "a-file" / "out"]


def _output_read_only(ctx: Ctx) -> list[str]:
    folder = ctx.tmp / "locked"
    folder.mkdir(mode=0o500)
    return ["--output_dir", folder / "out"]


def _resume_other_trigger(ctx: Ctx) -> list[str]:
    data = ctx.root / "text-inversion-training-data" / "psychedelic"
    return ["--placeholder_token", "<other>", "--train_data_dir", data,
            "--resume_from_checkpoint", ctx.checkpoint()]  # fmt: skip


def _resume_other_model(ctx: Ctx) -> list[str]:
    from invokeai_ti.models.tiny import write_models_yaml

    tiny = ctx.request.getfixturevalue("tiny_sd1")
    write_models_yaml(ctx.root, {"stable-diffusion-1.5": tiny, "other-model": tiny})
    return ["--model", "other-model", "--resume_from_checkpoint", ctx.checkpoint()]


def _disk_full(ctx: Ctx) -> list[str]:
    """The second checkpoint hits a full disk while it is written; the first must survive."""
    import safetensors.torch

    real = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        if "checkpoint-2" in str(filename):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        return real(tensors, filename, metadata=metadata)

    ctx.monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    return ["--max_train_steps", "2", "--checkpointing_steps", "1"]


def _disk_full_step_embedding(ctx: Ctx) -> list[str]:
    """A write outside the checkpoint code (the step embedding) fails: still one line."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        if "learned_embeds-steps-2" in str(f):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real(obj, f, *args, **kwargs)

    ctx.monkeypatch.setattr(torch, "save", save)
    return ["--max_train_steps", "3", "--checkpointing_steps", "1", "--save_steps", "2"]


def _resume_damaged(ctx: Ctx) -> list[str]:
    folder = ctx.tmp / "checkpoint-1"
    folder.mkdir()
    (folder / "state.json").write_text("{ half a file")
    (folder / "vectors.safetensors").write_bytes(b"")
    return ["--resume_from_checkpoint", folder]


def _check_disk_full(ctx: Ctx, out: str) -> None:
    from invokeai_ti.files import checkpoint as ckpt

    output = ctx.root / "text-inversion-output" / "psychedelic"
    assert [p.name for p in ckpt.list_checkpoints(output)] == ["checkpoint-1"]
    saved = ckpt.load_checkpoint(output / "checkpoint-1")
    assert saved.progress.step == 1 and torch.isfinite(saved.vectors[0]).all()
    assert not [p for p in output.iterdir() if p.name.startswith(".")]  # no half-written folder


FLAG_ROWS = [
    Row("misspelled-flag", _flags("--lerning_rate", "1e-3"), 2,
        "unknown flag --lerning_rate. Did you mean --learning_rate?"),
    Row("abbreviated-flag", _flags("--learning", "1e-3"), 2, "unknown flag --learning."),
    Row("zero-steps", _flags("--max_train_steps", "0"), 2, "--max_train_steps must be a positive"),
    Row("negative-steps", _flags("--max_train_steps", "-5"), 2, "--max_train_steps must be a positive"),
    Row("zero-batch", _flags("--train_batch_size", "0"), 2, "--train_batch_size must be a positive"),
    Row("negative-batch", _flags("--train_batch_size", "-2"), 2, "--train_batch_size must be a positive"),
    Row("negative-lr-without-equals", _flags("--learning_rate", "-1e-4"), 2,
        "argument --learning_rate: expected one argument: give a value after the flag"),
    Row("zero-lr", _flags("--learning_rate", "0"), 2, "--learning_rate must be positive"),
    Row("negative-lr", _flags("--learning_rate=-1e-4"), 2, "--learning_rate must be positive"),
    Row("resolution-not-8", _flags("--resolution", "100"), 2,
        "--resolution 100 is not a multiple of 8: use e.g. 96"),
    Row("placeholder-in-vocab", _flags("--placeholder_token", "cat"), 2,
        "--placeholder_token 'cat' is already"),
    Row("placeholder-with-space", _flags("--placeholder_token", "<my cat>"), 2,
        "--placeholder_token '<my cat>' contains a space"),
    Row("multi-token-initializer", _flags("--initializer_token", "zxqvbnm"), 2,
        "--initializer_token 'zxqvbnm' is"),
    Row("fp16-on-cpu", _flags("--mixed_precision", "fp16"), 0,
        "--mixed_precision fp16 needs a GPU; training in fp32"),
    Row("xformers-missing", _flags("--enable_xformers_memory_efficient_attention"), 2,
        "--enable_xformers_memory_efficient_attention"),
    Row("unknown-model-name", _flags("--model", "no-such-model"), 2,
        "--model 'no-such-model' is not a model name in models.yaml or InvokeAI's database, a folder "
        "or a file. "
        "Known names: stable-diffusion-1.5."),
    Row("missing-model-folder", _flags("--model", "/nonexistent/models/sd15"), 2,
        "--model /nonexistent/models/sd15 does not exist"),
    Row("models-yaml-path-missing", _yaml("stable-diffusion-1.5:\n  path: models/gone\n"), 2,
        "models.yaml entry 'stable-diffusion-1.5' points to"),
    Row("folder-not-a-pipeline", _model_folder("config.json"), 2,
        "is a folder but not a diffusers pipeline (no model_index.json)"),
    Row("incomplete-pipeline", _model_folder("model_index.json"), 2,
        "is not a complete diffusers pipeline (missing unet, vae, text_encoder, tokenizer"),
    Row("malformed-models-yaml", _yaml("stable-diffusion-1.5: [unclosed\n  path: x\n"), 2,
        "models.yaml is not valid YAML (line"),
    Row("output-under-a-file", _output_under_file, 2, "a-file is a file, not a folder"),
    Row("output-read-only", _output_read_only, 2, "--output_dir"),
    Row("resume-other-trigger", _resume_other_trigger, 2,
        "placeholder_token: checkpoint has '<psychedelic>', this run has '<other>'"),
    Row("resume-other-model", _resume_other_model, 2,
        "model: checkpoint has 'stable-diffusion-1.5', this run has 'other-model'"),
    Row("disk-full-while-saving", _disk_full, 1, "No space left on device", modes=("train",),
        check=_check_disk_full),
    Row("disk-full-step-embedding", _disk_full_step_embedding, 1,
        "learned_embeds-steps-2.bin", modes=("train",), check=_check_disk_full, slow=True),
    Row("resume-damaged-checkpoint", _resume_damaged, 2, "is a damaged checkpoint folder"),
]  # fmt: skip

ROWS = DATA_ROWS + FLAG_ROWS
# A row that carries on is a real (minutes-long on a CPU) run without --dry_run: marked slow.
CASES = [
    pytest.param(row, mode, id=f"{row.id}-{mode}",
                 marks=[pytest.mark.slow] if mode == "train" and (row.code == 0 or row.slow) else [])
    for row in ROWS
    for mode in row.modes
]  # fmt: skip


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, tiny_sd1) -> Path:
    """checkpoint-1 of a <psychedelic> run on the model named stable-diffusion-1.5."""
    from invokeai_ti.front.cli import parse_config
    from invokeai_ti.invokeai.root import apply_root_defaults
    from invokeai_ti.models.tiny import write_models_yaml
    from invokeai_ti.train import saving
    from invokeai_ti.train.setup import setup

    root = tmp_path_factory.mktemp("resume") / "invokeai"
    write_models_yaml(root, {"stable-diffusion-1.5": tiny_sd1}, default="stable-diffusion-1.5")
    make_concept_images(root / "text-inversion-training-data" / "psychedelic")
    config, _ = parse_config(["--root_dir", str(root), "--placeholder_token", TRIGGER, *FAST])
    run = setup(apply_root_defaults(config))
    run.progress.step = 1
    return saving.save_state(run)


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")} if folder.exists() else set()


def _needs(row: Row) -> None:
    if row.id == "output-read-only" and os.geteuid() == 0:
        pytest.skip("root ignores permission bits; output-under-a-file covers the error as root")
    if row.id == "fp16-on-cpu" and torch.cuda.is_available():
        pytest.skip("fp16 runs as fp16 on a GPU")


# --- the table ----------------------------------------------------------------------------------


@pytest.mark.parametrize("row, mode", CASES)
def test_bad_input(row: Row, mode: str, cli, root, tmp_path, monkeypatch, request, caplog):
    _needs(row)
    caplog.set_level(logging.INFO)
    ctx = Ctx(root=root, data=tmp_path / "data", tmp=tmp_path, monkeypatch=monkeypatch,
              request=request)  # fmt: skip
    extra = row.prepare(ctx)
    output = root / "text-inversion-output"
    before = _files_under(output)
    dry = ["--dry_run"] if mode == "dry_run" else []
    result = cli("--root_dir", root, "--placeholder_token", TRIGGER, *FAST, *extra, *dry)
    assert "Traceback" not in result.err + result.out
    assert result.code == row.code, result.err
    if row.code != 0:
        last = result.err.strip().splitlines()[-1]
        assert last.startswith("invokeai-ti: error: ") and row.culprit in last, last
        assert result.err.count("invokeai-ti: error:") == 1
    else:
        assert row.culprit in caplog.text + result.err
        assert "error" not in result.err.lower()
        if mode == "dry_run":
            assert "Dry run OK" in result.out
    if mode == "dry_run":
        assert _files_under(output) == before  # a dry run writes nothing
    if row.check is not None:
        row.check(ctx, result.out)


def test_every_issue_case_has_a_row():
    cases = """empty-folder missing-folder only-non-images zero-byte truncated-png truncated-jpeg
    text-named-png cmyk-jpeg png-16-bit palette-transparency animated-gif huge-image tiny-image
    exif-rotated hidden-and-system-files nested-folder-not-read misspelled-flag abbreviated-flag
    negative-steps zero-batch zero-lr resolution-not-8 placeholder-in-vocab placeholder-with-space
    multi-token-initializer fp16-on-cpu xformers-missing unknown-model-name missing-model-folder
    folder-not-a-pipeline malformed-models-yaml output-under-a-file disk-full-while-saving
    resume-other-trigger resume-other-model""".split()
    assert set(cases) <= {row.id for row in ROWS}


# --- the real entry point -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, code, culprit",
    [
        (["--lerning_rate", "1e-3"], 2, "unknown flag --lerning_rate. Did you mean --learning_rate?"),
        # These two import torch in a fresh process: tens of seconds on a busy CPU.
        pytest.param(["--model", "no-such-model", "--dry_run"], 2, "Known names: stable-diffusion-1.5.",
                     marks=pytest.mark.slow),
        pytest.param(["--train_data_dir", "{data}"], 2, "cut.png: not a readable image",
                     marks=pytest.mark.slow),
    ],
    ids=["misspelled-flag", "unknown-model", "truncated-png"],
)  # fmt: skip
def test_bad_input_through_the_console_entry(root, tmp_path, argv, code, culprit):
    data = tmp_path / "data"
    data.mkdir()
    (data / "cut.png").write_bytes(_encoded("PNG")[:120])
    argv = [a.format(data=data) for a in argv]
    result = run_subprocess("--root_dir", root, "--placeholder_token", TRIGGER, *FAST, *argv)
    assert "Traceback" not in result.err + result.out
    assert result.code == code
    last = result.err.strip().splitlines()[-1]
    assert last.startswith("invokeai-ti: error: ") and culprit in last


def test_warnings_come_before_the_error_line(root, tmp_path):
    """In a real process the skip warning is printed, and the error is still the last line."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "empty.png").write_bytes(b"")
    result = run_subprocess("--root_dir", root, "--placeholder_token", TRIGGER, *FAST,
                            "--train_data_dir", data, "--dry_run")  # fmt: skip
    lines = result.err.strip().splitlines()
    assert result.code == 2 and "Traceback" not in result.err
    assert any(
        line.startswith("WARNING: Skipped 1 unreadable file(s): empty.png") for line in lines
    )
    assert lines[-1].startswith("invokeai-ti: error: --train_data_dir") and "empty.png" in lines[-1]


def test_bf16_on_a_gpu_without_it_is_refused(monkeypatch):
    from invokeai_ti.errors import UserError
    from invokeai_ti.models.loading import weight_dtype_for

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(UserError, match="--mixed_precision bf16: this GPU has no bfloat16"):
        weight_dtype_for("bf16", torch.device("cuda"))
    assert weight_dtype_for("bf16", torch.device("cpu")) == torch.bfloat16  # CPUs emulate it


def test_debug_shows_the_traceback(cli, root):
    from invokeai_ti.errors import UserError

    with pytest.raises(UserError, match="Known names"):
        cli("--root_dir", root, "--placeholder_token", TRIGGER, *FAST, "--model", "nope", "--debug")


# --- --dry_run ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, steps_line, lr_line",
    [
        (
            ["--max_train_steps", "100", "--num_train_epochs", "3"],
            "Steps: 6 (new run) over 3 epoch(s) of 2 steps (4 batches per epoch, 4 images x 2 repeats); "
            "effective batch 4.",
            "Learning rate: 0.02 (0.005 x batch 2 x accumulation 2 x processes 1), constant schedule.",
        ),
        (
            ["--max_train_steps", "5", "--no-scale_lr"],
            "Steps: 5 (new run) over 3 epoch(s) of 2 steps (4 batches per epoch, 4 images x 2 repeats); "
            "effective batch 4.",
            "Learning rate: 0.005 (not scaled), constant schedule.",
        ),
    ],
    ids=["epochs-bound", "steps-bound"],
)
def test_dry_run_plan_numbers_and_writes_nothing(cli, root, flags, steps_line, lr_line):
    # 4 images x 2 repeats / batch 2 = 4 micro-batches per epoch; accumulation 2 -> 2 steps an epoch.
    before = _files_under(root)
    result = cli("--root_dir", root, "--placeholder_token", TRIGGER, *TINY_FLAGS,
                 "--gradient_accumulation_steps", "2", *flags, "--dry_run")  # fmt: skip
    assert result.code == 0, result.err
    lines = result.out.strip().splitlines()
    assert steps_line in lines and lr_line in lines
    assert any(line.startswith("Images: 4 used from") and "skipped: none" in line for line in lines)
    output = root / "text-inversion-output" / "psychedelic"
    assert any(line.startswith(f"Outputs: {output} ") for line in lines)
    assert _files_under(root) == before and not output.exists()


def test_dry_run_checks_a_compatible_resume(cli, root, trained_checkpoint):
    result = cli("--root_dir", root, "--placeholder_token", TRIGGER, *FAST, "--max_train_steps", "3",
                 "--resume_from_checkpoint", trained_checkpoint, "--dry_run")  # fmt: skip
    assert result.code == 0, result.err
    assert f"Steps: 3 (resume from {trained_checkpoint} at step 1)" in result.out

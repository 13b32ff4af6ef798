"""The InvokeAI root: where it is, its folder layout (training data, outputs, embeddings), how a
typed path is read, and whether an output folder can be written. No torch here."""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path

from invokeai_ti.config import TrainingConfig
from invokeai_ti.errors import UserError

log = logging.getLogger(__name__)

DATA_FOLDER = "text-inversion-training-data"
OUTPUT_FOLDER = "text-inversion-output"
EMBEDDINGS_FOLDER = "embeddings"
ROOT_MARKERS = ("invokeai.init", "invokeai.yaml")  # 2.3 and 3+
NAME_MAX = 255  # bytes in one file or folder name on Linux, macOS and Windows file systems


def find_root(root_dir: Path | None) -> Path:
    """2.3's order: --root_dir, INVOKEAI_ROOT, $VIRTUAL_ENV/.. when it is a root, ~/invokeai."""
    if root_dir is not None:
        return absolute_path(root_dir)
    if os.environ.get("INVOKEAI_ROOT"):
        return absolute_path(Path(os.environ["INVOKEAI_ROOT"]))
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:
        parent = Path(venv).expanduser().resolve().parent
        if any((parent / marker).exists() for marker in ROOT_MARKERS):
            return parent
    return Path.home() / "invokeai"


def absolute_path(path: Path | str) -> Path:
    """`~` expanded and relative to the current folder, links kept: how every path a user types
    (flag, GUI field, models.yaml entry) is read. 2.3 compat: 2.3 joined some to the root."""
    return Path(os.path.abspath(Path(path).expanduser()))


def default_data_dir(root: Path, trigger: str) -> Path:
    return root / DATA_FOLDER / trigger


def default_output_dir(root: Path, trigger: str) -> Path:
    return root / OUTPUT_FOLDER / trigger


def apply_root_defaults(config: TrainingConfig) -> TrainingConfig:
    """Fill the root, data and output folders; every relative path is relative to the current dir.

    2.3 compat: 2.3 joined a relative --train_data_dir to the root a second time; we do not.
    """
    root = find_root(config.root_dir)
    trigger = config.trigger
    data_dir = config.train_data_dir or default_data_dir(root, trigger)
    output_dir = config.output_dir or default_output_dir(root, trigger)
    optional = {
        name: absolute_path(getattr(config, name))
        for name in ("init_embedding", "comfyui_embeddings_dir", "template_file", "config")
        if getattr(config, name) is not None
    }
    return dataclasses.replace(
        config,
        root_dir=root,
        train_data_dir=absolute_path(data_dir),
        output_dir=absolute_path(output_dir),
        **optional,
    )


def embeddings_dir(root: Path, trigger: str) -> Path:
    """ROOT/embeddings/<trigger>/, where InvokeAI finds the trained embedding."""
    return root / EMBEDDINGS_FOLDER / trigger


def logging_path(config: TrainingConfig) -> Path:
    assert config.output_dir is not None  # set by apply_root_defaults
    return config.output_dir / config.logging_dir


def check_writable(folder: Path, flag: str) -> None:
    """Fail before training, not after hours, when outputs cannot be written.

    Tries a real write in the nearest existing folder (removed at once, so --dry_run leaves nothing):
    os.access alone says yes to root on a read-only disk, and a path under a regular file passes it.
    """
    if any(len(os.fsencode(part)) > NAME_MAX for part in folder.parts):
        raise UserError(
            f"{flag} {folder} has a name longer than {NAME_MAX} bytes, more than a folder name "
            "can hold: choose a shorter one."
        )
    probe_dir = folder
    try:
        while not probe_dir.exists():
            probe_dir = probe_dir.parent
    except OSError as exc:  # e.g. a path longer than the system takes
        raise UserError(
            f"{flag} {folder} cannot be used ({exc.strerror}): choose another folder."
        ) from exc
    if not probe_dir.is_dir():
        raise UserError(
            f"{flag} {folder} cannot be created: {probe_dir} is a file, not a folder. "
            "Choose another folder."
        )
    try:
        with tempfile.TemporaryFile(dir=probe_dir):
            pass
    except OSError as exc:
        raise UserError(
            f"{flag} {folder} is not writable ({exc.strerror or exc} in {probe_dir}): "
            "choose another folder or fix its permissions."
        ) from exc

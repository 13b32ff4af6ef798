"""Crash-safe writes, the only way the package writes a file: a temp name beside the target,
fsync, rename; a folder is filled under a temp name and renamed whole. What a killed write leaves
(`.<name>.<random>.tmp`) is never read and is removed at the next start."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from invokeai_ti.errors import UserError

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask sets it to 0 for a
    moment, which another thread, e.g. the GUI's, could catch)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` for a temp file beside `path`, fsync it, then rename it over `path`.

    mkstemp creates the temp file 0600; it gets the mode a plain open() would give (0644 under
    the usual umask 022), so the embedding is readable by e.g. an InvokeAI server's user.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def nonfinite_count(obj: Any) -> int:
    """NaN and infinite values in every tensor of `obj` (a tensor, or dicts/lists of them)."""
    if torch.is_tensor(obj):
        return int((~torch.isfinite(obj)).sum()) if obj.is_floating_point() else 0
    if isinstance(obj, dict):
        return sum(nonfinite_count(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nonfinite_count(value) for value in obj)
    return 0


def refuse_nonfinite(path: Path, obj: Any) -> None:
    """Vectors with NaN or inf make InvokeAI draw black images: such a file is never written.
    The training loop stops before it would ask; this is the last guard."""
    if bad := nonfinite_count(obj):
        raise UserError(
            f"not writing {path}: its vectors hold {bad} NaN or infinite value(s); the files "
            "already there are kept. Lower --learning_rate or use --mixed_precision no.",
            exit_code=1,
        )


def save_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None
) -> Path:
    from safetensors.torch import save_file

    refuse_nonfinite(path, tensors)
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))


def save_torch(path: Path, obj: Any) -> Path:
    refuse_nonfinite(path, obj)
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def complete_folder(final: Path, fill: Callable[[Path], None]) -> Path:
    """Fill a temp folder, fsync it, rename it to `final`: the folder appears whole or not at all."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=TEMP_SUFFIX, dir=final.parent))
    try:
        fill(tmp)
        mask = _umask()
        for child in tmp.iterdir():
            os.chmod(child, 0o666 & ~mask)
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it 0700
        _fsync_dir(tmp)
        old = None
        if final.exists():  # moved aside, not deleted first: final is missing for one rename only
            old = final.with_name(f".{final.name}.old{TEMP_SUFFIX}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete what a killed write left behind: `.<name>.<random>.tmp` files and folders, which
    nothing reads (`latest` and the loaders skip them). Called at the start of a run."""
    if not folder.is_dir():
        return []
    stale = [e for e in folder.iterdir() if e.name.startswith(".") and e.name.endswith(TEMP_SUFFIX)]
    for entry in stale:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if stale:
        log.info("Removed %d unfinished file(s) of an interrupted save in %s.", len(stale), folder)
    return stale


def check_disk_error(exc: OSError, what: Path) -> UserError:
    """Turn a failed write (disk full, permissions) into a one-line error; nothing older is lost."""
    return UserError(
        f"could not write {what}: {exc.strerror or exc}. Free some space or fix permissions; "
        "the previous checkpoint is intact, resume with --resume_from_checkpoint=latest.",
        exit_code=1,
    )

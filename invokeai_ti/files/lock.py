"""One run per output folder: an OS lock on OUTPUT/.invokeai-ti.lock, held for the run's life.

Two runs into one folder would overwrite each other's checkpoints and embeddings. The lock is the
operating system's (flock; msvcrt on Windows), so it is released when the process ends however it
ends: a run killed with kill -9 leaves at most the file, never a lock that blocks the next run.
The file holds the holder's process id, for the message of the run that is refused.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from invokeai_ti.config import TrainingConfig
from invokeai_ti.errors import UserError
from invokeai_ti.invokeai.root import check_writable

LOCK_NAME = ".invokeai-ti.lock"
WINDOWS_LOCK_OFFSET = 1 << 20  # msvcrt locks a byte range; past the pid, so others can read it


def _try_lock(handle: IO[str]) -> bool:
    """Take the lock without waiting; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        handle.seek(WINDOWS_LOCK_OFFSET)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError (EWOULDBLOCK), or EACCES on some systems
        return False
    return True


def _same_file(handle: IO[str], path: Path) -> bool:
    """The locked file is still the one at `path` (a finishing run removes its file)."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except OSError:
        return False


def acquire(output_dir: Path) -> IO[str]:
    """Lock `output_dir` for this process; UserError naming the folder and the other run's pid."""
    path = output_dir / LOCK_NAME
    output_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(10):  # a run that finishes as we lock removes the file: lock the new one
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the run's life
        if not _try_lock(handle):
            handle.seek(0)
            other = handle.read(32).strip() or "unknown"
            handle.close()
            raise UserError(
                f"--output_dir {output_dir} is in use by another invokeai-ti run (process "
                f"{other}): wait for it to finish, or choose another --output_dir."
            )
        if _same_file(handle, path):
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            return handle
        handle.close()
    raise UserError(f"--output_dir {output_dir}: could not lock {path}; try again.")


def release(handle: IO[str], output_dir: Path) -> None:
    """Remove the file while still holding the lock, then let the lock go."""
    with contextlib.suppress(OSError):
        if _same_file(handle, output_dir / LOCK_NAME):
            (output_dir / LOCK_NAME).unlink()
    handle.close()


@contextlib.contextmanager
def hold(config: TrainingConfig) -> Iterator[None]:
    """The output folder's lock for a training run's with-block. --dry_run writes nothing and
    takes none; under accelerate launch only the main process (RANK 0) takes it."""
    if config.dry_run or os.environ.get("RANK", "0") != "0":
        yield
        return
    assert config.output_dir is not None  # set by apply_root_defaults
    check_writable(config.output_dir, "--output_dir")  # the plain message before any mkdir fails
    handle = acquire(config.output_dir)
    try:
        yield
    finally:
        release(handle, config.output_dir)

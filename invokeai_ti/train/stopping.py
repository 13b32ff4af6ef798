"""Ctrl-C and SIGTERM: before the loop they stop at once (nothing to save yet); in the loop they ask
for a checkpoint at the end of the current optimizer step; a second Ctrl-C aborts at once."""

from __future__ import annotations

import logging
import signal
from typing import Any

from invokeai_ti.errors import Interrupted

log = logging.getLogger(__name__)

BEFORE_LOOP = "interrupted before the first optimizer step: nothing to save."
AFTER_LOOP = (
    "interrupted while writing the final files: run again with --resume_from_checkpoint=latest "
    "to write them."
)
ABORTED = (
    "aborted by a second Ctrl-C without saving; the newest complete checkpoint is intact: "
    "resume with --resume_from_checkpoint=latest."
)


class StopRequest:
    """Signal handlers for one run. `arm()` when the loop starts: a signal then only sets
    `requested` and the loop saves and returns `exit_code` (130 for SIGINT, 143 for SIGTERM).
    Unarmed, or on a second signal, the handler raises Interrupted wherever the code is; atomic
    writes remove their temp files on the way out."""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self.armed = False
        self.unarmed_reason = BEFORE_LOOP
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signal_number or signal.SIGINT)

    def arm(self) -> None:
        self.armed = True

    def disarm(self, reason: str = AFTER_LOOP) -> None:
        self.armed, self.unarmed_reason = False, reason

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.armed:
            raise Interrupted(self.unarmed_reason, 128 + signum)
        if self.signal_number is not None:
            raise Interrupted(ABORTED, 128 + signum)
        self.signal_number = signum
        log.warning("Stopping: saving a checkpoint at the end of this step (Ctrl-C again aborts).")

    def __enter__(self) -> StopRequest:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. the GUI's worker): no handlers
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

"""What an earlier run left in an output folder: its checkpoints (and whose they are), embedding
files, and the copy in ROOT/embeddings/<trigger>/; used by the form to tick Resume and to say what a
fresh start would delete. Reads only JSON and file names, no tensors.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invokeai_ti.config import TrainingConfig
from invokeai_ti.errors import UserError
from invokeai_ti.invokeai.root import embeddings_dir


@dataclass
class PreviousRun:
    checkpoints: list[Path] = field(default_factory=list)  # complete ones, oldest first
    fingerprint: dict[str, Any] = field(default_factory=dict)  # of the newest checkpoint
    step: int | None = None
    embeds: list[Path] = field(default_factory=list)  # learned_embeds*.bin/.safetensors
    installed: list[Path] = field(default_factory=list)  # files in ROOT/embeddings/<trigger>/

    @property
    def owner(self) -> str:
        """The trigger the newest checkpoint was trained for."""
        return self.fingerprint.get("placeholder_token", "an unknown trigger")

    def resumable_for(self, token: str) -> bool:
        return bool(self.checkpoints) and self.fingerprint.get("placeholder_token") == token


def find_previous_run(output_dir: Path, root: Path, trigger: str) -> PreviousRun:
    from invokeai_ti.files.checkpoint import list_checkpoints, read_state

    found = PreviousRun(checkpoints=list_checkpoints(output_dir))
    if found.checkpoints:
        try:
            state = read_state(found.checkpoints[-1])
            found.fingerprint = dict(state.get("fingerprint") or {})
            found.step = (state.get("progress") or {}).get("step")
        except (UserError, AttributeError):
            pass  # training reports an unreadable checkpoint itself if asked to resume from it
    if output_dir.is_dir():
        found.embeds = sorted(
            p for p in output_dir.glob("learned_embeds*") if p.suffix in (".bin", ".safetensors")
        )
    installed = embeddings_dir(root, trigger) if trigger else None
    if installed is not None and installed.is_dir():
        found.installed = sorted(p for p in installed.iterdir() if p.is_file())
    return found


def resume_problem(config: TrainingConfig, previous: PreviousRun) -> str | None:
    """What training would refuse later (checkpoint.check_fingerprint's rule), said up front."""
    from invokeai_ti.files.checkpoint import FINGERPRINT_FLAGS, check_fingerprint

    if not previous.checkpoints:
        return None  # `latest` without a checkpoint starts a new run
    # The keys the form sets; token_dims and world_size are not known before the model loads.
    current = {key: getattr(config, key) for key in FINGERPRINT_FLAGS}
    try:
        check_fingerprint(previous.checkpoints[-1], previous.fingerprint, current)
    except UserError as exc:
        return str(exc)
    return None


def remove_outputs(paths: list[Path]) -> None:
    """Delete what the user confirmed: the listed checkpoint folders and embedding files only."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

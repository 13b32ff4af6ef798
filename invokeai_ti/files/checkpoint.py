"""Resumable state: save, find, check and load checkpoint folders.

A checkpoint folder `checkpoint-<step>/` holds the trainable vectors and optimizer moments
(safetensors) and everything else as JSON: progress, RNG states, lr schedule position, the config and
a fingerprint of what the vectors belong to. Never the frozen model. The folder is filled under a
temporary name and renamed whole (files/atomic.py), so it is complete or absent.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from invokeai_ti.config import TrainingConfig
from invokeai_ti.errors import ResumeError
from invokeai_ti.files.atomic import complete_folder, nonfinite_count, refuse_nonfinite

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PREFIX = "checkpoint-"
STATE_FILE = "state.json"
TENSORS_FILE = "vectors.safetensors"
# What a checkpoint's vectors belong to: a resume must match every key. The flags among them are
# named as flags in the refusal; token_dims and world_size come from the model and the launcher.
# --optimizer too: another optimizer cannot continue from this one's state.
FINGERPRINT_FLAGS = ("model", "placeholder_token", "num_vectors", "resolution", "optimizer")
# Added by setup() once the images are read: per-image hashes of captions and masks, each image's
# bucket, and the template list's hash (None: none, or the built-in templates).
DATA_KEYS = ("captions", "templates", "masks", "buckets")


@dataclass
class Progress:
    """Where training stands: enough, with the seed, to continue the exact same run."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    position: int = 0  # micro-batches of `epoch` already consumed
    seed: int = 0
    losses: list[float] = field(default_factory=list)  # one mean loss per optimizer step
    nonfinite_steps: int = 0
    nonfinite_streak: int = 0
    validation_losses: list[list[float]] = field(default_factory=list)  # [step, loss] pairs


# --- RNG state -----------------------------------------------------------------------------------


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every global RNG: torch (CPU and CUDA) as tensors, numpy and python as JSON."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    python_state = random.getstate()
    return tensors, {
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "python": [python_state[0], list(python_state[1]), python_state[2]],
    }


def restore_rng(tensors: dict[str, torch.Tensor], states: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


# --- checkpoints ---------------------------------------------------------------------------------


@dataclass
class CheckpointState:
    """What save_checkpoint writes and load_checkpoint returns."""

    progress: Progress
    vectors: list[torch.Tensor]  # one [num_vectors, dim] per text encoder
    optimizer: dict[str, Any]  # torch optimizer state_dict
    fingerprint: dict[str, Any]
    config_json: str
    extra: dict[str, Any] = field(default_factory=dict)  # grad scaler etc.


def _optimizer_to_files(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "state": {}}
    for param_id, param_state in state["state"].items():
        entry = {}
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{param_id}.{key}"] = value
                entry[key] = {"tensor": f"optimizer.{param_id}.{key}"}
            else:
                entry[key] = value
        meta["state"][str(param_id)] = entry
    return tensors, meta


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state = {}
    for param_id, entry in meta["state"].items():
        state[int(param_id)] = {
            k: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
            for k, v in entry.items()
        }
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(output_dir: Path, state: CheckpointState) -> Path:
    """Write checkpoint-<step>/ atomically; returns the folder. Never from non-finite vectors."""
    refuse_nonfinite(output_dir / f"{PREFIX}{state.progress.step}", state.vectors)
    rng_tensors, rng_json = capture_rng()
    opt_tensors, opt_json = _optimizer_to_files(state.optimizer)
    tensors = {f"vectors.{i}": v for i, v in enumerate(state.vectors)}
    tensors.update(opt_tensors)
    tensors.update(rng_tensors)
    document = {
        "format_version": FORMAT_VERSION,
        "progress": asdict(state.progress),
        "fingerprint": state.fingerprint,
        "config": json.loads(state.config_json),
        "optimizer": opt_json,
        "rng": rng_json,
        "extra": state.extra,
    }

    def fill(folder: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                  str(folder / TENSORS_FILE))  # fmt: skip
        (folder / STATE_FILE).write_text(json.dumps(document, indent=1))

    return complete_folder(output_dir / f"{PREFIX}{state.progress.step}", fill)


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (temp folders start with '.' and are ignored)."""
    if not output_dir.is_dir():
        return []
    found = []
    for entry in output_dir.iterdir():
        suffix = entry.name[len(PREFIX) :]
        if entry.is_dir() and entry.name.startswith(PREFIX) and suffix.isdigit():
            if (entry / STATE_FILE).is_file() and (entry / TENSORS_FILE).is_file():
                found.append((int(suffix), entry))
    return [path for _, path in sorted(found)]


def find_resume_folder(output_dir: Path, resume: str | None) -> Path | None:
    """`latest` -> the newest complete checkpoint or None; a path must be a checkpoint folder."""
    if resume is None:
        return None
    if resume == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            log.info("No checkpoint in %s yet: starting a new run.", output_dir)
            return None
        return checkpoints[-1]
    folder = Path(resume)
    if not (folder / STATE_FILE).is_file() or not (folder / TENSORS_FILE).is_file():
        raise ResumeError(
            f"--resume_from_checkpoint {folder} is not a checkpoint folder (no {STATE_FILE} and "
            f"{TENSORS_FILE}): give a checkpoint-<step> folder or 'latest'."
        )
    return folder


def damaged(folder: Path, exc: Exception, what: str | None = None) -> ResumeError:
    """The one message for a checkpoint folder that cannot be read, whoever reads it."""
    return ResumeError(
        f"{what or f'--resume_from_checkpoint {folder}'} is a damaged checkpoint folder ({exc}): "
        "pick an older checkpoint-<step> folder or delete this one."
    )


def read_state(folder: Path, what: str | None = None) -> dict[str, Any]:
    """A checkpoint's state.json (progress, fingerprint, config, ...) without its tensors: the one
    reader of that file, for the resume check, --inspect, --eval_only and the GUI. `what` names
    the folder in the error (default: as --resume_from_checkpoint)."""
    try:
        document = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise damaged(folder, exc, what) from exc
    if not isinstance(document, dict):
        raise damaged(folder, ValueError(f"{STATE_FILE} is not a JSON object"), what)
    return document


def read_fingerprint(folder: Path) -> dict[str, Any]:
    """The fingerprint alone, to refuse a mismatched resume before any heavy work."""
    return dict(read_state(folder).get("fingerprint") or {})


def fingerprint(config: TrainingConfig, token_dims: list[int], world_size: int,
                data: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """What the vectors of a run belong to; a resume must match it exactly. `data`: the captions,
    templates and masks as hashes (train/setup.py), once the images are read."""
    flags = {key: getattr(config, key) for key in FINGERPRINT_FLAGS}
    return dict(flags, token_dims=token_dims, world_size=world_size, **(data or {}))


def load_checkpoint(folder: Path) -> CheckpointState:
    """Read a checkpoint without unpickling anything (safetensors + JSON)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    document = read_state(folder)
    try:
        tensors = load_file(str(folder / TENSORS_FILE))
    except (OSError, ValueError, SafetensorError) as exc:
        raise damaged(folder, exc) from exc
    if document.get("format_version") != FORMAT_VERSION:
        raise ResumeError(
            f"{folder} was written by an incompatible version (format "
            f"{document.get('format_version')}, this one reads {FORMAT_VERSION})."
        )
    vectors = [tensors[k] for k in sorted(tensors) if k.startswith("vectors.")]
    rng_tensors = {k: v for k, v in tensors.items() if k.startswith("rng.")}
    restore_rng(rng_tensors, document["rng"])
    return CheckpointState(
        progress=Progress(**document["progress"]),
        vectors=vectors,
        optimizer=_optimizer_from_files(tensors, document["optimizer"]),
        fingerprint=document["fingerprint"],
        config_json=json.dumps(document["config"]),
        extra=document.get("extra", {}),
    )


def check_fingerprint(folder: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse a resume whose vectors belong to another model, token, count, size or process count."""
    # A key newer than the checkpoint is read as its default: checkpoints from before --optimizer
    # existed were all written by AdamW.
    saved = {key: saved.get(key, getattr(TrainingConfig, key, None)) for key in current}
    differences = [
        _difference(key, saved[key], current[key]) for key in current if saved[key] != current[key]
    ]
    if differences:
        raise ResumeError(
            f"cannot resume from {folder}: {'; '.join(differences)}. Use the same settings, "
            "another --output_dir, or leave out --resume_from_checkpoint."
        )


def check_vectors(folder: Path, vectors: list[torch.Tensor], num_vectors: int) -> None:
    """Refuse to resume from vectors that are not finite or not [num_vectors, dim] each: they
    would train on garbage, or fail deep in the text encoder."""
    where = folder / TENSORS_FILE
    if bad := nonfinite_count(vectors):
        raise ResumeError(
            f"--resume_from_checkpoint {where} holds {bad} NaN or infinite value(s): pick an older "
            "checkpoint-<step> folder, or leave out --resume_from_checkpoint."
        )
    shapes = [list(v.shape) for v in vectors]
    if not vectors or any(v.dim() != 2 or v.shape[0] != num_vectors for v in vectors):
        raise ResumeError(
            f"--resume_from_checkpoint {where} holds vectors of shape {shapes}, but this run "
            f"needs {num_vectors} vector(s) per text encoder: pick another checkpoint-<step> "
            "folder."
        )


def _difference(key: str, saved: Any, current: Any) -> str:
    """One difference in words; per-image hashes (captions, masks) name the images that changed."""
    if isinstance(saved, dict) and isinstance(current, dict):
        changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        return f"{key} changed for {', '.join(changed[:3])}{more}"
    if key in DATA_KEYS:
        return f"{key}: checkpoint has {_data_words(key, saved)}, this run has {_data_words(key, current)}"
    flag = "--" if key in FINGERPRINT_FLAGS else ""
    return f"{flag}{key}: checkpoint has {saved!r}, this run has {current!r}"


def _data_words(key: str, value: Any) -> str:
    if value is None:
        return "the built-in ones" if key == "templates" else "none"
    return f"{len(value)} image(s)" if isinstance(value, dict) else "other ones"


def prune_checkpoints(output_dir: Path, keep: int | None) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints. Called only after the new one was
    renamed into place, so a crash never leaves fewer than `keep` complete ones."""
    if keep is None:
        return []
    old = list_checkpoints(output_dir)[:-keep]
    for folder in old:
        shutil.rmtree(folder, ignore_errors=True)
    return old

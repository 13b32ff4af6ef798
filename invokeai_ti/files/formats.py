"""Read and identify any embedding file: diffusers / InvokeAI 2.3 `{token: tensor}`, A1111 .pt
(`string_to_param`) and .safetensors (`emb_params`), SDXL `clip_l`/`clip_g`, and our checkpoint
folders. Used by --inspect, --init_embedding and the token-dimension checks.

Nothing is unpickled beyond plain tensors, numbers and strings: torch.load uses weights_only=True.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from invokeai_ti.errors import UserError
from invokeai_ti.files.atomic import nonfinite_count
from invokeai_ti.files.checkpoint import STATE_FILE, TENSORS_FILE, damaged, read_state
from invokeai_ti.invokeai import families


@dataclass
class Embedding:
    """One embedding file as vectors per text encoder, whatever layout it was stored in."""

    path: Path
    format: str  # human-readable layout name
    tokens: list[str]
    vectors: list[torch.Tensor]  # one [n, dim] float32 per text encoder (SDXL: clip_l, clip_g)
    step: int | None = None
    invokeai_dim: int | None = None  # the token dimension InvokeAI's probe reads from this layout

    @property
    def dims(self) -> list[int]:
        return [v.shape[-1] for v in self.vectors]

    @property
    def num_vectors(self) -> int:
        return self.vectors[0].shape[0]

    @property
    def family(self) -> str:
        return families.label_of_dims(self.dims)


def dims_text(dims: list[int]) -> str:
    return "+".join(str(d) for d in dims)


def invokeai_token_dim(data: dict[str, Any]) -> int | None:
    """The token dimension InvokeAI's embedding probe reads: string_to_param, emb_params and clip_g
    by shape[-1]; any other dict by its first tensor's shape[0] (so one vector must be 1-D)."""
    if "string_to_token" in data and isinstance(data.get("string_to_param"), dict):
        return next(iter(data["string_to_param"].values())).shape[-1]
    for key in ("emb_params", "clip_g"):
        if key in data and torch.is_tensor(data[key]):
            return data[key].shape[-1]
    first = next(iter(data.values()), None)
    return first.shape[0] if torch.is_tensor(first) and first.dim() > 0 else None


# --- reading -------------------------------------------------------------------------------------


def read_embedding(path: Path, what: str | None = None) -> Embedding:
    """Read any supported embedding file or checkpoint folder; UserError naming `what` otherwise."""
    path = Path(path)
    what = what or str(path)
    if not path.exists():
        raise UserError(f"{what} does not exist: give the path of an embedding file.")
    if path.is_dir():
        return _read_checkpoint_folder(path, what)
    data, metadata = _load_file(path, what)
    embedding = _classify(path, data, metadata, what)
    embedding.invokeai_dim = invokeai_token_dim(data) if isinstance(data, dict) else None
    return embedding


def _load_file(path: Path, what: str) -> tuple[Any, dict[str, str]]:
    if path.suffix.lower() == ".safetensors":
        return _load_safetensors(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True), {}
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types on foreign bytes
        if zipfile.is_zipfile(path):
            raise UserError(
                f"{what} holds Python objects other than tensors, numbers and strings, which are not "
                "unpickled (a file could run code): re-save the embedding as .safetensors."
            ) from exc
        raise UserError(
            f"{what} is not a PyTorch or safetensors embedding file ({type(exc).__name__}): "
            "give a .pt, .bin or .safetensors embedding."
        ) from exc


def _load_safetensors(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            _refuse_model_checkpoint(keys, what)
            return {key: handle.get_tensor(key) for key in keys}, handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise UserError(
            f"{what} is not a readable safetensors file ({str(exc).splitlines()[0][:100]})."
        ) from exc


def _refuse_model_checkpoint(keys: list[str], what: str) -> None:
    if len(keys) > 64:
        raise UserError(
            f"{what} holds {len(keys)} tensors ({', '.join(keys[:2])}, ...): model weights, not an "
            "embedding file (diffusers, A1111 or SDXL clip_l/clip_g)."
        )


def _classify(path: Path, data: Any, metadata: dict[str, str], what: str) -> Embedding:
    """Which layout `data` is in, and its vectors per encoder as [n, dim]."""
    step = _as_int(metadata.get("step"))
    if torch.is_tensor(data):
        return Embedding(path, "bare tensor", [path.stem], [_rows(data)], step)
    if not isinstance(data, dict) or not data:
        raise UserError(f"{what} is not an embedding file (it holds {type(data).__name__}).")
    if isinstance(data.get("string_to_param"), dict) and data["string_to_param"]:
        vectors = next(iter(data["string_to_param"].values()))
        name = data.get("name") if isinstance(data.get("name"), str) else path.stem
        step = _as_int(data.get("step")) if data.get("step") is not None else step
        return Embedding(path, "A1111 .pt (string_to_param)", [name], [_rows(vectors)], step)
    if torch.is_tensor(data.get("emb_params")):
        name = metadata.get("name") or path.stem
        return Embedding(
            path, "A1111 .safetensors (emb_params)", [name], [_rows(data["emb_params"])], step
        )
    if torch.is_tensor(data.get("clip_l")) and torch.is_tensor(data.get("clip_g")):
        name = metadata.get("trigger") or metadata.get("name") or path.stem
        vectors = [_rows(data["clip_l"]), _rows(data["clip_g"])]
        if vectors[0].shape[0] != vectors[1].shape[0]:
            raise UserError(f"{what}: clip_l and clip_g hold different vector counts.")
        return Embedding(
            path, "SDXL (clip_l + clip_g)", [name], vectors, _as_int(data.get("step")) or step
        )
    tensors = {k: v for k, v in data.items() if torch.is_tensor(v)}
    if len(tensors) == len(data) == 1:
        token, vectors = next(iter(tensors.items()))
        return Embedding(
            path, "diffusers / InvokeAI 2.3 {token: tensor}", [token], [_rows(vectors)], step
        )
    if len(tensors) == len(data) and all(v.dim() == 1 for v in tensors.values()):
        if len({v.shape[0] for v in tensors.values()}) == 1:  # one 1-D tensor per token
            stacked = torch.stack([v.float() for v in tensors.values()])
            return Embedding(
                path, "diffusers {token: tensor} per token", list(tensors), [stacked], step
            )
    keys = ", ".join(repr(k) for k in list(data)[:4])
    raise UserError(
        f"{what} is not an embedding file this tool knows (keys {keys}): expected a diffusers "
        "{token: tensor}, A1111 string_to_param / emb_params, or SDXL clip_l + clip_g file."
    )


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    """Any stored vector tensor as float32 [n, dim] (a single vector may be stored 1-D)."""
    tensor = tensor.detach().float().cpu()
    return tensor.unsqueeze(0) if tensor.dim() == 1 else tensor.reshape(-1, tensor.shape[-1])


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _read_checkpoint_folder(folder: Path, what: str) -> Embedding:
    """A checkpoint-<step>/ folder of this trainer: its vectors, token and step (no unpickling)."""
    if not (folder / STATE_FILE).is_file() or not (folder / TENSORS_FILE).is_file():
        raise UserError(
            f"{what} is a folder, not an embedding file or a checkpoint-<step> folder of this "
            "trainer."
        )
    from safetensors import SafetensorError, safe_open

    state = read_state(folder, what)
    try:
        with safe_open(str(folder / TENSORS_FILE), framework="pt") as handle:
            names = sorted((k for k in handle.keys() if k.startswith("vectors.")),
                           key=lambda k: int(k.split(".")[1]))  # fmt: skip
            vectors = [_rows(handle.get_tensor(name)) for name in names]
    except (OSError, ValueError, SafetensorError) as exc:
        raise damaged(folder, exc, what) from exc
    token = state.get("config", {}).get("placeholder_token") or folder.name
    step = _as_int(state.get("progress", {}).get("step"))
    return Embedding(folder, "invokeai-ti checkpoint folder", [token], vectors, step)


# --- checks against the model --------------------------------------------------------------------


def check_token_dims(what: str, dims: list[int], model_dims: list[int], model_family: str) -> None:
    """Fail before any training time is spent, with the loader's own wording."""
    if list(dims) == list(model_dims):
        return
    model_label = families.label_of_base(model_family)
    raise UserError(
        f"{what} was trained on a model with token dimension {dims_text(dims)} "
        f"({families.label_of_dims(dims)}), but the current model has token dimension "
        f"{dims_text(model_dims)} ({model_label}); families: {families.KNOWN_FAMILIES}. Use an embedding "
        f"trained on {model_label}, or pick a matching --model."
    )


def initial_vectors(
    init_embedding: Path | None, num_vectors: int, model_dims: list[int], model_family: str
) -> list[torch.Tensor | None]:
    """The starting vectors per text encoder from --init_embedding, checked against the model."""
    if init_embedding is None:
        return [None] * len(model_dims)
    what = f"--init_embedding {init_embedding}"
    embedding = read_embedding(init_embedding, what)
    check_token_dims(what, embedding.dims, model_dims, model_family)
    if bad := nonfinite_count(embedding.vectors):
        raise UserError(
            f"{what} holds {bad} NaN or infinite value(s): training cannot start from it; use "
            "another embedding or --initializer_token."
        )
    if embedding.num_vectors != num_vectors:
        raise UserError(
            f"{what} holds {embedding.num_vectors} vector(s) per token but --num_vectors is "
            f"{num_vectors}: pass --num_vectors {embedding.num_vectors}."
        )
    return list(embedding.vectors)


# --- --inspect -----------------------------------------------------------------------------------


def describe_embedding_file(path: Path) -> str:
    """What --inspect prints: format, tokens, vector count, dimensions, family, InvokeAI's view and
    the training step."""
    embedding = read_embedding(Path(path))
    if len(embedding.vectors) == 2:
        dims = f"clip_l {embedding.dims[0]}, clip_g {embedding.dims[1]}"
    else:
        dims = str(embedding.dims[0])
    lines = [
        f"{embedding.path}",
        f"  format:        {embedding.format}",
        f"  token(s):      {', '.join(embedding.tokens)}",
        f"  vectors:       {embedding.num_vectors}",
        f"  dimension:     {dims}",
        f"  model family:  {embedding.family}"
        + ("" if families.is_known(embedding.dims) else f" ({families.KNOWN_FAMILIES})"),
        f"  InvokeAI:      {_invokeai_view(embedding)}",
        f"  training step: {embedding.step if embedding.step is not None else 'not stored'}",
        f"  values:        {_finiteness(embedding)}",
    ]
    return "\n".join(lines)


def _finiteness(embedding: Embedding) -> str:
    bad = nonfinite_count(embedding.vectors)
    if not bad:
        return "all finite"
    total = sum(v.numel() for v in embedding.vectors)
    return (f"{bad} of {total} are NaN or infinite: InvokeAI would draw black or noise images "
            "with it; do not use this file")  # fmt: skip


def _invokeai_view(embedding: Embedding) -> str:
    dim = embedding.invokeai_dim
    if dim is None:
        return "not an InvokeAI embedding file layout"
    base = families.BASE_BY_DIM.get(dim)
    expected = embedding.dims[-1]
    if dim != expected:
        return (
            f"would misread it as token dimension {dim} (it reads shape[0] of a {{token: tensor}} "
            "file): this file is for diffusers; give InvokeAI the emb_params or clip_l/clip_g file"
        )
    return f"identifies it as {base}" if base else f"token dimension {dim} is no base it knows"

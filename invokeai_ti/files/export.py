"""Final and intermediate embedding files in every tool's layout, the copy into
ROOT/embeddings/<trigger>/, and the full pipeline.

`vectors` is always one [n, dim] tensor per text encoder: one for SD1/SD2, [clip_l, clip_g] for SDXL.
2.3 compat: one vector is written 1-D `{token: tensor[dim]}`; InvokeAI (2.3 and today) reads the
token dimension of such a file from shape[0], so the [1, dim] diffusers writes would be rejected.
InvokeAI reads `string_to_param`, `emb_params` and `clip_g` by shape[-1], so those hold [n, dim].
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from invokeai_ti.config import TrainingConfig
from invokeai_ti.files.atomic import save_tensors, save_torch
from invokeai_ti.invokeai.families import BASE_BY_DIM
from invokeai_ti.invokeai.model_source import ModelSource
from invokeai_ti.invokeai.registry import SETTINGS_FILE
from invokeai_ti.invokeai.root import embeddings_dir

log = logging.getLogger(__name__)

SDXL_KEYS = ("clip_l", "clip_g")  # the text encoders' order in an SDXL pipeline
# A1111 stores the id of "*" in the CLIP vocabulary here; every loader ignores the value.
A1111_STAR_TOKEN_ID = 265


@dataclass
class ExportedFiles:
    """Paths written at the end of a run, for the final lines the CLI prints."""

    embeds_bin: Path | None  # learned_embeds.bin (SD1/SD2 with the diffusers format)
    embeds_safetensors: Path | None  # learned_embeds.safetensors (SDXL: clip_l + clip_g)
    invokeai_copy: Path | None = None
    invokeai_install: str | None = None  # InvokeAI 3+: how to add the file in its Model Manager
    pipeline_dir: Path | None = None
    others: list[Path] = field(default_factory=list)  # per-encoder, A1111 and ComfyUI files

    @property
    def main(self) -> Path:
        """The file to name first: the 2.3 .bin, else the first file written."""
        written = [self.embeds_bin, self.embeds_safetensors, *self.others, self.invokeai_copy]
        return next(path for path in written if path is not None)


def _cpu(vectors: torch.Tensor) -> torch.Tensor:
    return vectors.detach().float().cpu().clone()


def diffusers_layout(token: str, vectors: torch.Tensor) -> dict[str, torch.Tensor]:
    """`{token: [dim]}` for one vector, `{token: [n, dim]}` for several (diffusers names the
    extra tokens token_1, token_2, ... when loading)."""
    vectors = _cpu(vectors)
    return {token: vectors[0] if vectors.shape[0] == 1 else vectors}


def sdxl_layout(vectors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """`{clip_l: [n, 768], clip_g: [n, 1280]}`: what InvokeAI 3+, A1111 and ComfyUI load (SDXL)."""
    return {key: _cpu(v) for key, v in zip(SDXL_KEYS, vectors)}


def invokeai_layout(token: str, vectors: list[torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """The file name and tensors InvokeAI identifies correctly: a 1-D {token: [dim]} for one vector,
    `emb_params` [n, dim] for several, clip_l/clip_g for SDXL. A multi-vector {token: [n, dim]}
    would be read as dimension n, so it never goes into an InvokeAI embeddings folder."""
    if len(vectors) == 2:
        return "{trigger}.safetensors", sdxl_layout(vectors)
    if vectors[0].shape[0] == 1:
        return "learned_embeds.bin", diffusers_layout(token, vectors[0])
    return "{trigger}.safetensors", {"emb_params": _cpu(vectors[0])}


def save_learned_embeds(path: Path, token: str, vectors: torch.Tensor) -> Path:
    """learned_embeds.bin (torch.save of plain tensors: loads with weights_only=True)."""
    return save_torch(path, diffusers_layout(token, vectors))


def save_step_embeds(output_dir: Path, token: str, vectors: list[torch.Tensor], step: int,
                     stem: str | None = None) -> Path:  # fmt: skip
    """learned_embeds-steps-N.bin (2.3's name; `stem` another name) for one encoder; for SDXL a
    .safetensors with clip_l/clip_g."""
    stem = stem or f"learned_embeds-steps-{step}"
    if len(vectors) == 2:
        target = output_dir / f"{stem}.safetensors"
        return save_tensors(target, sdxl_layout(vectors), metadata=_metadata(token, step, "sdxl"))
    return save_learned_embeds(output_dir / f"{stem}.bin", token, vectors[0])


def _metadata(token: str, step: int, fmt: str) -> dict[str, str]:
    return {"trigger": token, "step": str(step), "format": fmt}


def save_final_embeds(
    config: TrainingConfig,
    vectors: list[torch.Tensor],
    trained_steps: int,
    source: ModelSource | None = None,
) -> ExportedFiles:
    """Every --export_format in the output folder, plus the InvokeAI copy unless --no-copy."""
    assert config.output_dir is not None and config.root_dir is not None
    token = config.placeholder_token or ""
    files = ExportedFiles(embeds_bin=None, embeds_safetensors=None)
    if "diffusers" in config.export_format:
        _save_diffusers(config.output_dir, token, vectors, trained_steps, files)
    if "a1111" in config.export_format:
        files.others += save_a1111(
            config.output_dir, config.trigger, vectors, trained_steps, source
        )
    comfyui_dir = config.comfyui_embeddings_dir or config.output_dir
    if "comfyui" in config.export_format and not (
        "a1111" in config.export_format and comfyui_dir == config.output_dir
    ):  # ComfyUI reads A1111's files; without its own folder they are the same files
        files.others += save_a1111(comfyui_dir, config.trigger, vectors, trained_steps, source)
    if config.copy_to_embeddings:
        files.invokeai_copy = copy_to_invokeai(config.root_dir, config.trigger, token, vectors)
    if (config.root_dir / SETTINGS_FILE).is_file():
        files.invokeai_install = install_instruction(
            files.invokeai_copy or files.main, vectors, source
        )
    return files


def install_instruction(path: Path, vectors: list[torch.Tensor], source: ModelSource | None) -> str:
    """InvokeAI 3+ reads no embeddings folder by itself: the one line that says how to add it."""
    base = source.base if source and source.base else None
    if base is None:
        width = vectors[-1].shape[-1]
        base = "sdxl" if len(vectors) == 2 else BASE_BY_DIM.get(width, "unknown")
    return (
        f"To use it in InvokeAI 3+: Model Manager -> Add Models -> URL or Local Path -> {path} "
        f"(a textual inversion for {base} models)."
    )


def _save_diffusers(
    output_dir: Path, token: str, vectors: list[torch.Tensor], step: int, files: ExportedFiles
) -> None:
    """SD1/SD2: learned_embeds.bin + .safetensors as {token: tensor}. SDXL: learned_embeds.safetensors
    with clip_l/clip_g, plus a {token: tensor} file per encoder for load_textual_inversion."""
    if len(vectors) == 1:
        layout = diffusers_layout(token, vectors[0])
        files.embeds_bin = save_torch(output_dir / "learned_embeds.bin", layout)
        files.embeds_safetensors = save_tensors(
            output_dir / "learned_embeds.safetensors", layout, _metadata(token, step, "diffusers")
        )
        return
    files.embeds_safetensors = save_tensors(
        output_dir / "learned_embeds.safetensors",
        sdxl_layout(vectors),
        _metadata(token, step, "sdxl"),
    )
    for key, encoder_vectors in zip(SDXL_KEYS, vectors):
        files.others.append(
            save_tensors(
                output_dir / f"learned_embeds_{key}.safetensors",
                diffusers_layout(token, encoder_vectors),
                _metadata(token, step, f"diffusers-{key}"),
            )
        )


def a1111_fields(trigger: str, step: int, source: ModelSource | None) -> dict:
    """The fields A1111 writes next to the vectors; it names the model by its short hash."""
    name = None
    if source is not None:
        name = source.path.stem if source.kind == "single_file" else source.name
    return {
        "name": trigger,
        "step": step,
        "sd_checkpoint": model_short_hash(source),
        "sd_checkpoint_name": name,
    }


def save_a1111(
    folder: Path, trigger: str, vectors: list[torch.Tensor], step: int, source: ModelSource | None
) -> list[Path]:
    """<trigger>.pt and <trigger>.safetensors as A1111 (and ComfyUI) load them; they take the trigger
    from the file name. SD1/SD2: string_to_param {'*': [n, dim]} in the .pt, emb_params [n, dim] in
    the .safetensors. SDXL: clip_l/clip_g in both."""
    fields = a1111_fields(trigger, step, source)
    if len(vectors) == 2:
        tensors = sdxl_layout(vectors)
        pt_data = {**tensors, **fields}
    else:
        tensors = {"emb_params": _cpu(vectors[0])}
        pt_data = {
            "string_to_token": {"*": A1111_STAR_TOKEN_ID},
            "string_to_param": {"*": _cpu(vectors[0])},
            **fields,
        }
    metadata = {key: str(value) for key, value in fields.items() if value is not None}
    return [
        save_torch(folder / f"{trigger}.pt", pt_data),
        save_tensors(folder / f"{trigger}.safetensors", tensors, metadata=metadata),
    ]


def model_short_hash(source: ModelSource | None) -> str | None:
    """A1111's `shorthash`: the first 10 hex digits of the checkpoint file's sha256 (None for a
    diffusers folder, which A1111 cannot load anyway)."""
    if source is None or source.kind != "single_file" or not source.path.is_file():
        return None
    digest = hashlib.sha256()
    with open(source.path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()[:10]


def copy_to_invokeai(root: Path, trigger: str, token: str, vectors: list[torch.Tensor]) -> Path:
    """ROOT/embeddings/<trigger>/: learned_embeds.bin for one vector, <trigger>.safetensors with
    `emb_params` [n, dim] for several or clip_l/clip_g for SDXL. InvokeAI probes every file in the
    folder, so it holds only the file this run wrote."""
    folder = embeddings_dir(root, trigger)
    name, tensors = invokeai_layout(token, vectors)
    target = folder / name.format(trigger=trigger)
    for stale in (folder / "learned_embeds.bin", folder / f"{trigger}.safetensors"):
        if stale != target:
            stale.unlink(missing_ok=True)
    if target.suffix == ".bin":
        return save_torch(target, tensors)
    return save_tensors(target, tensors)


def push_to_hub(config: TrainingConfig) -> str:
    """Upload the output folder (embeddings, pipeline, logs; not checkpoints) to the hub."""
    from huggingface_hub import HfApi

    from invokeai_ti.errors import UserError

    assert config.output_dir is not None
    repo_id = config.hub_model_id or config.trigger
    api = HfApi(token=config.hub_token)
    try:
        repo = api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(
            repo_id=repo.repo_id,
            folder_path=str(config.output_dir),
            ignore_patterns=["checkpoint-*", ".*"],
        )
    except Exception as exc:  # noqa: BLE001 - network, auth and offline errors all mean "not uploaded"
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise UserError(
            f"--push_to_hub: uploading to '{repo_id}' failed ({reason}). The trained files are in "
            f"{config.output_dir}; check --hub_token / network and upload them later.",
            exit_code=1,
        ) from exc
    return repo.repo_id

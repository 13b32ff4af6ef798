"""Final and intermediate embedding files, the copy into ROOT/embeddings/<trigger>/, the full pipeline.

2.3 compat: one vector is written 1-D `{token: tensor[dim]}`; InvokeAI (2.3 and today) reads the
token dimension of such a file from shape[0], so the [1, dim] diffusers writes would be rejected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from invokeai_ti.checkpoint import atomic_write, save_tensors, save_torch
from invokeai_ti.config import TrainingConfig
from invokeai_ti.root import embeddings_dir

log = logging.getLogger(__name__)


@dataclass
class ExportedFiles:
    """Paths written at the end of a run, for the final lines the CLI prints."""

    embeds_bin: Path
    embeds_safetensors: Path
    invokeai_copy: Path | None = None
    pipeline_dir: Path | None = None


def diffusers_layout(token: str, vectors: torch.Tensor) -> dict[str, torch.Tensor]:
    """`{token: [dim]}` for one vector, `{token: [n, dim]}` for several (diffusers names the
    extra tokens token_1, token_2, ... when loading)."""
    vectors = vectors.detach().float().cpu()
    return {token: vectors[0].clone() if vectors.shape[0] == 1 else vectors.clone()}


def save_learned_embeds(path: Path, token: str, vectors: torch.Tensor) -> Path:
    """learned_embeds.bin (torch.save of plain tensors: loads with weights_only=True)."""
    return save_torch(path, diffusers_layout(token, vectors))


def save_step_embeds(output_dir: Path, token: str, vectors: torch.Tensor, step: int) -> Path:
    return save_learned_embeds(output_dir / f"learned_embeds-steps-{step}.bin", token, vectors)


def save_final_embeds(
    config: TrainingConfig, vectors: torch.Tensor, trained_steps: int
) -> ExportedFiles:
    """learned_embeds.bin/.safetensors in the output folder, plus the InvokeAI copy unless --no-copy."""
    assert config.output_dir is not None and config.root_dir is not None
    token = config.placeholder_token or ""
    layout = diffusers_layout(token, vectors)
    files = ExportedFiles(
        embeds_bin=save_torch(config.output_dir / "learned_embeds.bin", layout),
        embeds_safetensors=save_tensors(
            config.output_dir / "learned_embeds.safetensors",
            layout,
            metadata={"trigger": token, "step": str(trained_steps), "format": "diffusers"},
        ),
    )
    if config.copy_to_embeddings:
        files.invokeai_copy = copy_to_invokeai(config.root_dir, config.trigger, token, vectors)
    return files


def copy_to_invokeai(root: Path, trigger: str, token: str, vectors: torch.Tensor) -> Path:
    """ROOT/embeddings/<trigger>/: learned_embeds.bin for one vector, <trigger>.safetensors with
    `emb_params` [n, dim] for several. InvokeAI probes every file in the folder, so it holds only
    the file this run wrote."""
    folder = embeddings_dir(root, trigger)
    bin_path = folder / "learned_embeds.bin"
    multi_path = folder / f"{trigger}.safetensors"
    if vectors.shape[0] == 1:
        target = save_learned_embeds(bin_path, token, vectors)
        multi_path.unlink(missing_ok=True)
    else:
        target = save_tensors(multi_path, {"emb_params": vectors.detach().float().cpu()})
        bin_path.unlink(missing_ok=True)
    return target


def save_full_pipeline(
    config: TrainingConfig, model_dir: Path, tokens: list[str], vectors: torch.Tensor
) -> Path:
    """A diffusers pipeline folder whose tokenizer and text encoder know the new tokens."""
    from diffusers import DiffusionPipeline

    assert config.output_dir is not None
    pipe = DiffusionPipeline.from_pretrained(str(model_dir), local_files_only=True)
    pipe.tokenizer.add_tokens(tokens)
    # mean_resizing would estimate a covariance over the whole table; the rows are overwritten.
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer), mean_resizing=False)
    ids = pipe.tokenizer.convert_tokens_to_ids(tokens)
    with torch.no_grad():
        weight = pipe.text_encoder.get_input_embeddings().weight
        weight[ids] = vectors.to(weight.dtype)
    target = config.output_dir
    # save_pretrained writes many files; each is small next to the weights, which it writes
    # itself. The pipeline is rewritten whole at the end of a run, so a crash here loses nothing
    # that the embedding files and checkpoints do not already hold.
    pipe.save_pretrained(str(target), safe_serialization=True)
    return target


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


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

"""The full pipeline with the new token (written unless --only_save_embeds, as in InvokeAI 2.3).

Only the tokenizers and the text encoders change; from a diffusers folder every other component
(the UNet alone is 3.4 GB for SD1.5) is copied file by file instead of being loaded and serialized
again: a copy-on-write clone where the filesystem has one (btrfs, XFS: instant, no space), else a
kernel-side copy. Hard links would be as fast, but a later save_pretrained over this folder would
then write into the source model's own files. Single files are converted, so they are saved whole.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import threading
from pathlib import Path

import torch

from invokeai_ti.config import TrainingConfig
from invokeai_ti.files.atomic import TEMP_SUFFIX, remove_temp_files
from invokeai_ti.invokeai.model_source import ModelSource

log = logging.getLogger(__name__)

TEXT_SIDE = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
FICLONE = 0x40049409  # linux/fs.h: clone a whole file (copy-on-write)


class ComponentCopy:
    """The unchanged components copied into the output folder by a thread while training runs:
    the copy waits on the disk (sendfile releases the GIL), training on the CPU, so they overlap.
    model_index.json is written last, by save_full_pipeline, so the folder is no pipeline until
    the text side is in it too."""

    def __init__(self, source: Path, target: Path, components: list[str]) -> None:
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._copy, args=(source, target, components),
                                        name="pipeline-copy", daemon=True)  # fmt: skip
        self._thread.start()

    def _copy(self, source: Path, target: Path, components: list[str]) -> None:
        try:
            for component in components:
                copy_tree(source / component, target / component)
        except BaseException as exc:  # noqa: BLE001 - raised again by wait(), in the main thread
            self.error = exc

    def wait(self) -> None:
        self._thread.join()
        if self.error is not None:
            raise self.error


def start_component_copy(config: TrainingConfig, source: ModelSource,
                         num_encoders: int) -> ComponentCopy | None:  # fmt: skip
    """Start copying what the full pipeline takes unchanged from a diffusers folder; None when
    no full pipeline will be written or it is converted from a single file."""
    if config.only_save_embeds or config.dry_run or source.kind != "diffusers":
        return None
    assert config.output_dir is not None
    written = {name for pair in TEXT_SIDE[:num_encoders] for name in pair}
    unchanged = [c for c in pipeline_components(source.path) if c not in written]
    return ComponentCopy(source.path, config.output_dir, unchanged)


def save_full_pipeline(config: TrainingConfig, source: ModelSource, tokens: list[str],
                       vectors: list[torch.Tensor],
                       copying: ComponentCopy | None = None) -> Path:  # fmt: skip
    """A diffusers pipeline folder in the output folder whose tokenizer(s) and text encoder(s)
    know the new tokens; `copying` is the copy of the other components started earlier."""
    target = config.output_dir
    assert target is not None
    if source.kind != "diffusers":
        from invokeai_ti.models.loading import load_pipeline

        pipe = load_pipeline(config, source)
        for (tok, enc), encoder_vectors in zip(TEXT_SIDE, vectors):
            add_tokens(getattr(pipe, tok), getattr(pipe, enc), tokens, encoder_vectors)
        pipe.save_pretrained(str(target), safe_serialization=True)
        return target
    from invokeai_ti.models.loading import load_text_side

    tokenizers, encoders = load_text_side(source.path, config, dtype=None)
    for (tok_name, enc_name), tokenizer, encoder, encoder_vectors in zip(
        TEXT_SIDE, tokenizers, encoders, vectors
    ):
        add_tokens(tokenizer, encoder, tokens, encoder_vectors)
        tokenizer.save_pretrained(str(target / tok_name))
        encoder.save_pretrained(str(target / enc_name), safe_serialization=True)
    if copying is None:
        copying = start_component_copy(config, source, len(vectors))
    assert copying is not None
    copying.wait()
    copy_file(source.path / "model_index.json", target / "model_index.json")
    return target


def add_tokens(tokenizer, encoder, tokens: list[str], vectors: torch.Tensor) -> None:
    """The new tokens in the tokenizer and their learned rows in the encoder's table."""
    tokenizer.add_tokens(tokens)
    # mean_resizing would estimate a covariance over the whole table; the rows are overwritten.
    encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    with torch.no_grad():
        weight = encoder.get_input_embeddings().weight
        weight[ids] = vectors.detach().to(weight.device, weight.dtype)


def pipeline_components(folder: Path) -> list[str]:
    """The component folders model_index.json names (unet, vae, scheduler, ...)."""
    index = json.loads((folder / "model_index.json").read_text())
    return [
        name
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and value[0] is not None
        and (folder / name).is_dir()
    ]  # fmt: skip


def copy_tree(source: Path, target: Path) -> None:
    for path in sorted(source.rglob("*")):
        if path.is_file():
            copy_file(path, target / path.relative_to(source))


def copy_file(source: Path, target: Path) -> None:
    """`source` to `target`, replaced by a rename (so a file there before, even a hard link to
    the source, is never written through): a clone where the filesystem can, else a copy the
    kernel does (sendfile). What a killed copy leaves is removed by the next one into the folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_temp_files(target.parent)
    partial = target.with_name(f".{target.name}.copy{TEMP_SUFFIX}")
    if not _clone(source, partial):
        shutil.copyfile(source, partial)
    os.replace(partial, target)


def _clone(source: Path, target: Path) -> bool:
    try:
        import fcntl  # not on Windows: it copies
    except ImportError:
        return False
    try:
        with open(source, "rb") as src, open(target, "wb") as dst:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
        return True
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY):
            raise
        return False

"""Prompts per sample: templates (built-in or --template_file) filled with the trigger and each
image's caption (--caption_extension), with kohya's tag shuffle and caption dropout.

The trigger is in every prompt exactly once: templates place it, so any copy a caption holds is
removed (kohya-style captions often start with the trigger word), and a template line without a
trigger placeholder gets the trigger in front.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from invokeai_ti.config import TrainingConfig
from invokeai_ti.data.dataset import templates_for
from invokeai_ti.errors import DataError

log = logging.getLogger(__name__)

TRIGGER = "{trigger}"
CAPTION = "{caption}"
# 2.3 / diffusers templates write the trigger as {}; A1111's template files use [name] and
# [filewords]: all are read as our two placeholders, so peers' files work unchanged.
ALIASES = {"[name]": TRIGGER, "{}": TRIGGER, "[filewords]": CAPTION}


@dataclass
class Prompts:
    """Everything needed to write any sample's prompt; `text()` is a pure function of its
    arguments, so a resumed run writes the very same prompts."""

    templates: list[str]  # with {trigger} once and {caption} at most once
    captions: list[str] | None  # one per training image, trigger removed; None: no captions
    trigger_words: list[str]  # what a caption may hold for the trigger, longest first
    trigger_text: str  # the placeholder tokens as they stand in a prompt
    shuffle: bool = False
    keep_tokens: int = 0
    dropout_rate: float = 0.0
    template_source: str = "built-in"  # for the plan and the fingerprint
    keeps: list[int] | None = None  # per image: --keep_tokens less the trigger tags removed there

    @property
    def num_templates(self) -> int:
        return len(self.templates)

    def text(self, image_index: int, template_index: int, caption_seed: int | None = None) -> str:
        """The prompt of one sample; `caption_seed` None: the whole caption (quality report)."""
        caption = self.captions[image_index] if self.captions is not None else ""
        if caption_seed is not None:
            keep = self.keeps[image_index] if self.keeps else self.keep_tokens
            caption = self.vary(caption, random.Random(caption_seed), keep)
        prompt = self.templates[template_index].replace(TRIGGER, self.trigger_text)
        return tidy(prompt.replace(CAPTION, caption))

    def vary(self, caption: str, rng: random.Random, keep: int) -> str:
        """kohya's tag handling: drop the whole caption at --caption_dropout_rate, else shuffle
        the comma-separated tags after the first --keep_tokens."""
        if self.dropout_rate and rng.random() < self.dropout_rate:
            return ""
        if not self.shuffle:
            return caption
        tags = split_tags(caption)
        kept, rest = tags[:keep], tags[keep:]
        rng.shuffle(rest)
        return ", ".join(kept + rest)

    def token_ids(
        self, texts: list[str], tokenizers: list, device: torch.device
    ) -> list[torch.Tensor]:
        """Each tokenizer's ids for `texts`: [len(texts), max_length] per tokenizer."""
        return [
            tok(texts, padding="max_length", truncation=True, max_length=tok.model_max_length,
                return_tensors="pt").input_ids.to(device)
            for tok in tokenizers
        ]  # fmt: skip


def digest_text(text: str) -> str:
    """A short hash of a caption or template list, for the resume fingerprint."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def split_tags(caption: str) -> list[str]:
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


def tidy(prompt: str) -> str:
    """No empty tags or doubled spaces where an empty or dropped caption was filled in."""
    prompt = re.sub(r"\s+", " ", prompt)
    prompt = re.sub(r"\s*,(\s*,)*", ",", prompt)  # ", ," and " ," -> ","
    prompt = re.sub(r",(?=\S)", ", ", prompt)
    return prompt.strip(" ,")


def remove_trigger(caption: str, trigger_words: list[str]) -> str:
    """The caption without the trigger: the tokenizer finds an added token anywhere in the text,
    case-insensitively, so every such occurrence is removed, not only whole words."""
    for word in trigger_words:
        caption = re.sub(re.escape(word), " ", caption, flags=re.IGNORECASE)
    return (
        ", ".join(split_tags(caption)) if "," in caption else re.sub(r"\s+", " ", caption).strip()
    )


def normalize_template(line: str, where: str, trigger_words: list[str]) -> str:
    """A template line with our placeholders (a trigger written out counts as one); the trigger in
    front when the line has none."""
    for word in trigger_words:
        line = re.sub(re.escape(word), TRIGGER, line, flags=re.IGNORECASE)
    for alias, placeholder in ALIASES.items():
        line = line.replace(alias, placeholder)
    count = line.count(TRIGGER)
    if count > 1:
        raise DataError(f"{where} names the trigger {count} times: use [name] or {{trigger}} once.")
    if line.count(CAPTION) > 1:
        raise DataError(f"{where} has the caption twice: use [filewords] or {{caption}} once.")
    return line if count else f"{TRIGGER}, {line}"


def read_template_file(path: Path, trigger_words: list[str]) -> list[str]:
    """--template_file: one template a line; blank lines and lines starting with # are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"--template_file {path} does not exist: give a text file with one "
                        "prompt template a line.") from None  # fmt: skip
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(
            f"--template_file {path} cannot be read ({exc}): save it as UTF-8 text."
        ) from exc
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    templates = [normalize_template(line, f"--template_file {path} line {n}", trigger_words)
                 for n, line in lines if line and not line.startswith("#")]  # fmt: skip
    if not templates:
        raise DataError(f"--template_file {path} holds no templates: write one a line, e.g. "
                        "'a photo of [name], [filewords]'.")  # fmt: skip
    return templates


def caption_path(image: Path, extension: str) -> Path:
    """kohya's rule: the image's name without its suffix, plus the extension (cat.png -> cat.txt)."""
    return image.with_name(image.stem + extension)


def normalized_extension(extension: str) -> str:
    """`txt` is read as `.txt`; `_caption.txt` and `.caption` stay as given."""
    return f".{extension}" if extension.isalnum() else extension


def read_captions(images: list[Path], extension: str) -> list[str]:
    """One caption per image (several lines join as tags); a missing file is an empty caption."""
    captions, missing = [], []
    for image in images:
        path = caption_path(image, extension)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            missing.append(image.name)
            text = ""
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"caption file {path} cannot be read ({exc}): save it as UTF-8 "
                            "text.") from exc  # fmt: skip
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        captions.append(", ".join(lines))
    if len(missing) == len(images):
        raise DataError(f"--caption_extension {extension}: no image in {images[0].parent} has a "
                        f"caption file (e.g. {caption_path(images[0], extension).name}): write "
                        "them or leave the flag out.")  # fmt: skip
    if missing:
        log.warning("%d image(s) have no %s caption and train with an empty one: %s",
                    len(missing), extension, ", ".join(missing[:5]))  # fmt: skip
    return captions


def build_prompts(config: TrainingConfig, images: list[Path], trigger_text: str) -> Prompts:
    """The run's prompts: templates from --template_file or built in (with ', {caption}' after each
    when there are captions, as A1111's *_filewords.txt), captions from --caption_extension."""
    words = sorted({trigger_text, *trigger_text.split(), config.placeholder_token or ""}, key=len,
                   reverse=True)  # fmt: skip
    words = [w for w in words if w]
    captions = keeps = None
    if config.caption_extension:
        raw = read_captions(images, normalized_extension(config.caption_extension))
        captions = [remove_trigger(caption, words) for caption in raw]
        # kohya's --keep_tokens counts the trigger tag its users put first; it is removed here
        # (the template places it), so it no longer counts.
        keeps = [config.keep_tokens - sum(remove_trigger(tag, words) == ""
                                          for tag in split_tags(caption)[: config.keep_tokens])
                 for caption in raw]  # fmt: skip
    if config.template_file is not None:
        templates, source = (
            read_template_file(config.template_file, words),
            str(config.template_file),
        )
        if captions is not None and not any(CAPTION in t for t in templates):
            log.warning("--template_file %s has no [filewords] or {caption}: the captions are "
                        "not used.", config.template_file)  # fmt: skip
    else:
        builtin = [
            normalize_template(t, "template", []) for t in templates_for(config.learnable_property)
        ]
        templates = [f"{t}, {CAPTION}" for t in builtin] if captions is not None else builtin
        source = f"built-in {config.learnable_property}"
    return Prompts(templates, captions, words, trigger_text, config.shuffle_caption,
                   config.keep_tokens, config.caption_dropout_rate, source, keeps)  # fmt: skip

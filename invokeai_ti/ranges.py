"""Every numeric setting's accepted range and the reason for it, in one table, and the rule for a
trigger that names folders. The CLI's parser, TrainingConfig.validate() and the GUI's form all
check against this module, so a value is refused the same way wherever it is typed, before any
model is loaded. No torch here.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass

from invokeai_ti.errors import UserError

# The CLIP tokenizers of SD1, SD2 and SDXL hold 77 tokens: a start and an end token, the
# template's words and the trigger's vectors. The longest template ("a close-up painting in the
# style of {}") is 9 tokens; tests/test_bad_input_round2.py checks this against the tokenizer.
TOKENIZER_LENGTH = 77
TEMPLATE_TOKENS = 9
MAX_NUM_VECTORS = TOKENIZER_LENGTH - 2 - TEMPLATE_TOKENS
# Training memory grows with the square of the size; 4096 is far past what SDXL was trained at,
# and a larger value would only exhaust memory after minutes of loading.
MAX_RESOLUTION = 4096
FLOAT32_MAX = 1e38  # float32 overflows past 3.4e38: a larger lr or decay turns the vectors to inf
COUNT_MAX = 2**31 - 1  # a step count no run reaches; more is a typo
SEED_MAX = 2**32 - 1  # numpy's RNG takes 0 .. 2**32-1 (torch's takes more)
# A folder name holds 255 bytes; the longest file named after the trigger adds ".safetensors".
MAX_TRIGGER_BYTES = 200


@dataclass(frozen=True)
class Range:
    """Accepted values of one setting: low..high (low excluded when `low_open`), whole numbers
    when `integer`, a multiple of `multiple_of`; `optional` settings also take None ("none")."""

    low: float
    high: float
    why: str = ""
    integer: bool = True
    low_open: bool = False
    high_open: bool = False
    multiple_of: int = 1
    optional: bool = False

    def interval(self) -> str:
        """The accepted values as the messages and --help show them."""
        if self.integer:
            return f"{self.low:.0f} to {self.high:.0f}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"{left}{self.low:g}, {self.high:g}{right}"

    def phrase(self) -> str:
        """What the value must be, in words, for the messages."""
        if self.low_open and self.low == 0:
            return f"positive (at most {self.high:g})"
        if self.integer and self.low == 1:
            return f"a positive number (at most {self.high:.0f})"
        if self.integer:
            return f"a whole number from {self.interval()}"
        return f"in {self.interval()}"


def _count(why: str = "", low: int = 1, high: int = COUNT_MAX, **kw) -> Range:
    return Range(low, high, why, **kw)


def _real(low: float, high: float, why: str, **kw) -> Range:
    return Range(low, high, why, integer=False, **kw)


RANGES: dict[str, Range] = {
    "resolution": Range(
        8,
        MAX_RESOLUTION,
        "the VAE works on multiples of 8, and larger sizes exhaust memory",
        multiple_of=8,
    ),
    "repeats": _count("each epoch lists every image this many times", high=10_000),
    "dataloader_num_workers": _count("threads that decode images", low=0, high=256),
    "num_vectors": _count(
        f"a prompt holds {TOKENIZER_LENGTH} tokens: start, end, the template's "
        f"{TEMPLATE_TOKENS} and the vectors",
        high=MAX_NUM_VECTORS,
    ),
    "seed": _count("the range numpy's and torch's RNGs take", low=0, high=SEED_MAX, optional=True),
    "train_batch_size": _count("every image of a batch is in memory at once", high=4096),
    "num_train_epochs": _count(),
    "max_train_steps": _count(),
    "gradient_accumulation_steps": _count(),
    "local_rank": _count("accelerate launch sets the rank", low=-1, high=4096),
    "learning_rate": _real(0, FLOAT32_MAX, "float32 overflows above 3.4e+38", low_open=True),
    "lr_warmup_steps": _count(low=0),
    "lr_num_cycles": _count(),
    "adam_beta1": _real(0, 1, "torch's AdamW takes betas in [0, 1)", high_open=True),
    "adam_beta2": _real(0, 1, "torch's AdamW takes betas in [0, 1)", high_open=True),
    "adam_weight_decay": _real(0, FLOAT32_MAX, "torch's AdamW takes no negative decay"),
    "adam_epsilon": _real(0, FLOAT32_MAX, "torch's AdamW takes no negative epsilon"),
    "checkpointing_steps": _count(),
    "checkpoints_total_limit": _count("or leave it out for no limit", optional=True),
    "save_steps": _count(),
    "log_every_steps": _count(),
    "num_validation_images": _count("each is a full denoising run", low=0, high=64),
    "validation_steps": _count("0 turns validation off", low=0, optional=True),
    "max_grad_norm": _real(0, FLOAT32_MAX, "0 turns clipping off"),
    "min_snr_gamma": _real(0, FLOAT32_MAX, "0 turns the weighting off; 5 is usual"),
    "noise_offset": _real(0, 1, "0 turns it off; 0.05-0.1 is usual"),
    "keep_tokens": _count(
        "tags --shuffle_caption keeps at the start of a caption", low=0, high=TOKENIZER_LENGTH
    ),
    "caption_dropout_rate": _real(0, 1, "the share of samples trained without their caption"),
    "masked_prior_preservation_weight": _real(
        0, FLOAT32_MAX, "0 turns it off; 1 weighs the background's mean error as the subject's"
    ),
    "min_bucket_reso": _count("a bucket side in pixels", high=MAX_RESOLUTION),
    "max_bucket_reso": _count("a bucket side in pixels", high=MAX_RESOLUTION),
    "bucket_reso_steps": _count(
        "bucket sides are multiples of it", low=8, high=MAX_RESOLUTION, multiple_of=8
    ),
    "validation_loss_draws": _count(
        "draws per image; 0 turns the validation loss off", low=0, high=1024
    ),
    "early_stop_patience": _count("validations without a new best; 0 turns it off", low=0),
    "evaluation_budget": _real(
        0, 1e6, "a fraction of the training time, or 'none' for no limit", optional=True
    ),
}


def flag(name: str) -> str:
    return f"--{name}"


def problem(name: str, value: object) -> str | None:
    """What is wrong with `value` for setting `name`, as the end of a sentence that starts with
    the flag; None when it is accepted."""
    r = RANGES[name]
    if value is None and r.optional:
        return None
    why = f": {r.why}" if r.why else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be {r.phrase()}, got {_shown(str(value))}"
    if r.integer and not isinstance(value, int):
        return f"must be {r.phrase()}, got {value}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number in {r.interval()}, got {value}"
    below = value <= r.low if r.low_open else value < r.low
    above = value >= r.high if r.high_open else value > r.high
    if below or above:
        got = str(value)
        got = got if len(got) <= 24 else f"{got[:12]}... ({len(got)} digits)"
        return f"must be {r.phrase()}, got {got}{why if above or not r.low_open else ''}"
    if r.multiple_of > 1 and value % r.multiple_of:
        lower = max(r.multiple_of, int(value) // r.multiple_of * r.multiple_of)
        return f"{value} is not a multiple of {r.multiple_of}: use e.g. {lower}"
    return None


def check(name: str, value: object) -> None:
    """UserError naming the flag, the value and the accepted range."""
    if (text := problem(name, value)) is not None:
        raise UserError(f"{flag(name)} {text}.")


def parse(name: str, text: str) -> int | float | None:
    """A flag's text as its number, checked against its range; UserError otherwise."""
    r = RANGES[name]
    stripped = text.strip()
    if r.optional and stripped.lower() in ("none", ""):
        return None
    try:
        value: int | float = int(stripped) if r.integer else float(stripped)
    except (ValueError, OverflowError):
        kind, where = ("a whole number", "from") if r.integer else ("a number", "in")
        raise UserError(
            f"{flag(name)} {_shown(text)} is not {kind}: give one {where} {r.interval()}."
        ) from None
    check(name, value)
    return value


def check_settings(settings: object) -> None:
    """Every ranged field of a TrainingConfig (or anything with those attributes)."""
    for name in RANGES:
        check(name, getattr(settings, name))


def _shown(text: str) -> str:
    """A typed value quoted for a one-line message: control characters escaped."""
    return "'" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:80]) + "'"


# --- the trigger names folders ------------------------------------------------------------------


def folder_name_problem(trigger: str) -> str | None:
    """Why `trigger` (the placeholder without <>) cannot name ROOT/embeddings/<trigger> and the
    other folders derived from it, as a sentence; None when it can. Refused rather than mapped to a
    safe name, so the folders are always named exactly what the user types in prompts."""
    what = f"the trigger {_shown(trigger)}"
    safe = "use letters, digits, - or _"
    if not trigger:
        return "the trigger is empty once the < > are removed: give a word such as '<my-cat>'"
    bad = sorted({c for c in trigger if c in "/\\" or unicodedata.category(c)[0] == "C"})
    if bad:
        listed = " ".join(repr(c) for c in bad)
        return f"{what} holds {listed}, which cannot be in a folder name: {safe}"
    if ".." in trigger or trigger == ".":
        return f"{what} holds '..' or is '.', which names a folder outside its parent: {safe}"
    if len(trigger.encode("utf-8", "surrogatepass")) > MAX_TRIGGER_BYTES:
        return f"{what} is longer than {MAX_TRIGGER_BYTES} bytes, too long for a folder name"
    return None

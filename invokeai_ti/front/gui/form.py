"""The training form's rules without its widgets: the initial values, the paths that follow the
trigger, the checks before Start, and what a fresh start would delete.

No Textual here (gui.py draws the form), so the tests call these rules directly; PIL, torch and
transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invokeai_ti import ranges
from invokeai_ti.config import LATEST, TrainingConfig
from invokeai_ti.errors import UserError
from invokeai_ti.files.previous_run import PreviousRun, find_previous_run, resume_problem
from invokeai_ti.invokeai.root import absolute_path, default_data_dir, default_output_dir

# 2.3 compat: the 2.3 front end offered 5e-4 ("conservative"); the CLI keeps diffusers' 1e-4.
FORM_LEARNING_RATE = 5e-4
# The trigger names folders under the root, so it must be a valid folder name everywhere.
FOLDER_UNSAFE = set('/\\:*?"<>|')
MAX_IMAGES_COUNTED = 1000  # the count runs on every keystroke in the data folder field
EMBEDDING_SUFFIXES = (".pt", ".bin", ".safetensors", ".ckpt")


# --- paths that follow the trigger -----------------------------------------------------------------


def trigger_term(text: str) -> str:
    """What the user typed, without the angle brackets the prompt syntax adds."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return text


def show_path(path: Path) -> str:
    """A path as the form shows it: under the home folder as ~/..., to fit 80 columns."""
    home = Path.home()
    try:
        return str(Path("~") / path.relative_to(home))
    except ValueError:
        return str(path)


def read_path(text: str) -> Path:
    return absolute_path(text.strip())


def follow(current: str, last_auto: str, new_auto: str) -> str:
    """A value follows another until the user edits it: unchanged since we set it -> new value."""
    return new_auto if current == last_auto else current


# --- what the folders hold ---------------------------------------------------------------------------


def count_usable_images(folder: Path) -> int | None:
    """Images directly in `folder` whose header PIL reads (training decodes them fully later);
    None when `folder` is not a folder."""
    from PIL import Image

    from invokeai_ti.data.dataset import IGNORED_NAMES, IMAGE_SUFFIXES

    if not folder.is_dir():
        return None
    count = 0
    for entry in sorted(folder.iterdir())[:MAX_IMAGES_COUNTED]:
        name = entry.name.lower()
        if (
            name.startswith(".")
            or name in IGNORED_NAMES
            or entry.suffix.lower() not in IMAGE_SUFFIXES
        ):
            continue
        try:
            with Image.open(entry):
                count += 1
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            continue
    return count


def fresh_start_losses(
    config: TrainingConfig, previous: PreviousRun
) -> tuple[list[str], list[Path]]:
    """What a new (not resumed) run would destroy: lines for the confirmation, and the earlier
    outputs to delete first, so a later `latest` resume cannot pick the old run's newest step."""
    if config.resume_from_checkpoint is not None:
        return [], []
    lines, remove = [], [*previous.checkpoints, *previous.embeds]
    if previous.checkpoints:
        lines.append(
            f"{len(previous.checkpoints)} checkpoint(s) of {previous.owner} in "
            f"{show_path(config.output_dir)} (newest: {previous.checkpoints[-1].name})"
        )
    if previous.embeds:
        names = ", ".join(p.name for p in previous.embeds[:3])
        more = f" and {len(previous.embeds) - 3} more" if len(previous.embeds) > 3 else ""
        lines.append(f"{len(previous.embeds)} embedding file(s): {names}{more}")
    if previous.installed and config.copy_to_embeddings:
        lines.append(
            f"{show_path(previous.installed[0].parent)}/ is replaced when training finishes"
        )
    return lines, remove


# --- the form's values -> a TrainingConfig ---------------------------------------------------------


@dataclass
class FormValues:
    """The widgets' values, as typed; the attribute names are the widget ids."""

    model: str
    trigger: str
    data_dir: str
    max_train_steps: str
    learning_rate: str
    initializer: str
    resume: bool
    output_dir: str
    learnable_property: str
    resolution: int
    center_crop: bool
    mixed_precision: str
    train_batch_size: str
    scale_lr: bool
    xformers: bool
    lr_scheduler: str
    gradient_accumulation_steps: str
    lr_warmup_steps: str
    num_vectors: str


def initial_values(
    base: TrainingConfig, root: Path, model: str, native: int | None, precisions: list[str]
) -> FormValues:
    """The form as it opens: the command line's config, with the form's own defaults where that
    config holds the CLI default (a flag equal to its default cannot be told apart from none)."""
    trigger = trigger_term(base.placeholder_token or "")
    lr = base.learning_rate
    if lr == TrainingConfig.learning_rate:
        lr = FORM_LEARNING_RATE
    resolution = base.resolution
    if resolution == TrainingConfig.resolution:
        resolution = native or resolution
    return FormValues(
        model=model,
        trigger=trigger,
        data_dir=show_path(base.train_data_dir or default_data_dir(root, trigger)),
        max_train_steps=str(base.max_train_steps),
        learning_rate=str(lr),
        initializer=base.initializer_token,
        resume=base.resume_from_checkpoint is not None,
        output_dir=show_path(base.output_dir or default_output_dir(root, trigger)),
        learnable_property=base.learnable_property,
        resolution=resolution,
        center_crop=base.center_crop,
        mixed_precision=base.mixed_precision if base.mixed_precision in precisions else "no",
        train_batch_size=str(base.train_batch_size),
        scale_lr=base.scale_lr,
        xformers=base.enable_xformers_memory_efficient_attention,
        lr_scheduler=base.lr_scheduler,
        gradient_accumulation_steps=str(base.gradient_accumulation_steps),
        lr_warmup_steps=str(base.lr_warmup_steps),
        num_vectors=str(base.num_vectors),
    )


# The form's number fields, checked against the same ranges as the flags (ranges.py).
NUMBER_FIELDS = ("max_train_steps", "train_batch_size", "gradient_accumulation_steps",
                 "lr_warmup_steps", "num_vectors", "learning_rate")  # fmt: skip


def trigger_problem(trigger: str) -> str | None:
    """Syntax only; whether the tokenizer already knows it is checked at Start."""
    if not trigger:
        return "Required: the word you will use in prompts, e.g. psychedelic."
    if problem := ranges.folder_name_problem(trigger):  # the CLI's rule, in the same words
        return f"{problem[0].upper()}{problem[1:]}."
    if any(c.isspace() for c in trigger):
        return "One word without spaces, e.g. my-cat."
    unsafe = "".join(sorted(set(trigger) & FOLDER_UNSAFE))
    if unsafe:
        return f"'{unsafe}' cannot be in a folder name: use letters, digits, - or _."
    if trigger.startswith("."):
        return "Must not start with '.': that would name a hidden folder."
    return None


def taken_by(root: Path, trigger: str) -> Path | None:
    """An embedding InvokeAI already loads under this trigger that our copy would not replace:
    ROOT/embeddings/<trigger>.pt/.bin/.safetensors (InvokeAI names a file's trigger after it)."""
    folder = root / "embeddings"
    for suffix in EMBEDDING_SUFFIXES:
        if (folder / f"{trigger}{suffix}").is_file():
            return folder / f"{trigger}{suffix}"
    return None


def data_dir_problem(folder: Path, count: int | None) -> str | None:
    if count is None:
        return f"{show_path(folder)} does not exist: create it and put 3-20 images of the concept in it."
    if count == 0:
        return f"{show_path(folder)} holds no readable images (png, jpg, webp): add 3-20 pictures."
    return None


def _parse_numbers(values: FormValues, errors: dict[str, str]) -> dict[str, Any]:
    """The number fields as numbers; a problem is shown under its field without the flag name."""
    numbers: dict[str, Any] = {}
    for name in NUMBER_FIELDS:
        try:
            numbers[name] = ranges.parse(name, getattr(values, name))
        except UserError as exc:
            message = str(exc).removeprefix(f"{ranges.flag(name)} ")
            errors[name] = f"{message[0].upper()}{message[1:]}"
    return numbers


def build_config(
    base: TrainingConfig, root: Path, values: FormValues
) -> tuple[TrainingConfig | None, dict[str, str]]:
    """The config the form's values describe, or the inline errors keyed by widget id.

    Settings the form does not show (seed, repeats, checkpointing...) come from `base`, the
    config the command line built, so `--gui --seed 7` trains with seed 7.
    """
    errors: dict[str, str] = {}
    numbers = _parse_numbers(values, errors)
    trigger = trigger_term(values.trigger)
    if problem := trigger_problem(trigger):
        errors["trigger"] = problem
    elif other := taken_by(root, trigger):
        errors["trigger"] = (
            f"<{trigger}> is taken by {show_path(other)}: pick another trigger term."
        )
    initializer = values.initializer.strip()
    if not initializer:
        errors["initializer"] = "Required: one word the model knows, e.g. * or cat."
    data_dir, output_dir = read_path(values.data_dir), read_path(values.output_dir)
    # Without a usable trigger the default data folder means nothing yet: no second error.
    if not trigger_problem(trigger) or data_dir != default_data_dir(root, trigger):
        if problem := data_dir_problem(data_dir, count_usable_images(data_dir)):
            errors["data_dir"] = problem
    if output_dir.exists() and not output_dir.is_dir():
        errors["output_dir"] = f"{show_path(output_dir)} is a file: choose a folder."
    if errors:
        return None, errors
    resume = None
    if values.resume:  # keep a checkpoint folder given with --resume_from_checkpoint
        resume = base.resume_from_checkpoint or LATEST
    config = dataclasses.replace(
        base,
        front_end=False,
        root_dir=root,
        model=values.model,
        placeholder_token=f"<{trigger}>",
        initializer_token=initializer,
        train_data_dir=data_dir,
        output_dir=output_dir,
        resume_from_checkpoint=resume,
        learnable_property=values.learnable_property,
        resolution=values.resolution,
        center_crop=values.center_crop,
        mixed_precision=values.mixed_precision,
        scale_lr=values.scale_lr,
        enable_xformers_memory_efficient_attention=values.xformers,
        lr_scheduler=values.lr_scheduler,
        # 2.3 compat: the front end saved only the embeddings, never a multi-GB pipeline copy.
        only_save_embeds=True,
        **numbers,
    )
    try:
        config.validate()
    except UserError as exc:
        return None, {"form": str(exc)}
    previous = find_previous_run(output_dir, root, trigger) if resume == LATEST else None
    if previous and (problem := resume_problem(config, previous)):
        return None, {"resume": problem}
    return config, {}


def token_problems(config: TrainingConfig, tokenizers: list[Any]) -> dict[str, str]:
    """The trigger must be new and the initializer one token, for every tokenizer of the model
    (embedding.py's own checks, so the form and training agree)."""
    from invokeai_ti.models.placeholder import check_placeholder_is_new, initializer_id

    errors: dict[str, str] = {}
    for tokenizer in tokenizers:
        for tokens in config.placeholder_tokens:
            try:
                check_placeholder_is_new(tokenizer, tokens)
            except UserError as exc:
                errors.setdefault("trigger", str(exc))
        try:
            initializer_id(tokenizer, config.initializer_token)
        except UserError as exc:
            errors.setdefault("initializer", str(exc))
    return errors

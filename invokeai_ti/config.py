"""TrainingConfig: every setting of a training run with its default, validation and JSON round-trip.

Field names are InvokeAI 2.3's flag names so one grep finds the flag, the field and the checkpoint key.
No torch here: the CLI, the GUI and the tests build this object before anything heavy is imported.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invokeai_ti.errors import UserError

LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
)
MIXED_PRECISIONS = ("no", "fp16", "bf16")
LEARNABLE_PROPERTIES = ("object", "style")
EXPORT_FORMATS = ("diffusers", "a1111", "comfyui")
REPORT_TO = ("tensorboard", "wandb", "all", "none")
LOG_FORMATS = ("auto", "tqdm", "plain", "json")
LATEST = "latest"


@dataclass
class TrainingConfig:
    # --- General (2.3 help group "General") ---
    root_dir: Path | None = None  # None: INVOKEAI_ROOT, $VIRTUAL_ENV/.., ~/invokeai (root.py)
    logging_dir: Path = Path("logs")  # relative to output_dir
    output_dir: Path | None = None  # None: ROOT/text-inversion-output/<trigger>
    front_end: bool = False

    # --- Models ---
    model: str = "stable-diffusion-1.5"  # models.yaml name, diffusers folder, single file or hub id
    revision: str | None = None
    tokenizer_name: str | None = None

    # --- Data ---
    train_data_dir: Path | None = None  # None: ROOT/text-inversion-training-data/<trigger>
    resolution: int = 512
    center_crop: bool = False
    repeats: int = 100
    dataloader_num_workers: int = 0  # threads used to decode images at setup
    cache_latents: bool = True

    # --- Captions, masks and config files (kohya's flag names, which their users know) ---
    caption_extension: str | None = None  # e.g. ".txt": cat.png's caption is cat.txt
    template_file: Path | None = None  # one prompt template a line; None: built-in templates
    shuffle_caption: bool = False  # shuffle a caption's comma-separated tags every time
    keep_tokens: int = 0  # tags at the caption's start that the shuffle keeps in place
    caption_dropout_rate: float = 0.0  # share of samples trained with no caption
    alpha_mask: bool = False  # weight the loss by each image's alpha channel
    mask_extension: str | None = None  # e.g. "_mask.png": cat.png's loss mask is cat_mask.png
    enable_bucket: bool = False  # train each image at its own aspect ratio
    min_bucket_reso: int = 256  # smallest bucket side (px)
    max_bucket_reso: int = 1024  # largest bucket side (px)
    bucket_reso_steps: int = 64  # bucket sides are multiples of this (px)
    config: Path | None = None  # the .toml/.yaml file the flags were read from, if any

    # --- Trigger term ---
    placeholder_token: str | None = None
    learnable_property: str = "object"
    initializer_token: str = "*"
    num_vectors: int = 1
    init_embedding: Path | None = None

    # --- Training ---
    seed: int | None = None  # None: drawn once and stored in the checkpoints
    train_batch_size: int = 8
    num_train_epochs: int = 100
    max_train_steps: int = 5000
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    allow_tf32: bool = False
    enable_xformers_memory_efficient_attention: bool = False
    local_rank: int = -1  # 2.3 compat: accepted; accelerate launch sets the rank itself

    # --- Optimizer and schedule ---
    learning_rate: float = 1e-4
    scale_lr: bool = True
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 500
    lr_num_cycles: int = 1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8

    # --- Checkpoints and outputs ---
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint folder path
    save_steps: int = 500
    only_save_embeds: bool = False
    copy_to_embeddings: bool = True
    export_format: list[str] = field(default_factory=lambda: ["diffusers"])
    comfyui_embeddings_dir: Path | None = None

    # --- Observability ---
    report_to: str = "tensorboard"
    log_format: str = "auto"
    log_every_steps: int = 10  # plain/json progress lines
    validation_prompt: str | None = None
    num_validation_images: int = 4
    validation_steps: int | None = None  # None: same as save_steps; 0: off

    # --- Hub ---
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_token: str | None = None

    # --- Actions ---
    dry_run: bool = False
    eval_only: bool = False
    debug: bool = False

    @property
    def trigger(self) -> str:
        """The trigger term without angle brackets: the folder name under the root."""
        return (self.placeholder_token or "").strip("<>")

    @property
    def placeholder_tokens(self) -> list[str]:
        """The tokens added to the tokenizer: `<t>`, `<t>_1`, ... as diffusers names them."""
        token = self.placeholder_token or ""
        return [token] + [f"{token}_{i}" for i in range(1, self.num_vectors)]

    def validate(self) -> None:
        """Reject settings no run can use; each message names the flag and what to do."""
        if not self.placeholder_token:
            raise UserError("--placeholder_token is required: give the trigger term, e.g. '<my-cat>'.")
        if any(c.isspace() for c in self.placeholder_token):
            raise UserError(
                f"--placeholder_token '{self.placeholder_token}' contains a space: "
                "use one word such as '<my-cat>'."
            )
        _check_choice("--learnable_property", self.learnable_property, LEARNABLE_PROPERTIES)
        _check_choice("--lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        _check_choice("--mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        _check_choice("--report_to", self.report_to, REPORT_TO)
        _check_choice("--log_format", self.log_format, LOG_FORMATS)
        for fmt in self.export_format:
            _check_choice("--export_format", fmt, EXPORT_FORMATS)
        for flag, value in (
            ("--resolution", self.resolution),
            ("--train_batch_size", self.train_batch_size),
            ("--max_train_steps", self.max_train_steps),
            ("--num_train_epochs", self.num_train_epochs),
            ("--gradient_accumulation_steps", self.gradient_accumulation_steps),
            ("--repeats", self.repeats),
            ("--num_vectors", self.num_vectors),
            ("--checkpointing_steps", self.checkpointing_steps),
            ("--save_steps", self.save_steps),
            ("--lr_num_cycles", self.lr_num_cycles),
            ("--log_every_steps", self.log_every_steps),
        ):
            if value <= 0:
                raise UserError(f"{flag} must be a positive number, got {value}.")
        if self.learning_rate <= 0:
            raise UserError(f"--learning_rate must be positive, got {self.learning_rate}.")
        if self.resolution % 8:
            raise UserError(
                f"--resolution {self.resolution} is not a multiple of 8: "
                f"use e.g. {max(8, self.resolution // 8 * 8)}."
            )
        for flag, value in (
            ("--lr_warmup_steps", self.lr_warmup_steps),
            ("--dataloader_num_workers", self.dataloader_num_workers),
            ("--num_validation_images", self.num_validation_images),
            ("--validation_steps", self.validation_steps or 0),
        ):
            if value < 0:
                raise UserError(f"{flag} must not be negative, got {value}.")
        if self.keep_tokens < 0:
            raise UserError(f"--keep_tokens must not be negative, got {self.keep_tokens}.")
        if not 0 <= self.caption_dropout_rate <= 1:
            raise UserError(f"--caption_dropout_rate must be between 0 and 1, got "
                            f"{self.caption_dropout_rate}.")  # fmt: skip
        if self.enable_bucket:
            self._validate_buckets()
        if self.alpha_mask and self.mask_extension:
            raise UserError("--alpha_mask and --mask_extension both give a loss mask: use one.")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise UserError("--checkpoints_total_limit must be at least 1 (or left out for no limit).")

    def _validate_buckets(self) -> None:
        step = self.bucket_reso_steps
        if step <= 0 or step % 8:
            raise UserError(f"--bucket_reso_steps {step} must be a positive multiple of 8 (64 is usual).")
        for flag, value in (("--min_bucket_reso", self.min_bucket_reso),
                            ("--max_bucket_reso", self.max_bucket_reso)):  # fmt: skip
            if value <= 0 or value % step:
                raise UserError(f"{flag} {value} must be a positive multiple of "
                                f"--bucket_reso_steps {step}.")  # fmt: skip
        if not self.min_bucket_reso <= self.resolution <= self.max_bucket_reso:
            raise UserError(f"--resolution {self.resolution} must lie between --min_bucket_reso "
                            f"{self.min_bucket_reso} and --max_bucket_reso {self.max_bucket_reso}.")  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            key: str(value) if isinstance(value, Path) else value
            for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, value in data.items():
            if key not in known:
                continue  # a newer version's field: ignore rather than refuse an old checkpoint
            if value is not None and "Path" in str(known[key].type):
                value = Path(value)
            values[key] = value
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> TrainingConfig:
        return cls.from_dict(json.loads(text))


def _check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{flag} '{value}' is not one of: {', '.join(choices)}.")

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

from invokeai_ti import ranges
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
OPTIMIZERS = ("adamw", "lion", "prodigy", "schedulefree_adamw")
EMBEDDING_NORMS = ("free", "keep")
# Schedule-free AdamW replaces a decaying schedule; it takes a warmup only.
SCHEDULE_FREE_SCHEDULERS = ("constant", "constant_with_warmup")


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
    # Outside the mask, pull the prediction toward the initializer's (OneTrainer's name); 0: off
    masked_prior_preservation_weight: float = 0.0
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

    # --- Optimizers and loss (issue 20) ---
    optimizer: str = "adamw"  # adamw, lion, prodigy (lr-free), schedulefree_adamw
    max_grad_norm: float = 0.0  # clip the vectors' gradient norm; 0: no clipping
    # min-SNR loss weighting (Hang et al. 2023); 0: off (2.3). 5 and the held norm below are the
    # defaults because they raised recovery and editability on the concept world (issue 20).
    min_snr_gamma: float = 5.0
    noise_offset: float = 0.0  # per-channel offset added to the noise (kohya); 0: off
    embedding_norm: str = "keep"  # keep each vector at the vocabulary's mean norm, or free (2.3)

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
    # Grids and the quality report may spend this fraction of the training time; None: no limit.
    evaluation_budget: float | None = 0.1
    validation_loss_draws: int = 4  # per image, at every validation step; 0: off
    save_best: bool = False  # learned_embeds-best.bin: the step with the lowest validation loss
    early_stop_patience: int = 0  # stop after this many validations without a new best; 0: off
    quality_report: bool = True

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
        for name, value in vars(self).items():
            # No file system takes a NUL in a name; the OS call would raise ValueError, not OSError.
            if isinstance(value, Path | str) and "\x00" in str(value):
                raise UserError(f"--{name} holds a NUL character (\\x00), which no file name can: "
                                "type the value again.")  # fmt: skip
        if not self.placeholder_token:
            raise UserError(
                "--placeholder_token is required: give the trigger term, e.g. '<my-cat>'."
            )
        if problem := ranges.folder_name_problem(self.trigger):
            raise UserError(f"--placeholder_token: {problem}.")
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
        ranges.check_settings(self)
        self._validate_learning_options()

    def _validate_learning_options(self) -> None:
        _check_choice("--optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("--embedding_norm", self.embedding_norm, EMBEDDING_NORMS)
        if (
            self.optimizer == "schedulefree_adamw"
            and self.lr_scheduler not in SCHEDULE_FREE_SCHEDULERS
        ):
            raise UserError(
                f"--optimizer schedulefree_adamw replaces the decay of --lr_scheduler "
                f"{self.lr_scheduler}: use --lr_scheduler constant or constant_with_warmup."
            )
        if self.enable_bucket:
            self._validate_buckets()
        if self.alpha_mask and self.mask_extension:
            raise UserError("--alpha_mask and --mask_extension both give a loss mask: use one.")
        if self.masked_prior_preservation_weight and not (self.alpha_mask or self.mask_extension):
            raise UserError(
                "--masked_prior_preservation_weight acts outside a loss mask: add "
                "--alpha_mask or --mask_extension, or leave it out."
            )

    def _validate_buckets(self) -> None:
        step = self.bucket_reso_steps
        if step <= 0 or step % 8:
            raise UserError(
                f"--bucket_reso_steps {step} must be a positive multiple of 8 (64 is usual)."
            )
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
        """The configuration a recorded run (a checkpoint's, an output's) trained with."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = dict(BEFORE_DEFAULT_CHANGES)
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


# Defaults that changed after their flag was added: a run recorded before the flag existed trained
# with these values, so a resume of its checkpoint reports the change instead of hiding it.
BEFORE_DEFAULT_CHANGES: dict[str, Any] = {"min_snr_gamma": 0.0, "embedding_norm": "free"}


def _check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{flag} '{value}' is not one of: {', '.join(choices)}.")

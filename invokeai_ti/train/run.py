"""The Run record: everything setup() builds and the loop, the step and the saves share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from invokeai_ti.config import TrainingConfig
from invokeai_ti.data.captions import Prompts
from invokeai_ti.data.dataset import TrainingImages
from invokeai_ti.data.latents import LatentSource
from invokeai_ti.files import checkpoint as ckpt
from invokeai_ti.models.loading import Components
from invokeai_ti.models.placeholder import Placeholder
from invokeai_ti.report.budget import EvaluationBudget


@dataclass
class Run:
    config: TrainingConfig
    components: Components
    placeholders: list[Placeholder]  # one per text encoder
    images: TrainingImages
    latent_source: LatentSource | None
    prompts: Prompts  # each sample's prompt: templates, captions, tag shuffle and dropout
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR | None  # built after a resume moved the start
    scaler: torch.amp.GradScaler
    progress: ckpt.Progress
    total_steps: int
    micro_per_epoch: int
    rank: int
    world_size: int
    learning_rate: float
    resumed_from: Path | None = None
    time_ids: torch.Tensor | None = None  # SDXL: [num_images, 6] size and crop conditioning
    initial_vectors: list[torch.Tensor] | None = None  # the initializer's, for the quality report
    saved_step: int = -1  # the step whose checkpoint is on disk already (not written twice)
    resume_changes: list[str] = field(default_factory=list)  # flags changed since the checkpoint
    seconds: dict[str, float] = field(default_factory=dict)  # wall time by phase, for the summary
    budget: EvaluationBudget | None = None  # what grids and the report may spend (train() sets it)
    initial_grid_pending: bool = False  # the step-0 grid is owed (drawn when the budget allows)
    skipped_grids: int = 0  # periodic grids the budget had no room for
    target_norms: list[float] | None = None  # --embedding_norm keep: one per text encoder
    data_fingerprint: dict[str, Any] = field(default_factory=dict)  # captions, templates, masks
    component_copy: Any = None  # files.pipeline.ComponentCopy: the full pipeline's unchanged parts

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def fingerprint(self) -> dict[str, Any]:
        return ckpt.fingerprint(self.config, self.components.token_dims, self.world_size,
                                self.data_fingerprint)  # fmt: skip

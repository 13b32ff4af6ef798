"""AdamW over the placeholder vectors only, the lr scaling rule, and the lr schedule."""

from __future__ import annotations

import torch

from invokeai_ti.config import TrainingConfig
from invokeai_ti.errors import UserError
from invokeai_ti.ranges import FLOAT32_MAX


def scaled_learning_rate(config: TrainingConfig, world_size: int) -> float:
    """2.3's rule: lr x batch size x accumulation x processes, when --scale_lr (the default)."""
    if not config.scale_lr:
        return config.learning_rate
    factor = config.train_batch_size * config.gradient_accumulation_steps * world_size
    lr = config.learning_rate * factor
    if lr > FLOAT32_MAX:  # the first update would make the vectors infinite
        raise UserError(
            f"--learning_rate {config.learning_rate:g} scaled by --scale_lr (x{factor}) is "
            f"{lr:g}, more than float32 holds ({FLOAT32_MAX:g}): lower --learning_rate or pass "
            "--no-scale_lr."
        )
    return lr


def build_optimizer(
    config: TrainingConfig, params: list[torch.nn.Parameter], lr: float
) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        params,
        lr=lr,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )


def build_lr_schedule(
    config: TrainingConfig, optimizer: torch.optim.Optimizer, total_steps: int, start_step: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """diffusers' schedules, positioned at `start_step`.

    Built from the total, not restored from a state dict, so a resume with a larger
    --max_train_steps stretches the schedule to the new total.
    """
    from diffusers.optimization import get_scheduler

    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    schedule = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=total_steps,
        num_cycles=config.lr_num_cycles,
        last_epoch=start_step - 1,
    )
    # LambdaLR only applies the lambda at construction when last_epoch == -1.
    for group, base_lr, factor in zip(
        optimizer.param_groups, schedule.base_lrs, schedule.lr_lambdas
    ):
        group["lr"] = base_lr * factor(start_step)
    return schedule

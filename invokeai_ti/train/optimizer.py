"""The optimizer over the placeholder vectors only (--optimizer), the lr scaling rule, the lr
schedule, and the update itself: gradient clipping, the step, and the norm projection."""

from __future__ import annotations

import logging

import torch

from invokeai_ti.config import TrainingConfig
from invokeai_ti.errors import UserError
from invokeai_ti.ranges import FLOAT32_MAX
from invokeai_ti.train.optimizer_algorithms import Lion, Prodigy, ScheduleFreeAdamW
from invokeai_ti.train.run import Run

log = logging.getLogger(__name__)
# The param_group entries the flags set; a resume keeps every other one (Prodigy's d, the
# schedule-free average's weights, ...) from the checkpoint.
FLAG_HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay")


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
) -> torch.optim.Optimizer:
    """--optimizer over `params`; the --adam_* flags are every optimizer's betas, eps and decay."""
    betas, decay = (config.adam_beta1, config.adam_beta2), config.adam_weight_decay
    eps = config.adam_epsilon
    if config.optimizer == "lion":
        return Lion(params, lr=lr, betas=betas, weight_decay=decay)
    if config.optimizer == "prodigy":
        if not 0.1 <= lr <= 10:
            log.warning("--optimizer prodigy estimates the step size itself and --learning_rate "
                        "multiplies it: 1 is usual (with --no-scale_lr); this run uses %g.",
                        lr)  # fmt: skip
        return Prodigy(params, lr=lr, betas=betas, eps=eps, weight_decay=decay)
    if config.optimizer == "schedulefree_adamw":
        return ScheduleFreeAdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=decay)
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=decay, eps=eps)


def to_train_point(optimizer: torch.optim.Optimizer) -> None:
    """Before the forward pass: schedule-free AdamW takes its gradient away from the vectors it
    exports (see ScheduleFreeAdamW); every other optimizer at the vectors themselves."""
    if isinstance(optimizer, ScheduleFreeAdamW):
        optimizer.to_train_point()


def to_eval_point(optimizer: torch.optim.Optimizer) -> None:
    """After the step, taken or skipped: the vectors are again the ones to evaluate and export."""
    if isinstance(optimizer, ScheduleFreeAdamW):
        optimizer.to_eval_point()


def update_vectors(run: Run) -> None:
    """Clip the gradient (--max_grad_norm), step, and hold the norms (--embedding_norm keep)."""
    cfg, params = run.config, [ph.vectors for ph in run.placeholders]
    if cfg.max_grad_norm > 0:
        run.scaler.unscale_(run.optimizer)  # clip the true gradient, not the fp16-scaled one
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        if norm > cfg.max_grad_norm:
            log.debug("step %d: gradient norm %.4g clipped to %g.", run.progress.step,
                      float(norm), cfg.max_grad_norm)  # fmt: skip
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if run.target_norms is not None:
        with torch.no_grad():
            for param, target in zip(params, run.target_norms):
                for tensor in [param, *_averaged_copies(run.optimizer, param)]:
                    tensor.mul_(target / tensor.norm(dim=-1, keepdim=True))


def _averaged_copies(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> list[torch.Tensor]:
    """Schedule-free's z and x are what its next steps start from, so they are held too."""
    state = optimizer.state.get(param, {})
    return [state["z"], state["x"]] if isinstance(optimizer, ScheduleFreeAdamW) and state else []


def vocabulary_norm(token_table: torch.Tensor) -> float:
    """--embedding_norm keep's target: the mean norm of the frozen token table's rows."""
    return token_table.detach().float().norm(dim=-1).mean().item()


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

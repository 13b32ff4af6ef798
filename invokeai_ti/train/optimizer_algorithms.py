"""Lion, Prodigy and schedule-free AdamW, written out for the few vectors we train.

Each keeps all of its state in tensors (optimizer.state) and plain numbers (param_groups), so a
checkpoint stores it as safetensors + JSON and a resume continues bit-exactly. Written here rather
than imported so that no run depends on an extra package; tests/test_learning_options.py checks
Prodigy and schedule-free AdamW against their reference packages when those are installed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the sign of an
    interpolated momentum, so every coordinate moves by exactly lr; decoupled weight decay."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, betas: tuple[float, float],
                 weight_decay: float) -> None:  # fmt: skip
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 (torch's signature)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                exp_avg = state["exp_avg"]
                update = exp_avg.mul(beta1).add_(p.grad, alpha=1 - beta1).sign_()
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
                exp_avg.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        return None


class Prodigy(torch.optim.Optimizer):
    """Prodigy (Mishchenko & Defazio 2023): Adam whose step size d is estimated from how far the
    vectors moved against the gradients; lr multiplies d and is usually 1. prodigyopt's defaults:
    no bias correction, decoupled weight decay, beta3 = sqrt(beta2), d0 = 1e-6, d unbounded."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, betas: tuple[float, float],
                 eps: float, weight_decay: float, d0: float = 1e-6) -> None:  # fmt: skip
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, d=d0, d0=d0,
                        d_max=d0, d_numerator=0.0, k=0)  # fmt: skip
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201
        first = self.param_groups[0]
        beta1, beta2 = first["betas"]
        beta3 = math.sqrt(beta2)
        d, d_max, d0 = first["d"], first["d_max"], first["d0"]
        lr = max(group["lr"] for group in self.param_groups)
        dlr = d * lr
        numerator, denominator = first["d_numerator"] * beta3, 0.0
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        for p in params:
            state = self.state[p]
            if not state:
                zeros = [torch.zeros_like(p) for _ in range(3)]
                state.update(s=zeros[0], p0=p.detach().clone(), exp_avg=zeros[1],
                             exp_avg_sq=zeros[2])  # fmt: skip
            if lr > 0:
                g = p.grad
                moved = (state["p0"] - p).flatten()  # how far from the start, against the gradient
                numerator += (d / d0) * dlr * torch.dot(g.flatten(), moved).item()
                state["exp_avg"].mul_(beta1).add_(g, alpha=d * (1 - beta1))
                state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=d * d * (1 - beta2))
                state["s"].mul_(beta3).add_(g, alpha=(d / d0) * dlr)
                denominator += state["s"].abs().sum().item()
        if denominator == 0:
            return None  # no gradient yet: nothing to estimate d from
        if lr > 0:
            # prodigyopt's growth rate is unbounded by default, so d is the largest estimate yet.
            d_max = max(d_max, numerator / denominator)
            d = d_max
        for group in self.param_groups:
            group.update(d=d, d_max=d_max, d_numerator=numerator, k=group["k"] + 1)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                denom = state["exp_avg_sq"].sqrt().add_(d * group["eps"])
                if group["weight_decay"]:
                    p.add_(p, alpha=-group["weight_decay"] * dlr)
                p.addcdiv_(state["exp_avg"], denom, value=-dlr)
        return None


class ScheduleFreeAdamW(torch.optim.Optimizer):
    """Schedule-free AdamW (Defazio et al. 2024): the gradient is taken at y, a mix of the fast
    iterate z and the running average x, and x is what the run evaluates and exports.

    Between steps the parameter holds x, so validation, saving and checkpoints need no mode switch;
    `to_train_point()` puts y = (1 - beta1) z + beta1 x in before the forward pass and
    `to_eval_point()` puts x back after it. Both are copies computed from the state, never an
    in-place round trip, so saving or validating at any step leaves the run bit-identical.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float, betas: tuple[float, float],
                 eps: float, weight_decay: float) -> None:  # fmt: skip
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, k=0,
                        weight_sum=0.0, lr_max=0.0)  # fmt: skip
        super().__init__(params, defaults)

    @torch.no_grad()
    def to_train_point(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if state:
                    p.copy_(torch.lerp(state["x"], state["z"], 1 - group["betas"][0]))

    @torch.no_grad()
    def to_eval_point(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if self.state[p]:
                    p.copy_(self.state[p]["x"])

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            k, lr = group["k"], group["lr"]
            # The reference's weighting: each iterate counts lr_max**2 (its weight_lr_power 2,
            # r 0), so x averages the iterates after the warmup most.
            lr_max = max(lr, group["lr_max"])
            weight = lr_max**2
            weight_sum = group["weight_sum"] + weight
            c = weight / weight_sum if weight_sum else 0.0
            group.update(k=k + 1, lr_max=lr_max, weight_sum=weight_sum)
            bias_correction2 = 1 - beta2 ** (k + 1)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(z=p.detach().clone(), x=p.detach().clone(),
                                 exp_avg_sq=torch.zeros_like(p))  # fmt: skip
                g = p.grad
                state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = state["exp_avg_sq"].div(bias_correction2).sqrt_().add_(group["eps"])
                update = g.div(denom).add_(p, alpha=group["weight_decay"])  # decay taken at y
                state["z"].sub_(update, alpha=lr)
                state["x"].lerp_(state["z"], c)
        return None

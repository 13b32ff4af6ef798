"""The evaluation budget: validation grids and the quality report may spend at most a fraction of
the run's training time (--evaluation_budget), so that a short run is not mostly evaluation.

On SD1.5-sized weights on a CPU one grid costs as much as a hundred training steps, so a rule that
ignored the cost would spend minutes of grids on a run that trained for seconds. Costs are counted
in UNet forward passes (a grid: images x inference steps x 2 for guidance; the report: draws x 2
for the initializer and the learned vectors), priced from the training steps until a job of the
same kind has run, then from that job's own time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# A training step runs the forward pass and a backward pass that costs about twice as much.
FORWARDS_PER_TRAINED_SAMPLE = 3


@dataclass
class EvaluationBudget:
    fraction: float | None  # None: no limit
    planned_steps: int  # the steps this run trains (after a resume: those left)
    samples_per_step: int  # batch x accumulation
    train_seconds: float = 0.0
    trained_steps: int = 0
    spent_seconds: float = 0.0
    seconds_per_forward: dict[str, float] = field(default_factory=dict)  # measured, per job kind

    def add_step(self, seconds: float) -> None:
        self.train_seconds += seconds
        self.trained_steps += 1

    def forward_seconds(self, kind: str) -> float | None:
        """Seconds per UNet forward pass for a job of `kind`: its own last timing, else one third
        of a trained sample; None before anything was timed."""
        if kind in self.seconds_per_forward:
            return self.seconds_per_forward[kind]
        if not self.trained_steps:
            return None
        step = self.train_seconds / self.trained_steps
        return step / (self.samples_per_step * FORWARDS_PER_TRAINED_SAMPLE)

    def cost(self, kind: str, forwards: int) -> float | None:
        per_forward = self.forward_seconds(kind)
        return None if per_forward is None else per_forward * forwards

    def allowance(self) -> float:
        """What the whole run may spend: the fraction of its expected training time."""
        if self.fraction is None:
            return float("inf")
        if not self.trained_steps:
            return 0.0
        expected = (
            self.train_seconds / self.trained_steps * max(self.planned_steps, self.trained_steps)
        )
        return self.fraction * expected

    def fits(self, kind: str, forwards: int, reserve: float = 0.0) -> bool:
        """Whether a job of `forwards` passes fits, leaving `reserve` seconds for later jobs."""
        if self.fraction is None:
            return True
        cost = self.cost(kind, forwards)
        return cost is not None and self.spent_seconds + cost + reserve <= self.allowance()

    @contextmanager
    def job(self, kind: str, forwards: int) -> Iterator[None]:
        """Time a job; its seconds count against the budget and price the next job of its kind."""
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.spent_seconds += elapsed
            if forwards:
                self.seconds_per_forward[kind] = elapsed / forwards

    def describe(self) -> str:
        """'1.2 s, 4 % of the 30 s of training (budget 10 %)' for the run's last lines."""
        share = 100 * self.spent_seconds / self.train_seconds if self.train_seconds else 0.0
        limit = "no limit" if self.fraction is None else f"budget {100 * self.fraction:g} %"
        return (f"{self.spent_seconds:.1f} s, {share:.0f} % of the {self.train_seconds:.1f} s of "
                f"training ({limit})")  # fmt: skip

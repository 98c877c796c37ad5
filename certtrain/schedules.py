"""eps / kappa / beta ramps and learning-rate steps, as pure functions of the training step.

Being pure functions of (step, epoch), the schedule needs no state of its own in a checkpoint:
the step counter restores it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

SMOOTHED_MID = 0.25  # the polynomial part covers the first quarter of the ramp
SMOOTHED_EXPONENT = 4.0


def ramp_fraction(progress: float, shape: str = "linear") -> float:
    """Map ramp progress p in [0, 1] to the fraction of eps_train reached.

    "smoothed" (CROWN-IBP's CIFAR ramp): a * p**k for p < 1/4, then the straight line that meets it
    with the same value and slope and reaches 1 at p = 1.
    """
    p = min(max(progress, 0.0), 1.0)
    if shape == "linear":
        return p
    if shape != "smoothed":
        raise ValueError(f"unknown ramp shape {shape!r}; choose linear or smoothed")
    m, k = SMOOTHED_MID, SMOOTHED_EXPONENT
    scale = 1.0 / (m ** (k - 1) * (m + k * (1 - m)))  # value and slope match at p = m
    if p < m:
        return scale * p**k
    slope = scale * k * m ** (k - 1)
    return 1.0 - slope * (1.0 - p)


@dataclass(frozen=True)
class RampSchedule:
    """eps 0 -> eps_train, kappa 1 -> kappa_final, beta beta_start -> beta_final.

    Warm-up epochs train plainly (eps 0, kappa 1); the ramp then advances once per step over
    `ramp_epochs`; afterwards everything stays at its final value.
    """

    eps_train: float
    steps_per_epoch: int
    warmup_epochs: float = 1.0
    ramp_epochs: float = 10.0
    shape: str = "linear"
    kappa_final: float = 0.5
    beta_start: float = 1.0
    beta_final: float = 0.0

    def progress(self, step: int) -> float:
        """Fraction of the ramp done before `step` (0 during warm-up, 1 once it is over)."""
        start = self.warmup_epochs * self.steps_per_epoch
        length = self.ramp_epochs * self.steps_per_epoch
        if step < start:
            return 0.0
        if length <= 0:
            return 1.0
        return min((step - start + 1) / length, 1.0)

    def in_warmup(self, step: int) -> bool:
        return step < self.warmup_epochs * self.steps_per_epoch

    def eps(self, step: int) -> float:
        return self.eps_train * ramp_fraction(self.progress(step), self.shape)

    def kappa(self, step: int) -> float:
        if self.in_warmup(step):
            return 1.0
        return 1.0 + (self.kappa_final - 1.0) * self.progress(step)

    def beta(self, step: int) -> float:
        return self.beta_start + (self.beta_final - self.beta_start) * self.progress(step)


def step_lr(base_lr: float, epoch: int, milestones, gamma: float) -> float:
    """Learning rate of 0-based `epoch`: base_lr * gamma ** (number of milestones <= epoch)."""
    return base_lr * gamma ** sum(1 for milestone in milestones if epoch >= milestone)

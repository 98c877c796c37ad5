"""Branch and bound as a certifier of the training evaluation (`eval.final_bounds=[...,bab]`).

Each correctly classified sample gets `seconds` of branch and bound (CROWN, alpha-CROWN, then
splits); it counts as verified only if every margin is proved, so a timeout is "not verified".
The cost is up to `seconds` per sample and radius: meant for the final evaluation of a few
thousand samples, not for the periodic one.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from certtrain.bab import BabOptions, robustness_bab
from certtrain.losses import input_box
from certtrain.precision import certifier

BAB_SECONDS = 10.0  # per sample and radius, the default of eval.bab_seconds


def bab_certifier(seconds: float = BAB_SECONDS, options: BabOptions | None = None):
    """A certifier (model, x, y, eps, num_classes) -> bool per sample, by branch and bound."""
    if not seconds > 0:
        raise ValueError(f"branch and bound needs a positive time per sample, got {seconds} s")
    options = options or BabOptions()

    @certifier  # strict fp32 for the model's own passes, as every certifier
    def certify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, num_classes: int) -> torch.Tensor:
        x_lower, x_upper = input_box(x, eps)
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        verified = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for i in correct.nonzero().flatten().tolist():
            label = int(y[i])

            def check(point: torch.Tensor, label=label):
                with torch.no_grad():
                    wrong = int(model(point.to(x.dtype)).argmax(1)) != label
                return point if wrong else None

            classes = [j for j in range(num_classes) if j != label]
            deadline = time.perf_counter() + seconds
            outcome = robustness_bab(
                model, x_lower[i : i + 1], x_upper[i : i + 1], label, classes, options, deadline, check
            )
            verified[i] = outcome.status == "robust"
        return verified

    return certify

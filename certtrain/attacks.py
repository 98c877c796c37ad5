"""Projected gradient descent in an L-inf ball intersected with [0, 1]: a lower bound on robust error."""

from __future__ import annotations

import torch
from torch import nn


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j != y} f_j - f_y per sample: positive exactly when the sample is misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.clone()
    others.scatter_(1, y[:, None], float("-inf"))
    return others.max(dim=1).values - true


def pgd_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 50,
    restarts: int = 1,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Search for x' with ||x' - x||_inf <= eps, x' in [0, 1], that the model misclassifies.

    Maximises the margin loss with signed-gradient steps from a random start in the ball
    (the clean point itself is the first start). Returns (x_adv, found) where `found` marks the
    samples whose x_adv is misclassified; for the others x_adv is the best point seen.
    The model's train/eval mode is left as it was; gradients of parameters are not touched.
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    best_x = x.detach().clone()
    with torch.no_grad():
        best_loss = margin_loss(model(x), y)
    for restart in range(restarts):
        if restart == 0:
            x_adv = x.detach().clone()
        else:
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_adv = lower + noise * (upper - lower)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = margin_loss(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
            with torch.no_grad():
                improved = loss.detach() > best_loss
                best_loss = torch.where(improved, loss.detach(), best_loss)
                best_x = _where_sample(improved, x_adv.detach(), best_x)
                x_adv = torch.minimum(torch.maximum(x_adv + step_size * grad.sign(), lower), upper)
        with torch.no_grad():
            loss = margin_loss(model(x_adv), y)
            improved = loss > best_loss
            best_loss = torch.where(improved, loss, best_loss)
            best_x = _where_sample(improved, x_adv, best_x)
    return best_x, best_loss > 0


def _where_sample(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Per sample, `new` where mask else `old`: a select, not boolean indexing, so the attack
    never waits for the device to count the mask."""
    return torch.where(mask.view(-1, *([1] * (new.dim() - 1))), new, old)


# The training attack's step, as a multiple of radius / steps (Madry et al.'s rule, as in
# pgd_attack): one step is FGSM's full-radius step; more steps can cross the box and come back.
TRAINING_STEP_SCALE = 2.5


def training_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    radius: torch.Tensor | float,
    steps: int,
) -> torch.Tensor:
    """PGD on the cross-entropy inside the box [lower, upper] (radius per sample or one), for the
    adversarial terms of the training losses (SABR, MTL-IBP and its kin). Starts at the clean
    point, so it draws no random numbers (a resumed or data-parallel run follows the same path).

    The model runs in evaluation mode during the search (BatchNorm on its running statistics,
    no dropout), and every layer's mode is restored after; parameter gradients are not touched.
    Returns the attack point, detached.
    """
    if steps < 1:
        raise ValueError(f"the training attack needs at least one step, got {steps}")
    step = TRAINING_STEP_SCALE * radius / steps
    modes = [(module, module.training) for module in model.modules()]  # each layer's own mode
    model.eval()
    try:
        x_adv = x.detach().clone()
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                loss = nn.functional.cross_entropy(model(x_adv), y, reduction="sum")
                (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = torch.minimum(torch.maximum(x_adv.detach() + step * grad.sign(), lower), upper)
    finally:
        for module, training in modes:
            module.training = training
    return x_adv.detach()

"""AutoAttack's white-box attacks for L-inf: APGD-CE and targeted APGD-DLR (Croce and Hein 2020,
"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks").

A lower bound on robust error, like certtrain.attacks.pgd_attack, but parameter-free: the step
size starts at 2 eps and is halved at checkpoints where progress stalls, so it does not depend on
a step rule tuned per model.
"""

from __future__ import annotations

import torch
from torch import nn

from certtrain.attacks import _where_sample

MOMENTUM = 0.75  # alpha of the paper
RHO = 0.75  # condition 1: halve if fewer than rho of the steps since the last checkpoint increased the loss


def checkpoints(steps: int) -> list[int]:
    """w_j = ceil(p_j * steps) for p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06),
    up to `steps`. The p_j are whole hundredths, kept as integers: summed in floats p_3 is
    0.5700000000000001, and ceil(100 p_3) would be 58, not 57."""
    hundredths = [0, 22]
    while hundredths[-1] < 100:
        hundredths.append(hundredths[-1] + max(hundredths[-1] - hundredths[-2] - 3, 6))
    points = [-(-p * steps // 100) for p in hundredths]  # ceil in integers
    return sorted({w for w in points if w <= steps})


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) per sample, pi the logits sorted descending: the
    margin to the target, scaled so that it does not change when the logits are shifted or scaled."""
    ordered = logits.sort(dim=1, descending=True).values
    scale = ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2 + 1e-12  # 1e-12: tied logits
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / scale


def _ce_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, y, reduction="none")


def _apgd_run(model, x, y, lower, upper, eps, steps, loss_fn, target, generator):
    """One APGD run (Algorithm 1 of the paper) from a uniform random start in the box.

    Returns (adversarial, found, best_x, best_loss): the first misclassified point per sample
    (`found` marks those), and the point of highest loss.
    """
    shape = (-1, *([1] * (x.dim() - 1)))

    def project(point):
        return torch.minimum(torch.maximum(point, lower), upper)

    def evaluate(point):
        point = point.detach().requires_grad_(True)
        logits = model(point)
        loss = loss_fn(logits, y, target)
        (grad,) = torch.autograd.grad(loss.sum(), point)
        return loss.detach(), grad.detach(), logits.detach().argmax(1) != y

    def note_hits(point, wrong):
        nonlocal adversarial, found
        new = wrong & ~found  # keep the first misclassified point of each sample
        adversarial = _where_sample(new, point, adversarial)
        found = found | wrong

    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    current = lower + noise * (upper - lower)
    adversarial, found = current.clone(), torch.zeros_like(y, dtype=torch.bool)
    loss, grad, wrong = evaluate(current)
    note_hits(current, wrong)
    best_x, best_loss, best_grad = current, loss, grad
    eta = torch.full((len(x),), 2.0 * eps, device=x.device, dtype=x.dtype)  # eta^(0) = 2 eps
    previous = current  # x^(k-1): the first step has no momentum term
    marks = checkpoints(steps)
    last_mark, eta_at_mark, best_at_mark = 0, eta.clone(), best_loss.clone()
    increases = torch.zeros_like(loss)
    for k in range(steps):
        z = project(current + eta.view(shape) * grad.sign())
        step = z if k == 0 else project(current + MOMENTUM * (z - current) + (1 - MOMENTUM) * (current - previous))
        new_loss, new_grad, wrong = evaluate(step)
        note_hits(step, wrong)
        rose = (new_loss > loss).to(loss.dtype)  # f(x^(k+1)) > f(x^(k)): counted for condition 1
        improved = new_loss > best_loss
        best_x = _where_sample(improved, step, best_x)
        best_grad = _where_sample(improved, new_grad, best_grad)
        best_loss = torch.where(improved, new_loss, best_loss)
        previous, current, loss, grad = current, step, new_loss, new_grad
        if k > 0 and k in marks:
            # Condition 1: too few increasing steps since the last checkpoint; condition 2: the step
            # was not halved at the last checkpoint and the best loss has not moved since.
            stalled = increases < RHO * (k - last_mark)
            stuck = (eta == eta_at_mark) & (best_loss == best_at_mark)
            halve = stalled | stuck
            eta_at_mark, best_at_mark, last_mark = eta.clone(), best_loss.clone(), k
            eta = torch.where(halve, eta / 2, eta)
            # Restart from the best point; no momentum carried over from the abandoned path.
            current = _where_sample(halve, best_x, current)
            previous = _where_sample(halve, best_x, previous)
            grad = _where_sample(halve, best_grad, grad)
            loss = torch.where(halve, best_loss, loss)
            increases = torch.zeros_like(increases)
        increases = increases + rose  # after the checkpoint: comparison k opens the next window
    return adversarial, found, best_x, best_loss


def apgd_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 100,
    restarts: int = 1,
    targets: int = 9,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Search for x' with ||x' - x||_inf <= eps, x' in [0, 1], that the model misclassifies:
    first the ball's point nearest the grey image (one forward pass; not part of AutoAttack), then
    APGD-CE (`restarts` runs of `steps` iterations), then on the samples still unbroken APGD-DLR
    targeted at each of the `targets` highest other classes of the clean logits (at most K - 1;
    0 runs APGD-CE alone), `restarts` runs per target.

    Returns (x_adv, found) as pgd_attack does: `found` marks the samples whose x_adv is
    misclassified (the first such point found; a misclassified clean sample is its own); for the
    others x_adv is the APGD-CE point of highest cross-entropy. Each iteration is one forward and
    backward pass. The model runs in eval mode (BatchNorm on running statistics) and every layer's
    mode is restored after; parameter gradients are not touched.
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if steps < 1 or restarts < 1 or targets < 0:
        raise ValueError(f"APGD needs steps >= 1, restarts >= 1, targets >= 0; got {steps}, {restarts}, {targets}")
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            return _apgd(model, x.detach(), y, eps, steps, restarts, targets, generator)
    finally:
        for module, training in modes:
            module.training = training


def _apgd(model, x, y, eps, steps, restarts, targets, generator):
    with torch.no_grad():
        logits = model(x)
    x_adv = x.clone()
    found = logits.argmax(1) != y
    best_ce = torch.full_like(y, float("-inf"), dtype=x.dtype)
    if eps == 0:
        return x_adv, found
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    # The ball's point nearest the grey image (the grey image itself once eps >= 0.5): one forward
    # pass. Every classifier errs there on all labels but one, and neither random starts nor
    # gradient steps need reach that corner of the ball (a sharp dip in the loss).
    greyward = torch.minimum(torch.maximum(torch.full_like(x, 0.5), lower), upper)
    with torch.no_grad():
        grey_hit = (model(greyward).argmax(1) != y) & ~found
    x_adv = _where_sample(grey_hit, greyward, x_adv)
    found = found | grey_hit
    # The DLR normaliser needs the 4th largest logit; with fewer classes only APGD-CE runs.
    targets = min(targets, logits.shape[1] - 1) if logits.shape[1] >= 4 else 0
    # Target classes: the 2nd, 3rd, ... largest clean logits (the 1st is y for the samples attacked).
    ranked = logits.argsort(dim=1, descending=True)
    passes = [(_ce_loss, None)] * restarts
    passes += [(dlr_targeted_loss, ranked[:, 1 + t]) for t in range(targets) for _ in range(restarts)]
    for loss_fn, target in passes:
        todo = (~found).nonzero().squeeze(1)  # each pass attacks only the samples still unbroken
        if len(todo) == 0:
            break
        adversarial, hit, best_x, best_loss = _apgd_run(
            model,
            x[todo],
            y[todo],
            lower[todo],
            upper[todo],
            eps,
            steps,
            loss_fn,
            None if target is None else target[todo],
            generator,
        )
        if loss_fn is _ce_loss:  # the fallback point of unbroken samples: highest cross-entropy
            better = best_loss > best_ce[todo]
            best_ce[todo] = torch.where(better, best_loss, best_ce[todo])
            x_adv[todo] = _where_sample(better, best_x, x_adv[todo])
        x_adv[todo] = _where_sample(hit, adversarial, x_adv[todo])
        found[todo] = hit
    return x_adv, found

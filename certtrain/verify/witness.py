"""Turn solver points into inputs the float64 network provably misclassifies, or give up.

A MILP optimum sits on the decision boundary up to solver tolerances, so the raw point may be a
tie or slightly on the wrong side in exact arithmetic. Two cheap repairs are tried before the
sample is declared unresolved: stretching the perturbation away from the clean input by a tiny
factor, and steps of growing size (1e-7 .. 1e-3) along the gradient of the wrong class's lead,
projected so that the point stays in the set.
"""

from __future__ import annotations

import numpy as np
import torch

from certtrain.verify.perturbations import InputDomain
from certtrain.verify.result import FloatNetwork, representable

STRETCH = (0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3)
NUDGE = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3)


def is_adversarial(net: FloatNetwork, domain: InputDomain, x_prime: np.ndarray, label: int, target=None) -> bool:
    """In the set, and misclassified (as `target` when given) by the float64 network."""
    if not domain.contains(x_prime):
        return False
    logits = net.logits(x_prime, domain.shape)
    if target is None:
        return bool(np.max(np.delete(logits, label)) > logits[label])
    return bool(logits[target] > np.max(np.delete(logits, target)))


def _ascent_direction(net: FloatNetwork, domain: InputDomain, z: np.ndarray, label: int, target) -> np.ndarray:
    """A direction in the variables that raises the wrong class's lead over the label.

    Box sets: the gradient's sign (an L-inf step). Blur: the gradient with its per-channel mean
    removed, so the kernel keeps summing to 1.
    """
    x = torch.from_numpy(domain.input_of(z).reshape(1, *domain.shape)).requires_grad_(True)
    logits = net.model(x)[0]
    lead = target if target is not None else label
    others = torch.cat([logits[:lead], logits[lead + 1 :]])
    gain = others.max() - logits[label] if target is None else logits[target] - others.max()
    (grad,) = torch.autograd.grad(gain, x)
    grad_z = domain.matrix.T @ grad.reshape(-1).numpy()
    if domain.is_box:
        return np.sign(grad_z)
    grads, kernels = grad_z.reshape(domain.shape[0], -1), z.reshape(domain.shape[0], -1)
    direction = np.zeros_like(grads)
    for c, (g, k) in enumerate(zip(grads, kernels)):
        free = np.ones(len(g), dtype=bool)
        for _ in range(len(g)):  # drop entries at 0 that would turn negative, re-centre the rest
            d = np.where(free, g - g[free].mean(), 0.0)
            blocked = free & (k <= 0) & (d < 0)
            if not blocked.any():
                break
            free &= ~blocked
        direction[c] = d
    return (direction / max(np.abs(direction).max(), 1e-300)).reshape(-1)


def witness_from_vars(net, domain: InputDomain, z_in: np.ndarray, label: int, like, target=None):
    """A confirmed witness (flat float64, representable in like's dtype) from input variables, or None."""
    for stretch in STRETCH:
        z = domain.clean_vars + (1.0 + stretch) * (z_in - domain.clean_vars)
        x_prime = representable(domain, domain.input_of(z), like)
        if is_adversarial(net, domain, x_prime, label, target):
            return x_prime
    start = domain.project_vars(z_in)
    direction = _ascent_direction(net, domain, start, label, target)
    for size in NUDGE:
        x_prime = representable(domain, domain.input_of(start + size * direction), like)
        if is_adversarial(net, domain, x_prime, label, target):
            return x_prime
    return None


def distortion(domain: InputDomain, x_prime: np.ndarray, norm: str) -> float:
    delta = np.asarray(x_prime, dtype=np.float64) - domain.x
    return float(np.abs(delta).max(initial=0.0) if norm == "linf" else np.abs(delta).sum())

"""Turn solver points into inputs the float64 network provably misclassifies, or give up.

A MILP optimum sits on the decision boundary up to solver tolerances, so the raw point may be a
tie or slightly on the wrong side in exact arithmetic. Two cheap repairs are tried before the
sample is declared unresolved: stretching the perturbation away from the clean input by a tiny
factor, and a few signed-gradient steps of growing size inside the set.
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


def _gradient_sign(net: FloatNetwork, domain: InputDomain, x_prime: np.ndarray, label: int, target) -> np.ndarray:
    x = torch.from_numpy(x_prime.reshape(1, *domain.shape)).requires_grad_(True)
    logits = net.model(x)[0]
    if target is None:
        others = torch.cat([logits[:label], logits[label + 1 :]])
        gain = others.max() - logits[label]
    else:
        others = torch.cat([logits[:target], logits[target + 1 :]])
        gain = logits[target] - others.max()
    (grad,) = torch.autograd.grad(gain, x)
    return grad.reshape(-1).sign().numpy()


def witness_from_vars(net, domain: InputDomain, z_in: np.ndarray, label: int, like, target=None):
    """A confirmed witness (flat float64, representable in like's dtype) from input variables, or None."""
    for stretch in STRETCH:
        z = domain.clean_vars + (1.0 + stretch) * (z_in - domain.clean_vars)
        x_prime = representable(domain, domain.input_of(z), like)
        if is_adversarial(net, domain, x_prime, label, target):
            return x_prime
    if not domain.is_box:
        return None
    start = representable(domain, domain.input_of(z_in), like)
    direction = _gradient_sign(net, domain, start, label, target)
    for size in NUDGE:
        x_prime = representable(domain, np.clip(start + size * direction, domain.box_lower, domain.box_upper), like)
        if is_adversarial(net, domain, x_prime, label, target):
            return x_prime
    return None


def distortion(domain: InputDomain, x_prime: np.ndarray, norm: str) -> float:
    delta = np.asarray(x_prime, dtype=np.float64) - domain.x
    return float(np.abs(delta).max(initial=0.0) if norm == "linf" else np.abs(delta).sum())

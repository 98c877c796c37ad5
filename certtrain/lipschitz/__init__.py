"""Lipschitz and monotonic networks (Kitouni, Nolte & Williams): normed layers, Lipschitz
bounds, certificates, margin-aware losses, monotonic wrappers and the zoo architectures.

    layers     LipschitzLinear (eq. 2.7 / 2.8 normalisation), projection, freezing
    bound      lipschitz_bound, margin_sensitivities, partial_derivative_bounds
    certify    certified_radius, lipschitz_certified, certify_any
    losses     temperature CE, hinges, the dynamic hinge, the robust loss of method=lipschitz
    monotonic  MonotonicWrapper
    zoo        lipschitz_stack, lipschitz_mlp, lipschitz_mlp_large
    method     what method=lipschitz registers with training and evaluation
"""

from certtrain.layers import GroupSort
from certtrain.lipschitz.bound import (
    lipschitz_bound,
    lipschitz_bound_tensor,
    margin_sensitivities,
    partial_derivative_bounds,
)
from certtrain.lipschitz.certify import certified_radius, certify_any, lipschitz_certified
from certtrain.lipschitz.layers import (
    LipschitzLinear,
    attach_projection,
    freeze_lipschitz_,
    normalize_weight,
    operator_norm,
    project_lipschitz_,
)
from certtrain.lipschitz.monotonic import MonotonicWrapper

__all__ = [
    "GroupSort",
    "LipschitzLinear",
    "MonotonicWrapper",
    "attach_projection",
    "certified_radius",
    "certify_any",
    "freeze_lipschitz_",
    "lipschitz_bound",
    "lipschitz_bound_tensor",
    "lipschitz_certified",
    "margin_sensitivities",
    "normalize_weight",
    "operator_norm",
    "partial_derivative_bounds",
    "project_lipschitz_",
]

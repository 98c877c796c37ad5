"""Certified Lipschitz constants: of a network (product of per-layer operator norms), of its
logit margins (one sensitivity function for training, certification and the certified radius),
and of each input's partial derivative (what monotonicity needs)."""

from __future__ import annotations

import math

import torch
from torch import nn

from certtrain.layer_rules import rule, rule_of
from certtrain.layers import GroupSort, Normalize
from certtrain.lipschitz.layers import KINDS, _check_kind, operator_norm

# Layers that are 1-Lipschitz in every l_p norm (permutations, ReLU, reshapes).
_ONE_LIPSCHITZ = (GroupSort, nn.ReLU, nn.Identity, nn.Flatten, nn.Dropout, nn.Tanh)


@rule("lipschitz", nn.Linear)
def _linear_norms(module: nn.Linear) -> list[dict[str, torch.Tensor]]:
    weight = module.weight.detach()
    return [{kind: operator_norm(weight, kind) for kind in KINDS}]


@rule("lipschitz", Normalize)
def _normalize_norms(module: Normalize) -> list[dict[str, torch.Tensor]]:
    gain = (1.0 / module.std).max()  # a diagonal scaling: every norm is its largest entry
    return [dict.fromkeys(KINDS, gain)]


@rule("lipschitz", *_ONE_LIPSCHITZ)
def _one_lipschitz(module: nn.Module) -> list[dict[str, torch.Tensor]]:
    return []


def _layer_norms(module: nn.Module) -> list[dict[str, torch.Tensor]]:
    """Per-layer operator norms {kind: 0-dim tensor on the weights' device} in forward order
    (nested Sequentials flattened), by the rules certtrain.layer_rules holds. Tensors, not
    floats: a training step reads nothing back to the host (one synchronisation per layer and
    step on a GPU)."""
    if isinstance(module, nn.Sequential):
        return [n for child in module for n in _layer_norms(child)]
    if hasattr(module, "lipschitz_bound"):
        raise ValueError(f"a {type(module).__name__} can only be the outermost module for lipschitz_bound")
    norms = rule_of("lipschitz", module)
    if norms is None:
        raise ValueError(
            f"lipschitz_bound: no Lipschitz rule for layer {type(module).__name__}; use Linear/LipschitzLinear, "
            "GroupSort, ReLU, Flatten, Identity, Dropout or Normalize"
        )
    return norms(module)


def _device(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


def _chain_bound(norms: list[dict[str, torch.Tensor]], kind: str, device: torch.device) -> torch.Tensor:
    one = torch.ones((), device=device)
    if kind in ("one", "inf"):
        return math.prod((n[kind] for n in norms), start=one)
    # l1 -> linf: layers before the switch in l1, one layer l1 -> linf, the rest in linf; any
    # split point is sound (||x||_inf <= ||x||_1), so take the smallest product.
    best = math.prod((n["one"] for n in norms), start=one)  # switch after the last layer
    for k in range(len(norms)):
        before = math.prod((n["one"] for n in norms[:k]), start=one)
        after = math.prod((n["inf"] for n in norms[k + 1 :]), start=one)
        best = torch.minimum(best, before * norms[k]["one-inf"] * after)
    return best


def lipschitz_bound_tensor(model: nn.Module, kind: str = "inf") -> torch.Tensor:
    """lipschitz_bound as a 0-dim tensor on the model's device, detached (the training path:
    nothing is read back to the host)."""
    _check_kind(kind)
    if hasattr(model, "lipschitz_bound_tensor"):
        return model.lipschitz_bound_tensor(kind)
    if hasattr(model, "lipschitz_bound"):
        raise ValueError(
            f"a {type(model).__name__} with its own lipschitz_bound needs a lipschitz_bound_tensor method too"
        )
    with torch.no_grad():
        return _chain_bound(_layer_norms(model), kind, _device(model))


def lipschitz_bound(model: nn.Module, kind: str = "inf") -> float:
    """A certified Lipschitz constant of `model` (product of per-layer operator norms).

    kind: "one" (l1 -> l1), "inf" (linf -> linf) or "one-inf" (l1 -> linf). A module with its
    own `lipschitz_bound_tensor(kind)` method (MonotonicWrapper) answers for itself.
    """
    return float(lipschitz_bound_tensor(model, kind))


def _split_last_linear(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    if isinstance(model, nn.Sequential) and len(model) > 1 and isinstance(model[-1], nn.Linear):
        return model[:-1], model[-1]
    return None


def margin_sensitivities(model: nn.Module, num_classes: int) -> torch.Tensor:
    """(K, K) S with S[y, j] >= how much f_y - f_j can change per unit of linf input change.

    Whole map: 2 L (each logit moves by at most L eps). Per pair, for a Sequential ending in a
    Linear layer W over a body of constant L_body: ||w_y - w_j||_1 L_body (the bias cancels).
    S is the smaller of the two, entrywise. Gradients flow into W (the body's constant is a
    number, fixed by construction in a Lipschitz net), so training, the certificate and
    `certified_radius` all use this one function.
    """
    whole = 2.0 * lipschitz_bound_tensor(model, "inf")
    split = _split_last_linear(model)
    if split is None:
        return whole.expand(num_classes, num_classes).clone()
    body, last = split
    weight = last.weight
    pair_rows = (weight[:, None, :] - weight[None, :, :]).abs().sum(dim=2)  # ||w_y - w_j||_1
    return torch.minimum(pair_rows * lipschitz_bound_tensor(body, "inf"), whole)


def partial_derivative_bounds(model: nn.Module, num_inputs: int) -> torch.Tensor:
    """(D,) upper bounds of |d g / d x_i| for a scalar-output network g of (B, D) inputs.

    For a Sequential whose first weighted layer is Linear W1 (after reshapes): d g / d x_i =
    J_rest W1[:, i], so |.| <= min(||W1[:, i]||_inf L_inf(rest), ||W1[:, i]||_1 L_1->inf(rest))
    per feature. Otherwise the l1 -> linf constant of g bounds every partial.
    """
    layers = list(model) if isinstance(model, nn.Sequential) else [model]
    while layers and isinstance(layers[0], (nn.Flatten, nn.Identity, nn.Dropout)):
        layers = layers[1:]
    if layers and isinstance(layers[0], nn.Linear) and layers[0].in_features == num_inputs:
        column = layers[0].weight.detach().abs()
        rest = nn.Sequential(*layers[1:])
        by_inf = column.amax(dim=0) * lipschitz_bound_tensor(rest, "inf")
        by_one = column.sum(dim=0) * lipschitz_bound_tensor(rest, "one-inf")
        return torch.minimum(by_inf, by_one)
    return lipschitz_bound_tensor(model, "one-inf").expand(num_inputs).clone()

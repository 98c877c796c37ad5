"""Branch and bound over ReLU splits for one specification row c f(x) > 0 on an input box.

Best-first: the `batch` open sub-domains with the lowest bounds are split on the neuron the
branching rule picks, their 2 x batch children bounded in one call (warm-started from the
parent's slopes and multipliers), and the children whose bound is positive, or whose
constraints are contradictory, are closed. Every bounded child also yields a point: the box
corner that minimises its final linear bound; the points of the lowest children are refined by
a few steps of projected gradient descent on c f and handed to `check`, which confirms a
counterexample exactly (e.g. in float64). A sub-domain with no free unstable ReLU left is a
linear program (the network is affine on it), solved exactly: its optimum is a counterexample or
its dual multipliers are the optimal betas, whose bound is then computed by the engine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linprog

from certtrain.bab.bounding import SplitBounder
from certtrain.bab.branching import choose
from certtrain.bounds.ops import ReLUOp

ATTACK_POINTS = 8  # children per batch whose corner points are refined by PGD
ATTACK_STEPS = 10


@dataclass
class RowResult:
    status: str  # robust | adversarial | timeout
    witness: torch.Tensor | None = None
    domains: int = 0  # sub-domains bounded
    depth: int = 0  # most splits on one sub-domain
    leaf_lps: int = 0
    stats: dict = field(default_factory=dict)


class _Pool:
    """The open sub-domains, as stacked tensors."""

    def __init__(self, relus):
        self.relus = relus
        self.splits = {i: [] for i in relus}
        self.slopes = {i: [] for i in relus}
        self.betas = {i: [] for i in relus}
        self.lower, self.layer, self.neuron = [], [], []
        self._flat = None

    def _stack(self):
        if self._flat is None:
            cat = lambda parts: torch.cat(parts) if parts else None  # noqa: E731
            self._flat = dict(
                splits={i: cat(self.splits[i]) for i in self.relus},
                slopes={i: cat(self.slopes[i]) for i in self.relus},
                betas={i: cat(self.betas[i]) for i in self.relus},
                lower=cat(self.lower),
                layer=cat(self.layer),
                neuron=cat(self.neuron),
            )
            for key in ("splits", "slopes", "betas"):
                for i in self.relus:
                    getattr(self, key)[i] = [self._flat[key][i]] if self._flat[key][i] is not None else []
            for key in ("lower", "layer", "neuron"):
                setattr(self, key, [self._flat[key]] if self._flat[key] is not None else [])
        return self._flat

    def __len__(self):
        return sum(len(t) for t in self.lower)

    def push(self, splits, slopes, betas, lower, layer, neuron):
        if len(lower) == 0:
            return
        for i in self.relus:
            self.splits[i].append(splits[i])
            self.slopes[i].append(slopes[i])
            self.betas[i].append(betas[i])
        self.lower.append(lower)
        self.layer.append(layer)
        self.neuron.append(neuron)
        self._flat = None

    def pop(self, count):
        """The `count` sub-domains with the lowest bounds, removed from the pool."""
        flat = self._stack()
        order = torch.argsort(flat["lower"])
        take, keep = order[:count], order[count:]
        picked = {key: ({i: flat[key][i][take] for i in self.relus}) for key in ("splits", "slopes", "betas")}
        picked.update({key: flat[key][take] for key in ("lower", "layer", "neuron")})
        for key in ("splits", "slopes", "betas"):
            for i in self.relus:
                getattr(self, key)[i] = [flat[key][i][keep]]
        for key in ("lower", "layer", "neuron"):
            setattr(self, key, [flat[key][keep]])
        self._flat = None
        return picked

    def worst(self) -> float:
        # pop() leaves an empty chunk when it takes every sub-domain; later pushes add to it
        return float(min(t.min() for t in self.lower if len(t))) if len(self) else float("inf")


def _children(picked, relus, layer, neuron):
    """Two children per picked sub-domain: neuron (layer[d], neuron[d]) active (+1) and inactive (-1)."""
    count = len(picked["lower"])
    rows = torch.arange(count, device=layer.device)
    splits, slopes, betas = {}, {}, {}
    for i in relus:
        both = picked["splits"][i].repeat(2, 1)
        here = layer == i
        chosen = torch.cat((rows[here], count + rows[here]))
        neurons = neuron[here].repeat(2)
        ones = torch.ones(int(here.sum()), device=both.device)
        signs = torch.cat((ones, -ones)).to(both.dtype)
        both[chosen, neurons] = signs
        splits[i] = both
        slopes[i] = picked["slopes"][i].repeat(2, 1)
        betas[i] = picked["betas"][i].repeat(2, 1)
    return splits, slopes, betas


def _attack(model, c, points, x_L, x_U):
    """A few signed-gradient steps on c f from each point, inside the box; every iterate kept."""
    step = (x_U - x_L) / 4
    x = points.clone()
    tried = [x.clone()]
    for _ in range(ATTACK_STEPS):
        x.requires_grad_(True)
        with torch.enable_grad():
            value = (model(x) * c).sum()
            (grad,) = torch.autograd.grad(value, x)
        x = torch.min(torch.max(x.detach() - step * grad.sign(), x_L), x_U)
        step = step * 0.7
        tried.append(x.clone())
    return torch.cat(tried)


def _first_counterexample(model, c, points, check):
    with torch.no_grad():
        values = (model(points) * c).sum(1)
    for index in torch.argsort(values)[: 4 * ATTACK_POINTS]:
        if values[index] >= 0:
            break
        witness = check(points[index : index + 1])
        if witness is not None:
            return witness
    return None


def _leaf_lp(bounder, splits_one, model_ops, c):
    """The LP over a sub-domain where every ReLU is stable or split: (exact minimum of c f, the
    minimising input, the multipliers of the split constraints {ReLU index: (1, n)})."""
    bounds, _ = bounder.domain_bounds(splits_one)
    x0 = bounder.x_L
    dims = x0[0].numel()

    def affine_parts(x_flat):
        x = x_flat.view(-1, *x0.shape[1:])
        outputs = []
        for index, op in enumerate(model_ops):
            if isinstance(op, ReLUOp):
                outputs.append(x.flatten(1))
                lower = bounds[index][0].reshape(1, -1)
                active = ((splits_one[index] > 0) | (lower >= 0)).to(x.dtype).view(1, *x.shape[1:])
                x = x * active
            else:
                x = op.forward(x)
        return torch.cat(outputs + [(x * c.view(1, -1)).sum(1, keepdim=True)], dim=1)[0]

    zero = torch.zeros(dims, dtype=x0.dtype, device=x0.device)
    offset = affine_parts(zero).detach()
    jac = torch.autograd.functional.jacobian(affine_parts, zero).detach()
    sizes = [bounder.neurons(i) for i in bounder.relus]
    sign = torch.cat([splits_one[i][0].to(x0.dtype) for i in bounder.relus])
    jac, offset, sign = jac.cpu(), offset.cpu(), sign.cpu()  # scipy's LP runs on the host
    rows = sign != 0
    objective = jac[-1].numpy()
    # s z >= 0  <=>  -s (J x + o) <= 0
    A_ub = (-sign[rows, None] * jac[:-1][rows]).numpy()
    b_ub = (sign[rows] * offset[:-1][rows]).numpy()
    box = list(zip(bounder.x_L.flatten().tolist(), bounder.x_U.flatten().tolist()))
    res = linprog(
        objective, A_ub=A_ub if len(b_ub) else None, b_ub=b_ub if len(b_ub) else None, bounds=box, method="highs"
    )
    if res.status != 0:
        return None, None, None
    point = torch.from_numpy(res.x).to(device=x0.device, dtype=x0.dtype).view(1, *x0.shape[1:])
    duals = np.zeros(len(sign))
    if len(b_ub):
        duals[rows.numpy()] = np.clip(-res.ineqlin.marginals, 0.0, None)
    betas, start = {}, 0
    for i, size in zip(bounder.relus, sizes):
        betas[i] = torch.from_numpy(duals[start : start + size]).to(device=x0.device, dtype=x0.dtype).view(1, -1)
        start += size
    return float(res.fun + offset[-1]), point, betas


def _decide(bounder, picked, relus):
    """The neuron each picked sub-domain splits on: its only candidate, or (several candidates,
    fsb) the one whose two children have the best worse bound without optimisation."""
    layers, neurons = picked["layer"], picked["neuron"]
    if layers.shape[1] == 1:
        return layers[:, 0], neurons[:, 0]
    count = len(layers)
    worst = []
    for k in range(layers.shape[1]):
        splits, slopes, betas = _children(picked, relus, layers[:, k], neurons[:, k])
        lower = bounder.bound(splits, slopes, betas, iterations=0).lower
        value = torch.minimum(lower[:count], lower[count:])
        worst.append(torch.where(layers[:, k] >= 0, value, torch.full_like(value, -torch.inf)))
    pick = torch.stack(worst, 1).argmax(1)
    rows = torch.arange(count, device=pick.device)
    return layers[rows, pick], neurons[rows, pick]


def branch_and_bound_row(bounder: SplitBounder, model, check, deadline, batch=64, rule="fsb", root=None) -> RowResult:
    """Decide c f(x) > 0 over bounder's box (model: the float network of the same dtype, for the
    attack). check(x) -> a confirmed counterexample or None."""
    relus = bounder.relus
    result = RowResult("timeout")
    splits = bounder.empty_splits()
    root = bounder.bound(splits) if root is None else root
    result.domains = 1
    if root.lower[0] > 0:
        result.status = "robust"
        return result
    c = bounder.c.view(1, -1)
    witness = _first_counterexample(model, c, _attack(model, c, root.candidates, bounder.x_L, bounder.x_U), check)
    if witness is not None:
        result.status, result.witness = "adversarial", witness
        return result
    pool = _Pool(relus)
    layer, neuron = choose(rule, relus, root, splits)
    pool.push(splits, root.slopes, root.betas, root.lower, layer, neuron)
    while len(pool):
        if time.perf_counter() >= deadline:
            result.stats["open_domains"] = len(pool)
            result.stats["worst_bound"] = pool.worst()
            return result
        picked = pool.pop(batch)
        leaves = picked["layer"][:, 0] < 0
        if leaves.any():  # nothing left to split: the sub-domain is an LP
            for index in leaves.nonzero().flatten().tolist():
                one = {i: picked["splits"][i][index : index + 1] for i in relus}
                result.leaf_lps += 1
                value, point, betas = _leaf_lp(bounder, one, bounder.ops, c)
                if point is not None and value < 0:
                    witness = check(point)
                    if witness is not None:
                        result.status, result.witness = "adversarial", witness
                        return result
                if betas is None or bounder.bound(one, betas=betas, iterations=0).lower[0] <= 0:
                    result.status = "unknown"  # an LP tie the float bound cannot separate
                    result.stats["undecided_leaf"] = value
                    return result
            keep = ~leaves
            picked = {
                key: ({i: v[keep] for i, v in value.items()} if isinstance(value, dict) else value[keep])
                for key, value in picked.items()
            }
            if len(picked["lower"]) == 0:
                continue
        layer, neuron = _decide(bounder, picked, relus)
        splits, slopes, betas = _children(picked, relus, layer, neuron)
        bounded = bounder.bound(splits, slopes, betas)
        result.domains += len(bounded.lower)
        result.depth = max(result.depth, int(max(int((s != 0).sum(1).max()) for s in splits.values())))
        open_ = bounded.lower <= 0
        if open_.any():
            lowest = torch.argsort(bounded.lower)[:ATTACK_POINTS]
            lowest = lowest[bounded.lower[lowest] <= 0]
            points = _attack(model, c, bounded.candidates[lowest], bounder.x_L, bounder.x_U)
            witness = _first_counterexample(model, c, points, check)
            if witness is not None:
                result.status, result.witness = "adversarial", witness
                return result
            layer, neuron = choose(rule, relus, bounded, splits)
            keep = open_
            pool.push(
                {i: s[keep] for i, s in splits.items()},
                {i: s[keep] for i, s in bounded.slopes.items()},
                {i: b[keep] for i, b in bounded.betas.items()},
                bounded.lower[keep],
                layer[keep],
                neuron[keep],
            )
    result.status = "robust"
    return result

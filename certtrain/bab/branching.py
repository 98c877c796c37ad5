"""Which ReLU each sub-domain splits next.

babsr: an intercept score in the spirit of BaBSR (Bunel et al. 2020). A free unstable neuron
whose output enters the bound with a negative coefficient v < 0 contributes v times the upper
line's intercept -l u / (u - l) to it; splitting removes that term. Neurons entered with v > 0
sit on their lower line, whose gap to relu at the interval's ends is min(u (1 - a), -l a) at
most; that term, scaled down, breaks ties among neurons without an intercept cost.
fsb: filtered smart branching (De Palma et al. 2021): the `FSB_CANDIDATES` best neurons by the
babsr score, each judged by the bounds of its two children without optimisation (warm slopes
and multipliers), the one whose worse child is best wins.
width: the widest free unstable neuron (u - l), a rule that ignores the specification.
"""

from __future__ import annotations

import torch

RULES = ("fsb", "babsr", "width")
FSB_CANDIDATES = 4
TIE_WEIGHT = 1e-3


def check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown branching rule {rule!r}; choose one of {RULES}")


def neuron_scores(rule, coefficient, lower, upper, slope, split):
    """(D, n) score of every neuron of one ReLU layer; -inf where it cannot be split (stable or
    split already)."""
    free = (split == 0) & (lower < 0) & (upper > 0)
    if rule == "width":
        score = upper - lower
    else:
        intercept = -lower * upper / (upper - lower).clamp(min=1e-12)
        lower_gap = torch.minimum(upper * (1 - slope), -lower * slope)
        score = coefficient.clamp(max=0).neg() * intercept + TIE_WEIGHT * coefficient.clamp(min=0) * lower_gap
        # a neuron with no coefficient at all still splits before none: its width, tiny
        score = score + 1e-9 * (upper - lower)
    return torch.where(free, score, torch.full_like(score, -torch.inf))


def choose(rule, relus, bounded, splits):
    """Per sub-domain, the candidate (ReLU op index, neuron) pairs to split, best first: two
    (D, k) long tensors, k = FSB_CANDIDATES for fsb and 1 otherwise; layer -1 where no neuron is
    left (every ReLU of the sub-domain stable or split)."""
    score_rule = "babsr" if rule == "fsb" else rule
    scores = [
        neuron_scores(score_rule, bounded.coefficients[i], *bounded.bounds[i], bounded.slopes[i], splits[i])
        for i in relus
    ]
    sizes = [s.shape[1] for s in scores]
    flat = torch.cat(scores, dim=1)
    top = min(FSB_CANDIDATES if rule == "fsb" else 1, flat.shape[1])
    best, position = flat.topk(top, dim=1)
    offsets = torch.tensor([0] + sizes, device=flat.device).cumsum(0)
    layer_position = torch.searchsorted(offsets[1:], position, right=True)
    neuron = position - offsets[layer_position]
    layer = torch.tensor(relus, device=flat.device)[layer_position.clamp(max=len(relus) - 1)]
    layer = torch.where(torch.isfinite(best), layer, torch.full_like(layer, -1))
    return layer, neuron

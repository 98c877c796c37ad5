"""verify(): one sample, from the cheapest argument that settles it to the exact MILP.

Order for `robustness`: clean prediction -> IBP and CROWN bounds from the bound engine -> the
MILP on those bounds, solved as an LP relaxation per class (all margins positive: robust; an LP
vertex the float64 network misclassifies: adversarial) -> PGD (a float64-confirmed attack is an
exact 'adversarial') -> the MILP rebuilt with bounds tightened up to `tightening` -> one MIP per
class that is still open. The LP over the engine's bounds is at least as tight as CROWN's own
margin bound, so no separate CROWN margin pass is needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from certtrain.bab import BabOptions, robustness_bab
from certtrain.precision import certifier
from certtrain.verify.attack import domain_pgd
from certtrain.verify.formulation import build_formulation
from certtrain.verify.network import model_dtype, network_steps
from certtrain.verify.objectives import min_distortion, robustness
from certtrain.verify.options import OBJECTIVES, VerifyOptions
from certtrain.verify.perturbations import box as box_domain
from certtrain.verify.perturbations import make_domain
from certtrain.verify.result import FloatNetwork, VerificationResult, as_tensor, representable
from certtrain.verify.tightening import LEVELS, count_unstable, engine_bounds, intersect
from certtrain.verify.witness import is_adversarial

__all__ = ["OBJECTIVES", "VerifyOptions", "verify"]


def _classes(num_classes: int, label: int, targets) -> list[int]:
    if targets is None:
        return [j for j in range(num_classes) if j != label]
    targets = sorted({int(t) for t in np.atleast_1d(np.asarray(targets))})
    bad = [t for t in targets if not 0 <= t < num_classes or t == label]
    if bad or not targets:
        raise ValueError(f"targets must be classes in [0, {num_classes}) other than the label {label}, got {targets}")
    return targets


def _pgd_witness(model, x, label, domain, net, steps, restarts):
    """A PGD attack (float32, as the model runs) confirmed in float64, or None."""
    x_adv, found = domain_pgd(model, x, label, domain, steps, restarts)
    if not found:
        return None
    candidate = representable(
        domain, np.clip(x_adv.double().reshape(-1).numpy(), domain.box_lower, domain.box_upper), x
    )
    return candidate if is_adversarial(net, domain, candidate, label) else None


@certifier  # strict float32: TF32 bounds could prove what is false
def verify(model: nn.Module, x: torch.Tensor, y, options: VerifyOptions | None = None, box=None) -> VerificationResult:
    """Decide one sample exactly. x: (1, *input_shape) in [0, 1]; y: its label; options: what to
    decide and how (certtrain.verify.VerifyOptions; the defaults decide L-inf robustness at 0.1).
    box: (lower, upper) shaped like x decides robustness over that box instead of
    options.perturbation (x a point inside it; the inputs need not lie in [0, 1])."""
    start, cpu_start = time.perf_counter(), time.process_time()
    if options is None:
        options = VerifyOptions()
    if not isinstance(options, VerifyOptions):
        raise TypeError(
            f"options must be a VerifyOptions, got {type(options).__name__}: verify(model, x, y, "
            "VerifyOptions(eps=0.1, ...))"
        )
    clock = _Clock(
        deadline=start + float(options.time_limit),
        bab_deadline=start + float(options.time_limit) * (options.bab_share if options.method == "bab-milp" else 1.0),
        # bab-milp: branch and bound proves the easy margins first and leaves the rest to the MILP
        bab=replace(options.bab, easiest_first=True) if options.method == "bab-milp" else options.bab,
    )
    was_training = model.training
    model.eval()
    try:
        if box is not None:
            if options.objective != "robustness":
                raise ValueError("box= decides robustness; use objective=robustness")
            domain = box_domain(x, *box)
        else:
            domain = make_domain(x, options.perturbation, options.eps, options.blur_kernel_size)
        result = _run(model, x, int(torch.as_tensor(y).reshape(-1)[0]), domain, options, clock)
    finally:
        model.train(was_training)
    result.seconds = time.perf_counter() - start
    result.cpu_seconds = time.process_time() - cpu_start
    return result


@dataclass(frozen=True)
class _Clock:
    """What one verify() call adds to its options: its deadlines (time.perf_counter() values) and
    the branch-and-bound settings as this method runs them."""

    deadline: float
    bab_deadline: float
    bab: BabOptions


def _run(model, x, label, domain, options: VerifyOptions, clock: _Clock) -> VerificationResult:
    targets = options.targets
    net = FloatNetwork(model)
    logits = net.logits(domain.x, domain.shape)
    if not 0 <= label < len(logits):
        raise ValueError(f"label {label} outside the model's {len(logits)} classes")
    classes = _classes(len(logits), label, targets)
    predicted = int(np.argmax(logits))
    if predicted != label:
        return VerificationResult(
            "misclassified",
            x.detach().clone(),
            0.0,
            0.0,
            predicted=predicted,
            resolved_by="clean",
            witness_verified=True,
        )
    if options.method != "milp":
        result = _decide_bab(model, x, label, classes, targets is not None, domain, net, options, clock)
        if isinstance(result, VerificationResult):
            result.predicted = predicted
            return result
        classes = result  # bab-milp: the classes branch and bound left open go to the MILP
    steps = network_steps(model, domain.shape)
    result = _decide(model, x, label, classes, targets is not None, domain, net, steps, options, clock)
    result.predicted = predicted
    return result


def _decide_bab(model, x, label, classes, targeted, domain, net, options, clock) -> VerificationResult | list[int]:
    """PGD, then branch and bound; when it ran out of its time and the MILP comes next (bab-milp),
    the classes it left open (a proved margin f_label - f_j > 0 holds for targeted and untargeted
    alike)."""
    start = time.perf_counter()
    stats = {"pgd_found": False}
    if not targeted and options.pgd_steps > 0:
        found = _pgd_witness(model, x, label, domain, net, options.pgd_steps, options.pgd_restarts)
        if found is not None:
            stats["pgd_found"] = True
            witness = as_tensor(found, domain.shape, domain, x)
            return VerificationResult("adversarial", witness, resolved_by="pgd", witness_verified=True, stats=stats)

    def check(point: torch.Tensor):
        """A point of the box, rounded to x's dtype and confirmed by the float64 network, or None."""
        flat = np.clip(point.double().reshape(-1).numpy(), domain.box_lower, domain.box_upper)
        candidate = representable(domain, flat, x)
        if targeted:  # a point where one of the targets is the top class
            hit = any(is_adversarial(net, domain, candidate, label, target) for target in classes)
        else:
            hit = is_adversarial(net, domain, candidate, label)
        return candidate if hit else None

    if time.perf_counter() >= clock.bab_deadline:  # its share of the time went to the attack
        if options.method == "bab-milp" and time.perf_counter() < clock.deadline:
            return list(classes)
        return VerificationResult("timeout", resolved_by="bab", stats=stats)
    shape = (1, *domain.shape)
    x_L = torch.from_numpy(domain.box_lower.reshape(shape))
    x_U = torch.from_numpy(domain.box_upper.reshape(shape))
    outcome = robustness_bab(model, x_L, x_U, label, classes, clock.bab, clock.bab_deadline, check)
    stats.update(bab=outcome.stats)
    if outcome.status == "timeout" and options.method == "bab-milp" and time.perf_counter() < clock.deadline:
        return [j for j in classes if j not in outcome.proved]
    result = VerificationResult(
        outcome.status if outcome.status != "unknown" else "unresolved",
        resolved_by="bab",
        solve_seconds=time.perf_counter() - start,
        stats=stats,
    )
    if outcome.witness is not None:
        result.adversarial = as_tensor(outcome.witness, domain.shape, domain, x)
        result.witness_verified = True
    return result


def _decide(model, x, label, classes, targeted, domain, net, steps, options: VerifyOptions, clock: _Clock):
    """The MILP path: bounds, the LP relaxation, PGD where it is open, the tightened MILP."""
    objective, tightening, norm = options.objective, options.tightening, options.norm
    pgd_steps, pgd_restarts, deadline = options.pgd_steps, options.pgd_restarts, clock.deadline
    solver, tightening_time_limit, crown_dtype = options.solver, options.tightening_time_limit, options.crown_dtype
    depth = LEVELS.index(tightening)
    bounds = engine_bounds(steps, domain.box_lower, domain.box_upper, "ibp")
    stats = {"unstable_ibp": count_unstable(steps, bounds), "pgd_found": False}
    if depth >= LEVELS.index("crown"):
        dtype = crown_dtype if model_dtype(model) == torch.float32 else torch.float64
        crown = engine_bounds(steps, domain.box_lower, domain.box_upper, "crown", dtype)
        bounds = intersect(bounds, crown)
    stats["unstable_crown"] = count_unstable(steps, bounds)
    solve_start = time.perf_counter()
    build = dict(domain=domain, bounds=bounds, options=solver, time_per_solve=tightening_time_limit, deadline=deadline)
    if objective == "robustness":
        form = build_formulation(steps, level=LEVELS[min(depth, 1)], **build)
        stats["unstable_final"] = form.binaries
        outcome = robustness(form, net, domain, label, classes, targeted, deadline, x, exact=depth < 2)
        if outcome.status == "open" and domain.is_box and not targeted and pgd_steps > 0:
            found = _pgd_witness(model, x, label, domain, net, pgd_steps, pgd_restarts)
            if found is not None:
                stats["pgd_found"] = True
                return VerificationResult(
                    "adversarial",
                    as_tensor(found, domain.shape, domain, x),
                    resolved_by="pgd",
                    witness_verified=True,
                    stats=stats,
                    solve_seconds=time.perf_counter() - solve_start,
                )
        if outcome.status == "open":
            form = build_formulation(steps, level=tightening, **build)
            outcome = robustness(form, net, domain, label, classes, targeted, deadline, x)
    else:
        form = build_formulation(steps, level=tightening, **build)
        outcome = min_distortion(form, net, domain, label, classes, targeted, norm, deadline, x)
    stats.update(
        unstable_final=form.binaries,
        tightening_solves=form.tightening_solves,
        unstable_per_layer=form.unstable_per_layer,
    )
    result = VerificationResult(
        outcome.status,
        resolved_by=outcome.resolved_by,
        distortion=outcome.distortion,
        bound=outcome.bound,
        solve_seconds=time.perf_counter() - solve_start,
        stats=stats,
    )
    if outcome.witness is not None:
        result.adversarial = as_tensor(outcome.witness, domain.shape, domain, x)
        result.witness_verified = True
    return result

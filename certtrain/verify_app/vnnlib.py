"""VNN-LIB properties, the exchange format of the verification competitions (VNN-COMP).

A property declares inputs X_i and outputs Y_j and asserts constraints whose conjunction
describes a counterexample: "sat" means some input satisfies every assertion (a witness is
given), "unsat" that none does. Supported: bounds on single inputs (<=, >= against numbers;
< and > read as their closures), linear constraints on outputs ((<= Y_0 Y_1), (>= (+ Y_0
(* 2 Y_1)) 0.5), ...), and any nesting of `and` / `or` (expanded to disjunctive normal form;
disjuncts may carry their own input boxes).

Deciding one input box with output disjuncts D_1 .. D_m, each a conjunction A_d y <= b_d:
the counterexample set is {x : min_d max_i (A_d f(x) - b_d)_i <= 0}. The network is extended by
a layer computing every g = A_d f(x) - b_d, ReLU layers computing h_d = max_i g_i exactly
(max(a, b) = b + relu(a - b)), and a last layer [0, -h_1, .., -h_m]: the property is unsat
exactly when class 0 wins everywhere in the box, which verify() decides (MILP or branch and
bound). A "sat" witness is checked once more in float64 on the original network against the
property's own constraints.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import time
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import numpy as np
import torch
from torch import nn

from certtrain.verify.api import verify
from certtrain.verify.network import model_dtype

VERDICTS = ("sat", "unsat", "timeout", "unknown")
_VAR = re.compile(r"^([XY])_(\d+)$")
_COMPARE = {"<=": 1, "<": 1, ">=": -1, ">": -1}  # sign s: (op L R) means s (L - R) <= 0


class VnnlibError(ValueError):
    """A malformed or unsupported property; the message gives the file, line and what was expected."""


@dataclass
class Disjunct:
    """One conjunction: inputs in [lower, upper] (NaN: not bounded here) and rows @ y <= bounds."""

    lower: np.ndarray
    upper: np.ndarray
    rows: np.ndarray  # (k, num_outputs)
    bounds: np.ndarray  # (k,)


@dataclass
class Property:
    num_inputs: int
    num_outputs: int
    disjuncts: list[Disjunct] = field(default_factory=list)

    def boxes(self) -> list[tuple[np.ndarray, np.ndarray, list[Disjunct]]]:
        """The disjuncts grouped by input box (most properties have one box)."""
        groups: dict[bytes, tuple[np.ndarray, np.ndarray, list[Disjunct]]] = {}
        for d in self.disjuncts:
            key = d.lower.tobytes() + d.upper.tobytes()
            groups.setdefault(key, (d.lower, d.upper, []))[2].append(d)
        return list(groups.values())


# ---------------------------------------------------------------- parsing


def _tokens(text: str, name: str):
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split(";", 1)[0]
        for token in re.findall(r"\(|\)|[^\s()]+", line):
            yield token, number


def _tree(text: str, name: str) -> list:
    """Nested lists of (token, line); a list carries the line of its opening parenthesis."""
    stack: list[list] = [[]]
    opened: list[int] = []
    for token, line in _tokens(text, name):
        if token == "(":
            stack.append([])
            opened.append(line)
        elif token == ")":
            if len(stack) == 1:
                raise VnnlibError(f"{name}:{line}: a ')' closes nothing")
            done = stack.pop()
            stack[-1].append((done, opened.pop()))
        else:
            stack[-1].append((token, line))
    if len(stack) > 1:
        raise VnnlibError(f"{name}:{opened[-1]}: this '(' is never closed")
    return stack[0]


class _Parser:
    def __init__(self, name: str):
        self.name = name
        self.declared: dict[str, tuple[str, int]] = {}

    def error(self, line: int, message: str) -> VnnlibError:
        return VnnlibError(f"{self.name}:{line}: {message}")

    def term(self, node, line) -> tuple[dict[tuple[str, int], float], float]:
        """A linear term as ({(kind, index): coefficient}, constant)."""
        if isinstance(node, str):
            if node in self.declared:
                return {self.declared[node]: 1.0}, 0.0
            if _VAR.match(node):
                raise self.error(line, f"{node} is used but not declared; add (declare-const {node} Real)")
            try:
                return {}, float(node)
            except ValueError:
                raise self.error(line, f"expected a declared variable or a number, got {node!r}") from None
        if not node:
            raise self.error(line, "expected a term, got ()")
        head, _ = node[0]
        args = [self.term(*arg) for arg in node[1:]]
        if head == "+":
            return _add(args)
        if head == "-":
            if len(args) == 1:
                return _scale(args[0], -1.0)
            return _add([args[0]] + [_scale(a, -1.0) for a in args[1:]])
        if head == "*":
            if len(args) == 2 and not args[0][0]:
                return _scale(args[1], args[0][1])
            if len(args) == 2 and not args[1][0]:
                return _scale(args[0], args[1][1])
            raise self.error(line, "(* a b) needs two arguments, one of them a number (linear properties only)")
        raise self.error(line, f"expected a term (+, -, * or a variable), got ({head} ...)")

    def formula(self, node, line) -> list[list[tuple[dict, float, int]]]:
        """DNF: a list of conjunctions, each a list of atoms (coefficients, constant, line) meaning
        coefficients . v + constant <= 0."""
        if isinstance(node, str) or not node:
            raise self.error(line, f"expected (and ...), (or ...) or a comparison, got {node!r}")
        head, _ = node[0]
        if head == "and":
            parts = [self.formula(*arg) for arg in node[1:]]
            return [sum(choice, []) for choice in product(*parts)]
        if head == "or":
            return [conj for arg in node[1:] for conj in self.formula(*arg)]
        if head in _COMPARE:
            if len(node) != 3:
                raise self.error(line, f"({head} a b) takes two terms, got {len(node) - 1}")
            sign = _COMPARE[head]
            left, right = self.term(*node[1]), self.term(*node[2])
            coefficients, constant = _scale(_add([left, _scale(right, -1.0)]), sign)
            return [[(coefficients, constant, line)]]
        raise self.error(line, f"expected and, or, <=, >=, < or >, got {head!r}")


def _add(terms):
    total: dict = {}
    constant = 0.0
    for coefficients, c in terms:
        for key, value in coefficients.items():
            total[key] = total.get(key, 0.0) + value
        constant += c
    return total, constant


def _scale(term, factor):
    coefficients, constant = term
    return {k: v * factor for k, v in coefficients.items()}, constant * factor


def parse_vnnlib(text: str, name: str = "<property>") -> Property:
    parser = _Parser(name)
    conjunctions: list[list] = [[]]
    for node, line in _tree(text, name):
        if isinstance(node, str) or not node:
            raise parser.error(line, f"expected (declare-const ...) or (assert ...), got {node!r}")
        head, _ = node[0]
        if head == "declare-const":
            if len(node) != 3 or not isinstance(node[1][0], str) or not _VAR.match(node[1][0]):
                raise parser.error(line, "expected (declare-const X_<i> Real) or (declare-const Y_<j> Real)")
            if node[2][0] != "Real":
                raise parser.error(line, f"variables are Real, got {node[2][0]!r}")
            kind, index = _VAR.match(node[1][0]).groups()
            parser.declared[node[1][0]] = (kind, int(index))
        elif head == "assert":
            if len(node) != 2:
                raise parser.error(line, "(assert F) takes one formula")
            conjunctions = [a + b for a, b in product(conjunctions, parser.formula(*node[1]))]
        else:
            raise parser.error(line, f"expected declare-const or assert, got {head!r}")
    counts = {kind: 1 + max((i for k, i in parser.declared.values() if k == kind), default=-1) for kind in "XY"}
    for kind in "XY":
        missing = sorted(set(range(counts[kind])) - {i for k, i in parser.declared.values() if k == kind})
        if counts[kind] == 0 or missing:
            raise VnnlibError(
                f"{name}: declare {kind}_0 .. {kind}_{max(counts[kind] - 1, 0)} (missing: {missing[:5] or 'all'})"
            )
    prop = Property(counts["X"], counts["Y"])
    for conjunction in conjunctions:
        prop.disjuncts.append(_disjunct(conjunction, counts["X"], counts["Y"], name))
    return prop


def _disjunct(atoms, num_inputs, num_outputs, name) -> Disjunct:
    lower, upper = np.full(num_inputs, -np.inf), np.full(num_inputs, np.inf)
    rows, bounds = [], []
    for coefficients, constant, line in atoms:
        kinds = {kind for kind, _ in coefficients}
        if kinds == {"X"}:
            if len(coefficients) != 1:
                raise VnnlibError(f"{name}:{line}: input constraints must bound one input each, e.g. (<= X_0 0.5)")
            (((_, i), a),) = coefficients.items()
            value = -constant / a  # a x + constant <= 0
            if a > 0:
                upper[i] = min(upper[i], value)
            else:
                lower[i] = max(lower[i], value)
        elif kinds == {"Y"}:
            row = np.zeros(num_outputs)
            for (_, j), a in coefficients.items():
                row[j] += a
            rows.append(row)
            bounds.append(-constant)
        elif not kinds:
            raise VnnlibError(f"{name}:{line}: a comparison of two numbers; compare a variable")
        else:
            raise VnnlibError(f"{name}:{line}: a constraint mixes inputs and outputs; keep X and Y apart")
    return Disjunct(lower, upper, np.array(rows).reshape(-1, num_outputs), np.array(bounds))


def read_vnnlib(path: str | Path) -> Property:
    path = Path(path)
    if not path.is_file():
        raise VnnlibError(f"vnnlib={path} is not a file; pass a .vnnlib property file")
    return parse_vnnlib(path.read_text(), str(path))


# ---------------------------------------------------------------- deciding


def _max_layers(groups: list[int]) -> list[nn.Module]:
    """Layers mapping concatenated groups of values to the maximum of each group, exactly:
    max(a, b) = relu(a - b) + relu(b) - relu(-b), pairs reduced level by level."""
    layers: list[nn.Module] = []
    sizes = list(groups)
    while any(s > 1 for s in sizes):
        pre_rows, post = [], []
        width = sum(sizes)
        offset, new_sizes = 0, []
        for size in sizes:
            items = list(range(offset, offset + size))
            offset += size
            pairs = [items[k : k + 2] for k in range(0, size, 2)]
            for pair in pairs:
                start = len(pre_rows)
                if len(pair) == 2:
                    a, b = pair
                    pre_rows += [(a, b, 1.0, -1.0), (b, None, 1.0, 0.0), (b, None, -1.0, 0.0)]
                    post.append([(start, 1.0), (start + 1, 1.0), (start + 2, -1.0)])
                else:
                    (a,) = pair
                    pre_rows += [(a, None, 1.0, 0.0), (a, None, -1.0, 0.0)]
                    post.append([(start, 1.0), (start + 1, -1.0)])
            new_sizes.append(len(pairs))
        pre = nn.Linear(width, len(pre_rows))
        out = nn.Linear(len(pre_rows), len(post))
        with torch.no_grad():
            pre.weight.zero_(), pre.bias.zero_(), out.weight.zero_(), out.bias.zero_()
            for r, (a, b, ca, cb) in enumerate(pre_rows):
                pre.weight[r, a] += ca
                if b is not None:
                    pre.weight[r, b] += cb
            for r, terms in enumerate(post):
                for k, c in terms:
                    out.weight[r, k] = c
        layers += [pre, nn.ReLU(), out]
        sizes = new_sizes
    return layers


def spec_network(model: nn.Module, disjuncts: list[Disjunct]) -> nn.Sequential:
    """model followed by [0, -h_1, .., -h_m], h_d = max_i (A_d f(x) - b_d)_i: class 0 wins at x
    exactly when x satisfies no disjunct."""
    rows = np.concatenate([d.rows for d in disjuncts])
    bounds = np.concatenate([d.bounds for d in disjuncts])
    g = nn.Linear(rows.shape[1], rows.shape[0])
    with torch.no_grad():
        g.weight.copy_(torch.from_numpy(rows))
        g.bias.copy_(torch.from_numpy(-bounds))
    head = nn.Linear(len(disjuncts), len(disjuncts) + 1)
    with torch.no_grad():
        head.weight.zero_(), head.bias.zero_()
        head.weight[1:] = -torch.eye(len(disjuncts))
    layers = [g, *_max_layers([len(d.bounds) for d in disjuncts]), head]
    # float64 throughout: the box's bounds and centre are read from the file in float64, and a
    # float32 centre could round outside a box that pins an input
    return nn.Sequential(copy.deepcopy(model), *layers).double().eval()


def satisfies(model: nn.Module, x: np.ndarray, disjunct: Disjunct, shape, tolerance: float = 0.0) -> bool:
    """x in the disjunct's box and its output constraints met, in float64 on the original model."""
    if np.any(x < disjunct.lower) or np.any(x > disjunct.upper):
        return False
    net = model if model_dtype(model) == torch.float64 else _float64(model)
    with torch.no_grad():
        y = net(torch.from_numpy(x).reshape(1, *shape)).reshape(-1).numpy()
    return bool(np.all(disjunct.rows @ y <= disjunct.bounds + tolerance))


def _float64(model):
    return copy.deepcopy(model).double().eval()


@dataclass
class VnnlibResult:
    verdict: str  # sat | unsat | timeout | unknown
    witness: np.ndarray | None = None  # flat input, for sat
    outputs: np.ndarray | None = None
    boxes: int = 0
    details: list = field(default_factory=list)  # per box: verify()'s status and resolver


def decide_vnnlib(model: nn.Module, prop: Property, input_shape, options, deadline: float) -> VnnlibResult:
    """Decide the property for `model` (inputs shaped input_shape); options: VerifyOptions
    (method, solver, ...), each box getting the time left before `deadline` (perf_counter)."""
    if int(np.prod(input_shape)) != prop.num_inputs:
        raise VnnlibError(f"the property has {prop.num_inputs} inputs, the network takes {tuple(input_shape)}")
    original = _float64(model)  # witnesses are checked and reported on it
    with torch.no_grad():
        outputs = original(torch.zeros(1, *input_shape, dtype=torch.float64)).numel()
    if outputs != prop.num_outputs:
        raise VnnlibError(f"the property has {prop.num_outputs} outputs, the network gives {outputs}")
    result = VnnlibResult("unsat")
    for lower, upper, disjuncts in prop.boxes():
        unbounded = np.flatnonzero(~np.isfinite(lower) | ~np.isfinite(upper))
        if len(unbounded):
            raise VnnlibError(f"input X_{unbounded[0]} needs a lower and an upper bound in every disjunct")
        if np.any(lower > upper):
            continue  # an empty box holds no counterexample
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            result.verdict = "timeout"
            break
        result.boxes += 1
        net = spec_network(model, disjuncts)
        shape = (1, *input_shape)
        box = (torch.from_numpy(lower).reshape(shape), torch.from_numpy(upper).reshape(shape))
        centre = (box[0] + box[1]) / 2
        r = verify(net, centre, 0, dataclasses.replace(options, time_limit=remaining), box=box)
        result.details.append({"status": r.status, "resolved_by": r.resolved_by, "seconds": round(r.seconds, 3)})
        if r.status in ("adversarial", "misclassified"):
            witness = r.adversarial.double().reshape(-1).numpy()
            if not any(satisfies(original, witness, d, input_shape) for d in disjuncts):
                # float64 rounding of the max layers put the point on the wrong side: no claim
                result.details[-1]["witness"] = "meets no disjunct on the original network"
                result.verdict = "unknown"
                continue
            result.verdict, result.witness = "sat", witness
            with torch.no_grad():
                result.outputs = original(torch.from_numpy(witness).reshape(shape)).reshape(-1).numpy()
            return result
        if r.status == "timeout":
            result.verdict = "timeout"
        elif r.status != "robust" and result.verdict != "timeout":
            result.verdict = "unknown"
    return result


def format_result(result: VnnlibResult) -> str:
    """The competition's result file: the verdict, then for sat the witness ((X_i v) ... (Y_j v))."""
    if result.verdict != "sat":
        return result.verdict + "\n"
    lines = [f"(X_{i} {float(v):.17g})" for i, v in enumerate(result.witness)]
    lines += [f"(Y_{j} {float(v):.17g})" for j, v in enumerate(result.outputs)]
    return "sat\n(" + "\n ".join(lines) + ")\n"

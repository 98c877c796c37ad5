"""VerifyOptions: every setting of one verify() call, checked when it is made.

from certtrain.verify import VerifyOptions, verify
r = verify(model, x, y, VerifyOptions(eps=0.1, time_limit=60))
strict = dataclasses.replace(options, tightening="mip")
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from certtrain.bab import BabOptions
from certtrain.verify.encoding import SolverOptions
from certtrain.verify.objectives import NORMS
from certtrain.verify.perturbations import FAMILIES
from certtrain.verify.tightening import check_level

OBJECTIVES = ("robustness", "min_distortion")
# milp: bounds -> LP -> PGD -> tightened MILP. bab: PGD -> alpha-CROWN -> branch and bound.
# bab-milp: branch and bound for bab_share of the time limit, then the MILP with what is left.
METHODS = ("milp", "bab", "bab-milp")


@dataclass(frozen=True)
class VerifyOptions:
    """What to decide (objective over the perturbation set) and how hard to try.

    objective: robustness (any input of the set classified otherwise / as one of `targets`?) or
    min_distortion (smallest `norm` perturbation inside the set that does so).
    perturbation: linf (ball of radius eps within [0, 1]) | unrestricted ([0, 1]) | blur (a
    blur_kernel_size kernel; eps, if given, also bounds the change of every pixel).
    tightening: ibp | crown | lp | mip, the strongest bound tightening applied before the MILP.
    pgd_steps / pgd_restarts: the attack tried before the tightened MILP (0 steps: none).
    crown_dtype: float64 (default) or float32 CROWN bounds (about twice as fast on convolutions,
    widened by the engine's FLOAT32_SLACK, which the tests check on random networks only).
    method: milp | bab | bab-milp (METHODS); branch and bound decides robustness over box sets
    (linf, unrestricted) untargeted or targeted; `bab` holds its settings (certtrain.bab.BabOptions).
    """

    eps: float | None = 0.1
    objective: str = "robustness"
    time_limit: float = 120.0  # seconds per sample
    tightening: str = "lp"
    perturbation: str = "linf"
    norm: str = "linf"  # min_distortion: linf | l1
    targets: tuple[int, ...] | None = None  # None: untargeted
    blur_kernel_size: int = 3
    pgd_steps: int = 40
    pgd_restarts: int = 2
    tightening_time_limit: float = 1.0  # seconds per LP / MIP bound solve
    solver: SolverOptions | str = field(default_factory=SolverOptions)  # or its name: highs | scip | gurobi
    # float64 by default: the MILP takes these bounds as proof margins, and float32's rounding is
    # only checked (FLOAT32_SLACK) on small random networks, not bounded for every network size.
    crown_dtype: torch.dtype = torch.float64
    method: str = "milp"
    bab: BabOptions = field(default_factory=BabOptions)
    bab_share: float = 0.5  # bab-milp: the fraction of time_limit branch and bound may use

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {OBJECTIVES}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {NORMS}")
        if self.perturbation not in FAMILIES:
            raise ValueError(f"unknown perturbation {self.perturbation!r}; choose one of {FAMILIES}")
        if not self.time_limit > 0 or not self.tightening_time_limit > 0:
            raise ValueError(
                f"time_limit ({self.time_limit}) and tightening_time_limit ({self.tightening_time_limit}) "
                "must be positive seconds"
            )
        if self.pgd_steps < 0 or self.pgd_restarts < 0:
            raise ValueError(
                f"pgd_steps={self.pgd_steps}, pgd_restarts={self.pgd_restarts} (verify.py: attack.steps, "
                "attack.restarts) must be >= 0 (0 steps: no attack)"
            )
        if self.crown_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"crown_dtype must be torch.float32 or torch.float64, got {self.crown_dtype}")
        check_level(self.tightening)
        if self.method not in METHODS:
            raise ValueError(f"unknown verification method {self.method!r}; choose one of {METHODS}")
        if self.method != "milp" and (self.objective != "robustness" or self.perturbation == "blur"):
            raise ValueError(
                f"method={self.method} decides robustness over box sets (perturbation linf or unrestricted); "
                f"use method=milp for objective={self.objective}, perturbation={self.perturbation}"
            )
        if not 0 < self.bab_share <= 1:
            raise ValueError(f"bab_share={self.bab_share}: use a fraction of the time limit in (0, 1]")
        if isinstance(self.solver, str):
            object.__setattr__(self, "solver", SolverOptions(name=self.solver))
        if self.targets is not None:
            object.__setattr__(self, "targets", tuple(int(t) for t in self.targets))

"""Exact verification of ReLU networks by mixed-integer programming on HiGHS (after MIPVerify.jl).

from certtrain.verify import VerifyOptions, verify
r = verify(model, x, y, VerifyOptions(eps=0.1, objective="robustness", time_limit=120))
r.status  # robust | adversarial | misclassified | timeout | unresolved
"""

from certtrain.verify.api import OBJECTIVES, verify
from certtrain.verify.encoding import SolverOptions
from certtrain.verify.network import UnsupportedNetworkError
from certtrain.verify.options import VerifyOptions
from certtrain.verify.perturbations import FAMILIES
from certtrain.verify.result import RESOLVED, STATUSES, VerificationResult
from certtrain.verify.tightening import LEVELS

__all__ = [
    "FAMILIES",
    "LEVELS",
    "OBJECTIVES",
    "RESOLVED",
    "STATUSES",
    "SolverOptions",
    "UnsupportedNetworkError",
    "VerificationResult",
    "VerifyOptions",
    "verify",
]

"""The engine reproduces auto_LiRPA 0.7.1's bounds stored in ../shared/fixtures/bounds.

The fixtures were made with auto_LiRPA's default relaxations (see ../shared/fixtures/README.md);
to regenerate them, run auto_LiRPA 0.7.1 on each file's `spec`, `state` and box.
"""

from __future__ import annotations

import pytest
import torch

from certtrain.bounds import compute_bounds, margin_spec
from tests.bounds_nets import from_spec
from tests.conftest import shared_path

FIXTURES = ["mlp3_mnist_eps0.02", "wk17a_mnist_eps0.1", "wk17a_mnist_eps0.3", "cnnbn_cifar_eps2_255"]
RTOL = ATOL = 1e-4


def load(name):
    data = torch.load(shared_path("fixtures", "bounds", f"{name}.pt"), weights_only=True)
    model = from_spec(data["spec"])
    model.load_state_dict(data["state"])
    return model.eval(), data


def crown_marks(name):
    # CROWN bounds every intermediate neuron by a backward pass: seconds to minutes on 2 cores.
    return [pytest.mark.slow] if name != "mlp3_mnist_eps0.02" else []


CASES = [
    pytest.param(name, method, key, id=f"{name}-{method}", marks=crown_marks(name) if method == "crown" else [])
    for name in FIXTURES
    for method, key in [("ibp", "IBP"), ("crown-ibp", "CROWN-IBP"), ("crown", "CROWN")]
]


@pytest.mark.parametrize("name,method,key", CASES)
def test_margin_bounds_match_auto_lirpa(name, method, key):
    model, data = load(name)
    with torch.no_grad():
        lower, upper = compute_bounds(model, data["x_L"], data["x_U"], C=data["C"], method=method)
    torch.testing.assert_close(lower, data[f"lb/{key}"], rtol=RTOL, atol=ATOL)
    assert (upper >= lower).all()


@pytest.mark.parametrize(
    "name,method,key",
    [
        pytest.param(n, m, k, id=f"{n}-{m}", marks=crown_marks(n) if m == "crown" else [])
        for n in FIXTURES
        for m, k in [("ibp", "IBP"), ("crown", "CROWN")]
    ],
)
def test_logit_bounds_match_auto_lirpa(name, method, key):
    model, data = load(name)
    with torch.no_grad():
        lower, upper = compute_bounds(model, data["x_L"], data["x_U"], method=method)
    torch.testing.assert_close(lower, data[f"logit_lb/{key}"], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(upper, data[f"logit_ub/{key}"], rtol=RTOL, atol=ATOL)


def test_margin_spec_matches_fixture_convention():
    _, data = load("mlp3_mnist_eps0.02")
    torch.testing.assert_close(margin_spec(data["y"], 10), data["C"].float())

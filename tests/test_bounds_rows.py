"""certtrain.bounds.backward.Rows: bounding each sample's own unstable neurons gives the numbers
bounding their union does, and the choice between the two follows the counts."""

from __future__ import annotations

import pytest
import torch

from certtrain.bounds import alpha as alpha_module
from certtrain.bounds import backward, lower_bounds, margin_spec
from certtrain.bounds.graph import build_ops
from tests.bounds_nets import KINDS, init_random, random_conv_net


def _shared(lower, upper):
    return backward.Rows(((lower < 0) & (upper > 0)).any(dim=0).nonzero().flatten())


def test_unstable_rows_are_per_sample_where_the_samples_differ_and_shared_where_alike():
    lower = torch.tensor([[-1.0, -1.0, 1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0, -1.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    upper = torch.ones_like(lower)
    rows = backward.unstable_rows(lower, upper)  # union 5, largest count 3: shared
    assert not rows.per_sample and rows.index.tolist() == [0, 1, 2, 3, 4]
    lower = torch.tensor([[-1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, 1.0], [1.0, 1.0, -1.0, 1.0]])
    rows = backward.unstable_rows(lower, torch.ones_like(lower))  # union 3, largest 1: per sample
    assert rows.per_sample and rows.index.tolist() == [[0], [1], [2]] and rows.valid.all()
    spec = rows.spec(0, 1, 4, torch.float32, -1.0)
    assert spec.shape == (3, 1, 4) and spec.sum().item() == -3 and spec[1, 0, 1] == -1
    written = rows.write(lower, torch.full((3, 1), 7.0))
    assert written.diagonal().tolist() == [7.0, 7.0, 7.0] and (written.sum() - 7 * 3).item() == 9
    # a sample without unstable neurons gets a padding row that is never written
    lower = torch.tensor([[-1.0, -1.0, 1.0, 1.0], [1.0, 1.0, -1.0, -1.0], [1.0, 1.0, 1.0, 1.0]])
    rows = backward.unstable_rows(lower, torch.ones_like(lower))
    assert rows.per_sample and not rows.valid[2].any()
    assert torch.equal(rows.write(lower, torch.zeros(3, 2))[2], lower[2])


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "groupsort"])
@pytest.mark.parametrize("method", ["crown", "alpha-crown", "alpha-crown-full"])
def test_per_sample_rows_are_sound_and_never_tighter_than_the_union(kind, method, monkeypatch):
    """Per sample, a neuron the sample leaves stable keeps its interval bounds (the union's pass
    tightens it too, which can tighten a later layer's interval reference), so the per-sample
    bounds contain the union's; both contain the network's values."""
    gen = torch.Generator().manual_seed(3)
    model, shape = random_conv_net(kind, gen)
    init_random(model, gen)
    model.eval()
    center = torch.rand(16, *shape, generator=gen)  # small boxes of distinct inputs: few unstable neurons each
    x_L, x_U = center - 0.01, center + 0.01
    ops, _, out_shape = build_ops(model, None, center)
    C = margin_spec(model(center).argmax(1), out_shape[0])
    chosen = []

    def spy(lower, upper):
        rows = real(lower, upper)
        chosen.append(rows.per_sample)
        return rows

    real = backward.unstable_rows
    monkeypatch.setattr(backward, "unstable_rows", spy)
    monkeypatch.setattr(alpha_module, "unstable_rows", spy)
    with torch.no_grad():
        # only_unstable=True is what alpha-CROWN and branch and bound run (refine_unstable)
        per_sample = backward.crown_intermediate_pass(ops, x_L, x_U, only_unstable=True)
        per_sample_lower = lower_bounds(model, x_L, x_U, C, method=method)
    assert any(chosen), "no layer took per-sample rows: the comparison would test nothing"
    monkeypatch.setattr(backward, "unstable_rows", _shared)
    monkeypatch.setattr(alpha_module, "unstable_rows", _shared)
    with torch.no_grad():
        shared = backward.crown_intermediate_pass(ops, x_L, x_U, only_unstable=True)
        shared_lower = lower_bounds(model, x_L, x_U, C, method=method)
    points = x_L + (x_U - x_L) * torch.rand(64, *x_L.shape, generator=gen)
    with torch.no_grad():
        values = torch.stack([point for point in points])  # (64, B, *shape): the inputs of ops[0]
        for index, ((p_lo, p_up), (s_lo, s_up)) in enumerate(zip(per_sample, shared)):
            assert (p_lo <= s_lo + 1e-5).all() and (p_up >= s_up - 1e-5).all(), index
            assert (values >= s_lo - 1e-5).all() and (values <= s_up + 1e-5).all(), index
            if index < len(ops):
                values = torch.stack([ops[index].forward(v) for v in values])
        margins = torch.einsum("bsk,nbk->nbs", C, values.flatten(2))
    assert (margins >= per_sample_lower - 1e-5).all()
    if method == "crown":  # plain CROWN bounds every neuron: no rows chosen, the same numbers
        torch.testing.assert_close(per_sample_lower, shared_lower)
    else:  # alpha-CROWN's optimisation may land either side by a little; never far
        assert (per_sample_lower <= shared_lower + 1e-3).all()

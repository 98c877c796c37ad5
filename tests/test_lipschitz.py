"""LipschitzLinear normalisation, the Lipschitz bound on random pairs, GroupSort properties."""

import pytest
import torch
from torch import nn

from certtrain import layers
from certtrain.lipschitz import (
    GroupSort,
    LipschitzLinear,
    attach_projection,
    lipschitz_bound,
    normalize_weight,
    operator_norm,
)
from certtrain.lipschitz.zoo import lipschitz_mlp, lipschitz_stack

HAND = torch.tensor([[3.0, -1.0], [1.0, 1.0]])  # column sums 4, 2; row sums 4, 2; largest entry 3

# (kind, vectorwise, max_norm, expected): worked out by hand from eq. 2.7 / 2.8.
HAND_CASES = [
    ("one", True, 2.0, [[1.5, -1.0], [0.5, 1.0]]),  # column 0 scaled by 4/2, column 1 inside the ball
    ("one", False, 2.0, [[1.5, -0.5], [0.5, 0.5]]),  # whole matrix scaled by 4/2
    ("inf", True, 2.0, [[1.5, -0.5], [1.0, 1.0]]),  # row 0 scaled by 4/2
    ("inf", False, 1.0, [[0.75, -0.25], [0.25, 0.25]]),  # whole matrix scaled by 4
    ("one-inf", True, 2.0, [[2.0, -1.0], [1.0, 1.0]]),  # only the entry 3 exceeds 2
    ("one-inf", False, 1.5, [[1.5, -0.5], [0.5, 0.5]]),  # whole matrix scaled by 3/1.5
    ("one", True, 10.0, [[3.0, -1.0], [1.0, 1.0]]),  # inside the ball: unchanged
]


@pytest.mark.parametrize("kind, vectorwise, max_norm, expected", HAND_CASES)
def test_normalisation_matches_hand_computed_matrices(kind, vectorwise, max_norm, expected):
    torch.testing.assert_close(normalize_weight(HAND, kind, max_norm, vectorwise), torch.tensor(expected))


# eq. 2.7's first form, b W / max(1, ||W||): normalised to norm 1 when outside, then always times b.
SCALE_CASES = [
    ("one", False, 2.0, [[1.5, -0.5], [0.5, 0.5]]),  # ||W|| = 4: W / 4 * 2
    ("one", True, 10.0, [[7.5, -5.0], [2.5, 5.0]]),  # columns / (4, 2), then x 10: unlike clip, not unchanged
    ("inf", False, 0.5, [[0.375, -0.125], [0.125, 0.125]]),
]


@pytest.mark.parametrize("kind, vectorwise, max_norm, expected", SCALE_CASES)
def test_scale_budget_matches_hand_computed_matrices(kind, vectorwise, max_norm, expected):
    result = normalize_weight(HAND, kind, max_norm, vectorwise, budget="scale")
    torch.testing.assert_close(result, torch.tensor(expected))
    assert operator_norm(result, kind) <= max_norm + 1e-6


def test_small_weights_stay_small_with_clip_and_grow_with_scale():
    small = HAND / 100
    torch.testing.assert_close(normalize_weight(small, "inf", 1.0, True, budget="clip"), small)
    assert operator_norm(normalize_weight(small, "inf", 3.0, False, budget="scale"), "inf") == pytest.approx(0.12)
    with pytest.raises(ValueError, match="budget"):
        normalize_weight(small, "inf", 1.0, True, budget="squash")


def test_full_sort_sorts_the_whole_layer():
    torch.manual_seed(0)
    model = lipschitz_mlp(in_channels=1, in_size=4, num_classes=3, width=12, group_size="full")
    sorts = [m for m in model if isinstance(m, GroupSort)]
    assert sorts and all(m.group_size == 12 for m in sorts)
    hidden = model[:4](torch.rand(5, 1, 4, 4))
    assert (hidden.diff(dim=1) >= 0).all()
    with pytest.raises(ValueError, match="must divide the width"):
        lipschitz_mlp(in_channels=1, in_size=4, num_classes=3, width=12, group_size=5)


@pytest.mark.parametrize("mode", ["direct", "project"])
def test_layer_weight_attribute_is_the_normalised_weight(mode):
    layer = LipschitzLinear(2, 2, kind="one", max_norm=2.0, mode=mode)
    with torch.no_grad():
        if mode == "direct":
            layer.parametrizations.weight.original.copy_(HAND)
        else:
            layer.weight.copy_(HAND)
            layer.project_()
    assert isinstance(layer, nn.Linear)
    torch.testing.assert_close(layer.weight, torch.tensor([[1.5, -1.0], [0.5, 1.0]]))


def test_operator_norms_of_a_hand_matrix():
    assert operator_norm(HAND, "one") == 4 and operator_norm(HAND, "inf") == 4
    assert operator_norm(HAND, "one-inf") == 3


def _io_norms(kind):
    p_in = 1 if kind in ("one", "one-inf") else float("inf")
    p_out = 1 if kind == "one" else float("inf")
    return p_in, p_out


def _stretch(model, mode, steps=30):
    """A few large Adam steps towards a steep target, so the norm constraints actually bind."""
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    if mode == "project":
        attach_projection(opt, model)
    x = torch.randn(64, 6)
    target = 50 * x[:, :3].sin()
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - target) ** 2).mean().backward()
        opt.step()


@pytest.mark.parametrize("mode", ["direct", "project"])
@pytest.mark.parametrize("kind", ["one", "inf", "one-inf"])
@pytest.mark.parametrize("vectorwise", [True, False])
def test_bound_holds_on_random_pairs(kind, mode, vectorwise):
    torch.manual_seed(0)
    first = "one-inf" if kind == "one-inf" else kind
    later = "inf" if kind == "one-inf" else kind
    model = nn.Sequential(
        *lipschitz_stack([6, 16, 16, 3], later, 2.0, first_kind=first, vectorwise=vectorwise, mode=mode)
    )
    _stretch(model, mode)
    bound = lipschitz_bound(model, kind)
    assert bound <= 2.0 * (1 + 1e-5)
    p_in, p_out = _io_norms(kind)
    x, x2 = torch.randn(4000, 6) * 3, torch.randn(4000, 6) * 3
    x2[:2000] = x[:2000] + 1e-2 * torch.randn(2000, 6)  # nearby pairs probe the local slope
    with torch.no_grad():
        change = (model(x) - model(x2)).norm(p=p_out, dim=1)
    allowed = bound * (x - x2).norm(p=p_in, dim=1)
    assert (change <= allowed * (1 + 1e-4) + 1e-6).all()
    # the constraint is not vacuous: the trained net uses a good part of its budget somewhere
    assert (change / allowed).max() > 0.2


def test_project_mode_projects_after_each_step():
    torch.manual_seed(0)
    layer = LipschitzLinear(5, 4, kind="inf", max_norm=0.5, mode="project")
    opt = torch.optim.SGD(layer.parameters(), lr=10.0)
    attach_projection(opt, layer)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(8, 5)).pow(2).sum().mul(-1).backward()  # push the weights to grow
        opt.step()
        assert operator_norm(layer.weight, "inf") <= 0.5 * (1 + 1e-6)


def test_freeze_keeps_the_function_and_saves_the_normalised_weight():
    torch.manual_seed(0)
    layer = LipschitzLinear(5, 4, kind="one", max_norm=0.3)
    x = torch.randn(10, 5)
    before = layer(x)
    layer.freeze()
    torch.testing.assert_close(layer(x), before)
    state = layer.state_dict()
    assert set(state) == {"weight", "bias"} and operator_norm(state["weight"], "one") <= 0.3 * (1 + 1e-6)


def test_frozen_model_loads_into_a_plain_mlp():
    from certtrain.lipschitz import freeze_lipschitz_

    torch.manual_seed(0)
    model = lipschitz_mlp(in_channels=1, in_size=4, num_classes=3, width=8, depth=3)
    x = torch.rand(5, 1, 4, 4)
    before = model(x)
    state = freeze_lipschitz_(model).state_dict()
    plain = nn.Sequential(
        model[0], nn.Flatten(), nn.Linear(16, 8), GroupSort(2), nn.Linear(8, 8), GroupSort(2), nn.Linear(8, 3)
    )
    plain.load_state_dict(state)
    torch.testing.assert_close(plain(x), before)


def test_direct_mode_state_dict_round_trip():
    torch.manual_seed(0)
    model = lipschitz_mlp(in_channels=1, in_size=4, num_classes=3, width=8, depth=3)
    clone = lipschitz_mlp(in_channels=1, in_size=4, num_classes=3, width=8, depth=3)
    clone.load_state_dict(model.state_dict())
    x = torch.rand(5, 1, 4, 4)
    torch.testing.assert_close(clone(x), model(x))


def test_lipschitz_bound_of_plain_layers_and_normalize():
    linear = nn.Linear(2, 2)
    with torch.no_grad():
        linear.weight.copy_(HAND)
    model = nn.Sequential(layers.Normalize([0.5, 0.5], [0.25, 0.5]), linear, nn.ReLU(), linear)
    assert lipschitz_bound(model, "inf") == pytest.approx(4.0 * 4 * 4)
    assert lipschitz_bound(model, "one-inf") == pytest.approx(4.0 * 3 * 4)  # switch at the first Linear


def test_lipschitz_bound_names_an_unsupported_layer():
    with pytest.raises(ValueError, match="Conv2d"):
        lipschitz_bound(nn.Sequential(nn.Conv2d(1, 1, 3)), "inf")


def test_bad_arguments_name_the_choices():
    with pytest.raises(ValueError, match="one-inf"):
        LipschitzLinear(2, 2, kind="two")
    with pytest.raises(ValueError, match="project"):
        LipschitzLinear(2, 2, mode="clip")


# ---- GroupSort -------------------------------------------------------------------------------


def test_groupsort_is_the_shared_layer():
    assert GroupSort is layers.GroupSort  # the bound engine recognises this class


@pytest.mark.parametrize("group_size", [2, 4, 8])
def test_groupsort_sorts_each_group(group_size):
    x = torch.randn(16, 8)
    out = GroupSort(group_size)(x)
    groups_in = x.reshape(16, -1, group_size)
    groups_out = out.reshape(16, -1, group_size)
    assert (groups_out[..., 1:] >= groups_out[..., :-1]).all()
    torch.testing.assert_close(groups_out, groups_in.sort(dim=2).values)


def test_groupsort_maxmin_and_full_sort():
    x = torch.tensor([[3.0, 1.0, -2.0, 5.0]])
    torch.testing.assert_close(GroupSort(2)(x), torch.tensor([[1.0, 3.0, -2.0, 5.0]]))
    torch.testing.assert_close(GroupSort(4)(x), torch.tensor([[-2.0, 1.0, 3.0, 5.0]]))


@pytest.mark.parametrize("p", [1, 2, float("inf")])
def test_groupsort_is_one_lipschitz(p):
    torch.manual_seed(0)
    layer = GroupSort(4)
    x, y = torch.randn(2000, 12), torch.randn(2000, 12)
    assert ((layer(x) - layer(y)).norm(p=p, dim=1) <= (x - y).norm(p=p, dim=1) + 1e-6).all()


def test_groupsort_preserves_gradient_norm():
    torch.manual_seed(0)
    x = torch.randn(32, 12, requires_grad=True)
    v = torch.randn(32, 12)
    (grad,) = torch.autograd.grad((GroupSort(3)(x) * v).sum(), x)
    torch.testing.assert_close(grad.norm(dim=1), v.norm(dim=1))


def test_groupsort_rejects_indivisible_width():
    with pytest.raises(ValueError, match="multiple of the group size"):
        GroupSort(3)(torch.randn(2, 8))

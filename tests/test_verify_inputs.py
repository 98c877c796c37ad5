"""Bad input gets a clear message that names the fix."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from certtrain.models import build_model
from certtrain.verify import UnsupportedNetworkError, VerifyOptions, verify
from certtrain.verify_app.config import VerifyConfig
from certtrain.verify_app.loading import WeightsError, load_network
from certtrain.verify_app.runner import check_config


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()


@pytest.mark.parametrize("eps", [-0.1, 1.5])
def test_eps_outside_the_pixel_range(eps):
    with pytest.raises(ValueError, match=r"eps must lie in \[0, 1\]"):
        verify(small_net(), torch.rand(1, 4), 0, VerifyOptions(eps=eps))
    with pytest.raises(ValueError, match="eps="):
        check_config(OmegaConf.structured(VerifyConfig(eps=eps)))


def test_input_outside_the_pixel_range_or_without_batch_dim():
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
        verify(small_net(), torch.full((1, 4), 2.0), 0, VerifyOptions(eps=0.1))
    with pytest.raises(ValueError, match="batch dimension"):
        verify(small_net(), torch.rand(4), 0, VerifyOptions(eps=0.1))


def test_unknown_choices_are_named():
    x = torch.rand(1, 4)
    for kwargs, match in [
        ({"objective": "fastest"}, "objective"),
        ({"tightening": "magic"}, "tightening"),
        ({"perturbation": "rotate"}, "perturbation"),
        ({"norm": "l2"}, "norm"),
        ({"targets": [7]}, "targets"),
        ({"time_limit": 0}, "time_limit"),
    ]:
        with pytest.raises(ValueError, match=match):
            verify(small_net(), x, int(small_net()(x).argmax()), VerifyOptions(eps=0.1, **kwargs))


def test_unsupported_layer_is_named():
    net = nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 3)).eval()
    x = torch.rand(1, 4)
    with pytest.raises(UnsupportedNetworkError, match="Sigmoid"):
        verify(net, x, int(net(x).argmax()), VerifyOptions(eps=0.1))


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    path = tmp_path / "mlp.pth"
    torch.save(build_model("mlp", "mnist").state_dict(), path)
    with pytest.raises(WeightsError, match="do not fit model=wk17a"):
        load_network("wk17a", str(path))
    with pytest.raises(WeightsError, match="not found"):
        load_network("wk17a", str(tmp_path / "missing.pth"))


def test_train_checkpoints_load_and_name_their_model(tmp_path):
    net = build_model("wk17a", "mnist")
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": net.state_dict(), "arch": {"model": "wk17a", "dataset": "mnist"}}, path)
    loaded = load_network("wk17a", str(path))
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), net.eval()(x))
    with pytest.raises(WeightsError, match="pass model=wk17a"):
        load_network("dm_small", str(path))


def test_solver_failure_reports_unresolved_not_robust(monkeypatch):
    """A HiGHS error must never be read as a proof."""
    from certtrain.verify import encoding

    def broken(self, *args, **kwargs):
        return encoding.Solution("error", None, None, None)

    monkeypatch.setattr(encoding.Milp, "minimize", broken)
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.rand(1, 4)
    r = verify(net, x, int(net(x).argmax()), VerifyOptions(eps=0.5, pgd_steps=0, tightening="crown"))
    assert r.status == "unresolved"


def test_a_checkpoint_is_rebuilt_with_the_model_options_it_was_trained_with(tmp_path):
    trained = build_model("mlp", hidden=(8, 6))
    path = tmp_path / "checkpoint.pt"
    arch = {"model": "mlp", "dataset": "mnist", "options": {"hidden": [8, 6]}}
    torch.save({"model": trained.state_dict(), "arch": arch}, path)
    network = load_network("mlp", str(path))
    assert [m.out_features for m in network if isinstance(m, torch.nn.Linear)] == [8, 6, 10]
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(network(x), trained.eval()(x))
    torch.save(trained.state_dict(), path)  # a bare state_dict does not say its options
    with pytest.raises(WeightsError, match="do not fit model=mlp"):
        load_network("mlp", str(path))

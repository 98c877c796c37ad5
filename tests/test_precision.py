"""Certificates are decided in strict float32: every torch call inside every certifier and inside
verify() runs with TF32 and reduced-precision reductions off, and the user's settings come back."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from certtrain.evaluate import CERTIFIERS
from certtrain.models import build_model
from certtrain.precision import allow_tf32, is_strict, strict_fp32
from certtrain.verify import VerifyOptions, verify


class RecordMode(TorchFunctionMode):
    """Records, for every torch function called, whether the strict mode was on."""

    def __init__(self):
        super().__init__()
        self.modes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.modes.append(is_strict())
        return func(*args, **(kwargs or {}))


@pytest.fixture
def user_allows_tf32():
    with allow_tf32():
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = True
        assert not is_strict()
        yield
        assert not is_strict() and torch.backends.cudnn.allow_tf32  # restored after each certifier


def certify_recorded(fn, *args):
    recorder = RecordMode()
    with recorder:
        result = fn(*args)
    assert recorder.modes and all(recorder.modes), f"{sum(not m for m in recorder.modes)} calls outside strict fp32"
    return result


@pytest.mark.parametrize("name", sorted(CERTIFIERS))
def test_every_certifier_runs_in_strict_fp32(name, user_allows_tf32):
    model = build_model("lipschitz_mlp" if name == "lipschitz" else "dm_small", "mnist").eval()
    x, y = torch.rand(3, 1, 28, 28), torch.randint(0, 10, (3,))
    certify_recorded(CERTIFIERS[name], model, x, y, 0.01, 10)


def test_verify_runs_in_strict_fp32(user_allows_tf32):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    result = certify_recorded(verify, model, torch.rand(1, 1, 2, 2), 0, VerifyOptions(eps=0.05))
    assert result.status in ("robust", "adversarial", "misclassified", "timeout")


def test_strict_mode_restores_settings_after_an_error():
    with allow_tf32():
        with pytest.raises(RuntimeError), strict_fp32():
            assert is_strict()
            raise RuntimeError("inside")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == "highest"


def test_training_tf32_is_opt_in():
    from certtrain.config import TrainConfig

    assert TrainConfig().train_tf32 is False
    with allow_tf32(False):
        assert torch.get_float32_matmul_precision() == "highest"

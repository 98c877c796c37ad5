"""eps / kappa / beta ramps and learning-rate steps."""

from __future__ import annotations

import pytest

from certtrain.schedules import RampSchedule, ramp_fraction, step_lr


def test_warmup_trains_plainly_then_ramps_to_the_final_values():
    s = RampSchedule(
        eps_train=0.4,
        steps_per_epoch=10,
        warmup_epochs=2,
        ramp_epochs=4,
        kappa_final=0.5,
        beta_start=1.0,
        beta_final=0.0,
    )
    for step in range(20):
        assert (s.eps(step), s.kappa(step), s.beta(step)) == (0.0, 1.0, 1.0)
    assert 0 < s.eps(20) < 0.4
    assert s.eps(59) == pytest.approx(0.4)
    assert s.kappa(59) == pytest.approx(0.5) and s.beta(59) == pytest.approx(0.0)
    assert s.eps(500) == pytest.approx(0.4) and s.kappa(500) == pytest.approx(0.5)


def test_linear_ramp_is_linear_and_monotone():
    s = RampSchedule(eps_train=1.0, steps_per_epoch=100, warmup_epochs=0, ramp_epochs=1)
    values = [s.eps(step) for step in range(100)]
    assert values == sorted(values)
    assert s.eps(49) == pytest.approx(0.5)
    kappas = [s.kappa(step) for step in range(100)]
    assert kappas == sorted(kappas, reverse=True)


def test_smoothed_ramp_is_polynomial_then_linear_and_continuous():
    assert ramp_fraction(0.0, "smoothed") == 0.0
    assert ramp_fraction(1.0, "smoothed") == pytest.approx(1.0)
    # slower than linear at the start (polynomial), continuous at the quarter mark
    assert ramp_fraction(0.1, "smoothed") < 0.1
    left, right = ramp_fraction(0.25 - 1e-9, "smoothed"), ramp_fraction(0.25 + 1e-9, "smoothed")
    assert right - left == pytest.approx(0.0, abs=1e-6)
    # linear after the quarter mark: equal increments
    a, b, c = (ramp_fraction(p, "smoothed") for p in (0.5, 0.7, 0.9))
    assert b - a == pytest.approx(c - b)
    values = [ramp_fraction(i / 100, "smoothed") for i in range(101)]
    assert values == sorted(values)


def test_unknown_ramp_shape_is_rejected():
    with pytest.raises(ValueError, match="linear or smoothed"):
        ramp_fraction(0.5, "cosine")


def test_zero_length_ramp_jumps_to_final_values():
    s = RampSchedule(eps_train=0.3, steps_per_epoch=5, warmup_epochs=1, ramp_epochs=0, kappa_final=0.0)
    assert s.eps(4) == 0.0 and s.eps(5) == pytest.approx(0.3) and s.kappa(5) == 0.0


def test_lr_steps_at_milestones():
    lrs = [step_lr(1e-3, epoch, [3, 5], 0.1) for epoch in range(7)]
    assert lrs[:3] == [1e-3] * 3
    assert lrs[3] == pytest.approx(1e-4) and lrs[4] == pytest.approx(1e-4)
    assert lrs[5] == pytest.approx(1e-5) and lrs[6] == pytest.approx(1e-5)

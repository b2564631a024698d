"""Tests for rigl.schedules: update windows, drop-fraction decay and polynomial sparsity."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rigl.schedules import DropFraction, UpdateSchedule, polynomial_sparsity

# ---------------------------------------------------------------------------------------------
# UpdateSchedule


def test_is_update_step_on_grid_between_begin_and_end():
    schedule = UpdateSchedule(update_freq=10, begin_step=5, end_step=50)
    updates = [t for t in range(0, 80) if schedule.is_update_step(t)]
    # 50 is the end step but 50 - 5 = 45 is not a multiple of 10.
    assert updates == [5, 15, 25, 35, 45]


def test_include_end_step_adds_off_grid_end():
    schedule = UpdateSchedule(update_freq=10, begin_step=5, end_step=50, include_end_step=True)
    assert [t for t in range(0, 80) if schedule.is_update_step(t)] == [5, 15, 25, 35, 45, 50]


def test_end_step_on_grid_is_an_update_step():
    schedule = UpdateSchedule(update_freq=25, begin_step=0, end_step=100)
    assert [t for t in range(0, 200) if schedule.is_update_step(t)] == [0, 25, 50, 75, 100]


@pytest.mark.parametrize(
    "step, expected",
    [(0, None), (4, None), (5, 5), (14, 5), (15, 15), (44, 35), (45, 45), (50, 45), (1000, 45)],
)
def test_last_update_step(step, expected):
    schedule = UpdateSchedule(update_freq=10, begin_step=5, end_step=50)
    assert schedule.last_update_step(step) == expected


@pytest.mark.parametrize("step, expected", [(49, 45), (50, 50), (51, 50), (10**6, 50)])
def test_last_update_step_with_include_end_step(step, expected):
    schedule = UpdateSchedule(update_freq=10, begin_step=5, end_step=50, include_end_step=True)
    assert schedule.last_update_step(step) == expected


@settings(max_examples=200, deadline=None)
@given(
    freq=st.integers(1, 20),
    begin=st.integers(0, 50),
    length=st.integers(0, 100),
    include_end=st.booleans(),
    step=st.integers(-5, 250),
)
def test_last_update_step_is_latest_update_step_at_or_before(freq, begin, length, include_end,
                                                             step):
    schedule = UpdateSchedule(freq, begin, begin + length, include_end)
    brute = [t for t in range(0, step + 1) if schedule.is_update_step(t)]
    assert schedule.last_update_step(step) == (brute[-1] if brute else None)


def test_resolve_defaults_end_to_75_percent_of_training():
    schedule = UpdateSchedule(update_freq=10)
    assert schedule.end_step is None
    resolved = schedule.resolve(1000)
    assert resolved.end_step == 750
    assert resolved.update_freq == 10 and resolved.begin_step == 0
    assert UpdateSchedule(update_freq=10).resolve(301).end_step == 225  # int(225.75)


def test_resolve_keeps_explicit_end_and_respects_begin():
    assert UpdateSchedule(end_step=40).resolve(1000).end_step == 40
    assert UpdateSchedule(begin_step=900).resolve(1000).end_step == 900


def test_unresolved_schedule_names_end_step():
    schedule = UpdateSchedule(update_freq=10)
    with pytest.raises(ValueError, match="end_step"):
        schedule.is_update_step(0)
    with pytest.raises(ValueError, match="end_step"):
        schedule.last_update_step(0)


def test_resolve_rejects_bad_total_steps():
    with pytest.raises(ValueError, match="total_steps"):
        UpdateSchedule().resolve(0)


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"update_freq": 0}, "update_freq"),
        ({"update_freq": -3}, "update_freq"),
        ({"update_freq": 2.5}, "update_freq"),
        ({"update_freq": True}, "update_freq"),
        ({"begin_step": -1}, "begin_step"),
        ({"begin_step": 1.0}, "begin_step"),
        ({"end_step": -1}, "end_step"),
        ({"begin_step": 10, "end_step": 5}, "end_step"),
    ],
)
def test_update_schedule_validation_names_parameter(kwargs, param):
    with pytest.raises(ValueError, match=rf"\b{param}\b"):
        UpdateSchedule(**kwargs)


# ---------------------------------------------------------------------------------------------
# DropFraction


def test_constant_drop_fraction():
    f = DropFraction(0.3, "constant")
    assert [f(t, 100) for t in (0, 37, 100, 500)] == [0.3, 0.3, 0.3, 0.3]


def test_cosine_drop_fraction_hand_values():
    f = DropFraction(0.3, "cosine")
    assert f(0, 100) == pytest.approx(0.3, abs=1e-12)
    assert f(50, 100) == pytest.approx(0.15, abs=1e-12)
    assert f(25, 100) == pytest.approx(0.15 * (1 + math.sqrt(0.5)), abs=1e-12)
    assert f(100, 100) == pytest.approx(0.0, abs=1e-12)
    assert f(150, 100) == pytest.approx(0.0, abs=1e-12)  # after T_end: stays at 0


def test_cosine_is_the_default_decay():
    assert DropFraction(0.5)(50, 100) == pytest.approx(0.25)


def test_inverse_power_drop_fraction_hand_values():
    f = DropFraction(0.5, "inverse_power", power=2.0)
    assert f(0, 100) == pytest.approx(0.5)
    assert f(50, 100) == pytest.approx(0.125)
    assert f(90, 100) == pytest.approx(0.005)
    assert f(100, 100) == pytest.approx(0.0)
    linear = DropFraction(0.4, "inverse_power", power=1.0)
    assert linear(25, 100) == pytest.approx(0.3)


@settings(max_examples=200, deadline=None)
@given(
    alpha=st.floats(0, 1),
    end=st.integers(1, 10_000),
    frac=st.floats(0, 1),
    power=st.floats(0, 5),
)
def test_drop_fraction_formulas(alpha, end, frac, power):
    t = int(frac * end)
    cosine = DropFraction(alpha, "cosine")(t, end)
    assert cosine == pytest.approx(alpha / 2 * (1 + math.cos(math.pi * t / end)), abs=1e-12)
    inv = DropFraction(alpha, "inverse_power", power)(t, end)
    assert inv == pytest.approx(alpha * (1 - t / end) ** power, abs=1e-12)
    for value in (cosine, inv):
        assert 0.0 <= value <= alpha + 1e-15
    # Both decays are non-increasing in t.
    assert DropFraction(alpha, "cosine")(min(t + 1, end), end) <= cosine + 1e-15


@pytest.mark.parametrize(
    "args, param",
    [
        ((-0.1,), "drop_fraction"),
        ((1.5,), "drop_fraction"),
        ((float("nan"),), "drop_fraction"),
        ((0.3, "linear"), "drop_fraction_decay"),
        ((0.3, "inverse_power", -1.0), "decay_power"),
    ],
)
def test_drop_fraction_validation_names_parameter(args, param):
    with pytest.raises(ValueError, match=rf"\b{param}\b"):
        DropFraction(*args)


def test_drop_fraction_accepts_bounds():
    assert DropFraction(0.0, "constant")(3, 10) == 0.0
    assert DropFraction(1.0, "constant")(3, 10) == 1.0


# ---------------------------------------------------------------------------------------------
# polynomial_sparsity


@pytest.mark.parametrize(
    "step, expected",
    [(-5, 0.0), (0, 0.0), (50, 0.7), (75, 0.8 - 0.8 / 64), (100, 0.8), (250, 0.8)],
)
def test_polynomial_sparsity_cubic(step, expected):
    assert polynomial_sparsity(step, 0.8, 0.0, 0, 100) == pytest.approx(expected, abs=1e-12)


def test_polynomial_sparsity_with_offset_initial_and_power():
    # s = 0.9 + (0.5 - 0.9) * (1 - 5/20)^2 = 0.9 - 0.4 * 0.5625 = 0.675
    assert polynomial_sparsity(15, 0.9, 0.5, 10, 30, power=2.0) == pytest.approx(0.675)
    assert polynomial_sparsity(10, 0.9, 0.5, 10, 30) == 0.5
    assert polynomial_sparsity(30, 0.9, 0.5, 10, 30) == 0.9
    assert polynomial_sparsity(25, 0.8, 0.0, 0, 100, power=1.0) == pytest.approx(0.2)


@settings(max_examples=200, deadline=None)
@given(final=st.floats(0, 0.99), begin=st.integers(0, 100), length=st.integers(1, 1000))
def test_polynomial_sparsity_monotone_between_initial_and_final(final, begin, length):
    end = begin + length
    values = [polynomial_sparsity(t, final, 0.0, begin, end) for t in range(begin - 2, end + 3)]
    assert all(b >= a - 1e-15 for a, b in zip(values, values[1:]))
    assert values[0] == 0.0 and values[-1] == final

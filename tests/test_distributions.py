"""Tests for rigl.distributions (per-layer sparsity distributions)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rigl.distributions import (
    DISTRIBUTIONS,
    layer_sparsities,
    num_zeros,
    total_sparsity,
    validate_sparsity,
)


def _sizes(shapes):
    return {name: math.prod(shape) for name, shape in shapes.items()}


def _uniform_nonzeros(shapes, sparsity):
    return sum(n - num_zeros(sparsity, n) for n in _sizes(shapes).values())


def _raw(shape, distribution, power=1.0):
    dims = shape[-2:] if distribution == "er" else shape
    return (sum(dims) / math.prod(dims)) ** (power if distribution == "erk" else 1.0)


# ---------------------------------------------------------------------------------------------
# num_zeros / validate_sparsity / total_sparsity


@pytest.mark.parametrize(
    "sparsity, size, expected",
    [(0.29, 100, 29), (0.7, 10, 7), (0.57, 100, 57), (0.5, 3, 1), (0.0, 7, 0), (0.99, 1, 0)],
)
def test_num_zeros_is_float_robust_floor(sparsity, size, expected):
    assert num_zeros(sparsity, size) == expected
    assert isinstance(num_zeros(sparsity, size), int)


@given(st.integers(1, 10**6).flatmap(lambda n: st.tuples(st.integers(0, n - 1), st.just(n))))
def test_num_zeros_exact_fractions(k_n):
    k, n = k_n
    assert num_zeros(k / n, n) == k


@pytest.mark.parametrize("value", [0, 0.0, 0.5, np.float32(0.25), np.float64(0.999)])
def test_validate_sparsity_accepts(value):
    assert validate_sparsity(value, "x") == pytest.approx(float(value))
    assert type(validate_sparsity(value, "x")) is float


@pytest.mark.parametrize("value", [1, 1.0, -0.1, float("nan"), float("inf"), True, "0.5", None])
def test_validate_sparsity_rejects(value):
    with pytest.raises(ValueError, match=re.escape("`my_param` must be a number in [0, 1)")):
        validate_sparsity(value, "my_param")


def test_total_sparsity():
    shapes = {"a": (10, 10), "b": (5, 2)}
    # a: floor(0.5 * 100) = 50 zeros, b: floor(0.25 * 10) = 2 zeros -> 52 / 110.
    assert total_sparsity(shapes, {"a": 0.5, "b": 0.25}) == pytest.approx(52 / 110)


# ---------------------------------------------------------------------------------------------
# uniform


def test_uniform_every_layer_gets_target_in_key_order():
    shapes = {"z": (3, 3, 3, 8), "a": (10, 4), "m": (7,)}
    result = layer_sparsities(shapes, 0.6)
    assert list(result) == ["z", "a", "m"]
    assert result == {"z": 0.6, "a": 0.6, "m": 0.6}


def test_uniform_with_custom():
    result = layer_sparsities({"a": (4, 4), "b": (4, 4)}, 0.9, "uniform", {"b": 0.0})
    assert result == {"a": 0.9, "b": 0.0}


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_zero_sparsity_is_all_dense_but_custom_applies(distribution):
    shapes = {"a": (4, 4), "b": (2, 3, 3, 8), "c": (5, 5)}
    result = layer_sparsities(shapes, 0.0, distribution, {"c": 0.3})
    assert result == {"a": 0.0, "b": 0.0, "c": 0.3}


# ---------------------------------------------------------------------------------------------
# er: known answers


@pytest.mark.parametrize(
    "shapes, sparsity, custom, expected",
    [
        ({"a": (80, 4), "b": (20, 20)}, 0.8, None, {"a": 0.695161, "b": 0.883871}),
        ({"a": (8, 6), "b": (4, 3)}, 0.7, None, {"a": 0.736111, "b": 0.472222}),
        (
            {"first": (2, 4), "second": (2, 3), "third": (1, 1, 3)},
            0.4,
            {"third": 0.8},
            {"first": 0.386364, "second": 0.318182, "third": 0.8},
        ),
    ],
)
def test_er_known_answers(shapes, sparsity, custom, expected):
    result = layer_sparsities(shapes, sparsity, "er", custom)
    assert list(result) == list(shapes)
    assert result == pytest.approx(expected, abs=1e-6)


def test_er_uses_only_last_two_dims():
    # Both kernels have (cin, cout) = (2, 4): equal ER raw density, so equal sparsity even though
    # the spatial dims differ (ERK would treat them differently).
    shapes = {"k3": (3, 3, 2, 4), "k5": (5, 5, 2, 4)}
    result = layer_sparsities(shapes, 0.5, "er")
    assert result["k3"] == pytest.approx(result["k5"])
    assert layer_sparsities(shapes, 0.5, "erk")["k3"] < result["k5"]


def test_er_one_dim_shape_falls_back_to_erk_formula():
    shapes = {"v": (5,), "w": (4, 4)}
    assert layer_sparsities(shapes, 0.5, "er") == pytest.approx(
        layer_sparsities(shapes, 0.5, "erk")
    )


def test_er_ignores_erk_power_scale():
    shapes = {"a": (8, 6), "b": (4, 3)}
    assert layer_sparsities(shapes, 0.7, "er", erk_power_scale=0.0) == layer_sparsities(
        shapes, 0.7, "er"
    )


# ---------------------------------------------------------------------------------------------
# erk


def test_erk_hand_computed():
    # raw(a=(2, 2)) = 4/4 = 1, raw(b=(4, 4)) = 8/16 = 1/2.
    # Uniform nonzeros at 0.75: a: 4 - 3 = 1, b: 16 - 12 = 4 -> budget 5.
    # eps * (1 * 4 + 1/2 * 16) = 5 -> eps = 5/12; densities a: 5/12, b: 5/24 (both <= 1).
    result = layer_sparsities({"a": (2, 2), "b": (4, 4)}, 0.75, "erk")
    assert result == pytest.approx({"a": 1 - 5 / 12, "b": 1 - 5 / 24}, abs=1e-12)


def test_erk_hand_computed_conv_with_saturation():
    # conv (3, 3, 2, 4): raw = 12/72 = 1/6, N = 72; fc (8, 2): raw = 10/16 = 5/8, N = 16.
    # Budget at 0.5: 36 + 8 = 44; eps * (12 + 10) = 44 -> eps = 2 -> fc density 5/4 > 1.
    # fc goes dense: budget 44 - 16 = 28 = eps * 12 -> conv density 28/72 = 7/18.
    result = layer_sparsities({"conv": (3, 3, 2, 4), "fc": (8, 2)}, 0.5, "erk")
    assert result == pytest.approx({"conv": 11 / 18, "fc": 0.0}, abs=1e-12)


def test_erk_power_scale_zero_gives_equal_densities():
    shapes = {"a": (3, 3, 3, 16), "b": (3, 3, 16, 32), "c": (512, 10), "d": (7, 7)}
    result = layer_sparsities(shapes, 0.8, "erk", erk_power_scale=0)
    sizes = _sizes(shapes)
    density = _uniform_nonzeros(shapes, 0.8) / sum(sizes.values())
    assert [1 - s for s in result.values()] == pytest.approx([density] * 4, abs=1e-12)


def test_erk_power_scale_changes_spread():
    shapes = {"a": (3, 3, 3, 16), "b": (512, 10)}
    mild = layer_sparsities(shapes, 0.8, "erk", erk_power_scale=0.5)
    full = layer_sparsities(shapes, 0.8, "erk", erk_power_scale=1.0)
    # a has the larger raw density; a smaller exponent brings the densities closer together.
    assert abs(mild["a"] - mild["b"]) < abs(full["a"] - full["b"])


def test_erk_huge_power_scale_does_not_overflow():
    # base = 12/10 and 1.2 ** 5000 would overflow a float; normalising by the largest base
    # first makes both raw densities 1, hence both layers get the target sparsity.
    shapes = {"a": (1, 1, 10), "b": (1, 10, 1)}
    result = layer_sparsities(shapes, 0.5, "erk", erk_power_scale=5000)
    assert result == pytest.approx({"a": 0.5, "b": 0.5}, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# saturation


def test_saturation_ties_and_cascade():
    # raw: tiny1 = tiny2 = 4/4 = 1, mid (8, 16) = 24/128 = 3/16, big (32, 32) = 64/1024 = 1/16.
    # Budget at 0.5: 2 + 2 + 64 + 512 = 580.
    # 1) eps = 580 / (4 + 4 + 24 + 64) = 6.04 -> tied tiny1, tiny2 exceed 1 -> both dense.
    # 2) eps = (580 - 8) / (24 + 64) = 6.5 -> mid density 6.5 * 3/16 = 1.22 -> dense.
    # 3) eps = (572 - 128) / 64 = 6.9375 -> big density 444/1024.
    shapes = {"tiny1": (2, 2), "big": (32, 32), "tiny2": (2, 2), "mid": (8, 16)}
    result = layer_sparsities(shapes, 0.5, "erk")
    assert {name for name, s in result.items() if s == 0.0} == {"tiny1", "tiny2", "mid"}
    assert result["big"] == pytest.approx(1 - 444 / 1024, abs=1e-12)


def test_saturation_conv_net_dense_layers_have_largest_raw():
    shapes = {"conv1": (3, 3, 3, 64), "conv2": (3, 3, 64, 64), "fc": (64 * 8 * 8, 10)}
    sparsity = 0.3
    result = layer_sparsities(shapes, sparsity, "erk")
    # raw: fc = 4106/40960 ~ 0.100, conv1 = 73/1728 ~ 0.042, conv2 = 134/36864 ~ 0.0036.
    raw = {name: _raw(shape, "erk") for name, shape in shapes.items()}
    dense = {name for name, s in result.items() if s == 0.0}
    assert dense == {"fc", "conv1"}
    assert min(raw[n] for n in dense) > max(raw[n] for n in shapes if n not in dense)
    assert 0 < result["conv2"] < 1
    # After flooring each layer the total nonzeros match uniform's up to one weight per layer.
    sizes = _sizes(shapes)
    nonzeros = sum(n - num_zeros(result[name], n) for name, n in sizes.items())
    assert abs(nonzeros - _uniform_nonzeros(shapes, sparsity)) <= len(shapes)
    assert total_sparsity(shapes, result) == pytest.approx(sparsity, abs=len(shapes) / 80000)


def test_tiny_sparsity_makes_everything_dense():
    # floor(0.001 * N) == 0 for every layer: the budget is every weight, so all layers go dense.
    shapes = {"a": (3, 3), "b": (4, 5), "c": (2, 2, 2, 2)}
    for distribution in ("er", "erk"):
        assert layer_sparsities(shapes, 0.001, distribution) == {"a": 0.0, "b": 0.0, "c": 0.0}


def test_custom_layers_are_excluded_from_balancing():
    shapes = {"a": (8, 6), "b": (4, 3), "c": (100, 100)}
    with_custom = layer_sparsities(shapes, 0.7, "er", {"c": 0.1})
    without_c = layer_sparsities({"a": (8, 6), "b": (4, 3)}, 0.7, "er")
    assert with_custom == pytest.approx({**without_c, "c": 0.1})


def test_all_layers_custom():
    result = layer_sparsities({"a": (2, 2), "b": (3, 3)}, 0.5, "erk", {"a": 0.1, "b": 0.2})
    assert result == {"a": 0.1, "b": 0.2}


def test_accepts_numpy_and_list_shapes():
    shapes = {"a": np.array([80, 4]), "b": [np.int64(20), 20]}
    result = layer_sparsities(shapes, np.float64(0.8), "er")
    assert result == pytest.approx({"a": 0.695161, "b": 0.883871}, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# properties

_shape = st.lists(st.integers(1, 64), min_size=2, max_size=4).map(tuple)


@settings(max_examples=300, deadline=None)
@given(
    shapes=st.lists(_shape, min_size=1, max_size=6).map(
        lambda shapes: {f"layer{i}": s for i, s in enumerate(shapes)}
    ),
    sparsity=st.floats(0.0, 0.99),
    distribution=st.sampled_from(["er", "erk"]),
    power=st.floats(0.0, 2.0),
)
def test_balanced_distribution_properties(shapes, sparsity, distribution, power):
    result = layer_sparsities(shapes, sparsity, distribution, erk_power_scale=power)
    assert list(result) == list(shapes)
    assert all(0.0 <= s < 1.0 for s in result.values())  # every density in (0, 1]
    sizes = _sizes(shapes)
    total = sum(sizes.values())
    # Continuous densities spend exactly the uniform budget.
    kept = sum(n * (1 - result[name]) for name, n in sizes.items())
    assert abs(kept - _uniform_nonzeros(shapes, sparsity)) < 1e-6 * total + 1e-6
    # Saturated (dense) layers are the ones with the largest raw densities.
    raw = {name: _raw(shape, distribution, power) for name, shape in shapes.items()}
    dense = [raw[n] for n, s in result.items() if s == 0.0]
    sparse = [raw[n] for n, s in result.items() if s > 0.0]
    if dense and sparse:
        assert min(dense) >= max(sparse) * (1 - 1e-9)
    # Layers with equal raw density get equal sparsity.
    for a in shapes:
        for b in shapes:
            if raw[a] == raw[b]:
                assert result[a] == pytest.approx(result[b], abs=1e-12)


# ---------------------------------------------------------------------------------------------
# errors

_SHAPES = {"a": (4, 4), "b": (2, 3, 3, 8)}


@pytest.mark.parametrize("sparsity", [1.0, 1, -0.01, 1.5, float("nan"), True, "0.5", None])
def test_error_sparsity(sparsity):
    with pytest.raises(ValueError, match=re.escape("`sparsity` must be a number in [0, 1)")):
        layer_sparsities(_SHAPES, sparsity, "erk")


@pytest.mark.parametrize("distribution", ["ERK", "random", "", None])
def test_error_distribution(distribution):
    with pytest.raises(ValueError, match=r"`distribution`.*'uniform', 'er', 'erk'"):
        layer_sparsities(_SHAPES, 0.5, distribution)


def test_error_custom_unknown_key():
    with pytest.raises(ValueError, match=r"`custom_sparsity`.*'nope'.*\['a', 'b'\]"):
        layer_sparsities(_SHAPES, 0.5, "erk", {"nope": 0.5})


@pytest.mark.parametrize("value", [1.0, -0.5, float("nan"), "0.1"])
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_error_custom_value(value, distribution):
    with pytest.raises(
        ValueError, match=re.escape("`custom_sparsity['b']` must be a number in [0, 1)")
    ):
        layer_sparsities(_SHAPES, 0.5, distribution, {"b": value})


@pytest.mark.parametrize("power", [-1.0, float("inf"), float("nan"), True, "1"])
def test_error_erk_power_scale(power):
    with pytest.raises(ValueError, match=re.escape("`erk_power_scale` must be finite and >= 0")):
        layer_sparsities(_SHAPES, 0.5, "erk", erk_power_scale=power)


def test_error_empty_shapes():
    with pytest.raises(ValueError, match="`shapes`"):
        layer_sparsities({}, 0.5, "erk")


@pytest.mark.parametrize("shape", [(4, 0), (-1, 4), (), (4, None), (4, 2.0), 5, (True, 4)])
def test_error_bad_shape(shape):
    with pytest.raises(ValueError, match=re.escape("`shapes['b']`")):
        layer_sparsities({"a": (4, 4), "b": shape}, 0.5, "uniform")


def test_error_no_feasible_scale_factor_when_budget_is_empty():
    # num_zeros(0.9999999, 1) == 1: uniform keeps no weight of the balanced layer, so any scale
    # factor would leave it fully pruned (sparsity 1, outside [0, 1)).
    with pytest.raises(ValueError, match=r"No scale factor.*`sparsity`.*`custom_sparsity`"):
        layer_sparsities({"a": (1, 1), "b": (4, 4)}, 0.9999999, "er", {"b": 0.5})


def test_error_no_feasible_scale_factor_when_raw_density_underflows():
    # (1/64) ** 10000 underflows to 0: once "a" is dense, "b" could only be fully pruned.
    with pytest.raises(ValueError, match=r"No scale factor.*`sparsity`.*`custom_sparsity`"):
        layer_sparsities({"a": (1, 1), "b": (64, 64)}, 0.5, "erk", erk_power_scale=1e4)

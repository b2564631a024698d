"""Tests for rigl.selection: the top-k selection (radix path against the stable sort and a
numpy reference) and drop_and_grow (ties, large layers against a reference)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import rigl
from rigl import selection
from rigl.distributions import num_zeros


def sorted_top_k(scores, k):
    """numpy reference: the k largest, ties to the lower index (TF's float semantics:
    -0.0 == 0.0, subnormals flushed to zero)."""
    scores = np.asarray(scores, np.float64)
    tiny = np.finfo(np.float32).tiny
    scores = np.where(np.abs(scores) < tiny, 0.0, scores)
    chosen = np.zeros(scores.size, bool)
    chosen[np.lexsort((np.arange(scores.size), -scores))[:k]] = True
    return chosen


SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 1e-39, 1.2e-38, -3.4e38,
                    3.4e38, 1.0, -1.0, 0.5], np.float32)


def random_scores(rng, n, kind):
    if kind == "normal":
        return rng.normal(size=n).astype(np.float32)
    if kind == "ties":
        return rng.integers(-3, 4, n).astype(np.float32)
    if kind == "special":
        return rng.choice(SPECIAL, n)
    if kind == "wide":  # every exponent
        return ((rng.random(n) * 2 - 1) * 10.0 ** rng.integers(-44, 38, n)).astype(np.float32)
    raise AssertionError(kind)


@pytest.fixture
def radix_everywhere(monkeypatch):
    """Small inputs use the sort; make them take the radix path too."""
    monkeypatch.setattr(selection, "RADIX_MIN_SIZE", 0)


@pytest.mark.parametrize("kind", ["normal", "ties", "special", "wide"])
@pytest.mark.parametrize("n", [1, 2, 7, 300, 9000, 70_000])
def test_radix_top_k_is_the_stable_sort(radix_everywhere, n, kind):
    rng = np.random.default_rng(n)
    for trial in range(4):
        scores = random_scores(rng, n, kind)
        if trial % 2:
            scores[rng.random(n) < 0.5] = -np.inf  # as for inactive positions
        for k in sorted({0, 1, n // 3, n - 1, n}):
            if k < 0:
                continue
            got = selection.top_k_mask(tf.constant(scores), tf.constant(k, tf.int32)).numpy()
            np.testing.assert_array_equal(got, sorted_top_k(scores, k), err_msg=(n, kind, k))
            stable = selection.top_k_mask_sorted(tf.constant(scores), tf.constant(k)).numpy()
            np.testing.assert_array_equal(got, stable)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float64])
def test_top_k_other_dtypes(radix_everywhere, dtype):
    rng = np.random.default_rng(0)
    scores = rng.integers(-50, 50, 5000).astype(np.float32) / 8  # exact in every dtype
    for k in (0, 17, 2500, 5000):
        got = selection.top_k_mask(tf.constant(scores, dtype), tf.constant(k)).numpy()
        np.testing.assert_array_equal(got, sorted_top_k(scores, k))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), density=st.floats(0.0, 1.0),
       fraction=st.floats(0.0, 1.0), ties=st.booleans())
def test_drop_and_grow_on_a_large_layer_matches_reference(seed, density, fraction, ties):
    """drop_and_grow through the radix path, against the sort-based reference."""
    rng = np.random.default_rng(seed)
    n = 3 * selection.RADIX_MIN_SIZE
    mask = (rng.random(n) < density).astype(np.float32)
    draw = (lambda: rng.integers(-2, 3, n)) if ties else (lambda: rng.normal(size=n))
    weights, grads = draw().astype(np.float32) * mask, draw().astype(np.float32)
    n_active = int(mask.sum())
    k = num_zeros(fraction, n_active)
    new = rigl.drop_and_grow(tf.constant(mask), tf.constant(np.abs(weights)),
                             tf.constant(np.abs(grads)), tf.constant(k), tf.constant(k)).numpy()
    kept = sorted_top_k(np.where(mask > 0, np.abs(weights), -np.inf), n_active - k)
    grown = sorted_top_k(np.where(kept, -np.inf, np.abs(grads)), k)
    np.testing.assert_array_equal(new, kept | grown)
    assert new.sum() == n_active


def test_drop_and_grow_ties_break_by_lower_index():
    mask = tf.constant([1, 1, 1, 1, 0, 0, 0, 0], tf.float32)
    equal = tf.ones(8)
    kept = rigl.drop_and_grow(mask, equal, None, tf.constant(1), tf.constant(0))
    np.testing.assert_array_equal(kept.numpy(), [1, 1, 1, 0, 0, 0, 0, 0])
    grow = tf.constant([0, 0, 0, 0, 5, 5, 5, 5], tf.float32)
    new = rigl.drop_and_grow(mask, equal, grow, tf.constant(2), tf.constant(2))
    np.testing.assert_array_equal(new.numpy(), [1, 1, 0, 0, 1, 1, 0, 0])
    # All grow scores equal: the lowest not-kept indices are grown (2 and 3 come back).
    new = rigl.drop_and_grow(mask, equal, equal, tf.constant(2), tf.constant(2))
    np.testing.assert_array_equal(new.numpy(), [1, 1, 1, 1, 0, 0, 0, 0])
    # Reversed position of ties does not matter: still lower index first.
    grow = tf.constant([0, 0, 0, 0, 0, 3, 3, 3], tf.float32)
    new = rigl.drop_and_grow(mask, equal, grow, tf.constant(3), tf.constant(3))
    np.testing.assert_array_equal(new.numpy(), [1, 0, 0, 0, 0, 1, 1, 1])


def test_drop_and_grow_is_exported_once():
    assert rigl.drop_and_grow is selection.drop_and_grow is rigl.updaters.drop_and_grow


def test_top_k_mask_worked_example():
    got = selection.top_k_mask(tf.constant([0.5, 2.0, 0.5, 1.0]), tf.constant(2))
    np.testing.assert_array_equal(got.numpy(), [False, True, False, True])
    # Ties to the lower index: the first 0.5 comes before the second.
    got = selection.top_k_mask(tf.constant([0.5, 2.0, 0.5, 1.0]), tf.constant(3))
    np.testing.assert_array_equal(got.numpy(), [True, True, False, True])


@pytest.mark.parametrize("n", [300, 3 * selection.RADIX_MIN_SIZE])  # the sort, the radix path
def test_masked_top_k_ignores_excluded_and_reports_non_finite(n):
    rng = np.random.default_rng(n)
    scores = rng.normal(size=n).astype(np.float32)
    include = rng.random(n) < 0.5
    mask, finite = selection.masked_top_k(tf.constant(scores), tf.constant(10),
                                          tf.constant(include))
    np.testing.assert_array_equal(mask.numpy(),
                                  sorted_top_k(np.where(include, scores, -np.inf), 10))
    assert bool(finite)
    assert not np.any(mask.numpy() & ~include)
    # NaN at an excluded position still makes the scores non-finite (the update is skipped).
    scores[np.flatnonzero(~include)[0]] = np.nan
    _, finite = selection.masked_top_k(tf.constant(scores), tf.constant(10),
                                       tf.constant(include))
    assert not bool(finite)


def test_drop_and_grow_checked_reports_non_finite_grow_scores():
    mask = tf.constant([True, True, False, False])
    drop = tf.constant([1.0, 2.0, 0.0, 0.0])
    new, finite = selection.drop_and_grow_checked(mask, drop, tf.constant([0.0, 0.0, 1.0, 2.0]),
                                                  tf.constant(1), tf.constant(1))
    np.testing.assert_array_equal(new.numpy(), [False, True, False, True])
    assert bool(finite)
    _, finite = selection.drop_and_grow_checked(mask, drop,
                                                tf.constant([0.0, 0.0, np.inf, 2.0]),
                                                tf.constant(1), tf.constant(1))
    assert not bool(finite)


def test_compiled_traces_names_every_piece():
    traces = selection.compiled_traces()
    assert set(traces) == {"keys_of", "keys_at_or_above", "select"}
    assert all(isinstance(count, int) and count >= 0 for count in traces.values())


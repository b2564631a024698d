"""Tests for rigl.experiments.interpolation: the straight path between two sparse solutions."""

from __future__ import annotations

import logging
import os

import keras
import numpy as np
import pytest
from absl import flags
from conftest import ROOT, script_module

import rigl
from rigl.experiments import interpolation as interp
from rigl.experiments.errors import UsageError

SCRIPT = os.path.join(ROOT, "scripts", "interpolate.py")

N_IN, N_HIDDEN, N_OUT = 6, 5, 3


def tiny(seed, sparsity=0.5, mask_seed=None, hidden=N_HIDDEN):
    """A two-layer masked MLP; ``mask_seed`` picks the masks, ``seed`` the weights."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((N_IN,)),
                              keras.layers.Dense(hidden, activation="relu", name="h"),
                              keras.layers.Dense(N_OUT, name="o")])
    return rigl.sparsify(model, sparsity, seed=seed if mask_seed is None else mask_seed)


def data(n=40):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, N_IN)).astype(np.float32), rng.integers(0, N_OUT, n)


def values(model):
    return [keras.ops.convert_to_numpy(v) for v in model.weights]


def test_endpoints_are_reproduced_exactly():
    start, end, point = tiny(1, mask_seed=7), tiny(2, mask_seed=7), tiny(3)
    x, y = data()
    for alpha, source in ((0.0, start), (1.0, end)):
        interp.interpolate(point, start, end, alpha)
        for got, want in zip(values(point), values(source)):
            np.testing.assert_array_equal(got, want)
        assert interp.evaluate(point, x, y) == interp.evaluate(source, x, y)


def test_midpoint_is_the_mean_and_stays_on_the_shared_mask():
    start, end, point = tiny(1, mask_seed=7), tiny(2, mask_seed=7), tiny(3, mask_seed=9)
    interp.interpolate(point, start, end, 0.25)
    for got, a, b in zip(values(point), values(start), values(end)):
        if got.dtype == bool:
            np.testing.assert_array_equal(got, a)  # the shared mask, not the point's own
        else:
            np.testing.assert_allclose(got, 0.75 * a + 0.25 * b, rtol=1e-6)
    for weight in rigl.masked_weights(point):
        kernel = keras.ops.convert_to_numpy(weight.masked_kernel)
        assert not kernel[~keras.ops.convert_to_numpy(weight.mask)].any()


@pytest.mark.parametrize("mask", interp.MASK_CHOICES)
def test_masks_of_the_point(mask):
    start, end, point = tiny(1, mask_seed=7), tiny(2, mask_seed=8), tiny(3)
    masks_a, masks_b = rigl.get_masks(start), rigl.get_masks(end)
    assert any((masks_a[k] != masks_b[k]).any() for k in masks_a)  # the case under test
    interp.interpolate(point, start, end, 0.5, mask=mask)
    kernels_a = {w.name: keras.ops.convert_to_numpy(w.masked_kernel)
                 for w in rigl.masked_weights(start)}
    kernels_b = {w.name: keras.ops.convert_to_numpy(w.masked_kernel)
                 for w in rigl.masked_weights(end)}
    for weight in rigl.masked_weights(point):
        name = weight.name
        want_mask = {"start": masks_a[name], "end": masks_b[name],
                     "union": masks_a[name] | masks_b[name]}[mask]
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight.mask), want_mask)
        mean = 0.5 * kernels_a[name] + 0.5 * kernels_b[name]
        np.testing.assert_allclose(keras.ops.convert_to_numpy(weight.masked_kernel),
                                   np.where(want_mask, mean, 0), rtol=1e-6)


def test_union_reproduces_both_endpoints_with_different_masks():
    start, end, point = tiny(1, mask_seed=7), tiny(2, mask_seed=8), tiny(3)
    x, y = data()
    for alpha, source in ((0.0, start), (1.0, end)):
        interp.interpolate(point, start, end, alpha, mask="union")
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(point(x)),
                                      keras.ops.convert_to_numpy(source(x)))


def test_evaluate_is_the_mean_cross_entropy_without_weight_decay():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((N_IN,)),
                              keras.layers.Dense(N_OUT, name="o",
                                                 kernel_regularizer=keras.regularizers.l2(10.0))])
    x, y = data(10)
    logits = keras.ops.convert_to_numpy(model(x)).astype(np.float64)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    result = interp.evaluate(model, x, y, batch_size=3)  # a last batch of 1
    assert result["loss"] == pytest.approx(-log_p[np.arange(10), y].mean(), rel=1e-5)
    assert result["accuracy"] == np.mean(logits.argmax(axis=1) == y)


def test_loss_along_path_and_barrier():
    start, end, point = tiny(1, mask_seed=7), tiny(2, mask_seed=7), tiny(3)
    x, y = data()
    rows = interp.loss_along_path(point, start, end, interp.path_alphas(5), x, y)
    assert [row["alpha"] for row in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert rows[0]["loss"] == interp.evaluate(start, x, y)["loss"]
    assert rows[-1]["loss"] == interp.evaluate(end, x, y)["loss"]
    # A hand-made path: endpoints 1 and 3, a bump of 4 at the middle (2 above the chord).
    made = [{"alpha": a, "loss": v} for a, v in ((0.0, 1.0), (0.5, 4.0), (1.0, 3.0))]
    assert interp.barrier(made) == pytest.approx(2.0)
    assert interp.barrier(made[::2]) == 0.0


@pytest.mark.parametrize("alpha", [-0.2, 1.2, float("nan"), True, "0.5", None])
def test_alpha_outside_the_segment_is_refused(alpha):
    start, end = tiny(1), tiny(2)
    with pytest.raises(ValueError, match=r"^alpha: expected a number in \[0, 1\]"):
        interp.interpolate(tiny(3), start, end, alpha)


def test_models_of_different_structure_are_refused():
    start = tiny(1)
    with pytest.raises(ValueError, match=r"^end: weight 0 \(\S*h/kernel\) is a masked kernel of "
                                         r"shape \(6, 4\)"):
        interp.interpolate(tiny(3), start, tiny(2, hidden=4), 0.5)
    dense_end = keras.Sequential([keras.Input((N_IN,)), keras.layers.Dense(N_HIDDEN, name="h"),
                                  keras.layers.Dense(N_OUT, name="o")])
    with pytest.raises(ValueError, match=r"^end: has 4 weights, start has 6"):
        interp.interpolate(tiny(3), start, dense_end, 0.5)
    with pytest.raises(ValueError, match=r"^model: has 4 weights"):
        interp.interpolate(dense_end, start, tiny(2), 0.5)


def test_other_bad_arguments_name_the_parameter():
    start, end, point = tiny(1), tiny(2), tiny(3)
    with pytest.raises(ValueError, match=r"^mask: unknown 'dense'; allowed"):
        interp.interpolate(point, start, end, 0.5, mask="dense")
    with pytest.raises(ValueError, match=r"^points: expected an integer >= 2"):
        interp.path_alphas(1)
    with pytest.raises(ValueError, match=r"^batch_size: expected a positive integer"):
        interp.evaluate(point, *data(), batch_size=0)
    with pytest.raises(ValueError, match=r"^rows: need alpha = 0 and 1"):
        interp.barrier([{"alpha": 0.5, "loss": 1.0}])
    sparse = rigl.sparse_model(lambda dense: keras.Sequential(
        [keras.Input((N_IN,)), dense(N_OUT, name="o")]), 0.5)
    with pytest.raises(ValueError, match=r"^model: layer 'o' is a SparseDense"):
        interp.interpolate(sparse, sparse, sparse, 0.5)


# ------------------------------------------------------------------- scripts/interpolate.py
@pytest.fixture(scope="module")
def script():
    with script_module(SCRIPT, "interpolate_script") as module:
        yield module


def _restarts(script, *argv):
    absl_logger = logging.getLogger("absl")  # parsing flags sets absl's log level
    level = absl_logger.level
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["interpolate.py", *argv])
    try:
        return script.parse_restarts()
    finally:
        flags.FLAGS.unparse_flags()
        absl_logger.setLevel(level)


def test_script_restart_flags(script):
    assert _restarts(script) == ([0.0, 0.25, 0.5, 0.75, 1.0], ["static", "rigl"])
    assert _restarts(script, "--restart_alphas=1", "--restart_methods=rigl") == ([1.0],
                                                                                 ["rigl"])
    with pytest.raises(UsageError, match=r"^--restart_alphas: '1.5' is not a number in"):
        _restarts(script, "--restart_alphas=0,1.5")
    with pytest.raises(UsageError, match=r"^--restart_methods: unknown 'set'"):
        _restarts(script, "--restart_methods=static,set")


def test_script_plot_draws_every_restart(script, tmp_path):
    path = [{"alpha": a, "train_loss": 1 + a * (1 - a), "test_accuracy": 0.9} for a in
            (0.0, 0.5, 1.0)]
    restarts = [{"alpha": a, "method": m, "curve": [2.0, 1.0, 0.5], "barrier_to_static": 0.1,
                 "barrier_to_pruned": 1.0} for a in (0.0, 1.0) for m in ("static", "rigl")]
    results = {"solutions": {"static": {"train_loss": 1.0}, "pruned": {"train_loss": 1.0}},
               "path": path, "barrier": 0.25, "restarts": restarts}
    written = script.plot(results, str(tmp_path / "figure.png"))
    assert os.path.getsize(written) > 10_000

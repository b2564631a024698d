"""Tests for rigl.updaters (the Static/SET/SNFS/RigL/pruning/SNIP updaters, drop_and_grow in
the worked example) and rigl.storage (the seam through which they read and write masks).
The selection itself (ties, the radix path) is tested in tests/test_selection.py."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rigl
from rigl.distributions import num_zeros
from rigl.layers import MaskedWeight
from rigl.optimizer_state import first_moment, slots
from rigl.schedules import polynomial_sparsity
from rigl.storage import MaskedStorage, storage_for, storages

# The worked example of the issue.
W = np.array([0.5, -0.1, 0, 0.3, -0.05, 0, 0.2, 0], np.float32)
M = np.array([1, 1, 0, 1, 1, 0, 1, 0], np.float32)
# |grad| = [0.01, 0.9, 0.5, 0.02, 0.03, 0.7, 0.04, 0.1]; signs must not matter.
G = np.array([0.01, -0.9, 0.5, 0.02, -0.03, -0.7, 0.04, 0.1], np.float32)
NEW_MASK = np.array([1, 1, 0, 1, 0, 1, 1, 0], np.float32)
NEW_W = np.array([0.5, -0.1, 0, 0.3, 0, 0, 0.2, 0], np.float32)


# ---------------------------------------------------------------------------------------------
# helpers


def single_layer_model(n_in=8, units=1, name="m"):
    inputs = keras.Input((n_in,))
    outputs = rigl.MaskedDense(units, use_bias=False, name=name)(inputs)
    return keras.Model(inputs, outputs)


def make_optimizer(kind):
    if kind == "sgd":
        return keras.optimizers.SGD(0.1, momentum=0.9)
    if kind == "adam":
        return keras.optimizers.Adam(0.01)
    raise AssertionError(kind)


def built_optimizer(model, kind):
    opt = make_optimizer(kind)
    opt.build(model.trainable_variables)
    return opt


def set_state(layer, mask, weights):
    shape = tuple(layer.mask.shape)
    mask = np.asarray(mask, np.float32).reshape(shape)
    layer.mask.assign(mask)
    layer.masked_kernel.assign(np.asarray(weights, np.float32).reshape(shape) * mask)


def flat(variable):
    return variable.numpy().reshape(-1).copy()


def dense_mlp(name_prefix=""):
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((20,)),
        keras.layers.Dense(32, activation="relu", name=f"{name_prefix}h"),
        keras.layers.Dense(3, name=f"{name_prefix}o"),
    ])


def reference_drop_and_grow(mask, drop_scores, grow_scores, n_drop, n_grow):
    """numpy reference: keep the best active by drop score, grow the best others; ties by index."""
    mask = np.asarray(mask).reshape(-1) > 0
    index = np.arange(mask.size)
    drop = np.where(mask, np.asarray(drop_scores, np.float64).reshape(-1), -np.inf)
    kept = np.zeros(mask.size, bool)
    kept[np.lexsort((index, -drop))[: int(mask.sum()) - n_drop]] = True
    if grow_scores is None:
        return kept, kept
    grow = np.where(kept, -np.inf, np.asarray(grow_scores, np.float64).reshape(-1))
    grown = np.zeros(mask.size, bool)
    grown[np.lexsort((index, -grow))[:n_grow]] = True
    return kept | grown, kept


# ---------------------------------------------------------------------------------------------
# drop_and_grow and the worked example


def test_reference_reproduces_worked_example():
    new, kept = reference_drop_and_grow(M, np.abs(W), np.abs(G), 2, 2)
    np.testing.assert_array_equal(new, NEW_MASK > 0)
    np.testing.assert_array_equal(kept, [1, 0, 0, 1, 0, 0, 1, 0])


def test_worked_example_drop_and_grow():
    n_active = int(M.sum())
    n = rigl.updaters.floor_count(0.4, n_active)
    assert int(n) == 2 == num_zeros(0.4, n_active)
    new = rigl.drop_and_grow(tf.constant(M), tf.constant(np.abs(W)), tf.constant(np.abs(G)), n, n)
    assert new.dtype == tf.bool
    np.testing.assert_array_equal(new.numpy(), NEW_MASK > 0)
    # Dropped: 1 and 4 (lowest |w| among active); grown: 1 and 5; only 5 is new.
    kept = rigl.drop_and_grow(tf.constant(M), tf.constant(np.abs(W)), None, n, n)
    np.testing.assert_array_equal(kept.numpy(), [1, 0, 0, 1, 0, 0, 1, 0])


def test_worked_example_drop_and_grow_fraction_0_3():
    n = rigl.updaters.floor_count(0.3, int(M.sum()))
    assert int(n) == 1
    kept = rigl.drop_and_grow(tf.constant(M), tf.constant(np.abs(W)), None, n, n)
    np.testing.assert_array_equal(kept.numpy(), [1, 1, 0, 1, 0, 0, 1, 0])  # only 4 dropped
    new = rigl.drop_and_grow(tf.constant(M), tf.constant(np.abs(W)), tf.constant(np.abs(G)), n, n)
    np.testing.assert_array_equal(new.numpy(), NEW_MASK > 0)  # only 5 grown


@pytest.mark.parametrize("fraction", [0.4, 0.3])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_worked_example_through_rigl_updater(optimizer, fraction):
    model = single_layer_model()
    layer = model.get_layer("m")
    set_state(layer, M, W)
    opt = built_optimizer(model, optimizer)
    kernel_slots = slots(opt, layer.masked_kernel)
    assert len(kernel_slots) == (1 if optimizer == "sgd" else 2)
    slot_values = []
    for k, slot in enumerate(kernel_slots):
        values = np.arange(1, 9, dtype=np.float32) / 10 + k  # all non-zero, all distinct
        slot.assign(values.reshape(8, 1))
        slot_values.append(values)
    updater = rigl.RigL(drop_fraction=fraction, drop_fraction_decay="constant", update_freq=1,
                        end_step=10).bind(model, opt)
    result = updater.update(0, gradients=[tf.constant(G.reshape(8, 1))])
    np.testing.assert_array_equal(flat(layer.mask), NEW_MASK)
    np.testing.assert_array_equal(flat(layer.masked_kernel), NEW_W)
    assert flat(layer.masked_kernel)[1] == np.float32(-0.1)  # regrown/kept: weight kept
    for slot, before in zip(kernel_slots, slot_values):
        expected = before.copy()
        expected[5] = 0.0  # only the truly new connection is reset
        np.testing.assert_array_equal(flat(slot), expected)
    assert result.changed == {"m": 1}
    assert result.step == 0
    assert result.drop_fraction == pytest.approx(fraction)
    assert result.skipped is False
    assert updater.skipped_updates == 0


def test_updater_ties_are_deterministic():
    results = []
    for _ in range(2):
        model = single_layer_model()
        layer = model.get_layer("m")
        set_state(layer, [1, 1, 1, 1, 0, 0, 0, 0], [0.5, -0.5, 0.5, -0.5, 0, 0, 0, 0])
        opt = built_optimizer(model, "sgd")
        updater = rigl.RigL(drop_fraction=0.5, drop_fraction_decay="constant", update_freq=1,
                            end_step=10).bind(model, opt)
        g = np.array([0, 0, 0, 0, 1, -1, 1, -1], np.float32).reshape(8, 1)
        result = updater.update(0, gradients=[tf.constant(g)])
        results.append(flat(layer.mask))
        assert result.changed == {"m": 2}
    np.testing.assert_array_equal(results[0], [1, 1, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(results[0], results[1])


# ---------------------------------------------------------------------------------------------
# Static, SET, SNFS


def test_static_never_changes_masks():
    model = rigl.sparsify(dense_mlp(), 0.7, seed=1)
    opt = built_optimizer(model, "sgd")
    masks = rigl.get_masks(model)
    kernels = [layer.masked_kernel.numpy().copy() for layer in rigl.masked_layers(model)]
    updater = rigl.Static().bind(model, opt)
    for step in range(0, 500, 50):
        assert not updater.is_update_step(step)
        assert updater.last_update_step(step) is None
        assert updater.maybe_update(step) is None
    for name, mask in rigl.get_masks(model).items():
        np.testing.assert_array_equal(mask, masks[name])
    for layer, kernel in zip(rigl.masked_layers(model), kernels):
        np.testing.assert_array_equal(layer.masked_kernel.numpy(), kernel)


def _run_set(seed, steps=range(5)):
    model = rigl.sparsify(dense_mlp(), 0.6, seed=3)
    opt = built_optimizer(model, "sgd")
    updater = rigl.SET(drop_fraction=0.3, drop_fraction_decay="constant", update_freq=1,
                       end_step=100, seed=seed).bind(model, opt)
    history = []
    for step in steps:
        result = updater.update(step)
        assert sum(result.changed.values()) > 0
        history.append(rigl.get_masks(model))
    return history


def test_set_same_seed_same_masks_other_seed_other_masks():
    a, b, c = _run_set(seed=7), _run_set(seed=7), _run_set(seed=8)
    initial = rigl.get_masks(rigl.sparsify(dense_mlp(), 0.6, seed=3))
    for masks_a, masks_b, masks_c in zip(a, b, c):
        for name in masks_a:
            np.testing.assert_array_equal(masks_a[name], masks_b[name])
            assert masks_a[name].sum() == initial[name].sum()
        assert any(not np.array_equal(masks_a[n], masks_c[n]) for n in masks_a)
    assert any(not np.array_equal(a[0][n], initial[n]) for n in initial)


def test_set_draws_differ_from_step_to_step():
    model = single_layer_model(n_in=40, units=10)
    layer = model.get_layer("m")
    rng = np.random.default_rng(0)
    mask = (rng.random(400) < 0.5).astype(np.float32)
    updater = rigl.SET(drop_fraction=0.5, drop_fraction_decay="constant", update_freq=1,
                       end_step=100).bind(model, built_optimizer(model, "sgd"))
    grown = []
    for step in (1, 2):
        set_state(layer, mask, np.where(mask > 0, 1.0 + rng.random(400), 0.0))
        before = flat(layer.mask)
        updater.update(step)
        grown.append((flat(layer.mask) > 0) & (before == 0))
    assert not np.array_equal(grown[0], grown[1])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_snfs_grows_by_momentum_magnitude(optimizer):
    model = single_layer_model()
    layer = model.get_layer("m")
    set_state(layer, M, W)
    opt = built_optimizer(model, optimizer)
    momentum = np.array([0, 0, 0.8, 0, 0, 0.1, 0, -0.6], np.float32)
    first_moment(opt, layer.masked_kernel).assign(momentum.reshape(8, 1))
    if optimizer == "adam":
        # Adam's second moment is large where the first is small: SNFS must not use it.
        velocity = [s for s in slots(opt, layer.masked_kernel)
                    if s is not first_moment(opt, layer.masked_kernel)][0]
        velocity.assign(np.array([9, 9, 0.01, 9, 9, 9, 9, 0.01], np.float32).reshape(8, 1))
    updater = rigl.SNFS(drop_fraction=0.4, drop_fraction_decay="constant", update_freq=1,
                        end_step=10).bind(model, opt)
    result = updater.update(0)
    np.testing.assert_array_equal(flat(layer.mask), [1, 0, 1, 1, 0, 0, 1, 1])
    np.testing.assert_array_equal(flat(layer.masked_kernel),
                                  np.array([0.5, 0, 0, 0.3, 0, 0, 0.2, 0], np.float32))
    np.testing.assert_array_equal(flat(first_moment(opt, layer.masked_kernel)),
                                  np.array([0, 0, 0, 0, 0, 0.1, 0, 0], np.float32))
    assert result.changed == {"m": 2}


def test_snfs_needs_a_momentum_optimizer():
    model = single_layer_model()
    with pytest.raises(ValueError, match=r"^optimizer\b"):
        rigl.SNFS(update_freq=1, end_step=10).bind(model, keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match=r"^optimizer\b"):
        rigl.SNFS(update_freq=1, end_step=10).bind(model)  # not compiled, no optimizer


def test_rigl_needs_batch_or_gradients():
    model = single_layer_model()
    updater = rigl.RigL(update_freq=1, end_step=10).bind(model, built_optimizer(model, "sgd"))
    with pytest.raises(ValueError, match=r"^batch\b"):
        updater.update(0)
    with pytest.raises(ValueError, match=r"^batch\b"):
        updater.maybe_update(0)


def test_rigl_gradients_from_batch_match_gradient_tape():
    keras.utils.set_random_seed(0)
    model = rigl.sparsify(dense_mlp(), 0.5)
    model.compile(optimizer=make_optimizer("sgd"), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 20)).astype(np.float32)
    y = rng.normal(size=(16, 3)).astype(np.float32)
    updater = rigl.RigL(update_freq=1, end_step=10).bind(model)
    grads = updater.kernel_gradients((x, y))
    kernels = [layer.masked_kernel for layer in rigl.masked_layers(model)]
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(y, model(x, training=True))
    expected = tape.gradient(loss, kernels)
    for got, want, layer in zip(grads, expected, rigl.masked_layers(model)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-7)
        # Dense gradient: non-zero at most masked positions (dead ReLUs give a few zeros).
        assert np.mean(got.numpy()[layer.mask.numpy() == 0] != 0) > 0.5
    # The update through a batch grows where |gradient| is largest.
    before = rigl.get_masks(model)
    weights = [layer.masked_kernel.numpy().copy() for layer in rigl.masked_layers(model)]
    result = updater.update(0, batch=(x, y))
    for layer, grad, w in zip(rigl.masked_layers(model), grads, weights):
        old = before[layer.name]
        n = num_zeros(result.drop_fraction, int(old.sum()))
        ref, _ = reference_drop_and_grow(old, np.abs(w), np.abs(grad.numpy()), n, n)
        np.testing.assert_array_equal(layer.mask.numpy().reshape(-1) > 0, ref)


# ---------------------------------------------------------------------------------------------
# Property test: thousands of random updates keep the invariants


def _multi_layer_model():
    a, b, c, img = (keras.Input((1,)), keras.Input((3,)), keras.Input((16,)),
                    keras.Input((6, 6, 2)))
    outputs = [
        rigl.MaskedDense(1, use_bias=False, name="tiny")(a),  # 1 weight
        rigl.MaskedDense(5, name="small")(b),  # 15
        rigl.MaskedDense(12, name="wide")(c),  # 192
        rigl.MaskedConv2D(4, 3, name="conv")(img),  # 72
        rigl.MaskedDepthwiseConv2D(3, name="dw")(img),  # 18
    ]
    return keras.Model([a, b, c, img], outputs)


UPDATER_CLASSES = {"rigl": rigl.RigL, "snfs": rigl.SNFS, "set": rigl.SET}
_BOUND: dict = {}
END = 1000


def _bound(method, optimizer):
    """One bound (model, optimizer, updater) per combination, reused across examples."""
    key = (method, optimizer)
    if key not in _BOUND:
        keras.utils.set_random_seed(0)
        model = _multi_layer_model()
        opt = built_optimizer(model, optimizer)
        # f(t) = 1 - t / END: any drop fraction on a 0.001 grid, via the step.
        updater = UPDATER_CLASSES[method](
            update_freq=1, end_step=END, drop_fraction=1.0, drop_fraction_decay="inverse_power",
            decay_power=1.0, seed=5).bind(model, opt)
        _BOUND[key] = (model, opt, updater)
    return _BOUND[key]


def _randomize(model, opt, rng, densities, ties):
    for layer, density in zip(rigl.masked_layers(model), densities):
        shape = tuple(layer.mask.shape)
        size = int(np.prod(shape))
        mask = np.zeros(size, np.float32)
        mask[rng.permutation(size)[: int(round(density * size))]] = 1.0
        if ties:  # few distinct magnitudes: exercises the tie-breaking
            weights = rng.integers(-2, 3, size).astype(np.float32)
        else:
            weights = rng.normal(size=size).astype(np.float32)
        set_state(layer, mask, weights)
        for slot in slots(opt, layer.masked_kernel):
            values = rng.integers(-2, 3, size) if ties else rng.normal(size=size)
            if "velocit" in slot.path:
                values = np.abs(values) + 0.5
            slot.assign(values.astype(np.float32).reshape(shape))


def _random_gradients(model, rng, ties):
    grads = []
    for layer in rigl.masked_layers(model):
        shape = tuple(layer.mask.shape)
        g = rng.integers(-3, 4, shape) if ties else rng.normal(size=shape)
        grads.append(tf.constant(g.astype(np.float32)))
    return grads


def _check_update(method, opt, model, updater, step, grads):
    """Runs one update and checks every invariant against the state before it."""
    layers = rigl.masked_layers(model)
    before = []
    for layer in layers:
        before.append({
            "mask": flat(layer.mask),
            "w": flat(layer.masked_kernel),
            "slots": [flat(s) for s in slots(opt, layer.masked_kernel)],
            "momentum": flat(first_moment(opt, layer.masked_kernel)),
        })
    result = updater.update(step, gradients=grads)
    assert not result.skipped
    fraction = result.drop_fraction
    assert fraction == pytest.approx(1.0 - step / END, abs=1e-12)
    for i, (layer, old) in enumerate(zip(layers, before)):
        mask, w = flat(layer.mask), flat(layer.masked_kernel)
        layer_slots = [flat(s) for s in slots(opt, layer.masked_kernel)]
        assert len(layer_slots) == (1 if isinstance(opt, keras.optimizers.SGD) else 2)
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert mask.sum() == old["mask"].sum(), layer.name  # nnz unchanged
        assert np.all(w[mask == 0] == 0.0)
        new, was = mask > 0, old["mask"] > 0
        born, stay = new & ~was, new & was
        assert result.changed[layer.name] == int(born.sum())
        assert np.all(w[born] == 0.0)  # grow_init zeros
        np.testing.assert_array_equal(w[stay], old["w"][stay])
        for slot, old_slot in zip(layer_slots, old["slots"]):
            assert np.all(slot[born] == 0.0)
            np.testing.assert_array_equal(slot[~born], old_slot[~born])
        n = num_zeros(fraction, int(was.sum()))
        grow = {"rigl": None if grads is None else np.abs(grads[i].numpy()),
                "snfs": np.abs(old["momentum"]), "set": None}[method]
        expected, kept = reference_drop_and_grow(old["mask"], np.abs(old["w"]), grow, n, n)
        assert np.all(new[kept]), layer.name  # the best |w| always survive
        if grow is not None:
            np.testing.assert_array_equal(new, expected, err_msg=layer.name)
        else:
            assert int((new & ~kept).sum()) == n
    return result


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("method", sorted(UPDATER_CLASSES))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    densities=st.lists(st.floats(0, 1), min_size=5, max_size=5),
    steps=st.lists(st.integers(0, END), min_size=1, max_size=6),
    ties=st.booleans(),
)
def test_random_updates_keep_invariants(method, optimizer, seed, densities, steps, ties):
    model, opt, updater = _bound(method, optimizer)
    rng = np.random.default_rng(seed)
    _randomize(model, opt, rng, densities, ties)
    for step in steps:
        grads = _random_gradients(model, rng, ties) if method == "rigl" else None
        _check_update(method, opt, model, updater, step, grads)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_rigl_200_updates_interleaved_with_training_steps(optimizer):
    keras.utils.set_random_seed(1)
    model = _multi_layer_model()
    opt = built_optimizer(model, optimizer)
    updater = rigl.RigL(update_freq=1, end_step=END, drop_fraction=1.0,
                        drop_fraction_decay="inverse_power", seed=2).bind(model, opt)
    rng = np.random.default_rng(1)
    _randomize(model, opt, rng, rng.random(5), ties=False)
    nnz = {name: mask.sum() for name, mask in rigl.get_masks(model).items()}
    for _ in range(200):
        step = int(rng.integers(0, END + 1))
        _check_update("rigl", opt, model, updater, step, _random_gradients(model, rng, False))
        # A dense optimizer step (all trainable variables) must keep masked weights at zero.
        variables = model.trainable_variables
        opt.apply_gradients(
            [(tf.constant(rng.normal(size=v.shape).astype(np.float32)), v) for v in variables])
        for layer in rigl.masked_layers(model):
            assert np.all(layer.masked_kernel.numpy()[layer.mask.numpy() == 0] == 0.0)
    assert {name: mask.sum() for name, mask in rigl.get_masks(model).items()} == nnz


# ---------------------------------------------------------------------------------------------
# NaN / Inf


def _bound_single(method="rigl", **kwargs):
    model = single_layer_model()
    layer = model.get_layer("m")
    set_state(layer, M, W)
    opt = built_optimizer(model, "sgd")
    cls = {"rigl": rigl.RigL, "set": rigl.SET}[method]
    updater = cls(drop_fraction=0.4, drop_fraction_decay="constant", update_freq=1,
                  end_step=10, **kwargs).bind(model, opt)
    return model, layer, opt, updater


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_gradient_skips_update(bad):
    model, layer, opt, updater = _bound_single()
    slots(opt, layer.masked_kernel)[0].assign(np.ones((8, 1), np.float32))
    g = G.copy()
    g[3] = bad
    for count in (1, 2):
        with pytest.warns(RuntimeWarning, match="NaN or Inf"):
            result = updater.update(0, gradients=[tf.constant(g.reshape(8, 1))])
        assert result.skipped is True
        assert result.changed == {"m": 0}
        assert updater.skipped_updates == count
        np.testing.assert_array_equal(flat(layer.mask), M)
        np.testing.assert_array_equal(flat(layer.masked_kernel), W)
        np.testing.assert_array_equal(flat(slots(opt, layer.masked_kernel)[0]), np.ones(8))
    # A finite update afterwards goes through and is not counted.
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = updater.update(0, gradients=[tf.constant(G.reshape(8, 1))])
    assert result.skipped is False and updater.skipped_updates == 2
    np.testing.assert_array_equal(flat(layer.mask), NEW_MASK)


def test_nan_weight_skips_update():
    model, layer, opt, updater = _bound_single("set")
    w = W.copy()
    w[0] = np.nan
    layer.masked_kernel.assign(w.reshape(8, 1))
    with pytest.warns(RuntimeWarning):
        result = updater.update(3)
    assert result.skipped is True and updater.skipped_updates == 1
    np.testing.assert_array_equal(flat(layer.mask), M)
    assert result.changed == {"m": 0}


# ---------------------------------------------------------------------------------------------
# grow_init


def _grown_weights(grow_init, seed):
    model = single_layer_model(n_in=10, units=6)
    layer = model.get_layer("m")
    rng = np.random.default_rng(0)
    mask = (rng.random(60) < 0.5).astype(np.float32)
    set_state(layer, mask, rng.normal(size=60))
    opt = built_optimizer(model, "sgd")
    slots(opt, layer.masked_kernel)[0].assign(np.ones((10, 6), np.float32))
    updater = rigl.RigL(drop_fraction=0.5, drop_fraction_decay="constant", update_freq=1,
                        end_step=10, grow_init=grow_init, seed=seed).bind(model, opt)
    g = rng.normal(size=(10, 6)).astype(np.float32)
    result = updater.update(4, gradients=[tf.constant(g)])
    new = flat(layer.mask)
    born = (new > 0) & (mask == 0)
    assert born.sum() == result.changed["m"] > 0
    assert np.all(flat(slots(opt, layer.masked_kernel)[0])[born] == 0.0)
    return flat(layer.masked_kernel)[born], born


@pytest.mark.parametrize("grow_init", ["random_normal", "initial_value"])
def test_non_zero_grow_init_is_deterministic(grow_init):
    a, born_a = _grown_weights(grow_init, seed=1)
    b, born_b = _grown_weights(grow_init, seed=1)
    c, born_c = _grown_weights(grow_init, seed=2)
    np.testing.assert_array_equal(born_a, born_b)
    assert np.all(a != 0.0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(born_a, born_c)  # the positions do not depend on the seed
    assert not np.array_equal(a, c)


def test_zeros_grow_init_is_zero():
    a, _ = _grown_weights("zeros", seed=1)
    assert np.all(a == 0.0)


# ---------------------------------------------------------------------------------------------
# GradualPruning


@pytest.mark.parametrize("end_step, updates", [
    (100, list(range(0, 101, 10))),
    (95, [*range(0, 91, 10), 95]),  # off the grid: the end step still lands on the target
])
def test_gradual_pruning_follows_polynomial_schedule(end_step, updates):
    model = rigl.sparsify(dense_mlp(), 0.0)
    assert all(mask.all() for mask in rigl.get_masks(model).values())
    opt = built_optimizer(model, "sgd")
    updater = rigl.GradualPruning(sparsity=0.8, update_freq=10, begin_step=0,
                                  end_step=end_step).bind(model, opt)
    rng = np.random.default_rng(0)
    done = []
    for step in range(0, 131):
        for layer in rigl.masked_layers(model):  # "training": weights move between updates
            noise = rng.normal(scale=0.05, size=layer.mask.shape).astype(np.float32)
            layer.masked_kernel.assign((layer.masked_kernel.numpy() + noise)
                                       * layer.mask.numpy())
        old_masks = rigl.get_masks(model)
        old_w = {layer.name: layer.masked_kernel.numpy().copy()
                 for layer in rigl.masked_layers(model)}
        result = updater.maybe_update(step)
        if result is None:
            for name, mask in rigl.get_masks(model).items():
                np.testing.assert_array_equal(mask, old_masks[name])
            continue
        done.append(step)
        assert result.changed == {"h": 0, "o": 0}  # pruning never grows
        for name, mask in rigl.get_masks(model).items():
            size = mask.size
            target = polynomial_sparsity(step, 0.8, 0.0, 0, end_step)
            assert updater.layer_sparsity(name, step) == pytest.approx(target)
            assert mask.sum() == size - num_zeros(target, size), (name, step)
            assert np.all(mask <= old_masks[name])  # monotone
            dropped = (old_masks[name] > 0) & (mask == 0)
            kept = mask > 0
            if dropped.any():
                assert np.abs(old_w[name][kept]).min() >= np.abs(old_w[name][dropped]).max()
    assert done == updates
    for mask in rigl.get_masks(model).values():
        assert (mask == 0).sum() == num_zeros(0.8, mask.size) == int(0.8 * mask.size)


@pytest.mark.parametrize("sparsity", [0.29, 0.57, 0.7, 0.9, 0.99])
def test_gradual_pruning_final_count_is_float_robust(sparsity):
    model = rigl.sparsify(dense_mlp(), 0.0)
    updater = rigl.GradualPruning(sparsity=sparsity, update_freq=1, end_step=2).bind(
        model, built_optimizer(model, "sgd"))
    for step in range(3):
        assert updater.maybe_update(step) is not None
    for name, mask in rigl.get_masks(model).items():
        assert (mask == 0).sum() == num_zeros(sparsity, mask.size), name


def test_gradual_pruning_erk_targets():
    model = rigl.sparsify(dense_mlp(), 0.0)
    updater = rigl.GradualPruning(sparsity=0.9, distribution="erk", update_freq=5,
                                  end_step=20).bind(model, built_optimizer(model, "sgd"))
    for step in range(0, 21):
        updater.maybe_update(step)
    shapes = {layer.name: tuple(layer.mask.shape) for layer in rigl.masked_layers(model)}
    targets = rigl.layer_sparsities(shapes, 0.9, "erk")
    for name, mask in rigl.get_masks(model).items():
        assert (mask == 0).sum() == num_zeros(targets[name], mask.size)


# ---------------------------------------------------------------------------------------------
# SNIP


def test_snip_keeps_largest_weight_times_gradient():
    model = rigl.sparsify(dense_mlp(), 0.0)
    rng = np.random.default_rng(3)
    updater = rigl.SNIP(sparsity=0.5).bind(model, built_optimizer(model, "sgd"))
    grads, scores = [], {}
    for layer in rigl.masked_layers(model):
        g = rng.normal(size=layer.mask.shape).astype(np.float32)
        grads.append(tf.constant(g))
        scores[layer.name] = np.abs(layer.masked_kernel.numpy() * g)
    result = updater.update(0, gradients=grads)
    for name, mask in rigl.get_masks(model).items():
        keep = mask.size - num_zeros(0.5, mask.size)
        assert mask.sum() == keep
        expected = np.zeros(mask.size, bool)
        expected[np.argsort(-scores[name].reshape(-1), kind="stable")[:keep]] = True
        np.testing.assert_array_equal(mask.reshape(-1) > 0, expected)
    assert result.changed == {"h": 0, "o": 0}
    assert [s for s in range(50) if updater.is_update_step(s)] == [0]
    assert updater.maybe_update(1) is None


def test_floor_count_of_python_float_is_exact():
    assert int(rigl.updaters.floor_count(0.5, 640)) == 320
    assert int(rigl.updaters.floor_count(tf.constant(0.9, tf.float64), 640)) == 576


def test_floor_count_of_python_float_0_9():
    assert int(rigl.updaters.floor_count(0.9, 640)) == num_zeros(0.9, 640) == 576


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9])
def test_snip_from_batch(sparsity):
    model = rigl.sparsify(dense_mlp(), 0.0)
    model.compile(optimizer=make_optimizer("sgd"),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(4)
    x = rng.normal(size=(32, 20)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    updater = rigl.SNIP(sparsity=sparsity).bind(model)
    grads = updater.kernel_gradients((x, y))
    scores = {layer.name: np.abs(layer.masked_kernel.numpy() * g.numpy())
              for layer, g in zip(rigl.masked_layers(model), grads)}
    updater.maybe_update(0, batch=(x, y))
    for name, mask in rigl.get_masks(model).items():
        keep = mask.size - num_zeros(sparsity, mask.size)
        assert mask.sum() == keep, name
        kept = mask.reshape(-1) > 0
        s = scores[name].reshape(-1)
        assert s[kept].min() >= s[~kept].max()


def test_snip_rejects_model_sparser_than_target():
    model = rigl.sparsify(dense_mlp(), 0.9)
    with pytest.raises(ValueError, match=r"^model\b"):
        rigl.SNIP(sparsity=0.5).bind(model, built_optimizer(model, "sgd"))
    with pytest.raises(ValueError, match=r"^model\b"):
        rigl.GradualPruning(sparsity=0.5, end_step=10).bind(model, built_optimizer(model, "sgd"))
    # Sparser target than the model is fine.
    rigl.SNIP(sparsity=0.95).bind(model, built_optimizer(model, "sgd"))


def test_storage_for_masked_weights_and_unknown_targets():
    model = rigl.sparsify(dense_mlp(), 0.5, seed=1)
    found = storages(model)
    assert [s.name for s in found] == [w.name for w in rigl.masked_weights(model)] == ["h", "o"]
    for storage, layer in zip(found, rigl.masked_layers(model)):
        assert isinstance(storage, MaskedStorage)
        assert storage.variable is layer.masked_kernel
        assert storage.shape == tuple(layer.mask.shape)
        assert storage.active_count() == int(layer.mask.numpy().sum())
    assert [s.active_count() for s in found] == [20 * 32 - 320, 32 * 3 - 48]
    assert isinstance(storage_for(rigl.masked_weights(model)[0]), MaskedStorage)
    assert isinstance(rigl.masked_weights(model)[0], MaskedWeight)
    with pytest.raises(TypeError, match=r"^target\b"):
        storage_for(model.layers[0])


def test_masked_storage_apply_keeps_state_when_not_ok():
    """apply with ok=False writes back the state it read: one NaN anywhere in an update leaves
    every layer as it was."""
    model = single_layer_model()
    layer = model.get_layer("m")
    set_state(layer, M, W)
    (storage,) = storages(model)
    view = storage.view()
    assert bool(view.finite)
    born = storage.apply(view, tf.constant(NEW_MASK > 0), tf.constant(False), None, [])
    assert int(born) == 0
    np.testing.assert_array_equal(flat(layer.mask), M)
    np.testing.assert_array_equal(flat(layer.masked_kernel), W * M)
    born = storage.apply(view, tf.constant(NEW_MASK > 0), tf.constant(True), None, [])
    assert int(born) == 1
    np.testing.assert_array_equal(flat(layer.mask), NEW_MASK)
    np.testing.assert_array_equal(flat(layer.masked_kernel), NEW_W)


def test_bind_rejects_model_without_masks():
    with pytest.raises(ValueError, match=r"^model\b"):
        rigl.RigL(end_step=10).bind(dense_mlp())


# ---------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"drop_fraction": -0.1}, "drop_fraction"),
        ({"drop_fraction": 1.5}, "drop_fraction"),
        ({"update_freq": 0}, "update_freq"),
        ({"begin_step": 10, "end_step": 5}, "end_step"),
        ({"drop_fraction_decay": "linear"}, "drop_fraction_decay"),
        ({"grow_init": "ones"}, "grow_init"),
        ({"seed": -1}, "seed"),
    ],
)
@pytest.mark.parametrize("cls", [rigl.RigL, rigl.SET, rigl.SNFS])
def test_updater_validation_names_parameter(cls, kwargs, param):
    with pytest.raises(ValueError, match=rf"^{param}\b"):
        cls(**kwargs)


@pytest.mark.parametrize(
    "cls, kwargs, param",
    [
        (rigl.GradualPruning, {"sparsity": 1.0}, "sparsity"),
        (rigl.GradualPruning, {"sparsity": 0.5, "initial_sparsity": -0.1}, "initial_sparsity"),
        (rigl.GradualPruning, {"sparsity": 0.5, "update_freq": 0}, "update_freq"),
        (rigl.GradualPruning, {"sparsity": 0.5, "distribution": "nope"}, "distribution"),
        (rigl.SNIP, {"sparsity": -0.1}, "sparsity"),
    ],
)
def test_dense_to_sparse_validation_names_parameter(cls, kwargs, param):
    with pytest.raises(ValueError, match=rf"(?<![A-Za-z_]){param}(?![A-Za-z_])"):
        cls(**kwargs)


def test_get_updater():
    assert set(rigl.UPDATERS) == {"static", "set", "snfs", "rigl", "prune", "snip", "granet",
                                  "srigl"}
    updater = rigl.get_updater("rigl", drop_fraction=0.5, update_freq=7)
    assert isinstance(updater, rigl.RigL)
    assert updater.drop_fraction.initial == 0.5 and updater.schedule.update_freq == 7
    assert isinstance(rigl.get_updater("prune", sparsity=0.5), rigl.GradualPruning)
    with pytest.raises(ValueError, match=r"^method\b"):
        rigl.get_updater("nope")


def test_update_before_bind_raises():
    with pytest.raises(RuntimeError, match="bind"):
        rigl.SET(end_step=10).update(0)


def test_static_update_is_a_no_op():
    model = rigl.sparsify(dense_mlp(), 0.5)
    before = rigl.get_masks(model)
    result = rigl.Static().bind(model, built_optimizer(model, "sgd")).update(0)
    assert set(result.changed.values()) == {0} and not result.skipped
    for name, mask in rigl.get_masks(model).items():
        np.testing.assert_array_equal(mask, before[name])


@pytest.mark.parametrize("make", [
    lambda: rigl.RigL(update_freq=1),  # cosine decay needs end_step
    lambda: rigl.GradualPruning(sparsity=0.5, update_freq=1),
])
def test_update_without_end_step_names_end_step(make):
    model = rigl.sparsify(dense_mlp(), 0.0)
    updater = make().bind(model, built_optimizer(model, "sgd"))
    grads = [tf.ones(layer.mask.shape) for layer in rigl.masked_layers(model)]
    with pytest.raises(ValueError, match="end_step"):
        updater.update(0, gradients=grads)

"""SRigL (rigl.SRigL): constant fan-in with neuron ablation (rigl/srigl.py)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rigl
from rigl.optimizer_state import slots
from rigl.srigl import constant_fan_in, neuron_counts


def mlp(units=(24, 3), n_in=10, seed=0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((n_in,))]
    layers += [keras.layers.Dense(u, name=f"d{i}") for i, u in enumerate(units)]
    return keras.Sequential(layers)


def compiled(model, optimizer=None):
    model.compile(optimizer or keras.optimizers.SGD(0.1, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def batch(n_in=10, n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_in)).astype("float32")
    return x, (x[:, :3].argmax(1) % 3).astype("int64")


def check_constant_fan_in(updater, model):
    """Every live neuron holds k = B // L inputs, ablated ones none; B - L < k·L <= B."""
    for name, mask in rigl.get_masks(model).items():
        counts = neuron_counts(mask)
        live = int(np.count_nonzero(counts))
        budget = updater.budgets[name]
        k = budget // live
        assert set(counts[counts > 0].tolist()) == {k}, (name, counts)
        assert counts.sum() == k * live
        assert budget - live < k * live <= budget


# ---------------------------------------------------------------------------------- worked


def test_worked_example_grows_per_neuron():
    """Kernel 4 x 2, sparsity 0.5: B = 4, k = 2. f = 0.5 drops 2 of 4 layer-wide by |w|
    (0.1 and 0.3 go), then each neuron grows back to 2 by |g| in its own column: neuron 0
    takes row 2 (0.7), neuron 1 row 1 (0.9). RigL would grow 0.9 and 0.8, both in neuron 1."""
    inputs = keras.Input((4,))
    model = keras.Model(inputs, rigl.MaskedDense(2, use_bias=False, name="m")(inputs))
    layer = model.get_layer("m")
    mask = np.array([[1, 1], [1, 0], [0, 1], [0, 0]], bool)
    weights = np.array([[0.5, 0.4], [0.1, 0], [0, 0.3], [0, 0]], np.float32)
    layer.mask.assign(mask)
    layer.masked_kernel.assign(weights)
    grads = np.array([[0.0, 0.0], [0.2, -0.9], [-0.7, 0.1], [0.3, 0.8]], np.float32)
    opt = keras.optimizers.SGD(0.1, momentum=0.9)
    opt.build(model.trainable_variables)
    (slot,) = slots(opt, layer.masked_kernel)
    slot.assign(np.full((4, 2), 0.5, np.float32))
    updater = rigl.SRigL(sparsity=0.5, drop_fraction=0.5, drop_fraction_decay="constant",
                         update_freq=1, end_step=10).bind(model, opt)
    np.testing.assert_array_equal(layer.mask.numpy(), mask)  # already constant fan-in 2
    result = updater.update(0, gradients=[tf.constant(grads)])
    np.testing.assert_array_equal(layer.mask.numpy(), [[1, 1], [0, 1], [1, 0], [0, 0]])
    np.testing.assert_array_equal(layer.masked_kernel.numpy(),
                                  np.array([[0.5, 0.4], [0, 0], [0, 0], [0, 0]], np.float32))
    np.testing.assert_array_equal(slot.numpy(), [[0.5, 0.5], [0.5, 0], [0, 0.5], [0.5, 0.5]])
    assert result.changed == {"m": 2}


def test_ablation_removes_the_neuron_without_salient_weights():
    """d0 (8 -> 3, sparsity 0.75): B = 6, k0 = 2, gamma_sal = 1 needs 2 salient weights. Neuron
    2 has tiny weights and zero gradient: ablated; its budget goes to the others (k = 3)."""
    inputs = keras.Input((8,))
    h = rigl.MaskedDense(3, use_bias=False, name="h")(inputs)
    model = keras.Model(inputs, rigl.MaskedDense(2, use_bias=False, name="o")(h))
    h_layer = model.get_layer("h")
    mask = np.zeros((8, 3), bool)
    mask[[0, 1], 0] = mask[[2, 3], 1] = mask[[4, 5], 2] = True
    weights = np.zeros((8, 3), np.float32)
    weights[[0, 1], 0] = [0.9, 0.8]
    weights[[2, 3], 1] = [0.7, 0.6]
    weights[[4, 5], 2] = [0.01, 0.02]
    h_layer.mask.assign(mask)
    h_layer.masked_kernel.assign(weights)
    grads = np.zeros((8, 3), np.float32)
    grads[6:, :2] = [[0.5, 0.4], [0.3, 0.2]]
    updater = rigl.SRigL(sparsity=0.75, gamma_sal=1.0, drop_fraction=0.5,
                         drop_fraction_decay="constant", update_freq=1, end_step=5)
    updater.bind(model)
    np.testing.assert_array_equal(h_layer.mask.numpy(), mask)
    updater.update(0, gradients=[tf.constant(grads),
                                 tf.ones(model.get_layer("o").mask.shape)])
    # Keep 3 of 6 by |w|: 0.9, 0.8 (neuron 0), 0.7 (neuron 1); grads of 0.5, 0.4, 0.3 make
    # neurons 0 and 1 salient (3 and 2), neuron 2 has none: ablated, k = 6 // 2 = 3.
    new = h_layer.mask.numpy()
    assert neuron_counts(new).tolist() == [3, 3, 0]
    np.testing.assert_array_equal(np.flatnonzero(new[:, 0]), [0, 1, 6])
    np.testing.assert_array_equal(np.flatnonzero(new[:, 1]), [2, 6, 7])
    assert updater.live_neurons()["h"] == (2, 3)
    assert updater.live_neurons()["o"] == (2, 2)  # the last layer is never ablated


# ------------------------------------------------------------------------------ invariants


def test_bind_relays_to_constant_fan_in_with_initial_values():
    model = compiled(rigl.sparsify(mlp(), 0.8, "erk", seed=1))
    before = {layer.name: layer.masked_kernel.numpy() for layer in rigl.masked_layers(model)}
    masks = rigl.get_masks(model)
    updater = rigl.SRigL(sparsity=0.8, distribution="erk").bind(model)
    check_constant_fan_in(updater, model)
    for layer in rigl.masked_layers(model):
        new, old = layer.mask.numpy(), masks[layer.name] > 0
        kept = new & old
        np.testing.assert_array_equal(layer.masked_kernel.numpy()[kept], before[layer.name][kept])
        assert np.all(layer.masked_kernel.numpy()[new & ~old] != 0)  # an initializer draw
        assert np.all(layer.masked_kernel.numpy()[~new] == 0)
    again = rigl.get_masks(model)
    updater.bind(model)  # constant fan-in already: left as it is
    for name, mask in rigl.get_masks(model).items():
        np.testing.assert_array_equal(mask, again[name])


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), sparsity=st.sampled_from([0.5, 0.8, 0.9]),
       gamma=st.sampled_from([0.0, 0.3, 0.7, 1.0]), fraction=st.sampled_from([0.1, 0.3, 0.6]))
def test_updates_keep_constant_fan_in_and_zero_new_state(seed, sparsity, gamma, fraction):
    model = compiled(rigl.sparsify(mlp(seed=seed % 7), sparsity, seed=seed))
    updater = rigl.SRigL(sparsity=sparsity, gamma_sal=gamma, drop_fraction=fraction,
                         drop_fraction_decay="constant", update_freq=1, end_step=50,
                         seed=seed).bind(model)
    opt = model.optimizer
    rng = np.random.default_rng(seed)
    for step in range(3):
        for layer in rigl.masked_layers(model):
            for slot in slots(opt, layer.masked_kernel):
                slot.assign(rng.normal(size=slot.shape).astype("float32") + 5.0)
            noise = rng.normal(scale=0.1, size=layer.mask.shape).astype("float32")
            layer.masked_kernel.assign((layer.masked_kernel.numpy() + noise) * layer.mask.numpy())
        before = rigl.get_masks(model)
        updater.update(step, batch=batch(seed=seed + step))
        check_constant_fan_in(updater, model)
        for layer in rigl.masked_layers(model):
            born = (layer.mask.numpy() > 0) & (before[layer.name] == 0)
            assert np.all(layer.masked_kernel.numpy()[born] == 0)
            for slot in slots(opt, layer.masked_kernel):
                assert np.all(slot.numpy()[born] == 0)


def test_fit_keeps_constant_fan_in():
    model = compiled(rigl.sparsify(mlp(), 0.7, "erk"))
    x, y = batch(n=320)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    updater = rigl.SRigL(sparsity=0.7, distribution="erk", update_freq=2, gamma_sal=0.5)
    callback = rigl.SparseTraining(updater, data=ds)
    model.fit(ds, epochs=1, callbacks=[callback], verbose=0)
    assert len(callback.history) >= 3
    check_constant_fan_in(updater, model)


# ------------------------------------------------------------------------------- bad input


def test_bad_input_names_the_parameter():
    with pytest.raises(ValueError, match="gamma_sal"):
        rigl.SRigL(gamma_sal=1.5)
    with pytest.raises(ValueError, match="sparsity"):
        rigl.SRigL(sparsity=1.0)
    with pytest.raises(ValueError, match="distribution"):
        rigl.SRigL(distribution="nope")
    with pytest.raises(ValueError, match="pruning_scope: SRigL does not take it"):
        rigl.get_updater("srigl", pruning_scope="global")
    with pytest.raises(ValueError, match="fan_out: not an updater argument"):
        rigl.get_updater("srigl", fan_out=3)


def test_fan_in_that_cannot_be_met():
    assert constant_fan_in(10, 8, 3) == 3
    with pytest.raises(ValueError, match="sparsity: layer 'x' keeps 2 connections for 3"):
        constant_fan_in(2, 8, 3, "x")
    with pytest.raises(ValueError, match="budget: layer 'x'.*more than its 8 inputs"):
        constant_fan_in(30, 8, 3, "x")
    # 24 outputs of 10 inputs at 98%: 4 connections for 24 neurons.
    model = compiled(rigl.sparsify(mlp(), 0.98))
    with pytest.raises(ValueError, match="sparsity: layer 'd0' keeps"):
        rigl.SRigL(sparsity=0.98).bind(model)


def test_unsupported_layer_kinds_are_refused():
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.DepthwiseConv2D(3, name="dw"),
                            keras.layers.Flatten(), keras.layers.Dense(3, name="out")])
    model = compiled(rigl.sparsify(net, 0.5))
    with pytest.raises(ValueError, match="model: sparse weight 'dw' belongs to a "
                                         "MaskedDepthwiseConv2D"):
        rigl.SRigL(sparsity=0.5).bind(model)
    sparse = compiled(rigl.to_sparse(rigl.sparsify(mlp(), 0.5)))
    with pytest.raises(ValueError, match="sparse storage.*SRigL cannot run"):
        rigl.SRigL(sparsity=0.5).bind(sparse)


def test_conv2d_neurons_are_output_channels():
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(8, 3, name="c"),
                            keras.layers.Flatten(), keras.layers.Dense(3, name="out")])
    model = compiled(rigl.sparsify(net, 0.7, seed=2))
    x = np.random.default_rng(0).normal(size=(16, 6, 6, 3)).astype("float32")
    updater = rigl.SRigL(sparsity=0.7, update_freq=1, end_step=5, gamma_sal=0.5).bind(model)
    updater.update(0, batch=(x, np.arange(16) % 3))
    check_constant_fan_in(updater, model)
    assert rigl.get_masks(model)["c"].shape == (3, 3, 3, 8)


# ------------------------------------------------------------------- MirroredStrategy
MIRRORED_SCRIPT = """
x, y = make_data(640)
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
result = {}
for name, make, sparsity in [
        ("srigl", lambda: rigl.SRigL(SPARSITY, "erk", update_freq=4, gamma_sal=0.5), SPARSITY),
        ("granet", lambda: rigl.GraNet(SPARSITY, update_freq=4), 0.0)]:
    with strategy.scope():
        model, optimizer = build(sparsity)
    callback = rigl.SparseTraining(make(), data=ds)
    model.fit(ds, epochs=1, callbacks=[callback], verbose=0)
    result[name] = {"updates": len(callback.history),
                    "mismatches": rigl.masking.replica_mismatches(model),
                    "components": [len(components(l.mask)[1]) for l in rigl.masked_layers(model)],
                    "counts": {l.name: rigl.srigl.neuron_counts(l.mask.numpy()).tolist()
                               for l in rigl.masked_layers(model)},
                    "budgets": callback.updater.budgets if name == "srigl" else {}}
emit(result)
"""


def test_mirrored_replicas_hold_identical_masks(tmp_path_factory):
    from test_distributed import _run_script

    result = _run_script(tmp_path_factory, "new_methods_mirrored", MIRRORED_SCRIPT)
    for name in ("srigl", "granet"):
        assert result[name]["updates"] >= 3, name
        assert result[name]["components"] == [2, 2], name
        assert result[name]["mismatches"] == [], name
    for layer, counts in result["srigl"]["counts"].items():
        live = [c for c in counts if c]
        budget = result["srigl"]["budgets"][layer]
        assert set(live) == {budget // len(live)}, layer

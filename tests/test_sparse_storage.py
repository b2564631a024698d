"""Tests for rigl.storage.SparseStorage: the same updaters drive rigl.SparseDense (truly sparse
storage) and select exactly what they select on masked storage."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl
from rigl import storage as storage_module
from rigl.optimizer_state import slots
from rigl.storage import SparseStorage, storages
from rigl.updaters import uniform_block

N_IN, HIDDEN, UNITS = 24, 40, 5


def mlp():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((N_IN,))
    x = keras.layers.Dense(HIDDEN, activation="tanh", name="h")(inputs)
    return keras.Model(inputs, keras.layers.Dense(UNITS, name="o")(x))


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, N_IN)).astype("float32"), rng.integers(0, UNITS, n)


def loss_fn(y, logits):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)


def compiled(model):
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), loss_fn)
    model.optimizer.build(model.trainable_variables)
    return model


def twins(sparsity=0.6, seed=1):
    """A masked model and its truly sparse copy, compiled, with identical nonzero momenta."""
    masked = rigl.sparsify(mlp(), sparsity, seed=seed)
    sparse = compiled(rigl.to_sparse(masked))
    masked = compiled(masked)
    rng = np.random.default_rng(5)
    for name in ("h", "o"):
        m, s = masked.get_layer(name), sparse.get_layer(name)
        momentum = rng.uniform(1, 2, m.mask.shape).astype("float32")
        (m_slot,) = slots(masked.optimizer, m.masked_kernel)
        (s_slot,) = slots(sparse.optimizer, s.values)
        m_slot.assign(momentum)
        s_slot.assign(momentum[s.rows.numpy(), s.cols.numpy()])
    return masked, sparse


def state(model, name):
    """(mask, kernel, momentum) of a layer in the kernel's shape, from either storage."""
    layer = model.get_layer(name)
    if isinstance(layer, rigl.SparseDense):
        shape = layer.kernel_shape
        mask, kernel, momentum = np.zeros(shape, bool), np.zeros(shape), np.zeros(shape)
        (slot,) = slots(model.optimizer, layer.values)
        alive = layer.alive.numpy()
        rows, cols = layer.rows.numpy()[alive], layer.cols.numpy()[alive]
        mask[rows, cols] = True
        kernel[rows, cols] = layer.values.numpy()[alive]
        momentum[rows, cols] = slot.numpy()[alive]
        return mask, kernel, momentum
    (slot,) = slots(model.optimizer, layer.masked_kernel)
    mask = layer.mask.numpy().astype(bool)
    return mask, layer.masked_kernel.numpy() * mask, slot.numpy() * mask


def assert_same_update(masked, sparse, make_updater, step, batch=None, prunes=False):
    before = {name: state(masked, name) for name in ("h", "o")}
    results = [make_updater().bind(model, model.optimizer, total_steps=100).update(
        step, batch=batch) for model in (masked, sparse)]
    assert results[0].changed == results[1].changed
    for name in ("h", "o"):
        (m_mask, m_kernel, m_mom), (s_mask, s_kernel, s_mom) = (state(masked, name),
                                                                state(sparse, name))
        np.testing.assert_array_equal(s_mask, m_mask)
        np.testing.assert_array_equal(s_kernel, m_kernel)
        np.testing.assert_array_equal(s_mom, m_mom)
        old_mask, old_kernel, old_mom = before[name]
        born = s_mask & ~old_mask
        stayed = s_mask & old_mask  # kept, or dropped and regrown: weight and slots carried
        assert (s_kernel[born] == 0).all() and (s_mom[born] == 0).all()
        np.testing.assert_array_equal(s_kernel[stayed], old_kernel[stayed])
        np.testing.assert_array_equal(s_mom[stayed], old_mom[stayed])
        assert prunes or s_mask.sum() == old_mask.sum()
    return results[1]


def test_uniform_block_draws_the_dense_draws_numbers():
    seed = tf.constant([11, 7], tf.int64)
    full = tf.random.stateless_uniform([13, 29], seed).numpy().reshape(-1)
    for start, length in [(0, 29), (29, 58), (3, 10), (101, 200), (377 - 29, 29)]:
        np.testing.assert_array_equal(uniform_block(seed, start, length).numpy(),
                                      full[start:start + length])


@pytest.fixture(params=["one_block", "blocks"])
def block_size(request, monkeypatch):
    """Whole kernels in one block, or blocks of 2 rows (the running top-k across blocks, the
    cut of its buffer and a padded last block)."""
    if request.param == "blocks":
        monkeypatch.setattr(storage_module, "BLOCK_SIZE", 2 * HIDDEN)
    return request.param


def test_set_selects_the_same_connections_in_both_storages(block_size):
    masked, sparse = twins()
    if block_size == "blocks":
        assert [s.block_rows for s in storages(sparse)] == [2, 16]
    make = lambda: rigl.SET(update_freq=10, drop_fraction=0.5, end_step=100,  # noqa: E731
                            drop_fraction_decay="constant", seed=3)
    old_mask, old_kernel, _ = state(sparse, "h")
    result = assert_same_update(masked, sparse, make, step=10)
    assert result.changed["h"] > 0
    # Some just-dropped connections came back (assert_same_update checked that they kept
    # their weight and momentum): active before, not among the kept by |w|, active after.
    n_active = int(old_mask.sum())
    order = np.argsort(-np.where(old_mask, np.abs(old_kernel), -1).reshape(-1), kind="stable")
    dropped = order[n_active - n_active // 2:n_active]
    assert state(sparse, "h")[0].reshape(-1)[dropped].any()


def test_rigl_selects_the_same_connections_in_both_storages(block_size):
    masked, sparse = twins()
    make = lambda: rigl.RigL(update_freq=10, drop_fraction=0.4, end_step=100,  # noqa: E731
                             drop_fraction_decay="constant")
    result = assert_same_update(masked, sparse, make, step=10, batch=data())
    assert result.changed["h"] > 0


def test_kernel_regularizer_enters_rigls_grow_scores_as_in_masked_storage():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((N_IN,))
    x = keras.layers.Dense(HIDDEN, activation="tanh", name="h",
                           kernel_regularizer=keras.regularizers.L2(0.5))(inputs)
    model = keras.Model(inputs, keras.layers.Dense(UNITS, name="o")(x))
    masked = rigl.sparsify(model, 0.6, seed=1)
    sparse = compiled(rigl.to_sparse(masked))
    masked = compiled(masked)
    batch = data()
    updaters = [rigl.RigL(end_step=100).bind(m, m.optimizer) for m in (masked, sparse)]
    dense_grad = updaters[0].kernel_gradients(batch)[0].numpy()
    sparse_grad = updaters[1].kernel_gradients(batch)[0]
    assert isinstance(sparse_grad, rigl.updaters.SparseGradient)
    layer = sparse.get_layer("h")
    dense_from_factors = (sparse_grad.inputs.numpy().T @ sparse_grad.output_gradients.numpy())
    dense_from_factors[layer.rows.numpy(), layer.cols.numpy()] += sparse_grad.regularizer.numpy()
    np.testing.assert_allclose(dense_from_factors, dense_grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sparse_grad.values.numpy(),
                               dense_grad[layer.rows.numpy(), layer.cols.numpy()], rtol=1e-4,
                               atol=1e-6)


def test_static_changes_nothing():
    masked, sparse = twins()
    before = state(sparse, "h")
    result = rigl.Static().bind(sparse, sparse.optimizer).update(0)
    assert result.changed == {"h": 0, "o": 0}
    for a, b in zip(before, state(sparse, "h")):
        np.testing.assert_array_equal(a, b)


def test_gradual_pruning_counts_are_exact_and_pruned_entries_die():
    masked = rigl.sparsify(mlp(), 0.0)
    sparse = compiled(rigl.to_sparse(masked))
    masked = compiled(masked)
    make = lambda: rigl.GradualPruning(sparsity=0.9, update_freq=2,  # noqa: E731
                                       begin_step=0, end_step=4)
    assert_same_update(masked, sparse, make, step=2, prunes=True)
    updater = make().bind(sparse, sparse.optimizer, total_steps=100)
    updater.update(4)
    layer = sparse.get_layer("h")
    target = N_IN * HIDDEN - rigl.distributions.num_zeros(0.9, N_IN * HIDDEN)
    assert layer.active_count() == target
    assert layer.nnz == N_IN * HIDDEN  # the entries stay; pruned ones are dead and zero
    assert (layer.values.numpy()[~layer.alive.numpy()] == 0).all()
    sparse.fit(*data(), epochs=1, verbose=0)
    assert (layer.values.numpy()[~layer.alive.numpy()] == 0).all()
    assert layer.active_count() == target


def test_snip_prunes_sparse_storage_to_its_targets():
    masked = rigl.sparsify(mlp(), 0.0)
    sparse = compiled(rigl.to_sparse(masked))
    masked = compiled(masked)
    assert_same_update(masked, sparse, lambda: rigl.SNIP(sparsity=0.8), step=0, batch=data(),
                       prunes=True)
    assert sparse.get_layer("o").active_count() == HIDDEN * UNITS - (
        rigl.distributions.num_zeros(0.8, HIDDEN * UNITS))


def test_methods_that_cannot_run_on_sparse_storage_say_why():
    _, sparse = twins()
    assert not rigl.SNFS.runs_on_sparse_storage()
    assert all(rigl.methods.REGISTRY[name].updater.runs_on_sparse_storage()
               for name in ("static", "set", "rigl", "prune", "snip"))
    with pytest.raises(ValueError, match=r"^model: layers \['h', 'o'\] use sparse storage.*"
                                         r"momentum of absent connections"):
        rigl.SNFS(end_step=100).bind(sparse, sparse.optimizer)
    with pytest.raises(ValueError, match=r"^grow_init: 'random_normal'"):
        rigl.SET(end_step=100, grow_init="random_normal").bind(sparse, sparse.optimizer)


def test_a_nan_leaves_sparse_storage_unchanged():
    _, sparse = twins()
    layer = sparse.get_layer("h")
    values = layer.values.numpy()
    values[3] = np.nan
    layer.values.assign(values)
    before = [v.numpy().copy() for v in (layer.rows, layer.cols, layer.alive)]
    with pytest.warns(RuntimeWarning, match="NaN or Inf"):
        result = rigl.SET(end_step=100).bind(sparse, sparse.optimizer).update(0)
    assert result.skipped
    for a, v in zip(before, (layer.rows, layer.cols, layer.alive)):
        np.testing.assert_array_equal(a, v.numpy())


def test_sparse_training_drives_sparse_storage_in_fit():
    _, sparse = twins(sparsity=0.8)
    x, y = data(64)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    updater = rigl.RigL(update_freq=2, drop_fraction=0.3, end_step=6)
    callback = rigl.SparseTraining(updater, data=dataset)
    counts = [sparse.get_layer(name).active_count() for name in ("h", "o")]
    sparse.fit(dataset, epochs=2, verbose=0, callbacks=[callback])
    assert len(callback.history) >= 2 and sum(callback.history[0].changed.values()) > 0
    assert updater.update_traces == 1
    assert [sparse.get_layer(n).active_count() for n in ("h", "o")] == counts
    for name in ("h", "o"):
        layer = sparse.get_layer(name)
        flat = layer.rows.numpy().astype(np.int64) * layer.kernel_shape[1] + layer.cols.numpy()
        assert (np.diff(flat) > 0).all()
    assert all(isinstance(s, SparseStorage) for s in storages(sparse))

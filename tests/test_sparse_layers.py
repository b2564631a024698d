"""Tests for rigl.SparseDense (truly sparse storage) and rigl.to_sparse / rigl.to_masked."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl
from rigl import sparse_layers
from rigl.optimizer_state import slots
from rigl.sparse_layers import sparse_matmul


def mlp(n_in=12, hidden=16, units=4, activation="relu"):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((n_in,))
    x = keras.layers.Dense(hidden, activation=activation, name="h")(inputs)
    return keras.Model(inputs, keras.layers.Dense(units, name="o")(x))


def batch(n=6, n_in=12, units=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n_in)).astype("float32"), rng.integers(0, units, n)


def dense_kernel(layer):
    if isinstance(layer, rigl.SparseDense):
        return layer.dense_kernel()
    return layer.masked_kernel.numpy() * layer.mask.numpy()


def active(layer):
    if isinstance(layer, rigl.SparseDense):
        mask = np.zeros(layer.kernel_shape, bool)
        rows, cols, _ = layer.connections()
        mask[rows, cols] = True
        return mask
    return layer.mask.numpy().astype(bool)


def loss_fn(y, logits):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)


# ------------------------------------------------------------------------------------------
# conversion


def test_round_trip_is_exact_and_outputs_agree():
    masked = rigl.sparsify(mlp(), 0.8, seed=2)
    sparse = rigl.to_sparse(masked)
    for name in ("h", "o"):
        layer = sparse.get_layer(name)
        assert isinstance(layer, rigl.SparseDense)
        assert layer.nnz == int(masked.get_layer(name).mask.numpy().sum())
        np.testing.assert_array_equal(active(layer), active(masked.get_layer(name)))
        np.testing.assert_array_equal(dense_kernel(layer), dense_kernel(masked.get_layer(name)))
        np.testing.assert_array_equal(layer.bias.numpy(), masked.get_layer(name).bias.numpy())
    x, _ = batch()
    np.testing.assert_allclose(sparse(x).numpy(), masked(x).numpy(), rtol=1e-5, atol=1e-6)
    back = rigl.to_masked(sparse)
    for name in ("h", "o"):
        assert type(back.get_layer(name)) is rigl.MaskedDense
        np.testing.assert_array_equal(back.get_layer(name).mask.numpy(),
                                      masked.get_layer(name).mask.numpy())
        np.testing.assert_array_equal(back.get_layer(name).kernel.numpy(),
                                      masked.get_layer(name).kernel.numpy())
    np.testing.assert_array_equal(back(x).numpy(), masked(x).numpy())


def test_gradients_equal_the_masked_layers_at_active_positions():
    masked = rigl.sparsify(mlp(), 0.7, seed=1)
    sparse = rigl.to_sparse(masked)
    x, y = batch()
    grads = {}
    for kind, model in (("masked", masked), ("sparse", sparse)):
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = loss_fn(y, model(xt))
        variables = [model.get_layer(n).trainable_variables[0] for n in ("h", "o")]
        grads[kind] = tape.gradient(loss, [xt] + variables)
    np.testing.assert_allclose(grads["sparse"][0], grads["masked"][0], rtol=1e-5, atol=1e-6)
    for i, name in enumerate(("h", "o"), start=1):
        rows, cols, _ = sparse.get_layer(name).connections()
        np.testing.assert_allclose(grads["sparse"][i].numpy(),
                                   grads["masked"][i].numpy()[rows, cols], rtol=1e-5, atol=1e-6)


def test_sparse_matmul_matches_dense_product_and_gradients():
    rng = np.random.default_rng(3)
    shape = (9, 7)
    mask = rng.random(shape) < 0.3
    rows, cols = np.nonzero(mask)
    values = rng.standard_normal(rows.size).astype("float32")
    kernel = np.zeros(shape, "float32")
    kernel[rows, cols] = values
    x = tf.constant(rng.standard_normal((5, 9)).astype("float32"))
    v = tf.constant(values)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, v])
        y = sparse_matmul(x, v, tf.constant(rows, tf.int32), tf.constant(cols, tf.int32), shape)
        loss = tf.reduce_sum(y * tf.range(7, dtype=tf.float32))
    np.testing.assert_allclose(y.numpy(), x.numpy() @ kernel, rtol=1e-5, atol=1e-6)
    dy = np.tile(np.arange(7, dtype="float32"), (5, 1))
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), dy @ kernel.T, rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(loss, v).numpy(), (x.numpy().T @ dy)[rows, cols],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("block", [1, 4, 7, 1000])
def test_sparse_matmul_in_row_blocks_matches_the_dense_product(monkeypatch, block):
    """A layer cut into row blocks (blocks of 1 to all rows, an empty row included) gives
    the dense product and gradients, eagerly and inside a tf.function."""
    monkeypatch.setattr(sparse_layers, "CSR_BLOCK", block)
    monkeypatch.setattr(sparse_layers, "_MIN_BLOCK_ENTRIES_PER_OUTPUT", 0)
    rng = np.random.default_rng(4)
    shape = (11, 6)
    mask = rng.random(shape) < 0.4
    mask[3] = False  # a row without entries: an empty block when blocks are one row
    rows, cols = np.nonzero(mask)
    values = rng.standard_normal(rows.size).astype("float32")
    kernel = np.zeros(shape, "float32")
    kernel[rows, cols] = values
    assert sparse_layers.row_blocks(rows.size, shape) == min(11, -(-rows.size // block))
    x = tf.constant(rng.standard_normal((5, 11)).astype("float32"))
    weights = tf.constant(rng.standard_normal((5, 6)).astype("float32"))

    def run(x, v):
        with tf.GradientTape() as tape:
            tape.watch([x, v])
            y = sparse_matmul(x, v, tf.constant(rows, tf.int32), tf.constant(cols, tf.int32),
                              shape)
            loss = tf.reduce_sum(y * weights)
        return (y,) + tuple(tape.gradient(loss, [x, v]))

    for fn in (run, tf.function(run)):
        y, dx, dv = fn(x, tf.constant(values))
        np.testing.assert_allclose(y.numpy(), x.numpy() @ kernel, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dx.numpy(), weights.numpy() @ kernel.T, rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(dv.numpy(), (x.numpy().T @ weights.numpy())[rows, cols],
                                   rtol=1e-5, atol=1e-6)


def test_row_blocks_keep_a_wide_output_in_one_block():
    assert sparse_layers.row_blocks(2_000_000, (4096, 4096)) == 2
    assert sparse_layers.row_blocks(2_000_000, (4096, 1_000_000)) == 1
    assert sparse_layers.row_blocks(1000, (4096, 4096)) == 1


def test_leading_dimensions_are_flattened():
    layer = rigl.SparseDense(5, sparsity=0.5, name="t")
    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype("float32")
    out = layer(x).numpy()
    assert out.shape == (2, 3, 5)
    np.testing.assert_allclose(out[1, 2], layer(x[1, 2:3]).numpy()[0], rtol=1e-6)
    np.testing.assert_allclose(out, x @ layer.dense_kernel() + layer.bias.numpy(), rtol=1e-5,
                               atol=1e-6)


def test_to_sparse_rejects_a_model_never_sparsified():
    with pytest.raises(ValueError, match=r"^model: was never sparsified"):
        rigl.to_sparse(mlp())
    with pytest.raises(ValueError, match=r"^model: has no SparseDense"):
        rigl.to_masked(rigl.sparsify(mlp(), 0.5))


def test_to_sparse_keeps_convolutions_masked_with_a_warning():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, name="c")(inputs)
    x = keras.layers.Dense(4, name="d")(keras.layers.Flatten()(x))
    masked = rigl.sparsify(keras.Model(inputs, x), 0.5)
    with pytest.warns(UserWarning, match=r"\['c'\].*stay masked"):
        sparse = rigl.to_sparse(masked)
    assert type(sparse.get_layer("c")) is rigl.MaskedConv2D
    assert isinstance(sparse.get_layer("d"), rigl.SparseDense)
    np.testing.assert_array_equal(sparse.get_layer("c").mask.numpy(),
                                  masked.get_layer("c").mask.numpy())
    data = np.random.default_rng(0).standard_normal((2, 6, 6, 2)).astype("float32")
    np.testing.assert_allclose(sparse(data).numpy(), masked(data).numpy(), rtol=1e-5,
                               atol=1e-6)


# ------------------------------------------------------------------------------------------
# the layer


def test_layer_holds_only_its_entries_and_counts_exactly():
    layer = rigl.SparseDense(30, sparsity=0.9, name="s")
    layer.build((None, 20))
    assert layer.nnz == 600 - rigl.distributions.num_zeros(0.9, 600) == 60
    shapes = {w.name: tuple(w.shape) for w in layer.weights}
    assert shapes == {"values": (60,), "rows": (60,), "cols": (60,), "alive": (60,),
                      "bias": (30,)}
    assert layer.active_count() == 60
    flat = layer.rows.numpy().astype(np.int64) * 30 + layer.cols.numpy()
    assert (np.diff(flat) > 0).all()  # row-major, no repeats


def test_values_initializer_matches_the_dense_kernels_scale():
    layer = rigl.SparseDense(400, sparsity=0.5, kernel_initializer="he_normal", name="s")
    layer.build((None, 300))
    # He normal on a (300, 400) kernel: std sqrt(2 / 300).
    assert abs(np.std(layer.values.numpy()) / np.sqrt(2 / 300) - 1) < 0.05


@pytest.mark.parametrize(
    "kwargs, param",
    [({"units": 3}, "sparsity"), ({"units": 3, "sparsity": 1.0}, "sparsity"),
     ({"units": 3, "nnz": -1}, "nnz"),
     ({"units": 3, "nnz": 4, "kernel_constraint": "max_norm"}, "kernel_constraint")],
)
def test_constructor_errors_name_the_parameter(kwargs, param):
    with pytest.raises(ValueError, match=rf"^`?{param}\b"):
        rigl.SparseDense(**kwargs)


def test_orthogonal_initializer_is_rejected_at_build():
    layer = rigl.SparseDense(3, nnz=4, kernel_initializer="orthogonal")
    with pytest.raises(ValueError, match=r"^kernel_initializer\b"):
        layer.build((None, 5))


def test_save_load_and_weights_round_trip(tmp_path):
    sparse = rigl.to_sparse(rigl.sparsify(mlp(), 0.75, seed=4))
    x, _ = batch()
    path = str(tmp_path / "m.keras")
    sparse.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded(x).numpy(), sparse(x).numpy())
    layer = loaded.get_layer("h")
    assert isinstance(layer, rigl.SparseDense) and layer.nnz == sparse.get_layer("h").nnz
    np.testing.assert_array_equal(layer.rows.numpy(), sparse.get_layer("h").rows.numpy())
    config = sparse.get_layer("h").get_config()
    clone = rigl.SparseDense.from_config(config)
    assert clone.get_config() == config
    weights = str(tmp_path / "m.weights.h5")
    sparse.save_weights(weights)
    other = rigl.to_sparse(rigl.sparsify(mlp(), 0.75, seed=9))
    other.load_weights(weights)
    np.testing.assert_array_equal(other(x).numpy(), sparse(x).numpy())


def _store(layer, **changes):
    store = {name: np.array(w.numpy()) for name, w in
             [("values", layer.values), ("rows", layer.rows), ("cols", layer.cols),
              ("alive", layer.alive), ("bias", layer.bias)]}
    for name, edit in changes.items():
        edit(store[name])
    return store


def test_loading_bad_positions_is_an_error_naming_the_layer():
    layer = rigl.to_sparse(rigl.sparsify(mlp(), 0.75)).get_layer("h")

    def outside(rows):
        rows[-1] = 12  # the kernel has 12 rows

    store = _store(layer, rows=outside)
    with pytest.raises(ValueError, match=r"^layer 'h': position \(12, .*outside"):
        layer.load_own_variables(store)
    store = _store(layer)
    store["rows"][1], store["cols"][1] = store["rows"][0], store["cols"][0]
    with pytest.raises(ValueError, match=r"^layer 'h': position .* repeats"):
        layer.load_own_variables(store)
    store = _store(layer)
    store["rows"][[0, -1]] = store["rows"][[-1, 0]]
    with pytest.raises(ValueError, match=r"^layer 'h': positions are not in row-major order"):
        layer.load_own_variables(store)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_optimizer_slots_exist_only_for_the_values(optimizer):
    sparse = rigl.to_sparse(rigl.sparsify(mlp(), 0.75))
    opt = (keras.optimizers.SGD(0.1, momentum=0.9) if optimizer == "sgd"
           else keras.optimizers.Adam(0.01))
    sparse.compile(opt, loss_fn)
    x, y = batch()
    sparse.fit(x, y, epochs=1, verbose=0)
    layer = sparse.get_layer("h")
    found = slots(opt, layer.values)
    assert len(found) == (1 if optimizer == "sgd" else 2)
    assert all(tuple(slot.shape) == (layer.nnz,) for slot in found)
    kernel_sized = [v for v in opt.variables if tuple(v.shape) == layer.kernel_shape]
    assert kernel_sized == []


def test_dead_entries_stay_zero_through_training():
    sparse = rigl.to_sparse(rigl.sparsify(mlp(), 0.75))
    layer = sparse.get_layer("h")
    rows, cols, values = layer.connections()
    layer.set_connections(rows[:-5], cols[:-5], values[:-5])  # 5 entries dead
    assert layer.active_count() == layer.nnz - 5
    sparse.compile(keras.optimizers.SGD(0.5), loss_fn)
    x, y = batch()
    sparse.fit(x, y, epochs=3, verbose=0)
    dead = ~layer.alive.numpy()
    assert dead.sum() == 5 and (layer.values.numpy()[dead] == 0).all()
    assert np.count_nonzero(layer.values.numpy()[~dead]) == layer.nnz - 5


def test_jit_compile_is_refused_with_a_warning():
    sparse = rigl.to_sparse(rigl.sparsify(mlp(), 0.75))
    with pytest.warns(UserWarning, match="jit_compile"):
        sparse.compile(keras.optimizers.SGD(0.1), loss_fn, jit_compile=True)
    assert sparse.jit_compile is False


# ------------------------------------------------------------------------------------------
# readers and FLOPs see SparseDense


def test_readers_count_sparse_dense_like_its_masked_twin():
    masked = rigl.sparsify(mlp(), 0.75, "erk")
    sparse = rigl.to_sparse(masked)
    assert [w.name for w in rigl.sparse_weights(sparse)] == ["h", "o"]
    assert all(isinstance(w, rigl.SparseDense) for w in rigl.sparse_weights(sparse))
    assert rigl.masked_layers(sparse) == []  # the name says masked: SparseDense is not
    assert rigl.measured_sparsities(sparse) == rigl.measured_sparsities(masked)
    assert rigl.total_sparsity(sparse) == rigl.total_sparsity(masked)
    masks = rigl.get_masks(sparse)
    for name, mask in rigl.get_masks(masked).items():
        assert masks[name].dtype == bool
        np.testing.assert_array_equal(masks[name], mask)
    assert rigl.masking.replica_mismatches(sparse) == []
    # Dead entries are not active connections.
    layer = sparse.get_layer("h")
    rows, cols, values = layer.connections()
    layer.set_connections(rows[:-7], cols[:-7], values[:-7])
    assert rigl.masking.active_counts(sparse)["h"] == (layer.nnz - 7, 12 * 16)
    assert rigl.measured_sparsities(sparse)["h"] == 1 - (layer.nnz - 7) / (12 * 16)
    assert rigl.get_masks(sparse)["h"].sum() == layer.nnz - 7


def test_flops_and_size_of_to_sparse_equal_the_masked_models():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 12))  # a Dense applied at each of 5 steps counts every step
    x = keras.layers.Dense(16, activation="relu", name="h")(inputs)
    x = keras.layers.Flatten()(x)
    masked = rigl.sparsify(keras.Model(inputs, keras.layers.Dense(4, name="o")(x)), 0.8, "erk")
    sparse = rigl.to_sparse(masked)
    table = [row.as_dict() for row in rigl.flops.layer_table(sparse)]
    assert table == [row.as_dict() for row in rigl.flops.layer_table(masked)]
    assert table[0]["outputs"] == 5 * 16 and table[0]["nonzeros"] < table[0]["size"]
    for figure in (rigl.flops.inference_flops, rigl.flops.dense_inference_flops,
                   rigl.flops.model_size_mb, rigl.flops.num_params):
        assert figure(sparse) == figure(masked), figure.__name__
    assert [s.layer_type for s in rigl.flops.layer_specs(sparse)] == ["Dense", "Dense"]
    with pytest.raises(ValueError, match="sparsities: layers \\['h'\\] are masked or truly"):
        rigl.flops.layer_table(sparse, sparsities={"h": 0.5})


def test_readers_and_flops_are_o_nnz_for_a_huge_layer():
    """A 65,536 × 65,536 kernel: its dense bool mask alone would be 4.3 GB."""
    import tracemalloc

    inputs = keras.Input((65536,))
    model = keras.Model(inputs, rigl.SparseDense(65536, nnz=1000, name="huge")(inputs))
    tracemalloc.start()
    try:
        assert rigl.measured_sparsities(model) == {"huge": 1 - 1000 / 65536**2}
        assert rigl.total_sparsity(model) == 1 - 1000 / 65536**2
        (row,) = rigl.flops.layer_table(model)
        assert (row.nonzeros, row.size, row.fan_in) == (1000, 65536**2, 65536)
        assert rigl.flops.inference_flops(model) == (2 * 65536 * 1000 / 65536**2 + 1) * 65536
        assert rigl.flops.num_params(model) == 1000 + 65536
        rigl.flops.model_size_mb(model)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000


def test_callback_summaries_read_sparse_dense(tmp_path):
    sparse = rigl.to_sparse(rigl.sparsify(mlp(), 0.75))
    sparse.compile(keras.optimizers.SGD(0.1), loss_fn)
    x, y = batch(n=40)
    callback = rigl.SparseTraining(rigl.SET(update_freq=2, end_step=6),
                                   log_dir=str(tmp_path))
    sparse.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[callback])
    assert len(callback.history) == 4
    summaries = {}
    for path in tmp_path.glob("**/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                summaries.setdefault(value.tag, {})[event.step] = float(
                    tf.make_ndarray(value.tensor))
    expected = rigl.measured_sparsities(sparse)
    for name in ("h", "o"):
        assert sorted(summaries[f"sparsity/{name}"]) == [0, 2, 4, 6]
        values = list(summaries[f"sparsity/{name}"].values())
        assert values == pytest.approx([expected[name]] * 4, abs=1e-6)


@pytest.mark.parametrize("density", [0.01, 0.3, 0.8, 1.0])
def test_random_positions_are_distinct_sorted_and_uniform(density):
    """Every branch of the draw (NumPy's below 2% density, deduplicated draws above, the
    complement above half) gives nnz distinct row-major positions, each position equally
    often over many draws."""
    shape = (20, 30)
    nnz = int(density * 600)
    counts = np.zeros(600)
    for seed in range(300):
        rows, cols = sparse_layers.random_positions(shape, nnz, seed, "layer")
        flat = rows.astype(np.int64) * 30 + cols
        assert rows.dtype == cols.dtype == np.int32 and flat.size == nnz
        assert np.all(np.diff(flat) > 0) and flat[0] >= 0 and flat[-1] < 600
        counts[flat] += 1
    expected = 300 * density
    # Binomial(300, density) per position: 6 standard deviations.
    assert np.all(np.abs(counts - expected) <= 6 * np.sqrt(300 * density * (1 - density)) + 1e-9)

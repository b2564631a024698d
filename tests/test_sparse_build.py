"""Tests for rigl.sparse_model: truly sparse models built without a dense kernel."""

from __future__ import annotations

import tracemalloc

import keras
import numpy as np
import pytest

import rigl


def mlp_builder(n_in=20, hidden=(32, 24), units=5, **extra):
    def build(dense):
        inputs = keras.Input((n_in,))
        x = inputs
        for i, width in enumerate(hidden):
            x = dense(width, activation="relu", name=f"h{i}", **extra)(x)
        return keras.Model(inputs, dense(units, name="out")(x))

    return build


def active_counts(model):
    return {layer.name: layer.active_count() for layer in rigl.masking.walk_layers(model)
            if isinstance(layer, rigl.SparseDense)}


@pytest.mark.parametrize("kwargs", [
    dict(sparsity=0.9),
    dict(sparsity=0.8, distribution="er"),
    dict(sparsity=0.8, distribution="erk"),
    dict(sparsity=0.8, distribution="erk", erk_power_scale=0.5),
    dict(sparsity=0.7, distribution="erk", custom_sparsity={"h0": 0.95}),
    dict(sparsity=0.9, distribution="erk", dense_layers=["out"]),
    dict(sparsity=0.9, dense_layers=["h0"], custom_sparsity={"h1": 0.5}),
])
def test_nnz_equals_sparsify_then_to_sparse(kwargs):
    build = mlp_builder()
    model = rigl.sparse_model(build, **kwargs)
    reference = rigl.to_sparse(rigl.sparsify(build(keras.layers.Dense), **kwargs))
    assert active_counts(model) == active_counts(reference)
    for layer in model.layers[1:]:
        is_dense = layer.name in kwargs.get("dense_layers", ())
        assert type(layer) is (keras.layers.Dense if is_dense else rigl.SparseDense)
    assert rigl.measured_sparsities(model) == rigl.measured_sparsities(reference)


def test_model_trains_and_keeps_layer_arguments():
    build = mlp_builder(hidden=(16,), kernel_regularizer="l2", use_bias=False)
    model = rigl.sparse_model(build, 0.75, seed=3)
    h0 = model.get_layer("h0")
    assert h0.kernel_shape == (20, 16) and h0.nnz == 80 and h0.bias is None
    assert h0.kernel_regularizer is not None and h0.seed == 3
    assert keras.activations.serialize(h0.activation) == "relu"
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 20)).astype("float32"), rng.integers(0, 5, 64)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert h0.active_count() == 80


def test_same_seed_same_positions_other_seed_others():
    build = mlp_builder()
    a, b = rigl.sparse_model(build, 0.9, seed=1), rigl.sparse_model(build, 0.9, seed=1)
    c = rigl.sparse_model(build, 0.9, seed=2)
    rows_a = a.get_layer("h0").connections()[0:2]
    np.testing.assert_array_equal(np.stack(rows_a), np.stack(b.get_layer("h0").connections()[0:2]))
    assert not np.array_equal(np.stack(rows_a), np.stack(c.get_layer("h0").connections()[0:2]))


def test_unnamed_layers_get_names_by_call_order_and_sequential_works():
    def build(dense):
        return keras.Sequential([keras.Input((8,)), dense(6, activation="relu"), dense(3)])

    model = rigl.sparse_model(build, 0.5, dense_layers=["dense_1"])
    assert [layer.name for layer in model.layers] == ["dense", "dense_1"]
    assert isinstance(model.layers[0], rigl.SparseDense)
    assert model.layers[0].nnz == 24
    assert type(model.layers[1]) is keras.layers.Dense


def test_errors_match_sparsify():
    build = mlp_builder()
    reference = build(keras.layers.Dense)
    for kwargs in (dict(custom_sparsity={"nope": 0.5}), dict(dense_layers=["nope"]),
                   dict(dense_layers="h0"), dict(dense_layers=["h0", "h1", "out"]),
                   dict(custom_sparsity={"h0": 0.5}, dense_layers=["h0"]),
                   dict(distribution="gaussian"), dict(sparsity=1.0)):
        kwargs = {"sparsity": 0.9, **kwargs}
        with pytest.raises(ValueError) as expected:
            rigl.sparsify(reference, **kwargs)
        with pytest.raises(ValueError) as got:
            rigl.sparse_model(build, **kwargs)
        assert str(got.value) == str(expected.value)


def test_build_that_changes_between_calls_is_refused():
    calls = []

    def build(dense):
        calls.append(1)
        inputs = keras.Input((8,))
        x = dense(4 + len(calls), name="h")(inputs)
        return keras.Model(inputs, dense(2, name="out")(x))

    with pytest.raises(ValueError, match="build: made different layers on its two calls"):
        rigl.sparse_model(build, 0.5)

    widths = iter([8, 9])

    def build_other_input(dense):
        inputs = keras.Input((next(widths),))
        return keras.Model(inputs, dense(2, name="out")(inputs))

    with pytest.raises(ValueError, match="build: layer 'out' has kernel shape"):
        rigl.sparse_model(build_other_input, 0.5)


def test_bad_builds_are_refused():
    def foreign(dense):
        inputs = keras.Input((8,))
        x = keras.layers.Dense(4, name="plain")(inputs)
        return keras.Model(inputs, dense(2, name="out")(x))

    with pytest.raises(ValueError, match=r"build: layers \['plain'\] were not made by dense"):
        rigl.sparse_model(foreign, 0.5)

    def repeated(dense):
        inputs = keras.Input((8,))
        return keras.Model(inputs, dense(2, name="a")(dense(3, name="a")(inputs)))

    with pytest.raises(ValueError, match="dense: layer name 'a' is used twice"):
        rigl.sparse_model(repeated, 0.5)

    def unused(dense):
        inputs = keras.Input((8,))
        dense(3, name="lost")
        return keras.Model(inputs, dense(2, name="out")(inputs))

    with pytest.raises(ValueError, match=r"build: layers \['lost'\] made by dense\(\) are not"):
        rigl.sparse_model(unused, 0.5)

    def reserved(dense):
        inputs = keras.Input((8,))
        return keras.Model(inputs, dense(2, seed=1)(inputs))

    with pytest.raises(ValueError, match=r"dense: \['seed'\] are set by rigl.sparse_model"):
        rigl.sparse_model(reserved, 0.5)

    with pytest.raises(ValueError, match="build: expected a keras.Model"):
        rigl.sparse_model(lambda dense: dense(3), 0.5)
    with pytest.raises(ValueError, match="build: expected a function"):
        rigl.sparse_model(keras.Sequential(), 0.5)

    def constrained(dense):
        inputs = keras.Input((8,))
        return keras.Model(inputs, dense(2, kernel_constraint="max_norm")(inputs))

    with pytest.raises(ValueError, match="kernel_constraint"):
        rigl.sparse_model(constrained, 0.5)


def test_huge_mlp_builds_in_nnz_memory():
    """784 → 65,536 → 65,536 → 10 at 99.9%: the dense middle kernel would be 17 GB."""
    def build(dense):
        inputs = keras.Input((784,))
        x = dense(65536, activation="relu", name="h1")(inputs)
        x = dense(65536, activation="relu", name="h2")(x)
        return keras.Model(inputs, dense(10, name="out")(x))

    tracemalloc.start()
    try:
        model = rigl.sparse_model(build, 0.999)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    sizes = {"h1": 784 * 65536, "h2": 65536 * 65536, "out": 65536 * 10}
    expected = {name: n - rigl.distributions.num_zeros(0.999, n) for name, n in sizes.items()}
    assert {name: model.get_layer(name).nnz for name in sizes} == expected
    nnz = sum(expected.values())  # 4,346,971
    variable_bytes = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
                         for v in model.weights)
    biases = 4 * (65536 + 65536 + 10)
    # values, rows, cols: 4 bytes each; alive: 1 byte.
    assert variable_bytes == 13 * nnz + biases
    # Host (numpy) allocations while building: positions drawn in O(nnz), never a dense mask
    # (the bool mask of h2 alone would be 4.3 GB).
    assert peak < 64 * nnz

"""Tests for rigl.masking: sparsify, strip and the mask readers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest

import rigl
from rigl.distributions import num_zeros

PLAIN_TYPES = (keras.layers.Dense, keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
TWINS = {
    keras.layers.Dense: rigl.MaskedDense,
    keras.layers.Conv2D: rigl.MaskedConv2D,
    keras.layers.DepthwiseConv2D: rigl.MaskedDepthwiseConv2D,
}


# ---------------------------------------------------------------------------------------------
# Models and helpers


def dense_sequential():
    return keras.Sequential([
        keras.Input((20,)),
        keras.layers.Dense(32, activation="relu", name="h"),
        keras.layers.Dense(3, name="o"),
    ], name="mlp")


def conv_functional():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
    x = keras.layers.Conv2D(6, 1, name="c2")(x)
    x = keras.layers.Flatten(name="flat")(x)
    outputs = keras.layers.Dense(3, name="o")(x)
    return keras.Model(inputs, outputs, name="convnet")


def conv_sequential():
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, name="c1"),
        keras.layers.DepthwiseConv2D(3, name="dw"),
        keras.layers.Flatten(),
        keras.layers.Dense(3, name="o"),
    ])


def nested_functional():
    inner = keras.Sequential([
        keras.Input((20,)),
        keras.layers.Dense(16, activation="relu", name="in1"),
        keras.layers.Dense(12, name="in2"),
    ], name="inner")
    inputs = keras.Input((20,))
    x = inner(inputs)
    outputs = keras.layers.Dense(3, name="o")(x)
    return keras.Model(inputs, outputs, name="outer")


MODELS = {
    "dense_sequential": (dense_sequential, (20,)),
    "conv_sequential": (conv_sequential, (8, 8, 3)),
    "conv_functional": (conv_functional, (8, 8, 3)),
    "nested_functional": (nested_functional, (20,)),
}


def build(kind, seed=0):
    keras.utils.set_random_seed(seed)
    model = MODELS[kind][0]()
    # Non-zero biases so that "bias copied" is not vacuous.
    rng = np.random.default_rng(seed)
    for layer in walk(model):
        if isinstance(layer, PLAIN_TYPES) and layer.bias is not None:
            layer.bias.assign(rng.normal(size=layer.bias.shape).astype("float32"))
    return model


def walk(model):
    out = []
    for layer in model.layers:
        out.append(layer)
        if isinstance(layer, keras.Model):
            out.extend(walk(layer))
    return out


def by_name(model):
    # Input layers are renamed by keras.models.clone_model; they hold no weights.
    return {layer.name: layer for layer in walk(model)
            if not isinstance(layer, keras.Model | keras.layers.InputLayer)}


def kernel_of(layer):
    return layer.masked_kernel if isinstance(layer, rigl.layers.MaskedLayerMixin) else layer.kernel


def snapshot(model):
    return {name: (type(layer), [w.copy() for w in layer.get_weights()])
            for name, layer in by_name(model).items()}


def maskable_sizes(model):
    return {layer.name: int(np.prod(kernel_of(layer).shape))
            for layer in walk(model) if type(layer) in TWINS}


def random_input(kind, n=5, seed=0):
    shape = MODELS[kind][1]
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


def assert_sparsified(original, sparse, sparsities):
    """Checks every layer of ``sparse`` against ``original`` and per-layer ``sparsities``."""
    originals = by_name(original)
    copies = by_name(sparse)
    assert set(originals) == set(copies)
    for name, layer in copies.items():
        source = originals[name]
        if name in sparsities:
            assert type(layer) is TWINS[type(source)], name
            mask = layer.mask.numpy()
            kernel = layer.masked_kernel.numpy()
            original_kernel = kernel_of(source).numpy()
            assert set(np.unique(mask)) <= {0.0, 1.0}
            assert int((mask == 0).sum()) == num_zeros(sparsities[name], mask.size), name
            assert np.all(kernel[mask == 0] == 0.0)
            np.testing.assert_array_equal(kernel[mask == 1], original_kernel[mask == 1])
            if source.bias is not None:
                np.testing.assert_array_equal(layer.bias.numpy(), source.bias.numpy())
        else:
            assert type(layer) is type(source), name
            for a, b in zip(layer.get_weights(), source.get_weights()):
                np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# sparsify


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_sparsify_uniform(kind):
    model = build(kind)
    before = snapshot(model)
    sparse = rigl.sparsify(model, 0.7, "uniform", seed=3)
    assert sparse is not model
    assert type(sparse) is type(model)
    sizes = maskable_sizes(model)
    assert_sparsified(model, sparse, dict.fromkeys(sizes, 0.7))
    assert [layer.name for layer in rigl.masked_layers(sparse)] == list(sizes)
    # Original untouched: same types, same weights, no masks.
    after = snapshot(model)
    assert before.keys() == after.keys()
    for name, (cls, weights) in before.items():
        assert after[name][0] is cls
        for a, b in zip(weights, after[name][1]):
            np.testing.assert_array_equal(a, b)
    assert rigl.masked_layers(model) == []
    # The copy runs and is a different set of variables.
    x = random_input(kind)
    assert sparse(x).shape == model(x).shape
    kernel_ids = {id(kernel_of(layer)) for layer in walk(model) if type(layer) in TWINS}
    assert not kernel_ids & {id(layer.masked_kernel) for layer in rigl.masked_layers(sparse)}


def test_sparsify_nested_model_masks_inner_layers():
    model = build("nested_functional")
    sparse = rigl.sparsify(model, 0.5)
    inner = sparse.get_layer("inner")
    assert isinstance(inner, keras.Sequential)
    assert [type(layer) for layer in inner.layers] == [rigl.MaskedDense, rigl.MaskedDense]
    assert type(sparse.get_layer("o")) is rigl.MaskedDense
    assert sorted(rigl.get_masks(sparse)) == ["in1", "in2", "o"]


def test_get_masks_measured_and_total_sparsity():
    model = build("dense_sequential")
    sparse = rigl.sparsify(model, 0.75, custom_sparsity={"o": 0.5})
    masks = rigl.get_masks(sparse)
    assert set(masks) == {"h", "o"}
    assert masks["h"].shape == (20, 32) and masks["o"].shape == (32, 3)
    measured = rigl.measured_sparsities(sparse)
    assert measured["h"] == pytest.approx(num_zeros(0.75, 640) / 640)
    assert measured["o"] == pytest.approx(num_zeros(0.5, 96) / 96)
    zeros = num_zeros(0.75, 640) + num_zeros(0.5, 96)
    assert rigl.total_sparsity(sparse) == pytest.approx(zeros / 736)
    with pytest.raises(ValueError, match="model"):
        rigl.total_sparsity(model)


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.29, 0.5, 0.95, 0.999])
def test_exact_zero_count_per_layer(sparsity):
    model = build("conv_functional")
    sparse = rigl.sparsify(model, sparsity)
    assert_sparsified(model, sparse, dict.fromkeys(maskable_sizes(model), sparsity))


def test_same_seed_same_masks_other_seed_other_masks():
    model = build("conv_functional")
    a = rigl.get_masks(rigl.sparsify(model, 0.6, seed=11))
    b = rigl.get_masks(rigl.sparsify(model, 0.6, seed=11))
    c = rigl.get_masks(rigl.sparsify(model, 0.6, seed=12))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert any(not np.array_equal(a[name], c[name]) for name in a)
    # Different layers of the same shape do not get the same mask either.
    other = rigl.get_masks(rigl.sparsify(build("nested_functional"), 0.5, seed=0))
    assert other["in1"].shape != other["o"].shape or not np.array_equal(
        other["in1"], other["o"])


def test_masks_do_not_depend_on_weights():
    a = rigl.get_masks(rigl.sparsify(build("dense_sequential", seed=0), 0.5, seed=4))
    b = rigl.get_masks(rigl.sparsify(build("dense_sequential", seed=1), 0.5, seed=4))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def _mask_digest(masks):
    digest = hashlib.sha256()
    for name in sorted(masks):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(masks[name], dtype=np.float32).tobytes())
    return digest.hexdigest()


_FRESH_PROCESS_SCRIPT = textwrap.dedent("""
    import hashlib, json, sys
    import keras, numpy as np
    import rigl
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, name="o")(x)
    masks = rigl.get_masks(rigl.sparsify(keras.Model(inputs, outputs), 0.7, "erk", seed=5))
    digest = hashlib.sha256()
    for name in sorted(masks):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(masks[name], dtype=np.float32).tobytes())
    print(json.dumps({"digest": digest.hexdigest(),
                      "zeros": {k: int((v == 0).sum()) for k, v in masks.items()}}))
""")


def test_masks_identical_in_fresh_process_with_other_hash_seed():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, name="o")(x)
    masks = rigl.get_masks(rigl.sparsify(keras.Model(inputs, outputs), 0.7, "erk", seed=5))
    env = dict(os.environ, PYTHONHASHSEED="12345", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", _FRESH_PROCESS_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["zeros"] == {k: int((v == 0).sum()) for k, v in masks.items()}
    assert result["digest"] == _mask_digest(masks)


def test_dense_layers_stay_plain():
    model = build("conv_functional")
    sparse = rigl.sparsify(model, 0.8, dense_layers=["c1", "o"])
    sizes = maskable_sizes(model)
    assert_sparsified(model, sparse, {"dw": 0.8, "c2": 0.8})
    assert type(sparse.get_layer("c1")) is keras.layers.Conv2D
    assert type(sparse.get_layer("o")) is keras.layers.Dense
    assert sorted(rigl.get_masks(sparse)) == ["c2", "dw"]
    assert set(sizes) == {"c1", "dw", "c2", "o"}


def test_dense_layers_inside_nested_model():
    model = build("nested_functional")
    sparse = rigl.sparsify(model, 0.5, dense_layers=["in2"])
    assert_sparsified(model, sparse, {"in1": 0.5, "o": 0.5})
    assert type(sparse.get_layer("inner").get_layer("in2")) is keras.layers.Dense


def test_custom_sparsity_overrides_distribution():
    model = build("conv_functional")
    sparse = rigl.sparsify(model, 0.8, custom_sparsity={"c1": 0.25, "o": 0.0})
    assert_sparsified(model, sparse, {"c1": 0.25, "dw": 0.8, "c2": 0.8, "o": 0.0})
    assert np.all(sparse.get_layer("o").mask.numpy() == 1.0)


def test_erk_distribution_matches_layer_sparsities_and_target():
    model = build("conv_functional")
    shapes = {layer.name: tuple(kernel_of(layer).shape)
              for layer in walk(model) if type(layer) in TWINS}
    expected = rigl.layer_sparsities(shapes, 0.8, "erk")
    sparse = rigl.sparsify(model, 0.8, "erk")
    assert_sparsified(model, sparse, expected)
    assert len({round(s, 6) for s in expected.values()}) > 1  # really non-uniform
    assert rigl.total_sparsity(sparse) == pytest.approx(0.8, abs=0.01)
    # ERK: the larger sum(shape) / prod(shape), the denser the layer.
    measured = rigl.measured_sparsities(sparse)
    raw = {name: sum(shape) / np.prod(shape) for name, shape in shapes.items()}
    by_density = sorted(raw, key=raw.get, reverse=True)
    assert [measured[name] for name in by_density] == sorted(measured.values())
    assert measured["c1"] > measured["o"]  # (3,3,3,4): 13/108 < (96,3): 99/288


def test_erk_with_dense_layers_keeps_target_over_masked_layers():
    model = build("conv_functional")
    sparse = rigl.sparsify(model, 0.9, "erk", dense_layers=["c1"])
    assert rigl.total_sparsity(sparse) == pytest.approx(0.9, abs=0.01)


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"custom_sparsity": {"nope": 0.5}}, "custom_sparsity"),
        ({"custom_sparsity": {"h": 1.0}}, "custom_sparsity"),
        ({"dense_layers": ["nope"]}, "dense_layers"),
        ({"dense_layers": "h"}, "dense_layers"),
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"sparsity": 1.5}, "sparsity"),
        ({"sparsity": float("nan")}, "sparsity"),
        ({"distribution": "nope"}, "distribution"),
        ({"dense_layers": ["h", "o"]}, "model"),
    ],
)
def test_sparsify_validation_names_parameter(kwargs, param):
    model = build("dense_sequential")
    kwargs = {"sparsity": 0.5, **kwargs}
    with pytest.raises(ValueError, match=rf"(?<![A-Za-z_]){param}(?![A-Za-z_])"):
        rigl.sparsify(model, **kwargs)


def test_sparsify_rejects_model_without_maskable_layer():
    model = keras.Sequential([keras.Input((4, 4)), keras.layers.Flatten()])
    with pytest.raises(ValueError, match=r"^model\b"):
        rigl.sparsify(model, 0.5)


def test_sparsify_of_a_subclassed_model_keras_cannot_rebuild_asks_for_copy_false():
    # Subclassed models are sparsified by path (tests/test_any_model.py); this one, defined
    # in a function, cannot be rebuilt from its config, so it can only be masked in place.
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    model = Subclassed()
    model(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match=r"^model: cannot copy .*copy=False"):
        rigl.sparsify(model, 0.5)
    assert rigl.sparsify(model, 0.5, copy=False).model is model


def test_sparsify_rejects_unbuilt_sequential():
    model = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=r"^model\b"):
        rigl.sparsify(model, 0.5)


def test_sparsify_with_duplicate_layer_names_across_nesting():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, name="d")], name="inner")
    inputs = keras.Input((8,))
    outputs = inner(keras.layers.Dense(8, name="d")(inputs))
    model = keras.Model(inputs, outputs)
    # Layers are addressed by name (masks, custom_sparsity, dense_layers): refuse ambiguity.
    with pytest.raises(ValueError, match=r"^model: layer names \['d'\]"):
        rigl.sparsify(model, 0.5)
    with pytest.raises(ValueError, match=r"^model: layer names \['d'\]"):
        rigl.strip(model)


# ---------------------------------------------------------------------------------------------
# strip


def _train_a_bit(model, kind):
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    x = random_input(kind, n=32, seed=1)
    y = np.random.default_rng(2).normal(size=(32, 3)).astype("float32")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_strip_returns_plain_keras_with_masked_kernels(kind):
    sparse = rigl.sparsify(build(kind), 0.6, seed=1)
    _train_a_bit(sparse, kind)
    plain = rigl.strip(sparse)
    assert rigl.masked_layers(plain) == []
    copies = by_name(plain)
    for layer in rigl.masked_layers(sparse):
        stripped = copies[layer.name]
        assert type(stripped) is rigl.layers.PLAIN_TWINS[type(layer)]
        np.testing.assert_array_equal(kernel_of(stripped).numpy(),
                                      layer.masked_kernel.numpy())
        assert np.all(kernel_of(stripped).numpy()[layer.mask.numpy() == 0] == 0.0)
        np.testing.assert_array_equal(stripped.bias.numpy(), layer.bias.numpy())
    assert not any("Masked" in type(layer).__name__ for layer in walk(plain))
    x = random_input(kind, n=7, seed=3)
    np.testing.assert_allclose(plain.predict(x, verbose=0), sparse.predict(x, verbose=0),
                               rtol=0, atol=1e-6)
    # The sparse model itself is untouched by strip.
    assert len(rigl.masked_layers(sparse)) == len(maskable_sizes(build(kind)))


def test_strip_zeroes_masked_positions_even_if_kernel_is_not():
    sparse = rigl.sparsify(build("dense_sequential"), 0.5)
    layer = sparse.get_layer("h")
    layer.masked_kernel.assign(np.ones(layer.mask.shape, "float32"))
    plain = rigl.strip(sparse)
    np.testing.assert_array_equal(plain.get_layer("h").kernel.numpy(), layer.mask.numpy())


_LOAD_WITHOUT_RIGL = textwrap.dedent("""
    import sys
    import keras, numpy as np
    model = keras.saving.load_model(sys.argv[1])
    assert "rigl" not in sys.modules, "loading needed rigl"
    np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
    print(sorted({type(layer).__module__.split(".")[0] for layer in model.layers}))
""")


def test_stripped_model_saves_and_loads_with_plain_keras(tmp_path):
    sparse = rigl.sparsify(build("conv_functional"), 0.7, "erk")
    _train_a_bit(sparse, "conv_functional")
    plain = rigl.strip(sparse)
    path = tmp_path / "plain.keras"
    plain.save(path)
    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json").decode()
    assert "rigl" not in config and "Masked" not in config
    x = random_input("conv_functional", n=4, seed=5)
    expected = sparse.predict(x, verbose=0)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-6)
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_RIGL, str(path), str(tmp_path / "x.npy"),
         str(tmp_path / "y.npy")],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-6)


def test_strip_rejects_subclassed_model():
    class Subclassed(keras.Model):
        def call(self, x):
            return x

    model = Subclassed()
    model(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match=r"^model\b"):
        rigl.strip(model)

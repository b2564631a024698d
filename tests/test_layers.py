"""Tests for rigl.layers: MaskedDense, MaskedConv2D and MaskedDepthwiseConv2D."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl

LAYER_CASES = {
    # name: (layer factory, input shape, expected kernel shape)
    "dense": (lambda **kw: rigl.MaskedDense(7, name="m", **kw), (20,), (20, 7)),
    "conv": (lambda **kw: rigl.MaskedConv2D(4, 3, name="m", **kw), (8, 8, 3), (3, 3, 3, 4)),
    "depthwise": (
        lambda **kw: rigl.MaskedDepthwiseConv2D(3, depth_multiplier=2, name="m", **kw),
        (8, 8, 3),
        (3, 3, 3, 2),
    ),
}
PLAIN = {
    "dense": keras.layers.Dense,
    "conv": keras.layers.Conv2D,
    "depthwise": keras.layers.DepthwiseConv2D,
}


def _kernel_kwargs(case, **kwargs):
    """DepthwiseConv2D calls its kernel arguments depthwise_*."""
    if case != "depthwise":
        return kwargs
    return {k.replace("kernel_", "depthwise_"): v for k, v in kwargs.items()}


def _model(case, **layer_kwargs):
    factory, input_shape, _ = LAYER_CASES[case]
    layer_kwargs = _kernel_kwargs(case, **layer_kwargs)
    inputs = keras.Input(input_shape)
    x = factory(**layer_kwargs)(inputs)
    if len(input_shape) > 1:
        x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inputs, outputs)


def _layer(model):
    return model.get_layer("m")


def _set_random_mask(layer, density=0.5, seed=0):
    rng = np.random.default_rng(seed)
    mask = (rng.random(tuple(layer.mask.shape)) < density).astype("float32")
    mask.flat[0], mask.flat[-1] = 1.0, 0.0  # at least one active and one masked position
    layer.mask.assign(mask)
    layer.masked_kernel.assign(layer.masked_kernel.numpy() * mask)
    return mask


def _data(case, n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *LAYER_CASES[case][1])).astype("float32")
    y = rng.integers(0, 3, size=n)
    return x, y


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_mask_is_non_trainable_weight_of_kernel_shape(case):
    keras.utils.set_random_seed(0)
    model = _model(case)
    layer = _layer(model)
    kernel_shape = LAYER_CASES[case][2]
    assert tuple(layer.masked_kernel.shape) == kernel_shape
    assert tuple(layer.mask.shape) == kernel_shape
    assert not layer.mask.trainable
    assert any(w is layer.mask for w in layer.non_trainable_weights)
    assert not any(w is layer.mask for w in layer.trainable_weights)
    assert layer.mask.path.endswith("mask")
    assert layer.mask.dtype == "bool"  # a byte per weight, not the kernel's four
    np.testing.assert_array_equal(layer.mask.numpy(), np.ones(kernel_shape, bool))
    assert isinstance(layer, PLAIN[case])
    assert [id(x) for x in rigl.masked_layers(model)] == [id(layer)]


def test_mask_accepts_0_1_numbers_and_the_constraint_zeroes_where_false():
    layer = _layer(_model("dense"))
    values = np.zeros((20, 7), "float32")
    values[::2] = 1.0  # 0/1 floats, as masks were stored before they were boolean
    layer.mask.assign(values)
    np.testing.assert_array_equal(layer.mask.numpy(), values != 0)
    kernel = np.arange(1.0, 141.0, dtype="float32").reshape(20, 7)
    constrained = layer.masked_kernel.constraint(tf.constant(kernel)).numpy()
    np.testing.assert_array_equal(constrained, np.where(values != 0, kernel, 0.0))


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam"])
@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_kernel_stays_exactly_zero_where_masked_after_fit(case, optimizer):
    keras.utils.set_random_seed(1)
    model = _model(case)
    layer = _layer(model)
    mask = _set_random_mask(layer)
    before = layer.masked_kernel.numpy().copy()
    opt = (keras.optimizers.SGD(0.1, momentum=0.9) if optimizer == "sgd_momentum"
           else keras.optimizers.Adam(0.05))
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data(case)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    kernel = layer.masked_kernel.numpy()
    np.testing.assert_array_equal(layer.mask.numpy(), mask)  # training never touches the mask
    assert np.all(kernel[mask == 0] == 0.0)
    # Training did move the active weights (so the check above is not vacuous) ...
    assert np.count_nonzero(kernel[mask == 1] != before[mask == 1]) > 0.9 * mask.sum()
    # ... and the momentum of the masked positions is non-zero: without the constraint the
    # masked weights would have moved.
    slots = rigl.optimizer_state.slots(opt, layer.masked_kernel)
    assert slots
    assert np.count_nonzero(slots[0].numpy()[mask == 0]) > 0


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_kernel_gradient_is_dense(case):
    keras.utils.set_random_seed(2)
    model = _model(case)
    layer = _layer(model)
    mask = _set_random_mask(layer)
    x, y = _data(case, n=16)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    grad = tape.gradient(loss, layer.masked_kernel).numpy()
    assert grad.shape == mask.shape
    # Every masked position gets a (generically) non-zero gradient.
    assert np.all(grad[mask == 0] != 0.0)
    assert np.all(grad[mask == 1] != 0.0)


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_masked_forward_equals_plain_layer_with_zeroed_kernel(case):
    keras.utils.set_random_seed(3)
    model = _model(case)
    layer = _layer(model)
    _set_random_mask(layer)
    plain = PLAIN[case].from_config(layer.get_config())
    x, _ = _data(case, n=4)
    plain.build(x.shape)
    plain.set_weights([layer.masked_kernel.numpy(), layer.bias.numpy()])
    sub = keras.Model(model.input, layer.output)
    np.testing.assert_allclose(sub(x).numpy(), plain(x).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_user_kernel_constraint_applies_and_is_reported(case):
    keras.utils.set_random_seed(4)
    model = _model(case, kernel_constraint=keras.constraints.NonNeg())
    layer = _layer(model)
    mask = _set_random_mask(layer)
    # The config holds only the user's constraint, not the mask constraint.
    key = _kernel_kwargs(case, kernel_constraint=None).popitem()[0]
    assert isinstance(getattr(layer, key), keras.constraints.NonNeg)
    config = layer.get_config()
    assert config[key]["class_name"] == "NonNeg"
    assert "Mask" not in repr(config)
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data(case)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    kernel = layer.masked_kernel.numpy()
    assert np.all(kernel >= 0.0)  # NonNeg still applied
    assert np.all(kernel[mask == 0] == 0.0)  # and the mask too
    assert np.count_nonzero(kernel[mask == 1]) > 0
    clone = type(layer).from_config(config)
    assert isinstance(getattr(clone, key), keras.constraints.NonNeg)


def test_without_user_constraint_training_produces_negative_weights():
    """Control for the NonNeg test: the data does push weights negative."""
    keras.utils.set_random_seed(4)
    model = _model("dense")
    _set_random_mask(_layer(model))
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(*_data("dense"), batch_size=16, epochs=2, verbose=0)
    assert np.any(_layer(model).masked_kernel.numpy() < 0)


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_get_config_from_config_round_trip(case):
    factory, input_shape, kernel_shape = LAYER_CASES[case]
    layer = factory(**_kernel_kwargs(case, use_bias=False, kernel_initializer="he_normal"))
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert type(clone) is type(layer)
    assert clone.get_config() == config
    assert config["use_bias"] is False
    assert config["name"] == "m"
    clone.build((None, *input_shape))
    assert tuple(clone.mask.shape) == kernel_shape
    assert clone.bias is None
    # Registered for serialization under the rigl package.
    serialized = keras.saving.serialize_keras_object(layer)
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(layer)


def _assert_same_masked_state(a, b):
    la, lb = _layer(a), _layer(b)
    assert type(la) is type(lb)
    np.testing.assert_array_equal(la.mask.numpy(), lb.mask.numpy())
    np.testing.assert_array_equal(la.masked_kernel.numpy(), lb.masked_kernel.numpy())
    np.testing.assert_array_equal(la.bias.numpy(), lb.bias.numpy())


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_keras_file_save_load_round_trip(case, tmp_path):
    keras.utils.set_random_seed(5)
    model = _model(case, kernel_constraint=keras.constraints.NonNeg())
    layer = _layer(model)
    _set_random_mask(layer)
    layer.bias.assign(np.arange(layer.bias.shape[0], dtype="float32") + 1.0)
    path = tmp_path / "x.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    _assert_same_masked_state(model, loaded)
    key = _kernel_kwargs(case, kernel_constraint=None).popitem()[0]
    assert isinstance(getattr(_layer(loaded), key), keras.constraints.NonNeg)
    x, _ = _data(case, n=8)
    np.testing.assert_array_equal(model(x).numpy(), loaded(x).numpy())
    # The loaded layer still enforces its mask while training.
    loaded.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loaded.fit(*_data(case, n=32), batch_size=16, epochs=1, verbose=0)
    mask = _layer(loaded).mask.numpy()
    assert np.all(_layer(loaded).masked_kernel.numpy()[mask == 0] == 0.0)


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_save_weights_load_weights_round_trip(case, tmp_path):
    keras.utils.set_random_seed(6)
    model = _model(case)
    _set_random_mask(_layer(model))
    path = tmp_path / "x.weights.h5"
    model.save_weights(path)
    keras.utils.set_random_seed(7)
    other = _model(case)  # fresh weights, all-ones mask
    assert np.all(_layer(other).mask.numpy() == 1.0)
    other.load_weights(path)
    _assert_same_masked_state(model, other)


def test_save_weights_round_trip_without_bias(tmp_path):
    keras.utils.set_random_seed(8)
    inputs = keras.Input((20,))
    outputs = rigl.MaskedDense(5, use_bias=False, name="m")(inputs)
    model = keras.Model(inputs, outputs)
    mask = _set_random_mask(model.get_layer("m"))
    model.save_weights(tmp_path / "x.weights.h5")
    other = keras.Model.from_config(model.get_config())
    other.load_weights(tmp_path / "x.weights.h5")
    np.testing.assert_array_equal(other.get_layer("m").mask.numpy(), mask)
    np.testing.assert_array_equal(other.get_layer("m").masked_kernel.numpy(),
                                  model.get_layer("m").masked_kernel.numpy())


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_bias_stays_dense(case):
    keras.utils.set_random_seed(9)
    model = _model(case)
    layer = _layer(model)
    _set_random_mask(layer, density=0.1)
    n_bias = layer.bias.shape[0]
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(*_data(case), batch_size=16, epochs=1, verbose=0)
    bias = layer.bias.numpy()
    assert bias.shape == (n_bias,)
    assert np.count_nonzero(bias) == n_bias  # bias starts at 0 and all of it trains
    assert layer.bias.constraint is None or not isinstance(
        layer.bias.constraint, rigl.layers.MaskConstraint)

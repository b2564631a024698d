"""The masked GRU: two masked kernels per layer, through sparsify, training, saving, strip."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl
from rigl.distributions import num_zeros


def _char_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12,), dtype="int32")
    x = keras.layers.Embedding(32, 8, name="embedding")(inputs)
    x = keras.layers.GRU(16, return_sequences=True, name="gru")(x)
    return keras.Model(inputs, keras.layers.Dense(32, name="logits")(x))


def _data(n=256):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 32, (n, 12)).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, (x + 1) % 32)).batch(32)


def test_sparsify_masks_both_gru_kernels_exactly():
    model = _char_model()
    sparse = rigl.sparsify(model, 0.75, custom_sparsity={"gru/recurrent_kernel": 0.5})
    gru = sparse.get_layer("gru")
    assert isinstance(gru, rigl.MaskedGRU)
    masks = rigl.get_masks(sparse)
    assert set(masks) == {"gru/kernel", "gru/recurrent_kernel", "logits"}
    assert int((masks["gru/kernel"] == 0).sum()) == num_zeros(0.75, 8 * 48)
    assert int((masks["gru/recurrent_kernel"] == 0).sum()) == num_zeros(0.5, 16 * 48)
    original = model.get_layer("gru").cell
    for kernel, source, mask in ((gru.cell.kernel, original.kernel, masks["gru/kernel"]),
                                 (gru.cell.recurrent_kernel, original.recurrent_kernel,
                                  masks["gru/recurrent_kernel"])):
        kernel, source = kernel.numpy(), source.numpy()
        np.testing.assert_array_equal(kernel[mask == 1], source[mask == 1])
        assert np.all(kernel[mask == 0] == 0)
    np.testing.assert_array_equal(gru.cell.bias.numpy(), original.bias.numpy())


def test_gru_can_stay_dense_and_names_are_checked():
    sparse = rigl.sparsify(_char_model(), 0.75, dense_layers=["gru"])
    assert type(sparse.get_layer("gru")) is keras.layers.GRU
    with pytest.raises(ValueError, match="custom_sparsity"):
        rigl.sparsify(_char_model(), 0.75, custom_sparsity={"gru/kernal": 0.5})
    with pytest.raises(ValueError, match="dense_layers"):
        rigl.sparsify(_char_model(), 0.75, dense_layers=["gru"],
                      custom_sparsity={"gru/kernel": 0.5})


@pytest.mark.parametrize("updater", [rigl.RigL, rigl.SET])
def test_training_updates_gru_masks_and_keeps_counts(updater):
    data = _data()
    model = rigl.sparsify(_char_model(), 0.75)
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = rigl.get_masks(model)
    callback = rigl.SparseTraining(updater(update_freq=8, end_step=40), data=data)
    history = model.fit(data, epochs=5, verbose=0, callbacks=[callback])
    assert history.history["loss"][-1] < history.history["loss"][0]
    after = rigl.get_masks(model)
    for name in ("gru/kernel", "gru/recurrent_kernel"):
        assert after[name].sum() == before[name].sum()
        assert not np.array_equal(after[name], before[name]), name
        assert sum(r.changed[name] for r in callback.history) > 0
    cell = model.get_layer("gru").cell
    assert np.all(cell.kernel.numpy()[after["gru/kernel"] == 0] == 0)
    assert np.all(cell.recurrent_kernel.numpy()[after["gru/recurrent_kernel"] == 0] == 0)


def test_masked_gru_saves_loads_and_strips(tmp_path):
    model = rigl.sparsify(_char_model(), 0.75)
    x = np.random.default_rng(1).integers(0, 32, (2, 12)).astype("int32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    for name, mask in rigl.get_masks(model).items():
        np.testing.assert_array_equal(rigl.get_masks(loaded)[name], mask)
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)
    plain = rigl.strip(model)
    assert type(plain.get_layer("gru")) is keras.layers.GRU
    np.testing.assert_allclose(plain(x), model(x), atol=1e-6)

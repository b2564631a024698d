"""RigL(grad_accumulation_n=n): grow scores from the mean dense gradient of n batches."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl


def model_and_batches(seed=0):
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((20,)), keras.layers.Dense(32, name="h"),
                            keras.layers.Dense(3, name="o")])
    model = rigl.sparsify(net, 0.8, "erk", seed=1)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(96, 20)).astype("float32")
    y = x[:, :3].argmax(1).astype("int64")
    return model, [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]


def state(model):
    return [v.numpy().copy() for v in model.weights]


@pytest.mark.parametrize("given", ["batch", "batches"])
def test_n_equal_1_is_rigl_bit_for_bit(given):
    results = []
    for updater in (rigl.RigL(update_freq=1, end_step=10),
                    rigl.RigL(update_freq=1, end_step=10, grad_accumulation_n=1)):
        model, batches = model_and_batches()
        updater.bind(model)
        for step in range(3):
            if given == "batch":
                updater.update(step, batch=batches[step])
            else:
                updater.update(step, batches=[batches[step]])
            model.train_on_batch(*batches[step])
        results.append(state(model))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_n_batches_grow_by_the_mean_gradient():
    model, batches = model_and_batches()
    reference, _ = model_and_batches()
    updater = rigl.RigL(update_freq=1, end_step=10, grad_accumulation_n=3).bind(model)
    assert updater.batches_per_update == 3
    plain = rigl.RigL(update_freq=1, end_step=10).bind(reference)
    per_batch = [plain.kernel_gradients(b) for b in batches]
    mean = [tf.add_n(list(g)) / 3 for g in zip(*per_batch)]
    updater.update(0, batches=batches)
    plain.update(0, gradients=mean)
    for a, b in zip(state(model), state(reference)):
        np.testing.assert_array_equal(a, b)
    single, _ = model_and_batches()
    rigl.RigL(update_freq=1, end_step=10).bind(single).update(0, batch=batches[0])
    assert any(not np.array_equal(rigl.get_masks(single)[k], rigl.get_masks(model)[k])
               for k in ("h", "o"))  # the mean over 3 batches chose otherwise


def test_bad_input_names_the_parameter():
    with pytest.raises(ValueError, match="grad_accumulation_n: must be >= 1"):
        rigl.RigL(grad_accumulation_n=0)
    with pytest.raises(ValueError, match="grad_accumulation_n: expected an integer"):
        rigl.get_updater("rigl", grad_accumulation_n=2.5)
    with pytest.raises(ValueError, match="grad_accumulation_n: SET does not take it"):
        rigl.get_updater("set", grad_accumulation_n=2)
    model, batches = model_and_batches()
    updater = rigl.RigL(update_freq=1, end_step=10, grad_accumulation_n=2).bind(model)
    with pytest.raises(ValueError, match=r"batches: RigL averages the gradients of 2 batches"):
        updater.update(0, batch=batches[0])
    with pytest.raises(ValueError, match="batches: RigL takes 2 batches per update, got 3"):
        updater.update(0, batches=batches)
    with pytest.raises(ValueError, match="batch: pass either batch or batches"):
        updater.update(0, batch=batches[0], batches=batches[:2])

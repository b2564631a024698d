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


class RecordingRigL(rigl.RigL):
    """RigL that records the ``batch`` / ``batches`` arguments of every update."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def update(self, step, batch=None, batches=None, **kwargs):
        self.seen.append((step, batch, None if batches is None else list(batches)))
        return super().update(step, batch=batch, batches=batches, **kwargs)


@pytest.mark.parametrize("n", [1, 2])
def test_fit_draws_n_batches_per_update(n):
    """model.fit through SparseTraining: each update takes n fresh batches from ``data``
    (n = 1: one ``batch``, as before)."""
    model, batches = model_and_batches()
    drawn = []

    def data():
        drawn.append(batches[len(drawn) % 3])
        return drawn[-1]

    updater = RecordingRigL(update_freq=2, end_step=4, grad_accumulation_n=n)
    callback = rigl.SparseTraining(updater, data=data)
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[callback])
    assert [r.step for r in callback.history] == [0, 2, 4]
    assert len(drawn) == 3 * n
    for i, (_, batch, given) in enumerate(updater.seen):
        if n == 1:
            assert given is None and batch is drawn[i]
        else:
            assert batch is None and given == drawn[n * i:n * (i + 1)]


def test_set_batch_keeps_the_last_n_batches():
    """A custom loop's update with n = 2 averages the two batches last given to set_batch,
    and equals ``update(batches=[...])`` on the same weights."""
    model, batches = model_and_batches()
    reference, _ = model_and_batches()
    updater = RecordingRigL(update_freq=2, end_step=10, grad_accumulation_n=2)
    callback = rigl.SparseTraining(updater, data=rigl.SparseTraining.SET_BATCH, total_steps=4)
    callbacks = keras.callbacks.CallbackList([callback], model=model)
    callbacks.on_train_begin()
    callback.set_batch(batches[2])  # pushed out by the next two
    callback.set_batch(batches[0])
    callback.set_batch(batches[1])
    callbacks.on_train_batch_begin(0)
    assert updater.seen[0][2] == [batches[0], batches[1]]
    rigl.RigL(update_freq=2, end_step=10, grad_accumulation_n=2).bind(reference).update(
        0, batches=batches[:2])
    for a, b in zip(state(model), state(reference)):
        np.testing.assert_array_equal(a, b)


def test_set_batch_with_too_few_batches_names_data():
    model, batches = model_and_batches()
    callback = rigl.SparseTraining(rigl.RigL(update_freq=2, grad_accumulation_n=2),
                                   data=rigl.SparseTraining.SET_BATCH, total_steps=4)
    callbacks = keras.callbacks.CallbackList([callback], model=model)
    callbacks.on_train_begin()
    callback.set_batch(batches[0])
    with pytest.raises(ValueError, match="data: RigL averages the gradients of 2 batches; "
                                         "set_batch gave 1"):
        callbacks.on_train_batch_begin(0)

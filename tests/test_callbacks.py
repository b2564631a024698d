"""Tests for rigl.SparseTraining: sparse training through model.fit."""

from __future__ import annotations

import glob

import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl
from rigl.distributions import num_zeros

BATCH = 32
N_SAMPLES = 320  # 10 steps per epoch


def dataset(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N_SAMPLES, 20)).astype(np.float32)
    w = rng.normal(size=(20, 3)).astype(np.float32)
    y = np.argmax(x @ w, axis=1)  # linearly separable, 3 classes
    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(N_SAMPLES, seed=seed).batch(BATCH)


def sparse_model(sparsity, steps_per_execution=1):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((20,)),
        keras.layers.Dense(32, activation="relu", name="h"),
        keras.layers.Dense(3, name="o"),
    ])
    model = rigl.sparsify(model, sparsity, seed=1)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=steps_per_execution)
    return model


SIZES = {"h": 20 * 32, "o": 32 * 3}
GRID = list(range(0, 226, 25))  # default end step: 75% of 300 steps

METHODS = {
    # name: (updater factory, initial sparsity, final sparsity, expected update steps)
    "static": (rigl.Static, 0.5, 0.5, []),
    "set": (lambda: rigl.SET(update_freq=25), 0.5, 0.5, GRID),
    "snfs": (lambda: rigl.SNFS(update_freq=25), 0.5, 0.5, GRID),
    "rigl": (lambda: rigl.RigL(update_freq=25), 0.5, 0.5, GRID),
    "prune": (lambda: rigl.GradualPruning(sparsity=0.8, update_freq=25), 0.0, 0.8, GRID),
    "snip": (lambda: rigl.SNIP(sparsity=0.8), 0.0, 0.8, [0]),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_fit_trains_and_keeps_exact_sparsity(method):
    make, initial, final, expected_steps = METHODS[method]
    ds = dataset()
    model = sparse_model(initial)
    updater = make()
    callback = rigl.SparseTraining(updater, data=ds if updater.needs_gradients else None)
    history = model.fit(ds, epochs=30, verbose=0, shuffle=False, callbacks=[callback])
    losses = history.history["loss"]
    assert int(model.optimizer.iterations.numpy()) == 300
    assert losses[-1] < losses[0]
    assert losses[-1] < 0.7 * losses[0]
    assert [result.step for result in callback.history] == expected_steps
    assert not any(result.skipped for result in callback.history)
    for name, mask in rigl.get_masks(model).items():
        assert mask.size == SIZES[name]
        assert int((mask == 0).sum()) == num_zeros(final, mask.size), name
        kernel = model.get_layer(name).masked_kernel.numpy()
        assert np.all(kernel[mask == 0] == 0.0)
    changed = sum(sum(result.changed.values()) for result in callback.history)
    if method in ("set", "snfs", "rigl"):
        assert changed > 0  # connections really moved
    else:
        assert changed == 0


def test_second_fit_continues_the_schedule():
    ds = dataset()
    model = sparse_model(0.5)
    callback = rigl.SparseTraining(rigl.RigL(update_freq=25, end_step=1000), data=ds)
    model.fit(ds, epochs=5, verbose=0, shuffle=False, callbacks=[callback])  # steps 0..49
    assert [r.step for r in callback.history] == [0, 25]
    model.fit(ds, epochs=5, verbose=0, shuffle=False, callbacks=[callback])  # steps 50..99
    steps = [r.step for r in callback.history]
    assert steps == [0, 25, 50, 75]  # 50 is due at the first step of the second fit
    assert all(b > a for a, b in zip(steps, steps[1:]))
    assert all(step % 25 == 0 for step in steps)
    # A fresh callback (e.g. after restoring a checkpoint) does not redo past updates either.
    fresh = rigl.SparseTraining(rigl.RigL(update_freq=25, end_step=1000), data=ds)
    model.fit(ds, epochs=3, verbose=0, shuffle=False, callbacks=[fresh])  # steps 100..129
    assert [r.step for r in fresh.history] == [100, 125]


def test_total_steps_sets_default_end_step():
    ds = dataset()
    model = sparse_model(0.5)
    updater = rigl.SET(update_freq=10)
    callback = rigl.SparseTraining(updater, total_steps=40)  # end step 30
    model.fit(ds, epochs=6, verbose=0, shuffle=False, callbacks=[callback])
    assert updater.schedule.end_step == 30
    assert [r.step for r in callback.history] == [0, 10, 20, 30]


def test_steps_per_execution_runs_every_scheduled_update_late():
    ds = dataset()
    model = sparse_model(0.5, steps_per_execution=5)
    calls = []

    class RecordingRigL(rigl.RigL):
        def update(self, step, *args, **kwargs):
            calls.append((step, int(model.optimizer.iterations.numpy())))
            return super().update(step, *args, **kwargs)

    callback = rigl.SparseTraining(RecordingRigL(update_freq=12, end_step=1000), data=ds)
    model.fit(ds, epochs=6, verbose=0, shuffle=False, callbacks=[callback])  # 60 steps
    assert int(model.optimizer.iterations.numpy()) == 60
    assert [r.step for r in callback.history] == [0, 12, 24, 36, 48]
    # Each update ran at the start of the first execution at or after its step.
    assert calls == [(0, 0), (12, 15), (24, 25), (36, 40), (48, 50)]
    assert all(sum(r.changed.values()) > 0 for r in callback.history)
    for name, mask in rigl.get_masks(model).items():
        assert int((mask == 0).sum()) == num_zeros(0.5, mask.size), name


def test_steps_per_execution_larger_than_update_freq_is_rejected():
    """Callbacks run once per execution: two updates inside one would collapse into one."""
    ds = dataset()
    model = sparse_model(0.5, steps_per_execution=5)
    callback = rigl.SparseTraining(rigl.SET(update_freq=3, end_step=1000))
    with pytest.raises(ValueError, match=r"^update_freq: 3 .*steps_per_execution \(5\)"):
        model.fit(ds, epochs=1, verbose=0, shuffle=False, callbacks=[callback])
    # Static never updates, so any steps_per_execution is fine.
    model.fit(ds, epochs=1, verbose=0, callbacks=[rigl.SparseTraining(rigl.Static())])


def _read_events(log_dir):
    values = {}
    files = glob.glob(f"{log_dir}/**/events.out.tfevents.*", recursive=True)
    assert files
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") \
                    else float(value.simple_value)
                values.setdefault(value.tag, {})[event.step] = number
    return values


def test_tensorboard_summaries(tmp_path):
    ds = dataset()
    model = sparse_model(0.5)
    log_dir = tmp_path / "logs"
    updater = rigl.RigL(update_freq=25, end_step=100, drop_fraction=0.3)
    callback = rigl.SparseTraining(updater, data=ds, log_dir=str(log_dir))
    model.fit(ds, epochs=10, verbose=0, shuffle=False, callbacks=[callback])
    events = _read_events(log_dir)
    for tag in ("mask_update/drop_fraction", "mask_update/connections_changed",
                "sparsity/h", "sparsity/o"):
        assert tag in events, sorted(events)
    assert sorted(events["mask_update/drop_fraction"]) == [0, 25, 50, 75]
    for result in callback.history:
        assert events["mask_update/drop_fraction"][result.step] == pytest.approx(
            0.15 * (1 + np.cos(np.pi * result.step / 100)), abs=1e-6)
        assert events["mask_update/connections_changed"][result.step] == sum(
            result.changed.values())
        assert result.seconds > 0
        assert events["mask_update/seconds"][result.step] == pytest.approx(result.seconds,
                                                                           rel=1e-6)
    for name in ("h", "o"):
        for value in events[f"sparsity/{name}"].values():
            assert value == pytest.approx(num_zeros(0.5, SIZES[name]) / SIZES[name], abs=1e-6)


def test_tensorboard_sparsity_follows_pruning(tmp_path):
    ds = dataset()
    model = sparse_model(0.0)
    callback = rigl.SparseTraining(
        rigl.GradualPruning(sparsity=0.75, update_freq=20, end_step=40), log_dir=str(tmp_path))
    model.fit(ds, epochs=5, verbose=0, shuffle=False, callbacks=[callback])
    sparsity = _read_events(tmp_path)["sparsity/h"]
    assert sparsity[40] == pytest.approx(0.75)
    assert sparsity[0] == pytest.approx(0.0)
    assert 0.0 < sparsity[20] < 0.75


@pytest.mark.parametrize("make", [rigl.RigL, lambda: rigl.SNIP(sparsity=0.5)])
def test_gradient_updaters_need_data(make):
    with pytest.raises(ValueError, match=r"^data\b"):
        rigl.SparseTraining(make())


def test_rejects_non_updater():
    with pytest.raises(ValueError, match=r"^updater\b"):
        rigl.SparseTraining("rigl")


def test_custom_loss_fn_is_used_for_gradients():
    ds = dataset()
    model = sparse_model(0.5)
    seen = []

    def loss_fn(y_true, y_pred):
        seen.append(True)
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)

    callback = rigl.SparseTraining(rigl.RigL(update_freq=25, end_step=50), data=ds,
                                   loss_fn=loss_fn)
    model.fit(ds, epochs=6, verbose=0, shuffle=False, callbacks=[callback])
    assert seen  # traced at least once
    assert [r.step for r in callback.history] == [0, 25, 50]


def test_custom_loop_hands_each_step_batch_with_set_batch():
    """A custom loop (as the experiment loop) gives the callback the batch of the step; a
    due update takes its gradient on exactly that batch."""
    ds = dataset()
    model = sparse_model(0.5)
    seen = []

    class RecordingRigL(rigl.RigL):
        def update(self, step, batch=None, **kwargs):
            seen.append((step, batch))
            return super().update(step, batch=batch, **kwargs)

    callback = rigl.SparseTraining(RecordingRigL(update_freq=5, end_step=1000),
                                   data=rigl.SparseTraining.SET_BATCH)
    callbacks = keras.callbacks.CallbackList([callback], model=model)
    callbacks.on_train_begin()
    given = {}
    for step, (x, y) in enumerate(ds.repeat().take(12)):
        given[step] = (x, y)
        callback.set_batch((x, y))
        callbacks.on_train_batch_begin(step)
        model.train_on_batch(x, y)
        callbacks.on_train_batch_end(step)
    callbacks.on_train_end()
    assert [step for step, _ in seen] == [0, 5, 10]
    for step, batch in seen:
        assert batch[0] is given[step][0] and batch[1] is given[step][1]
    assert all(sum(r.changed.values()) > 0 for r in callback.history)


def test_set_batch_needs_set_batch_data():
    ds = dataset()
    callback = rigl.SparseTraining(rigl.RigL(), data=ds)
    with pytest.raises(ValueError, match=r"^data: set_batch needs"):
        callback.set_batch(next(iter(ds)))


def test_set_batch_data_without_a_batch_names_set_batch():
    model = sparse_model(0.5)
    callback = rigl.SparseTraining(rigl.RigL(update_freq=5), data=rigl.SparseTraining.SET_BATCH,
                                   total_steps=20)
    callbacks = keras.callbacks.CallbackList([callback], model=model)
    callbacks.on_train_begin()
    with pytest.raises(ValueError, match="set_batch"):
        callbacks.on_train_batch_begin(0)

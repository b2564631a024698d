"""The fast paths of the core compute what the simple ones did: the compiled update never
retraces (nor do the selection's compiled pieces), the large-layer path keeps replicas equal,
and the callback's host-side step count matches optimizer.iterations (no timing is asserted).
That the radix selection is the stable sort's function is tested in tests/test_selection.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl
from rigl import selection


def _large_model():
    inputs = keras.Input((120,))
    hidden = keras.layers.Dense(100, name="big")(inputs)  # 12,000 weights: the radix path
    return keras.Model(inputs, keras.layers.Dense(3, name="small")(hidden))  # 300: the sort


def test_rigl_update_does_not_retrace():
    keras.utils.set_random_seed(0)
    model = rigl.sparsify(_large_model(), 0.8)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    updater = rigl.RigL(update_freq=10, end_step=1000).bind(model)
    rng = np.random.default_rng(0)
    nnz = {name: mask.sum() for name, mask in rigl.get_masks(model).items()}
    counts = None
    for i, step in enumerate((0, 10, 370, 500, 990)):  # drop fractions 0.3 ... ~0
        x = rng.normal(size=(16, 120)).astype(np.float32)
        y = rng.normal(size=(16, 3)).astype(np.float32)
        result = updater.update(step, batch=(x, y))
        assert not result.skipped
        if i == 0:
            counts = selection.compiled_traces()
        updater.bind(model)  # model.fit binds again at every call
    assert updater.update_traces == 1
    assert selection.compiled_traces() == counts
    assert {name: mask.sum() for name, mask in rigl.get_masks(model).items()} == nnz
    updater.bind(model, total_steps=5000)  # end_step is set: nothing changes
    assert updater.update_traces == 1  # the traced function is kept (a new one would say 0)
    # A changed configuration gets a new function (its constants are in the graph).
    updater.seed = 1
    updater.bind(model)
    assert updater.update_traces == 0
    updater.update(1000, batch=(x, y))
    assert updater.update_traces == 1
    updater.update(1000, batch=(x, y))
    assert updater.update_traces == 1


def test_fit_calls_share_one_traced_update():
    keras.utils.set_random_seed(0)
    model = rigl.sparsify(_large_model(), 0.8)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    rng = np.random.default_rng(1)
    data = tf.data.Dataset.from_tensor_slices(
        (rng.normal(size=(64, 120)).astype(np.float32),
         rng.normal(size=(64, 3)).astype(np.float32))).batch(8)
    updater = rigl.RigL(update_freq=4, end_step=1000)
    callback = rigl.SparseTraining(updater, data=data)
    for _ in range(3):
        model.fit(data, epochs=1, verbose=0, callbacks=[callback])
    assert [r.step for r in callback.history] == [0, 4, 8, 12, 16, 20]
    assert updater.update_traces == 1


@pytest.mark.parametrize("steps_per_execution", [1, 3])
def test_host_step_count_with_partial_executions(steps_per_execution):
    """10 batches per epoch at 3 steps per execution: executions of 3, 3, 3 and 1 steps; the
    count is re-read at every epoch, so updates stay on schedule across epochs and fits."""
    keras.utils.set_random_seed(0)
    model = rigl.sparsify(_large_model(), 0.8)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse",
                  steps_per_execution=steps_per_execution)
    rng = np.random.default_rng(2)
    data = tf.data.Dataset.from_tensor_slices(
        (rng.normal(size=(80, 120)).astype(np.float32),
         rng.normal(size=(80, 3)).astype(np.float32))).batch(8)
    calls = []

    class RecordingSET(rigl.SET):
        def update(self, step, *args, **kwargs):
            calls.append((step, int(model.optimizer.iterations.numpy())))
            return super().update(step, *args, **kwargs)

    callback = rigl.SparseTraining(RecordingSET(update_freq=7, end_step=1000))
    model.fit(data, epochs=3, verbose=0, callbacks=[callback])
    model.fit(data, epochs=2, verbose=0, callbacks=[callback])
    assert int(model.optimizer.iterations.numpy()) == 50
    assert [step for step, _ in calls] == list(range(0, 50, 7))
    for step, at in calls:  # at the start of the first execution that reaches the step
        assert step <= at < step + steps_per_execution


MIRRORED_SCRIPT = textwrap.dedent("""
    import json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras
    import numpy as np
    import rigl
    from rigl.masking import replica_mismatches

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 120)).astype("float32")
    y = rng.normal(size=(64, 3)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((120,))
        hidden = keras.layers.Dense(100, name="big")(inputs)
        model = rigl.sparsify(keras.Model(inputs, keras.layers.Dense(3, name="small")(hidden)),
                              0.8)
        model.compile(keras.optimizers.Adam(0.01), "mse")
    before = rigl.get_masks(model)
    callback = rigl.SparseTraining(rigl.RigL(update_freq=2, end_step=100), data=data)
    model.fit(data, epochs=3, verbose=0, callbacks=[callback])
    after = rigl.get_masks(model)
    print("RESULT_JSON:" + json.dumps({
        "mismatches": replica_mismatches(model),
        "nnz": {n: [int(before[n].sum()), int(after[n].sum())] for n in before},
        "changed": sum(sum(r.changed.values()) for r in callback.history),
        "updates": [r.step for r in callback.history],
    }))
""")


def test_radix_and_xla_update_under_mirrored_strategy():
    """The large-layer path (radix selection, XLA-fused passes) keeps every replica's mask
    identical under MirroredStrategy over two logical CPUs."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], capture_output=True,
                          text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [row for row in done.stdout.splitlines() if row.startswith("RESULT_JSON:")][-1]
    result = json.loads(line[len("RESULT_JSON:"):])
    assert result["mismatches"] == []
    assert result["updates"] == [0, 2, 4, 6, 8, 10]
    assert result["changed"] > 0
    for name, (before, after) in result["nnz"].items():
        assert before == after, name

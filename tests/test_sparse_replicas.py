"""Truly sparse storage under tf.distribute.MirroredStrategy over two logical CPU devices.

Acceptance (issue 15): RigL and SET through ``model.fit`` and ``rigl.SparseTraining`` leave
identical connections (rows, cols, alive), values and optimizer slots on both replicas, with
the exact nonzero count per layer; ``rigl.masking.replica_mismatches`` sees a difference.

Logical devices must be configured before TensorFlow initialises its devices (process-wide),
so the scenario runs in a subprocess that prints its findings as JSON (as
``tests/test_distributed.py`` does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

RESULT_MARKER = "RESULT_JSON:"

SCRIPT = textwrap.dedent(
    """
    import json
    import traceback

    import tensorflow as tf

    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

    import keras
    import numpy as np

    import rigl
    from rigl import optimizer_state

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    SPARSITY = 0.8
    rng = np.random.default_rng(0)
    x = rng.normal(size=(640, 20)).astype("float32")
    y = x[:, :3].argmax(axis=1).astype("int64")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)  # 20 steps, 16 per replica


    def build(dense):
        inputs = keras.Input((20,))
        h = dense(32, activation="relu", name="h1")(inputs)
        return keras.Model(inputs, dense(3, name="out")(h))


    def local(variable):
        return [v.numpy() for v in strategy.experimental_local_results(
            getattr(variable, "value", variable))]


    def run(method):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = rigl.sparse_model(build, SPARSITY, "erk", seed=0)
            optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
            model.compile(optimizer,
                          keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        initial = {layer.name: layer.connections()[:2] for layer in rigl.sparse_weights(model)}
        updater = {"rigl": rigl.RigL, "set": rigl.SET}[method](update_freq=5, end_step=15)
        callback = rigl.SparseTraining(updater, data=ds)
        model.fit(ds, epochs=1, callbacks=[callback], verbose=0)
        layers = {}
        for layer in rigl.sparse_weights(model):
            copies = {name: local(getattr(layer, name))
                      for name in ("rows", "cols", "alive", "values")}
            slots = [local(slot) for slot in optimizer_state.slots(optimizer, layer.values)]
            rows, cols, _ = layer.connections()
            layers[layer.name] = {
                "n_replicas": len(copies["rows"]),
                "equal": {name: all(np.array_equal(c[0], other) for other in c[1:])
                          for name, c in copies.items()},
                "n_slots": len(slots),
                "slots_equal": all(np.array_equal(s[0], other) for s in slots for other in s[1:]),
                "active": [int(a.sum()) for a in copies["alive"]],
                "nonzero_values": [int(np.count_nonzero(v)) for v in copies["values"]],
                "nnz": layer.nnz,
                "moved": int(len(np.setdiff1d(rows * 10**6 + cols,
                                              initial[layer.name][0] * 10**6
                                              + initial[layer.name][1]))),
            }
        mismatches = rigl.masking.replica_mismatches(model)
        # Break one replica's copy of h1's positions: the check must see it.
        second = strategy.experimental_local_results(model.get_layer("h1").cols.value)[1]
        second.assign((second.numpy() + 1) % 32)
        return {
            "replicas": strategy.num_replicas_in_sync,
            "layers": layers,
            "updates": [r.step for r in callback.history],
            "changed": [sum(r.changed.values()) for r in callback.history],
            "mismatches": mismatches,
            "mismatches_after_breaking": rigl.masking.replica_mismatches(model),
        }


    result = {}
    for method in ("rigl", "set"):
        try:
            result[method] = run(method)
        except Exception:
            result[method] = {"error": traceback.format_exc()}
    print("RESULT_JSON:" + json.dumps(result))
    """
)


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    completed = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                               env=env, timeout=600,
                               cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    assert completed.returncode == 0 and lines, completed.stderr[-3000:]
    return json.loads(lines[-1][len(RESULT_MARKER):])


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_replicas_hold_identical_sparse_layers(results, method):
    result = results[method]
    assert "error" not in result, result.get("error")
    assert result["replicas"] == 2
    assert result["updates"] == [0, 5, 10, 15]
    assert sum(result["changed"]) > 0
    for name, layer in result["layers"].items():
        assert layer["n_replicas"] == 2, name
        assert layer["equal"] == {"rows": True, "cols": True, "alive": True, "values": True}, (
            name)
        assert layer["n_slots"] == 1 and layer["slots_equal"], name
        # Exact count: every entry alive (no pruning), on both replicas.
        assert layer["active"] == [layer["nnz"]] * 2, name
        assert all(n <= layer["nnz"] for n in layer["nonzero_values"]), name
    assert sum(layer["moved"] for layer in result["layers"].values()) > 0
    assert result["mismatches"] == []
    assert result["mismatches_after_breaking"] == ["h1"]

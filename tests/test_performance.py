"""The fast paths of the core compute what the simple ones did: the radix top-k selection is
the stable sort's function, the compiled update never retraces, and the callback's host-side
step count matches optimizer.iterations (no timing is asserted)."""

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
from hypothesis import given, settings
from hypothesis import strategies as st

import rigl
from rigl import updaters
from rigl.distributions import num_zeros


def sorted_top_k(scores, k):
    """numpy reference: the k largest, ties to the lower index (TF's float semantics:
    -0.0 == 0.0, subnormals flushed to zero)."""
    scores = np.asarray(scores, np.float64)
    tiny = np.finfo(np.float32).tiny
    scores = np.where(np.abs(scores) < tiny, 0.0, scores)
    chosen = np.zeros(scores.size, bool)
    chosen[np.lexsort((np.arange(scores.size), -scores))[:k]] = True
    return chosen


SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 1e-39, 1.2e-38, -3.4e38,
                    3.4e38, 1.0, -1.0, 0.5], np.float32)


def random_scores(rng, n, kind):
    if kind == "normal":
        return rng.normal(size=n).astype(np.float32)
    if kind == "ties":
        return rng.integers(-3, 4, n).astype(np.float32)
    if kind == "special":
        return rng.choice(SPECIAL, n)
    if kind == "wide":  # every exponent
        return ((rng.random(n) * 2 - 1) * 10.0 ** rng.integers(-44, 38, n)).astype(np.float32)
    raise AssertionError(kind)


@pytest.fixture
def radix_everywhere(monkeypatch):
    """Small inputs use the sort; make them take the radix path too."""
    monkeypatch.setattr(updaters, "_RADIX_MIN_SIZE", 0)


@pytest.mark.parametrize("kind", ["normal", "ties", "special", "wide"])
@pytest.mark.parametrize("n", [1, 2, 7, 300, 9000, 70_000])
def test_radix_top_k_is_the_stable_sort(radix_everywhere, n, kind):
    rng = np.random.default_rng(n)
    for trial in range(4):
        scores = random_scores(rng, n, kind)
        if trial % 2:
            scores[rng.random(n) < 0.5] = -np.inf  # as for inactive positions
        for k in sorted({0, 1, n // 3, n - 1, n}):
            if k < 0:
                continue
            got = updaters.top_k_mask(tf.constant(scores), tf.constant(k, tf.int32)).numpy()
            np.testing.assert_array_equal(got, sorted_top_k(scores, k), err_msg=(n, kind, k))
            stable = updaters._top_k_mask_sorted(tf.constant(scores), tf.constant(k)).numpy()
            np.testing.assert_array_equal(got, stable)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float64])
def test_top_k_other_dtypes(radix_everywhere, dtype):
    rng = np.random.default_rng(0)
    scores = rng.integers(-50, 50, 5000).astype(np.float32) / 8  # exact in every dtype
    for k in (0, 17, 2500, 5000):
        got = updaters.top_k_mask(tf.constant(scores, dtype), tf.constant(k)).numpy()
        np.testing.assert_array_equal(got, sorted_top_k(scores, k))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), density=st.floats(0.0, 1.0),
       fraction=st.floats(0.0, 1.0), ties=st.booleans())
def test_drop_and_grow_on_a_large_layer_matches_reference(seed, density, fraction, ties):
    """drop_and_grow through the radix path, against the sort-based reference."""
    rng = np.random.default_rng(seed)
    n = 3 * updaters._RADIX_MIN_SIZE
    mask = (rng.random(n) < density).astype(np.float32)
    draw = (lambda: rng.integers(-2, 3, n)) if ties else (lambda: rng.normal(size=n))
    weights, grads = draw().astype(np.float32) * mask, draw().astype(np.float32)
    n_active = int(mask.sum())
    k = num_zeros(fraction, n_active)
    new = rigl.drop_and_grow(tf.constant(mask), tf.constant(np.abs(weights)),
                             tf.constant(np.abs(grads)), tf.constant(k), tf.constant(k)).numpy()
    kept = sorted_top_k(np.where(mask > 0, np.abs(weights), -np.inf), n_active - k)
    grown = sorted_top_k(np.where(kept, -np.inf, np.abs(grads)), k)
    np.testing.assert_array_equal(new, kept | grown)
    assert new.sum() == n_active


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
    pieces = (updaters._keys_of, updaters._keys_at_or_above, updaters._select)
    counts = None
    for i, step in enumerate((0, 10, 370, 500, 990)):  # drop fractions 0.3 ... ~0
        x = rng.normal(size=(16, 120)).astype(np.float32)
        y = rng.normal(size=(16, 3)).astype(np.float32)
        result = updater.update(step, batch=(x, y))
        assert not result.skipped
        if i == 0:
            counts = [piece.experimental_get_tracing_count() for piece in pieces]
        updater.bind(model)  # model.fit binds again at every call
    assert updater._update_fn.experimental_get_tracing_count() == 1
    assert [piece.experimental_get_tracing_count() for piece in pieces] == counts
    assert {name: mask.sum() for name, mask in rigl.get_masks(model).items()} == nnz
    traced = updater._update_fn
    updater.bind(model, total_steps=5000)  # end_step is set: nothing changes
    assert updater._update_fn is traced
    # A changed configuration gets a new function (its constants are in the graph).
    updater.seed = 1
    updater.bind(model)
    assert updater._update_fn is not traced
    updater.update(1000, batch=(x, y))
    assert updater._update_fn.experimental_get_tracing_count() == 1


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
    assert updater._update_fn.experimental_get_tracing_count() == 1


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

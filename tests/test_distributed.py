"""rigl under tf.distribute.MirroredStrategy over two logical CPU devices.

Acceptance: RigL and SET (and SNFS) training under MirroredStrategy leave identical masks
(and kernels) on both replicas, and one update from the same weights and batch selects the
same connections as on a single device.

Logical devices must be configured before TensorFlow initialises its devices, which is
process-wide, so every scenario runs in a subprocess that prints its findings as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from rigl import methods

RESULT_MARKER = "RESULT_JSON:"

# Common prelude of every subprocess: two logical CPUs, then the strategy and a model builder.
PRELUDE = textwrap.dedent(
    """
    import json
    import time

    import tensorflow as tf

    _t0 = time.time()
    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )

    import keras
    import numpy as np

    import rigl
    from rigl import optimizer_state
    from rigl.distributions import num_zeros

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    SPARSITY = 0.8


    def make_data(n, seed=0):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(n, 20)).astype("float32")
        y = x[:, :3].argmax(axis=1).astype("int64")
        return x, y


    def build(sparsity=SPARSITY):
        # Same weights and masks every call: fixed Keras seed, sparsify seed 0.
        keras.utils.set_random_seed(0)
        inp = keras.Input((20,))
        h = keras.layers.Dense(32, activation="relu", name="d1")(inp)
        out = keras.layers.Dense(3, name="d2")(h)
        model = rigl.sparsify(keras.Model(inp, out), sparsity, "erk", seed=0)
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model, optimizer


    def expected_nnz(model, constant_fan_in=False):
        # The ERK budget of each layer; with constant fan-in (SRigL without ablation), k0
        # inputs for each of its neurons, k0 = floor(budget / neurons).
        shapes = {l.name: tuple(l.mask.shape) for l in rigl.masked_layers(model)}
        sparsities = rigl.layer_sparsities(shapes, SPARSITY, "erk")
        out = {}
        for name, shape in shapes.items():
            size = int(np.prod(shape))
            out[name] = size - num_zeros(sparsities[name], size)
            if constant_fan_in:
                out[name] = out[name] // shape[-1] * shape[-1]
        return out


    def components(variable):
        # Keras 3 variable -> its tf variable (a MirroredVariable under the strategy).
        value = variable.value
        return type(value).__name__, list(strategy.experimental_local_results(value))


    def emit(result):
        result["seconds"] = time.time() - _t0
        print("RESULT_JSON:" + json.dumps(result))
    """
)

FIT_SCRIPT = textwrap.dedent(
    """
    import traceback

    x, y = make_data(3200)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)  # 100 steps, global batch 32

    # A plain list of (x, y) numpy batches: not distributed, every replica sees the whole batch.
    list_data = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 3200, 32)]

    UPDATERS = {
        "rigl": lambda: rigl.RigL(update_freq=10),
        "set": lambda: rigl.SET(update_freq=10),
        "snfs": lambda: rigl.SNFS(update_freq=10),
        "rigl_random_normal": lambda: rigl.RigL(update_freq=10, grow_init="random_normal"),
        "rigl_initial_value": lambda: rigl.RigL(update_freq=10, grow_init="initial_value"),
        "rigl_list_data": lambda: rigl.RigL(update_freq=10),
        # Two distributed batches per update, drawn by the callback.
        "rigl_grad_accumulation": lambda: rigl.RigL(update_freq=10, grad_accumulation_n=2),
        # Constant fan-in without ablation (test_srigl.py covers ablation under the strategy).
        "srigl": lambda: rigl.SRigL(SPARSITY, "erk", gamma_sal=0.0, update_freq=10),
        # Dense-to-sparse baselines: start from all-ones masks (sparsify with sparsity 0).
        "snip": lambda: rigl.SNIP(SPARSITY, "erk"),
        "prune": lambda: rigl.GradualPruning(SPARSITY, "erk", update_freq=10),
        # Per-layer pruning scope: each layer ends at its ERK target (expected_nnz).
        "granet": lambda: rigl.GraNet(SPARSITY, "erk", pruning_scope="layer", update_freq=10),
    }
    DENSE_START = [m for m in UPDATERS if m in rigl.methods.REGISTRY
                   and rigl.methods.REGISTRY[m].dense_to_sparse]


    def run(method):
        with strategy.scope():
            model, optimizer = build(0.0 if method in DENSE_START else SPARSITY)
        initial = rigl.get_masks(model)
        data = list_data if method == "rigl_list_data" else ds
        callback = rigl.SparseTraining(UPDATERS[method](), data=data)
        model.fit(ds, epochs=1, callbacks=[callback], verbose=0)
        expected = expected_nnz(model, constant_fan_in=method == "srigl")
        layers = {}
        for layer in rigl.masked_layers(model):
            mask_type, masks = components(layer.mask)
            kernel_type, kernels = components(layer.masked_kernel)
            masks = [m.numpy() for m in masks]
            kernels = [k.numpy() for k in kernels]
            slots = [
                [s.numpy() for s in components(slot)[1]]
                for slot in optimizer_state.slots(optimizer, layer.masked_kernel)
            ]
            layers[layer.name] = {
                "mask_type": mask_type,
                "kernel_type": kernel_type,
                "n_components": len(masks),
                "devices": sorted({v.device for v in components(layer.mask)[1]}),
                "masks_equal": all(np.array_equal(masks[0], m) for m in masks[1:]),
                "mask_positions_differing": [int((masks[0] != m).sum()) for m in masks[1:]],
                "kernels_equal": all(np.array_equal(kernels[0], k) for k in kernels[1:]),
                "kernel_max_diff": max(float(np.abs(kernels[0] - k).max()) for k in kernels[1:]),
                "n_slots": len(slots),
                "slots_equal": all(
                    np.array_equal(s[0], c) for s in slots for c in s[1:]
                ),
                "binary": all(bool(np.isin(m, (0.0, 1.0)).all()) for m in masks),
                "nnz": [int(np.count_nonzero(m)) for m in masks],
                "expected_nnz": expected[layer.name],
                "masked_weights_zero": all(
                    bool((k[m == 0] == 0).all()) for k, m in zip(kernels, masks)
                ),
                "changed_from_initial": [int((m != initial[layer.name]).sum()) for m in masks],
            }
        return {
            "strategy": type(model.distribute_strategy).__name__,
            "replicas": model.distribute_strategy.num_replicas_in_sync,
            "iterations": int(optimizer.iterations.numpy()),
            "layers": layers,
            "history": [
                {"step": r.step, "changed": r.changed, "skipped": r.skipped}
                for r in callback.history
            ],
        }


    result = {}
    for method in UPDATERS:
        try:
            result[method] = run(method)
        except Exception:
            result[method] = {"error": traceback.format_exc()}
    emit(result)
    """
)

ONE_STEP_SCRIPT = textwrap.dedent(
    """
    import traceback

    x, y = make_data(32, seed=1)


    def make(method):
        cls = {"rigl": rigl.RigL, "set": rigl.SET, "snfs": rigl.SNFS}[method]
        return cls(update_freq=1, end_step=10, drop_fraction=0.3,
                   drop_fraction_decay="constant")


    def grow_margin(mask_before, weights, grad, n):
        # Gap between the n-th and (n+1)-th grow score among positions not kept: how far
        # the selection is from a tie (informative only).
        mask_before = mask_before.reshape(-1)
        weights = np.abs(weights.reshape(-1))
        grad = np.abs(grad.reshape(-1))
        active = np.flatnonzero(mask_before > 0)
        order = active[np.argsort(-weights[active], kind="stable")]
        kept = np.zeros_like(mask_before, dtype=bool)
        kept[order[: len(active) - n]] = True
        candidates = np.sort(grad[~kept])[::-1]
        if n == 0 or n >= len(candidates):
            return None
        return float(candidates[n - 1] - candidates[n])


    def fill_slots(model, optimizer):
        # The same non-zero momentum in both models, so that slot resets are visible and
        # SNFS (grow by |momentum|) has untied scores.
        rng = np.random.default_rng(2)
        for layer in rigl.masked_layers(model):
            for slot in optimizer_state.slots(optimizer, layer.masked_kernel):
                slot.assign(rng.normal(size=tuple(slot.shape)).astype("float32"))


    def run(method):
        # Single device (default strategy).
        single, opt1 = build()
        weights = single.get_weights()  # masks included
        initial = rigl.get_masks(single)
        u1 = make(method).bind(single, opt1)
        fill_slots(single, opt1)
        grads1 = None
        if method == "rigl":
            grads1 = [g.numpy() for g in u1.kernel_gradients((x, y))]
        kernels_before = {l.name: l.masked_kernel.numpy() for l in rigl.masked_layers(single)}
        r1 = u1.update(0, batch=(x, y))

        # Mirrored, same weights and masks, same batch as a distributed value.
        with strategy.scope():
            mirrored, opt2 = build()
        mirrored.set_weights(weights)
        u2 = make(method).bind(mirrored, opt2)
        fill_slots(mirrored, opt2)
        dist = strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensor_slices((x, y)).batch(32))
        batch = next(iter(dist))
        per_replica_sizes = [int(t.shape[0]) for t in strategy.experimental_local_results(batch[0])]
        grads2 = None
        if method == "rigl":
            grads2 = [g.numpy() for g in u2.kernel_gradients(batch)]
        r2 = u2.update(0, batch=batch)

        layers = {}
        for i, (l1, l2) in enumerate(zip(rigl.masked_layers(single), rigl.masked_layers(mirrored))):
            m1 = l1.mask.numpy()
            k1 = l1.masked_kernel.numpy()
            mask_type, masks2 = components(l2.mask)
            masks2 = [m.numpy() for m in masks2]
            kernels2 = [k.numpy() for k in components(l2.masked_kernel)[1]]
            slots1 = [s.numpy() for s in optimizer_state.slots(opt1, l1.masked_kernel)]
            born = (m1 > 0) & (initial[l1.name] == 0)
            slots2 = [
                [c.numpy() for c in components(slot)[1]]
                for slot in optimizer_state.slots(opt2, l2.masked_kernel)
            ]
            entry = {
                "mask_type": mask_type,
                "n_components": len(masks2),
                "positions_differing": [int((m1 != m).sum()) for m in masks2],
                "kernel_max_diff": [float(np.abs(k1 - k).max()) for k in kernels2],
                "changed_single": r1.changed[l1.name],
                "changed_mirrored": r2.changed[l2.name],
                "diff_from_initial": int((m1 != initial[l1.name]).sum()),
                "nnz_single": int(np.count_nonzero(m1)),
                "nnz_initial": int(np.count_nonzero(initial[l1.name])),
                "born_weights_zero": bool((k1[born] == 0).all()),
                "n_slots": len(slots1),
                "born_slots_zero": all(bool((s[born] == 0).all()) for s in slots1),
                "other_slots_nonzero": all(bool((s[~born] != 0).all()) for s in slots1),
                "mirrored_n_slots": len(slots2),
                "mirrored_slots_match_single": all(
                    np.array_equal(s1, c) for s1, s2 in zip(slots1, slots2) for c in s2
                ),
                "masked_weights_zero": bool((k1[m1 == 0] == 0).all()),
            }
            if grads1 is not None:
                n = int(np.floor(0.3 * entry["nnz_initial"]))
                entry["grad_max_abs_diff"] = float(np.abs(grads1[i] - grads2[i]).max())
                entry["grad_max_abs"] = float(np.abs(grads1[i]).max())
                entry["grow_margin"] = grow_margin(
                    initial[l1.name], kernels_before[l1.name], grads1[i], n)
            layers[l1.name] = entry
        return {
            "per_replica_sizes": per_replica_sizes,
            "skipped": [r1.skipped, r2.skipped],
            "layers": layers,
        }


    result = {}
    for method in ("rigl", "set", "snfs"):
        try:
            result[method] = run(method)
        except Exception:
            result[method] = {"error": traceback.format_exc()}
    emit(result)
    """
)


def _run_script(tmp_path_factory, name: str, body: str) -> dict:
    path = tmp_path_factory.mktemp("distributed") / f"{name}.py"
    path.write_text(PRELUDE + body)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=900, env=env
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    assert proc.returncode == 0 and lines, (
        f"{name} subprocess failed (rc={proc.returncode})\n"
        f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"
    )
    return json.loads(lines[-1][len(RESULT_MARKER) :])


def _ok(result: dict, method: str) -> dict:
    entry = result[method]
    assert "error" not in entry, f"{method} raised in the subprocess:\n{entry.get('error')}"
    return entry


@pytest.fixture(scope="module")
def fit_results(tmp_path_factory):
    return _run_script(tmp_path_factory, "mirrored_fit", FIT_SCRIPT)


@pytest.fixture(scope="module")
def one_step_results(tmp_path_factory):
    return _run_script(tmp_path_factory, "one_step", ONE_STEP_SCRIPT)


# ------------------------------------------------------------------ training under fit
# Sparse-to-sparse updaters (the acceptance covers RigL and SET), plus RigL variants whose
# new weights are drawn (grow_init) and whose gradient batches are not distributed.
FIT_METHODS = [
    "rigl",
    "set",
    "snfs",
    "rigl_random_normal",
    "rigl_initial_value",
    "rigl_list_data",
    "rigl_grad_accumulation",
    "srigl",
]
# Dense-to-sparse baselines: they prune the all-ones masks to the ERK targets.
DENSE_START_METHODS = [m for m in methods.METHODS if methods.REGISTRY[m].dense_to_sparse]
ALL_FIT_METHODS = FIT_METHODS + DENSE_START_METHODS


@pytest.mark.parametrize("method", ALL_FIT_METHODS)
def test_fit_runs_on_two_replicas(fit_results, method):
    result = _ok(fit_results, method)
    assert result["strategy"] == "MirroredStrategy"
    assert result["replicas"] == 2
    assert result["iterations"] == 100
    for name, layer in result["layers"].items():
        assert layer["mask_type"] == "MirroredVariable", name
        assert layer["kernel_type"] == "MirroredVariable", name
        assert layer["n_components"] == 2, name
        assert len(layer["devices"]) == 2, (name, layer["devices"])


@pytest.mark.parametrize("method", ALL_FIT_METHODS)
def test_fit_masks_identical_across_replicas(fit_results, method):
    result = _ok(fit_results, method)
    for name, layer in result["layers"].items():
        assert layer["masks_equal"], (name, layer["mask_positions_differing"])


@pytest.mark.parametrize("method", ALL_FIT_METHODS)
def test_fit_kernels_and_slots_identical_across_replicas(fit_results, method):
    result = _ok(fit_results, method)
    for name, layer in result["layers"].items():
        assert layer["kernels_equal"], (name, layer["kernel_max_diff"])
        assert layer["n_slots"] >= 1, name  # SGD momentum
        assert layer["slots_equal"], name


@pytest.mark.parametrize("method", ALL_FIT_METHODS)
def test_fit_masks_binary_exact_nnz_and_masked_weights_zero(fit_results, method):
    result = _ok(fit_results, method)
    for name, layer in result["layers"].items():
        assert layer["binary"], name
        assert layer["nnz"] == [layer["expected_nnz"]] * 2, name
        assert layer["masked_weights_zero"], name


@pytest.mark.parametrize("method", FIT_METHODS)
def test_fit_updates_happened(fit_results, method):
    result = _ok(fit_results, method)
    history = result["history"]
    # update_freq 10, default end_step = 75% of 100 steps -> updates at 0, 10, ..., 70.
    assert [h["step"] for h in history] == list(range(0, 80, 10))
    assert not any(h["skipped"] for h in history)
    assert sum(sum(h["changed"].values()) for h in history) > 0
    assert all(h["changed"][name] > 0 for h in history[:1] for name in h["changed"])
    for name, layer in result["layers"].items():
        assert all(c > 0 for c in layer["changed_from_initial"]), name


def test_fit_snip_prunes_once_at_step_zero(fit_results):
    result = _ok(fit_results, "snip")
    assert [h["step"] for h in result["history"]] == [0]
    for name, layer in result["layers"].items():
        assert all(c > 0 for c in layer["changed_from_initial"]), name


def test_fit_gradual_pruning_reaches_target_on_both_replicas(fit_results):
    result = _ok(fit_results, "prune")
    # end_step defaults to 75 of 100 steps; pruning runs every 10 steps and at end_step.
    assert [h["step"] for h in result["history"]] == [*range(0, 80, 10), 75]
    assert not any(h["skipped"] for h in result["history"])


def test_fit_granet_prunes_and_regrows_to_target_on_both_replicas(fit_results):
    result = _ok(fit_results, "granet")
    # Pruning with regeneration every 10 steps and at end_step (75 of 100 steps).
    assert [h["step"] for h in result["history"]] == [*range(0, 80, 10), 75]
    assert not any(h["skipped"] for h in result["history"])
    # `changed` counts connections grown that were not active before the update: none at
    # step 0 (every connection active) nor at 10 (regrowth from a dense start can only
    # bring back pruned ones); new ones from 20 on, while r is not yet 0.
    changed = [sum(h["changed"].values()) for h in result["history"]]
    assert changed[:2] == [0, 0] and all(c > 0 for c in changed[2:6]), changed


# ------------------------------------------------------- one update: single vs mirrored
ONE_STEP_METHODS = ["rigl", "set", "snfs"]


@pytest.mark.parametrize("method", ONE_STEP_METHODS)
def test_one_update_mirrored_matches_single_device(one_step_results, method):
    result = _ok(one_step_results, method)
    assert result["per_replica_sizes"] == [16, 16]
    assert result["skipped"] == [False, False]
    for name, layer in result["layers"].items():
        assert layer["mask_type"] == "MirroredVariable", name
        assert layer["n_components"] == 2, name
        assert layer["positions_differing"] == [0, 0], (
            f"{name}: mirrored mask differs from single-device mask at "
            f"{layer['positions_differing']} positions (per replica); details: {layer}"
        )
        assert layer["kernel_max_diff"] == [0.0, 0.0], (name, layer["kernel_max_diff"])
        assert layer["changed_mirrored"] == layer["changed_single"], name


@pytest.mark.parametrize("method", ONE_STEP_METHODS)
def test_one_update_mirrored_resets_slots_like_single_device(one_step_results, method):
    # Momentum of new connections is zeroed on every replica's copy of the slot, and the
    # rest of the slot is left alone, exactly as on a single device.
    result = _ok(one_step_results, method)
    for name, layer in result["layers"].items():
        assert layer["n_slots"] >= 1 and layer["mirrored_n_slots"] == layer["n_slots"], name
        assert layer["born_slots_zero"], name
        assert layer["other_slots_nonzero"], name
        assert layer["mirrored_slots_match_single"], name


@pytest.mark.parametrize("method", ONE_STEP_METHODS)
def test_one_update_single_device_is_a_proper_update(one_step_results, method):
    result = _ok(one_step_results, method)
    for name, layer in result["layers"].items():
        # floor(0.3 * nnz) dropped and as many grown; nnz unchanged.
        assert layer["changed_single"] > 0, name
        assert layer["nnz_single"] == layer["nnz_initial"], name
        # Each new connection replaces a dropped one: 2 positions flip per new connection.
        assert layer["diff_from_initial"] == 2 * layer["changed_single"], name
        assert layer["born_weights_zero"], name
        assert layer["masked_weights_zero"], name


def test_one_update_rigl_gradient_summed_over_replicas(one_step_results):
    # Keras scales each replica's loss by 1/num_replicas, so the summed per-replica
    # gradients equal the single-device full-batch gradient up to float rounding; the
    # selection is far from a tie.
    result = _ok(one_step_results, "rigl")
    for name, layer in result["layers"].items():
        assert layer["grad_max_abs"] > 0, name
        assert layer["grad_max_abs_diff"] <= 1e-5 * layer["grad_max_abs"] + 1e-7, (name, layer)
        assert layer["grow_margin"] is not None, name
        assert layer["grow_margin"] > 10 * layer["grad_max_abs_diff"], (name, layer)

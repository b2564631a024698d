"""The experiment pipeline on real MNIST prepared offline from ../shared/data."""

import json
import os
import signal
import subprocess
import sys
import time

import gin
import keras
import numpy as np
import pytest
from conftest import ROOT, SHARED

import rigl
from rigl.experiments import prepare, reporting, training

BASE_CONFIG = os.path.join(ROOT, "gin_configs", "mnist_lenet300.gin")
DEFAULT_CONFIG = os.path.join(ROOT, "gin_configs", "mnist_lenet300_rigl.gin")


def _run(workdir, data_dir, bindings, config=BASE_CONFIG):
    gin.clear_config()
    gin.parse_config_files_and_bindings(
        [config], [f"dataset.data_dir={data_dir!r}", "training.verbose=0", *bindings])
    try:
        return training.train(str(workdir))
    finally:
        gin.clear_config()


def _script(workdir, data_dir, bindings, env=None, config=BASE_CONFIG, **kwargs):
    command = [sys.executable, os.path.join(ROOT, "scripts", "train.py"),
               f"--gin_config={config}", f"--workdir={workdir}",
               f"--gin_bindings=dataset.data_dir={data_dir!r}", "--gin_bindings=training.verbose=0",
               *[f"--gin_bindings={b}" for b in bindings]]
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.Popen(command, env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def _finish(process, timeout=300):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


SHORT = ["training.epochs=None", "training.train_steps=120", "updater.update_freq=20",
         "training.checkpoint_every_steps=40"]


def test_prepare_mnist_offline(data_dir):
    import tensorflow_datasets as tfds

    train = tfds.load("mnist", split="train", data_dir=data_dir, download=False)
    test = tfds.load("mnist", split="test", data_dir=data_dir, download=False)
    assert (len(train), len(test)) == (60_000, 10_000)
    # Preparing again finds the dataset and leaves it alone.
    assert prepare.prepare("mnist", os.path.join(SHARED, "mnist"), data_dir).endswith("3.0.1")


def test_prepare_names_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="source_dir"):
        prepare.prepare("mnist", str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="dataset"):
        prepare.prepare("svhn", str(tmp_path), str(tmp_path / "out"))


def test_default_config_reaches_97_percent(data_dir, tmp_path):
    """The acceptance run: LeNet-300-100, RigL, 90% sparsity, 5 epochs of real MNIST."""
    results = _run(tmp_path, data_dir, [], config=DEFAULT_CONFIG)
    assert results["test_accuracy"] >= 0.97
    assert abs(results["measured_sparsity"] - 0.9) <= 0.001
    saved = json.loads((tmp_path / "results.json").read_text())
    for field in ("dataset", "model", "method", "distribution", "sparsity",
                  "measured_sparsity", "steps", "test_accuracy", "train_seconds", "seed",
                  "gin_config"):
        assert field in saved, field
    assert saved["steps"] == 3000 and saved["method"] == "rigl" and saved["dataset"] == "mnist"
    # One timed update every 100 steps until 75% of the 3,000.
    assert len(saved["mask_update_seconds"]) >= 22
    assert all(seconds > 0 for seconds in saved["mask_update_seconds"])
    assert 0 < saved["mask_update_share"] < 1
    assert "training.method = 'rigl'" in saved["gin_config"]
    assert (tmp_path / "operative_config.gin").exists()
    assert "training.method = 'rigl'" in (tmp_path / "config.gin").read_text()
    assert (tmp_path / "run_identity.json").exists()
    assert any((tmp_path / "logs" / "train").iterdir())
    model = keras.saving.load_model(tmp_path / "model.keras")
    assert rigl.total_sparsity(model) == pytest.approx(0.9, abs=1e-3)


@pytest.mark.parametrize("method", rigl.methods.METHODS)
def test_method_swap_by_one_binding(data_dir, tmp_path, method):
    results = _run(tmp_path, data_dir, [*SHORT, f"training.method={method!r}"])
    assert results["method"] == method
    assert results["test_accuracy"] > 0.5
    if not rigl.methods.get_method(method).masked:
        assert results["measured_sparsity"] == 0.0
    else:
        assert results["measured_sparsity"] == pytest.approx(0.9, abs=1e-3)
    # FLOPs columns (rigl.flops counting; LeNet-300-100 dense forward: 532,810 FLOPs).
    assert results["dense_inference_flops"] == 532_810
    inference, train = results["inference_flops_ratio"], results["train_flops_ratio"]
    if method == "dense":
        assert inference == train == 1.0
    elif method == "small_dense":  # as many parameters as the 90% sparse model
        assert inference == pytest.approx(0.1, abs=0.01) and train == inference
    elif method == "prune":  # dense until pruning ends at 75% of the run: far above 0.1
        assert inference == pytest.approx(0.1007, abs=1e-3) and 0.2 < train < 1.0
    elif method == "snfs":  # 2·f_S + f_D every step
        assert train == pytest.approx((2 * inference + 1) / 3)
    elif method == "rigl":  # (3·f_S·ΔT + 2·f_S + f_D) / (ΔT + 1), ΔT = 20
        assert train == pytest.approx((3 * inference * 20 + 2 * inference + 1) / 21 / 3)
    elif method == "srigl":  # RigL's rule; f_S moves as ablation moves the layers' counts
        assert train == pytest.approx((3 * inference * 20 + 2 * inference + 1) / 21 / 3,
                                      rel=0.01)
    elif method == "granet":  # global pruning: the layers' sparsities follow the magnitudes
        assert 0.0 < inference < 0.2 and inference < train < 1.0
    else:
        assert inference == pytest.approx(0.1007, abs=1e-3) and train == inference


def test_character_language_model_reports_bits_per_char(data_dir, tmp_path):
    results = _run(tmp_path, data_dir, [
        "training.dataset='tiny_shakespeare'", "training.model='char_gru'", "model.width=0.125",
        "dataset.seq_len=32", "training.epochs=None", "training.train_steps=30",
        "training.batch_size=16", "training.eval_batch_size=512", "training.sparsity=0.75",
        "updater.update_freq=10", "optimizer.name='adam'", "learning_rate.base=0.02"])
    assert "test_accuracy" not in results
    # Uniform over 256 bytes is 8 bits/char; a few steps already learn byte frequencies.
    assert 0.0 < results["test_bits_per_char"] < 6.5
    assert results["measured_sparsity"] == pytest.approx(0.75, abs=1e-3)


@pytest.mark.parametrize("binding, name", [
    ("training.method='sett'", "sett"),
    ("training.dataset='mnistt'", "mnistt"),
    ("training.model='lenet301'", "lenet301"),
])
def test_unknown_names_fail_with_the_name(data_dir, tmp_path, binding, name):
    with pytest.raises(ValueError, match=name):
        _run(tmp_path, data_dir, [binding])


def test_typo_in_binding_fails_at_start(data_dir, tmp_path):
    output = _finish_fail(_script(tmp_path, data_dir, ["training.methd='set'"]))
    assert "methd" in output


def _finish_fail(process):
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    return output


def test_missing_data_dir_says_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_data.py"):
        _run(tmp_path / "run", str(tmp_path / "empty"), [])


def test_mirrored_two_replicas_identical_masks(data_dir, tmp_path):
    _finish(_script(tmp_path, data_dir, [
        *SHORT, "training.strategy='mirrored'", "strategy.logical_cpus=2",
        "strategy.devices=['/cpu:0', '/cpu:1']"]))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["num_replicas"] == 2
    assert results["replica_mask_mismatches"] == []
    assert results["measured_sparsity"] == pytest.approx(0.9, abs=1e-3)


# The two-process MultiWorkerMirroredStrategy run is tests/test_launch_local.py's
# test_two_workers_end_with_identical_masks (through scripts/launch_local.py).


def test_kill_and_resume_equals_uninterrupted(data_dir, tmp_path):
    bindings = ["training.epochs=None", "training.train_steps=240", "updater.update_freq=20",
                "training.checkpoint_every_steps=40", "training.deterministic=True",
                "training.log_every_steps=20"]
    _finish(_script(tmp_path / "straight", data_dir, bindings))

    resumed = tmp_path / "resumed"
    process = _script(resumed, data_dir, bindings)
    checkpoints = resumed / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if checkpoints.exists() and any(p.name.startswith("ckpt-80") for p in
                                        checkpoints.iterdir()):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (resumed / "results.json").exists()
    output = _finish(_script(resumed, data_dir, bindings))
    assert "Resumed from" in output

    straight = keras.saving.load_model(tmp_path / "straight" / "model.keras")
    again = keras.saving.load_model(resumed / "model.keras")
    for name, mask in rigl.get_masks(straight).items():
        np.testing.assert_array_equal(mask, rigl.get_masks(again)[name], err_msg=name)
    for a, b in zip(straight.get_weights(), again.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


# Slow (1 min): a second preparation of MNIST from re-gzipped files.
@pytest.mark.slow
def test_prepare_from_recompressed_files_seeds_the_cache(data_dir, tmp_path):
    """Files with the same data in other bytes (as Debian's dataset-fashion-mnist ships) go
    through TFDS's download cache and give the same dataset as the byte-exact originals."""
    import gzip

    import tensorflow_datasets as tfds

    source = tmp_path / "regzipped"
    source.mkdir()
    for name in os.listdir(os.path.join(SHARED, "mnist")):
        with gzip.open(os.path.join(SHARED, "mnist", name)) as f:
            content = f.read()
        (source / name).write_bytes(gzip.compress(content, compresslevel=1, mtime=1))
    prepare.prepare("mnist", str(source), str(tmp_path / "tfds"))

    def summary(path):
        ds = tfds.load("mnist", split="test", data_dir=path, download=False, batch_size=-1)
        ds = tfds.as_numpy(ds)
        return int(ds["image"].astype(np.int64).sum()), np.bincount(ds["label"]).tolist()

    assert summary(str(tmp_path / "tfds")) == summary(data_dir)


def test_validation_split_best_scores_and_mask_snapshots(data_dir, tmp_path):
    """The original MNIST code's protocol: 55,000 training images, 5,000 for validation."""
    results = _run(tmp_path, data_dir, [
        "training.epochs=None", "training.train_steps=150", "training.eval_every_steps=50",
        "dataset.validation_examples=5000", "training.mask_snapshot_steps=[0, 100]"])
    history = json.loads((tmp_path / "eval_log.json").read_text())
    assert [step for step, _ in history] == [50, 100, 150]
    tests = [metrics["test_accuracy"] for _, metrics in history]
    validations = [metrics["validation_accuracy"] for _, metrics in history]
    assert results["best_test_accuracy"] == max(tests)
    assert results["best_step"] == history[int(np.argmax(tests))][0]
    assert results["test_accuracy_at_best_validation"] == tests[int(np.argmax(validations))]
    assert results["validation_accuracy"] == validations[-1]
    snapshots = sorted(p.name for p in (tmp_path / "mask_snapshots").iterdir())
    assert snapshots == ["step_0.npz", "step_100.npz"]
    first, later = (np.load(tmp_path / "mask_snapshots" / n)["fc1"] for n in snapshots)
    assert first.shape == (784, 300) and first.sum() == later.sum()
    assert not np.array_equal(first, later)  # RigL moved connections in between


def test_validation_examples_are_checked(data_dir, tmp_path):
    with pytest.raises(ValueError, match="dataset.validation_examples"):
        _run(tmp_path, data_dir, ["dataset.validation_examples=60000"])


def test_best_metrics_of_a_language_model_minimise_bits():
    history = [(10, {"test_bits_per_char": 3.0}), (20, {"test_bits_per_char": 2.5}),
               (30, {"test_bits_per_char": 2.7})]
    assert reporting.best_metrics(history) == {"best_test_bits_per_char": 2.5, "best_step": 20}


def test_mlp_units_counts_units_that_keep_a_connection():
    """The appendix's "final architecture": inputs with an outgoing connection, hidden units
    with both an incoming and an outgoing one, outputs with an incoming one."""
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, name="fc1")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(hidden))
    model = rigl.sparsify(model, 0.0, dense_layers=["logits"])
    mask = np.zeros((4, 3), "float32")
    mask[0, 0] = mask[2, 0] = mask[2, 1] = 1  # inputs 0 and 2; units 0 and 1 fed
    rigl.masked_weights(model)[0].mask.assign(mask)
    assert reporting.mlp_units(model) == [2, 2, 2]
    conv = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3),
                             keras.layers.Flatten(), keras.layers.Dense(2)])
    assert reporting.mlp_units(conv) is None
    # fc1's unit 2 has no input left; the dense logits layer is not a sparse kernel.
    assert rigl.masking.units_without_inputs(model) == {"fc1": 1}


def test_mlp_units_reads_masks_held_by_path_and_skips_other_kernels():
    from rigl import kernels, path_masks
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, name="fc1")(inputs)
    plain = keras.Model(inputs, keras.layers.Dense(2, name="logits")(hidden))
    wrapped = path_masks.wrap(plain, kernels.select(plain)[0][:1], {"fc1/kernel": 0.0}, 0)
    mask = np.zeros((4, 3), bool)
    mask[0, 0] = mask[2, 0] = mask[2, 1] = True
    wrapped.masked_weights()[0].mask.assign(mask)
    assert reporting.mlp_units(wrapped) == [2, 2, 2]
    tokens = keras.Input((5,), dtype="int32")
    x = keras.layers.Embedding(10, 4)(tokens)
    x = keras.layers.MultiHeadAttention(1, 4)(x, x)
    # Dense layers in a chain of matching sizes, but attention and embeddings between them.
    x = keras.layers.Dense(4)(keras.layers.Dense(6)(x))
    assert reporting.mlp_units(keras.Model(tokens, x)) is None


def test_units_without_inputs_of_convolutions_and_sparse_storage():
    conv = rigl.sparsify(keras.Sequential([
        keras.Input((8, 8, 2)), keras.layers.Conv2D(4, 3, name="conv"),
        keras.layers.Flatten(), keras.layers.Dense(3, name="fc")]), 0.5)
    mask = np.zeros((3, 3, 2, 4), "float32")
    mask[0, 0, 1, 0] = mask[2, 1, 0, 3] = 1  # filters 0 and 3 keep an input; 1 and 2 none
    rigl.masked_weights(conv)[0].mask.assign(mask)
    starved = rigl.masking.units_without_inputs(conv)
    assert starved["conv"] == 2 and set(starved) == {"conv", "fc"}
    sparse = rigl.to_sparse(rigl.sparsify(keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(5, name="h")]), 0.0))
    (layer,) = rigl.masking.sparse_weights(sparse)
    rows, cols, values = layer.connections()
    keep = cols != 4  # output unit 4 loses its every input
    layer.set_connections(rows[keep], cols[keep], values[keep])
    assert rigl.masking.units_without_inputs(sparse) == {"h": 1}

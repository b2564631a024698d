"""``training.storage = 'sparse'``: truly sparse layers (rigl.SparseDense) in the experiment
pipeline: validation, building, the big-MLP configs, training, reporting and resuming."""

from __future__ import annotations

import glob
import inspect
import json
import os

import gin
import keras
import numpy as np
import pytest
from conftest import ROOT
from conftest import train_gin as _train

import rigl
from rigl.experiments import config as run_config
from rigl.experiments import models, reporting, training
from rigl.experiments.errors import UsageError

BASE = os.path.join("gin_configs", "mnist_lenet300.gin")
SPARSE_MLP = os.path.join("gin_configs", "big_mlp", "mnist_mlp_sparse.gin")
BIG_MLP_CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(
    os.path.join(ROOT, "gin_configs", "big_mlp", "*.gin")))
# Small enough to smoke-train every big-MLP config in a few seconds (the real widths are
# dry-run by test_big_mlp_configs_dry_run_at_their_widths).
TINY = ["model.hidden=(48, 32)", "training.sparsity=0.9"]


def _config(**fields) -> run_config.TrainConfig:
    """A dry-run TrainConfig: ``training.train``'s defaults with ``fields`` over them."""
    defaults = {name: parameter.default for name, parameter in
                inspect.signature(training.train).parameters.items()
                if parameter.default is not inspect.Parameter.empty}
    return run_config.TrainConfig(**{**defaults, "workdir": None, "dry_run": True,
                                     "train_steps": 10, "verbose": 0, **fields})


def _sparse_layers(net) -> dict:
    return {layer.name: layer for layer in reporting.sparse_dense_layers(net)}


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("bindings, message", [
    (["training.storage='csr'"],
     r"training.storage: unknown 'csr'; allowed: \('masked', 'sparse'\)"),
    (["training.storage='sparse'", "training.method='dense'"],
     "training.storage: 'sparse' stores the active weights .* method 'dense' trains a dense"),
    (["training.storage='sparse'", "training.method='small_dense'"],
     "training.storage: .* method 'small_dense' trains a dense model"),
    (["training.storage='sparse'", "training.method='snfs'"],
     "training.storage: method 'snfs' cannot run on sparse storage: it grows by the momentum"),
    (["training.storage='sparse'", "updater.grow_init='random_normal'"],
     "training.storage: 'sparse' grows new connections at zero only, but updater.grow_init"),
    (["training.sparse_init=True", "training.method='prune'"],
     "training.sparse_init: method 'prune' starts dense"),
    (["training.sparse_init=True", "training.method='dense'"],
     "training.sparse_init: method 'dense' starts dense"),
    (["training.sparse_init=1"], "training.sparse_init: expected True or False"),
])
def test_bad_storage_is_a_usage_error_before_anything_is_built(bindings, message, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("the model was built before the settings were checked")

    monkeypatch.setattr(training, "build_network", no_build)
    with pytest.raises(UsageError, match=message):
        _train([BASE], bindings, dry_run=True)


def test_grow_init_is_checked_only_for_methods_that_grow(capsys):
    # Static never grows: its updater takes no grow_init, so the binding does not apply.
    _train([BASE], ["training.storage='sparse'", "training.method='static'",
                    "updater.grow_init='random_normal'"], dry_run=True)
    assert "| fc1 | (784, 300) |" in capsys.readouterr().out


def test_identities_stored_before_storage_existed_resume_as_masked(tmp_path):
    from rigl.experiments import workdir

    workdir.write_identity(str(tmp_path), {"training.sparsity": 0.9})
    masked = {"training.sparsity": 0.9, "training.storage": "masked"}
    assert workdir.check_identity(str(tmp_path), masked) == "same"
    with pytest.raises(UsageError, match="training.storage: 'masked' -> 'sparse'"):
        workdir.check_identity(str(tmp_path), {**masked, "training.storage": "sparse"})


# ---------------------------------------------------------------------------------- models
def test_mlp_layers_names_and_dense_factory():
    net = models.build_model("mlp", (28, 28, 1), 10, hidden=(64, 32, 16), width=0.5)
    assert [layer.name for layer in net.layers] == ["image", "flatten", "fc1", "fc2", "fc3",
                                                    "logits"]
    assert [net.get_layer(n).units for n in ("fc1", "fc2", "fc3", "logits")] == [32, 16, 8, 10]
    assert net.get_layer("fc1").activation is keras.activations.relu
    assert net.get_layer("logits").activation is keras.activations.linear
    assert [layer.name for layer in models.build_model("mlp", (4,), 3, hidden=()).layers] == [
        "image", "flatten", "logits"]
    with pytest.raises(ValueError, match="model.hidden"):
        models.build_model("mlp", (4,), 3, hidden=(0,))
    made = []

    def dense(units, **kwargs):
        made.append((units, kwargs["name"]))
        return keras.layers.Dense(units, **kwargs)

    models.build_model("lenet300_100", (28, 28, 1), 10, dense=dense)
    assert made == [(300, "fc1"), (100, "fc2"), (10, "logits")]
    assert models.takes_dense("mlp") and models.takes_dense("lenet300_100")
    assert not models.takes_dense("lenet5")


def test_lenet300_is_unchanged_by_the_dense_argument():
    """The masked path builds the same LeNet-300-100 as before the model took ``dense``."""
    keras.utils.set_random_seed(3)
    net = models.build_model("lenet300_100", (28, 28, 1), 10, weight_decay=1e-4)
    keras.utils.set_random_seed(3)
    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = keras.layers.Dense(300, activation="relu", name="fc1",
                           kernel_regularizer=keras.regularizers.l2(5e-5))(x)
    x = keras.layers.Dense(100, activation="relu", name="fc2",
                           kernel_regularizer=keras.regularizers.l2(5e-5))(x)
    old = keras.Model(inputs, keras.layers.Dense(10, name="logits", kernel_regularizer=(
        keras.regularizers.l2(5e-5)))(x), name="lenet300_100")
    assert net.name == old.name and net.get_config() == old.get_config()
    for a, b in zip(net.get_weights(), old.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


# -------------------------------------------------------------------------------- building
def test_a_model_taking_dense_is_built_sparse_directly():
    experiment = training.build_experiment(_config(
        storage="sparse", model="lenet300_100", sparsity=0.9, distribution="erk"))
    net = experiment.model
    layers = _sparse_layers(net)
    assert list(layers) == ["fc1", "fc2", "logits"] and not rigl.masked_layers(net)
    # The same nonzero count per layer as masked storage (not the same positions).
    masked = training.build_experiment(_config(model="lenet300_100", sparsity=0.9,
                                               distribution="erk")).model
    for name, mask in rigl.get_masks(masked).items():
        assert layers[name].nnz == layers[name].active_count() == int(mask.sum()), name
    assert experiment.dense_flops == rigl.flops.dense_inference_flops(
        models.build_model("lenet300_100", (28, 28, 1), 10)) == 532_810
    assert experiment.optimizer.variables  # slots of shape (nnz,), not of the dense kernels
    assert all(np.prod(v.shape) <= 784 * 300 * 0.2 for v in experiment.optimizer.variables)


def test_other_models_are_sparsified_then_converted_with_the_same_masks(caplog):
    """A model without a ``dense`` factory (LeNet-5) goes through sparsify -> to_sparse:
    from the same seed, sparse storage starts from exactly the masks and weights of masked
    storage; its convolutions stay masked (logged)."""
    settings = dict(model="lenet5", sparsity=0.8, distribution="erk", seed=5,
                    sparse_init=True)
    masked = training.build_experiment(_config(**settings)).model
    with caplog.at_level("WARNING"):
        sparse = training.build_experiment(_config(storage="sparse", **settings)).model
    assert "conv1, conv2" in caplog.text and "stay masked" in caplog.text
    assert [layer.name for layer in rigl.masked_layers(sparse)] == ["conv1", "conv2"]
    layers = _sparse_layers(sparse)
    assert list(layers) == ["fc1", "logits"]
    masks = rigl.get_masks(masked)
    for name, layer in layers.items():
        np.testing.assert_array_equal(layer.dense_kernel() != 0, masks[name], err_msg=name)
        np.testing.assert_array_equal(
            layer.dense_kernel(), keras.ops.convert_to_numpy(masked.get_layer(name).kernel))
    for name in ("conv1", "conv2"):
        np.testing.assert_array_equal(rigl.get_masks(sparse)[name], masks[name])
        np.testing.assert_array_equal(*(keras.ops.convert_to_numpy(net.get_layer(name).kernel)
                                        for net in (masked, sparse)))


def test_sparse_init_scales_initial_weights_by_one_over_root_density():
    settings = dict(storage="sparse", model="mlp", sparsity=0.96, distribution="erk")
    plain = training.build_experiment(_config(**settings)).model
    scaled = training.build_experiment(_config(sparse_init=True, **settings)).model
    for name, layer in _sparse_layers(plain).items():
        other = scaled.get_layer(name)
        density = layer.nnz / np.prod(layer.kernel_shape)
        np.testing.assert_array_equal(layer.rows.numpy(), other.rows.numpy())
        np.testing.assert_allclose(other.values.numpy(), layer.values.numpy() / np.sqrt(density),
                                   rtol=1e-6)
        assert density < 1 or name == "logits"


# ---------------------------------------------------------------------- the big-MLP configs
def test_big_mlp_configs_compose():
    assert {os.path.basename(c) for c in BIG_MLP_CONFIGS} >= {
        "mnist_65536_rigl.gin", "mnist_1m_rigl.gin", "mnist_1m_set.gin", "mnist_4096_rigl.gin"}
    gin.clear_config()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        expected = {
            "mnist_65536_rigl.gin": ("rigl", (65536, 65536), 0.999, 400, 100),
            "mnist_1m_rigl.gin": ("rigl", (1000000,), 0.99, 120, 30),
            "mnist_1m_set.gin": ("set", (1000000,), 0.99, 120, 30),
        }
        for name, (method, hidden, sparsity, steps, update_freq) in expected.items():
            gin.clear_config()
            gin.parse_config_file(os.path.join("gin_configs", "big_mlp", name))
            query = gin.query_parameter
            assert query("training.method") == method
            assert tuple(query("model.hidden")) == hidden
            assert (query("training.sparsity"), query("training.train_steps")) == (sparsity,
                                                                                   steps)
            assert query("updater.update_freq") == update_freq
            assert (query("training.storage"), query("training.distribution"),
                    query("training.batch_size"), query("optimizer.momentum")) == (
                        "sparse", "erk", 128, 0.9)
    finally:
        os.chdir(cwd)
        gin.clear_config()


# --------------------------------------------------------------------------- real training
SHORT_SPARSE = ["model.hidden=(128, 64)", "training.sparsity=0.9", "training.train_steps=40",
                "updater.update_freq=10", "training.eval_batch_size=1000",
                "training.checkpoint_every_steps=20", "training.mask_snapshot_steps=[0, 40]"]


def _run_real(workdir, data_dir, bindings=SHORT_SPARSE, config=SPARSE_MLP):
    return _train([config], [f"dataset.data_dir={data_dir!r}", *bindings], workdir=workdir)


class _Killed(Exception):
    pass


def _state(experiment) -> list:
    """Every variable of the model and the optimizer (slots, step): (name, value) in order
    (a second optimizer in one process gets another path prefix: names drop it)."""
    model = [(v.path, v) for v in experiment.model.variables]
    optimizer = [(v.path.split("/", 1)[-1], v) for v in experiment.optimizer.variables]
    return [(name, keras.ops.convert_to_numpy(v)) for name, v in model + optimizer]


def test_rigl_trains_a_truly_sparse_mlp_on_mnist_and_resumes(data_dir, tmp_path, monkeypatch):
    """RigL on a narrowed big-MLP config, real MNIST, 40 steps with mask updates at steps
    0, 10, 20 and 30, killed after its step-20 checkpoint and resumed: the state restored is
    the state saved (positions, values, slots), and the run ends with exact counts, a score
    well above chance, its results and O(nnz) mask snapshots."""
    saved_state, restored_state = [], []
    save, restore = training.TrainCheckpoint.save, training.TrainCheckpoint.restore

    def save_then_die(self, step, seconds):
        save(self, step, seconds)
        saved_state.extend(_state(self.experiment))
        raise _Killed(step)

    def restore_and_record(self):
        step = restore(self)
        restored_state.extend(_state(self.experiment))
        return step

    with monkeypatch.context() as patch:
        patch.setattr(training.TrainCheckpoint, "save", save_then_die)
        with pytest.raises(_Killed, match="20"):
            _run_real(tmp_path, data_dir)
    assert not (tmp_path / "results.json").exists()
    monkeypatch.setattr(training.TrainCheckpoint, "restore", restore_and_record)
    results = _run_real(tmp_path, data_dir)
    assert [name for name, _ in saved_state] == [name for name, _ in restored_state]
    assert "fc2/rows" in dict(saved_state) and "fc2_values_momentum" in dict(saved_state)
    for (name, value), (_, restored) in zip(saved_state, restored_state):
        np.testing.assert_array_equal(restored, value, err_msg=name)

    assert results["steps"] == 40 and results["method"] == "rigl"
    assert results["test_accuracy"] > 0.6  # chance is 0.1
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    layers = _sparse_layers(loaded)
    assert list(layers) == ["fc1", "fc2", "logits"]
    # Exactly the initial nonzero count per layer after the drop-and-grow updates.
    shapes = {name: layer.kernel_shape for name, layer in layers.items()}
    targets = rigl.layer_sparsities(shapes, 0.9, "erk")
    for name, layer in layers.items():
        size = int(np.prod(shapes[name]))
        expected = size - rigl.distributions.num_zeros(targets[name], size)
        assert layer.active_count() == layer.nnz == expected, name
        assert results["layer_sparsity"][name] == pytest.approx(1 - expected / size)
    saved = json.loads((tmp_path / "results.json").read_text())
    for field in ("measured_sparsity", "layer_sparsity", "mlp_units", "inference_flops",
                  "dense_inference_flops", "train_flops_ratio", "size_mb", "test_accuracy",
                  "replica_mask_mismatches"):
        assert field in saved, field
    assert saved["measured_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert saved["dense_inference_flops"] == 2 * (784 * 128 + 128 * 64 + 64 * 10) + (
        128 + 64 + 10)
    assert saved["inference_flops_ratio"] == pytest.approx(0.1, abs=0.02)
    assert "training.storage = 'sparse'" in saved["gin_config"]
    assert saved["mlp_units"] == reporting.mlp_units(rigl.to_masked(loaded))
    # Mask snapshots hold positions, O(nnz): RigL moved connections between them.
    first, last = (np.load(tmp_path / "mask_snapshots" / f"step_{s}.npz") for s in (0, 40))
    assert sorted(first.keys()) == sorted(f"{n}/{k}" for n in layers
                                          for k in ("rows", "cols", "alive", "shape"))
    assert first["fc1/rows"].shape == (layers["fc1"].nnz,)
    before, after = (reporting.dense_mask(s, "fc1") for s in (first, last))
    assert before.shape == (784, 128) and before.sum() == after.sum()
    assert not np.array_equal(before, after)


def test_storage_is_part_of_the_run_identity(tmp_path):
    """A masked run cannot be resumed as a sparse one: ``training.storage`` is in the
    operative bindings a workdir's identity is made of."""
    from rigl.experiments import workdir

    identities = {}
    for storage in ("masked", "sparse"):
        gin.clear_config()
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            gin.parse_config_files_and_bindings(
                [BASE], ["training.verbose=0", f"training.storage={storage!r}"])
            training.train(None, dry_run=True)
            identities[storage] = workdir.bindings_from_gin(gin.operative_config_str())
        finally:
            os.chdir(cwd)
            gin.clear_config()
    assert identities["masked"]["training.storage"] == "masked"
    workdir.check_identity(str(tmp_path), identities["masked"])
    with pytest.raises(UsageError, match="training.storage: 'masked' -> 'sparse'"):
        workdir.check_identity(str(tmp_path), identities["sparse"])

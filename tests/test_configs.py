"""Every gin config parses, dry-runs and smoke-trains (mock data, a few steps)."""

import dataclasses
import glob
import inspect
import json
import os

import keras
import numpy as np
import pytest
from conftest import ROOT
from conftest import train_gin as _train

import rigl
from rigl.experiments import config as run_config
from rigl.experiments import models, training
from rigl.experiments.errors import UsageError

# Experiment configs; gin_configs/sweeps/ holds sweep grids (tests/test_sweep.py).
CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(
    os.path.join(ROOT, "gin_configs", "**", "*.gin"), recursive=True)
    if os.sep + "sweeps" + os.sep not in p)
METHOD_CONFIGS = [c for c in CONFIGS if os.sep + "methods" + os.sep in c]
EXPERIMENT_CONFIGS = [c for c in CONFIGS if c not in METHOD_CONFIGS]
# Bindings of a smoke run by config folder. The big MLPs dry-run at their widths (truly
# sparse, built in O(nnz)) but smoke-train narrowed: a mask update scores every position of
# the dense kernels (4.3e9 for a 65,536-square layer). The tests of the sparse pipeline
# (tests/test_sparse_pipeline.py) train a narrowed one on real MNIST.
SMOKE_BINDINGS = {"big_mlp": ["model.hidden=(48, 32)", "training.sparsity=0.9"]}


def smoke_bindings(config: str) -> list[str]:
    return SMOKE_BINDINGS.get(os.path.basename(os.path.dirname(config)), [])


def test_every_config_is_covered():
    # One method file per method of the registry (rigl.methods), named after it.
    methods = {os.path.splitext(os.path.basename(c))[0] for c in METHOD_CONFIGS}
    assert methods == set(rigl.methods.METHODS) and len(METHOD_CONFIGS) == len(methods)
    assert len(EXPERIMENT_CONFIGS) >= 9
    for config in CONFIGS:
        header = open(os.path.join(ROOT, config)).read().splitlines()[0]
        assert header.startswith("#"), f"{config} has no header comment"


# Smoke training these takes 1-2 min each on 2 cores; they differ from configs that
# smoke-train in CI (resnet50.gin for the ImageNet networks, char_rnn/tiny_shakespeare.gin
# for the character GRU) in the distribution, the network or the dataset, which their dry
# runs and tests/test_models.py cover. They smoke-train under `-m slow`.
SLOW_SMOKE = {os.path.join("gin_configs", "imagenet", name) for name in (
    "resnet50_erk.gin", "resnet50_uniform.gin", "mobilenet_v1.gin", "mobilenet_v2.gin")} | {
    os.path.join("gin_configs", "cifar10", "wrn22_2.gin"),
    os.path.join("gin_configs", "char_rnn", "wikitext103.gin")}


@pytest.mark.parametrize("config", EXPERIMENT_CONFIGS)
def test_experiment_config_dry_runs(config, capsys):
    assert _train([config], dry_run=True) == {}
    printed = capsys.readouterr().out
    assert "| layer | kernel shape | sparsity | nonzeros |" in printed
    assert "steps:" in printed and "learning rate:" in printed


@pytest.mark.parametrize("config", [
    pytest.param(c, marks=pytest.mark.slow) if c in SLOW_SMOKE else c
    for c in EXPERIMENT_CONFIGS])
def test_experiment_config_smoke_trains(config, tmp_path):
    results = _train([config], ["training.smoke=True", *smoke_bindings(config)],
                     workdir=tmp_path)
    assert results["steps"] == run_config.SMOKE_STEPS
    assert np.isfinite(results["test_loss"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["measured_sparsity"] == pytest.approx(results["measured_sparsity"])
    # The saved model (optimizer, schedule and loss included) loads after `import rigl`.
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert rigl.get_masks(loaded).keys() == saved["layer_sparsity"].keys()


@pytest.mark.parametrize("config", METHOD_CONFIGS)
def test_method_config_composes_with_a_base(config, tmp_path):
    method = os.path.splitext(os.path.basename(config))[0]
    base = os.path.join("gin_configs", "mnist_lenet300.gin")
    results = _train([base, config], ["training.smoke=True"], workdir=tmp_path)
    assert results["method"] == method
    traits = rigl.methods.get_method(method)
    expected = 0.9 if traits.masked else 0.0
    # Gradual pruning (Pruning, GraNet) has not started after 3 smoke steps.
    assert results["measured_sparsity"] == pytest.approx(expected, abs=1e-3) or (
        traits.flops_rule in ("prune", "granet"))


def test_training_bindings_become_one_validated_config():
    """Every ``training.*`` parameter is a TrainConfig field; invalid settings are named
    before anything is built."""
    names = set(inspect.signature(training.train).parameters)
    assert names == {field.name for field in dataclasses.fields(run_config.TrainConfig)}
    for bindings, message in [
        (["training.epochs=1", "training.train_steps=5"], "training.train_steps / training.epochs"),
        (["training.method='dense'", "training.dense_layers=['fc1']"], "dense run has no masks"),
        (["training.method='sett'"], "training.method: unknown method 'sett'"),
    ]:
        with pytest.raises(UsageError, match=message):
            _train([os.path.join("gin_configs", "mnist_lenet300.gin")], bindings, dry_run=True)
    with pytest.raises(UsageError, match="workdir: required"):
        _train([os.path.join("gin_configs", "mnist_lenet300.gin")])


@pytest.mark.parametrize("binding, message", [
    ("training.sparsity=1.0", r"training.sparsity` must be a number in \[0, 1\), got 1.0"),
    ("training.custom_sparsity={'fc1': 1.5}", r"training.custom_sparsity\['fc1'\]"),
    ("training.distribution='erk2'", "training.distribution: unknown 'erk2'; allowed"),
    ("training.dataset='mnst'", "training.dataset: unknown 'mnst'; allowed"),
    ("training.model='lenet'", "training.model: unknown 'lenet'; allowed"),
    ("training.strategy='mirror'", "training.strategy: unknown 'mirror'; allowed"),
    ("training.batch_size=0", "training.batch_size: expected an integer >= 1, got 0"),
    ("training.eval_batch_size=2.5", "training.eval_batch_size: expected an integer >= 1"),
    ("training.train_steps=0", "training.train_steps: expected an integer >= 1"),
    ("training.epochs=0", "training.epochs: expected a finite number > 0"),
    ("training.multiplier=-1", "training.multiplier: expected a finite number > 0"),
    ("training.eval_every_steps=-5", "training.eval_every_steps: expected an integer >= 0"),
    ("training.checkpoint_every_steps=0", "training.checkpoint_every_steps: expected an"),
    ("training.log_every_steps=0", "training.log_every_steps: expected an integer >= 1"),
    ("training.erk_power_scale=-1", "training.erk_power_scale: expected a finite number >= 0"),
    ("training.seed=-1", r"training.seed: expected an integer in \[0, 4294967295\]"),
    ("training.label_smoothing=2", r"training.label_smoothing: expected a number in \[0, 1\]"),
    ("training.mask_snapshot_steps=[-1]", "training.mask_snapshot_steps: expected an integer"),
    ("training.verbose=3", r"training.verbose: expected one of \(0, 1, 2\) or None"),
    ("training.stop_on_nonfinite=-1", "training.stop_on_nonfinite: expected an integer >= 0"),
    ("training.deterministic=1", "training.deterministic: expected True or False"),
    ("updater.update_freq=0", "updater.update_freq: must be >= 1, got 0"),
])
def test_invalid_bindings_are_usage_errors_naming_them(binding, message):
    # The training.* ones fail constructing TrainConfig, the updater.* one building the
    # updater: both before the workdir is touched (a dry run would not write it anyway).
    length = ["training.epochs=None"] if "train_steps" in binding else []
    with pytest.raises(UsageError, match=message):
        _train([os.path.join("gin_configs", "mnist_lenet300.gin")], [binding, *length],
               dry_run=True)


@pytest.mark.parametrize("method, binding, attribute, value", [
    ("rigl", "grad_accumulation_n", "batches_per_update", 3),
    ("srigl", "grad_accumulation_n", "batches_per_update", 2),
    ("granet", "pruning_scope", "pruning_scope", "layer"),
    ("srigl", "gamma_sal", "gamma_sal", 0.5),
])
def test_new_method_bindings_reach_the_updater(method, binding, attribute, value):
    """The updater.* bindings of issue 17's methods go through make_updater to the updater
    (and to the method's scope, as in the methods' gin files)."""
    import gin
    gin.clear_config()
    try:
        gin.parse_config([f"updater.{binding} = {value!r}"])
        with gin.config_scope(method):
            updater = run_config.make_updater(method, 0.9, "uniform", None, 1.0, 0)
    finally:
        gin.clear_config()
    assert getattr(updater, attribute) == value


@pytest.mark.parametrize("method, binding, message", [
    ("rigl", "updater.grad_accumulation_n=0", "updater.grad_accumulation_n: must be >= 1"),
    ("granet", "updater.pruning_scope='model'", "updater.pruning_scope: unknown 'model'"),
    ("srigl", "updater.gamma_sal=1.5", "updater.gamma_sal: "),
    ("granet", "updater.initial_sparsity=0.95", "updater.initial_sparsity: must be <="),
])
def test_new_method_bindings_are_checked_in_a_dry_run(method, binding, message):
    with pytest.raises(UsageError, match=message):
        _train([os.path.join("gin_configs", "mnist_lenet300.gin")],
               [f"training.method='{method}'", binding], dry_run=True)


@pytest.mark.parametrize("method, initial, expected", [
    ("granet", 0.5, 0.5), ("granet", 0.0, 0.0), ("prune", 0.5, 0.0), ("rigl", 0.0, 0.9)])
def test_granet_starts_at_its_initial_sparsity(method, initial, expected, monkeypatch):
    """GraNet's sparse start (updater.initial_sparsity) sparsifies the model at it, a random
    mask; Pruning with an initial sparsity starts dense (it prunes by magnitude at its first
    step); a sparse-to-sparse method starts at training.sparsity."""
    built = []

    def spy(*args, **kwargs):
        net, flops = build_network(*args, **kwargs)
        built.append(rigl.measured_sparsities(net))
        return net, flops

    build_network = training.build_network
    monkeypatch.setattr(training, "build_network", spy)
    bindings = [f"training.method='{method}'"]
    if initial:
        bindings.append(f"updater.initial_sparsity={initial}")
    _train([os.path.join("gin_configs", "mnist_lenet300.gin")], bindings, dry_run=True)
    assert built and all(s == pytest.approx(expected, abs=1e-3) for s in built[0].values())


def test_prune_schedule_is_scoped_to_the_prune_method(capsys):
    config = os.path.join("gin_configs", "imagenet", "resnet50_uniform.gin")
    _train([config], ["training.method='prune'"], dry_run=True)
    assert "from 10,000 to T_end = 25,000" in capsys.readouterr().out
    _train([config], ["training.method='rigl'"], dry_run=True)
    assert "(every 100, from 0 to T_end = 25,000)" in capsys.readouterr().out


def test_multiplier_scales_steps_lr_anchors_and_t_end(capsys):
    config = os.path.join("gin_configs", "imagenet", "resnet50_erk.gin")
    _train([config], ["training.multiplier=5"], dry_run=True)
    out = capsys.readouterr().out
    assert "steps: 160,000" in out and "T_end = 125,000" in out
    # LR ÷10 at epoch 30 of 1,281,167 / 4096 examples (step 9,383.55), times 5: 46,918.
    assert "step 46,918: 0.16" in out


def _saturation_loop(shapes, sparsity):
    """An independent re-derivation of ERK's forced-dense layers (paper's Appendix)."""
    sizes = {n: float(np.prod(s)) for n, s in shapes.items()}
    raw = {n: sum(s) / np.prod(s) for n, s in shapes.items()}
    dense = set()
    while True:
        budget = sum(sizes[n] - rigl.distributions.num_zeros(sparsity, int(sizes[n]))
                     for n in shapes)
        budget -= sum(sizes[n] for n in dense)
        eps = budget / sum(raw[n] * sizes[n] for n in shapes if n not in dense)
        largest = max(raw[n] for n in shapes if n not in dense)
        if eps * largest <= 1:
            return dense
        dense |= {n for n in shapes if n not in dense and raw[n] == largest}


def test_erk_on_resnet50_at_80_percent():
    net = models.build_model("resnet50", (224, 224, 3), 1000)
    shapes = {name: shape for layer in net.layers if type(layer) in rigl.layers.MASKED_TWINS
              for name, shape in rigl.layers.kernel_shapes(layer).items()}
    assert len(shapes) == 54
    sparsities = rigl.layer_sparsities(shapes, 0.8, "erk")
    forced_dense = {n for n, s in sparsities.items() if s == 0.0}
    assert forced_dense == _saturation_loop(shapes, 0.8)
    assert forced_dense  # at 80% ERK some small layers saturate
    nonzeros = sum(np.prod(s) - rigl.distributions.num_zeros(sparsities[n], int(np.prod(s)))
                   for n, s in shapes.items())
    uniform = sum(np.prod(s) - rigl.distributions.num_zeros(0.8, int(np.prod(s)))
                  for s in shapes.values())
    assert abs(nonzeros - uniform) <= len(shapes)

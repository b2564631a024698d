"""The registry of methods (rigl.methods) and the uniform updater constructor."""

import os
import subprocess
import sys

import pytest

import rigl
from rigl import methods


def test_registry_is_the_one_list():
    assert rigl.METHODS == methods.METHODS == tuple(methods.REGISTRY)
    assert rigl.flops.METHODS == methods.METHODS
    assert set(rigl.UPDATERS) == {"static", "set", "snfs", "rigl", "prune", "snip", "granet",
                                  "srigl"}
    for name, row in methods.REGISTRY.items():
        assert row.name == name
        assert row.masked == (row.updater is not None)
        if row.updater is not None:
            assert row.updater.name == name
    assert [m for m in methods.METHODS if methods.REGISTRY[m].dense_to_sparse] == [
        "snip", "prune", "granet"]


@pytest.mark.parametrize("name", sorted(rigl.UPDATERS))
def test_get_updater_takes_the_common_arguments(name):
    common = dict(sparsity=0.9, distribution="erk", custom_sparsity=None, erk_power_scale=1.0,
                  initial_sparsity=0.0, update_freq=7, begin_step=3, end_step=70,
                  drop_fraction=0.5, drop_fraction_decay="constant", decay_power=1.0,
                  grow_init="zeros", seed=4)
    updater = rigl.get_updater(name, ignore_unused=True, **common)
    assert type(updater) is rigl.UPDATERS[name]
    assert updater.seed == 4
    taken = methods.REGISTRY[name].updater_args
    assert "seed" in taken
    if "drop_fraction" in taken:
        assert updater.drop_fraction.initial == 0.5
    if "update_freq" in taken:
        assert updater.schedule.update_freq == 7


def test_get_updater_rejects_what_the_method_does_not_take():
    with pytest.raises(ValueError, match="drop_fraction: Static does not take it"):
        rigl.get_updater("static", drop_fraction=0.2)
    with pytest.raises(ValueError, match="learning_rate: not an updater argument"):
        rigl.get_updater("rigl", learning_rate=0.1, ignore_unused=True)
    with pytest.raises(ValueError, match="method: unknown method 'nope'"):
        rigl.get_updater("nope")
    with pytest.raises(ValueError, match="method: 'dense' trains without masks"):
        rigl.get_updater("dense")


def test_flops_rules_follow_the_registry():
    f_d, f_s = 100.0, 10.0
    assert rigl.flops.train_flops_per_step("dense", f_d) == 300.0
    for name in ("static", "set", "snip", "small_dense"):
        assert rigl.flops.train_flops_per_step(name, f_d, f_s) == 30.0
    assert rigl.flops.train_flops_per_step("snfs", f_d, f_s) == 120.0
    assert rigl.flops.train_flops_per_step("rigl", f_d, f_s, update_freq=1) == (30 + 120) / 2
    assert rigl.flops.train_flops_per_step("srigl", f_d, f_s, update_freq=1) == (30 + 120) / 2


def test_import_rigl_loads_no_experiment_layer():
    code = ("import rigl, sys; print([m for m in sys.modules if m.split('.')[0] in "
            "('gin', 'tensorflow_datasets') or m.startswith('rigl.experiments')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.stdout.strip().splitlines()[-1] == "[]"

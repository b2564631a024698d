"""Tests of rigl.flops and scripts/flops_table.py: hand-counted layers, the training formulas of
the paper's Appendix H, and the ResNet-50 figures of the paper and the reference README."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import script_module

import rigl
from rigl import flops, layers
from rigl.experiments import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "flops_table.py")


def _mask(shape, keep, seed=0):
    """A 0/1 array of ``shape`` with exactly ``keep`` ones at random positions."""
    flat = np.zeros(int(np.prod(shape)), dtype=np.float32)
    flat[np.random.default_rng(seed).permutation(flat.size)[:keep]] = 1.0
    return flat.reshape(shape)


def _hand_model():
    """9×9×3 image -> strided 'valid' conv -> depthwise conv -> pooling -> dense, all masked."""
    inputs = keras.Input((9, 9, 3))
    x = layers.MaskedConv2D(4, 3, strides=2, padding="valid", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)  # not counted
    x = layers.MaskedDepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)  # not counted
    outputs = layers.MaskedDense(5, name="fc")(x)
    model = keras.Model(inputs, outputs)
    masks = {"conv": _mask((3, 3, 3, 4), 27), "dw": _mask((3, 3, 4, 1), 24),
             "fc": _mask((4, 5), 5)}
    for name, mask in masks.items():
        model.get_layer(name).mask.assign(mask)
    return model


# Worked by hand, flops = 2·L·N_out + N_out with L = fan_in · density:
# conv: kernel 3×3×3→4, fan_in 27, 27 of 108 weights kept (s = 0.75) -> L = 6.75. Its real
#   ('valid') output is 4×4, but outputs are counted as for 'same' padding: ceil(9/2) = 5, so
#   N_out = 5·5·4 = 100 and flops = (13.5 + 1)·100 = 1450 (dense: (54 + 1)·100 = 5500).
# dw: kernel 3×3×4×1, fan_in 9, 24 of 36 kept (s = 1/3) -> L = 6; its input is the conv's real
#   4×4 output, stride 1: N_out = 4·4·4 = 64, flops = (12 + 1)·64 = 832 (dense: 19·64 = 1216).
# fc: kernel 4×5, fan_in 4, 5 of 20 kept (s = 0.75) -> L = 1; N_out = 5, flops = 3·5 = 15
#   (dense: 9·5 = 45).
# Size (bits): 32 per nonzero + 1 per weight of a sparse layer + 32 per output channel:
#   conv 27·32 + 108 + 4·32 = 1100; dw 24·32 + 36 + 4·32 = 932; fc 5·32 + 20 + 5·32 = 340.
HAND = {
    "conv": dict(layer_type="Conv2D", kernel_shape=(3, 3, 3, 4), fan_in=27, outputs=100,
                 channels=4, nonzeros=27, sparsity=0.75, flops=1450.0, dense_flops=5500.0,
                 bits=1100.0),
    "dw": dict(layer_type="DepthwiseConv2D", kernel_shape=(3, 3, 4, 1), fan_in=9, outputs=64,
               channels=4, nonzeros=24, sparsity=1 / 3, flops=832.0, dense_flops=1216.0,
               bits=932.0),
    "fc": dict(layer_type="Dense", kernel_shape=(4, 5), fan_in=4, outputs=5, channels=5,
               nonzeros=5, sparsity=0.75, flops=15.0, dense_flops=45.0, bits=340.0),
}


def test_hand_counted_masked_layers():
    model = _hand_model()
    rows = flops.layer_table(model)
    assert [row.name for row in rows] == ["conv", "dw", "fc"]
    for row in rows:
        for field, expected in HAND[row.name].items():
            assert getattr(row, field) == pytest.approx(expected), (row.name, field)
    assert flops.inference_flops(model) == pytest.approx(1450 + 832 + 15)
    assert flops.dense_inference_flops(model) == pytest.approx(5500 + 1216 + 45)
    assert flops.model_size_mb(model) == pytest.approx((1100 + 932 + 340) / 8e6)
    # Dense: no mask bits; (108 + 4) + (36 + 4) + (20 + 5) values of 32 bits.
    assert flops.model_size_mb(model, dense=True) == pytest.approx(177 * 32 / 8e6)
    assert flops.num_params(model) == 27 + 24 + 5 + 4 + 4 + 5
    assert rows[0].as_dict()["shape"] == [3, 3, 3, 4]


def test_masks_argument_overrides_model_masks():
    model = _hand_model()
    # fc fully dense again: its row costs 45 and carries no mask bits.
    table = flops.layer_table(model, masks={"fc": np.ones((4, 5))})
    assert table[2].flops == 45 and table[2].bits == 20 * 32 + 5 * 32
    assert table[0].flops == pytest.approx(1450)
    with pytest.raises(ValueError, match="masks"):
        flops.layer_table(model, masks={"fc": np.ones((5, 4))})
    with pytest.raises(ValueError, match="masks"):
        flops.layer_table(model, masks={"nope": np.ones((4, 5))})
    with pytest.raises(ValueError, match="sparsities"):
        flops.layer_table(model, sparsities={"fc": 0.5})  # masked: comes from its mask


def _gru_model(gru=keras.layers.GRU):
    inputs = keras.Input((5, 3))
    x = gru(4, return_sequences=True, name="gru")(inputs)
    outputs = keras.layers.Dense(2, name="out")(x)
    return keras.Model(inputs, outputs)


# GRU with U = 4 over T = 5 steps of 3 features: two dense rows per step, N_out = 5·3U = 60.
# gru/kernel (3, 12), s = 0.5: 36 - floor(18) = 18 kept -> L = 1.5, flops = (3 + 1)·60 = 240.
# gru/recurrent_kernel (4, 12), s = 0.75: 48 - 36 = 12 kept -> L = 1, flops = 3·60 = 180.
# out: Dense(2) at each of the 5 steps: N_out = 10, fan_in 4, dense: (8 + 1)·10 = 90.
# Bits: 18·32 + 36 + 12·32 = 996; 12·32 + 48 + 384 = 816; 8·32 + 2·32 = 320.
GRU_SPARSITIES = {"gru/kernel": 0.5, "gru/recurrent_kernel": 0.75}


def test_gru_counts_two_dense_rows_per_step():
    model = _gru_model()
    rows = flops.layer_table(model, GRU_SPARSITIES)
    assert [(r.name, r.kernel_shape, r.outputs) for r in rows] == [
        ("gru/kernel", (3, 12), 60), ("gru/recurrent_kernel", (4, 12), 60), ("out", (4, 2), 10)]
    assert [r.flops for r in rows] == pytest.approx([240, 180, 90])
    assert [r.bits for r in rows] == pytest.approx([996, 816, 320])
    assert flops.sparsity_map(model, 0.5, dense_layers=["gru"]) == {
        "gru/kernel": 0.0, "gru/recurrent_kernel": 0.0, "out": 0.5}


@pytest.mark.skipif(not hasattr(layers, "MaskedGRU"), reason="no masked GRU yet")
def test_masked_gru_reads_both_masks():
    model = _gru_model(layers.MaskedGRU)
    cell = model.get_layer("gru").cell
    cell.kernel_mask.assign(_mask((3, 12), 18))
    cell.recurrent_kernel_mask.assign(_mask((4, 12), 12))
    assert [r.flops for r in flops.layer_table(model)] == pytest.approx([240, 180, 90])


def _conv_net():
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv1")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    x = keras.layers.Conv2D(16, 1, name="pw")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(32, activation="relu", name="fc1")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("distribution, dense_layers", [
    ("uniform", ["conv1"]), ("erk", []), ("er", ["logits"])])
def test_plain_model_with_sparsity_map_counts_like_sparsified(distribution, dense_layers):
    model = _conv_net()
    sparsities = flops.sparsity_map(model, 0.7, distribution, dense_layers=dense_layers)
    sparse = rigl.sparsify(model, 0.7, distribution, dense_layers=dense_layers)
    assert flops.layer_table(model, sparsities) == flops.layer_table(sparse)
    for name in dense_layers:
        assert sparsities[name] == 0.0


@pytest.mark.skipif(not hasattr(layers, "MaskedGRU"), reason="no masked GRU yet")
def test_plain_gru_with_sparsity_map_counts_like_sparsified():
    model = _gru_model()
    sparsities = flops.sparsity_map(model, 0.6, "erk")
    assert flops.layer_table(model, sparsities) == flops.layer_table(
        rigl.sparsify(model, 0.6, "erk"))


def test_counting_errors_name_the_parameter():
    model = _conv_net()
    with pytest.raises(ValueError, match="sparsities: no counted layer named 'nope'"):
        flops.layer_table(model, {"nope": 0.5})
    with pytest.raises(ValueError, match=r"sparsities\['fc1'\]"):
        flops.inference_flops(model, {"fc1": 1.0})
    with pytest.raises(ValueError, match="dense_layers"):
        flops.sparsity_map(model, 0.5, dense_layers=["nope"])
    with pytest.raises(ValueError, match="sparsity"):
        flops.sparsity_map(model, 1.5)
    with pytest.raises(ValueError, match="model"):
        flops.layer_table("not a model")
    inputs = keras.Input((None, None, 3))
    variable = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="c")(inputs))
    with pytest.raises(ValueError, match="model: .*unknown dims"):
        flops.layer_table(variable)


def test_training_flops_per_method():
    f_d, f_s = 100.0, 20.0
    per_step = {  # Appendix H, per example and step
        "dense": 300.0,                                     # 3·f_D
        "static": 60.0, "set": 60.0, "snip": 60.0,          # 3·f_S
        "snfs": 140.0,                                      # 2·f_S + f_D
        "rigl": (3 * 20 * 4 + 2 * 20 + 100) / 5,            # ΔT = 4: 76
    }
    for method, expected in per_step.items():
        assert flops.train_flops_per_step(method, f_d, f_s, update_freq=4) == pytest.approx(
            expected)
        assert flops.train_flops_ratio(method, f_d, f_s, update_freq=4) == pytest.approx(
            expected / 300)
    assert flops.train_flops_ratio("rigl", f_d, f_s, 5, update_freq=4) == pytest.approx(
        5 * 76 / 300)
    # Small-Dense: 3·f of the small dense model.
    assert flops.train_flops_ratio("small_dense", f_d, 30.0, 2) == pytest.approx(2 * 90 / 300)
    # ΔT -> ∞ gives static's cost; ΔT = 0 is invalid.
    assert flops.train_flops_ratio("rigl", f_d, f_s, update_freq=10**9) == pytest.approx(0.2)
    assert flops.total_train_flops("dense", f_d, steps=10, batch_size=2) == pytest.approx(6000)


def test_gradual_pruning_average():
    # Updates at 2 (progress 0), 4 (1 - 0.5³ = 0.875) and 6 (1); step t trains with the latest
    # update <= t: steps 0-3 dense, 4-5 at 0.875, 6-9 final -> mean (2·0.875 + 4)/10 = 0.575.
    schedule = dict(begin_step=2, end_step=6, frequency=2, total_steps=10)
    assert flops.pruning_progress(**schedule) == pytest.approx(0.575)
    # f = f_D - 0.575·(f_D - f_S) = 54, so 3·54 = 162 per step.
    assert flops.train_flops_per_step("prune", 100, 20, **schedule) == pytest.approx(162)
    assert flops.train_flops_ratio("prune", 100, 20, 1.5, **schedule) == pytest.approx(0.81)
    # End off the frequency grid is an update too: 0 (0), 2 (1 - 0.6³), 4 (1 - 0.2³), 5 (1).
    assert flops.pruning_progress(0, 5, 2, 8) == pytest.approx(
        (2 * 0.784 + 0.992 + 3) / 8)
    assert flops.pruning_progress(3, 3, 1, 10) == pytest.approx(0.7)  # one shot at step 3
    assert flops.pruning_progress(0, 100, 50, 50) == 0.0  # the run ends before pruning does


def test_training_errors_name_the_parameter():
    with pytest.raises(ValueError, match="method"):
        flops.train_flops_ratio("lottery", 100, 20)
    with pytest.raises(ValueError, match="dense_flops"):
        flops.train_flops_ratio("static", 0, 20)
    with pytest.raises(ValueError, match="sparse_flops"):
        flops.train_flops_ratio("static", 100)
    with pytest.raises(ValueError, match="sparse_flops"):
        flops.train_flops_ratio("static", 100, -1)
    with pytest.raises(ValueError, match="multiplier"):
        flops.train_flops_ratio("static", 100, 20, 0)
    with pytest.raises(ValueError, match="update_freq"):
        flops.train_flops_ratio("rigl", 100, 20, update_freq=0)
    with pytest.raises(ValueError, match="begin_step"):
        flops.train_flops_ratio("prune", 100, 20, end_step=5, frequency=1, total_steps=9)
    with pytest.raises(ValueError, match="end_step"):
        flops.pruning_progress(5, 4, 1, 10)
    with pytest.raises(ValueError, match="total_steps"):
        flops.pruning_progress(0, 4, 1, 0)


def test_average_inference_flops():
    assert flops.average_inference_flops([100, 50]) == 75
    assert flops.average_inference_flops([100, 50], durations=[1, 3]) == 62.5
    model = _hand_model()
    dense_fc = {"fc": np.ones((4, 5))}
    # Snapshot 1 has fc dense (45 instead of 15): +30 FLOPs; the others keep the model's masks.
    assert flops.average_inference_flops([dense_fc, {}], model) == pytest.approx(2297 + 15)
    with pytest.raises(ValueError, match="snapshots"):
        flops.average_inference_flops([])
    with pytest.raises(ValueError, match="model"):
        flops.average_inference_flops([dense_fc])
    with pytest.raises(ValueError, match="durations"):
        flops.average_inference_flops([1, 2], durations=[1])


def test_solve_width():
    assert flops.solve_width(lambda w: 1000 * w * w + 10, 260) == pytest.approx(0.5, abs=1e-3)
    # A step function (integer channels) is matched as closely as it allows.
    width = flops.solve_width(lambda w: round(100 * w) ** 2, 2500)
    assert round(100 * width) == 50
    with pytest.raises(ValueError, match="target"):
        flops.solve_width(lambda w: 1000 * w * w, 5000)
    # On a real model: LeNet-300-100 at width 0.5 has 133,800 weights + 210 biases.
    count = lambda w: flops.num_params(models.lenet300_100((28, 28, 1), 10, width=w))  # noqa: E731
    assert flops.solve_width(count, count(0.5)) == pytest.approx(0.5, abs=0.01)


# ResNet-50: the figures of the paper (Table 2, Appendix H) and of the reference README.
@pytest.fixture(scope="module")
def resnet50():
    return models.build_model("resnet50", (224, 224, 3), 1000)


def test_resnet50_dense(resnet50):
    f_d = flops.dense_inference_flops(resnet50)
    assert f_d == pytest.approx(8.2e9, rel=0.005)
    assert round(flops.model_size_mb(resnet50, dense=True), 3) == 102.122
    assert flops.layer_table(resnet50)[0].outputs == 112 * 112 * 64  # stem padding undone
    assert round(flops.total_train_flops("dense", f_d, steps=32000, batch_size=4096) / 1e18,
                 1) == 3.2


def test_resnet50_uniform_80(resnet50):
    f_d = flops.dense_inference_flops(resnet50)
    sparsities = flops.sparsity_map(resnet50, 0.8, "uniform",
                                    dense_layers=[flops.first_layer(resnet50)])
    assert flops.first_layer(resnet50) == "conv1" and sparsities["fc"] == 0.8
    f_s = flops.inference_flops(resnet50, sparsities)
    assert f_s / f_d == pytest.approx(0.23, abs=0.01)
    assert flops.train_flops_ratio("rigl", f_d, f_s, update_freq=100) == pytest.approx(
        0.23, abs=0.01)
    assert flops.train_flops_ratio("rigl", f_d, f_s, 5, update_freq=100) == pytest.approx(
        1.14, abs=0.01)


def test_resnet50_erk_80(resnet50):
    f_d = flops.dense_inference_flops(resnet50)
    sparsities = flops.sparsity_map(resnet50, 0.8, "erk")
    f_s = flops.inference_flops(resnet50, sparsities)
    assert f_s / f_d == pytest.approx(0.42, abs=0.01)
    assert flops.train_flops_ratio("rigl", f_d, f_s, 5, update_freq=100) == pytest.approx(
        2.09, abs=0.01)
    assert flops.train_flops_ratio("snfs", f_d, f_s) == pytest.approx(0.61, abs=0.01)


@pytest.mark.parametrize("distribution, sparsity, size", [
    ("erk", 0.8, 23.683), ("erk", 0.9, 13.499), ("uniform", 0.9, 13.532)])
def test_resnet50_sparse_sizes_match_reference_readme(resnet50, distribution, sparsity, size):
    dense = [flops.first_layer(resnet50)] if distribution == "uniform" else []
    sparsities = flops.sparsity_map(resnet50, sparsity, distribution, dense_layers=dense)
    assert flops.model_size_mb(resnet50, sparsities) == pytest.approx(size, abs=1e-3)


# The script.
def _run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_script_json_matches_library():
    result = json.loads(_run("--model", "lenet5", "--distribution", "erk", "--sparsity", "0.9",
                             "--method", "rigl", "--multiplier", "2", "--json"))
    model = models.build_model("lenet5", (28, 28, 1), 10)
    sparsities = flops.sparsity_map(model, 0.9, "erk")
    f_d, f_s = flops.dense_inference_flops(model), flops.inference_flops(model, sparsities)
    assert result["inference_flops"] == pytest.approx(f_s)
    assert result["dense_inference_flops"] == pytest.approx(f_d)
    assert result["inference_flops_ratio"] == pytest.approx(f_s / f_d)
    assert result["train_flops_ratio"] == pytest.approx(
        flops.train_flops_ratio("rigl", f_d, f_s, 2, update_freq=100))
    assert result["size_mb"] == pytest.approx(flops.model_size_mb(model, sparsities))
    assert [row["name"] for row in result["layers"]] == ["conv1", "conv2", "fc1", "logits"]
    for row in result["layers"]:
        assert {"name", "shape", "sparsity", "flops"} <= set(row)
        assert row["sparsity"] == pytest.approx(sparsities[row["name"]], abs=1e-3)


@pytest.fixture(scope="module")
def flops_script():
    with script_module(SCRIPT, "flops_table") as module:
        yield module


def test_script_count_validates(flops_script):
    counter = flops_script.Counter("lenet300_100")
    with pytest.raises(ValueError, match="sparsity"):
        flops_script.count(counter, "rigl", "uniform", None)
    small = flops_script.count(counter, "small_dense", "uniform", 0.9)
    assert small["params"] == pytest.approx(small["sparse_params"], rel=0.02)
    assert small["train_flops_ratio"] == pytest.approx(small["inference_flops_ratio"])


def test_script_paper_table(flops_script):
    table = json.loads(_run("--paper", "--json"))
    rows = {row["label"]: row for row in table["rows"]}
    for label in ("Dense", "Static", "SNIP", "Small-Dense", "SET", "RigL", "RigL 5x",
                  "Static (ERK)", "RigL (ERK)", "RigL 5x (ERK)", "SNFS (ERK)", "Pruning"):
        assert label in rows
    assert rows["RigL 5x"]["s80"]["train"] == pytest.approx(1.14, abs=0.01)
    assert rows["RigL 5x (ERK)"]["s80"]["train"] == pytest.approx(2.09, abs=0.01)
    assert rows["SNFS (ERK)"]["s80"]["paper_train"] == 0.61
    assert rows["Dense"]["s90"]["train"] == pytest.approx(1.0)
    for row in rows.values():
        for key in ("s80", "s90"):
            cell = row[key]
            assert ("train" in cell["differs"]) == (
                abs(cell["train"] - cell["paper_train"]) > 0.01 + 1e-9)
    assert table["sizes_mb"]["dense"]["ours"] == pytest.approx(102.122, abs=5e-4)
    text = flops_script.paper_markdown(table)
    assert "| RigL 5x (ERK) | " in text and "| Method | Train 80% | paper |" in text
    assert not math.isnan(table["dense_train_flops"])
    # The README's copy of the output is the output, verbatim.
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert text.strip() in readme


def test_granet_training_flops_hand_computed():
    """One-shot schedule at step 0 of 10: every step runs at f_S (3 · 10), and the one
    pruning step grows by the dense gradient: + (f_D - f_S) / 10 = 9."""
    per_step = flops.train_flops_per_step("granet", 100.0, 10.0, begin_step=0, end_step=0,
                                          frequency=1, total_steps=10)
    assert per_step == pytest.approx(39.0)
    # A sparse start at f_I = 50, pruning steps 0 and 2 of a 0..4 schedule, 4 steps run
    # (cubic: half-way is 7/8 of the way): f = 50, 50, 15, 15.
    f_2 = 50 - 7 / 8 * 40
    expected = (3 * (50 + 50 + f_2 + f_2) + (100 - 50) + (100 - f_2)) / 4
    assert flops.train_flops_per_step("granet", 100.0, 10.0, initial_flops=50.0, begin_step=0,
                                      end_step=4, frequency=2, total_steps=4) == pytest.approx(
        expected)
    with pytest.raises(ValueError, match="end_step: required"):
        flops.train_flops_per_step("granet", 100.0, 10.0, begin_step=0)

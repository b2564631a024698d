"""Tests of rigl.flops and scripts/flops_table.py: hand-counted layers in both countings
("paper" and "exact"), the training formulas of the paper's Appendix H, and the published
figures of the paper and the reference README (rigl.experiments.flops_report)."""

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
from rigl.experiments import flops_report, models, reporting, training
from rigl.experiments.errors import UsageError

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


# Worked by hand ("exact" counting), flops = 2·L·N_out + N_out with L = fan_in · density:
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
    rows = flops.layer_table(model, counting="exact")
    assert [row.name for row in rows] == ["conv", "dw", "fc"]
    for row in rows:
        for field, expected in HAND[row.name].items():
            assert getattr(row, field) == pytest.approx(expected), (row.name, field)
    assert flops.inference_flops(model, counting="exact") == pytest.approx(1450 + 832 + 15)
    assert flops.dense_inference_flops(model, "exact") == pytest.approx(5500 + 1216 + 45)
    assert flops.model_size_mb(model, counting="exact") == pytest.approx(
        (1100 + 932 + 340) / 8e6)
    # Dense: no mask bits; (108 + 4) + (36 + 4) + (20 + 5) values of 32 bits.
    assert flops.model_size_mb(model, dense=True, counting="exact") == pytest.approx(
        177 * 32 / 8e6)
    assert flops.num_params(model) == 27 + 24 + 5 + 4 + 4 + 5
    assert rows[0].as_dict()["shape"] == [3, 3, 3, 4]


# "paper" counts the depthwise layer as get_stats' Conv2D branch did: kernel (3, 3, 4, 1) as
# a convolution with c_out = 1, fan_in 36, L = 36 · 24/36 = 24, N_out = 4·4·1 = 16:
# flops = (48 + 1)·16 = 784 (exact: 832, the same 384 multiplications but bias and
# activation once per position, not per channel); dense (72 + 1)·16 = 1168; bits 24·32 + 36
# + 1·32 = 836 (one bias, not 4). conv and fc count alike (no padding feeds the stem).
HAND_PAPER = {**HAND, "dw": dict(HAND["dw"], fan_in=36, outputs=16, channels=1, flops=784.0,
                                 dense_flops=1168.0, bits=836.0)}


def test_paper_counts_depthwise_layers_as_the_reference_did():
    model = _hand_model()
    rows = flops.layer_table(model)  # the default: "paper"
    for row in rows:
        for field, expected in HAND_PAPER[row.name].items():
            assert getattr(row, field) == pytest.approx(expected), (row.name, field)
    assert flops.inference_flops(model) == pytest.approx(1450 + 784 + 15)
    assert (flops.inference_flops(model, counting="exact") - flops.inference_flops(model)
            == pytest.approx(832 - 784))
    assert flops.model_size_mb(model) == pytest.approx((1100 + 836 + 340) / 8e6)
    # The parameter count is the model's own in both countings.
    assert flops.num_params(model) == 27 + 24 + 5 + 4 + 4 + 5


def _padded_model():
    """9×9 image -> pad 1 -> stem conv 3×3/2 'valid' -> pad 1 -> conv 3×3/2 'valid' -> pad 1 ->
    depthwise 3×3/2 'valid' -> dense."""
    inputs = keras.Input((9, 9, 3))
    x = keras.layers.ZeroPadding2D(1, name="pad1")(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, name="stem")(x)            # 11 -> 5
    x = keras.layers.ZeroPadding2D(1, name="pad2")(x)
    x = keras.layers.Conv2D(4, 3, strides=2, name="conv")(x)            # 7 -> 3
    x = keras.layers.ZeroPadding2D(1, name="pad3")(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, name="dw")(x)        # 5 -> 2
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="fc")(x))


def test_paper_counts_the_padded_stem_and_depthwise_layers_from_their_padded_input():
    model = _padded_model()
    exact = {row.name: row.outputs for row in flops.layer_table(model, counting="exact")}
    paper = {row.name: row.outputs for row in flops.layer_table(model)}
    # stem: exact from the 9×9 input before its padding, ceil(9/2)² = 25 positions; paper from
    # the padded 11×11 as MicroNet saw it, ceil(11/2)² = 36.
    assert exact["stem"] == 5 * 5 * 4 and paper["stem"] == 6 * 6 * 4
    # A later padded convolution counts its real input (5×5 -> 3×3) in both.
    assert exact["conv"] == paper["conv"] == 3 * 3 * 4
    # Depthwise: exact ceil(3/2)² = 4 positions × 4 channels; paper from the padded 5×5,
    # ceil(5/2)² = 9 positions × 1 (the Conv2D branch's c_out).
    assert exact["dw"] == 2 * 2 * 4 and paper["dw"] == 3 * 3 * 1
    assert exact["fc"] == paper["fc"] == 2


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


def test_gradual_pruning_average_exact():
    # Updates at 2 (progress 0), 4 (1 - 0.5³ = 0.875) and 6 (1); step t trains with the latest
    # update <= t: steps 0-3 dense, 4-5 at 0.875, 6-9 final -> mean (2·0.875 + 4)/10 = 0.575.
    schedule = dict(begin_step=2, end_step=6, frequency=2, total_steps=10, counting="exact")
    assert flops.pruning_progress(**schedule) == pytest.approx(0.575)
    # f = f_D - 0.575·(f_D - f_S) = 54, so 3·54 = 162 per step.
    assert flops.train_flops_per_step("prune", 100, 20, **schedule) == pytest.approx(162)
    assert flops.train_flops_ratio("prune", 100, 20, 1.5, **schedule) == pytest.approx(0.81)
    # End off the frequency grid is an update too: 0 (0), 2 (1 - 0.6³), 4 (1 - 0.2³), 5 (1).
    assert flops.pruning_progress(0, 5, 2, 8, "exact") == pytest.approx(
        (2 * 0.784 + 0.992 + 3) / 8)
    assert flops.pruning_progress(3, 3, 1, 10, "exact") == pytest.approx(0.7)  # one shot at 3
    assert flops.pruning_progress(0, 100, 50, 50, "exact") == 0.0  # the run ends first


def test_gradual_pruning_average_paper():
    # The reference notebook's way: the cubic sampled every `frequency` steps, 0 to the last
    # step included: 0, 2, 4, 6, 8, 10 -> 0, 0, 0.875, 1, 1, 1 -> 3.875 / 6.
    schedule = dict(begin_step=2, end_step=6, frequency=2, total_steps=10)
    assert flops.pruning_progress(**schedule) == pytest.approx(3.875 / 6)
    # f = 100 - (3.875 / 6)·80 = 48.33..., 3·f = 145 per step.
    assert flops.train_flops_per_step("prune", 100, 20, **schedule) == pytest.approx(145)
    assert flops.pruning_progress(3, 3, 1, 10) == pytest.approx(8 / 11)  # steps 3..10 of 0..10
    # The paper's ImageNet schedule: 33 samples; ResNet-50 at 80% (f_S/f_D = 0.2254) then
    # trains at 0.5603 of the dense FLOPs, Table 2's 0.56x (every step: 0.5542 -> 0.5707).
    progress = flops.pruning_progress(10000, 25000, 1000, 32000)
    assert round(1 - progress * (1 - 0.2254), 2) == 0.56
    assert round(1 - flops.pruning_progress(10000, 25000, 1000, 32000, "exact")
                 * (1 - 0.2254), 2) == 0.57


def test_counting_must_be_paper_or_exact():
    model = _hand_model()
    message = r"counting: expected one of \['paper', 'exact'\], got 'approx'"
    for call in (lambda: flops.layer_table(model, counting="approx"),
                 lambda: flops.inference_flops(model, counting="approx"),
                 lambda: flops.dense_inference_flops(model, "approx"),
                 lambda: flops.model_size_mb(model, counting="approx"),
                 lambda: flops.average_inference_flops([1.0], counting="approx"),
                 lambda: flops.pruning_progress(0, 4, 1, 8, counting="approx"),
                 lambda: flops.train_flops_ratio("rigl", 100, 20, counting="approx"),
                 lambda: flops.total_train_flops("dense", 100, counting="approx"),
                 lambda: flops_report.Counter("lenet5", counting="approx")):
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(ValueError, match="counting: expected one of .*got None"):
        flops.conventions(None)
    with pytest.raises(UsageError, match="training.flops_counting: unknown 'approx'"):
        training.train(None, dry_run=True, train_steps=1, flops_counting="approx")


@pytest.mark.parametrize("name, input_shape, num_classes", [
    ("lenet300_100", (28, 28, 1), 10), ("lenet5", (28, 28, 1), 10),
    ("small_cnn", (32, 32, 3), 10), ("wrn_22_2", (32, 32, 3), 10)])
def test_countings_agree_without_padded_stem_or_depthwise_layers(name, input_shape,
                                                                  num_classes):
    # The models of the committed results count the same in both countings.
    model = models.build_model(name, input_shape, num_classes)
    sparsities = flops.sparsity_map(model, 0.9, "erk")
    assert flops.layer_table(model, sparsities) == flops.layer_table(model, sparsities,
                                                                     counting="exact")


def test_results_fields_use_the_runs_counting(tmp_path):
    """results.json's FLOPs fields (reporting.flops_results) follow training.flops_counting
    and say which it was; a depthwise layer makes the two differ."""
    net = rigl.sparsify(_hand_model_plain(), 0.5, "uniform")
    figures = {}
    for counting in ("paper", "exact"):
        log = reporting.FlopsLog(str(tmp_path / f"{counting}.json"), net, 0, False, counting)
        figures[counting] = reporting.flops_results(
            net, rigl.methods.get_method("rigl"), log, steps=10, multiplier=1.0,
            update_freq=100, dense_flops=flops.dense_inference_flops(net, counting))
        assert figures[counting]["flops_counting"] == counting
        assert figures[counting]["inference_flops"] == flops.inference_flops(
            net, counting=counting)
        assert figures[counting]["size_mb"] == flops.model_size_mb(net, counting=counting)
    assert figures["paper"]["inference_flops"] < figures["exact"]["inference_flops"]


def _hand_model_plain():
    """``_hand_model``'s architecture with plain Keras layers."""
    inputs = keras.Input((9, 9, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="valid", name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="fc")(x))


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
    assert flops.average_inference_flops([dense_fc, {}], model, counting="exact") == (
        pytest.approx(2297 + 15))
    assert flops.average_inference_flops([dense_fc, {}], model) == pytest.approx(2249 + 15)
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
    assert f_d == 8_202_340_776 and f"{f_d:.1e}" == "8.2e+09"
    assert round(flops.model_size_mb(resnet50, dense=True), 3) == 102.122
    # The stem: 115×115 outputs from its padded 230×230 input, as the reference counted it
    # ("paper"), or its real 112×112 output ("exact"); 2·147 + 1 FLOPs per output.
    assert flops.layer_table(resnet50)[0].outputs == 115 * 115 * 64
    assert flops.layer_table(resnet50, counting="exact")[0].outputs == 112 * 112 * 64
    exact = flops.dense_inference_flops(resnet50, "exact")
    assert f_d - exact == 295 * 64 * (115**2 - 112**2)
    # The rest counts alike: the strided 3×3 convolutions' explicit padding is undone in both.
    paper_rows, exact_rows = (flops.layer_table(resnet50, counting=c) for c in ("paper",
                                                                                "exact"))
    assert paper_rows[1:] == exact_rows[1:]
    assert round(flops.total_train_flops("dense", f_d, steps=32000, batch_size=4096) / 1e18,
                 1) == 3.2


def test_resnet50_paper_and_exact_differ_by_a_printed_digit(resnet50):
    """Uniform 80% (conv1 dense), RigL 5x: the paper's 1.14x with the reference's counting;
    1.13x counting the stem's real output (its dense FLOPs weigh more, the sparser the rest)."""
    sparsities = flops.sparsity_map(resnet50, 0.8, "uniform", dense_layers=["conv1"])
    ratio = {c: flops.train_flops_ratio(
        "rigl", flops.dense_inference_flops(resnet50, c),
        flops.inference_flops(resnet50, sparsities, counting=c), 5, counting=c,
        update_freq=100) for c in ("paper", "exact")}
    assert f"{ratio['paper']:.2f}" == "1.14" and f"{ratio['exact']:.2f}" == "1.13"


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


def test_printed_precision():
    assert flops_report.matches(0.2254, "0.23") and not flops_report.matches(0.2249, "0.23")
    assert flops_report.matches(5.79, "5.8") and flops_report.matches(8.2023e9, "8.2e9")
    assert not flops_report.matches(23.6837, "23.683")
    assert flops_report.matches(4.4887e17, "4.5e17") and not flops_report.matches(0.1, "0.09")


@pytest.fixture(scope="module")
def paper_table():
    return flops_report.paper_table()  # ~15-30 s: it builds ResNet-50 at a dozen widths


# The published figures --paper does not reproduce, by the note that explains them.
EXPECTED_NOTES = {"first_layer": 12, "small_dense": 8, "erk_size": 4, "er_size": 2,
                  "erk_965_size": 1, "rigl_1x": 1, "mobilenet_flops": 10,
                  "mobilenet_uniform_size": 3}


def test_paper_reproduces_or_explains_every_published_figure(paper_table):
    cells = flops_report.cells(paper_table)
    assert paper_table["summary"] == {"cells": 132, "match": 91, "differ": 41, "explained": 37}
    assert len(cells) == 132
    differing = [(where, cell) for where, cell in cells if not cell["matches"]]
    notes = {}
    for where, cell in differing:
        assert cell["note"] in flops_report.NOTES, where  # every differing cell is explained
        notes[cell["note"]] = notes.get(cell["note"], 0) + 1
    assert notes == EXPECTED_NOTES
    # Where a note names the configuration that gives the published figure, it does.
    for where, cell in differing:
        if cell["note"] in ("first_layer", "er_size", "erk_965_size", "rigl_1x"):
            assert cell["alternative_matches"], where
    rows = {row["label"]: row for row in paper_table["table_2"]}
    assert rows["Small-Dense"]["s90"]["test"]["alternative_matches"]  # size-matched: 0.12x
    # Figures that need the reference's counting: the stem at 115×115 and the pruning
    # schedule sampled every 1,000 steps.
    assert rows["RigL 5x"]["s80"]["train"]["matches"]  # 1.14x ("exact": 1.13x)
    assert rows["Pruning"]["s80"]["train"]["matches"]  # 0.56x ("exact": 0.57x)
    assert rows["Pruning 1.5x"]["s80"]["train"]["matches"]  # 0.84x ("exact": 0.86x)
    readme = paper_table["readme_resnet50"]["extended"]
    assert readme[-1]["multiplier"] == 100 and readme[-1]["train"]["matches"]  # 99%, 5.8x
    mobilenet = paper_table["readme_mobilenet_v1"]
    assert all(cell["matches"] for cell in mobilenet["dense"].values())  # 4.5e17, 1.14e9, 16.864
    assert all(row["measured_sparsity"]["matches"] for row in mobilenet["rows"])  # 0.89


def test_unexplained_sizes_rule_out_the_candidates_they_name(paper_table):
    """The erk_size note's candidates each miss a README digit (else the note would be wrong)."""
    v = paper_table["note_values"]
    # Fractional weights ((1 - s)·size, the reference counting library's) lower the size by
    # under one weight per layer, and still do not print as the README does.
    layers = len(flops.layer_specs(flops_report.Counter("resnet50").model()))
    assert 0 < v["erk80"] - v["erk80_fractional"] < layers * flops.PARAM_BITS / 8e6
    assert not flops_report.matches(v["erk80_fractional"], "23.683")
    assert not flops_report.matches(v["mbv1_erk_fractional"], "2.392")
    assert not flops_report.matches(v["erk80_power02"], "23.683")
    assert not flops_report.matches(v["erk80_conv1_dense"], "23.683")
    # Truncation would print these two as the README does, but not ERK 95%, which is rounded.
    assert f"{math.floor(v['erk80'] * 1000) / 1000:.3f}" == "23.683"
    assert f"{math.floor(v['mbv1_erk'] * 1000) / 1000:.3f}" == "2.392"
    assert flops_report.matches(v["erk95"], "8.399")
    assert f"{math.floor(v['erk95'] * 1000) / 1000:.3f}" != "8.399"


def test_paper_markdown_is_the_readmes(paper_table, flops_script):
    text = flops_script.paper_markdown(paper_table)
    assert "| RigL 5x (ERK) | 2.09x | 2.09x |" in text
    assert "**132 published figures: 91 reproduced to the printed digit, 41 differ: " in text
    # The README's copy of the output is the output, verbatim.
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert text.strip() in readme
    json.dumps(paper_table)  # --json prints it


def test_granet_training_flops_hand_computed():
    """One-shot schedule at step 0 of 10: every step runs at f_S (3 · 10), and the one
    pruning step grows by the dense gradient: + (f_D - f_S) / 10 = 9."""
    per_step = flops.train_flops_per_step("granet", 100.0, 10.0, begin_step=0, end_step=0,
                                          frequency=1, total_steps=10, counting="exact")
    assert per_step == pytest.approx(39.0)
    # A sparse start at f_I = 50, pruning steps 0 and 2 of a 0..4 schedule, 4 steps run
    # (cubic: half-way is 7/8 of the way): f = 50, 50, 15, 15.
    f_2 = 50 - 7 / 8 * 40
    extra = (100 - 50) + (100 - f_2)  # the dense gradients of the pruning steps 0 and 2
    schedule = dict(initial_flops=50.0, begin_step=0, end_step=4, frequency=2, total_steps=4)
    assert flops.train_flops_per_step("granet", 100.0, 10.0, counting="exact",
                                      **schedule) == pytest.approx(
        (3 * (50 + 50 + f_2 + f_2) + extra) / 4)
    # "paper" samples the cubic at steps 0, 2, 4: progress (0 + 7/8 + 1) / 3, f = 25.
    assert flops.train_flops_per_step("granet", 100.0, 10.0, **schedule) == pytest.approx(
        3 * (50 - 0.625 * 40) + extra / 4)
    with pytest.raises(ValueError, match="end_step: required"):
        flops.train_flops_per_step("granet", 100.0, 10.0, begin_step=0)

"""The inference mode of the benchmark (rigl.experiments.benchmark.inference,
``scripts/benchmark.py --modes=inference``): a tiny run in process (the MLP 32 -> 32 -> 32 ->
10 exported sparse and dense in both formats; no timing is asserted), its markdown, the
targets read off hand-made rows, the settings' validation and flag errors naming the flag."""

from __future__ import annotations

import json
import logging
import os
import statistics
import time

import pytest
from absl import flags
from conftest import ROOT, script_module

from rigl.experiments.benchmark import inference, report
from rigl.experiments.errors import UsageError

SCRIPT = os.path.join(ROOT, "scripts", "benchmark.py")
PUBLISHED = os.path.join(ROOT, "results", "benchmark")

# --------------------------------------------------------------------------- a tiny run


def _tiny_run(distribution, throughput_exports):
    pytest.importorskip("ai_edge_litert", reason="the LiteRT runtime (requirements-export.txt)")
    settings = inference.InferenceSettings(
        workloads=("mlp32",), sparsities=(0.9,), distributions=(distribution,), rounds=2,
        window_seconds=0.001, throughput_batch=8, throughput_exports=throughput_exports,
        export_rounds=1)
    return inference.inference_mode(settings, log=lambda message: None)


@pytest.fixture(scope="module")
def tiny():
    # rigl.export measures 3 candidates per sparse layer (seconds of tracing each): one
    # cell, with the sparse SavedModel exported at batch 1 only; see test_throughput_export.
    return _tiny_run("uniform", ())


def test_tiny_run_has_every_field(tiny):
    assert tiny["rounds"] == 2 and tiny["throughput_batch"] == 8
    (workload,) = tiny["workloads"]
    assert workload["workload"] == "mlp32" and workload["sparsities"] == [0.9]
    assert set(workload["dense"]["bytes_on_disk"]) == {"dense_saved_model", "dense_tflite"}
    assert [(c["distribution"], c["sparsity"]) for c in workload["cells"]] == [
        ("uniform", 0.9)]
    for cell in workload["cells"]:
        assert cell["dense_layers"] == []
        assert set(cell["bytes_on_disk"]) == {"sparse_saved_model", "sparse_tflite",
                                              inference.SMALL}
        assert all(size > 0 for size in cell["bytes_on_disk"].values())
        # The size-first export: sparse kernels only, within the size target.
        assert set(cell["small"]["representations"]) <= {"ell", "csr"}
        assert cell["small"]["sparse_layers"]["ratio"] <= inference.SIZE_TARGET
        assert cell["accuracy"][inference.SMALL]["max_abs_diff"] < 1e-4
        # Every kernel sparse: h1, h2 (32x32) and out (32x10).
        assert [layer["name"] for layer in cell["layers"]] == ["h1", "h2", "out"]
        assert cell["nnz"] == sum(layer["nnz"] for layer in cell["layers"])
        assert sum(cell["representations"].values()) == 3
        assert set(cell["representations"]) <= {"dense", "ell", "csr"}
        assert all(set(layer["measured_ms"]) - {"ell_one_slice"} == {"dense", "ell", "csr"}
                   for layer in cell["layers"])
        assert cell["sparse_layers"]["ratio"] > 0
        for key, batch in (("latency", 1), ("throughput", 8)):
            timed = cell[key]
            assert timed["batch"] == batch and set(timed["variants"]) == set(inference.VARIANTS)
            for variant in timed["variants"].values():
                assert len(variant["round_ms"]) == 2 and variant["ms"] > 0
            for name in ("saved_model", "tflite", "best"):
                ratio = timed["ratios"][name]
                assert ratio["ratio_min"] <= ratio["ratio"] <= ratio["ratio_max"]
        # The batch-1 export, timed at 8 (mlp32 is not among the throughput exports).
        assert cell["throughput"]["timed"]["sparse_saved_model"] == "sparse_saved_model"
        assert cell["throughput"]["timed"]["dense_tflite"] == "dense_tflite"
        assert "representations" not in cell["throughput"]
        assert cell["seconds"] > 0
    assert workload["seconds"] > 0 and tiny["seconds"] > 0


def test_tiny_run_outputs_match_the_keras_model(tiny):
    (workload,) = tiny["workloads"]
    for accuracy in [workload["dense"]["accuracy"]] + [c["accuracy"]
                                                       for c in workload["cells"]]:
        for name, found in accuracy.items():
            assert found["max_abs_diff"] < 1e-4, name
            assert found["top1_agreement"] == 1.0, name


def test_tiny_run_ratios_come_from_the_medians(tiny):
    for cell in tiny["workloads"][0]["cells"]:
        variants, ratios = cell["latency"]["variants"], cell["latency"]["ratios"]
        ms = {name: statistics.median(v["round_ms"]) for name, v in variants.items()}
        dense = min(ms["dense_saved_model"], ms["dense_tflite"])
        assert ratios["fastest_dense"] == min(("dense_saved_model", "dense_tflite"),
                                              key=ms.get)
        assert ratios["saved_model"]["ratio"] == pytest.approx(dense
                                                               / ms["sparse_saved_model"])
        assert ratios["tflite"]["ratio"] == pytest.approx(dense / ms["sparse_tflite"])
        assert ratios["best"]["ratio"] == pytest.approx(
            dense / min(ms["sparse_saved_model"], ms["sparse_tflite"]))
        throughput = cell["throughput"]
        assert throughput["examples_per_s"]["dense_tflite"] == pytest.approx(
            8e3 / throughput["variants"]["dense_tflite"]["ms"])


@pytest.mark.slow  # three more exports: tens of seconds
def test_throughput_export():
    result = _tiny_run("erk", ("mlp32",))
    (workload,) = result["workloads"]
    (cell,) = workload["cells"]
    assert set(cell["bytes_on_disk"]) == {"sparse_saved_model", "sparse_tflite",
                                          inference.SMALL, "sparse_saved_model_8"}
    throughput = cell["throughput"]
    assert throughput["timed"]["sparse_saved_model"] == "sparse_saved_model_8"
    assert sum(throughput["representations"].values()) == 3
    assert [layer["name"] for layer in throughput["layers"]] == ["h1", "h2", "out"]
    assert cell["accuracy"]["sparse_saved_model_8"]["max_abs_diff"] < 1e-4
    text = report.markdown(_report(json.loads(json.dumps(result))))
    (row,) = [line for line in text.splitlines()
              if line.startswith("| mlp32 | erk | 0.9 |") and line.endswith("| 8 |")]
    assert row


def _report(inference_result) -> dict:
    return {"command": "python scripts/benchmark.py --modes=inference", "machine": {
        "cpu": "cpu", "cores": 2, "tensorflow": "x", "keras": "y", "date": "today",
        "load_average_at_start": [0.0]}, "jit_compile": "auto",
        "inference": inference_result, "seconds": 1.0, "peak_rss_mb": 1.0,
        "load_average_at_end": [0.0]}


def test_tiny_run_renders(tiny):
    text = report.markdown(_report(json.loads(json.dumps(tiny))))
    assert "**Exported for inference**" in text
    assert "Latency, batch 1 (ms per call):" in text
    assert "Throughput, batch 8 (examples/s" in text
    rows = [line for line in text.splitlines() if line.startswith("| mlp32 | uniform | 0.9 |")]
    assert len(rows) == 3  # latency, throughput, exports
    assert rows[1].endswith("| 1 |")  # the sparse SavedModel timed at 8 was exported at 1
    # No target's workload was measured.
    assert "≥ 2× lower batch-1 latency at 90% for 4,096-wide Dense layers: not measured" in text
    assert "Inference mode:" in text and "mlp32:" in text


# ------------------------------------------------------------------------------ targets


def _cell(distribution, sparsity, best, size_ratio=1.0):
    return {"distribution": distribution, "sparsity": sparsity,
            "sparse_layers": {"ratio": size_ratio},
            "latency": {"ratios": {"best": {"ratio": best}}}}


def test_targets_are_read_off_the_rows():
    result = {"workloads": [
        {"workload": "mlp4096", "cells": [_cell("uniform", 0.9, 2.5), _cell("erk", 0.9, 1.9),
                                          _cell("uniform", 0.99, 6.0, 1.3)]},
        {"workload": "resnet50", "cells": [_cell("uniform", 0.9, 0.8)]}]}
    found = {t["text"]: t for t in inference.targets(result)}
    at_90 = found["≥ 2× lower batch-1 latency at 90% for 4,096-wide Dense layers"]
    assert at_90["met"] is False and at_90["found"] == "uniform 2.50×, erk 1.90×"
    at_99 = found["≥ 5× lower batch-1 latency at 99% for 4,096-wide Dense layers"]
    assert at_99["met"] is True and at_99["found"] == "uniform 6.00×"
    mobilenet = found["≥ 1.5× lower batch-1 latency for MobileNet-v1 at 90%"]
    assert mobilenet["met"] is None and mobilenet["found"] == "not measured"
    resnet = found["ResNet-50: what is possible (batch 1)"]
    assert resnet["met"] is None and resnet["found"] == "uniform 0.9: 0.80×"
    (size,) = [t for t in found.values() if t["text"].startswith("sparse layers' size")]
    assert size["met"] is False and size["found"] == "3 of 4 exports within; ratios 1.00–1.30"
    one = {"workloads": [{"workload": "lenet300_100", "cells": [_cell("erk", 0.9, 1.0, 0.8)]}]}
    assert inference.targets(one)[-1]["found"] == "1 of 1 exports within; ratio 0.80"
    # A row with a size-first export is judged by it, not by the auto export.
    with_small = _cell("erk", 0.9, 1.0, 4.9)
    with_small["small"] = {"sparse_layers": {"ratio": 0.8}}
    size = inference.targets({"workloads": [{"workload": "mlp1024",
                                             "cells": [with_small]}]})[-1]
    assert size["met"] is True and "representation='sparse'" in size["text"]


def test_agreement():
    found = inference.agreement([[0.0, 1.0], [2.0, 0.5]], [[0.0, 1.1], [0.5, 2.0]])
    assert found["max_abs_diff"] == pytest.approx(1.5)
    assert found["top1_agreement"] == 0.5
    with pytest.raises(ValueError, match="outputs: shape"):
        inference.agreement([[0.0]], [[0.0, 1.0]])


def test_time_calls_rounds_and_windows():
    calls = []
    timed = inference.time_calls({"a": lambda x: calls.append(("a", x)),
                                  "b": lambda x: calls.append(("b", x))}, 7, rounds=3,
                                 window_seconds=1e-12)
    assert {name: t["window_calls"] for name, t in timed.items()} == {"a": 1, "b": 1}
    assert all(len(t["round_ms"]) == 3 for t in timed.values())
    # Two untimed calls each, then rounds in rotating order: ab, ba, ab.
    assert "".join(name for name, _ in calls) == "aabb" + "abbaab"
    # A budget shorter than a round: the fewest rounds.
    timed = inference.time_calls({"a": lambda x: time.sleep(0.01)}, 0, rounds=7,
                                 window_seconds=1e-12, max_seconds=1e-6)
    assert len(timed["a"]["round_ms"]) == inference.MIN_ROUNDS
    assert inference.window_calls_for(0.03, 0.2) == 7
    assert inference.window_calls_for(0.0, 0.2) == 10_000  # capped


# ----------------------------------------------------------------------------- settings


def test_workloads_follow_the_papers_dense_layers():
    mobilenet = inference.WORKLOADS["mobilenet_v1"]
    assert mobilenet.dense_layers("erk", 0.9)[:2] == ["conv1", "conv_dw_1"]
    assert len(mobilenet.dense_layers("uniform", 0.99)) == 14
    resnet = inference.WORKLOADS["resnet50"]
    assert resnet.dense_layers("uniform", 0.9) == ["conv1"]
    assert resnet.dense_layers("erk", 0.9) == [] and resnet.dense_layers("erk", 0.99) == ["conv1"]
    assert inference.WORKLOADS["mlp4096"].dense_layers("uniform", 0.9) == []
    # The same lists as the gin configs of the paper's experiments.
    with open(os.path.join(ROOT, "gin_configs", "imagenet", "mobilenet_v1.gin")) as f:
        line = next(line for line in f if line.startswith("training.dense_layers"))
    assert line.split("=", 1)[1].strip() == str(mobilenet.dense_layers("uniform", 0.9))


def test_settings_validate_and_sort():
    settings = inference.InferenceSettings(sparsities=(0.99, 0.9, 0.95))
    assert settings.sparsities == (0.9, 0.95, 0.99)
    assert settings.sparsities_of("mlp4096") == (0.9, 0.95, 0.99)
    assert settings.sparsities_of("resnet50") == (0.9, 0.99)
    assert settings.distributions_of("resnet50") == ("uniform",)
    assert settings.distributions_of("mlp4096") == ("uniform", "erk")
    assert inference.InferenceSettings(distributions=("erk",)).distributions_of(
        "mobilenet_v1") == ("erk",)  # no light distribution asked for: the ones asked for
    assert inference.InferenceSettings(sparsities=(0.95,)).sparsities_of("resnet50") == (0.95,)
    assert inference.InferenceSettings(light_workloads=()).sparsities_of("resnet50") == (
        inference.InferenceSettings().sparsities)
    for kwargs, field in [({"workloads": ("vgg",)}, "workloads"),
                          ({"workloads": ()}, "workloads"),
                          ({"sparsities": (1.0,)}, "sparsities"),
                          ({"sparsities": (0.9, 0.9)}, "sparsities"),
                          ({"distributions": ("er",)}, "distributions"),
                          ({"light_distributions": ("er",)}, "light_distributions"),
                          ({"rounds": 0}, "rounds"),
                          ({"window_seconds": 0}, "window_seconds"),
                          ({"timing_seconds": -1}, "timing_seconds"),
                          ({"throughput_exports": ("vgg",)}, "throughput_exports")]:
        with pytest.raises(ValueError, match=f"^{field}: "):
            inference.InferenceSettings(**kwargs)


# ------------------------------------------------------------------------------- flags


@pytest.fixture(scope="module")
def script():
    with script_module(SCRIPT, "benchmark_script_inference") as module:
        yield module


def _settings(script, *argv, modes=("inference",)):
    absl_logger = logging.getLogger("absl")  # see tests/test_benchmark_storage.py
    level = absl_logger.level
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["benchmark.py", *argv])
    try:
        return script._inference_settings(list(modes))
    finally:
        flags.FLAGS.unparse_flags()
        absl_logger.setLevel(level)


def test_flags_make_the_settings(script):
    settings = _settings(script, "--inference_workloads=mlp4096,mobilenet_v1",
                         "--inference_sparsities=0.99,0.9", "--inference_distributions=erk",
                         "--inference_rounds=3", "--inference_throughput_exports=",
                         "--inference_full_grid")
    assert settings.workloads == ("mlp4096", "mobilenet_v1")
    assert settings.sparsities == (0.9, 0.99) and settings.distributions == ("erk",)
    assert settings.rounds == 3 and settings.throughput_exports == ()
    assert settings.light_workloads == ()
    assert _settings(script).light_workloads == ("char_gru", "mobilenet_v1", "resnet50")
    assert _settings(script, modes=("overhead",)) is None


@pytest.mark.parametrize("argv, message", [
    (["--inference_workloads=vgg"], "--inference_workloads: unknown 'vgg'"),
    (["--inference_sparsities=0.9,x"], "--inference_sparsities: 'x' is not a number"),
    (["--inference_sparsities=1.5"], "--inference_sparsities: expected numbers in [0, 1)"),
    (["--inference_distributions=er"], "--inference_distributions: unknown 'er'"),
    (["--inference_rounds=0"], "--inference_rounds: expected an integer >= 1"),
    (["--inference_window_seconds=-1"], "--inference_window_seconds: expected a positive"),
    (["--inference_timing_seconds=0"], "--inference_timing_seconds: expected a positive"),
    (["--inference_throughput_exports=vgg"], "--inference_throughput_exports: unknown 'vgg'"),
])
def test_bad_flags_name_the_flag(script, argv, message):
    with pytest.raises(UsageError) as error:
        _settings(script, *argv)
    assert str(error.value).startswith(message)


def test_inference_flags_without_the_inference_mode_are_an_error(script):
    with pytest.raises(UsageError, match="--inference_full_grid: only the inference mode"):
        _settings(script, "--inference_full_grid", modes=("storage",))


def test_published_inference_markdown_is_the_rendering_of_its_json():
    """results/benchmark/inference.md is `--render` of inference.json, byte for byte."""
    path = os.path.join(PUBLISHED, "inference.json")
    if not os.path.exists(path):
        pytest.skip("no published inference run yet")
    with open(path) as f:
        published = json.load(f)
    with open(os.path.join(PUBLISHED, "inference.md")) as f:
        assert f.read() == report.markdown(published) + "\n"

"""The storage mode of the benchmark (rigl.experiments.benchmark.storage and .memory,
``scripts/benchmark.py --modes=storage``): crossover and ratio arithmetic on hand-made
numbers, a tiny run in process (widths of 32, two sparsities; no timing is asserted), one
peak-memory process, and flag errors naming the flag."""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys

import pytest
from absl import flags
from conftest import ROOT, script_module

from rigl.experiments.benchmark import memory, report, storage
from rigl.experiments.errors import UsageError

SCRIPT = os.path.join(ROOT, "scripts", "benchmark.py")
PUBLISHED = os.path.join(ROOT, "results", "benchmark")

# ------------------------------------------------------------------- hand-made numbers


@pytest.mark.parametrize("speedups, wins_from, between, wins_at, words", [
    ([0.5, 1.5, 3.0], 0.95, [0.9, 0.95], [0.95, 0.99], "between 0.9 and 0.95"),
    ([2.0, 3.0, 4.0], 0.9, None, [0.9, 0.95, 0.99], "below 0.9"),
    ([0.2, 0.5, 0.9], None, None, [], "above 0.99"),
    ([1.2, 0.9, 2.0], 0.99, [0.95, 0.99], [0.9, 0.99], "also wins at 0.9"),
    ([2.0, 1.5, 0.8], None, None, [0.9, 0.95], "wins only at 0.9 and 0.95"),
    ([0.5, 1.0, 1.01], 0.99, [0.95, 0.99], [0.99], "between 0.95 and 0.99"),  # 1.0: no win
])
def test_crossover(speedups, wins_from, between, wins_at, words):
    found = storage.crossover([0.9, 0.95, 0.99], speedups)
    assert found["wins_from"] == wins_from
    assert found["between"] == between
    assert found["wins_at"] == wins_at
    assert words in found["text"]


def test_crossover_rejects_mismatched_or_unsorted_input():
    with pytest.raises(ValueError, match="speedups"):
        storage.crossover([0.9, 0.99], [1.0])
    with pytest.raises(ValueError, match="sparsities: expected increasing"):
        storage.crossover([0.99, 0.9], [1.0, 2.0])


def test_compare_is_the_ratio_of_medians_with_the_per_round_spread():
    found = storage.compare([3.0, 1.0, 2.0], [1.0, 1.0, 4.0])
    assert found["ratio"] == 2.0 / 1.0
    assert (found["ratio_min"], found["ratio_max"]) == (0.5, 3.0)


def test_window_steps_last_at_least_the_window():
    assert storage.window_steps_for(0.3, 1.0) == 4
    assert storage.window_steps_for(5.0, 1.0) == 1
    assert storage.window_steps_for(0.0, 1.0) == 10_000  # capped


def test_settings_validate_and_sort():
    settings = storage.StorageSettings(widths=(64, 4096, 16384), sparsities=(0.99, 0.9))
    assert settings.sparsities == (0.9, 0.99)
    assert settings.masked_sparsities(4096) == (0.9, 0.99)
    assert settings.masked_sparsities(16384) == (0.99,)
    assert settings.update_sparsities(4096) == {"masked": (0.99,), "sparse": (0.9, 0.99)}
    assert settings.update_sparsities(16384) == {"masked": (), "sparse": (0.99,)}
    for kwargs, field in [({"widths": (0,)}, "widths"), ({"widths": (64, 64)}, "widths"),
                          ({"sparsities": (1.0,)}, "sparsities"),
                          ({"sparsities": (0.9, 0.9)}, "sparsities"),
                          ({"sparsities": ()}, "sparsities"), ({"rounds": 0}, "rounds"),
                          ({"window_seconds": 0}, "window_seconds"),
                          ({"update_methods": ("snfs",)}, "update_methods"),
                          ({"memory_steps": -1}, "memory_steps")]:
        with pytest.raises(ValueError, match=f"^{field}: "):
            storage.StorageSettings(**kwargs)


def test_nnz_is_what_sparsify_keeps():
    assert storage.nnz(100, 0.9) == 2 * 1000
    model = storage.build_mlp("sparse", 40, 0.95)
    assert sum(model.get_layer(n).nnz for n in storage.SPARSE_LAYERS) == storage.nnz(40, 0.95)


def test_activation_bytes():
    # inputs 8 + two hidden layers of 8 + 10 logits, batch 4, float32, values and gradients
    assert memory.activation_bytes(8, 4) == 2 * 4 * 4 * (8 + 16 + 10)


# --------------------------------------------------------------------------- a tiny run

SPARSITIES = (0.5, 0.9)


@pytest.fixture(scope="module")
def tiny():
    settings = storage.StorageSettings(widths=(32,), sparsities=SPARSITIES, batch=8, rounds=2,
                                       window_steps=2, memory_steps=0)
    return storage.storage_mode(settings, "auto", log=lambda message: None)


def test_tiny_run_has_every_field(tiny):
    assert tiny["sparse_layers"] == ["h1", "h2"] and tiny["dense_layers"] == ["out"]
    assert tiny["sparsities"] == list(SPARSITIES) and tiny["rounds"] == 2
    (width,) = tiny["widths"]
    assert width["width"] == 32 and width["masked_sparsities"] == list(SPARSITIES)
    step_fields = {"step_ms", "window_step_ms", "window_steps", "jit_compile"}
    assert step_fields <= set(width["dense"])
    for row in width["masked"] + width["sparse"]:
        assert step_fields | {"sparsity", "nnz"} <= set(row)
        assert len(row["window_step_ms"]) == 2 and row["window_steps"] == 2
        assert row["step_ms"] > 0 and row["jit_compile"] is False
    for row in width["masked"]:
        assert set(row["to_dense"]) == {"ratio", "ratio_min", "ratio_max"}
    for row in width["sparse"]:
        assert row["masked_sparsity"] == row["sparsity"]  # masked timed at each here
        for key in ("vs_masked", "vs_dense"):
            assert row[key]["ratio_min"] <= row[key]["ratio"] <= row[key]["ratio_max"]
    # Updates: masked storage at its highest sparsity, sparse storage at each.
    assert "updates" not in width["masked"][0] and "updates" in width["masked"][1]
    for row in [width["masked"][1], *width["sparse"]]:
        assert set(row["updates"]) == {"set", "rigl"}
        assert row["updates"]["set"]["gradient_ms"] is None
        assert row["updates"]["rigl"]["gradient_ms"] > 0
        for update in row["updates"].values():
            assert update["update_ms"] > 0
            assert update["update_to_step"] == pytest.approx(update["update_ms"]
                                                             / row["step_ms"])
    assert set(width["crossover"]) == {"vs_masked", "vs_dense"}
    assert width["seconds"] > 0 and tiny["seconds"] > 0


def test_tiny_run_ratios_come_from_the_medians(tiny):
    (width,) = tiny["widths"]
    median = statistics.median
    masked = {row["sparsity"]: row for row in width["masked"]}
    dense_ms = median(width["dense"]["window_step_ms"])
    assert width["dense"]["step_ms"] == pytest.approx(dense_ms)
    for row in width["sparse"]:
        sparse_ms = median(row["window_step_ms"])
        masked_ms = median(masked[row["sparsity"]]["window_step_ms"])
        assert row["step_ms"] == pytest.approx(sparse_ms)
        assert row["vs_masked"]["ratio"] == pytest.approx(masked_ms / sparse_ms)
        assert row["vs_dense"]["ratio"] == pytest.approx(dense_ms / sparse_ms)
    speedups = [row["vs_masked"]["ratio"] for row in width["sparse"]]
    assert width["crossover"]["vs_masked"] == storage.crossover(SPARSITIES, speedups)


def test_tiny_run_renders(tiny):
    probe = {"baseline_mb": 600.0, "runtime_mb": 100.0, "built_mb": 1.0, "peak_mb": 120.0,
             "train_peak_mb": 110.0, "model_peak_mb": 10.0, "state_mb": 0.5,
             "activations_mb": 0.5, "peak_to_theory": 120.0, "model_peak_to_theory": 10.0}
    result = json.loads(json.dumps(tiny))
    result["memory_steps"] = 1
    result["widths"][0]["sparse"][0]["memory"] = probe
    result["widths"][0]["sparse"][1]["memory"] = {"error": "exit status -9: killed"}
    text = report.markdown({
        "command": "python scripts/benchmark.py --modes=storage", "machine": {
            "cpu": "cpu", "cores": 2, "tensorflow": "x", "keras": "y", "date": "today",
            "load_average_at_start": [0.0]}, "jit_compile": "auto", "storage": result,
        "seconds": 1.0, "peak_rss_mb": 1.0, "load_average_at_end": [0.0]})
    assert "**Truly sparse storage**" in text
    assert "| 32 | 0.5 | 1,024 |" in text  # width, sparsity, nnz (2 layers of 32²/2)
    assert "Crossover" in text and "- 32: against masked storage," in text
    assert "| 32 | sparse | 0.5 | 0.5 | 0.5 | 100 | 120 | 10 | 10.00 |" in text
    assert "| 32 | sparse | 0.9 | failed: exit status -9: killed" in text
    assert "| 32 | 0.9 | masked |" in text and "| 32 | 0.5 | masked |" not in text


def test_masked_at_one_sparsity_above_the_width_limit():
    settings = storage.StorageSettings(widths=(16,), sparsities=SPARSITIES, batch=4,
                                       rounds=1, window_steps=1, full_max_width=8,
                                       update_methods=("set",), memory_steps=0)
    (width,) = storage.storage_mode(settings, "false", log=lambda message: None)["widths"]
    assert [row["sparsity"] for row in width["masked"]] == [0.9]
    assert [row["masked_sparsity"] for row in width["sparse"]] == [0.9, 0.9]
    # Updates: sparse storage's at the highest sparsity only, masked storage's not at all.
    assert ["updates" in row for row in width["masked"] + width["sparse"]] == [
        False, False, True]
    assert set(width["sparse"][1]["updates"]) == {"set"}


# ------------------------------------------------------------------------------ memory


def test_memory_process_reports_positive_figures():
    found = memory.measure("sparse", 32, 0.9, batch=8, steps=1, jit_compile=False)
    assert "error" not in found, found.get("error")
    assert found["baseline_mb"] > 0 and found["peak_mb"] > 0
    assert found["runtime_mb"] > 0 and found["model_peak_mb"] >= 0
    assert found["train_peak_mb"] <= found["peak_mb"]
    # 2 layers of 103 entries of 17 bytes, the 32x10 output layer and biases (value and
    # momentum), the optimizer's step (int64) and learning rate (float32), in MiB.
    assert found["state_mb"] == pytest.approx(
        (2 * 103 * 17 + (32 * 10 + 2 * 32 + 10) * 8 + 8 + 4) / 2**20, rel=1e-6)
    assert found["model_peak_to_theory"] == pytest.approx(
        found["model_peak_mb"] / (found["state_mb"] + found["activations_mb"]))


@pytest.mark.slow  # another process importing TensorFlow: seconds, for an error path
def test_memory_process_failure_is_reported():
    found = memory.measure("nonsense", 32, 0.9, batch=8, steps=1, jit_compile=False)
    assert "kind: unknown 'nonsense'" in found["error"]


# ------------------------------------------------------------------------------- flags


@pytest.fixture(scope="module")
def script():
    with script_module(SCRIPT, "benchmark_script") as module:
        yield module


def _settings(script, *argv, modes=("storage",)):
    # Parsing absl's flags sets the "absl" logger's level from --verbosity (WARNING by
    # default): restore it, or later tests reading INFO logs with caplog see none.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["benchmark.py", *argv])
    try:
        return script._storage_settings(list(modes))
    finally:
        flags.FLAGS.unparse_flags()
        absl_logger.setLevel(level)


def test_flags_make_the_settings(script):
    settings = _settings(script, "--storage_widths=64,128", "--storage_sparsities=0.99,0.9",
                         "--rounds=2", "--storage_update_methods=", "--storage_memory_steps=0")
    assert settings.widths == (64, 128) and settings.sparsities == (0.9, 0.99)
    assert settings.rounds == 2 and settings.update_methods == () and not settings.memory_steps
    assert _settings(script, modes=("overhead",)) is None


@pytest.mark.parametrize("argv, message", [
    (["--storage_widths=64,abc"], "--storage_widths: 'abc' is not an integer"),
    (["--storage_widths=0"], "--storage_widths: expected integers >= 1"),
    (["--storage_sparsities=0.9,x"], "--storage_sparsities: 'x' is not a number"),
    (["--storage_sparsities=0.9,1.5"], "--storage_sparsities: expected numbers in [0, 1)"),
    (["--storage_sparsities=0.9,0.9"], "--storage_sparsities: (0.9, 0.9) repeats"),
    (["--storage_update_methods=snfs"], "--storage_update_methods: unknown 'snfs'"),
    (["--storage_window_seconds=0"], "--storage_window_seconds: expected a positive"),
    (["--rounds=0"], "--rounds: expected integers >= 1"),
])
def test_bad_flags_name_the_flag(script, argv, message):
    with pytest.raises(UsageError) as error:
        _settings(script, *argv)
    assert str(error.value).startswith(message)


def test_storage_flags_without_the_storage_mode_are_an_error(script):
    with pytest.raises(UsageError, match="--storage_widths: only the storage mode reads it"):
        _settings(script, "--storage_widths=64", modes=("overhead",))


def test_bad_flag_on_the_command_line():
    done = subprocess.run([sys.executable, SCRIPT, "--modes=storage",
                           "--storage_sparsities=0.9,1"], capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --storage_sparsities: expected numbers in [0, 1), got 1.0.")


def test_published_storage_markdown_is_the_rendering_of_its_json():
    """results/benchmark/storage.md is `--render` of storage.json, byte for byte."""
    path = os.path.join(PUBLISHED, "storage.json")
    if not os.path.exists(path):
        pytest.skip("no published storage run yet")
    with open(path) as f:
        published = json.load(f)
    with open(os.path.join(PUBLISHED, "storage.md")) as f:
        assert f.read() == report.markdown(published) + "\n"

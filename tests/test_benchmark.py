"""scripts/benchmark.py runs end to end on a tiny workload (seconds; no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import script_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "benchmark.py")


@pytest.fixture(scope="module")
def benchmark():
    with script_module(SCRIPT, "benchmark_script") as module:
        yield module


@pytest.fixture(scope="module")
def tiny_report():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, SCRIPT, "--modes=overhead,peer", "--workloads=tiny", "--json",
         "--bench_python=/nonexistent/python",
         "--variants=dense,static,set,snfs,rigl,prune,dense_other_xla"],
        capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_tiny_overhead_run_reports_every_variant(tiny_report):
    (result,) = tiny_report["overhead"]
    assert result["workload"] == "tiny"
    assert result["masked_layers"] == 3 and result["masked_weights"] > 0
    assert result["period_steps"] == 100  # a 3-step window stands for one ΔT period
    variants = result["variants"]
    assert list(variants) == ["dense", "static", "set", "snfs", "rigl", "prune",
                              "dense_other_xla"]
    assert variants["dense"]["ratio"] == 1.0
    # --jit_compile=auto: the tiny workload runs without XLA, so the diagnostic runs with.
    assert tiny_report["jit_compile"] == "auto" and result["jit_compile"] is False
    for name, row in variants.items():
        assert row["steps_per_s"] > 0 and row["ratio"] > 0, name
        assert row["ratio_min"] <= row["ratio"] <= row["ratio_max"], name
        assert len(row["window_step_ms"]) == result["rounds"], name
        assert row["peak_memory_mb"] > 0, name
    for name in ("set", "snfs", "rigl", "prune"):
        row = variants[name]
        # Every timed window held exactly one mask update, and the update never retraced.
        assert row["updates_per_window"] == [1], name
        assert row["update_ms"] > 0 and row["update_to_step"] > 0, name
        assert row["update_traces"] == 1, name
    assert variants["rigl"]["gradient_ms"] > 0
    for name in ("dense", "dense_other_xla"):
        assert variants[name]["updates_per_window"] == []  # no callback at all
    assert variants["static"]["updates_per_window"] == [0]
    for name in ("dense", "static", "dense_other_xla"):
        assert "update_ms" not in variants[name]


def test_peer_mode_without_bench_venv_is_skipped_with_instructions(tiny_report):
    assert "requirements-bench.txt" in tiny_report["peer"]["skipped"]


def test_markdown_report(benchmark, tiny_report):
    text = benchmark.markdown(tiny_report)
    assert "| rigl |" in text and "| dense | " in text
    assert "peer mode not run" in text
    assert tiny_report["machine"]["cores"] >= 1
    assert "Command: `python scripts/benchmark.py" in text.splitlines()[-1]


def test_render_prints_the_markdown_of_a_json_report(benchmark, tiny_report, tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(tiny_report))
    done = subprocess.run([sys.executable, SCRIPT, f"--render={path}"], capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == benchmark.markdown(tiny_report).strip()
    missing = subprocess.run([sys.executable, SCRIPT, f"--render={tmp_path / 'none.json'}"],
                             capture_output=True, text=True, timeout=600, check=False)
    assert missing.returncode != 0 and "--render: no such file" in missing.stderr


def test_window_alignment_puts_one_update_inside(benchmark):
    """run_window's arithmetic: for W < ΔT the window is moved onto an update step."""
    class FakeVariable:
        def __init__(self, value):
            self.value = value

        def numpy(self):
            return self.value

        def assign(self, value):
            self.value = value

    class FakeModel:
        def __init__(self, start):
            self.optimizer = type("Opt", (), {})()
            self.optimizer.iterations = FakeVariable(start)
            self.fitted = []

        def fit(self, data, steps_per_epoch, epochs, verbose, callbacks):
            start = self.optimizer.iterations.value
            self.fitted.append((start, steps_per_epoch))
            for i in range(steps_per_epoch):
                callbacks[0].on_train_batch_begin(i)
            self.optimizer.iterations.value = start + steps_per_epoch

    import keras

    for start in (0, 7, 99, 100, 250):
        model = FakeModel(start)
        runner = benchmark.Runner("x", model, [], update_freq=100)
        benchmark.run_window(runner, None, keras, window=6, warmup=2, period=100,
                             update_freq=100)
        begin, _ = model.fitted[0]
        assert begin >= start
        timed = range(begin + 2, begin + 8)
        assert sum(1 for s in timed if s % 100 == 0) == 1
        assert runner.updates_seen == [1]


def test_tiny_pipeline_run_reads_prepared_mnist(data_dir):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, SCRIPT, "--modes=pipeline", "--json", f"--data_dir={data_dir}",
         "--window_steps=3", "--rounds=1", "--warmup_steps=1", "--jit_compile=true"],
        capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["jit_compile"] == "true"
    variants = report["pipeline"]["variants"]
    assert list(variants) == ["in_memory", "tfds"]
    assert all(row["steps_per_s"] > 0 for row in variants.values())

"""The benchmark (rigl.experiments.benchmark, scripts/benchmark.py) runs end to end on a tiny
workload (seconds; no timing is asserted).

The peer test runs tfmot in the bench venv (``.venv-bench``, or the Python named by
``RIGL_BENCH_PYTHON``) and is skipped without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import pytest

import rigl
from rigl.experiments.benchmark import harness, report, workloads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "benchmark.py")
BENCH_PYTHON = os.environ.get("RIGL_BENCH_PYTHON",
                              os.path.join(ROOT, ".venv-bench", "bin", "python"))
PUBLISHED = os.path.join(ROOT, "results", "benchmark")


def _run(*args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def tiny_report():
    done = _run("--modes=overhead,peer", "--workloads=tiny", "--json",
                "--bench_python=/nonexistent/python",
                "--variants=dense,static,set,snfs,rigl,prune,granet,srigl,dense_other_xla")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_variants_are_the_registry_methods_with_a_recurring_cost():
    assert workloads.VARIANTS == ("dense", "static", "set", "snfs", "rigl", "prune", "granet",
                                  "srigl")
    for name in workloads.VARIANTS[1:]:
        assert rigl.methods.get_method(name).masked, name
    assert set(workloads.NOT_TIMED) <= set(rigl.METHODS)


def test_tiny_overhead_run_reports_every_variant(tiny_report):
    (result,) = tiny_report["overhead"]
    assert result["workload"] == "tiny"
    assert result["masked_layers"] == 3 and result["masked_weights"] > 0
    assert result["period_steps"] == 100  # a 3-step window stands for one ΔT period
    variants = result["variants"]
    assert list(variants) == ["dense", "static", "set", "snfs", "rigl", "prune", "granet",
                              "srigl", "dense_other_xla"]
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


def test_markdown_report(tiny_report):
    text = report.markdown(tiny_report)
    assert "| rigl |" in text and "| dense | " in text
    assert "peer mode not run" in text
    assert tiny_report["machine"]["cores"] >= 1
    assert "Command: `python scripts/benchmark.py" in text.splitlines()[-1]


def test_render_prints_the_markdown_of_a_json_report(tiny_report, tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(tiny_report))
    done = _run(f"--render={path}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == report.markdown(tiny_report).strip()
    missing = _run(f"--render={tmp_path / 'none.json'}")
    assert missing.returncode != 0 and "--render: no such file" in missing.stderr


def test_published_markdown_is_the_rendering_of_the_published_json():
    """results/benchmark/benchmark.md is `--render` of benchmark.json, byte for byte."""
    with open(os.path.join(PUBLISHED, "benchmark.json")) as f:
        published = json.load(f)
    with open(os.path.join(PUBLISHED, "benchmark.md")) as f:
        assert f.read() == report.markdown(published) + "\n"


def test_unknown_names_are_usage_errors_naming_the_flag():
    done = _run("--variants=dense,snip")
    assert done.returncode != 0 and "--variants: unknown 'snip'" in done.stderr


def test_window_alignment_puts_one_update_inside():
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

    assert harness.period_steps(6, 100) == 100 and harness.period_steps(400, 100) == 400
    for start in (0, 7, 99, 100, 250):
        model = FakeModel(start)
        runner = harness.Runner("x", model, [], update_freq=100)
        harness.run_window(runner, None, keras, window=6, warmup=2, period=100,
                           update_freq=100)
        begin, _ = model.fitted[0]
        assert begin >= start
        timed = range(begin + 2, begin + 8)
        assert sum(1 for s in timed if s % 100 == 0) == 1
        assert runner.updates_seen == [1]


def test_tiny_pipeline_run_reads_prepared_mnist(data_dir):
    done = _run("--modes=pipeline", "--json", f"--data_dir={data_dir}", "--window_steps=3",
                "--rounds=1", "--warmup_steps=1", "--jit_compile=true")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["jit_compile"] == "true"
    variants = result["pipeline"]["variants"]
    assert list(variants) == ["in_memory", "tfds"]
    assert all(row["steps_per_s"] > 0 for row in variants.values())


@pytest.mark.skipif(not os.path.exists(BENCH_PYTHON), reason=f"{BENCH_PYTHON} is missing")
def test_tiny_peer_run_in_the_bench_venv():
    done = _run("--modes=peer", "--workloads=tiny", "--json", f"--bench_python={BENCH_PYTHON}",
                "--rounds=1")
    assert done.returncode == 0, done.stderr[-3000:]
    peer = json.loads(done.stdout)["peer"]
    assert "results" in peer, peer.get("error") or peer.get("skipped")
    (result,) = peer["results"]
    assert result["workload"] == "tiny" and result["period_steps"] == 100
    assert list(result["variants"]) == ["tf_keras_dense", "tfmot_prune"]
    assert result["variants"]["tf_keras_dense"]["ratio"] == 1.0
    assert result["variants"]["tfmot_prune"]["updates_per_window"] == [1]
    assert set(result["versions"]) == {"tensorflow", "tf_keras", "tensorflow_model_optimization"}
    assert "| tiny |" in report.markdown(json.loads(done.stdout))

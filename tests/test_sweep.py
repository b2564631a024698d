"""Sweeps: grid expansion, resumable running, aggregation, plots (rigl/experiments/sweep/)."""

import csv
import glob
import json
import os
import shutil
import subprocess
import sys

import gin
import numpy as np
import pytest
from conftest import ROOT

import rigl
from rigl.experiments import sweep as sw
from rigl.experiments.sweep import plots

SWEEP_FILES = sorted(glob.glob(os.path.join(ROOT, "gin_configs", "sweeps", "*.gin")))
BASE = "gin_configs/mnist_lenet300.gin"
PNG = b"\x89PNG\r\n\x1a\n"

GRID = """
# a test sweep
sweep.name = 'grid'
sweep.base_configs = ['gin_configs/mnist_lenet300.gin']
sweep.bindings = ["training.epochs=1"]
sweep.methods = ['static', 'rigl', 'dense', 'small_dense']
sweep.sparsities = [0.9, 0.95]
sweep.distributions = ['uniform', 'erk']
sweep.seeds = [0, 1]
sweep.multipliers = [1]
sweep.extra_runs = [
    {'method': 'rigl', 'sparsity': 0.95, 'distribution': 'uniform', 'multipliers': [2, 5]},
    {'method': 'dense'},  # the same runs as the grid's: not duplicated
    {'method': 'rigl', 'seeds': [0], 'tag': 'alpha05', 'bindings': ['updater.drop_fraction=0.5']},
]
"""


def _png(path):
    with open(path, "rb") as f:
        return os.path.getsize(path) > 1000 and f.read(8) == PNG


# ------------------------------------------------------------------------- definition


def test_grid_expansion_names_order_and_bindings():
    sweep = sw.parse_sweep(GRID)
    runs = sweep.runs()
    names = [r.name for r in runs]
    assert len(names) == len(set(names))
    # static, rigl: 2 dists × 2 sparsities × 2 seeds; dense once per seed; small_dense over
    # sparsities with the first distribution only; RigL 2x/5x only at 0.95 uniform; tagged
    # RigL variant on seed 0 at every grid sparsity/distribution.
    assert len(runs) == 8 + 8 + 2 + 4 + 4 + 4
    assert {"dense_seed0", "dense_seed1"} <= set(names)
    assert not any(n.startswith("dense_") and "_s0." in n for n in names)
    assert {n for n in names if n.startswith("small_dense")} == {
        f"small_dense_uniform_s{s}_seed{k}" for s in ("0.9", "0.95") for k in (0, 1)}
    assert {n for n in names if "_x" in n} == {
        f"rigl_uniform_s0.95_x{m}_seed{k}" for k in (0, 1) for m in (2, 5)}
    assert "rigl_erk_s0.9_alpha05_seed0" in names and "rigl_erk_s0.9_alpha05_seed1" not in names
    # seed-major order: every seed-0 run before any seed-1 run
    seeds = [r.seed for r in runs]
    assert seeds == sorted(seeds)
    assert names[0] == "static_uniform_s0.9_seed0"
    run = next(r for r in runs if r.name == "rigl_uniform_s0.95_x2_seed1")
    assert run.cell == "rigl_uniform_s0.95_x2"
    assert run.training_bindings() == ["training.sparsity=0.95",
                                       "training.distribution='uniform'",
                                       "training.multiplier=2", "training.seed=1"]
    tagged = next(r for r in runs if r.tag)
    assert tagged.training_bindings()[-1] == "updater.drop_fraction=0.5"


def test_plan_builds_the_train_py_command(tmp_path):
    sweep = sw.parse_sweep(GRID)
    planned = {p.run.name: p for p in sw.plan(sweep, str(tmp_path), ROOT, ["training.smoke=True"],
                                                python="python")}
    p = planned["rigl_erk_s0.9_alpha05_seed0"]
    assert p.workdir == str(tmp_path / "rigl_erk_s0.9_alpha05_seed0")
    assert list(p.argv) == [
        "python", os.path.join("scripts", "train.py"),
        f"--gin_config={BASE}", "--gin_config=" + os.path.join("gin_configs", "methods",
                                                               "rigl.gin"),
        "--gin_bindings=training.epochs=1", "--gin_bindings=training.sparsity=0.9",
        "--gin_bindings=training.distribution='erk'", "--gin_bindings=training.multiplier=1",
        "--gin_bindings=training.seed=0", "--gin_bindings=updater.drop_fraction=0.5",
        "--gin_bindings=training.smoke=True", f"--workdir={p.workdir}"]
    assert "--gin_bindings=training.sparsity" not in " ".join(planned["dense_seed1"].argv)
    listing = sw.describe_plan(list(planned.values()))
    assert "[pending] rigl_erk_s0.9_alpha05_seed0" in listing
    assert "\"--gin_bindings=training.distribution='erk'\"" in listing
    assert listing.endswith(f"{len(planned)} runs: {len(planned)} pending")
    assert "TF_NUM" not in listing
    # With --jobs=N the sweep splits the threads; the listed command carries them.
    threaded = sw.describe_plan(list(planned.values()), env=sw.thread_env(2, cores=2))
    assert ("\n    TF_NUM_INTEROP_THREADS=1 TF_NUM_INTRAOP_THREADS=1 python "
            + os.path.join("scripts", "train.py")) in threaded


@pytest.mark.parametrize("text, message", [
    ("sweep.methods = ['rigl']", "sweep.name is required"),
    ("sweep.name = 'x'\nsweep.method = ['rigl']", "unknown sweep.method"),
    ("sweep.name = 'x'\nsweep.methods = ['rigl']\ntraining.epochs = 3", "only sweep"),
    ("sweep.name = 'x'\nsweep.methods = ['rigl']\nsweep.sparsities = [1.5]", "sweep.sparsities"),
    ("sweep.name = 'x'\nsweep.methods = ['rigl']\nsweep.seeds = [0, 0]", "repeated"),
    ("sweep.name = 'x'\nsweep.methods = 'rigl'", "expected a list"),
    ("sweep.name = 'x'\nsweep.methods = ['rigl']\nsweep.name = 'y'", "bound twice"),
    ("sweep.name = 'x'\nsweep.methods = %M", "macros"),
    ("sweep.name = 'a b'\nsweep.methods = ['rigl']", "sweep.name"),
    ("sweep.name = 'x'\nsweep.extra_runs = [{'method': 'rigl', 'sparsity_': 0.9}]",
     "unknown keys"),
    ("sweep.name = 'x'\nsweep.methods = ['rigl']\n"
     "sweep.extra_runs = [{'method': 'rigl', 'bindings': ['updater.drop_fraction=0.5']}]",
     "give one of them a 'tag'"),
    ("sweep.name = 'x'", "nothing to run"),
])
def test_invalid_sweep_files_name_the_problem(text, message):
    with pytest.raises(sw.SweepError, match=message):
        sw.parse_sweep(text)


def test_unknown_method_and_missing_config_fail_at_planning(tmp_path):
    with pytest.raises(sw.SweepError, match="unknown method 'rigel'"):
        sw.plan(sw.parse_sweep("sweep.name = 'x'\nsweep.methods = ['rigel']"), str(tmp_path),
                ROOT)
    with pytest.raises(sw.SweepError, match="nope.gin not found"):
        sw.plan(sw.parse_sweep("sweep.name = 'x'\nsweep.methods = ['rigl']\n"
                               "sweep.base_configs = ['nope.gin']"), str(tmp_path), ROOT)


EXPECTED_RUNS = {"fashion_mnist_lenet300": 168, "mnist_lenet300_appendix": 3,
                 "mnist_lenet300_appendix_heldout": 3, "mnist_lenet300_appendix_candidates": 6,
                 "cifar10_small_cnn": 60, "tiny_shakespeare_transformer": 39}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=os.path.basename)
def test_sweep_definitions_parse_and_every_cell_dry_runs(path, tmp_path, capsys):
    from rigl.experiments import training

    relative = os.path.relpath(path, ROOT)
    header = open(path).read().split("\nsweep.")[0]
    assert f"python scripts/sweep.py --sweep={relative}" in header
    assert f"--sweep={relative} --aggregate_only" in header
    sweep = sw.load_sweep(path)
    assert sweep.name == os.path.splitext(os.path.basename(path))[0]
    planned = sw.plan(sweep, str(tmp_path), ROOT)
    assert len(planned) == EXPECTED_RUNS[sweep.name]
    # One run per cell goes through gin and the training set-up (a misspelt binding fails,
    # so does a Small-Dense width the solver cannot reach).
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        for p in {p.run.cell: p for p in planned}.values():
            gin.clear_config()
            gin.parse_config_files_and_bindings(list(p.configs),
                                                [*p.bindings, "training.verbose=0"])
            assert training.train(None, dry_run=True) == {}
            assert "steps:" in capsys.readouterr().out
    finally:
        gin.clear_config()
        os.chdir(cwd)


# ------------------------------------------------------------------------- running


def _fake_launcher(calls, fail=()):
    """Writes a results.json the way a training run would (no TensorFlow)."""

    def launch(argv, log_path, cwd, env=None):
        workdir = next(a.split("=", 1)[1] for a in argv if a.startswith("--workdir="))
        name = os.path.basename(workdir)
        calls.append(name)
        with open(log_path, "a") as f:
            f.write(f"training {name}\n")
        if name in fail:
            return 1
        seed = int(name.rsplit("seed", 1)[1])
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump({"method": name.split("_")[0], "distribution": "uniform",
                       "sparsity": 0.9, "multiplier": 1.0, "seed": seed,
                       "test_accuracy": 0.9 + 0.01 * seed, "measured_sparsity": 0.9,
                       "train_flops_ratio": 0.1, "inference_flops_ratio": 0.1,
                       "steps": 3}, f)
        return 0

    return launch


SMALL = """
sweep.name = 'small'
sweep.base_configs = ['gin_configs/mnist_lenet300.gin']
sweep.methods = ['static', 'set']
sweep.sparsities = [0.9]
sweep.distributions = ['uniform']
sweep.seeds = [0, 1]
"""


def _events(root):
    with open(os.path.join(root, sw.SWEEP_LOG_FILE)) as f:
        return [json.loads(line) for line in f]


def test_runner_skips_finished_runs_and_resumes_the_rest(tmp_path):
    root, quiet = str(tmp_path / "runs"), (lambda _: None)
    planned = sw.plan(sw.parse_sweep(SMALL), root, ROOT)
    names = [p.run.name for p in planned]
    assert names == ["static_uniform_s0.9_seed0", "set_uniform_s0.9_seed0",
                     "static_uniform_s0.9_seed1", "set_uniform_s0.9_seed1"]
    calls = []
    report = sw.run_sweep(planned, root, ROOT, max_runs=1, launcher=_fake_launcher(calls),
                          echo=quiet)
    assert calls == names[:1] and report.ran == names[:1] and report.left == names[1:]
    assert [p.status for p in planned] == ["finished", "pending", "pending", "pending"]
    report = sw.run_sweep(planned, root, ROOT, launcher=_fake_launcher(calls), echo=quiet)
    assert calls == names and report.skipped == names[:1] and report.ran == names[1:]
    report = sw.run_sweep(planned, root, ROOT, launcher=_fake_launcher(calls), echo=quiet)
    assert calls == names and report.skipped == names and not report.ran

    # An interrupted run (workdir without results.json) is trained again, alone.
    os.remove(os.path.join(root, names[2], "results.json"))
    assert planned[2].status == "started"
    report = sw.run_sweep(planned, root, ROOT, launcher=_fake_launcher(calls), echo=quiet)
    assert calls == names + names[2:3] and report.ran == names[2:3]
    assert [(e["run"], e["event"]) for e in _events(root)[-5:]] == [
        (names[0], "skip"), (names[1], "skip"), (names[2], "start"), (names[2], "done"),
        (names[3], "skip")]
    starts = [e for e in _events(root) if e["event"] == "start"]
    assert [e["run"] for e in starts] == names + names[2:3]
    assert [e["resumed"] for e in starts] == [False] * 4 + [True]
    spec = json.load(open(os.path.join(root, names[1], sw.SPEC_FILE)))
    assert spec["bindings"] == list(planned[1].bindings) and spec["method"] == "set"

    # Results or checkpoints made with other bindings are not silently reused ...
    changed = sw.plan(sw.parse_sweep(SMALL), root, ROOT, ["training.epochs=2"])
    with pytest.raises(sw.SweepError, match="another configuration") as error:
        sw.run_sweep(changed, root, ROOT, launcher=_fake_launcher(calls), echo=quiet)
    assert all(n in str(error.value) for n in names)
    # ... but a run that failed before its first checkpoint starts again with the new ones.
    other = str(tmp_path / "other")
    report = sw.run_sweep(sw.plan(sw.parse_sweep(SMALL), other, ROOT)[:1], other, ROOT,
                          echo=quiet, launcher=_fake_launcher([], fail={names[0]}))
    assert report.failed == names[:1]
    fixed = sw.plan(sw.parse_sweep(SMALL), other, ROOT, ["training.epochs=2"])
    report = sw.run_sweep(fixed, other, ROOT, echo=quiet, launcher=_fake_launcher([]))
    assert report.ran == names
    assert json.load(open(os.path.join(other, names[0], sw.SPEC_FILE)))["bindings"][-1] == (
        "training.epochs=2")


def test_collected_results_count_as_finished_without_workdirs(tmp_path):
    """Workdirs do not outlive a machine; results collected under results/<sweep>/runs (and
    committed) do. A new machine skips those runs, and refuses copies of another config."""
    root, results, quiet = str(tmp_path / "runs"), str(tmp_path / "results"), (lambda _: None)
    planned = sw.plan(sw.parse_sweep(SMALL), root, ROOT, results_dir=results)
    sw.run_sweep(planned[:2], root, ROOT, launcher=_fake_launcher([]), echo=quiet)
    sw.collect(planned, results)
    shutil.rmtree(root)
    planned = sw.plan(sw.parse_sweep(SMALL), root, ROOT, results_dir=results)
    assert [p.status for p in planned] == ["finished", "finished", "pending", "pending"]
    calls = []
    report = sw.run_sweep(planned, root, ROOT, launcher=_fake_launcher(calls), echo=quiet)
    assert calls == [p.run.name for p in planned[2:]] and len(report.skipped) == 2
    assert sorted(sw.collect(planned, results)) == sorted(calls)  # copies left as they were
    assert len(sw.load_records(results)) == 4
    with pytest.raises(sw.SweepError, match="delete that folder"):
        sw.plan(sw.parse_sweep(SMALL), root, ROOT, ["training.epochs=2"], results_dir=results)


def test_concurrent_jobs_train_every_run_once_with_split_threads(tmp_path):
    root, calls, envs = str(tmp_path / "runs"), [], []
    launch = _fake_launcher(calls)

    def launcher(argv, log_path, cwd, env=None):
        envs.append(env)
        return launch(argv, log_path, cwd)

    planned = sw.plan(sw.parse_sweep(SMALL), root, ROOT)
    report = sw.run_sweep(planned, root, ROOT, launcher=launcher, echo=lambda _: None, jobs=2,
                          max_runs=3)
    assert sorted(calls) == sorted(p.run.name for p in planned[:3])
    assert sorted(report.ran) == sorted(calls) and report.left == [planned[3].run.name]
    assert envs == [{"TF_NUM_INTRAOP_THREADS": str(max(1, os.cpu_count() // 2)),
                     "TF_NUM_INTEROP_THREADS": str(max(1, os.cpu_count() // 2))}] * 3
    assert sw.thread_env(1) == {} and sw.thread_env(3, cores=2)["TF_NUM_INTRAOP_THREADS"] == "1"
    with pytest.raises(sw.SweepError, match="jobs"):
        sw.run_sweep(planned, root, ROOT, launcher=launcher, jobs=0)


def test_a_failed_run_is_reported_and_the_sweep_goes_on(tmp_path):
    root, lines = str(tmp_path / "runs"), []
    planned = sw.plan(sw.parse_sweep(SMALL), root, ROOT)
    calls = []
    report = sw.run_sweep(planned, root, ROOT, echo=lines.append,
                          launcher=_fake_launcher(calls, fail={planned[1].run.name}))
    assert report.failed == [planned[1].run.name] and len(report.ran) == 3
    assert any("FAILED (exit code 1)" in line and "training set_uniform" in line
               for line in lines)
    assert [e["event"] for e in _events(root)] == ["start", "done", "start", "failed",
                                                   "start", "done", "start", "done"]
    # A progress line before the first run and after each (timing not asserted).
    progress = [line.split(";")[0] for line in lines if line.startswith("sweep: ")]
    assert progress == [
        "sweep: 4 runs, 0 already finished, 4 to train (1 at a time)",
        *[f"sweep: {done}/4 runs finished (0 skipped as already finished), {failed} failed, "
          f"{left} to train" for done, failed, left in [(1, 0, 3), (1, 1, 2), (2, 1, 1),
                                                        (3, 1, 0)]]]


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_sweep_progress_from_run_durations():
    """Done/total with skipped runs, failures, elapsed and an ETA from the mean duration of
    the finished runs, ``jobs`` at a time, runs in flight counted by what they have left."""
    clock = _Clock()
    progress = sw.SweepProgress(total=6, skipped=1, to_train=4, jobs=2, clock=clock)
    assert progress.header() == ("sweep: 6 runs, 1 already finished, 4 to train (2 at a time), "
                                 "1 left for later")
    progress.started("a")
    progress.started("b")
    clock.now = 10.0
    # a took 10 s; b has run 10 s of its 10; 2 runs of 10 s on 2 jobs: 10 s.
    assert progress.ended("a", ok=True) == (
        "sweep: 2/6 runs finished (1 skipped as already finished), 0 failed, 3 to train, "
        "1 left for later; elapsed 10s, ETA 10s")
    progress.started("c")
    clock.now = 12.0
    # b failed (its 12 s do not count while a run has finished); c has 8 s left, d 10 s.
    assert progress.ended("b", ok=False) == (
        "sweep: 2/6 runs finished (1 skipped as already finished), 1 failed, 2 to train, "
        "1 left for later; elapsed 12s, ETA 9s")
    progress.started("d")
    clock.now = 20.0
    # c took 10 s like a: mean 10 s, and d (8 s in) has 2 s left.
    assert progress.ended("c", ok=True).endswith("1 to train, 1 left for later; elapsed 20s, "
                                                 "ETA 2s")
    clock.now = 130.0
    assert progress.ended("d", ok=True) == (
        "sweep: 4/6 runs finished (1 skipped as already finished), 1 failed, 0 to train, "
        "1 left for later; elapsed 2m10s")

    # Only failures so far: their durations give the ETA; one job at a time.
    clock = _Clock()
    progress = sw.SweepProgress(total=3, skipped=0, to_train=3, clock=clock)
    progress.started("a")
    clock.now = 30.0
    assert progress.ended("a", ok=False).endswith("1 failed, 2 to train; elapsed 30s, ETA 1m00s")


# Slow (2 min on 2 cores): runs as part of `-m slow`; the cells dry-run above in CI.
@pytest.mark.slow
def test_end_to_end_smoke_sweep_through_the_script(tmp_path):
    """scripts/sweep.py: 2 methods × 2 seeds of real (3-step, mock-data) training runs."""
    (tmp_path / "small.gin").write_text(SMALL)
    root, results = tmp_path / "runs", tmp_path / "results"
    command = [sys.executable, os.path.join(ROOT, "scripts", "sweep.py"),
               f"--sweep={tmp_path / 'small.gin'}", f"--root={root}",
               f"--results_dir={results}", "--extra_bindings=training.smoke=True"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    def sweep(*flags):
        out = subprocess.run(command + list(flags), capture_output=True, text=True, env=env,
                             cwd=str(tmp_path), timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    out = sweep("--max_runs=1")  # "interrupted" after one run
    assert ("sweep: 1/4 runs finished (0 skipped as already finished), 0 failed, 0 to train, "
            "3 left for later; elapsed") in out
    finished = sorted(p.parent.name for p in root.glob("*/results.json"))
    assert finished == ["static_uniform_s0.9_seed0"]
    first = (root / finished[0] / "results.json").stat().st_mtime_ns
    out = sweep()
    assert "static_uniform_s0.9_seed0: finished, skipped" in out
    assert "3 trained, 1 already finished, 0 failed, 0 left" in out
    assert [line.split(";")[0] for line in out.splitlines() if line.startswith("sweep: ")][:4] == [
        "sweep: 4 runs, 1 already finished, 3 to train (1 at a time)",
        *[f"sweep: {done}/4 runs finished (1 skipped as already finished), 0 failed, "
          f"{3 - trained} to train" for trained, done in [(1, 2), (2, 3), (3, 4)]]]
    # Each run's train.log has its progress lines (not a terminal: one per log step).
    log = (root / "set_uniform_s0.9_seed1" / "train.log").read_text()
    assert "step 1/3 (33.3%)  first step" in log and "step 3/3 (100.0%)  " in log
    assert (root / finished[0] / "results.json").stat().st_mtime_ns == first
    assert [e["run"] for e in _events(str(root)) if e["event"] == "start"] == [
        "static_uniform_s0.9_seed0", "set_uniform_s0.9_seed0", "static_uniform_s0.9_seed1",
        "set_uniform_s0.9_seed1"]
    assert (root / "set_uniform_s0.9_seed1" / "train.log").read_text().count("train.py") == 1

    copies = sorted(results.glob("runs/*/results.json"))
    assert len(copies) == 4 and all((c.parent / sw.SPEC_FILE).exists() for c in copies)
    accuracy = {c.parent.name: json.loads(c.read_text())["test_accuracy"] for c in copies}
    with open(results / "table.csv") as f:
        rows = {r["cell"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"static_uniform_s0.9", "set_uniform_s0.9"}
    for cell, row in rows.items():
        values = [accuracy[f"{cell}_seed{s}"] for s in (0, 1)]
        assert row["seeds"] == "2" and row["seed_list"] == "0 1"
        assert float(row["mean"]) == pytest.approx(np.mean(values))
        assert float(row["std"]) == pytest.approx(np.std(values, ddof=1))
        assert float(row["train_flops_ratio"]) > 0
    table = (results / "table.md").read_text()
    assert "| Static | uniform | 0.9 | 1x | 2 |" in table and "| SET | uniform |" in table
    assert _png(results / "accuracy_vs_sparsity.png")
    assert _png(results / "accuracy_vs_train_flops.png")


# ------------------------------------------------------------------------- aggregation


def _results(method, seed, accuracy, sparsity=0.9, distribution="uniform", multiplier=1.0,
             **extra):
    dense = method in ("dense", "small_dense")
    return {"method": method, "seed": seed, "test_accuracy": accuracy,
            "sparsity": 0.0 if dense else sparsity,
            "distribution": None if dense else distribution, "multiplier": multiplier,
            "measured_sparsity": 0.0 if dense else sparsity,
            "train_flops_ratio": (1.0 if method == "dense" else 0.1) * multiplier,
            "inference_flops_ratio": 1.0 if method == "dense" else 0.1, "steps": 100, **extra}


def _records():
    records = [sw.record_from_results(_results("rigl", s, a), run_name=f"rigl_uniform_s0.9_seed{s}")
               for s, a in [(0, 0.90), (1, 0.92), (2, 0.94)]]
    records += [sw.record_from_results(_results("dense", s, a), run_name=f"dense_seed{s}")
                for s, a in [(0, 0.98), (1, 0.99)]]
    # Small-Dense reports sparsity 0: its nominal sparsity comes from the sweep's spec.
    records.append(sw.record_from_results(
        _results("small_dense", 0, 0.95),
        {"name": "small_dense_uniform_s0.9_seed0", "cell": "small_dense_uniform_s0.9",
         "method": "small_dense", "sparsity": 0.9, "distribution": "uniform",
         "multiplier": 1, "seed": 0, "tag": None}))
    records += [sw.record_from_results(_results("rigl", s, a, multiplier=5.0),
                                       run_name=f"rigl_uniform_s0.9_x5_seed{s}")
                for s, a in [(0, 0.95), (1, 0.96)]]
    return records


def test_aggregate_mean_and_sample_std_over_seeds(tmp_path):
    rows = sw.aggregate(_records())
    assert [r["cell"] for r in rows] == ["dense", "small_dense_uniform_s0.9",
                                         "rigl_uniform_s0.9", "rigl_uniform_s0.9_x5"]
    dense, small, rigl, rigl5 = rows
    assert rigl["seeds"] == 3 and rigl["seed_list"] == [0, 1, 2]
    assert rigl["mean"] == pytest.approx(0.92)
    assert rigl["std"] == pytest.approx(0.02)  # sqrt((0.02² + 0 + 0.02²) / (3 - 1))
    assert dense["mean"] == pytest.approx(0.985) and dense["std"] == pytest.approx(0.5 ** 0.5 / 100)
    assert dense["sparsity"] is None and dense["distribution"] is None
    assert small["sparsity"] == 0.9 and small["std"] is None and small["seeds"] == 1
    assert rigl5["multiplier"] == 5 and rigl5["train_flops_ratio"] == pytest.approx(0.5)

    md, csv_path = sw.write_tables(rows, str(tmp_path), "hand")
    table = open(md).read()
    assert "| RigL | uniform | 0.9 | 1x | 3 | 92.00 ± 2.00 | 0.9000 | 0.100x | 0.100x |" in table
    assert "| Dense | — | — | 1x | 2 | 98.50 ± 0.71 |" in table
    assert "| Small-Dense | uniform | 0.9 | 1x | 1 | 95.00 |" in table
    assert "| RigL | uniform | 0.9 | 5x | 2 | 95.50 ± 0.71 | 0.9000 | 0.500x |" in table
    with open(csv_path) as f:
        written = list(csv.DictReader(f))
    assert [r["cell"] for r in written] == [r["cell"] for r in rows]
    assert float(written[2]["mean"]) == pytest.approx(0.92)
    assert float(written[2]["std"]) == pytest.approx(0.02)
    assert written[1]["std"] == "" and written[0]["sparsity"] == ""


def test_aggregate_reads_copies_and_reports_validation_scores(tmp_path):
    for seed, (test, at_best) in enumerate([(0.97, 0.975), (0.98, 0.985)]):
        folder = tmp_path / "runs" / f"rigl_seed{seed}"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(_results(
            "rigl", seed, test, sparsity=0.9, measured_sparsity=0.975,
            test_accuracy_at_best_validation=at_best)))
    rows = sw.aggregate(sw.load_records(str(tmp_path)))
    assert len(rows) == 1 and rows[0]["cell"] == "rigl"
    assert rows[0]["best_validation_mean"] == pytest.approx(0.98)
    table = sw.table_markdown(rows, "v")
    assert "at best validation" in table and "98.00 ± 0.71" in table and "97.50 ± 0.71" in table


def test_units_without_inputs_are_averaged_per_layer_and_tabled():
    records = [sw.record_from_results(
        _results("srigl", s, 0.9, units_without_inputs={"fc1": a, "fc2": b}),
        run_name=f"srigl_uniform_s0.9_seed{s}") for s, (a, b) in enumerate([(4, 0), (6, 1)])]
    records.append(sw.record_from_results(_results("rigl", 0, 0.9),  # a run from before
                                          run_name="rigl_uniform_s0.9_seed0"))
    rows = {row["method"]: row for row in sw.aggregate(records)}
    assert rows["srigl"]["units_without_inputs"] == [5.0, 0.5]
    assert "units_without_inputs" not in rows["rigl"]
    table = sw.table_markdown(list(rows.values()), "t")
    assert "| units without inputs |" in table.splitlines()[4]
    assert "| 5-0.5 |" in table  # means over seeds, one decimal
    # no unit without inputs anywhere: no column
    plain = [sw.record_from_results(_results("rigl", 0, 0.9, units_without_inputs={"fc1": 0}),
                                    run_name="rigl_uniform_s0.9_seed0")]
    assert "units without inputs" not in sw.table_markdown(sw.aggregate(plain), "t")


def test_aggregate_rejects_inconsistent_cells():
    records = _records()
    records[1] = {**records[1], "sparsity": 0.95}
    with pytest.raises(sw.SweepError, match="disagree on sparsity"):
        sw.aggregate(records)
    records = _records()
    records[0] = {**records[0], "metric": "test_bits_per_char"}
    with pytest.raises(sw.SweepError, match="disagree on metric"):
        sw.aggregate(records)


def test_bits_per_char_table_and_plots(tmp_path):
    records = [sw.record_from_results(
        {"method": m, "seed": s, "test_bits_per_char": 1.5 + 0.1 * s + (m == "set") * 0.2,
         "sparsity": 0.75, "distribution": "uniform", "multiplier": 1.0,
         "train_flops_ratio": 0.25, "inference_flops_ratio": 0.25},
        run_name=f"{m}_uniform_s0.75_seed{s}") for m in ("rigl", "set") for s in (0, 1)]
    rows = sw.aggregate(records)
    assert "test bits/char" in sw.table_markdown(rows, "lm")
    assert "1.5500 ± 0.0707" in sw.table_markdown(rows, "lm")
    assert _png(sw.plot_accuracy_vs_sparsity(rows, str(tmp_path / "a.png")))
    assert _png(sw.plot_accuracy_vs_flops(rows, str(tmp_path / "b.png")))


def test_plots_are_written(tmp_path):
    rows = sw.aggregate(_records())
    assert _png(sw.plot_accuracy_vs_sparsity(rows, str(tmp_path / "sparsity.png")))
    assert _png(sw.plot_accuracy_vs_flops(rows, str(tmp_path / "flops.png")))


def test_methods_axes_order_and_labels_come_from_the_registry(tmp_path):
    """Every method of rigl.methods, listed here in reverse: the grid gives each the axes its
    traits say, the table lists them in METHODS order under their registry labels."""
    names = list(reversed(rigl.methods.METHODS))
    sweep = sw.parse_sweep("sweep.name = 'all'\nsweep.methods = " + repr(names) + "\n"
                           "sweep.sparsities = [0.9, 0.95]\n"
                           "sweep.distributions = ['uniform', 'erk']\nsweep.seeds = [0, 1]")
    runs = sweep.runs()
    for name in names:
        method = rigl.methods.REGISTRY[name]
        cells = {r.cell for r in runs if r.method == name}
        expected = (1 if not method.uses_sparsity else 2 if method.one_distribution else 4)
        assert len(cells) == expected, name
        assert len([r for r in runs if r.method == name]) == 2 * expected
    records = [sw.record_from_results(_results(r.method, r.seed, 0.9, r.sparsity or 0.9,
                                               r.distribution or "uniform"),
                                      {"name": r.name, "cell": r.cell, "method": r.method,
                                       "sparsity": r.sparsity, "distribution": r.distribution,
                                       "multiplier": r.multiplier, "seed": r.seed, "tag": None})
               for r in runs]
    rows = sw.aggregate(records)
    order = [row["method"] for row in rows]
    assert sorted(set(order), key=order.index) == list(rigl.methods.METHODS)
    table = [line for line in sw.table_markdown(rows, "all").splitlines()
             if line.startswith("| ")][2:]  # after the header and the separator
    assert [line.split(" | ")[0][2:] for line in table] == [
        rigl.methods.REGISTRY[m].label for m in order]
    # Each method its own colour in the plots.
    colors = [plots.method_color(m) for m in rigl.methods.METHODS]
    assert len(set(colors)) == len(colors), dict(zip(rigl.methods.METHODS, colors))


# ------------------------------------------------------------------------- connectivity


def _snapshots(folder, steps, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for step in steps:
        fc1 = (rng.random((784, 300)) < 0.01 + step / 1e5).astype(np.float32)
        np.savez_compressed(folder / f"step_{step}.npz", fc1=fc1,
                            fc2=np.ones((300, 100), np.float32))


def test_connectivity_image_counts_active_inputs_per_pixel():
    mask = np.zeros((784, 300), np.float32)
    mask[0, :5] = 1
    mask[783, :2] = 1
    mask[28, 7] = 1  # pixel (1, 0)
    image = sw.connectivity_image(mask)
    assert image.shape == (28, 28)
    assert image[0, 0] == 5 and image[27, 27] == 2 and image[1, 0] == 1 and image.sum() == 8
    np.testing.assert_array_equal(image, mask.sum(axis=1).reshape(28, 28))
    with pytest.raises(ValueError, match="not a square"):
        sw.connectivity_image(np.ones((10, 3)))


def test_connectivity_plot_from_snapshots(tmp_path):
    folder = tmp_path / "mask_snapshots"
    _snapshots(folder, [0, 100, 1000, 50, 20000])
    assert [s for s, _ in sw.load_mask_snapshots(str(folder))] == [0, 50, 100, 1000, 20000]
    assert _png(sw.plot_connectivity(str(folder), str(tmp_path / "all.png")))
    assert _png(sw.plot_connectivity(str(folder), str(tmp_path / "two.png"), steps=[0, 20000]))
    assert _png(sw.plot_connectivity(str(folder), str(tmp_path / "few.png"), max_panels=3))
    with pytest.raises(ValueError, match="no snapshot"):
        sw.plot_connectivity(str(folder), str(tmp_path / "x.png"), steps=[7])
    with pytest.raises(KeyError, match="fc3"):
        sw.plot_connectivity(str(folder), str(tmp_path / "x.png"), layer="fc3")


def test_aggregate_sweep_writes_tables_plots_and_connectivity(tmp_path):
    root, results = str(tmp_path / "runs"), str(tmp_path / "results")
    sweep = sw.parse_sweep(SMALL)
    planned = sw.plan(sweep, root, ROOT)
    sw.run_sweep(planned[:3], root, ROOT, launcher=_fake_launcher([]), echo=lambda _: None)
    _snapshots(tmp_path / "runs" / planned[0].run.name / "mask_snapshots", [0, 100])
    written = sw.aggregate_sweep(sweep, planned, results, echo=lambda _: None)
    assert sorted(os.listdir(os.path.join(results, "runs"))) == sorted(
        p.run.name for p in planned[:3])
    assert _png(written[f"connectivity/{planned[0].run.name}"])
    assert all(_png(written[k]) for k in ("accuracy_vs_sparsity", "accuracy_vs_train_flops"))
    with open(written["table.csv"]) as f:
        seeds = {r["cell"]: r["seeds"] for r in csv.DictReader(f)}
    assert seeds == {"static_uniform_s0.9": "2", "set_uniform_s0.9": "1"}

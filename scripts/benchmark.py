#!/usr/bin/env python
"""What sparse training costs on top of the same dense training, and where the time goes.

The harness lives in ``rigl.experiments.benchmark`` (its docstring describes the three modes,
the XLA setting and the timing method); this script parses flags and prints the report.

Usage::

    python scripts/benchmark.py                         # everything, markdown tables
    python scripts/benchmark.py --json > bench.json     # the same as JSON
    python scripts/benchmark.py --render=bench.json     # its markdown tables, later
    python scripts/benchmark.py --modes=overhead --workloads=lenet300_100
    python scripts/benchmark.py --modes=overhead --workloads=tiny --rounds=2   # seconds

The peer mode runs ``scripts/benchmark_peer.py`` in a separate venv (tfmot needs Keras 2)::

    python3 -m venv .venv-bench && .venv-bench/bin/pip install -r requirements-bench.txt
"""

from __future__ import annotations

import json
import os
import sys
import time

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(SCRIPTS)
sys.path[:0] = [SCRIPTS, ROOT]  # _cli, and rigl without installing it

import _cli  # noqa: E402 (after the path set-up above)

_cli.start()  # before the first import of rigl, which imports TensorFlow

from absl import flags  # noqa: E402

from rigl.experiments.benchmark import report, suite, workloads  # noqa: E402
from rigl.experiments.errors import UsageError  # noqa: E402

PEER_SCRIPT = os.path.join(ROOT, "scripts", "benchmark_peer.py")
ALL_VARIANTS = workloads.VARIANTS + workloads.DIAGNOSTIC_VARIANTS

MODES_FLAG = flags.DEFINE_list("modes", list(suite.MODES), f"Modes to run, of {suite.MODES}.")
WORKLOADS_FLAG = flags.DEFINE_list(
    "workloads", list(workloads.DEFAULT_WORKLOADS),
    f"Workloads of the overhead mode (and, where they have one, the peer mode), of "
    f"{sorted(workloads.WORKLOADS)}.")
VARIANTS_FLAG = flags.DEFINE_list("variants", list(workloads.DEFAULT_VARIANTS),
                                  f"Variants, of {ALL_VARIANTS}.")
JIT_COMPILE = flags.DEFINE_enum(
    "jit_compile", "auto", list(workloads.JIT_COMPILE),
    "Compile the training step of every variant with XLA (`model.compile(jit_compile=True)`): "
    "auto = per workload, where it speeds up the plain dense model (LeNet-300-100; not the "
    "convolutional ones); true/false = every workload. Keras leaves XLA off on CPU.")
SPARSITY = flags.DEFINE_float("sparsity", 0.9, "Sparsity of the sparse variants (uniform).")
UPDATE_FREQ = flags.DEFINE_integer("update_freq", 100, "ΔT of every updating variant.")
WINDOW_STEPS = flags.DEFINE_integer("window_steps", None, "Timed steps per window (W); "
                                    "default: per workload.")
ROUNDS = flags.DEFINE_integer("rounds", None, "Timed windows per variant; default: per "
                              "workload.")
WARMUP_STEPS = flags.DEFINE_integer("warmup_steps", None, "Untimed steps at the start of "
                                    "every window; default: per workload.")
JSON_FLAG = flags.DEFINE_boolean("json", False, "Print JSON instead of markdown tables.")
RENDER = flags.DEFINE_string("render", None, "Print the markdown tables of a report written "
                             "earlier with --json (this file), and run nothing.")
DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data_dir for the pipeline mode (default: TFDS's, TFDS_DATA_DIR "
    "honoured); MNIST is prepared there from --mnist_source if missing.")
MNIST_SOURCE = flags.DEFINE_string("mnist_source",
                                   os.path.join(os.path.dirname(ROOT), "shared", "data", "mnist"),
                                   "Original MNIST files, to prepare TFDS MNIST offline.")
BENCH_PYTHON = flags.DEFINE_string(
    "bench_python", os.path.join(ROOT, ".venv-bench", "bin", "python"),
    "Python of the venv with tf_keras and tensorflow-model-optimization (peer mode).")
PEER_WORKER = flags.DEFINE_boolean("peer_worker", False, "Internal, kept for old command "
                                   "lines: run scripts/benchmark_peer.py with this Python "
                                   "(the bench venv's) and the same flags.")


def _check(flag: str, names, allowed):
    for name in names:
        if name not in allowed:
            raise UsageError(f"--{flag}: unknown {name!r}; allowed: {allowed}.")


def _log(message):
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv):
    del argv
    if RENDER.value:
        if not os.path.isfile(RENDER.value):
            raise UsageError(f"--render: no such file {RENDER.value!r}; pass a report "
                                 "written with --json.")
        with open(RENDER.value) as f:
            print(report.markdown(json.load(f)))
        return
    _check("modes", MODES_FLAG.value, suite.MODES)
    _check("workloads", WORKLOADS_FLAG.value, sorted(workloads.WORKLOADS))
    _check("variants", VARIANTS_FLAG.value, ALL_VARIANTS)
    overrides = {key: flag.value for key, flag in zip(
        workloads.OVERRIDABLE, (WINDOW_STEPS, ROUNDS, WARMUP_STEPS)) if flag.value is not None}
    if PEER_WORKER.value:
        forwarded = [f"--{key}={value}" for key, value in overrides.items()]
        os.execv(sys.executable, [
            sys.executable, PEER_SCRIPT, f"--workloads={','.join(WORKLOADS_FLAG.value)}",
            f"--sparsity={SPARSITY.value}", f"--update_freq={UPDATE_FREQ.value}", *forwarded,
            f"--jit_compile={JIT_COMPILE.value}"])
    result = suite.run(
        modes=MODES_FLAG.value, workload_names=WORKLOADS_FLAG.value,
        variants=VARIANTS_FLAG.value, sparsity=SPARSITY.value, update_freq=UPDATE_FREQ.value,
        overrides=overrides, jit_compile=JIT_COMPILE.value, data_dir=DATA_DIR.value,
        mnist_source=MNIST_SOURCE.value, bench_python=BENCH_PYTHON.value,
        peer_worker=PEER_SCRIPT,
        command=" ".join(["python", "scripts/benchmark.py", *sys.argv[1:]]), log=_log)
    print(json.dumps(result, indent=1) if JSON_FLAG.value else report.markdown(result))


if __name__ == "__main__":
    _cli.run(main)

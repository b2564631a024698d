#!/usr/bin/env python
"""What sparse training costs on top of the same dense training, and where the time goes.

The harness lives in ``rigl.experiments.benchmark`` (its docstring describes the three modes,
the XLA setting and the timing method); this script parses flags and prints the report.

Usage::

    python scripts/benchmark.py                         # the default modes, markdown tables
    python scripts/benchmark.py --json > bench.json     # the same as JSON
    python scripts/benchmark.py --render=bench.json     # its markdown tables, later
    python scripts/benchmark.py --modes=overhead --workloads=lenet300_100
    python scripts/benchmark.py --modes=overhead --workloads=tiny --rounds=2   # seconds
    python scripts/benchmark.py --modes=storage --json > results/benchmark/storage.json
    python scripts/benchmark.py --render=results/benchmark/storage.json \
        > results/benchmark/storage.md
    python scripts/benchmark.py --modes=inference --json > results/benchmark/inference.json
    python scripts/benchmark.py --render=results/benchmark/inference.json \
        > results/benchmark/inference.md
    python scripts/benchmark.py --modes=inference --inference_workloads=mlp4096 \
        --inference_sparsities=0.9,0.99 --inference_distributions=uniform

The storage mode (truly sparse storage against masked storage and the dense model, MLPs of
``--storage_widths`` at ``--storage_sparsities``) is not among the default modes: ask for it.
Nor is the inference mode (``rigl.export``'s sparse SavedModel and LiteRT exports against the
dense exports of the same architecture, ``--inference_workloads`` at
``--inference_sparsities`` and ``--inference_distributions``; about half an hour by default,
``--inference_full_grid`` measures the char-GRU, MobileNet-v1 and ResNet-50 in the whole grid
too). It needs the LiteRT runtime: ``pip install -r requirements-export.txt``.

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

from rigl.experiments.benchmark import inference, report, storage, suite, workloads  # noqa: E402
from rigl.experiments.errors import UsageError  # noqa: E402

PEER_SCRIPT = os.path.join(ROOT, "scripts", "benchmark_peer.py")
ALL_VARIANTS = workloads.VARIANTS + workloads.DIAGNOSTIC_VARIANTS

MODES_FLAG = flags.DEFINE_list("modes", list(suite.DEFAULT_MODES),
                               f"Modes to run, of {suite.MODES}.")
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
    "convolutional ones); true/false = every workload. Keras leaves XLA off on CPU. Storage "
    "mode: true compiles the dense and masked models with XLA (the sparse ones have no XLA "
    "form), auto and false none.")
SPARSITY = flags.DEFINE_float("sparsity", 0.9, "Sparsity of the sparse variants (uniform).")
UPDATE_FREQ = flags.DEFINE_integer("update_freq", 100, "ΔT of every updating variant.")
WINDOW_STEPS = flags.DEFINE_integer("window_steps", None, "Timed steps per window (W); "
                                    "default: per workload (storage mode: windows of at "
                                    "least --storage_window_seconds).")
ROUNDS = flags.DEFINE_integer("rounds", None, "Timed windows per variant; default: per "
                              f"workload (storage mode: {storage.StorageSettings.rounds}).")
WARMUP_STEPS = flags.DEFINE_integer("warmup_steps", None, "Untimed steps at the start of "
                                    "every window; default: per workload (storage mode: "
                                    f"{storage.StorageSettings.warmup_steps}).")
_STORAGE_DEFAULTS = storage.StorageSettings()
STORAGE_WIDTHS = flags.DEFINE_list(
    "storage_widths", [str(w) for w in _STORAGE_DEFAULTS.widths],
    "Storage mode: widths n of the MLPs n -> n -> n -> 10.")
STORAGE_SPARSITIES = flags.DEFINE_list(
    "storage_sparsities", [str(s) for s in _STORAGE_DEFAULTS.sparsities],
    "Storage mode: sparsities of the two hidden layers, in [0, 1).")
STORAGE_WINDOW_SECONDS = flags.DEFINE_float(
    "storage_window_seconds", _STORAGE_DEFAULTS.window_seconds,
    "Storage mode: the shortest timed window (its steps are set per model), unless "
    "--window_steps fixes them.")
STORAGE_FULL_MAX_WIDTH = flags.DEFINE_integer(
    "storage_full_max_width", _STORAGE_DEFAULTS.full_max_width,
    "Storage mode: widths up to this are measured in full; wider ones lighter: masked "
    "storage's step at the highest sparsity only (it does the same dense work at any), "
    "updates of sparse storage at the highest sparsity only and none of masked storage.")
STORAGE_UPDATE_METHODS = flags.DEFINE_list(
    "storage_update_methods", list(_STORAGE_DEFAULTS.update_methods),
    f"Storage mode: methods whose update is timed, of {storage.UPDATE_METHODS}; empty: none.")
STORAGE_UPDATE_REPEATS = flags.DEFINE_integer(
    "storage_update_repeats", _STORAGE_DEFAULTS.update_repeats,
    "Storage mode: timed calls of each update (after an untimed one).")
STORAGE_MEMORY_STEPS = flags.DEFINE_integer(
    "storage_memory_steps", _STORAGE_DEFAULTS.memory_steps,
    "Storage mode: training steps of each peak-memory process; 0: memory not measured.")
# Settings field -> the flag that sets it, to name the flag in errors.
_STORAGE_FLAGS = {
    "widths": STORAGE_WIDTHS, "sparsities": STORAGE_SPARSITIES,
    "window_seconds": STORAGE_WINDOW_SECONDS,
    "full_max_width": STORAGE_FULL_MAX_WIDTH,
    "update_methods": STORAGE_UPDATE_METHODS, "update_repeats": STORAGE_UPDATE_REPEATS,
    "memory_steps": STORAGE_MEMORY_STEPS, "rounds": ROUNDS, "window_steps": WINDOW_STEPS,
    "warmup_steps": WARMUP_STEPS}
_INFERENCE_DEFAULTS = inference.InferenceSettings()
INFERENCE_WORKLOADS = flags.DEFINE_list(
    "inference_workloads", list(_INFERENCE_DEFAULTS.workloads),
    f"Inference mode: workloads, of {list(inference.WORKLOADS)}.")
INFERENCE_SPARSITIES = flags.DEFINE_list(
    "inference_sparsities", [str(s) for s in _INFERENCE_DEFAULTS.sparsities],
    f"Inference mode: sparsities, in [0, 1) ({', '.join(_INFERENCE_DEFAULTS.light_workloads)} at "
    f"{', '.join(map(str, _INFERENCE_DEFAULTS.light_sparsities))} of them only, unless "
    "--inference_full_grid).")
INFERENCE_DISTRIBUTIONS = flags.DEFINE_list(
    "inference_distributions", list(_INFERENCE_DEFAULTS.distributions),
    f"Inference mode: sparsity distributions, of {list(inference.DISTRIBUTIONS)} "
    f"({', '.join(_INFERENCE_DEFAULTS.light_workloads)}: "
    f"{', '.join(_INFERENCE_DEFAULTS.light_distributions)} of them only, unless "
    "--inference_full_grid).")
INFERENCE_ROUNDS = flags.DEFINE_integer(
    "inference_rounds", _INFERENCE_DEFAULTS.rounds,
    "Inference mode: timed windows per export (interleaved rounds).")
INFERENCE_TIMING_SECONDS = flags.DEFINE_float(
    "inference_timing_seconds", _INFERENCE_DEFAULTS.timing_seconds,
    "Inference mode: the longest timing of one batch size in one row: fewer rounds (at least "
    f"{inference.MIN_ROUNDS}) where --inference_rounds would last longer.")
INFERENCE_WINDOW_SECONDS = flags.DEFINE_float(
    "inference_window_seconds", _INFERENCE_DEFAULTS.window_seconds,
    "Inference mode: the shortest timed window (its calls are set per export).")
INFERENCE_THROUGHPUT_EXPORTS = flags.DEFINE_list(
    "inference_throughput_exports", list(_INFERENCE_DEFAULTS.throughput_exports),
    "Inference mode: workloads whose sparse SavedModel is exported a second time at batch "
    f"{_INFERENCE_DEFAULTS.throughput_batch} (its layers' choices measured there) for the "
    "throughput figure; the others time their batch-1 export there. Empty: none.")
INFERENCE_FULL_GRID = flags.DEFINE_boolean(
    "inference_full_grid", False,
    "Inference mode: measure "
    f"{', '.join(_INFERENCE_DEFAULTS.light_workloads)} at every sparsity and distribution "
    f"(by default at {', '.join(map(str, _INFERENCE_DEFAULTS.light_sparsities))}, "
    f"{', '.join(_INFERENCE_DEFAULTS.light_distributions)} only: their sparse exports take "
    "minutes).")
# Settings field -> the flag that sets it, to name the flag in errors.
_INFERENCE_FLAGS = {
    "workloads": INFERENCE_WORKLOADS, "sparsities": INFERENCE_SPARSITIES,
    "distributions": INFERENCE_DISTRIBUTIONS, "rounds": INFERENCE_ROUNDS,
    "window_seconds": INFERENCE_WINDOW_SECONDS, "timing_seconds": INFERENCE_TIMING_SECONDS,
    "throughput_exports": INFERENCE_THROUGHPUT_EXPORTS,
    "light_workloads": INFERENCE_FULL_GRID}
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


def _numbers(flag, kind) -> tuple:
    numbers = []
    for value in flag.value:
        try:
            numbers.append(kind(value))
        except ValueError:
            raise UsageError(f"--{flag.name}: {value!r} is not "
                             f"{'an integer' if kind is int else 'a number'}.") from None
    return tuple(numbers)


def _storage_settings(modes) -> storage.StorageSettings | None:
    """The storage mode's settings from the flags (None if it does not run).

    Raises:
        UsageError: naming the flag, for a bad value, or a storage flag given without the
            storage mode.
    """
    if "storage" not in modes:
        given = [flag.name for flag in _STORAGE_FLAGS.values()
                 if flag.name.startswith("storage_") and flag.present]
        if given:
            raise UsageError(f"--{given[0]}: only the storage mode reads it; add storage to "
                             "--modes.")
        return None
    values = {"widths": _numbers(STORAGE_WIDTHS, int),
              "sparsities": _numbers(STORAGE_SPARSITIES, float),
              "window_seconds": STORAGE_WINDOW_SECONDS.value,
              "full_max_width": STORAGE_FULL_MAX_WIDTH.value,
              "update_methods": tuple(STORAGE_UPDATE_METHODS.value),
              "update_repeats": STORAGE_UPDATE_REPEATS.value,
              "memory_steps": STORAGE_MEMORY_STEPS.value}
    for name in ("rounds", "window_steps", "warmup_steps"):
        if _STORAGE_FLAGS[name].value is not None:
            values[name] = _STORAGE_FLAGS[name].value
    try:
        return storage.StorageSettings(**values)
    except ValueError as error:
        field, _, message = str(error).partition(": ")
        raise UsageError(f"--{_STORAGE_FLAGS[field].name}: {message}") from None


def _inference_settings(modes) -> inference.InferenceSettings | None:
    """The inference mode's settings from the flags (None if it does not run).

    Raises:
        UsageError: naming the flag, for a bad value, or an inference flag given without the
            inference mode.
    """
    if "inference" not in modes:
        given = [flag.name for flag in _INFERENCE_FLAGS.values() if flag.present]
        if given:
            raise UsageError(f"--{given[0]}: only the inference mode reads it; add inference "
                             "to --modes.")
        return None
    values = {"workloads": tuple(INFERENCE_WORKLOADS.value),
              "sparsities": _numbers(INFERENCE_SPARSITIES, float),
              "distributions": tuple(INFERENCE_DISTRIBUTIONS.value),
              "rounds": INFERENCE_ROUNDS.value,
              "window_seconds": INFERENCE_WINDOW_SECONDS.value,
              "timing_seconds": INFERENCE_TIMING_SECONDS.value,
              "throughput_exports": tuple(INFERENCE_THROUGHPUT_EXPORTS.value)}
    if INFERENCE_FULL_GRID.value:
        values["light_workloads"] = ()
    try:
        return inference.InferenceSettings(**values)
    except ValueError as error:
        field, _, message = str(error).partition(": ")
        raise UsageError(f"--{_INFERENCE_FLAGS[field].name}: {message}") from None


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
    storage_settings = _storage_settings(MODES_FLAG.value)
    inference_settings = _inference_settings(MODES_FLAG.value)
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
        command=" ".join(["python", "scripts/benchmark.py", *sys.argv[1:]]), log=_log,
        storage_settings=storage_settings, inference_settings=inference_settings)
    print(json.dumps(result, indent=1) if JSON_FLAG.value else report.markdown(result))


if __name__ == "__main__":
    _cli.run(main)

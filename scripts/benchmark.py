#!/usr/bin/env python
"""What sparse training costs on top of the same dense training, and where the time goes.

Sparse training is simulated with masks on dense kernels (as in the paper), so the question is
overhead: the floor is the dense step itself plus, every ΔT steps, one extra gradient (RigL)
and the drop/grow selection. Three modes (all by default):

* ``overhead``: for each workload, in one process, the variants (plain Keras model with
  ordinary layers = the dense floor; masked model, static; SET; SNFS; RigL; gradual magnitude
  pruning) are trained with ``model.fit`` on in-memory synthetic tensors, interleaved and
  repeated: steps/s, the ratio to the dense model (median and spread over the rounds, each
  round's variant divided by the same round's dense), the time of one mask update and its
  ratio to a training step, peak memory.
* ``pipeline``: LeNet-5 steps/s fed by the project's TFDS MNIST pipeline against the same
  model fed one in-memory batch.
* ``peer``: TensorFlow Model Optimization's ``prune_low_magnitude`` on LeNet-300-100 and
  WRN-22-2, as its ratio to its own plain ``tf_keras`` model. tfmot needs Keras 2
  (``tf_keras``), which cannot share this project's venv (Keras 3, absl-py 2), so it runs as a
  subprocess of this script in a separate venv created by::

      python3 -m venv .venv-bench && .venv-bench/bin/pip install -r requirements-bench.txt

Usage::

    python scripts/benchmark.py                         # everything, markdown tables
    python scripts/benchmark.py --json > bench.json     # the same as JSON
    python scripts/benchmark.py --render=bench.json     # its markdown tables, later
    python scripts/benchmark.py --modes=overhead --workloads=lenet300_100
    python scripts/benchmark.py --modes=overhead --workloads=tiny --rounds=2   # seconds

XLA. The variants of a workload are all compiled alike: with XLA (``model.compile(...,
jit_compile=True)``) where it speeds up the plain dense model on this CPU (LeNet-300-100,
whose step is elementwise passes and small matmuls), without it where it slows it down (the
convolutional models: TensorFlow's oneDNN convolutions are much faster than XLA's on CPU).
The default variants include ``dense_other_xla``, the plain model compiled the other way, so
that every table shows whether the choice made the dense floor faster. ``--jit_compile=true``
or ``false`` forces one setting everywhere.

Windows and amortisation. Every variant of a workload is timed over windows of W steps (after
warm-up steps excluded from the timing), one ``model.fit`` call per window, variants
interleaved round after round. A window stands for a period P = ΔT·ceil(W/ΔT) of training and
contains exactly P/ΔT scheduled mask updates (for W < ΔT the optimizer's step is moved so that
an update falls inside the window). The amortised step time is (T_window + (P - W)·t_median)/P,
with t_median the window's median step: for W = P (LeNet-300-100) that is simply
T_window / W; for the large models, where 100-step windows of six variants would not fit in a
15-minute run, the steps between the window and the end of the period are counted at the
window's median step. Every variant, the dense one included, is measured the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODES = ("overhead", "pipeline", "peer")
VARIANTS = ("dense", "static", "set", "snfs", "rigl", "prune")
# Diagnostics, not sparse training: the masked model with the mask constraint removed (its
# kernels drift off zero), to time what the constraint costs; the plain model compiled the
# other way (with XLA where the workload runs without, and the reverse), to show in the same
# run whether the workload's XLA setting helps the dense floor itself.
DIAGNOSTIC_VARIANTS = ("static_no_constraint", "dense_other_xla")


@dataclasses.dataclass(frozen=True)
class Workload:
    """One model at one input size and batch, and how long to time it."""

    model: str
    input_shape: tuple
    num_classes: int
    batch: int
    window_steps: int  # W
    rounds: int
    warmup_steps: int  # per window, excluded from the timing
    update_repeats: int  # direct timings of one mask update
    options: tuple = ()  # extra build_model keyword arguments, as (name, value) pairs
    # XLA where it helps the plain dense model on a 2-core CPU (every variant alike): it
    # fuses LeNet-300-100's elementwise passes (its dense step ~10% faster), but compiles
    # convolutions far slower than TensorFlow's oneDNN kernels (WRN-22-2 1.4x, ResNet-50 4x
    # slower): the dense_other_xla rows of results/benchmark/benchmark.md.
    jit_compile: bool = False


WORKLOADS = {
    "lenet300_100": Workload("lenet300_100", (28, 28, 1), 10, 100, window_steps=400,
                             rounds=40, warmup_steps=20, update_repeats=10, jit_compile=True),
    "wrn_22_2": Workload("wrn_22_2", (32, 32, 3), 10, 128, window_steps=6, rounds=7,
                         warmup_steps=2, update_repeats=3),
    "resnet50": Workload("resnet50", (64, 64, 3), 1000, 32, window_steps=6, rounds=7,
                         warmup_steps=2, update_repeats=3),
    # For the test suite: seconds, not a measurement.
    "tiny": Workload("lenet300_100", (8, 8, 1), 10, 8, window_steps=3, rounds=2,
                     warmup_steps=1, update_repeats=2, options=(("width", 0.1),)),
}
PEER_WORKLOADS = ("lenet300_100", "wrn_22_2")
PIPELINE = {"model": "lenet5", "batch": 100, "window_steps": 200, "rounds": 6,
            "warmup_steps": 30}

MODES_FLAG = flags.DEFINE_list("modes", list(MODES), f"Modes to run, of {MODES}.")
WORKLOADS_FLAG = flags.DEFINE_list(
    "workloads", ["lenet300_100", "wrn_22_2", "resnet50"],
    f"Workloads of the overhead mode (and, where they have one, the peer mode), of "
    f"{sorted(WORKLOADS)}.")
VARIANTS_FLAG = flags.DEFINE_list("variants", [*VARIANTS, "dense_other_xla"],
                                  f"Variants, of {VARIANTS + DIAGNOSTIC_VARIANTS}.")
JIT_COMPILE = flags.DEFINE_enum(
    "jit_compile", "auto", ["auto", "true", "false"],
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
PEER_WORKER = flags.DEFINE_boolean("peer_worker", False, "Internal: run the tfmot side of "
                                   "the peer mode in this process (the bench venv) and print "
                                   "JSON.")


# ------------------------------------------------------------------------------ timing core
def _median(values):
    return statistics.median(values) if values else float("nan")


def _timer_callback(keras_module):
    class Timer(keras_module.callbacks.Callback):
        """Timestamps at the start of every batch (before any later callback's work)."""

        def __init__(self):
            super().__init__()
            self.stamps = []

        def on_train_batch_begin(self, batch, logs=None):
            self.stamps.append(time.perf_counter())

    return Timer()


@dataclasses.dataclass
class Runner:
    """A model to time, with the callbacks of its training and the steps of its updates."""

    name: str
    model: object
    callbacks: list
    update_freq: int | None = None  # ΔT of the variant's updates (None: never updates)
    updater: object = None
    sparse_callback: object = None
    windows: list = dataclasses.field(default_factory=list)  # amortised step seconds
    medians: list = dataclasses.field(default_factory=list)  # median step seconds
    updates_seen: list = dataclasses.field(default_factory=list)
    transient_bytes: int = 0


def _read_iterations(model) -> int:
    return int(model.optimizer.iterations.numpy())


def _memory_mark():
    import tensorflow as tf

    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        return tf.config.experimental.get_memory_info("CPU:0")["current"]
    except (ValueError, RuntimeError):  # allocator without statistics
        return None


def _memory_peak(mark):
    import tensorflow as tf

    if mark is None:
        return 0
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - mark


def run_window(runner: Runner, data, keras_module, window: int, warmup: int, period: int,
               update_freq: int, timed: bool = True):
    """Trains ``runner`` for ``warmup + window + 1`` steps in one ``fit`` and times ``window``.

    For W < period the optimizer step is first moved so that an update step (a multiple of
    ``update_freq``) falls a third of the way into the window; every runner is moved alike.
    """
    model = runner.model
    start = _read_iterations(model)
    if window < period:
        offset = warmup + window // 3
        aligned = -(-(start + offset) // update_freq) * update_freq
        start = aligned - offset
        model.optimizer.iterations.assign(start)
    timer = _timer_callback(keras_module)
    seen_before = len(runner.sparse_callback.history) if runner.sparse_callback else 0
    mark = _memory_mark()
    model.fit(data, steps_per_epoch=warmup + window + 1, epochs=1, verbose=0,
              callbacks=[timer] + runner.callbacks)
    runner.transient_bytes = max(runner.transient_bytes, _memory_peak(mark))
    stamps = timer.stamps[warmup:warmup + window + 1]
    if not timed:
        return
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    total, median = stamps[-1] - stamps[0], _median(steps)
    runner.windows.append((total + (period - window) * median) / period)
    runner.medians.append(median)
    if runner.sparse_callback is not None:
        first, last = start + warmup, start + warmup + window
        runner.updates_seen.append(sum(
            1 for r in runner.sparse_callback.history[seen_before:] if first <= r.step < last))
    elif runner.update_freq:  # a peer's in-graph pruning: count its schedule
        first = start + warmup
        runner.updates_seen.append(sum(
            1 for s in range(first, first + window) if s % runner.update_freq == 0))


def time_runners(runners, data, keras_module, workload: Workload, update_freq: int):
    """Warm-up window per runner, then ``rounds`` rounds of windows, interleaved."""
    window = workload.window_steps
    period = update_freq * max(1, math.ceil(window / update_freq))
    for runner in runners:  # traces everything, first mask update included
        run_window(runner, data, keras_module, window, workload.warmup_steps, period,
                   update_freq, timed=False)
    for r in range(workload.rounds):
        order = runners[r % len(runners):] + runners[:r % len(runners)]
        for runner in order:
            run_window(runner, data, keras_module, window, workload.warmup_steps, period,
                       update_freq)
    return period


def summarize(runners, baseline: str):
    base = next(r for r in runners if r.name == baseline)
    out = {}
    for runner in runners:
        ratios = [a / b for a, b in zip(runner.windows, base.windows)]
        step = _median(runner.windows)
        out[runner.name] = {
            "step_ms": 1e3 * step,
            "steps_per_s": 1.0 / step,
            "ratio": _median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "window_step_ms": [1e3 * w for w in runner.windows],
            "median_step_ms": 1e3 * _median(runner.medians),
            "updates_per_window": sorted(set(runner.updates_seen)),
        }
    return out


def _state_bytes(model) -> int:
    """Bytes of the model's variables and its optimizer's (slots included)."""
    optimizer_variables = model.optimizer.variables
    if callable(optimizer_variables):  # tf_keras' legacy optimizers
        optimizer_variables = optimizer_variables()
    variables = list(model.variables) + list(optimizer_variables)
    import numpy as np

    return sum(math.prod(int(d) for d in v.shape)
               * np.dtype(getattr(v.dtype, "as_numpy_dtype", v.dtype)).itemsize
               for v in variables)


# ----------------------------------------------------------------------------- overhead mode
def _synthetic(workload: Workload, seed: int = 0):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(workload.batch, *workload.input_shape)).astype(np.float32)
    y = rng.integers(0, workload.num_classes, workload.batch).astype(np.int32)
    return (x, y), tf.data.Dataset.from_tensors((x, y)).repeat()


def uses_xla(workload: Workload) -> bool:
    """Whether ``workload``'s training steps are compiled with XLA (``--jit_compile``)."""
    return workload.jit_compile if JIT_COMPILE.value == "auto" else JIT_COMPILE.value == "true"


def _compile(model, keras, jit_compile: bool):
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit_compile)
    return model


def build_runners(workload: Workload, variants, sparsity: float, update_freq: int, data):
    import keras

    import rigl
    from rigl.experiments.models import build_model

    end = update_freq * 10**6  # updates never stop; the drop fraction stays ~its initial 0.3
    runners = []
    for name in variants:
        keras.utils.set_random_seed(0)
        model = build_model(workload.model, workload.input_shape, workload.num_classes,
                            **dict(workload.options))
        updater = None
        if name == "static_no_constraint":
            model = rigl.sparsify(model, sparsity, seed=0)
            for weight in rigl.masked_weights(model):
                weight.masked_kernel.constraint = None
        elif name not in ("dense", "dense_other_xla"):
            model = rigl.sparsify(model, 0.0 if name == "prune" else sparsity, seed=0)
            updater = {
                "static": lambda: rigl.Static(),
                "set": lambda: rigl.SET(update_freq=update_freq, end_step=end),
                "snfs": lambda: rigl.SNFS(update_freq=update_freq, end_step=end),
                "rigl": lambda: rigl.RigL(update_freq=update_freq, end_step=end),
                "prune": lambda: rigl.GradualPruning(sparsity, update_freq=update_freq,
                                                     end_step=update_freq * 1000),
            }[name]()
        xla = uses_xla(workload)
        _compile(model, keras, not xla if name == "dense_other_xla" else xla)
        callback = None
        if updater is not None:
            callback = rigl.SparseTraining(updater,
                                           data=data if updater.needs_gradients else None)
        runners.append(Runner(name, model, [callback] if callback else [],
                              update_freq if updater is not None and updater.changes_masks
                              else None, updater, callback))
    return runners


def time_mask_updates(runner: Runner, batch, repeats: int, update_freq: int):
    """Median seconds of one mask update (drop + grow, every layer), called directly; for
    RigL also of the extra gradient, which is timed apart."""
    updater = runner.updater
    step = (_read_iterations(runner.model) // update_freq + 1) * update_freq
    gradients, gradient_times, update_times = None, [], []
    for i in range(repeats):
        if updater.needs_gradients:
            start = time.perf_counter()
            gradients = updater.kernel_gradients(batch)  # eager calls return when done
            gradient_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        updater.update(step + i * update_freq, gradients=gradients)
        update_times.append(time.perf_counter() - start)
    return _median(update_times), (_median(gradient_times) if gradient_times else None)


def overhead_mode(names, variants, sparsity, update_freq, overrides, log):
    import keras

    from rigl.masking import masked_weights

    results = []
    for name in names:
        workload = dataclasses.replace(WORKLOADS[name], **overrides)
        log(f"overhead: {name} ({workload.model} {workload.input_shape} batch "
            f"{workload.batch}), W={workload.window_steps}, {workload.rounds} rounds")
        batch, data = _synthetic(workload)
        started = time.perf_counter()
        runners = build_runners(workload, variants, sparsity, update_freq, data)
        period = time_runners(runners, data, keras, workload, update_freq)
        summary = summarize(runners, "dense" if "dense" in variants else runners[0].name)
        dense_step = summary[runners[0].name]["step_ms"] / 1e3
        if "dense" in summary:
            dense_step = summary["dense"]["step_ms"] / 1e3
        masked = next((masked_weights(r.model) for r in runners if r.updater is not None), [])
        for runner in runners:
            row = summary[runner.name]
            row["peak_memory_mb"] = (_state_bytes(runner.model) + runner.transient_bytes) / 2**20
            if runner.updater is None or not runner.updater.changes_masks:
                continue
            update_s, gradient_s = time_mask_updates(runner, batch, workload.update_repeats,
                                                     update_freq)
            row["update_ms"] = 1e3 * update_s
            row["update_to_step"] = update_s / dense_step
            if gradient_s is not None:
                row["gradient_ms"] = 1e3 * gradient_s
            row["update_traces"] = runner.updater._update_fn.experimental_get_tracing_count()
        results.append({
            "workload": name, "model": workload.model, "input_shape": list(workload.input_shape),
            "batch": workload.batch, "masked_layers": len(masked),
            "masked_weights": sum(int(w.mask.shape.num_elements()) for w in masked),
            "sparsity": sparsity, "update_freq": update_freq, "jit_compile": uses_xla(workload),
            "window_steps": workload.window_steps, "period_steps": period,
            "warmup_steps": workload.warmup_steps, "rounds": workload.rounds,
            "seconds": time.perf_counter() - started, "variants": summary,
        })
        del runners
        keras.backend.clear_session()
    return results


# ----------------------------------------------------------------------------- pipeline mode
def pipeline_mode(data_dir, source, log, overrides):
    import keras
    import tensorflow as tf

    from rigl.experiments import prepare
    from rigl.experiments.data import get_dataset
    from rigl.experiments.models import build_model

    config = dict(PIPELINE, **{k: v for k, v in overrides.items() if k in PIPELINE})
    if data_dir is None:
        import tensorflow_datasets as tfds

        data_dir = tfds.core.constants.get_default_data_dir()
    if os.path.isdir(source):
        with contextlib.redirect_stdout(sys.stderr):  # TFDS prints progress to stdout
            prepare.prepare("mnist", source, data_dir)
    spec = get_dataset("mnist", data_dir=data_dir)
    tfds_data = spec.train_fn(None, config["batch"], 0)
    one_batch = next(iter(tfds_data))
    memory_data = tf.data.Dataset.from_tensors(one_batch).repeat()
    keras.utils.set_random_seed(0)
    model = _compile(build_model(config["model"], spec.input_shape, spec.num_classes), keras,
                     JIT_COMPILE.value == "true")
    log(f"pipeline: {config['model']} batch {config['batch']}, W={config['window_steps']}, "
        f"{config['rounds']} rounds")
    datasets = {"in_memory": memory_data, "tfds": tfds_data}
    runners = {name: Runner(name, model, []) for name in datasets}
    window, warmup = config["window_steps"], config["warmup_steps"]
    for name, runner in runners.items():
        run_window(runner, datasets[name], keras, window, warmup, window, window, timed=False)
    names = list(runners)
    for r in range(config["rounds"]):
        for name in names[r % len(names):] + names[:r % len(names)]:
            run_window(runners[name], datasets[name], keras, window, warmup, window, window)
    summary = summarize(list(runners.values()), "in_memory")
    return {"model": config["model"], "batch": config["batch"], "window_steps": window,
            "warmup_steps": warmup, "rounds": config["rounds"], "data_dir": data_dir,
            "variants": summary}


# --------------------------------------------------------------------------------- peer mode
def _tf_keras_models_module():
    """rigl/experiments/models.py built on tf_keras: the same architectures, Keras 2."""
    import importlib.util

    import tf_keras

    saved = sys.modules.get("keras")
    sys.modules["keras"] = tf_keras
    try:
        spec = importlib.util.spec_from_file_location(
            "rigl_models_tf_keras", os.path.join(ROOT, "rigl", "experiments", "models.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del sys.modules["keras"]
        else:
            sys.modules["keras"] = saved
    return module


def peer_worker(names, sparsity, update_freq, overrides):
    """The tfmot side of the peer mode (run in the bench venv): plain tf_keras vs
    prune_low_magnitude, both with the same window machinery."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    models = _tf_keras_models_module()
    results = []
    for name in names:
        workload = dataclasses.replace(WORKLOADS[name], **overrides)
        _, data = _synthetic(workload)
        runners = []
        for variant in ("tf_keras_dense", "tfmot_prune"):
            tf_keras.utils.set_random_seed(0)
            model = models.build_model(workload.model, workload.input_shape,
                                       workload.num_classes, **dict(workload.options))
            callbacks, freq = [], None
            if variant == "tfmot_prune":
                schedule = tfmot.sparsity.keras.PolynomialDecay(
                    0.0, sparsity, begin_step=0, end_step=update_freq * 1000,
                    frequency=update_freq)
                model = tfmot.sparsity.keras.prune_low_magnitude(model,
                                                                 pruning_schedule=schedule)
                callbacks, freq = [tfmot.sparsity.keras.UpdatePruningStep()], update_freq
            _compile(model, tf_keras, uses_xla(workload))
            runners.append(Runner(variant, model, callbacks, freq))
        started = time.perf_counter()
        period = time_runners(runners, data, tf_keras, workload, update_freq)
        summary = summarize(runners, "tf_keras_dense")
        for runner in runners:
            summary[runner.name]["peak_memory_mb"] = (
                _state_bytes(runner.model) + runner.transient_bytes) / 2**20
        results.append({"workload": name, "model": workload.model,
                        "window_steps": workload.window_steps, "period_steps": period,
                        "rounds": workload.rounds, "seconds": time.perf_counter() - started,
                        "variants": summary,
                        "versions": {"tensorflow": tf.__version__,
                                     "tf_keras": tf_keras.__version__,
                                     "tensorflow_model_optimization": tfmot.__version__}})
    return results


def peer_mode(names, sparsity, update_freq, bench_python, forwarded, log):
    names = [n for n in names if n in PEER_WORKLOADS or n == "tiny"]
    if not names:
        return {"skipped": f"no workload of {PEER_WORKLOADS} selected"}
    if not os.path.exists(bench_python):
        return {"skipped": f"{bench_python} is missing; create the bench venv: python3 -m venv "
                           ".venv-bench && .venv-bench/bin/pip install -r "
                           "requirements-bench.txt"}
    log(f"peer: tfmot prune_low_magnitude on {names} in {bench_python}")
    command = [bench_python, os.path.abspath(__file__), "--peer_worker", "--json",
               f"--workloads={','.join(names)}", f"--sparsity={sparsity}",
               f"--update_freq={update_freq}", *forwarded]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"error": done.stderr[-3000:], "command": command}
    return {"command": command, "results": json.loads(done.stdout.strip().splitlines()[-1])}


# ---------------------------------------------------------------------------------- report
def machine_info():
    cpu = platform.processor()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.split("\n"):
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import keras
    import tensorflow as tf

    return {"cpu": cpu, "cores": os.cpu_count(), "load_average_at_start": os.getloadavg(),
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def _fmt(value, spec=".3f"):
    return "—" if value is None else format(value, spec)


def markdown(report) -> str:
    lines = [f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores; "
             f"TensorFlow {report['machine']['tensorflow']}, Keras "
             f"{report['machine']['keras']}; {report['machine']['date']}; load average at "
             f"start {report['machine']['load_average_at_start'][0]:.2f}; "
             f"`--jit_compile={report.get('jit_compile')}`.", ""]
    for result in report.get("overhead", []):
        lines += [
            f"**{result['workload']}** ({result['model']}, input "
            f"{'×'.join(map(str, result['input_shape']))}, batch {result['batch']}; "
            f"{result['masked_layers']} masked layers, {result['masked_weights']:,} weights at "
            f"sparsity {result['sparsity']}; ΔT = {result['update_freq']}; windows of "
            f"{result['window_steps']} steps standing for {result['period_steps']}, "
            f"{result['rounds']} rounds; training steps "
            + ("compiled with XLA" if result.get("jit_compile") else "without XLA") + ")", "",
            "| variant | steps/s | time / dense (median) | spread (min–max) | mask update ms "
            "| update / dense step | extra gradient ms | peak memory MB |",
            "|---|---|---|---|---|---|---|---|"]
        for name, row in result["variants"].items():
            lines.append(
                f"| {name} | {row['steps_per_s']:.2f} | {row['ratio']:.3f} | "
                f"{row['ratio_min']:.3f}–{row['ratio_max']:.3f} | "
                f"{_fmt(row.get('update_ms'), '.1f')} | {_fmt(row.get('update_to_step'), '.2f')} "
                f"| {_fmt(row.get('gradient_ms'), '.1f')} | {row['peak_memory_mb']:.0f} |")
        lines.append("")
    pipeline = report.get("pipeline")
    if pipeline:
        rows = pipeline["variants"]
        lines += [f"**Input pipeline** ({pipeline['model']}, batch {pipeline['batch']}, "
                  f"windows of {pipeline['window_steps']} steps, {pipeline['rounds']} rounds)",
                  "", "| input | steps/s | rate / in-memory (median) | spread |",
                  "|---|---|---|---|"]
        labels = {"in_memory": "one in-memory batch, repeated",
                  "tfds": "TFDS MNIST, the project's pipeline (`get_dataset(\"mnist\")`)"}
        for name, row in rows.items():
            rate = 1.0 / row["ratio"]
            name = labels.get(name, name)
            lines.append(f"| {name} | {row['steps_per_s']:.1f} | {rate:.3f} | "
                         f"{1 / row['ratio_max']:.3f}–{1 / row['ratio_min']:.3f} |")
        lines.append("")
    peer = report.get("peer")
    if peer:
        lines += ["**Peer comparison** (time / own plain dense model, median)", ""]
        if "results" not in peer:
            lines += [f"peer mode not run: {peer.get('skipped') or peer.get('error')}", ""]
        else:
            ours = {r["workload"]: r["variants"] for r in report.get("overhead", [])}
            lines += ["| workload | tfmot prune_low_magnitude / tf_keras | ours: prune / "
                      "dense | ours: RigL / dense | ours: static / dense |",
                      "|---|---|---|---|---|"]
            for result in peer["results"]:
                mine = ours.get(result["workload"], {})
                lines.append(
                    f"| {result['workload']} | {result['variants']['tfmot_prune']['ratio']:.3f}"
                    f" | {_fmt(mine.get('prune', {}).get('ratio'))} | "
                    f"{_fmt(mine.get('rigl', {}).get('ratio'))} | "
                    f"{_fmt(mine.get('static', {}).get('ratio'))} |")
            lines.append("")
    lines.append(f"Command: `{report['command']}`; {report['seconds']:.0f} s; peak RSS "
                 f"{report['peak_rss_mb']:.0f} MB; load average at the end "
                 f"{report['load_average_at_end'][0]:.2f}.")
    return "\n".join(lines)


def main(argv):
    del argv
    if RENDER.value:
        if not os.path.isfile(RENDER.value):
            raise app.UsageError(f"--render: no such file {RENDER.value!r}; pass a report "
                                 "written with --json.")
        with open(RENDER.value) as f:
            print(markdown(json.load(f)))
        return
    for name in MODES_FLAG.value:
        if name not in MODES:
            raise app.UsageError(f"--modes: unknown {name!r}; allowed: {MODES}.")
    for name in WORKLOADS_FLAG.value:
        if name not in WORKLOADS:
            raise app.UsageError(f"--workloads: unknown {name!r}; allowed: {sorted(WORKLOADS)}.")
    for name in VARIANTS_FLAG.value:
        if name not in VARIANTS + DIAGNOSTIC_VARIANTS:
            raise app.UsageError(f"--variants: unknown {name!r}; allowed: "
                                 f"{VARIANTS + DIAGNOSTIC_VARIANTS}.")
    overrides = {key: flag.value for key, flag in (
        ("window_steps", WINDOW_STEPS), ("rounds", ROUNDS), ("warmup_steps", WARMUP_STEPS))
        if flag.value is not None}
    forwarded = [f"--{key}={value}" for key, value in overrides.items()]
    forwarded.append(f"--jit_compile={JIT_COMPILE.value}")
    if PEER_WORKER.value:
        print(json.dumps(peer_worker(WORKLOADS_FLAG.value, SPARSITY.value, UPDATE_FREQ.value,
                                     overrides)))
        return

    def log(message):
        print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    report = {"command": " ".join(["python", "scripts/benchmark.py", *sys.argv[1:]]),
              "machine": machine_info(), "jit_compile": JIT_COMPILE.value}
    if report["machine"]["load_average_at_start"][0] > 0.7:
        log(f"load average {report['machine']['load_average_at_start'][0]:.2f}: other "
            "processes share the CPU, expect noisy figures")
    if "overhead" in MODES_FLAG.value:
        report["overhead"] = overhead_mode(WORKLOADS_FLAG.value, VARIANTS_FLAG.value,
                                           SPARSITY.value, UPDATE_FREQ.value, overrides, log)
    if "pipeline" in MODES_FLAG.value:
        report["pipeline"] = pipeline_mode(DATA_DIR.value, MNIST_SOURCE.value, log, overrides)
    if "peer" in MODES_FLAG.value:
        report["peer"] = peer_mode(WORKLOADS_FLAG.value, SPARSITY.value, UPDATE_FREQ.value,
                                   BENCH_PYTHON.value, forwarded, log)
    report["seconds"] = time.perf_counter() - started
    report["load_average_at_end"] = os.getloadavg()
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(report, indent=1) if JSON_FLAG.value else markdown(report))


if __name__ == "__main__":
    app.run(main)

"""The timing harness: windows of training steps, timed by variant, interleaved round after round.

A ``Runner`` is one variant to time: a compiled model, the callbacks of its training and, if it
updates masks, its updater. ``time_runners`` runs one untimed window per runner (everything
traced, the first mask update included), then ``rounds`` rounds of one window per runner, the
order rotating every round so that no variant always follows the same one. ``summarize`` turns
the windows into step times and ratios to a baseline runner of the same rounds.

Windows and amortisation. A window is one ``model.fit`` call of ``warmup + W + 1`` steps of
which W are timed, by timestamps taken at the start of every batch. It stands for a period P =
ΔT·ceil(W/ΔT) of training and contains exactly P/ΔT scheduled mask updates (for W < ΔT the
optimizer's step is first moved so that an update falls inside the window). The amortised step
time is (T_window + (P - W)·t_median)/P, with t_median the window's median step: for W = P that
is simply T_window / W (LeNet-300-100); for the large models, where 100-step windows of six
variants would not fit in a 15-minute run, the steps between the window and the end of the
period are counted at the window's median step. Every runner, the dense one included, is
measured the same way.

Nothing here knows which Keras it drives: functions take the Keras module (``keras`` or, in
the tfmot peer's venv, ``tf_keras``), so both sides of the peer comparison share this code.
Where new things plug in: a new kind of variant is a ``Runner`` built by a mode (see
``overhead.build_runners``); a new per-window measurement belongs in ``run_window`` and its
summary in ``summarize``.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time

import numpy as np
import tensorflow as tf


def median(values) -> float:
    """The median of ``values``, NaN if there are none."""
    return statistics.median(values) if values else float("nan")


def timer_callback(keras_module):
    """A callback of ``keras_module`` whose ``stamps`` are the times at which batches begin.

    Put it first in the callback list: it stamps before any later callback's work (a mask
    update included), so that work is timed within the step it runs before.
    """

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
    """A model to time, with the callbacks of its training and the steps of its updates.

    Attributes:
        name: the variant's name (a key of the summary).
        model: the compiled model.
        callbacks: its training callbacks (e.g. ``rigl.SparseTraining``).
        update_freq: ΔT of the variant's updates (None: never updates).
        updater: its ``rigl.Updater``, if any.
        sparse_callback: its ``rigl.SparseTraining``, whose history counts the updates done.
        windows: amortised step seconds, one per timed window.
        medians: median step seconds, one per timed window.
        updates_seen: mask updates inside each timed window.
        transient_bytes: the largest allocator peak of a window above its start.
    """

    name: str
    model: object
    callbacks: list
    update_freq: int | None = None
    updater: object = None
    sparse_callback: object = None
    windows: list = dataclasses.field(default_factory=list)
    medians: list = dataclasses.field(default_factory=list)
    updates_seen: list = dataclasses.field(default_factory=list)
    transient_bytes: int = 0


def read_iterations(model) -> int:
    """The optimizer step of ``model``."""
    return int(model.optimizer.iterations.numpy())


def _memory_mark():
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        return tf.config.experimental.get_memory_info("CPU:0")["current"]
    except (ValueError, RuntimeError):  # allocator without statistics
        return None


def _memory_peak(mark) -> int:
    if mark is None:
        return 0
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - mark


def run_window(runner: Runner, data, keras_module, window: int, warmup: int, period: int,
               update_freq: int, timed: bool = True):
    """Trains ``runner`` for ``warmup + window + 1`` steps in one ``fit`` and times ``window``.

    For W < period the optimizer step is first moved so that an update step (a multiple of
    ``update_freq``) falls a third of the way into the window; every runner is moved alike.

    Args:
        runner: what to train; its ``windows``, ``medians`` and ``updates_seen`` grow by one
            if ``timed``.
        data: the dataset ``fit`` reads.
        keras_module: ``keras`` or ``tf_keras``, the Keras of ``runner.model``.
        window: W, the timed steps.
        warmup: untimed steps before them.
        period: P, the training period the window stands for.
        update_freq: ΔT.
        timed: False for the warm-up window (traces, nothing recorded but memory).
    """
    model = runner.model
    start = read_iterations(model)
    if window < period:
        offset = warmup + window // 3
        aligned = -(-(start + offset) // update_freq) * update_freq
        start = aligned - offset
        model.optimizer.iterations.assign(start)
    timer = timer_callback(keras_module)
    seen_before = len(runner.sparse_callback.history) if runner.sparse_callback else 0
    mark = _memory_mark()
    model.fit(data, steps_per_epoch=warmup + window + 1, epochs=1, verbose=0,
              callbacks=[timer] + runner.callbacks)
    runner.transient_bytes = max(runner.transient_bytes, _memory_peak(mark))
    stamps = timer.stamps[warmup:warmup + window + 1]
    if not timed:
        return
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    total, step_median = stamps[-1] - stamps[0], median(steps)
    runner.windows.append((total + (period - window) * step_median) / period)
    runner.medians.append(step_median)
    if runner.sparse_callback is not None:
        first, last = start + warmup, start + warmup + window
        runner.updates_seen.append(sum(
            1 for r in runner.sparse_callback.history[seen_before:] if first <= r.step < last))
    elif runner.update_freq:  # a peer's in-graph pruning: count its schedule
        first = start + warmup
        runner.updates_seen.append(sum(
            1 for s in range(first, first + window) if s % runner.update_freq == 0))


def period_steps(window: int, update_freq: int) -> int:
    """P = ΔT·ceil(W/ΔT): the training period a window of W steps stands for."""
    return update_freq * max(1, math.ceil(window / update_freq))


def time_runners(runners, data, keras_module, workload, update_freq: int) -> int:
    """Warm-up window per runner, then ``workload.rounds`` rounds of windows, interleaved.

    Returns:
        The period P every window stands for.
    """
    window = workload.window_steps
    period = period_steps(window, update_freq)
    for runner in runners:  # traces everything, first mask update included
        run_window(runner, data, keras_module, window, workload.warmup_steps, period,
                   update_freq, timed=False)
    for r in range(workload.rounds):
        order = runners[r % len(runners):] + runners[:r % len(runners)]
        for runner in order:
            run_window(runner, data, keras_module, window, workload.warmup_steps, period,
                       update_freq)
    return period


def summarize(runners, baseline: str) -> dict:
    """Per runner: step time, steps/s, and its ratio to the ``baseline`` runner.

    Each round's window is divided by the baseline's window of the same round; ``ratio`` is the
    median of those ratios and ``ratio_min``/``ratio_max`` their spread.
    """
    base = next(r for r in runners if r.name == baseline)
    out = {}
    for runner in runners:
        ratios = [a / b for a, b in zip(runner.windows, base.windows)]
        step = median(runner.windows)
        out[runner.name] = {
            "step_ms": 1e3 * step,
            "steps_per_s": 1.0 / step,
            "ratio": median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "window_step_ms": [1e3 * w for w in runner.windows],
            "median_step_ms": 1e3 * median(runner.medians),
            "updates_per_window": sorted(set(runner.updates_seen)),
        }
    return out


def state_bytes(model) -> int:
    """Bytes of the model's variables and its optimizer's (slots included)."""
    optimizer_variables = model.optimizer.variables
    if callable(optimizer_variables):  # tf_keras' legacy optimizers
        optimizer_variables = optimizer_variables()
    variables = list(model.variables) + list(optimizer_variables)
    return sum(math.prod(int(d) for d in v.shape)
               * np.dtype(getattr(v.dtype, "as_numpy_dtype", v.dtype)).itemsize
               for v in variables)


def peak_memory_mb(runner: Runner) -> float:
    """The model's and optimizer's state plus the largest transient allocation, in MiB."""
    return (state_bytes(runner.model) + runner.transient_bytes) / 2**20


def compile_model(model, keras_module, jit_compile: bool):
    """Compiles ``model`` the way every variant is: SGD with momentum, sparse cross-entropy."""
    model.compile(optimizer=keras_module.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras_module.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit_compile)
    return model

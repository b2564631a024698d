"""What a run reports: logs, summaries, snapshots and the results file, apart from the loop.

``RunReport`` is everything a run writes besides its checkpoints, fed by the training loop
(``rigl.experiments.training``) at fixed points: the step log (TensorBoard ``logs/train``:
loss, accuracy, learning rate) and the progress line on stdout (``ProgressLine``: step,
steps/s, ETA, loss, score, learning rate), the FLOPs log of dense-to-sparse methods
(``flops_log.json``), mask snapshots (``mask_snapshots/step_<N>.npz``), the evaluations
(``logs/eval`` and ``eval_log.json``), and at the end ``model.keras`` and ``results.json``
(the paper's columns: sparsity, FLOPs, the MLP's units kept, best scores). ``describe`` is
what a dry run prints instead.

Where a new output plugs in: a new column of ``results.json`` is a key of ``run_results``
(or of the helper it calls, e.g. ``flops_results``); a new per-step output is written in
``RunReport.step_done``, a new per-evaluation one in ``RunReport.evaluated``, a file kept in
step with the checkpoints in ``RunReport.checkpointed``. The loop itself does not change.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import gin
import keras
import numpy as np
import tensorflow as tf

import rigl
from rigl.experiments.config import TrainConfig

# Every JSON file of a run is written the one atomic way (temporary file, fsync, rename).
from rigl.experiments.workdir import write_json_atomic as write_json


class StepLog:
    """(step, value) entries persisted as JSON beside the checkpoints; a resumed run keeps
    those up to the step it resumes from."""

    def __init__(self, path: str, start_step: int):
        self.path, self.entries = path, []
        if start_step and os.path.exists(path):
            with open(path) as f:
                self.entries = [tuple(e) for e in json.load(f) if e[0] <= start_step]

    def add(self, step: int, value) -> None:
        self.entries.append((step, value))

    def save(self) -> None:
        write_json(self.path, self.entries)


class FlopsLog(StepLog):
    """Inference FLOPs of the masks in use, from which step, over a run (resumes with it).

    Drop-and-grow keeps every layer's nonzero count, hence its FLOPs; only dense-to-sparse
    methods (pruning, SNIP) change them, so only their updates are measured again.
    ``counting``: ``rigl.flops``' "paper" or "exact".
    """

    def __init__(self, path: str, net, start_step: int, tracks_updates: bool,
                 counting: str = "paper"):
        super().__init__(path, start_step if tracks_updates else 0)
        self.net, self.tracks_updates, self.counting = net, tracks_updates, counting
        if not self.entries:
            self.add(start_step, self.measure())
        self._seen = 0

    def measure(self) -> float:
        if has_sparse_layers(self.net):
            return rigl.flops.inference_flops(self.net, counting=self.counting)
        return rigl.flops.dense_inference_flops(self.net, self.counting)

    def after_step(self, step: int, history) -> None:
        """Measures again if the updater ran since the last call (``history``: its results)."""
        if self.tracks_updates and len(history) > self._seen:
            self._seen = len(history)
            # The update ran before this step's gradient step: its masks served from step-1.
            self.add(step - 1, self.measure())

    def average(self, end_step: int) -> float:
        """Step-weighted mean of the inference FLOPs from the first entry to ``end_step``."""
        entries = sorted(self.entries, key=lambda entry: entry[0])  # stable: same-step order
        total = sum(max(0, (entries[i + 1][0] if i + 1 < len(entries) else end_step) - s) * f
                    for i, (s, f) in enumerate(entries))
        span = end_step - entries[0][0]
        return total / span if span > 0 else entries[-1][1]


def sparse_dense_layers(net) -> list:
    """The truly sparse layers (``rigl.SparseDense``) of ``net``, in model order."""
    return [layer for layer in rigl.masking.walk_layers(net)
            if isinstance(layer, rigl.SparseDense)]


def has_sparse_layers(net) -> bool:
    """Whether ``net`` has masked or truly sparse layers (a sparsity to measure)."""
    return bool(rigl.sparse_weights(net))


def _connected_units(layer, path_masks: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """For a Dense-like layer, which inputs have an outgoing connection and which outputs
    an incoming one (boolean vectors; O(nnz) for a truly sparse layer); None for a layer
    without a kernel. ``path_masks``: kernel variable id -> mask, for masks a
    ``rigl.SparseModel`` holds. Raises ``TypeError`` for a kernel that is not a Dense one."""
    if isinstance(layer, rigl.SparseDense):
        return rigl.masking.connected_units(layer)
    kernel = getattr(layer, "kernel", None)
    if kernel is None:
        return None
    if not isinstance(layer, keras.layers.Dense) or len(kernel.shape) != 2:
        raise TypeError(layer.name)
    if id(kernel) in path_masks:
        mask = keras.ops.convert_to_numpy(path_masks[id(kernel)]).astype(bool)
        return mask.any(axis=1), mask.any(axis=0)
    if getattr(layer, "mask", None) is None:
        return np.ones(kernel.shape[0], bool), np.ones(kernel.shape[1], bool)
    return rigl.masking.connected_units(layer)


def mlp_units(net) -> list[int] | None:
    """For a multilayer perceptron (every layer with a kernel is a Dense layer and each
    kernel's inputs are the previous one's outputs), the units that keep at least one
    connection, the paper's "final architecture": [input features with an outgoing
    connection, hidden units with both an incoming and an outgoing connection, ..., output
    units with an incoming connection]. Masked layers count their mask, truly sparse ones
    their active connections, dense ones every weight. None for any other model (one with
    a kernel of another kind: attention projections, embeddings, convolutions...)."""
    if any(not isinstance(k.layer, keras.layers.Dense)
           or isinstance(k.layer, keras.layers.EinsumDense)
           for k in rigl.kernels.all_kernels(net)):
        return None
    path_masks = {id(w.masked_kernel): w.mask for w in rigl.masking.masked_weights(net)}
    layers = []  # per kernel: (inputs with a connection, outputs with a connection)
    for layer in rigl.masking.walk_layers(net):
        try:
            connected = _connected_units(layer, path_masks)
        except TypeError:
            return None
        if connected is not None:
            layers.append(connected)
    if not layers or any(a[1].size != b[0].size for a, b in zip(layers, layers[1:])):
        return None
    units = [int(layers[0][0].sum())]
    for (_, incoming), (outgoing, _) in zip(layers, layers[1:]):
        units.append(int((incoming & outgoing).sum()))
    units.append(int(layers[-1][1].sum()))
    return units


def best_metrics(history) -> dict:
    """Best test score over the evaluations of a run, and the test score where validation
    was best (the original MNIST code's model selection).

    Args:
        history: ``(step, metrics)`` pairs in order, as in ``eval_log.json``; accuracy is
            maximised, bits per character minimised.
    """
    key, better = (("test_accuracy", max) if "test_accuracy" in history[-1][1]
                   else ("test_bits_per_char", min))
    step, best = better(history, key=lambda entry: entry[1][key])
    results = {f"best_{key}": best[key], "best_step": step}
    validation_key = key.replace("test", "validation")
    if validation_key in history[-1][1]:
        _, at_best = better(history, key=lambda entry: entry[1][validation_key])
        results[f"{key}_at_best_validation"] = at_best[key]
    return results


def flops_results(net, method: rigl.methods.Method, flops_log: FlopsLog, steps: int,
                  multiplier: float, update_freq: int | None, dense_flops: float) -> dict:
    """The paper's FLOPs columns for this run (see rigl.flops for the counting rules), and
    ``flops_counting``, the counting they use (the FLOPs log's).

    ``dense_flops`` is the dense forward FLOPs the ratios are relative to: the model's own,
    or for Small-Dense the full-width model's, counted alike. ``update_freq``: the updater's
    ΔT (the RigL rule counts its dense-gradient steps), None without an updater.
    """
    counting = flops_log.counting
    inference = flops_log.measure()
    average = flops_log.average(steps)
    if method.dense_to_sparse:
        # Its FLOPs change during training and were measured as they did: a step costs
        # 3·mean f(s_t) over the run (the "sparse" rule on the measured mean), not the
        # "prune" rule's estimate of that mean from the schedule.
        per_step = 3.0 * float(average)
    else:
        kwargs = {"update_freq": update_freq} if update_freq is not None else {}
        per_step = rigl.flops.train_flops_per_step(method.name, dense_flops, average,
                                                   counting=counting, **kwargs)
    return {"inference_flops": inference, "dense_inference_flops": dense_flops,
            "inference_flops_ratio": inference / dense_flops,
            "train_flops_ratio": per_step * multiplier / (3.0 * dense_flops),
            "size_mb": rigl.flops.model_size_mb(net, counting=counting),
            "flops_counting": counting}


def mask_arrays(net) -> dict[str, np.ndarray]:
    """What a mask snapshot holds, in O(nnz) for truly sparse layers.

    * each masked kernel: its mask under the masked-weight name (``fc1``, ``gru/kernel``);
    * each ``rigl.SparseDense`` layer ``<name>``: its stored entries ``<name>/rows``,
      ``<name>/cols`` (int32) and ``<name>/alive`` (bool), and ``<name>/shape``, the
      kernel's shape; its mask is ``alive`` scattered at ``(rows, cols)`` (``dense_mask``).
    """
    arrays = {weight.name: keras.ops.convert_to_numpy(weight.mask)
              for weight in rigl.masked_weights(net)}
    for layer in sparse_dense_layers(net):
        for key in ("rows", "cols", "alive"):
            arrays[f"{layer.name}/{key}"] = keras.ops.convert_to_numpy(getattr(layer, key))
        arrays[f"{layer.name}/shape"] = np.asarray(layer.kernel_shape, np.int64)
    return arrays


def dense_mask(snapshot, name: str) -> np.ndarray:
    """The mask of kernel ``name`` from a mask snapshot (``np.load`` of its file), for
    masked and truly sparse layers alike (the latter made dense: for small layers)."""
    if name in snapshot:
        return np.asarray(snapshot[name])
    mask = np.zeros(tuple(snapshot[f"{name}/shape"]), bool)
    alive = np.asarray(snapshot[f"{name}/alive"], bool)
    mask[snapshot[f"{name}/rows"][alive], snapshot[f"{name}/cols"][alive]] = True
    return mask


def save_masks(out_dir: str, step: int, net) -> None:
    """Masks at ``step`` (after that many optimizer steps) as ``mask_snapshots/step_N.npz``
    (see ``mask_arrays``)."""
    folder = os.path.join(out_dir, "mask_snapshots")
    os.makedirs(folder, exist_ok=True)
    np.savez_compressed(os.path.join(folder, f"step_{step}.npz"), **mask_arrays(net))


def write_scalars(writer, step: int, metrics: dict) -> None:
    """Every metric as a TensorBoard scalar at ``step``, flushed."""
    with writer.as_default(step=step):
        for name, value in metrics.items():
            tf.summary.scalar(name, value)
    writer.flush()


def run_results(config: TrainConfig, net, *, steps: int, metrics: dict, eval_history, flops: dict,
                train_seconds: float, num_replicas: int, skipped_updates: int) -> dict:
    """The contents of ``results.json``: the run's settings, sparsity, FLOPs and scores.

    Args:
        config: the run's ``TrainConfig``.
        net: the trained model.
        steps: optimizer steps trained.
        metrics: the final evaluation.
        eval_history: every evaluation, ``(step, metrics)`` in order (the final one last).
        flops: the FLOPs columns (``flops_results``).
        train_seconds: training time over every session of the run.
        num_replicas: replicas the run trained on.
        skipped_updates: mask updates skipped for non-finite values.
    """
    masked = config.method_traits.masked
    return {
        "dataset": config.dataset, "model": config.model, "method": config.method,
        "distribution": config.distribution if masked else None,
        "sparsity": config.sparsity if masked else 0.0,
        "measured_sparsity": rigl.total_sparsity(net) if has_sparse_layers(net) else 0.0,
        "layer_sparsity": rigl.measured_sparsities(net),
        "mlp_units": mlp_units(net),
        "units_without_inputs": rigl.masking.units_without_inputs(net),
        "steps": steps, "multiplier": config.multiplier, "batch_size": config.batch_size,
        "train_seconds": train_seconds, "seed": config.seed, "strategy": config.strategy,
        "num_replicas": num_replicas,
        "skipped_mask_updates": skipped_updates,
        "replica_mask_mismatches": rigl.masking.replica_mismatches(net),
        "gin_config": gin.operative_config_str(),
        **flops,
        **metrics,
        **best_metrics(eval_history),
    }


def update_times(history, began: float, ended: float | None) -> dict:
    """The mask updates' cost in this session: ``mask_update_seconds``, each update's wall
    time (its gradient included), and ``mask_update_share``, their sum over the session's
    wall time from ``began`` to ``ended`` (its last step; None without updates). A resumed
    run reports its last session only."""
    seconds = [r.seconds for r in history if r.seconds is not None]
    share = (sum(seconds) / (ended - began) if seconds and ended is not None and ended > began
             else None)
    return {"mask_update_seconds": seconds, "mask_update_share": share}


def summary_line(results: dict, workdir: str) -> str:
    """The one line a finished run prints: its score, sparsity, length and time."""
    metric = ("test_accuracy", "test accuracy") if "test_accuracy" in results else (
        "test_bits_per_char", "test bits/char")
    return (f"{results['method']} {results['model']} on {results['dataset']}: {metric[1]} "
            f"{results[metric[0]]:.4f}, sparsity {results['measured_sparsity']:.4f} (target "
            f"{results['sparsity']}), {results['steps']} steps, "
            f"{results['train_seconds']:.1f}s train -> {workdir}")


def format_duration(seconds: float) -> str:
    """A duration as ``45s``, ``2m26s`` or ``3h05m`` (hours past 24 stay hours)."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_lr(lr: float) -> str:
    """A learning rate to four significant digits: ``0.1``, ``0.001``, ``1.234e-05``, and
    ``0`` (not ``0.0000e+00``) where a cosine schedule ends."""
    return "0" if lr == 0 else f"{lr:.4g}"


def format_rate(steps_per_second: float | None) -> str:
    """``12.3 steps/s``, or ``4.20 s/step`` below one step a second; ``-- steps/s`` when
    no rate is known yet."""
    if steps_per_second is None or steps_per_second <= 0:
        return "-- steps/s"
    if steps_per_second < 1:
        return f"{1 / steps_per_second:.2f} s/step"
    return f"{steps_per_second:.1f} steps/s"


class ProgressLine:
    """The progress line of a training run, printed at every log period::

        step 1,200/3,000 (40.0%)  12.3 steps/s  ETA 2m26s  loss 0.2345  acc 0.9312  lr 0.1

    Timing is wall-clock, from ``clock``. It starts when the first step of this session
    ends (``step_done``), so that step, which traces and compiles the training function
    (and follows the restore of a resumed run), is in no rate: its duration is shown once,
    on its own line (``first step 4.1s``). A resumed run's rates are those of its resumed
    part only. Steps/s is over the last log period (evaluations and checkpoints in it
    included: the rest of the run pays for them too); the ETA is the steps left at the mean
    rate since the first step, steadier than one period's when evaluations come every few
    periods. The last line shows the session's time (``took``) instead of an ETA.

    Args:
        total_steps: the run's length.
        start_step: the step this session starts (or resumes) from.
        verbosity: 0 silent; 1 one line rewritten in place with ``\\r`` (a terminal), ended
            with a newline at the last step (or ``close``); 2 one line per log period (logs,
            a sweep's ``train.log``).
        stream: where lines go; None: ``sys.stdout`` at the time of writing.
        clock: seconds from a monotonic clock (``time.monotonic``; tests pass a fake one).
    """

    def __init__(self, total_steps: int, start_step: int = 0, verbosity: int = 2,
                 stream=None, clock=time.monotonic):
        if verbosity not in (0, 1, 2):
            raise ValueError(f"training.verbose: 0, 1 or 2 (or None), got {verbosity!r}.")
        self.total_steps, self.start_step, self.verbosity = total_steps, start_step, verbosity
        self.stream, self.clock = stream, clock
        self._began: float | None = None  # when the session's first step started
        self._first: tuple[int, float] | None = None  # (step, time) the first step ended
        self._last: tuple[int, float] | None = None  # (step, time) of the last line
        self._shown = 0  # length of the line on the terminal, to blank what it leaves over

    def begin(self) -> None:
        """Just before the session's first step (times it: tracing, compiling)."""
        self._began = self.clock()

    def step_done(self, step: int) -> None:
        """After every optimizer step (cheap): starts the rate clock at the first one."""
        if self._first is None:
            self._first = self._last = (step, self.clock())

    @property
    def first_step(self) -> int:
        """The first step of this session (it gets a line of its own)."""
        return self.start_step + 1

    def line(self, step: int, *, loss: float, lr: float, accuracy: float | None = None,
             bits_per_char: float | None = None) -> str:
        """The progress line after ``step`` (closing the period since the last one): the
        training loss, accuracy (``acc``) or bits per character, and learning rate."""
        now = self.clock()
        if self._first is None:  # step_done not called: the rate clock starts here
            self._first = self._last = (step, now)
        first_step, first_time = self._first
        last_step, last_time = self._last
        self._last = (step, now)
        parts = [f"step {step:,}/{self.total_steps:,} ({100 * step / self.total_steps:.1f}%)"]
        if step == first_step:
            if self._began is not None:
                parts.append(f"first step {first_time - self._began:.1f}s")
        else:
            rate = (step - last_step) / (now - last_time) if now > last_time else None
            parts.append(format_rate(rate))
            if step >= self.total_steps:
                began = self._began if self._began is not None else first_time
                parts.append(f"took {format_duration(now - began)}")
            else:
                mean = (step - first_step) / (now - first_time) if now > first_time else None
                parts.append("ETA " + (format_duration((self.total_steps - step) / mean)
                                       if mean else "--"))
        parts.append(f"loss {loss:.4f}")
        if accuracy is not None:
            parts.append(f"acc {accuracy:.4f}")
        if bits_per_char is not None:
            parts.append(f"bits/char {bits_per_char:.4f}")
        parts.append(f"lr {format_lr(lr)}")
        return "  ".join(parts)

    def update(self, step: int, **values) -> None:
        """Prints the line after ``step`` (``values``: the keywords of ``line``)."""
        if not self.verbosity:
            return
        text = self.line(step, **values)
        stream = self.stream or sys.stdout
        if self.verbosity == 1:
            end = "\n" if step >= self.total_steps else ""
            # Blanks what a longer previous line would leave behind (no terminal codes).
            stream.write("\r" + text + " " * max(0, self._shown - len(text)) + end)
            self._shown = 0 if end else len(text)
        else:
            stream.write(text + "\n")
        stream.flush()

    def close(self) -> None:
        """Ends a line left open on the terminal (a run that stops before its last step)."""
        if self._shown:
            (self.stream or sys.stdout).write("\n")
            (self.stream or sys.stdout).flush()
            self._shown = 0


def _task_of(net) -> str:
    """"language_model" for a model predicting per position (outputs of rank 3: batch,
    position, class), else "classification"."""
    outputs = getattr(net, "outputs", None) or []
    return "language_model" if outputs and len(outputs[0].shape) == 3 else "classification"


class RunReport:
    """Everything a training run writes besides its checkpoints, in ``out_dir``.

    The loop calls ``begin`` before its first step, ``step_done`` after every step,
    ``checkpointed`` after every checkpoint, ``evaluated`` after every evaluation (the final
    one included) and ``finish`` at the end (``close`` instead when it stops on an error).

    Args:
        config: the run's ``TrainConfig`` (periods, snapshot steps, verbosity, method).
        out_dir: this process's output folder.
        net, optimizer: the model and optimizer being trained.
        start_step: the step training starts (or resumes) from.
        total_steps: the run's length.
        examples_per_step: predictions per step (the accuracy's denominator).
        task: "classification" or "language_model" (the progress line shows the training
            bits per character instead of the accuracy); None: a language model if the model
            predicts per position (an output of rank 3).
        stream, clock: the progress line's (``ProgressLine``); tests pass their own.
    """

    def __init__(self, config: TrainConfig, out_dir: str, net, optimizer, *, start_step: int,
                 total_steps: int, examples_per_step: int, task: str | None = None,
                 stream=None, clock=time.monotonic):
        self.config, self.out_dir, self.net, self.optimizer = config, out_dir, net, optimizer
        self.total_steps, self.examples_per_step = total_steps, examples_per_step
        self.train_writer = tf.summary.create_file_writer(os.path.join(out_dir, "logs", "train"))
        self.eval_writer = tf.summary.create_file_writer(os.path.join(out_dir, "logs", "eval"))
        self.progress = ProgressLine(total_steps, start_step, config.progress_verbosity,
                                     stream=stream, clock=clock)
        self.task = task or _task_of(net)
        self.flops_log = FlopsLog(os.path.join(out_dir, "flops_log.json"), net, start_step,
                                  tracks_updates=config.method_traits.dense_to_sparse,
                                  counting=config.flops_counting)
        self.eval_log = StepLog(os.path.join(out_dir, "eval_log.json"), start_step)
        self.snapshot_steps = set(config.mask_snapshot_steps)
        self.start_step = start_step
        # This session's mask updates, its start and its last step's end (update_times).
        self._updates = ()
        self._session_began, self._last_step_at = time.perf_counter(), None

    def begin(self) -> None:
        """Before the first step (and before the updater binds): the initial masks."""
        if self.start_step == 0 and 0 in self.snapshot_steps:
            save_masks(self.out_dir, 0, self.net)
        self.progress.begin()
        self._session_began = time.perf_counter()

    def step_done(self, step: int, loss, correct, update_history=()) -> None:
        """After optimizer step ``step`` (1-based): the step log every ``log_every_steps``
        and at the end (``loss``/``correct`` are read from the device only then), the
        progress line then and after the session's first step, the FLOPs log after a mask
        update (``update_history``: the callback's results so far), and the mask snapshot
        if one is due."""
        self.progress.step_done(step)
        self._last_step_at = time.perf_counter()
        self._updates = update_history
        logged = step % self.config.log_every_steps == 0 or step == self.total_steps
        if logged or (self.progress.verbosity and step == self.progress.first_step):
            loss, accuracy = float(loss), float(correct) / self.examples_per_step
            lr = float(self.optimizer.learning_rate)
            if logged:
                with self.train_writer.as_default(step=step):
                    tf.summary.scalar("loss", loss)
                    tf.summary.scalar("accuracy", accuracy)
                    tf.summary.scalar("learning_rate", lr)
            if self.progress.verbosity:
                self.progress.update(step, loss=loss, lr=lr,
                                     **self._progress_metric(loss, accuracy))
        self.flops_log.after_step(step, update_history)
        if step in self.snapshot_steps:
            save_masks(self.out_dir, step, self.net)

    def _progress_metric(self, loss: float, accuracy: float) -> dict:
        """The task's score for the progress line: the accuracy, or for a language model
        the training bits per character (the loss without its weight-decay term, in bits;
        that term is read after the step, one update off, far below the digits shown)."""
        if self.task != "language_model":
            return {"accuracy": accuracy}
        penalty = sum(float(v) for v in self.net.losses) if self.net.losses else 0.0
        return {"bits_per_char": (loss - penalty) / math.log(2.0)}

    def checkpointed(self) -> None:
        """After a checkpoint: the step logs a resumed run reads back, saved with it."""
        if self.flops_log.tracks_updates:
            self.flops_log.save()
        self.eval_log.save()

    def evaluated(self, step: int, metrics: dict) -> None:
        """After an evaluation at ``step``: its TensorBoard scalars and eval-log entry (the
        final evaluation is logged once even if it falls on a periodic one's step)."""
        write_scalars(self.eval_writer, step, metrics)
        if not self.eval_log.entries or self.eval_log.entries[-1][0] != step:
            self.eval_log.add(step, metrics)

    def close(self) -> None:
        """Ends the progress line if a terminal line is still open (``finish`` does; a loop
        stopping early on an error calls it before the error is printed)."""
        self.progress.close()

    def finish(self, *, steps: int, metrics: dict, dense_flops: float, train_seconds: float,
               updater, num_replicas: int, chief: bool, workdir: str) -> dict:
        """At the end: ``eval_log.json``, ``model.keras``, and on the chief ``results.json``
        and the summary line; returns the results."""
        self.close()
        self.eval_log.save()
        self.net.save(os.path.join(self.out_dir, "model.keras"))
        config = self.config
        flops = flops_results(
            self.net, config.method_traits, self.flops_log, steps, config.multiplier,
            updater.schedule.update_freq if updater is not None else None, dense_flops)
        results = run_results(
            config, self.net, steps=steps, metrics=metrics, eval_history=self.eval_log.entries,
            flops=flops, train_seconds=train_seconds, num_replicas=num_replicas,
            skipped_updates=updater.skipped_updates if updater is not None else 0)
        results.update(update_times(self._updates, self._session_began, self._last_step_at))
        if chief:
            write_json(os.path.join(workdir, "results.json"), results)
            print(summary_line(results, workdir))
        return results


def _kernel_zeros(net):
    """``(name, kernel shape, zeros)`` of every maskable kernel of ``net`` (masked, truly
    sparse or dense), counted without a dense tensor for truly sparse layers."""
    for layer in rigl.masking.walk_layers(net):
        if isinstance(layer, rigl.SparseDense):
            size = math.prod(layer.kernel_shape)
            yield layer.name, layer.kernel_shape, size - layer.active_count()
        elif rigl.layers.is_masked(layer):
            for weight in layer.masked_weights():
                mask = keras.ops.convert_to_numpy(weight.mask)
                yield weight.name, tuple(mask.shape), int(mask.size - np.count_nonzero(mask))
        elif type(layer) in rigl.layers.MASKED_TWINS:
            for name, shape in rigl.layers.kernel_shapes(layer).items():
                yield name, tuple(shape), 0


def describe(net, schedule, updater, total_steps: int, steps_per_epoch: int) -> str:
    """What a run would train: per-layer sparsity table, totals, schedule (dry runs)."""
    targets = getattr(updater, "target_sparsities", None)
    rows, total, zeros = [], 0, 0
    for name, shape, layer_zeros in _kernel_zeros(net):
        size = math.prod(shape)
        if targets is not None and name in targets:  # dense-to-sparse: show where it ends
            layer_zeros = rigl.distributions.num_zeros(targets[name], size)
        total, zeros = total + size, zeros + layer_zeros
        rows.append(f"| {name} | {tuple(shape)} | {layer_zeros / size:.4f} | "
                    f"{size - layer_zeros:,} |")
    stored = ("masks" if not sparse_dense_layers(net) else "masks and positions"
              if rigl.masked_layers(net) else "positions")
    lines = [f"model {net.name}: {net.count_params():,} parameters ({stored} included)", "",
             "| layer | kernel shape | sparsity | nonzeros |", "| --- | --- | --- | --- |",
             *rows, "",
             f"maskable kernels: {total:,} weights, {total - zeros:,} nonzero, "
             f"sparsity {zeros / max(total, 1):.4f}"
             + (" (targets of the dense-to-sparse method)" if targets is not None else ""),
             "", f"steps: {total_steps:,} ({total_steps / steps_per_epoch:.2f} epochs of "
             f"{steps_per_epoch:,} steps)"]
    anchors = sorted({0, total_steps - 1, *[b for b in getattr(schedule, "boundaries", [])
                                           if b < total_steps],
                      *([schedule.warmup_steps] if getattr(schedule, "warmup_steps", 0)
                        else [])})
    lines.append("learning rate: " + ", ".join(
        f"step {a:,}: {float(schedule(a)):.5g}" for a in anchors))
    if updater is not None and updater.changes_masks:
        steps = [t for t in range(updater.schedule.begin_step,
                                  min(updater.schedule.end(), total_steps) + 1)
                 if updater.is_update_step(t)]
        shown = ", ".join(f"{t:,}" for t in steps[:3]) + (", ..." if len(steps) > 3 else "")
        lines.append(f"mask updates ({type(updater).__name__}): {len(steps)} at steps "
                     f"{shown} (every {updater.schedule.update_freq}, from "
                     f"{updater.schedule.begin_step:,} to T_end = {updater.schedule.end():,})")
        if steps and updater.current_drop_fraction(steps[0]):
            lines.append(f"drop fraction: {updater.current_drop_fraction(steps[0]):.3f} at "
                         f"step {steps[0]:,}, {updater.drop_fraction.decay} decay")
    else:
        lines.append("mask updates: none")
    return "\n".join(lines)

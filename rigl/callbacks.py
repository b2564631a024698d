"""``SparseTraining``: the Keras callback that makes ``model.fit`` (or a custom loop) train sparse.

The callback only decides *when* an updater runs and *which batch* its gradient is taken on;
*what* an update does is the updater's (``rigl.updaters``), so a new updater needs nothing
here. Batches come from ``data`` (a dataset, an iterable or a function) or, in a custom loop,
from ``set_batch`` with ``data=SparseTraining.SET_BATCH``.
"""

from __future__ import annotations

import collections
import dataclasses
import time

import keras
import tensorflow as tf

from rigl.masking import measured_sparsities
from rigl.updaters import Updater, UpdateResult


class _SetBatch:
    """The ``data`` value meaning "batches come from ``set_batch``"."""

    def __repr__(self):
        return "SparseTraining.SET_BATCH"


class SparseTraining(keras.callbacks.Callback):
    """Runs an updater's mask updates at its scheduled steps during ``model.fit``.

    The step is ``optimizer.iterations`` (not the per-epoch ``batch`` index), so resumed runs
    and ``steps_per_execution > 1`` stay on schedule: an update whose step fell inside a
    multi-step execution runs at the start of the next one. Two updates cannot fall inside
    one execution: ``update_freq < steps_per_execution`` is rejected.

    Reading ``optimizer.iterations`` is a device-to-host copy, so it is read once at the
    start of training and of every epoch, and counted on the host in between: every call of
    ``on_train_batch_begin`` stands for one execution of ``steps_per_execution`` optimizer
    steps, as in ``model.fit`` (an execution cut short by the end of the data ends the
    epoch, and the count is read again at the next one). Before an update the count is
    checked against ``optimizer.iterations``, and the true step wins.

    Example:
        >>> updater = rigl.RigL(update_freq=100, drop_fraction=0.3)
        >>> model.fit(train_ds, epochs=5,
        ...           callbacks=[rigl.SparseTraining(updater, data=train_ds)])

    In a custom loop that drives the callback through a ``keras.callbacks.CallbackList``,
    RigL's gradient is best taken on the batch of the step itself: construct the callback
    with ``data=SparseTraining.SET_BATCH`` and hand it each step's batch before
    ``on_train_batch_begin``:

        >>> sparse = rigl.SparseTraining(updater, data=rigl.SparseTraining.SET_BATCH)
        >>> callbacks = keras.callbacks.CallbackList([sparse], model=model)
        >>> callbacks.on_train_begin()
        >>> for step, batch in enumerate(batches):
        ...     sparse.set_batch(batch)
        ...     callbacks.on_train_batch_begin(step)
        ...     train_step(batch)

    Args:
        updater: a ``rigl.Updater`` (Static, SET, SNFS, RigL, GradualPruning, SNIP).
        data: training batches ``(x, y[, sample_weight])`` for updaters that need a gradient
            (RigL, SNIP; an update draws ``updater.batches_per_update`` of them, n for
            ``RigL(grad_accumulation_n=n)``): a ``tf.data.Dataset`` (repeated and, under a
            strategy, distributed here), any iterable of batches, a function of no argument
            returning the batch to use, or ``SparseTraining.SET_BATCH``: the batch last given
            to ``set_batch`` (a custom loop's batch of the current step; the n last ones
            with gradient accumulation).
        loss_fn: ``loss_fn(y_true, y_pred)`` for those gradients; default: the compiled loss.
        log_dir: if given, TensorBoard summaries of every layer's sparsity, the drop
            fraction, the connections changed, the skipped updates and each update's wall
            time (``mask_update/seconds``; also in ``history``) are written there.
        total_steps: training length, for the default ``end_step`` (75% of training); by
            default taken from ``model.fit``'s epochs and steps per epoch.
    """

    SET_BATCH = _SetBatch()

    def __init__(self, updater: Updater, data=None, loss_fn=None, log_dir: str | None = None,
                 total_steps: int | None = None):
        super().__init__()
        if not isinstance(updater, Updater):
            raise ValueError(f"updater: expected a rigl.Updater, got {type(updater).__name__}.")
        if updater.needs_gradients and data is None:
            raise ValueError(
                f"data: {type(updater).__name__} grows by the dense gradient and needs training "
                "batches; pass data=<the training dataset>."
            )
        self.updater = updater
        self.data = data
        self.loss_fn = loss_fn
        self.log_dir = log_dir
        self.total_steps = total_steps
        self.history: list[UpdateResult] = []
        self._writer = None
        self._iterator = None
        # The last batches given to set_batch: as many as an update takes (grad accumulation).
        self._given = collections.deque(maxlen=max(1, updater.batches_per_update))

    def set_batch(self, batch) -> None:
        """Hands over the training batch of the coming step (``data=SET_BATCH`` only).

        Call it before ``on_train_batch_begin`` of that step; an update due there takes its
        gradient on ``batch`` (as given to ``strategy.run``: a distributed batch under a
        strategy). The callback keeps only the last ``updater.batches_per_update`` batches
        (one, or n for ``RigL(grad_accumulation_n=n)``, whose update averages the gradients
        of the n last batches given).

        Raises:
            ValueError: if the callback was constructed with other ``data``.
        """
        if self.data is not self.SET_BATCH:
            raise ValueError(f"data: set_batch needs data=SparseTraining.SET_BATCH; this "
                             f"callback draws its batches from {type(self.data).__name__}.")
        self._given.append(batch)

    def _fit_steps(self) -> int | None:
        params = self.params or {}
        steps, epochs = params.get("steps"), params.get("epochs")
        return steps * epochs if steps and epochs else None

    def on_train_begin(self, logs=None):
        per_execution = int(getattr(self.model, "steps_per_execution", 1) or 1)
        schedule = self.updater.schedule
        if (self.updater.changes_masks and schedule.begin_step != schedule.end_step
                and schedule.update_freq < per_execution):
            raise ValueError(
                f"update_freq: {schedule.update_freq} is smaller than the model's "
                f"steps_per_execution ({per_execution}); callbacks run once per execution, so "
                "updates would be lost. Use update_freq >= steps_per_execution.")
        self._per_execution = per_execution
        total = self.total_steps or self._fit_steps()
        self.updater.bind(self.model, self.model.optimizer, total_steps=total)
        step = self._read_step()
        # Updates scheduled before the current step already happened (resumed training).
        self._last_done = self.updater.last_update_step(step - 1)
        if self.updater.needs_gradients:
            self._iterator = self._batches()
        if self.log_dir:
            self._writer = tf.summary.create_file_writer(self.log_dir)
            self._write_sparsity(step)

    def _read_step(self) -> int:
        """Reads ``optimizer.iterations`` (a host sync) and restarts the host count from it."""
        self._step = int(self.model.optimizer.iterations.numpy())
        return self._step

    def on_epoch_begin(self, epoch, logs=None):
        self._read_step()

    def _batches(self):
        data = self.data
        if data is self.SET_BATCH:
            return _Calls(self._given_batch)
        if callable(data) and not isinstance(data, tf.data.Dataset):
            return _Calls(data)
        if isinstance(data, tf.data.Dataset):
            strategy = self.model.distribute_strategy
            data = strategy.experimental_distribute_dataset(data.repeat())
        return iter(data)

    def _given_batch(self):
        if not self._given:
            raise ValueError(f"data: {type(self.updater).__name__} needs the batch of the "
                             "step; call set_batch(batch) before on_train_batch_begin.")
        return self._given[-1]

    def _update_batches(self) -> dict:
        """The ``batch=`` or ``batches=`` argument of the coming update."""
        n = self.updater.batches_per_update
        if self._iterator is None:
            return {"batch": None}
        if n <= 1:
            return {"batch": next(self._iterator)}
        if self.data is self.SET_BATCH:
            if len(self._given) < n:
                raise ValueError(
                    f"data: {type(self.updater).__name__} averages the gradients of {n} "
                    f"batches; set_batch gave {len(self._given)} so far. Call set_batch at "
                    f"every step (the callback keeps the last {n}).")
            return {"batches": list(self._given)}
        return {"batches": [next(self._iterator) for _ in range(n)]}

    def on_train_batch_begin(self, batch, logs=None):
        step = self._step
        self._step += self._per_execution
        if not self._is_due(step):
            return
        true_step = int(self.model.optimizer.iterations.numpy())
        if true_step != step:  # a caller that does not step like model.fit: trust the optimizer
            self._step = true_step + self._per_execution
            if not self._is_due(true_step):
                return
            step = true_step
        due = self.updater.last_update_step(step)
        self._last_done = due
        started = time.perf_counter()
        result = self.updater.update(due, loss_fn=self.loss_fn, **self._update_batches())
        # The result holds host counts: the update has finished on the device.
        result = dataclasses.replace(result, seconds=time.perf_counter() - started)
        self.history.append(result)
        if self._writer is not None:
            self._write_update(result)

    def _is_due(self, step: int) -> bool:
        due = self.updater.last_update_step(step)
        return due is not None and (self._last_done is None or due > self._last_done)

    def _write_sparsity(self, step: int) -> None:
        with self._writer.as_default(step=step):
            for name, value in measured_sparsities(self.model).items():
                tf.summary.scalar(f"sparsity/{name}", value)

    def _write_update(self, result: UpdateResult) -> None:
        with self._writer.as_default(step=result.step):
            tf.summary.scalar("mask_update/drop_fraction", result.drop_fraction)
            tf.summary.scalar("mask_update/connections_changed", sum(result.changed.values()))
            for name, count in result.changed.items():
                tf.summary.scalar(f"connections_changed/{name}", count)
            tf.summary.scalar("mask_update/skipped_updates", self.updater.skipped_updates)
            tf.summary.scalar("mask_update/seconds", result.seconds)
        self._write_sparsity(result.step)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _Calls:
    """An endless iterator over the results of calling ``fn``."""

    def __init__(self, fn):
        self.fn = fn

    def __iter__(self):
        return self

    def __next__(self):
        return self.fn()

"""Mask updaters: Static, SET, SNFS, RigL, and the gradual-pruning and SNIP baselines.

Every method is one subclass of ``Updater`` that supplies scores through two hooks,
``drop_scores`` and ``grow_scores`` (and, for the dense-to-sparse baselines, how many
connections to drop and grow, ``counts``). The arithmetic is written once, in
``rigl.selection.drop_and_grow`` (re-exported here and as ``rigl.drop_and_grow``), following
"Rigging the Lottery" (Evci et al. 2020, https://arxiv.org/abs/1911.11134), Section 3:

* at an update step t with drop fraction f(t), each layer drops
  ``n = floor(f(t) * n_active)`` of its active connections with the lowest drop score
  (|w|), then grows ``n`` connections with the highest grow score among the positions it did
  not keep (a connection dropped in this update may come straight back; it then keeps its
  weight and optimizer state);
* truly new connections start at ``grow_init`` (zero by default) with all their optimizer
  slots zeroed; dropped ones are set to zero;
* ties break by position (lower flat index first), so updates are deterministic;
* an update whose weights or scores hold NaN/Inf changes nothing and is counted.

Updates run in one ``tf.function`` traced once (binding again to the same model, as every
``model.fit`` call does, keeps it), in the cross-replica context of the model's
distribution strategy: every replica's copy of a mask receives the same value, and random
scores come from stateless ops seeded by (seed, layer name, step), so every worker draws the
same numbers.

This module holds the hooks (``LayerView``, ``drop_scores``, ``grow_scores``,
``grow_scores_block``, ``counts``), binding to a model and optimizer, the compiled update and
the method classes. The update reads and writes each sparse weight only through its
``rigl.storage.Storage``: it asks the storage for the tensors the hooks see, lets it select
from the hooks' scores and hands the selection back, so a layer that stores its connections
differently plugs in there (``rigl/storage.py``), not here.

Two kinds of storage, one set of hooks. Dense (masked) storage: ``LayerView.weights`` and
``mask`` are in the kernel's shape and ``grow_scores`` gives a dense score tensor. Sparse
storage (``rigl.SparseDense``): ``weights``/``mask`` are the stored entries (values and their
alive flags, ``positions`` their flat kernel positions), so ``drop_scores`` and ``counts``
work unchanged, and grow scores come from ``grow_scores_block``, the scores of a block of
kernel rows, equal to the rows of what ``grow_scores`` would give: the storage walks the
kernel block by block and never holds a dense tensor. SET's random scores are the same
numbers in both (Philox draws addressed by flat position); RigL's block is the rows of the
dense gradient ``xᵀ · dy``, from the layer's recorded input and output gradient. SNFS cannot
run on sparse storage (it grows by the momentum of absent connections, which sparse storage
does not keep), nor can ``grow_init`` other than zeros (a draw per dense position).

Where a new updater plugs in: subclass ``Updater`` and override only ``grow_scores`` (and
``drop_scores`` or ``counts`` if the method needs them; ``RigL`` is a few lines), setting
``needs_gradients`` / ``needs_momentum`` when its scores read ``LayerView.gradient`` /
``LayerView.momentum``; then add its row to ``rigl.methods``.
"""

from __future__ import annotations

import abc
import dataclasses
import typing
import warnings
from collections.abc import Callable, Mapping
from typing import ClassVar

import keras
import numpy as np
import tensorflow as tf

from rigl import distributions, optimizer_state, sparse_layers
from rigl.schedules import (
    DropFraction,
    UpdateSchedule,
    _check_int,
    _check_real,
    polynomial_sparsity,
)
from rigl.seeds import stable_seed
from rigl.selection import drop_and_grow, drop_and_grow_checked  # noqa: F401 (re-exported)
from rigl.storage import Storage, StorageView, storages

GROW_INITS = ("zeros", "random_normal", "initial_value")


@dataclasses.dataclass
class LayerView:
    """What the score hooks see of one sparse weight at an update (tensors, inside the graph).

    The weights and mask come from the weight's storage (``rigl.storage.StorageView``); the
    rest from the updater.

    Attributes:
        index: position of the weight among the model's sparse weights.
        name: the weight's name (the layer's, or ``"<gru>/kernel"``...).
        weights: the kernel, zero where the mask is zero (dense storage), or the stored
            values ``(nnz,)`` (sparse storage).
        mask: the active ones, of the shape of ``weights`` (bool).
        step: the update step (int64 scalar).
        gradient: gradient of the loss for ``weights`` (updaters that need it): the dense
            kernel gradient, or the values' gradient (sparse storage).
        momentum: the optimizer's first-moment slot for the kernel (SNFS).
        shape: the kernel's dense shape (both storages).
        positions: sparse storage: flat kernel position of each stored entry (int64,
            increasing); None for dense storage.
        gradient_rows: sparse storage, updaters that need gradients: ``f(first_row, rows)``,
            the dense kernel gradient of rows ``[first_row, first_row + rows)``, flat
            (rows past the kernel's end are zero).
    """

    index: int
    name: str
    weights: tf.Tensor
    mask: tf.Tensor
    step: tf.Tensor
    gradient: tf.Tensor | None = None
    momentum: tf.Tensor | None = None
    shape: tuple[int, ...] = ()
    positions: tf.Tensor | None = None
    gradient_rows: Callable | None = None


class SparseGradient(typing.NamedTuple):
    """What RigL and SNIP need of a sparse-storage layer's gradient (tensors).

    Attributes:
        values: gradient of the loss for the stored values ``(nnz,)``.
        inputs: the layer's inputs on the batch, ``(batch, n_in)`` (replicas concatenated).
        output_gradients: gradient of the loss for the layer's output before bias and
            activation, ``(batch, n_out)``: the dense kernel gradient is
            ``inputsᵀ · output_gradients`` plus ``regularizer``.
        regularizer: gradient of the kernel regularizer's loss for the values ``(nnz,)``
            (zero without one, or with a custom ``loss_fn``), which the dense gradient holds
            at stored positions.
    """

    values: tf.Tensor
    inputs: tf.Tensor
    output_gradients: tf.Tensor
    regularizer: tf.Tensor


@dataclasses.dataclass(frozen=True)
class UpdateResult:
    """What one mask update did (host values).

    Attributes:
        step: the scheduled step of the update.
        drop_fraction: f(step) (0 for updaters without a drop fraction).
        changed: layer name -> number of connections that are new after the update.
        skipped: True when NaN/Inf weights or scores made the update a no-op.
        seconds: wall time of the update, its gradient batch included, as timed by the
            caller (``rigl.SparseTraining``); None when nobody timed it.
    """

    step: int
    drop_fraction: float
    changed: dict[str, int]
    skipped: bool
    seconds: float | None = None


def floor_count(fraction, n):
    """floor(fraction * n) as int32, robust to float error like ``distributions.num_zeros``."""
    # A Python float must become float64 directly: through float32, 0.9 * 640 floors to 575.
    if not isinstance(fraction, tf.Tensor | tf.Variable):
        fraction = tf.constant(fraction, tf.float64)
    product = tf.cast(fraction, tf.float64) * tf.cast(n, tf.float64)
    return tf.cast(tf.floor(tf.round(product * 1e6) / 1e6), tf.int32)


def uniform_block(seed, start, length: int, dtype=tf.float32):
    """Entries ``[start, start + length)`` of the flat ``tf.random.stateless_uniform(shape,
    seed)`` of any shape holding them, drawn without drawing the others.

    Stateless draws are counter-based (Philox on CPU and GPU): entry ``i`` is lane ``i % g``
    of the generator at counter ``c + i // g`` (``g`` = 4 for 32-bit and narrower types, 2
    for float64), so a block starts from the counter advanced by ``start // g``. SET's
    random scores are thus defined per dense position, and sparse storage draws the very
    numbers dense storage draws, block by block (``tests/test_sparse_storage.py`` checks it).

    Args:
        seed: int64 ``[2]``, as ``stateless_uniform`` takes.
        start: int64 scalar flat offset.
        length: Python int.
        dtype: float dtype.
    """
    dtype = tf.as_dtype(dtype)
    per_group = 2 if dtype == tf.float64 else 4
    key, counter = tf.raw_ops.StatelessRandomGetKeyCounter(seed=seed)
    start = tf.cast(start, tf.int64)
    group = start // per_group
    low = counter[0] + tf.cast(group, tf.uint64)
    carry = tf.cast(low < counter[0], tf.uint64)  # 128-bit counter: carry into the high word
    counter = tf.stack([low, counter[1] + carry])
    draw = tf.raw_ops.StatelessRandomUniformV2(
        shape=[length + per_group], key=key, counter=counter,
        alg=tf.raw_ops.StatelessRandomGetAlg(), dtype=dtype)
    skip = tf.cast(start - group * per_group, tf.int32)
    return draw[skip:skip + length]


def _gradient_rows(gradient: SparseGradient, positions, shape) -> Callable:
    """``f(first_row, rows)``: rows of the dense kernel gradient ``xᵀ · dy + regularizer``
    of a sparse-storage layer, flat; rows past the kernel's end are zero."""
    n_out = shape[1]
    inputs_t = tf.transpose(gradient.inputs)  # rows of the gradient are rows of xᵀ
    output_gradients = gradient.output_gradients

    def rows_of(first_row, rows):
        block = tf.matmul(inputs_t[first_row:first_row + rows], output_gradients)
        block = tf.pad(block, [[0, rows - tf.shape(block)[0]], [0, 0]])
        block = tf.reshape(block, [rows * n_out])
        start = tf.cast(first_row, tf.int64) * n_out
        bounds = tf.searchsorted(positions, tf.stack([start, start + rows * n_out]))
        local = positions[bounds[0]:bounds[1]] - start
        return tf.tensor_scatter_nd_add(block, tf.expand_dims(local, 1),
                                        gradient.regularizer[bounds[0]:bounds[1]])

    return rows_of


class Updater(abc.ABC):
    """Base of every mask updater: schedule, binding to a model, and the compiled update.

    Subclasses override ``grow_scores`` (and optionally ``drop_scores`` / ``counts``).

    Use with ``model.fit`` through ``rigl.SparseTraining(updater)``, or in a custom loop::

        updater.bind(model, optimizer, total_steps=10_000)
        for step, batch in enumerate(dataset):
            updater.maybe_update(step, batch)   # before the optimizer step `step`
            train_step(batch)

    Args:
        update_freq: ΔT, steps between mask updates (>= 1).
        begin_step: first update step.
        end_step: last step that may be an update step (default: 75% of training).
        drop_fraction: α, the initial drop fraction, in [0, 1].
        drop_fraction_decay: "cosine" (default), "constant" or "inverse_power".
        decay_power: exponent k of the "inverse_power" decay.
        grow_init: value of new connections: "zeros" (default), "random_normal" (normal with
            the standard deviation of the layer's active weights) or "initial_value" (a fixed
            draw from the layer's kernel initializer, made once when the updater is bound).
        seed: seed of every random choice of the updater.
    """

    name: ClassVar[str] = ""
    changes_masks: ClassVar[bool] = True
    needs_gradients: ClassVar[bool] = False
    needs_momentum: ClassVar[bool] = False
    # False for methods that never grow (their n_grow is always 0): no grow scores needed.
    grows: ClassVar[bool] = True
    # Why the method cannot grow on sparse storage, if it cannot (shown in bind's error).
    sparse_storage_error: ClassVar[str | None] = None

    def __init__(
        self,
        update_freq: int = 100,
        begin_step: int = 0,
        end_step: int | None = None,
        drop_fraction: float = 0.3,
        drop_fraction_decay: str = "cosine",
        decay_power: float = 1.0,
        grow_init: str = "zeros",
        seed: int = 0,
    ):
        self.schedule = UpdateSchedule(update_freq, begin_step, end_step)
        self.drop_fraction = DropFraction(drop_fraction, drop_fraction_decay, decay_power)
        if grow_init not in GROW_INITS:
            raise ValueError(f"grow_init: unknown {grow_init!r}; allowed: {GROW_INITS}.")
        self.grow_init = grow_init
        self.seed = _check_int("seed", seed, 0)
        self.skipped_updates = 0
        self._model = self._optimizer = self._binding = None

    # ----------------------------------------------------------------------------- hooks
    def drop_scores(self, layer: LayerView) -> tf.Tensor:
        """Score of keeping each connection (only active ones are compared): |w|."""
        return tf.abs(layer.weights)

    @abc.abstractmethod
    def grow_scores(self, layer: LayerView) -> tf.Tensor | None:
        """Score of growing each connection (only positions not kept are compared)."""

    def grow_scores_block(self, layer: LayerView, first_row: tf.Tensor, rows: int):
        """Sparse storage: grow scores of kernel rows ``[first_row, first_row + rows)``, flat
        (``rows * shape[1]``), equal to those rows of what ``grow_scores`` gives for the
        dense kernel. Rows past the kernel's end may hold any finite value.

        Methods that grow and can run on sparse storage override it.
        """
        raise NotImplementedError(f"{type(self).__name__} has no grow_scores_block.")

    @classmethod
    def runs_on_sparse_storage(cls) -> bool:
        """Whether the method can update sparse-storage layers (``rigl.SparseDense``)."""
        return cls.sparse_storage_error is None and (
            not cls.grows or cls.grow_scores_block is not Updater.grow_scores_block)

    def counts(self, layer: LayerView, drop_fraction: tf.Tensor):
        """(n_drop, n_grow) for a layer: both floor(f * n_active), so nnz never changes.

        Scalars, or (dense storage) int32 vectors with one count per output neuron (the
        kernel's last axis), each neuron then dropping and growing on its own
        (``rigl.selection.drop_and_grow``; SRigL's constant fan-in).
        """
        n_active = tf.reduce_sum(tf.cast(layer.mask, tf.int32))
        n = floor_count(drop_fraction, n_active)
        return n, n

    def layer_counts(self, layers: list[LayerView], drop_scores: list[tf.Tensor],
                     drop_fraction: tf.Tensor) -> list:
        """(n_drop, n_grow) of every layer at once: by default each layer's ``counts``.

        Methods whose counts depend on all layers together (GraNet's global magnitude
        pruning) override this one instead of ``counts``; ``drop_scores`` are the layers'
        ``drop_scores``, in the shapes of their ``weights``.
        """
        del drop_scores
        return [self.counts(layer, drop_fraction) for layer in layers]

    def current_drop_fraction(self, step: int) -> float:
        return self.drop_fraction(step, self.schedule.end())

    # --------------------------------------------------------------------------- binding
    def bind(self, model, optimizer=None, total_steps: int | None = None) -> Updater:
        """Attaches the updater to a sparsified ``model`` and its ``optimizer``.

        Builds the optimizer if needed (so that slots exist), resolves the default end step
        from ``total_steps`` and compiles the update function. Binding again to the same
        model and optimizer with the same configuration (``model.fit`` binds at every call)
        keeps the functions already traced.

        Raises:
            ValueError: naming ``model`` if it has no masked layer, ``optimizer`` if the
                method needs slots it lacks.
        """
        targets = storages(model)
        if not targets:
            raise ValueError(
                "model: has no masked layers; call rigl.sparsify(model, sparsity) first."
            )
        self._check_storages(targets)
        optimizer = optimizer if optimizer is not None else getattr(model, "optimizer", None)
        strategy = model.distribute_strategy
        with strategy.scope():
            if optimizer is not None and not optimizer_state.unwrap(optimizer).built:
                optimizer.build(model.trainable_variables)
        if total_steps is not None:
            self.schedule = self.schedule.resolve(total_steps)
        self._on_bind(targets)
        binding = self._binding_key()
        if (model is self._model and optimizer is self._optimizer
                and binding == self._binding):
            return self
        self._model, self._optimizer, self._targets = model, optimizer, targets
        self._strategy = strategy
        self._slots = [
            optimizer_state.slots(optimizer, target.variable) if optimizer else []
            for target in targets
        ]
        self._momenta = None
        if self.needs_momentum:
            if optimizer is None:
                raise ValueError(f"optimizer: {type(self).__name__} needs the optimizer's "
                                 "momentum; compile the model or pass optimizer=.")
            self._momenta = [optimizer_state.first_moment(optimizer, target.variable)
                             for target in targets]
        self._initial_values = None
        if self.grow_init == "initial_value":
            with strategy.scope():
                self._initial_values = [self._initial_draw(target) for target in targets]
        self._update_fn = tf.function(self._update_graph)
        self._gradient_fns = {}
        self._binding = binding
        return self

    def _check_storages(self, targets: list[Storage]) -> None:
        sparse = [target.name for target in targets if target.blockwise]
        if not sparse:
            return
        if not self.runs_on_sparse_storage():
            why = self.sparse_storage_error or "it defines no grow_scores_block"
            raise ValueError(f"model: layers {sparse} use sparse storage (rigl.SparseDense), "
                             f"where {type(self).__name__} cannot run: {why}. Use masked "
                             "storage (rigl.to_masked) or another method.")
        if self.grow_init != "zeros":
            raise ValueError(f"grow_init: {self.grow_init!r} draws a value per dense position; "
                             f"sparse storage (layers {sparse}) grows at zero only.")

    def _binding_key(self) -> str:
        """The public configuration the traced update depends on (schedule, seed, targets...):
        every attribute not starting with an underscore, except the skipped-update count."""
        return repr(sorted((name, value) for name, value in vars(self).items()
                           if not name.startswith("_") and name != "skipped_updates"))

    def _on_bind(self, targets: list[Storage]) -> None:  # noqa: B027 (optional, empty default)
        """Hook for subclasses that derive per-layer constants from the model's targets."""

    def _initial_draw(self, target: Storage):
        initializer = target.initializer
        config = initializer.get_config()
        if "seed" in config:
            config["seed"] = stable_seed(self.seed, target.name, "initial_value")
        initializer = type(initializer).from_config(config)
        return tf.Variable(initializer(target.shape, dtype=target.dtype), trainable=False,
                           name=f"{target.name}_initial_value")

    def _require_bound(self):
        if self._model is None:
            raise RuntimeError(f"{type(self).__name__}: call bind(model, optimizer) first.")

    @property
    def update_traces(self) -> int:
        """How many times the compiled update has been traced since the last (re)binding.

        1 after the first update of a run: updates never retrace (0 before any update)."""
        self._require_bound()
        return self._update_fn.experimental_get_tracing_count()

    @property
    def layer_names(self) -> list[str]:
        self._require_bound()
        return [layer.name for layer in self._targets]

    # -------------------------------------------------------------------------- schedule
    def is_update_step(self, step: int) -> bool:
        return self.schedule.is_update_step(step)

    def last_update_step(self, step: int) -> int | None:
        """The latest scheduled update at or before ``step`` (None if none)."""
        return self.schedule.last_update_step(step)

    # ------------------------------------------------------------------------- gradients
    def kernel_gradients(self, batch, loss_fn: Callable | None = None) -> list:
        """Dense gradients of the loss on ``batch`` for every masked kernel.

        Under a distribution strategy ``batch`` may be a per-replica value (from a
        distributed dataset); each replica's gradient is computed on its shard and the
        results are summed over replicas. A sparse-storage layer gets a ``SparseGradient``
        instead (the values' gradient and the factors of the dense one), never a dense
        tensor.

        Args:
            batch: ``(x, y)`` or ``(x, y, sample_weight)``.
            loss_fn: ``loss_fn(y_true, y_pred) -> scalar``; by default the compiled loss of
                the model (``model.compute_loss``, regularisation included).
        """
        self._require_bound()
        key = id(loss_fn)
        if key not in self._gradient_fns:
            self._gradient_fns[key] = tf.function(self._make_gradient_fn(loss_fn))
        with self._strategy.scope():
            return self._gradient_fns[key](batch)

    def _make_gradient_fn(self, loss_fn):
        model, strategy = self._model, self._strategy
        kernels = [target.variable for target in self._targets]
        sparse = [i for i, target in enumerate(self._targets) if target.blockwise]
        if loss_fn is None and getattr(model, "_compile_loss", None) is None:
            raise ValueError(
                f"loss_fn: {type(self).__name__} needs a loss for its gradients; compile the "
                "model with a loss or pass loss_fn=."
            )

        def replica_gradients(data):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            with tf.GradientTape() as tape, sparse_layers.record_products() as records:
                y_pred = model(x, training=True)
                if loss_fn is None:
                    loss = model.compute_loss(x, y, y_pred, sample_weight, training=True)
                else:
                    loss = loss_fn(y, y_pred)
            if not sparse:
                return tape.gradient(loss, kernels), [], [], []
            products = [records[self._targets[i].name] for i in sparse]
            grads = tape.gradient(loss, kernels + [z for _, z in products])
            inputs = [x for x, _ in products]
            output_grads = grads[len(kernels):]
            regularizers = [self._regularizer_gradient(self._targets[i].target, loss_fn)
                            for i in sparse]
            return grads[:len(kernels)], inputs, output_grads, regularizers

        def gradients(batch):
            grads, inputs, output_grads, regularizers = strategy.run(replica_gradients,
                                                                     args=(batch,))
            grads = [strategy.reduce("SUM", g, axis=None) for g in grads]
            for j, i in enumerate(sparse):
                grads[i] = SparseGradient(
                    grads[i], strategy.gather(inputs[j], axis=0),
                    strategy.gather(output_grads[j], axis=0),
                    strategy.reduce("SUM", regularizers[j], axis=None))
            return grads

        return gradients

    @staticmethod
    def _regularizer_gradient(layer, loss_fn):
        """Gradient of ``layer``'s kernel regularizer for its values: the part of the dense
        kernel gradient that ``xᵀ · dy`` lacks (the compiled loss includes it)."""
        values = layer.values
        if loss_fn is not None or layer.kernel_regularizer is None:
            return tf.zeros_like(tf.convert_to_tensor(values))
        with tf.GradientTape() as tape:
            penalty = layer.kernel_regularizer(values)
        return tape.gradient(penalty, values)

    # ---------------------------------------------------------------------------- update
    @property
    def batches_per_update(self) -> int:
        """Training batches an update takes its gradient on (RigL's ``grad_accumulation_n``;
        1 for every other method, 0 for methods without gradients)."""
        return 1 if self.needs_gradients else 0

    def maybe_update(self, step: int, batch=None, loss_fn=None,
                     batches=None) -> UpdateResult | None:
        """Runs the update scheduled at ``step``, if any (see ``update``)."""
        if not self.is_update_step(step):
            return None
        return self.update(step, batch=batch, loss_fn=loss_fn, batches=batches)

    def update(self, step: int, batch=None, loss_fn=None, gradients=None,
               batches=None) -> UpdateResult:
        """Updates every mask as scheduled at ``step``.

        Args:
            step: the (scheduled) step; drives the drop fraction and random seeds.
            batch: a training batch, for updaters that need gradients (RigL, SNIP).
            loss_fn: optional loss for those gradients (see ``kernel_gradients``).
            gradients: precomputed dense kernel gradients, instead of ``batch``.
            batches: instead of ``batch``, a sequence of ``batches_per_update`` batches
                whose gradients are averaged (``RigL(grad_accumulation_n=n)``).
        """
        self._require_bound()
        if self.needs_gradients and gradients is None:
            gradients = self._gradients_of(batch, batches, loss_fn)
        fraction = self.current_drop_fraction(step)
        with self._strategy.scope():
            changed, finite = self._update_fn(
                tf.constant(step, tf.int64), tf.constant(fraction, tf.float64),
                list(gradients) if self.needs_gradients else None,
            )
        skipped = not bool(finite)
        if skipped:
            self.skipped_updates += 1
            warnings.warn(
                f"{type(self).__name__}: NaN or Inf in weights or scores at step {step}; "
                f"masks left unchanged ({self.skipped_updates} skipped so far).",
                RuntimeWarning, stacklevel=2,
            )
        changed = [int(c) for c in np.asarray(changed)]
        return UpdateResult(int(step), float(fraction), dict(zip(self.layer_names, changed)),
                            skipped)

    def _gradients_of(self, batch, batches, loss_fn) -> list:
        """The gradients an update scores by: of ``batch``, or the mean over ``batches``."""
        n = self.batches_per_update
        name = type(self).__name__
        if batches is None:
            if batch is None:
                raise ValueError(
                    f"batch: {name} grows by the dense gradient and needs a training batch at "
                    "every update (SparseTraining(updater, data=...)).")
            if n == 1:
                return self.kernel_gradients(batch, loss_fn)
            raise ValueError(f"batches: {name} averages the gradients of {n} batches "
                             f"(grad_accumulation_n={n}); pass batches=[...] of {n}, not one "
                             "batch.")
        if batch is not None:
            raise ValueError("batch: pass either batch or batches, not both.")
        batches = list(batches)
        if len(batches) != n:
            raise ValueError(f"batches: {name} takes {n} batches per update, got "
                             f"{len(batches)}.")
        if n == 1:
            return self.kernel_gradients(batches[0], loss_fn)
        return _mean_gradients([self.kernel_gradients(b, loss_fn) for b in batches])

    def _layer_view(self, i, storage, state, step, gradients) -> LayerView:
        gradient = gradients[i] if gradients is not None else None
        gradient_rows = None
        if isinstance(gradient, SparseGradient):
            gradient_rows = _gradient_rows(gradient, state.positions, storage.shape)
            gradient = gradient.values
        return LayerView(
            index=i, name=storage.name, step=step, weights=state.weights, mask=state.mask,
            gradient=gradient,
            momentum=(tf.convert_to_tensor(self._momenta[i])
                      if self._momenta is not None else None),
            shape=storage.shape, positions=state.positions, gradient_rows=gradient_rows,
        )

    def _grow(self, storage: Storage, view: LayerView):
        """The grow scores ``storage.select`` takes: dense scores, or a block function."""
        if not storage.blockwise:
            return self.grow_scores(view)
        if not self.grows:
            return None
        return lambda first_row, rows: self.grow_scores_block(view, first_row, rows)

    def _update_graph(self, step, drop_fraction, gradients):
        stored: list[StorageView] = []
        views, drops, new_masks, finite = [], [], [], []
        for i, storage in enumerate(self._targets):
            state = storage.view()
            view = self._layer_view(i, storage, state, step, gradients)
            stored.append(state)
            views.append(view)
            drops.append(self.drop_scores(view))
        counts = self.layer_counts(views, drops, drop_fraction)
        for storage, state, view, drop, (n_drop, n_grow) in zip(
                self._targets, stored, views, drops, counts):
            grow = self._grow(storage, view)
            new, scores_finite = storage.select(state, drop, grow, n_drop, n_grow)
            new_masks.append(new)
            finite += [scores_finite, state.finite]
        # One NaN/Inf anywhere leaves every layer as it was: the storages get `ok` and select.
        ok = tf.reduce_all(tf.stack(finite))
        changed = []
        for i, (storage, state, view, new) in enumerate(
                zip(self._targets, stored, views, new_masks)):
            grown_values = None if self.grow_init == "zeros" else self._grow_values(i, view)
            changed.append(storage.apply(state, new, ok, grown_values, self._slots[i]))
        return tf.stack(changed), ok

    def _grow_values(self, i: int, view: LayerView) -> tf.Tensor:
        if self.grow_init == "zeros":
            return tf.zeros_like(view.weights)
        if self.grow_init == "initial_value":
            return tf.convert_to_tensor(self._initial_values[i])
        active = view.mask
        n_active = tf.maximum(tf.reduce_sum(tf.cast(active, view.weights.dtype)), 1.0)
        mean = tf.reduce_sum(view.weights) / n_active
        var = tf.reduce_sum(tf.where(active, (view.weights - mean) ** 2, 0.0)) / n_active
        seed = tf.stack([tf.constant(stable_seed(self.seed, view.name, "grow_init"), tf.int64),
                         view.step])
        return tf.random.stateless_normal(view.weights.shape, seed, stddev=tf.sqrt(var),
                                          dtype=view.weights.dtype)

    def __repr__(self):
        return (f"{type(self).__name__}(schedule={self.schedule}, "
                f"drop_fraction={self.drop_fraction}, grow_init={self.grow_init!r}, "
                f"seed={self.seed})")


class Static(Updater):
    """Static sparse training: the initial random masks never change."""

    name = "static"
    changes_masks = False
    grows = False

    def __init__(self, seed: int = 0):
        super().__init__(seed=seed)

    def grow_scores(self, layer):
        return None

    def counts(self, layer, drop_fraction):
        zero = tf.constant(0, tf.int32)
        return zero, zero

    def current_drop_fraction(self, step: int) -> float:
        return 0.0

    def is_update_step(self, step: int) -> bool:
        return False

    def last_update_step(self, step: int) -> int | None:
        return None


class SET(Updater):
    """Sparse Evolutionary Training (Mocanu et al. 2018): grow at uniformly random positions."""

    name = "set"

    def _seed(self, layer):
        return tf.stack([tf.constant(stable_seed(self.seed, layer.name, "set"), tf.int64),
                         layer.step])

    def grow_scores(self, layer):
        return tf.random.stateless_uniform(layer.weights.shape, self._seed(layer),
                                           dtype=layer.weights.dtype)

    def grow_scores_block(self, layer, first_row, rows):
        start = tf.cast(first_row, tf.int64) * layer.shape[1]
        return uniform_block(self._seed(layer), start, rows * layer.shape[1],
                             layer.weights.dtype)


class SNFS(Updater):
    """Sparse Networks From Scratch (Dettmers & Zettlemoyer 2019): grow by |momentum|.

    The momentum is the optimizer's own first-moment slot, which accumulates the dense
    gradient here because masked kernels receive dense gradients.
    """

    name = "snfs"
    needs_momentum = True
    sparse_storage_error = ("it grows by the momentum of absent connections, and sparse "
                            "storage keeps optimizer slots for stored entries only")

    def grow_scores(self, layer):
        return tf.abs(layer.momentum)


def _mean_gradients(per_batch: list[list]) -> list:
    """The mean of several batches' ``kernel_gradients``, layer by layer. A sparse-storage
    layer's factors are concatenated, the output gradients scaled by 1/n, so that
    ``inputsᵀ · output_gradients`` is the mean of the batches' dense gradients."""
    n = len(per_batch)
    mean = []
    for grads in zip(*per_batch):
        if isinstance(grads[0], SparseGradient):
            mean.append(SparseGradient(
                tf.add_n([g.values for g in grads]) / n,
                tf.concat([g.inputs for g in grads], 0),
                tf.concat([g.output_gradients for g in grads], 0) / n,
                tf.add_n([g.regularizer for g in grads]) / n))
        else:
            mean.append(tf.add_n(list(grads)) / n)
    return mean


class RigL(Updater):
    """RigL (Evci et al. 2020): grow where the dense gradient's magnitude is largest.

    Args:
        grad_accumulation_n: grow scores from the mean of the dense gradients of this many
            training batches instead of one (``grad_accumulation_n`` of rigl-torch and
            condensed-sparsity, a larger batch for the grow criterion). Each update then
            takes ``batches=[...]`` of n batches (``batches_per_update``), all at the
            current weights; the reference implementations average the gradients of the n
            training steps before the update instead (their backward hooks see them for
            free; an updater here sees no training step). n = 1 is plain RigL, bit for bit.
        drop_noise_std: standard deviation of a normal noise added to the drop scores |w|
            (stateless, seeded by the seed, the layer and the step), as the reference's TF1
            ``SparseRigLOptimizer`` adds N(0, 1e-5) "for slight bit of randomness"
            (google-research/rigl ``sparse_optimizers.py``). 0 (default): none, ties break
            by position.
        (the rest): see ``Updater``.
    """

    name = "rigl"
    needs_gradients = True

    def __init__(self, update_freq: int = 100, begin_step: int = 0,
                 end_step: int | None = None, drop_fraction: float = 0.3,
                 drop_fraction_decay: str = "cosine", decay_power: float = 1.0,
                 grow_init: str = "zeros", grad_accumulation_n: int = 1, seed: int = 0,
                 drop_noise_std: float = 0.0):
        super().__init__(update_freq, begin_step, end_step, drop_fraction, drop_fraction_decay,
                         decay_power, grow_init, seed)
        self.grad_accumulation_n = _check_int("grad_accumulation_n", grad_accumulation_n, 1)
        self.drop_noise_std = _check_real("drop_noise_std", drop_noise_std, 0.0, float("inf"),
                                          high_open=True)

    @property
    def batches_per_update(self) -> int:
        return self.grad_accumulation_n

    def drop_scores(self, layer):
        scores = tf.abs(layer.weights)
        if not self.drop_noise_std:
            return scores
        seed = tf.stack([tf.constant(stable_seed(self.seed, layer.name, "drop_noise"), tf.int64),
                         layer.step])
        return scores + tf.random.stateless_normal(tf.shape(scores), seed,
                                                   stddev=self.drop_noise_std, dtype=scores.dtype)

    def grow_scores(self, layer):
        return tf.abs(layer.gradient)

    def grow_scores_block(self, layer, first_row, rows):
        return tf.abs(layer.gradient_rows(first_row, rows))


class _DenseToSparse(Updater):
    """Base of the baselines that start dense and prune to per-layer targets.

    The model is sparsified with ``sparsity=0`` (all-ones masks) and the targets come from
    the distribution at bind time, over the model's masked layers.
    """

    grows = False

    def __init__(self, sparsity: float, distribution: str = "uniform",
                 custom_sparsity: Mapping[str, float] | None = None,
                 erk_power_scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.sparsity = distributions.validate_sparsity(sparsity, "sparsity")
        if distribution not in distributions.DISTRIBUTIONS:
            raise ValueError(f"distribution: unknown {distribution!r}; allowed: "
                             f"{distributions.DISTRIBUTIONS}.")
        self.distribution = distribution
        self.custom_sparsity = dict(custom_sparsity or {})
        self.erk_power_scale = erk_power_scale

    def _on_bind(self, layers):
        shapes = {layer.name: layer.shape for layer in layers}
        self.target_sparsities = distributions.layer_sparsities(
            shapes, self.sparsity, self.distribution, self.custom_sparsity,
            self.erk_power_scale)
        for layer in layers:
            size = int(np.prod(layer.shape))
            target = size - distributions.num_zeros(self.target_sparsities[layer.name], size)
            active = layer.active_count()
            if active < target:
                raise ValueError(
                    f"model: layer {layer.name!r} has {active} active connections, fewer than "
                    f"the {target} that {type(self).__name__} keeps at sparsity "
                    f"{self.target_sparsities[layer.name]:.4f}; sparsify the model with "
                    "sparsity=0 for dense-to-sparse methods."
                )

    def grow_scores(self, layer):
        return None

    def current_drop_fraction(self, step):
        self.schedule.end()  # validates that the schedule is complete
        return 0.0

    def _target_active(self, layer, sparsity):
        size = int(np.prod(layer.shape))
        return tf.cast(size, tf.int32) - floor_count(sparsity, size)


class GradualPruning(_DenseToSparse):
    """Gradual magnitude pruning (Zhu & Gupta 2017, https://arxiv.org/abs/1710.01878).

    Every ``update_freq`` steps from ``begin_step`` to ``end_step`` (and at ``end_step``),
    each layer keeps its connections of largest |w| so that its sparsity follows
    s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t_end - t0))^3.
    """

    name = "prune"

    def __init__(self, sparsity: float, distribution: str = "uniform",
                 custom_sparsity: Mapping[str, float] | None = None,
                 erk_power_scale: float = 1.0, initial_sparsity: float = 0.0,
                 update_freq: int = 100, begin_step: int = 0, end_step: int | None = None,
                 seed: int = 0):
        super().__init__(sparsity, distribution, custom_sparsity, erk_power_scale,
                         update_freq=update_freq, begin_step=begin_step, end_step=end_step,
                         seed=seed)
        self.initial_sparsity = distributions.validate_sparsity(initial_sparsity,
                                                                "initial_sparsity")
        self.schedule = dataclasses.replace(self.schedule, include_end_step=True)

    def layer_sparsity(self, name: str, step: int) -> float:
        """The scheduled sparsity of layer ``name`` at ``step``."""
        return polynomial_sparsity(step, self.target_sparsities[name], self.initial_sparsity,
                                   self.schedule.begin_step, self.schedule.end())

    def counts(self, layer, drop_fraction):
        begin = float(self.schedule.begin_step)
        end = float(self.schedule.end())
        final = self.target_sparsities[layer.name]
        t = tf.cast(layer.step, tf.float64)
        progress = tf.clip_by_value((t - begin) / max(end - begin, 1.0), 0.0, 1.0)
        sparsity = final + (self.initial_sparsity - final) * (1.0 - progress) ** 3
        n_active = tf.reduce_sum(tf.cast(layer.mask, tf.int32))
        target = self._target_active(layer, sparsity)
        return tf.maximum(n_active - target, 0), tf.constant(0, tf.int32)


class SNIP(_DenseToSparse):
    """SNIP (Lee et al. 2019, https://arxiv.org/abs/1810.02340): one-shot pruning at start.

    At ``begin_step`` (default 0) each layer keeps the connections with the largest
    |w * dL/dw| on one training batch, as many as its target sparsity allows.
    """

    name = "snip"
    needs_gradients = True

    def __init__(self, sparsity: float, distribution: str = "uniform",
                 custom_sparsity: Mapping[str, float] | None = None,
                 erk_power_scale: float = 1.0, begin_step: int = 0, seed: int = 0):
        super().__init__(sparsity, distribution, custom_sparsity, erk_power_scale,
                         update_freq=1, begin_step=begin_step, end_step=begin_step, seed=seed)

    def drop_scores(self, layer):
        return tf.abs(layer.weights * layer.gradient)

    def counts(self, layer, drop_fraction):
        n_active = tf.reduce_sum(tf.cast(layer.mask, tf.int32))
        target = self._target_active(layer, self.target_sparsities[layer.name])
        return tf.maximum(n_active - target, 0), tf.constant(0, tf.int32)

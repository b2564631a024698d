"""Mask updaters: Static, SET, SNFS, RigL, and the gradual-pruning and SNIP baselines.

Every method is one subclass of ``Updater`` that supplies scores through two hooks,
``drop_scores`` and ``grow_scores`` (and, for the dense-to-sparse baselines, how many
connections to drop and grow, ``counts``). The arithmetic is written once, in
``drop_and_grow``, following "Rigging the Lottery" (Evci et al. 2020,
https://arxiv.org/abs/1911.11134), Section 3:

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
"""

from __future__ import annotations

import abc
import dataclasses
import warnings
from collections.abc import Callable, Mapping
from typing import ClassVar

import keras
import numpy as np
import tensorflow as tf

from rigl import distributions, optimizer_state
from rigl.masking import masked_weights
from rigl.schedules import DropFraction, UpdateSchedule, _check_int, polynomial_sparsity
from rigl.seeds import stable_seed

GROW_INITS = ("zeros", "random_normal", "initial_value")


@dataclasses.dataclass
class LayerView:
    """What the score hooks see of one masked layer at an update (tensors, inside the graph).

    Attributes:
        index: position of the layer among the model's masked layers.
        name: the layer's name.
        weights: the kernel (zero where the mask is zero).
        mask: the current mask (bool, kernel's shape).
        step: the update step (int64 scalar).
        gradient: dense gradient of the loss for the kernel (updaters that need it).
        momentum: the optimizer's first-moment slot for the kernel (SNFS).
    """

    index: int
    name: str
    weights: tf.Tensor
    mask: tf.Tensor
    step: tf.Tensor
    gradient: tf.Tensor | None = None
    momentum: tf.Tensor | None = None


@dataclasses.dataclass(frozen=True)
class UpdateResult:
    """What one mask update did (host values).

    Attributes:
        step: the scheduled step of the update.
        drop_fraction: f(step) (0 for updaters without a drop fraction).
        changed: layer name -> number of connections that are new after the update.
        skipped: True when NaN/Inf weights or scores made the update a no-op.
    """

    step: int
    drop_fraction: float
    changed: dict[str, int]
    skipped: bool


def floor_count(fraction, n):
    """floor(fraction * n) as int32, robust to float error like ``distributions.num_zeros``."""
    # A Python float must become float64 directly: through float32, 0.9 * 640 floors to 575.
    if not isinstance(fraction, tf.Tensor | tf.Variable):
        fraction = tf.constant(fraction, tf.float64)
    product = tf.cast(fraction, tf.float64) * tf.cast(n, tf.float64)
    return tf.cast(tf.floor(tf.round(product * 1e6) / 1e6), tf.int32)


# ------------------------------------------------------------------------------ selection
#
# Every update selects, per layer, the k largest of n scores twice (what to keep, what to
# grow), with ties to the lower index. A stable sort does that in O(n log n) on one core; the
# radix selection below is the same function in a few linear passes: int32 keys that order
# like the scores, a 2^16-bucket histogram of the keys' high halves to find the bucket of the
# k-th largest key, a histogram of the low halves within that bucket to find the key itself
# (the threshold T), then "key > T, or key == T and among the first ties by index". The
# elementwise passes are compiled with XLA (fused into one pass each); the histograms and the
# compaction stay ordinary TensorFlow ops, which XLA compiles badly on CPU (scatter) or not
# at all (dynamic shapes). k is a tensor: nothing depends on its value at trace time.

_RADIX_BITS = 16
_RADIX_BINS = 1 << _RADIX_BITS
# Scores of these types convert to float32 exactly and in order, so they use the radix
# selection; any other type (float64) falls back to a stable sort.
_RADIX_DTYPES = (tf.float32, tf.float16, tf.bfloat16)
# Below this many scores a sort is faster than the radix selection's fixed cost (two 2^16-bucket
# histograms, ~0.5 ms on CPU); both compute the same function. Layers this small also skip XLA.
_RADIX_MIN_SIZE = 1 << 13
_SHORT_HISTOGRAM = 1 << 16
_SMALLEST_NORMAL = 0x00800000  # bits of the smallest positive normal float32


def _order_keys(scores):
    """int32 keys ordered like the float32 ``scores`` as TensorFlow compares them.

    IEEE floats are sign-magnitude, so the magnitude bits order non-negative floats and their
    negation orders negative ones. Subnormals (and -0.0) become 0: TensorFlow's kernels run
    with denormals flushed to zero, so the sort this replaces saw them all equal to zero.
    """
    bits = tf.bitcast(scores, tf.int32)
    magnitude = tf.maximum(tf.bitwise.bitwise_and(bits, 0x7FFFFFFF), _SMALLEST_NORMAL - 1)
    magnitude -= _SMALLEST_NORMAL - 1
    return tf.where(bits < 0, -magnitude, magnitude)


_NEG_INF_KEY = -(0x7F800000 - (_SMALLEST_NORMAL - 1))  # _order_keys(-inf)


_FLAT = tf.TensorSpec([None], tf.float32)
_FLAT_BOOL = tf.TensorSpec([None], tf.bool)
_FLAT_INT = tf.TensorSpec([None], tf.int32)
_INT = tf.TensorSpec([], tf.int32)

# The per-layer pieces are tf.functions of flat tensors of any length, traced once and
# called for every layer: an update of ResNet-50 (54 layers, two selections each) would
# otherwise build tens of thousands of graph ops. XLA still compiles each length it meets.


@tf.function(jit_compile=True, input_signature=[_FLAT, _FLAT_BOOL])
def _keys_of(scores, include):
    """Keys of ``where(include, scores, -inf)``, their high halves as bucket numbers in
    [0, 2^16), and whether every score (included or not) is finite."""
    keys = tf.where(include, _order_keys(scores), _NEG_INF_KEY)
    high = tf.bitwise.right_shift(keys, _RADIX_BITS) + _RADIX_BINS // 2
    return keys, high, tf.reduce_all(tf.math.is_finite(scores))


@tf.function(jit_compile=True, input_signature=[_FLAT_INT, _INT, _INT])
def _keys_at_or_above(keys, threshold, last_tie):
    """``keys > threshold``, or ``== threshold`` at flat index <= ``last_tie``."""
    index = tf.range(tf.size(keys))
    return (keys > threshold) | ((keys == threshold) & (index <= last_tie))


# The helpers below hold no Python control flow on tensors: autograph would only slow their
# tracing (an update traces them once per layer and selection).
_plain = tf.autograph.experimental.do_not_convert


@_plain
def _histogram_bucket(histogram, k):
    """The highest bucket b with at least ``k`` entries at or above it, and the number of
    entries still to take from b (``k`` minus the entries above b).

    Two levels of 256 buckets each, because a cumulative sum over all 2^16 buckets is a slow
    serial scan on CPU.
    """
    rows = tf.reshape(histogram, [256, _RADIX_BINS // 256])
    row_totals = tf.reduce_sum(rows, axis=1)
    at_or_above = tf.cumsum(row_totals, reverse=True)
    row = tf.maximum(tf.reduce_sum(tf.cast(at_or_above >= k, tf.int32)) - 1, 0)
    counts = tf.gather(rows, row)
    at_or_above = tf.cumsum(counts, reverse=True) + (
        tf.gather(at_or_above, row) - tf.gather(row_totals, row))
    column = tf.maximum(tf.reduce_sum(tf.cast(at_or_above >= k, tf.int32)) - 1, 0)
    remaining = k - (tf.gather(at_or_above, column) - tf.gather(counts, column))
    return row * (_RADIX_BINS // 256) + column, remaining, tf.gather(counts, column)


@_plain
def _histogram(values):
    """Counts of each value of ``values`` in [0, 2^16).

    DenseBincount (multithreaded) has a fixed cost of ~0.2 ms on CPU; a scatter-add
    (unsorted_segment_sum) takes ~0.05-0.1 ms below 2^16 values but ~1 ms from 2^16 on,
    where it switches to a parallel path: the first for long inputs, the second for short
    ones (LeNet-300-100's second layer, 30,000 weights; the second pass, over one bucket).
    DenseBincount gets a constant size: ``tf.math.bincount`` would also compute
    ``max(values)``, one more pass.
    """
    return tf.cond(
        tf.size(values) < _SHORT_HISTOGRAM,
        lambda: tf.math.unsorted_segment_sum(tf.ones_like(values), values, _RADIX_BINS),
        lambda: tf.raw_ops.DenseBincount(input=values, size=_RADIX_BINS,
                                         weights=tf.zeros([0], tf.int32)))


# Not inlined into the update's graph: 100 inlined copies (two per layer) would make graph
# optimisation at the first update take seconds.
@tf.function(input_signature=[_FLAT_INT, _FLAT_INT, _INT],
             experimental_attributes={"_noinline": True})
def _select(keys, high, k):
    """Mask of the ``k`` largest ``keys`` (ties -> lower index), ``high`` their buckets."""
    n = tf.size(keys)
    k = tf.clip_by_value(tf.cast(k, tf.int32), 0, n)
    high_bucket, need, _ = _histogram_bucket(_histogram(high), k)
    low = tf.bitwise.bitwise_and(tf.boolean_mask(keys, tf.equal(high, high_bucket)),
                                 _RADIX_BINS - 1)
    low_bucket, rest, ties = _histogram_bucket(_histogram(low), need)
    threshold = (high_bucket - _RADIX_BINS // 2) * _RADIX_BINS + low_bucket
    # Only when some but not all of the keys equal to T fit is the index of the last one
    # taken needed (one more pass); k == 0 selects nothing.
    last_tie = tf.cond(
        rest >= ties,
        lambda: n,
        lambda: tf.cast(tf.gather(tf.where(tf.equal(keys, threshold))[:, 0],
                                  tf.maximum(rest - 1, 0)), tf.int32))
    threshold = tf.where(k > 0, threshold, tf.int32.max)
    last_tie = tf.where(k > 0, last_tie, -1)
    return _keys_at_or_above(keys, threshold, last_tie)


@_plain
def _top_k_mask_sorted(scores, k):
    n = tf.size(scores)
    order = tf.argsort(scores, direction="DESCENDING", stable=True)
    ranks = tf.scatter_nd(order[:, None], tf.range(n), [n])
    return ranks < k


@_plain
def _masked_top_k(scores, k, include):
    """``top_k_mask(where(include, scores, -inf), k)`` and whether all scores are finite."""
    size = scores.shape.num_elements()
    if scores.dtype not in _RADIX_DTYPES or (size is not None and size < _RADIX_MIN_SIZE):
        masked = tf.where(include, scores, tf.constant(-np.inf, scores.dtype))
        return _top_k_mask_sorted(masked, k), tf.reduce_all(tf.math.is_finite(scores))
    keys, high, finite = _keys_of(tf.cast(scores, tf.float32), include)
    return _select(keys, high, tf.cast(k, tf.int32)), finite


@_plain
def top_k_mask(scores, k):
    """Boolean mask of the ``k`` largest entries of flat ``scores``; ties -> lower index.

    The same function as a stable descending sort cut after ``k`` entries, in linear time
    (a radix selection, see above); ``k`` is an int32 tensor, clipped to [0, size].
    """
    return _masked_top_k(scores, k, tf.ones_like(scores, tf.bool))[0]


@_plain
def _drop_and_grow(active, drop_scores, grow_scores, n_drop, n_grow):
    """``drop_and_grow`` on a boolean ``active`` mask; also returns whether the scores were
    all finite."""
    n_active = tf.reduce_sum(tf.cast(active, tf.int32))
    kept, finite = _masked_top_k(drop_scores, n_active - n_drop, active)
    if grow_scores is None:
        return kept, finite
    grown, grow_finite = _masked_top_k(grow_scores, n_grow, tf.logical_not(kept))
    return tf.logical_or(kept, grown), tf.logical_and(finite, grow_finite)


@_plain
def drop_and_grow(mask, drop_scores, grow_scores, n_drop, n_grow):
    """The one drop-and-grow routine every updater uses (flat tensors).

    Keeps the ``n_active - n_drop`` active positions with the highest ``drop_scores``, then
    grows ``n_grow`` positions with the highest ``grow_scores`` among those not kept. Ties
    break by position (lower flat index first).

    Args:
        mask: flat boolean tensor (0/1 numbers work too: nonzero is active).
        drop_scores: flat scores; higher means more worth keeping (only active ones count).
        grow_scores: flat scores; higher means more worth growing, or None if n_grow is 0.
        n_drop: int32 scalar, 0 <= n_drop <= n_active.
        n_grow: int32 scalar, 0 <= n_grow <= size - (n_active - n_drop).

    Returns:
        The new flat boolean mask.
    """
    return _drop_and_grow(tf.cast(mask, tf.bool), drop_scores, grow_scores, n_drop, n_grow)[0]


@_plain
def _is_finite(tensor):
    return tf.reduce_all(tf.math.is_finite(tensor))


@_plain
def _apply_update(new, ok, mask, weights, grown_values, slots):
    """The new kernel, mask and optimizer slots of one layer, fused into one pass.

    ``new`` is the selected mask, used only if ``ok`` (otherwise the mask stays); kept and
    regrown connections keep their weight and slots, truly new ones (born) start at
    ``grown_values`` (None: zero) with zeroed slots, dropped ones become zero.
    """
    active = tf.cast(mask, tf.bool)
    new = tf.logical_and(new, ok) | tf.logical_and(active, tf.logical_not(ok))
    born = tf.logical_and(new, tf.logical_not(active))
    zeros = tf.zeros_like(weights)
    weights = tf.where(new, weights, zeros)
    if grown_values is not None:
        weights = tf.where(born, tf.cast(grown_values, weights.dtype), weights)
    else:
        weights = tf.where(born, zeros, weights)
    slots = [tf.where(born, tf.zeros_like(slot), slot) for slot in slots]
    return weights, tf.cast(new, mask.dtype), slots, tf.reduce_sum(tf.cast(born, tf.int32))


_is_finite_xla = tf.function(_is_finite, jit_compile=True, reduce_retracing=True)
_apply_update_xla = tf.function(_apply_update, jit_compile=True, reduce_retracing=True)


def _fused(function, compiled, tensor):
    """``compiled`` (XLA) for large flat tensors, where fusing the passes pays; ``function``
    inline for small ones, where compiling each new size would cost more than it saves."""
    size = tensor.shape.num_elements()
    return function if size is not None and size < _RADIX_MIN_SIZE else compiled


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

    def counts(self, layer: LayerView, drop_fraction: tf.Tensor):
        """(n_drop, n_grow) for a layer: both floor(f * n_active), so nnz never changes."""
        n_active = tf.reduce_sum(tf.cast(layer.mask, tf.int32))
        n = floor_count(drop_fraction, n_active)
        return n, n

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
        layers = masked_weights(model)
        if not layers:
            raise ValueError(
                "model: has no masked layers; call rigl.sparsify(model, sparsity) first."
            )
        optimizer = optimizer if optimizer is not None else getattr(model, "optimizer", None)
        strategy = model.distribute_strategy
        with strategy.scope():
            if optimizer is not None and not optimizer_state.unwrap(optimizer).built:
                optimizer.build(model.trainable_variables)
        if total_steps is not None:
            self.schedule = self.schedule.resolve(total_steps)
        self._on_bind(layers)
        binding = self._binding_key()
        if (model is self._model and optimizer is self._optimizer
                and binding == self._binding):
            return self
        self._model, self._optimizer, self._targets = model, optimizer, layers
        self._strategy = strategy
        self._slots = [
            optimizer_state.slots(optimizer, layer.masked_kernel) if optimizer else []
            for layer in layers
        ]
        self._momenta = None
        if self.needs_momentum:
            if optimizer is None:
                raise ValueError(f"optimizer: {type(self).__name__} needs the optimizer's "
                                 "momentum; compile the model or pass optimizer=.")
            self._momenta = [optimizer_state.first_moment(optimizer, layer.masked_kernel)
                             for layer in layers]
        self._initial_values = None
        if self.grow_init == "initial_value":
            with strategy.scope():
                self._initial_values = [self._initial_draw(layer) for layer in layers]
        self._update_fn = tf.function(self._update_graph)
        self._gradient_fns = {}
        self._binding = binding
        return self

    def _binding_key(self) -> str:
        """The public configuration the traced update depends on (schedule, seed, targets...):
        every attribute not starting with an underscore, except the skipped-update count."""
        return repr(sorted((name, value) for name, value in vars(self).items()
                           if not name.startswith("_") and name != "skipped_updates"))

    def _on_bind(self, layers) -> None:  # noqa: B027 (optional hook, empty by default)
        """Hook for subclasses that derive per-layer constants from the model."""

    def _initial_draw(self, layer):
        initializer = layer.initializer
        config = initializer.get_config()
        if "seed" in config:
            config["seed"] = stable_seed(self.seed, layer.name, "initial_value")
        initializer = type(initializer).from_config(config)
        kernel = layer.masked_kernel
        return tf.Variable(initializer(kernel.shape, dtype=kernel.dtype), trainable=False,
                           name=f"{layer.name}_initial_value")

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
    def kernel_gradients(self, batch, loss_fn: Callable | None = None) -> list[tf.Tensor]:
        """Dense gradients of the loss on ``batch`` for every masked kernel.

        Under a distribution strategy ``batch`` may be a per-replica value (from a
        distributed dataset); each replica's gradient is computed on its shard and the
        results are summed over replicas.

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
        kernels = [layer.masked_kernel for layer in self._targets]
        if loss_fn is None and getattr(model, "_compile_loss", None) is None:
            raise ValueError(
                f"loss_fn: {type(self).__name__} needs a loss for its gradients; compile the "
                "model with a loss or pass loss_fn=."
            )

        def replica_gradients(data):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                if loss_fn is None:
                    loss = model.compute_loss(x, y, y_pred, sample_weight, training=True)
                else:
                    loss = loss_fn(y, y_pred)
            return tape.gradient(loss, kernels)

        def gradients(batch):
            per_replica = strategy.run(replica_gradients, args=(batch,))
            return [strategy.reduce("SUM", g, axis=None) for g in per_replica]

        return gradients

    # ---------------------------------------------------------------------------- update
    def maybe_update(self, step: int, batch=None, loss_fn=None) -> UpdateResult | None:
        """Runs the update scheduled at ``step``, if any (see ``update``)."""
        if not self.is_update_step(step):
            return None
        return self.update(step, batch=batch, loss_fn=loss_fn)

    def update(self, step: int, batch=None, loss_fn=None, gradients=None) -> UpdateResult:
        """Updates every mask as scheduled at ``step``.

        Args:
            step: the (scheduled) step; drives the drop fraction and random seeds.
            batch: a training batch, for updaters that need gradients (RigL, SNIP).
            loss_fn: optional loss for those gradients (see ``kernel_gradients``).
            gradients: precomputed dense kernel gradients, instead of ``batch``.
        """
        self._require_bound()
        if self.needs_gradients and gradients is None:
            if batch is None:
                raise ValueError(
                    f"batch: {type(self).__name__} grows by the dense gradient and needs a "
                    "training batch at every update (SparseTraining(updater, data=...))."
                )
            gradients = self.kernel_gradients(batch, loss_fn)
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

    def _update_graph(self, step, drop_fraction, gradients):
        flat = lambda t: None if t is None else tf.reshape(t, [-1])  # noqa: E731
        views, new_masks, finite = [], [], []
        for i, layer in enumerate(self._targets):
            view = LayerView(
                index=i, name=layer.name, step=step,
                weights=tf.convert_to_tensor(layer.masked_kernel),
                mask=tf.convert_to_tensor(layer.mask),
                gradient=gradients[i] if gradients is not None else None,
                momentum=(tf.convert_to_tensor(self._momenta[i])
                          if self._momenta is not None else None),
            )
            drop, grow = self.drop_scores(view), self.grow_scores(view)
            n_drop, n_grow = self.counts(view, drop_fraction)
            new, scores_finite = _drop_and_grow(flat(view.mask), flat(drop), flat(grow),
                                                n_drop, n_grow)
            views.append(view)
            new_masks.append(new)
            weights = flat(view.weights)
            finite += [scores_finite, _fused(_is_finite, _is_finite_xla, weights)(weights)]
        ok = tf.reduce_all(tf.stack(finite))
        changed = []
        for i, (layer, view, new) in enumerate(zip(self._targets, views, new_masks)):
            # Computed unconditionally and selected with `ok`: assignments inside tf.cond
            # branches are fragile on distributed variables, and this runs every ΔT steps.
            slots = self._slots[i]
            grown_values = None if self.grow_init == "zeros" else self._grow_values(i, view)
            weights, mask, slot_values, born = _fused(_apply_update, _apply_update_xla, new)(
                new, ok, flat(view.mask), flat(view.weights), flat(grown_values),
                [flat(tf.convert_to_tensor(slot)) for slot in slots])
            shape = view.mask.shape
            layer.masked_kernel.assign(tf.reshape(weights, shape))
            layer.mask.assign(tf.reshape(mask, shape))
            for slot, value in zip(slots, slot_values):
                slot.assign(tf.reshape(value, shape))
            changed.append(born)
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

    def grow_scores(self, layer):
        seed = tf.stack([tf.constant(stable_seed(self.seed, layer.name, "set"), tf.int64),
                         layer.step])
        return tf.random.stateless_uniform(layer.weights.shape, seed, dtype=layer.weights.dtype)


class SNFS(Updater):
    """Sparse Networks From Scratch (Dettmers & Zettlemoyer 2019): grow by |momentum|.

    The momentum is the optimizer's own first-moment slot, which accumulates the dense
    gradient here because masked kernels receive dense gradients.
    """

    name = "snfs"
    needs_momentum = True

    def grow_scores(self, layer):
        return tf.abs(layer.momentum)


class RigL(Updater):
    """RigL (Evci et al. 2020): grow where the dense gradient's magnitude is largest."""

    name = "rigl"
    needs_gradients = True

    def grow_scores(self, layer):
        return tf.abs(layer.gradient)


class _DenseToSparse(Updater):
    """Base of the baselines that start dense and prune to per-layer targets.

    The model is sparsified with ``sparsity=0`` (all-ones masks) and the targets come from
    the distribution at bind time, over the model's masked layers.
    """

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
        shapes = {layer.name: tuple(layer.mask.shape) for layer in layers}
        self.target_sparsities = distributions.layer_sparsities(
            shapes, self.sparsity, self.distribution, self.custom_sparsity,
            self.erk_power_scale)
        for layer in layers:
            size = int(np.prod(layer.mask.shape))
            target = size - distributions.num_zeros(self.target_sparsities[layer.name], size)
            active = int(np.count_nonzero(keras.ops.convert_to_numpy(layer.mask)))
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
        size = int(np.prod(layer.mask.shape))
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

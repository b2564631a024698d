"""How an updater reads and writes the connections of a sparse weight: the storage seam.

An updater never touches a layer's variables. For each sparse weight of the model (a
*target*) it holds a ``Storage``, asks it for a ``StorageView`` (what the score hooks see),
lets it select the positions to keep and to grow (``select``, on ``rigl.selection``) from the
hooks' scores, and hands the selection back to ``Storage.apply``, which writes the result:
kept connections keep their weight and optimizer slots, truly new ones start at the grow
values with zeroed slots, dropped ones disappear. How a target stores its connections is the
storage's own business. Two storages exist:

* ``MaskedStorage`` serves a ``rigl.layers.MaskedWeight`` (a dense kernel, zero where
  inactive, plus a boolean mask). Its view is the kernel and mask in the kernel's shape; the
  hooks return dense scores; ``apply`` writes kernel, mask and slots from one fused pass,
  compiled with XLA for large kernels.
* ``SparseStorage`` serves a ``rigl.sparse_layers.SparseDense`` (values, positions and an
  ``alive`` flag per stored entry; no dense tensor). Its view holds the stored entries only
  (``weights`` = values, ``mask`` = alive, ``positions`` = flat positions), so the drop hook
  and ``counts`` work on them unchanged; the grow scores of positions not stored are asked
  for in blocks of kernel rows (``Updater.grow_scores_block``) and a running top-k keeps
  the best candidates, so an update holds O(nnz + block) memory, never the dense kernel.
  ``apply`` rebuilds the entries in row-major order and permutes values and slots with them.

Where a new storage plugs in: subclass ``Storage`` (``view``, ``select``, ``apply``,
``active_count`` and the attributes it documents), map its target type to it in
``STORAGES``, and have ``rigl.masking.sparse_weights(model)`` list its targets. The
updaters and the methods (``rigl/updaters.py``, ``rigl/methods.py``) need no change: a storage with
``blockwise = False`` gives dense views and gets dense scores, one with ``blockwise = True``
gives stored entries and gets scores of row blocks.
"""

from __future__ import annotations

import abc
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from rigl import selection
from rigl.layers import MaskedWeight
from rigl.masking import sparse_weights
from rigl.sparse_layers import SparseDense


@dataclasses.dataclass(frozen=True)
class StorageView:
    """One target's state at an update, as the updater and its score hooks read it (tensors,
    inside the graph).

    Attributes:
        weights: what the storage holds of the weights: the kernel, zero where inactive
            (dense storage), or the stored values ``(nnz,)`` (sparse storage).
        mask: the active ones, of the shape of ``weights`` (bool, or numbers with nonzero
            active).
        finite: boolean scalar, True when every stored weight is finite.
        positions: sparse storage only: the flat (row-major) kernel position of each stored
            entry, int64 ``(nnz,)``, strictly increasing; None for dense storage.
    """

    weights: tf.Tensor
    mask: tf.Tensor
    finite: tf.Tensor
    positions: tf.Tensor | None = None


class Storage(abc.ABC):
    """How one target stores its connections (see the module docstring).

    Attributes:
        name: the target's name (the key of masks and sparsity maps).
        shape: the dense shape of the kernel the positions index.
        dtype: the weights' dtype.
        variable: the trainable variable holding the weights: the optimizer's slots for it
            follow the connections. Dense storage: the kernel, whose gradient is the dense
            gradient RigL and SNIP score by. Sparse storage: the values.
        initializer: the kernel's initializer (for ``grow_init="initial_value"``).
        blockwise: False: the view is dense and ``select`` takes dense grow scores. True:
            the view holds stored entries only and ``select`` takes a function giving the
            grow scores of a block of kernel rows (see ``SparseStorage.select``).
    """

    name: str
    shape: tuple[int, ...]
    dtype: object
    variable: object
    initializer: object
    blockwise: bool = False

    @abc.abstractmethod
    def active_count(self) -> int:
        """The number of active connections (host value; read at bind time)."""

    @abc.abstractmethod
    def view(self) -> StorageView:
        """Reads the target's state for one update (inside the update's graph)."""

    @abc.abstractmethod
    def select(self, view: StorageView, drop_scores, grow_scores, n_drop, n_grow):
        """Selects the connections to keep and grow (``rigl.selection`` semantics).

        Keeps the ``n_active - n_drop`` active entries of highest ``drop_scores`` (of the
        shape of ``view.weights``), then grows ``n_grow`` positions of highest grow score
        among those not kept; ties break by flat kernel position, lower first.

        Returns:
            ``(selection, finite)``: what ``apply`` takes, and a boolean scalar that is False
            when a score was NaN/Inf.
        """

    @abc.abstractmethod
    def apply(self, view: StorageView, selection, ok, grown_values, slots) -> tf.Tensor:
        """Writes the result of an update and returns the number of truly new connections.

        Args:
            view: what ``view`` returned at this update (the state the selection read).
            selection: what ``select`` returned (dense storage: the flat boolean mask of the
                positions to keep and grow).
            ok: boolean scalar; when False the state is left as it was (NaN/Inf somewhere).
            grown_values: values of new connections in the kernel's shape, or None for zero.
            slots: the optimizer's slot variables for ``variable``; zeroed at new
                connections.

        Returns:
            int32 scalar: connections active after the update that were not before.
        """


def _flat(tensor):
    return None if tensor is None else tf.reshape(tensor, [-1])


# The passes below hold no Python control flow on tensors: autograph would only slow tracing.
_plain = tf.autograph.experimental.do_not_convert


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
    inline for small ones (below ``selection.RADIX_MIN_SIZE``), where compiling each new
    length would cost more than it saves."""
    size = tensor.shape.num_elements()
    return function if size is not None and size < selection.RADIX_MIN_SIZE else compiled


class MaskedStorage(Storage):
    """A dense kernel plus a boolean mask (``rigl.layers.MaskedWeight``).

    The view is the kernel and mask variables as read at the update; ``apply`` computes the
    new kernel, mask and slots in one pass and assigns them. Outside updates the layer's
    constraint keeps the kernel zero where the mask is False.
    """

    def __init__(self, target: MaskedWeight):
        self.target = target
        self.name = target.name
        self.shape = tuple(target.mask.shape)
        self.dtype = target.masked_kernel.dtype
        self.variable = target.masked_kernel
        self.initializer = target.initializer

    def active_count(self) -> int:
        return int(np.count_nonzero(keras.ops.convert_to_numpy(self.target.mask)))

    def view(self) -> StorageView:
        weights = tf.convert_to_tensor(self.target.masked_kernel)
        flat = _flat(weights)
        return StorageView(weights=weights, mask=tf.convert_to_tensor(self.target.mask),
                           finite=_fused(_is_finite, _is_finite_xla, flat)(flat))

    def select(self, view, drop_scores, grow_scores, n_drop, n_grow):
        return selection.drop_and_grow_checked(
            tf.cast(_flat(view.mask), tf.bool), _flat(drop_scores), _flat(grow_scores),
            n_drop, n_grow)

    def apply(self, view, new, ok, grown_values, slots):
        # Computed unconditionally and selected with `ok`: assignments inside tf.cond branches
        # are fragile on distributed variables, and this runs every ΔT steps.
        weights, mask, slot_values, born = _fused(_apply_update, _apply_update_xla, new)(
            new, ok, _flat(view.mask), _flat(view.weights), _flat(grown_values),
            [_flat(tf.convert_to_tensor(slot)) for slot in slots])
        shape = view.mask.shape
        self.target.masked_kernel.assign(tf.reshape(weights, shape))
        self.target.mask.assign(tf.reshape(mask, shape))
        for slot, value in zip(slots, slot_values):
            slot.assign(tf.reshape(value, shape))
        return born


# Grow scores are asked for in blocks of whole kernel rows holding about this many positions
# (16 MiB of float32 scores): small next to any layer too large to hold densely, large
# enough that per-block overheads vanish (docs/truly_sparse.md).
BLOCK_SIZE = 1 << 22


@dataclasses.dataclass(frozen=True)
class SparseSelection:
    """What ``SparseStorage.select`` chose (tensors).

    Attributes:
        kept: boolean ``(nnz,)``: the stored entries kept.
        grown: int64 flat positions grown, increasing (none of them kept; a just-dropped
            entry's position may be among them).
    """

    kept: tf.Tensor
    grown: tf.Tensor


def _reduce_candidates(positions, scores, k):
    """The ``k`` best of the candidates (ties to the earlier one: candidates are in flat
    order), in flat order."""
    keep = selection.top_k_mask(scores, k)
    return tf.boolean_mask(positions, keep), tf.boolean_mask(scores, keep)


class SparseStorage(Storage):
    """Values, positions and alive flags of a ``rigl.sparse_layers.SparseDense``.

    No dense tensor exists at an update either: memory O(nnz + BLOCK_SIZE). Drop works on
    the stored entries (kept = top ``n_active - n_drop`` of the drop scores among alive
    entries, in flat order, so ties break by position as in dense storage). Grow walks the
    kernel in blocks of whole rows: the grow function gives the scores of a block, stored
    positions kept are excluded, the scores that beat the running k-th best join a
    candidate buffer, and the buffer is cut back to ``n_grow`` (the radix top-k) when
    it outgrows ``2 · n_grow``. The result is exactly the dense selection's: the ``n_grow``
    highest scores among positions not kept, ties to the lower position.
    """

    blockwise = True

    def __init__(self, target: SparseDense):
        self.target = target
        self.name = target.name
        self.shape = tuple(target.kernel_shape)
        self.dtype = target.values.dtype
        self.variable = target.values
        self.initializer = target.kernel_initializer
        n_in, n_out = self.shape
        self.block_rows = max(1, min(n_in, BLOCK_SIZE // max(n_out, 1)))

    def active_count(self) -> int:
        return self.target.active_count()

    def view(self) -> StorageView:
        target = self.target
        values = tf.convert_to_tensor(target.values)
        rows = tf.cast(tf.convert_to_tensor(target.rows), tf.int64)
        cols = tf.cast(tf.convert_to_tensor(target.cols), tf.int64)
        return StorageView(weights=values, mask=tf.convert_to_tensor(target.alive),
                           finite=_is_finite(values), positions=rows * self.shape[1] + cols)

    def select(self, view, drop_scores, grow_scores, n_drop, n_grow):
        """``grow_scores``: None (the method never grows) or ``f(first_row, rows)``, the
        flat scores of kernel rows ``[first_row, first_row + rows)`` (``rows`` a Python int;
        rows past the kernel's end may hold any finite value)."""
        alive = tf.cast(view.mask, tf.bool)
        n_active = tf.reduce_sum(tf.cast(alive, tf.int32))
        kept, finite = selection.masked_top_k(drop_scores, n_active - n_drop, alive)
        if grow_scores is None:
            return SparseSelection(kept, tf.zeros([0], tf.int64)), finite
        grown, grow_finite = self._grow(tf.boolean_mask(view.positions, kept), grow_scores,
                                        n_grow)
        return SparseSelection(kept, grown), tf.logical_and(finite, grow_finite)

    def _grow(self, kept_positions, grow_scores, n_grow):
        n_in, n_out = self.shape
        size = n_in * n_out
        rows = self.block_rows
        length = rows * n_out
        n_blocks = -(-n_in // rows)
        k = tf.cast(n_grow, tf.int32)
        offsets = tf.range(length, dtype=tf.int64)

        def body(block, positions, scores, threshold, finite):
            first_row = block * rows
            start = tf.cast(first_row, tf.int64) * n_out
            block_scores = tf.reshape(grow_scores(first_row, rows), [length])
            flat = start + offsets
            lo = tf.searchsorted(kept_positions, tf.reshape(start, [1]))[0]
            hi = tf.searchsorted(kept_positions, tf.reshape(start + length, [1]))[0]
            taken = kept_positions[lo:hi] - start
            include = tf.tensor_scatter_nd_update(
                flat < size, tf.expand_dims(taken, 1), tf.zeros_like(taken, tf.bool))
            # Every score above the running k-th best joins the candidates (no top-k per
            # block: with n_grow in the hundreds of thousands that selection dominated an
            # update); one equal to it loses to it (it comes later), so it cannot enter.
            chosen = tf.logical_and(include, block_scores > threshold)
            block_finite = tf.reduce_all(tf.math.is_finite(block_scores))
            positions = tf.concat([positions, tf.boolean_mask(flat, chosen)], 0)
            scores = tf.concat([scores, tf.boolean_mask(block_scores, chosen)], 0)

            def cut():
                best_positions, best_scores = _reduce_candidates(positions, scores, k)
                return best_positions, best_scores, tf.reduce_min(best_scores)

            positions, scores, threshold = tf.cond(
                tf.size(scores) > 2 * k, cut, lambda: (positions, scores, threshold))
            return block + 1, positions, scores, threshold, tf.logical_and(finite,
                                                                           block_finite)

        dtype = self.dtype
        _, positions, scores, _, finite = tf.while_loop(
            lambda block, *_: block < n_blocks, body,
            (tf.constant(0), tf.zeros([0], tf.int64), tf.zeros([0], dtype),
             tf.constant(-np.inf, dtype), tf.constant(True)),
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None]),
                              tf.TensorShape([None]), tf.TensorShape([]),
                              tf.TensorShape([])),
            parallel_iterations=1)
        positions, _ = _reduce_candidates(positions, scores, k)
        return positions, finite

    def apply(self, view, chosen: SparseSelection, ok, grown_values, slots):
        """Rebuilds the entries: kept ones and regrown ones (grown at the position of an
        entry alive before) carry their value and slots to their new index; truly new ones
        start at zero with zero slots; entries left over (fewer connections than ``nnz``,
        after pruning) become dead: zero, not alive, at distinct positions no connection
        uses. ``grown_values`` must be None (zero): other grow values need a dense draw."""
        if grown_values is not None:
            raise ValueError(f"grow_init: sparse storage (layer {self.name!r}) grows new "
                             "connections at zero only.")
        n_out = self.shape[1]
        old_positions, alive = view.positions, tf.cast(view.mask, tf.bool)
        nnz = tf.size(old_positions)
        index = tf.range(nnz)
        grown = chosen.grown
        at = tf.minimum(tf.searchsorted(old_positions, grown), tf.maximum(nnz - 1, 0))
        same = tf.equal(tf.gather(old_positions, at), grown)
        carried = tf.logical_and(same, tf.gather(alive, at))
        active_positions = tf.concat([tf.boolean_mask(old_positions, chosen.kept), grown], 0)
        active_source = tf.concat([tf.boolean_mask(index, chosen.kept),
                                   tf.where(carried, at, -1)], 0)
        # Old positions that no connection uses any more host the dead entries.
        used = tf.logical_or(chosen.kept, tf.scatter_nd(
            tf.expand_dims(tf.boolean_mask(at, same), 1),
            tf.ones_like(tf.boolean_mask(at, same), tf.bool), [nnz]))
        n_dead = nnz - tf.size(active_positions)
        dead_positions = tf.boolean_mask(old_positions, tf.logical_not(used))[:n_dead]
        positions = tf.concat([active_positions, dead_positions], 0)
        source = tf.concat([active_source, -tf.ones([n_dead], tf.int32)], 0)
        new_alive = tf.range(nnz) < tf.size(active_positions)
        order = tf.argsort(positions, stable=True)
        positions, source = tf.gather(positions, order), tf.gather(source, order)
        new_alive = tf.gather(new_alive, order)
        has_source = source >= 0
        safe = tf.maximum(source, 0)

        def carry(old):
            old = tf.convert_to_tensor(old)
            return tf.where(has_source, tf.gather(old, safe), tf.zeros_like(old))

        born = tf.reduce_sum(tf.cast(tf.logical_and(new_alive, tf.logical_not(has_source)),
                                     tf.int32))
        keep = lambda new, old: tf.where(ok, new, old)  # noqa: E731
        target = self.target
        target.rows.assign(keep(tf.cast(positions // n_out, tf.int32), target.rows))
        target.cols.assign(keep(tf.cast(positions % n_out, tf.int32), target.cols))
        target.alive.assign(keep(new_alive, alive))
        target.values.assign(keep(carry(view.weights), view.weights))
        for slot in slots:
            value = tf.convert_to_tensor(slot)
            slot.assign(keep(carry(value), value))
        return tf.where(ok, born, 0)


# Target type -> its storage. A new kind of sparse weight adds its row here.
STORAGES: dict[type, type[Storage]] = {MaskedWeight: MaskedStorage, SparseDense: SparseStorage}


def storage_for(target) -> Storage:
    """The storage serving ``target``, chosen by the target's type (``STORAGES``).

    Raises:
        TypeError: naming ``target`` when no storage serves its type.
    """
    for kind, storage in STORAGES.items():
        if isinstance(target, kind):
            return storage(target)
    raise TypeError(f"target: no storage serves {type(target).__name__}; known target types: "
                    f"{[kind.__name__ for kind in STORAGES]}.")


def storages(model) -> list[Storage]:
    """A storage for every sparse weight of ``model``, in model order
    (``rigl.sparse_weights``)."""
    return [storage_for(target) for target in sparse_weights(model)]

"""Top-k selection and the one drop-and-grow routine every updater uses.

What this module holds:

* ``top_k_mask(scores, k)``: boolean mask of the ``k`` largest entries of flat ``scores``,
  ties to the lower index. It is exactly the function of ``top_k_mask_sorted`` (a stable
  descending sort cut after ``k`` entries), computed by a radix selection in a few linear
  passes for ``RADIX_MIN_SIZE`` scores or more and by that sort below.
* ``masked_top_k(scores, k, include)``: the same among the ``include``d positions only, and
  whether every score (included or not) was finite.
* ``drop_and_grow(mask, drop_scores, grow_scores, n_drop, n_grow)``: the drop-and-grow step of
  "Rigging the Lottery" (Evci et al. 2020, https://arxiv.org/abs/1911.11134, Section 3) as two
  selections: keep the active positions of highest drop score, then grow the positions of
  highest grow score among those not kept. ``drop_and_grow_checked`` also reports whether the
  scores were finite (an updater skips the update otherwise).
* ``grouped_top_k`` and per-group counts in ``drop_and_grow``: the same selections within
  groups of positions (a kernel's output neurons), for methods that drop and grow per neuron.
* ``compiled_traces()``: how often the compiled pieces of the selection have been traced.

Everything here works on flat tensors and knows nothing of layers, optimizers or storage:
a new updater supplies scores (``rigl/updaters.py``) and a new storage hands its scores over
flat (``rigl/storage.py``); neither changes this module. A faster selection plugs in behind
``masked_top_k`` and must equal ``top_k_mask_sorted`` (``tests/test_selection.py`` checks it
on ties, ±0, subnormals, ±inf and every k).

How the radix selection works: int32 keys that order like the scores, a 2^16-bucket
histogram of the keys' high halves to find the bucket of the k-th largest key, a histogram of
the low halves within that bucket to find the key itself (the threshold T), then "key > T, or
key == T and among the first ties by index". The elementwise passes are compiled with XLA
(fused into one pass each); the histograms and the compaction stay ordinary TensorFlow ops,
which XLA compiles badly on CPU (scatter) or not at all (dynamic shapes). ``k`` is a tensor:
nothing depends on its value at trace time. The measurements behind each threshold and choice
are in ``docs/performance.md`` ("The selection").
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

_RADIX_BITS = 16
_RADIX_BINS = 1 << _RADIX_BITS
# Scores of these types convert to float32 exactly and in order, so they use the radix
# selection; any other type (float64) falls back to the stable sort.
_RADIX_DTYPES = (tf.float32, tf.float16, tf.bfloat16)

RADIX_MIN_SIZE = 1 << 13
"""Below this many scores the selection uses the stable sort, which is faster there than the
radix selection's fixed cost (docs/performance.md); both compute the same function. Passes
over tensors this small also skip XLA (``rigl/storage.py``), where compiling each new length
would cost more than it saves."""

# Histograms of fewer values than this use a scatter-add, longer ones DenseBincount: each is
# the faster one on its side of this length (docs/performance.md).
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
# called for every layer: an update of a large model (two selections per layer) would
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

    A scatter-add (unsorted_segment_sum) for short inputs, DenseBincount (multithreaded, with
    a fixed cost) for long ones: see ``_SHORT_HISTOGRAM``. DenseBincount gets a constant
    size: ``tf.math.bincount`` would also compute ``max(values)``, one more pass.
    """
    return tf.cond(
        tf.size(values) < _SHORT_HISTOGRAM,
        lambda: tf.math.unsorted_segment_sum(tf.ones_like(values), values, _RADIX_BINS),
        lambda: tf.raw_ops.DenseBincount(input=values, size=_RADIX_BINS,
                                         weights=tf.zeros([0], tf.int32)))


# Not inlined into the update's graph: inlined copies (two per layer) would make graph
# optimisation at the first update slow (docs/performance.md).
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


_COMPILED = {"keys_of": _keys_of, "keys_at_or_above": _keys_at_or_above, "select": _select}


def compiled_traces() -> dict[str, int]:
    """How many times each compiled piece of the radix selection has been traced.

    The pieces take flat tensors of any length, so each is traced once per process whatever
    the layers (XLA still compiles each new length); a count that grows during training means
    the selection retraces.

    Returns:
        Piece name (``"keys_of"``, ``"keys_at_or_above"``, ``"select"``) -> trace count.
    """
    return {name: piece.experimental_get_tracing_count() for name, piece in _COMPILED.items()}


@_plain
def top_k_mask_sorted(scores, k):
    """The reference selection: a stable descending sort of flat ``scores`` cut after ``k``.

    ``top_k_mask`` is this function; this one is O(n log n) and serves small inputs and
    float64 scores.

    Args:
        scores: flat float tensor.
        k: int32 scalar in [0, size].

    Returns:
        Flat boolean mask of the ``k`` largest scores, ties to the lower index.
    """
    n = tf.size(scores)
    order = tf.argsort(scores, direction="DESCENDING", stable=True)
    ranks = tf.scatter_nd(order[:, None], tf.range(n), [n])
    return ranks < k


@_plain
def masked_top_k(scores, k, include):
    """``top_k_mask(where(include, scores, -inf), k)`` and whether all scores are finite.

    Args:
        scores: flat float tensor (float32, float16 and bfloat16 take the radix selection from
            ``RADIX_MIN_SIZE`` entries on; other types always take the sort).
        k: int32 scalar; clipped to [0, size] on the radix path.
        include: flat boolean tensor; excluded positions count as -inf.

    Returns:
        ``(mask, finite)``: the flat boolean mask of the ``k`` largest included scores, ties
        to the lower index, and a boolean scalar, True when every score (included or not) is
        finite.
    """
    size = scores.shape.num_elements()
    if scores.dtype not in _RADIX_DTYPES or (size is not None and size < RADIX_MIN_SIZE):
        masked = tf.where(include, scores, tf.constant(-np.inf, scores.dtype))
        return top_k_mask_sorted(masked, k), tf.reduce_all(tf.math.is_finite(scores))
    keys, high, finite = _keys_of(tf.cast(scores, tf.float32), include)
    return _select(keys, high, tf.cast(k, tf.int32)), finite


@_plain
def top_k_mask(scores, k):
    """Boolean mask of the ``k`` largest entries of flat ``scores``; ties -> lower index.

    The same function as ``top_k_mask_sorted``, in linear time from ``RADIX_MIN_SIZE``
    entries on.

    Example:
        >>> top_k_mask(tf.constant([0.5, 2.0, 0.5, 1.0]), tf.constant(2)).numpy()
        array([False,  True, False,  True])

    Args:
        scores: flat float tensor.
        k: int32 scalar tensor, clipped to [0, size].
    """
    return masked_top_k(scores, k, tf.ones_like(scores, tf.bool))[0]


def _by_group(flat, groups: int):
    """Flat ``(size,)`` -> ``(groups, size // groups)``: row j holds positions p % groups == j
    (for a row-major kernel, its last axis: the output neurons)."""
    return tf.transpose(tf.reshape(flat, [-1, groups]))


def _flat_from_groups(grouped):
    return tf.reshape(tf.transpose(grouped), [-1])


@_plain
def grouped_top_k(scores, k, include):
    """Per row, the mask of the ``k[row]`` largest included scores, ties to the lower index.

    Every row is ``masked_top_k`` of its own: ``scores`` and ``include`` are ``(groups, m)``,
    ``k`` an int32 vector ``(groups,)``, clipped to [0, included entries of the row]. One
    stable sort per row (``tf.math.top_k`` order: equal scores keep their index order), so
    O(size log m); per-row counts do not fit the flat radix selection, and the rows of the
    kernels constant fan-in runs on (SRigL) are short.

    Returns:
        ``(mask, finite)``: the boolean ``(groups, m)`` mask, and True when every score
        (included or not) is finite.
    """
    masked = tf.where(include, scores, tf.constant(-np.inf, scores.dtype))
    order = tf.argsort(masked, axis=1, direction="DESCENDING", stable=True)
    ranks = tf.argsort(order, axis=1, stable=True)  # the rank of every entry in its row
    included = tf.reduce_sum(tf.cast(include, tf.int32), axis=1)
    k = tf.clip_by_value(tf.cast(k, tf.int32), 0, included)
    return ranks < k[:, None], tf.reduce_all(tf.math.is_finite(scores))


@_plain
def _grouped_drop_and_grow(active, drop_scores, grow_scores, n_drop, n_grow):
    groups = n_drop.shape[0]
    active = _by_group(active, groups)
    n_active = tf.reduce_sum(tf.cast(active, tf.int32), axis=1)
    kept, finite = grouped_top_k(_by_group(drop_scores, groups), n_active - n_drop, active)
    if grow_scores is not None:
        grown, grow_finite = grouped_top_k(_by_group(grow_scores, groups), n_grow,
                                           tf.logical_not(kept))
        kept, finite = tf.logical_or(kept, grown), tf.logical_and(finite, grow_finite)
    return _flat_from_groups(kept), finite


@_plain
def drop_and_grow_checked(active, drop_scores, grow_scores, n_drop, n_grow):
    """``drop_and_grow`` on a flat boolean ``active`` mask, and whether the scores were finite.

    Returns:
        ``(new_mask, finite)``: the new flat boolean mask, and a boolean scalar that is True
        when every drop and grow score is finite (an update with False changes nothing).
    """
    n_drop = tf.convert_to_tensor(n_drop)
    if n_drop.shape.rank == 1:  # per-group counts (see drop_and_grow)
        return _grouped_drop_and_grow(active, drop_scores, grow_scores, n_drop,
                                      tf.convert_to_tensor(n_grow))
    n_active = tf.reduce_sum(tf.cast(active, tf.int32))
    kept, finite = masked_top_k(drop_scores, n_active - n_drop, active)
    if grow_scores is None:
        return kept, finite
    grown, grow_finite = masked_top_k(grow_scores, n_grow, tf.logical_not(kept))
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
        n_drop: int32 scalar, 0 <= n_drop <= n_active; or an int32 vector of ``groups``
            counts, one per group (group j: the flat positions p with p % groups == j, the
            output neurons of a row-major kernel), each group then dropping and growing
            on its own (``grouped_top_k``; constant fan-in, ``rigl.SRigL``).
        n_grow: int32 scalar, 0 <= n_grow <= size - (n_active - n_drop); a vector with a
            vector ``n_drop``.

    Returns:
        The new flat boolean mask.
    """
    return drop_and_grow_checked(tf.cast(mask, tf.bool), drop_scores, grow_scores, n_drop,
                                 n_grow)[0]

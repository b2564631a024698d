"""Truly sparse Keras layers: ``SparseDense`` stores only its active weights.

A masked layer (``rigl.layers``) keeps a dense kernel and a dense mask: a 99.9%-sparse layer
costs what the dense one costs. ``SparseDense`` keeps, for a kernel of shape
``(n_in, n_out)``, only its ``nnz`` entries:

* ``values`` (trainable, float, ``(nnz,)``): the weights; the optimizer's slots have this
  shape too;
* ``rows``, ``cols`` (non-trainable, int32, ``(nnz,)``): their positions, strictly increasing
  in row-major (flat) order ``row * n_out + col``, so no position repeats and updates break
  ties by flat position exactly as the masked layers do;
* ``alive`` (non-trainable, bool, ``(nnz,)``): which entries are active connections. The
  length ``nnz`` never changes (positions change, not the length, so optimizer slots keep
  their shape); a method that prunes (gradual pruning, SNIP) marks entries dead instead, and
  a constraint keeps dead values at zero, as the masked layers' constraint does;
* ``bias`` as in ``keras.layers.Dense``.

Memory is O(nnz): no dense kernel, mask or gradient exists in a training step. The product
is one ``tf.custom_gradient`` op, ``sparse_matmul`` (forward and backward O(nnz · batch)):

* output ``x @ W``: TensorFlow's CSR kernel (``SparseMatrixMatMul``) on the CSR matrix of
  ``W`` built inside the step from ``(rows, cols, values)`` (transposed operand);
* input gradient ``dy @ Wᵀ``: the same CSR matrix, untransposed;
* weight gradient only at the active positions, a sampled product
  ``sum_b x[b, row_k] * dy[b, col_k]``: two gathers, a multiply and a reduction over the
  batch, in chunks of entries, compiled with XLA (no ``(batch, nnz)`` temporary).

A layer of more than ``CSR_BLOCK`` entries does both CSR products in blocks of consecutive
rows, one block's CSR matrix at a time (``row_blocks``, ``_blocked_matmul``).

Why these kernels, with the measured figures: ``docs/truly_sparse.md``.

Inputs with leading dimensions beyond the batch (a Dense applied per time step) are
flattened to ``(-1, n_in)`` and the output reshaped back.

Dense gradients for RigL: inside ``record_products()``, every ``SparseDense`` call records
its flattened input and pre-activation output, so that an updater can take the gradient of
the loss for that output and compute blocks of the dense kernel gradient ``xᵀ · dy`` without
ever holding all of it (``rigl/storage.py``).

Where a new truly sparse layer plugs in: a layer with the same four variables and
``kernel_shape`` (a GRU's kernels, later) is served by ``rigl.storage.SparseStorage``; map
its type in ``rigl.storage.STORAGES`` and its masked twin in ``rigl.conversion``.
"""

from __future__ import annotations

import contextlib
import threading

import keras
import numpy as np
import tensorflow as tf

from rigl import distributions, seeds
from rigl.layers import SavesVariablesByName

# ------------------------------------------------------------------------------ kernels


def _csr(rows, cols, values, shape):
    """The CSR matrix of the ``shape`` matrix with ``values`` at ``(rows, cols)``, which must
    be in row-major order (the kernel silently mis-assigns unsorted entries). ``shape`` may
    hold tensors (a block's row count)."""
    indices = tf.cast(tf.stack([rows, cols], axis=1), tf.int64)
    return tf.raw_ops.SparseTensorToCSRSparseMatrix(
        indices=indices, values=values,
        dense_shape=tf.cast(tf.stack([shape[0], shape[1]]), tf.int64))


def _csr_matmul(csr, dense, transpose_a):
    """``op(csr) @ denseᵀ``, transposed back: ``dense @ op(csr)ᵀ`` for a batch-major
    ``dense``. The CSR kernel reads ``dense`` transposed itself (no copy)."""
    return tf.raw_ops.SparseMatrixMatMul(a=csr, b=dense, transpose_a=transpose_a,
                                         transpose_b=True, transpose_output=True)


# Entries per chunk of the sampled product: its (batch, chunk) temporaries stay in cache.
SAMPLED_CHUNK = 1 << 14


@tf.function(jit_compile=True)
def sampled_product(x, dy, rows, cols):
    """``(xᵀ · dy)[rows[k], cols[k]]`` for every k: the weight gradient at active positions.

    A loop over chunks of ``SAMPLED_CHUNK`` entries, compiled with XLA: per chunk, two
    gathers, a multiply and the reduction over the batch, written into the ``(nnz,)`` result
    in place. One fused pass over all entries would store a ``(batch, nnz)`` product (XLA does
    not fuse the gathers into the reduction); chunks keep the temporaries at
    ``(SAMPLED_CHUNK, batch)`` and in cache, and are faster too. ``x`` and ``dy`` are
    transposed once first, so each gather reads contiguous rows of ``batch`` floats instead
    of a strided column: 2× faster at 1–10% density (docs/truly_sparse.md). Nothing of
    size nnz is made but the result: the last chunk ends at the last entry and overlaps the
    one before (those entries are written twice, with the same value) instead of padding
    ``rows`` and ``cols`` (8 bytes an entry).

    Traced once per shape (a model has few layers): ``rows`` needs a static length.

    Args:
        x: ``(batch, n_in)``.
        dy: ``(batch, n_out)``.
        rows, cols: int32 ``(nnz,)``.

    Returns:
        ``(nnz,)``.
    """
    nnz = rows.shape[0]
    if nnz is None:
        raise ValueError("sampled_product: rows and cols need a static length.")
    if nnz == 0:
        return tf.zeros([0], x.dtype)
    # A layer smaller than a chunk is one chunk of its own size.
    chunk = min(SAMPLED_CHUNK, nnz)
    n_chunks = -(-nnz // chunk)
    x_t, dy_t = tf.transpose(x), tf.transpose(dy)

    def body(i, products):
        start = tf.minimum(i * chunk, nnz - chunk)
        products_chunk = tf.reduce_sum(
            tf.gather(x_t, tf.slice(rows, [start], [chunk]))
            * tf.gather(dy_t, tf.slice(cols, [start], [chunk])), axis=1)
        at = (start + tf.range(chunk))[:, None]
        return i + 1, tf.tensor_scatter_nd_update(products, at, products_chunk)

    _, products = tf.while_loop(lambda i, _: i < n_chunks, body,
                                (tf.constant(0), tf.zeros([nnz], x.dtype)))
    return products


# Entries per block of a layer's CSR product (``sparse_matmul``): the conversion's int64
# indices (16 bytes an entry) and the CSR matrix (8) exist for one block at a time.
CSR_BLOCK = 1 << 20
# A layer is cut into row blocks only while each block holds at least this many entries per
# output column: every block adds one pass over the (batch, n_out) output, which must stay
# small next to the block's own product (nnz_block · batch).
_MIN_BLOCK_ENTRIES_PER_OUTPUT = 16


def row_blocks(nnz: int, shape) -> int:
    """How many row blocks ``sparse_matmul`` cuts a layer of ``nnz`` entries into: one block
    per ``CSR_BLOCK`` entries, as long as a block keeps at least 16 entries per output
    column (a wide output, as in a 784 -> 1,000,000 layer, stays one block)."""
    n_in, n_out = shape
    per_block = max(CSR_BLOCK, _MIN_BLOCK_ENTRIES_PER_OUTPUT * n_out)
    return max(1, min(n_in, -(-nnz // per_block)))


def sparse_matmul(x, values, rows, cols, shape):
    """``x @ W`` for the sparse ``W`` of ``shape`` with ``values`` at ``(rows, cols)``.

    A ``tf.custom_gradient`` op: gradients for ``x`` (``dy @ Wᵀ``) and for ``values``
    (``sampled_product``), none for the positions.

    A layer of at most ``CSR_BLOCK`` entries (or a wide one, ``row_blocks``) is one CSR
    matrix, built in the forward pass and kept for the input gradient. A bigger one is cut
    into blocks of consecutive rows (a contiguous range of its row-major entries each): the
    forward pass sums the blocks' products, the backward pass builds each block's CSR again
    and concatenates its slice of ``dx``. One block's conversion temporaries and CSR exist
    at a time (a ``tf.while_loop`` without parallel iterations), none is kept between the
    passes: the step's memory beyond the layer's state stays O(CSR_BLOCK), where one CSR
    matrix of the whole layer, its int64 indices and the kept CSR cost 32 bytes per entry,
    twice the layer's own 17 (docs/truly_sparse.md).

    Args:
        x: ``(batch, n_in)`` float.
        values: ``(nnz,)``, same dtype as ``x``.
        rows, cols: int32 ``(nnz,)``, in strictly increasing row-major order.
        shape: ``(n_in, n_out)`` (Python ints).

    Returns:
        ``(batch, n_out)``.
    """
    shape = tuple(int(d) for d in shape)
    nnz = rows.shape[0]
    n_blocks = 1 if nnz is None else row_blocks(int(nnz), shape)
    if n_blocks > 1:
        return _blocked_matmul(x, values, rows, cols, shape, n_blocks)

    @tf.custom_gradient
    def product(x, values):
        csr = _csr(rows, cols, values, shape)
        y = _csr_matmul(csr, x, transpose_a=True)
        y.set_shape([x.shape[0], shape[1]])

        def grad(dy):
            dx = _csr_matmul(csr, dy, transpose_a=False)
            dx.set_shape(x.shape)
            return dx, sampled_product(x, dy, rows, cols)

        return y, grad

    return product(x, values)


def _blocked_matmul(x, values, rows, cols, shape, n_blocks):
    """``sparse_matmul`` in ``n_blocks`` blocks of consecutive rows (see there)."""
    n_in, n_out = shape
    block_rows = -(-n_in // n_blocks)
    n_blocks = -(-n_in // block_rows)
    # Entry ranges: block i holds entries starts[i]:starts[i + 1] (rows are sorted).
    edges = tf.constant([min(i * block_rows, n_in) for i in range(n_blocks + 1)], rows.dtype)
    starts = tf.searchsorted(rows, edges, side="left")

    def block_csr(i, values):
        r0 = i * block_rows
        r1 = tf.minimum(r0 + block_rows, n_in)
        e0, e1 = starts[i], starts[i + 1]
        csr = _csr(rows[e0:e1] - r0, cols[e0:e1], values[e0:e1], (r1 - r0, n_out))
        return csr, r0, r1

    def loop(body, initial):
        return tf.while_loop(lambda i, _: i < n_blocks, body, (tf.constant(0), initial),
                             parallel_iterations=1)[1]

    @tf.custom_gradient
    def product(x, values):
        def forward(i, y_t):
            csr, r0, r1 = block_csr(i, values)
            # (n_out, batch): this block's rows of W, transposed, times its columns of x.
            part = tf.raw_ops.SparseMatrixMatMul(a=csr, b=x[:, r0:r1], transpose_a=True,
                                                 transpose_b=True)
            return i + 1, y_t + part

        y_t = loop(forward, tf.zeros([n_out, tf.shape(x)[0]], x.dtype))
        y = tf.transpose(y_t)
        y.set_shape([x.shape[0], n_out])

        def grad(dy):
            def backward(i, parts):
                csr, _, _ = block_csr(i, values)
                # (rows of the block, batch): this block's slice of dxᵀ.
                part = tf.raw_ops.SparseMatrixMatMul(a=csr, b=dy, transpose_b=True)
                return i + 1, parts.write(i, part)

            parts = loop(backward, tf.TensorArray(x.dtype, size=n_blocks, infer_shape=False))
            dx = tf.transpose(parts.concat())
            dx.set_shape(x.shape)
            return dx, sampled_product(x, dy, rows, cols)

        return y, grad

    return product(x, values)


# ---------------------------------------------------------------------------- recording

_RECORDING = threading.local()


@contextlib.contextmanager
def record_products():
    """Records what every ``SparseDense`` called inside computes (this thread only).

    Yields a dict filled as layers are called: layer name -> ``(x, z)``, the layer's input
    flattened to ``(-1, n_in)`` and its output before bias and activation, ``(-1, n_out)``.
    The gradient of a loss for ``z`` is the ``dy`` of the dense kernel gradient ``xᵀ · dy``.
    Thread-local because a distribution strategy runs each replica in its own thread.

    Raises:
        ValueError: if a layer is called twice inside (a shared layer: its dense gradient
            would be a sum over calls, which the recording does not hold).
    """
    previous = getattr(_RECORDING, "records", None)
    _RECORDING.records = records = {}
    try:
        yield records
    finally:
        _RECORDING.records = previous


def _record(layer, x, z):
    records = getattr(_RECORDING, "records", None)
    if records is None:
        return
    if layer.name in records:
        raise ValueError(f"layer {layer.name!r}: called more than once while recording; a "
                         "shared SparseDense has no single dense gradient to record.")
    records[layer.name] = (x, z)


# ------------------------------------------------------------------------------- layer

# Initializers whose draws do not depend on the shape they are drawn for.
_SHAPELESS = (keras.initializers.RandomNormal, keras.initializers.RandomUniform,
              keras.initializers.TruncatedNormal, keras.initializers.Zeros,
              keras.initializers.Ones, keras.initializers.Constant)


def values_initializer(initializer, kernel_shape, nnz):
    """An initializer for the ``(nnz,)`` values that draws like ``initializer`` would for the
    dense kernel of ``kernel_shape`` (same distribution per entry).

    Variance-scaling initializers (Glorot, He, LeCun...) scale by the dense kernel's fans, so
    their scale is corrected for the fans of a vector of length ``nnz``.

    Raises:
        ValueError: naming ``kernel_initializer`` for one whose draw depends on the whole
            matrix (orthogonal, identity) or is unknown.
    """
    initializer = keras.initializers.get(initializer)
    if isinstance(initializer, keras.initializers.VarianceScaling):
        fan_in, fan_out = kernel_shape
        fan = {"fan_in": fan_in, "fan_out": fan_out,
               "fan_avg": (fan_in + fan_out) / 2.0}[initializer.mode]
        return keras.initializers.VarianceScaling(
            scale=initializer.scale * max(nnz, 1) / max(fan, 1.0), mode="fan_in",
            distribution=initializer.distribution, seed=initializer.seed)
    if isinstance(initializer, _SHAPELESS):
        return initializer
    raise ValueError(
        f"kernel_initializer: {type(initializer).__name__} draws the whole dense matrix at "
        "once; SparseDense supports variance-scaling (Glorot, He, LeCun...), random normal/"
        "uniform, truncated normal and constant initializers.")


def _given(array):
    """An initializer returning ``array`` itself: ``keras.initializers.Constant`` of an
    array multiplies it by a tensor of ones (three temporaries the size of the variable)."""
    def initializer(shape, dtype=None):
        return tf.constant(array, dtype=dtype, shape=shape)
    return initializer


def random_positions(kernel_shape, nnz, seed, name):
    """``nnz`` distinct positions of ``kernel_shape``, uniformly at random, in row-major
    order, drawn from ``(seed, crc32(name))`` in O(nnz) memory (no dense mask)."""
    n_in, n_out = kernel_shape
    rng = np.random.default_rng(seeds.layer_seed(seed, name))
    size = n_in * n_out
    if nnz <= size // 50:
        # NumPy draws these with a set of the chosen (O(nnz)); at a higher density it
        # permutes the whole population (8 bytes a position: 2.1 GB for a 16,384² kernel).
        flat = np.sort(rng.choice(size, size=nnz, replace=False))
    else:
        flat = _distinct_sorted(rng, size, nnz)
    return (flat // n_out).astype(np.int32), (flat % n_out).astype(np.int32)


def _distinct_sorted(rng, size, k):
    """``k`` distinct integers of ``[0, size)``, sorted, uniformly among all such sets, in
    O(k) memory: uniform draws deduplicated until ``k`` are distinct, then ``k`` of them
    chosen at random (for ``k`` over half of ``size``: the complement of ``size - k``).
    Every step treats all positions alike, so every set of ``k`` is equally likely."""
    if k > size // 2:
        return np.setdiff1d(np.arange(size, dtype=np.int64),
                            _distinct_sorted(rng, size, size - k), assume_unique=True)
    flat = np.unique(rng.integers(0, size, size=k, dtype=np.int64))
    while flat.size < k:
        flat = np.union1d(flat, rng.integers(0, size, size=2 * (k - flat.size),
                                             dtype=np.int64))
    if flat.size > k:
        flat = np.sort(rng.choice(flat, size=k, replace=False))
    return flat


def check_positions(rows, cols, kernel_shape, layer_name):
    """Validates positions loaded from a file or given to ``set_connections``.

    Raises:
        ValueError: naming the layer, when a position falls outside ``kernel_shape``, a
            position repeats, or they are not in row-major order.
    """
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    n_in, n_out = kernel_shape
    if rows.shape != cols.shape or rows.ndim != 1:
        raise ValueError(f"layer {layer_name!r}: rows and cols must be vectors of one length, "
                         f"got {rows.shape} and {cols.shape}.")
    outside = (rows < 0) | (rows >= n_in) | (cols < 0) | (cols >= n_out)
    if outside.any():
        k = int(np.argmax(outside))
        raise ValueError(f"layer {layer_name!r}: position ({rows[k]}, {cols[k]}) (entry {k}) "
                         f"is outside the kernel's shape {tuple(kernel_shape)}.")
    flat = rows * n_out + cols
    steps = np.diff(flat)
    if (steps == 0).any():
        k = int(np.argmax(steps == 0)) + 1
        raise ValueError(f"layer {layer_name!r}: position ({rows[k]}, {cols[k]}) repeats "
                         f"(entries {k - 1} and {k}).")
    if (steps < 0).any():
        k = int(np.argmax(steps < 0)) + 1
        raise ValueError(f"layer {layer_name!r}: positions are not in row-major order at "
                         f"entry {k}; sort them by (row, col).")


class AliveConstraint(keras.constraints.Constraint):
    """Keeps dead entries (``alive`` False) at zero after every optimizer step."""

    def __init__(self, alive):
        self.alive = alive

    def __call__(self, values):
        values = tf.convert_to_tensor(values)
        return tf.raw_ops.Select(condition=tf.convert_to_tensor(self.alive), x=values,
                                 y=tf.zeros_like(values))


@keras.saving.register_keras_serializable(package="rigl")
class SparseDense(SavesVariablesByName, keras.layers.Layer):
    """A Dense layer that stores only its active weights (see the module docstring).

    Example:
        >>> layer = rigl.SparseDense(4096, sparsity=0.99, activation="relu")
        >>> sparse = rigl.to_sparse(rigl.sparsify(model, 0.99))  # or convert masked layers
        >>> big = rigl.sparse_model(build, 0.999, "erk")  # or build a model never dense

    Args:
        units: output size.
        sparsity: fraction of the kernel's entries that are not stored, in [0, 1); the layer
            keeps ``size - floor(sparsity * size)`` entries (as ``rigl.sparsify``), at random
            positions seeded by ``(seed, crc32(name))``. Give this or ``nnz``.
        nnz: number of stored entries (wins over ``sparsity`` when both are given, as in a
            saved config).
        activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
        bias_regularizer, activity_regularizer, bias_constraint: as ``keras.layers.Dense``
            (the kernel's regularizer and initializer apply to the values).
        seed: seed of the random initial positions.

    Raises:
        ValueError: naming the argument, for a missing or invalid ``sparsity``/``nnz``, a
            ``kernel_constraint`` (it would see the values, not the kernel), or an
            initializer without a per-entry form.
    """

    def __init__(self, units, sparsity=None, nnz=None, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, seed=0, **kwargs):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if kernel_constraint is not None:
            raise ValueError("kernel_constraint: SparseDense has no kernel for a constraint to "
                             "see (norm constraints need the dense matrix); use none.")
        if nnz is None and sparsity is None:
            raise ValueError("sparsity: give SparseDense a sparsity or an nnz.")
        if nnz is not None and (int(nnz) != nnz or nnz < 0):
            raise ValueError(f"nnz: expected a non-negative integer, got {nnz!r}.")
        if sparsity is not None:
            sparsity = distributions.validate_sparsity(sparsity, "sparsity")
        self.units = int(units)
        self.sparsity = sparsity
        self.nnz = None if nnz is None else int(nnz)
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.seed = int(seed)
        self.kernel_shape = None
        self.input_spec = keras.InputSpec(min_ndim=2)
        # TensorFlow's CSR kernels have no XLA form: a model holding this layer compiles its
        # step without XLA (Keras warns if jit_compile=True is asked for).
        self.supports_jit = False

    def build(self, input_shape):
        n_in = int(input_shape[-1])
        self.kernel_shape = (n_in, self.units)
        size = n_in * self.units
        if self.nnz is None:
            self.nnz = size - distributions.num_zeros(self.sparsity, size)
        if self.nnz > size:
            raise ValueError(f"nnz: {self.nnz} exceeds the kernel's {size} entries "
                             f"(layer {self.name!r}, kernel {self.kernel_shape}).")
        rows, cols = random_positions(self.kernel_shape, self.nnz, self.seed, self.name)
        self.values = self.add_weight(
            name="values", shape=(self.nnz,),
            initializer=values_initializer(self.kernel_initializer, self.kernel_shape,
                                           self.nnz),
            regularizer=self.kernel_regularizer)
        self.rows = self.add_weight(name="rows", shape=(self.nnz,), dtype="int32",
                                    trainable=False,
                                    initializer=_given(rows))
        self.cols = self.add_weight(name="cols", shape=(self.nnz,), dtype="int32",
                                    trainable=False,
                                    initializer=_given(cols))
        self.alive = self.add_weight(name="alive", shape=(self.nnz,), dtype="bool",
                                     trainable=False, initializer="ones")
        self.values.constraint = AliveConstraint(self.alive)
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.units,),
                                        initializer=self.bias_initializer,
                                        regularizer=self.bias_regularizer,
                                        constraint=self.bias_constraint)
        self.input_spec = keras.InputSpec(min_ndim=2, axes={-1: n_in})

    def call(self, inputs):
        x = tf.convert_to_tensor(inputs)
        lead = tf.shape(x)[:-1]
        if x.shape.rank != 2:
            x = tf.reshape(x, [-1, self.kernel_shape[0]])
        values = tf.cast(self.values, x.dtype)
        z = sparse_matmul(x, values, tf.convert_to_tensor(self.rows),
                          tf.convert_to_tensor(self.cols), self.kernel_shape)
        _record(self, x, z)
        if self.bias is not None:
            z = z + tf.cast(self.bias, z.dtype)
        if inputs.shape.rank != 2:
            z = tf.reshape(z, tf.concat([lead, [self.units]], axis=0))
        return self.activation(z) if self.activation is not None else z

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    # ----------------------------------------------------------------- connections
    def active_count(self) -> int:
        """The number of active connections (host value)."""
        return int(np.count_nonzero(keras.ops.convert_to_numpy(self.alive)))

    def connections(self):
        """``(rows, cols, values)`` of the active connections, as numpy arrays."""
        alive = keras.ops.convert_to_numpy(self.alive)
        return tuple(keras.ops.convert_to_numpy(v)[alive]
                     for v in (self.rows, self.cols, self.values))

    def set_connections(self, rows, cols, values):
        """Makes the active connections exactly ``(rows, cols, values)`` (host arrays).

        At most ``nnz`` connections; any remaining entries become dead (zero, inactive) at
        positions not used by the connections. The positions are sorted here.

        Raises:
            ValueError: naming the layer, for positions outside the kernel, repeated, or
                more than ``nnz`` connections.
        """
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        values = np.asarray(values)
        n_in, n_out = self.kernel_shape
        order = np.argsort(rows * n_out + cols, kind="stable")
        rows, cols, values = rows[order], cols[order], values[order]
        check_positions(rows, cols, self.kernel_shape, self.name)
        if rows.size > self.nnz:
            raise ValueError(f"layer {self.name!r}: {rows.size} connections exceed its "
                             f"nnz={self.nnz}.")
        dead = self.nnz - rows.size
        flat = rows * n_out + cols
        # Dead entries take the first free positions: any distinct unused ones will do.
        free = np.setdiff1d(np.arange(min(n_in * n_out, rows.size + dead)), flat)[:dead]
        all_flat = np.concatenate([flat, free])
        alive = np.concatenate([np.ones(rows.size, bool), np.zeros(dead, bool)])
        all_values = np.concatenate([values, np.zeros(dead, values.dtype)])
        order = np.argsort(all_flat, kind="stable")
        all_flat = all_flat[order]
        self.rows.assign((all_flat // n_out).astype(np.int32))
        self.cols.assign((all_flat % n_out).astype(np.int32))
        self.alive.assign(alive[order])
        self.values.assign(all_values[order].astype(self.values.dtype))

    def dense_kernel(self) -> np.ndarray:
        """The kernel as a dense numpy array (O(n_in · n_out) memory: for tests and export)."""
        rows, cols, values = self.connections()
        kernel = np.zeros(self.kernel_shape, keras.ops.convert_to_numpy(self.values).dtype)
        kernel[rows, cols] = values
        return kernel

    # ------------------------------------------------------------- serialisation
    def _own_variables(self):
        variables = {"values": self.values, "rows": self.rows, "cols": self.cols,
                     "alive": self.alive}
        if self.bias is not None:
            variables["bias"] = self.bias
        return variables

    def load_own_variables(self, store):
        if not self.built:
            return
        variables = self._own_variables()
        missing = [name for name in variables if name not in store]
        if missing or len(store.keys()) != len(variables):
            raise ValueError(f"layer {self.name!r}: the file holds {sorted(store.keys())}, "
                             f"expected {sorted(variables)}.")
        stored = {name: np.asarray(store[name]) for name in variables}
        if stored["values"].shape != (self.nnz,):
            raise ValueError(f"layer {self.name!r}: the file holds {stored['values'].shape[0]} "
                             f"entries, the layer nnz={self.nnz}.")
        check_positions(stored["rows"], stored["cols"], self.kernel_shape, self.name)
        for name, variable in variables.items():
            variable.assign(stored[name])

    def get_config(self):
        config = super().get_config()
        config.update({
            "units": self.units,
            "sparsity": self.sparsity,
            "nnz": self.nnz,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "bias_constraint": keras.constraints.serialize(self.bias_constraint),
            "seed": self.seed,
        })
        return config

    def enable_lora(self, *args, **kwargs):
        raise NotImplementedError("SparseDense does not support LoRA.")

    def quantize(self, *args, **kwargs):
        raise NotImplementedError("SparseDense does not support quantization.")

"""Inference-only layers that run a sparse kernel: what ``rigl.export`` puts in an artefact.

``InferenceSparse`` computes ``activation(P(x) @ W + b)`` for a sparse ``W`` of shape
``(n_in, n_out)`` stored in one of two representations, where ``P`` is

* nothing, for a Dense layer (the product acts on the last axis, any leading axes);
* a strided slice, for a 1×1 convolution (``x[:, ::s, ::s, :]``: a 1×1 convolution is a
  product with the pixels as the batch);
* ``tf.image.extract_patches``, for a k×k convolution (im2col: each output pixel's
  receptive field, ordered ``(kh, kw, channel)`` like the Keras kernel ``(kh, kw, C, F)``).

Representations (``docs/performance.md`` has the measurements behind them):

``ell``
    Sliced ELLPACK. The output neurons are sorted by their number of active inputs and cut
    into slices whose counts differ by at most ``SLICE_TOLERANCE`` (10%); each slice stores
    a ``(neurons, width)`` table of input indices and values, padded with zeros to its
    widest neuron. The product is a gather, a multiply and a row sum per slice, compiled
    with XLA into one pass over the stored entries, then the outputs are put back in their
    order. Fastest at batch 1 on this CPU: it reads 6–8 bytes per active weight where the
    dense product reads 4 per weight, active or not.
``csr``
    Compressed sparse rows of ``Wᵀ`` (values, input indices, row pointers), run by
    TensorFlow's CSR kernel (``SparseMatrixMatMul``). The CSR object cannot be stored in a
    SavedModel, so each call rebuilds it from the arrays (O(nnz)): worth it for big batches
    (many pixels of a 1×1 convolution), not at batch 1.

Indices are int16 where the input size allows (< 32,768), else int32. Weights are
non-trainable: these layers serve inference only (train with ``rigl.MaskedDense`` & co.).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from rigl.sparse_layers import _csr, _csr_matmul

REPRESENTATIONS = ("ell", "csr")
# A slice's neurons have active-input counts within this fraction of its widest neuron.
SLICE_TOLERANCE = 0.1


def index_dtype(n_in: int) -> str:
    """The narrowest integer type that holds input indices ``< n_in``."""
    return "int16" if n_in <= np.iinfo(np.int16).max + 1 else "int32"


def ell_slices(counts, tolerance: float = SLICE_TOLERANCE) -> list[np.ndarray]:
    """Output neurons grouped into slices of similar active-input counts.

    Neurons are taken by decreasing count (ties in index order); a slice grows while a
    neuron's count is at least ``(1 - tolerance)`` of the slice's first (widest), so padding
    within a slice is at most ``tolerance`` of its width. Neurons without inputs form one
    last slice of width 0.
    """
    counts = np.asarray(counts)
    order = np.argsort(-counts, kind="stable")
    slices, start = [], 0
    while start < len(order):
        width = counts[order[start]]
        floor = 0 if width == 0 else max(1, int(np.ceil(width * (1 - tolerance))))
        end = start + 1
        while end < len(order) and (counts[order[end]] >= floor if width else True):
            end += 1
        slices.append(order[start:end])
        start = end
    return slices


def ell_arrays(rows, cols, values, shape, tolerance: float = SLICE_TOLERANCE):
    """The sliced-ELL tables of ``W`` (``(n_in, n_out)``) with ``values`` at ``(rows, cols)``,
    sliced by ``ell_slices(counts, tolerance)``.

    Returns ``(slices, inverse)``: ``slices`` a list of ``(input_indices, weights)`` pairs of
    shape ``(neurons, width)`` (index type from ``index_dtype``), ``inverse`` the int32
    position of each output neuron in the slices' concatenated outputs.
    """
    n_in, n_out = shape
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    values = np.asarray(values, np.float32)
    by_output = np.lexsort((rows, cols))  # group entries by output neuron (kernel column)
    outputs, inputs, weights = cols[by_output], rows[by_output], values[by_output]
    counts = np.bincount(outputs, minlength=n_out)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(outputs)) - starts[outputs]  # position within its neuron's inputs
    kind = index_dtype(n_in)
    slices = []
    for neurons in ell_slices(counts, tolerance):
        width = int(counts[neurons[0]])
        table = np.zeros((len(neurons), width), kind)
        table_w = np.zeros((len(neurons), width), np.float32)
        slot = np.full(n_out, -1)
        slot[neurons] = np.arange(len(neurons))
        take = slot[outputs] >= 0
        table[slot[outputs[take]], rank[take]] = inputs[take]
        table_w[slot[outputs[take]], rank[take]] = weights[take]
        slices.append((table, table_w))
    order = np.concatenate(ell_slices(counts, tolerance))
    inverse = np.empty(n_out, np.int32)
    inverse[order] = np.arange(n_out, dtype=np.int32)
    return slices, inverse


def csr_arrays(rows, cols, values, shape):
    """CSR of ``Wᵀ``: ``(row_pointers int32 (n_out + 1,), input_indices, values)``."""
    n_in, n_out = shape
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    by_output = np.lexsort((rows, cols))
    counts = np.bincount(cols, minlength=n_out)
    pointers = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return (pointers, rows[by_output].astype(index_dtype(n_in)),
            np.asarray(values, np.float32)[by_output])


@tf.function(jit_compile=True)
def _ell_product(x, tables, weights, inverse):
    parts = []
    for table, weight in zip(tables, weights, strict=True):
        if table.shape[1] == 0:
            parts.append(tf.zeros([tf.shape(x)[0], table.shape[0]], x.dtype))
            continue
        gathered = tf.gather(x, tf.cast(table, tf.int32), axis=1)  # (batch, neurons, width)
        parts.append(tf.reduce_sum(gathered * weight, axis=-1))
    return tf.gather(tf.concat(parts, axis=1), inverse, axis=1)


def _csr_product(x, pointers, inputs, values, n_out):
    counts = pointers[1:] - pointers[:-1]
    outputs = tf.repeat(tf.range(n_out, dtype=tf.int32), counts)
    csr = _csr(outputs, tf.cast(inputs, tf.int32), values, (n_out, x.shape[-1]))
    return _csr_matmul(csr, x, transpose_a=False)


@keras.saving.register_keras_serializable(package="rigl")
class InferenceSparse(keras.layers.Layer):
    """``activation(P(x) @ W + b)`` with a sparse ``W`` (see the module docstring).

    Args:
        units: output size (``n_out``).
        input_dim: ``n_in``, the product's input size (channels × kernel area for patches).
        nnz: active weights.
        representation: ``"ell"`` or ``"csr"``.
        slice_shapes: the ELL slices' ``(neurons, width)`` (``ell`` only).
        activation, use_bias: as ``keras.layers.Dense``.
        pointwise_strides: ``(sh, sw)`` of a 1×1 convolution, or None.
        patches: ``{"kernel_size", "strides", "dilation_rate", "padding"}`` of a k×k
            convolution, or None.
    """

    def __init__(self, units, input_dim, nnz, representation, slice_shapes=None,
                 activation=None, use_bias=True, pointwise_strides=None, patches=None,
                 **kwargs):
        super().__init__(trainable=False, **kwargs)
        if representation not in REPRESENTATIONS:
            raise ValueError(f"representation: expected one of {REPRESENTATIONS}, got "
                             f"{representation!r}.")
        if representation == "ell" and slice_shapes is None:
            raise ValueError("slice_shapes: the ell representation needs its slices' shapes.")
        self.units, self.input_dim, self.nnz = int(units), int(input_dim), int(nnz)
        self.representation = representation
        self.slice_shapes = [tuple(int(d) for d in s) for s in slice_shapes or []]
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self.pointwise_strides = None if pointwise_strides is None else tuple(pointwise_strides)
        self.patches = None if patches is None else dict(patches)
        kind = index_dtype(self.input_dim)
        if representation == "ell":
            self.tables = [self.add_weight(name=f"indices_{i}", shape=s, dtype=kind,
                                           initializer="zeros", trainable=False)
                           for i, s in enumerate(self.slice_shapes)]
            self.table_weights = [self.add_weight(name=f"values_{i}", shape=s,
                                                  initializer="zeros", trainable=False)
                                  for i, s in enumerate(self.slice_shapes)]
            self.inverse = self.add_weight(name="inverse", shape=(self.units,), dtype="int32",
                                           initializer="zeros", trainable=False)
        else:
            self.pointers = self.add_weight(name="row_pointers", shape=(self.units + 1,),
                                            dtype="int32", initializer="zeros",
                                            trainable=False)
            self.inputs = self.add_weight(name="indices", shape=(self.nnz,), dtype=kind,
                                          initializer="zeros", trainable=False)
            self.values = self.add_weight(name="values", shape=(self.nnz,),
                                          initializer="zeros", trainable=False)
        self.bias = (self.add_weight(name="bias", shape=(self.units,), initializer="zeros",
                                     trainable=False) if use_bias else None)

    @classmethod
    def from_connections(cls, rows, cols, values, shape, representation, bias=None,
                         slice_tolerance: float = SLICE_TOLERANCE, **config):
        """The layer holding ``W`` (``shape``) with ``values`` at ``(rows, cols)``; an ELL
        layer's slices are cut by ``ell_slices(counts, slice_tolerance)`` (1.0: one table,
        padded to the widest neuron)."""
        n_in, n_out = shape
        if representation == "ell":
            slices, inverse = ell_arrays(rows, cols, values, shape, slice_tolerance)
            layer = cls(n_out, n_in, len(values), "ell",
                        slice_shapes=[t.shape for t, _ in slices],
                        use_bias=bias is not None, **config)
            for table, weights, (table_value, weight_value) in zip(
                    layer.tables, layer.table_weights, slices, strict=True):
                table.assign(table_value)
                weights.assign(weight_value)
            layer.inverse.assign(inverse)
        else:
            pointers, inputs, ordered = csr_arrays(rows, cols, values, shape)
            layer = cls(n_out, n_in, len(values), representation, use_bias=bias is not None,
                        **config)
            layer.pointers.assign(pointers)
            layer.inputs.assign(inputs)
            layer.values.assign(ordered)
        if bias is not None:
            layer.bias.assign(bias)
        return layer

    @property
    def ell_tables(self) -> int:
        """How many ELL slices hold inputs (the empty slice of input-less neurons aside);
        0 for CSR."""
        return sum(1 for _, width in self.slice_shapes if width)

    def stored_bytes(self) -> int:
        """Bytes of the sparse kernel's arrays (bias excluded)."""
        variables = (self.tables + self.table_weights + [self.inverse]
                     if self.representation == "ell" else
                     [self.pointers, self.inputs, self.values])
        return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)

    def _columns(self, x):
        if self.pointwise_strides is not None:
            sh, sw = self.pointwise_strides
            return x[:, ::sh, ::sw, :] if (sh, sw) != (1, 1) else x
        if self.patches is not None:
            p = self.patches
            return tf.image.extract_patches(
                x, sizes=[1, *p["kernel_size"], 1], strides=[1, *p["strides"], 1],
                rates=[1, *p["dilation_rate"], 1], padding=p["padding"].upper())
        return x

    def call(self, inputs):
        x = self._columns(tf.convert_to_tensor(inputs))
        lead = tf.shape(x)[:-1]
        flat = tf.reshape(x, [-1, self.input_dim])
        if self.representation == "ell":
            z = _ell_product(flat, [tf.convert_to_tensor(t) for t in self.tables],
                             [tf.cast(w, flat.dtype) for w in self.table_weights],
                             tf.convert_to_tensor(self.inverse))
        else:
            z = _csr_product(flat, tf.convert_to_tensor(self.pointers),
                             tf.convert_to_tensor(self.inputs),
                             tf.cast(self.values, flat.dtype), self.units)
        if self.bias is not None:
            z = z + tf.cast(self.bias, z.dtype)
        z = tf.reshape(z, tf.concat([lead, [self.units]], axis=0))
        return self.activation(z) if self.activation is not None else z

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        if self.pointwise_strides is not None:
            for axis, s in zip((1, 2), self.pointwise_strides, strict=True):
                shape[axis] = None if shape[axis] is None else -(-shape[axis] // s)
        elif self.patches is not None:
            p = self.patches
            for axis, (k, s, d) in enumerate(zip(p["kernel_size"], p["strides"],
                                                  p["dilation_rate"], strict=True), start=1):
                if shape[axis] is not None:
                    span = (k - 1) * d + 1
                    shape[axis] = (-(-shape[axis] // s) if p["padding"] == "same"
                                   else (shape[axis] - span) // s + 1)
        return tuple(shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.pop("trainable", None)
        config.update(units=self.units, input_dim=self.input_dim, nnz=self.nnz,
                      representation=self.representation,
                      slice_shapes=[list(s) for s in self.slice_shapes],
                      activation=keras.activations.serialize(self.activation),
                      use_bias=self.use_bias,
                      pointwise_strides=(None if self.pointwise_strides is None
                                         else list(self.pointwise_strides)),
                      patches=self.patches)
        return config

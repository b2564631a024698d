"""Exporting a trained sparse model for inference: ``export``, ``load_exported``.

``export(model, path)`` writes an inference artefact in which every sparse kernel runs the
representation measured fastest for it, and a metadata file ``rigl_export.json`` beside it
recording each layer's choice and why (the measured times), its sizes and the versions.

Formats:

``saved_model``
    A TensorFlow SavedModel (``serve`` / ``serving_default`` signatures; each variable stored
    once; the serving function compiled whole with XLA where that measured faster). Each
    sparse layer becomes the fastest of: its dense layer (zeros stored), a sliced-ELL (or
    one-slice ELL, ``ell_one_slice`` in the metadata's times; ``ell_slices`` records the
    tables kept) or a CSR ``rigl.inference_layers.InferenceSparse``, timed on this machine
    at ``batch_size`` (``representation="sparse"`` leaves the dense layer out; ``"ell"``
    (sliced), ``"csr"`` or ``"dense"`` forces one). Dense layers run sparse,
    1×1 convolutions as products over pixels, k×k convolutions through patches (im2col).
    Depthwise convolutions and GRUs have no sparse kernel here and stay dense.
``tflite``
    A LiteRT (TFLite) flatbuffer ``model.tflite`` of the model with zeros in place, converted
    with the converter's sparsity optimisation (``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``):
    the converter decides which tensors to store sparse, the runtime which to run sparse
    (its own block-sparse kernel for fully connected layers; others are densified at load).
    Running it needs the LiteRT runtime (``pip install -r requirements-export.txt``).
``auto``
    Both, timed whole at ``batch_size``; the faster is kept (needs the LiteRT runtime).

A model with no sparse layer is exported dense with a warning (the dense baseline of the
same architecture, through the same path).

    >>> rigl.export(model, "export/", format="saved_model")
    >>> run = rigl.load_exported("export/")
    >>> logits = run(images)          # numpy in, numpy out
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from rigl.inference_layers import REPRESENTATIONS, SLICE_TOLERANCE, InferenceSparse
from rigl.layers import PLAIN_TWINS, MaskedConv2D, MaskedDense, is_masked
from rigl.masking import _copy_weights, walk_layers
from rigl.path_masks import refuse_wrapped
from rigl.sparse_layers import SparseDense

FORMATS = ("saved_model", "tflite", "auto")
CHOICES = ("auto", "sparse", "dense") + REPRESENTATIONS
METADATA_FILE = "rigl_export.json"
TFLITE_FILE = "model.tflite"
EXPORT_REQUIREMENTS = "requirements-export.txt"
# A SparseDense layer with more entries than this has no dense form (4 bytes each: 256 MB).
DENSE_LIMIT = 1 << 26
# The time budget for measuring one layer's candidates (big convolutions get fewer rounds).
MEASURE_SECONDS = 2.0
# A timed call repeats a small layer's product to last about this long (dispatch shared).
CALL_SECONDS = 0.002
# A candidate this many times slower than the fastest in its first call is not timed further.
SLOWER_THAN_BEST = 4.0
# ELL gathers one input per product term: over this many terms (rows of the batch × nnz) a
# dense or CSR product wins by far and the candidate is not even built (it would take long).
ELL_MAX_TERMS = 1 << 25
# representation="sparse" keeps each sparse layer within this many times its CSR bytes
# (nnz × 4 + nnz × 4 + (n_out + 1) × 4): a one-slice ELL padded beyond it is not a candidate.
SPARSE_SIZE_LIMIT = 1.2


# ------------------------------------------------------------------------- sparse kernels


def _kernel_of(layer):
    """``(rows, cols, values, (n_in, n_out), kind, geometry)`` of a layer's sparse kernel as
    a product ``P(x) @ W``, or None if its kind has no sparse kernel (then it stays dense).
    """
    if isinstance(layer, SparseDense):
        rows, cols, values = layer.connections()
        return rows, cols, values, tuple(layer.kernel_shape), "dense", {}
    if isinstance(layer, MaskedDense):
        kernel = keras.ops.convert_to_numpy(layer.masked_kernel)
        mask = keras.ops.convert_to_numpy(layer.mask).astype(bool)
        rows, cols = np.nonzero(mask)
        return rows, cols, kernel[rows, cols], kernel.shape, "dense", {}
    if isinstance(layer, MaskedConv2D) and layer.groups == 1 and (
            layer.data_format == "channels_last"):
        kernel = keras.ops.convert_to_numpy(layer.masked_kernel)
        mask = keras.ops.convert_to_numpy(layer.mask).astype(bool)
        matrix = (kernel * mask).reshape(-1, kernel.shape[-1])
        rows, cols = np.nonzero(mask.reshape(matrix.shape))
        strides, dilation = tuple(layer.strides), tuple(layer.dilation_rate)
        if kernel.shape[:2] == (1, 1):
            return (rows, cols, matrix[rows, cols], matrix.shape, "pointwise_conv",
                    {"pointwise_strides": strides})
        return rows, cols, matrix[rows, cols], matrix.shape, "conv", {"patches": {
            "kernel_size": tuple(kernel.shape[:2]), "strides": strides,
            "dilation_rate": dilation, "padding": layer.padding}}
    return None


def _dense_twin(layer):
    """The plain Keras layer computing what ``layer`` computes, weights copied."""
    if isinstance(layer, SparseDense):
        n_in, n_out = layer.kernel_shape
        if n_in * n_out > DENSE_LIMIT:
            return None
        twin = keras.layers.Dense(n_out, activation=layer.activation,
                                  use_bias=layer.use_bias, name=layer.name)
        twin.build((None, n_in))
        twin.kernel.assign(layer.dense_kernel())
        if layer.use_bias:
            twin.bias.assign(layer.bias)
        return twin
    twin = PLAIN_TWINS.get(type(layer), type(layer)).from_config(layer.get_config())
    return twin


def _sparse_layer(layer, kernel, representation, slice_tolerance=SLICE_TOLERANCE):
    rows, cols, values, shape, _, geometry = kernel
    bias = getattr(layer, "bias", None)
    bias = None if bias is None else keras.ops.convert_to_numpy(bias)
    return InferenceSparse.from_connections(
        rows, cols, values, shape, representation, bias=bias, name=layer.name,
        activation=keras.activations.serialize(layer.activation),
        slice_tolerance=slice_tolerance, **geometry)


def _sparse_candidates(layer, kernel, names, max_bytes=None) -> dict:
    """The sparse kernels to time: each of ``names``, and for ``ell`` also its one-slice
    form (``ell_one_slice``: one table padded to the widest neuron) where slicing made
    several tables and, if ``max_bytes`` is given, the table stays within it. Slices save
    padding where neurons' fan-ins differ (a trained mask), but each costs its own gather
    and the outputs a final permutation: with a random mask's near-equal fan-ins one table
    ran up to 1.7× faster at batch 1 (docs/performance.md)."""
    candidates = {name: _sparse_layer(layer, kernel, name) for name in names}
    sliced = candidates.get("ell")
    if sliced is not None and sliced.ell_tables > 1:
        one = _sparse_layer(layer, kernel, "ell", 1.0)
        if max_bytes is None or one.stored_bytes() <= max_bytes:
            candidates["ell_one_slice"] = one
    return candidates


def _input_shape(layer, batch_size: int) -> tuple:
    try:
        shape = tuple(layer.input.shape)
    except (AttributeError, ValueError) as error:
        raise ValueError(f"model: cannot tell the input shape of layer {layer.name!r} (shared "
                         f"by several calls or never called: {error}); give "
                         "representation='dense', 'ell' or 'csr' instead of 'auto'.") from None
    # The batch axis is the batch size measured at; unknown other axes (a sequence) count 1.
    return (batch_size,) + tuple(1 if d is None else int(d) for d in shape[1:])


def _output_shape(layer, batch_size: int) -> tuple:
    try:
        shape = tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return (batch_size, 1)
    return (batch_size,) + tuple(1 if d is None else int(d) for d in shape[1:])


def _median_ms(fn, x, rounds: int) -> float:
    fn(x)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        np.asarray(fn(x))
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def _repeated(layer):
    """A tf.function applying ``layer`` ``repeats`` times (an argument) in a graph loop,
    inputs scaled apart so that no graph pass merges the calls: the per-call dispatch cost,
    which a layer inside a model does not pay, is shared by ``repeats`` products."""
    @tf.function(autograph=False)
    def call(x, repeats):
        def body(i, total):
            scaled = x * (1.0 + 1e-6 * tf.cast(i, x.dtype))
            return i + 1, total + tf.reduce_sum(layer(scaled))
        return tf.while_loop(lambda i, _: i < repeats, body,
                             (tf.constant(0), tf.constant(0.0, x.dtype)))[1]
    return call


def _timed(call, x, repeats) -> float:
    start = time.perf_counter()
    call(x, repeats).numpy()
    return time.perf_counter() - start


def _time_candidates(candidates: dict, shape: tuple, rounds: int) -> dict:
    """Median ms per product of each candidate layer on a random input of ``shape``,
    interleaved: each round calls every candidate once, in rotating order. A call repeats
    the product so that it lasts about ``CALL_SECONDS`` (at most 8 times). A candidate over
    ``SLOWER_THAN_BEST`` times the fastest in a first call is not timed further (its first
    call is its figure)."""
    x = tf.constant(np.random.default_rng(0).standard_normal(shape, np.float32))
    calls = {name: _repeated(layer) for name, layer in candidates.items()}
    one = tf.constant(1)
    first = {}
    for name, call in calls.items():
        call(x, one)  # trace, compile and warm up
        first[name] = _timed(call, x, one)
    best = min(first.values())
    repeats = tf.constant(int(np.clip(CALL_SECONDS / best, 1, 8)))
    times = {name: [] for name in calls if first[name] <= SLOWER_THAN_BEST * best}
    names = list(times)
    # At most about MEASURE_SECONDS per layer, and at least 3 rounds.
    per_round = sum(first[n] for n in names) * int(repeats)
    rounds = max(3, min(rounds, int(MEASURE_SECONDS / per_round)))
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            times[name].append(_timed(calls[name], x, repeats) / int(repeats))
    return {name: round(float(np.median(times.get(name) or [first[name]]) * 1e3), 4)
            for name in calls}


def _plan_layer(layer, choice: str, batch_size: int, rounds: int):
    """The layer to put in the artefact for ``layer`` and its metadata record."""
    kernel = _kernel_of(layer)
    record = _layer_record(layer, kernel)
    if kernel is None:
        record.update(representation="dense", reason="no sparse kernel for this layer kind")
        return _dense_twin(layer), record
    rows, cols, values, shape, kind, _ = kernel
    size = int(np.prod(shape))
    if choice in ("auto", "sparse"):
        shape_in = _input_shape(layer, batch_size)
        rows_of_batch = int(np.prod(_output_shape(layer, batch_size)[:-1]))
        names = [n for n in REPRESENTATIONS
                 if n != "ell" or rows_of_batch * len(values) <= ELL_MAX_TERMS]
        if len(names) < len(REPRESENTATIONS):
            record["not_measured"] = {"ell": f"{rows_of_batch} rows × {len(values)} "
                                             f"weights > {ELL_MAX_TERMS} gathered terms"}
        candidates = _sparse_candidates(
            layer, kernel, names,
            None if choice == "auto" else SPARSE_SIZE_LIMIT * record["csr_bytes"])
        dense = _dense_twin(layer) if choice == "auto" else None
        if dense is not None:
            candidates["dense"] = dense
        record["measured_ms"] = _time_candidates(candidates, shape_in, rounds)
        scope = "" if choice == "auto" else " among the sparse kernels"
        choice = min(record["measured_ms"], key=record["measured_ms"].get)
        record["reason"] = f"fastest measured at batch {batch_size}{scope}"
        chosen = candidates[choice]
    else:
        record["reason"] = "asked for"
        chosen = _dense_twin(layer) if choice == "dense" else _sparse_layer(layer, kernel,
                                                                           choice)
        if chosen is None:
            raise ValueError(f"representation: layer {layer.name!r} ({shape[0]}×{shape[1]}) "
                             f"is too big for a dense form (over {DENSE_LIMIT} entries).")
    record["representation"] = "ell" if choice == "ell_one_slice" else choice
    if isinstance(chosen, InferenceSparse):
        if chosen.representation == "ell":
            record["ell_slices"] = chosen.ell_tables
        record["stored_bytes"] = chosen.stored_bytes()
    else:
        record["stored_bytes"] = size * 4
    return chosen, record


def _is_sparse(layer) -> bool:
    return is_masked(layer) or isinstance(layer, SparseDense)


def inference_model(model, representation="auto", batch_size: int = 1, rounds: int = 15):
    """A plain inference copy of ``model`` whose sparse layers run sparse kernels.

    Returns ``(model, records)``: the copy (Keras layers only, ``InferenceSparse`` for sparse
    kernels) and one metadata record per sparse layer (see ``export``).
    """
    refuse_wrapped(model, "rigl.export")
    if not (isinstance(model, keras.Sequential) or hasattr(model, "_nodes_by_depth")):
        raise ValueError(f"model: only Sequential and functional Keras models can be "
                         f"exported, got a subclassed model ({type(model).__name__}).")
    layers = walk_layers(model)
    choices = _choices(representation, [layer.name for layer in layers if _is_sparse(layer)])
    planned, records = {}, []
    for layer in layers:
        if _is_sparse(layer):
            planned[layer.name], record = _plan_layer(layer, choices[layer.name], batch_size,
                                                      rounds)
            records.append(record)
    originals = {layer.name: layer for layer in layers}

    def clone_layer(layer):
        if layer.name in planned:
            return planned[layer.name]
        return type(layer).from_config(layer.get_config())

    clone = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    for layer in walk_layers(clone):
        if layer.weights and not isinstance(layer, keras.Model | InferenceSparse):
            source = originals[layer.name]
            if not isinstance(source, SparseDense):  # its dense twin has its weights
                _copy_weights(source, layer)
    return clone, records


def _choices(representation, names: list[str]) -> dict:
    if isinstance(representation, str):
        if representation not in CHOICES:
            raise ValueError(f"representation: expected one of {CHOICES} or a dict of layer "
                             f"name -> one of them, got {representation!r}.")
        return dict.fromkeys(names, representation)
    if not isinstance(representation, dict):
        raise ValueError(f"representation: expected one of {CHOICES} or a dict, got "
                         f"{type(representation).__name__}.")
    unknown = sorted(set(representation) - set(names))
    if unknown:
        raise ValueError(f"representation: names {unknown} are not sparse layers of the "
                         f"model; its sparse layers are {names}.")
    bad = {k: v for k, v in representation.items() if v not in CHOICES}
    if bad:
        raise ValueError(f"representation: {bad} are not of {CHOICES}.")
    return {name: representation.get(name, "auto") for name in names}


# ------------------------------------------------------------------------------ artefacts


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)


def _tflite_bytes(model, sparse: bool, batch: int | None) -> bytes:
    """The LiteRT flatbuffer of ``model`` (zeros in place) for inputs of any batch
    (``batch=None``) or of exactly ``batch``."""
    plain = _plain_copy(model)
    signature = [tf.TensorSpec((batch,) + tuple(x.shape[1:]), x.dtype) for x in plain.inputs]
    with tempfile.TemporaryDirectory() as saved:
        plain.export(saved, format="tf_saved_model", verbose=False,
                     input_signature=signature)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        if sparse:
            converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        return converter.convert()


def _convert_tflite(model, sparse: bool, batch_size: int) -> tuple[bytes, int | None]:
    """``(flatbuffer, fixed batch or None)``. Recurrent layers convert only with a static
    batch: then the flatbuffer takes exactly ``batch_size`` rows and ``Exported`` runs
    bigger batches in slices of that size."""
    try:
        return _tflite_bytes(model, sparse, None), None
    except Exception:  # the converter raises several types (ConverterError, ...)
        pass
    try:
        return _tflite_bytes(model, sparse, batch_size), batch_size
    except Exception as error:
        raise ValueError(f"format: the LiteRT converter cannot convert this model "
                         f"({type(error).__name__}: {str(error).splitlines()[0][:300]}); use "
                         "format='saved_model'.") from error


def _plain_copy(model):
    """The model with every sparse layer as its plain dense layer (zeros in place)."""
    planned = {layer.name: _dense_twin(layer) for layer in walk_layers(model)
               if _is_sparse(layer)}
    too_big = [name for name, twin in planned.items() if twin is None]
    if too_big:
        raise ValueError(f"format: layers {too_big} are too big for a dense form (over "
                         f"{DENSE_LIMIT} entries), which the LiteRT converter needs; use "
                         "format='saved_model'.")
    clone, _ = inference_model(model, dict.fromkeys(planned, "dense"))
    return clone


def export(model, path: str, format: str = "saved_model", representation="auto",
           batch_size: int = 1, overwrite: bool = False, rounds: int = 15) -> dict:
    """Writes an inference artefact of ``model`` to the folder ``path`` (see the module).

    Args:
        model: a Sequential or functional model with masked (``rigl.sparsify``) or truly
            sparse (``rigl.SparseDense``) layers; a model with none is exported dense, with a
            warning.
        path: the folder to create: the SavedModel itself, or ``model.tflite``; both with
            ``rigl_export.json``.
        format: ``"saved_model"``, ``"tflite"`` or ``"auto"`` (the faster of the two).
        representation: ``"auto"`` (per layer, the fastest measured), ``"sparse"`` (the
            fastest measured of the sparse kernels: the artefact stays small), ``"dense"``,
            ``"ell"``, ``"csr"``, or a dict of sparse layer name -> one of those (others
            ``"auto"``).
        batch_size: the batch the choices are measured at (1: latency).
        overwrite: replace ``path`` if it exists.
        rounds: timed calls per candidate.

    Returns:
        The metadata written to ``rigl_export.json``: ``format``, ``layers`` (per sparse
        layer: kind, kernel shape, nnz, sparsity, representation, measured ms per candidate,
        ``stored_bytes`` of its kernel arrays and ``csr_bytes`` = nnz × 4 + index bytes of a
        CSR with int32 indices: nnz × 4 + (n_out + 1) × 4), totals and versions.

    Raises:
        ValueError: naming ``format``, ``representation``, ``batch_size`` or ``path`` (exists
            without ``overwrite``), or ``model`` if it cannot be exported.
        ImportError: for ``format="auto"`` without the LiteRT runtime, naming
            ``requirements-export.txt``.
    """
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {format!r}.")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}.")
    if not isinstance(model, keras.Model):
        raise ValueError(f"model: expected a keras.Model, got {type(model).__name__}.")
    refuse_wrapped(model, "rigl.export")
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"path: {path!r} exists; choose another or pass overwrite=True.")
    sparse = any(_is_sparse(layer) for layer in walk_layers(model))
    if not sparse:
        warnings.warn("export: the model has no sparse layer (rigl.sparsify was never "
                      "applied); exporting it dense.", UserWarning, stacklevel=2)
    if format == "tflite" and representation != "auto":
        raise ValueError(f"representation: {representation!r} applies to the saved_model "
                         "format (LiteRT picks its own kernels); leave it 'auto' for tflite.")
    if format == "auto":
        _require_litert()
    metadata = {"rigl_export": 1, "batch_size": batch_size, "tensorflow": tf.__version__,
                "keras": keras.__version__, "layers": []}
    staging = tempfile.mkdtemp(prefix="rigl-export-")
    try:
        built = {}
        if format in ("saved_model", "auto"):
            inference, records = inference_model(model, representation, batch_size, rounds)
            target = os.path.join(staging, "saved_model")
            metadata["saved_model"] = _write_saved_model(inference, target, batch_size, rounds)
            built["saved_model"] = target
            metadata["layers"] = records
        if format in ("tflite", "auto"):
            target = os.path.join(staging, "tflite")
            os.makedirs(target)
            flatbuffer, metadata["tflite_batch"] = _convert_tflite(model, sparse, batch_size)
            with open(os.path.join(target, TFLITE_FILE), "wb") as f:
                f.write(flatbuffer)
            built["tflite"] = target
            if not metadata["layers"]:
                metadata["layers"] = [_litert_record(layer) for layer in walk_layers(model)
                                      if _is_sparse(layer)]
        if format == "auto":
            x = _example_input(model, batch_size)
            metadata["auto_ms"] = {
                name: round(_median_ms(_runner(name, folder, metadata.get("tflite_batch")), x,
                                       rounds), 4)
                for name, folder in built.items()}
            format = min(metadata["auto_ms"], key=metadata["auto_ms"].get)
        metadata["format"] = format
        if format == "tflite":
            for record in metadata["layers"]:
                record["representation"] = "litert"
        _totals(metadata, built[format])
        with open(os.path.join(built[format], METADATA_FILE), "w") as f:
            json.dump(metadata, f, indent=1)
        if os.path.exists(path):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        shutil.move(built[format], path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return metadata


def _serve_function(model, jit_compile: bool):
    signature = [tf.TensorSpec(x.shape, x.dtype, name=x.name.split(":")[0])
                 for x in model.inputs]

    @tf.function(input_signature=signature, jit_compile=jit_compile, autograph=False)
    def serve(*inputs):
        return model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)
    return serve


def _write_saved_model(model, path: str, batch_size: int, rounds: int) -> dict:
    """Saves ``model``'s serving function, compiled whole with XLA or not, whichever runs
    faster at ``batch_size`` here (CSR products have no XLA form: such models are not
    compiled). Returns what was measured and chosen.

    Each variable is saved once: Keras' own ``model.export`` writes every weight twice (as
    the model's and as the endpoints'; keras-team/keras#23553), doubling the artefact.
    """
    x = _example_input(model, batch_size)
    plain, xla = _serve_function(model, False), _serve_function(model, True)
    times = {"plain": _median_ms(plain, x, rounds)}
    try:
        times["xla"] = _median_ms(xla, x, rounds)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as error:
        times["xla"] = f"cannot compile: {str(error).splitlines()[0][:200]}"
    jit = isinstance(times["xla"], float) and times["xla"] < times["plain"]
    serve = xla if jit else plain
    module = tf.Module()
    concrete = serve.get_concrete_function()
    module.variables_used = list(concrete.variables)
    module.serve = serve
    tf.saved_model.save(module, path, signatures={"serving_default": concrete})
    return {"jit_compile": jit, "whole_model_ms": {k: round(v, 4) if isinstance(v, float)
                                                   else v for k, v in times.items()}}


def _layer_record(layer, kernel) -> dict:
    """A sparse layer's metadata: its kind and, where it has a sparse kernel (``kernel``, of
    ``_kernel_of``), shape, nnz, sparsity and CSR bytes (nnz × 4 + nnz × 4 + (n_out + 1) × 4)."""
    record = {"name": layer.name, "layer": type(layer).__name__}
    if kernel is None:
        return dict(record, kind=PLAIN_TWINS.get(type(layer), type(layer)).__name__)
    _, _, values, shape, kind, _ = kernel
    return dict(record, kind=kind, kernel_shape=list(shape), nnz=len(values),
                sparsity=round(1 - len(values) / int(np.prod(shape)), 6),
                csr_bytes=len(values) * 8 + (shape[1] + 1) * 4)


def _litert_record(layer) -> dict:
    return _layer_record(layer, _kernel_of(layer))


def _totals(metadata: dict, folder: str) -> None:
    sparse = [r for r in metadata["layers"] if "stored_bytes" in r and "nnz" in r]
    metadata["bytes_on_disk"] = _folder_bytes(folder)
    if sparse:
        stored = sum(r["stored_bytes"] for r in sparse)
        csr = sum(r["csr_bytes"] for r in sparse)
        metadata["sparse_layers"] = {"stored_bytes": stored, "csr_bytes": csr,
                                     "ratio": round(stored / csr, 4)}


def _example_input(model, batch_size: int):
    """A batch for timing: normal floats, or zeros for integer inputs (valid token ids)."""
    spec = model.inputs[0]
    shape = (batch_size,) + tuple(1 if d is None else int(d) for d in spec.shape[1:])
    if np.issubdtype(np.dtype(spec.dtype), np.integer):
        return np.zeros(shape, spec.dtype)
    return np.random.default_rng(0).standard_normal(shape).astype(spec.dtype)


# ------------------------------------------------------------------------------ loading


def _require_litert():
    try:
        from ai_edge_litert import interpreter  # noqa: F401
    except ImportError:
        raise ImportError(f"the LiteRT runtime (ai-edge-litert) is not installed; "
                          f"pip install -r {EXPORT_REQUIREMENTS}") from None


class _LiteRT:
    """Runs a flatbuffer; one of a fixed ``batch`` runs a bigger batch in slices."""

    def __init__(self, file: str, batch: int | None = None):
        _require_litert()
        from ai_edge_litert import interpreter

        self.interpreter = interpreter.Interpreter(model_path=file,
                                                   num_threads=os.cpu_count())
        self.batch, self.shape = batch, None

    def __call__(self, x):
        x = np.asarray(x)
        if self.batch is not None and len(x) != self.batch:
            pad = -len(x) % self.batch
            padded = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
            parts = [self(padded[i:i + self.batch]) for i in range(0, len(padded), self.batch)]
            return np.concatenate(parts)[:len(x)]
        detail = self.interpreter.get_input_details()[0]
        if self.shape != x.shape:
            self.interpreter.resize_tensor_input(detail["index"], x.shape)
            self.interpreter.allocate_tensors()
            self.shape = x.shape
        self.interpreter.set_tensor(detail["index"], x.astype(detail["dtype"]))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.interpreter.get_output_details()[0]["index"])


class _SavedModel:
    """Runs ``serve`` through its one concrete function: calling the restored
    ``tf.function`` re-checks its arguments against the signature on every call, which costs
    ~0.3 ms, more than a LeNet's whole product (``docs/performance.md``)."""

    def __init__(self, folder: str):
        self.loaded = tf.saved_model.load(folder)  # owns the variables ``serve`` reads
        self.serve = self.loaded.serve.get_concrete_function()
        self.dtype = self.serve.structured_input_signature[0][0].dtype

    def __call__(self, x):
        return self.serve(tf.constant(x, self.dtype)).numpy()


def _runner(format: str, folder: str, batch: int | None = None):
    if format == "tflite":
        return _LiteRT(os.path.join(folder, TFLITE_FILE), batch)
    return _SavedModel(folder)


class Exported:
    """A loaded artefact of ``export``: call it on a numpy batch for a numpy batch.

    Attributes:
        metadata: the artefact's ``rigl_export.json``.
        format: ``"saved_model"`` or ``"tflite"``.
    """

    def __init__(self, path: str):
        file = os.path.join(path, METADATA_FILE)
        if not os.path.isfile(file):
            raise ValueError(f"path: {path!r} is not an artefact of rigl.export (no "
                             f"{METADATA_FILE}).")
        with open(file) as f:
            self.metadata = json.load(f)
        self.format = self.metadata["format"]
        self._run = _runner(self.format, path, self.metadata.get("tflite_batch"))

    def __call__(self, x) -> np.ndarray:
        return self._run(x)


def load_exported(path: str) -> Exported:
    """Loads an artefact written by ``export`` (``rigl.load_exported("export/")(x)``).

    Raises:
        ValueError: naming ``path`` if it holds no artefact.
        ImportError: for a LiteRT artefact without the runtime, naming
            ``requirements-export.txt``.
    """
    return Exported(path)

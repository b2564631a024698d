"""Converting between masked storage and truly sparse storage: ``to_sparse``, ``to_masked``.

``to_sparse(model)`` turns every ``rigl.MaskedDense`` of a model made by ``rigl.sparsify``
into a ``rigl.SparseDense`` holding exactly its active connections (same positions, same
values, same bias); ``to_masked(model)`` turns them back. Both are exact: the outputs agree
within float rounding (the sparse product sums in another order). Only Dense layers have a
sparse form today: masked convolutions and GRUs stay masked, with a warning.

Where a new sparse form plugs in: add its masked type -> converter pair to ``_TO_SPARSE``
and the reverse to ``_TO_MASKED`` (a converter makes the new layer's config from the old
one's; ``_copy_connections`` moves the weights).
"""

from __future__ import annotations

import warnings

import keras
import numpy as np

from rigl.layers import MaskedDense, is_masked
from rigl.masking import walk_layers
from rigl.path_masks import refuse_wrapped
from rigl.sparse_layers import SparseDense

# Dense config keys SparseDense takes as they are.
_SHARED_KEYS = ("name", "trainable", "dtype", "units", "activation", "use_bias",
                "kernel_initializer", "bias_initializer", "kernel_regularizer",
                "bias_regularizer", "activity_regularizer", "bias_constraint")


def _sparse_config(layer: MaskedDense) -> dict:
    config = layer.get_config()
    for key, allowed in (("kernel_constraint", None), ("lora_rank", None),
                         ("quantization_config", None)):
        if config.get(key, allowed) is not allowed:
            raise ValueError(f"model: layer {layer.name!r} has {key}={config[key]!r}, which "
                             "SparseDense does not support; remove it before to_sparse.")
    sparse = {key: config[key] for key in _SHARED_KEYS if key in config}
    sparse["nnz"] = int(np.count_nonzero(keras.ops.convert_to_numpy(layer.mask)))
    return sparse


def _masked_config(layer: SparseDense) -> dict:
    config = layer.get_config()
    return {key: config[key] for key in _SHARED_KEYS if key in config}


def _check_model(model) -> None:
    if not isinstance(model, keras.Model):
        raise ValueError(f"model: expected a keras.Model, got {type(model).__name__}.")
    refuse_wrapped(model, "rigl.to_sparse")
    if not (isinstance(model, keras.Sequential) or hasattr(model, "_nodes_by_depth")):
        raise ValueError(
            f"model: only Sequential and functional Keras models can be converted, got a "
            f"subclassed model ({type(model).__name__}).")
    names = [layer.name for layer in walk_layers(model)
             if layer.weights and not isinstance(layer, keras.Model)]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"model: layer names {repeated} occur more than once (across nested "
                         "models); give every layer a unique name.")


def _copy_connections(source, target) -> None:
    """Copies ``source``'s weights into ``target`` (same layer, or a masked/sparse pair)."""
    if isinstance(target, SparseDense) and isinstance(source, MaskedDense):
        mask = keras.ops.convert_to_numpy(source.mask).astype(bool)
        rows, cols = np.nonzero(mask)
        target.set_connections(rows, cols,
                               keras.ops.convert_to_numpy(source.masked_kernel)[mask])
    elif isinstance(target, MaskedDense) and isinstance(source, SparseDense):
        rows, cols, _ = source.connections()
        mask = np.zeros(source.kernel_shape, bool)
        mask[rows, cols] = True
        target.mask.assign(mask)
        target.masked_kernel.assign(source.dense_kernel())
    else:
        target.set_weights(source.get_weights())
        return
    if source.bias is not None:
        target.bias.assign(source.bias)


def _convert(model, converters: dict):
    originals = {layer.name: layer for layer in walk_layers(model)}

    def clone_layer(layer):
        convert = converters.get(type(layer))
        if convert is None:
            return type(layer).from_config(layer.get_config())
        new_type, config = convert
        return new_type.from_config(config(layer))

    clone = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    for layer in walk_layers(clone):
        if layer.weights and not isinstance(layer, keras.Model):
            _copy_connections(originals[layer.name], layer)
    return clone


_TO_SPARSE = {MaskedDense: (SparseDense, _sparse_config)}
_TO_MASKED = {SparseDense: (MaskedDense, _masked_config)}


def to_sparse(model):
    """A copy of ``model`` whose ``MaskedDense`` layers are ``SparseDense`` (truly sparse).

    Each ``SparseDense`` stores exactly the masked layer's active connections (its ``nnz``
    is the mask's count) with their values, and the same bias, activation, initializers and
    regularizers. Other layers are copied as they are: masked convolutions and GRUs have no
    sparse form yet and stay masked (a warning names them). As ``keras.models.clone_model``
    does, a compiled model's copy is compiled from its compile config (a fresh optimizer:
    optimizer state is not carried over; convert before compiling to choose your own).

    Example:
        >>> sparse = rigl.to_sparse(rigl.sparsify(model, 0.99))

    Raises:
        ValueError: naming ``model`` if it is not a Sequential/functional model or was never
            sparsified (no masked or sparse layer), or naming the layer that has a
            ``kernel_constraint``/LoRA/quantization SparseDense cannot hold.
    """
    _check_model(model)
    layers = walk_layers(model)
    if not any(is_masked(layer) or isinstance(layer, SparseDense) for layer in layers):
        raise ValueError("model: was never sparsified (it has no masked layer); call "
                         "rigl.sparsify(model, sparsity) first, then rigl.to_sparse.")
    staying = [layer.name for layer in layers if is_masked(layer) and type(layer) not in
               _TO_SPARSE]
    if staying:
        warnings.warn(f"to_sparse: layers {staying} have no sparse form (only Dense layers "
                      "do) and stay masked (dense storage).", UserWarning, stacklevel=2)
    return _convert(model, _TO_SPARSE)


def to_masked(model):
    """A copy of ``model`` whose ``SparseDense`` layers are ``MaskedDense`` again.

    The masked kernel holds each active connection's value at its position (dense memory:
    ``n_in · n_out`` weights and a mask per layer); dead entries (after pruning) are absent.
    Compiled like ``to_sparse``'s copy.

    Raises:
        ValueError: naming ``model`` if it has no ``SparseDense`` layer.
    """
    _check_model(model)
    if not any(isinstance(layer, SparseDense) for layer in walk_layers(model)):
        raise ValueError("model: has no SparseDense layer to convert; rigl.to_masked undoes "
                         "rigl.to_sparse.")
    return _convert(model, _TO_MASKED)

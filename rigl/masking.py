"""Turning a Keras model sparse (``sparsify``), reading its masks, and exporting it (``strip``)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import keras
import numpy as np

from rigl import distributions, seeds
from rigl.layers import MASKED_TWINS, PLAIN_TWINS, MaskedWeight, is_masked, kernel_shapes
from rigl.sparse_layers import SparseDense


def walk_layers(model) -> list:
    """All layers of ``model``, descending into nested Sequential/functional models."""
    layers = []
    for layer in model.layers:
        layers.append(layer)
        if isinstance(layer, keras.Model):
            layers.extend(walk_layers(layer))
    return layers


def masked_layers(model) -> list:
    """The masked layers of ``model``, in model order (nested models included)."""
    return [layer for layer in walk_layers(model) if is_masked(layer)]


def masked_weights(model) -> list[MaskedWeight]:
    """Every masked kernel of ``model`` with its mask, in model order.

    A masked layer has one (named like the layer), a masked GRU two
    (``"<layer>/kernel"``, ``"<layer>/recurrent_kernel"``).
    """
    return [weight for layer in masked_layers(model) for weight in layer.masked_weights()]


def sparse_weights(model) -> list:
    """Every sparse kernel of ``model`` in model order, whatever its storage: the
    ``MaskedWeight``s of masked layers (``masked_weights``) and the ``rigl.SparseDense``
    layers themselves (truly sparse storage). Each has a ``name``, the key of masks and
    sparsity maps."""
    found = []
    for layer in walk_layers(model):
        if is_masked(layer):
            found.extend(layer.masked_weights())
        elif isinstance(layer, SparseDense):
            found.append(layer)
    return found


def active_counts(model) -> dict[str, tuple[int, int]]:
    """Sparse-kernel name -> ``(active connections, kernel size)`` for every sparse kernel.

    O(nnz) for ``SparseDense`` (its ``alive`` flags are counted; no dense mask is made), so
    it serves a 65,536 × 65,536 layer; a masked kernel's mask is counted.
    """
    counts = {}
    for weight in sparse_weights(model):
        if isinstance(weight, SparseDense):
            counts[weight.name] = (weight.active_count(), math.prod(weight.kernel_shape))
        else:
            mask = keras.ops.convert_to_numpy(weight.mask)
            counts[weight.name] = (int(np.count_nonzero(mask)), int(mask.size))
    return counts


def connected_units(weight) -> tuple[np.ndarray, np.ndarray]:
    """For one sparse kernel (masked, or a ``SparseDense``) read as a matrix (every axis but
    the last, the last), which rows have an active connection and which columns (output
    units) have an active input: two boolean vectors; O(nnz) for a ``SparseDense``."""
    if isinstance(weight, SparseDense):
        rows, cols, _ = weight.connections()
        n_in, n_out = weight.kernel_shape
        return np.bincount(rows, minlength=n_in) > 0, np.bincount(cols, minlength=n_out) > 0
    mask = keras.ops.convert_to_numpy(weight.mask) != 0
    matrix = mask.reshape(-1, mask.shape[-1])
    return matrix.any(axis=1), matrix.any(axis=0)


def units_without_inputs(model) -> dict[str, int]:
    """Sparse-kernel name -> how many of its output units (the kernel's last axis: a Dense
    layer's neurons, a convolution's filters, a GRU's gate units) have no active input left.
    SRigL's ablated neurons are these; other methods can starve a unit too."""
    counts = {}
    for weight in sparse_weights(model):
        fed = connected_units(weight)[1]
        counts[weight.name] = int(fed.size - np.count_nonzero(fed))
    return counts


def _dense_mask(layer: SparseDense) -> np.ndarray:
    rows, cols, _ = layer.connections()
    mask = np.zeros(layer.kernel_shape, bool)
    mask[rows, cols] = True
    return mask


def get_masks(model) -> dict[str, np.ndarray]:
    """Sparse-kernel name -> boolean mask (numpy, the kernel's shape) for every sparse kernel.

    Masked kernels give their mask; a ``SparseDense`` gives the dense mask of its active
    connections, made here: O(n_in · n_out) memory (4.3 GB for a 65,536 × 65,536 layer), so
    for small models only. To count, use ``active_counts``/``measured_sparsities``, O(nnz).
    """
    return {w.name: _dense_mask(w) if isinstance(w, SparseDense)
            else keras.ops.convert_to_numpy(w.mask) for w in sparse_weights(model)}


def measured_sparsities(model) -> dict[str, float]:
    """Sparse-kernel name -> fraction of its entries that are not active connections, for
    every masked kernel and ``SparseDense`` (``active_counts``: O(nnz) for the latter)."""
    return {name: 1.0 - active / size for name, (active, size) in active_counts(model).items()}


def replica_mismatches(model) -> list[str]:
    """Names of sparse kernels whose connections differ between the local replicas of a
    strategy: a masked kernel's mask, a ``SparseDense``'s ``rows``, ``cols`` and ``alive``.

    Always empty without a distribution strategy; a non-empty list means the replicas train
    different networks.
    """
    mismatched = []
    for weight in sparse_weights(model):
        variables = ((weight.rows, weight.cols, weight.alive) if isinstance(weight, SparseDense)
                     else (weight.mask,))
        for variable in variables:
            variable = getattr(variable, "value", variable)
            strategy = getattr(variable, "_distribute_strategy", None)
            if strategy is None:
                continue
            copies = [np.asarray(v) for v in strategy.experimental_local_results(variable)]
            if any(not np.array_equal(copies[0], c) for c in copies[1:]):
                mismatched.append(weight.name)
                break
    return mismatched


def total_sparsity(model) -> float:
    """Fraction of inactive entries over all sparse kernels of ``model`` together (masked
    and ``SparseDense``; O(nnz) for the latter)."""
    counts = active_counts(model).values()
    if not counts:
        raise ValueError("model: has no masked or sparse layers; call rigl.sparsify(model, "
                         "...) or build it with rigl.sparse_model first.")
    return 1.0 - sum(active for active, _ in counts) / sum(size for _, size in counts)


def _check_graph_model(model, param: str = "model") -> None:
    if not isinstance(model, keras.Model):
        raise ValueError(f"{param}: expected a keras.Model, got {type(model).__name__}.")
    if not (isinstance(model, keras.Sequential) or hasattr(model, "_nodes_by_depth")):
        raise ValueError(
            f"{param}: only Sequential and functional Keras models can be rewritten, got a "
            f"subclassed model ({type(model).__name__}); build it with keras.Input instead."
        )
    if not model.built:
        raise ValueError(
            f"{param}: the model is not built; give it an input shape (keras.Input) first."
        )


def _copy_weights(source, target) -> None:
    """Copies every weight of layer ``source`` except masks into layer ``target``, in order.

    Masked and plain twins hold the same weights in the same order plus the masks. A masked
    kernel is multiplied by its mask on the way, so the copy is exact even if someone wrote
    to the kernel behind the mask's back.
    """
    def unmasked(layer):
        masks = {id(w.mask) for w in layer.masked_weights()} if is_masked(layer) else set()
        return [v for v in layer.weights if id(v) not in masks]

    masks = {id(w.masked_kernel): w.mask for w in source.masked_weights()} if is_masked(
        source) else {}
    for src, dst in zip(unmasked(source), unmasked(target), strict=True):
        if tuple(src.shape) != tuple(dst.shape):
            raise ValueError(f"model: cannot copy {src.path} {tuple(src.shape)} into "
                             f"{dst.path} {tuple(dst.shape)}.")
        value = keras.ops.convert_to_numpy(src)
        if id(src) in masks:
            value = np.where(keras.ops.convert_to_numpy(masks[id(src)]), value, 0)
        dst.assign(value)


def _rewrite(model, clone_layer):
    """Clones ``model`` with ``clone_layer`` and copies every layer's weights over."""
    names = [layer.name for layer in walk_layers(model)
             if layer.weights and not isinstance(layer, keras.Model)]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(
            f"model: layer names {repeated} occur more than once (across nested models); rigl "
            "addresses layers by name, so give every layer a unique name."
        )
    clone = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    originals = {layer.name: layer for layer in walk_layers(model)}
    for layer in walk_layers(clone):
        if layer.weights and not isinstance(layer, keras.Model):
            _copy_weights(originals[layer.name], layer)
    return clone


def random_mask(shape, sparsity: float, seed: int, name: str) -> np.ndarray:
    """A boolean mask of ``shape`` with exactly ``num_zeros(sparsity, size)`` False entries.

    The positions are uniformly random, drawn from ``(seed, crc32(name))`` so that every
    process (replica, worker, resumed run) draws the same mask.
    """
    size = int(np.prod(shape))
    rng = np.random.default_rng(seeds.layer_seed(seed, name))
    flat = np.ones(size, dtype=bool)
    flat[rng.permutation(size)[: distributions.num_zeros(sparsity, size)]] = False
    return flat.reshape(shape)


def _check_names(param: str, names: Iterable[str], known: list[str]) -> None:
    for name in names:
        if name not in known:
            raise ValueError(
                f"{param}: no maskable layer named {name!r}; maskable layers are {known}."
            )


def plan_sparsities(
    kernels: Mapping[str, Mapping[str, tuple]],
    sparsity: float,
    distribution: str = "uniform",
    custom_sparsity: Mapping[str, float] | None = None,
    dense_layers: Iterable[str] = (),
    erk_power_scale: float = 1.0,
) -> dict[str, float]:
    """The sparsity of every sparse kernel, as ``sparsify`` and ``rigl.sparse_model`` give it.

    Validates the arguments (the same errors for both) and applies ``rigl.layer_sparsities``
    to the kernels of the layers not in ``dense_layers``.

    Args:
        kernels: layer name -> {weight name -> kernel shape} for every maskable layer, in
            model order (``rigl.layers.kernel_shapes``).
        sparsity, distribution, custom_sparsity, dense_layers, erk_power_scale: as
            ``sparsify``.

    Returns:
        Weight name -> sparsity for the kernels of the layers not in ``dense_layers``.

    Raises:
        ValueError: naming the argument, for ``dense_layers`` given as a string, an unknown
            layer name, a layer both custom and dense, no layer left to sparsify, or a
            sparsity/distribution the distributions module rejects.
    """
    if isinstance(dense_layers, str):
        raise ValueError(f"dense_layers: expected a list of layer names, got the string "
                         f"{dense_layers!r}.")
    dense_layers = list(dense_layers)
    custom_sparsity = dict(custom_sparsity or {})
    _check_names("dense_layers", dense_layers, list(kernels))
    _check_names("custom_sparsity", custom_sparsity,
                 [name for shapes in kernels.values() for name in shapes])
    both = sorted(name for name in custom_sparsity if name.split("/")[0] in dense_layers)
    if both:
        raise ValueError(f"custom_sparsity: layers {both} are also in dense_layers.")
    shapes = {name: shape for layer, layer_shapes in kernels.items()
              if layer not in dense_layers for name, shape in layer_shapes.items()}
    if not shapes:
        raise ValueError(
            "model: has no maskable layer (Dense, Conv2D or DepthwiseConv2D) left to sparsify"
            + (f" once dense_layers={dense_layers} are excluded." if dense_layers else ".")
        )
    return distributions.layer_sparsities(shapes, sparsity, distribution, custom_sparsity,
                                          erk_power_scale)


def sparsify(
    model,
    sparsity: float,
    distribution: str = "uniform",
    custom_sparsity: Mapping[str, float] | None = None,
    dense_layers: Iterable[str] = (),
    erk_power_scale: float = 1.0,
    seed: int = 0,
):
    """Returns a copy of ``model`` whose Dense/Conv2D/DepthwiseConv2D layers are masked.

    Every maskable layer (Dense, Conv2D, DepthwiseConv2D, GRU) not named in ``dense_layers``
    is replaced by its masked twin (weights kept); masked kernel ``l`` gets a random mask
    with exactly ``floor(s_l * N_l)`` zeros,
    where ``s_l`` comes from ``rigl.layer_sparsities`` and ``N_l`` is its kernel size, and
    its kernel is zeroed where the mask is zero. The copy is not compiled.

    Example:
        >>> sparse = rigl.sparsify(model, 0.9, "erk", dense_layers=["conv1"])

    Args:
        model: a built Sequential or functional Keras model (nested models are walked).
        sparsity: target fraction of zeros, in [0, 1).
        distribution: "uniform", "er" or "erk" (see ``rigl.layer_sparsities``).
        custom_sparsity: masked-weight name -> sparsity overriding the distribution: the
            layer's name, or ``"<gru>/kernel"`` / ``"<gru>/recurrent_kernel"`` for a GRU.
        dense_layers: names of maskable layers to leave as ordinary dense layers.
        erk_power_scale: exponent applied to the ER/ERK raw densities.
        seed: seed of the random masks (the same seed gives the same masks everywhere).

    Raises:
        ValueError: naming the argument, for a model that is not a built Sequential or
            functional model or has no maskable layer, an unknown layer name, or a
            sparsity/distribution the distributions module rejects.
    """
    _check_graph_model(model)
    maskable = [layer for layer in walk_layers(model) if type(layer) in MASKED_TWINS]
    sparsities = plan_sparsities({layer.name: kernel_shapes(layer) for layer in maskable},
                                 sparsity, distribution, custom_sparsity, dense_layers,
                                 erk_power_scale)
    masked_names = {layer.name for layer in maskable
                    if any(name in sparsities for name in kernel_shapes(layer))}

    def clone_layer(layer):
        twin = MASKED_TWINS.get(type(layer)) if layer.name in masked_names else None
        return (twin or type(layer)).from_config(layer.get_config())

    sparse = _rewrite(model, clone_layer)
    for weight in masked_weights(sparse):
        mask = random_mask(weight.mask.shape, sparsities[weight.name], seed, weight.name)
        weight.mask.assign(mask)
        weight.masked_kernel.assign(np.where(mask, weight.masked_kernel.numpy(), 0))
    return sparse


def strip(model):
    """Returns a plain Keras copy of ``model``: masked layers become ordinary layers.

    Kernels keep their values with masked-out weights at zero; nothing of rigl is needed to
    load the result.
    """
    _check_graph_model(model)

    def clone_layer(layer):
        plain = PLAIN_TWINS.get(type(layer), type(layer))
        return plain.from_config(layer.get_config())

    return _rewrite(model, clone_layer)

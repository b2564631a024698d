"""Turning a Keras model sparse (``sparsify``), reading its masks, and exporting it (``strip``)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping

import keras
import numpy as np

from rigl import distributions, kernels, seeds
from rigl.layers import (
    MASKED_TWINS,
    PLAIN_TWINS,
    MaskedWeight,
    is_masked,
    kernel_shapes,
    kernel_variables,
)
from rigl.path_masks import SparseModel, copy_model, wrap
from rigl.sparse_layers import SparseDense


class DenseKernelsWarning(UserWarning):
    """``rigl.sparsify`` left some trainable kernels of the model dense (listed by path)."""


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


def _wrappers(model) -> list[SparseModel]:
    return [m for m in [model, *walk_layers(model)] if isinstance(m, SparseModel)]


def masked_weights(model) -> list[MaskedWeight]:
    """Every masked kernel of ``model`` with its mask, in model order.

    A masked layer has one (named like the layer), a masked GRU two
    (``"<layer>/kernel"``, ``"<layer>/recurrent_kernel"``); a ``rigl.SparseModel`` one per
    masked kernel, named by the kernel's path.
    """
    return [weight for wrapper in _wrappers(model) for weight in wrapper.masked_weights()] + [
        weight for layer in masked_layers(model) for weight in layer.masked_weights()]


def sparse_weights(model) -> list:
    """Every sparse kernel of ``model`` in model order, whatever its storage: the
    ``MaskedWeight``s of masked layers (``masked_weights``) and the ``rigl.SparseDense``
    layers themselves (truly sparse storage). Each has a ``name``, the key of masks and
    sparsity maps."""
    found = [weight for wrapper in _wrappers(model) for weight in wrapper.masked_weights()]
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
    return {weight.name: active_counts_of(weight) for weight in sparse_weights(model)}


def active_counts_of(weight) -> tuple[int, int]:
    """``(active connections, kernel size)`` of one sparse kernel (``active_counts``)."""
    if isinstance(weight, SparseDense):
        return weight.active_count(), math.prod(weight.kernel_shape)
    mask = keras.ops.convert_to_numpy(weight.mask)
    return int(np.count_nonzero(mask)), int(mask.size)


def connected_units(weight) -> tuple[np.ndarray, np.ndarray]:
    """For one sparse kernel (masked, or a ``SparseDense``) read as a matrix of inputs ×
    output units (``rigl.kernels.matrix_layout``: every axis but the last, and the last; an
    EinsumDense's contracted and output axes), which rows have an active connection and
    which columns (output units) have an active input: two boolean vectors; O(nnz) for a
    ``SparseDense``."""
    if isinstance(weight, SparseDense):
        rows, cols, _ = weight.connections()
        n_in, n_out = weight.kernel_shape
        return np.bincount(rows, minlength=n_in) > 0, np.bincount(cols, minlength=n_out) > 0
    matrix = _as_matrix(weight, weight.mask) != 0
    return matrix.any(axis=1), matrix.any(axis=0)


def unit_inputs(weight) -> tuple[np.ndarray, np.ndarray]:
    """For one sparse kernel (masked, or a ``SparseDense``) read as inputs × output units
    (as ``connected_units``), each output unit's number of active inputs (its fan-in, which
    SRigL holds constant) and the mean |w| over those inputs (0 for a unit with none): two
    vectors over the output units; O(nnz) for a ``SparseDense``."""
    if isinstance(weight, SparseDense):
        _, cols, values = weight.connections()
        n_out = weight.kernel_shape[1]
        counts = np.bincount(cols, minlength=n_out)
        total = np.bincount(cols, weights=np.abs(values), minlength=n_out)
    else:
        active = _as_matrix(weight, weight.mask) != 0
        kernel = _as_matrix(weight, weight.masked_kernel)
        counts = active.sum(axis=0)
        total = np.where(active, np.abs(kernel), 0.0).sum(axis=0)
    return counts.astype(np.int64), total / np.maximum(counts, 1)


def _as_matrix(weight: MaskedWeight, variable) -> np.ndarray:
    value = keras.ops.convert_to_numpy(variable)
    return value.reshape(kernels.matrix_layout(getattr(weight, "layer", None), value.shape))


def units_without_inputs(model) -> dict[str, int]:
    """Sparse-kernel name -> how many of its output units (``connected_units``: a Dense
    layer's neurons, a convolution's filters, a GRU's gate units, an EinsumDense's outputs
    such as a query projection's heads × head dims) have no active input left. SRigL's
    ablated neurons are these; other methods can starve a unit too."""
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
    if isinstance(model, keras.Model) and not (
            isinstance(model, keras.Sequential) or hasattr(model, "_nodes_by_depth")):
        raise ValueError(
            f"{param}: only Sequential and functional Keras models can be rewritten, got a "
            f"subclassed model ({type(model).__name__}); build it with keras.Input instead."
        )
    _check_built(model, param)


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


def _check_built(model, param: str = "model") -> None:
    if not isinstance(model, keras.Model):
        raise ValueError(f"{param}: expected a keras.Model, got {type(model).__name__}.")
    if not model.built:
        raise ValueError(f"{param}: the model is not built; call it on a batch or give it an "
                         "input shape (keras.Input, or model.build(shape)) first.")


def _twin_names(model, selected: list[kernels.Kernel]) -> dict[int, str] | None:
    """Kernel variable id -> the masked-twin name (the layer's, ``"<gru>/kernel"``...) when
    ``model`` is Sequential/functional and every selected kernel is one a masked twin of a
    layer of its own masks (both of a GRU's or neither); else None (mask by path)."""
    if not (isinstance(model, keras.Sequential) or hasattr(model, "_nodes_by_depth")):
        return None
    names, layers = {}, {}
    for layer in walk_layers(model):
        if type(layer) not in MASKED_TWINS:
            continue
        owned = kernel_variables(layer)
        for name, variable in owned.items():
            names[id(variable)] = name
            layers[id(variable)] = [id(v) for v in owned.values()]
    chosen = {id(k.variable) for k in selected}
    if not chosen or not chosen <= set(names):
        return None
    if any(set(layers[v]) - chosen for v in chosen):  # one of a GRU's two kernels
        return None
    return names


def _plan_by_path(selected: list[kernels.Kernel], sparsity, distribution, custom_sparsity,
                  erk_power_scale) -> dict[str, float]:
    paths = [k.path for k in selected]
    custom = dict(custom_sparsity or {})
    for name in custom:
        if name not in paths:
            raise ValueError(f"custom_sparsity: no sparse kernel {name!r}; the kernels "
                             f"sparsified (by path) are {paths}.")
    density = {}
    if distribution in ("er", "erk") and sparsity:
        for kernel in selected:
            if kernel.path in custom:
                continue
            dims = kernel.density_dims()
            if dims is None:
                raise ValueError(
                    f"distribution: {distribution!r} has no fan-in/fan-out rule for kernel "
                    f"{kernel.path!r} of shape {kernel.shape} ({type(kernel.layer).__name__}); "
                    "give it a custom_sparsity, exclude it, or use 'uniform' (rigl.kernels).")
            density[kernel.path] = dims
    return distributions.layer_sparsities({k.path: k.shape for k in selected}, sparsity,
                                          distribution, custom, erk_power_scale,
                                          density_dims=density)


def _warn_dense(dense: list[kernels.Kernel]) -> None:
    if dense:
        listed = [f"{k.path} {k.shape}" for k in dense]
        warnings.warn(f"rigl.sparsify left {len(dense)} trainable kernel(s) dense: "
                      f"{', '.join(listed)}.", DenseKernelsWarning, stacklevel=3)


def sparsify(
    model,
    sparsity: float,
    distribution: str = "uniform",
    custom_sparsity: Mapping[str, float] | None = None,
    dense_layers: Iterable[str] = (),
    erk_power_scale: float = 1.0,
    seed: int = 0,
    *,
    include=None,
    exclude=None,
    embeddings: bool = False,
    copy: bool = True,
):
    """Returns a copy of ``model`` whose kernels are masked at the requested sparsity.

    Any built Keras 3 model: Sequential, functional or subclassed, with its kernels in its
    own layers or nested inside custom layers (KerasHub backbones). The kernels sparsified by
    default are those of ``Dense``, ``EinsumDense`` (so ``MultiHeadAttention``), every
    convolution, and the ``GRU``/``LSTM``/``SimpleRNN`` cells (input and recurrent kernels);
    ``Embedding`` tables with ``embeddings=True``; ``include``/``exclude`` choose others
    (``rigl.kernels``). Kernel ``l`` gets a random mask with exactly ``floor(s_l * N_l)``
    zeros, ``s_l`` from ``rigl.layer_sparsities`` and ``N_l`` its size, and is zeroed there.
    A ``DenseKernelsWarning`` lists every trainable kernel left dense; ``rigl.summary``
    prints what was done. The copy is not compiled.

    How the masks are held:

    * a Sequential/functional model whose sparse kernels all belong to its own ``Dense``,
      ``Conv2D``, ``DepthwiseConv2D`` and ``GRU`` layers has those layers replaced by their
      masked twins (``rigl.MaskedDense``...); masks are named by layer (``"fc1"``,
      ``"<gru>/kernel"``, ``"<gru>/recurrent_kernel"``);
    * any other model is wrapped in a ``rigl.SparseModel`` that holds one mask per kernel and
      leaves the layers as they are; masks are named by the kernel's path
      (``"transformer_layer_0/self_attention/query/kernel"``; ``rigl.path_masks``).

    Example:
        >>> sparse = rigl.sparsify(model, 0.9, "erk", dense_layers=["conv1"])
        >>> sparse = rigl.sparsify(gpt2_backbone, 0.9, exclude=["*attention_output*"])

    Args:
        model: a built Keras model.
        sparsity: target fraction of zeros, in [0, 1).
        distribution: "uniform", "er" or "erk" (see ``rigl.layer_sparsities``; the fan-in and
            fan-out rule for kernels of any rank is in ``rigl.kernels``).
        custom_sparsity: mask name (as above; a kernel path works for masked twins too) ->
            sparsity overriding the distribution.
        dense_layers: names of layers whose kernels stay dense.
        erk_power_scale: exponent applied to the ER/ERK raw densities.
        seed: seed of the random masks (the same seed gives the same masks everywhere).
        include: None (the default kernels), or layer types and/or strings (variable path,
            layer name or layer path; glob patterns allowed): exactly the kernels matched.
        exclude: the same; the kernels matched stay dense.
        embeddings: with ``include=None``, sparsify ``Embedding`` tables too.
        copy: for a model masked by path, wrap a copy of it (made from its config: custom
            layers must be registered, as for ``model.save``); False wraps and masks the
            model itself (by path, never by masked twins).

    Raises:
        ValueError: naming the argument, for a model that is not built or is already sparse,
            a selector or layer name that matches no kernel, a variable named that is not a
            kernel, an unknown custom_sparsity key, a kernel ER/ERK has no rule for, or a
            sparsity/distribution the distributions module rejects.
    """
    _check_built(model)
    if sparse_weights(model):
        raise ValueError("model: is already sparse (it has masked or sparse layers); "
                         "sparsify the dense model, or rigl.strip(model) first.")
    if isinstance(dense_layers, str):
        raise ValueError(f"dense_layers: expected a list of layer names, got the string "
                         f"{dense_layers!r}.")
    dense_layers = list(dense_layers)
    selected, dense = kernels.select(model, include, exclude, embeddings)
    names = _twin_names(model, selected) if copy else None
    if names is not None:
        # Masked twins: as before this module knew kernels by path; dense kernels of twin
        # layers become dense_layers, path keys of custom_sparsity the twins' names.
        chosen = {names[id(k.variable)] for k in selected}
        excluded = sorted({name.split("/")[0] for v, name in names.items()
                           if name not in chosen})
        by_path = {k.path: names[id(k.variable)] for k in selected}
        custom = {by_path.get(key, key): value for key, value in (custom_sparsity or {}).items()}
        try:
            sparse = _sparsify_twins(model, sparsity, distribution, custom,
                                     dense_layers + [n for n in excluded if n not in dense_layers],
                                     erk_power_scale, seed)
        except (NotImplementedError, TypeError) as error:  # a layer Keras cannot rebuild
            raise ValueError(
                f"model: cannot copy {type(model).__name__} from its layers' configs "
                f"({type(error).__name__}: {str(error).strip().splitlines()[0]}); register its "
                "custom layers and give them a get_config, or pass copy=False to mask the "
                "model itself in place.") from error
        masked = {id(w.masked_kernel) for w in masked_weights(sparse)}
        _warn_dense([k for k in kernels.all_kernels(sparse)
                     if id(k.variable) not in masked])
        return sparse
    if dense_layers:
        def layer_names(kernel):
            return {name for layer in kernel.owners or (kernel.layer,)
                    for name in (layer.name, getattr(layer, "path", layer.name))}

        known = set().union(*(layer_names(k) for k in selected + dense))
        for name in dense_layers:
            if name not in known:
                raise ValueError(f"dense_layers: no layer named {name!r} holds a kernel; "
                                 f"layers holding kernels: {sorted(known)}.")
        kept = [k for k in selected if not layer_names(k) & set(dense_layers)]
        dense = dense + [k for k in selected if k not in kept]
        selected = kept
    if not selected:
        raise ValueError("model: has no kernel left to sparsify"
                         + (f" once dense_layers={dense_layers} are excluded."
                            if dense_layers else " (see include/exclude)."))
    sparsities = _plan_by_path(selected, sparsity, distribution, custom_sparsity,
                               erk_power_scale)
    _warn_dense(dense)
    return wrap(model, selected, sparsities, seed, copy=copy)


def _sparsify_twins(model, sparsity, distribution, custom_sparsity, dense_layers,
                    erk_power_scale, seed):
    """``sparsify`` by masked twins: Sequential/functional models of Dense, Conv2D,
    DepthwiseConv2D and GRU layers (names are layer names)."""
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
    load the result. A ``rigl.SparseModel`` gives a copy of the model it wraps.
    """
    if isinstance(model, SparseModel):
        plain = copy_model(model.model)
        index = {id(v): i for i, v in enumerate(model.model.weights)}
        for target in model.masked_weights():
            variable = plain.weights[index[id(target.masked_kernel)]]
            variable.assign(np.where(keras.ops.convert_to_numpy(target.mask),
                                     keras.ops.convert_to_numpy(target.masked_kernel), 0))
        return plain
    _check_graph_model(model)

    def clone_layer(layer):
        plain = PLAIN_TWINS.get(type(layer), type(layer))
        return plain.from_config(layer.get_config())

    return _rewrite(model, clone_layer)


def summary(model, print_fn=print) -> list[dict]:
    """Prints and returns what ``rigl.sparsify`` did: one row per trainable kernel of
    ``model`` (``name``, ``path``, ``shape``, ``sparsity``, ``nonzeros``, ``size``), sparse
    kernels by their mask name, kernels left dense with ``name`` None and sparsity 0.

    Example:
        >>> rigl.summary(rigl.sparsify(model, 0.9))
    """
    rows, sparse_ids = [], set()
    for weight in sparse_weights(model):
        active, size = active_counts_of(weight)
        variable = weight.masked_kernel if isinstance(weight, MaskedWeight) else weight.values
        sparse_ids.add(id(variable))
        shape = (tuple(weight.kernel_shape) if isinstance(weight, SparseDense)
                 else tuple(int(d) for d in variable.shape))
        rows.append({"name": weight.name, "path": variable.path, "shape": shape,
                     "sparsity": 1 - active / size, "nonzeros": active, "size": size})
    for kernel in kernels.all_kernels(model):
        if id(kernel.variable) not in sparse_ids:
            size = math.prod(kernel.shape)
            rows.append({"name": None, "path": kernel.path, "shape": kernel.shape,
                         "sparsity": 0.0, "nonzeros": size, "size": size})
    if print_fn is not None:
        width = max([len(r["path"]) for r in rows] + [4])
        lines = [f"{'path':<{width}}  {'shape':<18} {'sparsity':>8} {'nonzeros':>12}"]
        for r in rows:
            lines.append(f"{r['path']:<{width}}  {str(r['shape']):<18} "
                         f"{r['sparsity']:>8.4f} {r['nonzeros']:>12,}"
                         + ("" if r["name"] is not None else "  dense"))
        total = sum(r["size"] for r in rows)
        nonzeros = sum(r["nonzeros"] for r in rows)
        lines.append(f"{len(rows)} kernels, {nonzeros:,} of {total:,} weights nonzero "
                     f"({1 - nonzeros / max(total, 1):.4f} sparse)")
        print_fn("\n".join(lines))
    return rows

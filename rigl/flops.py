"""FLOPs and model-size accounting for sparse models (Evci et al. 2020, "Rigging the Lottery",
https://arxiv.org/abs/1911.11134, Appendix H), with the MicroNet challenge counting rules the
paper's code used (``google_research/micronet_challenge/counting.py`` via
``rigl/sparse_utils.py:get_stats``).

Two countings (``counting=`` of every function here; ``COUNTINGS``)
    ``"paper"`` (the default) counts as the reference did, so that a figure printed to the
    paper's digits is the paper's; ``"exact"`` counts the model as it is. They differ in three
    conventions only (``Conventions``), everything below being common to both:

    * *Padded stem and depthwise convolutions.* MicroNet counts a convolution from the input
      it is given, with 'same' output sizes, and the reference's Keras models pad some layers
      explicitly: the ResNet-50 it counted (``tensorflow/tpu``'s ``resnet50_keras``) its stem
      (3 pixels a side), ``keras.applications``' MobileNets their stem and every strided
      depthwise convolution; the padding is then counted twice. ``"paper"`` counts the first
      counted layer and every ``DepthwiseConv2D`` fed by a ``ZeroPadding2D`` from the padded
      input: ResNet-50's stem at 115×115 outputs (from 230×230; its real output is 112×112),
      +0.16% dense FLOPs (8.202e9 instead of 8.189e9) and up to +0.0015 on the sparse
      ratios, the more the sparser the rest (uniform 90% with a dense stem: 0.1285 instead
      of 0.1272), which changes printed digits (RigL 5x, uniform 80%: 1.14x instead of
      1.13x); MobileNet-v1's stem at 113×113 and its strided depthwise layers at 57, 29, 15
      and 8 instead of 56, 28, 14, 7. Other explicit paddings (ResNet-50's strided 3×3
      convolutions, which the reference's Keras ResNet-50 padded 'same') are undone in both
      countings; ``"exact"`` undoes every ``ZeroPadding2D``.
    * *Depthwise convolutions.* In TF1 Keras ``DepthwiseConv2D`` subclassed ``Conv2D``, so
      ``get_stats`` counted it as a convolution with kernel ``(kh, kw, c_in, multiplier)``:
      the same multiplications, but the bias and activation terms once per spatial position
      instead of once per channel, and in the size one bias per multiplier instead of one per
      channel. ``"paper"`` does the same (``fan_in = kh·kw·c_in``,
      ``N_out = H'·W'·multiplier``, ``multiplier`` channels); ``"exact"`` counts per channel
      (``fan_in = kh·kw``, ``N_out = H'·W'·c_in·multiplier``).
    * *Gradual pruning's mean FLOPs* (``pruning_progress``). ``"paper"`` averages the
      schedule's cubic sampled every ``frequency`` steps from step 0 to the last step, both
      included (the reference's notebook: 33 samples for 32,000 steps, 0.560 of the dense
      FLOPs for ResNet-50 at 80%); ``"exact"`` averages over every step the sparsity of the
      latest update at or before it (0.571).

    With ``"paper"`` the dense ResNet-50 is 8.202e9 FLOPs and 102.122 MB (``"exact"``:
    8.189e9, 102.122), MobileNet-v1 1,141.544 MFLOPs and 16.864 MB, the reference
    notebook's figures to the last digit (``"exact"``: 1,142.524 and 16.884), MobileNet-v2
    606.9 and 13.923 (608.2, 13.951). Models without a padded stem, depthwise layers or a
    pruning schedule (the MLPs, LeNet-5, the small CNN, WRN-22-2, the GRU) count the same in
    both. ``scripts/flops_table.py --paper`` compares every published figure with ours.

What is counted
    Every kernel of the layers whose cost is a product by a weight matrix: ``Dense``,
    ``EinsumDense`` (so every ``MultiHeadAttention`` and KerasHub transformer projection),
    ``Conv1D/2D/3D``, ``Conv1D/2D/3DTranspose``, ``DepthwiseConv1D/2D``,
    ``SeparableConv1D/2D`` (both kernels), ``GRU``, ``LSTM`` and ``SimpleRNN`` (input and
    recurrent kernels), rigl's masked twins and ``rigl.SparseDense`` (a Dense of its
    ``kernel_shape``), wherever they sit: in a Sequential, functional or subclassed model,
    nested inside custom layers, or in a ``rigl.SparseModel``. Not counted, having no kernel
    or no product by one: batch norm and layer norm, pooling, residual additions, padding,
    softmax, the loss, embedding lookups (an ``Embedding`` table is not a row, even when
    sparsified with ``embeddings=True``; nor is any other custom layer's own weight), the
    attention's score and context products (``QKᵀ`` and the weighted sum of values: they
    multiply activations by activations) and the RNN gates' element-wise products.

    Every counted kernel is a *row*, keyed like masks and sparsity maps
    (``masking.active_counts``): for the models ``rigl.sparsify`` turns into masked twins
    (Sequential/functional models whose counted kernels all belong to their own ``Dense``,
    ``Conv2D``, ``DepthwiseConv2D`` and ``GRU`` layers) the layer name, or ``"<gru>/kernel"``
    and ``"<gru>/recurrent_kernel"`` for the two kernels of a GRU; for every other model the
    kernel's variable path as ``rigl.sparsify`` names its mask
    (``"transformer_layer_0/self_attention/query/kernel"``, ``"lstm/lstm_cell/kernel"``; a
    ``rigl.SparseModel``'s rows take its masks' names).

Reading the model
    *Graph counting* (the models keyed by layer, each counted layer called once): each
    layer's input shape is read from its inbound node, the model's input shape known; this
    is the only counting that sees a ``ZeroPadding2D`` before a convolution (above).
    *Traced counting* (every other model, a shared layer, or ``inputs=`` given): the model
    is run once, eagerly, on a batch of one example while each counted layer's calls are
    recorded (its ``call`` wrapped on the instance and restored after), and each row's
    ``N_out`` comes from the shapes of those calls. The example is the first of ``inputs=``
    (an array, or a dict/list of arrays as the model takes them) if given, else ones of the
    model's declared input shapes and dtypes (integer ids get integer ones; a
    ``rigl.SparseModel`` reads the model it wraps); a subclassed model, or inputs of unknown
    size (a KerasHub backbone's ``(None, None)`` token ids), need ``inputs=``, else a
    ``ValueError`` names it. A layer called several times (shared) counts every call: its
    row's ``N_out`` is the sum over the calls; a layer never called counts 0 FLOPs (its
    weights still count in the size). Convolutions are counted from their input as given
    (a ``ZeroPadding2D`` before one is not undone), the same in both countings.

FLOPs of a row (one example, forward pass)
    With ``N_out`` outputs and ``L = fan_in · (1 - s)`` nonzero inputs per output (``s`` the
    row's sparsity, ``fan_in`` the inputs of one output when dense), a row costs ``L·N_out``
    multiplications, ``(L - 1)·N_out`` additions to accumulate plus ``N_out`` for the bias, and
    ``N_out`` for the activation::

        flops = 2·L·N_out + N_out

    As in the reference, the bias and activation terms are counted for every layer, whether or
    not it has a bias or an activation (ResNet's convolutions have neither; batch norm and ReLU
    follow them). Per layer type:

    * ``Conv2D``: ``fan_in = kh·kw·c_in/groups``, ``N_out = ceil(H/sh)·ceil(W/sw)·c_out`` with
      ``H×W`` the input's spatial size: output sizes are those of 'same' padding whatever the
      layer's padding, as the reference (which passes ``'same'`` for every layer; for an odd
      kernel MicroNet's output size is this one, for an even one it has one more). The input
      size is the one before any ``ZeroPadding2D`` feeding the layer, but for ``"paper"``'s
      padded stem (above).
    * ``DepthwiseConv2D``: the same formula, with ``fan_in`` and ``N_out`` as the counting
      says (above): ``exact`` is MicroNet's ``DepthWiseConv2D`` with ``use_bias=True`` and
      ReLU, which is how ``get_stats`` asks for it; ``paper`` is what it got.
    * ``Dense``: ``fan_in`` = input units; ``N_out`` = units times any leading non-batch dims
      (a Dense applied at every time step counts every step).
    * ``GRU`` with ``U`` units over ``T`` time steps: two dense rows per time step, the input
      kernel ``(in, 3U)`` and the recurrent kernel ``(U, 3U)``, each with ``N_out = T·3U``. The
      gates' element-wise products are not counted. ``LSTM`` likewise with ``4U`` (kernels
      ``(in, 4U)``, ``(U, 4U)``), ``SimpleRNN`` with ``U``; a cell called outside an RNN
      layer counts one time step a call.
    * ``EinsumDense``: ``fan_in`` = the product of the kernel dims the equation contracts
      (``rigl.kernels.einsum_fans``), ``N_out`` = the elements of one example's output,
      ``channels`` = the kernel's other dims (``size / fan_in``). A query projection
      ``(d_model, heads, head_dim)`` over ``T`` tokens: ``fan_in = d_model``,
      ``N_out = T·heads·head_dim``, the ``Dense`` it replaces.
    * ``Conv1D``, ``Conv3D``: as ``Conv2D`` (``fan_in`` every kernel dim but the last;
      'same' output sizes ``ceil(size/stride)``). ``DepthwiseConv1D`` as ``DepthwiseConv2D``.
    * ``Conv1D/2D/3DTranspose`` (kernel ``(k..., c_out, c_in)``): every input position
      multiplies the whole kernel, so ``fan_in = c_in`` and
      ``N_out = (input positions)·prod(k)·c_out``: the multiplications are
      ``nonzeros × input positions``, and the bias/activation term is counted once per
      ``(position, tap, channel)`` product, as the row formula has it (the outputs overlap).
    * ``SeparableConv1D/2D``: two rows, the depthwise kernel ``(k..., c_in, m)`` per channel
      (as ``"exact"`` counts ``DepthwiseConv2D``, in both countings: the reference had no
      separable layer) and the pointwise kernel ``(1..., c_in·m, c_out)``, a 1×1 convolution
      over the same ``ceil(size/stride)`` output positions.

    The sparsity of a row comes from its real mask (masked layers: ``L`` uses the mask's exact
    nonzero count; a ``SparseDense`` its active count, the same figure, read in O(nnz)), or
    for a plain layer from a ``{row name: sparsity}`` map, with the nonzero count
    ``size - floor(s·size)`` that ``rigl.sparsify`` would give, so a plain model with a map
    counts exactly like the model sparsified with it. (The reference used ``s·size``
    unrounded: under one weight a layer, below every printed digit.)

Size
    32 bits per nonzero weight, 1 more bit per weight of a sparse row (its bit mask; a dense row
    has none), and 32 bits per output channel of every row (the bias or, for batch-normed
    layers, the per-channel affine term; a GRU row counts ``3U``, an LSTM row ``4U``; an
    ``EinsumDense`` row ``size / fan_in``). ``MB = bits / 8e6``. This convention gives the
    reference README's 102.122 MB for the dense ResNet-50 exactly.

Training FLOPs (Appendix H)
    The backward pass costs twice the forward pass. Per example and step, with dense forward
    FLOPs ``f_D`` and sparse ``f_S``: dense ``3·f_D``; static, SET and SNIP ``3·f_S``; SNFS
    ``2·f_S + f_D`` (a dense gradient every step); RigL ``(3·f_S·ΔT + 2·f_S + f_D)/(ΔT + 1)``
    (a dense gradient every ΔT steps); gradual pruning the average over the steps of
    ``3·f(s_t)`` (see ``pruning_progress`` for the two ways of averaging); a small dense model
    ``3·f`` of itself. An M× run takes M times the steps.

Example:
    >>> sparsities = flops.sparsity_map(model, 0.8, "erk")
    >>> f_s, f_d = flops.inference_flops(model, sparsities), flops.dense_inference_flops(model)
    >>> flops.train_flops_ratio("rigl", f_d, f_s, multiplier=5, update_freq=100)
    >>> flops.dense_inference_flops(model, counting="exact")  # the model as it is
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence

import keras
import numpy as np

from rigl import distributions, kernels, masking, methods
from rigl.layers import kernel_variables
from rigl.path_masks import SparseModel
from rigl.schedules import polynomial_sparsity
from rigl.sparse_layers import SparseDense

__all__ = [
    "COUNTINGS", "METHODS", "PARAM_BITS", "Conventions", "LayerFlops", "LayerSpec",
    "average_inference_flops", "conventions", "dense_inference_flops", "first_layer",
    "inference_flops", "layer_specs", "layer_table", "model_size_mb", "num_params",
    "pruning_progress", "solve_width", "sparsity_map", "total_train_flops",
    "train_flops_per_step", "train_flops_ratio",
]

PARAM_BITS = 32
METHODS = methods.METHODS  # the registry's names (rigl.methods)


@dataclasses.dataclass(frozen=True)
class Conventions:
    """Where the countings differ (see the module docstring); all else is common to both.

    Attributes:
        padded_stem: count the first counted layer and every ``DepthwiseConv2D`` from their
            input as given, a ``ZeroPadding2D``'s padding included (else from the input
            before it).
        depthwise_as_conv: count a ``DepthwiseConv2D`` as ``get_stats``' ``Conv2D`` branch
            did: ``fan_in = kh·kw·c_in``, bias and activation per position and multiplier.
        sampled_schedule: average gradual pruning's FLOPs over the cubic sampled every
            ``frequency`` steps, first and last step included (else over every step).
    """

    padded_stem: bool
    depthwise_as_conv: bool
    sampled_schedule: bool


# Name -> conventions: "paper" counts as the reference did (the default everywhere), "exact"
# the model as it is.
COUNTINGS = {
    "paper": Conventions(padded_stem=True, depthwise_as_conv=True, sampled_schedule=True),
    "exact": Conventions(padded_stem=False, depthwise_as_conv=False, sampled_schedule=False),
}


def conventions(counting: str) -> Conventions:
    """The ``Conventions`` of a counting's name (``"paper"`` or ``"exact"``).

    Raises:
        ValueError: naming ``counting``, for any other value.
    """
    if not isinstance(counting, str) or counting not in COUNTINGS:
        raise ValueError(f"counting: expected one of {list(COUNTINGS)}, got {counting!r}.")
    return COUNTINGS[counting]


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """The sparsity-independent facts of one counted kernel, as a counting sees them
    (``fan_in``, ``outputs`` and ``channels`` of a padded stem or a depthwise layer depend on
    it: see the module docstring).

    Attributes:
        name: row key: the layer name, or ``"<gru>/kernel"`` / ``"<gru>/recurrent_kernel"``;
            for a model counted by path the kernel's (mask's) name (module docstring).
        layer_type: ``"Conv2D"``, ``"DepthwiseConv2D"``, ``"Dense"``, ``"GRU"``, or the
            Keras class of the other counted layers (``"EinsumDense"``, ``"Conv1D"``,
            ``"Conv2DTranspose"``, ``"SeparableConv2D"``..., ``"LSTM"``, ``"SimpleRNN"``).
        kernel_shape: shape of the kernel (and of its mask).
        fan_in: inputs of one output when dense.
        outputs: ``N_out``, outputs per example.
        channels: output channels (biases / per-channel terms counted in the size).
    """

    name: str
    layer_type: str
    kernel_shape: tuple[int, ...]
    fan_in: int
    outputs: int
    channels: int

    @property
    def size(self) -> int:
        """Number of weights of the kernel."""
        return math.prod(self.kernel_shape)


@dataclasses.dataclass(frozen=True)
class LayerFlops:
    """One row of the per-layer table (see ``layer_table``).

    Attributes:
        name, layer_type, kernel_shape, fan_in, outputs, channels: as ``LayerSpec``.
        sparsity: fraction of zeros of the kernel (``1 - nonzeros / size``).
        nonzeros: nonzero weights.
        size: weights of the kernel.
        flops: forward FLOPs per example at this sparsity.
        dense_flops: forward FLOPs per example of the dense kernel.
        bits: storage of the row in bits (weights, mask, per-channel terms).
    """

    name: str
    layer_type: str
    kernel_shape: tuple[int, ...]
    fan_in: int
    outputs: int
    channels: int
    sparsity: float
    nonzeros: int
    size: int
    flops: float
    dense_flops: float
    bits: float

    def as_dict(self) -> dict:
        """The row as a JSON-friendly dict (``type`` and ``shape`` for the type and shape)."""
        return {"name": self.name, "type": self.layer_type, "shape": list(self.kernel_shape),
                "fan_in": self.fan_in, "outputs": self.outputs, "channels": self.channels,
                "sparsity": self.sparsity, "nonzeros": self.nonzeros, "size": self.size,
                "flops": self.flops, "dense_flops": self.dense_flops, "bits": self.bits}


# ---------------------------------------------------------------------------------------------
# Reading the model.


def _input_tensor(layer):
    nodes = getattr(layer, "_inbound_nodes", [])
    if len(nodes) != 1:
        raise ValueError(
            f"model: layer {layer.name!r} is called {len(nodes)} times in the graph; FLOPs are "
            "counted for Sequential/functional models (built with keras.Input) whose counted "
            "layers are each called once."
        )
    tensors = nodes[0].input_tensors
    if len(tensors) != 1:
        raise ValueError(f"model: layer {layer.name!r} takes {len(tensors)} inputs; expected 1.")
    return tensors[0]


def _known_dims(layer, shape) -> tuple[int, ...]:
    dims = tuple(shape)[1:]  # the batch dim is ignored
    if any(d is None for d in dims):
        raise ValueError(
            f"model: layer {layer.name!r} has input shape {tuple(shape)} with unknown dims; "
            "build the model with a fixed input shape (batch dim aside), or pass an example "
            "batch as inputs=, to count FLOPs."
        )
    return tuple(int(d) for d in dims)


def _unpadded_input_shape(layer) -> tuple[int, ...]:
    """The input shape of ``layer`` before any ZeroPadding2D directly feeding it."""
    tensor = _input_tensor(layer)
    while True:
        history = getattr(tensor, "_keras_history", None)
        producer = history[0] if history else None
        if not isinstance(producer, keras.layers.ZeroPadding2D):
            return _known_dims(layer, tensor.shape)
        tensor = _input_tensor(producer)


def _conv_outputs(layer, channels: int, padded: bool) -> int:
    dims = (_known_dims(layer, _input_tensor(layer).shape) if padded
            else _unpadded_input_shape(layer))
    spatial = dims[1:] if layer.data_format == "channels_first" else dims[:-1]
    return math.prod(math.ceil(size / stride) for size, stride in zip(spatial, layer.strides)) * (
        channels)


def _layer_specs(layer, rules: Conventions, first: bool) -> list[LayerSpec]:
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        shape = tuple(int(d) for d in layer.kernel.shape)  # (kh, kw, c_in, multiplier)
        # Per channel, or as a Conv2D with c_out = multiplier (get_stats' dispatch).
        channels = shape[3] if rules.depthwise_as_conv else shape[2] * shape[3]
        fan_in = math.prod(shape[:3]) if rules.depthwise_as_conv else shape[0] * shape[1]
        return [LayerSpec(layer.name, "DepthwiseConv2D", shape, fan_in,
                          _conv_outputs(layer, channels, rules.padded_stem), channels)]
    if isinstance(layer, keras.layers.Conv2D):
        shape = tuple(int(d) for d in layer.kernel.shape)  # (kh, kw, c_in / groups, c_out)
        return [LayerSpec(layer.name, "Conv2D", shape, math.prod(shape[:-1]),
                          _conv_outputs(layer, shape[-1], rules.padded_stem and first),
                          shape[-1])]
    if isinstance(layer, (keras.layers.Dense, SparseDense)):
        # (fan_in, units); a SparseDense counts as the Dense layer of its kernel shape.
        shape = (tuple(layer.kernel_shape) if isinstance(layer, SparseDense)
                 else tuple(int(d) for d in layer.kernel.shape))
        leading = _known_dims(layer, _input_tensor(layer).shape)[:-1]
        return [LayerSpec(layer.name, "Dense", shape, shape[0],
                          math.prod(leading) * shape[1], shape[1])]
    if isinstance(layer, keras.layers.GRU):
        dims = _known_dims(layer, _input_tensor(layer).shape)  # (time, features)
        steps = dims[0]
        specs = []
        for suffix, kernel in (("kernel", layer.cell.kernel),
                               ("recurrent_kernel", layer.cell.recurrent_kernel)):
            shape = tuple(int(d) for d in kernel.shape)  # (in or U, 3U)
            specs.append(LayerSpec(f"{layer.name}/{suffix}", "GRU", shape, shape[0],
                                   steps * shape[1], shape[1]))
        return specs
    return []


def _check_model(model) -> None:
    if not isinstance(model, keras.Model):
        raise ValueError(f"model: expected a keras.Model, got {type(model).__name__}.")
    if not model.built:
        raise ValueError("model: the model is not built; give it an input shape (keras.Input).")


# ---------------------------------------------------------------------------------------------
# Models of any structure: kernels by path, geometry from one traced call.

_TRANSPOSE = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
              keras.layers.Conv3DTranspose)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_CELLS = {keras.layers.GRUCell: "GRU", keras.layers.LSTMCell: "LSTM",
          keras.layers.SimpleRNNCell: "SimpleRNN"}
_COUNTED_KINDS = (keras.layers.EinsumDense, keras.layers.Dense, *_TRANSPOSE, *_DEPTHWISE,
                  *_SEPARABLE, *_CONV, *_CELLS)
# Layers the graph counting (``_layer_specs``) reads from their inbound node.
_GRAPH_KINDS = (keras.layers.Dense, SparseDense, keras.layers.Conv2D,
                keras.layers.DepthwiseConv2D, keras.layers.GRU)


@dataclasses.dataclass(frozen=True)
class _Counted:
    """One counted kernel of a traced model.

    ``layer`` owns the kernel (a cell for an RNN); ``called`` is the layer whose calls are
    traced (the RNN layer around a cell, which calls its cell once a time step); ``kernel``
    is None for a ``SparseDense`` (its kernel is not a variable).
    """

    kernel: kernels.Kernel | None
    layer: object
    called: object

    @property
    def variable_name(self) -> str:
        return "kernel" if self.kernel is None else self.kernel.variable.name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.layer.kernel_shape) if self.kernel is None else self.kernel.shape

    def labels(self) -> set[str]:
        """Names of the layers holding the kernel (``dense_layers`` may name any of them)."""
        owners = (self.layer,) if self.kernel is None else self.kernel.owners or (self.layer,)
        return {text for layer in owners
                for text in (layer.name, getattr(layer, "path", layer.name))}


def _counted_kernels(model) -> list[_Counted]:
    """Every kernel of ``model`` of a counted kind, nested and custom layers included."""
    counted = []
    for kernel in kernels.all_kernels(model):
        layer = kernel.layer
        if (not isinstance(layer, _COUNTED_KINDS)
                or kernel.variable.name not in kernels.KERNEL_NAMES):
            continue
        called = layer
        if isinstance(layer, tuple(_CELLS)) and len(kernel.owners) > 1 and isinstance(
                kernel.owners[-2], keras.layers.RNN):
            called = kernel.owners[-2]
        counted.append(_Counted(kernel, layer, called))
    order = {}  # layers in all_kernels' order, to put SparseDense layers in their place

    def visit(layer):
        order.setdefault(id(layer), len(order))
        if isinstance(layer, SparseDense) and layer.built:
            counted.append(_Counted(None, layer, layer))
        for sublayer in layer._flatten_layers(include_self=False, recursive=False):
            visit(sublayer)

    visit(model)
    return sorted(counted, key=lambda item: order[id(item.layer)])


def _graph_layers(model, counted: list[_Counted]) -> list | None:
    """The layers of the graph counting if ``model`` is one it reads, else None.

    That is: a Sequential/functional model (nested ones included; no ``rigl.SparseModel``)
    whose counted kernels all belong to its own ``Dense``, ``SparseDense``, ``Conv2D``,
    ``DepthwiseConv2D`` and ``GRU`` layers: the models ``rigl.sparsify`` turns into masked
    twins, whose rows are named by layer as the twins' masks are.
    """
    if not (isinstance(model, keras.Sequential) or hasattr(model, "_nodes_by_depth")):
        return None
    walked = masking.walk_layers(model)
    if any(isinstance(layer, SparseModel) for layer in walked):
        return None
    own = {id(layer) for layer in walked if isinstance(layer, _GRAPH_KINDS)}
    if any(id(item.called) not in own for item in counted):
        return None
    return [layer for layer in walked if id(layer) in own]


def _row_names(model, counted: list[_Counted], graph_layers: list | None) -> list[str]:
    """Row names: the mask's name for a masked or sparse kernel (``masking.active_counts``'s
    keys), else the graph counting's name (layer, ``"<gru>/kernel"``) for the models it reads,
    else the kernel's path."""
    names = {}
    for layer in graph_layers or ():
        if isinstance(layer, SparseDense):
            names[id(layer)] = layer.name
        else:
            names.update({id(v): name for name, v in kernel_variables(layer).items()})
    for weight in masking.sparse_weights(model):
        key = weight if isinstance(weight, SparseDense) else weight.masked_kernel
        names[id(key)] = weight.name
    return [names.get(id(item.layer), item.layer.name) if item.kernel is None
            else names.get(id(item.kernel.variable), item.kernel.path) for item in counted]


def _dims(value) -> tuple[int, ...]:
    """The shape without the batch dim of the first tensor of ``value``."""
    tensor = keras.tree.flatten(value)[0]
    return tuple(int(d) for d in tuple(tensor.shape)[1:])


def _declared_inputs(model):
    """The input structure (KerasTensors) a Sequential/functional model was built with."""
    while isinstance(model, SparseModel):
        model = model.model
    if isinstance(model, keras.Sequential):
        model = getattr(model, "_functional", None)
    return getattr(model, "_inputs_struct", None)


def _example_inputs(model, inputs):
    """A batch of one example: the first of ``inputs``, else ones of the model's declared
    input shapes and dtypes (integer ids get integer ones)."""
    if inputs is not None:
        def first(x):
            array = keras.ops.convert_to_numpy(x)
            if array.ndim < 1 or array.shape[0] < 1:
                raise ValueError(f"inputs: expected arrays with a batch dim first, got shape "
                                 f"{array.shape}.")
            return array[:1]
        return keras.tree.map_structure(first, inputs)
    declared = _declared_inputs(model)
    hint = ("pass an example batch as inputs= (an array, or a dict/list of arrays as the "
            "model takes them, e.g. inputs={'token_ids': np.ones((1, 128), 'int32'), "
            "'padding_mask': np.ones((1, 128), 'int32')}); only its shapes and dtypes are "
            "used.")
    if declared is None:
        raise ValueError(f"inputs: the input shape of {type(model).__name__} {model.name!r} is "
                         f"not known (not a model built with keras.Input); {hint}")
    unknown = [tuple(x.shape) for x in keras.tree.flatten(declared)
               if any(d is None for d in tuple(x.shape)[1:])]
    if unknown:
        raise ValueError(f"inputs: {type(model).__name__} {model.name!r} has inputs of unknown "
                         f"size {unknown}; {hint}")
    return keras.tree.map_structure(
        lambda x: np.ones((1, *tuple(x.shape)[1:]), dtype=x.dtype), declared)


def _trace(model, layers, inputs) -> dict[int, list[tuple[tuple, tuple]]]:
    """Runs ``model`` once on a batch of one example, recording for each of ``layers`` the
    shapes (without batch) of the first input and output of every call."""
    example = _example_inputs(model, inputs)
    records = {id(layer): [] for layer in layers}
    hooked = []

    def hook(layer, original):
        def call(*args, **kwargs):
            outputs = original(*args, **kwargs)
            first = args[0] if args else next(iter(kwargs.values()))
            records[id(layer)].append((_dims(first), _dims(outputs)))
            return outputs
        return call

    try:
        for layer in {id(layer): layer for layer in layers}.values():
            own = layer.__dict__.get("call")
            object.__setattr__(layer, "call", hook(layer, layer.call))
            hooked.append((layer, own))
        model(example)
    finally:
        for layer, own in reversed(hooked):
            if own is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", own)
    return records


def _spatial(layer, dims: tuple[int, ...]) -> tuple[int, ...]:
    return dims[1:] if getattr(layer, "data_format", None) == "channels_first" else dims[:-1]


def _same_positions(layer, dims: tuple[int, ...]) -> int:
    """Output positions of 'same' padding, whatever the layer's padding (the reference's)."""
    return math.prod(math.ceil(size / stride)
                     for size, stride in zip(_spatial(layer, dims), layer.strides))


def _traced_spec(item: _Counted, name: str, calls, rules: Conventions) -> LayerSpec:
    """The row of one traced kernel; ``N_out`` sums over the calls of its layer."""
    layer, shape = item.layer, item.shape
    size = math.prod(shape)

    def outputs(per_call: Callable[[tuple, tuple], int]) -> int:
        return sum(per_call(dims_in, dims_out) for dims_in, dims_out in calls)

    if isinstance(layer, tuple(_CELLS)):  # (in or U, gates·U), one row per time step
        steps = (lambda d, _: d[0]) if item.called is not layer else (lambda d, _: 1)
        return LayerSpec(name, _CELLS[next(c for c in _CELLS if isinstance(layer, c))], shape,
                         shape[0], outputs(lambda d, o: steps(d, o) * shape[1]), shape[1])
    if isinstance(layer, SparseDense | keras.layers.Dense) and not isinstance(
            layer, keras.layers.EinsumDense):
        return LayerSpec(name, "Dense", shape, shape[0],
                         outputs(lambda d, _: math.prod(d[:-1]) * shape[1]), shape[1])
    kind = next(c for c in _COUNTED_KINDS if isinstance(layer, c)).__name__
    if isinstance(layer, keras.layers.EinsumDense):
        fan_in = kernels.einsum_fans(layer.equation, shape)[0]
        return LayerSpec(name, kind, shape, fan_in, outputs(lambda _, o: math.prod(o)),
                         size // fan_in)
    if isinstance(layer, _TRANSPOSE):  # (k..., c_out, c_in): each input position
        taps = math.prod(shape[:-2]) * shape[-2]
        return LayerSpec(name, kind, shape, shape[-1],
                         outputs(lambda d, _: math.prod(_spatial(layer, d)) * taps), shape[-2])
    if isinstance(layer, _SEPARABLE) and item.variable_name == "pointwise_kernel":
        return LayerSpec(name, kind, shape, shape[-2],
                         outputs(lambda d, _: _same_positions(layer, d) * shape[-1]), shape[-1])
    if isinstance(layer, _SEPARABLE) or (isinstance(layer, _DEPTHWISE)
                                         and not rules.depthwise_as_conv):
        # (k..., c_in, multiplier), per channel.
        channels = shape[-2] * shape[-1]
        return LayerSpec(name, kind, shape, math.prod(shape[:-2]),
                         outputs(lambda d, _: _same_positions(layer, d) * channels), channels)
    # Conv1D/2D/3D (k..., c_in / groups, c_out), and depthwise as get_stats counted it.
    return LayerSpec(name, kind, shape, math.prod(shape[:-1]),
                     outputs(lambda d, _: _same_positions(layer, d) * shape[-1]), shape[-1])


def _traced_specs(model, counted: list[_Counted], names: list[str], rules: Conventions,
                  inputs) -> list[LayerSpec]:
    records = _trace(model, [item.called for item in counted], inputs)
    return [_traced_spec(item, name, records[id(item.called)], rules)
            for item, name in zip(counted, names)]


def _reads_graph(layers: list, inputs) -> bool:
    """Whether the graph counting applies: no example given and each layer called once."""
    return inputs is None and all(len(getattr(layer, "_inbound_nodes", [])) == 1
                                  for layer in layers)


def _specs(model, rules: Conventions, inputs) -> tuple[list[LayerSpec], list[_Counted] | None]:
    """The rows of ``model`` and, for a traced model, the counted kernels behind them."""
    _check_model(model)
    counted = _counted_kernels(model)
    graph = _graph_layers(model, counted)
    if graph is not None and _reads_graph(graph, inputs):
        specs = []
        for layer in masking.walk_layers(model):
            specs += _layer_specs(layer, rules, first=not specs)
        items = None
    else:
        specs = _traced_specs(model, counted, _row_names(model, counted, graph), rules,
                              inputs) if counted else []
        items = counted
    if not specs:
        raise ValueError("model: has no Dense, EinsumDense, convolution or GRU/LSTM/SimpleRNN "
                         "kernel to count.")
    names = [spec.name for spec in specs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"model: layer names {repeated} occur more than once.")
    return specs, items


def layer_specs(model, counting: str = "paper", *, inputs=None) -> list[LayerSpec]:
    """The counted kernels of ``model`` in model order (nested models and layers included).

    ``counting`` (``COUNTINGS``) sets the geometry of padded and depthwise convolutions
    (``fan_in``, ``outputs``, ``channels``); names and kernel shapes are the same in both.
    ``inputs``: an example batch (an array, or a dict/list of arrays as the model takes
    them), for a model whose input shape is not known (subclassed, or built with unknown
    dims); only the first example's shapes are read. See "Reading the model" in the module
    docstring.

    Raises:
        ValueError: naming ``model``, if it is not a built Keras model or has no counted
            kernel; naming ``inputs`` if the model must be traced and its input shape is not
            known; naming ``counting`` for an unknown counting.
    """
    return _specs(model, conventions(counting), inputs)[0]


def first_layer(model, *, inputs=None) -> str:
    """Row name of the first counted kernel of ``model`` (e.g. ResNet-50's ``conv1``)."""
    return layer_specs(model, inputs=inputs)[0].name


# ---------------------------------------------------------------------------------------------
# Sparsities.


def _check_fraction(value, name: str) -> float:
    return distributions.validate_sparsity(value, name)


def sparsity_map(
    model,
    sparsity: float,
    distribution: str = "uniform",
    dense_layers: Iterable[str] = (),
    custom_sparsity: Mapping[str, float] | None = None,
    erk_power_scale: float = 1.0,
    *,
    inputs=None,
) -> dict[str, float]:
    """Row name -> sparsity for every counted kernel of ``model``.

    ``rigl.layer_sparsities`` over the kernel shapes of the counted rows not in
    ``dense_layers`` (row names, or layer names: a GRU's keeps both kernels dense; for a
    model counted by path the name or path of any layer holding the kernel, as
    ``rigl.sparsify`` reads them); those get 0, as ``rigl.sparsify`` with the same arguments
    leaves them unmasked. ER/ERK read each kernel's fan-in and fan-out as ``rigl.sparsify``
    does (``rigl.kernels``: an ``EinsumDense`` kernel as the matrix its equation contracts),
    so the map is the sparsities ``rigl.sparsify`` gives for the same arguments. The paper
    keeps the first layer dense for ``uniform`` (``dense_layers=[first_layer(model)]``) and
    masks all layers for ``erk``. Meant for plain models: a masked model's rows take their
    masks. ``inputs``: as ``layer_specs``.

    Raises:
        ValueError: naming the argument, for an unknown row name or an invalid sparsity,
            distribution or exponent.
    """
    specs, counted = _specs(model, conventions("paper"), inputs)
    if isinstance(dense_layers, str):
        raise ValueError(f"dense_layers: expected a list of names, got the string "
                         f"{dense_layers!r}.")
    known = [spec.name for spec in specs]
    if counted is None:  # a row name, or a layer name (a GRU's keeps both of its kernels)
        labels = [{name, name.rsplit("/", 1)[0]} for name in known]
    else:
        labels = [{name} | item.labels() for name, item in zip(known, counted)]
    dense = set()
    for name in dense_layers:
        rows = [row for row, names in zip(known, labels) if name in names]
        if not rows:
            raise ValueError(f"dense_layers: no counted layer named {name!r}; known: {known}.")
        dense.update(rows)
    shapes = {spec.name: spec.kernel_shape for spec in specs if spec.name not in dense}
    if not shapes:
        raise ValueError("dense_layers: names every counted layer; nothing is left to sparsify.")
    density = {}
    if counted is not None:
        density = {spec.name: (item.shape if item.kernel is None
                               else item.kernel.density_dims())
                   for spec, item in zip(specs, counted) if spec.name in shapes}
    result = distributions.layer_sparsities(shapes, sparsity, distribution, custom_sparsity,
                                            erk_power_scale, density_dims=density)
    return {name: result.get(name, 0.0) for name in known}


def _nonzeros_from_mask(mask, spec: LayerSpec, param: str) -> int:
    mask = np.asarray(mask)
    if tuple(mask.shape) != spec.kernel_shape:
        raise ValueError(f"{param}[{spec.name!r}]: shape {tuple(mask.shape)} does not match "
                         f"the kernel's {spec.kernel_shape}.")
    return int(np.count_nonzero(mask))


def _row(spec: LayerSpec, nonzeros: int, param_bits: int = PARAM_BITS) -> LayerFlops:
    density = nonzeros / spec.size
    per_output = spec.fan_in * density  # L, nonzero inputs of one output (on average)
    flops = (2.0 * per_output + 1.0) * spec.outputs
    dense_flops = (2.0 * spec.fan_in + 1.0) * spec.outputs
    bits = param_bits * nonzeros + (spec.size if nonzeros < spec.size else 0)
    bits += param_bits * spec.channels
    return LayerFlops(spec.name, spec.layer_type, spec.kernel_shape, spec.fan_in, spec.outputs,
                      spec.channels, 1.0 - density, nonzeros, spec.size, flops, dense_flops,
                      float(bits))


def layer_table(
    model,
    sparsities: Mapping[str, float] | None = None,
    masks: Mapping[str, np.ndarray] | None = None,
    dense: bool = False,
    param_bits: int = PARAM_BITS,
    counting: str = "paper",
    *,
    inputs=None,
) -> list[LayerFlops]:
    """Per-row FLOPs, sparsity, nonzeros and size of ``model``.

    The sparsity of a row is taken from, in order: ``masks`` (if it names the row), the
    model's own active count (masked layers' masks, ``SparseDense`` layers' alive entries:
    ``rigl.masking.active_counts``), ``sparsities`` (plain layers), else 0.

    Args:
        model: a built Keras model of any kind (see "Reading the model").
        sparsities: row name -> sparsity in [0, 1) for plain (not sparse) rows.
        masks: row name -> 0/1 array of the kernel's shape, overriding the model's masks
            (e.g. a snapshot saved during training).
        dense: count every row dense, ignoring masks and sparsities.
        param_bits: bits per stored value.
        counting: ``"paper"`` (as the reference counted) or ``"exact"``; see the module
            docstring.
        inputs: an example batch for a model whose input shape is not known
            (``layer_specs``).

    Raises:
        ValueError: naming the argument, for an unknown row name, a sparsity for a sparse row,
            a sparsity out of [0, 1), a mask of the wrong shape or an unknown counting.
    """
    specs = layer_specs(model, counting, inputs=inputs)
    known = [spec.name for spec in specs]
    sparsities = dict(sparsities or {})
    masks = dict(masks or {})
    for param, names in (("sparsities", sparsities), ("masks", masks)):
        for name in names:
            if name not in known:
                raise ValueError(f"{param}: no counted layer named {name!r}; known: {known}.")
    # Active counts, not masks: O(nnz) for a SparseDense (no dense mask is made).
    model_counts = {} if dense else masking.active_counts(model)
    clash = sorted(set(sparsities) & set(model_counts))
    if clash:
        raise ValueError(f"sparsities: layers {clash} are masked or truly sparse; their "
                         "sparsity comes from their masks or active connections (pass `masks` "
                         "to override them).")
    rows = []
    for spec in specs:
        if dense:
            nonzeros = spec.size
        elif spec.name in masks:
            nonzeros = _nonzeros_from_mask(masks[spec.name], spec, "masks")
        elif spec.name in model_counts:
            nonzeros = model_counts[spec.name][0]
        else:
            s = _check_fraction(sparsities.get(spec.name, 0.0), f"sparsities['{spec.name}']")
            nonzeros = spec.size - distributions.num_zeros(s, spec.size)
        rows.append(_row(spec, nonzeros, param_bits))
    return rows


def inference_flops(model, sparsities=None, masks=None, counting: str = "paper", *,
                    inputs=None) -> float:
    """Forward FLOPs of one example (see ``layer_table`` for the arguments)."""
    return sum(row.flops for row in layer_table(model, sparsities, masks, counting=counting,
                                                inputs=inputs))


def dense_inference_flops(model, counting: str = "paper", *, inputs=None) -> float:
    """Forward FLOPs of one example with every counted kernel dense (``counting``: see
    ``layer_table``; ResNet-50 at 224×224: 8.202e9 ``"paper"``, 8.189e9 ``"exact"``)."""
    return sum(row.flops for row in layer_table(model, dense=True, counting=counting,
                                                inputs=inputs))


def model_size_mb(model, sparsities=None, masks=None, dense: bool = False,
                  param_bits: int = PARAM_BITS, counting: str = "paper", *,
                  inputs=None) -> float:
    """Size in MB (bits / 8e6): weights, bit masks of sparse rows, per-channel terms (a
    depthwise layer has ``multiplier`` of them for ``"paper"``, ``c_in·multiplier`` for
    ``"exact"``)."""
    return sum(row.bits for row in layer_table(model, sparsities, masks, dense, param_bits,
                                               counting, inputs=inputs)) / 8e6


def num_params(model, sparsities=None, masks=None, dense: bool = False, *,
               inputs=None) -> int:
    """Stored values: nonzero weights plus one per output channel of every row.

    The parameter count used to size a small dense model like a sparse one (what
    ``model_size_mb`` stores, without the bit masks). A count of the model as it is, the same
    for both countings (``"exact"``'s per-channel terms).
    """
    return sum(row.nonzeros + row.channels
               for row in layer_table(model, sparsities, masks, dense, counting="exact",
                                      inputs=inputs))


# ---------------------------------------------------------------------------------------------
# Training.


def _check_positive_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_flops(value, name: str) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}.")
    return float(value)


def pruning_progress(begin_step: int, end_step: int, frequency: int, total_steps: int,
                     counting: str = "paper") -> float:
    """Mean fraction of the final sparsity over a gradual pruning run of ``total_steps``.

    Gradual pruning (Zhu & Gupta 2017) updates the masks at ``begin_step``, every
    ``frequency`` steps after it up to ``end_step``, and at ``end_step`` (as
    ``rigl.GradualPruning``), following ``rigl.schedules.polynomial_sparsity`` from 0 to the
    final sparsity (dense before ``begin_step``). Because a row's FLOPs are linear in its
    density and every row follows the same cubic from 0 to its own final sparsity, the mean
    FLOPs of the run are ``f_D - progress·(f_D - f_S)``. The mean is taken:

    * ``counting="paper"``: as the reference's notebook did, over the cubic sampled at steps
      ``0, frequency, 2·frequency, ...`` up to ``total_steps``, both ends included (33
      samples for the paper's 32,000 steps, pruning every 1,000 from 10,000 to 25,000:
      0.5677);
    * ``counting="exact"``: over steps ``0..total_steps-1``, each at the sparsity set by the
      latest update at or before it (0.5542 for the same schedule).

    Raises:
        ValueError: naming the argument, for steps that are not integers,
            ``end_step < begin_step``, ``total_steps < 1`` or an unknown counting.
    """
    rules = conventions(counting)
    begin = _check_positive_int(begin_step, "begin_step", 0)
    end = _check_positive_int(end_step, "end_step", 0)
    frequency = _check_positive_int(frequency, "frequency", 1)
    total = _check_positive_int(total_steps, "total_steps", 1)
    if end < begin:
        raise ValueError(f"end_step: must be >= begin_step ({begin}), got {end}.")

    def fraction(step: int) -> float:
        if step < begin:
            return 0.0
        if end == begin:  # one-shot pruning at begin_step
            return 1.0
        return polynomial_sparsity(step, 1.0, 0.0, begin, end)

    if rules.sampled_schedule:
        samples = range(0, total + 1, frequency)
        return sum(fraction(step) for step in samples) / len(samples)
    updates = _update_steps(begin, end, frequency, total)
    weighted = 0.0
    for i, step in enumerate(updates):
        until = updates[i + 1] if i + 1 < len(updates) else total
        weighted += fraction(step) * (until - step)
    return weighted / total


def _update_steps(begin: int, end: int, frequency: int, total: int) -> list[int]:
    """The pruning steps of ``pruning_progress``'s schedule that fall inside the run."""
    return [step for step in sorted({*range(begin, end + 1, frequency), end}) if step < total]


def granet_flops_per_step(dense_flops: float, sparse_flops: float, initial_flops: float,
                          begin_step: int, end_step: int, frequency: int,
                          total_steps: int, counting: str = "paper") -> float:
    """GraNet's training FLOPs of one example at one step, averaged over a run.

    Forward FLOPs follow the pruning schedule from ``initial_flops`` (``f_I``: the model at
    the initial sparsity, ``f_D`` for a dense start) to ``sparse_flops`` (``f_S``):
    ``f(t) = f_I - c(t)·(f_I - f_S)``, c(t) the cubic's fraction in effect at t (as
    ``pruning_progress``); a step costs ``3·f(t)``. At each pruning step the regeneration
    grows by the dense gradient of one batch, whose backward pass costs ``f_D`` instead of
    ``f(t)`` (RigL's accounting of its update steps): ``+ (f_D - f(u))`` per pruning step u.
    Exact when every layer follows the cubic (``pruning_scope="layer"``); with global
    pruning the per-layer split, and so FLOPs per connection, is known only at run time.
    ``counting``: how the cubic is averaged (``pruning_progress``).
    """
    f_d, f_s, f_i = (_check_flops(v, name) for v, name in (
        (dense_flops, "dense_flops"), (sparse_flops, "sparse_flops"),
        (initial_flops, "initial_flops")))
    progress = pruning_progress(begin_step, end_step, frequency, total_steps, counting)
    begin, end = int(begin_step), int(end_step)

    def forward(step: int) -> float:
        fraction = 1.0 if end == begin else polynomial_sparsity(step, 1.0, 0.0, begin, end)
        return f_i - fraction * (f_i - f_s)

    extra = sum(f_d - forward(u) for u in _update_steps(begin, end, int(frequency),
                                                         int(total_steps)))
    return 3.0 * (f_i - progress * (f_i - f_s)) + extra / int(total_steps)


def train_flops_per_step(
    method: str,
    dense_flops: float,
    sparse_flops: float | None = None,
    *,
    update_freq: int = 100,
    begin_step: int | None = None,
    end_step: int | None = None,
    frequency: int | None = None,
    total_steps: int | None = None,
    initial_flops: float | None = None,
    counting: str = "paper",
) -> float:
    """Training FLOPs of one example at one step, averaged over a run (Appendix H).

    Args:
        method: one of ``METHODS`` (``rigl.methods``); its registry row's ``flops_rule``
            says how a step is counted.
        dense_flops: ``f_D``, forward FLOPs of the dense model.
        sparse_flops: ``f_S``, forward FLOPs of the sparse model (for ``prune``: the final
            one; for ``small_dense``: the small dense model's). Not used by ``dense``.
        update_freq: ΔT of RigL, steps between mask updates.
        begin_step, end_step, frequency, total_steps: the pruning schedule of ``prune`` and
            ``granet`` and the length of its run (see ``pruning_progress``).
        initial_flops: ``granet``: forward FLOPs at its initial sparsity (default
            ``dense_flops``: a dense start); see ``granet_flops_per_step``.
        counting: how ``prune`` and ``granet`` average their schedule
            (``pruning_progress``); the other rules are the same in both countings.

    Raises:
        ValueError: naming the argument, for an unknown method or counting, negative or
            missing FLOPs, or a missing or invalid schedule.
    """
    conventions(counting)
    rule = methods.get_method(method).flops_rule
    f_d = _check_flops(dense_flops, "dense_flops")
    if f_d <= 0:
        raise ValueError(f"dense_flops: must be > 0, got {dense_flops!r}.")
    if rule == "dense":
        return 3.0 * f_d
    if sparse_flops is None:
        raise ValueError(f"sparse_flops: required for method {method!r}.")
    f_s = _check_flops(sparse_flops, "sparse_flops")
    if rule == "sparse":
        return 3.0 * f_s
    if rule == "snfs":
        return 2.0 * f_s + f_d
    if rule == "rigl":
        dt = _check_positive_int(update_freq, "update_freq", 1)
        return (3.0 * f_s * dt + 2.0 * f_s + f_d) / (dt + 1)
    schedule = {"begin_step": begin_step, "end_step": end_step, "frequency": frequency,
                "total_steps": total_steps}
    for name, value in schedule.items():
        if value is None:
            raise ValueError(f"{name}: required for method {method!r}.")
    if rule == "granet":
        return granet_flops_per_step(f_d, f_s, f_d if initial_flops is None else initial_flops,
                                     **schedule, counting=counting)
    progress = pruning_progress(**schedule, counting=counting)
    return 3.0 * (f_d - progress * (f_d - f_s))


def train_flops_ratio(method: str, dense_flops: float, sparse_flops: float | None = None,
                      multiplier: float = 1.0, *, counting: str = "paper",
                      **schedule) -> float:
    """Training FLOPs of a ``multiplier``× run over those of the dense 1× run.

    An M× run stretches every step count (the pruning schedule included) by M, so its
    per-step average is the 1× one's and its total M times it. ``counting`` and
    ``schedule`` are passed to ``train_flops_per_step`` (``update_freq``, and for ``prune``
    ``begin_step``, ``end_step``, ``frequency``, ``total_steps`` of the 1× run).

    Example:
        >>> train_flops_ratio("rigl", 8.2e9, 0.23 * 8.2e9, multiplier=5)  # ~1.15
    """
    ok = isinstance(multiplier, numbers.Real) and not isinstance(multiplier, bool)
    if not ok or not math.isfinite(multiplier) or multiplier <= 0:
        raise ValueError(f"multiplier: expected a finite number > 0, got {multiplier!r}.")
    per_step = train_flops_per_step(method, dense_flops, sparse_flops, counting=counting,
                                    **schedule)
    return multiplier * per_step / (3.0 * float(dense_flops))


def total_train_flops(method: str, dense_flops: float, sparse_flops: float | None = None,
                      steps: int = 1, batch_size: int = 1, multiplier: float = 1.0, *,
                      counting: str = "paper", **schedule) -> float:
    """Training FLOPs of a whole run: per-step FLOPs × batch size × steps × multiplier.

    The dense ResNet-50 1× run: ``3 · 8.2e9 · 4096 · 32000 ≈ 3.2e18`` (the paper's figure).
    """
    steps = _check_positive_int(steps, "steps", 1)
    batch_size = _check_positive_int(batch_size, "batch_size", 1)
    ratio = train_flops_ratio(method, dense_flops, sparse_flops, multiplier,
                              counting=counting, **schedule)
    return ratio * 3.0 * float(dense_flops) * steps * batch_size


def average_inference_flops(
    snapshots: Sequence[float | Mapping[str, np.ndarray]],
    model=None,
    durations: Sequence[float] | None = None,
    counting: str = "paper",
    *,
    inputs=None,
) -> float:
    """Inference FLOPs averaged over the masks a run actually used.

    For a run whose per-layer densities change (gradual pruning, or any method that moves
    connections between layers), pass the FLOPs measured after every mask update, or the mask
    snapshots themselves. (Drop-and-grow at a fixed density per layer, as RigL and SET do,
    leaves the count unchanged: it depends on a row's nonzero count only.)

    Args:
        snapshots: FLOPs values, or dicts row name -> mask (then ``model`` is required; rows
            a snapshot leaves out keep the model's masks / density).
        model: the model the mask snapshots belong to.
        durations: steps each snapshot was in use (weights); equal weights if omitted.
        counting: how mask snapshots are counted (``layer_table``).
        inputs: an example batch for a model whose input shape is not known
            (``layer_specs``).

    Raises:
        ValueError: naming the argument, for an empty list, a snapshot of the wrong kind,
            a missing model, durations that do not match or do not sum to > 0, or an
            unknown counting.
    """
    conventions(counting)
    snapshots = list(snapshots)
    if not snapshots:
        raise ValueError("snapshots: expected at least one FLOPs value or mask snapshot.")
    values = []
    for i, snapshot in enumerate(snapshots):
        if isinstance(snapshot, Mapping):
            if model is None:
                raise ValueError("model: required when snapshots are masks.")
            values.append(inference_flops(model, masks=snapshot, counting=counting,
                                          inputs=inputs))
        else:
            values.append(_check_flops(snapshot, f"snapshots[{i}]"))
    if durations is None:
        return sum(values) / len(values)
    durations = [_check_flops(d, f"durations[{i}]") for i, d in enumerate(durations)]
    if len(durations) != len(values):
        raise ValueError(f"durations: expected {len(values)} values (one per snapshot), got "
                         f"{len(durations)}.")
    if sum(durations) <= 0:
        raise ValueError("durations: must sum to more than 0.")
    return sum(v * d for v, d in zip(values, durations)) / sum(durations)


def solve_width(param_count: Callable[[float], float], target: float, low: float = 0.05,
                high: float = 1.0, xtol: float = 1e-3, rtol: float = 1e-3,
                max_evals: int = 30) -> float:
    """The width whose parameter count is closest to ``target`` (for Small-Dense baselines).

    ``param_count(width)`` must not decrease with the width (e.g. ``num_params`` of
    ``build_model(name, ..., width=width)``). Regula falsi (Illinois) on
    ``sqrt(count) - sqrt(target)``, nearly linear in the width since counts grow about as
    width², so a few evaluations (model builds) suffice. Stops once a count is within
    ``rtol`` of the target or the bracket is narrower than ``xtol`` (channel counts are
    integers, so the count is a step function of the width and may never hit the target).

    Raises:
        ValueError: naming the argument, if ``target`` is not between the counts at ``low``
            and ``high``, or the bracket is invalid.
    """
    if not 0 < low < high:
        raise ValueError(f"low/high: expected 0 < low < high, got {low!r}, {high!r}.")
    target = _check_flops(target, "target")
    cache: dict[float, float] = {}

    def g(width: float) -> float:
        if width not in cache:
            cache[width] = float(param_count(width))
        return math.sqrt(cache[width]) - math.sqrt(target)

    a, b = low, high
    ga, gb = g(a), g(b)
    if ga > 0 or gb < 0:
        raise ValueError(f"target: {target:g} parameters is not between the counts at width "
                         f"{low} ({cache[low]:g}) and {high} ({cache[high]:g}).")
    side = 0
    while len(cache) < max_evals and b - a > xtol and ga != 0 and gb != 0:
        c = b - gb * (b - a) / (gb - ga)
        c = min(max(c, a + xtol / 2), b - xtol / 2)
        gc = g(c)
        if abs(cache[c] - target) <= rtol * target:
            return c
        if gc < 0:
            a, ga = c, gc
            if side == -1:
                gb /= 2
            side = -1
        else:
            b, gb = c, gc
            if side == 1:
                ga /= 2
            side = 1
    return min(cache, key=lambda w: abs(cache[w] - target))

"""Which variables of a Keras 3 model are sparsifiable kernels, and how ER/ERK reads them.

A *kernel* here is a trainable variable of rank 2 or more that is not a bias or a norm
parameter (by name: ``bias``, ``*_bias``, ``gamma``, ``beta``, ``scale``, ``offset``...;
``EinsumDense``'s bias has rank 2 in a ``MultiHeadAttention``). Kernels are found in every
layer of a model, nested or custom (``Layer._flatten_layers``), and named by their Keras
``variable.path``, e.g.
``"transformer_layer_0/self_attention/query/kernel"``.

By default the kernels sparsified are those of the layer kinds of ``DEFAULT_KINDS``, the
weight matrices the RigL, GraNet and SRigL papers sparsify:

=======================================  ===============================================
layer (and its subclasses)               kernels
=======================================  ===============================================
``Dense``, ``EinsumDense``               ``kernel`` (so every ``MultiHeadAttention``)
``Conv1D/2D/3D``, ``Conv*DTranspose``    ``kernel``
``DepthwiseConv1D/2D``                   ``kernel``
``SeparableConv1D/2D``                   ``depthwise_kernel``, ``pointwise_kernel``
``GRU``, ``LSTM``, ``SimpleRNN`` cells    ``kernel``, ``recurrent_kernel``
``Embedding`` (only with ``embeddings``)  ``embeddings`` (off by default, as in the papers)
=======================================  ===============================================

Every other kernel (a custom layer's own weight matrix, a position embedding) is left dense
unless selected by path, layer name or layer type (``select``).

ER/ERK need each kernel's fan-in and fan-out (``density_dims``): the rule, generalising the
reference's (``rigl/sparse_utils.py``: ER reads a kernel's last two dims, ERK all of them):

* convolutions (every kind): the kernel's own shape, as the reference (spatial dims count
  for ERK);
* ``EinsumDense``: the kernel read as the matrix its equation contracts,
  ``(prod of the kernel dims the input shares, prod of the output-only dims)``; dims in the
  input, kernel and output alike (a per-head weight) are in neither. A query projection
  ``(d_model, heads, head_dim)`` is ``(d_model, heads·head_dim)``, like the ``Dense`` it
  replaces, so the attention's projections get the density of the equivalent ``Dense``;
* every other rank-2 kernel: its shape ``(fan_in, fan_out)``;
* any other kernel of rank 3 or more has no stated rule: ER/ERK refuse it (give it a
  ``custom_sparsity``, leave it dense, or use ``uniform``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re

import keras

# The names Keras gives the weight matrices of its layers.
KERNEL_NAMES = {"kernel", "recurrent_kernel", "depthwise_kernel", "pointwise_kernel"}
_CONV_KINDS = (
    keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
    keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose,
    keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D, keras.layers.SeparableConv2D,
)
# Weights of rank >= 2 that are not kernels: EinsumDense's per-head bias, norm parameters.
_NOT_KERNELS = {"bias", "gamma", "beta", "scale", "offset", "moving_mean", "moving_variance"}
_RNN_CELLS = (keras.layers.GRUCell, keras.layers.LSTMCell, keras.layers.SimpleRNNCell)
# The layer kinds whose kernels are sparsified by default (subclasses included).
DEFAULT_KINDS: tuple[type, ...] = (keras.layers.Dense, keras.layers.EinsumDense, *_CONV_KINDS,
                                   *_RNN_CELLS)
# A variable's name -> the owning layer's attribute holding its initializer.
_INITIALIZERS = {"kernel": ("kernel_initializer", "depthwise_initializer"),
                 "recurrent_kernel": ("recurrent_initializer",),
                 "depthwise_kernel": ("depthwise_initializer",),
                 "pointwise_kernel": ("pointwise_initializer",),
                 "embeddings": ("embeddings_initializer",)}


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One kernel variable of a model.

    Attributes:
        path: the variable's Keras path (the name masks and sparsity maps use).
        variable: the variable.
        layer: the layer that owns it (the innermost one).
        default: whether it is sparsified by default (its layer is of ``DEFAULT_KINDS``).
        owners: the layers that contain it, outermost first, ``layer`` last (the model
            itself left out): selectors match any of them.
    """

    path: str
    variable: object
    layer: object
    default: bool
    owners: tuple = ()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.variable.shape)

    @property
    def initializer(self):
        """The owning layer's initializer for this kernel, or None if it has none."""
        for attribute in _INITIALIZERS.get(self.variable.name, ()):
            initializer = getattr(self.layer, attribute, None)
            if initializer is not None:
                return initializer
        return None

    def density_dims(self) -> tuple[int, ...] | None:
        """The dims ER/ERK read (module docstring), or None where no rule is stated."""
        if isinstance(self.layer, keras.layers.EinsumDense):
            return einsum_fans(self.layer.equation, self.shape)
        if isinstance(self.layer, _CONV_KINDS) or len(self.shape) == 2:
            return self.shape
        return None


def einsum_fans(equation: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of an ``EinsumDense`` kernel of ``shape`` under ``equation``:
    the product of the kernel dims its input shares but its output does not, and of those
    only its output has (module docstring). ``...`` is allowed in the input and output only.
    """
    roles = einsum_roles(equation, shape)
    fan_in = math.prod(d for role, d in zip(roles, shape) if role == "in")
    fan_out = math.prod(d for role, d in zip(roles, shape) if role == "out")
    return fan_in, fan_out


def einsum_roles(equation: str, shape: tuple[int, ...]) -> tuple[str, ...]:
    """The role of each axis of an ``EinsumDense`` kernel of ``shape`` under ``equation``:
    ``"in"`` (contracted: the input has it, the output not), ``"out"`` (only the output has
    it), ``"shared"`` (both have it, e.g. a per-head axis) or ``"own"`` (neither)."""
    match = re.fullmatch(r"\s*([\w.]+)\s*,\s*(\w+)\s*->\s*([\w.]+)\s*", equation)
    if match is None or len(match.group(2)) != len(shape):
        raise ValueError(f"equation: cannot read EinsumDense equation {equation!r} for a "
                         f"kernel of shape {shape}.")
    inputs, kernel, outputs = match.groups()
    return tuple({(True, False): "in", (False, True): "out", (True, True): "shared",
                  (False, False): "own"}[(axis in inputs, axis in outputs)] for axis in kernel)


def einsum_matrix(equation: str, shape: tuple[int, ...]) -> tuple[int, int] | None:
    """``(contracted, output)`` sizes of an ``EinsumDense`` kernel of ``shape`` whose
    contracted axes lead and output axes follow, so that ``kernel.reshape(contracted,
    output)`` is its matrix of inputs × output units; None for any other axis order or role
    (a per-head axis)."""
    roles = einsum_roles(equation, shape)
    leading = roles.count("in")
    if not 0 < leading < len(roles) or roles != ("in",) * leading + ("out",) * (
            len(roles) - leading):
        return None
    return math.prod(shape[:leading]), math.prod(shape[leading:])


def matrix_layout(layer, shape) -> tuple[int, int]:
    """``(rows, columns)`` of a kernel of ``shape`` owned by ``layer`` read as a matrix of
    inputs × output units, ``kernel.reshape(rows, columns)``: an ``EinsumDense``'s
    ``einsum_matrix`` where it has one (a query projection ``(d_model, heads, head_dim)`` is
    ``(d_model, heads·head_dim)``); for any other kernel every axis but the last, and the
    last (a Dense layer's neurons, a convolution's filters, an RNN's gate units, an
    EinsumDense's last axis where its axes are in another order)."""
    shape = tuple(int(d) for d in shape)
    if isinstance(layer, keras.layers.EinsumDense):
        matrix = einsum_matrix(layer.equation, shape)
        if matrix is not None:
            return matrix
    return math.prod(shape[:-1]), shape[-1]


def all_kernels(model) -> list[Kernel]:
    """Every kernel of ``model`` (module docstring), in its layers' order (nested and custom
    layers included), each once."""
    found, seen = [], set()

    def visit(layer, outer):
        owners = (*outer, layer)
        for variable in layer._trainable_variables:
            if (id(variable) in seen or len(variable.shape) < 2
                    or variable.name in _NOT_KERNELS or variable.name.endswith("_bias")):
                continue
            seen.add(id(variable))
            default = isinstance(layer, DEFAULT_KINDS) and variable.name in KERNEL_NAMES
            found.append(Kernel(variable.path, variable, layer, default, owners[1:]))
        for sublayer in layer._flatten_layers(include_self=False, recursive=False):
            visit(sublayer, owners)

    visit(model, ())
    return found


def _is_embedding(kernel: Kernel) -> bool:
    return isinstance(kernel.layer, keras.layers.Embedding) and kernel.variable.name == (
        "embeddings")


def _matches(selector, kernel: Kernel) -> bool:
    """A type matches the kernels of its instances and of every layer they contain; a string
    the kernel's path, or the name or path of a layer containing it (glob patterns)."""
    owners = kernel.owners or (kernel.layer,)
    if isinstance(selector, type):
        return any(isinstance(layer, selector) for layer in owners)
    texts = [kernel.path] + [text for layer in owners
                             for text in (layer.name, getattr(layer, "path", layer.name))]
    return any(fnmatch.fnmatchcase(text, selector) for text in texts)


def _check_selectors(param: str, selectors) -> list:
    if selectors is None:
        return []
    if isinstance(selectors, str | type):
        selectors = [selectors]
    selectors = list(selectors)
    for selector in selectors:
        if not isinstance(selector, str | type):
            raise ValueError(f"{param}: expected layer types or strings (a variable path, "
                             f"layer name or glob pattern), got {selector!r}.")
    return selectors


def _check_not_kernel(param: str, selector, model, candidates: list[Kernel]) -> None:
    """A string naming exactly a variable that is not a kernel is refused, by name."""
    if not isinstance(selector, str):
        return
    for variable in model.weights:
        if variable.path == selector and all(k.variable is not variable for k in candidates):
            frozen = "" if variable.trainable else ", not trainable"
            raise ValueError(f"{param}: {selector!r} is not a kernel (shape "
                             f"{tuple(variable.shape)}{frozen}); only kernels (trainable "
                             "weights of rank >= 2, not biases or norm parameters) can be "
                             "sparse.")


def select(model, include=None, exclude=None, embeddings: bool = False) -> tuple[
        list[Kernel], list[Kernel]]:
    """The kernels to sparsify and the kernels left dense: ``(selected, dense)``.

    Args:
        model: a built Keras model (any kind).
        include: None for the default kernels (``DEFAULT_KINDS``, plus embeddings if
            ``embeddings``); else layer types and/or strings, and exactly the kernels they
            match are selected. A type matches the kernels of its instances and of the
            layers inside them (``keras.layers.MultiHeadAttention``: its four projections); a
            string a kernel's path, or the name or path of a layer containing it, glob
            patterns allowed (``"*/query/kernel"``, ``"transformer_layer_0"``).
        exclude: the same kinds of selectors; the kernels they match stay dense.
        embeddings: with ``include=None``, also sparsify ``Embedding`` tables.

    Raises:
        ValueError: naming ``include``/``exclude`` for a selector that matches no kernel, or a
            string naming a variable that is not a kernel (a bias, a norm scale).
    """
    candidates = all_kernels(model)
    include = _check_selectors("include", include)
    exclude = _check_selectors("exclude", exclude)
    for param, selectors in (("include", include), ("exclude", exclude)):
        for selector in selectors:
            _check_not_kernel(param, selector, model, candidates)
            if not any(_matches(selector, kernel) for kernel in candidates):
                name = selector.__name__ if isinstance(selector, type) else repr(selector)
                raise ValueError(f"{param}: {name} matches no kernel of the model; its "
                                 f"kernels are {[k.path for k in candidates]}.")
    if include:
        chosen = [k for k in candidates if any(_matches(s, k) for s in include)]
    else:
        chosen = [k for k in candidates if k.default or (embeddings and _is_embedding(k))]
    chosen = [k for k in chosen if not any(_matches(s, k) for s in exclude)]
    chosen_ids = {id(k.variable) for k in chosen}
    return chosen, [k for k in candidates if id(k.variable) not in chosen_ids]

"""Masked Keras 3 layers: Dense, Conv2D and DepthwiseConv2D with a binary mask.

Each masked layer owns a non-trainable boolean ``mask`` weight of its kernel's shape (a
quarter of the memory of a float mask; assigning 0/1 numbers to it works, nonzero is
active). The kernel is kept exactly zero wherever the mask is False: a constraint zeroes it
there after every optimizer step, and the updaters zero it after every mask update. The
forward pass therefore uses the kernel directly, so the gradient Keras computes for the
kernel is the *dense* gradient (non-zero at masked positions too), which is what RigL grows
by (https://arxiv.org/abs/1911.11134) at no extra cost per step.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class MaskedWeight:
    """One masked kernel: what the updaters, masks and sparsity maps address by ``name``.

    Attributes:
        name: the layer's name, or ``"<layer>/kernel"`` and ``"<layer>/recurrent_kernel"``
            for the two kernels of a masked GRU.
        masked_kernel: the kernel variable.
        mask: its mask variable (same shape, boolean).
        initializer: the kernel's initializer (for ``grow_init="initial_value"``).
        layer: the layer that owns them.
    """

    name: str
    masked_kernel: object
    mask: object
    initializer: object
    layer: object


class MaskConstraint(keras.constraints.Constraint):
    """Zeroes a kernel where its boolean mask is False, after an optional user constraint.

    Attached to the kernel variable (not to the layer's ``kernel_constraint`` argument), so
    the layer's config still holds only what the user passed. A select of equal shapes
    (``Select``, not ``where``'s broadcasting ``SelectV2``, which is slower on CPU) rather
    than ``w * mask``: compiled with XLA it fuses into the optimizer's update and reads one
    byte of mask per weight instead of four; without XLA it costs about what the multiply
    did (`docs/performance.md`).
    """

    def __init__(self, mask, inner=None):
        self.mask = mask
        self.inner = inner

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        w = tf.convert_to_tensor(w)
        return tf.raw_ops.Select(condition=tf.convert_to_tensor(self.mask), x=w,
                                 y=tf.zeros_like(w))


def _mask_weight(layer, name, shape):
    """A non-trainable boolean mask weight, all True (the layer's tracker must be open)."""
    return layer.add_weight(name=name, shape=shape, initializer="ones", trainable=False,
                            dtype="bool")


class SavesVariablesByName:
    """Saves a layer's variables by name: ``_own_variables()`` -> {name: variable}.

    Keras checks that a weights file holds as many entries as the layer has variables; the
    base classes save kernel and bias only, so layers with more (masked layers, the truly
    sparse layer) save every one by name. Loading stays each layer's own (what it checks
    differs).
    """

    def save_own_variables(self, store):
        if not self.built:
            return
        for name, variable in self._own_variables().items():
            store[name] = variable


class MaskedLayerMixin(SavesVariablesByName):
    """Adds the mask weight, the masking constraint and (de)serialisation of the mask.

    Subclasses name the attribute that holds their kernel variable in ``_kernel_attr``.
    """

    _kernel_attr = "_kernel"

    @property
    def masked_kernel(self):
        """The kernel variable the mask applies to."""
        return getattr(self, self._kernel_attr)

    def masked_weights(self) -> list[MaskedWeight]:
        initializer = getattr(self, "kernel_initializer", None) or self.depthwise_initializer
        return [MaskedWeight(self.name, self.masked_kernel, self.mask, initializer, self)]

    def build(self, input_shape):
        super().build(input_shape)
        kernel = self.masked_kernel
        # Tracker is locked once a Keras layer is built; adding a weight needs it open.
        locked = getattr(self._tracker, "locked", False)
        if locked:
            self._tracker.unlock()
        self.mask = _mask_weight(self, "mask", kernel.shape)
        if locked:
            self._tracker.lock()
        kernel.constraint = MaskConstraint(self.mask, kernel.constraint)

    def _own_variables(self):
        variables = {"kernel": self.masked_kernel, "mask": self.mask}
        if self.bias is not None:
            variables["bias"] = self.bias
        return variables

    def load_own_variables(self, store):
        self._check_load_own_variables(store)
        if not self.built:
            return
        for name, variable in self._own_variables().items():
            variable.assign(store[name])  # 0/1 float masks (older files) assign as nonzero

    def enable_lora(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not support LoRA.")

    def quantize(self, *args, **kwargs):
        raise NotImplementedError(
            f"{type(self).__name__} does not support quantization; call rigl.strip(model) first."
        )


@keras.saving.register_keras_serializable(package="rigl")
class MaskedDense(MaskedLayerMixin, keras.layers.Dense):
    """A ``keras.layers.Dense`` whose kernel is multiplied by a binary ``mask`` weight."""


@keras.saving.register_keras_serializable(package="rigl")
class MaskedConv2D(MaskedLayerMixin, keras.layers.Conv2D):
    """A ``keras.layers.Conv2D`` whose kernel is multiplied by a binary ``mask`` weight."""


@keras.saving.register_keras_serializable(package="rigl")
class MaskedDepthwiseConv2D(MaskedLayerMixin, keras.layers.DepthwiseConv2D):
    """A ``keras.layers.DepthwiseConv2D`` whose kernel is multiplied by a binary ``mask``."""

    _kernel_attr = "kernel"


@keras.saving.register_keras_serializable(package="rigl")
class MaskedGRUCell(keras.layers.GRUCell):
    """A ``keras.layers.GRUCell`` whose input and recurrent kernels each have a mask.

    As for the other masked layers, both kernels are kept zero where their mask is zero (a
    constraint after every optimizer step), so every GRU implementation, cuDNN included,
    computes the sparse network and the kernels' gradients stay dense.
    """

    def build(self, input_shape):
        super().build(input_shape)
        locked = getattr(self._tracker, "locked", False)
        if locked:
            self._tracker.unlock()
        self.kernel_mask = _mask_weight(self, "kernel_mask", self.kernel.shape)
        self.recurrent_kernel_mask = _mask_weight(self, "recurrent_kernel_mask",
                                                  self.recurrent_kernel.shape)
        if locked:
            self._tracker.lock()
        self.kernel.constraint = MaskConstraint(self.kernel_mask, self.kernel.constraint)
        self.recurrent_kernel.constraint = MaskConstraint(self.recurrent_kernel_mask,
                                                          self.recurrent_kernel.constraint)


@keras.saving.register_keras_serializable(package="rigl")
class MaskedGRU(keras.layers.GRU):
    """A ``keras.layers.GRU`` built on ``MaskedGRUCell``: two masked kernels, named
    ``"<name>/kernel"`` and ``"<name>/recurrent_kernel"`` in masks and sparsity maps."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # GRU.__init__ builds a plain cell from the same arguments; swap in the masked one
        # before anything is built, so no plain weights ever exist.
        self._tracker.untrack(self.cell)
        self.cell = MaskedGRUCell.from_config(self.cell.get_config())

    def masked_weights(self) -> list[MaskedWeight]:
        cell = self.cell
        return [
            MaskedWeight(f"{self.name}/kernel", cell.kernel, cell.kernel_mask,
                         cell.kernel_initializer, self),
            MaskedWeight(f"{self.name}/recurrent_kernel", cell.recurrent_kernel,
                         cell.recurrent_kernel_mask, cell.recurrent_initializer, self),
        ]


# Plain Keras layer type -> its masked twin. Exact types only: a user subclass of Dense may
# change what the kernel means, so it is not silently masked.
MASKED_TWINS: dict[type, type] = {
    keras.layers.Dense: MaskedDense,
    keras.layers.Conv2D: MaskedConv2D,
    keras.layers.DepthwiseConv2D: MaskedDepthwiseConv2D,
    keras.layers.GRU: MaskedGRU,
}
PLAIN_TWINS: dict[type, type] = {masked: plain for plain, masked in MASKED_TWINS.items()}


def is_masked(layer) -> bool:
    """Whether ``layer`` is one of the masked layers of this module."""
    return isinstance(layer, MaskedLayerMixin | MaskedGRU)


def kernel_variables(layer) -> dict:
    """Masked-weight name -> kernel variable of a built maskable layer (plain or masked)."""
    if isinstance(layer, keras.layers.GRU):
        return {f"{layer.name}/kernel": layer.cell.kernel,
                f"{layer.name}/recurrent_kernel": layer.cell.recurrent_kernel}
    kernel = layer.kernel if isinstance(layer, keras.layers.DepthwiseConv2D) else layer._kernel
    return {layer.name: kernel}


def kernel_shapes(layer) -> dict[str, tuple]:
    """Masked-weight name -> kernel shape of a built maskable layer (plain or masked)."""
    return {name: tuple(v.shape) for name, v in kernel_variables(layer).items()}

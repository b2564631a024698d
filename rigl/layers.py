"""Masked Keras 3 layers: Dense, Conv2D and DepthwiseConv2D with a binary mask.

Each masked layer owns a non-trainable ``mask`` weight of its kernel's shape. The kernel is
kept exactly zero wherever the mask is zero: a constraint multiplies it by the mask after
every optimizer step, and the updaters zero it after every mask update. The forward pass
therefore uses the kernel directly, so the gradient Keras computes for the kernel is the
*dense* gradient (non-zero at masked positions too), which is what RigL grows by
(https://arxiv.org/abs/1911.11134) at no extra cost per step.
"""

from __future__ import annotations

import keras
from keras import ops


class MaskConstraint(keras.constraints.Constraint):
    """Multiplies a kernel by its mask, after an optional user constraint.

    Attached to the kernel variable (not to the layer's ``kernel_constraint`` argument), so
    the layer's config still holds only what the user passed.
    """

    def __init__(self, mask, inner=None):
        self.mask = mask
        self.inner = inner

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        return w * ops.cast(self.mask, w.dtype)


class MaskedLayerMixin:
    """Adds the mask weight, the masking constraint and (de)serialisation of the mask.

    Subclasses name the attribute that holds their kernel variable in ``_kernel_attr``.
    """

    _kernel_attr = "_kernel"

    @property
    def masked_kernel(self):
        """The kernel variable the mask applies to."""
        return getattr(self, self._kernel_attr)

    def build(self, input_shape):
        super().build(input_shape)
        kernel = self.masked_kernel
        # Tracker is locked once a Keras layer is built; adding a weight needs it open.
        locked = getattr(self._tracker, "locked", False)
        if locked:
            self._tracker.unlock()
        self.mask = self.add_weight(
            name="mask",
            shape=kernel.shape,
            initializer="ones",
            trainable=False,
            dtype=kernel.dtype,
        )
        if locked:
            self._tracker.lock()
        kernel.constraint = MaskConstraint(self.mask, kernel.constraint)

    def _own_variables(self):
        variables = {"kernel": self.masked_kernel, "mask": self.mask}
        if self.bias is not None:
            variables["bias"] = self.bias
        return variables

    # Keras checks that a weights file holds as many entries as the layer has variables;
    # the base classes save kernel and bias only, so masked layers save all three by name.
    def save_own_variables(self, store):
        if not self.built:
            return
        for name, variable in self._own_variables().items():
            store[name] = variable

    def load_own_variables(self, store):
        self._check_load_own_variables(store)
        if not self.built:
            return
        for name, variable in self._own_variables().items():
            variable.assign(store[name])

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


# Plain Keras layer type -> its masked twin. Exact types only: a user subclass of Dense may
# change what the kernel means, so it is not silently masked.
MASKED_TWINS: dict[type, type] = {
    keras.layers.Dense: MaskedDense,
    keras.layers.Conv2D: MaskedConv2D,
    keras.layers.DepthwiseConv2D: MaskedDepthwiseConv2D,
}
PLAIN_TWINS: dict[type, type] = {masked: plain for plain, masked in MASKED_TWINS.items()}


def is_masked(layer) -> bool:
    """Whether ``layer`` is one of the masked layers of this module."""
    return isinstance(layer, MaskedLayerMixin)

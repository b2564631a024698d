"""How an updater reads and writes the connections of a sparse weight: the storage seam.

An updater never touches a layer's variables. For each sparse weight of the model (a
*target*) it holds a ``Storage``, asks it for a ``StorageView`` (what the score hooks see:
the weights and the active positions, in the kernel's shape), selects the positions to keep
and to grow (``rigl.selection``), and hands them back to ``Storage.apply``, which writes the
result: kept connections keep their weight and optimizer slots, truly new ones start at the
grow values with zeroed slots, dropped ones disappear. How a target stores its connections is
the storage's own business.

Today every target is a ``rigl.layers.MaskedWeight`` (a dense kernel, zero where inactive,
plus a boolean mask) and ``MaskedStorage`` serves it. Its ``apply`` writes kernel, mask and
slots from one fused pass, compiled with XLA for large kernels.

Where a new storage plugs in (e.g. values plus positions, no dense mask): subclass
``Storage`` (``view``, ``apply``, ``active_count`` and the attributes it documents), map its
target type to it in ``STORAGES``, and have ``storages(model)`` list its targets. The
updaters and the methods (``rigl/updaters.py``, ``rigl/methods.py``) need no change, as long
as the view it gives is what the hooks read (weights and mask in the kernel's shape).
"""

from __future__ import annotations

import abc
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from rigl import selection
from rigl.layers import MaskedWeight
from rigl.masking import masked_weights


@dataclasses.dataclass(frozen=True)
class StorageView:
    """One target's state at an update, as the updater and its score hooks read it (tensors,
    inside the graph).

    Attributes:
        weights: the weights in the kernel's shape, zero where inactive.
        mask: the active positions (kernel's shape; bool, or numbers with nonzero active).
        finite: boolean scalar, True when every stored weight is finite.
    """

    weights: tf.Tensor
    mask: tf.Tensor
    finite: tf.Tensor


class Storage(abc.ABC):
    """How one target stores its connections (see the module docstring).

    Attributes:
        name: the target's name (the key of masks and sparsity maps).
        shape: the dense shape of the kernel the positions index.
        dtype: the weights' dtype.
        variable: the trainable variable holding the weights: the optimizer's slots for it
            follow the connections, and its gradient is the dense gradient RigL and SNIP
            score by.
        initializer: the kernel's initializer (for ``grow_init="initial_value"``).
    """

    name: str
    shape: tuple[int, ...]
    dtype: object
    variable: object
    initializer: object

    @abc.abstractmethod
    def active_count(self) -> int:
        """The number of active connections (host value; read at bind time)."""

    @abc.abstractmethod
    def view(self) -> StorageView:
        """Reads the target's state for one update (inside the update's graph)."""

    @abc.abstractmethod
    def apply(self, view: StorageView, new, ok, grown_values, slots) -> tf.Tensor:
        """Writes the result of an update and returns the number of truly new connections.

        Args:
            view: what ``view`` returned at this update (the state the selection read).
            new: flat boolean mask of the positions to keep and grow, in the kernel's shape
                flattened.
            ok: boolean scalar; when False the state is left as it was (NaN/Inf somewhere).
            grown_values: values of new connections in the kernel's shape, or None for zero.
            slots: the optimizer's slot variables for ``variable``; zeroed at new
                connections.

        Returns:
            int32 scalar: connections active after the update that were not before.
        """


def _flat(tensor):
    return None if tensor is None else tf.reshape(tensor, [-1])


# The passes below hold no Python control flow on tensors: autograph would only slow tracing.
_plain = tf.autograph.experimental.do_not_convert


@_plain
def _is_finite(tensor):
    return tf.reduce_all(tf.math.is_finite(tensor))


@_plain
def _apply_update(new, ok, mask, weights, grown_values, slots):
    """The new kernel, mask and optimizer slots of one layer, fused into one pass.

    ``new`` is the selected mask, used only if ``ok`` (otherwise the mask stays); kept and
    regrown connections keep their weight and slots, truly new ones (born) start at
    ``grown_values`` (None: zero) with zeroed slots, dropped ones become zero.
    """
    active = tf.cast(mask, tf.bool)
    new = tf.logical_and(new, ok) | tf.logical_and(active, tf.logical_not(ok))
    born = tf.logical_and(new, tf.logical_not(active))
    zeros = tf.zeros_like(weights)
    weights = tf.where(new, weights, zeros)
    if grown_values is not None:
        weights = tf.where(born, tf.cast(grown_values, weights.dtype), weights)
    else:
        weights = tf.where(born, zeros, weights)
    slots = [tf.where(born, tf.zeros_like(slot), slot) for slot in slots]
    return weights, tf.cast(new, mask.dtype), slots, tf.reduce_sum(tf.cast(born, tf.int32))


_is_finite_xla = tf.function(_is_finite, jit_compile=True, reduce_retracing=True)
_apply_update_xla = tf.function(_apply_update, jit_compile=True, reduce_retracing=True)


def _fused(function, compiled, tensor):
    """``compiled`` (XLA) for large flat tensors, where fusing the passes pays; ``function``
    inline for small ones (below ``selection.RADIX_MIN_SIZE``), where compiling each new
    length would cost more than it saves."""
    size = tensor.shape.num_elements()
    return function if size is not None and size < selection.RADIX_MIN_SIZE else compiled


class MaskedStorage(Storage):
    """A dense kernel plus a boolean mask (``rigl.layers.MaskedWeight``).

    The view is the kernel and mask variables as read at the update; ``apply`` computes the
    new kernel, mask and slots in one pass and assigns them. Outside updates the layer's
    constraint keeps the kernel zero where the mask is False.
    """

    def __init__(self, target: MaskedWeight):
        self.target = target
        self.name = target.name
        self.shape = tuple(target.mask.shape)
        self.dtype = target.masked_kernel.dtype
        self.variable = target.masked_kernel
        self.initializer = target.initializer

    def active_count(self) -> int:
        return int(np.count_nonzero(keras.ops.convert_to_numpy(self.target.mask)))

    def view(self) -> StorageView:
        weights = tf.convert_to_tensor(self.target.masked_kernel)
        flat = _flat(weights)
        return StorageView(weights=weights, mask=tf.convert_to_tensor(self.target.mask),
                           finite=_fused(_is_finite, _is_finite_xla, flat)(flat))

    def apply(self, view, new, ok, grown_values, slots):
        # Computed unconditionally and selected with `ok`: assignments inside tf.cond branches
        # are fragile on distributed variables, and this runs every ΔT steps.
        weights, mask, slot_values, born = _fused(_apply_update, _apply_update_xla, new)(
            new, ok, _flat(view.mask), _flat(view.weights), _flat(grown_values),
            [_flat(tf.convert_to_tensor(slot)) for slot in slots])
        shape = view.mask.shape
        self.target.masked_kernel.assign(tf.reshape(weights, shape))
        self.target.mask.assign(tf.reshape(mask, shape))
        for slot, value in zip(slots, slot_values):
            slot.assign(tf.reshape(value, shape))
        return born


# Target type -> its storage. A new kind of sparse weight adds its row here.
STORAGES: dict[type, type[Storage]] = {MaskedWeight: MaskedStorage}


def storage_for(target) -> Storage:
    """The storage serving ``target``, chosen by the target's type (``STORAGES``).

    Raises:
        TypeError: naming ``target`` when no storage serves its type.
    """
    for kind, storage in STORAGES.items():
        if isinstance(target, kind):
            return storage(target)
    raise TypeError(f"target: no storage serves {type(target).__name__}; known target types: "
                    f"{[kind.__name__ for kind in STORAGES]}.")


def storages(model) -> list[Storage]:
    """A storage for every sparse weight of ``model``, in model order (masked kernels today:
    ``rigl.masked_weights``)."""
    return [storage_for(target) for target in masked_weights(model)]

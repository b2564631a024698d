"""``rigl.SparseModel``: masks attached to kernel variables by path, for any Keras 3 model.

``rigl.sparsify`` rewrites the layers of a Sequential/functional model whose kernels all
belong to its own Dense/Conv2D/DepthwiseConv2D/GRU layers into masked twins. Any other model
(subclassed, or with kernels inside custom layers, as every KerasHub backbone, or of other
kinds: EinsumDense, Conv1D, LSTM...) is wrapped instead: the model itself is untouched and
the wrapper holds one boolean mask per sparse kernel, as its own non-trainable weight, and
sets the masking constraint (``rigl.layers.MaskConstraint``) on the kernel variable itself.
The optimizer applies a variable's constraint after every step, so masked weights stay
exactly zero, and the forward pass uses the kernel as it is: the kernel's gradient is the
dense gradient RigL grows by, as with the masked twins. Per step this is the same work as a
masked twin (the same select after each optimizer step), as measured by
``scripts/bench_masks.py`` (``docs/any_model.md``).

Saving: the wrapper is a registered Keras object. ``model.save`` stores the wrapped model's
config and weights as they are and the masks as the wrapper's own weights; its config lists
each mask's kernel by path and by position in the wrapped model's weights (positions resolve
a path that a fresh process names differently, e.g. an automatically numbered layer).
``keras.saving.load_model`` (after ``import rigl``) rebuilds the model, re-attaches the masks
and their constraints, and loads them.
"""

from __future__ import annotations

import keras
import numpy as np

from rigl.kernels import Kernel, all_kernels
from rigl.layers import MaskConstraint, MaskedWeight


def _resolve(model, specs) -> list[Kernel]:
    """The kernels of ``model`` named by ``specs`` ({"path", "index", "shape"} each)."""
    found = all_kernels(model)
    by_path = {k.path: k for k in found}
    by_variable = {id(k.variable): k for k in found}
    weights = model.weights
    resolved = []
    for spec in specs:
        # By position first: a copy or a reloaded model has the same weights in the same
        # order, while an automatically numbered layer may be named differently there.
        kernel = (by_variable.get(id(weights[spec["index"]]))
                  if 0 <= spec["index"] < len(weights) else None)
        if kernel is None or list(kernel.shape) != list(spec["shape"]):
            kernel = by_path.get(spec["path"])
        if kernel is None or list(kernel.shape) != list(spec["shape"]):
            raise ValueError(f"model: has no kernel {spec['path']!r} of shape "
                             f"{tuple(spec['shape'])} (nor at weight {spec['index']}) to mask.")
        resolved.append(kernel)
    return resolved


@keras.saving.register_keras_serializable(package="rigl")
class SparseModel(keras.Model):
    """A Keras model whose listed kernels are masked (see the module docstring).

    Made by ``rigl.sparsify``; call, fit, save and load it like any Keras model. ``model``
    is the wrapped model (its layers, ``get_layer``...), ``masked_weights()`` what the
    updaters address, by kernel path.

    Args:
        model: the wrapped Keras model (built, or buildable from its build config).
        kernels: one ``{"path", "index", "shape"}`` per masked kernel.
    """

    def __init__(self, model, kernels, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self._kernel_specs = [{"path": str(s["path"]), "index": int(s["index"]),
                               "shape": [int(d) for d in s["shape"]]} for s in kernels]
        self._targets = []
        if model.built:
            self._attach()

    def _attach(self) -> None:
        kernels = _resolve(self.model, self._kernel_specs)
        names = [spec["path"] for spec in self._kernel_specs]
        targets = []
        for i, (name, kernel) in enumerate(zip(names, kernels)):
            mask = self.add_weight(name=f"mask_{i}", shape=kernel.shape, initializer="ones",
                                   dtype="bool", trainable=False)
            variable = kernel.variable
            if not isinstance(variable.constraint, MaskConstraint):
                variable.constraint = MaskConstraint(mask, variable.constraint)
            else:  # attached again (a re-traced build): point the constraint at this mask
                variable.constraint.mask = mask
            targets.append(MaskedWeight(name, variable, mask, kernel.initializer, kernel.layer))
        self._targets = targets
        self.built = True

    def build(self, input_shape=None):
        if not self.model.built:
            self.model.build(input_shape)
        if not self._targets:
            self._attach()

    def get_build_config(self):
        return {"model": self.model.get_build_config()}

    def build_from_config(self, config):
        if not self.model.built and config and config.get("model"):
            self.model.build_from_config(config["model"])
        if not self._targets:
            self._attach()

    def call(self, inputs, *args, **kwargs):
        return self.model(inputs, *args, **kwargs)

    def masked_weights(self) -> list[MaskedWeight]:
        """One ``MaskedWeight`` per masked kernel, named by the kernel's path."""
        return list(self._targets)

    def get_config(self):
        config = super().get_config()
        config.update(model=keras.saving.serialize_keras_object(self.model),
                      kernels=[dict(spec) for spec in self._kernel_specs])
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"),
                                                      custom_objects=custom_objects)
        return cls(model, config.pop("kernels"), **config)

    def enable_lora(self, *args, **kwargs):
        raise NotImplementedError("SparseModel does not support LoRA.")

    def quantize(self, *args, **kwargs):
        raise NotImplementedError("SparseModel does not support quantization; call "
                                  "rigl.strip(model) first.")


def refuse_wrapped(model, action: str) -> None:
    """Raises a clear error if ``model`` is a ``SparseModel``, which ``action`` (``to_sparse``,
    ``export``) does not take yet: the path points the user at ``rigl.strip``."""
    if isinstance(model, SparseModel):
        raise ValueError(
            f"model: {action} does not take a rigl.SparseModel (masks held by kernel path) "
            "yet, only models whose masks are masked layers (Sequential/functional models of "
            "Dense/Conv2D/DepthwiseConv2D/GRU layers); rigl.strip(model) gives the plain "
            "model with its zeros in place.")


def kernel_specs(model, kernels: list[Kernel]) -> list[dict]:
    """The ``kernels`` argument of ``SparseModel`` for ``kernels`` of ``model``."""
    index = {id(v): i for i, v in enumerate(model.weights)}
    return [{"path": k.path, "index": index[id(k.variable)], "shape": list(k.shape)}
            for k in kernels]


def copy_model(model):
    """A copy of ``model`` with the same weights (from its config), built like it."""
    try:
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
        if not clone.built:
            clone.build_from_config(model.get_build_config())
        clone.set_weights(model.get_weights())
    except Exception as error:  # noqa: BLE001 (any failure to copy is reported as such)
        raise ValueError(
            f"model: cannot copy {type(model).__name__} from its config "
            f"({type(error).__name__}: {str(error).splitlines()[0]}); register its custom "
            "layers and give a subclassed model a get_config that rebuilds it "
            "(https://keras.io/guides/serialization_and_saving/), or pass copy=False to mask "
            "the model itself in place.") from error
    return clone


def wrap(model, kernels: list[Kernel], sparsities: dict[str, float], seed: int,
         copy: bool = True) -> SparseModel:
    """A ``SparseModel`` over a copy of ``model`` (or ``model`` itself if not ``copy``) with
    random masks on ``kernels``: kernel ``k`` gets exactly ``floor(s_k · N_k)`` zeros, drawn
    as ``rigl.masking.random_mask`` draws them from ``(seed, path)``, and its weights are
    zeroed there."""
    from rigl.masking import random_mask  # masking imports this module

    sparse = SparseModel(copy_model(model) if copy else model, kernel_specs(model, kernels),
                         name=f"sparse_{model.name}")
    for target in sparse.masked_weights():
        mask = random_mask(tuple(target.mask.shape), sparsities[target.name], seed, target.name)
        target.mask.assign(mask)
        target.masked_kernel.assign(
            np.where(mask, keras.ops.convert_to_numpy(target.masked_kernel), 0))
    return sparse

"""Building a truly sparse model directly: ``sparse_model`` never allocates a dense kernel.

``rigl.to_sparse(rigl.sparsify(model, ...))`` goes through the dense model and its masked
copy: impossible when the dense model does not fit (784 → 65,536 → 65,536 → 10 has a 17 GB
middle kernel). ``sparse_model`` takes instead a function that builds the model, calling a
factory wherever it wants a Dense layer, and calls it twice:

1. with a *probe* factory whose layers hold no weights: they only record their name and
   kernel shape ``(n_in, units)`` when the model is built;
2. with a factory making ``rigl.SparseDense(units, nnz=N_l - floor(s_l · N_l), ...)`` (or a
   plain ``keras.layers.Dense`` for ``dense_layers``), the per-layer sparsities ``s_l``
   computed from the recorded shapes exactly as ``rigl.sparsify`` computes them
   (``rigl.masking.plan_sparsities``: same arguments, same validation, same errors).

So every layer's ``nnz`` is the active count ``rigl.to_sparse(rigl.sparsify(...))`` gives the
same model, and memory is O(nnz) throughout (positions are drawn in O(nnz), see
``rigl.sparse_layers.random_positions``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import keras

from rigl import distributions
from rigl.layers import MASKED_TWINS, is_masked
from rigl.masking import _check_graph_model, plan_sparsities, walk_layers
from rigl.sparse_layers import SparseDense

# Arguments of SparseDense that sparse_model sets itself.
_RESERVED = ("sparsity", "nnz", "seed")


class _Probe(keras.layers.Layer):
    """A Dense stand-in without weights: records its kernel shape when built."""

    def __init__(self, units, name, record):
        super().__init__(name=name)
        self.units = units
        self._record = record  # a function: Keras would wrap (copy) a dict attribute

    def build(self, input_shape):
        n_in = input_shape[-1]
        if n_in is None:
            raise ValueError(f"build: layer {self.name!r} gets inputs of shape "
                             f"{tuple(input_shape)} with an unknown last dim; give the "
                             "model a fixed feature size.")
        self._record(self.name, (int(n_in), self.units))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def call(self, inputs):
        # Never meant to run on data: zeros of the right shape.
        return keras.ops.matmul(keras.ops.zeros_like(inputs[..., :1]),
                                keras.ops.zeros((1, self.units), inputs.dtype))


class _Factory:
    """The ``dense`` passed to ``build``: names layers and records what it made."""

    def __init__(self, make):
        self.make = make
        self.made: list[tuple[str, int]] = []  # (name, units) in call order

    def __call__(self, units, **kwargs):
        reserved = sorted(key for key in _RESERVED if key in kwargs)
        if reserved:
            raise ValueError(f"dense: {reserved} are set by rigl.sparse_model (pass sparsity, "
                             "custom_sparsity and seed to it instead).")
        if isinstance(units, bool) or int(units) != units or units < 1:
            raise ValueError(f"dense: units must be a positive integer, got {units!r}.")
        name = kwargs.pop("name", None)
        if name is None:
            # Deterministic: the same on both calls of build, unlike Keras' global counter.
            name = "dense" if not self.made else f"dense_{len(self.made)}"
        if name in [made for made, _ in self.made]:
            raise ValueError(f"dense: layer name {name!r} is used twice; every layer made by "
                             "dense() needs a unique name (unnamed ones are 'dense', "
                             "'dense_1', ... in call order).")
        self.made.append((name, int(units)))
        return self.make(int(units), name, kwargs)


def _call_build(build, factory, which: str):
    model = build(factory)
    _check_graph_model(model, "build")
    names = {layer.name for layer in walk_layers(model)}
    unused = [name for name, _ in factory.made if name not in names]
    if unused:
        raise ValueError(f"build: layers {unused} made by dense() are not in the model it "
                         f"returned ({which} call).")
    return model


def sparse_model(
    build: Callable,
    sparsity: float,
    distribution: str = "uniform",
    custom_sparsity: Mapping[str, float] | None = None,
    dense_layers: Iterable[str] = (),
    erk_power_scale: float = 1.0,
    seed: int = 0,
) -> keras.Model:
    """Builds a model with truly sparse Dense layers, never allocating a dense kernel.

    ``build(dense)`` must return a built Sequential or functional model (from
    ``keras.Input``), calling ``dense(units, **kwargs)`` wherever it wants a Dense layer
    (``kwargs`` as ``keras.layers.Dense``: ``name``, ``activation``, ``use_bias``,
    ``kernel_initializer``, ``kernel_regularizer``...). It is called twice (see the module
    docstring): first with weightless probes to learn the kernel shapes, then for real, where
    ``dense`` makes a ``rigl.SparseDense`` with the ``nnz`` that ``rigl.sparsify`` with the
    same arguments would leave active (a plain ``keras.layers.Dense`` for ``dense_layers``).
    Both calls must build the same model. The result is not compiled.

    Layer names: an unnamed ``dense`` layer is named ``"dense"``, ``"dense_1"``, ... by call
    order (the same on both calls); names must be unique. ``dense_layers`` and
    ``custom_sparsity`` refer to these names. Initial positions are uniformly random, drawn
    per layer from ``(seed, crc32(name))`` in O(nnz) memory (the same on every process, not
    those of ``rigl.sparsify``'s masks); values are drawn from the layer's initializer as
    ``rigl.SparseDense`` does.

    Example:
        >>> def build(dense):
        ...     inputs = keras.Input((784,))
        ...     x = dense(65536, activation="relu", name="h1")(inputs)
        ...     x = dense(65536, activation="relu", name="h2")(x)
        ...     return keras.Model(inputs, dense(10, name="out")(x))
        >>> model = rigl.sparse_model(build, 0.999, "erk")   # ~60 MB, not 17 GB

    Args:
        build: a function of one argument, the layer factory ``dense``, returning the model.
            Only the layers it makes with ``dense`` are sparse; it must not contain other
            Dense, Conv2D, DepthwiseConv2D or GRU layers (those have no sparse form here and
            would change the distribution: use ``rigl.sparsify`` and ``rigl.to_sparse``).
        sparsity, distribution, custom_sparsity, dense_layers, erk_power_scale: as
            ``rigl.sparsify``, over the layers made by ``dense``.
        seed: seed of the initial positions.

    Raises:
        ValueError: naming the argument, for what ``rigl.sparsify`` rejects (an unknown name
            in ``custom_sparsity``/``dense_layers``, an invalid sparsity or distribution...),
            a ``build`` that does not return a built Sequential/functional model, holds
            maskable layers not made by ``dense``, builds a different model on its second
            call, or a repeated layer name; and whatever ``rigl.SparseDense`` rejects in the
            layer arguments (a ``kernel_constraint``, an orthogonal initializer...).
    """
    if not callable(build) or isinstance(build, keras.layers.Layer):
        raise ValueError(f"build: expected a function build(dense) -> keras.Model, got "
                         f"{type(build).__name__}.")
    seed = int(seed)
    shapes: dict[str, tuple[int, int]] = {}
    probe = _Factory(lambda units, name, kwargs: _Probe(units, name, shapes.__setitem__))
    first = _call_build(build, probe, "first")
    made = {name for name, _ in probe.made}
    foreign = [layer.name for layer in walk_layers(first)
               if (type(layer) in MASKED_TWINS or is_masked(layer) or
                   isinstance(layer, SparseDense)) and layer.name not in made]
    if foreign:
        raise ValueError(
            f"build: layers {foreign} were not made by dense(); rigl.sparse_model sparsifies "
            "only the layers made by dense (Dense, Conv2D, DepthwiseConv2D and GRU layers "
            "made otherwise would change the distribution). Build them with dense(), or use "
            "rigl.sparsify and rigl.to_sparse.")
    unbuilt = [name for name, _ in probe.made if name not in shapes]
    if unbuilt:
        raise ValueError(f"build: layers {unbuilt} made by dense() were never called on an "
                         "input; build the model from keras.Input.")
    del first
    kernels = {name: {name: shapes[name]} for name, _ in probe.made}
    sparsities = plan_sparsities(kernels, sparsity, distribution, custom_sparsity,
                                 dense_layers, erk_power_scale)

    def make(units, name, kwargs):
        if name not in sparsities:  # a dense layer
            return keras.layers.Dense(units, name=name, **kwargs)
        size = shapes[name][0] * shapes[name][1]
        nnz = size - distributions.num_zeros(sparsities[name], size)
        return SparseDense(units, sparsity=sparsities[name], nnz=nnz, seed=seed, name=name,
                           **kwargs)

    real = _Factory(make)
    model = _call_build(build, real, "second")
    if real.made != probe.made:
        raise ValueError(f"build: made different layers on its two calls ((name, units) in "
                         f"call order: {probe.made}, then {real.made}); it must build the "
                         "same model every time it is called.")
    layers = {layer.name: layer for layer in walk_layers(model)}
    for name, _ in real.made:
        layer = layers[name]
        shape = layer.kernel_shape if isinstance(layer, SparseDense) else (
            tuple(int(d) for d in layer.kernel.shape) if layer.built else None)
        if shape != shapes[name]:
            raise ValueError(f"build: layer {name!r} has kernel shape {shapes[name]} on the "
                             f"first call and {shape} on the second; it must build the same "
                             "model every time it is called.")
    return model

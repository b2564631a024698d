"""SRigL: RigL with constant fan-in and neuron ablation.

Lasby et al., "Dynamic Sparse Training with Structured Sparsity", ICLR 2024
(https://arxiv.org/abs/2305.02299); reference code calgaryml/condensed-sparsity,
``src/rigl_torch/rigl_constant_fan.py`` (``RigLConstFanScheduler``) and
``src/rigl_torch/utils/rigl_utils.py`` (``get_fan_in_after_ablation``).

Every output neuron of a layer (a column of a Dense kernel, an output channel of a Conv2D
one) keeps the same number k of active inputs, its fan-in. A layer has a budget B, the
connections ``rigl.sparsify`` gives it (``size - floor(s · size)``); with L live neurons
k = floor(B / L) and the layer holds exactly k · L connections:

    B - L < k · L <= B        (the layer is within one live-neuron count of its budget).

At bind each layer's mask is re-laid to constant fan-in k0 = floor(B / neurons): every neuron
keeps k0 of its active inputs at random, or adds random new ones up to k0 (those start at a
fixed draw of the layer's initializer, like ``grow_init="initial_value"``, so a freshly
sparsified model stays a fresh draw). A mask that already has constant fan-in with
k = floor(B / L) (a resumed run) is left as it is.

An update at step t with drop fraction f(t) (RigL's schedule), for each layer with n active
connections, gradient g and weights w:

1. neuron ablation (``gamma_sal`` > 0; never in the model's last sparse layer, as in the
   code): a weight is salient if it is among the ``n - floor(f · n)`` active weights of
   largest |w| or among the ``floor(f · n)`` positions of largest |g| (the layer's RigL keep
   and grow sets). A neuron with fewer than ``max(1, floor(gamma_sal · k0))`` salient
   weights is ablated: it loses every connection, and its share of B goes to the others
   (k = floor(B / L) grows). Enough neurons always stay live for k to fit the input size
   (L >= ceil(B / fan_in)): if the threshold would ablate more, it is lowered to the
   salient count of the neuron of rank ceil(B / fan_in) (ranked by count, as the code
   does). Ablation is decided afresh at every update: an ablated neuron whose gradients
   make it salient again comes back with k new connections.
2. drop: the layer keeps its ``n - floor(f · n)`` active weights of largest |w| in live
   neurons (RigL's layer-wide drop), and each neuron at most its k largest of them;
3. grow: each live neuron grows, by |g| among its positions not kept, back to exactly k;
   new connections start at zero (``grow_init``) with zeroed optimizer slots.

Steps 2-3 are one drop-and-grow with per-neuron counts (``rigl.selection.grouped_top_k``),
so ties break by position as everywhere in this library.

Where the code and the paper differ, this follows the paper: γ_sal is a fraction of the
layer's constant fan-in k0 (the code's ``use_sparse_const_fan_in_for_ablation=True``; by
default the code takes it of the dense fan-in), and a neuron over k keeps its k largest
weights (the code keeps the first k of a sort of its boolean mask). The minimum number of
live neurons comes from the budget B (the code uses the current count, which can only be
lower).

SRigL runs on masked Dense and Conv1D/2D/3D kernels (masked twins, or masked by path in a
``rigl.SparseModel``; dense storage), whose last axis is the output neurons, and on
``EinsumDense`` kernels (``MultiHeadAttention``'s projections) whose contracted axes lead and
output axes follow: a neuron is one output unit, all the output axes together (a query
projection ``(d_model, heads, head_dim)`` has ``heads·head_dim`` neurons of ``d_model``
inputs, as the Dense it replaces; ``neuron_layout``). A depthwise convolution, an
EinsumDense with a per-head (shared) axis or its axes in another order, a recurrent kernel,
or a truly sparse layer (``rigl.SparseDense``) is refused at bind.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf

from rigl import distributions, kernels, selection
from rigl.schedules import _check_real
from rigl.seeds import stable_seed
from rigl.updaters import RigL, floor_count

# Layers whose kernel's last axis is the output neurons (masked twins, or plain layers masked
# by path in a rigl.SparseModel).
SUPPORTED_LAYERS = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D,
                    keras.layers.Conv3D)


def constant_fan_in(budget: int, fan_in: int, neurons: int, name: str = "layer") -> int:
    """k = floor(budget / neurons), the constant fan-in of ``neurons`` live neurons.

    Raises:
        ValueError: naming ``sparsity`` when k is 0 (fewer connections than neurons), or
            ``budget`` when k exceeds the input size ``fan_in``.
    """
    k = budget // max(neurons, 1)
    if k < 1:
        raise ValueError(
            f"sparsity: layer {name!r} keeps {budget} connections for {neurons} neurons, a "
            "constant fan-in of 0; lower its sparsity (custom_sparsity) or widen the layer.")
    if k > fan_in:
        raise ValueError(f"budget: layer {name!r}: {budget} connections over {neurons} "
                         f"neurons is a fan-in of {k}, more than its {fan_in} inputs.")
    return k


def neuron_layout(layer, shape) -> tuple[int, int] | None:
    """``(fan_in, neurons)`` of a kernel of ``shape`` owned by ``layer``, read as the matrix
    ``kernel.reshape(fan_in, neurons)`` (``rigl.kernels.matrix_layout``); None for a layer
    kind SRigL does not take, or an EinsumDense whose axes are not contracted ones then
    output ones (a per-head axis)."""
    shape = tuple(int(d) for d in shape)
    if isinstance(layer, keras.layers.EinsumDense):
        return kernels.einsum_matrix(layer.equation, shape)
    if isinstance(layer, SUPPORTED_LAYERS) and len(shape) in (2, 3, 4, 5):
        return kernels.matrix_layout(layer, shape)
    return None


def neuron_counts(mask, neurons: int | None = None) -> np.ndarray:
    """Active inputs of every output neuron of a kernel's mask: its last axis, or its last
    axes holding ``neurons`` neurons (an EinsumDense kernel's output axes)."""
    mask = np.asarray(mask)
    return np.count_nonzero(mask.reshape(-1, neurons or mask.shape[-1]), axis=0)


class SRigL(RigL):
    """SRigL (Lasby et al. 2024): RigL with constant fan-in and neuron ablation.

    See the module docstring for the algorithm, the budget rule and how it follows the paper
    and its code.

    Example:
        >>> model = rigl.sparsify(model, 0.9, "erk")
        >>> updater = rigl.SRigL(sparsity=0.9, distribution="erk", gamma_sal=0.3)

    Args:
        sparsity, distribution, custom_sparsity, erk_power_scale: the arguments the model was
            sparsified with; they fix each layer's budget B (``size - floor(s · size)``). With
            ``sparsity=None`` B is each layer's active count at the first bind of this
            updater (a run resumed in a new process must then pass them: a re-laid mask's
            count k · L no longer tells B).
        gamma_sal: γ_sal in [0, 1], the fraction of k0 a neuron's salient weights must
            reach to stay live (0: no ablation; the paper's runs use 0.3).
        (the rest): as ``rigl.RigL`` (drop by |w|, grow by |dense gradient|).

    Raises:
        ValueError: naming the parameter, for a bad sparsity, distribution or gamma_sal;
            at bind, naming ``model`` for a layer kind SRigL does not support and
            ``sparsity`` for a layer left with a fan-in of 0.
    """

    name = "srigl"
    sparse_storage_error = ("constant fan-in drops and grows per output neuron, which truly "
                            "sparse storage does not implement")

    def __init__(self, sparsity: float | None = None, distribution: str = "uniform",
                 custom_sparsity: Mapping[str, float] | None = None,
                 erk_power_scale: float = 1.0, gamma_sal: float = 0.3,
                 update_freq: int = 100, begin_step: int = 0, end_step: int | None = None,
                 drop_fraction: float = 0.3, drop_fraction_decay: str = "cosine",
                 decay_power: float = 1.0, grow_init: str = "zeros",
                 grad_accumulation_n: int = 1, seed: int = 0):
        super().__init__(update_freq, begin_step, end_step, drop_fraction, drop_fraction_decay,
                         decay_power, grow_init, grad_accumulation_n, seed)
        if sparsity is not None:
            sparsity = distributions.validate_sparsity(sparsity, "sparsity")
        if distribution not in distributions.DISTRIBUTIONS:
            raise ValueError(f"distribution: unknown {distribution!r}; allowed: "
                             f"{distributions.DISTRIBUTIONS}.")
        self.sparsity = sparsity
        self.distribution = distribution
        self.custom_sparsity = dict(custom_sparsity or {})
        self.erk_power_scale = erk_power_scale
        self.gamma_sal = _check_real("gamma_sal", gamma_sal, 0.0, 1.0)
        self._budgets: dict[str, int] = {}

    # --------------------------------------------------------------------------- binding
    def _on_bind(self, targets):
        for target in targets:
            layer = getattr(getattr(target, "target", None), "layer", None)
            if neuron_layout(layer, target.shape) is None:
                kind = type(layer).__name__ if layer is not None else type(target).__name__
                raise ValueError(
                    f"model: sparse weight {target.name!r} belongs to a {kind}; SRigL "
                    "(constant fan-in) supports Dense and Conv1D/2D/3D kernels (their last "
                    "axis is the output neurons) and EinsumDense kernels whose contracted "
                    "axes lead and output axes follow. Keep that layer dense (dense_layers, "
                    "exclude) or use another method.")
        if self.sparsity is not None:
            shapes = {target.name: target.shape for target in targets}
            sparsities = distributions.layer_sparsities(
                shapes, self.sparsity, self.distribution, self.custom_sparsity,
                self.erk_power_scale)
            budgets = {}
            for name, shape in shapes.items():
                size = int(np.prod(shape))
                budgets[name] = size - distributions.num_zeros(sparsities[name], size)
        else:
            budgets = {t.name: self._budgets.get(t.name, t.active_count()) for t in targets}
        self._budgets = budgets
        self.layouts = {}
        for i, target in enumerate(targets):
            fan_in, neurons = neuron_layout(target.target.layer, target.shape)
            k0 = constant_fan_in(budgets[target.name], fan_in, neurons, target.name)
            ablates = self.gamma_sal > 0 and i < len(targets) - 1
            threshold = max(1, math.floor(self.gamma_sal * k0 + 1e-9)) if ablates else 0
            min_live = min(-(-budgets[target.name] // fan_in), neurons - 1)
            self.layouts[target.name] = (fan_in, neurons, budgets[target.name], threshold,
                                         min_live)

    @property
    def budgets(self) -> dict[str, int]:
        """Layer name -> its budget B (after bind)."""
        return dict(self._budgets)

    def bind(self, model, optimizer=None, total_steps: int | None = None) -> SRigL:
        super().bind(model, optimizer, total_steps)
        for i, target in enumerate(self._targets):
            self._relay(target, self._slots[i])
        return self

    def _relay(self, target, slots) -> None:
        """Re-lays one layer's mask to constant fan-in k0 (see the module docstring)."""
        fan_in, neurons, budget, _, _ = self.layouts[target.name]
        weight = target.target
        mask = keras.ops.convert_to_numpy(weight.mask).reshape(fan_in, neurons) != 0
        counts = mask.sum(axis=0)
        live = counts > 0
        if live.any() and np.all(counts[live] == budget // live.sum()):
            return
        k0 = constant_fan_in(budget, fan_in, neurons, target.name)
        rng = np.random.default_rng(stable_seed(self.seed, target.name, "srigl_relay"))
        scores = rng.random((fan_in, neurons)) + mask  # active inputs first, random order
        ranks = np.argsort(np.argsort(-scores, axis=0, kind="stable"), axis=0, kind="stable")
        new = ranks < k0
        born = new & ~mask
        kernel = keras.ops.convert_to_numpy(weight.masked_kernel).reshape(fan_in, neurons)
        initializer = target.initializer
        config = initializer.get_config()
        if "seed" in config:
            config["seed"] = stable_seed(self.seed, target.name, "initial_value")
        initial = keras.ops.convert_to_numpy(type(initializer).from_config(config)(
            target.shape, dtype=target.dtype)).reshape(fan_in, neurons)
        kernel = np.where(new, np.where(born, initial, kernel), 0).astype(kernel.dtype)
        shape = tuple(weight.mask.shape)
        with self._strategy.scope():
            weight.mask.assign(new.reshape(shape))
            weight.masked_kernel.assign(kernel.reshape(shape))
            for slot in slots:
                value = keras.ops.convert_to_numpy(slot).reshape(fan_in, neurons)
                slot.assign(np.where(born, 0, value).astype(value.dtype).reshape(shape))

    def live_neurons(self) -> dict[str, tuple[int, int]]:
        """Layer name -> (live neurons, neurons), read from the masks (after bind)."""
        self._require_bound()
        out = {}
        for target in self._targets:
            counts = neuron_counts(keras.ops.convert_to_numpy(target.target.mask),
                                   self.layouts[target.name][1])
            out[target.name] = (int(np.count_nonzero(counts)), int(counts.size))
        return out

    # ---------------------------------------------------------------------------- counts
    def counts(self, layer, drop_fraction):
        fan_in, neurons, budget, threshold, min_live = self.layouts[layer.name]
        mask = tf.reshape(tf.cast(layer.mask, tf.bool), [fan_in, neurons])
        magnitude = tf.reshape(tf.abs(layer.weights), [-1])
        flat_mask = tf.reshape(mask, [-1])
        n_active = tf.reduce_sum(tf.cast(mask, tf.int32))
        n_drop = floor_count(drop_fraction, n_active)
        n_keep = n_active - n_drop
        live = tf.ones([neurons], tf.bool)
        if threshold > 0:
            kept, _ = selection.masked_top_k(magnitude, n_keep, flat_mask)
            grow = tf.reshape(tf.abs(layer.gradient), [-1])
            salient = tf.logical_or(kept, selection.top_k_mask(grow, n_drop))
            salient = tf.reduce_sum(tf.cast(tf.reshape(salient, [fan_in, neurons]), tf.int32),
                                    axis=0)
            ranked = tf.sort(salient, direction="DESCENDING")
            live = salient >= tf.minimum(threshold, ranked[min_live])
        n_live = tf.reduce_sum(tf.cast(live, tf.int32))
        k = budget // n_live
        candidates = tf.logical_and(mask, live[None, :])
        n_keep = tf.minimum(n_keep, tf.reduce_sum(tf.cast(candidates, tf.int32)))
        kept, _ = selection.masked_top_k(magnitude, n_keep, tf.reshape(candidates, [-1]))
        per_neuron = tf.reduce_sum(tf.cast(tf.reshape(kept, [fan_in, neurons]), tf.int32),
                                   axis=0)
        keep = tf.where(live, tf.minimum(per_neuron, k), 0)
        active = tf.reduce_sum(tf.cast(mask, tf.int32), axis=0)
        return active - keep, tf.where(live, k - keep, 0)

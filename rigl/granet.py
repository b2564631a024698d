"""GraNet: gradual magnitude pruning with zero-cost neuroregeneration.

Liu et al., "Sparse Training via Boosting Pruning Plasticity with Neuroregeneration",
NeurIPS 2021 (https://arxiv.org/abs/2106.10404); reference code VITA-Group/GraNet,
``CIFAR/sparselearning/core.py`` (``Masking.pruning``, ``truncate_weights``).

At every update step t (every ``update_freq`` steps from ``begin_step`` to ``end_step``, and
at ``end_step``), in this order:

1. gradual pruning: the sparsity follows Zhu & Gupta's cubic
   s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t_end - t0))^3 from ``initial_sparsity`` s_i to
   ``sparsity`` s_f. With ``pruning_scope="global"`` (the paper's and the code's GraNet) the
   model keeps its ``N - floor(s_t · N)`` connections of largest |w| over all sparse layers
   together (N: their total size), so layers end at whatever sparsities the magnitudes give;
   with ``"layer"`` (the code's ``GraNet_uniform``, generalised to any distribution) each
   layer keeps ``size - floor(s_t,l · size)`` of its own, s_t,l following the cubic from s_i
   to the layer's target of ``distribution`` (as ``rigl.GradualPruning``). A layer already
   at or below its count is left alone (the count is never raised).
2. zero-cost neuroregeneration: each layer then drops ``ceil(r_t · n)`` more of its n
   remaining connections by |w| and regrows as many by |dense gradient| of one batch
   (RigL's criterion; per layer, as the code's ``truncate_weights``), so regrowth never
   changes a count. r_t decays from ``drop_fraction`` r (the code's ``--prune-rate``, 0.5)
   by the cosine r/2 · (1 + cos(π t / t_end)).

The whole update is one drop-and-grow per layer (``rigl.selection``): the layer keeps its
``n - ceil(r_t · n)`` connections of largest |w| among the pruning survivors (magnitude
selections nest, so that is the survivors' top) and grows ``ceil(r_t · n)`` of largest
|gradient| among all positions not kept. Global pruning needs every layer's scores, so GraNet
computes its counts with ``Updater.layer_counts`` (one radix selection over the
concatenated |w| of the model), not per layer.

Where the code and the paper differ, this follows the paper:

* regeneration runs at the pruning steps only ("after each gradual pruning step", the
  paper's Algorithm 1 and Figure 1); the code also calls ``truncate_weights`` at every ΔT
  after the pruning has ended, until the end of training;
* r_t anneals over the pruning window ``[0, end_step]`` to 0 as RigL's drop fraction does
  (the paper follows RigL's cosine schedule); the code anneals over the whole run, stepped
  every batch (``CosineDecay(prune_rate, len(train_loader) * epochs, eta_min=0.005)`` in
  ``main.py``), so at its final pruning epoch (110 of 160) r is still about 0.11.

Other differences from the code (``core.py`` at VITA-Group/GraNet 1bf6fbe; ``main.py``),
deliberate, from this library's conventions:

* counts: the code keeps ``int(N · (1 - s_t))`` (floor of the density), this library
  ``N - floor(s_t · N)`` (``rigl.distributions.num_zeros``): at most one more connection;
* steps: the code's first pruning step is at ΔT (its step counter is incremented first) and
  its last at the last ΔT multiple <= the final pruning step; here an update runs at
  ``begin_step`` (nothing to prune then; from a sparse start it regenerates with r_0) and at
  ``end_step`` off the grid, as ``rigl.GradualPruning``;
* ``pruning_scope="layer"`` follows ``distribution``; the code's ``GraNet_uniform`` instead
  holds the classifier at density 0.2 once s_t >= 0.8 (``pruning_uniform``);
* sparse start: the code draws a Bernoulli ERK mask at ``--init-density`` (random counts);
  an experiment here sparsifies at ``initial_sparsity`` with exact counts of the run's
  ``distribution`` (``rigl.experiments.training.start_sparsity``).

And where the code does not settle a detail, this library's conventions hold: exact counts
with ties broken by position (the code thresholds with ``|w| > t``, which drops every tie at
the threshold); a connection pruned or dropped in an update that is regrown in the same
update keeps its weight and optimizer state (the code has zeroed a pruned one before
regrowth); new connections start at zero with zeroed slots. The number regenerated is
rounded up as in the code (``math.ceil(prune_rate · nonzeros)``).

From dense (``rigl.sparsify(model, 0)``, ``initial_sparsity=0``) or from a sparse start (the
paper's sparse-to-sparse GraNet: e.g. ``rigl.sparsify(model, 0.5, "erk")`` and
``initial_sparsity=0.5``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from rigl import distributions, selection
from rigl.updaters import RigL, floor_count

PRUNING_SCOPES = ("global", "layer")


def ceil_count(fraction, n):
    """ceil(fraction * n) as int32, robust to float error like ``floor_count``."""
    product = tf.cast(fraction, tf.float64) * tf.cast(n, tf.float64)
    return tf.cast(tf.math.ceil(tf.round(product * 1e6) / 1e6), tf.int32)


class GraNet(RigL):
    """GraNet (Liu et al. 2021): gradual magnitude pruning plus zero-cost neuroregeneration.

    See the module docstring for the algorithm and how it follows the paper and its code.

    Example:
        >>> model = rigl.sparsify(model, 0.0)             # dense start
        >>> updater = rigl.GraNet(sparsity=0.9, update_freq=100, end_step=30_000)

    Args:
        sparsity: s_f, the final sparsity (global, or the distribution's overall sparsity).
        distribution: per-layer targets with ``pruning_scope="layer"`` ("uniform", "er",
            "erk"); unused by global pruning (but validated).
        custom_sparsity, erk_power_scale: as in ``rigl.layer_sparsities``.
        initial_sparsity: s_i, the sparsity at ``begin_step`` (0: dense start), <= sparsity.
        pruning_scope: "global" (default, the paper's) or "layer".
        update_freq: ΔT, steps between pruning steps.
        begin_step, end_step: t0 and t_end of the pruning (end_step defaults to 75% of
            training; an update also runs at end_step off the ΔT grid).
        drop_fraction: r, the initial regeneration ratio (default 0.5, the paper's).
        drop_fraction_decay, decay_power: its decay (default cosine, the paper's).
        seed: seed of the updater (GraNet draws nothing at random).

    Raises:
        ValueError: naming the parameter, for a sparsity out of [0, 1), an initial sparsity
            above the final one, an unknown distribution or pruning scope.
    """

    name = "granet"
    # An experiment's model starts sparsified at ``initial_sparsity`` (a random mask, the
    # paper's sparse-to-sparse variant), not dense (``training.start_sparsity``).
    sparse_start = True

    def __init__(self, sparsity: float, distribution: str = "uniform",
                 custom_sparsity: Mapping[str, float] | None = None,
                 erk_power_scale: float = 1.0, initial_sparsity: float = 0.0,
                 pruning_scope: str = "global", update_freq: int = 100, begin_step: int = 0,
                 end_step: int | None = None, drop_fraction: float = 0.5,
                 drop_fraction_decay: str = "cosine", decay_power: float = 1.0, seed: int = 0):
        super().__init__(update_freq=update_freq, begin_step=begin_step, end_step=end_step,
                         drop_fraction=drop_fraction, drop_fraction_decay=drop_fraction_decay,
                         decay_power=decay_power, seed=seed)
        self.sparsity = distributions.validate_sparsity(sparsity, "sparsity")
        self.initial_sparsity = distributions.validate_sparsity(initial_sparsity,
                                                                "initial_sparsity")
        if self.initial_sparsity > self.sparsity:
            raise ValueError(f"initial_sparsity: must be <= sparsity ({self.sparsity}), got "
                             f"{self.initial_sparsity}; GraNet only prunes.")
        if distribution not in distributions.DISTRIBUTIONS:
            raise ValueError(f"distribution: unknown {distribution!r}; allowed: "
                             f"{distributions.DISTRIBUTIONS}.")
        if pruning_scope not in PRUNING_SCOPES:
            raise ValueError(f"pruning_scope: unknown {pruning_scope!r}; allowed: "
                             f"{PRUNING_SCOPES}.")
        self.distribution = distribution
        self.custom_sparsity = dict(custom_sparsity or {})
        self.erk_power_scale = erk_power_scale
        self.pruning_scope = pruning_scope
        self.schedule = dataclasses.replace(self.schedule, include_end_step=True)

    # --------------------------------------------------------------------------- targets
    def _on_bind(self, targets):
        shapes = {target.name: target.shape for target in targets}
        self.target_sparsities = distributions.layer_sparsities(
            shapes, self.sparsity, self.distribution, self.custom_sparsity,
            self.erk_power_scale)
        self.sizes = {name: int(np.prod(shape)) for name, shape in shapes.items()}

    def scheduled_sparsity(self, step: int, name: str | None = None) -> float:
        """s_t at ``step``: the global one (``name`` None), or layer ``name``'s with
        ``pruning_scope="layer"``."""
        final = self.sparsity if name is None else self.target_sparsities[name]
        begin, end = self.schedule.begin_step, self.schedule.end()
        if step <= begin:
            return self.initial_sparsity
        if step >= end:
            return final
        progress = (step - begin) / (end - begin)
        return final + (self.initial_sparsity - final) * (1.0 - progress) ** 3

    def scheduled_count(self, step: int, name: str | None = None) -> int:
        """The connections kept after the pruning at ``step``: the whole model's (``name``
        None) or one layer's; ``size - floor(s_t · size)``."""
        size = sum(self.sizes.values()) if name is None else self.sizes[name]
        return size - distributions.num_zeros(self.scheduled_sparsity(step, name), size)

    def _sparsity_at(self, step, final: float):
        begin = float(self.schedule.begin_step)
        end = float(self.schedule.end())
        t = tf.cast(step, tf.float64)
        progress = tf.clip_by_value((t - begin) / max(end - begin, 1.0), 0.0, 1.0)
        return final + (self.initial_sparsity - final) * (1.0 - progress) ** 3

    # ---------------------------------------------------------------------------- counts
    def layer_counts(self, layers, drop_scores, drop_fraction):
        actives = [tf.reduce_sum(tf.cast(layer.mask, tf.int32)) for layer in layers]
        if self.pruning_scope == "global":
            kept = self._global_survivors(layers, drop_scores, actives)
        else:
            kept = []
            for layer, active in zip(layers, actives):
                size = self.sizes[layer.name]
                sparsity = self._sparsity_at(layer.step, self.target_sparsities[layer.name])
                kept.append(tf.minimum(active, size - floor_count(sparsity, size)))
        counts = []
        for active, survivors in zip(actives, kept):
            regrown = ceil_count(drop_fraction, survivors)
            counts.append((active - survivors + regrown, regrown))
        return counts

    def _global_survivors(self, layers, drop_scores, actives):
        """Connections each layer keeps after global magnitude pruning (int32 scalars)."""
        total = sum(self.sizes.values())
        sparsity = self._sparsity_at(layers[0].step, self.sparsity)
        keep = tf.minimum(total - floor_count(sparsity, total), tf.add_n(actives))
        scores = tf.concat([tf.reshape(s, [-1]) for s in drop_scores], 0)
        masks = tf.concat([tf.reshape(tf.cast(layer.mask, tf.bool), [-1]) for layer in layers],
                          0)
        chosen, _ = selection.masked_top_k(scores, keep, masks)
        sizes = [int(np.prod(s.shape)) for s in drop_scores]
        return [tf.reduce_sum(tf.cast(part, tf.int32)) for part in tf.split(chosen, sizes)]

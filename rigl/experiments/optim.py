"""Optimizers, learning-rate schedules and the loss of the experiments."""

from __future__ import annotations

import keras

# Re-exported: the experiments build these; they live in the core so that `import rigl`
# registers them for loading saved models without importing the experiment layer.
from rigl.losses import SparseCrossEntropy, cross_entropy  # noqa: F401
from rigl.schedules import WarmupSchedule

SCHEDULES = ("constant", "step", "cosine")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")


def make_schedule(total_steps, steps_per_epoch, global_batch_size, multiplier=1.0, base=0.1,
                  schedule="constant", warmup_epochs=0.0, warmup_steps=0, boundaries=(),
                  boundary_epochs=(), decay_factor=0.1, reference_batch_size=None):
    """A ``WarmupSchedule`` with anchors given in steps or epochs and scaled by ``multiplier``.

    The learning rates are those of the configured global batch size; with
    ``reference_batch_size`` set, ``base`` is scaled linearly by
    ``global_batch_size / reference_batch_size`` (Goyal et al. 2017).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"learning_rate.schedule: unknown {schedule!r}; allowed: {SCHEDULES}.")
    if boundaries and boundary_epochs:
        raise ValueError("learning_rate.boundaries / boundary_epochs: give one of them.")
    if reference_batch_size:
        base = base * global_batch_size / reference_batch_size
    anchors = list(boundaries) + [e * steps_per_epoch for e in boundary_epochs]
    warmup = warmup_steps + warmup_epochs * steps_per_epoch
    return WarmupSchedule(
        base, total_steps, warmup_steps=round(warmup * multiplier), schedule=schedule,
        boundaries=[round(a * multiplier) for a in anchors], decay_factor=decay_factor)


def make_optimizer(learning_rate, name="sgd", momentum=0.9, nesterov=False, beta_1=0.9,
                   beta_2=0.999, epsilon=1e-7, weight_decay=None, clipnorm=None,
                   global_clipnorm=None):
    """A Keras optimizer by name ("sgd", "adam", "adamw", "rmsprop")."""
    clip = {"clipnorm": clipnorm, "global_clipnorm": global_clipnorm}
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=nesterov, **clip)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, beta_1=beta_1, beta_2=beta_2,
                                     epsilon=epsilon, **clip)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay or 0.004,
                                      beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, **clip)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate, momentum=momentum, epsilon=epsilon,
                                        **clip)
    raise ValueError(f"optimizer.name: unknown {name!r}; allowed: {OPTIMIZERS}.")

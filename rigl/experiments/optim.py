"""Optimizers, learning-rate schedules and the loss of the experiments."""

from __future__ import annotations

import math

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="rigl")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``base``, then constant, step decay or cosine decay.

    Args:
        base: peak learning rate.
        total_steps: training length (for cosine).
        warmup_steps: steps of linear warm-up from ~0 to ``base``.
        schedule: "constant", "step" (multiply by ``decay_factor`` at every boundary) or
            "cosine" (from ``base`` after warm-up to 0 at ``total_steps``).
        boundaries: steps where "step" decays.
        decay_factor: multiplier applied at each boundary.
    """

    def __init__(self, base, total_steps, warmup_steps=0, schedule="constant",
                 boundaries=(), decay_factor=0.1):
        self.base = float(base)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.schedule = schedule
        self.boundaries = [int(b) for b in boundaries]
        self.decay_factor = float(decay_factor)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        if self.schedule == "step":
            lr = keras.ops.convert_to_tensor(self.base, "float32")
            for boundary in self.boundaries:
                lr = keras.ops.where(step >= boundary, lr * self.decay_factor, lr)
        elif self.schedule == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = keras.ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
            lr = 0.5 * self.base * (1.0 + keras.ops.cos(math.pi * progress))
        else:
            lr = keras.ops.convert_to_tensor(self.base, "float32")
        if self.warmup_steps:
            warm = self.base * (step + 1.0) / self.warmup_steps
            lr = keras.ops.where(step < self.warmup_steps, warm, lr)
        return lr

    def get_config(self):
        return {"base": self.base, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "schedule": self.schedule,
                "boundaries": self.boundaries, "decay_factor": self.decay_factor}


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


def cross_entropy(labels, logits, label_smoothing: float = 0.0):
    """Softmax cross-entropy of integer ``labels``, optionally with label smoothing."""
    if not label_smoothing:
        return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    # Keras casts y_true to the logits dtype when it calls a compiled loss.
    one_hot = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1], dtype=logits.dtype)
    return keras.losses.categorical_crossentropy(one_hot, logits, from_logits=True,
                                                 label_smoothing=label_smoothing)


@keras.saving.register_keras_serializable(package="rigl")
class SparseCrossEntropy(keras.losses.Loss):
    """``cross_entropy`` as a Keras loss (serialisable, so saved models load)."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "sparse_cross_entropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        return cross_entropy(y_true, y_pred, self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}

"""The loss of the experiments, serialisable so that their saved models load after
``import rigl``."""

from __future__ import annotations

import keras
import tensorflow as tf


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

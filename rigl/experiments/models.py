"""Models for the experiments, by name. Every maskable layer is a plain Keras Dense / Conv2D /
DepthwiseConv2D with a stable name, so per-layer sparsity maps (``custom_sparsity``,
``dense_layers``) can address it.
"""

from __future__ import annotations

import inspect

import keras


def _l2(weight_decay: float):
    # The paper's code uses TF's convention, loss += λ·Σw²/2; Keras' l2(c) adds c·Σw².
    return keras.regularizers.l2(weight_decay / 2) if weight_decay else None


def _width(units: int, multiplier: float) -> int:
    return max(1, int(round(units * multiplier)))


def lenet300_100(input_shape, num_classes, width=1.0, weight_decay=0.0):
    """LeNet-300-100: two hidden ReLU layers of 300 and 100 units (LeCun et al. 1998)."""
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = keras.layers.Dense(_width(300, width), activation="relu", name="fc1",
                           kernel_regularizer=_l2(weight_decay))(x)
    x = keras.layers.Dense(_width(100, width), activation="relu", name="fc2",
                           kernel_regularizer=_l2(weight_decay))(x)
    outputs = keras.layers.Dense(num_classes, name="logits",
                                 kernel_regularizer=_l2(weight_decay))(x)
    return keras.Model(inputs, outputs, name="lenet300_100")


def lenet5(input_shape, num_classes, width=1.0, weight_decay=0.0):
    """LeNet-5 in the Caffe variant used by the pruning literature: conv 20 and 50 (5×5),
    max-pooling, a 500-unit hidden layer."""
    inputs = keras.Input(input_shape, name="image")
    reg = _l2(weight_decay)
    x = keras.layers.Conv2D(_width(20, width), 5, activation="relu", name="conv1",
                            kernel_regularizer=reg)(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(_width(50, width), 5, activation="relu", name="conv2",
                            kernel_regularizer=reg)(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(_width(500, width), activation="relu", name="fc1",
                           kernel_regularizer=reg)(x)
    outputs = keras.layers.Dense(num_classes, name="logits", kernel_regularizer=reg)(x)
    return keras.Model(inputs, outputs, name="lenet5")


def small_cnn(input_shape, num_classes, width=1.0, weight_decay=0.0):
    """A small VGG-style CIFAR network (3 stages of two 3×3 convs, batch norm, pooling)."""
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    reg = _l2(weight_decay)
    for stage, filters in enumerate((32, 64, 128), start=1):
        for i in (1, 2):
            x = keras.layers.Conv2D(_width(filters, width), 3, padding="same", use_bias=False,
                                    name=f"conv{stage}_{i}", kernel_regularizer=reg)(x)
            x = keras.layers.BatchNormalization(name=f"bn{stage}_{i}")(x)
            x = keras.layers.ReLU(name=f"relu{stage}_{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{stage}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, name="logits", kernel_regularizer=reg)(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def char_gru(input_shape, num_classes, width=1.0, weight_decay=0.0):
    """Character-level GRU language model: bytes -> embedding 128 -> GRU 512 -> dense 256,
    128 -> 256-way output at every position."""
    inputs = keras.Input(input_shape, dtype="int32", name="bytes")
    reg = _l2(weight_decay)
    x = keras.layers.Embedding(num_classes, 128, name="embedding")(inputs)
    x = keras.layers.GRU(_width(512, width), return_sequences=True, name="gru",
                         kernel_regularizer=reg, recurrent_regularizer=reg)(x)
    x = keras.layers.Dense(_width(256, width), activation="relu", name="readout1",
                           kernel_regularizer=reg)(x)
    x = keras.layers.Dense(_width(128, width), activation="relu", name="readout2",
                           kernel_regularizer=reg)(x)
    outputs = keras.layers.Dense(num_classes, name="logits", kernel_regularizer=reg)(x)
    return keras.Model(inputs, outputs, name="char_gru")


MODELS = {
    "lenet300_100": lenet300_100,
    "lenet5": lenet5,
    "small_cnn": small_cnn,
    "char_gru": char_gru,
}


def build_model(name: str, input_shape, num_classes: int, **kwargs) -> keras.Model:
    """Builds the model registered as ``name`` (see ``MODELS``)."""
    if name not in MODELS:
        raise ValueError(f"model: unknown model {name!r}; allowed: {sorted(MODELS)}.")
    accepted = list(inspect.signature(MODELS[name]).parameters)[2:]
    for option in kwargs:
        if option not in accepted:
            raise ValueError(f"model.{option}: not an option of model {name!r}; its options "
                             f"are {accepted}.")
    return MODELS[name](tuple(input_shape), num_classes, **kwargs)

"""Models for the experiments, by name. Every maskable layer is a plain Keras Dense / Conv2D /
DepthwiseConv2D with a stable name, so per-layer sparsity maps (``custom_sparsity``,
``dense_layers``) can address it; each builder's docstring gives its naming scheme.

``MODELS`` (all ``fn(input_shape, num_classes, width=1.0, weight_decay=0.0, **options)``;
``width`` multiplies hidden channel/unit counts, ``weight_decay`` is the L2 on kernels):

* ``lenet300_100``, ``lenet5``: MNIST.
* ``mlp``: a multilayer perceptron of any hidden widths (option ``hidden``), for the big
  truly sparse MLPs.
* ``small_cnn``: a small VGG-style CIFAR network.
* ``char_gru``: character-level GRU language model (per-position logits).
* ``char_transformer``: a small causal transformer language model (per-position logits;
  attention projections are ``EinsumDense``, masked by path).
* ``resnet50``: ResNet-50 v1.5, the paper's ImageNet model (25.6M parameters, 8.2 GFLOPs).
* ``mobilenet_v1``, ``mobilenet_v2``: the paper's ImageNet MobileNets (4.2M / 3.5M).
* ``wrn_22_2``: WideResNet-22-2, the paper's CIFAR-10 model (1.1M); ``wide_resnet`` for
  other depths and widening factors (options ``depth``, ``k``, ``dropout``).

Extra options are keyword arguments; ``build_model`` rejects names a model does not take.
"""

from __future__ import annotations

import inspect

import keras


def _l2(weight_decay: float):
    # The paper's code uses TF's convention, loss += λ·Σw²/2; Keras' l2(c) adds c·Σw².
    return keras.regularizers.l2(weight_decay / 2) if weight_decay else None


def _width(units: int, multiplier: float) -> int:
    return max(1, int(round(units * multiplier)))


def lenet300_100(input_shape, num_classes, width=1.0, weight_decay=0.0,
                 dense=keras.layers.Dense):
    """LeNet-300-100: two hidden ReLU layers of 300 and 100 units (LeCun et al. 1998);
    ``mlp`` with ``hidden=(300, 100)`` under its own name. Layers ``fc1``, ``fc2``,
    ``logits``; ``dense`` as ``mlp``'s."""
    return _perceptron(input_shape, num_classes, width, weight_decay, (300, 100), dense,
                       "lenet300_100")


def mlp(input_shape, num_classes, width=1.0, weight_decay=0.0, hidden=(300, 100),
        dense=keras.layers.Dense):
    """A multilayer perceptron: flatten, a ReLU Dense layer per entry of ``hidden``, Dense
    logits. The big-MLP experiments (``gin_configs/big_mlp/``) use it at widths whose dense
    kernels cannot be allocated.

    Layer names: ``flatten``, ``fc1``, ``fc2``, ... (one per hidden layer), ``logits``.

    Args:
        input_shape, num_classes, width, weight_decay: as every model (``width`` multiplies
            the hidden units).
        hidden: the hidden layers' units (at width 1), one entry per layer; may be empty.
        dense: the factory of every Dense layer, called as ``dense(units, activation=...,
            name=..., kernel_regularizer=...)``. ``keras.layers.Dense`` by default; the
            training pipeline passes ``rigl.sparse_model``'s, which builds ``SparseDense``
            layers directly (no dense kernel ever exists).
    """
    return _perceptron(input_shape, num_classes, width, weight_decay, hidden, dense, "mlp")


def _perceptron(input_shape, num_classes, width, weight_decay, hidden, dense, name):
    if not isinstance(hidden, (list, tuple)) or not all(
            isinstance(units, int) and not isinstance(units, bool) and units >= 1
            for units in hidden):
        raise ValueError(f"model.hidden: expected a list of positive unit counts, got "
                         f"{hidden!r}.")
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    for i, units in enumerate(hidden, start=1):
        x = dense(_width(units, width), activation="relu", name=f"fc{i}",
                  kernel_regularizer=_l2(weight_decay))(x)
    outputs = dense(num_classes, name="logits", kernel_regularizer=_l2(weight_decay))(x)
    return keras.Model(inputs, outputs, name=name)


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


@keras.saving.register_keras_serializable(package="rigl")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding of each position (0, 1, ... along axis 1) to its input."""

    def __init__(self, max_length: int, **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            shape=(self.max_length, input_shape[-1]), name="embeddings",
            initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, inputs):
        length = keras.ops.shape(inputs)[1]
        return inputs + keras.ops.expand_dims(self.embeddings[:length], 0)

    def get_config(self):
        return {**super().get_config(), "max_length": self.max_length}


def char_transformer(input_shape, num_classes, width=1.0, weight_decay=0.0, num_layers=2,
                     hidden_dim=128, num_heads=4, intermediate_dim=512, dropout=0.0):
    """Character-level decoder-only transformer language model (pre-norm, GPT-style):
    bytes -> embedding ``hidden_dim`` + learned positions -> ``num_layers`` blocks of causal
    ``MultiHeadAttention`` and a GELU feed-forward layer of ``intermediate_dim`` -> layer norm
    -> 256-way output at every position. ``width`` multiplies ``hidden_dim`` and
    ``intermediate_dim`` (``hidden_dim`` stays a multiple of ``num_heads``).

    Its attention projections are ``EinsumDense`` layers inside ``MultiHeadAttention``, so
    ``rigl.sparsify`` masks it through a ``rigl.SparseModel`` (kernels by path). Layer names:
    ``embedding``, ``positions``, ``block<i>_attention`` (kernels ``.../query/kernel``,
    ``key``, ``value``, ``attention_output``), ``block<i>_ffn_in``, ``block<i>_ffn_out``,
    ``block<i>_norm1``/``norm2``, ``final_norm``, ``logits``.
    """
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"model.num_layers: expected a positive integer, got {num_layers!r}.")
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"model.num_heads: expected a positive integer, got {num_heads!r}.")
    hidden = max(num_heads, _width(hidden_dim, width) // num_heads * num_heads)
    inner = _width(intermediate_dim, width)
    reg = _l2(weight_decay)
    inputs = keras.Input(input_shape, dtype="int32", name="bytes")
    x = keras.layers.Embedding(num_classes, hidden, name="embedding")(inputs)
    x = PositionEmbedding(input_shape[0], name="positions")(x)
    for i in range(1, num_layers + 1):
        y = keras.layers.LayerNormalization(epsilon=1e-5, name=f"block{i}_norm1")(x)
        y = keras.layers.MultiHeadAttention(
            num_heads, hidden // num_heads, dropout=dropout, kernel_regularizer=reg,
            name=f"block{i}_attention")(y, y, use_causal_mask=True)
        x = x + keras.layers.Dropout(dropout)(y) if dropout else x + y
        y = keras.layers.LayerNormalization(epsilon=1e-5, name=f"block{i}_norm2")(x)
        y = keras.layers.Dense(inner, activation="gelu", kernel_regularizer=reg,
                               name=f"block{i}_ffn_in")(y)
        y = keras.layers.Dense(hidden, kernel_regularizer=reg, name=f"block{i}_ffn_out")(y)
        x = x + keras.layers.Dropout(dropout)(y) if dropout else x + y
    x = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")(x)
    outputs = keras.layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs, name="char_transformer")


# ---------------------------------------------------------------------------------------------
# ImageNet and CIFAR models of the paper. Shared conventions (from the reference code,
# github.com/google-research/rigl, rigl/imagenet_resnet/*.py and rigl/cifar_resnet/*.py):
# batch norm with momentum 0.9 and epsilon 1e-5, convolutions without bias when a batch norm
# follows, L2 on conv/dense kernels only (batch norm and biases are not decayed).

_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def _batch_norm(name: str, zero_gamma: bool = False):
    return keras.layers.BatchNormalization(
        momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=name,
        gamma_initializer="zeros" if zero_gamma else "ones")


def _variance_scaling(mode: str = "fan_in"):
    # tf.compat.v1.variance_scaling_initializer(), which the reference ImageNet models use:
    # scale 1, fan-in, truncated normal.
    return keras.initializers.VarianceScaling(1.0, mode, "truncated_normal")


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds a channel count to the nearest multiple of ``divisor`` (never below ``divisor``
    and never more than 10% below ``value``), as in the MobileNet reference code."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv(filters: int, kernel_size: int, strides: int, name: str, weight_decay: float):
    # Stride-1 convolutions use 'same'; strided ones are preceded by _fixed_pad and use
    # 'valid', as in the reference. Both give output size ceil(input / stride).
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same" if strides == 1 else "valid",
        use_bias=False, kernel_initializer=_variance_scaling(),
        kernel_regularizer=_l2(weight_decay), name=name)


def _fixed_pad(x, kernel_size: int, strides: int, name: str):
    """Pads (k-1)//2 before and the rest after, for a strided convolution or none.

    The reference pads independently of the input size; Keras' 'same' with stride 2 would pad
    an even input only after (one pixel shift of the sampling grid relative to the paper).
    """
    if strides == 1 or kernel_size == 1:
        return x
    total = kernel_size - 1
    pad = (total // 2, total - total // 2)
    return keras.layers.ZeroPadding2D((pad, pad), name=name)(x)


def _bottleneck(x, filters: int, strides: int, projection: bool, prefix: str,
                weight_decay: float):
    """ResNet v1.5 bottleneck: 1×1 (filters) → 3×3 (filters, stride) → 1×1 (4·filters)."""
    shortcut = x
    if projection:
        shortcut = _conv(4 * filters, 1, strides, f"{prefix}_shortcut", weight_decay)(x)
        shortcut = _batch_norm(f"{prefix}_shortcut_bn")(shortcut)
    y = _conv(filters, 1, 1, f"{prefix}_conv1", weight_decay)(x)
    y = _batch_norm(f"{prefix}_bn1")(y)
    y = keras.layers.ReLU(name=f"{prefix}_relu1")(y)
    y = _fixed_pad(y, 3, strides, f"{prefix}_pad2")
    y = _conv(filters, 3, strides, f"{prefix}_conv2", weight_decay)(y)
    y = _batch_norm(f"{prefix}_bn2")(y)
    y = keras.layers.ReLU(name=f"{prefix}_relu2")(y)
    y = _conv(4 * filters, 1, 1, f"{prefix}_conv3", weight_decay)(y)
    # Zero gamma: every residual block starts as the identity (Goyal et al. 2017).
    y = _batch_norm(f"{prefix}_bn3", zero_gamma=True)(y)
    y = keras.layers.Add(name=f"{prefix}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{prefix}_out")(y)


def resnet50(input_shape, num_classes, width=1.0, weight_decay=0.0):
    """ResNet-50 v1.5 (He et al. 2016, https://arxiv.org/abs/1512.03385), the paper's ImageNet
    model, following the reference ``rigl/imagenet_resnet/resnet_model.py``.

    Stem 7×7/2 conv (64) + BN + ReLU + 3×3/2 max-pool; stages 2-5 of [3, 4, 6, 3] bottleneck
    blocks of widths 64, 128, 256, 512 (outputs ×4). v1.5: a stage's first block strides on
    its 3×3 conv, not its first 1×1. The first block of every stage has a projection shortcut
    (1×1 conv + BN, with the block's stride). The last BN of each block starts with gamma = 0.
    Global average pooling and a dense head. Strided convolutions pad explicitly like the
    reference (``(k-1)//2`` before, the rest after) instead of Keras' 'same'.

    At width 1 and 1000 classes: 54 maskable layers (53 Conv2D + 1 Dense), 25,557,032
    trainable parameters (torchvision's count) plus 53,120 batch norm statistics.

    Initialisation as the reference: convolutions VarianceScaling(1, fan_in, truncated
    normal); the head N(0, 0.01²) with zero bias.

    Layer names (stage ``s`` in 2..5, block ``b`` from 1; the stem is stage 1):
        ``conv1``, ``conv1_bn``, ``pool1``;
        ``stage{s}_block{b}_conv1`` / ``_conv2`` / ``_conv3`` (1×1, 3×3, 1×1) with
        ``_bn1`` / ``_bn2`` / ``_bn3``; ``stage{s}_block1_shortcut`` and
        ``stage{s}_block1_shortcut_bn``; ``gap``; ``fc`` (the head).

    Args:
        input_shape: (height, width, channels); any size of at least 32×32.
        num_classes: units of the head.
        width: multiplies every channel count except the head's.
        weight_decay: L2 on conv and dense kernels (``λ·Σw²/2``).
    """
    inputs = keras.Input(input_shape, name="image")
    x = _fixed_pad(inputs, 7, 2, "conv1_pad")
    x = _conv(_width(64, width), 7, 2, "conv1", weight_decay)(x)
    x = _batch_norm("conv1_bn")(x)
    x = keras.layers.ReLU(name="conv1_relu")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    for stage, (blocks, filters) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=2):
        for block in range(1, blocks + 1):
            strides = 2 if block == 1 and stage > 2 else 1
            x = _bottleneck(x, _width(filters, width), strides, projection=block == 1,
                            prefix=f"stage{stage}_block{block}", weight_decay=weight_decay)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(
        num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        kernel_regularizer=_l2(weight_decay), name="fc")(x)
    return keras.Model(inputs, outputs, name="resnet50")


def _depthwise(strides: int, name: str, weight_decay: float, regularize: bool):
    # Keras computes the fans of a (3, 3, C, 1) depthwise kernel as fan_in = 9·C and
    # fan_out = 9; the true fan-in of each output is 9, hence mode 'fan_out'.
    return keras.layers.DepthwiseConv2D(
        3, strides=strides, padding="same" if strides == 1 else "valid", use_bias=False,
        depthwise_initializer=_variance_scaling("fan_out"),
        depthwise_regularizer=_l2(weight_decay) if regularize else None, name=name)


def mobilenet_v1(input_shape, num_classes, width=1.0, weight_decay=0.0,
                 regularize_depthwise=False):
    """MobileNet v1 (Howard et al. 2017, https://arxiv.org/abs/1704.04861), following the
    reference ``rigl/imagenet_resnet/mobilenetv1_model.py``.

    Stem 3×3/2 conv (32), then 13 depthwise-separable blocks (3×3 depthwise + BN + ReLU,
    1×1 pointwise + BN + ReLU) of 64, 128, 128, 256, 256, 512 (×6), 1024, 1024 channels,
    striding in blocks 2, 4, 6 and 12; global average pooling and a dense head. Channel counts
    are ``width × base`` rounded to a multiple of 8 (``_make_divisible``). At width 1 and 1000
    classes: 4,231,976 trainable parameters, as ``keras.applications.MobileNet``.

    Initialisation: VarianceScaling(1, fan_in, truncated normal) everywhere (fan-in 9 for the
    depthwise kernels); zero head bias.

    Layer names (block ``i`` in 1..13): ``conv1``; ``conv_dw_{i}`` (DepthwiseConv2D) and
    ``conv_pw_{i}`` (1×1 Conv2D), each with ``_bn`` and ``_relu``; ``gap``; ``fc``.

    Args:
        input_shape, num_classes, width, weight_decay: as ``resnet50``.
        regularize_depthwise: also apply the L2 to the depthwise kernels; off by default, as
            in the reference and the MobileNet papers.
    """
    inputs = keras.Input(input_shape, name="image")
    x = _fixed_pad(inputs, 3, 2, "conv1_pad")
    x = _conv(_make_divisible(32 * width), 3, 2, "conv1", weight_decay)(x)
    x = _batch_norm("conv1_bn")(x)
    x = keras.layers.ReLU(name="conv1_relu")(x)
    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [
        (1024, 2), (1024, 1)]
    for i, (filters, strides) in enumerate(plan, start=1):
        x = _fixed_pad(x, 3, strides, f"conv_pad_{i}")
        x = _depthwise(strides, f"conv_dw_{i}", weight_decay, regularize_depthwise)(x)
        x = _batch_norm(f"conv_dw_{i}_bn")(x)
        x = keras.layers.ReLU(name=f"conv_dw_{i}_relu")(x)
        x = _conv(_make_divisible(filters * width), 1, 1, f"conv_pw_{i}", weight_decay)(x)
        x = _batch_norm(f"conv_pw_{i}_bn")(x)
        x = keras.layers.ReLU(name=f"conv_pw_{i}_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, kernel_initializer=_variance_scaling(),
                                 kernel_regularizer=_l2(weight_decay), name="fc")(x)
    return keras.Model(inputs, outputs, name="mobilenet_v1")


def mobilenet_v2(input_shape, num_classes, width=1.0, weight_decay=0.0,
                 regularize_depthwise=False):
    """MobileNet v2 (Sandler et al. 2018, https://arxiv.org/abs/1801.04381), following the
    reference ``rigl/imagenet_resnet/mobilenetv2_model.py`` but with the paper's ReLU6.

    Stem 3×3/2 conv (32); 17 inverted residual blocks: 1×1 expansion to 6× the input channels
    (absent in block 0) + BN + ReLU6, 3×3 depthwise (stride) + BN + ReLU6, linear 1×1
    projection + BN, plus the input when the stride is 1 and the channels match. Outputs
    16, 24×2, 32×3, 64×4, 96×3, 160×3, 320 channels, striding in blocks 1, 3, 6 and 13. Then
    a 1×1 conv to 1280 channels (more for width > 1, never fewer) + BN + ReLU6, global average
    pooling and a dense head. Channel counts are ``width × base`` rounded to a multiple of 8.
    At width 1 and 1000 classes: 3,504,872 trainable parameters, as
    ``keras.applications.MobileNetV2``.

    Initialisation as ``mobilenet_v1``.

    Layer names (block ``i`` in 0..16): ``conv1``; ``block{i}_expand`` (i ≥ 1),
    ``block{i}_depthwise``, ``block{i}_project``, each with ``_bn`` (and ``_relu`` but the
    projection); ``block{i}_add`` for residual blocks; ``conv_last``; ``gap``; ``fc``.

    Args:
        input_shape, num_classes, width, weight_decay, regularize_depthwise: as
            ``mobilenet_v1``.
    """
    inputs = keras.Input(input_shape, name="image")
    x = _fixed_pad(inputs, 3, 2, "conv1_pad")
    x = _conv(_make_divisible(32 * width), 3, 2, "conv1", weight_decay)(x)
    x = _batch_norm("conv1_bn")(x)
    x = keras.layers.ReLU(6.0, name="conv1_relu")(x)
    # (output channels, repeats, first stride) per group; expansion 6 except block 0's.
    groups = [(16, 1, 1), (24, 2, 2), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2),
              (320, 1, 1)]
    block = 0
    for filters, repeats, first_stride in groups:
        for r in range(repeats):
            strides = first_stride if r == 0 else 1
            prefix = f"block{block}"
            in_channels = x.shape[-1]
            out_channels = _make_divisible(filters * width)
            y = x
            if block > 0:
                y = _conv(6 * in_channels, 1, 1, f"{prefix}_expand", weight_decay)(y)
                y = _batch_norm(f"{prefix}_expand_bn")(y)
                y = keras.layers.ReLU(6.0, name=f"{prefix}_expand_relu")(y)
            y = _fixed_pad(y, 3, strides, f"{prefix}_pad")
            y = _depthwise(strides, f"{prefix}_depthwise", weight_decay,
                           regularize_depthwise)(y)
            y = _batch_norm(f"{prefix}_depthwise_bn")(y)
            y = keras.layers.ReLU(6.0, name=f"{prefix}_depthwise_relu")(y)
            y = _conv(out_channels, 1, 1, f"{prefix}_project", weight_decay)(y)
            y = _batch_norm(f"{prefix}_project_bn")(y)
            if strides == 1 and in_channels == out_channels:
                y = keras.layers.Add(name=f"{prefix}_add")([x, y])
            x = y
            block += 1
    x = _conv(max(1280, _make_divisible(1280 * width)), 1, 1, "conv_last", weight_decay)(x)
    x = _batch_norm("conv_last_bn")(x)
    x = keras.layers.ReLU(6.0, name="conv_last_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, kernel_initializer=_variance_scaling(),
                                 kernel_regularizer=_l2(weight_decay), name="fc")(x)
    return keras.Model(inputs, outputs, name="mobilenet_v2")


def wide_resnet(input_shape, num_classes, width=1.0, weight_decay=0.0, depth=22, k=2,
                dropout=0.3):
    """Wide ResNet-``depth``-``k`` for CIFAR (Zagoruyko & Komodakis 2016,
    https://arxiv.org/abs/1605.07146), following the reference
    ``rigl/cifar_resnet/resnet_model.py``.

    Stem 3×3 conv (16); stages 2-4 of ``(depth - 4) / 6`` pre-activation blocks with
    16k, 32k, 64k channels (stride 2 at the start of stages 3 and 4). A block is
    BN-ReLU-conv3×3(stride)-BN-ReLU-dropout-conv3×3, added to its input; where the channels or
    the stride change, the shortcut is instead a 1×1 conv (same stride) of the block's first
    BN-ReLU output. Then BN-ReLU, global average pooling and a dense head. Batch norm as the
    ImageNet models; kernels keep Keras' default glorot-uniform initialiser, as the reference.

    Layer names (stage ``s`` in 2..4, block ``b`` from 1): ``conv1``;
    ``stage{s}_block{b}_bn1`` / ``_relu1`` / ``_conv1`` / ``_bn2`` / ``_relu2`` /
    ``_dropout`` / ``_conv2`` / ``_add``; ``stage{s}_block{b}_shortcut`` where present;
    ``final_bn``, ``final_relu``, ``gap``, ``fc``.

    Args:
        input_shape, num_classes, weight_decay: as ``resnet50``.
        width: multiplies every channel count (stem included) on top of ``k``.
        depth: total depth, ``6n + 4``.
        k: widening factor.
        dropout: dropout rate between the two convs of a block (0.3 in the WRN paper and the
            reference); 0 leaves the dropout layers out.
    """
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"model.depth: must be 6n + 4 with n >= 1, got {depth}.")
    if k <= 0:
        raise ValueError(f"model.k: must be positive, got {k}.")
    if not 0 <= dropout < 1:
        raise ValueError(f"model.dropout: must be in [0, 1), got {dropout}.")
    reg = _l2(weight_decay)
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(_width(16, width), 3, padding="same", use_bias=False,
                            kernel_regularizer=reg, name="conv1")(inputs)
    for stage, base in zip((2, 3, 4), (16, 32, 64)):
        filters = _width(base * k, width)
        for block in range(1, (depth - 4) // 6 + 1):
            prefix = f"stage{stage}_block{block}"
            strides = 2 if block == 1 and stage > 2 else 1
            y = _batch_norm(f"{prefix}_bn1")(x)
            y = keras.layers.ReLU(name=f"{prefix}_relu1")(y)
            shortcut = x
            if strides != 1 or x.shape[-1] != filters:
                shortcut = keras.layers.Conv2D(filters, 1, strides=strides, use_bias=False,
                                               kernel_regularizer=reg,
                                               name=f"{prefix}_shortcut")(y)
            y = keras.layers.Conv2D(filters, 3, strides=strides, padding="same",
                                    use_bias=False, kernel_regularizer=reg,
                                    name=f"{prefix}_conv1")(y)
            y = _batch_norm(f"{prefix}_bn2")(y)
            y = keras.layers.ReLU(name=f"{prefix}_relu2")(y)
            if dropout:
                y = keras.layers.Dropout(dropout, name=f"{prefix}_dropout")(y)
            y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                                    kernel_regularizer=reg, name=f"{prefix}_conv2")(y)
            x = keras.layers.Add(name=f"{prefix}_add")([y, shortcut])
    x = _batch_norm("final_bn")(x)
    x = keras.layers.ReLU(name="final_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, kernel_regularizer=reg, name="fc")(x)
    return keras.Model(inputs, outputs, name=f"wrn_{depth}_{k}")


def wrn_22_2(input_shape, num_classes, width=1.0, weight_decay=0.0, dropout=0.3):
    """WRN-22-2, the paper's CIFAR-10 model: ``wide_resnet`` with depth 22 and k = 2
    (3 blocks per stage, 32/64/128 channels); see ``wide_resnet`` for the layer names."""
    return wide_resnet(input_shape, num_classes, width, weight_decay, depth=22, k=2,
                       dropout=dropout)


MODELS = {
    "lenet300_100": lenet300_100,
    "mlp": mlp,
    "lenet5": lenet5,
    "small_cnn": small_cnn,
    "char_gru": char_gru,
    "char_transformer": char_transformer,
    "resnet50": resnet50,
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "wrn_22_2": wrn_22_2,
    "wide_resnet": wide_resnet,
}


def takes_dense(name: str) -> bool:
    """Whether model ``name`` builds its Dense layers through a ``dense`` factory argument
    (so that ``rigl.sparse_model`` can build it truly sparse, never densely)."""
    return "dense" in inspect.signature(MODELS[name]).parameters


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

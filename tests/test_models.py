"""Tests of the experiment models: shapes, layer names, parameter counts, FLOPs, structure."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import rigl
from rigl.experiments import models

MASKABLE = (keras.layers.Dense, keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
IMAGE_MODELS = {  # name -> (input shape for a quick forward pass, classes)
    "lenet300_100": ((28, 28, 1), 10),
    "lenet5": ((28, 28, 1), 10),
    "small_cnn": ((32, 32, 3), 10),
    "resnet50": ((32, 32, 3), 7),
    "mobilenet_v1": ((32, 32, 3), 7),
    "mobilenet_v2": ((32, 32, 3), 7),
    "wrn_22_2": ((32, 32, 3), 10),
    "wide_resnet": ((32, 32, 3), 10),
}
NEW_MODELS = ("resnet50", "mobilenet_v1", "mobilenet_v2", "wrn_22_2")


def maskable(model) -> list:
    return [layer for layer in model.layers if type(layer) in MASKABLE]


def trainable_params(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def dense_flops(model) -> int:
    """Forward FLOPs as counted in the paper: per conv/dense layer ``2·L·N_out + N_out``, with
    ``L`` the fan-in of one output and ``N_out`` the number of outputs (spatial × channels)."""
    total = 0
    for layer in maskable(model):
        if isinstance(layer, keras.layers.Dense):
            fan_in, outputs = layer.input.shape[-1], layer.units
        else:
            _, height, width, channels = layer.output.shape
            kh, kw = layer.kernel_size
            depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
            fan_in = kh * kw * (1 if depthwise else layer.input.shape[-1])
            outputs = height * width * channels
        total += 2 * fan_in * outputs + outputs
    return total


def inputs_of(model) -> dict[str, list[str]]:
    """For every layer of a functional model, the names of the layers producing its inputs
    in order, read from the model's config (its ``keras_history`` entries)."""
    def producers(node) -> list[str]:
        if isinstance(node, dict):
            if node.get("class_name") == "__keras_tensor__":
                return [node["config"]["keras_history"][0]]
            return [name for value in node.values() for name in producers(value)]
        if isinstance(node, (list, tuple)):
            return [name for value in node for name in producers(value)]
        return []

    return {layer["name"]: producers(layer["inbound_nodes"])
            for layer in model.get_config()["layers"]}


def source(model, name: str) -> str:
    """Name of the layer producing the (single) input of layer ``name``."""
    (producer,) = inputs_of(model)[name]
    return producer


@pytest.fixture(scope="module")
def resnet224():
    return models.build_model("resnet50", (224, 224, 3), 1000)


def test_registry_has_the_new_models():
    assert set(NEW_MODELS) <= set(models.MODELS)


@pytest.mark.parametrize("name", sorted(IMAGE_MODELS))
def test_builds_and_gives_logits(name):
    shape, classes = IMAGE_MODELS[name]
    extra = {"depth": 10, "k": 1} if name == "wide_resnet" else {}
    model = models.build_model(name, shape, classes, **extra)
    logits = model(np.random.default_rng(0).random((2, *shape), dtype=np.float32))
    assert tuple(logits.shape) == (2, classes)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(logits)))
    names = [layer.name for layer in maskable(model)]
    assert len(names) == len(set(names))
    assert len({layer.name for layer in model.layers}) == len(model.layers)


def test_char_gru_gives_per_position_logits():
    model = models.build_model("char_gru", (16,), 256)
    logits = model(np.zeros((2, 16), dtype=np.int32))
    assert tuple(logits.shape) == (2, 16, 256)


def _char_transformer(**options):
    options = {"num_layers": 2, "hidden_dim": 32, "num_heads": 4, "intermediate_dim": 64,
               **options}
    return models.build_model("char_transformer", (12,), 256, **options)


def test_char_transformer_is_causal_with_per_position_logits():
    model = _char_transformer()
    tokens = np.random.default_rng(0).integers(0, 256, (2, 12)).astype(np.int32)
    logits = keras.ops.convert_to_numpy(model(tokens))
    assert logits.shape == (2, 12, 256)
    changed = tokens.copy()
    changed[:, 7] = (changed[:, 7] + 1) % 256  # a later byte cannot change earlier logits
    other = keras.ops.convert_to_numpy(model(changed))
    np.testing.assert_array_equal(other[:, :7], logits[:, :7])
    assert not np.allclose(other[:, 7:], logits[:, 7:])


def test_char_transformer_kernels_are_sparsified_by_path(tmp_path):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rigl.DenseKernelsWarning)
        sparse = rigl.sparsify(_char_transformer(), 0.8, "erk")
    assert isinstance(sparse, rigl.SparseModel)
    names = [w.name for w in rigl.masked_weights(sparse)]
    per_block = ["attention/query/kernel", "attention/key/kernel", "attention/value/kernel",
                 "attention/attention_output/kernel", "ffn_in/kernel", "ffn_out/kernel"]
    assert sorted(names) == sorted([f"block{i}_{k}" for i in (1, 2) for k in per_block]
                                   + ["logits/kernel"])
    total = sum(int(np.prod(w.mask.shape)) for w in rigl.masked_weights(sparse))
    nonzero = sum(int(np.count_nonzero(w.mask.numpy())) for w in rigl.masked_weights(sparse))
    assert nonzero == pytest.approx(0.2 * total, abs=len(names))
    sparse.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    tokens = np.arange(24, dtype=np.int32).reshape(2, 12)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(tokens)),
                               keras.ops.convert_to_numpy(sparse(tokens)), atol=1e-5)


def test_char_transformer_rejects_bad_options():
    with pytest.raises(ValueError, match="model.num_heads"):
        _char_transformer(num_heads=0)
    with pytest.raises(ValueError, match="model.num_layers"):
        _char_transformer(num_layers=0)


@pytest.mark.parametrize("name", NEW_MODELS)
def test_width_multiplier_reduces_parameters(name):
    shape, classes = IMAGE_MODELS[name]
    full = models.build_model(name, shape, classes)
    half = models.build_model(name, shape, classes, width=0.5)
    assert half.count_params() < 0.6 * full.count_params()
    assert [layer.name for layer in maskable(half)] == [layer.name for layer in maskable(full)]


@pytest.mark.parametrize("name", NEW_MODELS)
def test_weight_decay_on_conv_and_dense_kernels_only(name):
    shape, classes = IMAGE_MODELS[name]
    model = models.build_model(name, shape, classes, weight_decay=1e-4)
    decayed = [layer for layer in maskable(model)
               if not isinstance(layer, keras.layers.DepthwiseConv2D)]
    assert len(model.losses) == len(decayed)
    expected = sum(1e-4 / 2 * float(np.sum(np.square(layer.kernel.numpy())))
                   for layer in decayed)
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-4)
    assert not models.build_model(name, shape, classes).losses


def test_build_model_rejects_options_of_other_models():
    with pytest.raises(ValueError, match="model.dropout"):
        models.build_model("resnet50", (32, 32, 3), 10, dropout=0.1)
    with pytest.raises(ValueError, match="model.depth"):
        models.build_model("wide_resnet", (32, 32, 3), 10, depth=21)


# --- ResNet-50 -------------------------------------------------------------------------------

def test_resnet50_layers_and_parameters(resnet224):
    layers = maskable(resnet224)
    assert len(layers) == 54
    assert sum(isinstance(layer, keras.layers.Conv2D) for layer in layers) == 53
    assert [layer.name for layer in layers if layer.name.endswith("_shortcut")] == [
        f"stage{s}_block1_shortcut" for s in (2, 3, 4, 5)]
    assert layers[0].name == "conv1" and layers[-1].name == "fc"
    assert all(not layer.use_bias for layer in layers[:-1])
    # Exactly torchvision's resnet50 (v1.5, no conv biases): the architecture is fully
    # determined, so no tolerance is needed. Keras additionally counts the BN statistics
    # (2 × 26,560 channels); keras.applications.ResNet50's 25,636,712 adds conv biases.
    assert trainable_params(resnet224) == 25_557_032
    assert resnet224.count_params() == 25_557_032 + 53_120


def test_resnet50_dense_flops_match_the_paper(resnet224):
    # The paper gives 8.2e9 FLOPs for dense ResNet-50 at 224×224; this counting gives
    # 8,189,484,008 (-0.13%).
    assert dense_flops(resnet224) == pytest.approx(8.2e9, rel=0.01)


def test_resnet50_is_v1_5(resnet224):
    assert resnet224.get_layer("stage3_block1_conv1").strides == (1, 1)
    assert resnet224.get_layer("stage3_block1_conv2").strides == (2, 2)
    assert resnet224.get_layer("stage3_block1_shortcut").strides == (2, 2)
    assert resnet224.get_layer("stage2_block1_conv2").strides == (1, 1)
    assert resnet224.get_layer("conv1").strides == (2, 2)
    shapes = {s: resnet224.get_layer(f"stage{s}_block1_add").output.shape[1:]
              for s in (2, 3, 4, 5)}
    assert shapes == {2: (56, 56, 256), 3: (28, 28, 512), 4: (14, 14, 1024), 5: (7, 7, 2048)}


def test_resnet50_batch_norm(resnet224):
    norms = [layer for layer in resnet224.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 53
    assert all(n.momentum == 0.9 and n.epsilon == 1e-5 for n in norms)
    last = [n for n in norms if n.name.endswith("_bn3")]
    assert len(last) == 16
    for norm in norms:
        zero = norm in last
        assert np.all(norm.gamma.numpy() == (0.0 if zero else 1.0)), norm.name


def test_resnet50_sparsifies_with_erk():
    model = models.build_model("resnet50", (32, 32, 3), 10)
    sparse = rigl.sparsify(model, 0.9, "erk")
    assert len(rigl.get_masks(sparse)) == 54
    assert rigl.total_sparsity(sparse) == pytest.approx(0.9, abs=1e-3)
    logits = sparse(np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32))
    assert tuple(logits.shape) == (2, 10)


# --- MobileNets ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, published, keras_total, flops", [
    # Published: 4.2M (Howard et al. 2017, Table 8) and 3.4M (Sandler et al. 2018, Table 4,
    # which omits part of the head). The counts equal keras.applications' MobileNet and
    # MobileNetV2 (total incl. BN statistics) exactly. FLOPs: ~2 × the published 569M / 300M
    # multiply-adds.
    ("mobilenet_v1", 4.2e6, 4_253_864, 1.14e9),
    ("mobilenet_v2", 3.5e6, 3_538_984, 6.1e8),
])
def test_mobilenet_parameters(name, published, keras_total, flops):
    model = models.build_model(name, (224, 224, 3), 1000)
    assert model.count_params() == keras_total
    assert trainable_params(model) == pytest.approx(published, rel=0.02)
    assert dense_flops(model) == pytest.approx(flops, rel=0.01)
    assert model.get_layer("conv1").strides == (2, 2)
    assert model.output.shape[-1] == 1000


def test_mobilenet_v1_structure():
    model = models.build_model("mobilenet_v1", (32, 32, 3), 10)
    names = [layer.name for layer in maskable(model)]
    assert names == ["conv1"] + [f"conv_{kind}_{i}" for i in range(1, 14)
                                 for kind in ("dw", "pw")] + ["fc"]
    half = models.build_model("mobilenet_v1", (32, 32, 3), 1000, width=0.5)
    assert half.get_layer("conv_pw_13").filters == 512
    # Published 1.3M at width 0.5 and 1000 classes (Howard et al. 2017, Table 6).
    assert trainable_params(half) == pytest.approx(1.33e6, rel=0.02)
    decayed = models.build_model("mobilenet_v1", (32, 32, 3), 10, weight_decay=1e-4,
                                 regularize_depthwise=True)
    assert len(decayed.losses) == len(names)


def test_mobilenet_v2_structure():
    model = models.build_model("mobilenet_v2", (32, 32, 3), 10)
    names = {layer.name for layer in maskable(model)}
    assert "block0_expand" not in names
    for i in range(17):
        assert {f"block{i}_depthwise", f"block{i}_project"} <= names
        assert (f"block{i}_expand" in names) == (i > 0)
    adds = sorted(int(layer.name[5:-4]) for layer in model.layers
                  if isinstance(layer, keras.layers.Add))
    assert adds == [2, 4, 5, 7, 8, 9, 11, 12, 14, 15]
    assert model.get_layer("block1_expand").filters == 6 * 16
    assert all(isinstance(model.get_layer(f"{n}_relu"), keras.layers.ReLU)
               and model.get_layer(f"{n}_relu").max_value == 6.0
               for n in ("conv1", "block3_expand", "block3_depthwise", "conv_last"))
    assert "block3_project_relu" not in {layer.name for layer in model.layers}
    half = models.build_model("mobilenet_v2", (32, 32, 3), 10, width=0.5)
    assert half.get_layer("conv_last").filters == 1280
    assert half.get_layer("block1_project").filters == 16  # 24 · 0.5 = 12, rounded to 8s
    assert models.build_model("mobilenet_v2", (32, 32, 3), 10,
                              width=1.4).get_layer("conv_last").filters == 1792


def test_mobilenet_v2_sparsifies_depthwise_layers():
    model = models.build_model("mobilenet_v2", (32, 32, 3), 10)
    sparse = rigl.sparsify(model, 0.8, "erk")
    assert "block5_depthwise" in rigl.get_masks(sparse)
    logits = sparse(np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32))
    assert tuple(logits.shape) == (2, 10)


# --- Wide ResNet -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wrn():
    return models.build_model("wrn_22_2", (32, 32, 3), 10)


def test_wrn_22_2_parameters(wrn):
    # 1,079,642 trainable (~1.1M); 2,720 batch norm statistics on top.
    assert trainable_params(wrn) == 1_079_642
    assert wrn.count_params() == 1_082_362
    assert len(maskable(wrn)) == 1 + 3 * 3 * 2 + 3 + 1


def test_wrn_22_2_is_pre_activation(wrn):
    previous = "conv1"
    for stage in (2, 3, 4):
        for block in (1, 2, 3):
            prefix = f"stage{stage}_block{block}"
            # The block input goes first through BN, then ReLU, then the conv.
            assert source(wrn, f"{prefix}_bn1") == previous
            assert source(wrn, f"{prefix}_relu1") == f"{prefix}_bn1"
            assert source(wrn, f"{prefix}_conv1") == f"{prefix}_relu1"
            assert source(wrn, f"{prefix}_conv2") == f"{prefix}_dropout"
            previous = f"{prefix}_add"
    assert source(wrn, "final_bn") == previous
    assert wrn.get_layer("stage3_block1_conv1").strides == (2, 2)
    assert wrn.get_layer("stage4_block1_add").output.shape[1:] == (8, 8, 128)


def test_wrn_dropout(wrn):
    drops = [layer for layer in wrn.layers if isinstance(layer, keras.layers.Dropout)]
    assert len(drops) == 9 and all(d.rate == 0.3 for d in drops)
    plain = models.build_model("wrn_22_2", (32, 32, 3), 10, dropout=0.0)
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in plain.layers)
    assert plain.count_params() == wrn.count_params()


def test_wrn_shortcuts_where_the_width_changes(wrn):
    shortcuts = [layer for layer in wrn.layers if layer.name.endswith("_shortcut")]
    # The stem has 16 channels, stage 2 has 32: every stage's first block changes width.
    assert [s.name for s in shortcuts] == [f"stage{s}_block1_shortcut" for s in (2, 3, 4)]
    assert all(s.kernel_size == (1, 1) for s in shortcuts)
    assert [s.strides for s in shortcuts] == [(1, 1), (2, 2), (2, 2)]
    inputs = inputs_of(wrn)
    adds = {layer.name: inputs[layer.name]
            for layer in wrn.layers if isinstance(layer, keras.layers.Add)}
    assert adds["stage2_block2_add"] == ["stage2_block2_conv2", "stage2_block1_add"]
    # With k = 1 stage 2 keeps the stem's 16 channels and stride 1: identity shortcut.
    narrow = models.build_model("wide_resnet", (32, 32, 3), 10, depth=10, k=1)
    assert [layer.name for layer in narrow.layers if layer.name.endswith("_shortcut")] == [
        "stage3_block1_shortcut", "stage4_block1_shortcut"]


def test_wrn_sparsifies_with_erk(wrn):
    sparse = rigl.sparsify(wrn, 0.9, "erk", dense_layers=["conv1"])
    assert "conv1" not in rigl.get_masks(sparse)
    assert rigl.total_sparsity(sparse) == pytest.approx(0.9, abs=1e-3)
    logits = sparse(np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32),
                    training=True)
    assert tuple(logits.shape) == (2, 10)

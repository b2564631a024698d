"""rigl.flops on any Keras 3 model: EinsumDense (MultiHeadAttention), Conv1D/3D, transposed
and separable convolutions, LSTM and SimpleRNN counted the paper's way (hand-computed rows),
models traced through one call (subclassed, nested, rigl.SparseModel, shared layers), rows
keyed like the masks, and sparsity maps equal to rigl.sparsify's."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from test_any_model import Subclassed, mixed_model

import rigl
from rigl import flops
from rigl.distributions import num_zeros


def one_layer(input_shape, layer):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, layer(inputs))


def rows_of(model, **kwargs):
    return {r.name: (r.layer_type, r.kernel_shape, r.fan_in, r.outputs, r.channels, r.dense_flops)
            for r in flops.layer_table(model, **kwargs)}


def sparsify_quietly(model, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rigl.DenseKernelsWarning)
        return rigl.sparsify(model, *args, **kwargs)


# Worked by hand: a row costs (2·L + 1)·N_out with L = fan_in·density; the tuples are
# (type, kernel shape, fan_in, N_out, channels, dense FLOPs).
# EinsumDense "btd,dhe->bthe" on (5, 4) -> (5, 2, 3): fan_in d = 4, N_out = 30, channels 6,
#   dense (8 + 1)·30 = 270. "abc,bcd->abd" (b shared by input, kernel and output) on (3, 8):
#   fan_in c = 8, N_out = 3·5 = 15, channels b·d = 15, dense 17·15 = 255.
# Conv1D(4, 3, strides=2, 'valid') on (10, 3): fan_in 9, N_out = ceil(10/2)·4 = 20 ('same'
#   sizes, as Conv2D), dense 19·20 = 380.
# Conv3D(3, 2, strides=(2, 3, 1)) on (4, 6, 5, 2): fan_in 16, N_out = 2·2·5·3 = 60, 33·60.
# Conv2DTranspose(5, 3, strides=2) on (3, 4, 2): kernel (3, 3, 5, 2), every input position
#   multiplies the whole kernel: fan_in c_in = 2, N_out = 12 positions·9 taps·5 = 540, dense
#   (4 + 1)·540 = 2700 (multiplications 90 weights · 12 positions = 1080 = 2·540).
# Conv1DTranspose(3, 4) on (6, 2): kernel (4, 3, 2), fan_in 2, N_out = 6·4·3 = 72, 5·72.
# SeparableConv2D(4, 3, strides=2, depth_multiplier=2) on (6, 6, 3): 3·3 positions;
#   depthwise (3, 3, 3, 2) per channel: fan_in 9, channels 6, N_out 54, dense 19·54 = 1026;
#   pointwise (1, 1, 6, 4): fan_in 6, N_out 9·4 = 36, dense 13·36 = 468.
# LSTM(5) over 7 steps of 3: kernel (3, 20) and recurrent (5, 20), N_out = 7·4U = 140 each,
#   dense 7·140 = 980 and 11·140 = 1540.
# SimpleRNN(4) over 6 steps of 2: (2, 4) and (4, 4), N_out = 6·4 = 24: 5·24, 9·24.
HAND = [
    ((5, 4), lambda: keras.layers.EinsumDense("btd,dhe->bthe", (5, 2, 3), name="e"),
     {"e/kernel": ("EinsumDense", (4, 2, 3), 4, 30, 6, 270.0)}),
    ((3, 8), lambda: keras.layers.EinsumDense("abc,bcd->abd", (3, 5), name="e"),
     {"e/kernel": ("EinsumDense", (3, 8, 5), 8, 15, 15, 255.0)}),
    ((10, 3), lambda: keras.layers.Conv1D(4, 3, strides=2, name="c"),
     {"c/kernel": ("Conv1D", (3, 3, 4), 9, 20, 4, 380.0)}),
    ((4, 6, 5, 2), lambda: keras.layers.Conv3D(3, 2, strides=(2, 3, 1), padding="same",
                                               name="c"),
     {"c/kernel": ("Conv3D", (2, 2, 2, 2, 3), 16, 60, 3, 1980.0)}),
    ((3, 4, 2), lambda: keras.layers.Conv2DTranspose(5, 3, strides=2, name="t"),
     {"t/kernel": ("Conv2DTranspose", (3, 3, 5, 2), 2, 540, 5, 2700.0)}),
    ((6, 2), lambda: keras.layers.Conv1DTranspose(3, 4, name="t"),
     {"t/kernel": ("Conv1DTranspose", (4, 3, 2), 2, 72, 3, 360.0)}),
    ((6, 6, 3), lambda: keras.layers.SeparableConv2D(4, 3, strides=2, depth_multiplier=2,
                                                     padding="same", name="s"),
     {"s/depthwise_kernel": ("SeparableConv2D", (3, 3, 3, 2), 9, 54, 6, 1026.0),
      "s/pointwise_kernel": ("SeparableConv2D", (1, 1, 6, 4), 6, 36, 4, 468.0)}),
    ((7, 3), lambda: keras.layers.LSTM(5, name="lstm"),
     {"lstm/lstm_cell/kernel": ("LSTM", (3, 20), 3, 140, 20, 980.0),
      "lstm/lstm_cell/recurrent_kernel": ("LSTM", (5, 20), 5, 140, 20, 1540.0)}),
    ((6, 2), lambda: keras.layers.SimpleRNN(4, name="rnn"),
     {"rnn/simple_rnn_cell/kernel": ("SimpleRNN", (2, 4), 2, 24, 4, 120.0),
      "rnn/simple_rnn_cell/recurrent_kernel": ("SimpleRNN", (4, 4), 4, 24, 4, 216.0)}),
]


@pytest.mark.parametrize("input_shape, layer, expected", HAND,
                         ids=[next(iter(case[2])) for case in HAND])
@pytest.mark.parametrize("counting", ["paper", "exact"])
def test_hand_counted_layers(input_shape, layer, expected, counting):
    model = one_layer(input_shape, layer())
    assert rows_of(model, counting=counting) == expected
    assert flops.dense_inference_flops(model, counting) == sum(e[-1] for e in expected.values())


def test_a_sparse_transposed_convolution_costs_nonzeros_times_input_positions():
    model = one_layer((3, 4, 2), keras.layers.Conv2DTranspose(5, 3, strides=2, name="t"))
    (row,) = flops.layer_table(model, {"t/kernel": 0.5})
    assert row.nonzeros == 45
    multiplications = row.fan_in * (1 - row.sparsity) * row.outputs
    assert multiplications == pytest.approx(45 * 12)
    assert row.flops == pytest.approx(3 * 540)  # (2·1 + 1)·540


def test_multi_head_attention_counts_its_four_projections():
    # Cross attention: 4 queries, 6 keys/values of 8 features; 2 heads of 3.
    # query (8, 2, 3): fan_in 8, N_out 4·6 = 24, dense 17·24 = 408; key and value: N_out
    # 6·6 = 36, 17·36 = 612; output (2, 3, 8): fan_in 6, N_out 4·8 = 32, 13·32 = 416.
    # QK^T, softmax and the weighted sum of values have no kernel: not counted.
    q, v = keras.Input((4, 8)), keras.Input((6, 8))
    out = keras.layers.MultiHeadAttention(2, 3, name="mha")(q, v)
    model = keras.Model([q, v], out)
    assert rows_of(model) == {
        "mha/query/kernel": ("EinsumDense", (8, 2, 3), 8, 24, 6, 408.0),
        "mha/key/kernel": ("EinsumDense", (8, 2, 3), 8, 36, 6, 612.0),
        "mha/value/kernel": ("EinsumDense", (8, 2, 3), 8, 36, 6, 612.0),
        "mha/attention_output/kernel": ("EinsumDense", (2, 3, 8), 6, 32, 8, 416.0),
    }


# The mixed model of tests/test_any_model.py on (16, 8): fan_in and N_out of every kernel.
MIXED_GEOMETRY = {
    "conv/kernel": (24, 16 * 12),
    "mha/query/kernel": (12, 16 * 12), "mha/key/kernel": (12, 16 * 12),
    "mha/value/kernel": (12, 16 * 12), "mha/attention_output/kernel": (12, 16 * 12),
    "proj/kernel": (12, 16 * 12),
    "lstm/lstm_cell/kernel": (12, 16 * 40), "lstm/lstm_cell/recurrent_kernel": (10, 16 * 40),
    "head/kernel": (10, 4),
}


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_sparse_model_counts_from_its_masks(distribution):
    plain = mixed_model()
    sparse = sparsify_quietly(plain, 0.8, distribution)
    assert isinstance(sparse, rigl.SparseModel)
    masks = rigl.get_masks(sparse)
    assert [r.name for r in flops.layer_table(sparse)] == list(masks) == list(MIXED_GEOMETRY)
    expected = 0.0
    for name, mask in masks.items():
        fan_in, outputs = MIXED_GEOMETRY[name]
        per_output = fan_in * np.count_nonzero(mask) / mask.size
        expected += 2 * per_output * outputs + outputs
    assert flops.inference_flops(sparse) == pytest.approx(expected)
    dense = sum((2 * fan_in + 1) * n for fan_in, n in MIXED_GEOMETRY.values())
    assert flops.dense_inference_flops(sparse) == flops.dense_inference_flops(plain) == dense
    assert flops.inference_flops(sparse) < 0.3 * dense


@pytest.mark.parametrize("distribution, dense_layers", [
    ("uniform", []), ("erk", []), ("erk", ["mha"]), ("er", ["conv"])])
def test_sparsity_map_is_what_sparsify_gives(distribution, dense_layers):
    plain = mixed_model()
    planned = flops.sparsity_map(plain, 0.8, distribution, dense_layers=dense_layers)
    sparse = sparsify_quietly(plain, 0.8, distribution, dense_layers=dense_layers)
    counts = rigl.masking.active_counts(sparse)
    for name, sparsity in planned.items():
        if name in counts:
            active, size = counts[name]
            assert active == size - num_zeros(sparsity, size), name
        else:
            assert sparsity == 0.0 and any(name.startswith(d + "/") for d in dense_layers)
    assert flops.layer_table(plain, planned) == flops.layer_table(sparse)


def test_erk_reads_an_einsum_kernel_as_its_matrix():
    planned = flops.sparsity_map(mixed_model(), 0.8, "erk")
    # A (12, 2, 6) projection is the (12, 12) matrix of a Dense: denser than ERK of its
    # three dims would make it, as sparse as proj's (12, 3, 4) = (12, 12).
    assert planned["mha/query/kernel"] == planned["proj/kernel"]
    assert planned["mha/query/kernel"] != planned["conv/kernel"]


def test_rnn_layers_in_functional_models_with_other_kernels():
    inputs = keras.Input((9, 4))
    x = keras.layers.Conv1D(6, 3, padding="same", name="conv")(inputs)
    x = keras.layers.GRU(5, return_sequences=True, name="gru")(x)
    x = keras.layers.Bidirectional(keras.layers.SimpleRNN(2), name="bi")(x)
    model = keras.Model(inputs, x)
    rows = rows_of(model)
    # GRU: (6, 15) and (5, 15) over 9 steps, N_out = 9·3U = 135 each.
    assert rows["gru/gru_cell/kernel"][2:4] == (6, 135)
    assert rows["gru/gru_cell/recurrent_kernel"][2:4] == (5, 135)
    # Each direction of the bidirectional SimpleRNN(2): N_out = 9·2 = 18.
    assert sorted(v[2:4] for k, v in rows.items() if k.startswith("bi/")) == [
        (2, 18), (2, 18), (5, 18), (5, 18)]
    sparse = sparsify_quietly(model, 0.5)
    assert sorted(r.name for r in flops.layer_table(sparse)) == sorted(
        rigl.masking.active_counts(sparse))


def test_a_shared_layer_counts_every_call_and_keeps_its_graph_name():
    inputs = keras.Input((3,))
    shared = keras.layers.Dense(3, name="shared")
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(shared(shared(inputs))))
    # Two calls of 3 outputs: N_out = 6, dense (6 + 1)·6 = 42; out: (6 + 1)·2 = 14.
    assert rows_of(model) == {"shared": ("Dense", (3, 3), 3, 6, 3, 42.0),
                              "out": ("Dense", (3, 2), 3, 2, 2, 14.0)}


def test_subclassed_model_needs_an_example_batch():
    keras.utils.set_random_seed(0)
    model = Subclassed(name="subclassed")  # not auto-numbered: other tests build one too
    model(np.zeros((2, 6), "float32"))
    with pytest.raises(ValueError, match="inputs: the input shape of Subclassed 'subclassed' "
                                         "is not known.*inputs="):
        flops.dense_inference_flops(model)
    batch = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    rows = flops.layer_table(model, inputs=batch)
    # Dense(8) on 6 features, Dense(3) on 8: (12 + 1)·8 + (16 + 1)·3 = 155.
    assert [(r.kernel_shape, r.outputs) for r in rows] == [((6, 8), 8), ((8, 3), 3)]
    assert sum(r.dense_flops for r in rows) == 155
    assert all("call" not in layer.__dict__ for layer in model._flatten_layers())
    sparse = rigl.sparsify(model, 0.75)
    table = flops.layer_table(sparse, inputs=batch)
    counts = rigl.masking.active_counts(sparse)
    assert {r.name: r.nonzeros for r in table} == {n: a for n, (a, _) in counts.items()}


def test_layers_nested_in_a_custom_layer_are_counted():
    @keras.saving.register_keras_serializable("rigl_tests")
    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = keras.layers.Dense(4, name="inner")

        def call(self, x):
            return self.inner(x) + self.inner(x)  # called twice: counted twice

    inputs = keras.Input((3, 5))
    model = keras.Model(inputs, Block(name="block")(inputs))
    # (5, 4) at 3 positions, two calls: N_out = 2·3·4 = 24, dense (10 + 1)·24 = 264.
    assert rows_of(model) == {"block/inner/kernel": ("Dense", (5, 4), 5, 24, 4, 264.0)}


def test_unknown_input_size_asks_for_an_example_batch():
    inputs = keras.Input((None, 4))
    model = keras.Model(inputs, keras.layers.LSTM(3, name="lstm")(inputs))
    with pytest.raises(ValueError, match=r"inputs: Functional .* unknown size \[\(None, None, "
                                         r"4\)\]"):
        flops.layer_specs(model)
    rows = rows_of(model, inputs=np.zeros((1, 10, 4), "float32"))
    assert rows["lstm/lstm_cell/kernel"][3] == 10 * 12


def test_keras_hub_gpt2_backbone_counts_its_twelve_kernels():
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=500, num_layers=2, num_heads=4, hidden_dim=64, intermediate_dim=128,
        max_sequence_length=32)
    with pytest.raises(ValueError, match="inputs: .*unknown size"):
        flops.layer_table(backbone)
    tokens = {"token_ids": np.ones((1, 16), "int32"), "padding_mask": np.ones((1, 16), "int32")}
    rows = rows_of(backbone, inputs=tokens)
    projections = {"query": "self_attention/query", "key": "self_attention/key",
                   "value": "self_attention/value",
                   "attention_output": "self_attention/attention_output",
                   "feedforward_intermediate_dense": "feedforward_intermediate_dense",
                   "feedforward_output_dense": "feedforward_output_dense"}
    assert sorted(rows) == sorted(f"transformer_layer_{i}/{p}/kernel"
                                  for i in range(2) for p in projections.values())
    # Over 16 tokens: q/k/v (64, 4, 16) and the output (4, 16, 64): fan_in 64, N_out 1024,
    # 129·1024 each; FFN (64, 128): N_out 2048, 129·2048; (128, 64): 257·1024. Embedding
    # lookups, norms and the attention products are not counted.
    per_block = 4 * 129 * 1024 + 129 * 2048 + 257 * 1024
    assert flops.dense_inference_flops(backbone, inputs=tokens) == 2 * per_block
    sparse = sparsify_quietly(backbone, 0.9, "erk")
    planned = flops.sparsity_map(backbone, 0.9, "erk", inputs=tokens)
    counts = rigl.masking.active_counts(sparse)
    assert {n: a for n, (a, _) in counts.items()} == {
        n: s - num_zeros(planned[n], s) for n, (_, s) in counts.items()}
    assert flops.inference_flops(sparse, inputs=tokens) == pytest.approx(
        flops.inference_flops(backbone, planned, inputs=tokens))


def test_a_token_model_counts_without_its_embeddings():
    ids = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(20, 4, name="emb")(ids)
    model = keras.Model(ids, keras.layers.LSTM(3, name="lstm")(x))
    # LSTM(3) over the 6 embedded tokens: (4, 12) and (3, 12), N_out = 6·12 = 72 each; the
    # embedding lookup is not a row, even sparsified.
    assert rows_of(model) == {
        "lstm/lstm_cell/kernel": ("LSTM", (4, 12), 4, 72, 12, 9 * 72.0),
        "lstm/lstm_cell/recurrent_kernel": ("LSTM", (3, 12), 3, 72, 12, 7 * 72.0)}
    sparse = sparsify_quietly(model, 0.5, embeddings=True)
    assert "emb/embeddings" in rigl.masking.active_counts(sparse)
    assert [r.name for r in flops.layer_table(sparse)] == list(rows_of(model))


def test_a_sparse_dense_layer_in_a_traced_model_counts_its_active_connections():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 12))
    x = rigl.SparseDense(16, sparsity=0.75, name="h")(inputs)
    model = keras.Model(inputs, keras.layers.LSTM(3, name="lstm")(x))
    table = {r.name: r for r in flops.layer_table(model)}
    assert list(table) == ["h", "lstm/lstm_cell/kernel", "lstm/lstm_cell/recurrent_kernel"]
    active = model.get_layer("h").active_count()
    # (12, 16) at 5 steps: N_out = 80, L = 12·active/192, dense (24 + 1)·80 = 2000.
    row = table["h"]
    assert (row.layer_type, row.fan_in, row.outputs, row.nonzeros) == ("Dense", 12, 80, active)
    assert row.dense_flops == 2000
    assert row.flops == pytest.approx((2 * 12 * active / 192 + 1) * 80)

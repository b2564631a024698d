"""rigl.sparsify on any Keras 3 model: kernels by path (rigl.kernels), the rigl.SparseModel
wrapper (rigl.path_masks), ERK for kernels of any rank, selection, warning, summary, strip,
save/load, and every updater on the wrapped model."""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl
from rigl import kernels, optimizer_state
from rigl.distributions import num_zeros


def mixed_model():
    """The issue's functional model: Conv1D, MultiHeadAttention, LSTM, an EinsumDense and a
    Dense head."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 8))
    x = keras.layers.Conv1D(12, 3, padding="same", name="conv")(inp)
    x = keras.layers.MultiHeadAttention(2, 6, name="mha")(x, x)
    x = keras.layers.EinsumDense("btd,dhe->bthe", (None, 3, 4), name="proj")(x)
    x = keras.layers.Reshape((16, 12))(x)
    x = keras.layers.LSTM(10, name="lstm")(x)
    out = keras.layers.Dense(4, name="head")(x)
    return keras.Model(inp, out)


MIXED_KERNELS = {
    "conv/kernel": (3, 8, 12),
    "mha/query/kernel": (12, 2, 6), "mha/key/kernel": (12, 2, 6),
    "mha/value/kernel": (12, 2, 6), "mha/attention_output/kernel": (2, 6, 12),
    "proj/kernel": (12, 3, 4),
    "lstm/lstm_cell/kernel": (12, 40), "lstm/lstm_cell/recurrent_kernel": (10, 40),
    "head/kernel": (10, 4),
}


def light_model():
    """A cheaper model to train in tests: Conv1D, EinsumDense and Dense kernels."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 8))
    x = keras.layers.Conv1D(12, 3, strides=4, padding="same", name="conv")(inp)
    x = keras.layers.EinsumDense("btd,dhe->bthe", (4, 3, 4), name="proj")(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(4, name="head")(x)
    return keras.Model(inp, out)


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16, 8)).astype("float32")
    y = rng.integers(0, 4, size=n)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def sparsify_quietly(model, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rigl.DenseKernelsWarning)
        return rigl.sparsify(model, *args, **kwargs)


def check_invariants(model, sparsities):
    """Exact nonzero count per kernel and every masked weight zero."""
    for target in rigl.masked_weights(model):
        mask = keras.ops.convert_to_numpy(target.mask)
        kernel = keras.ops.convert_to_numpy(target.masked_kernel)
        assert mask.dtype == bool
        assert mask.sum() == mask.size - num_zeros(sparsities[target.name], mask.size), (
            target.name)
        assert not kernel[~mask].any(), target.name


def test_mixed_model_every_kernel_masked_with_exact_counts():
    sparse = sparsify_quietly(mixed_model(), 0.9)
    assert isinstance(sparse, rigl.SparseModel)
    names = {t.name: tuple(t.mask.shape) for t in rigl.masked_weights(sparse)}
    assert names == MIXED_KERNELS
    check_invariants(sparse, dict.fromkeys(MIXED_KERNELS, 0.9))
    assert rigl.measured_sparsities(sparse) == pytest.approx(
        {name: num_zeros(0.9, math.prod(shape)) / math.prod(shape)
         for name, shape in MIXED_KERNELS.items()})


def test_mixed_model_warns_nothing_when_every_kernel_is_sparse():
    with warnings.catch_warnings():
        warnings.simplefilter("error", rigl.DenseKernelsWarning)
        rigl.sparsify(mixed_model(), 0.5)


@pytest.mark.parametrize("method", ["rigl", "set", "snfs", "static"])
def test_wrapped_model_trains_keeping_counts_and_zeros(method):
    sparse = sparsify_quietly(light_model(), 0.8, "erk")
    planned = rigl.measured_sparsities(sparse)
    before = rigl.get_masks(sparse)
    sparse.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ds = data()
    updater = rigl.get_updater(method, update_freq=2, end_step=100, ignore_unused=True)
    sparse.fit(ds, epochs=1, verbose=0, callbacks=[
        rigl.SparseTraining(updater, data=ds if updater.needs_gradients else None)])
    check_invariants(sparse, planned)
    changed = sum(int((before[n] != m).sum()) for n, m in rigl.get_masks(sparse).items())
    assert (changed == 0) == (method == "static")


@pytest.mark.parametrize("method", ["granet", "prune"])
def test_wrapped_model_prunes_from_dense_to_the_target(method):
    sparse = sparsify_quietly(light_model(), 0.0)
    sparse.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ds = data()  # 4 steps an epoch: pruning at steps 0, 2, 4, 6 reaches 80% at step 6
    updater = rigl.get_updater(method, sparsity=0.8, update_freq=2, begin_step=0, end_step=6,
                               ignore_unused=True)
    sparse.fit(ds, epochs=2, verbose=0, callbacks=[
        rigl.SparseTraining(updater, data=ds if updater.needs_gradients else None)])
    sizes = {t.name: int(np.prod(t.mask.shape)) for t in rigl.masked_weights(sparse)}
    kept = {n: int(m.sum()) for n, m in rigl.get_masks(sparse).items()}
    if method == "granet":  # global magnitude pruning: the count is the model's
        total = sum(sizes.values())
        assert sum(kept.values()) == total - num_zeros(0.8, total)
    else:  # per kernel
        assert kept == {n: size - num_zeros(0.8, size) for n, size in sizes.items()}
    for target in rigl.masked_weights(sparse):
        mask = keras.ops.convert_to_numpy(target.mask)
        assert not keras.ops.convert_to_numpy(target.masked_kernel)[~mask].any()


def test_grown_weights_and_slots_are_zero_on_the_wrapped_model():
    sparse = sparsify_quietly(light_model(), 0.8)
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    sparse.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ds = data()
    sparse.fit(ds, epochs=1, verbose=0)  # momenta nonzero everywhere active
    updater = rigl.RigL(update_freq=1, end_step=100).bind(sparse, optimizer)
    before = rigl.get_masks(sparse)
    updater.update(0, batch=next(iter(ds)))
    for target in rigl.masked_weights(sparse):
        grown = keras.ops.convert_to_numpy(target.mask) & ~before[target.name]
        assert grown.any(), target.name
        assert not keras.ops.convert_to_numpy(target.masked_kernel)[grown].any()
        slots = optimizer_state.slots(optimizer, target.masked_kernel)
        assert slots
        for slot in slots:
            assert not keras.ops.convert_to_numpy(slot)[grown].any()


@pytest.mark.parametrize("build", [mixed_model, light_model])
def test_wrapped_model_saves_and_loads_with_its_masks(tmp_path, build):
    sparse = sparsify_quietly(build(), 0.9, seed=3)
    path = str(tmp_path / "m.keras")
    sparse.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, rigl.SparseModel)
    masks, reloaded = rigl.get_masks(sparse), rigl.get_masks(loaded)
    assert list(masks) == list(reloaded)
    assert all(np.array_equal(masks[name], reloaded[name]) for name in masks)
    x = next(iter(data()))[0]
    np.testing.assert_array_equal(sparse(x), loaded(x))
    if build is light_model:  # the constraint is attached again: steps keep zeros
        loaded.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        loaded.fit(data(), epochs=1, verbose=0)
        check_invariants(loaded, rigl.measured_sparsities(sparse))


def test_strip_gives_the_plain_model_with_the_same_outputs():
    sparse = sparsify_quietly(mixed_model(), 0.9)
    plain = rigl.strip(sparse)
    assert not isinstance(plain, rigl.SparseModel) and not rigl.sparse_weights(plain)
    x = next(iter(data()))[0]
    np.testing.assert_allclose(plain(x), sparse(x), atol=1e-6)
    assert all(v.constraint is None for v in plain.trainable_weights)


def test_sequential_and_functional_of_twin_layers_keep_masked_twins():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name="a"),
                              keras.layers.Dense(3, name="b")])
    path = model.layers[1].kernel.path  # "sequential/b/kernel": a path works too
    sparse = rigl.sparsify(model, 0.5, custom_sparsity={path: 0.0})
    assert [type(layer) for layer in sparse.layers] == [rigl.MaskedDense, rigl.MaskedDense]
    assert rigl.measured_sparsities(sparse) == {"a": 0.5, "b": 0.0}


class Subclassed(keras.Model):
    def __init__(self, units=8, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden = keras.layers.Dense(units, activation="relu")
        self.out = keras.layers.Dense(3)

    def call(self, x):
        return self.out(self.hidden(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


keras.saving.register_keras_serializable("rigl_tests")(Subclassed)


def test_subclassed_model_is_sparsified_trained_and_reloaded(tmp_path):
    keras.utils.set_random_seed(0)
    model = Subclassed()
    x = np.random.default_rng(0).normal(size=(24, 6)).astype("float32")
    y = np.arange(24) % 3
    model(x)
    sparse = rigl.sparsify(model, 0.75)
    assert isinstance(sparse, rigl.SparseModel)
    assert sorted(rigl.measured_sparsities(sparse)) == sorted(
        v.path for v in model.trainable_weights if v.name == "kernel")
    sparse.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(6)
    sparse.fit(ds, epochs=2, verbose=0,
               callbacks=[rigl.SparseTraining(rigl.RigL(update_freq=2), data=ds)])
    check_invariants(sparse, rigl.measured_sparsities(sparse))
    sparse.save(str(tmp_path / "s.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "s.keras"))
    np.testing.assert_allclose(loaded(x), sparse(x), atol=1e-6)
    assert all(np.array_equal(a, b) for a, b in zip(rigl.get_masks(sparse).values(),
                                                    rigl.get_masks(loaded).values()))


def test_warning_lists_every_kernel_left_dense():
    keras.utils.set_random_seed(0)
    inp = keras.Input((5,), dtype="int32")
    x = keras.layers.Embedding(20, 4, name="emb")(inp)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(2, name="head")(x)
    model = keras.Model(inp, out)
    with pytest.warns(rigl.DenseKernelsWarning, match=r"emb/embeddings \(20, 4\)"):
        sparse = rigl.sparsify(model, 0.5)
    assert list(rigl.measured_sparsities(sparse)) == ["head"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", rigl.DenseKernelsWarning)
        both = rigl.sparsify(model, 0.5, embeddings=True)
    assert sorted(rigl.measured_sparsities(both)) == ["emb/embeddings", "head/kernel"]


def test_include_and_exclude_by_type_name_and_path_pattern():
    model = mixed_model()
    only_mha = sparsify_quietly(model, 0.5, include=[keras.layers.MultiHeadAttention])
    assert sorted(rigl.measured_sparsities(only_mha)) == sorted(
        n for n in MIXED_KERNELS if n.startswith("mha/"))
    no_lstm = sparsify_quietly(model, 0.5, exclude=["lstm"])
    assert sorted(rigl.measured_sparsities(no_lstm)) == sorted(
        n for n in MIXED_KERNELS if not n.startswith("lstm/"))
    queries = sparsify_quietly(model, 0.5, include=["*/query/kernel", "head"])
    assert sorted(rigl.measured_sparsities(queries)) == ["head/kernel", "mha/query/kernel"]
    with pytest.warns(rigl.DenseKernelsWarning, match="lstm/lstm_cell/kernel"):
        rigl.sparsify(model, 0.5, dense_layers=["lstm_cell"])


@pytest.mark.parametrize("kwargs, message", [
    ({"include": ["nothing*"]}, "include: 'nothing\\*' matches no kernel"),
    ({"exclude": [keras.layers.GRU]}, "exclude: GRU matches no kernel"),
    ({"include": ["head/bias"]}, "include: 'head/bias' is not a kernel"),
    ({"custom_sparsity": {"mha/query": 0.5}}, "custom_sparsity: no sparse kernel 'mha/query'"),
    ({"dense_layers": ["nope"]}, "dense_layers: no layer named 'nope'"),
    ({"include": [3]}, "include: expected layer types or strings"),
])
def test_bad_selection_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sparsify_quietly(mixed_model(), 0.5, **kwargs)


def test_already_sparse_model_is_refused():
    sparse = sparsify_quietly(mixed_model(), 0.5)
    with pytest.raises(ValueError, match="model: is already sparse"):
        rigl.sparsify(sparse, 0.5)


@pytest.mark.parametrize("equation, shape, fans", [
    ("abc,cd->abd", (12, 5), (12, 5)),
    ("abc,cde->abde", (64, 4, 16), (64, 64)),      # query / key / value projection
    ("abcd,cde->abe", (4, 16, 64), (64, 64)),      # attention output
    ("abc,bcd->abd", (3, 8, 5), (8, 5)),           # b shared by input, kernel and output
    ("...b,bc->...c", (7, 2), (7, 2)),
])
def test_einsum_fans(equation, shape, fans):
    assert kernels.einsum_fans(equation, shape) == fans


def test_einsum_fans_rejects_an_unreadable_equation():
    with pytest.raises(ValueError, match="equation: cannot read"):
        kernels.einsum_fans("ab,bc", (2, 3))


def test_er_gives_an_einsum_projection_the_density_of_the_equivalent_dense():
    keras.utils.set_random_seed(0)
    inp = keras.Input((10, 24))
    a = keras.layers.EinsumDense("btd,dhe->bthe", (None, 4, 8), name="einsum")(inp)
    b = keras.layers.Dense(32, name="dense")(inp)
    c = keras.layers.Dense(16, name="other")(inp)
    model = keras.Model(inp, [a, b, c])
    for distribution in ("er", "erk"):
        sparse = sparsify_quietly(model, 0.8, distribution)
        planned = rigl.measured_sparsities(sparse)
        assert planned["einsum/kernel"] == planned["dense/kernel"]
        assert planned["other/kernel"] != planned["dense/kernel"]


@keras.saving.register_keras_serializable("rigl_tests")
class Custom(keras.layers.Layer):
    """A custom layer with its own rank-3 weight (no fan-in rule is stated for it)."""

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], 2, 3), name="w")

    def call(self, x):
        return keras.ops.reshape(keras.ops.einsum("bi,ijk->bjk", x, self.w), (-1, 6))


def custom_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((5,))
    out = keras.layers.Dense(2, name="head")(Custom(name="custom")(inp))
    return keras.Model(inp, out)


def test_a_custom_kernel_is_listed_dense_and_can_be_included():
    with pytest.warns(rigl.DenseKernelsWarning, match=r"custom/w \(5, 2, 3\)"):
        sparse = rigl.sparsify(custom_model(), 0.5)
    assert list(rigl.measured_sparsities(sparse)) == ["head"]
    sparse = rigl.sparsify(custom_model(), 0.5, include=["custom/w", "head"])
    assert sorted(rigl.measured_sparsities(sparse)) == ["custom/w", "head/kernel"]


def test_erk_refuses_a_kernel_without_a_fan_rule_unless_given_its_sparsity():
    with pytest.raises(ValueError, match="distribution: 'erk' has no fan-in/fan-out rule for "
                                         "kernel 'custom/w'"):
        rigl.sparsify(custom_model(), 0.5, "erk", include=["custom/w", "head"])
    sparse = rigl.sparsify(custom_model(), 0.5, "erk", include=["custom/w", "head"],
                           custom_sparsity={"custom/w": 0.5})
    assert rigl.measured_sparsities(sparse)["custom/w"] == 0.5


def test_summary_lists_sparse_and_dense_kernels():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rigl.DenseKernelsWarning)
        sparse = rigl.sparsify(custom_model(), 0.5)
    printed = []
    rows = rigl.summary(sparse, print_fn=printed.append)
    assert [(r["path"], r["name"], r["nonzeros"]) for r in rows] == [
        ("head/kernel", "head", 6), ("custom/w", None, 30)]
    assert "custom/w" in printed[0] and "dense" in printed[0]


def test_to_sparse_and_export_refuse_a_wrapped_model_naming_strip(tmp_path):
    sparse = rigl.sparsify(light_model(), 0.5)
    warnings.simplefilter("error")  # refused first: no "never sparsified" warning
    for action, call in (("rigl.to_sparse", rigl.to_sparse),
                         ("rigl.export", lambda m: rigl.export(m, str(tmp_path / "out")))):
        with pytest.raises(ValueError, match=rf"model: {action} does not take a "
                                             r"rigl.SparseModel.*rigl.strip"):
            call(sparse)


def test_keras_hub_gpt2_backbone(tmp_path):
    import keras_hub  # a test requirement (requirements-test.txt)

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=500, num_layers=2, num_heads=4, hidden_dim=64, intermediate_dim=128,
        max_sequence_length=32)
    with pytest.warns(rigl.DenseKernelsWarning, match="token_embedding/embeddings"):
        sparse = rigl.sparsify(backbone, 0.9, "erk")
    names = [t.name for t in rigl.masked_weights(sparse)]
    projections = ("query", "key", "value", "attention_output", "feedforward_intermediate_dense",
                   "feedforward_output_dense")
    assert sorted(names) == sorted(
        f"transformer_layer_{i}/{'self_attention/' if p in projections[:4] else ''}{p}/kernel"
        for i in range(2) for p in projections)
    planned = rigl.measured_sparsities(sparse)
    check_invariants(sparse, planned)

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 500, size=(8, 32)).astype("int32")
    padding = np.ones_like(tokens)
    ids = keras.Input((32,), dtype="int32", name="token_ids")
    pad = keras.Input((32,), dtype="int32", name="padding_mask")
    logits = keras.layers.Dense(500, name="lm_head")(sparse({"token_ids": ids,
                                                              "padding_mask": pad}))
    lm = keras.Model([ids, pad], logits)
    lm.compile(keras.optimizers.SGD(0.1),
               keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ds = tf.data.Dataset.from_tensor_slices(((tokens, padding), tokens)).batch(4)
    before = rigl.get_masks(lm)
    lm.fit(ds, epochs=2, verbose=0,
           callbacks=[rigl.SparseTraining(rigl.RigL(update_freq=2, end_step=100), data=ds)])
    check_invariants(lm, planned)
    assert any((before[n] != m).any() for n, m in rigl.get_masks(lm).items())

    path = str(tmp_path / "gpt2.keras")
    sparse.save(path)
    loaded = keras.saving.load_model(path)
    masks = rigl.get_masks(loaded)
    assert all(np.array_equal(masks[n], m) for n, m in rigl.get_masks(sparse).items())
    batch = {"token_ids": tokens, "padding_mask": padding}
    np.testing.assert_allclose(loaded(batch), sparse(batch), atol=1e-5)


class Scale:
    value = 2.0


class WithoutConfig(keras.layers.Layer):
    """Takes an object Keras cannot serialize: no config rebuilds it."""

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, x):
        return x * self.scale.value


def test_a_model_that_cannot_be_copied_is_wrapped_in_place_on_request():
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 1))
    x = keras.layers.Conv1D(2, 1, name="conv")(WithoutConfig(Scale(), name="twice")(inp))
    out = keras.layers.Dense(2, name="head")(keras.layers.Flatten()(x))
    model = keras.Model(inp, out)
    for include in (None, ["head"]):  # by path, and by masked twins
        with pytest.raises(ValueError, match="model: cannot copy Functional.*copy=False"):
            rigl.sparsify(model, 0.5, include=include)
    sparse = rigl.sparsify(model, 0.5, copy=False)
    assert sparse.model is model
    assert [t.masked_kernel for t in rigl.masked_weights(sparse)] == [
        model.get_layer("conv").kernel, model.get_layer("head").kernel]


def test_srigl_runs_on_dense_convolutions_and_einsum_masked_by_path():
    sparse = sparsify_quietly(light_model(), 0.75)
    sparse.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ds = data()
    updater = rigl.SRigL(update_freq=2, end_step=100, gamma_sal=0.0)
    sparse.fit(ds, epochs=1, verbose=0, callbacks=[rigl.SparseTraining(updater, data=ds)])
    # proj's kernel (d=12, heads=3, dim=4): a neuron is one (head, dim) output, 12 of them.
    assert updater.layouts["proj/kernel"][:2] == (12, 12)
    for target in rigl.masked_weights(sparse):  # constant fan-in: equal counts per neuron
        mask = keras.ops.convert_to_numpy(target.mask)
        fan_in = rigl.srigl.neuron_counts(mask, updater.layouts[target.name][1])
        assert len(set(fan_in.tolist())) == 1, target.name
        assert fan_in.sum() == updater.budgets[target.name] // fan_in.size * fan_in.size


def test_srigl_refuses_an_einsum_kernel_with_a_per_head_axis():
    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 8))  # (heads, features): each head its own (8, 4) matrix
    x = keras.layers.EinsumDense("bhd,hde->bhe", (3, 4), name="per_head")(inp)
    out = keras.layers.Dense(2, name="head")(keras.layers.Flatten()(x))
    sparse = sparsify_quietly(keras.Model(inp, out), 0.5)
    with pytest.raises(ValueError, match="'per_head/kernel' belongs to a EinsumDense; SRigL"):
        rigl.SRigL(update_freq=2).bind(sparse)


def test_units_without_inputs_of_an_einsum_kernel_count_its_output_units():
    sparse = sparsify_quietly(light_model(), 0.0)
    target = {t.name: t for t in rigl.masked_weights(sparse)}["proj/kernel"]  # (12, 3, 4)
    mask = np.ones((12, 3, 4), bool)
    mask[:, 1, 2] = False  # head 1, dim 2 loses every input
    target.mask.assign(mask)
    assert rigl.masking.units_without_inputs(sparse)["proj/kernel"] == 1
    rows, columns = rigl.masking.connected_units(target)
    assert rows.size == 12 and columns.size == 12


def test_einsum_roles_name_each_kernel_axis():
    assert rigl.kernels.einsum_roles("btd,dhe->bthe", (12, 3, 4)) == ("in", "out", "out")
    assert rigl.kernels.einsum_roles("bhd,hde->bhe", (3, 8, 4)) == ("shared", "in", "out")
    assert rigl.kernels.einsum_roles("btnh,nhd->btd", (2, 4, 8)) == ("in", "in", "out")
    with pytest.raises(ValueError, match="equation: cannot read"):
        rigl.kernels.einsum_roles("ab->b", (2,))


MIRRORED_SCRIPT = """
import json
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
import keras
import numpy as np
import rigl

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 16, 8)).astype("float32")
y = rng.integers(0, 4, size=256)
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
with strategy.scope():
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 8))
    h = keras.layers.Conv1D(12, 3, strides=4, padding="same", name="conv")(inp)
    h = keras.layers.EinsumDense("btd,dhe->bthe", (4, 3, 4), name="proj")(h)
    out = keras.layers.Dense(4, name="head")(keras.layers.Flatten()(h))
    model = rigl.sparsify(keras.Model(inp, out), 0.8, "erk", seed=0)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
before = rigl.get_masks(model)
model.fit(ds, epochs=2, verbose=0,
          callbacks=[rigl.SparseTraining(rigl.RigL(update_freq=4), data=ds)])
after = rigl.get_masks(model)
print("RESULT_JSON:" + json.dumps({
    "wrapped": type(model).__name__,
    "mirrored": [type(t.mask.value).__name__ for t in rigl.masked_weights(model)],
    "mismatches": rigl.masking.replica_mismatches(model),
    "changed": int(sum((before[n] != m).sum() for n, m in after.items())),
    "counts_kept": all(int(before[n].sum()) == int(m.sum()) for n, m in after.items()),
}))
"""


def test_wrapped_model_under_mirrored_strategy_keeps_masks_identical(tmp_path):
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=900, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT_JSON:")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT_JSON:"):])
    assert result["wrapped"] == "SparseModel"
    assert all("Mirrored" in kind for kind in result["mirrored"]), result["mirrored"]
    assert result["mismatches"] == []
    assert result["changed"] > 0 and result["counts_kept"]

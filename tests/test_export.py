"""rigl.export / rigl.load_exported: inference artefacts with the trained model's predictions,
their metadata, every bad input; the sparse inference kernels against dense products."""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

import rigl
from rigl import exporting, inference_layers
from rigl.experiments import models

EXPORT = os.path.join(ROOT, "scripts", "export.py")
TOLERANCE = 1e-4


def _mlp(sparsity=0.9, distribution="erk"):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    x = keras.layers.Dense(96, activation="relu", name="fc1")(inputs)
    x = keras.layers.Dense(48, activation="relu", name="fc2")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return rigl.sparsify(keras.Model(inputs, outputs), sparsity, distribution)


def _conv_model():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((20, 20, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu",
                            name="conv3x3")(inputs)
    x = keras.layers.Conv2D(16, 1, strides=2, name="pointwise")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = keras.layers.Conv2D(12, 3, dilation_rate=2, padding="valid", name="dilated")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return rigl.sparsify(keras.Model(inputs, outputs), 0.8, "uniform",
                         custom_sparsity={"dilated": 0.5})


def _same_predictions(model, path, x):
    """The artefact's outputs against the model's: the largest difference, top-1 identical."""
    exported = rigl.load_exported(str(path))
    expected = keras.ops.convert_to_numpy(model(x))
    got = exported(x)
    assert got.shape == expected.shape
    difference = float(np.abs(got - expected).max())
    assert difference < TOLERANCE, difference
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    return exported


def _inputs(shape, n=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


@pytest.mark.parametrize("representation", ["auto", "sparse", "ell", "csr", "dense"])
def test_dense_model_round_trip_per_representation(tmp_path, representation):
    model = _mlp()
    metadata = rigl.export(model, str(tmp_path / "out"), representation=representation,
                           rounds=3)
    exported = _same_predictions(model, tmp_path / "out", _inputs((64,)))
    assert exported.format == "saved_model"
    assert exported.metadata == json.loads((tmp_path / "out" / "rigl_export.json").read_text())
    records = {r["name"]: r for r in metadata["layers"]}
    assert list(records) == ["fc1", "fc2", "logits"]
    counts = {w.name: int(np.count_nonzero(w.mask.numpy())) for w in rigl.masked_weights(model)}
    for name, record in records.items():
        assert record["nnz"] == counts[name]
        assert record["kind"] == "dense"
        if representation in ("auto", "sparse"):
            measured = {"dense", "ell", "csr"} if representation == "auto" else {"ell", "csr"}
            # the one-slice ELL is timed too where slicing made several tables
            assert set(record["measured_ms"]) - {"ell_one_slice"} == measured
            fastest = min(record["measured_ms"], key=record["measured_ms"].get)
            assert record["representation"] == fastest.replace("ell_one_slice", "ell")
            if fastest == "ell_one_slice":
                assert record["ell_slices"] == 1
            elif fastest == "ell":
                assert record["ell_slices"] > 1
        else:
            assert record["representation"] == representation
        one_slice_by_speed = representation == "auto" and fastest == "ell_one_slice"
        if record["representation"] in ("ell", "csr") and not one_slice_by_speed:
            # The size target: at most 1.2 × (nnz × 4 + a CSR's int32 index bytes). Only
            # "auto" may trade it for speed (it may keep the dense layer too): the one-slice
            # ELL pads every neuron to the widest one and is a candidate there at any size.
            assert record["stored_bytes"] <= 1.2 * record["csr_bytes"]
    # Whole-model XLA or not: both timed (no CSR layer) and the faster kept.
    whole = metadata["saved_model"]["whole_model_ms"]
    if isinstance(whole["xla"], float):
        assert metadata["saved_model"]["jit_compile"] == (whole["xla"] < whole["plain"])
    else:  # a CSR layer (TensorFlow's CSR kernels have no XLA form)
        assert "csr" in {r["representation"] for r in metadata["layers"]}
        assert "cannot compile" in whole["xla"] and not metadata["saved_model"]["jit_compile"]
    # Every variable is stored once (Keras' model.export stores each twice).
    loaded = tf.saved_model.load(str(tmp_path / "out"))
    held = sum(v.numpy().nbytes for v in loaded.variables_used)
    data = sum(f.stat().st_size for f in (tmp_path / "out" / "variables").glob("*.data-*"))
    assert held <= data <= 1.05 * held + 8192  # + the object graph's record


def test_one_slice_ell_is_a_candidate_computing_the_same(tmp_path):
    model = _mlp()
    layer = model.get_layer("fc1")
    kernel = exporting._kernel_of(layer)
    candidates = exporting._sparse_candidates(layer, kernel, ["ell", "csr"])
    assert set(candidates) == {"ell", "ell_one_slice", "csr"}  # random fan-ins: many slices
    assert sum(1 for s in candidates["ell"].slice_shapes if s[1]) > 1
    counts = np.bincount(kernel[1], minlength=96)  # active inputs per output neuron
    assert [s for s in candidates["ell_one_slice"].slice_shapes if s[1]] == [
        (int(np.count_nonzero(counts)), int(counts.max()))]
    x = _inputs((64,))
    expected = layer(x).numpy()
    for name, candidate in candidates.items():
        np.testing.assert_allclose(candidate(x).numpy(), expected, atol=1e-5, err_msg=name)


def test_conv_model_round_trip(tmp_path):
    model = _conv_model()
    x = _inputs((20, 20, 3), n=4)
    for representation in ("ell", "csr"):
        metadata = rigl.export(model, str(tmp_path / representation),
                               representation=representation)
        _same_predictions(model, tmp_path / representation, x)
        kinds = {r["name"]: (r["kind"], r["representation"]) for r in metadata["layers"]}
        assert kinds == {"conv3x3": ("conv", representation),
                         "pointwise": ("pointwise_conv", representation),
                         "depthwise": ("DepthwiseConv2D", "dense"),
                         "dilated": ("conv", representation),
                         "logits": ("dense", representation)}


def test_tflite_round_trip_and_size(tmp_path):
    pytest.importorskip("ai_edge_litert")
    model = _mlp(0.95)
    metadata = rigl.export(model, str(tmp_path / "lite"), format="tflite")
    exported = _same_predictions(model, tmp_path / "lite", _inputs((64,)))
    assert exported.format == "tflite" and metadata["tflite_batch"] is None
    assert {r["representation"] for r in metadata["layers"]} == {"litert"}
    with pytest.warns(UserWarning, match="no sparse layer"):
        dense = rigl.export(rigl.strip(model), str(tmp_path / "dense"), format="tflite")
    # The converter's sparsity optimisation stores the 95%-sparse kernels compressed.
    assert metadata["bytes_on_disk"] < 0.5 * dense["bytes_on_disk"]
    conv = _conv_model()
    rigl.export(conv, str(tmp_path / "conv"), format="tflite")
    _same_predictions(conv, tmp_path / "conv", _inputs((20, 20, 3), n=3))


def test_gru_round_trip_both_formats(tmp_path):
    model = rigl.sparsify(models.build_model("char_gru", (20,), 40, width=0.125), 0.8)
    x = np.random.default_rng(0).integers(0, 40, (5, 20)).astype(np.int32)
    metadata = rigl.export(model, str(tmp_path / "sm"))
    _same_predictions(model, tmp_path / "sm", x)
    gru = next(r for r in metadata["layers"] if r["name"] == "gru")
    assert gru["representation"] == "dense" and "no sparse kernel" in gru["reason"]
    pytest.importorskip("ai_edge_litert")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lite = rigl.export(model, str(tmp_path / "lite"), format="tflite", batch_size=2)
    # Recurrent layers convert with a static batch; 5 rows run as slices of 2.
    assert lite["tflite_batch"] == 2
    _same_predictions(model, tmp_path / "lite", x)


def test_truly_sparse_layers_export(tmp_path):
    model = rigl.to_sparse(_mlp(0.9))
    rigl.export(model, str(tmp_path / "out"), representation="ell")
    _same_predictions(model, tmp_path / "out", _inputs((64,)))


def test_dense_model_exports_dense_with_a_warning(tmp_path):
    model = rigl.strip(_mlp())
    with pytest.warns(UserWarning, match="no sparse layer"):
        metadata = rigl.export(model, str(tmp_path / "out"))
    assert metadata["layers"] == [] and "sparse_layers" not in metadata
    _same_predictions(model, tmp_path / "out", _inputs((64,)))


def test_bad_inputs_name_the_parameter(tmp_path, monkeypatch):
    model = _mlp()
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match="format: expected one of"):
        rigl.export(model, out, format="onnx")
    with pytest.raises(ValueError, match="representation: expected one of"):
        rigl.export(model, out, representation="bsr")
    with pytest.raises(ValueError, match=r"representation: names \['fc9'\]"):
        rigl.export(model, out, representation={"fc9": "ell"})
    with pytest.raises(ValueError, match="representation: 'ell' applies to the saved_model"):
        rigl.export(model, out, format="tflite", representation="ell")
    with pytest.raises(ValueError, match="batch_size: expected a positive integer"):
        rigl.export(model, out, batch_size=0)
    assert not os.path.exists(out)
    rigl.export(model, out, representation="dense")
    with pytest.raises(ValueError, match="path: .* exists"):
        rigl.export(model, out, representation="ell")
    assert rigl.export(model, out, representation="ell", overwrite=True)["layers"][0][
        "representation"] == "ell"
    with pytest.raises(ValueError, match=r"path: .* \(no rigl_export.json\)"):
        rigl.load_exported(str(tmp_path))
    # Without the LiteRT runtime: an error naming the requirements file to install.
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    with pytest.raises(ImportError, match="requirements-export.txt"):
        rigl.export(model, str(tmp_path / "auto"), format="auto")
    assert not os.path.exists(tmp_path / "auto")


def test_auto_format_keeps_the_faster(tmp_path):
    pytest.importorskip("ai_edge_litert")
    model = _mlp()
    metadata = rigl.export(model, str(tmp_path / "out"), format="auto", rounds=3)
    assert set(metadata["auto_ms"]) == {"saved_model", "tflite"}
    assert metadata["format"] == min(metadata["auto_ms"], key=metadata["auto_ms"].get)
    _same_predictions(model, tmp_path / "out", _inputs((64,)))


# ------------------------------------------------------------------- the sparse kernels


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(0, 60), min_size=1, max_size=40))
def test_ell_slices_bound_the_padding(counts):
    slices = inference_layers.ell_slices(counts)
    together = np.concatenate(slices)
    assert sorted(together.tolist()) == list(range(len(counts)))  # each neuron once
    counts = np.asarray(counts)
    for neurons in slices:
        width = counts[neurons[0]]
        assert counts[neurons].max() == width
        assert counts[neurons].min() >= width * (1 - inference_layers.SLICE_TOLERANCE)


@settings(max_examples=25, deadline=None)
@given(n_in=st.integers(1, 20), n_out=st.integers(1, 20),
       density=st.sampled_from([0.0, 0.05, 0.3, 1.0]), seed=st.integers(0, 9),
       representation=st.sampled_from(["ell", "csr"]))
def test_sparse_product_equals_the_dense_product(n_in, n_out, density, seed, representation):
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal((n_in, n_out)).astype(np.float32)
    kernel *= rng.random((n_in, n_out)) < density
    rows, cols = np.nonzero(kernel)
    bias = rng.standard_normal(n_out).astype(np.float32)
    layer = inference_layers.InferenceSparse.from_connections(
        rows, cols, kernel[rows, cols], (n_in, n_out), representation, bias=bias)
    x = rng.standard_normal((3, n_in)).astype(np.float32)
    np.testing.assert_allclose(layer(x).numpy(), x @ kernel + bias, atol=1e-5)
    config = layer.get_config()
    assert inference_layers.InferenceSparse.from_config(config).get_config() == config


def test_index_type_is_the_narrowest():
    assert inference_layers.index_dtype(32768) == "int16"
    assert inference_layers.index_dtype(32769) == "int32"


# ------------------------------------------------------------------------- the script


def _script(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",)}
    return subprocess.run([sys.executable, EXPORT, *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def test_script_exports_a_run(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    _mlp().save(workdir / "model.keras")
    done = _script(f"--workdir={workdir}", f"--out={tmp_path / 'out'}",
                   "--representation=ell")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fc1" in done.stdout and "-> ell" in done.stdout
    assert (tmp_path / "out" / "rigl_export.json").is_file()
    again = _script(f"--workdir={workdir}", f"--out={tmp_path / 'out'}")
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"error: --out: {str(tmp_path / 'out')!r} exists; choose another or pass --overwrite."]

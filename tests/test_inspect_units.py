"""Per-unit fan-in and weight scale (``rigl.masking.unit_inputs``) and the script that prints
them for a saved model (``scripts/inspect_units.py``), on hand-set masks and kernels."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import ROOT, script_module

import rigl
from rigl.experiments.errors import USAGE_EXIT_STATUS, UsageError

SCRIPT = os.path.join(ROOT, "scripts", "inspect_units.py")


def _conv_model():
    """A 3×3 conv of 2 channels into 4 filters (18 inputs each) and a 3-way Dense, with filter
    0 keeping 2 inputs (|w| 1 and 3), filter 1 none, filter 2 one (|w| 0.5), filter 3 four."""
    model = rigl.sparsify(keras.Sequential([
        keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, name="conv"),
        keras.layers.Flatten(), keras.layers.Dense(3, name="fc")]), 0.5)
    mask = np.zeros((3, 3, 2, 4), bool)
    kernel = np.full((3, 3, 2, 4), 7.0, "float32")  # masked-out values must not count
    mask[0, 0, 0, 0], kernel[0, 0, 0, 0] = True, -1.0
    mask[2, 2, 1, 0], kernel[2, 2, 1, 0] = True, 3.0
    mask[1, 1, 1, 2], kernel[1, 1, 1, 2] = True, 0.5
    for i, position in enumerate([(0, 1, 0), (0, 2, 1), (1, 0, 0), (2, 0, 1)]):
        mask[(*position, 3)], kernel[(*position, 3)] = True, (i + 1) * 0.25
    conv = rigl.masked_weights(model)[0]
    conv.mask.assign(mask)
    conv.masked_kernel.assign(kernel)
    return model


def test_unit_inputs_counts_each_filters_inputs_and_their_mean_magnitude():
    counts, mean_abs = rigl.masking.unit_inputs(rigl.masked_weights(_conv_model())[0])
    np.testing.assert_array_equal(counts, [2, 0, 1, 4])
    # (1 + 3) / 2; none; 0.5; (0.25 + 0.5 + 0.75 + 1) / 4.
    np.testing.assert_allclose(mean_abs, [2.0, 0.0, 0.5, 0.625])


def test_unit_inputs_of_sparse_storage_read_its_connections():
    model = rigl.to_sparse(rigl.sparsify(keras.Sequential([
        keras.Input((5,)), keras.layers.Dense(3, name="h")]), 0.0))
    (layer,) = rigl.masking.sparse_weights(model)
    layer.set_connections(np.array([0, 4, 2]), np.array([0, 0, 2]),
                          np.array([-2.0, 1.0, 0.25], "float32"))
    counts, mean_abs = rigl.masking.unit_inputs(layer)
    np.testing.assert_array_equal(counts, [2, 0, 1])
    np.testing.assert_allclose(mean_abs, [1.5, 0.0, 0.25])


def test_report_summarises_every_kernel_and_lists_a_layers_live_units():
    model = _conv_model()
    fc_counts, _ = rigl.masking.unit_inputs(rigl.masked_weights(model)[1])
    with script_module(SCRIPT, "inspect_units_script") as module:
        lines = module.report(model, "conv")
        with pytest.raises(UsageError, match=r"--layer: no sparse kernel named 'conv9'.*"
                                             r"\['conv', 'fc'\]"):
            module.report(model, "conv9")
    assert lines[1] == ("conv: 4 units, 1 without inputs; inputs 1 / 2 / 4, "
                        "mean |w| 0.5 / 0.625 / 2")
    assert lines[2].startswith(f"fc: 3 units, {int((fc_counts == 0).sum())} without inputs")
    # Live units, fewest inputs first: unit 2 (1 input), 0 (2), 3 (4); unit 1 is not listed.
    assert lines[4:] == ["  2: 1, 0.5000", "  0: 2, 2.0000", "  3: 4, 0.6250"]


def test_script_reads_a_saved_model_and_names_a_missing_file(tmp_path):
    path = str(tmp_path / "model.keras")
    _conv_model().save(path)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, SCRIPT, f"--model={path}"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "conv: 4 units, 1 without inputs; inputs 1 / 2 / 4" in done.stdout
    missing = subprocess.run([sys.executable, SCRIPT, f"--model={tmp_path / 'none.keras'}"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert missing.returncode == USAGE_EXIT_STATUS
    assert "--model: no file" in missing.stderr

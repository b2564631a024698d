"""The README's Python example runs as written (on MNIST prepared offline)."""

import os
import re
import subprocess
import sys

from conftest import ROOT


def test_readme_python_example_runs(data_dir, tmp_path):
    readme = open(os.path.join(ROOT, "README.md")).read()
    example = re.search(r"## Python API\s+```python\n(.*?)```", readme, re.S).group(1)
    # The export example continues it (its model and data).
    export = re.search(r"## Exporting for inference.*?```python\n(.*?)```", readme, re.S)
    example += export.group(1).replace('"/tmp/lenet_export"', repr(str(tmp_path / "export")))
    env = {**os.environ, "TFDS_DATA_DIR": data_dir, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", example], env=env, capture_output=True,
                            text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    *_, printed, exported = result.stdout.strip().splitlines()
    sparsities = eval(printed)  # the printed dict
    assert set(sparsities) == {"dense", "dense_1", "dense_2"}
    # ERK at 90%: the layers together keep 10% of the weights.
    sizes = {"dense": 784 * 300, "dense_1": 300 * 100, "dense_2": 100 * 10}
    zeros = sum(sparsities[n] * sizes[n] for n in sizes)
    assert abs(zeros / sum(sizes.values()) - 0.9) < 1e-3
    # The export: the first layer's representation, then the top-1 agreement on a batch.
    representation, agreement = exported.split()
    assert representation in ("dense", "ell", "csr") and float(agreement) == 1.0
    assert (tmp_path / "export" / "rigl_export.json").is_file()


def test_readme_transformer_example_runs(tmp_path):
    readme = open(os.path.join(ROOT, "README.md")).read()
    example = re.search(r"### Any Keras 3 model, transformers included.*?```python\n(.*?)```",
                        readme, re.S).group(1)
    example = example.replace('"/tmp/sparse_gpt2.keras"', repr(str(tmp_path / "gpt2.keras")))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", example], env=env, capture_output=True,
                            text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "token_embedding/embeddings" in result.stderr  # the warning names what stays dense
    assert "transformer_layer_1/feedforward_output_dense/kernel" in result.stdout  # summary
    # ERK at 90% over the 12 kernels, read back from the saved and reloaded model.
    assert abs(float(result.stdout.strip().splitlines()[-1]) - 0.9) < 1e-3

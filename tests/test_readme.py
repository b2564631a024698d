"""The README's Python example runs as written (on MNIST prepared offline)."""

import os
import re
import subprocess
import sys

from conftest import ROOT


def test_readme_python_example_runs(data_dir):
    readme = open(os.path.join(ROOT, "README.md")).read()
    example = re.search(r"## Python API\s+```python\n(.*?)```", readme, re.S).group(1)
    env = {**os.environ, "TFDS_DATA_DIR": data_dir, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", example], env=env, capture_output=True,
                            text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    sparsities = eval(result.stdout.strip().splitlines()[-1])  # the printed dict
    assert set(sparsities) == {"dense", "dense_1", "dense_2"}
    # ERK at 90%: the layers together keep 10% of the weights.
    sizes = {"dense": 784 * 300, "dense_1": 300 * 100, "dense_2": 100 * 10}
    zeros = sum(sparsities[n] * sizes[n] for n in sizes)
    assert abs(zeros / sum(sizes.values()) - 0.9) < 1e-3

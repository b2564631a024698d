"""The scripts as a user meets them: a mistake is one line on stderr and exit status 2, found
before anything is written; start-up noise stays off the terminal unless --verbosity asks.

Each test runs a script in a subprocess (a TensorFlow import each, ~5-10 s), stopping before
training: a usage error or a dry run.
"""

import os
import re
import subprocess
import sys

from conftest import ROOT

from rigl.experiments.errors import USAGE_EXIT_STATUS

TRAIN = os.path.join(ROOT, "scripts", "train.py")
FLOPS_TABLE = os.path.join(ROOT, "scripts", "flops_table.py")
CONFIG = os.path.join("gin_configs", "mnist_lenet300_rigl.gin")
# What TensorFlow and absl print at start-up and at checkpoints, which a user should not see:
# C++ log lines (I0000/W0000/E0000 ... file.cc:N]), the absl pre-init warning, CUDA probing.
NOISE = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|cuda|cuInit|oneDNN|cpu_feature_guard|"
                   r"Sharding callback", re.IGNORECASE | re.MULTILINE)


def _run(script, *args):
    # Without the variables that quiet TensorFlow or ask for logs: the scripts quiet it.
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "RIGL_VERBOSE")}
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def _assert_usage_error(done, *named):
    """Exit status 2 and exactly one line on stderr, ``error: ...``, naming ``named``."""
    lines = done.stderr.splitlines()
    assert done.returncode == USAGE_EXIT_STATUS, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    for name in named:
        assert name in lines[0]
    return lines[0]


def test_nonexistent_gin_file_is_one_line_and_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    missing = os.path.join("gin_configs", "no_such_config.gin")
    done = _run(TRAIN, f"--gin_config={missing}", f"--workdir={workdir}")
    _assert_usage_error(done, "--gin_config", missing)
    assert not workdir.exists()


def test_zero_batch_size_is_one_line_naming_the_binding(tmp_path):
    workdir = tmp_path / "run"
    done = _run(TRAIN, f"--gin_config={CONFIG}", f"--workdir={workdir}",
                "--gin_bindings=training.batch_size=0")
    line = _assert_usage_error(done, "training.batch_size")
    assert "got 0" in line and "In call to configurable" not in line
    assert not workdir.exists()


def test_invalid_sparsity_fails_before_the_workdir_exists(tmp_path):
    workdir = tmp_path / "run"
    done = _run(TRAIN, f"--gin_config={CONFIG}", f"--workdir={workdir}",
                "--gin_bindings=training.sparsity=1.0")
    _assert_usage_error(done, "training.sparsity", "[0, 1)")
    assert not workdir.exists()


def test_dry_run_stderr_is_quiet():
    done = _run(TRAIN, f"--gin_config={CONFIG}", "--dry_run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| layer | kernel shape | sparsity | nonzeros |" in done.stdout
    assert not NOISE.search(done.stderr), done.stderr[-3000:]


def test_flops_table_stderr_is_quiet():
    done = _run(FLOPS_TABLE, "--model", "lenet300_100", "--sparsity", "0.9")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Inference FLOPs" in done.stdout
    assert not NOISE.search(done.stderr), done.stderr[-3000:]


def test_verbosity_shows_the_traceback_of_a_usage_error(tmp_path):
    workdir = tmp_path / "run"
    done = _run(TRAIN, f"--gin_config={CONFIG}", f"--workdir={workdir}",
                "--gin_bindings=training.batch_size=0", "--verbosity=0")
    assert done.returncode == USAGE_EXIT_STATUS, done.stderr[-3000:]
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("error: training.batch_size")
    assert not workdir.exists()

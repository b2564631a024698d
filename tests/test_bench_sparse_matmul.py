"""scripts/bench_sparse_matmul.py --mode=inference: every variant computes ``x @ W``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT, script_module

SCRIPT = os.path.join(ROOT, "scripts", "bench_sparse_matmul.py")


@pytest.fixture(scope="module")
def bench():
    with script_module(SCRIPT, "bench_sparse_matmul_script") as module:
        yield module


@pytest.mark.parametrize("batch, cold", [(1, False), (3, False), (1, True)])
def test_every_inference_variant_computes_the_product(bench, batch, cold):
    result = bench.measure_inference(48, batch, 0.1, rounds=1, repeats=1,
                                     names=list(bench.INFERENCE_KERNELS), cold=cold)
    assert result["cold_cache"] is cold
    assert set(result["max_abs_diff"]) == set(bench.INFERENCE_KERNELS)
    for name, diff in result["max_abs_diff"].items():
        assert diff < 1e-4, name
    assert result["nnz"] == round(0.1 * 48 * 48)
    assert all(ms > 0 for ms in result["median_ms"].values())


def test_one_slice_ell_pads_to_the_widest_neuron(bench):
    # the one-slice variant exists to show what slicing saves: it must really be one table
    from rigl import inference_layers

    counts = [5, 1, 3, 0]
    assert [len(s) for s in inference_layers.ell_slices(counts, 1.0)] == [3, 1]
    assert len(inference_layers.ell_slices(counts)) == 4


def test_unknown_kernel_is_refused_with_the_allowed_names():
    done = subprocess.run([sys.executable, SCRIPT, "--mode=inference", "--kernels=dense,gpu"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert "--kernels: unknown ['gpu'] for --mode=inference" in done.stderr
    assert "ell_xla" in done.stderr

"""Runs the selected modes of the benchmark and assembles their report.

``run`` is what ``scripts/benchmark.py`` calls once its flags are parsed: it records the
machine, runs each selected mode of ``MODES`` in order, and adds the run's duration, peak
memory and load average; ``report.markdown`` renders the result.

``storage`` (truly sparse against masked storage and the dense model) is not run by default:
it takes its own ten minutes or more and is published in its own files
(``results/benchmark/storage.json`` and ``.md``). Nor is ``inference`` (exported sparse models
against the dense export, issue 16: about half an hour), published in
``results/benchmark/inference.json`` and ``.md``.

Where a new mode plugs in: its own module beside ``overhead``, ``pipeline`` and ``peer`` with
one function returning a JSON-able result, its name in ``MODES`` and one line in ``run`` (the
report key is the mode's name), and its table in ``report.markdown``.
"""

from __future__ import annotations

import os
import resource
import time

from rigl.experiments.benchmark import inference, overhead, peer, pipeline, report, storage

MODES = ("overhead", "pipeline", "peer", "storage", "inference")
DEFAULT_MODES = ("overhead", "pipeline", "peer")
# Above this the CPU is shared with other processes and the figures are noisy.
_BUSY_LOAD_AVERAGE = 0.7


def run(*, modes, workload_names, variants, sparsity: float, update_freq: int,
        overrides: dict, jit_compile: str, data_dir: str | None, mnist_source: str,
        bench_python: str, peer_worker: str, command: str, log,
        storage_settings: storage.StorageSettings | None = None,
        inference_settings: inference.InferenceSettings | None = None) -> dict:
    """Runs ``modes`` (of ``MODES``) and returns the report.

    Args:
        modes: the modes to run; they run in the order of ``MODES``.
        workload_names: workloads of the overhead mode (and, where they have one, the peer's).
        variants: the overhead mode's variants.
        sparsity: the sparse variants' sparsity.
        update_freq: ΔT of every updating variant.
        overrides: ``window_steps``, ``rounds``, ``warmup_steps`` replacing every workload's.
        jit_compile: ``"auto"``, ``"true"`` or ``"false"`` (see ``workloads.uses_xla``).
        data_dir: TFDS data_dir of the pipeline mode (None: TFDS's default).
        mnist_source: original MNIST files, to prepare TFDS MNIST offline.
        bench_python: Python of the venv with tf_keras and tfmot (peer mode).
        peer_worker: path of ``scripts/benchmark_peer.py`` (peer mode).
        command: the command line, recorded in the report.
        log: prints a progress line.
        storage_settings: the storage mode's widths, sparsities and durations (None: its
            defaults).
        inference_settings: the inference mode's workloads, sparsities, distributions and
            durations (None: its defaults).
    """
    started = time.perf_counter()
    result = {"command": command, "machine": report.machine_info(), "jit_compile": jit_compile}
    load = result["machine"]["load_average_at_start"][0]
    if load > _BUSY_LOAD_AVERAGE:
        log(f"load average {load:.2f}: other processes share the CPU, expect noisy figures")
    if "overhead" in modes:
        result["overhead"] = overhead.overhead_mode(workload_names, variants, sparsity,
                                                    update_freq, overrides, jit_compile, log)
    if "pipeline" in modes:
        result["pipeline"] = pipeline.pipeline_mode(data_dir, mnist_source, overrides,
                                                    jit_compile, log)
    if "peer" in modes:
        result["peer"] = peer.peer_mode(workload_names, sparsity, update_freq, bench_python,
                                        peer_worker, overrides, jit_compile, log)
    if "storage" in modes:
        result["storage"] = storage.storage_mode(storage_settings or storage.StorageSettings(),
                                                 jit_compile, log)
    if "inference" in modes:
        result["inference"] = inference.inference_mode(
            inference_settings or inference.InferenceSettings(), log)
    result["seconds"] = time.perf_counter() - started
    result["load_average_at_end"] = os.getloadavg()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result

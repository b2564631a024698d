"""The peer mode: TensorFlow Model Optimization's pruning, timed by the same harness.

tfmot's ``prune_low_magnitude`` (PolynomialDecay towards the sparsity, ``frequency`` = ΔT,
``UpdatePruningStep``) on LeNet-300-100 and WRN-22-2, as its time ratio to its own plain
``tf_keras`` model. tfmot needs Keras 2 (``tf_keras``) and absl-py 1.x, which cannot share this
project's venv (Keras 3, absl-py 2), so the comparison has two sides:

* ``peer_mode`` (this project's venv) runs ``scripts/benchmark_peer.py`` with the Python of a
  separate venv created by::

      python3 -m venv .venv-bench && .venv-bench/bin/pip install -r requirements-bench.txt

  and reads the JSON it prints; without that venv the mode is skipped with that instruction.
* ``measure_tfmot`` (the bench venv, called by that script) times the two tf_keras models
  with ``harness``; the script hands it the project's ``build_model`` built on ``tf_keras``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

from rigl.experiments.benchmark import harness, workloads

VENV_INSTRUCTIONS = ("create the bench venv: python3 -m venv .venv-bench && "
                     ".venv-bench/bin/pip install -r requirements-bench.txt")


def peer_mode(names, sparsity: float, update_freq: int, bench_python: str, worker: str,
              overrides: dict, jit_compile: str, log) -> dict:
    """Runs the tfmot side in the bench venv; ``{"command", "results"}``, or why it did not.

    Args:
        names: the selected workloads; those of ``workloads.PEER_WORKLOADS`` (and ``tiny``)
            run.
        sparsity: tfmot's final sparsity.
        update_freq: ΔT, tfmot's pruning frequency.
        bench_python: the bench venv's Python.
        worker: the path of ``scripts/benchmark_peer.py``.
        overrides: workload fields to replace (of ``workloads.OVERRIDABLE``), forwarded.
        jit_compile: ``--jit_compile``, forwarded.
        log: prints a progress line.

    Returns:
        ``{"skipped": reason}`` if nothing could run, ``{"error": stderr tail, "command"}`` if
        the worker failed, else ``{"command", "results"}`` with ``measure_tfmot``'s results.
    """
    names = [n for n in names if n in workloads.PEER_WORKLOADS or n == "tiny"]
    if not names:
        return {"skipped": f"no workload of {workloads.PEER_WORKLOADS} selected"}
    if not os.path.exists(bench_python):
        return {"skipped": f"{bench_python} is missing; {VENV_INSTRUCTIONS}"}
    log(f"peer: tfmot prune_low_magnitude on {names} in {bench_python}")
    command = [bench_python, worker, f"--workloads={','.join(names)}", f"--sparsity={sparsity}",
               f"--update_freq={update_freq}",
               *(f"--{key}={value}" for key, value in overrides.items()),
               f"--jit_compile={jit_compile}"]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"error": done.stderr[-3000:], "command": command}
    return {"command": command, "results": json.loads(done.stdout.strip().splitlines()[-1])}


def measure_tfmot(names, sparsity: float, update_freq: int, overrides: dict, jit_compile: str,
                  build_model) -> list[dict]:
    """The tfmot side (run in the bench venv): plain tf_keras vs ``prune_low_magnitude``.

    Args:
        names: keys of ``workloads.WORKLOADS``.
        sparsity: tfmot's final sparsity.
        update_freq: ΔT, tfmot's pruning frequency.
        overrides: workload fields to replace.
        jit_compile: ``--jit_compile``.
        build_model: ``rigl.experiments.models.build_model`` built on ``tf_keras``.

    Returns:
        One result dict per workload, with variants ``tf_keras_dense`` and ``tfmot_prune``.
    """
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    results = []
    for name in names:
        workload = workloads.get_workload(name, **overrides)
        _, data = workloads.synthetic(workload)
        runners = []
        for variant in ("tf_keras_dense", "tfmot_prune"):
            tf_keras.utils.set_random_seed(0)
            model = build_model(workload.model, workload.input_shape, workload.num_classes,
                                **dict(workload.options))
            callbacks, freq = [], None
            if variant == "tfmot_prune":
                schedule = tfmot.sparsity.keras.PolynomialDecay(
                    0.0, sparsity, begin_step=0, end_step=update_freq * 1000,
                    frequency=update_freq)
                model = tfmot.sparsity.keras.prune_low_magnitude(model,
                                                                 pruning_schedule=schedule)
                callbacks, freq = [tfmot.sparsity.keras.UpdatePruningStep()], update_freq
            harness.compile_model(model, tf_keras, workloads.uses_xla(workload, jit_compile))
            runners.append(harness.Runner(variant, model, callbacks, freq))
        started = time.perf_counter()
        period = harness.time_runners(runners, data, tf_keras, workload, update_freq)
        summary = harness.summarize(runners, "tf_keras_dense")
        for runner in runners:
            summary[runner.name]["peak_memory_mb"] = harness.peak_memory_mb(runner)
        results.append({"workload": name, "model": workload.model,
                        "window_steps": workload.window_steps, "period_steps": period,
                        "rounds": workload.rounds, "seconds": time.perf_counter() - started,
                        "variants": summary,
                        "versions": {"tensorflow": tf.__version__,
                                     "tf_keras": tf_keras.__version__,
                                     "tensorflow_model_optimization": tfmot.__version__}})
    return results

#!/usr/bin/env python
"""The tfmot side of ``scripts/benchmark.py --modes=peer``, run by the bench venv's Python.

TensorFlow Model Optimization needs Keras 2 (``tf_keras``) and absl-py 1.x, so it runs in its
own venv (``.venv-bench``, see requirements-bench.txt), where ``scripts/benchmark.py`` starts
this script; it prints one line of JSON, the list of results of
``rigl.experiments.benchmark.peer.measure_tfmot``. Run by hand::

    .venv-bench/bin/python scripts/benchmark_peer.py --workloads=tiny

The models are the project's own (``rigl/experiments/models.py``) built on ``tf_keras``: that
module does ``import keras`` and uses nothing outside the Keras API both versions share, so it
is executed once here, under its own module name, with ``sys.modules["keras"]`` pointing at
``tf_keras`` for the duration of that import (and restored right after, so that ``import
rigl``, already done with Keras 3, is untouched). This swap is the only one in the project and
lives only in this script.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

# Before TensorFlow is imported: tf.keras and tfmot are then Keras 2 (tf_keras).
os.environ["TF_USE_LEGACY_KERAS"] = "1"

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(SCRIPTS)
sys.path[:0] = [SCRIPTS, ROOT]  # _cli, and rigl: the bench venv does not install it

import _cli  # noqa: E402 (after the path set-up above)

_cli.start()  # before the first import of rigl, which imports TensorFlow

from absl import flags  # noqa: E402

from rigl.experiments.benchmark import peer, workloads  # noqa: E402
from rigl.experiments.errors import UsageError  # noqa: E402

WORKLOADS_FLAG = flags.DEFINE_list("workloads", list(workloads.PEER_WORKLOADS),
                                   f"Workloads, of {sorted(workloads.WORKLOADS)}.")
SPARSITY = flags.DEFINE_float("sparsity", 0.9, "tfmot's final sparsity.")
UPDATE_FREQ = flags.DEFINE_integer("update_freq", 100, "tfmot's pruning frequency (ΔT).")
WINDOW_STEPS = flags.DEFINE_integer("window_steps", None, "Timed steps per window (W); "
                                    "default: per workload.")
ROUNDS = flags.DEFINE_integer("rounds", None, "Timed windows per variant; default: per "
                              "workload.")
WARMUP_STEPS = flags.DEFINE_integer("warmup_steps", None, "Untimed steps at the start of "
                                    "every window; default: per workload.")
JIT_COMPILE = flags.DEFINE_enum("jit_compile", "auto", list(workloads.JIT_COMPILE),
                                "XLA: auto = per workload; true/false = every workload.")


def tf_keras_models():
    """``rigl/experiments/models.py`` built on tf_keras: the same architectures, Keras 2."""
    import tf_keras

    saved = sys.modules.get("keras")
    sys.modules["keras"] = tf_keras
    try:
        spec = importlib.util.spec_from_file_location(
            "rigl_models_tf_keras", os.path.join(ROOT, "rigl", "experiments", "models.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del sys.modules["keras"]
        else:
            sys.modules["keras"] = saved
    return module


def main(argv):
    del argv
    for name in WORKLOADS_FLAG.value:
        if name not in workloads.WORKLOADS:
            raise UsageError(f"--workloads: unknown {name!r}; allowed: "
                                 f"{sorted(workloads.WORKLOADS)}.")
    overrides = {key: flag.value for key, flag in zip(
        workloads.OVERRIDABLE, (WINDOW_STEPS, ROUNDS, WARMUP_STEPS)) if flag.value is not None}
    results = peer.measure_tfmot(WORKLOADS_FLAG.value, SPARSITY.value, UPDATE_FREQ.value,
                                 overrides, JIT_COMPILE.value, tf_keras_models().build_model)
    print(json.dumps(results))


if __name__ == "__main__":
    _cli.run(main)

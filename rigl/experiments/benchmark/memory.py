"""Peak memory of training one MLP of the storage mode, measured in a fresh process.

``measure`` runs this module as a script (``python -m rigl.experiments.benchmark.memory``) in
a new Python process per configuration, so that no other model, allocator cache or traced
function of the benchmark counts. The child:

1. imports TensorFlow, Keras and rigl, then reads its resident set size (``VmRSS``): the
   baseline;
2. trains the same kind of MLP at width ``WARM_WIDTH`` for the same steps and drops it: what
   any training costs this process once (thread pools, traced functions, XLA's compiler),
   whatever the model's size; reads its RSS (``warm``);
3. builds the model (``storage.build_mlp``), compiles it and reads its RSS (``built``);
4. resets the kernel's high-water mark of the process (``/proc/self/clear_refs``, "5"), so
   that ``VmHWM`` from then on tracks the training alone;
5. trains ``steps`` steps with ``model.fit`` on one in-memory batch, then reads ``VmHWM``
   again (the peak of the training). The peak of the whole process (the build's temporaries
   included) is the larger of the two high-water marks.

Not ``resource.getrusage(...).ru_maxrss``: on Linux a child's ``ru_maxrss`` keeps the
high-water mark of the memory image it replaced at ``exec``, the forked copy of the parent
(the benchmark process, hundreds of MB): every child would report at least the parent's RSS.
``VmHWM`` belongs to the child's own memory image.

Figures, in MiB: ``peak_mb`` (the whole process's peak minus the baseline),
``train_peak_mb`` (the training's peak minus the baseline), ``runtime_mb`` (warm minus the
baseline), ``model_peak_mb`` (the training's peak minus warm: what this model's training
adds), ``built_mb`` (built minus warm). Against them, the theory: ``state_mb``, the bytes of
the model's and optimizer's variables after training (``harness.state_bytes``: a
``SparseDense`` entry is value 4 + momentum 4 + row and column 8 + alive flag 1 = 17 bytes; a
masked position 4 + 4 + mask 1 = 9; a dense one 8), and ``activations_mb``
(``activation_bytes``). The issue's memory target ("peak memory of sparse-storage training
within 1.5x of nnz x bytes of value, slots and indices plus activations") reads
``model_peak_to_theory`` = model peak / (state + activations); ``peak_to_theory`` divides the
whole peak (fixed runtime cost included) instead. Linux only (``/proc``); elsewhere
``measure`` reports the error. None of the figures is taken where the high-water mark cannot
be reset (``train_peak_mb``, ``model_peak_mb`` and their ratio are then None).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

_RESULT = "MEMORY-RESULT "
_MIB = 2**20
# Width of the small model every child trains first, to pay the runtime's one-time costs.
WARM_WIDTH = 16


def activation_bytes(width: int, batch: int, layers: int = 2, num_classes: int = 10) -> int:
    """Bytes of the MLP's activations in a step: every layer's input and output, forward
    values and their gradients, float32: ``2 · 4 · batch · (n_in + Σ units)``."""
    return 2 * 4 * batch * (width + layers * width + num_classes)


def measure(kind: str, width: int, sparsity: float | None, batch: int, steps: int,
            jit_compile: bool, seed: int = 0) -> dict:
    """Peak memory of ``steps`` training steps of one MLP, in a fresh process.

    Returns:
        The child's figures (see the module docstring), or ``{"error": ...}`` with the end of
        its stderr if it failed (for example killed for lack of memory).
    """
    import rigl  # the folder that holds the package goes on the child's path

    root = os.path.dirname(os.path.dirname(os.path.abspath(rigl.__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH"))
                                          if p))
    config = {"kind": kind, "width": width, "sparsity": sparsity, "batch": batch,
              "steps": steps, "jit_compile": jit_compile, "seed": seed}
    done = subprocess.run([sys.executable, "-m", __name__, json.dumps(config)], env=env,
                          capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(_RESULT)]
    if done.returncode != 0 or not lines:
        return {"error": f"exit status {done.returncode}: {done.stderr[-1500:].strip()}"}
    return json.loads(lines[-1][len(_RESULT):])


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child(config: dict) -> dict:
    import keras  # noqa: F401 (imported before the baseline, as the models need it)
    import tensorflow as tf  # noqa: F401

    from rigl.experiments.benchmark import harness, storage, workloads

    baseline_kb = _status_kb("VmRSS")
    if baseline_kb is None:
        raise OSError("/proc/self/status: no VmRSS; peak memory is measured on Linux only.")
    kind, width, batch, steps = (config[k] for k in ("kind", "width", "batch", "steps"))
    sparsity, seed, xla = config["sparsity"], config["seed"], config["jit_compile"]

    def trained(width):
        model = storage.compile_mlp(storage.build_mlp(kind, width, sparsity, seed), xla)
        _, data = workloads.synthetic_batch(batch, (width,), storage.NUM_CLASSES, seed)
        return model, data

    model, data = trained(WARM_WIDTH)
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    del model, data
    gc.collect()
    warm_kb = _status_kb("VmRSS")
    model, data = trained(width)
    built_kb = _status_kb("VmRSS")
    build_peak_kb = _status_kb("VmHWM")
    reset = _reset_high_water_mark()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    train_kb = _status_kb("VmHWM") if reset else None
    peak_kb = max(build_peak_kb, _status_kb("VmHWM"))
    state = harness.state_bytes(model) / _MIB
    activations = activation_bytes(width, batch, len(storage.SPARSE_LAYERS),
                                   storage.NUM_CLASSES) / _MIB
    peak = (peak_kb - baseline_kb) / 1024
    figures = {"baseline_mb": baseline_kb / 1024, "runtime_mb": (warm_kb - baseline_kb) / 1024,
               "built_mb": (built_kb - warm_kb) / 1024, "peak_mb": peak,
               "train_peak_mb": None, "model_peak_mb": None, "state_mb": state,
               "activations_mb": activations, "peak_to_theory": peak / (state + activations),
               "model_peak_to_theory": None}
    if train_kb is not None:
        figures["train_peak_mb"] = (train_kb - baseline_kb) / 1024
        figures["model_peak_mb"] = (train_kb - warm_kb) / 1024
        figures["model_peak_to_theory"] = figures["model_peak_mb"] / (state + activations)
    return figures


if __name__ == "__main__":
    print(_RESULT + json.dumps(_child(json.loads(sys.argv[1]))), flush=True)

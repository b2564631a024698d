"""What the benchmark times: workloads, the variants compared on each, their synthetic batch.

A ``Workload`` is one model at one input size and batch, with how long to time it (window,
rounds, warm-up) and whether its training steps are compiled with XLA. ``VARIANTS`` are the
training methods timed against the dense model; they come from ``rigl.methods`` (the only
list of methods), minus the methods with no recurring cost to time. ``DIAGNOSTIC_VARIANTS``
are not sparse training but help read the others (see their comment).

Where new things plug in: a new workload is one entry of ``WORKLOADS`` (its model name must be
one of ``rigl.experiments.models.MODELS``; add it to ``PEER_WORKLOADS`` too if the tfmot peer
should run it). A new method of ``rigl.methods`` becomes a variant by itself; a new
diagnostic is named here and built in ``overhead.build_runners``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from rigl import methods

# Methods of rigl.methods that are not variants, and why: their cost is not a recurring cost
# on top of a dense step, which is what the overhead mode measures.
NOT_TIMED = {
    "small_dense": "a narrower dense model: faster than dense, not an overhead",
    "snip": "one update at step 0, then the static model",
}
VARIANTS = tuple(name for name in methods.METHODS if name not in NOT_TIMED)
# Diagnostics, not sparse training: the masked model with the mask constraint removed (its
# kernels drift off zero), to time what the constraint costs; the plain model compiled the
# other way (with XLA where the workload runs without, and the reverse), to show in the same
# run whether the workload's XLA setting helps the dense floor itself.
DIAGNOSTIC_VARIANTS = ("static_no_constraint", "dense_other_xla")
DEFAULT_VARIANTS = (*VARIANTS, "dense_other_xla")
JIT_COMPILE = ("auto", "true", "false")  # the values of --jit_compile


@dataclasses.dataclass(frozen=True)
class Workload:
    """One model at one input size and batch, and how long to time it.

    Attributes:
        model: a name of ``rigl.experiments.models.MODELS``.
        input_shape: one example's shape, without the batch dimension.
        num_classes: number of classes of the synthetic labels and the model's output.
        batch: examples per step.
        window_steps: W, the timed steps of one window.
        rounds: timed windows per variant.
        warmup_steps: untimed steps at the start of every window.
        update_repeats: direct timings of one mask update.
        options: extra ``build_model`` keyword arguments, as (name, value) pairs.
        jit_compile: whether ``--jit_compile=auto`` compiles every variant with XLA.
    """

    model: str
    input_shape: tuple
    num_classes: int
    batch: int
    window_steps: int
    rounds: int
    warmup_steps: int
    update_repeats: int
    options: tuple = ()
    # XLA where it helps the plain dense model on a 2-core CPU (every variant alike): it
    # fuses LeNet-300-100's elementwise passes (its dense step ~10% faster), but compiles
    # convolutions far slower than TensorFlow's oneDNN kernels (WRN-22-2 1.4x, ResNet-50 4x
    # slower): the dense_other_xla rows of results/benchmark/benchmark.md.
    jit_compile: bool = False


WORKLOADS = {
    "lenet300_100": Workload("lenet300_100", (28, 28, 1), 10, 100, window_steps=400,
                             rounds=40, warmup_steps=20, update_repeats=10, jit_compile=True),
    "wrn_22_2": Workload("wrn_22_2", (32, 32, 3), 10, 128, window_steps=6, rounds=7,
                         warmup_steps=2, update_repeats=3),
    "resnet50": Workload("resnet50", (64, 64, 3), 1000, 32, window_steps=6, rounds=7,
                         warmup_steps=2, update_repeats=3),
    # For the test suite: seconds, not a measurement.
    "tiny": Workload("lenet300_100", (8, 8, 1), 10, 8, window_steps=3, rounds=2,
                     warmup_steps=1, update_repeats=2, options=(("width", 0.1),)),
}
DEFAULT_WORKLOADS = ("lenet300_100", "wrn_22_2", "resnet50")
# The workloads the tfmot peer runs (of those selected); "tiny" too, for the test suite.
PEER_WORKLOADS = ("lenet300_100", "wrn_22_2")
# The input-pipeline mode's LeNet-5 on MNIST (input shape and classes come from the dataset).
PIPELINE = {"model": "lenet5", "batch": 100, "window_steps": 200, "rounds": 6,
            "warmup_steps": 30}
# The settings --window_steps, --rounds and --warmup_steps override in every workload.
OVERRIDABLE = ("window_steps", "rounds", "warmup_steps")


def get_workload(name: str, **overrides) -> Workload:
    """``WORKLOADS[name]`` with the fields of ``overrides`` (of ``OVERRIDABLE``) replaced."""
    return dataclasses.replace(WORKLOADS[name], **overrides)


def uses_xla(workload: Workload, jit_compile: str) -> bool:
    """Whether ``workload``'s training steps are compiled with XLA under ``--jit_compile``.

    Args:
        workload: the workload.
        jit_compile: ``"auto"`` (the workload's own setting), ``"true"`` or ``"false"``.
    """
    return workload.jit_compile if jit_compile == "auto" else jit_compile == "true"


def synthetic(workload: Workload, seed: int = 0):
    """One random batch ``(x, y)`` of ``workload`` and a dataset repeating it forever.

    Every variant trains on the same in-memory batch, so no input pipeline blurs the timing.
    """
    return synthetic_batch(workload.batch, workload.input_shape, workload.num_classes, seed)


def synthetic_batch(batch: int, input_shape: tuple, num_classes: int, seed: int = 0):
    """One random batch ``(x, y)`` of ``batch`` examples of ``input_shape`` with labels in
    ``[0, num_classes)``, and a dataset repeating it forever."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, *input_shape)).astype(np.float32)
    y = rng.integers(0, num_classes, batch).astype(np.int32)
    return (x, y), tf.data.Dataset.from_tensors((x, y)).repeat()

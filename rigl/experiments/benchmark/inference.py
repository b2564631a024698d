"""The inference mode: exported sparse models against the dense export of the same
architecture (issue 16, ``rigl.export``).

For each workload (``WORKLOADS``: LeNet-300-100, the char-GRU, MobileNet-v1, ResNet-50 and
the MLPs ``n -> n -> n -> 10`` of ``storage.build_mlp``, all three layers sparse as
``rigl.sparsify`` makes them by default; ``mlp32``, not a default, runs in seconds), the
model is built once (random weights, ``seed``) and exported dense (``rigl.export`` of a model
without sparse layers: its warning is silenced) as a SavedModel and as a LiteRT flatbuffer,
once for all its sparsities. Then, for each distribution × sparsity, ``rigl.sparsify`` of
that model (random masks; the layers the paper's configs keep dense stay dense:
``InferenceWorkload.dense_layers``) is exported sparse in both formats (``batch_size=1``:
each sparse layer's representation is the one measured fastest at batch 1), and all four
artefacts are loaded (``rigl.load_exported``) and timed side by side in this process:

* latency: one call on a batch of 1;
* throughput: one call on a batch of ``throughput_batch`` (64). For the workloads of
  ``throughput_exports`` the sparse SavedModel is exported a second time with
  ``batch_size=64`` (its layers' choices measured at 64) and that export is timed here
  (every workload by default: ``rigl.export`` skips ELL candidates of too many gathered
  terms and stops timing candidates that are far behind, which keeps a batch-64 export of
  ResNet-50 to minutes); for the others the batch-1 export is timed at 64. The row records
  which export was timed.
  A LiteRT flatbuffer of a fixed batch (recurrent layers convert only with one: the GRU) is
  converted again at 64 for the throughput figure, dense and sparse alike, so that neither
  runs 64 calls of one row.

Timing (``time_calls``), as in the storage mode: a warm-up call per artefact, a second call
sizing its window (at least ``window_seconds`` of calls), then ``rounds`` rounds (fewer,
at least 3, where they would last over ``timing_seconds``: ResNet-50 at batch 64), each
running one window of every artefact in rotating order; an artefact's time is the median
over rounds of its window's mean call. Ratio = the faster dense export's median / the sparse
export's (> 1: the sparse export is faster), for each sparse format and for the faster of
the two, with in brackets the min–max of the same ratio round by round
(``storage.compare``).

A third sparse SavedModel, ``sparse_saved_model_small`` (``representation="sparse"``:
every sparse layer in its fastest sparse kernel, whatever the dense kernel's speed), is
exported for its size (the size target reads it) and its agreement; it is not timed.

Also recorded per sparse export: the largest absolute difference between its outputs and the
sparse Keras model's on the timed batch of 64 (its first row is the batch of 1), the
fraction of top-1 classes that agree (per position for the GRU), its size on disk, and from
its metadata the sparse layers' ``stored_bytes`` over CSR bytes (``sparse_layers.ratio``:
target ≤ 1.2) and each sparse layer's chosen representation. ``targets`` reads the issue's
targets off a result.

The default grid is cut to fit about half an hour on a 2-core CPU (measured with other
processes on it, per row: LeNet-300-100 40 s, the char-GRU 110 s, MLP 4,096 50-60 s,
MobileNet-v1 95 s, ResNet-50 about 400 s, its sparse SavedModel export timing the candidates
of 53 convolutions): the workloads of ``light_workloads`` (the char-GRU, whose GRU has no
sparse kernel and stays dense, MobileNet-v1 and ResNet-50) run at ``light_sparsities`` (0.9
and 0.99) in ``light_distributions`` (uniform) only; ``light_workloads=()``
(``--inference_full_grid``) runs every workload in the full grid. Each workload's and each
row's seconds are reported.

Where new things plug in: a workload is one entry of ``WORKLOADS``; a new figure per cell is
a key of ``_cell``'s row, rendered in ``report``.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import math
import os
import shutil
import tempfile
import time
import warnings

import numpy as np

import rigl
from rigl.experiments import models
from rigl.experiments.benchmark import harness, storage

FORMATS = ("saved_model", "tflite")
# The name of each cell's size-first export (``representation="sparse"``).
SMALL = "sparse_saved_model_small"
DISTRIBUTIONS = ("uniform", "erk")
# The sparse and dense artefacts timed side by side, in this order.
VARIANTS = ("sparse_saved_model", "sparse_tflite", "dense_saved_model", "dense_tflite")
# The fewest timed rounds when a budget cuts them (``time_calls``).
MIN_ROUNDS = 3
# The longest window, in calls, whatever the call time.
_MAX_WINDOW_CALLS = 10_000
# MobileNet-v1 (gin_configs/imagenet/mobilenet_v1.gin): the first convolution and every
# depthwise convolution stay dense.
_MOBILENET_DENSE = ("conv1",) + tuple(f"conv_dw_{i}" for i in range(1, 14))


@dataclasses.dataclass(frozen=True)
class InferenceWorkload:
    """One architecture of the inference mode.

    Attributes:
        name: its key in ``WORKLOADS``.
        model: a name of ``rigl.experiments.models.MODELS``, or ``"mlp"`` for
            ``storage.build_mlp("dense", width)``.
        input_shape: one example's shape.
        num_classes: the model's outputs.
        description: for the report.
        width: the MLP's ``n`` (``model="mlp"`` only).
        integer_input: inputs are byte ids in ``[0, num_classes)`` (the char-GRU).
        dense: distribution -> the layers kept dense at every sparsity.
        dense_from: (sparsity, layers): from this sparsity on, these layers stay dense too
            (ResNet-50 ERK at 99%).
    """

    name: str
    model: str
    input_shape: tuple
    num_classes: int
    description: str
    width: int | None = None
    integer_input: bool = False
    dense: dict = dataclasses.field(default_factory=dict)
    dense_from: tuple | None = None

    def build(self, seed: int = 0):
        """The dense Keras model (random weights from ``seed``)."""
        if self.model == "mlp":
            return storage.build_mlp("dense", self.width, seed=seed)
        import keras

        keras.utils.set_random_seed(seed)
        return models.build_model(self.model, self.input_shape, self.num_classes)

    def dense_layers(self, distribution: str, sparsity: float) -> list[str]:
        """The layers ``rigl.sparsify`` leaves dense (the paper's configs)."""
        layers = list(self.dense.get(distribution, ()))
        if self.dense_from and sparsity >= self.dense_from[0]:
            layers += [name for name in self.dense_from[1] if name not in layers]
        return layers

    def batch(self, size: int, seed: int = 0) -> np.ndarray:
        """A random input batch of ``size`` examples."""
        rng = np.random.default_rng(seed)
        if self.integer_input:
            return rng.integers(0, self.num_classes, (size, *self.input_shape)).astype(np.int32)
        return rng.standard_normal((size, *self.input_shape)).astype(np.float32)


WORKLOADS = {w.name: w for w in (
    InferenceWorkload("lenet300_100", "lenet300_100", (28, 28, 1), 10,
                      "LeNet-300-100, 28×28×1 → 300 → 100 → 10"),
    # gin_configs/char_rnn: 256 byte classes; sequences of 100 (the configs train on 512:
    # the GRU has no sparse kernel and stays dense, so a shorter sequence only shortens the
    # dense part that both exports share).
    InferenceWorkload("char_gru", "char_gru", (100,), 256,
                      "char-GRU, 100 bytes → embedding 128 → GRU 512 → 256 → 128 → 256",
                      integer_input=True),
    InferenceWorkload("mobilenet_v1", "mobilenet_v1", (128, 128, 3), 1000,
                      "MobileNet-v1, 128×128×3, 1000 classes; conv1 and the depthwise "
                      "convolutions dense",
                      dense={"uniform": _MOBILENET_DENSE, "erk": _MOBILENET_DENSE}),
    # gin_configs/imagenet/resnet50_uniform.gin keeps conv1 dense; resnet50_erk.gin none,
    # but conv1 at 99% ("the paper keeps the first layer dense").
    InferenceWorkload("resnet50", "resnet50", (224, 224, 3), 1000,
                      "ResNet-50, 224×224×3, 1000 classes; conv1 dense (uniform; ERK at 99%)",
                      dense={"uniform": ("conv1",)}, dense_from=(0.99, ("conv1",))),
    InferenceWorkload("mlp1024", "mlp", (1024,), storage.NUM_CLASSES,
                      "MLP 1,024 → 1,024 → 1,024 → 10", width=1024),
    InferenceWorkload("mlp4096", "mlp", (4096,), storage.NUM_CLASSES,
                      "MLP 4,096 → 4,096 → 4,096 → 10", width=4096),
    # Not a default: seconds, for tests and a smoke run.
    InferenceWorkload("mlp32", "mlp", (32,), storage.NUM_CLASSES, "MLP 32 → 32 → 32 → 10",
                      width=32),
)}
DEFAULT_WORKLOADS = ("lenet300_100", "char_gru", "mobilenet_v1", "resnet50", "mlp1024",
                     "mlp4096")


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """What the inference mode measures, and for how long.

    Attributes:
        workloads: names of ``WORKLOADS``.
        sparsities: in [0, 1); measured in increasing order.
        distributions: of ``DISTRIBUTIONS``.
        rounds: timed windows per artefact.
        timing_seconds: the longest timing of one batch size in one row: fewer rounds (at
            least ``MIN_ROUNDS``) where ``rounds`` would last longer.
        window_seconds: the shortest timed window; its call count is set per artefact.
        throughput_batch: the batch of the throughput figure.
        throughput_exports: workloads whose sparse SavedModel is exported a second time at
            ``throughput_batch`` for the throughput figure (the others time the batch-1
            export there).
        light_workloads: workloads measured at ``light_sparsities`` and
            ``light_distributions`` only.
        light_sparsities: the sparsities of ``light_workloads`` (those of ``sparsities``
            that are in it; all of ``sparsities`` if none is).
        light_distributions: the distributions of ``light_workloads`` (likewise).
        export_rounds: ``rigl.export``'s ``rounds`` (timed calls per candidate).
        seed: of the weights, the masks and the batch.
    """

    workloads: tuple = DEFAULT_WORKLOADS
    sparsities: tuple = (0.9, 0.95, 0.98, 0.99)
    distributions: tuple = DISTRIBUTIONS
    rounds: int = 7
    timing_seconds: float = 60.0
    window_seconds: float = 0.2
    throughput_batch: int = 64
    throughput_exports: tuple = ("lenet300_100", "char_gru", "mobilenet_v1", "resnet50",
                                 "mlp1024", "mlp4096")
    light_workloads: tuple = ("char_gru", "mobilenet_v1", "resnet50")
    light_sparsities: tuple = (0.9, 0.99)
    light_distributions: tuple = ("uniform",)
    export_rounds: int = 15
    seed: int = 0

    def __post_init__(self):
        for name in ("workloads", "distributions", "throughput_exports", "light_workloads",
                     "light_distributions"):
            values = tuple(getattr(self, name))
            object.__setattr__(self, name, values)
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: {values} repeats a value.")
        for name in ("workloads", "throughput_exports", "light_workloads"):
            for workload in getattr(self, name):
                if workload not in WORKLOADS:
                    raise ValueError(f"{name}: unknown {workload!r}; allowed: "
                                     f"{tuple(WORKLOADS)}.")
        for name in ("distributions", "light_distributions"):
            for distribution in getattr(self, name):
                if distribution not in DISTRIBUTIONS:
                    raise ValueError(f"{name}: unknown {distribution!r}; allowed: "
                                     f"{DISTRIBUTIONS}.")
        for name in ("sparsities", "light_sparsities"):
            values = getattr(self, name)
            for sparsity in values:
                if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not (
                        0 <= sparsity < 1):
                    raise ValueError(f"{name}: expected numbers in [0, 1), got {sparsity!r}.")
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: {tuple(values)} repeats a value.")
            object.__setattr__(self, name, tuple(sorted(float(s) for s in values)))
        for name in ("workloads", "sparsities", "distributions"):
            if not getattr(self, name):
                raise ValueError(f"{name}: give at least one.")
        for name in ("rounds", "throughput_batch", "export_rounds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}.")
        for name in ("window_seconds", "timing_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name}: expected a positive number, got {value!r}.")

    def sparsities_of(self, workload: str) -> tuple:
        """The sparsities at which ``workload`` is measured."""
        if workload not in self.light_workloads:
            return self.sparsities
        light = tuple(s for s in self.sparsities if s in self.light_sparsities)
        return light or self.sparsities

    def distributions_of(self, workload: str) -> tuple:
        """The distributions in which ``workload`` is measured."""
        if workload not in self.light_workloads:
            return self.distributions
        light = tuple(d for d in self.distributions if d in self.light_distributions)
        return light or self.distributions


# ------------------------------------------------------------------------------ timing


def window_calls_for(call_seconds: float, window_seconds: float) -> int:
    """Calls of a window lasting at least ``window_seconds`` (at most ``_MAX_WINDOW_CALLS``)."""
    return max(1, min(_MAX_WINDOW_CALLS, math.ceil(window_seconds / max(call_seconds, 1e-9))))


def time_calls(calls: dict, x, rounds: int, window_seconds: float,
               max_seconds: float | None = None) -> dict:
    """Times each callable of ``calls`` (name -> function of ``x``) side by side.

    A warm-up call each, a second call sizing its window, then ``rounds`` rounds of one
    window per callable in rotating order; fewer (at least ``MIN_ROUNDS``) if ``rounds``
    rounds would last over ``max_seconds`` by the sizing calls (ResNet-50 at batch 64: a
    round of its four exports lasts about 25 s).

    Returns:
        name -> ``{"ms": median over rounds of the window's mean call, "round_ms": each
        round's, "window_calls": calls per window}``.
    """
    names = list(calls)
    windows, round_seconds = {}, 0.0
    for name in names:
        calls[name](x)
        start = time.perf_counter()
        calls[name](x)
        seconds = time.perf_counter() - start
        windows[name] = window_calls_for(seconds, window_seconds)
        round_seconds += windows[name] * seconds
    if max_seconds is not None:
        affordable = int(max_seconds / max(round_seconds, 1e-9))
        rounds = max(min(rounds, MIN_ROUNDS), min(rounds, affordable))
    rounds_ms = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn, count = calls[name], windows[name]
            start = time.perf_counter()
            for _ in range(count):
                fn(x)
            rounds_ms[name].append(1e3 * (time.perf_counter() - start) / count)
    return {name: {"ms": harness.median(rounds_ms[name]), "round_ms": rounds_ms[name],
                   "window_calls": windows[name]} for name in names}


def ratios(timed: dict) -> dict:
    """The faster dense artefact's time over each sparse one's, and over the faster sparse
    one's (``storage.compare``: ratio of medians, spread round by round)."""
    dense = min(("dense_saved_model", "dense_tflite"), key=lambda n: timed[n]["ms"])
    sparse = min(("sparse_saved_model", "sparse_tflite"), key=lambda n: timed[n]["ms"])
    out = {"fastest_dense": dense, "fastest_sparse": sparse}
    for key, name in (("saved_model", "sparse_saved_model"), ("tflite", "sparse_tflite"),
                      ("best", sparse)):
        out[key] = storage.compare(timed[dense]["round_ms"], timed[name]["round_ms"])
    return out


def agreement(outputs: np.ndarray, reference: np.ndarray) -> dict:
    """Largest absolute difference and the fraction of equal top-1 classes (last axis)."""
    outputs, reference = np.asarray(outputs, np.float64), np.asarray(reference, np.float64)
    if outputs.shape != reference.shape:
        raise ValueError(f"outputs: shape {outputs.shape}, the Keras model's is "
                         f"{reference.shape}.")
    return {"max_abs_diff": float(np.max(np.abs(outputs - reference))),
            "top1_agreement": float(np.mean(outputs.argmax(-1) == reference.argmax(-1)))}


# ----------------------------------------------------------------------------- exports


def _export(model, path: str, format: str, batch_size: int, rounds: int,
            representation: str = "auto") -> tuple:
    """``(metadata, seconds)`` of ``rigl.export``; a model without sparse layers (the dense
    baseline) is exported dense, its warning silenced."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="export: the model has no sparse layer",
                                category=UserWarning)
        metadata = rigl.export(model, path, format=format, batch_size=batch_size,
                               rounds=rounds, representation=representation)
    return metadata, time.perf_counter() - start


def _layer_record(record: dict) -> dict:
    keys = ("name", "kind", "kernel_shape", "nnz", "sparsity", "representation",
            "ell_slices", "measured_ms", "stored_bytes", "csr_bytes")
    return {k: record[k] for k in keys if k in record}


def _representations(layers) -> dict:
    return dict(collections.Counter(r.get("representation", "dense") for r in layers))


class _Artefacts:
    """Exports under one folder (a workload's dense ones, or a cell's sparse ones): the
    metadata, export seconds and loaded runner of each, by name."""

    def __init__(self, folder: str, rounds: int, label: str, log):
        self.folder, self.rounds, self.label, self.log = folder, rounds, label, log
        self.metadata, self.seconds, self.runners = {}, {}, {}

    def add(self, name: str, model, format: str, batch_size: int = 1,
            representation: str = "auto"):
        path = os.path.join(self.folder, name)
        self.metadata[name], self.seconds[name] = _export(model, path, format, batch_size,
                                                          self.rounds, representation)
        self.runners[name] = rigl.load_exported(path)
        self.log(f"inference: {self.label}: exported {name} in {self.seconds[name]:.1f} s")

    def size(self, name: str) -> int:
        return self.metadata[name]["bytes_on_disk"]

    def fixed_batch(self, name: str) -> bool:
        return self.metadata[name].get("tflite_batch") is not None


# -------------------------------------------------------------------------------- mode


def _cell(workload: InferenceWorkload, dense_model, dense: _Artefacts, distribution: str,
          sparsity: float, settings: InferenceSettings, folder: str, log) -> dict:
    """One distribution × sparsity of a workload: export, check and time (module docstring)."""
    started = time.perf_counter()
    label = f"{workload.name} {distribution} {sparsity}"
    kept = workload.dense_layers(distribution, sparsity)
    model = rigl.sparsify(dense_model, sparsity, distribution, dense_layers=kept,
                          seed=settings.seed)
    big = settings.throughput_batch
    x = workload.batch(big, settings.seed)
    reference = np.asarray(model(x, training=False))
    sparse = _Artefacts(folder, settings.export_rounds, label, log)
    sparse.add("sparse_saved_model", model, "saved_model")
    sparse.add("sparse_tflite", model, "tflite")
    # The smallest SavedModel: every sparse layer in its fastest sparse kernel (size only).
    sparse.add(SMALL, model, "saved_model", representation="sparse")
    throughput_export = workload.name in settings.throughput_exports
    if throughput_export:
        sparse.add(f"sparse_saved_model_{big}", model, "saved_model", big)
    if sparse.fixed_batch("sparse_tflite"):
        sparse.add(f"sparse_tflite_{big}", model, "tflite", big)
    accuracy = {name: agreement(runner(x), reference) for name, runner in sparse.runners.items()}
    log(f"inference: {label}: timing, {settings.rounds} rounds")
    latency = time_calls({**{n: sparse.runners[n] for n in VARIANTS[:2]},
                          **{n: dense.runners[n] for n in VARIANTS[2:]}}, x[:1],
                         settings.rounds, settings.window_seconds, settings.timing_seconds)

    def at_big(name, artefacts):
        wide = f"{name}_{big}"
        return artefacts.runners[wide if wide in artefacts.runners else name]

    throughput = time_calls({**{n: at_big(n, sparse) for n in VARIANTS[:2]},
                             **{n: at_big(n, dense) for n in VARIANTS[2:]}}, x,
                            settings.rounds, settings.window_seconds, settings.timing_seconds)
    metadata = sparse.metadata["sparse_saved_model"]
    row = {
        "distribution": distribution, "sparsity": sparsity, "dense_layers": kept,
        "nnz": sum(r.get("nnz", 0) for r in metadata["layers"]),
        "sparse_layers": metadata.get("sparse_layers"),
        "representations": _representations(metadata["layers"]),
        "small": {"sparse_layers": sparse.metadata[SMALL].get("sparse_layers"),
                  "representations": _representations(sparse.metadata[SMALL]["layers"])},
        "layers": [_layer_record(r) for r in metadata["layers"]],
        "bytes_on_disk": {name: sparse.size(name) for name in sparse.metadata},
        "export_s": sparse.seconds,
        "accuracy": accuracy,
        "latency": {"batch": 1, "variants": latency, "ratios": ratios(latency)},
        "throughput": {"batch": big, "variants": throughput, "ratios": ratios(throughput),
                       "examples_per_s": {n: 1e3 * big / t["ms"]
                                          for n, t in throughput.items()},
                       "timed": {n: (f"{n}_{big}" if f"{n}_{big}" in a.runners else n)
                                 for n, a in zip(VARIANTS, (sparse, sparse, dense, dense))}},
    }
    if throughput_export:
        wide = sparse.metadata[f"sparse_saved_model_{big}"]
        row["throughput"].update(
            representations=_representations(wide["layers"]),
            layers=[_layer_record(r) for r in wide["layers"]],
            sparse_layers=wide.get("sparse_layers"))
    del sparse, model
    gc.collect()
    row["seconds"] = time.perf_counter() - started
    log(f"inference: {label}: best sparse / fastest dense: batch 1 "
        f"{row['latency']['ratios']['best']['ratio']:.2f}×, batch {big} "
        f"{row['throughput']['ratios']['best']['ratio']:.2f}×; {row['seconds']:.0f} s")
    return row


def _workload_result(workload: InferenceWorkload, settings: InferenceSettings, log) -> dict:
    started = time.perf_counter()
    big = settings.throughput_batch
    dense_model = workload.build(settings.seed)
    folder = tempfile.mkdtemp(prefix=f"rigl-inference-{workload.name}-")
    try:
        dense = _Artefacts(folder, settings.export_rounds, workload.name, log)
        dense.add("dense_saved_model", dense_model, "saved_model")
        dense.add("dense_tflite", dense_model, "tflite")
        if dense.fixed_batch("dense_tflite"):
            dense.add(f"dense_tflite_{big}", dense_model, "tflite", big)
        x = workload.batch(big, settings.seed)
        reference = np.asarray(dense_model(x, training=False))
        accuracy = {name: agreement(runner(x), reference) for name, runner in dense.runners.items()}
        cells = []
        for distribution in settings.distributions_of(workload.name):
            for sparsity in settings.sparsities_of(workload.name):
                cell_folder = tempfile.mkdtemp(dir=folder)
                cells.append(_cell(workload, dense_model, dense, distribution, sparsity,
                                   settings, cell_folder, log))
                shutil.rmtree(cell_folder, ignore_errors=True)
        result = {
            "workload": workload.name, "model": workload.description,
            "input_shape": list(workload.input_shape), "num_classes": workload.num_classes,
            "input": "byte ids" if workload.integer_input else "standard normal",
            "sparsities": list(settings.sparsities_of(workload.name)),
            "distributions": list(settings.distributions_of(workload.name)),
            "dense": {"bytes_on_disk": {name: dense.size(name) for name in dense.metadata},
                      "export_s": dense.seconds, "accuracy": accuracy},
            "cells": cells,
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    del dense
    gc.collect()
    result["seconds"] = time.perf_counter() - started
    log(f"inference: {workload.name} done in {result['seconds']:.0f} s")
    return result


def inference_mode(settings: InferenceSettings, log) -> dict:
    """Runs the inference mode (see the module docstring); its JSON-able result.

    Args:
        settings: workloads, sparsities, distributions and durations.
        log: prints a progress line.
    """
    started = time.perf_counter()
    results = [_workload_result(WORKLOADS[name], settings, log) for name in settings.workloads]
    return {
        "workloads": results, "sparsities": list(settings.sparsities),
        "distributions": list(settings.distributions), "rounds": settings.rounds,
        "timing_seconds": settings.timing_seconds, "window_seconds": settings.window_seconds,
        "throughput_batch": settings.throughput_batch,
        "throughput_exports": list(settings.throughput_exports),
        "light_workloads": list(settings.light_workloads),
        "light_sparsities": list(settings.light_sparsities),
        "light_distributions": list(settings.light_distributions),
        "export_rounds": settings.export_rounds, "seed": settings.seed,
        "seconds": time.perf_counter() - started,
    }


# ----------------------------------------------------------------------------- targets

# (workload, sparsity, the lowest batch-1 ratio, the words)
SPEED_TARGETS = (
    ("mlp4096", 0.9, 2.0, "≥ 2× lower batch-1 latency at 90% for 4,096-wide Dense layers"),
    ("mlp4096", 0.99, 5.0, "≥ 5× lower batch-1 latency at 99% for 4,096-wide Dense layers"),
    ("mobilenet_v1", 0.9, 1.5, "≥ 1.5× lower batch-1 latency for MobileNet-v1 at 90%"),
)
# The size target, which rigl.export(representation="sparse") keeps by construction.
SIZE_TARGET = rigl.exporting.SPARSE_SIZE_LIMIT


def targets(inference: dict) -> list[dict]:
    """The issue's targets, read off an inference result.

    Returns:
        one dict per target: ``text`` (the issue's words), ``found`` (the measured figures)
        and ``met`` (True, False, or None where nothing was measured). Speed targets
        compare the faster sparse export with the faster dense export at batch 1, in every
        measured distribution; the size target is every sparse SavedModel's
        ``sparse_layers.ratio``; ResNet-50 has no target (``met`` None, its best figures).
    """
    by_name = {w["workload"]: w for w in inference["workloads"]}
    out = []
    for workload, sparsity, lowest, text in SPEED_TARGETS:
        cells = [c for c in by_name.get(workload, {}).get("cells", [])
                 if c["sparsity"] == sparsity]
        found = [(c["distribution"], c["latency"]["ratios"]["best"]["ratio"]) for c in cells]
        out.append({"text": text, "met": all(r >= lowest for _, r in found) if found else None,
                    "found": ", ".join(f"{d} {r:.2f}×" for d, r in found) or "not measured"})
    resnet = by_name.get("resnet50", {}).get("cells", [])
    out.append({"text": "ResNet-50: what is possible (batch 1)", "met": None,
                "found": ", ".join(f"{c['distribution']} {c['sparsity']}: "
                                   f"{c['latency']['ratios']['best']['ratio']:.2f}×"
                                   for c in resnet) or "not measured"})
    # The size-first export where the row has one (runs before it had only the auto one).
    sizes = [(c.get("small") or c)["sparse_layers"]["ratio"]
             for w in inference["workloads"] for c in w["cells"]
             if (c.get("small") or c).get("sparse_layers")]
    within = sum(r <= SIZE_TARGET for r in sizes)
    small = any(c.get("small") for w in inference["workloads"] for c in w["cells"])
    which = ("SavedModel with representation='sparse'" if small
             else "SavedModel exported at batch 1")
    out.append({"text": f"sparse layers' size ≤ {SIZE_TARGET}× (nnz × 4 bytes + index "
                        f"bytes), {which}",
                "met": within == len(sizes) if sizes else None,
                "found": (f"{within} of {len(sizes)} exports within; "
                          + (f"ratio {sizes[0]:.2f}" if len(set(sizes)) == 1 else
                             f"ratios {min(sizes):.2f}–{max(sizes):.2f}")
                          if sizes else "not measured")})
    return out

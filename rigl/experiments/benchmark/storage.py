"""The storage mode: truly sparse storage against masked storage and the plain dense model.

The model is an MLP ``n -> n -> n -> 10`` on inputs of width ``n`` (batch 128, SGD with
momentum 0.9, sparse cross-entropy): the two ``n x n`` hidden layers ``h1`` and ``h2`` are
sparse, the ``n x 10`` output layer ``out`` is dense in every kind (as in
``scripts/bench_sparse_matmul.py``). Three kinds of it, built by ``build_mlp``:

* ``dense``: plain ``keras.layers.Dense`` layers, the floor;
* ``masked``: ``MaskedDense`` layers (dense kernel, mask and momentum: its step does the same
  dense work at every sparsity), holding the same connections as the sparse model
  (``rigl.to_masked`` of it): the model ``rigl.sparsify`` makes, without drawing its masks by a
  permutation of all n² positions (49 s per 16,384² layer on this CPU);
* ``sparse``: ``rigl.SparseDense`` layers built directly (no dense kernel ever exists).

Per width, in one process, every kind is trained by the same compiled ``model.fit`` step on
one in-memory batch, in interleaved windows (``time_steps``): untimed steps per model (the
first traces), then ``rounds`` rounds of one window per model, the order rotating every round
as in the overhead mode. A window's figure is its mean step (each step timed from the start
of its batch to its end); a model's step time is the median over rounds. Ratios ("speedup"
of sparse storage: the other's step over sparse's) are the ratio of the medians; their spread
is the min-max of the same ratio taken round by round (``compare``). Windows last at least
``window_seconds`` (their step count is set from the second untimed step), so a 2 ms sparse
step and a 5 s dense step are both timed over a comparable stretch.

Then the update time (``time_updates``: one SET and one RigL update of every sparse layer,
RigL's gradient included, called directly after an untimed tracing call) and its ratio to a
step of the same model, in sparse storage at each sparsity and in masked storage at the
highest (its update scores every dense position whatever the sparsity); the crossover
sparsity (``crossover``); the peak memory of the dense model, of masked storage (highest
sparsity: the same variables at every sparsity) and of sparse storage at each sparsity, each
in a fresh process (``memory.measure``), run before the width's models are built here.

Widths above ``full_max_width`` are measured lighter, to keep the run affordable (at 16,384
a dense step takes seconds, one masked model holds 4.5 GB and one update of it scores 2.7e8
positions): masked storage's step at the highest sparsity only (it does the same dense work
at every sparsity), and every sparse row compared with it; the update of sparse storage at
the highest sparsity only, masked storage's not at all (its cost grows as n², like the
narrower widths' figure). The report says which.

Where new things plug in: a new kind of storage is one more branch of ``build_mlp`` and of
``KINDS``; a new per-width figure is a key of ``_width_result``'s rows, rendered in
``report``.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time

import keras

import rigl
from rigl.experiments.benchmark import harness, memory, overhead, workloads

KINDS = ("dense", "masked", "sparse")
SPARSE_LAYERS = ("h1", "h2")
OUTPUT_LAYER = "out"
NUM_CLASSES = 10
UPDATE_METHODS = ("set", "rigl")
# Drop fraction stays at about its initial 0.3: the end of the schedule is far away.
_UPDATE_END_STEP = 10**6
# The longest window, in steps, whatever the step time.
_MAX_WINDOW_STEPS = 10_000
# A first step (tracing included) this many windows long means the step itself lasts a window
# (tracing this MLP takes seconds at most): no second untimed step to size the window.
_SLOW_FIRST_STEP = 10


@dataclasses.dataclass(frozen=True)
class StorageSettings:
    """What the storage mode measures, and for how long.

    Attributes:
        widths: the MLP widths ``n``.
        sparsities: the sparse layers' sparsities, in [0, 1); measured in increasing order.
        batch: examples per step.
        rounds: timed windows per model.
        window_seconds: the shortest timed window; its step count is set per model from the
            untimed window.
        window_steps: timed steps per window for every model (None: from ``window_seconds``).
        warmup_steps: untimed steps at the start of every window.
        full_max_width: the widest width measured in full; wider ones are measured lighter
            (the module docstring says how).
        update_methods: the methods whose update is timed (of ``UPDATE_METHODS``).
        update_repeats: timed calls of each update (after one untimed tracing call).
        memory_steps: training steps of each peak-memory process (0: memory not measured).
        seed: seed of the models and the batch.
    """

    widths: tuple = (1024, 4096, 16384)
    sparsities: tuple = (0.9, 0.95, 0.98, 0.99, 0.999)
    batch: int = 128
    rounds: int = 3
    window_seconds: float = 1.0
    window_steps: int | None = None
    warmup_steps: int = 0
    full_max_width: int = 4096
    update_methods: tuple = UPDATE_METHODS
    update_repeats: int = 1
    memory_steps: int = 2
    seed: int = 0

    def __post_init__(self):
        def _ints(name, values, minimum=1):
            for value in values:
                if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                    raise ValueError(f"{name}: expected integers >= {minimum}, got {value!r}.")

        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "update_methods", tuple(self.update_methods))
        for sparsity in self.sparsities:
            if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not (
                    0 <= sparsity < 1):
                raise ValueError(f"sparsities: expected numbers in [0, 1), got {sparsity!r}.")
        object.__setattr__(self, "sparsities", tuple(sorted(float(s) for s in self.sparsities)))
        if not self.widths or not self.sparsities:
            raise ValueError(f"{'widths' if not self.widths else 'sparsities'}: give at "
                             "least one.")
        _ints("widths", self.widths)
        for name in ("widths", "sparsities"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: {values} repeats a value.")
        _ints("batch", [self.batch])
        _ints("rounds", [self.rounds])
        _ints("full_max_width", [self.full_max_width], 0)
        _ints("update_repeats", [self.update_repeats])
        _ints("memory_steps", [self.memory_steps], 0)
        _ints("warmup_steps", [self.warmup_steps], 0)
        if self.window_steps is not None:
            _ints("window_steps", [self.window_steps])
        if not self.window_seconds > 0:
            raise ValueError(f"window_seconds: expected a positive number, got "
                             f"{self.window_seconds!r}.")
        for method in self.update_methods:
            if method not in UPDATE_METHODS:
                raise ValueError(f"update_methods: unknown {method!r}; allowed: "
                                 f"{UPDATE_METHODS}.")

    def masked_sparsities(self, width: int) -> tuple:
        """The sparsities at which masked storage's step is timed at ``width``."""
        return self.sparsities if width <= self.full_max_width else self.sparsities[-1:]

    def update_sparsities(self, width: int) -> dict:
        """Kind -> the sparsities at which its update is timed at ``width``."""
        if not self.update_methods:
            return {"masked": (), "sparse": ()}
        if width <= self.full_max_width:
            return {"masked": self.sparsities[-1:], "sparse": self.sparsities}
        return {"masked": (), "sparse": self.sparsities[-1:]}


# ------------------------------------------------------------------------------ models


def build_mlp(kind: str, width: int, sparsity: float | None = None, seed: int = 0):
    """The MLP ``width -> width -> width -> 10`` of ``kind`` (of ``KINDS``), not compiled.

    Args:
        kind: ``"dense"``, ``"masked"`` (``rigl.MaskedDense`` hidden layers: ``rigl.to_masked``
            of the sparse model) or ``"sparse"`` (``rigl.SparseDense`` hidden layers, built
            directly).
        width: ``n``.
        sparsity: of the hidden layers (not for ``"dense"``).
        seed: of the initial weights and the sparse positions.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: unknown {kind!r}; allowed: {KINDS}.")
    if (sparsity is None) != (kind == "dense"):
        raise ValueError(f"sparsity: {kind!r} takes "
                         + ("none." if kind == "dense" else "one, got None."))
    if kind == "masked":
        return rigl.to_masked(build_mlp("sparse", width, sparsity, seed))
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((width,), name="x")
    x = inputs
    for name in SPARSE_LAYERS:
        if kind == "sparse":
            layer = rigl.SparseDense(width, sparsity=sparsity, activation="relu", name=name,
                                     seed=seed)
        else:
            layer = keras.layers.Dense(width, activation="relu", name=name)
        x = layer(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, name=OUTPUT_LAYER)(x))


def compile_mlp(model, jit_compile: bool):
    """Compiles ``model`` as every kind is (``harness.compile_model``: SGD with momentum 0.9).
    ``SparseDense`` has no XLA form: Keras compiles a sparse model without XLA whatever is
    asked (the result records ``model.jit_compile``)."""
    return harness.compile_model(model, keras, jit_compile)


def nnz(width: int, sparsity: float) -> int:
    """Stored entries of the sparse layers of the MLP (what ``rigl.sparsify`` keeps)."""
    size = width * width
    return len(SPARSE_LAYERS) * (size - rigl.distributions.num_zeros(sparsity, size))


# ------------------------------------------------------------------------------ timing


@dataclasses.dataclass
class StepRunner:
    """One model whose step is timed.

    Attributes:
        kind: of ``KINDS``.
        sparsity: of its sparse layers (None for dense).
        model: the compiled model.
        window_steps: timed steps per window (set by ``time_steps``).
        windows: mean step seconds of each timed window.
    """

    kind: str
    sparsity: float | None
    model: object
    window_steps: int = 0
    windows: list = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return self.kind if self.sparsity is None else f"{self.kind}@{self.sparsity}"


class _StepTimer(keras.callbacks.Callback):
    """Times of every batch's start and end. Its ``on_train_batch_end`` makes Keras call the
    batch-end hooks synchronously, so the end stamp follows the step's result."""

    def __init__(self):
        super().__init__()
        self.begins, self.ends = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.begins.append(time.perf_counter())

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def time_window(model, data, steps: int, warmup: int = 0) -> list[float]:
    """Trains ``model`` for ``warmup + steps`` steps in one ``fit``; the seconds of each of
    the last ``steps``, from the start of its batch to its end."""
    timer = _StepTimer()
    model.fit(data, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[timer],
              shuffle=False)
    return [end - begin for begin, end in zip(timer.begins[warmup:], timer.ends[warmup:])]


def window_steps_for(step_seconds: float, window_seconds: float) -> int:
    """Steps of a window lasting at least ``window_seconds`` (at most ``_MAX_WINDOW_STEPS``)."""
    return max(1, min(_MAX_WINDOW_STEPS, math.ceil(window_seconds / max(step_seconds, 1e-9))))


def time_steps(runners: list[StepRunner], data, settings: StorageSettings, log=None) -> None:
    """Untimed steps per runner (the first traces, a second sets its window's length), then
    ``settings.rounds`` rounds of one window per runner, the order rotating every round.
    Fills each runner's ``window_steps`` and ``windows``.

    The second untimed step is skipped when the window length is fixed
    (``settings.window_steps``) or the first step lasted ``_SLOW_FIRST_STEP`` windows or
    more (the window is then one step)."""
    for runner in runners:
        (first,) = time_window(runner.model, data, 1)
        if settings.window_steps:
            runner.window_steps = settings.window_steps
        elif first >= _SLOW_FIRST_STEP * settings.window_seconds:
            runner.window_steps = 1
        else:
            (second,) = time_window(runner.model, data, 1)
            runner.window_steps = window_steps_for(second, settings.window_seconds)
    for r in range(settings.rounds):
        shift = r % len(runners)
        for runner in runners[shift:] + runners[:shift]:
            steps = time_window(runner.model, data, runner.window_steps, settings.warmup_steps)
            runner.windows.append(sum(steps) / len(steps))
        if log:
            log(f"storage: round {r + 1}/{settings.rounds} done")


def compare(numerator: list[float], denominator: list[float]) -> dict:
    """``numerator``'s median step over ``denominator``'s, with the spread of the same ratio
    taken round by round (the lists are per round, in the same order)."""
    per_round = [a / b for a, b in zip(numerator, denominator)]
    return {"ratio": harness.median(numerator) / harness.median(denominator),
            "ratio_min": min(per_round), "ratio_max": max(per_round)}


def _step_row(runner: StepRunner) -> dict:
    return {"step_ms": 1e3 * harness.median(runner.windows),
            "window_step_ms": [1e3 * w for w in runner.windows],
            "window_steps": runner.window_steps,
            "jit_compile": bool(runner.model.jit_compile)}


# ----------------------------------------------------------------------------- updates


def time_updates(model, batch, methods=UPDATE_METHODS, repeats: int = 1) -> dict:
    """Median seconds of one update of every sparse layer of ``model`` by each method.

    For each method: an updater bound to the compiled ``model`` (ΔT = 1), one untimed call
    (it traces), then ``repeats`` timed calls; RigL's gradient on ``batch`` is timed apart
    (``overhead.time_mask_updates``). The model's connections change.

    Returns:
        method -> ``{"update_s": the whole update (RigL's gradient included),
        "gradient_s": RigL's gradient, or None}``.
    """
    out = {}
    for method in methods:
        updater = rigl.get_updater(method, update_freq=1, end_step=_UPDATE_END_STEP)
        updater.bind(model, model.optimizer)
        runner = harness.Runner(method, model, [], update_freq=1, updater=updater)
        updater.update(harness.read_iterations(model), batch=batch)  # traces
        selection_s, gradient_s = overhead.time_mask_updates(runner, batch, repeats, 1)
        out[method] = {"update_s": selection_s + (gradient_s or 0.0), "gradient_s": gradient_s}
    return out


# ---------------------------------------------------------------------------- crossover


def crossover(sparsities, speedups) -> dict:
    """Where sparse storage starts to win, from its speedups at increasing ``sparsities``.

    It wins at a sparsity where its speedup (the other's step over its own) exceeds 1. The
    crossover is the lowest measured sparsity from which it wins at every higher measured one
    too; it lies between that sparsity and the measured one below it.

    Returns:
        ``wins_from`` (that sparsity; None if it loses at the highest), ``between`` (the
        two measured sparsities the crossover lies between; None when it wins everywhere or
        never), ``wins_at`` (every sparsity where it wins) and ``text`` (one sentence).
    """
    sparsities, speedups = list(sparsities), list(speedups)
    if len(sparsities) != len(speedups) or not sparsities:
        raise ValueError(f"speedups: expected one per sparsity ({len(sparsities)}), got "
                         f"{len(speedups)}.")
    if sparsities != sorted(sparsities):
        raise ValueError(f"sparsities: expected increasing, got {sparsities}.")
    wins = [s > 1 for s in speedups]
    first = len(wins)
    while first > 0 and wins[first - 1]:
        first -= 1
    wins_at = [s for s, w in zip(sparsities, wins) if w]
    if first == len(wins):
        text = (f"loses at {_join(sparsities)}: the crossover, if any, lies above "
                f"{sparsities[-1]}" if not wins_at else
                f"loses at the highest sparsity measured, {sparsities[-1]} (wins only at "
                f"{_join(wins_at)})")
        return {"wins_from": None, "between": None, "wins_at": wins_at, "text": text}
    if first == 0:
        return {"wins_from": sparsities[0], "between": None, "wins_at": wins_at,
                "text": f"wins at every measured sparsity, from {sparsities[0]}: the "
                        f"crossover lies below {sparsities[0]}"}
    text = (f"wins from {sparsities[first]} on, loses at {sparsities[first - 1]}: the "
            f"crossover lies between {sparsities[first - 1]} and {sparsities[first]}")
    lower_wins = [s for s in wins_at if s < sparsities[first]]
    if lower_wins:
        text += f" (it also wins at {_join(lower_wins)})"
    return {"wins_from": sparsities[first], "between": [sparsities[first - 1],
                                                        sparsities[first]],
            "wins_at": wins_at, "text": text}


def _join(values) -> str:
    values = [str(v) for v in values]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


# -------------------------------------------------------------------------------- mode


def _width_result(width: int, settings: StorageSettings, jit_compile: bool, log) -> dict:
    """Memory, steps, updates and crossover at one width (see the module docstring)."""
    started = time.perf_counter()
    # Memory first: the processes measuring it must not share the machine with this width's
    # models, whose memory this process keeps after they are gone (TensorFlow's allocations
    # are not all given back).
    figures = _measure_memory(width, settings, jit_compile, log)
    batch, data = workloads.synthetic_batch(settings.batch, (width,), NUM_CLASSES,
                                            settings.seed)
    log(f"storage: width {width}: building the models")
    runners = [StepRunner("dense", None, build_mlp("dense", width, seed=settings.seed))]
    runners += [StepRunner("masked", s, build_mlp("masked", width, s, settings.seed))
                for s in settings.masked_sparsities(width)]
    runners += [StepRunner("sparse", s, build_mlp("sparse", width, s, settings.seed))
                for s in settings.sparsities]
    for runner in runners:
        compile_mlp(runner.model, jit_compile)
    log(f"storage: width {width}: timing {len(runners)} models, {settings.rounds} rounds")
    time_steps(runners, data, settings, log)
    result = _step_rows(width, runners)
    runners = runners[1:]  # the dense model is not needed any more: free its memory
    gc.collect()
    _add_updates(result, runners, batch, settings, log)
    del runners
    keras.backend.clear_session()
    gc.collect()
    result["crossover"] = {
        key: crossover(settings.sparsities, [row[key]["ratio"] for row in result["sparse"]])
        for key in ("vs_masked", "vs_dense")}
    for kind, rows in (("dense", [result["dense"]]), ("masked", result["masked"]),
                       ("sparse", result["sparse"])):
        for row in rows:
            if (kind, row.get("sparsity")) in figures:
                row["memory"] = figures[kind, row.get("sparsity")]
    result["seconds"] = time.perf_counter() - started
    return result


def _measure_memory(width: int, settings: StorageSettings, jit_compile: bool, log) -> dict:
    """(kind, sparsity) -> ``memory.measure``'s figures: the dense model, masked storage at
    the highest sparsity only (the same variables and work at every sparsity, and each
    process costs seconds of imports), sparse storage at each."""
    if not settings.memory_steps:
        return {}
    configs = [("dense", None), ("masked", settings.sparsities[-1])]
    configs += [("sparse", s) for s in settings.sparsities]
    figures = {}
    for kind, sparsity in configs:
        log(f"storage: width {width}: peak memory of {kind}"
            + ("" if sparsity is None else f"@{sparsity}"))
        figures[kind, sparsity] = memory.measure(kind, width, sparsity, settings.batch,
                                                 settings.memory_steps, jit_compile,
                                                 settings.seed)
    return figures


def _step_rows(width: int, runners: list[StepRunner]) -> dict:
    """The step rows of one width: dense, masked (with its ratio to dense) and sparse (with
    its speedups over masked storage, at the same sparsity if timed there, and dense)."""
    dense = runners[0]
    masked = {r.sparsity: r for r in runners if r.kind == "masked"}
    result = {"width": width, "layers": f"{width} → {width} → {width} → {NUM_CLASSES}",
              "masked_sparsities": list(masked), "dense": _step_row(dense),
              "masked": [], "sparse": []}
    for runner in runners[1:]:
        row = {"sparsity": runner.sparsity, "nnz": nnz(width, runner.sparsity),
               **_step_row(runner)}
        if runner.kind == "masked":
            row["to_dense"] = compare(runner.windows, dense.windows)
        else:
            reference = masked.get(runner.sparsity) or next(iter(masked.values()))
            row.update(masked_sparsity=reference.sparsity,
                       vs_masked=compare(reference.windows, runner.windows),
                       vs_dense=compare(dense.windows, runner.windows))
        result[runner.kind].append(row)
    return result


def _add_updates(result: dict, runners: list[StepRunner], batch, settings: StorageSettings,
                 log) -> None:
    """Times the updates of ``settings.update_sparsities`` into the rows of ``result``.
    Masked storage's at one sparsity at most: it scores and selects over every dense
    position whatever the sparsity, and each model traces its own update."""
    chosen = settings.update_sparsities(result["width"])
    for runner in runners:
        if runner.sparsity in chosen.get(runner.kind, ()):
            log(f"storage: width {result['width']}: updates of {runner.name}")
            row = next(r for r in result[runner.kind] if r["sparsity"] == runner.sparsity)
            row["updates"] = _update_rows(runner.model, batch, settings, row["step_ms"])


def _update_rows(model, batch, settings: StorageSettings, step_ms: float) -> dict:
    timed = time_updates(model, batch, settings.update_methods, settings.update_repeats)
    return {method: {"update_ms": 1e3 * t["update_s"],
                     "gradient_ms": None if t["gradient_s"] is None else 1e3 * t["gradient_s"],
                     "update_to_step": 1e3 * t["update_s"] / step_ms}
            for method, t in timed.items()}


def storage_mode(settings: StorageSettings, jit_compile: str, log) -> dict:
    """Runs the storage mode (see the module docstring); its JSON-able result.

    Args:
        settings: widths, sparsities and durations.
        jit_compile: ``--jit_compile``: ``"true"`` compiles the dense and masked models with
            XLA (the sparse ones cannot be: Keras compiles them without and each row records
            what ran); ``"auto"`` and ``"false"`` compile none with XLA.
        log: prints a progress line.
    """
    xla = jit_compile == "true"
    started = time.perf_counter()
    widths = [_width_result(width, settings, xla, log) for width in settings.widths]
    return {
        "model": f"MLP n → n → n → {NUM_CLASSES} on inputs of width n",
        "sparse_layers": list(SPARSE_LAYERS), "dense_layers": [OUTPUT_LAYER],
        "optimizer": "SGD(0.01, momentum=0.9)", "batch": settings.batch,
        "sparsities": list(settings.sparsities), "rounds": settings.rounds,
        "window_seconds": settings.window_seconds, "window_steps": settings.window_steps,
        "warmup_steps": settings.warmup_steps,
        "full_max_width": settings.full_max_width,
        "update_methods": list(settings.update_methods),
        "update_repeats": settings.update_repeats, "memory_steps": settings.memory_steps,
        "widths": widths, "seconds": time.perf_counter() - started,
    }

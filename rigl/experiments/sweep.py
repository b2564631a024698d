"""Sweeps: a grid of training runs, run one subprocess each, resumed, aggregated and plotted.

A sweep file binds one configurable, ``sweep``, in gin syntax::

    sweep.name = 'fashion_mnist_lenet300'
    sweep.base_configs = ['gin_configs/mnist_lenet300.gin']
    sweep.bindings = ["training.dataset='fashion_mnist'", "training.epochs=30"]
    sweep.methods = ['static', 'set', 'rigl']
    sweep.sparsities = [0.9, 0.95]
    sweep.distributions = ['uniform']
    sweep.seeds = [0, 1, 2]
    sweep.multipliers = [1]
    sweep.extra_runs = [
        {'method': 'dense'},
        {'method': 'rigl', 'sparsities': [0.95], 'multipliers': [2, 5]},
    ]

The grid is methods × distributions × sparsities × multipliers × seeds, except that
``dense`` ignores sparsity and distribution (one run per multiplier and seed) and
``small_dense`` keeps only the first distribution (its width matches a parameter count, which
uniform and ERK share). Each ``extra_runs`` entry is a dict expanded the same way; its keys
(``method``/``methods``, ``sparsity``/``sparsities``, ``distribution``/``distributions``,
``multiplier``/``multipliers``, ``seed``/``seeds``, ``tag``, ``bindings``) default to the
sweep's own values, so an entry names only what differs. ``None`` as a sparsity or
distribution leaves it to the configs (e.g. a run with a ``training.custom_sparsity`` map).

The file is read with gin's parser but never enters gin's global configuration, and every run
is a subprocess of ``scripts/train.py``: gin bindings, Keras/TF global state (random seeds,
op determinism, logical devices that can only be configured once per process,
``tfds.testing.mock_data`` patches) and memory cannot leak from one run into the next, a run
that crashes does not end the sweep, and each run is the very command a user would type
(listed by ``--dry_run``, logged in its ``train.log``).

Every run has a workdir ``<root>/<run name>/`` with a readable, deterministic name such as
``rigl_erk_s0.95_x2_seed1``; a run whose ``results.json`` exists is skipped, and an
unfinished one resumes from its checkpoint (``scripts/train.py`` resumes by itself).
``sweep_run.json`` in the workdir records the configs and bindings the run was started with,
and a sweep refuses to continue a workdir whose recorded command differs from the current one.

Aggregation copies every finished run's ``results.json`` (and ``sweep_run.json``) to
``<results_dir>/runs/<run name>/`` and builds ``table.md``, ``table.csv`` and the plots from
those copies alone, so committed results reproduce their tables.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import glob
import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from gin import config_parser

# Methods whose runs ignore some grid axes (see the module docstring).
NO_SPARSITY_METHODS = ("dense",)
FIRST_DISTRIBUTION_METHODS = ("small_dense",)
# Row and legend order: the paper's tables.
METHOD_ORDER = ("dense", "small_dense", "static", "snip", "set", "snfs", "rigl", "prune")
METHOD_LABELS = {"dense": "Dense", "small_dense": "Small-Dense", "static": "Static",
                 "snip": "SNIP", "set": "SET", "snfs": "SNFS", "rigl": "RigL",
                 "prune": "Pruning"}
DISTRIBUTION_ORDER = (None, "uniform", "er", "erk")

RESULTS_FILE = "results.json"
SPEC_FILE = "sweep_run.json"
LOG_FILE = "train.log"
SWEEP_LOG_FILE = "sweep_log.jsonl"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SEED_SUFFIX = re.compile(r"_seed-?\d+$")


class SweepError(ValueError):
    """An invalid sweep file, or a workdir that does not belong to the current sweep."""


# ----------------------------------------------------------------------------------------
# Definition and grid expansion


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of a sweep: a cell of the grid and a seed.

    Attributes:
        method: training method (``training.method``, via ``gin_configs/methods/<m>.gin``).
        seed: ``training.seed``.
        sparsity, distribution: bound as ``training.sparsity`` / ``training.distribution``
            unless None (then the configs decide).
        multiplier: ``training.multiplier`` (the paper's "Mx" runs).
        tag: optional label distinguishing cells that differ only in ``bindings``.
        bindings: extra gin bindings of this run (from an ``extra_runs`` entry).
    """

    method: str
    seed: int
    sparsity: float | None = None
    distribution: str | None = None
    multiplier: float = 1
    tag: str | None = None
    bindings: tuple[str, ...] = ()

    @property
    def cell(self) -> str:
        """The run's name without its seed: runs of one cell are averaged together."""
        parts = [self.method]
        if self.distribution is not None:
            parts.append(self.distribution)
        if self.sparsity is not None:
            parts.append(f"s{self.sparsity:g}")
        if self.multiplier != 1:
            parts.append(f"x{self.multiplier:g}")
        if self.tag:
            parts.append(self.tag)
        return "_".join(parts)

    @property
    def name(self) -> str:
        """Deterministic, readable workdir name, e.g. ``rigl_erk_s0.95_x2_seed1``."""
        return f"{self.cell}_seed{self.seed}"

    def training_bindings(self) -> list[str]:
        """The gin bindings that make this cell and seed (after the sweep's own bindings)."""
        bindings = []
        if self.sparsity is not None:
            bindings.append(f"training.sparsity={self.sparsity!r}")
        if self.distribution is not None:
            bindings.append(f"training.distribution={self.distribution!r}")
        bindings.append(f"training.multiplier={self.multiplier!r}")
        bindings.append(f"training.seed={self.seed!r}")
        return bindings + list(self.bindings)


_ENTRY_KEYS = {"method": "methods", "sparsity": "sparsities", "distribution": "distributions",
               "multiplier": "multipliers", "seed": "seeds"}


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A sweep definition (see the module docstring for the file format).

    Attributes:
        name: the sweep's name (default folder names: ``workdirs/sweeps/<name>``,
            ``results/<name>``).
        base_configs: gin files of every run, repository-relative, before the method's file.
        bindings: gin bindings of every run, before the cell's own.
        methods, sparsities, distributions, seeds, multipliers: the grid.
        extra_runs: dicts, each expanded as a small grid of its own (defaults: the sweep's).
    """

    name: str
    base_configs: tuple[str, ...] = ()
    bindings: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    sparsities: tuple[float | None, ...] = (None,)
    distributions: tuple[str | None, ...] = (None,)
    seeds: tuple[int, ...] = (0,)
    multipliers: tuple[float, ...] = (1,)
    extra_runs: tuple[Mapping, ...] = ()

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise SweepError(f"sweep.name: expected a folder-safe name, got {self.name!r}.")
        for field in ("base_configs", "bindings"):
            value = getattr(self, field)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise SweepError(f"sweep.{field}: expected a list of strings, got {value!r}.")
            object.__setattr__(self, field, tuple(value))
        for field in ("methods", "sparsities", "distributions", "seeds", "multipliers"):
            object.__setattr__(self, field, _check_axis(f"sweep.{field}", field,
                                                        getattr(self, field)))
        if isinstance(self.extra_runs, Mapping) or not all(
                isinstance(e, Mapping) for e in self.extra_runs):
            raise SweepError("sweep.extra_runs: expected a list of dicts, got "
                             f"{self.extra_runs!r}.")
        object.__setattr__(self, "extra_runs", tuple(dict(e) for e in self.extra_runs))
        if not self.methods and not self.extra_runs:
            raise SweepError("sweep.methods: empty (and no sweep.extra_runs): nothing to run.")
        self.runs()  # validates the extra runs and the uniqueness of run names

    def runs(self) -> list[Run]:
        """Every run, seed-major (all cells of the first seed first, so an interrupted sweep
        has whole seeds to aggregate), without duplicates."""
        runs = _expand(self.methods, self.sparsities, self.distributions, self.multipliers,
                       self.seeds, None, ())
        for i, entry in enumerate(self.extra_runs):
            runs += _expand_entry(f"sweep.extra_runs[{i}]", entry, self)
        unique: dict[str, Run] = {}
        for run in runs:
            if run.name in unique and unique[run.name] != run:
                raise SweepError(
                    f"sweep.extra_runs: two different runs are both named {run.name!r} "
                    f"({unique[run.name]} and {run}); give one of them a 'tag'.")
            unique.setdefault(run.name, run)
        order = {name: i for i, name in enumerate(unique)}
        return sorted(unique.values(), key=lambda r: (r.seed, order[r.name]))


def _check_axis(where: str, axis: str, values) -> tuple:
    if isinstance(values, str | int | float) or values is None:
        raise SweepError(f"{where}: expected a list, got {values!r}.")
    values = tuple(values)
    for v in values:
        if axis == "methods":
            ok = isinstance(v, str) and re.match(r"^[a-z0-9_]+$", v)
        elif axis == "sparsities":
            ok = v is None or (isinstance(v, int | float) and not isinstance(v, bool)
                               and 0 <= v < 1)
        elif axis == "distributions":
            ok = v is None or (isinstance(v, str) and re.match(r"^[a-z0-9_]+$", v))
        elif axis == "seeds":
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:  # multipliers
            ok = isinstance(v, int | float) and not isinstance(v, bool) and v > 0
        if not ok:
            expected = {"methods": "method names", "sparsities": "numbers in [0, 1) or None",
                        "distributions": "distribution names or None", "seeds": "integers",
                        "multipliers": "positive numbers"}[axis]
            raise SweepError(f"{where}: expected {expected}, got {v!r}.")
    if axis != "methods" and not values:
        raise SweepError(f"{where}: empty.")
    if len(set(values)) != len(values):
        raise SweepError(f"{where}: repeated values in {list(values)}.")
    if axis == "multipliers":
        values = tuple(int(v) if float(v).is_integer() else float(v) for v in values)
    return values


def _expand(methods, sparsities, distributions, multipliers, seeds, tag, bindings) -> list[Run]:
    runs = []
    for method in methods:
        dists, sparse = distributions, sparsities
        if method in NO_SPARSITY_METHODS:
            dists, sparse = (None,), (None,)
        elif method in FIRST_DISTRIBUTION_METHODS:
            dists = distributions[:1]
        for distribution in dists:
            for sparsity in sparse:
                for multiplier in multipliers:
                    for seed in seeds:
                        runs.append(Run(method, seed, sparsity, distribution, multiplier,
                                        tag, tuple(bindings)))
    return runs


def _expand_entry(where: str, entry: Mapping, sweep: Sweep) -> list[Run]:
    allowed = set(_ENTRY_KEYS) | set(_ENTRY_KEYS.values()) | {"tag", "bindings"}
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise SweepError(f"{where}: unknown keys {unknown}; allowed: {sorted(allowed)}.")
    axes = {}
    for single, plural in _ENTRY_KEYS.items():
        if single in entry and plural in entry:
            raise SweepError(f"{where}: give {single!r} or {plural!r}, not both.")
        if single in entry:
            axes[plural] = _check_axis(f"{where}[{single!r}]", plural, [entry[single]])
        elif plural in entry:
            axes[plural] = _check_axis(f"{where}[{plural!r}]", plural, entry[plural])
        else:
            axes[plural] = getattr(sweep, plural)
    if not axes["methods"]:
        raise SweepError(f"{where}: no method.")
    tag = entry.get("tag")
    if tag is not None and (not isinstance(tag, str) or not _NAME.match(tag)):
        raise SweepError(f"{where}['tag']: expected a folder-safe name, got {tag!r}.")
    bindings = entry.get("bindings", ())
    if isinstance(bindings, str) or not all(isinstance(b, str) for b in bindings):
        raise SweepError(f"{where}['bindings']: expected a list of strings, got {bindings!r}.")
    return _expand(axes["methods"], axes["sparsities"], axes["distributions"],
                   axes["multipliers"], axes["seeds"], tag, bindings)


class _NoReferences(config_parser.ParserDelegate):
    """Sweep files hold literals only: no ``@configurable`` references, no ``%MACROS``."""

    def configurable_reference(self, scoped_configurable_name, evaluate):
        raise SweepError(f"sweep file: configurable references (@{scoped_configurable_name}) "
                         "are not allowed; use literals.")

    def macro(self, macro_name):
        raise SweepError(f"sweep file: macros (%{macro_name}) are not allowed; use literals.")


def parse_sweep(text_or_file) -> Sweep:
    """A ``Sweep`` from gin-syntax text (or an open file) binding only ``sweep.*``.

    gin's parser reads it; gin's global configuration is not touched.
    """
    fields = {f.name for f in dataclasses.fields(Sweep)}
    values = {}
    source = io.StringIO(text_or_file) if isinstance(text_or_file, str) else text_or_file
    for statement in config_parser.ConfigParser(source, _NoReferences()):
        where = f"line {statement.location.line_num}"
        if isinstance(statement, config_parser.BlockDeclaration) and (
                statement.selector == "sweep" and not statement.scope):
            continue
        if not isinstance(statement, config_parser.BindingStatement):
            raise SweepError(f"sweep file, {where}: only `sweep.<field> = <value>` bindings "
                             f"are allowed, not {type(statement).__name__}.")
        if statement.scope or statement.selector != "sweep":
            key = "/".join(filter(None, [statement.scope, statement.selector]))
            raise SweepError(f"sweep file, {where}: {key}.{statement.arg_name}: only sweep.* "
                             "is allowed here (training bindings go in sweep.bindings).")
        if statement.arg_name not in fields:
            raise SweepError(f"sweep file, {where}: unknown sweep.{statement.arg_name}; "
                             f"allowed: {sorted(fields)}.")
        if statement.arg_name in values:
            raise SweepError(f"sweep file, {where}: sweep.{statement.arg_name} bound twice.")
        values[statement.arg_name] = statement.value
    if "name" not in values:
        raise SweepError("sweep file: sweep.name is required.")
    return Sweep(**values)


def load_sweep(path: str) -> Sweep:
    """The ``Sweep`` defined by the file at ``path``."""
    with open(path) as f:
        return parse_sweep(f)


# ----------------------------------------------------------------------------------------
# Planning and running


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """A run with its workdir, its ``scripts/train.py`` command and its current status."""

    run: Run
    workdir: str
    configs: tuple[str, ...]
    bindings: tuple[str, ...]
    argv: tuple[str, ...]
    committed: str | None = None

    @property
    def status(self) -> str:
        """"finished" (results.json in the workdir, or a copy of it under the results
        folder, ``committed``), "started" (workdir exists) or "pending"."""
        status = run_status(self.workdir)
        if status != "finished" and self.committed is not None:
            return "finished"
        return status

    def spec(self) -> dict:
        """What ``sweep_run.json`` records (and what a resumed workdir must match)."""
        return {"name": self.run.name, "cell": self.run.cell, "method": self.run.method,
                "sparsity": self.run.sparsity, "distribution": self.run.distribution,
                "multiplier": self.run.multiplier, "seed": self.run.seed,
                "tag": self.run.tag, "configs": list(self.configs),
                "bindings": list(self.bindings)}


def run_status(workdir: str) -> str:
    """"finished" if ``results.json`` exists, "started" if the workdir has anything in it,
    else "pending"."""
    if os.path.exists(os.path.join(workdir, RESULTS_FILE)):
        return "finished"
    if os.path.isdir(workdir) and os.listdir(workdir):
        return "started"
    return "pending"


def method_config(method: str) -> str:
    """Repository-relative gin file of ``method``."""
    return os.path.join("gin_configs", "methods", f"{method}.gin")


def plan(sweep: Sweep, root: str, repo_root: str, extra_bindings: Sequence[str] = (),
         python: str = sys.executable, results_dir: str | None = None) -> list[PlannedRun]:
    """Every run of ``sweep`` with its workdir under ``root`` and its command.

    Commands run with ``repo_root`` as working directory (configs are repository-relative,
    as their includes are); ``root`` is made absolute. With ``results_dir``, a run whose
    results were already collected there (``<results_dir>/runs/<run>/results.json``, e.g.
    committed by an earlier session whose workdirs are gone) counts as finished; a
    collected copy made with other configs or bindings raises ``SweepError``.
    """
    root = os.path.abspath(root)
    for config in sweep.base_configs:
        if not os.path.exists(os.path.join(repo_root, config)):
            raise SweepError(f"sweep.base_configs: {config} not found under {repo_root}.")
    planned = []
    for run in sweep.runs():
        configs = (*sweep.base_configs, method_config(run.method))
        if not os.path.exists(os.path.join(repo_root, configs[-1])):
            raise SweepError(f"sweep: unknown method {run.method!r} (no {configs[-1]}).")
        bindings = (*sweep.bindings, *run.training_bindings(), *extra_bindings)
        workdir = os.path.join(root, run.name)
        argv = (python, os.path.join("scripts", "train.py"),
                *[f"--gin_config={c}" for c in configs],
                *[f"--gin_bindings={b}" for b in bindings], f"--workdir={workdir}")
        committed = None
        if results_dir is not None:
            committed = _committed_copy(os.path.join(results_dir, "runs", run.name),
                                        configs, bindings)
        planned.append(PlannedRun(run, workdir, configs, bindings, argv, committed))
    return planned


def _committed_copy(folder: str, configs: Sequence[str], bindings: Sequence[str]) -> str | None:
    """``folder`` if it holds a collected results.json made with ``configs`` and
    ``bindings``; None if it holds none; ``SweepError`` if it was made with others."""
    if not os.path.exists(os.path.join(folder, RESULTS_FILE)):
        return None
    spec_path = os.path.join(folder, SPEC_FILE)
    old = {}
    if os.path.exists(spec_path):
        with open(spec_path) as f:
            old = json.load(f)
    if not _same_configuration(old, configs, bindings):
        raise SweepError(f"{folder} holds results made with configs {old.get('configs')} "
                         f"bindings {old.get('bindings')}, the sweep now asks for "
                         f"{list(configs)} {list(bindings)}; delete that folder to train the "
                         f"run again, or restore the sweep file it was made with.")
    return folder


def _same_configuration(spec: Mapping, configs: Sequence[str], bindings: Sequence[str]) -> bool:
    """Whether a recorded ``sweep_run.json`` was made with ``configs`` and ``bindings``."""
    return (spec.get("configs"), spec.get("bindings")) == (list(configs), list(bindings))


def _has_progress(workdir: str) -> bool:
    """Whether a workdir holds results or a checkpoint (something a rerun would reuse)."""
    checkpoints = os.path.join(workdir, "checkpoints")
    return os.path.exists(os.path.join(workdir, RESULTS_FILE)) or (
        os.path.isdir(checkpoints) and bool(os.listdir(checkpoints)))


def check_workdirs(planned: Sequence[PlannedRun]) -> None:
    """Raises ``SweepError`` naming every workdir with results or a checkpoint made with other
    configs or bindings than the current sweep's (reusing them would mix two configurations).
    A workdir that failed before its first checkpoint is simply started again."""
    mismatched = []
    for p in planned:
        path = os.path.join(p.workdir, SPEC_FILE)
        if not os.path.exists(path) or not _has_progress(p.workdir):
            continue
        with open(path) as f:
            old = json.load(f)
        if not _same_configuration(old, p.configs, p.bindings):
            mismatched.append(f"{p.run.name}: started with configs {old.get('configs')} "
                              f"bindings {old.get('bindings')}, now {list(p.configs)} "
                              f"{list(p.bindings)}")
    if mismatched:
        raise SweepError("workdirs started with another configuration (delete them or use "
                         "another --root):\n  " + "\n  ".join(mismatched))


def subprocess_launcher(argv: Sequence[str], log_path: str, cwd: str,
                        env: Mapping[str, str] | None = None) -> int:
    """Runs ``argv`` in ``cwd`` with ``env`` added to the environment, appending its output
    to ``log_path``; its exit code."""
    full_env = dict(os.environ)
    full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    full_env.update(env or {})
    with open(log_path, "a") as log:
        log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {command_line(argv, env)}\n")
        log.flush()
        return subprocess.run(list(argv), cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                              stdout=log, stderr=subprocess.STDOUT).returncode


def thread_env(jobs: int, cores: int | None = None) -> dict[str, str]:
    """Environment that splits ``cores`` (default: this machine's) between ``jobs``
    concurrent TensorFlow processes: TensorFlow reads its thread-pool sizes from
    ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS``. Empty for one job (TensorFlow's
    own defaults)."""
    if jobs == 1:
        return {}
    threads = max(1, (cores or os.cpu_count() or 1) // jobs)
    return {"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": str(threads)}


@dataclasses.dataclass
class SweepReport:
    """Names of the runs a ``run_sweep`` call trained, skipped, saw fail or left for later."""

    ran: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
    left: list[str] = dataclasses.field(default_factory=list)


_LOG_LOCK = threading.Lock()


def _log_event(root: str, **event) -> None:
    with _LOG_LOCK, open(os.path.join(root, SWEEP_LOG_FILE), "a") as f:
        f.write(json.dumps({"time": time.time(), **event}) + "\n")


def run_sweep(planned: Sequence[PlannedRun], root: str, repo_root: str,
              max_runs: int | None = None,
              launcher: Callable[..., int] = subprocess_launcher,
              echo: Callable[[str], None] = print, jobs: int = 1) -> SweepReport:
    """Trains every unfinished run of ``planned``, in order; skips finished ones.

    A failed run is reported and the sweep goes on. Every start, end, failure and skip is
    appended to ``<root>/sweep_log.jsonl``.

    Args:
        planned: from ``plan``.
        root: the sweep's folder of workdirs (for the event log).
        repo_root: working directory of the training commands.
        max_runs: train at most this many runs (finished ones do not count), leave the rest.
        launcher: ``(argv, log_path, cwd, env=...) -> exit code``; a subprocess by default.
        echo: where progress lines go.
        jobs: how many runs train at the same time, the machine's cores split between them
            (``thread_env``). On a 2-core CPU, two single-threaded runs of a small model
            finish sooner than two runs one after the other, each on both cores.
    """
    if not isinstance(jobs, int) or jobs < 1:
        raise SweepError(f"jobs must be a positive integer, got {jobs!r}.")
    check_workdirs(planned)
    os.makedirs(root, exist_ok=True)
    report = SweepReport()
    width = len(str(len(planned)))
    env = thread_env(jobs)
    lock = threading.Lock()

    def train(prefix: str, p: PlannedRun, status: str) -> None:
        os.makedirs(p.workdir, exist_ok=True)
        with open(os.path.join(p.workdir, SPEC_FILE), "w") as f:
            json.dump(p.spec(), f, indent=2)
        echo(f"{prefix} {'resuming' if status == 'started' else 'training'} ...")
        _log_event(root, run=p.run.name, event="start", resumed=status == "started")
        started = time.time()
        log_path = os.path.join(p.workdir, LOG_FILE)
        try:
            code = launcher(p.argv, log_path, repo_root, env=env)
        except KeyboardInterrupt:  # the run resumes from its checkpoint next time
            _log_event(root, run=p.run.name, event="interrupted",
                       seconds=time.time() - started)
            raise
        seconds = time.time() - started
        if code == 0 and run_status(p.workdir) == "finished":
            with lock:
                report.ran.append(p.run.name)
            _log_event(root, run=p.run.name, event="done", seconds=seconds)
            with open(os.path.join(p.workdir, RESULTS_FILE)) as f:
                results = json.load(f)
            metric = _metric_key(results)
            echo(f"{prefix} done in {seconds:.0f} s, {metric} {results.get(metric, 'n/a')}")
        else:
            with lock:
                report.failed.append(p.run.name)
            _log_event(root, run=p.run.name, event="failed", seconds=seconds, code=code)
            echo(f"{prefix} FAILED (exit code {code}) after {seconds:.0f} s; last lines of "
                 f"{log_path}:\n" + _tail(log_path))

    pool = concurrent.futures.ThreadPoolExecutor(jobs) if jobs > 1 else None
    futures, to_train = [], 0
    try:
        for i, p in enumerate(planned, start=1):
            prefix = f"[{i:{width}}/{len(planned)}] {p.run.name}:"
            status = p.status
            if status == "finished":
                report.skipped.append(p.run.name)
                _log_event(root, run=p.run.name, event="skip")
                echo(f"{prefix} finished, skipped")
                continue
            if max_runs is not None and to_train >= max_runs:
                report.left.append(p.run.name)
                continue
            to_train += 1
            if pool is None:
                train(prefix, p, status)
            else:
                futures.append(pool.submit(train, prefix, p, status))
        for future in futures:
            future.result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if report.left:
        echo(f"--max_runs={max_runs}: {len(report.left)} run(s) left for a later invocation.")
    return report


def _tail(path: str, lines: int = 15) -> str:
    if not os.path.exists(path):
        return "    (no log)"
    with open(path, errors="replace") as f:
        return "\n".join("    " + line for line in f.read().splitlines()[-lines:])


def command_line(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """``argv`` as a shell command, quoted readably (``"--x='a'"`` rather than shlex's
    ``'--x='"'"'a'"'"''``), after ``NAME=value`` assignments of ``env`` if given."""
    def quote(arg):
        if shlex.quote(arg) == arg or any(c in arg for c in '"$`\\!'):
            return shlex.quote(arg)
        return f'"{arg}"'
    assignments = [f"{name}={shlex.quote(value)}" for name, value in sorted((env or {}).items())]
    return " ".join(assignments + [quote(arg) for arg in argv])


def describe_plan(planned: Sequence[PlannedRun], env: Mapping[str, str] | None = None) -> str:
    """One block per run: status, name and the exact command (for ``--dry_run``), with the
    environment ``env`` the sweep adds (``thread_env(jobs)``: thread counts change the
    floating-point order of reductions, so a run is reproduced with the same ones)."""
    counts: dict[str, int] = {}
    lines = []
    for p in planned:
        status = p.status
        counts[status] = counts.get(status, 0) + 1
        lines.append(f"[{status}] {p.run.name}\n    {command_line(p.argv, env)}")
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return "\n".join(lines + [f"{len(planned)} runs: {summary}"])


# ----------------------------------------------------------------------------------------
# Collecting and aggregating results


def _metric_key(results: Mapping) -> str:
    return "test_accuracy" if "test_accuracy" in results else "test_bits_per_char"


def collect(planned: Sequence[PlannedRun], results_dir: str) -> list[str]:
    """Copies every finished run's results.json and sweep_run.json to
    ``<results_dir>/runs/<run name>/``; the names copied."""
    copied = []
    for p in planned:
        if run_status(p.workdir) != "finished":  # not trained here (or a collected copy)
            continue
        target = os.path.join(results_dir, "runs", p.run.name)
        os.makedirs(target, exist_ok=True)
        for name in (RESULTS_FILE, SPEC_FILE):
            if os.path.exists(os.path.join(p.workdir, name)):
                shutil.copyfile(os.path.join(p.workdir, name), os.path.join(target, name))
        copied.append(p.run.name)
    return copied


def record_from_results(results: Mapping, spec: Mapping | None = None,
                        run_name: str | None = None) -> dict:
    """One flat record of a run for aggregation.

    The cell (method, distribution, nominal sparsity, multiplier, tag) comes from the sweep's
    ``spec`` when given (results.json reports sparsity 0 for Small-Dense, whose nominal
    sparsity is the one it is matched to), else from ``results``.
    """
    spec = dict(spec or {})
    name = spec.get("name") or run_name or "run"
    if spec:
        cell = {k: spec.get(k) for k in ("method", "distribution", "sparsity", "tag")}
        cell["multiplier"] = spec.get("multiplier", results.get("multiplier", 1))
    else:
        cell = {"method": results["method"], "distribution": results.get("distribution"),
                "sparsity": (results.get("sparsity")
                             if results["method"] not in NO_SPARSITY_METHODS else None),
                "multiplier": results.get("multiplier", 1), "tag": None}
    metric = _metric_key(results)
    record = {"run": name, "cell": spec.get("cell") or _SEED_SUFFIX.sub("", name),
              **cell, "seed": results.get("seed", spec.get("seed")),
              "metric": metric, "value": results[metric]}
    for key in (f"{metric}_at_best_validation", f"best_{metric}", "measured_sparsity",
                "train_flops_ratio", "inference_flops_ratio", "size_mb", "train_seconds",
                "steps"):
        if key in results:
            record[key] = results[key]
    if results.get("mlp_units"):
        record["mlp_units"] = results["mlp_units"]
    return record


def load_records(results_dir: str) -> list[dict]:
    """Records of every ``<results_dir>/runs/*/results.json``."""
    records = []
    for path in sorted(glob.glob(os.path.join(results_dir, "runs", "*", RESULTS_FILE))):
        folder = os.path.dirname(path)
        with open(path) as f:
            results = json.load(f)
        spec = None
        if os.path.exists(os.path.join(folder, SPEC_FILE)):
            with open(os.path.join(folder, SPEC_FILE)) as f:
                spec = json.load(f)
        records.append(record_from_results(results, spec, os.path.basename(folder)))
    return records


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1; None for a single value)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else None)


def _order(value, order) -> tuple:
    return (order.index(value), "") if value in order else (len(order), str(value))


def _row_key(row: Mapping) -> tuple:
    sparsity = row["sparsity"]
    return (_order(row["method"], METHOD_ORDER), _order(row["distribution"], DISTRIBUTION_ORDER),
            (sparsity is None, sparsity or 0.0), row["multiplier"], row["tag"] or "", row["cell"])


def aggregate(records: Sequence[Mapping]) -> list[dict]:
    """Rows of mean ± std over seeds, one per cell, ordered by method, distribution,
    sparsity, multiplier.

    Each row: cell, method, distribution, sparsity (nominal; None = set by the configs),
    multiplier, tag, seeds (count), seed_list, metric, mean, std (sample std, ddof=1; None
    with one seed), the mean and std at best validation when the runs report them, and the
    means of measured_sparsity, train_flops_ratio, inference_flops_ratio, train_seconds, steps.
    """
    cells: dict[str, list[Mapping]] = {}
    for record in records:
        cells.setdefault(record["cell"], []).append(record)
    rows = []
    for cell, group in cells.items():
        first = group[0]
        for key in ("method", "distribution", "sparsity", "multiplier", "tag", "metric"):
            if any(r[key] != first[key] for r in group):
                raise SweepError(f"cell {cell}: runs disagree on {key}: "
                                 f"{sorted({str(r[key]) for r in group})}.")
        seeds = sorted(r["seed"] for r in group)
        if len(set(seeds)) != len(seeds):
            raise SweepError(f"cell {cell}: seed repeated in {seeds}.")
        mean, std = _mean_std([r["value"] for r in group])
        row = {"cell": cell, **{k: first[k] for k in (
            "method", "distribution", "sparsity", "multiplier", "tag", "metric")},
            "seeds": len(group), "seed_list": seeds, "mean": mean, "std": std}
        best_key = f"{first['metric']}_at_best_validation"
        if all(best_key in r for r in group):
            row["best_validation_mean"], row["best_validation_std"] = _mean_std(
                [r[best_key] for r in group])
        if all(f"best_{first['metric']}" in r for r in group):
            row["best_mean"], row["best_std"] = _mean_std(
                [r[f"best_{first['metric']}"] for r in group])
        units = [r.get("mlp_units") for r in group]
        if all(units) and len({len(u) for u in units}) == 1:
            row["mlp_units"] = [float(np.mean(column)) for column in zip(*units)]
        for key in ("measured_sparsity", "train_flops_ratio", "inference_flops_ratio",
                    "size_mb", "train_seconds", "steps"):
            if all(key in r for r in group):
                row[key] = float(np.mean([r[key] for r in group]))
        rows.append(row)
    return sorted(rows, key=_row_key)


def _is_accuracy(rows) -> bool:
    metrics = {row["metric"] for row in rows}
    if len(metrics) > 1:
        raise SweepError(f"results mix metrics {sorted(metrics)}: aggregate them separately.")
    return metrics == {"test_accuracy"}


def _format_value(mean, std, accuracy: bool) -> str:
    if mean is None:
        return ""
    scale, digits = (100.0, 2) if accuracy else (1.0, 4)
    text = f"{mean * scale:.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def _format_number(value, spec: str, suffix: str = "") -> str:
    return "" if value is None else format(value, spec) + suffix


def _label(row: Mapping, with_multiplier: bool = True) -> str:
    label = METHOD_LABELS.get(row["method"], row["method"])
    if row["distribution"] is not None:
        label += f" ({row['distribution']})"
    if row.get("tag"):
        label += f" [{row['tag']}]"
    if with_multiplier and row["multiplier"] != 1:
        label += f" {row['multiplier']:g}x"
    return label


CSV_COLUMNS = ("cell", "method", "distribution", "sparsity", "multiplier", "tag", "seeds",
               "seed_list", "metric", "mean", "std", "best_validation_mean",
               "best_validation_std", "best_mean", "best_std", "measured_sparsity",
               "train_flops_ratio", "inference_flops_ratio", "size_mb", "mlp_units",
               "train_seconds", "steps")


def table_markdown(rows: Sequence[Mapping], title: str) -> str:
    """The rows as a Markdown table (accuracy in %)."""
    accuracy = _is_accuracy(rows)
    metric = "test accuracy (%)" if accuracy else "test bits/char"
    best = any("best_validation_mean" in row for row in rows)
    best_test = any("best_mean" in row for row in rows)
    units = any("mlp_units" in row for row in rows)
    size = any("size_mb" in row for row in rows)
    tags = any(row["tag"] for row in rows)
    header = ["method", "distribution", "sparsity", "multiplier", *(["tag"] if tags else []),
              "seeds", metric, *([f"{metric} at best validation"] if best else []),
              *([f"best {metric} during training"] if best_test else []),
              "measured sparsity", "train FLOPs", "inference FLOPs",
              *(["size (MB)"] if size else []), *(["units kept"] if units else [])]
    lines = [f"# {title}", "",
             f"{sum(row['seeds'] for row in rows)} runs in {len(rows)} cells. Mean ± sample "
             "standard deviation (ddof=1) over seeds of the final test score"
             + (", of the test score at the best validation score" if best else "")
             + (", of the best test score over the evaluations during training (an "
                "optimistic figure: it selects on the test set)" if best_test else "")
             + "; FLOPs are fractions of the dense model's (training: the whole run, "
             "multiplier included)"
             + ("; size: the sparse model's bytes as the paper counts them (rigl.flops)"
                if size else "")
             + ("; units kept: inputs, hidden units and outputs that keep at least one "
                "connection (hidden: both an incoming and an outgoing one), mean over seeds"
                if units else "") + ".", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        if row["sparsity"] is not None:
            sparsity = f"{row['sparsity']:g}"
        else:
            sparsity = "—" if row["method"] in NO_SPARSITY_METHODS else "custom"
        cells = [METHOD_LABELS.get(row["method"], row["method"]), row["distribution"] or "—",
                 sparsity, f"{row['multiplier']:g}x", *([row["tag"] or ""] if tags else []),
                 str(row["seeds"]), _format_value(row["mean"], row["std"], accuracy)]
        if best:
            cells.append(_format_value(row.get("best_validation_mean"),
                                       row.get("best_validation_std"), accuracy))
        if best_test:
            cells.append(_format_value(row.get("best_mean"), row.get("best_std"), accuracy))
        cells += [_format_number(row.get("measured_sparsity"), ".4f"),
                  _format_number(row.get("train_flops_ratio"), ".3f", "x"),
                  _format_number(row.get("inference_flops_ratio"), ".3f", "x")]
        if size:
            cells.append(_format_number(row.get("size_mb"), ".4f"))
        if units:
            cells.append("-".join(f"{u:.0f}" for u in row["mlp_units"])
                         if row.get("mlp_units") else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(rows: Sequence[Mapping], results_dir: str, title: str) -> tuple[str, str]:
    """``table.md`` and ``table.csv`` in ``results_dir``; their paths."""
    os.makedirs(results_dir, exist_ok=True)
    md_path, csv_path = (os.path.join(results_dir, n) for n in ("table.md", "table.csv"))
    with open(md_path, "w") as f:
        f.write(table_markdown(rows, title))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else
                                 " ".join(map(str, row[k])) if k in ("seed_list", "mlp_units")
                                 else row[k])
                             for k in CSV_COLUMNS})
    return md_path, csv_path


# ----------------------------------------------------------------------------------------
# Plots (matplotlib's object API on Agg canvases: no pyplot, no global state)


def _figure(**kwargs):
    """A figure on its own Agg canvas: PNGs without pyplot or a global backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def _color(method: str) -> str:
    palette = ["#000000", "#7f7f7f", "#1f77b4", "#9467bd", "#2ca02c", "#8c564b", "#d62728",
               "#ff7f0e"]
    index = METHOD_ORDER.index(method) if method in METHOD_ORDER else (
        len(METHOD_ORDER) + sum(map(ord, method)))
    return palette[index % len(palette)]


_LINESTYLES = {"uniform": "-", "erk": "--", "er": "-.", None: ":"}


def _x_sparsity(row: Mapping) -> float | None:
    if row["sparsity"] is not None:
        return row["sparsity"]
    return row.get("measured_sparsity")


def plot_accuracy_vs_sparsity(rows: Sequence[Mapping], path: str, title: str = "") -> str:
    """Test score vs sparsity, one line per method/distribution/multiplier, error bars over
    seeds; dense rows are horizontal lines with a ±std band. Writes a PNG at ``path``."""
    accuracy = _is_accuracy(rows)
    scale = 100.0 if accuracy else 1.0
    fig = _figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.add_subplot()
    series: dict[tuple, list[Mapping]] = {}
    for row in rows:
        if row["method"] in NO_SPARSITY_METHODS or _x_sparsity(row) is None:
            continue
        series.setdefault((row["method"], row["distribution"], row["multiplier"], row["tag"]),
                          []).append(row)
    xs = set()
    for (method, distribution, multiplier, _), group in series.items():
        group = sorted(group, key=_x_sparsity)
        x = [_x_sparsity(r) for r in group]
        xs.update(x)
        ax.errorbar(x, [r["mean"] * scale for r in group],
                    yerr=[(r["std"] or 0.0) * scale for r in group], capsize=3,
                    color=_color(method), linestyle=_LINESTYLES.get(distribution, "-"),
                    marker="o" if multiplier == 1 else "s", label=_label(group[0]))
    for row in rows:
        if row["method"] in NO_SPARSITY_METHODS:
            mean, std = row["mean"] * scale, (row["std"] or 0.0) * scale
            ax.axhline(mean, color=_color(row["method"]), linestyle="--", linewidth=1,
                       label=_label(row))
            if std:
                ax.axhspan(mean - std, mean + std, color=_color(row["method"]), alpha=0.1)
    if xs:
        ax.set_xticks(sorted(xs))
        ax.set_xticklabels([f"{x:g}" for x in sorted(xs)])
    ax.set_xlabel("sparsity")
    ax.set_ylabel("test accuracy (%)" if accuracy else "test bits/char")
    ax.set_title(title + (": " if title else "") + "test score vs sparsity "
                 "(mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.savefig(path, dpi=120)
    return path


def plot_accuracy_vs_flops(rows: Sequence[Mapping], path: str, title: str = "") -> str:
    """Test score vs training FLOPs (fraction of dense, ``train_flops_ratio``), the paper's
    Figure 2-right: one panel per sparsity, one marker per method and multiplier (labelled
    "2x", ...), joined across multipliers, error bars over seeds; dense as a reference."""
    accuracy = _is_accuracy(rows)
    scale = 100.0 if accuracy else 1.0
    rows = [r for r in rows if r.get("train_flops_ratio") is not None]
    dense = [r for r in rows if r["method"] in NO_SPARSITY_METHODS]
    sparse = [r for r in rows if r["method"] not in NO_SPARSITY_METHODS]
    panels = sorted({r["sparsity"] for r in sparse}, key=lambda s: (s is None, s or 0.0)) or [
        None]
    fig = _figure(figsize=(4.5 * len(panels) + 2.0, 4.5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, sparsity in zip(axes, panels):
        series: dict[tuple, list[Mapping]] = {}
        for row in sparse:
            if row["sparsity"] == sparsity:
                series.setdefault((row["method"], row["distribution"], row["tag"]),
                                  []).append(row)
        for row in dense:
            series.setdefault((row["method"], None, row["tag"]), []).append(row)
        for (method, distribution, _), group in series.items():
            group = sorted(group, key=lambda r: r["multiplier"])
            x = [r["train_flops_ratio"] for r in group]
            y = [r["mean"] * scale for r in group]
            ax.errorbar(x, y, yerr=[(r["std"] or 0.0) * scale for r in group], capsize=3,
                        color=_color(method), linestyle=_LINESTYLES.get(distribution, "-"),
                        marker="*" if method in NO_SPARSITY_METHODS else "o", markersize=7,
                        label=_label(group[0], with_multiplier=False))
            for xi, yi, r in zip(x, y, group):
                ax.annotate(f"{r['multiplier']:g}x", (xi, yi), textcoords="offset points",
                            xytext=(4, 4), fontsize="x-small", color=_color(method))
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs (fraction of dense 1x)")
        ax.set_ylabel("test accuracy (%)" if accuracy else "test bits/char")
        ax.set_title("sparsity " + ("custom" if sparsity is None else f"{sparsity:g}"))
        ax.grid(alpha=0.3, which="both")
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="outside right upper",
               fontsize="small")
    fig.suptitle(title + (": " if title else "") + "test score vs training FLOPs")
    fig.savefig(path, dpi=120)
    return path


def load_mask_snapshots(snapshot_dir: str, layer: str = "fc1") -> list[tuple[int, np.ndarray]]:
    """``(step, mask of layer)`` of every ``step_<N>.npz`` in ``snapshot_dir``, by step."""
    snapshots = []
    for path in glob.glob(os.path.join(snapshot_dir, "step_*.npz")):
        match = re.fullmatch(r"step_(\d+)\.npz", os.path.basename(path))
        if not match:
            continue
        with np.load(path) as masks:
            keys = [k for k in masks.files if k == layer] or [
                k for k in masks.files if k.split("/")[0] == layer]
            if len(keys) != 1:
                raise KeyError(f"{path}: no single mask of layer {layer!r}; masks: "
                               f"{sorted(masks.files)}.")
            snapshots.append((int(match.group(1)), np.asarray(masks[keys[0]])))
    if not snapshots:
        raise FileNotFoundError(f"no step_<N>.npz mask snapshots in {snapshot_dir}.")
    return sorted(snapshots, key=lambda s: s[0])


def connectivity_image(mask: np.ndarray, image_shape: Sequence[int] | None = None) -> np.ndarray:
    """Active connections per input of a first-layer mask (inputs × units), as an image
    (a square by default: 784 inputs -> 28 × 28)."""
    if mask.ndim != 2:
        raise ValueError(f"expected a (inputs, units) mask, got shape {mask.shape}.")
    counts = (np.asarray(mask) != 0).sum(axis=1)
    if image_shape is None:
        side = math.isqrt(counts.size)
        if side * side != counts.size:
            raise ValueError(f"{counts.size} inputs are not a square image: give image_shape.")
        image_shape = (side, side)
    return counts.reshape(image_shape)


def plot_connectivity(snapshot_dir: str, path: str, layer: str = "fc1",
                      steps: Sequence[int] | None = None, max_panels: int = 8,
                      image_shape: Sequence[int] | None = None, title: str = "") -> str:
    """The first layer's connectivity at several points of training, as images in one PNG.

    Each panel shows, per input pixel, how many of the layer's units it connects to
    (``mask.sum(axis=1).reshape(28, 28)`` for LeNet-300-100's ``fc1``), on one color scale.

    Args:
        snapshot_dir: folder of ``step_<N>.npz`` files (``<workdir>/mask_snapshots``).
        path: output PNG.
        layer: masked-weight name of the first layer.
        steps: which snapshot steps to show; default all, or ``max_panels`` of them evenly
            spaced (first and last included).
        image_shape: input image shape; default the square of the input count.
    """
    snapshots = load_mask_snapshots(snapshot_dir, layer)
    if steps is not None:
        available = {s for s, _ in snapshots}
        missing = sorted(set(steps) - available)
        if missing:
            raise ValueError(f"steps {missing} have no snapshot; available: {sorted(available)}.")
        snapshots = [s for s in snapshots if s[0] in set(steps)]
    elif len(snapshots) > max_panels:
        keep = np.unique(np.round(np.linspace(0, len(snapshots) - 1, max_panels)).astype(int))
        snapshots = [snapshots[i] for i in keep]
    images = [(step, connectivity_image(mask, image_shape), int((mask != 0).sum()))
              for step, mask in snapshots]
    vmax = max(1, max(int(image.max()) for _, image, _ in images))
    columns = min(len(images), 4)
    rows = math.ceil(len(images) / columns)
    fig = _figure(figsize=(2.6 * columns + 1.0, 2.8 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(images):]:
        ax.set_axis_off()
    shown = None
    for ax, (step, image, active) in zip(axes, images):
        shown = ax.imshow(image, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(f"step {step:,}\n{active:,} connections", fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(shown, ax=list(axes), shrink=0.8,
                 label=f"active {layer} connections per input")
    fig.suptitle(title or f"{layer} connectivity per input pixel")
    fig.savefig(path, dpi=120)
    return path


def aggregate_sweep(sweep: Sweep, planned: Sequence[PlannedRun], results_dir: str,
                    echo: Callable[[str], None] = print) -> dict[str, str]:
    """Copies finished runs' results into ``results_dir/runs``, then writes ``table.md``,
    ``table.csv``, ``accuracy_vs_sparsity.png``, ``accuracy_vs_train_flops.png`` from every
    copy there, and ``connectivity/<run>.png`` for runs whose workdir holds fc1 mask
    snapshots. Returns the written paths by kind."""
    collect(planned, results_dir)
    records = load_records(results_dir)
    if not records:
        echo(f"no finished runs yet: nothing to aggregate into {results_dir}.")
        return {}
    rows = aggregate(records)
    md, csv_path = write_tables(rows, results_dir, sweep.name)
    written = {"table.md": md, "table.csv": csv_path}
    written["accuracy_vs_sparsity"] = plot_accuracy_vs_sparsity(
        rows, os.path.join(results_dir, "accuracy_vs_sparsity.png"), sweep.name)
    written["accuracy_vs_train_flops"] = plot_accuracy_vs_flops(
        rows, os.path.join(results_dir, "accuracy_vs_train_flops.png"), sweep.name)
    for p in planned:
        snapshots = os.path.join(p.workdir, "mask_snapshots")
        if not glob.glob(os.path.join(snapshots, "step_*.npz")):
            continue
        try:
            os.makedirs(os.path.join(results_dir, "connectivity"), exist_ok=True)
            written[f"connectivity/{p.run.name}"] = plot_connectivity(
                snapshots, os.path.join(results_dir, "connectivity", f"{p.run.name}.png"),
                title=f"{p.run.name}: fc1 connectivity per input pixel")
        except (KeyError, ValueError) as error:  # no fc1, or not an image input
            echo(f"{p.run.name}: no connectivity plot ({error})")
    echo(f"{len(records)} runs in {len(rows)} cells -> {results_dir}")
    return written

"""Running a sweep: one workdir and one ``scripts/train.py`` subprocess per run, resumable.

Every run is a subprocess of ``scripts/train.py``: gin bindings, Keras/TF global state
(random seeds, op determinism, logical devices that can only be configured once per process,
``tfds.testing.mock_data`` patches) and memory cannot leak from one run into the next, a run
that crashes does not end the sweep, and each run is the very command a user would type
(listed by ``--dry_run``, logged in its ``train.log``).

Every run has a workdir ``<root>/<run name>/`` with a readable, deterministic name such as
``rigl_erk_s0.95_x2_seed1``; a run whose ``results.json`` exists is skipped, and an
unfinished one resumes from its checkpoint (``scripts/train.py`` resumes by itself).
``sweep_run.json`` in the workdir records the configs and bindings the run was started with,
and a sweep refuses to continue a workdir whose recorded command differs from the current one.
``--jobs=N`` trains N runs at a time, the cores split between them (``thread_env``); every
start, end, failure and skip is appended to ``<root>/sweep_log.jsonl``, and every end prints
where the sweep stands (``SweepProgress``: runs finished out of all, failures, elapsed, ETA).

Where new things plug in: another way to launch a run (a cluster scheduler, say) is a
``launcher`` callable given to ``run_sweep``, with the signature of ``subprocess_launcher``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from rigl.experiments.reporting import format_duration
from rigl.experiments.sweep.grid import Run, Sweep, SweepError

# What a run's workdir (and its collected copy) holds, and the sweep's event log.
RESULTS_FILE = "results.json"
SPEC_FILE = "sweep_run.json"
LOG_FILE = "train.log"
SWEEP_LOG_FILE = "sweep_log.jsonl"


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


class SweepProgress:
    """Where a sweep stands: one line each time a run ends, e.g.::

        sweep: 5/12 runs finished (3 skipped as already finished), 1 failed, 6 to train;
        elapsed 12m03s, ETA 35m10s

    (one line). The ETA: each run still to train costs the mean duration of the runs that
    finished in this sweep (of the failed ones while none has finished), a run in flight
    what is left of that mean, and ``jobs`` runs train at a time (fewer when fewer are
    left). Durations are wall-clock, from ``clock``.

    Args:
        total: runs in the sweep.
        skipped: runs already finished before it started (not trained again).
        to_train: runs this invocation trains (``max_runs`` may leave others for later).
        jobs: runs trained at the same time.
        clock: seconds from a monotonic clock (``time.monotonic``; tests pass a fake one).
    """

    def __init__(self, total: int, skipped: int, to_train: int, jobs: int = 1,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.skipped, self.to_train, self.jobs = total, skipped, to_train, jobs
        self.clock, self.began = clock, clock()
        self.durations: dict[str, list[float]] = {"finished": [], "failed": []}
        self._running: dict[str, float] = {}

    def header(self) -> str:
        """What the sweep is about to do (printed before its first run)."""
        later = self.total - self.skipped - self.to_train
        return (f"sweep: {self.total} runs, {self.skipped} already finished, "
                f"{self.to_train} to train ({self.jobs} at a time)"
                + (f", {later} left for later" if later else ""))

    def started(self, name: str) -> None:
        """Run ``name`` starts training."""
        self._running[name] = self.clock()

    def ended(self, name: str, ok: bool) -> str:
        """Run ``name`` ended, finished (``ok``) or failed; returns the progress line."""
        seconds = self.clock() - self._running.pop(name)
        self.durations["finished" if ok else "failed"].append(seconds)
        return self.line()

    def eta(self) -> float | None:
        """Seconds until the runs to train have ended: None before any has ended, 0 when
        none is left."""
        ended = self.durations["finished"] or self.durations["failed"]
        left = self.to_train - sum(len(d) for d in self.durations.values())
        if not ended or left <= 0:
            return None if left > 0 else 0.0
        mean, now = sum(ended) / len(ended), self.clock()
        work = (left - len(self._running)) * mean + sum(
            max(0.0, mean - (now - began)) for began in self._running.values())
        return work / min(self.jobs, left)

    def line(self) -> str:
        """Runs finished (skipped ones included) out of all, failed, still to train, left
        for later, elapsed time and ETA."""
        trained, failed = len(self.durations["finished"]), len(self.durations["failed"])
        left = self.to_train - trained - failed
        later = self.total - self.skipped - self.to_train
        eta = self.eta()
        return (f"sweep: {self.skipped + trained}/{self.total} runs finished ({self.skipped} "
                f"skipped as already finished), {failed} failed, {left} to train"
                + (f", {later} left for later" if later else "")
                + f"; elapsed {format_duration(self.clock() - self.began)}"
                + (f", ETA {format_duration(eta)}" if left and eta is not None else ""))


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
    # Statuses first, so the progress lines know from the start how many runs are to train.
    statuses = [p.status for p in planned]
    unfinished = sum(status != "finished" for status in statuses)
    progress = SweepProgress(len(planned), len(planned) - unfinished,
                             unfinished if max_runs is None else min(max_runs, unfinished),
                             jobs)
    echo(progress.header())

    def train(prefix: str, p: PlannedRun, status: str) -> None:
        os.makedirs(p.workdir, exist_ok=True)
        with open(os.path.join(p.workdir, SPEC_FILE), "w") as f:
            json.dump(p.spec(), f, indent=2)
        echo(f"{prefix} {'resuming' if status == 'started' else 'training'} ...")
        _log_event(root, run=p.run.name, event="start", resumed=status == "started")
        started = time.time()
        with lock:
            progress.started(p.run.name)
        log_path = os.path.join(p.workdir, LOG_FILE)
        try:
            code = launcher(p.argv, log_path, repo_root, env=env)
        except KeyboardInterrupt:  # the run resumes from its checkpoint next time
            _log_event(root, run=p.run.name, event="interrupted",
                       seconds=time.time() - started)
            raise
        seconds = time.time() - started
        if code == 0 and run_status(p.workdir) == "finished":
            _log_event(root, run=p.run.name, event="done", seconds=seconds)
            with open(os.path.join(p.workdir, RESULTS_FILE)) as f:
                results = json.load(f)
            metric = metric_key(results)
            with lock:  # the run's line and the progress line together, in order
                report.ran.append(p.run.name)
                echo(f"{prefix} done in {seconds:.0f} s, {metric} {results.get(metric, 'n/a')}")
                echo(progress.ended(p.run.name, ok=True))
        else:
            _log_event(root, run=p.run.name, event="failed", seconds=seconds, code=code)
            with lock:
                report.failed.append(p.run.name)
                echo(f"{prefix} FAILED (exit code {code}) after {seconds:.0f} s; last lines "
                     f"of {log_path}:\n" + _tail(log_path))
                echo(progress.ended(p.run.name, ok=False))

    pool = concurrent.futures.ThreadPoolExecutor(jobs) if jobs > 1 else None
    futures, to_train = [], 0
    try:
        for i, (p, status) in enumerate(zip(planned, statuses), start=1):
            prefix = f"[{i:{width}}/{len(planned)}] {p.run.name}:"
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


def metric_key(results: Mapping) -> str:
    """The score a run's ``results.json`` reports: ``test_accuracy`` or, for language
    models, ``test_bits_per_char``."""
    return "test_accuracy" if "test_accuracy" in results else "test_bits_per_char"

#!/usr/bin/env python
"""Runs one multi-worker training on this machine: N local processes of scripts/train.py.

    python scripts/launch_local.py --workers=2 -- \\
        --gin_config=gin_configs/mnist_lenet300_rigl.gin --workdir=/tmp/mw

Everything after ``--`` goes to every worker's ``scripts/train.py`` unchanged, except that
``--gin_bindings=training.strategy='multi_worker'`` is appended unless the arguments already
bind ``training.strategy``. Each worker is started with the launcher's own Python (so the
venv's), listens on 127.0.0.1 at a free port (``--port_base=P`` uses P, P+1, ... instead)
and gets its own ``TF_CONFIG``. Their output is prefixed with ``[worker i]``. The launcher
waits for all of them; when one fails it stops the others and exits with the failing
worker's status (128 + N for a worker ended by signal N); Ctrl-C or SIGTERM stops them all.
Worker 0 is the chief: it writes the run's files into --workdir; worker i > 0 writes its
own into ``<workdir>/workers/worker_<i>/``. This is for testing and for trying a cluster
configuration, not for speed: the workers share this machine's cores.

On real machines, start the same ``scripts/train.py`` command on every machine, each with
``training.strategy='multi_worker'`` and a ``TF_CONFIG`` listing every worker's
``host:port`` in the same order, that differs only in its own ``task.index``. On the first
of two machines::

    export TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                       "task": {"type": "worker", "index": 0}}'

and on the second the same with ``"index": 1``. Every worker must be started (the first
ones wait for the rest), the ports must be reachable between the machines and every machine
needs the dataset (``dataset.data_dir``). --workdir may be local to each machine or shared:
worker 0 writes the run's files there, worker i > 0 its checkpoints and logs under
``<workdir>/workers/worker_<i>/``; resuming needs each worker to find its own files again.

The functions are importable (``free_ports``, ``tf_config``, ``sets_strategy``,
``worker_command``, ``launch``) for tests and for other launchers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from absl import app, flags

HOST = "127.0.0.1"
TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
STRATEGY_BINDING = "training.strategy='multi_worker'"
# How long a worker may take to end after SIGTERM before it is killed.
GRACE_SECONDS = 10.0

WORKERS = flags.DEFINE_integer("workers", 2, "Number of worker processes.", lower_bound=1)
PORT_BASE = flags.DEFINE_integer("port_base", None, "Worker i listens on port_base + i "
                                 "(default: free ports chosen by the system).")
SCRIPT = flags.DEFINE_string("script", TRAIN_SCRIPT, "The script every worker runs (tests "
                             "replace it with a stub).")

# A gin binding of training.strategy, possibly scoped ("scope/training.strategy = ...").
_STRATEGY = re.compile(r"(^|[\s/;])training\.strategy\s*=", re.MULTILINE)
# Line ends, \r included: a live progress line rewritten with \r becomes one line per update
# (interleaved with other workers' lines, rewriting in place would garble them).
_LINE_END = re.compile(rb"\r\n|\r|\n")


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 now (the system's choice for port 0).

    They are released before the workers bind them, so another program could take one in
    between; the launcher then fails with that worker's error.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((HOST, 0))
            sockets.append(s)  # held until all are chosen, so the ports differ
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(addresses: Sequence[str], index: int) -> str:
    """The ``TF_CONFIG`` of worker ``index`` in a cluster of ``addresses`` (host:port)."""
    return json.dumps({"cluster": {"worker": list(addresses)},
                       "task": {"type": "worker", "index": index}})


def _binding_values(args: Sequence[str]):
    """The values of every --gin_bindings flag in ``args`` (``--f=v``, ``--f v``, one dash)."""
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in ("--gin_bindings", "-gin_bindings"):
            if eq:
                yield value
            elif i + 1 < len(args):
                yield args[i + 1]


def sets_strategy(args: Sequence[str]) -> bool:
    """Whether the train.py arguments ``args`` bind ``training.strategy`` themselves."""
    return any(_STRATEGY.search(value) for value in _binding_values(args))


def worker_command(args: Sequence[str], script: str = TRAIN_SCRIPT) -> list[str]:
    """The command every worker runs: this Python, ``script``, ``args`` and, unless they set
    one, the multi_worker strategy binding (after theirs, so it is not overridden)."""
    extra = [] if sets_strategy(args) else [f"--gin_bindings={STRATEGY_BINDING}"]
    return [sys.executable, script, *args, *extra]


class _Stopped(Exception):
    """The launcher received SIGINT, SIGTERM or SIGHUP."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise _Stopped(signum)


def _pump(stream, out, prefix: bytes, lock: threading.Lock) -> None:
    """Copies ``stream`` to ``out`` line by line, each line prefixed, until end of file."""
    fd = stream.fileno()
    buffer = b""
    while True:
        chunk = os.read(fd, 65536)
        buffer += chunk
        lines = []
        while (match := _LINE_END.search(buffer)) is not None:
            # A \r at the end of what has arrived may be the first half of \r\n.
            if chunk and match.group() == b"\r" and match.end() == len(buffer):
                break
            lines.append(buffer[:match.start()])
            buffer = buffer[match.end():]
        if not chunk and buffer:
            lines.append(buffer)
            buffer = b""
        if lines:
            with lock:
                out.write(b"".join(prefix + line + b"\n" for line in lines))
                out.flush()
        if not chunk:
            stream.close()
            return


def _exit_status(returncode: int) -> int:
    """A process's status as a shell reports it: 128 + N for a process ended by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _stop(processes: Sequence[subprocess.Popen], grace: float) -> None:
    """SIGTERM to every running process, SIGKILL to those still running after ``grace``."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _note(message: str) -> None:
    print(f"[launch_local] {message}", file=sys.stderr, flush=True)


def launch(args: Sequence[str], workers: int, port_base: int | None = None,
           script: str = TRAIN_SCRIPT, grace: float = GRACE_SECONDS) -> int:
    """Runs ``workers`` local processes of ``script args`` as one multi-worker cluster.

    Args:
        args: the arguments of every worker's script (train.py flags).
        workers: number of processes.
        port_base: worker i listens on ``port_base + i``; None: free ports.
        script: the script the workers run.
        grace: seconds a stopped worker gets between SIGTERM and SIGKILL.

    Returns:
        0 if every worker succeeded, else the exit status of the first one that failed
        (128 + N for a signal N), or 128 + N if the launcher itself got signal N.
    """
    ports = ([port_base + i for i in range(workers)] if port_base is not None
             else free_ports(workers))
    addresses = [f"{HOST}:{port}" for port in ports]
    command = worker_command(args, script)
    if sets_strategy(args) and not any("multi_worker" in value
                                       for value in _binding_values(args)):
        _note("the arguments bind training.strategy to something other than 'multi_worker': "
              "the workers will not train together")
    lock = threading.Lock()
    processes, pumps = [], []
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, _raise_stopped) for signum in handled}
    try:
        for index in range(workers):
            # Unbuffered, so lines arrive as they are printed; a session of its own, so a
            # Ctrl-C in the terminal reaches the launcher only and it ends the workers alike.
            env = {**os.environ, "TF_CONFIG": tf_config(addresses, index),
                   "PYTHONUNBUFFERED": "1"}
            process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, start_new_session=True)
            processes.append(process)
            prefix = f"[worker {index}] ".encode()
            for stream, out in ((process.stdout, sys.stdout.buffer),
                                (process.stderr, sys.stderr.buffer)):
                pump = threading.Thread(target=_pump, args=(stream, out, prefix, lock),
                                        daemon=True)
                pump.start()
                pumps.append(pump)
        _note(f"{workers} workers on {', '.join(addresses)}: pids "
              f"{', '.join(str(p.pid) for p in processes)}")
        status = 0
        while status == 0 and any(p.poll() is None for p in processes):
            for index, process in enumerate(processes):
                if process.poll():  # neither running (None) nor succeeded (0)
                    status = _exit_status(process.returncode)
                    _note(f"worker {index} exited with status {status}; stopping the others")
                    break
            else:
                time.sleep(0.1)
        if status == 0:
            # All ended in the same poll: the first failure in worker order, if any.
            failed = next((i for i, p in enumerate(processes) if p.returncode), None)
            if failed is not None:
                status = _exit_status(processes[failed].returncode)
                _note(f"worker {failed} exited with status {status}")
    except _Stopped as stopped:
        _note(f"got signal {stopped.signum}; stopping the workers")
        status = 128 + stopped.signum
    finally:
        for signum in handled:  # a second Ctrl-C must not abandon the workers half-stopped
            signal.signal(signum, signal.SIG_IGN)
        _stop(processes, grace)
        for pump in pumps:
            pump.join(timeout=5)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("Give the train.py arguments after --, e.g. "
                             "--workers=2 -- --gin_config=... --workdir=...")
    sys.exit(launch(argv[1:], WORKERS.value, PORT_BASE.value, SCRIPT.value))


if __name__ == "__main__":
    app.run(main)

"""Who owns a workdir: a lock held while a run is alive, and the run's identity on disk.

A workdir belongs to one run. Two things make that hold:

* ``RunLock(workdir)`` takes an exclusive ``fcntl.flock`` on ``workdir/run.lock`` for as long
  as the run lives, and writes the holder's PID and host into the file. A second run started
  in the same workdir fails at once with a ``UsageError`` naming the holder. The kernel drops
  an flock when its process dies, however it dies (SIGKILL included), so a lock file left by
  a dead run is free and simply taken over; its stale PID is only reported in the log.
* ``check_identity(workdir, bindings)`` compares the bindings that define the run (its
  *identity*, with a ``fingerprint``) with those stored in ``workdir/run_identity.json`` by
  the run that created the workdir, and refuses a restart with different ones, listing every
  difference and the way out. ``bindings_from_gin`` and ``bindings_from_fields`` extract the
  bindings from gin's operative configuration or from a dict of settings, leaving out
  ``DEFAULT_EXCLUDE``: settings that change what a run shows or where it reads from, never
  its numbers.

Order in a run: validate the configuration (nothing written yet), take the ``RunLock``, then
``check_identity`` (which writes the identity of a new run), then restore checkpoints
(``rigl.experiments.checkpoints``) and train inside the lock. Under multi-worker each process
locks and identifies its own output folder (the chief's workdir, ``workers/<task>`` for the
others), since every process writes checkpoints there.

Where a new setting plugs in: a setting that cannot change a run's numbers (a log period, a
display option, a data path) goes into ``DEFAULT_EXCLUDE``, so that changing it on a restart
is allowed; every other binding is part of the identity automatically (a new one goes into
``ADDED_BINDINGS`` with the value that keeps what earlier runs did, so their workdirs still
resume).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Mapping

from absl import logging
from gin import config_parser

from rigl.experiments.errors import UsageError

LOCK_FILE = "run.lock"
IDENTITY_FILE = "run_identity.json"

# The flag the scripts offer to continue a workdir's checkpoints with other bindings; named
# here so the error message and the flag cannot drift apart.
FORCE_FLAG = "--force_resume"

# Bindings that never change a run's numbers, so a restart may change them: how often it
# logs, what it prints, when it checkpoints (a resume is exact whatever the period), which
# extra mask snapshots it keeps, when it gives up on a diverged loss, where it reads its data
# from (the same data), where its TPU is; and the training arguments that are not bindings
# (``TrainConfig`` fields only). ``training.eval_every_steps`` is kept: it decides which
# evaluations the results report.
DEFAULT_EXCLUDE = frozenset({
    "training.log_every_steps",
    "training.verbose",
    "training.checkpoint_every_steps",
    "training.mask_snapshot_steps",
    "training.stop_on_nonfinite",
    "training.workdir",
    "training.dry_run",
    "training.force_resume",
    "dataset.data_dir",
    "dataset.download",
    "dataset.wikitext_dir",
    "strategy.tpu_address",
})

# Bindings added after run identities existed, each with the value that does what runs
# before it did: an identity stored without one of them is read as holding that value, so
# those runs resume (a run stored with another value still differs).
ADDED_BINDINGS = {
    "training.storage": "masked",
    "training.sparse_init": False,
    # Runs before it counted the model as it is; one resumed under the new default "paper"
    # would average FLOPs logged with both countings (bind 'exact' to resume it).
    "training.flops_counting": "exact",
    "training.mask_update_skips_step": False,
    # Matched under any scope (a method's: ``rigl/updater.drop_noise_std``).
    "updater.drop_noise_std": 0.0,
}


# ---------------------------------------------------------------------------------- lock
class RunLock:
    """An exclusive lock on ``workdir/run.lock`` for the life of a run (a context manager).

    Entering creates ``workdir`` if needed, takes ``flock(LOCK_EX | LOCK_NB)`` and writes
    ``{"pid", "host", "since"}`` into the file; it raises ``UsageError`` at once, naming the
    holder's PID and host, when another open lock holds it (another process, or another
    ``RunLock`` in this one). Leaving, by return or exception, empties the file and releases
    the lock. The file itself stays: removing it would let a process that opened the old
    file and a process that creates a new one both believe they hold the lock.

    A process that dies holding the lock (SIGKILL, OOM, power loss of a local disk) loses it
    in the kernel; the file then still names the dead PID but is free, and the next run takes
    it over, logging the PID it replaces. Forked children (``multiprocessing`` with fork)
    share the open file and keep the lock until they exit too. On a filesystem without
    ``flock`` support the run goes on unlocked, with a warning. ``flock`` on NFS is emulated
    with byte-range locks by Linux, which works across clients with a working lock manager.

    Example::

        with RunLock(workdir):
            train(...)
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Takes the lock (see the class docstring); returns self."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: already held by this RunLock.")
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not O_TRUNC: the holder's PID
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _describe(_read_holder(self.path))
            raise UsageError(
                f"--workdir {self.workdir}: in use by another run ({holder}, lock file "
                f"{self.path}); wait for it to end or stop it, or use another --workdir.") from None
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            logging.warning("%s: this filesystem cannot lock (%s); a second run started in "
                            "this workdir will not be detected.", self.path, error.strerror)
        previous = _parse_holder(os.pread(fd, 4096, 0))
        if previous:
            logging.info("%s: taking over the lock of %s, which has ended.", self.path,
                         _describe(previous))
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empties the lock file and releases the lock (nothing if not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # while still holding it: nobody else can be writing
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def _parse_holder(raw: bytes) -> dict | None:
    try:
        holder = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return holder if isinstance(holder, dict) and "pid" in holder else None


def _read_holder(path: str) -> dict | None:
    # The holder writes its PID just after taking the lock: a reader arriving in between sees
    # an empty file, so look again for a moment before giving up on naming it.
    for _ in range(10):
        with contextlib.suppress(OSError), open(path, "rb") as f:
            holder = _parse_holder(f.read(4096))
            if holder:
                return holder
        time.sleep(0.05)
    return None


def _describe(holder: dict | None) -> str:
    if not holder:
        return "pid unknown"
    text = f"pid {holder['pid']}"
    if holder.get("host"):
        text += f" on {holder['host']}"
    if holder.get("since"):
        text += f", since {holder['since']}"
    return text


# ------------------------------------------------------------------------------ identity
def canonical(value):
    """``value`` as plain JSON data, the form bindings are compared, hashed and stored in.

    Tuples and lists become lists, sets sorted lists, mappings key-sorted dicts with string
    keys; a float holding an integer becomes that int (``epochs=5`` and ``epochs=5.0`` are
    one run); a gin reference stays as written (``"@name"``, ``"@name()"``); a class or
    function is named by its module and qualified name; anything else by its ``repr``.
    """
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 2 ** 53 else value
    if isinstance(value, Mapping):
        return {str(k): canonical(v)
                for k, v in sorted(value.items(), key=lambda item: str(item[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((canonical(v) for v in value), key=_dumps)
    if isinstance(value, _GinReference):
        return value.text
    if hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    return repr(value)


def _dumps(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def fingerprint(bindings: Mapping[str, object]) -> str:
    """A stable hash of ``bindings`` (name -> value): ``"sha256:<hex>"`` of their canonical,
    key-sorted JSON. Equal for equal bindings in any order, in any process or version of
    Python (unlike ``hash``)."""
    payload = _dumps({str(name): canonical(value) for name, value in bindings.items()})
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def _excluded(name: str, exclude) -> bool:
    # A scoped binding (``prune/updater.update_freq``) is excluded with its unscoped name.
    return name in exclude or name.rsplit("/", 1)[-1] in exclude


@dataclasses.dataclass(frozen=True)
class _GinReference:
    text: str


@dataclasses.dataclass(frozen=True)
class _GinMacro:
    name: str


class _Delegate(config_parser.ParserDelegate):
    """Parses references and macros as markers, without looking anything up in gin's
    registry (the text may name configurables this process never imported)."""

    def configurable_reference(self, scoped_configurable_name, evaluate):
        return _GinReference("@" + scoped_configurable_name + ("()" if evaluate else ""))

    def macro(self, macro_name):
        return _GinMacro(macro_name)


def bindings_from_gin(config_str: str, exclude=DEFAULT_EXCLUDE) -> dict[str, object]:
    """The bindings of a gin configuration text, keyed ``[scope/]configurable.parameter``.

    Meant for ``gin.operative_config_str()`` (every parameter a run used, defaults
    included, so a default bound explicitly is no difference), but any gin text parses:
    macros are replaced by their values (and not listed themselves), references kept as
    written, imports and includes ignored.

    Args:
        config_str: gin configuration text.
        exclude: binding names left out (scoped bindings are matched by their unscoped
            name too); ``DEFAULT_EXCLUDE`` by default.

    Returns:
        ``{name: value}``, values as ``canonical`` JSON data (a reference as its text).
    """
    macros, bindings = {}, {}
    for statement in config_parser.ConfigParser(config_str, _Delegate()):
        if not isinstance(statement, config_parser.BindingStatement):
            continue
        if not statement.arg_name:  # ``NAME = value`` defines a macro
            macros[statement.selector] = statement.value
            continue
        name = f"{statement.selector}.{statement.arg_name}"
        bindings[f"{statement.scope}/{name}" if statement.scope else name] = statement.value

    def resolve(value, seen=()):
        if isinstance(value, _GinMacro):
            if value.name not in macros or value.name in seen:
                return _GinReference("%" + value.name)
            return resolve(macros[value.name], (*seen, value.name))
        if isinstance(value, dict):
            return {k: resolve(v, seen) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(resolve(v, seen) for v in value)
        return value

    return {name: canonical(resolve(value)) for name, value in sorted(bindings.items())
            if not _excluded(name, exclude)}


def bindings_from_fields(fields: Mapping[str, object], prefix: str = "training",
                         exclude=DEFAULT_EXCLUDE) -> dict[str, object]:
    """The bindings of a dict of settings, named ``<prefix>.<field>`` as gin names them.

    Example: ``bindings_from_fields(dataclasses.asdict(config))`` for a ``TrainConfig``
    (its ``workdir``, ``dry_run``, ``verbose`` and log periods are excluded by default).
    """
    named = {f"{prefix}.{key}" if prefix else str(key): value for key, value in fields.items()}
    return {name: value for name, value in sorted(named.items())
            if not _excluded(name, exclude)}


def write_text_atomic(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` so that a reader, or a run killed at any point, finds
    either the old file or the new one whole: a temporary file in the same folder, flushed
    to disk, then renamed over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=directory, prefix=os.path.basename(path) + ".",
                                     suffix=".tmp", delete=False) as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)
    with contextlib.suppress(OSError):  # make the rename itself durable, where supported
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_json_atomic(path: str, payload) -> None:
    """Writes ``payload`` as indented, key-sorted JSON to ``path`` atomically (see
    ``write_text_atomic``)."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True))


def read_identity(workdir: str) -> dict | None:
    """The stored identity of ``workdir`` (``{"fingerprint", "bindings", ...}``), or None
    when it has none.

    Raises:
        UsageError: the file exists but is not a readable identity.
    """
    path = os.path.join(workdir, IDENTITY_FILE)
    try:
        with open(path) as f:
            identity = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise UsageError(f"--workdir {workdir}: cannot read {path} ({error}); restore or "
                         f"remove it, or pass {FORCE_FLAG} to replace it.") from None
    if not isinstance(identity, dict) or not isinstance(identity.get("bindings"), dict):
        raise UsageError(f"--workdir {workdir}: {path} holds no bindings; restore or remove "
                         f"it, or pass {FORCE_FLAG} to replace it.")
    return identity


def write_identity(workdir: str, bindings: Mapping[str, object], previous=()) -> str:
    """Stores ``bindings`` and their fingerprint in ``workdir/run_identity.json``
    atomically; returns the fingerprint. ``previous`` identities (replaced with
    ``FORCE_FLAG``) are kept in the file, newest last, so a mixed run stays visible."""
    os.makedirs(workdir, exist_ok=True)
    bindings = {str(name): canonical(value) for name, value in bindings.items()}
    payload = {"fingerprint": fingerprint(bindings), "bindings": bindings,
               "written": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    if previous:
        payload["previous"] = list(previous)
    write_json_atomic(os.path.join(workdir, IDENTITY_FILE), payload)
    return payload["fingerprint"]


def differences(stored: Mapping[str, object], new: Mapping[str, object]) -> list[str]:
    """Every binding that differs, as ``"name: stored -> new"`` sorted by name (``(unset)``
    for a binding only one side has)."""
    def show(side, name):
        return repr(canonical(side[name])) if name in side else "(unset)"

    lines = []
    for name in sorted(set(stored) | set(new)):
        if show(stored, name) != show(new, name):
            lines.append(f"{name}: {show(stored, name)} -> {show(new, name)}")
    return lines


def check_identity(workdir: str, bindings: Mapping[str, object], force: bool = False,
                   has_checkpoints: bool = False) -> str:
    """Makes sure ``workdir`` holds this run (call it holding the ``RunLock``).

    Args:
        workdir: the run's output folder (where its checkpoints are).
        bindings: the bindings that define the run (``bindings_from_gin`` /
            ``bindings_from_fields``).
        force: the user passed ``FORCE_FLAG``: a different stored identity is replaced (the
            old one kept in the file's ``previous`` list) with a warning, not refused.
        has_checkpoints: whether the folder already holds checkpoints; with no stored
            identity, they come from a run older than run identities.

    Returns:
        ``"new"`` (no identity stored: written), ``"adopted"`` (checkpoints without an
        identity: accepted with a warning, identity written), ``"same"`` (nothing written)
        or ``"forced"`` (different, replaced because of ``force``).

    Raises:
        UsageError: the stored identity differs from ``bindings`` (and not ``force``); the
            message lists every differing binding as ``name: stored -> new`` and the two
            ways out: another ``--workdir`` or ``FORCE_FLAG``. Also when the stored identity
            cannot be read (with ``force`` it is then replaced as if absent).
    """
    try:
        stored = read_identity(workdir)
    except UsageError:
        if not force:
            raise
        stored = None
    if stored is None:
        if has_checkpoints:
            logging.warning("%s: checkpoints without a %s (a run from before run identities): "
                            "resuming them as a run of the current bindings.", workdir,
                            IDENTITY_FILE)
        write_identity(workdir, bindings)
        return "adopted" if has_checkpoints else "new"
    # A scoped binding (``rigl/updater.drop_noise_std``) is added under its unscoped name.
    added = {name: ADDED_BINDINGS[name.rsplit("/", 1)[-1]] for name in bindings
             if name.rsplit("/", 1)[-1] in ADDED_BINDINGS}
    changed = differences({**added, **stored["bindings"]}, bindings)
    if not changed:
        return "same"
    if not force:
        raise UsageError(
            f"--workdir {workdir}: holds a run with other bindings ({'; '.join(changed)}). "
            f"Use another --workdir for this run, or pass {FORCE_FLAG} to continue its "
            "checkpoints with the new bindings.")
    logging.warning("%s: %s given: continuing a run with other bindings (%s).", workdir,
                    FORCE_FLAG, "; ".join(changed))
    history = [*stored.get("previous", []),
               {k: stored[k] for k in ("fingerprint", "bindings", "written") if k in stored}]
    write_identity(workdir, bindings, previous=history)
    return "forced"

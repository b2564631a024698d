"""Finding, verifying and restoring a run's checkpoints, past damaged ones.

A run saves ``tf.train.Checkpoint`` objects with a ``tf.train.CheckpointManager``: in its
checkpoint folder, ``ckpt-<step>.index`` plus ``ckpt-<step>.data-<i>-of-<n>`` shards per
checkpoint, and the *state file* ``checkpoint`` naming the newest. A kill, a full disk or a
bad disk can leave the newest damaged; TF then fails on restore, with errors that often name
no file (TF 2.21, each found by ``verify`` here):

* newest ``.data`` truncated: ``IndexError: Read less bytes than requested``;
* bytes flipped in ``.data``: ``DataLossError`` (the tensors' CRC32C "does not match");
* bytes flipped in ``.index``: ``OpError`` "block checksum mismatch" (truncated: "too short");
* ``.data`` or ``.index`` gone: ``NotFoundError`` (a kill during a save can leave data alone);
* state file empty: ``CheckpointManager(...)`` raises ``ValueError`` as it is built;
* state file gone or garbled: the manager silently knows no checkpoint, the run starts at 0.

``restore_latest(checkpoint, directory)`` finds the checkpoints by scanning the files
(``list_checkpoints``: the state file is not needed), verifies the newest by reading every
tensor of it (``verify``: the whole file, every checksum, before anything is assigned, so a
damaged checkpoint never leaves the live objects half restored), falls back to the newest
intact one, restores it and returns its prefix together with a warning per problem, naming
the files. Nothing is deleted:

* the damaged checkpoints newer than the one restored are moved, files unchanged, into
  ``<directory>/damaged/<ckpt-N>/`` (they still load there with ``tf.train.load_checkpoint``
  for inspection). Left in place they would be lost: the resumed run saves the same step
  numbers again and overwrites them, and the manager deletes whatever its state file lists
  once more than ``max_to_keep`` newer ones exist;
* the state file is rewritten (atomically) to list the intact checkpoints up to the restored
  one, newest = restored, so that a ``CheckpointManager`` built *afterwards* keeps working:
  it ages those out under ``max_to_keep`` as usual and never sees the damaged ones. Without
  this a manager built on a missing or garbled state file would know none of the existing
  checkpoints (never deleting them, harmless), and on an empty one it would not build.

Call it holding the workdir's ``RunLock`` (``rigl.experiments.workdir``), and build the
``CheckpointManager`` after it (``rigl.experiments.training.TrainCheckpoint`` does both). With
``set_aside=False`` it changes nothing on disk (for a reader that does not own the folder; do
not save there then). Under multi-worker every process restores from its own folder: its
choice must agree with the others' (a fallback, or a kill, on one worker only would resume
workers at different steps); the training loop checks that they agree and stops every worker
with a ``CheckpointError`` when they do not, leaving the user to set the newer checkpoints
of the workers ahead aside.

Where a new check plugs in: ``verify`` decides what "intact" means; anything it reports sends
the restore to the next older checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time

import tensorflow as tf
from absl import logging

from rigl.experiments.workdir import write_text_atomic

STATE_FILE = "checkpoint"
DAMAGED_DIR = "damaged"

_FILE_RE = re.compile(
    r"^(?P<name>.+)-(?P<step>\d+)\.(?:index|data-(?P<shard>\d{5})-of-(?P<shards>\d{5}))$")


class CheckpointError(RuntimeError):
    """No checkpoint of a folder that has some can be restored; the message names the folder
    and, for each checkpoint, its files and what is wrong with them."""


@dataclasses.dataclass(frozen=True)
class CheckpointFiles:
    """The files of one checkpoint found in a folder.

    Attributes:
        prefix: the path to restore (``<directory>/ckpt-<step>``).
        step: the number in the name (the optimizer step the loop saved it at).
        files: the names (no folder) of its files present, sorted.
        missing: the names of files it needs and lacks (``.index``, data shards); when no
            data shard is present, ``ckpt-<step>.data-*``.
    """

    prefix: str
    step: int
    files: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def name(self) -> str:
        return os.path.basename(self.prefix)


def list_checkpoints(directory: str, checkpoint_name: str = "ckpt") -> list[CheckpointFiles]:
    """Every checkpoint in ``directory`` named ``<checkpoint_name>-<step>``, found from the
    files alone (a missing, empty or garbled state file changes nothing), newest step first.
    A checkpoint with any of its files present is listed, so incomplete ones are too."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found: dict[int, list[tuple[str, re.Match]]] = {}
    for name in names:
        match = _FILE_RE.match(name)
        if match and match["name"] == checkpoint_name and os.path.isfile(
                os.path.join(directory, name)):
            found.setdefault(int(match["step"]), []).append((name, match))
    listed = []
    for step in sorted(found, reverse=True):
        stem = f"{checkpoint_name}-{step}"
        present = sorted(name for name, _ in found[step])
        missing = [] if f"{stem}.index" in present else [f"{stem}.index"]
        shard_counts = {int(m["shards"]) for _, m in found[step] if m["shards"]}
        if not shard_counts:
            missing.append(f"{stem}.data-*")
        for count in sorted(shard_counts):
            missing += [f"{stem}.data-{i:05d}-of-{count:05d}" for i in range(count)
                        if f"{stem}.data-{i:05d}-of-{count:05d}" not in present]
        listed.append(CheckpointFiles(os.path.join(directory, stem), step, tuple(present),
                                      tuple(missing)))
    return listed


def verify(prefix: str) -> str | None:
    """What makes checkpoint ``prefix`` unreadable, or None when it is intact.

    Reads every tensor it holds (the object graph included) with ``tf.train.load_checkpoint``:
    TF checks each tensor's CRC32C and length as it reads, so this finds truncated, missing
    and corrupted files, at the cost of reading the checkpoint once more than a restore does.
    """
    try:
        reader = tf.train.load_checkpoint(prefix)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except Exception as error:  # noqa: BLE001 (any failure to read means "not intact")
        text = str(error).strip().splitlines()
        return f"{type(error).__name__}: {text[0] if text else 'unreadable'}"
    return None


def restore_latest(checkpoint: tf.train.Checkpoint, directory: str, *,
                   checkpoint_name: str = "ckpt",
                   set_aside: bool = True) -> tuple[str | None, list[str]]:
    """Restores ``checkpoint`` from the newest intact checkpoint in ``directory``.

    Newest by step, whatever the state file names (a kill between a save's files and its
    state update leaves a whole checkpoint newer than the one named). Only the checkpoints
    tried are verified: the damaged newer ones and the one restored.

    Args:
        checkpoint: the live ``tf.train.Checkpoint`` to restore into (its objects must match
            the checkpoint's, as ``assert_existing_objects_matched`` checks).
        directory: the checkpoint folder of the run.
        checkpoint_name: the manager's ``checkpoint_name``.
        set_aside: after a fallback, move the damaged checkpoints to ``damaged/`` and rewrite
            the state file (see the module docstring); False changes nothing on disk.

    Returns:
        ``(prefix, problems)``: the prefix restored (None when the folder holds no
        checkpoint: a fresh start) and one line per problem found (each also logged as a
        warning): damaged checkpoints with their files and error, what was moved where, a
        missing, empty or garbled state file, or one naming a checkpoint that is not there.

    Raises:
        CheckpointError: checkpoints exist but none is intact (nothing is moved then).
    """
    found = list_checkpoints(directory, checkpoint_name)
    state_names, problems = _read_state(directory, found)
    damaged, restored = [], None
    for entry in found:
        reason = (f"missing {', '.join(entry.missing)}" if entry.missing
                  else verify(entry.prefix))
        if reason is None:
            restored = entry
            break
        damaged.append((entry, reason))
    for entry, reason in damaged:
        problems.append(f"checkpoint {entry.prefix} is damaged ({', '.join(entry.files)}): "
                        f"{reason}")
    if found and restored is None:
        raise CheckpointError(
            f"{directory}: no intact checkpoint; "
            + "; ".join(f"{entry.name} ({', '.join(entry.files)}): {reason}"
                        for entry, reason in damaged)
            + ". Nothing was moved or deleted: move the folder away to start from step 0, or "
            "use another --workdir.")
    state_path = os.path.join(directory, STATE_FILE)
    if restored is None and state_names is not None:
        problems.append(f"{state_path} names {state_names}, but there is no checkpoint file: "
                        "starting from step 0")
    elif not damaged and state_names not in (None, getattr(restored, "name", None)):
        # A kill between a save's files and its state update leaves a newer whole checkpoint
        # the state does not name; the newest intact one by step wins.
        problems.append(f"{state_path} names {state_names}, not the newest intact checkpoint "
                        f"{restored.name}")
    if problems and set_aside:
        problems += _set_aside(directory, [entry for entry, _ in damaged], found, restored)
    if restored is not None:
        if damaged:
            problems.append(f"resuming from {restored.prefix} (step {restored.step})")
        checkpoint.restore(restored.prefix).assert_existing_objects_matched()
    for problem in problems:
        logging.warning("%s", problem)
    return (restored.prefix if restored else None), problems


def _read_state(directory: str, found: list[CheckpointFiles]) -> tuple[str | None, list[str]]:
    """The checkpoint the state file names (None if it names none) and its problems."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(path):
        return None, ([f"{path} is missing; found the checkpoints from their files"]
                      if found else [])
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception as error:  # noqa: BLE001 (TF raises ValueError on an empty file)
        state, reason = None, str(error).splitlines()[0]
    else:
        reason = "not a checkpoint state"
    if state is None:
        return None, [f"{path} is unreadable ({reason}); found the checkpoints from their "
                      "files"]
    return os.path.basename(state.model_checkpoint_path), []


def _set_aside(directory, damaged, found, restored) -> list[str]:
    """Moves the damaged checkpoints under ``damaged/`` and rewrites the state file to list
    the complete checkpoints up to the restored one (none: the state file is moved too)."""
    notes = []
    for entry in damaged:
        target = _free_path(os.path.join(directory, DAMAGED_DIR, entry.name))
        os.makedirs(target)
        for name in entry.files:
            os.replace(os.path.join(directory, name), os.path.join(target, name))
        notes.append(f"moved {', '.join(entry.files)} to {target} (not deleted)")
    state_path = os.path.join(directory, STATE_FILE)
    if restored is None:
        if os.path.exists(state_path):
            target = _free_path(os.path.join(directory, DAMAGED_DIR, STATE_FILE))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(state_path, target)
            notes.append(f"moved {state_path} to {target} (not deleted)")
        return notes
    kept = sorted((entry for entry in found if entry.step <= restored.step and not entry.missing),
                  key=lambda entry: entry.step)
    _write_state(directory, restored.name, kept)
    notes.append(f"rewrote {state_path}: {', '.join(e.name for e in kept)} (newest "
                 f"{restored.name})")
    return notes


def _free_path(path: str) -> str:
    candidate, n = path, 1
    while os.path.exists(candidate):
        candidate, n = f"{path}.{n}", n + 1
    return candidate


def _write_state(directory: str, latest: str, entries: list[CheckpointFiles]) -> None:
    """Writes the ``CheckpointState`` text proto the manager reads (relative paths, as the
    manager writes them), atomically. Timestamps are the index files' modification times,
    all after ``last_preserved_timestamp``, so the manager manages every one of them."""
    stamps = [os.path.getmtime(entry.prefix + ".index") for entry in entries]
    lines = [f'model_checkpoint_path: "{latest}"']
    lines += [f'all_model_checkpoint_paths: "{entry.name}"' for entry in entries]
    lines += [f"all_model_checkpoint_timestamps: {stamp!r}" for stamp in stamps]
    lines.append(f"last_preserved_timestamp: {min(stamps, default=time.time()) - 1.0!r}")
    write_text_atomic(os.path.join(directory, STATE_FILE), "\n".join(lines) + "\n")

"""Checkpoint fallback: a damaged newest checkpoint (truncated, missing or corrupted files) or
a missing / empty / garbled state file never stops a resume while an intact checkpoint
exists, the damaged files are kept, and the manager built afterwards keeps working."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from rigl.experiments import checkpoints
from rigl.experiments.checkpoints import CheckpointError, list_checkpoints, restore_latest

DATA = ".data-00000-of-00001"


def _state(step=0.0):
    """A tiny training state: every variable holds ``step`` after step ``step``."""
    return tf.train.Checkpoint(kernel=tf.Variable(tf.fill([3, 4], float(step))),
                               bias=tf.Variable([float(step)] * 2),
                               step=tf.Variable(int(step), dtype=tf.int64))


def _values(state):
    return (float(state.kernel.numpy().mean()), state.bias.numpy().tolist(),
            int(state.step.numpy()))


def _saved(step):
    return (float(step), [float(step)] * 2, step)


@pytest.fixture
def run(tmp_path):
    """A checkpoint folder with ckpt-1, ckpt-2 and ckpt-3 saved by a CheckpointManager."""
    directory = str(tmp_path / "checkpoints")
    state = _state()
    manager = tf.train.CheckpointManager(state, directory, max_to_keep=3)
    for step in (1, 2, 3):
        for variable in (state.kernel, state.bias, state.step):
            variable.assign(tf.cast(tf.fill(variable.shape, step), variable.dtype))
        manager.save(checkpoint_number=step)
    return directory


def _files(directory):
    return sorted(os.listdir(directory))


def _flip(path, start=16, count=8):
    data = bytearray(open(path, "rb").read())
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


DAMAGE = {
    "truncated data": lambda p: os.truncate(p + DATA, os.path.getsize(p + DATA) // 2),
    "missing data": lambda p: os.remove(p + DATA),
    "missing index": lambda p: os.remove(p + ".index"),
    "flipped bytes in data": lambda p: _flip(p + DATA),
    "flipped bytes in index": lambda p: _flip(p + ".index"),
}


def test_intact_newest_is_restored_and_nothing_changes(run):
    state_before = open(os.path.join(run, "checkpoint")).read()
    files_before = _files(run)
    state = _state()
    prefix, problems = restore_latest(state, run)
    assert prefix == os.path.join(run, "ckpt-3") and problems == []
    assert _values(state) == _saved(3)
    assert _files(run) == files_before
    assert open(os.path.join(run, "checkpoint")).read() == state_before


def test_empty_or_missing_folder_is_a_fresh_start(tmp_path):
    state = _state()
    assert restore_latest(state, str(tmp_path / "none")) == (None, [])
    assert restore_latest(state, str(tmp_path)) == (None, [])
    assert _values(state) == _saved(0) and _files(tmp_path) == []


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_falls_back_to_the_previous_step(run, damage):
    prefix3 = os.path.join(run, "ckpt-3")
    DAMAGE[damage](prefix3)
    left = sorted(name for name in _files(run) if name.startswith("ckpt-3."))
    contents = {name: open(os.path.join(run, name), "rb").read() for name in left}
    assert checkpoints.verify(prefix3) is not None
    state = _state()
    prefix, problems = restore_latest(state, run)
    assert prefix == os.path.join(run, "ckpt-2")
    assert _values(state) == _saved(2)
    report = "\n".join(problems)
    assert prefix3 in report and all(name in report for name in left)
    # Kept, byte for byte, where the resumed run cannot overwrite or delete them.
    moved = os.path.join(run, checkpoints.DAMAGED_DIR, "ckpt-3")
    assert {name: open(os.path.join(moved, name), "rb").read()
            for name in os.listdir(moved)} == contents
    assert [entry.step for entry in list_checkpoints(run)] == [2, 1]
    # The manager built afterwards resumes its work: the next restart finds its new save.
    manager = tf.train.CheckpointManager(state, run, max_to_keep=3)
    assert manager.latest_checkpoint == os.path.join(run, "ckpt-2")
    state.step.assign(3)
    manager.save(checkpoint_number=3)
    fresh = _state()
    assert restore_latest(fresh, run) == (prefix3, [])
    assert _values(fresh) == (2.0, [2.0, 2.0], 3)


def test_manager_after_a_fallback_ages_out_only_intact_checkpoints(run):
    os.truncate(os.path.join(run, "ckpt-3" + DATA), 10)
    state = _state()
    restore_latest(state, run)
    manager = tf.train.CheckpointManager(state, run, max_to_keep=2)
    manager.save(checkpoint_number=3)
    manager.save(checkpoint_number=4)
    assert [entry.step for entry in list_checkpoints(run)] == [4, 3]  # 1 and 2 aged out
    assert sorted(os.listdir(os.path.join(run, checkpoints.DAMAGED_DIR, "ckpt-3"))) == [
        "ckpt-3" + DATA, "ckpt-3.index"]


@pytest.mark.parametrize("content", ["", "garbage {{{"], ids=["empty", "garbled"])
def test_unreadable_state_file_still_resumes_from_the_newest(run, content):
    state_path = os.path.join(run, "checkpoint")
    open(state_path, "w").write(content)
    state = _state()
    prefix, problems = restore_latest(state, run)
    assert prefix == os.path.join(run, "ckpt-3") and _values(state) == _saved(3)
    assert any(state_path in problem for problem in problems)
    manager = tf.train.CheckpointManager(state, run, max_to_keep=3)  # builds on the rewrite
    assert manager.latest_checkpoint == prefix
    assert manager.checkpoints == [os.path.join(run, f"ckpt-{s}") for s in (1, 2, 3)]


def test_missing_state_file_still_resumes_from_the_newest(run):
    os.remove(os.path.join(run, "checkpoint"))
    state = _state()
    prefix, problems = restore_latest(state, run)
    assert prefix == os.path.join(run, "ckpt-3") and _values(state) == _saved(3)
    assert "missing" in problems[0]
    assert tf.train.CheckpointManager(state, run, max_to_keep=3).latest_checkpoint == prefix


def test_missing_state_file_and_damaged_newest(run):
    os.remove(os.path.join(run, "checkpoint"))
    os.remove(os.path.join(run, "ckpt-3.index"))
    state = _state()
    assert restore_latest(state, run)[0] == os.path.join(run, "ckpt-2")
    assert _values(state) == _saved(2)


def test_newer_whole_checkpoint_than_the_state_names_wins(run):
    # As a kill between a save's files and its state update leaves it.
    state_path = os.path.join(run, "checkpoint")
    text = open(state_path).read()
    open(state_path, "w").write(text.replace('model_checkpoint_path: "ckpt-3"',
                                             'model_checkpoint_path: "ckpt-2"'))
    state = _state()
    prefix, problems = restore_latest(state, run)
    assert prefix == os.path.join(run, "ckpt-3") and "ckpt-2" in problems[0]
    assert tf.train.get_checkpoint_state(run).model_checkpoint_path == prefix


def test_state_naming_a_checkpoint_whose_files_are_gone(run):
    for name in _files(run):
        if name.startswith("ckpt-"):
            os.remove(os.path.join(run, name))
    state = _state()
    prefix, problems = restore_latest(state, run)
    assert prefix is None and "ckpt-3" in problems[0] and _values(state) == _saved(0)
    assert tf.train.CheckpointManager(state, run, max_to_keep=3).latest_checkpoint is None


def test_all_damaged_is_an_error_naming_folder_and_files_and_changes_nothing(run):
    for step in (1, 2, 3):
        os.truncate(os.path.join(run, f"ckpt-{step}{DATA}"), 5)
    files_before = _files(run)
    state = _state()
    with pytest.raises(CheckpointError) as error:
        restore_latest(state, run)
    message = str(error.value)
    assert run in message
    assert all(f"ckpt-{step}{DATA}" in message for step in (1, 2, 3))
    assert _files(run) == files_before
    assert _values(state) == _saved(0)  # nothing half restored


def test_set_aside_false_changes_nothing_on_disk(run):
    os.remove(os.path.join(run, "ckpt-3" + DATA))
    files_before = _files(run)
    state_before = open(os.path.join(run, "checkpoint")).read()
    state = _state()
    prefix, problems = restore_latest(state, run, set_aside=False)
    assert prefix == os.path.join(run, "ckpt-2") and problems
    assert _files(run) == files_before
    assert open(os.path.join(run, "checkpoint")).read() == state_before


def test_list_checkpoints_scans_the_files(tmp_path):
    names = ["ckpt-10.index", "ckpt-10.data-00000-of-00002", "ckpt-10.data-00001-of-00002",
             "ckpt-9.index", "ckpt-9.data-00001-of-00002", "ckpt-11.index",
             "other-12.index", "ckpt-12.index.tmp", "checkpoint", "notes.txt"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "ckpt-13_temp").mkdir()  # what a kill during a save leaves
    found = list_checkpoints(str(tmp_path))
    assert [(e.step, e.missing) for e in found] == [
        (11, ("ckpt-11.data-*",)), (10, ()), (9, ("ckpt-9.data-00000-of-00002",))]
    assert found[1].prefix == str(tmp_path / "ckpt-10")
    assert found[1].files == ("ckpt-10.data-00000-of-00002", "ckpt-10.data-00001-of-00002",
                              "ckpt-10.index")
    assert [e.step for e in list_checkpoints(str(tmp_path), "other")] == [12]


def test_verify_accepts_an_intact_checkpoint(run):
    assert checkpoints.verify(os.path.join(run, "ckpt-1")) is None
    reader = tf.train.load_checkpoint(os.path.join(run, "ckpt-1"))
    np.testing.assert_array_equal(reader.get_tensor("bias/.ATTRIBUTES/VARIABLE_VALUE"),
                                  [1.0, 1.0])

"""A run owns its workdir and survives what a careless user or a crash does to it (issue 14).

A restart with other bindings is refused (and accepted with --force_resume), a second run in
a held workdir is refused at once, a damaged newest checkpoint or a lost state file does not
stop a resume, an evaluation on a checkpoint step survives a kill (and TensorBoard shows
every point once), and a diverged loss stops the run keeping the last good checkpoint.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import gin
import pytest
from conftest import ROOT

from rigl.experiments import checkpoints, training, workdir
from rigl.experiments.errors import UsageError

BASE_CONFIG = os.path.join(ROOT, "gin_configs", "mnist_lenet300.gin")
SMOKE = ["training.smoke=True"]  # 3 steps on mock data, checkpointed at the end


def _train(path, bindings, data_dir=None, **kwargs):
    gin.clear_config()
    data = [f"dataset.data_dir={data_dir!r}"] if data_dir else []
    gin.parse_config_files_and_bindings([BASE_CONFIG], [*data, "training.verbose=0",
                                                        *bindings])
    try:
        return training.train(str(path), **kwargs)
    finally:
        gin.clear_config()


def _steps(path) -> list[int]:
    return [entry.step for entry in checkpoints.list_checkpoints(str(path / "checkpoints"))]


# ------------------------------------------------------------------------------ ownership
def test_restart_with_other_bindings_is_refused_then_accepted_with_force(tmp_path):
    _train(tmp_path, SMOKE)
    results = (tmp_path / "results.json").read_text()
    config = (tmp_path / "config.gin").read_text()
    assert "training.smoke = True" in config
    with pytest.raises(UsageError) as refused:
        _train(tmp_path, [*SMOKE, "training.sparsity=0.8", "training.seed=1"])
    message = str(refused.value)
    assert "training.seed: 0 -> 1" in message and "training.sparsity: 0.9 -> 0.8" in message
    assert workdir.FORCE_FLAG in message and "training.method" not in message
    # Nothing of the refused run was written.
    assert (tmp_path / "results.json").read_text() == results
    assert (tmp_path / "config.gin").read_text() == config
    # Settings that cannot change the numbers may change on a restart.
    _train(tmp_path, [*SMOKE, "training.log_every_steps=7", "training.stop_on_nonfinite=0",
                      "training.checkpoint_every_steps=5"])
    forced = _train(tmp_path, [*SMOKE, "training.sparsity=0.8", "training.seed=1"],
                    force_resume=True)
    assert forced["seed"] == 1
    assert "training.sparsity = 0.8" in (tmp_path / "config.gin").read_text()
    identity = workdir.read_identity(str(tmp_path))
    assert identity["bindings"]["training.sparsity"] == 0.8
    assert [old["bindings"]["training.seed"] for old in identity["previous"]] == [0]


def test_second_run_in_a_held_workdir_is_refused_naming_the_pid(tmp_path):
    with workdir.RunLock(str(tmp_path)):
        with pytest.raises(UsageError, match=f"pid {os.getpid()}"):
            _train(tmp_path, SMOKE)
    assert sorted(os.listdir(tmp_path)) == [workdir.LOCK_FILE]  # nothing else written
    _train(tmp_path, SMOKE)  # free again


# ---------------------------------------------------------------------------- checkpoints
# 60 steps of real MNIST, checkpointed at 20, 40 and 60 (the last two kept), evaluated at
# 20, 40 and 60.
SHORT = ["training.epochs=None", "training.train_steps=60", "training.checkpoint_every_steps=20",
         "training.eval_every_steps=20", "updater.update_freq=20", "training.log_every_steps=10"]


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    """A finished SHORT run, copied by each test that damages it."""
    path = tmp_path_factory.mktemp("finished")
    _train(path, SHORT, data_dir)
    assert _steps(path) == [60, 40]
    return path


def _copy(finished, tmp_path):
    path = tmp_path / "run"
    shutil.copytree(finished, path)
    (path / "results.json").unlink()
    return path


def _eval_steps(path) -> list[int]:
    return [step for step, _ in json.loads((path / "eval_log.json").read_text())]


def _truncate(prefix):
    data = prefix + ".data-00000-of-00001"
    os.truncate(data, os.path.getsize(data) // 2)


def _flip(prefix):
    path = prefix + ".data-00000-of-00001"
    data = bytearray(open(path, "rb").read())
    data[16:24] = bytes(b ^ 0xFF for b in data[16:24])
    open(path, "wb").write(bytes(data))


DAMAGE = {
    "truncated data": _truncate,
    "missing index": lambda prefix: os.remove(prefix + ".index"),
    "missing data": lambda prefix: os.remove(prefix + ".data-00000-of-00001"),
    "corrupted data": _flip,
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_newest_checkpoint_falls_back_and_resumes(finished, tmp_path, data_dir,
                                                          caplog, damage):
    path = _copy(finished, tmp_path)
    newest = str(path / "checkpoints" / "ckpt-60")
    DAMAGE[damage](newest)
    caplog.set_level(logging.INFO, logger="absl")
    results = _train(path, SHORT, data_dir)
    assert f"checkpoint {newest} is damaged" in caplog.text
    assert f"Resumed from {path / 'checkpoints' / 'ckpt-40'}" in caplog.text
    assert (path / "checkpoints" / checkpoints.DAMAGED_DIR / "ckpt-60").is_dir()  # kept
    # Trained steps 41-60 again, evaluated at 60 again, saved an intact step 60.
    assert results["steps"] == 60 and _eval_steps(path) == [20, 40, 60]
    assert _steps(path) == [60, 40]
    assert checkpoints.verify(newest) is None


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_checkpoint_state_file_lost_still_resumes_from_the_newest(finished, tmp_path,
                                                                   data_dir, caplog, state):
    path = _copy(finished, tmp_path)
    state_file = path / "checkpoints" / "checkpoint"
    if state == "missing":
        state_file.unlink()
    else:
        state_file.write_text("")
    caplog.set_level(logging.INFO, logger="absl")
    results = _train(path, SHORT, data_dir)
    assert f"Resumed from {path / 'checkpoints' / 'ckpt-60'}" in caplog.text
    # Nothing trained again: the time and the final evaluation are those of the first run.
    first = json.loads((finished / "results.json").read_text())
    assert results["train_seconds"] == first["train_seconds"]
    assert results["test_accuracy"] == first["test_accuracy"]
    assert _eval_steps(path) == [20, 40, 60]


# ----------------------------------------------------------------------------------- kill
def _script(path, data_dir, bindings):
    command = [sys.executable, os.path.join(ROOT, "scripts", "train.py"),
               f"--gin_config={BASE_CONFIG}", f"--workdir={path}",
               f"--gin_bindings=dataset.data_dir={data_dir!r}",
               "--gin_bindings=training.verbose=0", *[f"--gin_bindings={b}" for b in bindings]]
    return subprocess.Popen(command, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _scalars(log_dir) -> dict[str, list[int]]:
    """Every scalar's steps as TensorBoard shows them (orphaned data purged)."""
    from tensorboard.backend.event_processing import plugin_event_accumulator

    if not os.path.isdir(log_dir):
        return {}
    accumulator = plugin_event_accumulator.EventAccumulator(
        str(log_dir), size_guidance={plugin_event_accumulator.TENSORS: 0},
        purge_orphaned_data=True)
    accumulator.Reload()
    return {tag: [event.step for event in accumulator.Tensors(tag)]
            for tag in accumulator.Tags()["tensors"]}


def test_session_start_makes_tensorboard_drop_what_a_killed_session_wrote(tmp_path):
    import tensorflow as tf

    def write(steps):
        writer = tf.summary.create_file_writer(str(tmp_path))
        with writer.as_default():
            for step in steps:
                tf.summary.scalar("loss", float(step), step=step)
        writer.close()

    assert training.mark_session_start(str(tmp_path / "new"), 1) is None  # nothing to drop
    assert not (tmp_path / "new").exists()
    write(range(1, 6))  # killed after step 5, resumed from the checkpoint of step 2
    time.sleep(1.1)  # event files are named by the second; a resume comes seconds later
    assert training.mark_session_start(str(tmp_path), 3)
    write(range(3, 7))  # in the same second: its file must still sort after the mark
    assert _scalars(tmp_path) == {"loss": [1, 2, 3, 4, 5, 6]}


# Slow (1.5 min): a kill between evaluation and checkpoint; CI keeps the kill-and-resume
# test of test_pipeline.py.
@pytest.mark.slow
def test_evaluation_on_a_checkpoint_step_survives_a_kill(data_dir, tmp_path):
    """Killed after the evaluation of step 160, resumed from the checkpoint of step 120 (also
    evaluated): the eval log and TensorBoard hold every evaluation and every logged step
    once, as an uninterrupted run's."""
    total, every = 240, 40
    bindings = ["training.epochs=None", f"training.train_steps={total}",
                f"training.eval_every_steps={every}",
                f"training.checkpoint_every_steps={3 * every}", "training.log_every_steps=10",
                "updater.update_freq=20"]
    path = tmp_path / "run"
    process = _script(path, data_dir, bindings)
    deadline = time.time() + 300
    # Killed with points after the checkpoint on disk, which the resumed run writes again.
    while time.time() < deadline and process.poll() is None:
        if 4 * every in _scalars(path / "logs" / "eval").get("test_accuracy", []):
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (path / "results.json").exists()
    assert _steps(path)[0] == 3 * every, "killed too late: after the checkpoint of step 240"
    output, _ = _script(path, data_dir, bindings).communicate(timeout=300)
    assert (path / "results.json").exists(), output[-3000:]

    evaluations = list(range(every, total + 1, every))
    assert _eval_steps(path) == evaluations
    train, evals = _scalars(path / "logs" / "train"), _scalars(path / "logs" / "eval")
    for tag in ("loss", "accuracy", "learning_rate"):
        assert train[tag] == list(range(10, total + 1, 10)), tag
    for tag in ("test_accuracy", "test_loss"):
        assert evals[tag] == evaluations, tag
    updates = list(range(0, int(0.75 * total) + 1, 20))  # T_end: 75% of the run
    masks = _scalars(path / "logs" / "masks")
    assert masks["mask_update/drop_fraction"] == updates
    for tag, steps in masks.items():
        if tag.startswith("sparsity/"):
            # Also written when a session begins: once more at step 0 and at the resume step.
            assert sorted(set(steps)) == updates, tag
            counts = collections.Counter(steps)
            assert all(counts[s] == 1 for s in counts if s not in (0, 3 * every)), tag
        else:
            assert steps == updates, tag


# ------------------------------------------------------------------------------ non-finite
def test_non_finite_loss_stops_the_run_keeping_the_last_good_checkpoint(data_dir, tmp_path):
    # The learning rate jumps by 1e30 after step 50: the weights overflow within two steps.
    bindings = ["training.epochs=None", "training.train_steps=100",
                "training.checkpoint_every_steps=20", "training.log_every_steps=10",
                "learning_rate.schedule='step'", "learning_rate.boundaries=[50]",
                "learning_rate.decay_factor=1e30", "training.stop_on_nonfinite=3"]
    with pytest.raises(training.NonFiniteLossError) as stopped:
        _train(tmp_path, bindings, data_dir)
    message = str(stopped.value)
    assert "training.stop_on_nonfinite = 3" in message and "3 steps in a row" in message
    assert str(tmp_path / "checkpoints" / "ckpt-40") in message
    step = int(message.split()[1].rstrip(":"))
    assert 52 <= step <= 55
    assert _steps(tmp_path) == [40, 20]
    assert checkpoints.verify(str(tmp_path / "checkpoints" / "ckpt-40")) is None
    assert not (tmp_path / "results.json").exists()

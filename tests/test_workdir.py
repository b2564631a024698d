"""A workdir belongs to one run: the lock (a real second process, a killed holder) and the run
identity (fingerprint, bindings from gin text or settings, refusal listing the differences)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from rigl.experiments import workdir
from rigl.experiments.errors import USAGE_EXIT_STATUS, UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Takes the lock in another process, says so, then holds it until stdin closes or it is killed.
# The packages are registered bare so that importing the module does not run
# ``rigl/__init__.py``, which loads TensorFlow: 25 s on a loaded machine, for a lock.
HOLDER = textwrap.dedent("""
    import os, sys, types
    for name in ("rigl", "rigl.experiments"):
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__path__ = [os.path.join(sys.argv[2], *name.split("."))]
    from rigl.experiments.workdir import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()
""")


def test_usage_error_is_a_value_error_with_exit_status_2():
    assert issubclass(UsageError, ValueError)
    assert USAGE_EXIT_STATUS == 2


# ---------------------------------------------------------------------------------- lock
def test_lock_writes_its_holder_and_empties_the_file_on_release(tmp_path):
    run = tmp_path / "run"  # created by the lock
    with workdir.RunLock(str(run)) as lock:
        assert lock.held
        holder = json.loads((run / workdir.LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"]
    assert not lock.held
    assert (run / workdir.LOCK_FILE).read_text() == ""
    with workdir.RunLock(str(run)):  # free again
        pass


def test_lock_is_released_when_the_run_raises(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), workdir.RunLock(str(tmp_path)):
        raise RuntimeError("boom")
    with workdir.RunLock(str(tmp_path)):
        pass


def test_second_lock_in_the_same_process_is_refused(tmp_path):
    with workdir.RunLock(str(tmp_path)):
        with pytest.raises(UsageError, match=f"pid {os.getpid()}"):
            workdir.RunLock(str(tmp_path)).acquire()


def test_lock_held_by_another_process_then_taken_over_once_it_is_killed(tmp_path, caplog):
    run = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, run, ROOT], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError) as refused:
            workdir.RunLock(run).acquire()
        message = str(refused.value)
        assert f"pid {holder.pid}" in message and "--workdir" in message
        assert "\n" not in message
        holder.send_signal(signal.SIGKILL)  # no cleanup: the file still names the dead pid
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert json.loads(open(os.path.join(run, workdir.LOCK_FILE)).read())["pid"] == holder.pid
    caplog.set_level(logging.INFO, logger="absl")
    with workdir.RunLock(run):
        holder_now = json.loads(open(os.path.join(run, workdir.LOCK_FILE)).read())
        assert holder_now["pid"] == os.getpid()
    assert f"pid {holder.pid}" in caplog.text


# ------------------------------------------------------------------------------ identity
def test_fingerprint_is_stable_and_order_free():
    assert workdir.fingerprint({"training.seed": 0}) == (
        "sha256:" + hashlib.sha256(b'{"training.seed":0}').hexdigest())
    a = {"training.sparsity": 0.9, "training.dense_layers": ("fc1",), "updater.x": {"b": 1,
                                                                                   "a": 2}}
    b = {"updater.x": {"a": 2, "b": 1}, "training.dense_layers": ["fc1"],
         "training.sparsity": 0.9}
    assert workdir.fingerprint(a) == workdir.fingerprint(b)
    assert workdir.fingerprint({"training.epochs": 5}) == workdir.fingerprint(
        {"training.epochs": 5.0})
    assert workdir.fingerprint(a) != workdir.fingerprint({**a, "training.sparsity": 0.8})


OPERATIVE = """
# Macros:
# ==============================================================================
BASE = 0.1
SEEDS = [%SEED, 1]
SEED = 3

# Parameters for learning_rate:
# ==============================================================================
learning_rate.base = %BASE

# Parameters for training:
# ==============================================================================
training.custom_sparsity = \\
    {'fc1': 0.5,
     'fc2': 0.25}
training.dataset = 'mnist'
training.log_every_steps = 100
training.seed = %SEED
training.sparsity = 0.9
training.verbose = None

# Parameters for prune/updater:
# ==============================================================================
prune/updater.update_freq = 1000
prune/updater.grow_init = @initializer()
prune/training.log_every_steps = 7
dataset.data_dir = '/data'
other.seeds = %SEEDS
import os
"""


def test_bindings_from_gin_resolve_macros_and_leave_out_excluded():
    bindings = workdir.bindings_from_gin(OPERATIVE)
    assert bindings == {
        "learning_rate.base": 0.1,
        "other.seeds": [3, 1],
        "prune/updater.grow_init": "@initializer()",
        "prune/updater.update_freq": 1000,
        "training.custom_sparsity": {"fc1": 0.5, "fc2": 0.25},
        "training.dataset": "mnist",
        "training.seed": 3,
        "training.sparsity": 0.9,
    }
    everything = workdir.bindings_from_gin(OPERATIVE, exclude=())
    assert everything["training.log_every_steps"] == 100
    assert everything["prune/training.log_every_steps"] == 7


def test_settings_that_cannot_change_the_numbers_are_not_the_identity():
    text = ("training.sparsity = 0.9\ntraining.stop_on_nonfinite = 3\n"
            "training.log_every_steps = 10\ntraining.verbose = 2\n"
            "training.checkpoint_every_steps = 5\ndataset.data_dir = '/d'\n")
    assert workdir.bindings_from_gin(text) == {"training.sparsity": 0.9}
    assert workdir.bindings_from_fields({"force_resume": True, "dry_run": False,
                                         "stop_on_nonfinite": 0, "seed": 1}) == {
        "training.seed": 1}


def test_bindings_from_fields_name_them_as_gin_does():
    fields = {"workdir": "/tmp/x", "dataset": "mnist", "sparsity": 0.9, "seed": 0,
              "log_every_steps": 10, "verbose": 2, "dry_run": False,
              "checkpoint_every_steps": 100, "eval_every_steps": 50}
    assert workdir.bindings_from_fields(fields) == {
        "training.dataset": "mnist", "training.sparsity": 0.9, "training.seed": 0,
        "training.eval_every_steps": 50}
    assert workdir.bindings_from_fields({"seed": 1}, prefix="", exclude=()) == {"seed": 1}


def test_identity_is_written_atomically_beside_the_checkpoints(tmp_path):
    bindings = {"training.sparsity": 0.9, "training.dense_layers": ()}
    assert workdir.check_identity(str(tmp_path), bindings) == "new"
    stored = json.loads((tmp_path / workdir.IDENTITY_FILE).read_text())
    assert stored["bindings"] == {"training.sparsity": 0.9, "training.dense_layers": []}
    assert stored["fingerprint"] == workdir.fingerprint(bindings)
    assert sorted(os.listdir(tmp_path)) == [workdir.IDENTITY_FILE]  # no temporary left
    assert workdir.check_identity(str(tmp_path), dict(bindings)) == "same"


def _issue_run(sparsity, seed, log_every_steps=100):
    """The bindings of the issue's example, as the operative config would give them."""
    return workdir.bindings_from_gin(
        f"training.sparsity = {sparsity}\ntraining.seed = {seed}\n"
        f"training.log_every_steps = {log_every_steps}\ntraining.method = 'rigl'\n")


def test_restart_with_other_bindings_is_refused_listing_every_difference(tmp_path):
    run = str(tmp_path)
    workdir.check_identity(run, _issue_run(0.9, 0))
    before = (tmp_path / workdir.IDENTITY_FILE).read_text()
    with pytest.raises(UsageError) as refused:
        workdir.check_identity(run, _issue_run(0.8, 1), has_checkpoints=True)
    message = str(refused.value)
    assert "training.seed: 0 -> 1" in message
    assert "training.sparsity: 0.9 -> 0.8" in message
    assert "training.method" not in message  # only what differs
    assert "--workdir" in message and workdir.FORCE_FLAG in message
    assert "\n" not in message
    assert (tmp_path / workdir.IDENTITY_FILE).read_text() == before
    # A setting that cannot change the run's numbers may change on a restart.
    assert workdir.check_identity(run, _issue_run(0.9, 0, log_every_steps=5)) == "same"


def test_a_binding_only_one_side_has_shows_as_unset(tmp_path):
    workdir.check_identity(str(tmp_path), {"a.x": 1, "a.y": "s"})
    with pytest.raises(UsageError, match=r"a\.y: 's' -> \(unset\); a\.z: \(unset\) -> 2"):
        workdir.check_identity(str(tmp_path), {"a.x": 1, "a.z": 2})


def test_force_replaces_the_identity_and_keeps_the_old_one(tmp_path, caplog):
    run = str(tmp_path)
    workdir.check_identity(run, _issue_run(0.9, 0))
    assert workdir.check_identity(run, _issue_run(0.8, 0), force=True) == "forced"
    assert "training.sparsity: 0.9 -> 0.8" in caplog.text
    stored = workdir.read_identity(run)
    assert stored["bindings"]["training.sparsity"] == 0.8
    assert [old["bindings"]["training.sparsity"] for old in stored["previous"]] == [0.9]
    assert workdir.check_identity(run, _issue_run(0.8, 0)) == "same"


def test_checkpoints_without_identity_are_adopted_with_a_warning(tmp_path, caplog):
    assert workdir.check_identity(str(tmp_path), _issue_run(0.9, 0),
                                  has_checkpoints=True) == "adopted"
    assert workdir.IDENTITY_FILE in caplog.text
    assert workdir.read_identity(str(tmp_path))["bindings"]["training.sparsity"] == 0.9


def test_unreadable_identity_is_a_usage_error_unless_forced(tmp_path):
    (tmp_path / workdir.IDENTITY_FILE).write_text("{not json")
    with pytest.raises(UsageError, match=workdir.IDENTITY_FILE):
        workdir.check_identity(str(tmp_path), {"a.x": 1})
    assert workdir.check_identity(str(tmp_path), {"a.x": 1}, force=True) == "new"
    assert workdir.read_identity(str(tmp_path))["bindings"] == {"a.x": 1}


def test_runs_from_before_flops_counting_resume_with_the_counting_they_used(tmp_path):
    """An identity stored before training.flops_counting existed reads as 'exact', the
    counting those runs' FLOPs logs hold: resuming it needs that binding."""
    run = str(tmp_path)
    workdir.check_identity(run, {"training.seed": 0})  # an identity without the binding
    assert workdir.check_identity(
        run, {"training.seed": 0, "training.flops_counting": "exact"}) == "same"
    with pytest.raises(UsageError, match="training.flops_counting: 'exact' -> 'paper'"):
        workdir.check_identity(run, {"training.seed": 0, "training.flops_counting": "paper"})

"""scripts/launch_local.py: local multi-worker runs, output, failure and Ctrl-C handling."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import ROOT, script_module

LAUNCHER = os.path.join(ROOT, "scripts", "launch_local.py")
BASE_CONFIG = os.path.join(ROOT, "gin_configs", "mnist_lenet300.gin")
# The smallest run the pipeline's multi-worker test trains: 120 steps, 6 mask updates.
SHORT = ["training.epochs=None", "training.train_steps=120", "updater.update_freq=20",
         "training.checkpoint_every_steps=40"]

# Reports its arguments and TF_CONFIG; with --fail, worker 0 fails after the others have
# started and the others wait to be stopped, writing their pid first.
STUB = textwrap.dedent("""\
    import json, os, sys, time
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    print("argv", json.dumps(sys.argv[1:]))
    print("tf_config", os.environ["TF_CONFIG"])
    sys.stdout.write("step 1\\rstep 2\\r\\n")
    print("to stderr", file=sys.stderr)
    sys.stdout.flush()
    if "--fail" in sys.argv:
        with open(os.path.join(sys.argv[2], f"pid_{index}"), "w") as f:
            f.write(str(os.getpid()))
        if index == 0:
            time.sleep(1)
            sys.exit(3)
        time.sleep(600)
    """)


@pytest.fixture(scope="module")
def launcher():
    with script_module(LAUNCHER, "launch_local") as module:
        yield module


def _launch(args, launcher_args=(), timeout=600, **kwargs):
    command = [sys.executable, LAUNCHER, *launcher_args, "--", *args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout,
                          **kwargs)


@pytest.fixture
def stub(tmp_path):
    path = tmp_path / "stub.py"
    path.write_text(STUB)
    return ["--workers=2", f"--script={path}"]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_strategy_binding_is_detected(launcher):
    assert launcher.sets_strategy(["--gin_bindings=training.strategy='mirrored'"])
    assert launcher.sets_strategy(["--gin_bindings", "training.strategy = 'default'"])
    assert launcher.sets_strategy(["-gin_bindings=a.b=1\nscope/training.strategy='tpu'"])
    assert not launcher.sets_strategy(["--gin_bindings=strategy.logical_cpus=2",
                                       "--gin_config=training.strategy.gin"])
    command = launcher.worker_command(["--workdir=w"], script="s.py")
    assert command == [sys.executable, "s.py", "--workdir=w",
                       "--gin_bindings=training.strategy='multi_worker'"]
    assert launcher.worker_command(["--gin_bindings=training.strategy='mirrored'"])[-1] == (
        "--gin_bindings=training.strategy='mirrored'")


def test_tf_config_and_ports(launcher):
    ports = launcher.free_ports(3)
    assert len(set(ports)) == 3
    assert json.loads(launcher.tf_config(["h0:1", "h1:2"], 1)) == {
        "cluster": {"worker": ["h0:1", "h1:2"]}, "task": {"type": "worker", "index": 1}}


def test_each_worker_gets_its_config_and_prefixed_output(stub):
    result = _launch(["--workdir=w"], [*stub, "--port_base=23450"], timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    for index in range(2):
        lines = [line.removeprefix(f"[worker {index}] ") for line in result.stdout.splitlines()
                 if line.startswith(f"[worker {index}] ")]
        argv = json.loads(lines[0].removeprefix("argv "))
        assert argv == ["--workdir=w", "--gin_bindings=training.strategy='multi_worker'"]
        assert json.loads(lines[1].removeprefix("tf_config ")) == {
            "cluster": {"worker": ["127.0.0.1:23450", "127.0.0.1:23451"]},
            "task": {"type": "worker", "index": index}}
        assert lines[2:] == ["step 1", "step 2"]  # a \r-rewritten line, one line per update
        assert f"[worker {index}] to stderr" in result.stderr.splitlines()


def test_a_failing_worker_stops_the_others(stub, tmp_path):
    start = time.monotonic()
    result = _launch(["--fail", str(tmp_path)], stub, timeout=120)
    assert result.returncode == 3, result.stdout + result.stderr
    assert time.monotonic() - start < 60
    assert "worker 0 exited with status 3" in result.stderr
    assert not _alive(int((tmp_path / "pid_1").read_text()))


def test_interrupt_stops_every_worker(stub, tmp_path):
    command = [sys.executable, LAUNCHER, *stub, "--", "--fail", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "pid_1").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "stopping the workers" in err
    for index in range(2):
        path = tmp_path / f"pid_{index}"
        if path.exists():  # worker 0 may have failed by itself already
            assert not _alive(int(path.read_text()))


def _train_args(workdir, data_dir, bindings):
    return [f"--gin_config={BASE_CONFIG}", f"--workdir={workdir}",
            f"--gin_bindings=dataset.data_dir={data_dir!r}", "--gin_bindings=training.verbose=0",
            *[f"--gin_bindings={b}" for b in bindings]]


def test_invalid_binding_fails_the_launch(data_dir, tmp_path):
    result = _launch(_train_args(tmp_path, data_dir, ["training.no_such_parameter=1"]),
                     ["--workers=2"], timeout=300)
    assert result.returncode != 0
    assert "worker 0 exited with status" in result.stderr or (
        "worker 1 exited with status" in result.stderr)
    assert any(line.startswith("[worker ") and "no_such_parameter" in line
               for line in result.stderr.splitlines())


def test_two_workers_end_with_identical_masks(data_dir, tmp_path):
    """The one real multi-worker run of the suite (MultiWorkerMirroredStrategy, two
    processes): identical masks and weights, chief-only shared files, refusal to resume
    out of step."""
    import keras  # TensorFlow only for the tests that train

    import rigl

    bindings = [*SHORT, "training.mask_snapshot_steps=[0, 120]"]
    result = _launch(_train_args(tmp_path, data_dir, bindings), ["--workers=2"])
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    chief, other = tmp_path, tmp_path / "workers" / "worker_1"
    with np.load(chief / "mask_snapshots" / "step_0.npz") as initial, \
            np.load(chief / "mask_snapshots" / "step_120.npz") as final, \
            np.load(other / "mask_snapshots" / "step_120.npz") as final_other:
        assert sorted(final) == sorted(final_other)
        assert any(not np.array_equal(initial[name], final[name]) for name in final)
        for name in final:
            np.testing.assert_array_equal(final[name], final_other[name], err_msg=name)
    models = [keras.saving.load_model(path / "model.keras") for path in (chief, other)]
    masks = [rigl.get_masks(model) for model in models]
    assert masks[0].keys() == masks[1].keys()
    for name in masks[0]:
        np.testing.assert_array_equal(masks[0][name], masks[1][name], err_msg=name)
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_array_equal(a, b)
    results = json.loads((chief / "results.json").read_text())
    assert results["num_replicas"] == 2
    # Only the chief writes the shared files; each other worker owns its folder.
    assert sorted(p.name for p in other.iterdir() if p.is_file()) == [
        "eval_log.json", "model.keras", "run.lock", "run_identity.json"]
    for name in ("config.gin", "operative_config.gin", "results.json", "run_identity.json"):
        assert (chief / name).exists(), name

    # A worker whose newest checkpoint is damaged would resume at another step than the
    # chief: the workers stop, naming the steps, instead of training out of step.
    os.remove(other / "checkpoints" / "ckpt-120.index")
    result = _launch(_train_args(tmp_path, data_dir, bindings), ["--workers=2"])
    assert result.returncode != 0
    assert "this worker (worker_" in result.stderr, result.stderr[-3000:]

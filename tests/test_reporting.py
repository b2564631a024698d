"""What a run reports while it trains: the progress line (rigl/experiments/reporting.py).

Timing comes from a fake clock, so nothing here depends on how fast the machine is.
"""

import inspect
import io
import math
import os

import keras
import pytest
import tensorflow as tf

from rigl.experiments import reporting, training
from rigl.experiments.config import TrainConfig


class FakeClock:
    """A clock that reads ``now``; tests move it by hand."""

    def __init__(self, now=0.0):
        self.now = now

    def __call__(self):
        return self.now


def test_learning_rate_keeps_its_significant_digits():
    assert reporting.format_lr(0.1) == "0.1"
    assert reporting.format_lr(float(tf.constant(0.1, tf.float32))) == "0.1"  # not 0.1000000015
    assert reporting.format_lr(0.001) == "0.001"
    assert reporting.format_lr(1.234e-05) == "1.234e-05"
    assert reporting.format_lr(0.0) == "0"  # where a cosine schedule ends
    assert reporting.format_lr(-0.0) == "0"
    assert reporting.format_lr(2.6822091214739885e-08) == "2.682e-08"


def test_durations_and_rates():
    assert [reporting.format_duration(s) for s in (0, 0.4, 45, 146, 3599.6, 3725, 200_000)] == [
        "0s", "0s", "45s", "2m26s", "1h00m", "1h02m", "55h33m"]
    assert reporting.format_rate(12.34) == "12.3 steps/s"
    assert reporting.format_rate(0.25) == "4.00 s/step"
    assert reporting.format_rate(None) == "-- steps/s"


def _progress(verbosity=2, start_step=0, total=3000):
    clock, stream = FakeClock(), io.StringIO()
    progress = reporting.ProgressLine(total, start_step, verbosity, stream=stream, clock=clock)
    return progress, clock, stream


def test_progress_lines_rates_exclude_the_first_step():
    progress, clock, stream = _progress()
    progress.begin()
    clock.now = 4.0  # the first step traces the training function: 4 s
    progress.step_done(1)
    progress.update(1, loss=2.30264, lr=0.1, accuracy=0.0912)
    for step in range(2, 101):
        progress.step_done(step)
    clock.now = 4.0 + 9.9  # 99 steps at 10 steps/s
    progress.update(100, loss=0.5, lr=0.1, accuracy=0.85)
    for step in range(101, 1201):
        progress.step_done(step)
    clock.now = 4.0 + 9.9 + 1100 / 12.3456  # then 12.3 steps/s
    progress.update(1200, loss=0.23454, lr=0.1, accuracy=0.93124)
    clock.now += 1800 / 12.0
    progress.update(3000, loss=0.1, lr=0.0, accuracy=0.97)
    # Mean rate since the first step: 1199 steps in 99.0 s -> ETA 1800 / 12.11 = 149 s.
    assert stream.getvalue().splitlines() == [
        "step 1/3,000 (0.0%)  first step 4.0s  loss 2.3026  acc 0.0912  lr 0.1",
        "step 100/3,000 (3.3%)  10.0 steps/s  ETA 4m50s  loss 0.5000  acc 0.8500  lr 0.1",
        "step 1,200/3,000 (40.0%)  12.3 steps/s  ETA 2m29s  loss 0.2345  acc 0.9312  lr 0.1",
        "step 3,000/3,000 (100.0%)  12.0 steps/s  took 4m13s  loss 0.1000  acc 0.9700  lr 0"]


def test_resumed_run_rates_come_from_the_resumed_part():
    progress, clock, stream = _progress(start_step=2000)
    assert progress.first_step == 2001
    clock.now = 1000.0
    progress.begin()
    clock.now = 1010.0  # restore and tracing: in no rate
    progress.step_done(2001)
    clock.now = 1010.0 + 99 / 3  # 3 steps/s after the first step
    progress.update(2100, loss=1.0, lr=1.234e-05, bits_per_char=1.75)
    assert stream.getvalue() == ("step 2,100/3,000 (70.0%)  3.0 steps/s  ETA 5m00s  "
                                 "loss 1.0000  bits/char 1.7500  lr 1.234e-05\n")


def test_terminal_mode_rewrites_one_line_and_ends_it():
    progress, clock, stream = _progress(verbosity=1, total=200)
    progress.begin()
    clock.now = 1.0
    progress.step_done(1)
    progress.update(1, loss=10.0, lr=0.1, accuracy=0.1)
    clock.now = 10.9
    progress.update(100, loss=1.0, lr=0.05, accuracy=0.5)
    out = stream.getvalue()
    assert "\n" not in out and out.count("\r") == 2
    second = out.split("\r")[-1]
    assert second == ("step 100/200 (50.0%)  10.0 steps/s  ETA 10s  loss 1.0000  "
                      "acc 0.5000  lr 0.05")
    clock.now = 20.9
    progress.update(200, loss=0.5, lr=0.0, accuracy=0.75)
    last = stream.getvalue().split("\r")[-1]
    expected = "step 200/200 (100.0%)  10.0 steps/s  took 21s  loss 0.5000  acc 0.7500  lr 0"
    # The shorter last line blanks what the longer one before it left, then ends the line.
    assert last == expected + " " * (len(second) - len(expected)) + "\n"
    assert len(second) > len(expected)
    progress.close()  # the line is already ended: nothing more
    assert stream.getvalue().count("\n") == 1

    # A run that stops early: close ends the open line.
    progress, clock, stream = _progress(verbosity=1)
    progress.update(1, loss=1.0, lr=0.1, accuracy=0.5)
    progress.close()
    assert stream.getvalue().startswith("\rstep 1/3,000") and stream.getvalue().endswith("\n")


def test_silent_and_invalid_verbosity():
    progress, clock, stream = _progress(verbosity=0)
    progress.step_done(1)
    progress.update(1, loss=1.0, lr=0.1, accuracy=0.5)
    progress.close()
    assert stream.getvalue() == ""
    with pytest.raises(ValueError, match="training.verbose"):
        reporting.ProgressLine(10, verbosity=3)


def _config(workdir, **overrides) -> TrainConfig:
    """A TrainConfig of ``training.train``'s defaults (whatever fields it has)."""
    defaults = {name: parameter.default
                for name, parameter in inspect.signature(training.train).parameters.items()
                if parameter.default is not inspect.Parameter.empty}
    return TrainConfig(**{**defaults, "workdir": str(workdir), **overrides})


def _scalars(folder):
    events = []
    for name in sorted(os.listdir(folder)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
            for value in event.summary.value:
                events.append((event.step, value.tag))
    return events


def test_run_report_prints_at_the_first_and_every_log_step(tmp_path):
    """The first step gets a line, the TensorBoard scalars stay at the log steps only."""
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    optimizer = keras.optimizers.SGD(0.1)
    config = _config(tmp_path, method="dense", train_steps=6, log_every_steps=3, verbose=2)
    clock, stream = FakeClock(), io.StringIO()
    report = reporting.RunReport(config, str(tmp_path), net, optimizer, start_step=0,
                                 total_steps=6, examples_per_step=10, stream=stream, clock=clock)
    assert report.task == "classification"
    report.begin()
    for step in range(1, 7):
        clock.now += 1.0
        report.step_done(step, tf.constant(0.5), tf.constant(7.0))
    report.close()
    lines = stream.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == [
        "step 1/6 (16.7%)", "step 3/6 (50.0%)", "step 6/6 (100.0%)"]
    assert lines[1] == "step 3/6 (50.0%)  1.0 steps/s  ETA 3s  loss 0.5000  acc 0.7000  lr 0.1"
    report.train_writer.close()
    assert _scalars(tmp_path / "logs" / "train") == [
        (step, tag) for step in (3, 6) for tag in ("loss", "accuracy", "learning_rate")]


def test_language_model_line_shows_bits_per_char_without_weight_decay(tmp_path):
    inputs = keras.Input((5,))
    hidden = keras.layers.Embedding(7, 4)(inputs)
    outputs = keras.layers.Dense(7, kernel_regularizer=keras.regularizers.l2(0.01))(hidden)
    net = keras.Model(inputs, outputs)
    penalty = float(sum(net.losses))
    assert penalty > 0
    config = _config(tmp_path, method="dense", train_steps=2, log_every_steps=1, verbose=2)
    stream = io.StringIO()
    report = reporting.RunReport(config, str(tmp_path), net, keras.optimizers.SGD(0.1),
                                 start_step=0, total_steps=2, examples_per_step=50,
                                 stream=stream, clock=FakeClock())
    assert report.task == "language_model"  # outputs per position
    report.step_done(1, tf.constant(math.log(2.0) * 1.5 + penalty), tf.constant(10.0))
    assert stream.getvalue().endswith("bits/char 1.5000  lr 0.1\n")

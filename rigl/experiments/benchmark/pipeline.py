"""The input-pipeline mode: does the project's TFDS pipeline keep the model fed?

LeNet-5 (``workloads.PIPELINE``) is trained fed by the project's TFDS MNIST pipeline
(``get_dataset("mnist").train_fn``) and, interleaved with it, the same model fed one in-memory
batch of it repeated; the report is the pipeline's step rate relative to the in-memory one.
MNIST is prepared offline into the TFDS data_dir from the original files when they exist.
"""

from __future__ import annotations

import contextlib
import os
import sys

import keras
import tensorflow as tf

from rigl.experiments.benchmark import harness, workloads


def pipeline_mode(data_dir: str | None, source: str, overrides: dict, jit_compile: str,
                  log) -> dict:
    """Times LeNet-5 fed by TFDS MNIST against one in-memory batch; the result dict.

    Args:
        data_dir: TFDS data_dir (None: TFDS's default, ``TFDS_DATA_DIR`` honoured).
        source: the original MNIST files, to prepare TFDS MNIST offline if it is missing.
        overrides: ``window_steps``, ``rounds``, ``warmup_steps`` to replace.
        jit_compile: ``--jit_compile``; only ``"true"`` compiles with XLA here.
        log: prints a progress line.
    """
    # TFDS is imported here, not at module level: the other modes never need it.
    from rigl.experiments import prepare
    from rigl.experiments.data import get_dataset
    from rigl.experiments.models import build_model

    config = dict(workloads.PIPELINE,
                  **{k: v for k, v in overrides.items() if k in workloads.PIPELINE})
    if data_dir is None:
        import tensorflow_datasets as tfds

        data_dir = tfds.core.constants.get_default_data_dir()
    if os.path.isdir(source):
        with contextlib.redirect_stdout(sys.stderr):  # TFDS prints progress to stdout
            prepare.prepare("mnist", source, data_dir)
    spec = get_dataset("mnist", data_dir=data_dir)
    tfds_data = spec.train_fn(None, config["batch"], 0)
    one_batch = next(iter(tfds_data))
    memory_data = tf.data.Dataset.from_tensors(one_batch).repeat()
    keras.utils.set_random_seed(0)
    model = harness.compile_model(
        build_model(config["model"], spec.input_shape, spec.num_classes), keras,
        jit_compile == "true")
    log(f"pipeline: {config['model']} batch {config['batch']}, W={config['window_steps']}, "
        f"{config['rounds']} rounds")
    datasets = {"in_memory": memory_data, "tfds": tfds_data}
    runners = {name: harness.Runner(name, model, []) for name in datasets}
    window, warmup = config["window_steps"], config["warmup_steps"]
    # One model, two inputs: a window of W steps stands for itself (no updates to amortise).
    for name, runner in runners.items():
        harness.run_window(runner, datasets[name], keras, window, warmup, window, window,
                           timed=False)
    names = list(runners)
    for r in range(config["rounds"]):
        for name in names[r % len(names):] + names[:r % len(names)]:
            harness.run_window(runners[name], datasets[name], keras, window, warmup, window,
                               window)
    summary = harness.summarize(list(runners.values()), "in_memory")
    return {"model": config["model"], "batch": config["batch"], "window_steps": window,
            "warmup_steps": warmup, "rounds": config["rounds"], "data_dir": data_dir,
            "variants": summary}

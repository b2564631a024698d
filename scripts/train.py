#!/usr/bin/env python
"""Trains one experiment from gin configs.

    python scripts/train.py --gin_config=gin_configs/mnist_lenet300_rigl.gin --workdir=/tmp/run \
        [--gin_bindings="training.method='set'"] [--gin_bindings=...]

Started again with the same --workdir, a run resumes from its last checkpoint. --dry_run
prints the per-layer sparsity table and the schedule without training; the binding
training.smoke=True trains a few steps on mock data (no dataset needed).
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

FLAGS = flags.DEFINE_multi_string("gin_config", [], "Gin config file(s), applied in order.")
BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, after the files.")
WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; resumes if it has a checkpoint.")
DRY_RUN = flags.DEFINE_bool("dry_run", False, "Build the model, masks and schedule, print "
                            "them and exit without training or writing anything.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import gin

    from rigl.experiments import training

    gin.parse_config_files_and_bindings(FLAGS.value, BINDINGS.value)
    if DRY_RUN.value:
        training.train(WORKDIR.value, dry_run=True)
        return
    if not WORKDIR.value:
        raise app.UsageError("--workdir is required (unless --dry_run).")
    os.makedirs(WORKDIR.value, exist_ok=True)
    with open(os.path.join(WORKDIR.value, "config.gin"), "w") as f:
        f.write(gin.config_str())
    training.train(WORKDIR.value)


if __name__ == "__main__":
    app.run(main)

#!/usr/bin/env python
"""Builds a TFDS dataset from local original files, with no network.

    python scripts/prepare_data.py --dataset=mnist --source_dir=../shared/data/mnist \
        --data_dir=~/tensorflow_datasets

Afterwards `tfds.load(NAME, data_dir=DATA_DIR, download=False)` works offline; training reads
it when TFDS_DATA_DIR (or the gin binding dataset.data_dir) points at DATA_DIR.
Datasets: mnist, fashion_mnist, tiny_shakespeare (byte-exact originals, verified by TFDS),
cifar10 (from ../shared/data/cifar10, a lossy JPEG rebuild).
"""

import os
import sys

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [SCRIPTS, os.path.dirname(SCRIPTS)]  # _cli, and rigl without installing it

import _cli  # noqa: E402 (after the path set-up above)
from absl import flags  # noqa: E402

DATASET = flags.DEFINE_string("dataset", None, "Dataset name.")
SOURCE_DIR = flags.DEFINE_string("source_dir", None, "Folder with the original files.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir to build into "
                               "(default: $TFDS_DATA_DIR or ~/tensorflow_datasets).")
flags.mark_flags_as_required(["dataset", "source_dir"])


def main(argv):
    from rigl.experiments import prepare
    from rigl.experiments.errors import UsageError

    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}; give everything as --flags.")
    # Checked here as well as in prepare(), so that a mistake is a usage error (one line).
    if DATASET.value not in prepare.PREPARABLE:
        raise UsageError(f"--dataset: {DATASET.value!r} cannot be prepared offline; allowed: "
                         f"{prepare.PREPARABLE} (imagenet2012 uses TFDS's own manual_dir "
                         "route).")
    if not os.path.isdir(os.path.expanduser(SOURCE_DIR.value)):
        raise UsageError(f"--source_dir: {SOURCE_DIR.value!r} is not a folder.")
    if not _cli.verbose_requested():
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()  # its download/extract bars report local copies here
    data_dir = DATA_DIR.value or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
        "~/tensorflow_datasets")
    path = prepare.prepare(DATASET.value, os.path.expanduser(SOURCE_DIR.value),
                           os.path.expanduser(data_dir))
    print(f"{DATASET.value} prepared in {path}")


if __name__ == "__main__":
    _cli.run(main)

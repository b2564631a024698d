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

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

DATASET = flags.DEFINE_string("dataset", None, "Dataset name.")
SOURCE_DIR = flags.DEFINE_string("source_dir", None, "Folder with the original files.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir to build into "
                               "(default: $TFDS_DATA_DIR or ~/tensorflow_datasets).")
flags.mark_flags_as_required(["dataset", "source_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from rigl.experiments import prepare

    data_dir = DATA_DIR.value or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
        "~/tensorflow_datasets")
    path = prepare.prepare(DATASET.value, os.path.expanduser(SOURCE_DIR.value),
                           os.path.expanduser(data_dir))
    print(f"{DATASET.value} prepared in {path}")


if __name__ == "__main__":
    app.run(main)

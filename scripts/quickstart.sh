#!/usr/bin/env bash
# The default experiment end to end: install, prepare MNIST offline, train RigL on
# LeNet-300-100 at 90% sparsity for 5 epochs (about a minute on 2 CPU cores).
#
#   bash scripts/quickstart.sh [WORKDIR]      (default WORKDIR: workdirs/quickstart)
#
# Data: ../shared/data/mnist when it exists (byte-exact originals, no network needed);
# otherwise Fashion-MNIST from the Debian package dataset-fashion-mnist when it is installed
# (`apt-get install dataset-fashion-mnist`; the run then trains on Fashion-MNIST); otherwise
# TFDS downloads MNIST (needs internet). TFDS_DATA_DIR chooses where the prepared dataset
# lives (default ~/tensorflow_datasets).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
WORKDIR=${1:-workdirs/quickstart}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
export TFDS_DATA_DIR=${TFDS_DATA_DIR:-$HOME/tensorflow_datasets}
BINDINGS=()
if [ -d ../shared/data/mnist ]; then
  .venv/bin/python scripts/prepare_data.py --dataset=mnist --source_dir=../shared/data/mnist \
    --data_dir="$TFDS_DATA_DIR"
elif [ -d /usr/share/datasets/fashion-mnist ]; then
  echo "../shared/data/mnist not found: training on Fashion-MNIST from dataset-fashion-mnist."
  .venv/bin/python scripts/prepare_data.py --dataset=fashion_mnist \
    --source_dir=/usr/share/datasets/fashion-mnist --data_dir="$TFDS_DATA_DIR"
  BINDINGS+=(--gin_bindings="training.dataset='fashion_mnist'")
else
  echo "../shared/data/mnist not found: letting TFDS download MNIST (needs internet)."
  BINDINGS+=(--gin_bindings="dataset.download=True")
fi
.venv/bin/python scripts/train.py --gin_config=gin_configs/mnist_lenet300_rigl.gin \
  --workdir="$WORKDIR" "${BINDINGS[@]}"
echo "results: $WORKDIR/results.json"

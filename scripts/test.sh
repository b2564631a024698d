#!/usr/bin/env bash
# Installs (scripts/setup.sh) and runs the test suite. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the long experiments, or
# `bash scripts/test.sh tests/test_masking.py` for one file.
#
# The whole suite takes 15-40 minutes on a quiet 2-core machine, by the host (README, Tests); it ends by printing
# its wall time (`--durations=15` also lists the slowest tests).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
# Tests prepare real data from ../shared/data; in CI its absence is an error, not a skip.
start=$SECONDS
.venv/bin/python -m pytest -q "$@"
status=$?
elapsed=$((SECONDS - start))
echo "test suite: $((elapsed / 60)) min $((elapsed % 60)) s"
# Exit code 5 means no test was collected (e.g. a -m selection matching nothing).
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests"
  exit 0
fi
exit "$status"

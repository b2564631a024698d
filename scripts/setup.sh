#!/usr/bin/env bash
# Creates .venv (Python 3.11) with the pinned requirements (requirements.txt, the optional
# LiteRT runtime of requirements-export.txt and the test-only clients of
# requirements-test.txt, which the tests use) and rigl installed editable.
#
# Silent and immediate when nothing changed: pip runs only when the requirements files,
# pyproject.toml, this script or the venv's Python version differ from the last successful
# install (their hash is kept in .venv/.setup-stamp), or the editable install is gone.
# RIGL_SETUP_FORCE=1 installs anyway. pip's output goes to .venv/setup.log and is shown
# only when it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.setup-stamp
log=.venv/setup.log
version=$(.venv/bin/python -c 'import sys; print(sys.version)' 2>/dev/null || echo broken)
key=$(cat requirements.txt requirements-export.txt requirements-test.txt pyproject.toml scripts/setup.sh <(echo "$version") | sha256sum)
key=${key%% *}
installed() {
  compgen -G ".venv/lib/python*/site-packages/__editable__.rigl-*.pth" >/dev/null
}
if [ -z "${RIGL_SETUP_FORCE:-}" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$key" ] && installed
then
  exit 0
fi
echo "setup: installing requirements.txt, requirements-export.txt, requirements-test.txt and rigl (editable) into .venv"
rm -f "$stamp"
if ! { .venv/bin/python -m pip install --quiet --upgrade pip &&
       .venv/bin/python -m pip install --quiet -r requirements.txt \
         -r requirements-export.txt -r requirements-test.txt -e .; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "setup: pip failed (output above, also in $log)" >&2
  exit 1
fi
# pip exits 0 on some errors worth seeing, e.g. conflicting dependency versions.
grep '^ERROR' "$log" >&2 || true
echo "$key" >"$stamp"

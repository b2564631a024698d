#!/usr/bin/env python
"""Trains one experiment from gin configs.

    python scripts/train.py --gin_config=gin_configs/mnist_lenet300_rigl.gin --workdir=/tmp/run \
        [--gin_bindings="training.method='set'"] [--gin_bindings=...]

Started again with the same --workdir, a run resumes from its last checkpoint; a workdir
holding a run with other bindings is refused unless --force_resume. --dry_run prints the
per-layer sparsity table and the schedule without training; the binding training.smoke=True
trains a few steps on mock data (no dataset needed).

A mistake in the flags, files or bindings (a missing file, a misspelt gin name, a value out
of range) stops the run before it writes anything, with one line on stderr naming it and
exit status 2; --verbosity=0 shows every log line and the traceback.
"""

import contextlib
import logging
import os
import sys

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [SCRIPTS, os.path.dirname(SCRIPTS)]  # _cli, and rigl without installing it

import _cli  # noqa: E402 (after the path set-up above)

_cli.start()  # before the first import of rigl, which imports TensorFlow

from absl import flags  # noqa: E402

from rigl.experiments.errors import UsageError  # noqa: E402
from rigl.experiments.workdir import FORCE_FLAG  # noqa: E402

CONFIGS = flags.DEFINE_multi_string("gin_config", [], "Gin config file(s), applied in order.")
BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, after the files.")
WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; resumes if it has a checkpoint.")
DRY_RUN = flags.DEFINE_bool("dry_run", False, "Build the model, masks and schedule, print "
                            "them and exit without training or writing anything.")
FORCE_RESUME = flags.DEFINE_bool(
    FORCE_FLAG.removeprefix("--"), False, "Continue the checkpoints of a workdir that holds a "
    "run with other bindings (refused without this flag).")


@contextlib.contextmanager
def _gin_logs_quiet():
    """Gin logs "Path not found" before raising the error it is reported by; one is enough."""
    if _cli.verbose_requested():
        yield
        return
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def parse_gin(configs: list[str], bindings: list[str]) -> None:
    """Parses the gin files and bindings; any mistake in them is a ``UsageError``."""
    import gin

    for path in configs:
        if not os.path.isfile(path):
            raise UsageError(f"--gin_config: no such file {path!r}.")
    try:
        with _gin_logs_quiet():
            gin.parse_config_files_and_bindings(configs, bindings)
    # What gin raises for input it cannot use: a statement it cannot parse (SyntaxError), an
    # unknown configurable or parameter (ValueError), an include not found (OSError).
    except SyntaxError as error:
        where = (f"{error.filename} line {error.lineno}" if error.filename
                 else "--gin_bindings")
        why = error.msg.splitlines()[-1].strip()
        hint = " (a string value needs quotes)" if "Failed to parse token" in why else ""
        raise UsageError(f"gin: cannot parse {(error.text or '').strip()!r} in {where}: "
                         f"{why}{hint}") from error
    except (ValueError, OSError) as error:
        # gin puts where the error is on lines of their own: "In <where> line <n>", <text>.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        what = lines[0] if lines else repr(error)
        where = f" ({lines[1]}: {' '.join(lines[2:])})" if len(lines) > 2 else ""
        raise UsageError(f"gin: {what}{where}") from error


def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}; give everything as --flags "
                         "(bindings with --gin_bindings).")
    if not WORKDIR.value and not DRY_RUN.value:
        raise UsageError("--workdir: required (unless --dry_run).")
    # Parsed before training imports (the gin names exist once rigl.experiments.config is
    # imported, which parse_gin's errors need to name the right thing).
    from rigl.experiments import training

    parse_gin(CONFIGS.value, BINDINGS.value)
    # The run validates every binding before it writes anything, and (as the chief) writes
    # config.gin itself once the workdir is its own.
    training.train(WORKDIR.value, dry_run=DRY_RUN.value, force_resume=FORCE_RESUME.value)


if __name__ == "__main__":
    _cli.run(main)

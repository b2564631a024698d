"""What every script does around its ``main``: quiet logs and one-line user errors.

Scripts call ``_cli.run(main)`` instead of ``absl.app.run(main)``, and ``_cli.start()``
first thing, before a module-level import of ``rigl`` (which imports TensorFlow); a script
adds its own folder to ``sys.path`` for ``import _cli`` (``python scripts/x.py`` does it
too, but the tests import scripts as modules). It lives beside the scripts, not in ``rigl``,
because importing anything under ``rigl`` imports TensorFlow, and the point is to run
before that import. It

* keeps TensorFlow's start-up noise off the terminal: ``TF_CPP_MIN_LOG_LEVEL=3`` and, while
  TensorFlow is imported, the C++ lines printed before its logging is set up (the
  ``absl::InitializeLog`` warning, "Could not find cuda drivers", CPU-feature notes), which
  no environment variable silences. Lines that are not known noise are still shown, and so
  is everything when the import fails;
* keeps absl's INFO log lines to the project's own (absl.app.run turns INFO on, and
  TensorFlow and TFDS then log "Sharding callback duration" at every checkpoint, every
  dataset they construct, ...); warnings and errors are shown whoever logs them;
* turns a user error into one line on stderr, ``error: <message>``, and exit status 2,
  without a traceback: a ``UsageError`` (or absl's ``app.UsageError``) from ``main``, and a
  flag absl cannot parse (a bad value, a required flag missing), which absl itself reports
  with its usage text and status 1.

``--verbosity`` (absl's flag; ``-v``) at 0 or above, or ``RIGL_VERBOSE=1``, keeps every log
line and prints the traceback of a usage error too.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable

# C++ log lines TensorFlow prints at import and device set-up that say nothing to a user of
# a CPU or a correctly set-up GPU machine.
NOISE = re.compile(
    r"All log messages before absl::InitializeLog|cudart_stub\.cc|cuda_platform\.cc|"
    r"failed call to cuInit|cpu_feature_guard\.cc|To enable the following instructions|"
    r"oneDNN custom operations are on|rebuild TensorFlow with the appropriate compiler")

# Code whose INFO log lines are shown by default: the project's (rigl/, scripts/). Not the
# whole checkout: its .venv holds TensorFlow and TFDS.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT_DIRS = tuple(os.path.join(_ROOT, name) + os.sep for name in ("rigl", "scripts"))


class ProjectInfoOnly(logging.Filter):
    """Passes warnings and errors, and INFO lines logged by the project's own code."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or os.path.abspath(
            record.pathname).startswith(PROJECT_DIRS)


# What gin appends to the message of an exception passing through a configurable.
GIN_CALL_NOTE = re.compile(
    r"\n\s*In call to configurable '[^']*' \(<[^\n]*>\)( in scope '[^']*')?")


def verbose_requested(argv: list[str] | None = None) -> bool:
    """Whether the command line or the environment asks for every log line."""
    if os.environ.get("RIGL_VERBOSE", "") not in ("", "0"):
        return True
    argv = sys.argv if argv is None else argv
    for i, arg in enumerate(argv):
        value = None
        if arg.startswith(("--verbosity=", "-v=")):
            value = arg.split("=", 1)[1]
        elif arg in ("--verbosity", "-v") and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None:
            try:
                return int(value) >= 0
            except ValueError:
                return True
    return False


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its start-up noise filtered out of stderr (see module doc)."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        failed = True
        try:
            import tensorflow  # noqa: F401

            # No device is touched here: initialising the runtime now would forbid what
            # the strategies set up later (collective ops for multi_worker, logical CPUs).
            # The "failed call to cuInit" line of the first device use is an error-level
            # log, hidden by TF_CPP_MIN_LOG_LEVEL=3.
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            lines = text.splitlines() if failed else [
                line for line in text.splitlines() if not NOISE.search(line)]
            if lines:
                print("\n".join(lines), file=sys.stderr)


def one_line(error: BaseException) -> str:
    """The message of a usage error on one line, without the "In call to configurable"
    notes gin appends to an error raised inside a configurable function (it re-raises a
    proxy whose message has them on lines of their own)."""
    return " ".join(GIN_CALL_NOTE.sub("", str(error)).split())


def start() -> bool:
    """Quiets the TensorFlow import unless verbose output is asked for (idempotent).

    Call it before anything imports TensorFlow. Returns whether output is verbose.
    """
    verbose = verbose_requested()
    if not verbose:
        import_tensorflow_quietly()
    return verbose


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a parse error reported as a usage error (see module doc)."""
    from absl import flags

    from rigl.experiments.errors import USAGE_EXIT_STATUS

    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        print(f"error: {error} (--helpshort lists the flags)", file=sys.stderr)
        sys.exit(USAGE_EXIT_STATUS)


def run(main: Callable[[list[str]], object]) -> None:
    """``absl.app.run(main)`` with quiet logs and one-line usage errors (exit status 2)."""
    from absl import app

    verbose = start()

    from rigl.experiments.errors import USAGE_EXIT_STATUS, UsageError

    def wrapped(argv):
        if not verbose:
            from absl import logging as absl_logging

            absl_logging.get_absl_handler().addFilter(ProjectInfoOnly())
        try:
            return main(argv)
        except (UsageError, app.UsageError) as error:
            if verbose:
                traceback.print_exc()
            print(f"error: {one_line(error)}", file=sys.stderr)
            sys.exit(USAGE_EXIT_STATUS)

    app.run(wrapped, flags_parser=_parse_flags)

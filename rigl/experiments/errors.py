"""Errors the experiment layer reports to the person running it, as opposed to bugs.

``UsageError`` is raised for bad input: a binding, flag or file the user gave, or a workdir
that is not theirs to use (held by another run, or holding a run with other bindings). Its
message is complete on one line: it names the parameter or file, what was wrong and what is
allowed or what to do. The scripts (``scripts/*.py``) catch it around ``main``, print
``str(error)`` alone on stderr (no traceback unless ``--verbosity`` asks for one) and exit
with ``USAGE_EXIT_STATUS`` (2, the shell convention for misuse, as argparse does).

Where a new error plugs in: raise ``UsageError`` for anything the user can fix by changing
what they typed; keep every other failure an ordinary exception, whose traceback is the
useful report. It subclasses ``ValueError`` so that code and tests catching the
``ValueError`` a validation raised before keep working.
"""

USAGE_EXIT_STATUS = 2


class UsageError(ValueError):
    """Bad user input; the message is one self-contained line (see the module docstring)."""

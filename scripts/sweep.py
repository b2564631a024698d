#!/usr/bin/env python
"""Runs a sweep (a grid of scripts/train.py runs), resumable, then aggregates it.

    python scripts/sweep.py --sweep=gin_configs/sweeps/fashion_mnist_lenet300.gin
    python scripts/sweep.py --sweep=gin_configs/sweeps/fashion_mnist_lenet300.gin --jobs=2
    python scripts/sweep.py --sweep=gin_configs/sweeps/fashion_mnist_lenet300.gin --dry_run
    python scripts/sweep.py --sweep=gin_configs/sweeps/fashion_mnist_lenet300.gin --aggregate_only

Each run trains in its own subprocess in `<root>/<run name>/` (default root:
workdirs/sweeps/<sweep name>). Runs with a results.json (in their workdir, or already
collected under `<results_dir>/runs/`, as committed to the repository) are skipped and
unfinished ones resume from their checkpoints, so an interrupted sweep continues where it
stopped when started again with the same command. --jobs=N trains N runs at a time.
Afterwards (or with --aggregate_only) every finished run's results.json is copied to
`<results_dir>/runs/<run name>/` (default results_dir: results/<sweep name>) and table.md,
table.csv and the plots are built from those copies. The sweep file format is
documented in rigl/experiments/sweep/grid.py.
"""

import os
import sys

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(SCRIPTS)
sys.path[:0] = [SCRIPTS, ROOT]  # _cli, and rigl without installing it

import _cli  # noqa: E402 (after the path set-up above)
from absl import flags  # noqa: E402

SWEEP = flags.DEFINE_string("sweep", None, "Sweep definition (gin_configs/sweeps/*.gin).")
RUN_ROOT = flags.DEFINE_string("root", None, "Folder of the run workdirs (default: "
                               "workdirs/sweeps/<sweep name> in the repository).")
RESULTS_DIR = flags.DEFINE_string("results_dir", None, "Where tables, plots and copies of "
                                  "results.json go (default: results/<sweep name>).")
AGGREGATE_ONLY = flags.DEFINE_bool("aggregate_only", False, "Train nothing: collect finished "
                                   "runs and write the tables and plots.")
DRY_RUN = flags.DEFINE_bool("dry_run", False, "List every run, its status and its command "
                            "(with the thread environment --jobs gives it); train and write "
                            "nothing.")
MAX_RUNS = flags.DEFINE_integer("max_runs", None, "Train at most this many unfinished runs, "
                                "then aggregate and stop.", lower_bound=0)
JOBS = flags.DEFINE_integer("jobs", 1, "Runs trained at the same time, the CPU cores split "
                            "between them (TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS).",
                            lower_bound=1)
EXTRA_BINDINGS = flags.DEFINE_multi_string("extra_bindings", [], "Gin bindings appended to "
                                           "every run's (e.g. training.smoke=True).")
flags.mark_flag_as_required("sweep")


def main(argv):
    from rigl.experiments import sweep as sweeps
    from rigl.experiments.errors import UsageError

    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}; give everything as --flags.")
    if AGGREGATE_ONLY.value and DRY_RUN.value:
        raise UsageError("--aggregate_only and --dry_run exclude each other.")
    if not os.path.isfile(SWEEP.value):
        raise UsageError(f"--sweep: no such file {SWEEP.value!r}; sweeps are in "
                         "gin_configs/sweeps/.")

    repo = os.path.abspath(ROOT)
    try:
        definition = sweeps.load_sweep(SWEEP.value)
        root = os.path.abspath(RUN_ROOT.value or os.path.join(repo, "workdirs", "sweeps",
                                                              definition.name))
        results_dir = os.path.abspath(RESULTS_DIR.value or os.path.join(repo, "results",
                                                                       definition.name))
        planned = sweeps.plan(definition, root, repo, EXTRA_BINDINGS.value,
                              results_dir=results_dir)
        if DRY_RUN.value:
            print(sweeps.describe_plan(planned, env=sweeps.thread_env(JOBS.value)))
            return 0
        failed = []
        if not AGGREGATE_ONLY.value:
            report = sweeps.run_sweep(planned, root, repo, max_runs=MAX_RUNS.value,
                                      jobs=JOBS.value)
            failed = report.failed
            print(f"sweep {definition.name}: {len(report.ran)} trained, {len(report.skipped)} "
                  f"already finished, {len(report.failed)} failed, {len(report.left)} left.")
        sweeps.aggregate_sweep(definition, planned, results_dir)
    except sweeps.SweepError as error:  # a mistake in the sweep file or the results given
        raise UsageError(str(error)) from error
    if failed:
        sys.exit(f"failed runs: {', '.join(failed)} (see their train.log)")
    return 0


if __name__ == "__main__":
    _cli.run(main)

"""Sweeps: a grid of training runs, run one subprocess each, resumed, aggregated and plotted.

``from rigl.experiments import sweep`` gives every public name of the package; each module
holds one step, in the order a sweep goes through them:

========================= ===================================================================
``grid``                  the sweep file (gin syntax, ``sweep.*`` only): ``Sweep``, ``Run``,
                          ``parse_sweep``, ``load_sweep``; which axes a method uses
``runner``                one workdir and one ``scripts/train.py`` subprocess per run:
                          ``plan``, ``run_sweep``, ``describe_plan``, ``thread_env``, logs,
                          ``SweepProgress``
``aggregation``           collected ``results.json`` copies -> records -> mean ± std rows ->
                          ``table.md`` / ``table.csv``
``plots``                 test score vs sparsity and vs training FLOPs, connectivity images
``report``                ``aggregate_sweep``: collect, tables and plots in one step
========================= ===================================================================

A sweep in Python, as ``scripts/sweep.py`` does it::

    from rigl.experiments import sweep
    definition = sweep.load_sweep("gin_configs/sweeps/fashion_mnist_lenet300.gin")
    planned = sweep.plan(definition, "workdirs/sweeps/x", repo_root=".", results_dir="results/x")
    sweep.run_sweep(planned, "workdirs/sweeps/x", repo_root=".", jobs=3)
    sweep.aggregate_sweep(definition, planned, "results/x")

Method names, their order, labels and which grid axes they use come from ``rigl.methods``
(a new method needs no change here). Importing this package imports ``rigl`` and so
TensorFlow (the registry's rows name their updater classes); the sweep process itself never
builds a model, training happens in the subprocesses.
"""

from rigl.experiments.sweep.aggregation import (
    CSV_COLUMNS,
    DISTRIBUTION_ORDER,
    METHOD_LABELS,
    METHOD_ORDER,
    aggregate,
    collect,
    is_accuracy,
    load_records,
    record_from_results,
    table_markdown,
    write_tables,
)
from rigl.experiments.sweep.grid import (
    FIRST_DISTRIBUTION_METHODS,
    NO_SPARSITY_METHODS,
    Run,
    Sweep,
    SweepError,
    load_sweep,
    parse_sweep,
)
from rigl.experiments.sweep.plots import (
    connectivity_image,
    load_mask_snapshots,
    plot_accuracy_vs_flops,
    plot_accuracy_vs_sparsity,
    plot_connectivity,
)
from rigl.experiments.sweep.report import aggregate_sweep
from rigl.experiments.sweep.runner import (
    LOG_FILE,
    RESULTS_FILE,
    SPEC_FILE,
    SWEEP_LOG_FILE,
    PlannedRun,
    SweepProgress,
    SweepReport,
    check_workdirs,
    command_line,
    describe_plan,
    method_config,
    metric_key,
    plan,
    run_status,
    run_sweep,
    subprocess_launcher,
    thread_env,
)

__all__ = [
    "CSV_COLUMNS",
    "DISTRIBUTION_ORDER",
    "FIRST_DISTRIBUTION_METHODS",
    "LOG_FILE",
    "METHOD_LABELS",
    "METHOD_ORDER",
    "NO_SPARSITY_METHODS",
    "RESULTS_FILE",
    "SPEC_FILE",
    "SWEEP_LOG_FILE",
    "PlannedRun",
    "Run",
    "Sweep",
    "SweepError",
    "SweepProgress",
    "SweepReport",
    "aggregate",
    "aggregate_sweep",
    "check_workdirs",
    "collect",
    "command_line",
    "connectivity_image",
    "describe_plan",
    "is_accuracy",
    "load_mask_snapshots",
    "load_records",
    "load_sweep",
    "method_config",
    "metric_key",
    "parse_sweep",
    "plan",
    "plot_accuracy_vs_flops",
    "plot_accuracy_vs_sparsity",
    "plot_connectivity",
    "record_from_results",
    "run_status",
    "run_sweep",
    "subprocess_launcher",
    "table_markdown",
    "thread_env",
    "write_tables",
]

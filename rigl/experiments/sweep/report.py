"""A sweep's results folder, written in one step: ``aggregate_sweep``.

It chains the other modules: collect finished runs (``aggregation.collect``), tables
(``aggregation``), plots (``plots``), and a connectivity figure for every run whose workdir
kept mask snapshots. It is what ``scripts/sweep.py`` runs after training, or alone with
``--aggregate_only``; a new output of every sweep is one more call here.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence

from rigl.experiments.sweep.aggregation import aggregate, collect, load_records, write_tables
from rigl.experiments.sweep.grid import Sweep
from rigl.experiments.sweep.plots import (
    plot_accuracy_vs_flops,
    plot_accuracy_vs_sparsity,
    plot_connectivity,
)
from rigl.experiments.sweep.runner import PlannedRun


def aggregate_sweep(sweep: Sweep, planned: Sequence[PlannedRun], results_dir: str,
                    echo: Callable[[str], None] = print) -> dict[str, str]:
    """Copies finished runs' results into ``results_dir/runs``, then writes ``table.md``,
    ``table.csv``, ``accuracy_vs_sparsity.png``, ``accuracy_vs_train_flops.png`` from every
    copy there, and ``connectivity/<run>.png`` for runs whose workdir holds fc1 mask
    snapshots. Returns the written paths by kind."""
    collect(planned, results_dir)
    records = load_records(results_dir)
    if not records:
        echo(f"no finished runs yet: nothing to aggregate into {results_dir}.")
        return {}
    rows = aggregate(records)
    md, csv_path = write_tables(rows, results_dir, sweep.name)
    written = {"table.md": md, "table.csv": csv_path}
    written["accuracy_vs_sparsity"] = plot_accuracy_vs_sparsity(
        rows, os.path.join(results_dir, "accuracy_vs_sparsity.png"), sweep.name)
    written["accuracy_vs_train_flops"] = plot_accuracy_vs_flops(
        rows, os.path.join(results_dir, "accuracy_vs_train_flops.png"), sweep.name)
    for p in planned:
        snapshots = os.path.join(p.workdir, "mask_snapshots")
        if not glob.glob(os.path.join(snapshots, "step_*.npz")):
            continue
        try:
            os.makedirs(os.path.join(results_dir, "connectivity"), exist_ok=True)
            written[f"connectivity/{p.run.name}"] = plot_connectivity(
                snapshots, os.path.join(results_dir, "connectivity", f"{p.run.name}.png"),
                title=f"{p.run.name}: fc1 connectivity per input pixel")
        except (KeyError, ValueError) as error:  # no fc1, or not an image input
            echo(f"{p.run.name}: no connectivity plot ({error})")
    echo(f"{len(records)} runs in {len(rows)} cells -> {results_dir}")
    return written

"""Collecting and aggregating a sweep's results: records, mean ± std rows, ``table.md``/``.csv``.

Aggregation copies every finished run's ``results.json`` (and ``sweep_run.json``) to
``<results_dir>/runs/<run name>/`` (``collect``) and builds everything else from those copies
alone (``load_records`` -> ``aggregate`` -> ``write_tables``), so committed results reproduce
their tables. Rows are ordered as the paper's tables: by method in ``rigl.methods.METHODS``
order, then distribution, sparsity, multiplier and tag; methods are named by their registry
``label``.

Where new things plug in: a new column is a key copied by ``record_from_results``, averaged
by ``aggregate``, listed in ``CSV_COLUMNS`` and formatted by ``table_markdown``.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence

import numpy as np

from rigl import methods as _methods
from rigl.experiments.sweep.grid import NO_SPARSITY_METHODS, SweepError
from rigl.experiments.sweep.runner import (
    RESULTS_FILE,
    SPEC_FILE,
    PlannedRun,
    metric_key,
    run_status,
)

# Row and legend order (the paper's tables) and printed names, from the registry.
METHOD_ORDER = _methods.METHODS
METHOD_LABELS = {m: _methods.REGISTRY[m].label for m in _methods.METHODS}
DISTRIBUTION_ORDER = (None, "uniform", "er", "erk")

_SEED_SUFFIX = re.compile(r"_seed-?\d+$")


def collect(planned: Sequence[PlannedRun], results_dir: str) -> list[str]:
    """Copies every finished run's results.json and sweep_run.json to
    ``<results_dir>/runs/<run name>/``; the names copied."""
    copied = []
    for p in planned:
        if run_status(p.workdir) != "finished":  # not trained here (or a collected copy)
            continue
        target = os.path.join(results_dir, "runs", p.run.name)
        os.makedirs(target, exist_ok=True)
        for name in (RESULTS_FILE, SPEC_FILE):
            if os.path.exists(os.path.join(p.workdir, name)):
                shutil.copyfile(os.path.join(p.workdir, name), os.path.join(target, name))
        copied.append(p.run.name)
    return copied


def record_from_results(results: Mapping, spec: Mapping | None = None,
                        run_name: str | None = None) -> dict:
    """One flat record of a run for aggregation.

    The cell (method, distribution, nominal sparsity, multiplier, tag) comes from the sweep's
    ``spec`` when given (results.json reports sparsity 0 for Small-Dense, whose nominal
    sparsity is the one it is matched to), else from ``results``.
    """
    spec = dict(spec or {})
    name = spec.get("name") or run_name or "run"
    if spec:
        cell = {k: spec.get(k) for k in ("method", "distribution", "sparsity", "tag")}
        cell["multiplier"] = spec.get("multiplier", results.get("multiplier", 1))
    else:
        cell = {"method": results["method"], "distribution": results.get("distribution"),
                "sparsity": (results.get("sparsity")
                             if results["method"] not in NO_SPARSITY_METHODS else None),
                "multiplier": results.get("multiplier", 1), "tag": None}
    metric = metric_key(results)
    record = {"run": name, "cell": spec.get("cell") or _SEED_SUFFIX.sub("", name),
              **cell, "seed": results.get("seed", spec.get("seed")),
              "metric": metric, "value": results[metric]}
    for key in (f"{metric}_at_best_validation", f"best_{metric}", "measured_sparsity",
                "train_flops_ratio", "inference_flops_ratio", "size_mb", "train_seconds",
                "steps"):
        if key in results:
            record[key] = results[key]
    if results.get("mlp_units"):
        record["mlp_units"] = results["mlp_units"]
    if results.get("units_without_inputs"):
        record["units_without_inputs"] = results["units_without_inputs"]
    return record


def load_records(results_dir: str) -> list[dict]:
    """Records of every ``<results_dir>/runs/*/results.json``."""
    records = []
    for path in sorted(glob.glob(os.path.join(results_dir, "runs", "*", RESULTS_FILE))):
        folder = os.path.dirname(path)
        with open(path) as f:
            results = json.load(f)
        spec = None
        if os.path.exists(os.path.join(folder, SPEC_FILE)):
            with open(os.path.join(folder, SPEC_FILE)) as f:
                spec = json.load(f)
        records.append(record_from_results(results, spec, os.path.basename(folder)))
    return records


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1; None for a single value)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else None)


def _order(value, order) -> tuple:
    return (order.index(value), "") if value in order else (len(order), str(value))


def _row_key(row: Mapping) -> tuple:
    sparsity = row["sparsity"]
    return (_order(row["method"], METHOD_ORDER), _order(row["distribution"], DISTRIBUTION_ORDER),
            (sparsity is None, sparsity or 0.0), row["multiplier"], row["tag"] or "", row["cell"])


def aggregate(records: Sequence[Mapping]) -> list[dict]:
    """Rows of mean ± std over seeds, one per cell, ordered by method, distribution,
    sparsity, multiplier.

    Each row: cell, method, distribution, sparsity (nominal; None = set by the configs),
    multiplier, tag, seeds (count), seed_list, metric, mean, std (sample std, ddof=1; None
    with one seed), the mean and std at best validation when the runs report them, and the
    means of measured_sparsity, train_flops_ratio, inference_flops_ratio, train_seconds, steps.
    """
    cells: dict[str, list[Mapping]] = {}
    for record in records:
        cells.setdefault(record["cell"], []).append(record)
    rows = []
    for cell, group in cells.items():
        first = group[0]
        for key in ("method", "distribution", "sparsity", "multiplier", "tag", "metric"):
            if any(r[key] != first[key] for r in group):
                raise SweepError(f"cell {cell}: runs disagree on {key}: "
                                 f"{sorted({str(r[key]) for r in group})}.")
        seeds = sorted(r["seed"] for r in group)
        if len(set(seeds)) != len(seeds):
            raise SweepError(f"cell {cell}: seed repeated in {seeds}.")
        mean, std = _mean_std([r["value"] for r in group])
        row = {"cell": cell, **{k: first[k] for k in (
            "method", "distribution", "sparsity", "multiplier", "tag", "metric")},
            "seeds": len(group), "seed_list": seeds, "mean": mean, "std": std}
        best_key = f"{first['metric']}_at_best_validation"
        if all(best_key in r for r in group):
            row["best_validation_mean"], row["best_validation_std"] = _mean_std(
                [r[best_key] for r in group])
        if all(f"best_{first['metric']}" in r for r in group):
            row["best_mean"], row["best_std"] = _mean_std(
                [r[f"best_{first['metric']}"] for r in group])
        units = [r.get("mlp_units") for r in group]
        if all(units) and len({len(u) for u in units}) == 1:
            row["mlp_units"] = [float(np.mean(column)) for column in zip(*units)]
        starved = [r.get("units_without_inputs") for r in group]
        if all(starved) and len({tuple(u) for u in starved}) == 1:
            row["units_without_inputs"] = [float(np.mean([u[name] for u in starved]))
                                           for name in starved[0]]
        for key in ("measured_sparsity", "train_flops_ratio", "inference_flops_ratio",
                    "size_mb", "train_seconds", "steps"):
            if all(key in r for r in group):
                row[key] = float(np.mean([r[key] for r in group]))
        rows.append(row)
    return sorted(rows, key=_row_key)


def is_accuracy(rows: Sequence[Mapping]) -> bool:
    """Whether the rows' score is test accuracy (else bits per character); a
    ``SweepError`` if they mix both."""
    metrics = {row["metric"] for row in rows}
    if len(metrics) > 1:
        raise SweepError(f"results mix metrics {sorted(metrics)}: aggregate them separately.")
    return metrics == {"test_accuracy"}


def _format_value(mean, std, accuracy: bool) -> str:
    if mean is None:
        return ""
    scale, digits = (100.0, 2) if accuracy else (1.0, 4)
    text = f"{mean * scale:.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def _format_number(value, spec: str, suffix: str = "") -> str:
    return "" if value is None else format(value, spec) + suffix


CSV_COLUMNS = ("cell", "method", "distribution", "sparsity", "multiplier", "tag", "seeds",
               "seed_list", "metric", "mean", "std", "best_validation_mean",
               "best_validation_std", "best_mean", "best_std", "measured_sparsity",
               "train_flops_ratio", "inference_flops_ratio", "size_mb", "mlp_units",
               "units_without_inputs", "train_seconds", "steps")


def table_markdown(rows: Sequence[Mapping], title: str) -> str:
    """The rows as a Markdown table (accuracy in %)."""
    accuracy = is_accuracy(rows)
    metric = "test accuracy (%)" if accuracy else "test bits/char"
    best = any("best_validation_mean" in row for row in rows)
    best_test = any("best_mean" in row for row in rows)
    units = any("mlp_units" in row for row in rows)
    starved = any(any(row.get("units_without_inputs") or ()) for row in rows)
    size = any("size_mb" in row for row in rows)
    tags = any(row["tag"] for row in rows)
    header = ["method", "distribution", "sparsity", "multiplier", *(["tag"] if tags else []),
              "seeds", metric, *([f"{metric} at best validation"] if best else []),
              *([f"best {metric} during training"] if best_test else []),
              "measured sparsity", "train FLOPs", "inference FLOPs",
              *(["size (MB)"] if size else []), *(["units kept"] if units else []),
              *(["units without inputs"] if starved else [])]
    lines = [f"# {title}", "",
             f"{sum(row['seeds'] for row in rows)} runs in {len(rows)} cells. Mean ± sample "
             "standard deviation (ddof=1) over seeds of the final test score"
             + (", of the test score at the best validation score" if best else "")
             + (", of the best test score over the evaluations during training (an "
                "optimistic figure: it selects on the test set)" if best_test else "")
             + "; FLOPs are fractions of the dense model's (training: the whole run, "
             "multiplier included)"
             + ("; size: the sparse model's bytes as the paper counts them (rigl.flops)"
                if size else "")
             + ("; units kept: inputs, hidden units and outputs that keep at least one "
                "connection (hidden: both an incoming and an outgoing one), mean over seeds"
                if units else "")
             + ("; units without inputs: per sparse layer, output units (neurons, filters) "
                "left with no active input (SRigL's ablated neurons), mean over seeds"
                if starved else "") + ".", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        if row["sparsity"] is not None:
            sparsity = f"{row['sparsity']:g}"
        else:
            sparsity = "—" if row["method"] in NO_SPARSITY_METHODS else "custom"
        cells = [METHOD_LABELS.get(row["method"], row["method"]), row["distribution"] or "—",
                 sparsity, f"{row['multiplier']:g}x", *([row["tag"] or ""] if tags else []),
                 str(row["seeds"]), _format_value(row["mean"], row["std"], accuracy)]
        if best:
            cells.append(_format_value(row.get("best_validation_mean"),
                                       row.get("best_validation_std"), accuracy))
        if best_test:
            cells.append(_format_value(row.get("best_mean"), row.get("best_std"), accuracy))
        cells += [_format_number(row.get("measured_sparsity"), ".4f"),
                  _format_number(row.get("train_flops_ratio"), ".3f", "x"),
                  _format_number(row.get("inference_flops_ratio"), ".3f", "x")]
        if size:
            cells.append(_format_number(row.get("size_mb"), ".4f"))
        if units:
            cells.append("-".join(f"{u:.0f}" for u in row["mlp_units"])
                         if row.get("mlp_units") else "")
        if starved:
            cells.append("-".join(format(round(u, 1), "g") for u in row["units_without_inputs"])
                         if row.get("units_without_inputs") else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(rows: Sequence[Mapping], results_dir: str, title: str) -> tuple[str, str]:
    """``table.md`` and ``table.csv`` in ``results_dir``; their paths."""
    os.makedirs(results_dir, exist_ok=True)
    md_path, csv_path = (os.path.join(results_dir, n) for n in ("table.md", "table.csv"))
    with open(md_path, "w") as f:
        f.write(table_markdown(rows, title))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        lists = ("seed_list", "mlp_units", "units_without_inputs")
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else
                                 " ".join(map(str, row[k])) if k in lists else row[k])
                             for k in CSV_COLUMNS})
    return md_path, csv_path


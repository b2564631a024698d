"""Plots of a sweep: test score vs sparsity, vs training FLOPs, and first-layer connectivity.

matplotlib's object API on Agg canvases: no pyplot, no global backend switch, no state shared
between figures, and matplotlib is imported only when a figure is drawn. Colors and legend
order follow ``rigl.methods.METHODS``; labels are the registry's.

Where new things plug in: a new plot is a function ``plot_<what>(rows, path, title)`` here
that writes a PNG and returns its path, called by ``report.aggregate_sweep``.
"""

from __future__ import annotations

import glob
import math
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

from rigl.experiments.sweep.aggregation import METHOD_LABELS, METHOD_ORDER, is_accuracy
from rigl.experiments.sweep.grid import NO_SPARSITY_METHODS


def _figure(**kwargs):
    """A figure on its own Agg canvas: PNGs without pyplot or a global backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


# One colour per registry method, in ``METHOD_ORDER``: a method added to the registry needs a
# colour here, or it would share the colour of the method a palette's length before it.
_PALETTE = ("#000000", "#7f7f7f", "#1f77b4", "#9467bd", "#2ca02c", "#8c564b", "#d62728",
            "#ff7f0e", "#e377c2", "#17becf", "#bcbd22")


def method_color(method: str) -> str:
    """The colour of ``method``'s lines and markers in every sweep plot."""
    palette = _PALETTE
    index = METHOD_ORDER.index(method) if method in METHOD_ORDER else (
        len(METHOD_ORDER) + sum(map(ord, method)))
    return palette[index % len(palette)]


_LINESTYLES = {"uniform": "-", "erk": "--", "er": "-.", None: ":"}


def _x_sparsity(row: Mapping) -> float | None:
    if row["sparsity"] is not None:
        return row["sparsity"]
    return row.get("measured_sparsity")


def _label(row: Mapping, with_multiplier: bool = True) -> str:
    label = METHOD_LABELS.get(row["method"], row["method"])
    if row["distribution"] is not None:
        label += f" ({row['distribution']})"
    if row.get("tag"):
        label += f" [{row['tag']}]"
    if with_multiplier and row["multiplier"] != 1:
        label += f" {row['multiplier']:g}x"
    return label


def plot_accuracy_vs_sparsity(rows: Sequence[Mapping], path: str, title: str = "") -> str:
    """Test score vs sparsity, one line per method/distribution/multiplier, error bars over
    seeds; dense rows are horizontal lines with a ±std band. Writes a PNG at ``path``."""
    accuracy = is_accuracy(rows)
    scale = 100.0 if accuracy else 1.0
    fig = _figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.add_subplot()
    series: dict[tuple, list[Mapping]] = {}
    for row in rows:
        if row["method"] in NO_SPARSITY_METHODS or _x_sparsity(row) is None:
            continue
        series.setdefault((row["method"], row["distribution"], row["multiplier"], row["tag"]),
                          []).append(row)
    xs = set()
    for (method, distribution, multiplier, _), group in series.items():
        group = sorted(group, key=_x_sparsity)
        x = [_x_sparsity(r) for r in group]
        xs.update(x)
        ax.errorbar(x, [r["mean"] * scale for r in group],
                    yerr=[(r["std"] or 0.0) * scale for r in group], capsize=3,
                    color=method_color(method), linestyle=_LINESTYLES.get(distribution, "-"),
                    marker="o" if multiplier == 1 else "s", label=_label(group[0]))
    for row in rows:
        if row["method"] in NO_SPARSITY_METHODS:
            mean, std = row["mean"] * scale, (row["std"] or 0.0) * scale
            ax.axhline(mean, color=method_color(row["method"]), linestyle="--", linewidth=1,
                       label=_label(row))
            if std:
                ax.axhspan(mean - std, mean + std, color=method_color(row["method"]), alpha=0.1)
    if xs:
        ax.set_xticks(sorted(xs))
        ax.set_xticklabels([f"{x:g}" for x in sorted(xs)])
    ax.set_xlabel("sparsity")
    ax.set_ylabel("test accuracy (%)" if accuracy else "test bits/char")
    ax.set_title(title + (": " if title else "") + "test score vs sparsity "
                 "(mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.savefig(path, dpi=120)
    return path


def plot_accuracy_vs_flops(rows: Sequence[Mapping], path: str, title: str = "") -> str:
    """Test score vs training FLOPs (fraction of dense, ``train_flops_ratio``), the paper's
    Figure 2-right: one panel per sparsity, one marker per method and multiplier (labelled
    "2x", ...), joined across multipliers, error bars over seeds; dense as a reference."""
    accuracy = is_accuracy(rows)
    scale = 100.0 if accuracy else 1.0
    rows = [r for r in rows if r.get("train_flops_ratio") is not None]
    dense = [r for r in rows if r["method"] in NO_SPARSITY_METHODS]
    sparse = [r for r in rows if r["method"] not in NO_SPARSITY_METHODS]
    panels = sorted({r["sparsity"] for r in sparse}, key=lambda s: (s is None, s or 0.0)) or [
        None]
    fig = _figure(figsize=(4.5 * len(panels) + 2.0, 4.5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, sparsity in zip(axes, panels):
        series: dict[tuple, list[Mapping]] = {}
        for row in sparse:
            if row["sparsity"] == sparsity:
                series.setdefault((row["method"], row["distribution"], row["tag"]),
                                  []).append(row)
        for row in dense:
            series.setdefault((row["method"], None, row["tag"]), []).append(row)
        for (method, distribution, _), group in series.items():
            group = sorted(group, key=lambda r: r["multiplier"])
            x = [r["train_flops_ratio"] for r in group]
            y = [r["mean"] * scale for r in group]
            ax.errorbar(x, y, yerr=[(r["std"] or 0.0) * scale for r in group], capsize=3,
                        color=method_color(method), linestyle=_LINESTYLES.get(distribution, "-"),
                        marker="*" if method in NO_SPARSITY_METHODS else "o", markersize=7,
                        label=_label(group[0], with_multiplier=False))
            for xi, yi, r in zip(x, y, group):
                ax.annotate(f"{r['multiplier']:g}x", (xi, yi), textcoords="offset points",
                            xytext=(4, 4), fontsize="x-small", color=method_color(method))
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs (fraction of dense 1x)")
        ax.set_ylabel("test accuracy (%)" if accuracy else "test bits/char")
        ax.set_title("sparsity " + ("custom" if sparsity is None else f"{sparsity:g}"))
        ax.grid(alpha=0.3, which="both")
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="outside right upper",
               fontsize="small")
    fig.suptitle(title + (": " if title else "") + "test score vs training FLOPs")
    fig.savefig(path, dpi=120)
    return path


def load_mask_snapshots(snapshot_dir: str, layer: str = "fc1") -> list[tuple[int, np.ndarray]]:
    """``(step, mask of layer)`` of every ``step_<N>.npz`` in ``snapshot_dir``, by step."""
    snapshots = []
    for path in glob.glob(os.path.join(snapshot_dir, "step_*.npz")):
        match = re.fullmatch(r"step_(\d+)\.npz", os.path.basename(path))
        if not match:
            continue
        with np.load(path) as masks:
            keys = [k for k in masks.files if k == layer] or [
                k for k in masks.files if k.split("/")[0] == layer]
            if len(keys) != 1:
                raise KeyError(f"{path}: no single mask of layer {layer!r}; masks: "
                               f"{sorted(masks.files)}.")
            snapshots.append((int(match.group(1)), np.asarray(masks[keys[0]])))
    if not snapshots:
        raise FileNotFoundError(f"no step_<N>.npz mask snapshots in {snapshot_dir}.")
    return sorted(snapshots, key=lambda s: s[0])


def connectivity_image(mask: np.ndarray, image_shape: Sequence[int] | None = None) -> np.ndarray:
    """Active connections per input of a first-layer mask (inputs × units), as an image
    (a square by default: 784 inputs -> 28 × 28)."""
    if mask.ndim != 2:
        raise ValueError(f"expected a (inputs, units) mask, got shape {mask.shape}.")
    counts = (np.asarray(mask) != 0).sum(axis=1)
    if image_shape is None:
        side = math.isqrt(counts.size)
        if side * side != counts.size:
            raise ValueError(f"{counts.size} inputs are not a square image: give image_shape.")
        image_shape = (side, side)
    return counts.reshape(image_shape)


def plot_connectivity(snapshot_dir: str, path: str, layer: str = "fc1",
                      steps: Sequence[int] | None = None, max_panels: int = 8,
                      image_shape: Sequence[int] | None = None, title: str = "") -> str:
    """The first layer's connectivity at several points of training, as images in one PNG.

    Each panel shows, per input pixel, how many of the layer's units it connects to
    (``mask.sum(axis=1).reshape(28, 28)`` for LeNet-300-100's ``fc1``), on one color scale.

    Args:
        snapshot_dir: folder of ``step_<N>.npz`` files (``<workdir>/mask_snapshots``).
        path: output PNG.
        layer: masked-weight name of the first layer.
        steps: which snapshot steps to show; default all, or ``max_panels`` of them evenly
            spaced (first and last included).
        image_shape: input image shape; default the square of the input count.
    """
    snapshots = load_mask_snapshots(snapshot_dir, layer)
    if steps is not None:
        available = {s for s, _ in snapshots}
        missing = sorted(set(steps) - available)
        if missing:
            raise ValueError(f"steps {missing} have no snapshot; available: {sorted(available)}.")
        snapshots = [s for s in snapshots if s[0] in set(steps)]
    elif len(snapshots) > max_panels:
        keep = np.unique(np.round(np.linspace(0, len(snapshots) - 1, max_panels)).astype(int))
        snapshots = [snapshots[i] for i in keep]
    images = [(step, connectivity_image(mask, image_shape), int((mask != 0).sum()))
              for step, mask in snapshots]
    vmax = max(1, max(int(image.max()) for _, image, _ in images))
    columns = min(len(images), 4)
    rows = math.ceil(len(images) / columns)
    fig = _figure(figsize=(2.6 * columns + 1.0, 2.8 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(images):]:
        ax.set_axis_off()
    shown = None
    for ax, (step, image, active) in zip(axes, images):
        shown = ax.imshow(image, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(f"step {step:,}\n{active:,} connections", fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(shown, ax=list(axes), shrink=0.8,
                 label=f"active {layer} connections per input")
    fig.suptitle(title or f"{layer} connectivity per input pixel")
    fig.savefig(path, dpi=120)
    return path

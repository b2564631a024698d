#!/usr/bin/env python
"""Per-layer FLOPs and size of a sparse model, and the paper's ResNet-50 FLOPs table.

    python scripts/flops_table.py --model resnet50 --distribution erk --sparsity 0.8 \
        [--method rigl] [--multiplier 5] [--first_layer_dense] [--json]
    python scripts/flops_table.py --paper [--json]

Counting rules: rigl/flops.py. --paper recomputes every FLOPs figure of the ResNet-50 table of
Evci et al. 2020 (https://arxiv.org/abs/1911.11134, Table 2) with this project's models
and counting, next to the published numbers.
"""

import json
import os
import sys

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [SCRIPTS, os.path.dirname(SCRIPTS)]  # _cli, and rigl without installing it

import _cli  # noqa: E402 (after the path set-up above)

_cli.start()  # before the first import of rigl, which imports TensorFlow

from absl import flags  # noqa: E402

from rigl.experiments.errors import UsageError  # noqa: E402

# Model -> (input shape, classes) of the paper's experiment with it.
MODEL_DEFAULTS = {
    "resnet50": ((224, 224, 3), 1000),
    "mobilenet_v1": ((224, 224, 3), 1000),
    "mobilenet_v2": ((224, 224, 3), 1000),
    "wrn_22_2": ((32, 32, 3), 10),
    "lenet300_100": ((28, 28, 1), 10),
    "lenet5": ((28, 28, 1), 10),
}
from rigl import methods  # noqa: E402 (after the path set-up above)

METHODS = methods.METHODS

MODEL = flags.DEFINE_enum("model", "resnet50", list(MODEL_DEFAULTS), "Model to count.")
DISTRIBUTION = flags.DEFINE_enum("distribution", "uniform", ["uniform", "er", "erk"],
                                 "Per-layer sparsity distribution.")
SPARSITY = flags.DEFINE_float("sparsity", None, "Overall sparsity in [0, 1).")
METHOD = flags.DEFINE_enum("method", "rigl", list(METHODS), "Training method.")
MULTIPLIER = flags.DEFINE_float("multiplier", 1.0, "Training length relative to the 1x run.")
FIRST_LAYER_DENSE = flags.DEFINE_boolean(
    "first_layer_dense", None,
    "Keep the first layer dense. Default: the paper's rule (dense for uniform, sparse for "
    "er/erk).")
DENSE_LAYERS = flags.DEFINE_list("dense_layers", [], "More layers to keep dense (row names).")
SMALL_DENSE_MATCH = flags.DEFINE_enum(
    "small_dense_match", "params", ["params", "size"],
    "Small-Dense: choose the width whose parameter count (weights + per-channel terms) or "
    "size in bits (bit masks included, as the reference colab did) matches the sparse model.")
UPDATE_FREQ = flags.DEFINE_integer("update_freq", 100, "RigL's ΔT.")
PRUNING_BEGIN = flags.DEFINE_integer("pruning_begin_step", 10000,
                                     "Gradual pruning: first update step (1x run).")
PRUNING_END = flags.DEFINE_integer("pruning_end_step", 25000,
                                   "Gradual pruning: last update step (1x run).")
PRUNING_FREQ = flags.DEFINE_integer("pruning_frequency", 1000, "Gradual pruning: steps "
                                    "between updates.")
TOTAL_STEPS = flags.DEFINE_integer("total_steps", 32000, "Steps of the 1x run (ImageNet: "
                                   "32,000 at batch 4096).")
JSON = flags.DEFINE_boolean("json", False, "Print JSON instead of markdown.")
PAPER = flags.DEFINE_boolean("paper", False, "Print the paper's ResNet-50 table (80%, 90%).")

# The ResNet-50 numbers published in the paper (Table 2): label -> ((train, test) at
# S=0.8, (train, test) at S=0.9), FLOPs relative to the dense 1x run / dense inference.
PAPER_TABLE = {
    "Dense": ((1.00, 1.00), (1.00, 1.00)),
    "Static": ((0.23, 0.23), (0.10, 0.10)),
    "SNIP": ((0.23, 0.23), (0.10, 0.10)),
    "Small-Dense": ((0.20, 0.20), (0.12, 0.12)),
    "SET": ((0.23, 0.23), (0.10, 0.10)),
    "RigL": ((0.23, 0.23), (0.10, 0.10)),
    "Small-Dense 5x": ((1.01, 0.20), (0.60, 0.12)),
    "RigL 5x": ((1.14, 0.23), (0.52, 0.10)),
    "Static (ERK)": ((0.42, 0.42), (0.24, 0.24)),
    "RigL (ERK)": ((0.42, 0.42), (0.25, 0.24)),
    "RigL 5x (ERK)": ((2.09, 0.42), (1.23, 0.24)),
    "SNFS (ERK)": ((0.61, 0.42), (0.50, 0.24)),
    "Pruning": ((0.56, 0.23), (0.51, 0.10)),
    "Pruning 1.5x": ((0.84, 0.23), (0.76, 0.10)),
}
# Published dense figures (paper) and model sizes in MB (the reference repository's README).
PAPER_DENSE = {"inference_flops": 8.2e9, "train_flops": 3.2e18}
README_SIZES_MB = {"dense": 102.122, ("uniform", 0.8): 23.685, ("erk", 0.8): 23.683,
                   ("uniform", 0.9): 13.532, ("erk", 0.9): 13.499}
# Row label -> (method, distribution, multiplier).
PAPER_ROWS = {
    "Dense": ("dense", "uniform", 1.0),
    "Static": ("static", "uniform", 1.0),
    "SNIP": ("snip", "uniform", 1.0),
    "Small-Dense": ("small_dense", "uniform", 1.0),
    "SET": ("set", "uniform", 1.0),
    "RigL": ("rigl", "uniform", 1.0),
    "Small-Dense 5x": ("small_dense", "uniform", 5.0),
    "RigL 5x": ("rigl", "uniform", 5.0),
    "Static (ERK)": ("static", "erk", 1.0),
    "RigL (ERK)": ("rigl", "erk", 1.0),
    "RigL 5x (ERK)": ("rigl", "erk", 5.0),
    "SNFS (ERK)": ("snfs", "erk", 1.0),
    "Pruning": ("prune", "uniform", 1.0),
    "Pruning 1.5x": ("prune", "uniform", 1.5),
}
# The rules whose training FLOPs follow a pruning schedule (--pruning_* flags): gradual
# pruning, and GraNet (from dense on that schedule, plus a dense gradient at every pruning
# step: rigl.flops.granet_flops_per_step). SRigL counts as RigL (--method srigl).
SCHEDULED_RULES = ("prune", "granet")
# The paper's ImageNet setup: 32,000 steps at batch 4096, ΔT = 100; gradual pruning from step
# 10,000 to 25,000 every 1,000 steps (Gale et al.'s 40k-100k of 128k, at 4x the batch), as in
# the reference's Resnet_50_Param_Flops_Counting colab.
PAPER_SETUP = {"steps": 32000, "batch_size": 4096, "update_freq": 100, "begin_step": 10000,
               "end_step": 25000, "frequency": 1000}
TOLERANCE = 0.01


class Counter:
    """Builds models (cached by width) and counts them."""

    def __init__(self, name, small_dense_match="params"):
        from rigl.experiments import models

        self.name = name
        self.small_dense_match = small_dense_match
        self.input_shape, self.num_classes = MODEL_DEFAULTS[name]
        self._models = {}
        self._build = models.build_model

    def model(self, width=1.0):
        if width not in self._models:
            self._models[width] = self._build(self.name, self.input_shape, self.num_classes,
                                              width=width)
        return self._models[width]

    def small_dense_width(self, sparsities):
        """Width of the dense model with as many parameters (or bits) as the sparse one."""
        from rigl import flops

        measure = flops.num_params if self.small_dense_match == "params" else flops.model_size_mb
        target = measure(self.model(), sparsities)
        return flops.solve_width(lambda w: measure(self.model(w), dense=True), target)


def _sparsities(counter, distribution, sparsity, first_layer_dense, dense_layers=()):
    from rigl import flops

    model = counter.model()
    if first_layer_dense is None:
        first_layer_dense = distribution == "uniform"
    dense = list(dense_layers)
    if first_layer_dense and flops.first_layer(model) not in dense:
        dense.insert(0, flops.first_layer(model))
    return flops.sparsity_map(model, sparsity, distribution, dense_layers=dense), dense


def count(counter, method, distribution, sparsity, multiplier=1.0, first_layer_dense=None,
          dense_layers=(), update_freq=100, schedule=None):
    """Counts one configuration; returns a JSON-friendly dict."""
    from rigl import flops

    model = counter.model()
    dense_flops = flops.dense_inference_flops(model)
    result = {
        "model": counter.name, "input_shape": list(counter.input_shape),
        "num_classes": counter.num_classes, "method": method, "multiplier": multiplier,
        "update_freq": update_freq, "dense_inference_flops": dense_flops,
        "dense_size_mb": flops.model_size_mb(model, dense=True),
    }
    if not methods.get_method(method).uses_sparsity:
        sparsities, dense = {}, []
        result.update(distribution=None, sparsity=0.0, dense_layers=[])
    else:
        if sparsity is None:
            raise ValueError(f"sparsity: required for method {method!r}.")
        sparsities, dense = _sparsities(counter, distribution, sparsity, first_layer_dense,
                                        dense_layers)
        result.update(distribution=distribution, sparsity=sparsity, dense_layers=dense)
    table_model, table_sparsities = model, sparsities
    if method == "small_dense":
        width = counter.small_dense_width(sparsities)
        table_model, table_sparsities = counter.model(width), {}
        result["width"] = width
        result["sparse_params"] = flops.num_params(model, sparsities)
    rows = flops.layer_table(table_model, table_sparsities)
    inference = sum(row.flops for row in rows)
    schedule = dict(schedule or {})
    if methods.get_method(method).flops_rule in SCHEDULED_RULES:
        schedule.setdefault("total_steps", PAPER_SETUP["steps"])
    else:
        schedule = {}
    result.update(
        inference_flops=inference,
        inference_flops_ratio=inference / dense_flops,
        train_flops_per_step=flops.train_flops_per_step(
            method, dense_flops, inference, update_freq=update_freq, **schedule),
        train_flops_ratio=flops.train_flops_ratio(
            method, dense_flops, inference, multiplier, update_freq=update_freq, **schedule),
        size_mb=sum(row.bits for row in rows) / 8e6,
        params=sum(row.nonzeros + row.channels for row in rows),
        layers=[row.as_dict() for row in rows],
    )
    if schedule:
        result["pruning_schedule"] = schedule
    return result


def paper_table(small_dense_match="params"):
    """Every FLOPs figure of the paper's ResNet-50 table, ours and published."""
    from rigl import flops

    counter = Counter("resnet50", small_dense_match)
    schedule = {key: PAPER_SETUP[key] for key in ("begin_step", "end_step", "frequency")}
    schedule["total_steps"] = PAPER_SETUP["steps"]
    dense = count(counter, "dense", None, None)
    rows = []
    cache = {}
    for label, (method, distribution, multiplier) in PAPER_ROWS.items():
        row = {"label": label, "method": method, "distribution": distribution,
               "multiplier": multiplier}
        for sparsity, published in zip((0.8, 0.9), PAPER_TABLE[label]):
            # Every masked method at one sparsity counts the same model.
            key = ("masked" if methods.get_method(method).masked else method, distribution,
                   sparsity)
            if key not in cache:
                cache[key] = count(counter, method, distribution, sparsity,
                                   update_freq=PAPER_SETUP["update_freq"], schedule=schedule)
            base = cache[key]
            train = flops.train_flops_ratio(
                method, base["dense_inference_flops"], base["inference_flops"], multiplier,
                update_freq=PAPER_SETUP["update_freq"],
                **(schedule if methods.get_method(method).flops_rule in SCHEDULED_RULES
                   else {}))
            cell = {"train": train, "test": base["inference_flops_ratio"],
                    "paper_train": published[0], "paper_test": published[1]}
            cell["differs"] = [name for name in ("train", "test")
                               if abs(cell[name] - cell[f"paper_{name}"]) > TOLERANCE + 1e-9]
            if method == "small_dense":
                cell["width"] = base["width"]
            row[f"s{round(sparsity * 100)}"] = cell
        rows.append(row)
    sizes = {"dense": {"ours": dense["dense_size_mb"], "readme": README_SIZES_MB["dense"]}}
    for distribution in ("uniform", "erk"):
        for sparsity in (0.8, 0.9):
            size = cache[("masked", distribution, sparsity)]["size_mb"]
            sizes[f"{distribution}_{round(sparsity * 100)}"] = {
                "ours": size, "readme": README_SIZES_MB[(distribution, sparsity)]}
    return {
        "model": "resnet50",
        "setup": dict(PAPER_SETUP, small_dense_match=small_dense_match),
        "dense_inference_flops": dense["dense_inference_flops"],
        "paper_dense_inference_flops": PAPER_DENSE["inference_flops"],
        "dense_train_flops": flops.total_train_flops(
            "dense", dense["dense_inference_flops"], steps=PAPER_SETUP["steps"],
            batch_size=PAPER_SETUP["batch_size"]),
        "paper_dense_train_flops": PAPER_DENSE["train_flops"],
        "sizes_mb": sizes,
        "rows": rows,
    }


def _x(value):
    return f"{value:.2f}x"


def paper_markdown(table):
    lines = [
        "ResNet-50, ImageNet (224×224, 1000 classes): FLOPs relative to the dense model, this "
        "project's counting (ours) next to the published figures (paper: Evci et al. 2020, "
        "Table 2).",
        "",
        f"Dense: {table['dense_inference_flops']:.4g} inference FLOPs "
        f"(paper {table['paper_dense_inference_flops']:.2g}); "
        f"{table['dense_train_flops']:.3g} training FLOPs for 32,000 steps at batch 4096 "
        f"(paper {table['paper_dense_train_flops']:.2g}).",
        "",
        "| Method | Train 80% | paper | Test 80% | paper | Train 90% | paper | Test 90% | paper |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table["rows"]:
        cells = [row["label"]]
        for key in ("s80", "s90"):
            cell = row[key]
            for name in ("train", "test"):
                mark = " *" if name in cell["differs"] else ""
                cells += [_x(cell[name]) + mark, _x(cell[f"paper_{name}"])]
        lines.append("| " + " | ".join(cells) + " |")
    setup = table["setup"]
    small = next(row for row in table["rows"] if row["method"] == "small_dense")
    lines += [
        "",
        f"\\* differs from the paper by more than ±{TOLERANCE}.",
        "",
        "Setup: uniform keeps the first layer (conv1) dense and masks the rest (head "
        "included); ERK masks every layer. "
        f"RigL ΔT = {setup['update_freq']}. Gradual pruning (uniform) from step "
        f"{setup['begin_step']} to {setup['end_step']} every {setup['frequency']} of "
        f"{setup['steps']} (stretched with the run for 1.5x). Small-Dense: a dense "
        "ResNet-50 whose width gives as many "
        + ("parameters (weights + per-channel terms)" if setup["small_dense_match"] == "params"
           else "bits (size, bit masks included)")
        + f" as the uniform sparse model: width {small['s80']['width']:.4f} at 80%, "
        f"{small['s90']['width']:.4f} at 90%.",
        "",
        "| Model size (MB) | ours | README |",
        "|---|---|---|",
    ]
    for key, size in table["sizes_mb"].items():
        lines.append(f"| {key} | {size['ours']:.3f} | {size['readme']:.3f} |")
    return "\n".join(lines)


def single_markdown(result):
    header = (f"{result['model']} {tuple(result['input_shape'])} -> {result['num_classes']} "
              f"classes; method {result['method']} {result['multiplier']:g}x")
    if result["method"] != "dense":
        header += (f"; {result['distribution']} sparsity {result['sparsity']:g}, dense layers "
                   f"{result['dense_layers'] or 'none'}")
    if "width" in result:
        header += f"; small dense width {result['width']:.4f}"
    lines = [header, "", "| layer | type | kernel shape | sparsity | nonzeros | FLOPs |",
             "|---|---|---|---|---|---|"]
    for row in result["layers"]:
        lines.append(f"| {row['name']} | {row['type']} | {tuple(row['shape'])} | "
                     f"{row['sparsity']:.4f} | {row['nonzeros']:,} | {row['flops']:.4g} |")
    nonzeros = sum(row["nonzeros"] for row in result["layers"])
    size = sum(row["size"] for row in result["layers"])
    lines += [
        f"| total | | | {1 - nonzeros / size:.4f} | {nonzeros:,} | "
        f"{result['inference_flops']:.4g} |",
        "",
        f"Inference FLOPs: {result['inference_flops']:.4g} "
        f"({result['inference_flops_ratio']:.3f}x of dense {result['dense_inference_flops']:.4g})",
        f"Training FLOPs: {result['train_flops_ratio']:.3f}x of the dense 1x run",
        f"Size: {result['size_mb']:.3f} MB (dense {result['dense_size_mb']:.3f} MB)",
    ]
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}; give everything as --flags.")
    try:
        if PAPER.value:
            table = paper_table(SMALL_DENSE_MATCH.value)
            print(json.dumps(table, indent=1) if JSON.value else paper_markdown(table))
            return
        schedule = {"begin_step": PRUNING_BEGIN.value, "end_step": PRUNING_END.value,
                    "frequency": PRUNING_FREQ.value, "total_steps": TOTAL_STEPS.value}
        counter = Counter(MODEL.value, SMALL_DENSE_MATCH.value)
        result = count(counter, METHOD.value, DISTRIBUTION.value, SPARSITY.value,
                       MULTIPLIER.value, FIRST_LAYER_DENSE.value, DENSE_LAYERS.value,
                       UPDATE_FREQ.value, schedule)
    except ValueError as error:
        raise UsageError(str(error)) from error
    print(json.dumps(result, indent=1) if JSON.value else single_markdown(result))


if __name__ == "__main__":
    _cli.run(main)

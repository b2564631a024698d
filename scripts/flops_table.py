#!/usr/bin/env python
"""Per-layer FLOPs and size of a sparse model, and every published FLOPs figure recomputed.

    python scripts/flops_table.py --model resnet50 --distribution erk --sparsity 0.8 \
        [--method rigl] [--multiplier 5] [--first_layer_dense] [--counting exact] [--json]
    python scripts/flops_table.py --paper [--counting exact] [--json]

Counting rules: rigl/flops.py; --counting=paper (the default) counts as the reference did,
--counting=exact the model as it is. --paper recomputes every FLOPs and size figure of the
paper's Table 2 (Evci et al. 2020, https://arxiv.org/abs/1911.11134) and of the reference
repository's README (ResNet-50 and MobileNet-v1) with this project's models, next to the
published ones, and explains each that differs (rigl/experiments/flops_report.py).
"""

import json
import os
import sys

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [SCRIPTS, os.path.dirname(SCRIPTS)]  # _cli, and rigl without installing it

import _cli  # noqa: E402 (after the path set-up above)

_cli.start()  # before the first import of rigl, which imports TensorFlow

from absl import flags  # noqa: E402

from rigl import flops, methods  # noqa: E402 (after the path set-up above)
from rigl.experiments.errors import UsageError  # noqa: E402
from rigl.experiments.flops_report import (  # noqa: E402, F401 (the tests use them here)
    MODEL_DEFAULTS,
    Counter,
    count,
    paper_markdown,
    paper_table,
)

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
COUNTING = flags.DEFINE_enum(
    "counting", "paper", list(flops.COUNTINGS),
    "paper: as the reference counted (padded stem and depthwise convolutions counted from "
    "their padded input, a depthwise layer's bias per position, pruning averaged over its "
    "schedule sampled every update), the paper's digits; exact: the model as it is. See "
    "rigl/flops.py.")
JSON = flags.DEFINE_boolean("json", False, "Print JSON instead of markdown.")
PAPER = flags.DEFINE_boolean(
    "paper", False, "Print every FLOPs and size figure of the paper's Table 2 and of the "
    "reference README (ResNet-50, MobileNet-v1) next to ours, and why any differs.")



def single_markdown(result):
    header = (f"{result['model']} {tuple(result['input_shape'])} -> {result['num_classes']} "
              f"classes; method {result['method']} {result['multiplier']:g}x; counting "
              f"{result['counting']}")
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
            table = paper_table(SMALL_DENSE_MATCH.value, COUNTING.value)
            print(json.dumps(table, indent=1) if JSON.value else paper_markdown(table))
            return
        schedule = {"begin_step": PRUNING_BEGIN.value, "end_step": PRUNING_END.value,
                    "frequency": PRUNING_FREQ.value, "total_steps": TOTAL_STEPS.value}
        counter = Counter(MODEL.value, SMALL_DENSE_MATCH.value, COUNTING.value)
        result = count(counter, METHOD.value, DISTRIBUTION.value, SPARSITY.value,
                       MULTIPLIER.value, FIRST_LAYER_DENSE.value, DENSE_LAYERS.value,
                       UPDATE_FREQ.value, schedule)
    except ValueError as error:
        raise UsageError(str(error)) from error
    print(json.dumps(result, indent=1) if JSON.value else single_markdown(result))


if __name__ == "__main__":
    _cli.run(main)

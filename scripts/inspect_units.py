#!/usr/bin/env python
"""Prints how a sparse model's connections fall on its output units (neurons, filters).

    python scripts/inspect_units.py --model=<workdir>/model.keras [--layer=conv3_2]

Per sparse kernel: its output units, those left with no active input (SRigL's ablated
neurons; other methods can starve a unit too: ``units_without_inputs`` in a run's
``results.json``), and the live units' active inputs (min / median / max: SRigL holds them
equal) and mean |w| over those inputs (min / median / max). With ``--layer``, one line per
live unit of that kernel, fewest inputs first: whether the units that keep few connections
are also the ones with small weights (``rigl.masking.unit_inputs``).
"""

import os
import sys

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [SCRIPTS, os.path.dirname(SCRIPTS)]  # _cli, and rigl without installing it

import _cli  # noqa: E402 (after the path set-up above)

_cli.start()  # before the first import of rigl, which imports TensorFlow

from absl import flags  # noqa: E402

from rigl.experiments.errors import UsageError  # noqa: E402

MODEL = flags.DEFINE_string("model", None, "A saved sparse model (a run's "
                            "<workdir>/model.keras).")
LAYER = flags.DEFINE_string("layer", None, "A sparse kernel's name (as the summary lists "
                            "them): print each of its live units.")
flags.mark_flags_as_required(["model"])


def _spread(values) -> str:
    import numpy as np

    if not len(values):
        return "-"
    low, mid, high = np.min(values), np.median(values), np.max(values)
    return " / ".join(format(float(v), "g" if float(v).is_integer() else ".3g")
                      for v in (low, mid, high))


def report(model, layer: str | None = None) -> list[str]:
    """The lines the script prints for ``model`` (module docstring)."""
    import rigl

    weights = {weight.name: weight for weight in rigl.sparse_weights(model)}
    if layer is not None and layer not in weights:
        raise UsageError(f"--layer: no sparse kernel named {layer!r}; the model's sparse "
                         f"kernels are {sorted(weights)}.")
    lines = ["kernel: units, without inputs; live units' active inputs and mean |w| "
             "(min / median / max)"]
    units = {name: rigl.masking.unit_inputs(weight) for name, weight in weights.items()}
    for name, (counts, mean_abs) in units.items():
        live = counts > 0
        lines.append(f"{name}: {counts.size} units, {int((~live).sum())} without inputs; "
                     f"inputs {_spread(counts[live])}, mean |w| {_spread(mean_abs[live])}")
    if layer is not None:
        counts, mean_abs = units[layer]
        lines.append(f"{layer}, live units (unit: active inputs, mean |w|):")
        order = sorted((int(c), float(m), unit) for unit, (c, m)
                       in enumerate(zip(counts, mean_abs)) if c)
        lines.extend(f"  {unit}: {c}, {m:.4f}" for c, m, unit in order)
    return lines


def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}")
    if not os.path.isfile(MODEL.value):
        raise UsageError(f"--model: no file {MODEL.value!r} (a run writes "
                         "<workdir>/model.keras when it finishes).")
    import keras

    import rigl  # noqa: F401 (registers the sparse layers for loading)

    model = keras.models.load_model(MODEL.value)
    print("\n".join(report(model, LAYER.value)))


if __name__ == "__main__":
    _cli.run(main)

#!/usr/bin/env python
"""Exports a trained run's model (``<workdir>/model.keras``) for inference.

    python scripts/export.py --workdir=/tmp/run --out=/tmp/run_export [--format=saved_model]
        [--representation=auto|sparse|dense|ell|csr] [--batch_size=1] [--overwrite]

``--format``: ``saved_model`` (sparse kernels picked per layer by measurement), ``tflite``
(LiteRT with the converter's sparsity optimisation) or ``auto`` (the faster of the two at
``--batch_size``; needs ``pip install -r requirements-export.txt``). Prints each sparse
layer's choice and the artefact's size; ``<out>/rigl_export.json`` records everything
(``rigl.export``'s docstring). Load it with ``rigl.load_exported(out)``.
"""

import os
import sys

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [SCRIPTS, os.path.dirname(SCRIPTS)]  # _cli, and rigl without installing it

import _cli  # noqa: E402 (after the path set-up above)

_cli.start()  # before the first import of rigl, which imports TensorFlow

from absl import flags  # noqa: E402

from rigl.experiments.errors import UsageError  # noqa: E402

WORKDIR = flags.DEFINE_string("workdir", None, "A finished run's folder (holds model.keras).")
OUT = flags.DEFINE_string("out", None, "The artefact's folder (must not exist, unless "
                          "--overwrite).")
FORMAT = flags.DEFINE_enum("format", "saved_model", ["saved_model", "tflite", "auto"],
                           "Artefact format.")
REPRESENTATION = flags.DEFINE_enum(
    "representation", "auto", ["auto", "sparse", "dense", "ell", "csr"],
    "Sparse layers' kernel: the fastest measured per layer (auto), the fastest sparse kernel "
    "(sparse: the smallest artefact), or one for all (saved_model only).")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 1, "The batch the choices are measured at.",
                                  lower_bound=1)
OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")
flags.mark_flags_as_required(["workdir", "out"])


def describe(metadata: dict) -> list[str]:
    """The printed summary of an export's metadata."""
    lines = [f"format {metadata['format']}, {metadata['bytes_on_disk'] / 1e6:.2f} MB on disk"]
    for record in metadata["layers"]:
        measured = record.get("measured_ms")
        times = ("  " + ", ".join(f"{k} {v:.3f} ms" for k, v in measured.items())
                 if measured else "")
        sparsity = f" sparsity {record['sparsity']:.4f}" if "sparsity" in record else ""
        lines.append(f"  {record['name']:<24} {record['kind']:<15}{sparsity} -> "
                     f"{record['representation']}{times}")
    if "sparse_layers" in metadata:
        s = metadata["sparse_layers"]
        lines.append(f"sparse kernels: {s['stored_bytes']:,} bytes stored, "
                     f"{s['ratio']:.3f}× their CSR size ({s['csr_bytes']:,} bytes)")
    if "auto_ms" in metadata:
        lines.append("whole model at batch {}: {}".format(metadata["batch_size"], ", ".join(
            f"{k} {v:.3f} ms" for k, v in metadata["auto_ms"].items())))
    return lines


def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}; give everything as --flags.")
    source = os.path.join(os.path.expanduser(WORKDIR.value), "model.keras")
    if not os.path.isfile(source):
        raise UsageError(f"--workdir: no model.keras in {WORKDIR.value!r} (a run writes it "
                         "when it finishes).")
    out = os.path.expanduser(OUT.value)
    if os.path.exists(out) and not OVERWRITE.value:
        raise UsageError(f"--out: {OUT.value!r} exists; choose another or pass --overwrite.")
    if FORMAT.value == "tflite" and REPRESENTATION.value != "auto":
        raise UsageError("--representation: applies to --format=saved_model (LiteRT picks "
                         "its own kernels).")
    import keras

    import rigl

    model = keras.saving.load_model(source, compile=False)
    try:
        metadata = rigl.export(model, out, format=FORMAT.value,
                               representation=REPRESENTATION.value,
                               batch_size=BATCH_SIZE.value, overwrite=OVERWRITE.value)
    except ImportError as error:
        raise UsageError(f"--format={FORMAT.value}: {error}") from error
    except ValueError as error:  # the model cannot take this format (it names why)
        raise UsageError(str(error)) from error
    print("\n".join(describe(metadata)))
    print(f"exported to {out}")


if __name__ == "__main__":
    _cli.run(main)

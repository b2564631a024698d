"""The benchmark report: the machine it ran on, and its rendering as markdown tables.

A report is the JSON dict ``suite.run`` returns (and ``scripts/benchmark.py --json`` prints):
``command``, ``machine``, ``jit_compile``, one key per mode run (``overhead``: a list of
workload results; ``pipeline``; ``peer``; ``storage``; ``inference``), ``seconds``,
``load_average_at_end``, ``peak_rss_mb``. ``markdown`` renders a report, fresh or read back
from its JSON (``--render``), to the tables of ``results/benchmark/benchmark.md``.

Where new things plug in: a new mode's table is one more block of ``markdown``, read from its
key of the report; a new column reads a new key of the mode's rows (``.get`` it, so reports
written before it still render).
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess

import keras
import tensorflow as tf

from rigl.experiments.benchmark import inference as inference_mode


def machine_info() -> dict:
    """CPU model, cores, load average, Python, TensorFlow and Keras versions, and the date."""
    cpu = platform.processor()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.split("\n"):
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average_at_start": os.getloadavg(),
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def _fmt(value, spec=".3f"):
    return "—" if value is None else format(value, spec)


def _overhead_lines(result) -> list[str]:
    lines = [
        f"**{result['workload']}** ({result['model']}, input "
        f"{'×'.join(map(str, result['input_shape']))}, batch {result['batch']}; "
        f"{result['masked_layers']} masked layers, {result['masked_weights']:,} weights at "
        f"sparsity {result['sparsity']}; ΔT = {result['update_freq']}; windows of "
        f"{result['window_steps']} steps standing for {result['period_steps']}, "
        f"{result['rounds']} rounds; training steps "
        + ("compiled with XLA" if result.get("jit_compile") else "without XLA") + ")", "",
        "| variant | steps/s | time / dense (median) | spread (min–max) | mask update ms "
        "| update / dense step | extra gradient ms | peak memory MB |",
        "|---|---|---|---|---|---|---|---|"]
    for name, row in result["variants"].items():
        lines.append(
            f"| {name} | {row['steps_per_s']:.2f} | {row['ratio']:.3f} | "
            f"{row['ratio_min']:.3f}–{row['ratio_max']:.3f} | "
            f"{_fmt(row.get('update_ms'), '.1f')} | {_fmt(row.get('update_to_step'), '.2f')} "
            f"| {_fmt(row.get('gradient_ms'), '.1f')} | {row['peak_memory_mb']:.0f} |")
    lines.append("")
    return lines


def _pipeline_lines(pipeline) -> list[str]:
    lines = [f"**Input pipeline** ({pipeline['model']}, batch {pipeline['batch']}, "
             f"windows of {pipeline['window_steps']} steps, {pipeline['rounds']} rounds)",
             "", "| input | steps/s | rate / in-memory (median) | spread |",
             "|---|---|---|---|"]
    labels = {"in_memory": "one in-memory batch, repeated",
              "tfds": "TFDS MNIST, the project's pipeline (`get_dataset(\"mnist\")`)"}
    for name, row in pipeline["variants"].items():
        rate = 1.0 / row["ratio"]
        lines.append(f"| {labels.get(name, name)} | {row['steps_per_s']:.1f} | {rate:.3f} | "
                     f"{1 / row['ratio_max']:.3f}–{1 / row['ratio_min']:.3f} |")
    lines.append("")
    return lines


def _peer_lines(peer, overhead) -> list[str]:
    lines = ["**Peer comparison** (time / own plain dense model, median)", ""]
    if "results" not in peer:
        return lines + [f"peer mode not run: {peer.get('skipped') or peer.get('error')}", ""]
    ours = {r["workload"]: r["variants"] for r in overhead}
    lines += ["| workload | tfmot prune_low_magnitude / tf_keras | ours: prune / "
              "dense | ours: RigL / dense | ours: static / dense |",
              "|---|---|---|---|---|"]
    for result in peer["results"]:
        mine = ours.get(result["workload"], {})
        lines.append(
            f"| {result['workload']} | {result['variants']['tfmot_prune']['ratio']:.3f}"
            f" | {_fmt(mine.get('prune', {}).get('ratio'))} | "
            f"{_fmt(mine.get('rigl', {}).get('ratio'))} | "
            f"{_fmt(mine.get('static', {}).get('ratio'))} |")
    lines.append("")
    return lines


def _ms(value) -> str:
    if value is None:
        return "—"
    return format(value, ".0f" if value >= 100 else ".1f" if value >= 10 else ".2f")


def _ratio(row) -> str:
    return f"{row['ratio']:.2f} ({row['ratio_min']:.2f}–{row['ratio_max']:.2f})"


def _small(cell) -> str:
    """The size-first export's MB, sparse layers / CSR and representations, or ``—``."""
    small = cell.get("small")
    if not small:
        return "—"
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(small["representations"].items()))
    ratio = (small.get("sparse_layers") or {}).get("ratio")
    return (f"{_mb(cell['bytes_on_disk'].get('sparse_saved_model_small'))}, "
            f"{_fmt(ratio, '.2f')}, {kinds}")


def _storage_lines(storage) -> list[str]:
    widths = storage["widths"]
    kinds = [row for w in widths for row in [w["dense"], *w["masked"], *w["sparse"]]]
    xla = sorted({row["jit_compile"] for row in kinds})
    window = (f"{storage['window_steps']} steps" if storage["window_steps"] else
              f"at least {storage['window_seconds']:g} s")
    lines = [
        f"**Truly sparse storage** ({storage['model']}; batch {storage['batch']}, "
        f"{storage['optimizer']}; layers {', '.join(storage['sparse_layers'])} sparse, "
        f"{', '.join(storage['dense_layers'])} dense in every kind; dense = plain Keras "
        "`Dense`; masked = `rigl.MaskedDense` (dense kernel and mask, what `rigl.sparsify` "
        "makes; here `rigl.to_masked` of the sparse model: the same connections); sparse = "
        "`rigl.SparseDense` (values and positions, built directly); training steps "
        + ("without XLA" if xla == [False] else "with XLA where a kind supports it")
        + f". Step: median over {storage['rounds']} rounds of interleaved windows of "
        f"{window} (a step timed from its batch's start to its end); speedup = the other's "
        "median step / sparse storage's, in brackets the min–max of the same ratio round by "
        "round)", "",
        "| width | sparsity | nnz | dense ms | masked ms | sparse ms | masked / sparse "
        "| dense / sparse |", "|---|---|---|---|---|---|---|---|"]
    notes = []
    for w in widths:
        masked = {row["sparsity"]: row for row in w["masked"]}
        for row in w["sparse"]:
            reference = masked[row["masked_sparsity"]]
            at = ("" if row["masked_sparsity"] == row["sparsity"]
                  else f" (at {row['masked_sparsity']})")
            lines.append(
                f"| {w['width']:,} | {row['sparsity']} | {row['nnz']:,} | "
                f"{_ms(w['dense']['step_ms'])} | {_ms(reference['step_ms'])}{at} | "
                f"{_ms(row['step_ms'])} | {_ratio(row['vs_masked'])} | "
                f"{_ratio(row['vs_dense'])} |")
        if len(w["masked"]) < len(w["sparse"]):
            notes.append(f"At {w['width']:,}, masked storage was timed at "
                         f"{w['masked'][-1]['sparsity']} only (its step does the same dense "
                         "work at every sparsity).")
    lines.append("")
    if notes:
        lines += [" ".join(notes), ""]
    lines += ["Crossover (sparse storage's step against the other's, at the measured "
              "sparsities):", ""]
    for w in widths:
        lines.append(f"- {w['width']:,}: against masked storage, "
                     f"{w['crossover']['vs_masked']['text']}; against the dense model, "
                     f"{w['crossover']['vs_dense']['text']}.")
    lines.append("")
    if storage["update_methods"]:
        methods = storage["update_methods"]
        light = [f"{w['width']:,}" for w in widths if w["width"] > storage["full_max_width"]]
        lines += ["Update of every sparse layer, called directly (ms, median of "
                  f"{storage['update_repeats']} after an untimed call; RigL's includes its "
                  "gradient, in brackets), and its ratio to a step of the same model; masked "
                  "storage at one sparsity (its update scores every dense position whatever "
                  "the sparsity)"
                  + (f"; at {', '.join(light)}, sparse storage at the highest sparsity only "
                     "and masked storage not timed" if light else "") + ":", "",
                  "| width | sparsity | storage | "
                  + " | ".join(f"{m} ms | {m} / step" for m in methods) + " |",
                  "|---|---|---|" + "---|---|" * len(methods)]
        for w in widths:
            for storage_name in ("masked", "sparse"):
                for row in (r for r in w[storage_name] if "updates" in r):
                    cells = []
                    for m in methods:
                        u = row["updates"][m]
                        gradient = ("" if u["gradient_ms"] is None
                                    else f" ({_ms(u['gradient_ms'])})")
                        cells.append(f"{_ms(u['update_ms'])}{gradient} | "
                                     f"{u['update_to_step']:.2f}")
                    lines.append(f"| {w['width']:,} | {row['sparsity']} | {storage_name} | "
                                 + " | ".join(cells) + " |")
        lines.append("")
    if storage["memory_steps"]:
        lines += [
            f"Peak memory, one fresh process per row ({storage['memory_steps']} training "
            "steps; MB = MiB). Peak: the process's peak RSS above its RSS once TensorFlow is "
            "imported (the build included). Runtime: what training a width-16 model first "
            "costs the process once (thread pools, traced functions, XLA's compiler). Model "
            "peak: the training's peak above that. Theory: state = the model's and "
            "optimizer's variables (17 bytes a sparse entry: value, momentum, row and column, "
            "alive flag; 9 a masked position; 8 a dense one), activations = 2 · 4 · batch · "
            "(inputs + units). Target for sparse storage: model peak ≤ 1.5 × (state + "
            "activations). Masked storage at its highest sparsity only (the same variables "
            "at every sparsity). Each width's processes run before its models are built "
            "here.", "",
            "| width | kind | sparsity | state MB | activations MB | runtime MB | peak MB | "
            "model peak MB | model peak / theory |", "|---|---|---|---|---|---|---|---|---|"]
        for w in widths:
            for kind, rows in (("dense", [w["dense"]]), ("masked", w["masked"]),
                               ("sparse", w["sparse"])):
                for row in (r for r in rows if "memory" in r):
                    m = row["memory"]
                    sparsity = row.get("sparsity", "—")
                    if "error" in m:
                        lines.append(f"| {w['width']:,} | {kind} | {sparsity} | failed: "
                                     f"{m['error'].splitlines()[-1]} ||||||")
                        continue
                    lines.append(
                        f"| {w['width']:,} | {kind} | {sparsity} | {m['state_mb']:.1f} | "
                        f"{m['activations_mb']:.1f} | {m['runtime_mb']:.0f} | "
                        f"{m['peak_mb']:.0f} | {_fmt(m['model_peak_mb'], '.0f')} | "
                        f"{_fmt(m['model_peak_to_theory'], '.2f')} |")
        lines.append("")
    lines.append(f"Storage mode: {storage['seconds']:.0f} s ("
                 + ", ".join(f"{w['width']:,}: {w['seconds']:.0f} s" for w in widths) + ").")
    lines.append("")
    return lines


_EXPORT_LABELS = {"sparse_saved_model": "sparse SavedModel", "sparse_tflite": "sparse LiteRT",
                  "dense_saved_model": "dense SavedModel", "dense_tflite": "dense LiteRT"}


def _mb(value) -> str:
    return "—" if value is None else f"{value / 2**20:.1f}"


def _diff(value) -> str:
    return "—" if value is None else f"{value:.1e}"


def _inference_lines(result) -> list[str]:
    big = result["throughput_batch"]
    columns = " | ".join(_EXPORT_LABELS.values())
    light = ""
    measured = [w["workload"] for w in result["workloads"]]
    light_workloads = [name for name in result["light_workloads"] if name in measured]
    if light_workloads:
        light = (f"; {', '.join(light_workloads)} measured at "
                 f"{', '.join(map(str, result['light_sparsities']))}, "
                 f"{', '.join(result.get('light_distributions', result['distributions']))} "
                 "only")
    lines = [
        "**Exported for inference** (`rigl.export`: each model with random weights and random "
        "masks (`rigl.sparsify`, the layers the paper's configs keep dense stay dense), "
        "exported sparse as a SavedModel (each sparse layer in the representation measured "
        "fastest at batch 1) and as a LiteRT flatbuffer (the converter's sparsity "
        "optimisation), against the model without masks exported the same two ways; all "
        "four loaded with `rigl.load_exported` and timed side by side in one process: "
        f"median over {result['rounds']} rounds of interleaved windows of at least "
        f"{result['window_seconds']:g} s"
        + (f" (fewer rounds, at least {inference_mode.MIN_ROUNDS}, where they would last over "
           f"{result['timing_seconds']:g} s; a row's timing records its own)"
           if "timing_seconds" in result else "")
        + ", the order rotating every round. Ratio = the faster "
        "dense export's time / the sparse export's (> 1: sparse is faster), in brackets the "
        f"min–max of the same ratio round by round{light})", "",
        "Latency, batch 1 (ms per call):", "",
        f"| workload | distribution | sparsity | {columns} | dense / sparse SavedModel | "
        "dense / sparse LiteRT | dense / best sparse |", "|---" * 10 + "|"]
    cells = [(w, c) for w in result["workloads"] for c in w["cells"]]
    for w, c in cells:
        timed, ratios = c["latency"]["variants"], c["latency"]["ratios"]
        lines.append(
            f"| {w['workload']} | {c['distribution']} | {c['sparsity']} | "
            + " | ".join(_ms(timed[n]["ms"]) for n in _EXPORT_LABELS)
            + f" | {_ratio(ratios['saved_model'])} | {_ratio(ratios['tflite'])} | "
            f"{_ratio(ratios['best'])} |")
    lines += ["", f"Throughput, batch {big} (examples/s; the sparse SavedModel timed is the "
              f"one exported at batch {big}, its layers' choices measured there, where the "
              f"last column says {big}, else the batch-1 export):", "",
              f"| workload | distribution | sparsity | {columns} | dense / sparse SavedModel | "
              "dense / sparse LiteRT | dense / best sparse | SavedModel exported at |",
              "|---" * 11 + "|"]
    for w, c in cells:
        t = c["throughput"]
        exported = big if t["timed"]["sparse_saved_model"] != "sparse_saved_model" else 1
        lines.append(
            f"| {w['workload']} | {c['distribution']} | {c['sparsity']} | "
            + " | ".join(f"{t['examples_per_s'][n]:,.0f}" for n in _EXPORT_LABELS)
            + f" | {_ratio(t['ratios']['saved_model'])} | {_ratio(t['ratios']['tflite'])} | "
            f"{_ratio(t['ratios']['best'])} | {exported} |")
    lines += ["", "Exports: nnz = active weights of the layers with a sparse kernel (a GRU's "
              "are stored dense); largest |output − Keras model's output| and top-1 agreement on "
              f"the timed batch of {big} (per position for the char-GRU); size on disk (MB = "
              "MiB); the sparse layers' stored bytes / CSR bytes (nnz × 4 + index bytes, "
              f"target ≤ {inference_mode.SIZE_TARGET}) and their representations in the "
              "SavedModel exported at batch 1, then the same of the size-first SavedModel "
              "(`representation='sparse'`, where the row has one); seconds to export the "
              "sparse SavedModel / LiteRT, and the whole row:", "",
              "| workload | distribution | sparsity | nnz | max diff SavedModel | max diff "
              "LiteRT | top-1 agreement SavedModel / LiteRT | MB: " + columns.replace(" | ", " / ")
              + " | sparse layers / CSR | representations | size-first: MB, / CSR, "
              "representations | export s | row s |",
              "|---" * 13 + "|"]
    for w, c in cells:
        acc, size = c["accuracy"], {**w["dense"]["bytes_on_disk"], **c["bytes_on_disk"]}
        layers = c.get("sparse_layers") or {}
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(c["representations"].items()))
        lines.append(
            f"| {w['workload']} | {c['distribution']} | {c['sparsity']} | {c['nnz']:,} | "
            f"{_diff(acc['sparse_saved_model']['max_abs_diff'])} | "
            f"{_diff(acc['sparse_tflite']['max_abs_diff'])} | "
            f"{acc['sparse_saved_model']['top1_agreement']:.3f} / "
            f"{acc['sparse_tflite']['top1_agreement']:.3f} | "
            + " / ".join(_mb(size.get(n)) for n in _EXPORT_LABELS)
            + f" | {_fmt(layers.get('ratio'), '.2f')} | {kinds} | {_small(c)} | "
            f"{c['export_s']['sparse_saved_model']:.0f} / {c['export_s']['sparse_tflite']:.0f}"
            f" | {c['seconds']:.0f} |")
    lines += ["", "Targets (issue 16, read off the rows above; speed: the faster sparse export "
              "against the faster dense export at batch 1):", ""]
    for target in inference_mode.targets(result):
        verdict = {True: " — **met**", False: " — **not met**", None: ""}[target["met"]]
        lines.append(f"- {target['text']}: {target['found']}{verdict}.")
    lines += ["", f"Inference mode: {result['seconds']:.0f} s ("
              + ", ".join(f"{w['workload']}: {w['seconds']:.0f} s" for w in result["workloads"])
              + ").", ""]
    return lines


def markdown(report: dict) -> str:
    """The markdown tables of ``report`` (no trailing newline)."""
    machine = report["machine"]
    lines = [f"Machine: {machine['cpu']}, {machine['cores']} cores; "
             f"TensorFlow {machine['tensorflow']}, Keras "
             f"{machine['keras']}; {machine['date']}; load average at "
             f"start {machine['load_average_at_start'][0]:.2f}; "
             f"`--jit_compile={report.get('jit_compile')}`.", ""]
    for result in report.get("overhead", []):
        lines += _overhead_lines(result)
    if report.get("pipeline"):
        lines += _pipeline_lines(report["pipeline"])
    if report.get("peer"):
        lines += _peer_lines(report["peer"], report.get("overhead", []))
    if report.get("storage"):
        lines += _storage_lines(report["storage"])
    if report.get("inference"):
        lines += _inference_lines(report["inference"])
    lines.append(f"Command: `{report['command']}`; {report['seconds']:.0f} s; peak RSS "
                 f"{report['peak_rss_mb']:.0f} MB; load average at the end "
                 f"{report['load_average_at_end'][0]:.2f}.")
    return "\n".join(lines)

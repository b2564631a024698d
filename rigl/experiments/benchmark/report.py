"""The benchmark report: the machine it ran on, and its rendering as markdown tables.

A report is the JSON dict ``suite.run`` returns (and ``scripts/benchmark.py --json`` prints):
``command``, ``machine``, ``jit_compile``, one key per mode run (``overhead``: a list of
workload results; ``pipeline``; ``peer``), ``seconds``, ``load_average_at_end``,
``peak_rss_mb``. ``markdown`` renders a report, fresh or read back from its JSON
(``--render``), to the tables of ``results/benchmark/benchmark.md``.

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
    lines.append(f"Command: `{report['command']}`; {report['seconds']:.0f} s; peak RSS "
                 f"{report['peak_rss_mb']:.0f} MB; load average at the end "
                 f"{report['load_average_at_end'][0]:.2f}.")
    return "\n".join(lines)

"""The overhead mode: what sparse training costs on top of the same dense training.

For each workload, in one process, the variants (the plain Keras model with ordinary layers,
the dense floor; the masked model, static; SET; SNFS; RigL; gradual magnitude pruning; and the
diagnostics of ``workloads.DIAGNOSTIC_VARIANTS``) are trained with ``model.fit`` on one
in-memory synthetic batch, interleaved and repeated (``harness``). Reported per variant:
steps/s, the ratio to the dense model (median and spread over the rounds), the time of one
mask update called directly and its ratio to a dense training step, RigL's extra gradient,
how often the compiled update was traced, peak memory.

Updaters come from the registry (``rigl.get_updater``), so a method added to
``rigl.methods`` is timed like the others without a change here.
"""

from __future__ import annotations

import math
import time

import keras

import rigl
from rigl.experiments.benchmark import harness, workloads
from rigl.experiments.models import build_model

# Updates of the drop-and-grow methods never stop: with the end of the schedule a million
# periods away the cosine drop fraction stays at about its initial 0.3.
_NEVER_ENDING_PERIODS = 10**6
# Dense-to-sparse methods (gradual pruning) reach their target after a thousand periods.
_PRUNING_PERIODS = 1000


def _updater(method: rigl.methods.Method, sparsity: float, update_freq: int):
    periods = _PRUNING_PERIODS if method.dense_to_sparse else _NEVER_ENDING_PERIODS
    # The same arguments for every method; each takes those it has (Static none of them).
    return rigl.get_updater(method.name, ignore_unused=True, sparsity=sparsity,
                            update_freq=update_freq, end_step=update_freq * periods)


def build_runners(workload: workloads.Workload, variants, sparsity: float, update_freq: int,
                  data, jit_compile: str) -> list[harness.Runner]:
    """One compiled runner per variant, every model built from the same seed.

    Args:
        workload: the model and input.
        variants: names of ``workloads.VARIANTS`` or ``workloads.DIAGNOSTIC_VARIANTS``.
        sparsity: the sparse variants' uniform sparsity (pruning's target).
        update_freq: ΔT of every updating variant.
        data: the training dataset (RigL's gradient is taken on it).
        jit_compile: ``--jit_compile`` (``"auto"``, ``"true"``, ``"false"``).
    """
    runners = []
    xla = workloads.uses_xla(workload, jit_compile)
    for name in variants:
        keras.utils.set_random_seed(0)
        model = build_model(workload.model, workload.input_shape, workload.num_classes,
                            **dict(workload.options))
        method = rigl.methods.REGISTRY.get(name)
        updater = None
        if name == "static_no_constraint":
            model = rigl.sparsify(model, sparsity, seed=0)
            for weight in rigl.masked_weights(model):
                weight.masked_kernel.constraint = None
        elif method is not None and method.masked:
            model = rigl.sparsify(model, 0.0 if method.dense_to_sparse else sparsity, seed=0)
            updater = _updater(method, sparsity, update_freq)
        harness.compile_model(model, keras, not xla if name == "dense_other_xla" else xla)
        callback = None
        if updater is not None:
            callback = rigl.SparseTraining(updater,
                                           data=data if updater.needs_gradients else None)
        runners.append(harness.Runner(
            name, model, [callback] if callback else [],
            update_freq if updater is not None and updater.changes_masks else None,
            updater, callback))
    return runners


def time_mask_updates(runner: harness.Runner, batch, repeats: int, update_freq: int):
    """Median seconds of one mask update (drop + grow, every layer), called directly; for
    RigL also of the extra gradient, which is timed apart.

    Returns:
        ``(update seconds, gradient seconds or None)``.
    """
    updater = runner.updater
    step = (harness.read_iterations(runner.model) // update_freq + 1) * update_freq
    gradients, gradient_times, update_times = None, [], []
    for i in range(repeats):
        if updater.needs_gradients:
            start = time.perf_counter()
            gradients = updater.kernel_gradients(batch)  # eager calls return when done
            gradient_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        updater.update(step + i * update_freq, gradients=gradients)
        update_times.append(time.perf_counter() - start)
    return (harness.median(update_times),
            harness.median(gradient_times) if gradient_times else None)


def overhead_mode(names, variants, sparsity: float, update_freq: int, overrides: dict,
                  jit_compile: str, log) -> list[dict]:
    """Times ``variants`` on each workload of ``names``; one result dict per workload.

    Args:
        names: keys of ``workloads.WORKLOADS``.
        variants: the variants to time, the first the baseline if ``dense`` is not among them.
        sparsity: the sparse variants' sparsity.
        update_freq: ΔT.
        overrides: workload fields to replace (of ``workloads.OVERRIDABLE``).
        jit_compile: ``--jit_compile``.
        log: prints a progress line.
    """
    results = []
    for name in names:
        workload = workloads.get_workload(name, **overrides)
        log(f"overhead: {name} ({workload.model} {workload.input_shape} batch "
            f"{workload.batch}), W={workload.window_steps}, {workload.rounds} rounds")
        batch, data = workloads.synthetic(workload)
        started = time.perf_counter()
        runners = build_runners(workload, variants, sparsity, update_freq, data, jit_compile)
        period = harness.time_runners(runners, data, keras, workload, update_freq)
        baseline = "dense" if "dense" in variants else runners[0].name
        summary = harness.summarize(runners, baseline)
        dense_step = summary[baseline]["step_ms"] / 1e3
        masked = next((rigl.masked_weights(r.model) for r in runners if r.updater is not None),
                      [])
        for runner in runners:
            row = summary[runner.name]
            row["peak_memory_mb"] = harness.peak_memory_mb(runner)
            if runner.updater is None or not runner.updater.changes_masks:
                continue
            update_s, gradient_s = time_mask_updates(runner, batch, workload.update_repeats,
                                                     update_freq)
            row["update_ms"] = 1e3 * update_s
            row["update_to_step"] = update_s / dense_step
            if gradient_s is not None:
                row["gradient_ms"] = 1e3 * gradient_s
            row["update_traces"] = runner.updater.update_traces
        results.append({
            "workload": name, "model": workload.model, "input_shape": list(workload.input_shape),
            "batch": workload.batch, "masked_layers": len(masked),
            "masked_weights": sum(math.prod(int(d) for d in w.mask.shape) for w in masked),
            "sparsity": sparsity, "update_freq": update_freq,
            "jit_compile": workloads.uses_xla(workload, jit_compile),
            "window_steps": workload.window_steps, "period_steps": period,
            "warmup_steps": workload.warmup_steps, "rounds": workload.rounds,
            "seconds": time.perf_counter() - started, "variants": summary,
        })
        del runners
        keras.backend.clear_session()
    return results

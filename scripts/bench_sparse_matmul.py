"""Measures the kernels a truly sparse Dense layer can use, against the dense product.

For one ``n x n`` layer at each density and a batch: the dense step (``x @ W``, ``dy @ Wᵀ``,
``xᵀ @ dy``) against candidate kernels for each of the three products of
``rigl.SparseDense`` (see ``docs/truly_sparse.md``, which records a run):

* forward ``x @ W``: CSR of W read transposed (``csr_w_t``, the library's choice), CSR of
  Wᵀ from a stored permutation (``csr_wt``), COO ``tf.sparse.sparse_dense_matmul`` (``coo``),
  gather + ``unsorted_segment_sum`` (``segment``);
* input gradient ``dy @ Wᵀ``: CSR of W (``csr_w``);
* weight gradient at the active positions: XLA-fused gathers and reduction
  (``sampled_xla``, the library's ``sampled_product``) and the same without XLA
  (``sampled_plain``);
* ``csr_build``: building the CSR matrix from (rows, cols, values) alone;
* ``layer_step``: ``rigl.sparse_layers.sparse_matmul`` forward and backward (the sum of the
  library's choices, CSR built once), against ``dense_step``.

Variants are timed in interleaved rounds (each round runs every variant once, in rotating
order) and the figure is the median over rounds, so that load from other processes on a
shared machine hits every variant alike; ``min`` is printed too.

``--mode=step`` times whole training steps (SGD with momentum) of the MLP
``n -> n -> n -> 10`` of ``scripts/benchmark.py --modes=storage`` in masked storage
(``rigl.sparsify``), in sparse storage (``rigl.SparseDense``) and dense, one step per window,
interleaved the same way; ``--mode=update`` times one SET and one RigL update (RigL's gradient
included) in both storages. Both use ``rigl.experiments.benchmark.storage``, whose mode
measures the same at several widths and sparsities, with the update's ratio to a step, peak
memory and the crossover.

``--mode=inference`` times the forward product ``x @ W`` alone, at ``--batch`` (1 by default
in this mode: one request), for every way of running it that ``rigl.export`` weighed
(``docs/performance.md``, "Inference export", records a run):

* the dense product (``dense``, ``dense_xla``);
* the export's sliced ELL compiled with XLA (``ell_xla``), the same without XLA
  (``ell_plain``), and as one table padded to the widest neuron (``ell_one_slice``);
* CSR rebuilt from its arrays at every call, as a SavedModel must (``csr_rebuilt``), and
  built once (``csr_prebuilt``, run eagerly: a graph cannot capture the CSR object);
* COO ``tf.sparse.sparse_dense_matmul`` (``coo``); gather + ``unsorted_segment_sum``
  (``segment``);
* LiteRT on a one-layer flatbuffer (all cores, as ``rigl.load_exported`` runs it),
  converted plain (``litert_dense``) and with the converter's sparsity optimisation
  (``litert_sparse``; needs ``requirements-export.txt``).

Each figure is the median over rounds of ``--repeats`` calls (per call, Python's call
included, as a served request pays it); every variant's output is checked against the dense
product in float64 (``max_abs_diff``). ``--cold_cache`` evicts the CPU caches before each
call (untimed), as a model whose layers together exceed them does.

    TF_CPP_MIN_LOG_LEVEL=3 python scripts/bench_sparse_matmul.py --n=4096 --batch=128 \\
        --densities=0.1,0.01,0.001 --rounds=7 [--mode=kernels|step|update] [--json]
    TF_CPP_MIN_LOG_LEVEL=3 python scripts/bench_sparse_matmul.py --mode=inference --n=4096 \\
        --densities=0.1,0.05,0.02,0.01 --rounds=15
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import tensorflow as tf

from rigl import inference_layers
from rigl.experiments.benchmark import storage, workloads
from rigl.sparse_layers import sampled_product, sparse_matmul


def _csr(rows, cols, values, shape):
    indices = tf.cast(tf.stack([rows, cols], 1), tf.int64)
    return tf.raw_ops.SparseTensorToCSRSparseMatrix(
        indices=indices, values=values, dense_shape=tf.constant(shape, tf.int64))


KERNELS = ("dense_step", "layer_step", "csr_build", "csr_w_t", "csr_wt", "coo", "segment",
           "csr_w", "sampled_xla", "sampled_plain")


def kernels(n):
    """Candidate kernels: name -> tf.function of (x, dy, W, rows, cols, values, perm)."""
    shape = (n, n)

    def dense_step(x, dy, w, rows, cols, values, perm):
        return (tf.matmul(x, w), tf.matmul(dy, w, transpose_b=True),
                tf.matmul(x, dy, transpose_a=True))

    def layer_step(x, dy, w, rows, cols, values, perm):
        with tf.GradientTape() as tape:
            tape.watch([x, values])
            y = sparse_matmul(x, values, rows, cols, shape)
        return tape.gradient(y, [x, values], output_gradients=dy)

    def csr_build(x, dy, w, rows, cols, values, perm):
        csr = _csr(rows, cols, values, shape)
        return tf.raw_ops.CSRSparseMatrixComponents(csr_sparse_matrix=csr, index=0,
                                                    type=tf.float32)[2][:1]

    def csr_w_t(x, dy, w, rows, cols, values, perm):
        return tf.raw_ops.SparseMatrixMatMul(a=_csr(rows, cols, values, shape), b=x,
                                             transpose_a=True, transpose_b=True,
                                             transpose_output=True)

    def csr_wt(x, dy, w, rows, cols, values, perm):
        csr = _csr(tf.gather(cols, perm), tf.gather(rows, perm), tf.gather(values, perm),
                   shape)
        return tf.raw_ops.SparseMatrixMatMul(a=csr, b=x, transpose_b=True,
                                             transpose_output=True)

    def coo(x, dy, w, rows, cols, values, perm):
        indices = tf.cast(tf.stack([tf.gather(cols, perm), tf.gather(rows, perm)], 1),
                          tf.int64)
        sparse = tf.SparseTensor(indices, tf.gather(values, perm), shape)
        return tf.transpose(tf.sparse.sparse_dense_matmul(sparse, x, adjoint_b=True))

    def segment(x, dy, w, rows, cols, values, perm):
        products = tf.gather(x, rows, axis=1) * values
        return tf.transpose(tf.math.unsorted_segment_sum(tf.transpose(products), cols, n))

    def csr_w(x, dy, w, rows, cols, values, perm):
        return tf.raw_ops.SparseMatrixMatMul(a=_csr(rows, cols, values, shape), b=dy,
                                             transpose_b=True, transpose_output=True)

    def sampled_xla(x, dy, w, rows, cols, values, perm):
        return sampled_product(x, dy, rows, cols)

    def sampled_plain(x, dy, w, rows, cols, values, perm):
        return tf.reduce_sum(tf.gather(x, rows, axis=1) * tf.gather(dy, cols, axis=1), 0)

    found = dict(dense_step=dense_step, layer_step=layer_step, csr_build=csr_build,
                 csr_w_t=csr_w_t, csr_wt=csr_wt, coo=coo, segment=segment, csr_w=csr_w,
                 sampled_xla=sampled_xla, sampled_plain=sampled_plain)
    assert tuple(found) == KERNELS
    return {name: tf.function(fn) for name, fn in found.items()}


def _run(fn, args):
    start = time.perf_counter()
    out = fn(*args)
    tf.nest.map_structure(lambda t: t.numpy(), out)
    return time.perf_counter() - start


def measure(n, batch, density, rounds, names, seed=0):
    rng = np.random.default_rng(seed)
    size = n * n
    nnz = max(1, int(round(density * size)))
    flat = np.sort(rng.choice(size, nnz, replace=False))
    rows, cols = (flat // n).astype(np.int32), (flat % n).astype(np.int32)
    values = rng.standard_normal(nnz).astype(np.float32)
    perm = np.lexsort((rows, cols)).astype(np.int32)
    w = np.zeros((n, n), np.float32)
    w[rows, cols] = values
    args = [tf.constant(a) for a in (rng.standard_normal((batch, n)).astype(np.float32),
                                     rng.standard_normal((batch, n)).astype(np.float32),
                                     w, rows, cols, values, perm)]
    fns = kernels(n)
    for name in names:
        _run(fns[name], args)  # trace and compile
    times = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            times[name].append(_run(fns[name], args))
    return {"n": n, "batch": batch, "density": density, "nnz": nnz,
            "median_ms": {k: 1e3 * float(np.median(v)) for k, v in times.items()},
            "min_ms": {k: 1e3 * float(np.min(v)) for k, v in times.items()}}


def measure_steps(n, batch, density, rounds, seed=0):
    """Training steps of the storage mode's MLP in its three kinds, one-step windows
    interleaved over ``rounds`` (``rigl.experiments.benchmark.storage``)."""
    _, data = workloads.synthetic_batch(batch, (n,), storage.NUM_CLASSES, seed)
    sparsity = 1.0 - density
    runners = [storage.StepRunner(kind, None if kind == "dense" else sparsity,
                                  storage.compile_mlp(storage.build_mlp(
                                      kind, n, None if kind == "dense" else sparsity, seed),
                                      False))
               for kind in storage.KINDS]
    storage.time_steps(runners, data, storage.StorageSettings(
        widths=(n,), sparsities=(sparsity,), batch=batch, rounds=rounds, window_steps=1))
    return {"n": n, "batch": batch, "density": density, "mode": "step",
            "median_ms": {r.kind: 1e3 * float(np.median(r.windows)) for r in runners},
            "min_ms": {r.kind: 1e3 * float(np.min(r.windows)) for r in runners}}


def measure_updates(n, batch, density, rounds, seed=0):
    """One SET and one RigL update in masked and sparse storage (``storage.time_updates``:
    median of ``rounds`` calls after an untimed one; RigL's gradient included)."""
    data, _ = workloads.synthetic_batch(batch, (n,), storage.NUM_CLASSES, seed)
    times = {}
    for kind in ("masked", "sparse"):
        model = storage.compile_mlp(storage.build_mlp(kind, n, 1.0 - density, seed), False)
        for method, timed in storage.time_updates(model, data, repeats=rounds).items():
            times[f"{kind}_{method}"] = timed["update_s"]
    return {"n": n, "batch": batch, "density": density, "mode": "update",
            "median_ms": {k: 1e3 * v for k, v in times.items()}}


INFERENCE_KERNELS = ("dense", "dense_xla", "ell_xla", "ell_plain", "ell_one_slice",
                     "csr_rebuilt", "csr_prebuilt", "coo", "segment", "litert_dense",
                     "litert_sparse")


def _litert(w, batch, sparse):
    """A callable running ``x @ w`` in the LiteRT interpreter from a one-layer flatbuffer."""
    from ai_edge_litert import interpreter

    module = tf.Module()
    module.w = tf.constant(w)
    module.f = tf.function(lambda x: tf.matmul(x, module.w),
                           input_signature=[tf.TensorSpec((batch, w.shape[0]), tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.f.get_concrete_function()], module)
    if sparse:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    runner = interpreter.Interpreter(model_content=converter.convert(),
                                     num_threads=os.cpu_count())
    runner.allocate_tensors()
    into = runner.get_input_details()[0]["index"]
    out = runner.get_output_details()[0]["index"]

    def call(x):
        runner.set_tensor(into, x)
        runner.invoke()
        return runner.get_tensor(out)
    return call


def inference_kernels(w, rows, cols, values, batch, names):
    """name -> callable of ``x`` (numpy, ``(batch, n)``) returning ``x @ w`` as numpy."""
    n_in, n_out = w.shape
    shape = (n_in, n_out)
    dense_w = tf.constant(w)

    def tables(tolerance):
        slices, inverse = inference_layers.ell_arrays(rows, cols, values, shape, tolerance)
        return ([tf.constant(t) for t, _ in slices], [tf.constant(v) for _, v in slices],
                tf.constant(inverse))

    sliced, one_slice = tables(inference_layers.SLICE_TOLERANCE), tables(1.0)
    ell_plain = tf.function(inference_layers._ell_product.python_function)
    pointers, inputs, ordered = (tf.constant(a) for a in
                                 inference_layers.csr_arrays(rows, cols, values, shape))
    by_output = np.lexsort((rows, cols))  # Wᵀ's entries in row-major order
    csr = _csr(cols[by_output], rows[by_output], values[by_output], (n_out, n_in))
    coo = tf.SparseTensor(np.stack([cols, rows], 1)[by_output].astype(np.int64),
                          values[by_output], (n_out, n_in))
    sources, targets = tf.constant(rows), tf.constant(cols)
    graphs = {
        "dense": tf.function(lambda x: tf.matmul(x, dense_w)),
        "dense_xla": tf.function(lambda x: tf.matmul(x, dense_w), jit_compile=True),
        "ell_xla": lambda x: inference_layers._ell_product(x, *sliced),
        "ell_plain": lambda x: ell_plain(x, *sliced),
        "ell_one_slice": lambda x: inference_layers._ell_product(x, *one_slice),
        "csr_rebuilt": tf.function(lambda x: inference_layers._csr_product(
            x, pointers, inputs, ordered, n_out)),
        # eager: a graph cannot capture the CSR variant (its shape info is lost)
        "csr_prebuilt": lambda x: tf.raw_ops.SparseMatrixMatMul(
            a=csr, b=x, transpose_b=True, transpose_output=True),
        "coo": tf.function(lambda x: tf.transpose(
            tf.sparse.sparse_dense_matmul(coo, x, adjoint_b=True))),
        "segment": tf.function(lambda x: tf.transpose(tf.math.unsorted_segment_sum(
            tf.transpose(tf.gather(x, sources, axis=1) * values), targets, n_out))),
    }
    found = {}
    for name in names:
        if name.startswith("litert_"):
            found[name] = _litert(w, batch, name == "litert_sparse")
        else:
            graph = graphs[name]
            found[name] = lambda x, graph=graph: graph(tf.constant(x)).numpy()
    return found


FLUSH_BYTES = 128 << 20


def measure_inference(n, batch, density, rounds, repeats, names, seed=0, cold=False):
    """``x @ W`` for an ``n x n`` W at ``density``: median ms per call over ``rounds``
    interleaved rounds of ``repeats`` calls, and each variant's max |diff| from dense.

    ``cold``: before each call (untimed), ``FLUSH_BYTES`` are written and read so that the
    weights start out of the CPU's caches, as in a model whose layers together exceed them.
    """
    rng = np.random.default_rng(seed)
    nnz = max(1, int(round(density * n * n)))
    flat = np.sort(rng.choice(n * n, nnz, replace=False))
    rows, cols = (flat // n).astype(np.int32), (flat % n).astype(np.int32)
    values = rng.standard_normal(nnz).astype(np.float32)
    w = np.zeros((n, n), np.float32)
    w[rows, cols] = values
    x = rng.standard_normal((batch, n)).astype(np.float32)
    fns = inference_kernels(w, rows, cols, values, batch, names)
    expected = x.astype(np.float64) @ w
    diff = {name: float(np.max(np.abs(fn(x) - expected))) for name, fn in fns.items()}
    flush = np.ones(FLUSH_BYTES // 4, np.float32) if cold else None
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            total = 0.0
            for _ in range(repeats):
                if cold:
                    flush += 1.0
                    flush.sum()
                start = time.perf_counter()
                fns[name](x)
                total += time.perf_counter() - start
            times[name].append(total / repeats)
    return {"n": n, "batch": batch, "density": density, "nnz": nnz, "mode": "inference",
            "cold_cache": cold,
            "median_ms": {k: 1e3 * float(np.median(v)) for k, v in times.items()},
            "min_ms": {k: 1e3 * float(np.min(v)) for k, v in times.items()},
            "max_abs_diff": diff}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=None,
                        help="rows of x (default 128; 1 for --mode=inference)")
    parser.add_argument("--densities", default="0.1,0.01,0.001")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=20,
                        help="calls per round and variant (--mode=inference)")
    parser.add_argument("--kernels", default=None,
                        help="comma-separated variants (default: all of the mode's)")
    parser.add_argument("--mode", choices=["kernels", "step", "update", "inference"],
                        default="kernels")
    parser.add_argument("--cold_cache", action="store_true",
                        help="--mode=inference: evict the CPU caches before each call")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    batch = args.batch or (1 if args.mode == "inference" else 128)
    known = INFERENCE_KERNELS if args.mode == "inference" else KERNELS
    names = args.kernels.split(",") if args.kernels else list(known)
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"--kernels: unknown {unknown} for --mode={args.mode}; expected a "
                     f"subset of {','.join(known)}")
    densities = [float(d) for d in args.densities.split(",")]
    if args.mode in ("step", "update"):
        measure_mode = measure_steps if args.mode == "step" else measure_updates
        results = [measure_mode(args.n, batch, d, args.rounds) for d in densities]
        if args.json:
            print(json.dumps(results, indent=1))
            return
        for r in results:
            cells = ", ".join(f"{k} {v:.1f}" + (f" ({r['min_ms'][k]:.1f})" if "min_ms" in r
                                                 else "") for k, v in r["median_ms"].items())
            print(f"n={r['n']} batch={r['batch']} density={r['density']}: {cells} ms")
        return
    if args.mode == "inference":
        results = [measure_inference(args.n, batch, d, args.rounds, args.repeats, names,
                                     cold=args.cold_cache) for d in densities]
        baseline, best_of = "dense", [k for k in names if k not in ("dense", "dense_xla")]
        caption = (f"n={args.n} batch={batch}: median ms per call over {args.rounds} "
                   f"interleaved rounds of {args.repeats} calls (min)"
                   f"{', caches evicted before each call' if args.cold_cache else ''}; "
                   "ratio = fastest dense / fastest sparse")
    else:
        results = [measure(args.n, batch, d, args.rounds, names) for d in densities]
        baseline, best_of = "dense_step", ["layer_step"]
        caption = (f"n={args.n} batch={batch}: median ms over {args.rounds} interleaved "
                   "rounds (min); ratio = dense_step / layer_step")
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(caption)
    print("| density | nnz | " + " | ".join(names) + " | ratio |")
    print("|" + "---|" * (len(names) + 3))
    for r in results:
        cells = [f"{r['median_ms'][k]:.2f} ({r['min_ms'][k]:.2f})" for k in names]
        dense = [r["median_ms"][k] for k in names if k.startswith(baseline) or
                 (args.mode == "inference" and k == "litert_dense")]
        sparse = [r["median_ms"][k] for k in best_of if k in names and k != "litert_dense"]
        ratio = min(dense) / min(sparse) if dense and sparse else float("nan")
        print(f"| {r['density']} | {r['nnz']} | " + " | ".join(cells) + f" | {ratio:.2f} |")
        if "max_abs_diff" in r:
            worst = max(r["max_abs_diff"], key=r["max_abs_diff"].get)
            print(f"|  | max abs diff from float64 dense: {r['max_abs_diff'][worst]:.1e} "
                  f"({worst}) |")


if __name__ == "__main__":
    main()

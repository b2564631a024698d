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

    TF_CPP_MIN_LOG_LEVEL=3 python scripts/bench_sparse_matmul.py --n=4096 --batch=128 \\
        --densities=0.1,0.01,0.001 --rounds=7 [--mode=kernels|step|update] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import tensorflow as tf

from rigl.experiments.benchmark import storage, workloads
from rigl.sparse_layers import sampled_product, sparse_matmul


def _csr(rows, cols, values, shape):
    indices = tf.cast(tf.stack([rows, cols], 1), tf.int64)
    return tf.raw_ops.SparseTensorToCSRSparseMatrix(
        indices=indices, values=values, dense_shape=tf.constant(shape, tf.int64))


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--densities", default="0.1,0.01,0.001")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--kernels", default="dense_step,layer_step,csr_build,csr_w_t,"
                        "csr_wt,coo,segment,csr_w,sampled_xla,sampled_plain")
    parser.add_argument("--mode", choices=["kernels", "step", "update"], default="kernels")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = args.kernels.split(",")
    densities = [float(d) for d in args.densities.split(",")]
    if args.mode != "kernels":
        measure_mode = measure_steps if args.mode == "step" else measure_updates
        results = [measure_mode(args.n, args.batch, d, args.rounds) for d in densities]
        if args.json:
            print(json.dumps(results, indent=1))
            return
        for r in results:
            cells = ", ".join(f"{k} {v:.1f}" + (f" ({r['min_ms'][k]:.1f})" if "min_ms" in r
                                                 else "") for k, v in r["median_ms"].items())
            print(f"n={r['n']} batch={r['batch']} density={r['density']}: {cells} ms")
        return
    results = [measure(args.n, args.batch, d, args.rounds, names) for d in densities]
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(f"n={args.n} batch={args.batch}: median ms over {args.rounds} interleaved rounds "
          "(min); ratio = dense_step / layer_step")
    print("| density | nnz | " + " | ".join(names) + " | ratio |")
    print("|" + "---|" * (len(names) + 3))
    for r in results:
        cells = [f"{r['median_ms'][k]:.2f} ({r['min_ms'][k]:.2f})" for k in names]
        ratio = (r["median_ms"]["dense_step"] / r["median_ms"]["layer_step"]
                 if {"dense_step", "layer_step"} <= set(names) else float("nan"))
        print(f"| {r['density']} | {r['nnz']} | " + " | ".join(cells) + f" | {ratio:.2f} |")


if __name__ == "__main__":
    main()

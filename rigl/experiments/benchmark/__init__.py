"""The benchmark: what sparse training costs on top of the same dense training, and where.

Sparse training is simulated with masks on dense kernels (as in the paper), so the question is
overhead: the floor is the dense step itself plus, every ΔT steps, one extra gradient (RigL)
and the drop/grow selection. Five modes, three run by default by ``scripts/benchmark.py``
(``storage`` and ``inference`` on request):

* ``overhead``: each workload's variants (the plain Keras model, the dense floor; the masked
  model, static; SET; SNFS; RigL; gradual pruning) in one process, interleaved and repeated:
  steps/s, the ratio to the dense model, one mask update's time, peak memory.
* ``pipeline``: LeNet-5 fed by the project's TFDS MNIST pipeline against one in-memory batch.
* ``peer``: tfmot's ``prune_low_magnitude`` as its ratio to its own plain ``tf_keras`` model,
  run by ``scripts/benchmark_peer.py`` in a separate venv (``.venv-bench``: Keras 2).
* ``storage`` (issue 15): MLPs in truly sparse storage (``rigl.SparseDense``) against masked
  storage and the plain dense model: step and update times, peak memory in a fresh process
  per configuration, the crossover sparsity.
* ``inference`` (issue 16): ``rigl.export``'s sparse SavedModel and LiteRT exports against
  the dense exports of the same architecture: batch-1 latency, batch-64 throughput, output
  agreement, size on disk, per-layer representations.

XLA. The variants of a workload are all compiled alike: with XLA where it speeds up the plain
dense model on this CPU (LeNet-300-100, whose step is elementwise passes and small matmuls),
without it where it slows it down (the convolutional models: TensorFlow's oneDNN convolutions
are much faster than XLA's on CPU). The default variants include ``dense_other_xla``, the plain
model compiled the other way, so every table shows whether the choice made the dense floor
faster; ``--jit_compile=true`` or ``false`` forces one setting everywhere. The method, windows
and amortisation included, is in ``harness`` and ``docs/performance.md``.

Modules, one concern each:

* ``workloads``: the workloads, variants and synthetic batch (what is timed).
* ``harness``: timing windows, interleaved rounds, medians and ratios (how it is timed).
* ``overhead``, ``pipeline``, ``peer``, ``storage``, ``inference``: the modes; ``memory``:
  the peak memory of one configuration in a fresh process (``storage``).
* ``suite``: runs the selected modes and assembles the report.
* ``report``: the machine's description and the markdown of a report (``--render``).

Nothing is imported here, so that the tfmot worker, in a venv without TFDS, loads only
``peer``, ``harness`` and ``workloads``. New workloads and variants plug in in ``workloads``,
new modes in ``suite`` (see each module's docstring).
"""

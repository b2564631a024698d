#!/usr/bin/env python
"""The paper's energy-landscape experiment at small scale: LeNet-300-100 on MNIST.

"Rigging the Lottery" (Evci et al. 2020, https://arxiv.org/abs/1911.11134) ends by arguing
that static sparse training stops in a local minimum that RigL's mask updates leave: the
training loss on the straight line from a static-sparse solution to a pruning solution has a
barrier, and static training started again from points of that line falls back to where it
was. This script reproduces it with about 12 minutes of CPU (38 minutes of wall time on a
shared two-core machine running other jobs):

    python scripts/interpolate.py --out_dir=results/interpolation

1. ``pruned``: LeNet-300-100 trained dense and pruned by magnitude to ``--sparsity`` (every
   layer; ``rigl.GradualPruning`` from 25% to 60% of training, as the reference's
   ``rigl_tf2/mlp_configs/prune.gin`` prunes from step 3,000 to 7,000 of 11,719);
2. ``static``: a new initialisation trained on the pruned solution's masks, which never
   change (the reference's ``scratch.gin``: same masks, so the two solutions share one sparse
   subspace and the straight line between them stays in it);
3. the line from ``static`` (alpha = 0) to ``pruned`` (alpha = 1): cross-entropy (no weight
   decay) and accuracy on the whole training set, test accuracy, at ``--path_points``
   points (``rigl.experiments.interpolation``);
4. restarts: from the points ``--restart_alphas`` of that line, each of ``--restart_methods``
   (Static: the same masks again; RigL: masks that move) trains anew for ``--epochs`` with a
   fresh optimizer and the same schedule. Alpha 0 is the static solution itself: RigL and
   Static started from the static solution, the paper's comparison. For each end: its training
   loss, test accuracy, distances and loss barriers to both solutions (the line from the end
   to a solution, on the union of their masks), which say which basin it ended in.

Every training run uses SGD with Nesterov momentum 0.9, a cosine learning rate from
``--learning_rate``, batch ``--batch_size``, weight decay ``--weight_decay`` (λ/2·Σw²).
``results.json`` holds every number and ``interpolation.png`` the figure, in ``--out_dir``.
Initialisations, data order and RigL's choices are seeded (``--seed``); reruns were not
compared bit for bit.
"""

from __future__ import annotations

import json
import os
import sys
import time

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [SCRIPTS, os.path.dirname(SCRIPTS)]  # _cli, and rigl without installing it

import _cli  # noqa: E402 (after the path set-up above)

_cli.start()  # before the first import of rigl, which imports TensorFlow

from absl import flags, logging  # noqa: E402

from rigl.experiments.errors import UsageError  # noqa: E402

OUT_DIR = flags.DEFINE_string("out_dir", "results/interpolation", "Folder written to: "
                              "results.json and interpolation.png.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir holding MNIST (default: "
                               "TFDS's, TFDS_DATA_DIR honoured).")
SPARSITY = flags.DEFINE_float("sparsity", 0.98, "Sparsity of every layer.", lower_bound=0.0,
                              upper_bound=0.999)
EPOCHS = flags.DEFINE_integer("epochs", 10, "Epochs of every training run.", lower_bound=1)
BATCH = flags.DEFINE_integer("batch_size", 100, "Batch size.", lower_bound=1)
LEARNING_RATE = flags.DEFINE_float("learning_rate", 0.1, "Initial learning rate (cosine "
                                   "decay to 0).", lower_bound=0.0)
WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 1e-4, "λ of λ/2·Σw² on every kernel.",
                                  lower_bound=0.0)
PATH_POINTS = flags.DEFINE_integer("path_points", 21, "Points on the static-pruned line, "
                                   "both ends included.", lower_bound=2)
BARRIER_POINTS = flags.DEFINE_integer("barrier_points", 11, "Points on the line from a "
                                      "restart's end to each solution.", lower_bound=2)
RESTART_ALPHAS = flags.DEFINE_list("restart_alphas", ["0", "0.25", "0.5", "0.75", "1"],
                                   "Points of the line (0: static, 1: pruned) trained again.")
RESTART_METHODS = flags.DEFINE_list("restart_methods", ["static", "rigl"],
                                    "Methods trained from each restart point.")
SEED = flags.DEFINE_integer("seed", 0, "Seed of the pruned run's initialisation and of "
                            "the data order; the static run's is seed + 1.", lower_bound=0)

STEPS_PER_EXECUTION = 50  # divides 600 steps an epoch; below every update_freq (100)
UPDATE_FREQ = 100
METHODS = ("static", "rigl")


def parse_restarts() -> tuple[list[float], list[str]]:
    from rigl.experiments.interpolation import check_alpha

    alphas = []
    for text in RESTART_ALPHAS.value:
        try:
            alphas.append(check_alpha(float(text)))
        except ValueError as error:
            raise UsageError(f"--restart_alphas: {text!r} is not a number in [0, 1] "
                             "(0 is the static solution, 1 the pruned one).") from error
    for method in RESTART_METHODS.value:
        if method not in METHODS:
            raise UsageError(f"--restart_methods: unknown {method!r}; allowed: {METHODS}.")
    return alphas, list(RESTART_METHODS.value)


def load_mnist(data_dir):
    """MNIST's whole training and test sets as numpy arrays, through the project's pipeline.

    The training stream is a shuffle of every record (buffer = the whole set) before it
    repeats, so its first ``num_train_examples`` examples are each training example once.
    """
    import numpy as np

    from rigl.experiments.data import get_dataset

    spec = get_dataset("mnist", data_dir=data_dir)
    x, y = next(iter(spec.train_fn(None, spec.num_train_examples, 0)))
    test = list(spec.eval_fn(None, 10_000))
    x_test = np.concatenate([batch[0].numpy() for batch in test])
    y_test = np.concatenate([batch[1].numpy() for batch in test])
    return x.numpy(), y.numpy(), x_test, y_test


class Experiment:
    """The data, the settings and the training runs (module doc)."""

    def __init__(self, x, y, x_test, y_test):
        import tensorflow as tf

        self.x, self.y, self.x_test, self.y_test = x, y, x_test, y_test
        self.steps_per_epoch = len(y) // BATCH.value
        self.total_steps = self.steps_per_epoch * EPOCHS.value
        self.data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
            len(y), seed=SEED.value, reshuffle_each_iteration=True).batch(
            BATCH.value, drop_remainder=True).repeat()

    def build(self, seed: int):
        """LeNet-300-100 with masked layers, all masks full (the caller sets them)."""
        import keras

        import rigl
        from rigl.experiments.models import build_model

        keras.utils.set_random_seed(seed)
        model = build_model("lenet300_100", self.x.shape[1:], 10,
                            weight_decay=WEIGHT_DECAY.value)
        return rigl.sparsify(model, 0.0)

    def measure(self, model) -> dict:
        from rigl.experiments.interpolation import evaluate

        train = evaluate(model, self.x, self.y)
        return {"train_loss": train["loss"], "train_accuracy": train["accuracy"],
                "test_accuracy": evaluate(model, self.x_test, self.y_test)["accuracy"]}

    def train(self, model, updater, label: str) -> dict:
        """Trains ``model`` with ``updater`` for ``--epochs``; the training loss (whole
        training set) before and after every epoch, and the wall time."""
        import keras

        import rigl
        from rigl.experiments.interpolation import evaluate
        from rigl.experiments.optim import make_optimizer, make_schedule
        from rigl.losses import SparseCrossEntropy

        schedule = make_schedule(self.total_steps, self.steps_per_epoch, BATCH.value,
                                 base=LEARNING_RATE.value, schedule="cosine")
        model.compile(optimizer=make_optimizer(schedule, "sgd", momentum=0.9, nesterov=True),
                      loss=SparseCrossEntropy(), jit_compile=True,
                      steps_per_execution=STEPS_PER_EXECUTION)
        curve = [evaluate(model, self.x, self.y)["loss"]]
        record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: curve.append(
            evaluate(model, self.x, self.y)["loss"]))
        started = time.perf_counter()
        model.fit(self.data, epochs=EPOCHS.value, steps_per_epoch=self.steps_per_epoch, verbose=0,
                  callbacks=[rigl.SparseTraining(updater, data=self.data), record])
        seconds = time.perf_counter() - started
        result = {**self.measure(model), "sparsity": rigl.total_sparsity(model),
                  "curve": curve, "seconds": seconds}
        logging.info("%s: train loss %.4f, test accuracy %.4f, sparsity %.4f (%.0f s)", label,
                     result["train_loss"], result["test_accuracy"], result["sparsity"], seconds)
        return result

    def pruned(self):
        import rigl

        model = self.build(SEED.value)
        begin = self.total_steps // 4 // UPDATE_FREQ * UPDATE_FREQ
        end = self.total_steps * 6 // 10 // UPDATE_FREQ * UPDATE_FREQ
        updater = rigl.GradualPruning(SPARSITY.value, update_freq=UPDATE_FREQ,
                                      begin_step=begin, end_step=end)
        return model, {**self.train(model, updater, "pruned"), "prune_steps": [begin, end]}

    def static(self, masks):
        import numpy as np

        import rigl

        model = self.build(SEED.value + 1)
        for weight in rigl.masked_weights(model):
            weight.mask.assign(masks[weight.name])
            weight.masked_kernel.assign(np.where(masks[weight.name],
                                                 weight.masked_kernel.numpy(), 0))
        return model, self.train(model, rigl.Static(), "static")

    def updater(self, method: str):
        import rigl

        if method == "static":
            return rigl.Static()
        return rigl.RigL(update_freq=UPDATE_FREQ, drop_fraction=0.3, seed=SEED.value)


def distance(a, b) -> float:
    """Euclidean distance between two models' weights (masks left out)."""
    import keras
    import numpy as np

    total = 0.0
    for u, v in zip(a.weights, b.weights):
        if u.dtype == "bool":
            continue
        diff = keras.ops.convert_to_numpy(u) - keras.ops.convert_to_numpy(v)
        total += float(np.sum(diff.astype(np.float64) ** 2))
    return total ** 0.5


def run() -> dict:
    import rigl
    from rigl.experiments import interpolation as interp

    alphas, methods = parse_restarts()
    started = time.perf_counter()
    experiment = Experiment(*load_mnist(DATA_DIR.value))
    x, y = experiment.x, experiment.y
    pruned, pruned_result = experiment.pruned()
    static, static_result = experiment.static(rigl.get_masks(pruned))
    point = experiment.build(SEED.value + 2)  # written to by every interpolation

    path = []
    for alpha in interp.path_alphas(PATH_POINTS.value):
        interp.interpolate(point, static, pruned, alpha)
        path.append({"alpha": float(alpha), **experiment.measure(point)})
    rows = [{"alpha": r["alpha"], "loss": r["train_loss"]} for r in path]
    logging.info("static -> pruned: barrier %.4f", interp.barrier(rows))

    barrier_alphas = interp.path_alphas(BARRIER_POINTS.value)
    restarts = []
    for alpha in alphas:
        for method in methods:
            model = experiment.build(SEED.value + 3)
            interp.interpolate(model, static, pruned, alpha)
            result = experiment.train(model, experiment.updater(method),
                                      f"{method} from alpha={alpha:g}")
            ends = {}
            for name, solution in (("static", static), ("pruned", pruned)):
                line = interp.loss_along_path(point, model, solution, barrier_alphas, x, y,
                                              mask="union")
                ends[f"barrier_to_{name}"] = interp.barrier(line)
                ends[f"distance_to_{name}"] = distance(model, solution)
            restarts.append({"alpha": alpha, "method": method, **result, **ends})

    return {
        "command": "python scripts/interpolate.py " + " ".join(sys.argv[1:]),
        "settings": {
            "dataset": "mnist", "model": "lenet300_100", "sparsity": SPARSITY.value,
            "distribution": "uniform", "epochs": EPOCHS.value, "batch_size": BATCH.value,
            "steps": experiment.total_steps, "learning_rate": LEARNING_RATE.value,
            "weight_decay": WEIGHT_DECAY.value, "optimizer": "sgd, nesterov momentum 0.9, "
            "cosine", "rigl": {"update_freq": UPDATE_FREQ, "drop_fraction": 0.3},
            "seed": SEED.value, "loss": "cross-entropy on the 60,000 training examples, no "
            "weight decay", "path": "alpha 0 = static solution, 1 = pruned solution"},
        "solutions": {"pruned": pruned_result, "static": static_result},
        "distance_static_pruned": distance(static, pruned),
        "path": path,
        "barrier": interp.barrier(rows),
        "restarts": restarts,
        "wall_seconds": time.perf_counter() - started,
    }


def plot(results: dict, path: str) -> str:
    """The figure: the line, the restarts' training curves, where the restarts end."""
    from matplotlib import cm
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(16, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    line, curves, ends = figure.subplots(1, 3)
    static, pruned = (results["solutions"][k]["train_loss"] for k in ("static", "pruned"))
    alphas = [row["alpha"] for row in results["path"]]

    line.plot(alphas, [row["train_loss"] for row in results["path"]], "o-", color="black",
              markersize=3)
    line.set_yscale("log")
    line.set_xlabel("α  (0: static solution, 1: pruned solution)")
    line.set_ylabel("training loss (cross-entropy)")
    line.set_title(f"Straight line, barrier {results['barrier']:.3f}")
    accuracy = line.twinx()
    accuracy.plot(alphas, [row["test_accuracy"] for row in results["path"]], ":",
                  color="tab:blue")
    accuracy.set_ylabel("test accuracy (dotted)", color="tab:blue")

    restarts = results["restarts"]
    restart_alphas = sorted({r["alpha"] for r in restarts})
    colors = {a: cm.viridis(i / max(1, len(restart_alphas) - 1))
              for i, a in enumerate(restart_alphas)}
    styles = {"static": "-", "rigl": "--"}
    for r in restarts:
        curves.plot(range(len(r["curve"])), r["curve"], styles[r["method"]],
                    color=colors[r["alpha"]], label=f"{r['method']}, α={r['alpha']:g}")
    for value, name in ((static, "static solution"), (pruned, "pruned solution")):
        curves.axhline(value, color="grey", linestyle=":", linewidth=1)
        curves.annotate(name, (1, value), xycoords=("axes fraction", "data"), fontsize=7,
                        color="grey", ha="right", va="bottom")
    curves.set_yscale("log")
    curves.set_xlabel("epoch of the restarted run")
    curves.set_ylabel("training loss")
    curves.set_title("Restarts from the line: Static (solid), RigL (dashed)")
    curves.legend(fontsize=6, ncol=2)

    for method, marker in (("static", "o"), ("rigl", "s")):
        mine = [r for r in restarts if r["method"] == method]
        if not mine:
            continue
        xs = [r["alpha"] for r in mine]
        ends.plot(xs, [r["barrier_to_static"] for r in mine], marker + styles[method],
                  color="tab:red", label=f"{method}: barrier to static solution")
        ends.plot(xs, [r["barrier_to_pruned"] for r in mine], marker + styles[method],
                  color="tab:green", label=f"{method}: barrier to pruned solution")
    ends.axhline(0, color="grey", linewidth=0.5)
    ends.set_xlabel("α of the restart point")
    ends.set_ylabel("loss barrier from the restart's end")
    ends.set_title("Which basin the restarts end in")
    ends.legend(fontsize=7)
    figure.savefig(path, dpi=110)
    return path


def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}; give everything as --flags.")
    parse_restarts()  # before any training
    results = run()
    os.makedirs(OUT_DIR.value, exist_ok=True)
    with open(os.path.join(OUT_DIR.value, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    figure = plot(results, os.path.join(OUT_DIR.value, "interpolation.png"))
    logging.info("wrote %s and results.json (%.0f s)", figure, results["wall_seconds"])


if __name__ == "__main__":
    _cli.run(main)

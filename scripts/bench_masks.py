"""Times a training step with the masks held two ways, side by side, on the same network:

* ``twins``: ``rigl.sparsify``'s layer rewrite into masked twins (``MaskedDense``...);
* ``by_path``: a ``rigl.SparseModel`` over the plain model, one mask per kernel path, the
  masking constraint set on the kernel variable itself (what any other model gets);
* ``dense``: the plain model, no mask (the floor).

Both masked forms hold the same masks (drawn from the same seed and key) and apply them the
same way, a select after each optimizer step, so the step times should agree; this is the
measurement behind ``rigl.sparsify``'s choice (``docs/any_model.md``). Each step is one
``tf.function`` (forward, backward, SGD with momentum, constraints); the variants are timed
in interleaved rounds (each round runs every variant for ``--steps`` steps, in rotating order)
and the figure is the median time per step over ``--rounds`` rounds.

    python scripts/bench_masks.py                     # MLP 784-1024-1024-10 and a small CNN
    python scripts/bench_masks.py --sparsity=0.99 --batch=256
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import rigl  # noqa: E402
from rigl import kernels, path_masks  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_float("sparsity", 0.9, "Sparsity of every masked kernel (uniform).")
flags.DEFINE_integer("batch", 128, "Examples per step.")
flags.DEFINE_integer("steps", 20, "Steps per variant and round.")
flags.DEFINE_integer("rounds", 7, "Interleaved rounds; the figure is their median.")


def _mlp():
    inputs = keras.Input((784,))
    x = keras.layers.Dense(1024, activation="relu", name="fc1")(inputs)
    x = keras.layers.Dense(1024, activation="relu", name="fc2")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="mlp")


def _cnn():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu",
                            name="conv2")(x)
    x = keras.layers.Conv2D(128, 3, strides=2, padding="same", activation="relu",
                            name="conv3")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="cnn")


def variants(build, sparsity: float) -> dict:
    """The three models of one network, with the same initial weights and masks."""
    plain = build()
    twins = rigl.sparsify(plain, sparsity, seed=0)
    selected, _ = kernels.select(plain)
    by_path = path_masks.wrap(plain, selected, {k.path: sparsity for k in selected}, seed=0)
    # Same masks: each is drawn from (seed, key), and the keys differ (layer vs path) here,
    # so copy the twins' masks onto the paths for an exact like-for-like step.
    for target, source in zip(by_path.masked_weights(), rigl.masked_weights(twins)):
        target.mask.assign(source.mask)
        target.masked_kernel.assign(source.masked_kernel)
    return {"dense": plain, "twins": twins, "by_path": by_path}


def _step_fn(model):
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer.build(model.trainable_variables)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables),
                        model.trainable_variables)
        return loss
    return step


def time_steps(models: dict, shape: tuple, steps: int, rounds: int) -> dict:
    """Median ms per step of each model, over interleaved rounds."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((FLAGS.batch, *shape), np.float32))
    y = tf.constant(rng.integers(0, 10, FLAGS.batch))
    steps_of = {name: _step_fn(model) for name, model in models.items()}
    for step in steps_of.values():
        step(x, y).numpy()  # trace and warm up
    times = {name: [] for name in models}
    names = list(models)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            for _ in range(steps):
                loss = steps_of[name](x, y)
            loss.numpy()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: float(np.median(t) * 1e3) for name, t in times.items()}


def check_masks_held(models: dict) -> None:
    """After training, every masked weight is still zero in both masked forms."""
    for name in ("twins", "by_path"):
        for weight in rigl.masked_weights(models[name]):
            kernel = keras.ops.convert_to_numpy(weight.masked_kernel)
            mask = keras.ops.convert_to_numpy(weight.mask)
            if np.any(kernel[~mask.astype(bool)]):
                raise AssertionError(f"{name}: {weight.name} has nonzero masked weights")


def main(argv):
    del argv
    print(f"sparsity {FLAGS.sparsity}, batch {FLAGS.batch}, {FLAGS.steps} steps x "
          f"{FLAGS.rounds} interleaved rounds, median ms per training step")
    print("| network | dense | twins | by path | by path / twins |")
    print("|---|---|---|---|---|")
    for build, shape in ((_mlp, (784,)), (_cnn, (32, 32, 3))):
        models = variants(build, FLAGS.sparsity)
        ms = time_steps(models, shape, FLAGS.steps, FLAGS.rounds)
        check_masks_held(models)
        print(f"| {models['dense'].name} | {ms['dense']:.2f} | {ms['twins']:.2f} | "
              f"{ms['by_path']:.2f} | {ms['by_path'] / ms['twins']:.3f} |", flush=True)


if __name__ == "__main__":
    app.run(main)

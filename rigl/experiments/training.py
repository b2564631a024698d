"""The one training loop of every experiment, configured with gin.

A custom loop (``strategy.run`` inside ``tf.function``, datasets from
``distribute_datasets_from_function``, ``tf.nn.compute_average_loss``, the Keras optimizer's
``apply_gradients``) rather than ``model.fit``, because Keras 3's ``fit`` fails under
``MultiWorkerMirroredStrategy`` (keras-team/keras#20585). Mask updates go through the same
``rigl.SparseTraining`` callback ``model.fit`` users use, driven by a
``keras.callbacks.CallbackList``, so both paths share one mechanism.

Gin names (bind them in configs or with ``--gin_bindings``):

* ``training.*``: dataset, model, method, sparsity, distribution, custom_sparsity,
  dense_layers, erk_power_scale, train_steps / epochs, multiplier, batch_size, eval_batch_size,
  eval_every_steps, checkpoint_every_steps, log_every_steps, seed, strategy, deterministic;
* ``updater.*``: update_freq, begin_step, end_step, drop_fraction, drop_fraction_decay,
  decay_power, grow_init, initial_sparsity (gradual pruning);
* ``optimizer.*``, ``learning_rate.*``, ``dataset.*`` (data_dir, download, image_size,
  seq_len, wikitext_dir), ``model.*`` (width, weight_decay), ``strategy.*`` (devices,
  logical_cpus, tpu_address).
"""

from __future__ import annotations

import json
import os
import sys
import time

import gin
import keras
import numpy as np
import tensorflow as tf
from absl import logging

import rigl
from rigl.experiments import data, models, optim, strategies

METHODS = ("dense", "static", "snip", "set", "snfs", "rigl", "prune", "small_dense")
DENSE_TO_SPARSE = ("snip", "prune")

get_dataset = gin.external_configurable(data.get_dataset, "dataset",
                                        denylist=["name", "seed", "mock"])
build_model = gin.external_configurable(models.build_model, "model",
                                        denylist=["name", "input_shape", "num_classes"])
make_optimizer = gin.external_configurable(optim.make_optimizer, "optimizer",
                                           denylist=["learning_rate"])
make_schedule = gin.external_configurable(
    optim.make_schedule, "learning_rate",
    denylist=["total_steps", "steps_per_epoch", "global_batch_size", "multiplier"])
make_strategy = gin.external_configurable(strategies.make_strategy, "strategy",
                                          denylist=["name"])


@gin.configurable("updater")
def make_updater(method, sparsity, distribution, custom_sparsity, erk_power_scale, seed,
                 multiplier=1.0, update_freq=100, begin_step=0, end_step=None,
                 drop_fraction=0.3, drop_fraction_decay="cosine", decay_power=1.0,
                 grow_init="zeros", initial_sparsity=0.0):
    """The updater of ``method`` (None without masks); its step anchors scale with
    ``multiplier``. Every ``updater.*`` binding goes to ``rigl.get_updater``, which keeps
    those the method takes."""
    if rigl.methods.get_method(method, "training.method").updater is None:
        return None
    scale = lambda s: None if s is None else round(s * multiplier)  # noqa: E731
    return rigl.get_updater(
        method, ignore_unused=True, sparsity=sparsity, distribution=distribution,
        custom_sparsity=custom_sparsity, erk_power_scale=erk_power_scale,
        initial_sparsity=initial_sparsity, update_freq=update_freq,
        begin_step=scale(begin_step), end_step=scale(end_step), drop_fraction=drop_fraction,
        drop_fraction_decay=drop_fraction_decay, decay_power=decay_power,
        grow_init=grow_init, seed=seed)


def _loss_terms(task: str, labels, logits, label_smoothing: float = 0.0):
    """Per-example loss (nats; mean over positions for language models) and correct count."""
    xent = optim.cross_entropy(labels, logits, label_smoothing)
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
    if task == "language_model":
        return tf.reduce_mean(xent, axis=-1), tf.reduce_sum(correct)
    return xent, tf.reduce_sum(correct)


def _output_dir(workdir: str, strategy) -> str:
    if strategies.is_chief(strategy):
        return workdir
    # Non-chief workers must take part in checkpointing but must not overwrite the chief.
    return os.path.join(workdir, "workers", strategies.task_name(strategy))


def _write_json(path: str, payload: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


@gin.configurable("training", denylist=["workdir", "dry_run"])
def train(workdir: str | None, dataset: str = "mnist", model: str = "lenet300_100",
          method: str = "rigl", sparsity: float = 0.9, distribution: str = "uniform",
          custom_sparsity=None, dense_layers=(), erk_power_scale: float = 1.0,
          train_steps: int | None = None, epochs: float | None = None,
          multiplier: float = 1.0, batch_size: int = 100, eval_batch_size: int = 1000,
          eval_every_steps: int | None = None, checkpoint_every_steps: int = 1000,
          log_every_steps: int = 100, seed: int = 0, strategy: str = "default",
          label_smoothing: float = 0.0, mask_snapshot_steps=(), deterministic: bool = False,
          smoke: bool = False, dry_run: bool = False,
          verbose: int | None = None) -> dict:
    """Trains one experiment in ``workdir`` and returns its results (also ``results.json``).

    Started again with the same workdir, it resumes from the last checkpoint.

    Args:
        workdir: output folder (checkpoints, logs, model, results).
        dataset, model: names from ``rigl.experiments.data.DATASETS`` / ``models.MODELS``.
        method: one of ``METHODS``: dense, static, snip, set, snfs, rigl, prune, and
            small_dense (a dense model narrowed to the sparse model's parameter count).
        sparsity, distribution, custom_sparsity, dense_layers, erk_power_scale: the sparsity
            (see ``rigl.sparsify``); a dense run rejects a custom map or dense layers.
        train_steps / epochs: training length (exactly one), before ``multiplier``.
        multiplier: the paper's "Mx" runs: steps, LR anchors and update steps scale by it.
        batch_size, eval_batch_size: global batch sizes.
        eval_every_steps: evaluate on the test set (and the validation examples, if the
            dataset holds some out) every so many steps and at the end; results.json
            reports the final and the best scores.
        checkpoint_every_steps, log_every_steps: checkpoint and summary periods.
        seed: seed of weights, masks, data order and augmentation.
        strategy: "default", "mirrored", "multi_worker" or "tpu" (options: ``strategy.*``).
        label_smoothing: label smoothing of the training loss (evaluation loss has none).
        mask_snapshot_steps: steps after which every mask is saved to
            ``mask_snapshots/step_<N>.npz`` (0: the initial masks).
        deterministic: enable TF op determinism (bit-identical reruns on CPU).
        smoke: train ``SMOKE_STEPS`` steps on ``tfds.testing.mock_data`` with small batches
            (and 64×64 ImageNet images) to check a config end to end without its data.
        dry_run: build model, masks and schedule, print them (``describe``) and return
            without training or writing anything.
        verbose: 1 progress bar, 2 one line per log period, 0 silent; default: 1 on a
            terminal, else 2.
    """
    args = dict(locals())
    if method not in METHODS:
        raise ValueError(f"training.method: unknown {method!r}; allowed: {METHODS}.")
    if (train_steps is None) == (epochs is None):
        raise ValueError("training.train_steps / training.epochs: set exactly one of them.")
    if method in ("dense", "small_dense") and (custom_sparsity or dense_layers):
        raise ValueError("training.custom_sparsity / dense_layers: a dense run has no masks.")
    if workdir is None and not dry_run:
        raise ValueError("workdir: required unless dry_run.")
    if not smoke:
        return _train(**args)
    import tensorflow_datasets as tfds

    args.update(batch_size=SMOKE_BATCH, eval_batch_size=SMOKE_BATCH, train_steps=SMOKE_STEPS,
                epochs=None, multiplier=1.0, checkpoint_every_steps=SMOKE_STEPS,
                log_every_steps=1, eval_every_steps=None)
    with tfds.testing.mock_data(num_examples=SMOKE_EXAMPLES):
        return _train(**args)


SMOKE_STEPS, SMOKE_BATCH, SMOKE_EXAMPLES, SMOKE_IMAGE_SIZE = 3, 8, 16, 64


def _train(workdir, dataset, model, method, sparsity, distribution, custom_sparsity,
           dense_layers, erk_power_scale, train_steps, epochs, multiplier, batch_size,
           eval_batch_size, eval_every_steps, checkpoint_every_steps, log_every_steps, seed,
           strategy, label_smoothing, mask_snapshot_steps, deterministic, smoke, dry_run,
           verbose) -> dict:
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    dist = make_strategy(strategy)  # first: may configure logical devices
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    options = {"image_size": SMOKE_IMAGE_SIZE} if smoke and dataset == "imagenet2012" else {}
    # A dry run reads no data: the mock path only needs the (known) training-set size.
    spec = get_dataset(dataset, seed=seed, mock=smoke or dry_run, **options)
    steps_per_epoch = max(1, spec.num_train_examples // batch_size)
    base_steps = train_steps if train_steps is not None else epochs * steps_per_epoch
    total_steps = int(round(base_steps * multiplier))

    with dist.scope():
        if method == "small_dense":
            width = small_dense_width(model, spec.input_shape, spec.num_classes, sparsity,
                                      distribution, custom_sparsity, erk_power_scale)
            logging.info("small_dense: width multiplier %.4f", width)
            net = build_model(model, spec.input_shape, spec.num_classes, width=width)
            dense_flops = rigl.flops.dense_inference_flops(
                build_model(model, spec.input_shape, spec.num_classes))
        else:
            net = build_model(model, spec.input_shape, spec.num_classes)
            dense_flops = rigl.flops.dense_inference_flops(net)
        if method not in ("dense", "small_dense"):
            net = rigl.sparsify(
                net, 0.0 if method in DENSE_TO_SPARSE else sparsity, distribution,
                custom_sparsity, dense_layers, erk_power_scale, seed)
        # Epoch anchors use the exact epoch length: 30 epochs of ImageNet at batch 4096 are
        # step 9,383, not 30 × 312.
        schedule = make_schedule(total_steps, spec.num_train_examples / batch_size, batch_size,
                                 multiplier)
        opt = make_optimizer(schedule)
        # compile() only attaches the optimizer and the loss RigL/SNIP take gradients of.
        net.compile(optimizer=opt,
                    loss=optim.SparseCrossEntropy(label_smoothing))
        opt.build(net.trainable_variables)
        elapsed = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="train_seconds")
        skipped = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_mask_updates")
    # Bindings scoped by the method name (e.g. `prune/updater.update_freq = 1000`) apply
    # only to that method: configs set the pruning schedule beside the RigL one this way.
    with gin.config_scope(method):
        updater = make_updater(method, sparsity, distribution, custom_sparsity,
                               erk_power_scale, seed, multiplier)
    if dry_run:
        if updater is not None:  # SparseTraining binds it when training
            updater.bind(net, opt, total_steps=total_steps)
        print(describe(net, schedule, updater, total_steps, steps_per_epoch))
        return {}
    out_dir = _output_dir(workdir, dist)
    os.makedirs(out_dir, exist_ok=True)
    if strategies.is_chief(dist):
        with open(os.path.join(workdir, "operative_config.gin"), "w") as f:
            f.write(gin.operative_config_str())

    checkpoint = tf.train.Checkpoint(model=net, optimizer=opt, train_seconds=elapsed,
                                     skipped_mask_updates=skipped)
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(out_dir, "checkpoints"),
                                         max_to_keep=2)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("Resumed from %s", manager.latest_checkpoint)
        if updater is not None:
            updater.skipped_updates = int(skipped.numpy())
    start_step = int(opt.iterations.numpy())

    train_data = dist.distribute_datasets_from_function(
        lambda ctx: spec.train_fn(ctx, ctx.get_per_replica_batch_size(batch_size), start_step))
    batches = iter(train_data)
    current = {}
    callbacks = []
    if updater is not None:
        callbacks.append(rigl.SparseTraining(
            updater, data=lambda: current["batch"], total_steps=total_steps,
            log_dir=os.path.join(out_dir, "logs", "train")))
    callback_list = keras.callbacks.CallbackList(callbacks, model=net)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            logits = net(x, training=True)
            per_example, correct = _loss_terms(spec.task, y, logits, label_smoothing)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=batch_size)
            if net.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(net.losses))
        grads = tape.gradient(loss, net.trainable_variables)
        opt.apply_gradients(zip(grads, net.trainable_variables))
        return loss, correct

    @tf.function
    def train_step(batch):
        loss, correct = dist.run(replica_step, args=batch)
        return (dist.reduce("SUM", loss, axis=None), dist.reduce("SUM", correct, axis=None))

    evaluate = _make_evaluator(spec, net, dist, eval_batch_size)
    writer = tf.summary.create_file_writer(os.path.join(out_dir, "logs", "train"))
    eval_writer = tf.summary.create_file_writer(os.path.join(out_dir, "logs", "eval"))
    progbar = keras.utils.Progbar(total_steps, verbose=verbose, unit_name="step")
    examples_per_step = batch_size * (spec.input_shape[0] if spec.task == "language_model"
                                      else 1)

    flops_log = _FlopsLog(os.path.join(out_dir, "flops_log.json"), net, start_step,
                          tracks_updates=method in DENSE_TO_SPARSE)
    eval_log = _StepLog(os.path.join(out_dir, "eval_log.json"), start_step)
    snapshot_steps = set(mask_snapshot_steps)
    if start_step == 0 and 0 in snapshot_steps:
        _save_masks(out_dir, 0, net)
    callback_list.on_train_begin()
    step, started = start_step, time.time()
    base_seconds = float(elapsed.numpy())
    while step < total_steps:
        current["batch"] = next(batches)
        callback_list.on_train_batch_begin(step)
        loss, correct = train_step(current["batch"])
        step += 1
        if step % log_every_steps == 0 or step == total_steps:
            loss, accuracy = float(loss), float(correct) / examples_per_step
            lr = float(opt.learning_rate)
            with writer.as_default(step=step):
                tf.summary.scalar("loss", loss)
                tf.summary.scalar("accuracy", accuracy)
                tf.summary.scalar("learning_rate", lr)
            progbar.update(step, [("loss", loss), ("accuracy", accuracy), ("lr", lr)])
        callback_list.on_train_batch_end(step - 1)
        flops_log.after_step(step, callbacks[0].history if callbacks else ())
        if step % checkpoint_every_steps == 0 or step == total_steps:
            elapsed.assign(base_seconds + time.time() - started)
            skipped.assign(updater.skipped_updates if updater else 0)
            manager.save(checkpoint_number=step)
            if flops_log.tracks_updates:
                flops_log.save()
            eval_log.save()
        if step in snapshot_steps:
            _save_masks(out_dir, step, net)
        if eval_every_steps and step % eval_every_steps == 0 and step < total_steps:
            eval_log.add(step, evaluate())
            _write_eval(eval_writer, step, eval_log.entries[-1][1])
    callback_list.on_train_end()
    elapsed.assign(base_seconds + time.time() - started)
    metrics = evaluate()
    _write_eval(eval_writer, step, metrics)
    if not eval_log.entries or eval_log.entries[-1][0] != step:
        eval_log.add(step, metrics)
    eval_log.save()

    net.save(os.path.join(out_dir, "model.keras"))
    masked = rigl.masked_layers(net)
    results = {
        "dataset": dataset, "model": model, "method": method,
        "distribution": distribution if method not in ("dense", "small_dense") else None,
        "sparsity": sparsity if method not in ("dense", "small_dense") else 0.0,
        "measured_sparsity": rigl.total_sparsity(net) if masked else 0.0,
        "layer_sparsity": rigl.measured_sparsities(net),
        "mlp_units": mlp_units(net),
        "steps": step, "multiplier": multiplier, "batch_size": batch_size,
        "train_seconds": float(elapsed.numpy()), "seed": seed, "strategy": strategy,
        "num_replicas": dist.num_replicas_in_sync,
        "skipped_mask_updates": updater.skipped_updates if updater else 0,
        "replica_mask_mismatches": rigl.masking.replica_mismatches(net),
        "gin_config": gin.operative_config_str(),
        **_flops_results(net, method, flops_log, step, multiplier, updater, dense_flops),
        **metrics,
        **_best_metrics(eval_log.entries),
    }
    if strategies.is_chief(dist):
        _write_json(os.path.join(workdir, "results.json"), results)
        metric = ("test_accuracy", "test accuracy") if "test_accuracy" in metrics else (
            "test_bits_per_char", "test bits/char")
        print(f"{method} {model} on {dataset}: {metric[1]} {metrics[metric[0]]:.4f}, "
              f"sparsity {results['measured_sparsity']:.4f} (target {results['sparsity']}), "
              f"{step} steps, {results['train_seconds']:.1f}s train -> {workdir}")
    return results


class _StepLog:
    """(step, value) entries persisted as JSON beside the checkpoints; a resumed run keeps
    those up to the step it resumes from."""

    def __init__(self, path, start_step):
        self.path, self.entries = path, []
        if start_step and os.path.exists(path):
            with open(path) as f:
                self.entries = [tuple(e) for e in json.load(f) if e[0] <= start_step]

    def add(self, step, value):
        self.entries.append((step, value))

    def save(self):
        _write_json(self.path, self.entries)




class _FlopsLog(_StepLog):
    """Inference FLOPs of the masks in use, from which step, over a run (resumes with it).

    Drop-and-grow keeps every layer's nonzero count, hence its FLOPs; only dense-to-sparse
    methods (pruning, SNIP) change them, so only their updates are measured again.
    """

    def __init__(self, path, net, start_step, tracks_updates):
        super().__init__(path, start_step if tracks_updates else 0)
        self.net, self.tracks_updates = net, tracks_updates
        if not self.entries:
            self.add(start_step, self.measure())
        self._seen = 0

    def measure(self):
        return rigl.flops.inference_flops(self.net) if rigl.masked_layers(self.net) else (
            rigl.flops.dense_inference_flops(self.net))

    def after_step(self, step, history):
        if self.tracks_updates and len(history) > self._seen:
            self._seen = len(history)
            # The update ran before this step's gradient step: its masks served from step-1.
            self.add(step - 1, self.measure())

    def average(self, end_step):
        """Step-weighted mean of the inference FLOPs from the first entry to ``end_step``."""
        entries = sorted(self.entries, key=lambda entry: entry[0])  # stable: same-step order
        total = sum(max(0, (entries[i + 1][0] if i + 1 < len(entries) else end_step) - s) * f
                    for i, (s, f) in enumerate(entries))
        span = end_step - entries[0][0]
        return total / span if span > 0 else entries[-1][1]


def mlp_units(net) -> list[int] | None:
    """For a multilayer perceptron (every layer with a kernel is a Dense layer and each
    kernel's inputs are the previous one's outputs), the units that keep at least one
    connection, the paper's "final architecture": [input features with an outgoing
    connection, hidden units with both an incoming and an outgoing connection, ..., output
    units with an incoming connection]. Masked layers count their mask, dense ones every
    weight. None for any other model."""
    kernels = []
    for layer in rigl.masking.walk_layers(net):
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        if not isinstance(layer, keras.layers.Dense) or len(kernel.shape) != 2:
            return None
        mask = getattr(layer, "mask", None)
        kernels.append(keras.ops.convert_to_numpy(mask) != 0 if mask is not None
                       else np.ones(kernel.shape, bool))
    if not kernels or any(a.shape[1] != b.shape[0] for a, b in zip(kernels, kernels[1:])):
        return None
    units = [int(kernels[0].any(axis=1).sum())]
    for incoming, outgoing in zip(kernels, kernels[1:]):
        units.append(int((incoming.any(axis=0) & outgoing.any(axis=1)).sum()))
    units.append(int(kernels[-1].any(axis=0).sum()))
    return units


def _flops_results(net, method, flops_log, steps, multiplier, updater,
                   dense_flops) -> dict:
    """The paper's FLOPs columns for this run (see rigl.flops for the counting rules).

    ``dense_flops`` is the dense forward FLOPs the ratios are relative to: the model's own,
    or for Small-Dense the full-width model's.
    """
    inference = flops_log.measure()
    dense = dense_flops
    average = flops_log.average(steps)
    per_step_method = {"prune": "static"}.get(method, method)  # prune: 3·mean f(s_t)
    kwargs = {"update_freq": updater.schedule.update_freq} if method == "rigl" else {}
    per_step = rigl.flops.train_flops_per_step(per_step_method, dense, average, **kwargs)
    return {"inference_flops": inference, "dense_inference_flops": dense,
            "inference_flops_ratio": inference / dense,
            "train_flops_ratio": per_step * multiplier / (3.0 * dense),
            "size_mb": rigl.flops.model_size_mb(net)}


def _make_evaluator(spec, net, dist, eval_batch_size):
    """``evaluate()`` -> test metrics (and validation metrics when the dataset holds some
    out), summed over replicas: ``test_accuracy`` or ``test_bits_per_char``, ``test_loss``."""
    def replica_eval(x, y):
        logits = net(x, training=False)
        per_example, correct = _loss_terms(spec.task, y, logits)
        count = tf.cast(tf.size(y), tf.float32)
        return tf.reduce_sum(per_example) * (count / tf.cast(tf.shape(y)[0], tf.float32)), \
            correct, count

    @tf.function
    def eval_step(batch):
        return [dist.reduce("SUM", v, axis=None) for v in dist.run(replica_eval, args=batch)]

    def metrics(prefix, dataset_fn) -> dict:
        batches = dist.distribute_datasets_from_function(
            lambda ctx: dataset_fn(ctx, ctx.get_per_replica_batch_size(eval_batch_size)))
        totals = np.zeros(3)
        for batch in batches:
            totals += [float(v) for v in eval_step(batch)]
        loss_sum, correct, count = totals
        if spec.task == "language_model":
            return {f"{prefix}_bits_per_char": loss_sum / count / np.log(2.0),
                    f"{prefix}_loss": loss_sum / count}
        return {f"{prefix}_accuracy": correct / count, f"{prefix}_loss": loss_sum / count}

    def evaluate() -> dict:
        results = metrics("test", spec.eval_fn)
        if spec.validation_fn is not None:
            results.update(metrics("validation", spec.validation_fn))
        return results

    return evaluate


def _best_metrics(history) -> dict:
    """Best test score over the evaluations of a run, and the test score where validation
    was best (the original MNIST code's model selection)."""
    key, better = (("test_accuracy", max) if "test_accuracy" in history[-1][1]
                   else ("test_bits_per_char", min))
    step, best = better(history, key=lambda entry: entry[1][key])
    results = {f"best_{key}": best[key], "best_step": step}
    validation_key = key.replace("test", "validation")
    if validation_key in history[-1][1]:
        _, at_best = better(history, key=lambda entry: entry[1][validation_key])
        results[f"{key}_at_best_validation"] = at_best[key]
    return results


def _save_masks(out_dir, step, net):
    """Masks at ``step`` (after that many optimizer steps) as ``mask_snapshots/step_N.npz``."""
    folder = os.path.join(out_dir, "mask_snapshots")
    os.makedirs(folder, exist_ok=True)
    np.savez_compressed(os.path.join(folder, f"step_{step}.npz"), **rigl.get_masks(net))


def _write_eval(writer, step, metrics):
    with writer.as_default(step=step):
        for name, value in metrics.items():
            tf.summary.scalar(name, value)
    writer.flush()


def small_dense_width(model: str, input_shape, num_classes: int, sparsity: float,
                      distribution: str, custom_sparsity=None,
                      erk_power_scale: float = 1.0) -> float:
    """Width multiplier of a dense ``model`` with as many parameters as the sparse one.

    The target is the parameter count of ``model`` (width 1) sparsified at ``sparsity`` with
    ``distribution``: every weight minus the masked-out ones (masks themselves not counted).
    """
    reference = build_model(model, input_shape, num_classes, width=1.0)
    sparse = rigl.sparsify(reference, sparsity, distribution, custom_sparsity,
                           erk_power_scale=erk_power_scale)
    masks = rigl.get_masks(sparse).values()
    target = reference.count_params() - sum(int((m == 0).sum()) for m in masks)
    return rigl.flops.solve_width(
        lambda width: build_model(model, input_shape, num_classes, width=width).count_params(),
        target, low=0.005)  # LeNet-300-100 matched to 98% is ~2% wide (fc1 of ~7 units)


def describe(net, schedule, updater, total_steps: int, steps_per_epoch: int) -> str:
    """What a run would train: per-layer sparsity table, totals, schedule (dry runs)."""
    targets = getattr(updater, "target_sparsities", None)
    masks = rigl.get_masks(net)
    rows, total, zeros = [], 0, 0
    maskable = [layer for layer in rigl.masking.walk_layers(net)
                if type(layer) in rigl.layers.MASKED_TWINS or rigl.layers.is_masked(layer)]
    for layer in maskable:
        for name, shape in rigl.layers.kernel_shapes(layer).items():
            size = int(np.prod(shape))
            if name in masks:
                layer_zeros = int((masks[name] == 0).sum())
                if targets is not None:  # dense-to-sparse: show where it ends
                    layer_zeros = rigl.distributions.num_zeros(targets[name], size)
            else:
                layer_zeros = 0
            total, zeros = total + size, zeros + layer_zeros
            rows.append(f"| {name} | {tuple(shape)} | {layer_zeros / size:.4f} | "
                        f"{size - layer_zeros} |")
    lines = [f"model {net.name}: {net.count_params():,} parameters (masks included)", "",
             "| layer | kernel shape | sparsity | nonzeros |", "| --- | --- | --- | --- |",
             *rows, "",
             f"maskable kernels: {total:,} weights, {total - zeros:,} nonzero, "
             f"sparsity {zeros / max(total, 1):.4f}"
             + (" (targets of the dense-to-sparse method)" if targets is not None else ""),
             "", f"steps: {total_steps:,} ({total_steps / steps_per_epoch:.2f} epochs of "
             f"{steps_per_epoch:,} steps)"]
    anchors = sorted({0, total_steps - 1, *[b for b in getattr(schedule, "boundaries", [])
                                           if b < total_steps],
                      *([schedule.warmup_steps] if getattr(schedule, "warmup_steps", 0)
                        else [])})
    lines.append("learning rate: " + ", ".join(
        f"step {a:,}: {float(schedule(a)):.5g}" for a in anchors))
    if updater is not None and updater.changes_masks:
        steps = [t for t in range(updater.schedule.begin_step,
                                  min(updater.schedule.end(), total_steps) + 1)
                 if updater.is_update_step(t)]
        shown = ", ".join(f"{t:,}" for t in steps[:3]) + (", ..." if len(steps) > 3 else "")
        lines.append(f"mask updates ({type(updater).__name__}): {len(steps)} at steps "
                     f"{shown} (every {updater.schedule.update_freq}, from "
                     f"{updater.schedule.begin_step:,} to T_end = {updater.schedule.end():,})")
        if steps and updater.current_drop_fraction(steps[0]):
            lines.append(f"drop fraction: {updater.current_drop_fraction(steps[0]):.3f} at "
                         f"step {steps[0]:,}, {updater.drop_fraction.decay} decay")
    else:
        lines.append("mask updates: none")
    return "\n".join(lines)

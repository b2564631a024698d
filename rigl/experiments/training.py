"""The one training loop of every experiment: build, train, report, over one ``TrainConfig``.

``train`` (gin name ``training``; every gin name is listed in ``rigl.experiments.config``)
validates its arguments into a ``TrainConfig`` once, then ``run`` goes through the phases:

1. build (``build_experiment``): strategy, seeds, data, the model (narrowed for Small-Dense,
   then masked), learning-rate schedule, optimizer and updater, as an ``Experiment``. A dry
   run prints it (``reporting.describe``) and stops here, having written nothing.
2. train: the workdir is prepared (``prepare_workdir``), the last checkpoint restored
   (``TrainCheckpoint``), and ``train_loop`` runs the steps, checkpointing and evaluating
   on schedule.
3. report: the final evaluation, ``model.keras`` and ``results.json``
   (``reporting.RunReport``, which also writes every log during the loop).

The loop is a custom one (``strategy.run`` inside ``tf.function``, datasets from
``distribute_datasets_from_function``, ``tf.nn.compute_average_loss``, the Keras optimizer's
``apply_gradients``) rather than ``model.fit``, because Keras 3's ``fit`` fails under
``MultiWorkerMirroredStrategy`` (keras-team/keras#20585). Mask updates go through the same
``rigl.SparseTraining`` callback ``model.fit`` users use, driven by a
``keras.callbacks.CallbackList`` and handed each step's batch with ``set_batch``, so both
paths share one mechanism. Method traits (masked, dense-to-sparse, FLOPs rule) come from the
registry, ``rigl.methods``.

Where things plug in: something built before training is a step of ``build_experiment`` (and
a field of ``Experiment``); something the workdir must hold or check before training starts
goes in ``prepare_workdir``; how the training state is saved and found again is
``TrainCheckpoint``; what happens at every step is ``train_loop``; a new output (log, file,
column of ``results.json``) belongs to ``rigl.experiments.reporting``.
"""

from __future__ import annotations

import dataclasses
import os
import time

import gin
import keras
import numpy as np
import tensorflow as tf
from absl import logging

import rigl
from rigl.experiments import optim, reporting, strategies
from rigl.experiments.config import (
    SMOKE_EXAMPLES,
    TrainConfig,
    build_model,
    get_dataset,
    make_optimizer,
    make_schedule,
    make_strategy,
    make_updater,
)


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

    Started again with the same workdir, it resumes from the last checkpoint. Every argument
    is the ``TrainConfig`` field of the same name (documented there); the defaults here are
    those of the gin bindings ``training.<name>``.

    Raises:
        ValueError: naming the ``training.*`` binding that is invalid (see ``TrainConfig``).
    """
    # Every parameter is a TrainConfig field: the config is built from exactly these.
    return run(TrainConfig(**locals()))


def run(config: TrainConfig) -> dict:
    """Runs the experiment ``config`` describes (build, train, report); returns its results,
    or ``{}`` for a dry run. A smoke run trains its smoke variant on mock data."""
    if not config.smoke:
        return _run(config)
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=SMOKE_EXAMPLES):
        return _run(config.smoke_variant())


def _run(config: TrainConfig) -> dict:
    # Phase 1: build.
    experiment = build_experiment(config)
    if config.dry_run:
        if experiment.updater is not None:  # SparseTraining binds it when training
            experiment.updater.bind(experiment.model, experiment.optimizer,
                                    total_steps=experiment.total_steps)
        print(reporting.describe(experiment.model, experiment.schedule, experiment.updater,
                                 experiment.total_steps, experiment.steps_per_epoch))
        return {}

    # Phase 2: train.
    out_dir = prepare_workdir(config, experiment.strategy)
    checkpoint = TrainCheckpoint(experiment, out_dir)
    start_step = checkpoint.restore()
    report = reporting.RunReport(
        config, out_dir, experiment.model, experiment.optimizer, start_step=start_step,
        total_steps=experiment.total_steps, examples_per_step=experiment.examples_per_step)
    evaluate = make_evaluator(experiment)
    steps = train_loop(experiment, checkpoint, report, evaluate, start_step)

    # Phase 3: report.
    metrics = evaluate()
    report.evaluated(steps, metrics)
    return report.finish(
        steps=steps, metrics=metrics, dense_flops=experiment.dense_flops,
        train_seconds=float(experiment.train_seconds.numpy()), updater=experiment.updater,
        num_replicas=experiment.strategy.num_replicas_in_sync,
        chief=strategies.is_chief(experiment.strategy), workdir=config.workdir)


# ------------------------------------------------------------------------ phase 1: build
@dataclasses.dataclass
class Experiment:
    """What the build phase makes of a ``TrainConfig``: everything a run trains with.

    Attributes:
        config: the run's settings.
        strategy: the ``tf.distribute`` strategy the model and optimizer live under.
        data: the dataset's ``rigl.experiments.data.DataSpec``.
        steps_per_epoch, total_steps: whole batches per epoch; the run's length.
        model: the Keras model (narrowed for Small-Dense; masked for masked methods),
            compiled with the optimizer and the loss RigL/SNIP take gradients of.
        dense_flops: the dense forward FLOPs the FLOPs ratios are relative to: the model's
            own, or for Small-Dense the full-width model's.
        schedule, optimizer: the learning-rate schedule and the (built) optimizer.
        updater: the method's ``rigl.Updater``, or None for a method without masks.
        train_seconds, skipped_updates: training time and skipped mask updates so far,
            as variables saved in the checkpoints (a resumed run continues both).
    """

    config: TrainConfig
    strategy: tf.distribute.Strategy
    data: object
    steps_per_epoch: int
    total_steps: int
    model: keras.Model
    dense_flops: float
    schedule: object
    optimizer: keras.optimizers.Optimizer
    updater: rigl.Updater | None
    train_seconds: tf.Variable
    skipped_updates: tf.Variable

    @property
    def examples_per_step(self) -> int:
        """Predictions per step: the global batch, times the positions for a language
        model (the denominator of the training accuracy)."""
        positions = self.data.input_shape[0] if self.data.task == "language_model" else 1
        return self.config.batch_size * positions


def build_experiment(config: TrainConfig) -> Experiment:
    """Builds everything ``config`` trains with; reads no training data and writes nothing.

    Seeds are set before anything random is built, so the same config gives the same
    weights, masks and data order.
    """
    strategy = make_strategy(config.strategy)  # first: may configure logical devices
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    spec = get_dataset(config.dataset, seed=config.seed, mock=config.mock_data,
                       **config.dataset_options)
    steps_per_epoch, total_steps = config.steps(spec.num_train_examples)
    with strategy.scope():
        net, dense_flops = build_network(config, spec.input_shape, spec.num_classes)
        # Epoch anchors use the exact epoch length: 30 epochs of ImageNet at batch 4096 are
        # step 9,383, not 30 × 312.
        schedule = make_schedule(total_steps, spec.num_train_examples / config.batch_size,
                                 config.batch_size, config.multiplier)
        optimizer = make_optimizer(schedule)
        # compile() only attaches the optimizer and the loss RigL/SNIP take gradients of.
        net.compile(optimizer=optimizer, loss=optim.SparseCrossEntropy(config.label_smoothing))
        optimizer.build(net.trainable_variables)
        train_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False,
                                    name="train_seconds")
        skipped = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_mask_updates")
    # Bindings scoped by the method name (e.g. `prune/updater.update_freq = 1000`) apply
    # only to that method: configs set the pruning schedule beside the RigL one this way.
    with gin.config_scope(config.method):
        updater = make_updater(config.method, config.sparsity, config.distribution,
                               config.custom_sparsity, config.erk_power_scale, config.seed,
                               config.multiplier)
    return Experiment(config=config, strategy=strategy, data=spec,
                      steps_per_epoch=steps_per_epoch, total_steps=total_steps, model=net,
                      dense_flops=dense_flops, schedule=schedule, optimizer=optimizer,
                      updater=updater, train_seconds=train_seconds, skipped_updates=skipped)


def build_network(config: TrainConfig, input_shape, num_classes: int):
    """The model ``config`` trains and the dense FLOPs it is compared with.

    Returns:
        ``(model, dense_flops)``: for Small-Dense the dense model narrowed to the sparse
        model's parameter count and the full-width model's FLOPs; for a masked method the
        model sparsified (at sparsity 0 for a dense-to-sparse method, whose updater prunes
        it); otherwise the dense model.
    """
    traits = config.method_traits
    if config.narrows_model:
        width = small_dense_width(config.model, input_shape, num_classes, config.sparsity,
                                  config.distribution, config.custom_sparsity,
                                  config.erk_power_scale)
        logging.info("%s: width multiplier %.4f", config.method, width)
        net = build_model(config.model, input_shape, num_classes, width=width)
        dense_flops = rigl.flops.dense_inference_flops(
            build_model(config.model, input_shape, num_classes))
    else:
        net = build_model(config.model, input_shape, num_classes)
        dense_flops = rigl.flops.dense_inference_flops(net)
    if traits.masked:
        net = rigl.sparsify(
            net, 0.0 if traits.dense_to_sparse else config.sparsity, config.distribution,
            config.custom_sparsity, config.dense_layers, config.erk_power_scale, config.seed)
    return net, dense_flops


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


# ------------------------------------------------------------------------ phase 2: train
def output_dir(workdir: str, strategy) -> str:
    """This process's output folder: the workdir, or ``workers/<task>`` in it for a
    multi-worker process other than the chief."""
    if strategies.is_chief(strategy):
        return workdir
    # Non-chief workers must take part in checkpointing but must not overwrite the chief.
    return os.path.join(workdir, "workers", strategies.task_name(strategy))


def prepare_workdir(config: TrainConfig, strategy) -> str:
    """Creates this process's output folder and, on the chief, writes the operative gin
    configuration; returns the folder. The first thing a run writes."""
    out_dir = output_dir(config.workdir, strategy)
    os.makedirs(out_dir, exist_ok=True)
    if strategies.is_chief(strategy):
        with open(os.path.join(config.workdir, "operative_config.gin"), "w") as f:
            f.write(gin.operative_config_str())
    return out_dir


class TrainCheckpoint:
    """The training state of a run in ``<out_dir>/checkpoints`` (the last two kept): model and
    masks, optimizer slots and step, training time and skipped mask updates."""

    def __init__(self, experiment: Experiment, out_dir: str):
        self.experiment = experiment
        self.checkpoint = tf.train.Checkpoint(
            model=experiment.model, optimizer=experiment.optimizer,
            train_seconds=experiment.train_seconds,
            skipped_mask_updates=experiment.skipped_updates)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(out_dir, "checkpoints"), max_to_keep=2)

    def restore(self) -> int:
        """Restores the last checkpoint, if there is one; returns the step to start from."""
        experiment = self.experiment
        latest = self.manager.latest_checkpoint
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            logging.info("Resumed from %s", latest)
            if experiment.updater is not None:
                experiment.updater.skipped_updates = int(experiment.skipped_updates.numpy())
        return int(experiment.optimizer.iterations.numpy())

    def save(self, step: int, train_seconds: float) -> None:
        """Saves the state after ``step`` optimizer steps and ``train_seconds`` of training."""
        experiment = self.experiment
        experiment.train_seconds.assign(train_seconds)
        updater = experiment.updater
        experiment.skipped_updates.assign(updater.skipped_updates if updater else 0)
        self.manager.save(checkpoint_number=step)


def train_loop(experiment: Experiment, checkpoint: TrainCheckpoint,
               report: reporting.RunReport, evaluate, start_step: int) -> int:
    """Trains from ``start_step`` to the end; returns the last step.

    Each step: the mask update if one is due (``rigl.SparseTraining``, on this step's
    batch), the optimizer step, the step's reports, then a checkpoint and an evaluation
    when their periods say so. Training time accumulates in ``experiment.train_seconds``.
    """
    config, strategy, spec = experiment.config, experiment.strategy, experiment.data
    total_steps = experiment.total_steps
    batches = iter(strategy.distribute_datasets_from_function(
        lambda ctx: spec.train_fn(ctx, ctx.get_per_replica_batch_size(config.batch_size),
                                  start_step)))
    sparse = None
    if experiment.updater is not None:
        sparse = rigl.SparseTraining(
            experiment.updater, data=rigl.SparseTraining.SET_BATCH, total_steps=total_steps,
            log_dir=os.path.join(report.out_dir, "logs", "train"))
    callbacks = keras.callbacks.CallbackList([sparse] if sparse else [],
                                             model=experiment.model)
    train_step = make_train_step(experiment)

    report.begin()  # before the updater binds: the initial masks
    callbacks.on_train_begin()
    step, started = start_step, time.time()
    base_seconds = float(experiment.train_seconds.numpy())
    while step < total_steps:
        batch = next(batches)
        if sparse is not None:
            sparse.set_batch(batch)
        callbacks.on_train_batch_begin(step)
        loss, correct = train_step(batch)
        step += 1
        callbacks.on_train_batch_end(step - 1)
        report.step_done(step, loss, correct, sparse.history if sparse else ())
        if step % config.checkpoint_every_steps == 0 or step == total_steps:
            checkpoint.save(step, base_seconds + time.time() - started)
            report.checkpointed()
        if config.eval_every_steps and step % config.eval_every_steps == 0 and (
                step < total_steps):  # the last step's evaluation is the final one
            report.evaluated(step, evaluate())
    callbacks.on_train_end()
    experiment.train_seconds.assign(base_seconds + time.time() - started)
    return step


def _loss_terms(task: str, labels, logits, label_smoothing: float = 0.0):
    """Per-example loss (nats; mean over positions for language models) and correct count."""
    xent = optim.cross_entropy(labels, logits, label_smoothing)
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
    if task == "language_model":
        return tf.reduce_mean(xent, axis=-1), tf.reduce_sum(correct)
    return xent, tf.reduce_sum(correct)


def make_train_step(experiment: Experiment):
    """``train_step(batch)`` -> (loss, correct predictions), summed over replicas: one
    optimizer step on a distributed batch, the loss averaged over the global batch."""
    config, strategy, net = experiment.config, experiment.strategy, experiment.model
    optimizer, task = experiment.optimizer, experiment.data.task

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            logits = net(x, training=True)
            per_example, correct = _loss_terms(task, y, logits, config.label_smoothing)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=config.batch_size)
            if net.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(net.losses))
        grads = tape.gradient(loss, net.trainable_variables)
        optimizer.apply_gradients(zip(grads, net.trainable_variables))
        return loss, correct

    @tf.function
    def train_step(batch):
        loss, correct = strategy.run(replica_step, args=batch)
        return (strategy.reduce("SUM", loss, axis=None),
                strategy.reduce("SUM", correct, axis=None))

    return train_step


def make_evaluator(experiment: Experiment):
    """``evaluate()`` -> test metrics (and validation metrics when the dataset holds some
    out), summed over replicas: ``test_accuracy`` or ``test_bits_per_char``, ``test_loss``."""
    spec, net, strategy = experiment.data, experiment.model, experiment.strategy
    eval_batch_size = experiment.config.eval_batch_size

    def replica_eval(x, y):
        logits = net(x, training=False)
        per_example, correct = _loss_terms(spec.task, y, logits)
        count = tf.cast(tf.size(y), tf.float32)
        return tf.reduce_sum(per_example) * (count / tf.cast(tf.shape(y)[0], tf.float32)), \
            correct, count

    @tf.function
    def eval_step(batch):
        return [strategy.reduce("SUM", v, axis=None)
                for v in strategy.run(replica_eval, args=batch)]

    def metrics(prefix, dataset_fn) -> dict:
        batches = strategy.distribute_datasets_from_function(
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

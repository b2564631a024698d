"""The one training loop of every experiment: build, train, report, over one ``TrainConfig``.

``train`` (gin name ``training``; every gin name is listed in ``rigl.experiments.config``)
validates its arguments into a ``TrainConfig`` once, then ``run`` goes through the phases:

1. build (``build_experiment``): strategy, updater, seeds, data, the model (narrowed for
   Small-Dense, then masked, or truly sparse with ``training.storage = 'sparse'``),
   learning-rate schedule and optimizer, as an ``Experiment``. A dry run prints it
   (``reporting.describe``) and stops here, having written nothing.
2. train, holding the workdir (``prepare_workdir``: the run's lock, its identity, the gin
   files): the newest intact checkpoint is restored (``TrainCheckpoint``, past damaged
   ones), and ``train_loop`` runs the steps, evaluating and checkpointing on schedule, and
   stops on a run of non-finite losses (``NonFiniteLossError``).
3. report: the final evaluation, ``model.keras`` and ``results.json``
   (``reporting.RunReport``, which also writes every log during the loop).

A run killed at any point resumes to the same results: an evaluation is done before the
checkpoint of its step, and the eval log is written just before that checkpoint, so the
newest checkpoint and the eval log always agree about every step up to the checkpoint's
(entries after it are dropped on resume and evaluated again). TensorBoard points the
killed session wrote after its last checkpoint are superseded by a session-start event
(``mark_session_start``) that TensorBoard's purge of orphaned data acts on.

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

import collections
import contextlib
import dataclasses
import math
import os
import time
import warnings

import gin
import keras
import numpy as np
import tensorflow as tf
from absl import logging

import rigl
from rigl.experiments import checkpoints, models, optim, reporting, strategies
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
from rigl.experiments.errors import UsageError
from rigl.experiments.workdir import (
    RunLock,
    bindings_from_gin,
    check_identity,
    write_text_atomic,
)

CHECKPOINT_DIR = "checkpoints"


class NonFiniteLossError(RuntimeError):
    """The training loss was NaN or infinite for ``training.stop_on_nonfinite`` steps in a
    row (or at the last step); the message names the steps and the last good checkpoint."""


@gin.configurable("training", denylist=["workdir", "dry_run", "force_resume"])
def train(workdir: str | None, dataset: str = "mnist", model: str = "lenet300_100",
          method: str = "rigl", sparsity: float = 0.9, distribution: str = "uniform",
          custom_sparsity=None, dense_layers=(), erk_power_scale: float = 1.0,
          train_steps: int | None = None, epochs: float | None = None,
          multiplier: float = 1.0, batch_size: int = 100, eval_batch_size: int = 1000,
          eval_every_steps: int | None = None, checkpoint_every_steps: int = 1000,
          log_every_steps: int = 100, seed: int = 0, strategy: str = "default",
          label_smoothing: float = 0.0, mask_snapshot_steps=(), deterministic: bool = False,
          smoke: bool = False, dry_run: bool = False, verbose: int | None = None,
          force_resume: bool = False, stop_on_nonfinite: int = 10,
          storage: str = "masked", sparse_init: bool = False,
          flops_counting: str = "paper", mask_update_skips_step: bool = False) -> dict:
    """Trains one experiment in ``workdir`` and returns its results (also ``results.json``).

    Started again with the same workdir, it resumes from the last checkpoint. Every argument
    is the ``TrainConfig`` field of the same name (documented there); the defaults here are
    those of the gin bindings ``training.<name>``.

    Raises:
        UsageError: naming the ``training.*`` binding that is invalid (see ``TrainConfig``),
            or the workdir is held by another run or holds a run with other bindings.
        NonFiniteLossError: the loss stayed NaN/infinite (``training.stop_on_nonfinite``).
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
    # Phase 1: build. Its checks of the user's input (sparsify's layer names, ERK's
    # feasibility, dataset, model and optimizer options) raise ValueErrors naming the
    # parameter, before anything is written: they are usage errors.
    try:
        experiment = build_experiment(config)
    except UsageError:
        raise
    except ValueError as error:
        raise UsageError(str(error)) from error
    if config.dry_run:
        if experiment.updater is not None:  # SparseTraining binds it when training
            experiment.updater.bind(experiment.model, experiment.optimizer,
                                    total_steps=experiment.total_steps)
        print(reporting.describe(experiment.model, experiment.schedule, experiment.updater,
                                 experiment.total_steps, experiment.steps_per_epoch))
        return {}

    # Phase 2: train, holding the workdir until the results are written.
    with prepare_workdir(config, experiment.strategy) as out_dir:
        checkpoint = TrainCheckpoint(experiment, out_dir)
        start_step = checkpoint.restore()
        # Before the report and the callback open their writers (see mark_session_start):
        # training scalars of the restored step were logged before its checkpoint, mask
        # updates at that step come after it.
        mark_session_start(os.path.join(out_dir, "logs", "train"), start_step + 1)
        mark_session_start(os.path.join(out_dir, "logs", "eval"), start_step + 1)
        mark_session_start(os.path.join(out_dir, "logs", "masks"), start_step)
        report = reporting.RunReport(
            config, out_dir, experiment.model, experiment.optimizer, start_step=start_step,
            total_steps=experiment.total_steps, examples_per_step=experiment.examples_per_step,
            task=experiment.data.task)
        evaluate = make_evaluator(experiment)
        try:
            steps = train_loop(experiment, checkpoint, report, evaluate, start_step)
        except BaseException:
            report.close()  # ends an open progress line before the error is printed
            raise

        # Phase 3: report. The loop evaluated the last step before its checkpoint; a run
        # resumed from that checkpoint finds the evaluation in the eval log.
        last = report.eval_log.entries[-1] if report.eval_log.entries else None
        if last is not None and last[0] == steps:
            metrics = last[1]
        else:
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
            own, or for Small-Dense the full-width model's (``training.flops_counting``).
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
    # The updater before the model: its bindings (updater.*) are checked before anything
    # big is built. Bindings scoped by the method name (e.g. `prune/updater.update_freq =
    # 1000`) apply only to that method: configs set the pruning schedule beside the RigL
    # one this way.
    with gin.config_scope(config.method):
        updater = make_updater(config.method, config.sparsity, config.distribution,
                               config.custom_sparsity, config.erk_power_scale, config.seed,
                               config.multiplier, config.storage)
    if config.mask_update_skips_step and updater.batches_per_update != 1:
        raise UsageError("training.mask_update_skips_step: an update spends the one batch of "
                         f"its step; updater.grad_accumulation_n = "
                         f"{updater.batches_per_update} takes several. Use one or the other.")
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    spec = get_dataset(config.dataset, seed=config.seed, mock=config.mock_data,
                       **config.dataset_options)
    steps_per_epoch, total_steps = config.steps(spec.num_train_examples)
    with strategy.scope():
        net, dense_flops = build_network(config, spec.input_shape, spec.num_classes,
                                         start_sparsity(config, updater))
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
    return Experiment(config=config, strategy=strategy, data=spec,
                      steps_per_epoch=steps_per_epoch, total_steps=total_steps, model=net,
                      dense_flops=dense_flops, schedule=schedule, optimizer=optimizer,
                      updater=updater, train_seconds=train_seconds, skipped_updates=skipped)


def start_sparsity(config: TrainConfig, updater) -> float:
    """The sparsity the model of a masked method is sparsified at before training.

    ``training.sparsity`` for a sparse-to-sparse method; 0 (dense) for a dense-to-sparse one,
    whose updater prunes it; the updater's ``initial_sparsity`` (a random mask of
    ``training.distribution``) for an updater whose class sets ``sparse_start`` (GraNet: the
    paper's sparse-to-sparse variant starts at its initial density; ``GradualPruning``'s
    ``initial_sparsity`` is instead a magnitude pruning of the dense model at its first
    step, as in Zhu & Gupta).
    """
    traits = config.method_traits
    if not traits.dense_to_sparse:
        return config.sparsity
    # A trait of the updater class (rigl.granet.GraNet.sparse_start); base updaters lack it.
    if getattr(traits.updater, "sparse_start", False):
        return updater.initial_sparsity
    return 0.0


def build_network(config: TrainConfig, input_shape, num_classes: int,
                  sparsity: float | None = None):
    """The model ``config`` trains and the dense FLOPs it is compared with.

    Args:
        sparsity: the sparsity a masked method's model is sparsified at
            (``start_sparsity``); default: ``training.sparsity``, or 0 for a dense-to-sparse
            method.

    Returns:
        ``(model, dense_flops)``: for Small-Dense the dense model narrowed to the sparse
        model's parameter count and the full-width model's FLOPs; for a masked method the
        model sparsified at ``sparsity`` (0 for a dense-to-sparse method, whose updater
        prunes it, or GraNet's initial sparsity), with truly sparse layers for
        ``storage="sparse"`` (``build_sparse_network``); otherwise the dense model.
    """
    traits = config.method_traits
    if sparsity is None:
        sparsity = 0.0 if traits.dense_to_sparse else config.sparsity
    if config.storage == "sparse":
        net, dense_flops = build_sparse_network(config, input_shape, num_classes, sparsity)
        if config.sparse_init:
            scale_for_density(net)
        return net, dense_flops
    if config.narrows_model:
        width = small_dense_width(config.model, input_shape, num_classes, config.sparsity,
                                  config.distribution, config.custom_sparsity,
                                  config.erk_power_scale)
        logging.info("%s: width multiplier %.4f", config.method, width)
        net = build_model(config.model, input_shape, num_classes, width=width)
        dense_flops = rigl.flops.dense_inference_flops(
            build_model(config.model, input_shape, num_classes), config.flops_counting)
    else:
        net = build_model(config.model, input_shape, num_classes)
        dense_flops = rigl.flops.dense_inference_flops(net, config.flops_counting)
    if traits.masked:
        net = rigl.sparsify(
            net, sparsity, config.distribution, config.custom_sparsity, config.dense_layers,
            config.erk_power_scale, config.seed)
        if config.sparse_init:
            scale_for_density(net)
    return net, dense_flops


def scale_for_density(net) -> None:
    """Multiplies the initial weights of every sparse kernel of ``net`` by
    ``1/sqrt(density)`` (``training.sparse_init``): a variance-scaling initializer's
    variance for the fan-in a unit keeps, ``density · fan_in`` (and fan-out), rather than the
    dense fans. O(nnz) for ``rigl.SparseDense``; the same on masked storage."""
    for weight in rigl.masking.sparse_weights(net):  # masked twins, SparseModel, SparseDense
        if isinstance(weight, rigl.SparseDense):
            density = weight.active_count() / math.prod(weight.kernel_shape)
            weight.values.assign(weight.values * (1.0 / math.sqrt(density)))
        else:
            density = float(np.mean(keras.ops.convert_to_numpy(weight.mask) != 0))
            weight.masked_kernel.assign(weight.masked_kernel * (1.0 / math.sqrt(density)))


def build_sparse_network(config: TrainConfig, input_shape, num_classes: int,
                         sparsity: float | None = None):
    """``build_network`` for ``storage="sparse"``: ``(model, dense_flops)``, the model's
    Dense layers ``rigl.SparseDense`` (at ``sparsity``, as in ``build_network``).

    A model whose factory takes a ``dense`` layer factory (``models.takes_dense``) is built
    by ``rigl.sparse_model``: no dense kernel ever exists (the 65,536-wide MLP's would not
    fit in memory), and the dense FLOPs come from the kernel shapes. Its initial positions
    are drawn in O(nnz), so they differ from the masks of ``storage="masked"`` (the same
    count per layer). Any other model is built dense, sparsified and converted
    (``rigl.to_sparse``): the same initial connections as masked storage; its convolutions
    and GRUs have no sparse form and stay masked (logged).
    """
    # A dense-to-sparse method starts with every connection stored; its updater marks the
    # pruned ones dead (the layers keep their initial nnz of memory).
    if sparsity is None:
        sparsity = 0.0 if config.method_traits.dense_to_sparse else config.sparsity
    options = (sparsity, config.distribution, config.custom_sparsity, config.dense_layers,
               config.erk_power_scale, config.seed)
    if models.takes_dense(config.model):
        net = rigl.sparse_model(
            lambda dense: build_model(config.model, input_shape, num_classes, dense=dense),
            *options)
        dense_flops = rigl.flops.dense_inference_flops(net, config.flops_counting)
    else:
        dense = build_model(config.model, input_shape, num_classes)
        dense_flops = rigl.flops.dense_inference_flops(dense, config.flops_counting)
        with warnings.catch_warnings():
            # Said once below, in the run's log, with the layers that do become sparse.
            warnings.filterwarnings("ignore", "to_sparse: layers .* stay masked")
            net = rigl.to_sparse(rigl.sparsify(dense, *options))
        del dense
    sparse = [layer.name for layer in reporting.sparse_dense_layers(net)]
    masked = [layer.name for layer in rigl.masked_layers(net)]
    logging.info("training.storage = 'sparse': truly sparse layers %s", ", ".join(sparse))
    if masked:
        logging.warning("training.storage = 'sparse': layers %s have no sparse form (only "
                        "Dense layers do) and stay masked (a dense kernel and mask each).",
                        ", ".join(masked))
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


@contextlib.contextmanager
def prepare_workdir(config: TrainConfig, strategy):
    """Holds this process's output folder for the run: yields the folder (a context manager).

    The first thing a run writes, after every setting was validated and the experiment
    built: it takes the folder's ``RunLock`` (a second run there fails at once, naming the
    holder's PID) for as long as the ``with`` block lasts, errors included; checks that the
    folder holds this run (``check_identity`` of the operative gin bindings: a restart with
    other bindings is a ``UsageError`` listing them, unless ``config.force_resume``); and on
    the chief writes ``config.gin`` (the configuration as given) and ``operative_config.gin``
    into the workdir, atomically. Under multi-worker every process locks and identifies its
    own folder (``output_dir``), where it keeps its checkpoints; only the chief writes the
    shared files (these two and ``results.json``).
    """
    out_dir = output_dir(config.workdir, strategy)
    with RunLock(out_dir):
        has_checkpoints = bool(checkpoints.list_checkpoints(os.path.join(out_dir,
                                                                         CHECKPOINT_DIR)))
        check_identity(out_dir, bindings_from_gin(gin.operative_config_str()),
                       force=config.force_resume, has_checkpoints=has_checkpoints)
        if strategies.is_chief(strategy):
            write_text_atomic(os.path.join(config.workdir, "config.gin"), gin.config_str())
            write_text_atomic(os.path.join(config.workdir, "operative_config.gin"),
                              gin.operative_config_str())
        yield out_dir


# A TensorBoard event file holding session-start events; its name sorts after the files of
# earlier sessions (an older time) and before those this session's writers create in the
# same second ("-" sorts before any host name).
_SESSION_FILE = "events.out.tfevents.{time:010d}.-session-start.{pid}.{step}"


def mark_session_start(log_dir: str, step: int) -> str | None:
    """Makes TensorBoard drop what a killed session logged at ``step`` and after.

    Writes a ``SessionLog.START`` event at ``step`` into ``log_dir`` in a file of its own,
    to be called before this session opens its writers there: TensorBoard, reading a run's
    files in name order with its purge of orphaned data (the default), drops every point
    with a step >= ``step`` read before it, so the points a resumed run writes again do not
    show twice. It ignores the first START of a run, so this writes two (a run started
    before these events existed has none). Nothing is written into a folder without event
    files (a new run). Returns the file written, or None.
    """
    if not os.path.isdir(log_dir) or not any("tfevents" in name for name in os.listdir(log_dir)):
        return None
    from tensorflow.core.util import event_pb2

    now = time.time()
    path = os.path.join(log_dir, _SESSION_FILE.format(time=int(now), pid=os.getpid(),
                                                      step=step))
    start = event_pb2.Event(wall_time=now, step=step, session_log=event_pb2.SessionLog(
        status=event_pb2.SessionLog.START))
    with tf.io.TFRecordWriter(path) as writer:  # event files are TFRecord files
        writer.write(event_pb2.Event(wall_time=now,
                                     file_version="brain.Event:2").SerializeToString())
        for _ in range(2):
            writer.write(start.SerializeToString())
    return path


class TrainCheckpoint:
    """The training state of a run in ``<out_dir>/checkpoints`` (the last two kept): model and
    masks, optimizer slots and step, training time and skipped mask updates."""

    def __init__(self, experiment: Experiment, out_dir: str):
        self.experiment = experiment
        self.directory = os.path.join(out_dir, CHECKPOINT_DIR)
        self.checkpoint = tf.train.Checkpoint(
            model=experiment.model, optimizer=experiment.optimizer,
            train_seconds=experiment.train_seconds,
            skipped_mask_updates=experiment.skipped_updates)
        self.manager: tf.train.CheckpointManager | None = None

    def restore(self) -> int:
        """Restores the newest intact checkpoint, if there is one; returns the step to start
        from.

        Damaged newer checkpoints are set aside with a warning naming their files, and a
        missing or unreadable state file does not hide the checkpoints
        (``checkpoints.restore_latest``); the manager that saves the next ones is built
        afterwards. Under multi-worker every process restores from its own folder, and the
        run stops (``CheckpointError``) unless all of them restored the same step.

        Raises:
            CheckpointError: checkpoints exist but none is intact, or workers disagree.
        """
        experiment = self.experiment
        latest, _ = checkpoints.restore_latest(self.checkpoint, self.directory)
        if latest:
            logging.info("Resumed from %s", latest)
            if experiment.updater is not None:
                experiment.updater.skipped_updates = int(experiment.skipped_updates.numpy())
        step = int(experiment.optimizer.iterations.numpy())
        _check_workers_agree(experiment.strategy, step, latest)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory,
                                                  max_to_keep=2)
        return step

    @property
    def latest(self) -> str | None:
        """The newest checkpoint's prefix (None before the first)."""
        return self.manager.latest_checkpoint if self.manager is not None else None

    def save(self, step: int, train_seconds: float) -> None:
        """Saves the state after ``step`` optimizer steps and ``train_seconds`` of training."""
        experiment = self.experiment
        experiment.train_seconds.assign(train_seconds)
        updater = experiment.updater
        experiment.skipped_updates.assign(updater.skipped_updates if updater else 0)
        self.manager.save(checkpoint_number=step)


def _check_workers_agree(strategy, step: int, prefix: str | None) -> None:
    """Raises ``CheckpointError`` unless every worker of a multi-worker run resumes from
    ``step``: a kill or a fallback on one worker only (each restores its own folder) would
    otherwise train the workers from different steps. All workers take part (one collective
    sum), so all of them stop."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    value = tf.constant([step, float(step) ** 2, 1.0], tf.float64)

    @tf.function
    def sums():
        return strategy.reduce("SUM", strategy.run(lambda: tf.identity(value)), axis=None)

    total, squares, count = sums().numpy()
    if count * squares == total ** 2:  # equality in Cauchy-Schwarz: every value the same
        return
    raise checkpoints.CheckpointError(
        f"workers resume from different steps: this worker "
        f"({strategies.task_name(strategy)}) from step {step} "
        f"({prefix or 'no checkpoint'}), the workers' mean is {total / count:g}. Each worker "
        "restores its own checkpoints folder (the chief's in the workdir, the others' in "
        "workers/<task>/): move the newer checkpoints of the workers ahead aside (e.g. into "
        "their checkpoints/damaged/) so that all hold the same newest step, then start again.")


class NonFiniteWatch:
    """Counts consecutive steps whose training loss is NaN or infinite.

    Reading the loss every step is a device-to-host copy of one scalar; on CPU the step's
    result is already on the host (no measurable cost on the quickstart run: 11.5-12.7 ms a
    step either way, within the noise of a loaded 2-core machine). ``limit`` 0 never reads.
    """

    def __init__(self, limit: int):
        self.limit, self.count, self.first = limit, 0, None

    @property
    def healthy(self) -> bool:
        """Whether the state may be saved: the last loss was finite (or not watched)."""
        return self.count == 0

    @property
    def exhausted(self) -> bool:
        """Whether the run must stop: ``limit`` non-finite losses in a row."""
        return bool(self.limit) and self.count >= self.limit

    def after_step(self, step: int, loss) -> None:
        """Counts the loss of optimizer step ``step``."""
        if not self.limit:
            return
        if math.isfinite(float(loss)):
            if self.count:
                logging.warning("step %d: the training loss is finite again after %d "
                                "non-finite steps.", step, self.count)
            self.count, self.first = 0, None
            return
        self.count += 1
        if self.count == 1:
            self.first = step
            logging.warning("step %d: the training loss is %s; the run stops after %d such "
                            "steps in a row (training.stop_on_nonfinite) and saves no "
                            "checkpoint meanwhile.", step, float(loss), self.limit)

    def error(self, step: int, latest: str | None) -> NonFiniteLossError:
        """The error stopping the run at ``step``; ``latest``: the newest checkpoint."""
        why = (f"stopped, as training.stop_on_nonfinite = {self.limit} asks (0 never stops)"
               if self.exhausted else "at the last step, so no results are written "
               "(training.stop_on_nonfinite = 0 would write them)")
        return NonFiniteLossError(
            f"step {step}: the training loss was NaN or infinite for {self.count} steps in a "
            f"row (from step {self.first}); {why}. No checkpoint was saved after the last "
            f"good one{f' ({latest})' if latest else ''}. Lower the learning rate (or fix "
            "what diverged) and start in a new --workdir, or continue this one's last good "
            "checkpoint with the new bindings and --force_resume.")


def train_loop(experiment: Experiment, checkpoint: TrainCheckpoint,
               report: reporting.RunReport, evaluate, start_step: int) -> int:
    """Trains from ``start_step`` to the end; returns the last step.

    Each step: the mask update if one is due (``rigl.SparseTraining``, on this step's
    batch; with ``training.mask_update_skips_step`` the update spends the batch and the
    optimizer step takes the next one), the optimizer step, the step's reports, then an
    evaluation and a checkpoint when their periods say so (and both at the last step), in
    that order: the eval log is saved with the checkpoint, just before it, so a kill
    anywhere leaves a checkpoint whose evaluations are all in the eval log. Training time
    (evaluations of earlier steps included, as before) accumulates in
    ``experiment.train_seconds``.

    Raises:
        NonFiniteLossError: ``training.stop_on_nonfinite`` non-finite losses in a row, or
            a non-finite loss at the last step; no checkpoint is saved while the last loss
            is non-finite, so the newest one stays the last good one.
    """
    config, strategy, spec = experiment.config, experiment.strategy, experiment.data
    total_steps = experiment.total_steps
    skips = config.mask_update_skips_step and experiment.updater is not None
    # With mask_update_skips_step every update before start_step spent a batch of its own.
    read = start_step + (updates_before(experiment.updater, total_steps, start_step)
                         if skips else 0)
    batches = iter(strategy.distribute_datasets_from_function(
        lambda ctx: spec.train_fn(ctx, ctx.get_per_replica_batch_size(config.batch_size),
                                  read)))
    sparse = None
    if experiment.updater is not None:
        # Mask updates in a TensorBoard run of their own: the update at step t comes after
        # the checkpoint of step t, the training scalars of step t before it, and a resumed
        # run's session start (mark_session_start) must purge the one but not the other.
        sparse = rigl.SparseTraining(
            experiment.updater, data=rigl.SparseTraining.SET_BATCH, total_steps=total_steps,
            log_dir=os.path.join(report.out_dir, "logs", "masks"))
    callbacks = keras.callbacks.CallbackList([sparse] if sparse else [],
                                             model=experiment.model)
    train_step = make_train_step(experiment)
    watch = NonFiniteWatch(config.stop_on_nonfinite)

    report.begin()  # before the updater binds: the initial masks
    callbacks.on_train_begin()
    step, started = start_step, time.time()
    base_seconds = float(experiment.train_seconds.numpy())
    # The batches read ahead: an update averaging n batches' gradients (grad_accumulation_n)
    # takes those of this step and the n - 1 next ones, all read (and handed to set_batch)
    # before the update; the loop then trains on them in order. A resumed run reads ahead
    # from its start step as the uninterrupted run did, so both see the same batches.
    ahead = collections.deque()
    per_update = max(1, experiment.updater.batches_per_update) if sparse is not None else 1
    while step < total_steps:
        while len(ahead) < per_update:
            ahead.append(next(batches))
            if sparse is not None:
                sparse.set_batch(ahead[-1])
        batch = ahead.popleft()
        updates = len(sparse.history) if sparse is not None else 0
        callbacks.on_train_batch_begin(step)
        if skips and len(sparse.history) > updates:
            # The update spent this batch; optimizer step `step` takes the next one (the
            # callback, whose host count moved on, checks optimizer.iterations at its next
            # update and finds this step again).
            continue
        loss, correct = train_step(batch)
        step += 1
        callbacks.on_train_batch_end(step - 1)
        report.step_done(step, loss, correct, sparse.history if sparse else ())
        seconds = base_seconds + time.time() - started  # this step's evaluation excluded
        watch.after_step(step, loss)
        last = step == total_steps
        if watch.exhausted or (last and not watch.healthy):
            raise watch.error(step, checkpoint.latest)
        if last or (config.eval_every_steps and step % config.eval_every_steps == 0):
            report.evaluated(step, evaluate())
        if last or step % config.checkpoint_every_steps == 0:
            if not watch.healthy:
                logging.warning("step %d: no checkpoint while the training loss is not "
                                "finite.", step)
                continue
            report.checkpointed()  # the eval log first: a kill between leaves it ahead
            # The training scalars up to this step must be on disk with the checkpoint: a
            # resumed run logs only the steps after it.
            report.train_writer.flush()
            checkpoint.save(step, seconds)  # at the last step: the run's train_seconds
    callbacks.on_train_end()
    return step


def updates_before(updater: rigl.Updater, total_steps: int, step: int) -> int:
    """How many mask updates a run of ``total_steps`` makes before optimizer step ``step``
    (those at steps ``0 .. step - 1``): the batches they spent under
    ``training.mask_update_skips_step``."""
    if not updater.changes_masks or step <= 0:
        return 0
    schedule = updater.schedule.resolve(total_steps)
    return sum(1 for t in range(schedule.begin_step, min(step, schedule.end() + 1))
               if schedule.is_update_step(t))


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

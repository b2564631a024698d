"""What configures a run: its gin names, and ``TrainConfig``, the validated settings of one run.

Gin names (bind them in ``gin_configs/`` or with ``--gin_bindings``):

* ``training.*``: the parameters of ``rigl.experiments.training.train`` (dataset, model,
  method, sparsity, distribution, custom_sparsity, dense_layers, erk_power_scale,
  train_steps / epochs, multiplier, batch_size, eval_batch_size, eval_every_steps,
  checkpoint_every_steps, log_every_steps, seed, strategy, label_smoothing,
  mask_snapshot_steps, deterministic, smoke, verbose, stop_on_nonfinite, storage,
  sparse_init, flops_counting, mask_update_skips_step); ``train`` turns them into a
  ``TrainConfig``;
* ``updater.*`` (``make_updater``): update_freq, begin_step, end_step, drop_fraction,
  drop_fraction_decay, decay_power, grow_init, initial_sparsity (gradual pruning, GraNet),
  grad_accumulation_n and drop_noise_std (RigL), pruning_scope (GraNet), gamma_sal (SRigL);
  a binding scoped by the method's name (``prune/updater.update_freq = 1000``) applies to
  that method only;
* ``optimizer.*``, ``learning_rate.*`` (``rigl.experiments.optim``), ``dataset.*`` (data_dir,
  download, validation_examples, image_size, seq_len, wikitext_dir), ``model.*`` (width,
  weight_decay, ...), ``strategy.*`` (devices, logical_cpus, tpu_address): the factories of
  the other experiment modules, made configurable here.

Where a new setting plugs in: a ``training.*`` setting is a parameter of ``training.train``
(the gin signature holds its default) and a field of ``TrainConfig`` of the same name
(documented and validated here: a bad value is a ``UsageError`` naming the binding and what
is allowed, raised before anything is built or written); a dataset, model, optimizer,
schedule or strategy option is a keyword argument of its factory, which gin then knows under
that factory's name. Traits of a method (masked, dense-to-sparse, FLOPs rule) come from
``rigl.methods``, never from lists of names here.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
from collections.abc import Mapping

import gin

import rigl
from rigl.experiments import data, models, optim, strategies
from rigl.experiments.errors import UsageError

# A smoke run (``training.smoke``): a few steps on ``tfds.testing.mock_data`` with small
# batches (and small ImageNet images), to check a config end to end without its data.
SMOKE_STEPS, SMOKE_BATCH, SMOKE_EXAMPLES, SMOKE_IMAGE_SIZE = 3, 8, 16, 64
# ``training.verbose``: silent, a progress bar, one line per log period.
VERBOSITIES = (0, 1, 2)
# ``training.storage``: masked layers (a dense kernel and a mask) or truly sparse ones
# (``rigl.SparseDense``: only the active weights, O(nnz) memory).
STORAGES = ("masked", "sparse")

get_dataset = gin.external_configurable(data.get_dataset, "dataset",
                                        denylist=["name", "seed", "mock"])
build_model = gin.external_configurable(models.build_model, "model",
                                        denylist=["name", "input_shape", "num_classes", "dense"])
make_optimizer = gin.external_configurable(optim.make_optimizer, "optimizer",
                                           denylist=["learning_rate"])
make_schedule = gin.external_configurable(
    optim.make_schedule, "learning_rate",
    denylist=["total_steps", "steps_per_epoch", "global_batch_size", "multiplier"])
make_strategy = gin.external_configurable(strategies.make_strategy, "strategy",
                                          denylist=["name"])


# The arguments the training loop passes (its training.* settings): not updater.* bindings.
_UPDATER_RUN_ARGS = ["method", "sparsity", "distribution", "custom_sparsity", "erk_power_scale",
                     "seed", "multiplier", "storage"]


@gin.configurable("updater", denylist=_UPDATER_RUN_ARGS)
def make_updater(method, sparsity, distribution, custom_sparsity, erk_power_scale, seed,
                 multiplier=1.0, storage="masked", update_freq=100, begin_step=0,
                 end_step=None, drop_fraction=0.3, drop_fraction_decay="cosine",
                 decay_power=1.0, grow_init="zeros", initial_sparsity=0.0,
                 grad_accumulation_n=1, pruning_scope="global", gamma_sal=0.3,
                 drop_noise_std=0.0):
    """The updater of ``method`` (None without masks); its step anchors scale with
    ``multiplier``. Every ``updater.*`` binding goes to ``rigl.get_updater``, which keeps
    those the method takes; one it refuses is a ``UsageError`` naming ``updater.<name>``, as
    is a ``grow_init`` other than ``"zeros"`` with ``storage="sparse"`` (truly sparse layers
    grow new connections at zero only; ``rigl.Updater.bind`` would refuse it later)."""
    traits = rigl.methods.get_method(method, "training.method")
    if traits.updater is None:
        return None
    if storage == "sparse" and grow_init != "zeros" and "grow_init" in traits.updater_args:
        raise UsageError(f"training.storage: 'sparse' grows new connections at zero only, "
                         f"but updater.grow_init = {grow_init!r} draws a value per dense "
                         "position; use updater.grow_init = 'zeros' or training.storage = "
                         "'masked'.")
    scale = lambda s: None if s is None else round(s * multiplier)  # noqa: E731
    try:
        return rigl.get_updater(
            method, ignore_unused=True, sparsity=sparsity, distribution=distribution,
            custom_sparsity=custom_sparsity, erk_power_scale=erk_power_scale,
            initial_sparsity=initial_sparsity, update_freq=update_freq,
            begin_step=scale(begin_step), end_step=scale(end_step),
            drop_fraction=drop_fraction, drop_fraction_decay=drop_fraction_decay,
            decay_power=decay_power, grow_init=grow_init, seed=seed,
            grad_accumulation_n=grad_accumulation_n, pruning_scope=pruning_scope,
            gamma_sal=gamma_sal, drop_noise_std=drop_noise_std)
    except ValueError as error:
        # The constructors only check their arguments, and the training.* ones were checked
        # by TrainConfig: what is left is an updater.* binding, named first in the message.
        raise UsageError(f"updater.{error}") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The settings of one run (the ``training.*`` bindings), validated at construction.

    ``training.train`` builds it from its gin-configured arguments; its signature holds the
    defaults, so every field is required here (but the newest five, defaulted for callers
    written before them). Every field is checked at construction, before anything is built
    or written: a bad value raises ``UsageError`` (a ``ValueError``) naming its
    ``training.<name>`` binding and what is allowed. Values are kept as given (a list stays a
    list): the run reads them, never changes them.

    Attributes:
        workdir: output folder (checkpoints, logs, model, results); None only for a dry run.
        dataset, model: names from ``rigl.experiments.data.DATASETS`` / ``models.MODELS``.
        method: a name of ``rigl.methods.METHODS``: dense, static, snip, set, snfs, rigl,
            prune, and small_dense (a dense model narrowed to the sparse model's parameter
            count).
        sparsity, distribution, custom_sparsity, dense_layers, erk_power_scale: the sparsity
            (see ``rigl.sparsify``); a dense run rejects a custom map or dense layers.
        train_steps, epochs: training length (exactly one of them), before ``multiplier``.
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
        dry_run: build model, masks and schedule, print them and return without training
            or writing anything.
        force_resume: the user passed ``--force_resume`` (``workdir.FORCE_FLAG``): a workdir
            holding a run with other bindings is continued with these (see
            ``rigl.experiments.workdir.check_identity``).
        stop_on_nonfinite: stop the run with an error after this many consecutive training
            steps whose loss is NaN or infinite (the last good checkpoint is kept); 0: never.
        verbose: 1 progress bar, 2 one line per log period, 0 silent; None: 1 on a
            terminal, else 2 (see ``progress_verbosity``).
        storage: how the sparse layers store their weights (``STORAGES``): "masked", a
            dense kernel and a mask per layer (``rigl.sparsify``); "sparse", only the active
            weights (``rigl.SparseDense``, memory O(nnz)): a model whose factory takes a
            ``dense`` layer factory (``models.takes_dense``) is built sparse directly
            (``rigl.sparse_model``, no dense kernel ever exists), any other is sparsified
            and converted (``rigl.to_sparse``; its convolutions and GRUs stay masked). Only
            for methods with masks that can run on sparse storage (not SNFS; not
            ``updater.grow_init`` other than "zeros").
        sparse_init: scale every sparse kernel's initial weights by ``1/sqrt(density)``, so
            that their variance is the initializer's for the fan-in a unit really has
            (``density · fan_in``) rather than the dense one (Evci et al. 2022, "Gradient
            Flow in Sparse Neural Networks and How Lottery Tickets Win",
            https://arxiv.org/abs/2010.03533). Off by default, as in the RigL paper; at
            very high sparsity of wide layers it is needed: 784 -> 65,536 -> 65,536 -> 10 at
            99.9% ERK (a hidden unit of the second layer keeps 37 of 65,536 inputs) stays at
            chance for 90 steps without it, and reaches 0.88 batch accuracy at step 30 with
            it. Only for methods that start sparse.
        flops_counting: how ``results.json``'s FLOPs and size fields are counted
            (``rigl.flops.COUNTINGS``): "paper" (as the reference counted, the paper's
            digits) or "exact" (the model as it is); they differ for models with a padded
            stem or depthwise layers (see ``rigl.flops``). A run's pruning FLOPs are measured
            after every update and averaged over every step in both. Runs from before it
            counted "exact" (``workdir.ADDED_BINDINGS``).
        mask_update_skips_step: a step at which the masks are updated spends its batch on
            the update's gradient only, as the reference's TF1 ``SparseRigLOptimizer`` does
            (google-research/rigl ``sparse_optimizers.py``: the mask update replaces the
            optimizer step, and the step count does not advance); the optimizer step then
            takes the next batch. The run reads one batch more per update than it has steps
            (the reference's 120,000 MNIST iterations with 501 updates are 119,499 steps).
            Off by default: the update and the optimizer step share the step's batch. Only
            for methods whose update takes a gradient (rigl and its variants), not with
            ``updater.grad_accumulation_n`` > 1.
    """

    workdir: str | None
    dataset: str
    model: str
    method: str
    sparsity: float
    distribution: str
    custom_sparsity: dict | None
    dense_layers: tuple | list
    erk_power_scale: float
    train_steps: int | None
    epochs: float | None
    multiplier: float
    batch_size: int
    eval_batch_size: int
    eval_every_steps: int | None
    checkpoint_every_steps: int
    log_every_steps: int
    seed: int
    strategy: str
    label_smoothing: float
    mask_snapshot_steps: tuple | list
    deterministic: bool
    smoke: bool
    dry_run: bool
    verbose: int | None
    # Defaulted (unlike the other fields) so callers written before they existed still work.
    force_resume: bool = False
    stop_on_nonfinite: int = 10
    storage: str = "masked"
    sparse_init: bool = False
    flops_counting: str = "paper"
    mask_update_skips_step: bool = False

    def __post_init__(self):
        # Everything the user can get wrong is checked here, before the build phase and long
        # before the workdir is touched: each error is one line naming the gin binding.
        try:
            rigl.methods.get_method(self.method, "training.method")
            rigl.distributions.validate_sparsity(self.sparsity, "training.sparsity")
            for layer, value in dict(self.custom_sparsity or {}).items():
                rigl.distributions.validate_sparsity(
                    value, f"training.custom_sparsity[{layer!r}]")
        except ValueError as error:
            raise UsageError(str(error)) from None
        _check_choice("training.dataset", self.dataset, sorted(data.DATASETS))
        _check_choice("training.model", self.model, sorted(models.MODELS))
        _check_choice("training.distribution", self.distribution,
                      rigl.distributions.DISTRIBUTIONS)
        _check_choice("training.strategy", self.strategy, strategies.STRATEGIES)
        _check_choice("training.flops_counting", self.flops_counting, rigl.flops.COUNTINGS)
        if self.custom_sparsity is not None and not isinstance(self.custom_sparsity, Mapping):
            raise UsageError("training.custom_sparsity: expected a dict of layer name -> "
                             f"sparsity, or None; got {self.custom_sparsity!r}.")
        if not isinstance(self.dense_layers, (tuple, list)) or not all(
                isinstance(name, str) for name in self.dense_layers):
            raise UsageError("training.dense_layers: expected a list of layer names, got "
                             f"{self.dense_layers!r}.")
        _check_real("training.erk_power_scale", self.erk_power_scale, minimum=0)
        if (self.train_steps is None) == (self.epochs is None):
            raise UsageError("training.train_steps / training.epochs: set exactly one of them.")
        if self.train_steps is not None:
            _check_int("training.train_steps", self.train_steps, minimum=1)
        if self.epochs is not None:
            _check_real("training.epochs", self.epochs, minimum=0, open_minimum=True)
        _check_real("training.multiplier", self.multiplier, minimum=0, open_minimum=True)
        _check_int("training.batch_size", self.batch_size, minimum=1)
        _check_int("training.eval_batch_size", self.eval_batch_size, minimum=1)
        if self.eval_every_steps is not None:  # 0, like None: only at the end
            _check_int("training.eval_every_steps", self.eval_every_steps, minimum=0)
        _check_int("training.checkpoint_every_steps", self.checkpoint_every_steps, minimum=1)
        _check_int("training.log_every_steps", self.log_every_steps, minimum=1)
        # keras.utils.set_random_seed seeds NumPy, which takes [0, 2**32).
        _check_int("training.seed", self.seed, minimum=0, maximum=2**32 - 1)
        _check_real("training.label_smoothing", self.label_smoothing, minimum=0, maximum=1)
        if not isinstance(self.mask_snapshot_steps, (tuple, list)):
            raise UsageError("training.mask_snapshot_steps: expected a list of steps, got "
                             f"{self.mask_snapshot_steps!r}.")
        for step in self.mask_snapshot_steps:
            _check_int("training.mask_snapshot_steps", step, minimum=0)
        for name in ("deterministic", "smoke", "dry_run", "force_resume", "sparse_init",
                     "mask_update_skips_step"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"training.{name}: expected True or False, got "
                                 f"{getattr(self, name)!r}.")
        if self.verbose is not None and self.verbose not in VERBOSITIES:
            raise UsageError(f"training.verbose: expected one of {VERBOSITIES} or None, got "
                             f"{self.verbose!r}.")
        _check_int("training.stop_on_nonfinite", self.stop_on_nonfinite, minimum=0)
        if not self.method_traits.masked and (self.custom_sparsity or self.dense_layers):
            raise UsageError("training.custom_sparsity / dense_layers: a dense run has no "
                             "masks.")
        if self.sparse_init and (not self.method_traits.masked
                                 or self.method_traits.dense_to_sparse):
            raise UsageError(f"training.sparse_init: method {self.method!r} starts dense, so "
                             "there is no sparse kernel to rescale; use it with a method that "
                             "starts sparse (static, set, snfs, rigl).")
        self._check_storage()
        updater = self.method_traits.updater
        if self.mask_update_skips_step and not (updater is not None and updater.changes_masks
                                                and updater.needs_gradients):
            raise UsageError(f"training.mask_update_skips_step: method {self.method!r} has no "
                             "mask update that takes a gradient to spend a batch on; use it "
                             "with rigl (the reference's SparseRigLOptimizer does this).")
        if self.workdir is None and not self.dry_run:
            raise UsageError("workdir: required unless dry_run.")

    def _check_storage(self) -> None:
        _check_choice("training.storage", self.storage, STORAGES)
        if self.storage == "masked":
            return
        traits = self.method_traits
        if not traits.masked:
            raise UsageError(f"training.storage: 'sparse' stores the active weights of sparse "
                             f"layers, and method {self.method!r} trains a dense model "
                             "without masks; use training.storage = 'masked'.")
        updater = traits.updater
        if not updater.runs_on_sparse_storage():
            why = updater.sparse_storage_error or "it has no blockwise grow scores"
            raise UsageError(f"training.storage: method {self.method!r} cannot run on sparse "
                             f"storage: {why}; use training.storage = 'masked' or another "
                             "method.")

    @property
    def method_traits(self) -> rigl.methods.Method:
        """The registry row of ``method`` (masked, dense-to-sparse, FLOPs rule, ...)."""
        return rigl.methods.get_method(self.method, "training.method")

    @property
    def narrows_model(self) -> bool:
        """Whether the model is a dense one narrowed to the sparse model's parameter count
        (Small-Dense)."""
        return self.method_traits.narrowed

    @property
    def progress_verbosity(self) -> int:
        """``verbose``, with None resolved: a progress bar on a terminal, else lines."""
        if self.verbose is None:
            return 1 if sys.stdout.isatty() else 2
        return self.verbose

    @property
    def mock_data(self) -> bool:
        """Whether the data is mock: smoke runs train on it; dry runs read no data (the mock
        path only needs the known training-set size)."""
        return self.smoke or self.dry_run

    @property
    def dataset_options(self) -> dict:
        """Options given to ``get_dataset`` beyond the ``dataset.*`` bindings."""
        return {"image_size": SMOKE_IMAGE_SIZE} if (
            self.smoke and self.dataset == "imagenet2012") else {}

    def smoke_variant(self) -> TrainConfig:
        """The settings a smoke run trains with: ``SMOKE_STEPS`` steps of ``SMOKE_BATCH``
        examples, checkpointed at the end, logged every step, evaluated only at the end."""
        return dataclasses.replace(
            self, batch_size=SMOKE_BATCH, eval_batch_size=SMOKE_BATCH, train_steps=SMOKE_STEPS,
            epochs=None, multiplier=1.0, checkpoint_every_steps=SMOKE_STEPS, log_every_steps=1,
            eval_every_steps=None)

    def steps(self, num_train_examples: int) -> tuple[int, int]:
        """``(steps_per_epoch, total_steps)`` for a training set of that many examples:
        whole batches per epoch, and the run's length with ``multiplier`` applied."""
        steps_per_epoch = max(1, num_train_examples // self.batch_size)
        base_steps = (self.train_steps if self.train_steps is not None
                      else self.epochs * steps_per_epoch)
        return steps_per_epoch, int(round(base_steps * self.multiplier))


# ------------------------------------------------------------------------ validation helpers
# bool is an Integral and a Real too, but True as a step count or a rate is almost surely a
# slip; every check below refuses it.
def _check_choice(name: str, value, allowed) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise UsageError(f"{name}: unknown {value!r}; allowed: {tuple(allowed)}.")


def _check_int(name: str, value, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum or (
            maximum is not None and value > maximum):
        allowed = f"an integer >= {minimum}" if maximum is None else (
            f"an integer in [{minimum}, {maximum}]")
        raise UsageError(f"{name}: expected {allowed}, got {value!r}.")


def _check_real(name: str, value, minimum: float, maximum: float | None = None,
                open_minimum: bool = False) -> None:
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value) and (value > minimum if open_minimum else value >= minimum)
          and (maximum is None or value <= maximum))
    if not ok:
        low = f"> {minimum}" if open_minimum else f">= {minimum}"
        allowed = (f"a finite number {low}" if maximum is None
                   else f"a number in [{minimum}, {maximum}]")
        raise UsageError(f"{name}: expected {allowed}, got {value!r}.")

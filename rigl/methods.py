"""The one list of training methods: each method's name, label and traits, and its updater.

Training (``rigl.experiments``), FLOPs accounting (``rigl.flops``), the FLOPs table and the
sweeps all read this registry; nothing else lists methods. A method is a row of
``METHODS``:

=========== ============ ======== =============== =========== =============================
name        label        masks    dense-to-sparse FLOPs rule  updater
=========== ============ ======== =============== =========== =============================
dense       Dense        no       no              dense       none
small_dense Small-Dense  no       no              sparse      none (a narrowed dense model)
static      Static       yes      no              sparse      ``Static``
snip        SNIP         yes      yes             sparse      ``SNIP``
set         SET          yes      no              sparse      ``SET``
snfs        SNFS         yes      no              snfs        ``SNFS``
rigl        RigL         yes      no              rigl        ``RigL``
prune       Pruning      yes      yes             prune       ``GradualPruning``
granet      GraNet       yes      yes             granet      ``GraNet`` (``rigl/granet.py``)
srigl       SRigL        yes      no              rigl        ``SRigL`` (``rigl/srigl.py``)
=========== ============ ======== =============== =========== =============================

The order is the paper's table order (rows of tables, legends of plots), then the methods
that followed it. FLOPs rules are
those of ``rigl.flops.train_flops_per_step`` (Appendix H of the paper).

Where a new method plugs in: write its ``Updater`` subclass in ``rigl/updaters.py`` (it
overrides only its scores, see that module) and add one ``Method`` row here; training, the
FLOPs accounting, the FLOPs table and the sweeps then know it. Its constructor takes the
keyword arguments it needs out of ``UPDATER_ARGS``, so ``get_updater(name, **common)``
builds it like every other method.
"""

from __future__ import annotations

import dataclasses
import inspect

from rigl import updaters as _updaters
from rigl.granet import GraNet
from rigl.srigl import SRigL

# The keyword arguments an updater constructor may take; each method takes a subset.
UPDATER_ARGS = (
    "sparsity", "distribution", "custom_sparsity", "erk_power_scale", "initial_sparsity",
    "update_freq", "begin_step", "end_step", "drop_fraction", "drop_fraction_decay",
    "decay_power", "grow_init", "seed", "grad_accumulation_n", "pruning_scope", "gamma_sal",
    "drop_noise_std",
)
FLOPS_RULES = ("dense", "sparse", "snfs", "rigl", "prune", "granet")


@dataclasses.dataclass(frozen=True)
class Method:
    """One training method and its traits.

    Attributes:
        name: the name used by configs, ``get_updater`` and results files.
        label: the name printed in tables and plots.
        updater: its ``Updater`` class, or None for methods that never touch masks.
        masked: the model is sparsified (has masks).
        dense_to_sparse: the model starts dense (``sparsify(model, 0)``) and the updater
            prunes it to the targets; its inference FLOPs change during training.
        flops_rule: how ``rigl.flops.train_flops_per_step`` counts a training step.
        uses_sparsity: runs differ by sparsity and distribution (False: dense).
        one_distribution: runs differ by sparsity only (a small dense model matches the
            parameter count, which the first distribution already fixes).
        narrowed: a dense model narrowed to the sparse model's parameter count (Small-Dense).
    """

    name: str
    label: str
    updater: type[_updaters.Updater] | None
    masked: bool
    dense_to_sparse: bool
    flops_rule: str
    uses_sparsity: bool = True
    one_distribution: bool = False
    narrowed: bool = False

    def __post_init__(self):
        if self.flops_rule not in FLOPS_RULES:
            raise ValueError(f"flops_rule: unknown {self.flops_rule!r}; allowed: {FLOPS_RULES}.")
        if self.narrowed and self.masked:
            raise ValueError(f"{self.name}: a narrowed dense model has no masks.")
        if self.masked != (self.updater is not None):
            raise ValueError(f"{self.name}: a method has masks exactly when it has an updater.")

    @property
    def updater_args(self) -> tuple[str, ...]:
        """The keyword arguments of ``UPDATER_ARGS`` its updater's constructor takes."""
        if self.updater is None:
            return ()
        parameters = inspect.signature(self.updater.__init__).parameters
        return tuple(name for name in UPDATER_ARGS if name in parameters)


_ROWS = (
    Method("dense", "Dense", None, False, False, "dense", uses_sparsity=False),
    Method("small_dense", "Small-Dense", None, False, False, "sparse", one_distribution=True,
           narrowed=True),
    Method("static", "Static", _updaters.Static, True, False, "sparse"),
    Method("snip", "SNIP", _updaters.SNIP, True, True, "sparse"),
    Method("set", "SET", _updaters.SET, True, False, "sparse"),
    Method("snfs", "SNFS", _updaters.SNFS, True, False, "snfs"),
    Method("rigl", "RigL", _updaters.RigL, True, False, "rigl"),
    Method("prune", "Pruning", _updaters.GradualPruning, True, True, "prune"),
    Method("granet", "GraNet", GraNet, True, True, "granet"),
    Method("srigl", "SRigL", SRigL, True, False, "rigl"),
)
REGISTRY: dict[str, Method] = {method.name: method for method in _ROWS}
METHODS: tuple[str, ...] = tuple(REGISTRY)
UPDATERS: dict[str, type[_updaters.Updater]] = {
    m.name: m.updater for m in _ROWS if m.updater is not None}


def get_method(name: str, param: str = "method") -> Method:
    """The registry row of ``name``; a ValueError naming ``param`` if there is none."""
    if name not in REGISTRY:
        raise ValueError(f"{param}: unknown method {name!r}; allowed: {METHODS}.")
    return REGISTRY[name]


def get_updater(method: str, *, ignore_unused: bool = False, **kwargs) -> _updaters.Updater:
    """Builds the updater of ``method`` from keyword arguments common to every method.

    Every argument must be one of ``UPDATER_ARGS``. One the method does not take (Static
    has no ``drop_fraction``) is an error, unless ``ignore_unused`` (the experiment layer
    passes its whole ``updater.*`` configuration, whatever the method, and sets it).

    Example:
        >>> rigl.get_updater("rigl", update_freq=100, drop_fraction=0.3)
        >>> rigl.get_updater("prune", sparsity=0.9, end_step=10_000)

    Raises:
        ValueError: naming ``method`` if it is unknown or has no updater (dense,
            small_dense), or the argument that is unknown or not taken.
    """
    row = get_method(method)
    if row.updater is None:
        raise ValueError(f"method: {method!r} trains without masks and has no updater; "
                         f"methods with one: {tuple(UPDATERS)}.")
    for name in kwargs:
        if name not in UPDATER_ARGS:
            raise ValueError(f"{name}: not an updater argument; allowed: {UPDATER_ARGS}.")
    taken = row.updater_args
    unused = [name for name in kwargs if name not in taken]
    if unused and not ignore_unused:
        raise ValueError(f"{unused[0]}: {row.updater.__name__} does not take it; it takes "
                         f"{taken}.")
    return row.updater(**{name: value for name, value in kwargs.items() if name in taken})

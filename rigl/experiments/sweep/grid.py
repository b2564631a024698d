"""The sweep file and its grid: ``Sweep`` (the definition), ``Run`` (one cell and seed).

A sweep file binds one configurable, ``sweep``, in gin syntax::

    sweep.name = 'fashion_mnist_lenet300'
    sweep.base_configs = ['gin_configs/mnist_lenet300.gin']
    sweep.bindings = ["training.dataset='fashion_mnist'", "training.epochs=30"]
    sweep.methods = ['static', 'set', 'rigl']
    sweep.sparsities = [0.9, 0.95]
    sweep.distributions = ['uniform']
    sweep.seeds = [0, 1, 2]
    sweep.multipliers = [1]
    sweep.extra_runs = [
        {'method': 'dense'},
        {'method': 'rigl', 'sparsities': [0.95], 'multipliers': [2, 5]},
    ]

The grid is methods × distributions × sparsities × multipliers × seeds, except that a method
that ignores sparsity (``dense``: ``uses_sparsity`` False in ``rigl.methods``) gets one run
per multiplier and seed, and one with ``one_distribution`` (``small_dense``: its width matches
a parameter count, which uniform and ERK share) keeps only the first distribution. Each
``extra_runs`` entry is a dict expanded the same way; its keys (``method``/``methods``,
``sparsity``/``sparsities``, ``distribution``/``distributions``, ``multiplier``/``multipliers``,
``seed``/``seeds``, ``tag``, ``bindings``) default to the sweep's own values, so an entry names
only what differs. ``None`` as a sparsity or distribution leaves it to the configs (e.g. a run
with a ``training.custom_sparsity`` map).

The file is read with gin's parser but never enters gin's global configuration: it holds
literals only, and the runs see it only as the gin bindings each ``Run`` turns into.

Where new things plug in: a new method needs nothing here (add its row to ``rigl.methods``;
its traits decide which axes it uses). A new grid axis is a ``Sweep`` field, a ``Run``
field with its part of ``Run.cell`` (the workdir name) and its ``training_bindings``.
"""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Mapping

from gin import config_parser

from rigl import methods as _methods

# Methods whose runs ignore some grid axes (see the module docstring), from the registry.
NO_SPARSITY_METHODS = tuple(m for m in _methods.METHODS if not _methods.REGISTRY[m].uses_sparsity)
FIRST_DISTRIBUTION_METHODS = tuple(
    m for m in _methods.METHODS if _methods.REGISTRY[m].one_distribution)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SweepError(ValueError):
    """An invalid sweep file, or a workdir that does not belong to the current sweep."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of a sweep: a cell of the grid and a seed.

    Attributes:
        method: training method (``training.method``, via ``gin_configs/methods/<m>.gin``).
        seed: ``training.seed``.
        sparsity, distribution: bound as ``training.sparsity`` / ``training.distribution``
            unless None (then the configs decide).
        multiplier: ``training.multiplier`` (the paper's "Mx" runs).
        tag: optional label distinguishing cells that differ only in ``bindings``.
        bindings: extra gin bindings of this run (from an ``extra_runs`` entry).
    """

    method: str
    seed: int
    sparsity: float | None = None
    distribution: str | None = None
    multiplier: float = 1
    tag: str | None = None
    bindings: tuple[str, ...] = ()

    @property
    def cell(self) -> str:
        """The run's name without its seed: runs of one cell are averaged together."""
        parts = [self.method]
        if self.distribution is not None:
            parts.append(self.distribution)
        if self.sparsity is not None:
            parts.append(f"s{self.sparsity:g}")
        if self.multiplier != 1:
            parts.append(f"x{self.multiplier:g}")
        if self.tag:
            parts.append(self.tag)
        return "_".join(parts)

    @property
    def name(self) -> str:
        """Deterministic, readable workdir name, e.g. ``rigl_erk_s0.95_x2_seed1``."""
        return f"{self.cell}_seed{self.seed}"

    def training_bindings(self) -> list[str]:
        """The gin bindings that make this cell and seed (after the sweep's own bindings)."""
        bindings = []
        if self.sparsity is not None:
            bindings.append(f"training.sparsity={self.sparsity!r}")
        if self.distribution is not None:
            bindings.append(f"training.distribution={self.distribution!r}")
        bindings.append(f"training.multiplier={self.multiplier!r}")
        bindings.append(f"training.seed={self.seed!r}")
        return bindings + list(self.bindings)


_ENTRY_KEYS = {"method": "methods", "sparsity": "sparsities", "distribution": "distributions",
               "multiplier": "multipliers", "seed": "seeds"}


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A sweep definition (see the module docstring for the file format).

    Attributes:
        name: the sweep's name (default folder names: ``workdirs/sweeps/<name>``,
            ``results/<name>``).
        base_configs: gin files of every run, repository-relative, before the method's file.
        bindings: gin bindings of every run, before the cell's own.
        methods, sparsities, distributions, seeds, multipliers: the grid.
        extra_runs: dicts, each expanded as a small grid of its own (defaults: the sweep's).
    """

    name: str
    base_configs: tuple[str, ...] = ()
    bindings: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    sparsities: tuple[float | None, ...] = (None,)
    distributions: tuple[str | None, ...] = (None,)
    seeds: tuple[int, ...] = (0,)
    multipliers: tuple[float, ...] = (1,)
    extra_runs: tuple[Mapping, ...] = ()

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise SweepError(f"sweep.name: expected a folder-safe name, got {self.name!r}.")
        for field in ("base_configs", "bindings"):
            value = getattr(self, field)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise SweepError(f"sweep.{field}: expected a list of strings, got {value!r}.")
            object.__setattr__(self, field, tuple(value))
        for field in ("methods", "sparsities", "distributions", "seeds", "multipliers"):
            object.__setattr__(self, field, _check_axis(f"sweep.{field}", field,
                                                        getattr(self, field)))
        if isinstance(self.extra_runs, Mapping) or not all(
                isinstance(e, Mapping) for e in self.extra_runs):
            raise SweepError("sweep.extra_runs: expected a list of dicts, got "
                             f"{self.extra_runs!r}.")
        object.__setattr__(self, "extra_runs", tuple(dict(e) for e in self.extra_runs))
        if not self.methods and not self.extra_runs:
            raise SweepError("sweep.methods: empty (and no sweep.extra_runs): nothing to run.")
        self.runs()  # validates the extra runs and the uniqueness of run names

    def runs(self) -> list[Run]:
        """Every run, seed-major (all cells of the first seed first, so an interrupted sweep
        has whole seeds to aggregate), without duplicates."""
        runs = _expand(self.methods, self.sparsities, self.distributions, self.multipliers,
                       self.seeds, None, ())
        for i, entry in enumerate(self.extra_runs):
            runs += _expand_entry(f"sweep.extra_runs[{i}]", entry, self)
        unique: dict[str, Run] = {}
        for run in runs:
            if run.name in unique and unique[run.name] != run:
                raise SweepError(
                    f"sweep.extra_runs: two different runs are both named {run.name!r} "
                    f"({unique[run.name]} and {run}); give one of them a 'tag'.")
            unique.setdefault(run.name, run)
        order = {name: i for i, name in enumerate(unique)}
        return sorted(unique.values(), key=lambda r: (r.seed, order[r.name]))


def _check_axis(where: str, axis: str, values) -> tuple:
    if isinstance(values, str | int | float) or values is None:
        raise SweepError(f"{where}: expected a list, got {values!r}.")
    values = tuple(values)
    for v in values:
        if axis == "methods":
            ok = isinstance(v, str) and re.match(r"^[a-z0-9_]+$", v)
        elif axis == "sparsities":
            ok = v is None or (isinstance(v, int | float) and not isinstance(v, bool)
                               and 0 <= v < 1)
        elif axis == "distributions":
            ok = v is None or (isinstance(v, str) and re.match(r"^[a-z0-9_]+$", v))
        elif axis == "seeds":
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:  # multipliers
            ok = isinstance(v, int | float) and not isinstance(v, bool) and v > 0
        if not ok:
            expected = {"methods": "method names", "sparsities": "numbers in [0, 1) or None",
                        "distributions": "distribution names or None", "seeds": "integers",
                        "multipliers": "positive numbers"}[axis]
            raise SweepError(f"{where}: expected {expected}, got {v!r}.")
    if axis != "methods" and not values:
        raise SweepError(f"{where}: empty.")
    if len(set(values)) != len(values):
        raise SweepError(f"{where}: repeated values in {list(values)}.")
    if axis == "multipliers":
        values = tuple(int(v) if float(v).is_integer() else float(v) for v in values)
    return values


def _expand(methods, sparsities, distributions, multipliers, seeds, tag, bindings) -> list[Run]:
    runs = []
    for method in methods:
        dists, sparse = distributions, sparsities
        if method in NO_SPARSITY_METHODS:
            dists, sparse = (None,), (None,)
        elif method in FIRST_DISTRIBUTION_METHODS:
            dists = distributions[:1]
        for distribution in dists:
            for sparsity in sparse:
                for multiplier in multipliers:
                    for seed in seeds:
                        runs.append(Run(method, seed, sparsity, distribution, multiplier,
                                        tag, tuple(bindings)))
    return runs


def _expand_entry(where: str, entry: Mapping, sweep: Sweep) -> list[Run]:
    allowed = set(_ENTRY_KEYS) | set(_ENTRY_KEYS.values()) | {"tag", "bindings"}
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise SweepError(f"{where}: unknown keys {unknown}; allowed: {sorted(allowed)}.")
    axes = {}
    for single, plural in _ENTRY_KEYS.items():
        if single in entry and plural in entry:
            raise SweepError(f"{where}: give {single!r} or {plural!r}, not both.")
        if single in entry:
            axes[plural] = _check_axis(f"{where}[{single!r}]", plural, [entry[single]])
        elif plural in entry:
            axes[plural] = _check_axis(f"{where}[{plural!r}]", plural, entry[plural])
        else:
            axes[plural] = getattr(sweep, plural)
    if not axes["methods"]:
        raise SweepError(f"{where}: no method.")
    tag = entry.get("tag")
    if tag is not None and (not isinstance(tag, str) or not _NAME.match(tag)):
        raise SweepError(f"{where}['tag']: expected a folder-safe name, got {tag!r}.")
    bindings = entry.get("bindings", ())
    if isinstance(bindings, str) or not all(isinstance(b, str) for b in bindings):
        raise SweepError(f"{where}['bindings']: expected a list of strings, got {bindings!r}.")
    return _expand(axes["methods"], axes["sparsities"], axes["distributions"],
                   axes["multipliers"], axes["seeds"], tag, bindings)


class _NoReferences(config_parser.ParserDelegate):
    """Sweep files hold literals only: no ``@configurable`` references, no ``%MACROS``."""

    def configurable_reference(self, scoped_configurable_name, evaluate):
        raise SweepError(f"sweep file: configurable references (@{scoped_configurable_name}) "
                         "are not allowed; use literals.")

    def macro(self, macro_name):
        raise SweepError(f"sweep file: macros (%{macro_name}) are not allowed; use literals.")


def parse_sweep(text_or_file) -> Sweep:
    """A ``Sweep`` from gin-syntax text (or an open file) binding only ``sweep.*``.

    gin's parser reads it; gin's global configuration is not touched.
    """
    fields = {f.name for f in dataclasses.fields(Sweep)}
    values = {}
    source = io.StringIO(text_or_file) if isinstance(text_or_file, str) else text_or_file
    for statement in config_parser.ConfigParser(source, _NoReferences()):
        where = f"line {statement.location.line_num}"
        if isinstance(statement, config_parser.BlockDeclaration) and (
                statement.selector == "sweep" and not statement.scope):
            continue
        if not isinstance(statement, config_parser.BindingStatement):
            raise SweepError(f"sweep file, {where}: only `sweep.<field> = <value>` bindings "
                             f"are allowed, not {type(statement).__name__}.")
        if statement.scope or statement.selector != "sweep":
            key = "/".join(filter(None, [statement.scope, statement.selector]))
            raise SweepError(f"sweep file, {where}: {key}.{statement.arg_name}: only sweep.* "
                             "is allowed here (training bindings go in sweep.bindings).")
        if statement.arg_name not in fields:
            raise SweepError(f"sweep file, {where}: unknown sweep.{statement.arg_name}; "
                             f"allowed: {sorted(fields)}.")
        if statement.arg_name in values:
            raise SweepError(f"sweep file, {where}: sweep.{statement.arg_name} bound twice.")
        values[statement.arg_name] = statement.value
    if "name" not in values:
        raise SweepError("sweep file: sweep.name is required.")
    return Sweep(**values)


def load_sweep(path: str) -> Sweep:
    """The ``Sweep`` defined by the file at ``path``."""
    with open(path) as f:
        return parse_sweep(f)


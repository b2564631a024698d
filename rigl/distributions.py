"""Per-layer sparsity distributions (Evci et al. 2020, "Rigging the Lottery", Sec. 3).

* ``uniform``: every layer gets the target sparsity.
* ``er`` (Erdos-Renyi): density proportional to ``(n_in + n_out) / (n_in * n_out)``.
* ``erk`` (Erdos-Renyi-Kernel): density proportional to ``sum(shape) / prod(shape)``, so the
  spatial dims of convolution kernels count too.

For ``er``/``erk`` one scale factor is solved so that the total number of nonzeros matches what
``uniform`` keeps; layers whose density would exceed 1 are made dense and the rest rebalanced.
Stdlib only (no TF), so it can be used and tested without building a model.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

DISTRIBUTIONS = ("uniform", "er", "erk")


def num_zeros(sparsity: float, size: int) -> int:
    """Returns ``floor(sparsity * size)``, the zeros of a ``size``-weight layer at ``sparsity``.

    The product is rounded to 6 decimals first, so float error does not lose a weight
    (``0.29 * 100 == 28.999999999999996`` still gives 29).
    """
    return int(math.floor(round(sparsity * size, 6)))


def _is_real(value: object) -> bool:
    # bool is a numbers.Real too, but True as a sparsity or exponent is almost surely a bug.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def validate_sparsity(value: object, name: str) -> float:
    """Returns ``float(value)`` if it is a real number in ``[0, 1)``.

    Raises:
        ValueError: Naming ``name``, if ``value`` is not a real number, is NaN or is out of range.
    """
    if not _is_real(value) or math.isnan(value) or not 0 <= value < 1:
        raise ValueError(f"`{name}` must be a number in [0, 1), got {value!r}.")
    return float(value)


def _check_shapes(shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    if not shapes:
        raise ValueError("`shapes` must map at least one layer name to a kernel shape.")
    checked = {}
    for name, shape in shapes.items():
        try:  # Accept any iterable of ints (tuple, list, np.ndarray, tf.TensorShape).
            dims = tuple(shape)
        except TypeError:
            dims = ()
        if not dims or not all(
            _is_real(d) and isinstance(d, numbers.Integral) and d > 0 for d in dims
        ):
            raise ValueError(f"`shapes['{name}']` must be positive integer dims, got {shape!r}.")
        checked[name] = tuple(int(d) for d in dims)  # Python ints: sizes never overflow.
    return checked


def layer_sparsities(
    shapes: Mapping[str, Sequence[int]],
    sparsity: float,
    distribution: str = "uniform",
    custom_sparsity: Mapping[str, float] | None = None,
    erk_power_scale: float = 1.0,
    density_dims: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, float]:
    """Computes the sparsity of every layer for a target overall sparsity.

    Args:
        shapes: Layer name -> kernel shape, e.g. ``(fan_in, units)`` for Dense or
            ``(kh, kw, cin, cout)`` for Conv2D.
        sparsity: Target sparsity in ``[0, 1)``.
        distribution: One of ``DISTRIBUTIONS``. ``er`` uses the last two dims of each shape
            (all dims of shapes with fewer than two, like ``erk``); ``erk`` uses all dims.
        custom_sparsity: Layer name -> fixed sparsity in ``[0, 1)``. These layers keep their
            value and are left out of the ER/ERK balancing entirely.
        erk_power_scale: Exponent of the ERK raw density, finite and ``>= 0`` (0 makes all raw
            densities equal). Only used by ``erk``.
        density_dims: Layer name -> the dims ER/ERK read instead of its shape (sizes still
            come from ``shapes``): e.g. an ``EinsumDense`` kernel ``(d, heads, head_dim)`` read
            as the matrix ``(d, heads·head_dim)`` (``rigl.kernels``).

    Returns:
        Layer name -> sparsity, in the key order of ``shapes``.

    Raises:
        ValueError: If an argument is invalid, or if no scale factor gives every balanced
            layer a sparsity in ``[0, 1)``.
    """
    shapes = _check_shapes(shapes)
    sparsity = validate_sparsity(sparsity, "sparsity")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"`distribution` must be one of {DISTRIBUTIONS}, got {distribution!r}.")
    if not _is_real(erk_power_scale) or not math.isfinite(erk_power_scale) or erk_power_scale < 0:
        raise ValueError(f"`erk_power_scale` must be finite and >= 0, got {erk_power_scale!r}.")
    custom = dict(custom_sparsity or {})
    for name, value in custom.items():
        if name not in shapes:
            raise ValueError(f"`custom_sparsity` has unknown layer {name!r}; known: {[*shapes]}.")
        custom[name] = validate_sparsity(value, f"custom_sparsity['{name}']")
    if sparsity == 0 or distribution == "uniform":
        return {name: custom.get(name, sparsity) for name in shapes}

    sizes = {name: math.prod(shape) for name, shape in shapes.items() if name not in custom}
    # ER only looks at fan-in/fan-out, i.e. the last two dims of a kernel.
    read = dict(shapes)  # the dims ER/ERK read
    if density_dims:
        unknown = sorted(set(density_dims) - set(shapes))
        if unknown:
            raise ValueError(f"`density_dims` has unknown layers {unknown}; known: {[*shapes]}.")
        for name, value in density_dims.items():
            value = tuple(value)
            if not value or not all(isinstance(d, numbers.Integral) and d > 0 for d in value):
                raise ValueError(f"`density_dims['{name}']` must be positive integer dims, got "
                                 f"{value!r}.")
            read[name] = tuple(int(d) for d in value)
    kept = {name: read[name][-2:] if distribution == "er" else read[name] for name in sizes}
    base = {name: sum(dims) / math.prod(dims) for name, dims in kept.items()}
    power = erk_power_scale if distribution == "erk" else 1.0
    # Only ratios of raw densities matter; dividing by the largest base before the power keeps
    # large exponents from overflowing. Equal shapes still give bit-identical raw values.
    top_base = max(base.values(), default=1.0)
    raw = {name: (b / top_base) ** power for name, b in base.items()}

    budget = sum(n - num_zeros(sparsity, n) for n in sizes.values())  # exact (int) nonzeros
    dense: set[str] = set()
    eps = 0.0
    while free := [name for name in sizes if name not in dense]:
        remaining = budget - sum(sizes[name] for name in dense)
        denominator = sum(raw[name] * sizes[name] for name in free)
        if remaining <= 0 or denominator <= 0:
            raise _infeasible(sparsity, custom, "the balanced layers would be fully pruned")
        eps = remaining / denominator
        top = max(raw[name] for name in free)
        if eps * top <= 1:
            break
        # Densest layers saturate first; all layers tied at the top raw density go dense together.
        dense.update(name for name in free if raw[name] == top)
    else:
        # Cannot happen mathematically (budget <= total size); a safety net against float drift.
        if budget != sum(sizes.values()):
            raise _infeasible(sparsity, custom, "every balanced layer is dense")

    result: dict[str, float] = {}
    for name in shapes:
        if name in custom:
            result[name] = custom[name]
        elif name in dense:
            result[name] = 0.0
        else:
            result[name] = 1.0 - eps * raw[name]  # >= 0 because eps * raw <= eps * top <= 1
            if result[name] >= 1:  # raw density underflowed (huge erk_power_scale)
                raise _infeasible(sparsity, custom, f"layer {name!r} would be fully pruned")
    return result


def _infeasible(sparsity: float, custom: Mapping[str, float], why: str) -> ValueError:
    return ValueError(
        f"No scale factor gives every balanced layer a sparsity in [0, 1) for `sparsity`="
        f"{sparsity!r} and `custom_sparsity`={custom!r}: {why}."
    )


def total_sparsity(shapes: Mapping[str, Sequence[int]], sparsities: Mapping[str, float]) -> float:
    """Returns the overall sparsity ``sum_l num_zeros(s_l, N_l) / sum_l N_l``.

    Args:
        shapes: Layer name -> kernel shape (``N_l`` is the product of its dims).
        sparsities: Layer name -> sparsity; must contain every name in ``shapes``.
    """
    sizes = {name: math.prod(int(d) for d in shape) for name, shape in shapes.items()}
    zeros = sum(num_zeros(sparsities[name], n) for name, n in sizes.items())
    return zeros / sum(sizes.values())

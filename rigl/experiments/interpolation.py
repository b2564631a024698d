"""Linear interpolation between two sparse solutions, and the loss along the straight path.

"Rigging the Lottery" (Evci et al. 2020, https://arxiv.org/abs/1911.11134), in its last
section, evaluates the training loss on the straight line between a static-sparse solution
and a pruning solution: a barrier on that line is the local minimum static training cannot
leave. ``scripts/interpolate.py`` runs the whole experiment; this module is its pure part.

For two models ``start`` and ``end`` of the same structure, the point at ``alpha`` is

    w(alpha) = (1 - alpha) * w_start + alpha * w_end,    alpha in [0, 1],

for every weight but the masks, written into a third model of that structure. What happens
to the masks is the ``mask`` argument, the reference's ``--load_mask_from``
(``rigl/rigl_tf2/interpolate.py``: 0, 1 or -1):

* ``"start"`` (its default) and ``"end"``: the point takes that endpoint's masks and its
  kernels are zero outside them. With both endpoints on the same mask (a static run on a
  pruning solution's mask, as the reference's experiments and ``scripts/interpolate.py``)
  the whole path stays in that sparse subspace;
* ``"union"``: the masks are ``start | end``. Masked kernels are zero outside their own
  masks, so the line lies in the union anyway; the reference, loading no mask, leaves the
  layers dense, which computes the same function.

At ``alpha = 0`` and ``1`` the point is the endpoint exactly (``0 * w == 0``), except that
``"start"`` at ``alpha = 1`` (``"end"`` at 0) also removes the weights of the other endpoint
that lie outside the chosen masks. ``alpha`` outside [0, 1] is refused: the reference also
extrapolates (-0.2 to 1.2), which says nothing about what lies *between* two solutions.

Every weight that is not a mask is interpolated, non-trainable floats (batch-norm statistics)
too; the reference interpolates the trainable variables and keeps ``end``'s statistics.
Neither re-estimates them; the models here have none.

    python scripts/interpolate.py   # trains the solutions, writes results/interpolation/
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import keras
import numpy as np

from rigl.layers import is_masked
from rigl.losses import cross_entropy
from rigl.masking import walk_layers
from rigl.sparse_layers import SparseDense

MASK_CHOICES = ("start", "end", "union")


def check_alpha(alpha) -> float:
    """Returns ``float(alpha)`` if it is a real number in [0, 1].

    Raises:
        ValueError: naming ``alpha``, for anything else (a bool, NaN, out of range).
    """
    if (not isinstance(alpha, numbers.Real) or isinstance(alpha, bool)
            or math.isnan(alpha) or not 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha: expected a number in [0, 1] (0 is start, 1 is end), "
                         f"got {alpha!r}.")
    return float(alpha)


def path_alphas(points: int) -> np.ndarray:
    """``points`` evenly spaced values of alpha from 0 to 1, both included (``points >= 2``)."""
    if isinstance(points, bool) or not isinstance(points, numbers.Integral) or points < 2:
        raise ValueError(f"points: expected an integer >= 2 (alpha = 0 and 1 included), got "
                         f"{points!r}.")
    return np.linspace(0.0, 1.0, int(points))


def _layout(model) -> list[tuple]:
    """One ``(path, shape, dtype, role, mask position)`` per weight of ``model``, in order:
    role "mask", "masked kernel" (with the position of its mask) or "weight"."""
    position = {id(v): i for i, v in enumerate(model.weights)}
    mask_of = {}
    for layer in walk_layers(model):
        if isinstance(layer, SparseDense):
            raise ValueError(
                f"model: layer {layer.name!r} is a SparseDense (truly sparse storage), whose "
                "stored entries sit at different positions in different models; interpolate "
                "masked models (rigl.to_masked).")
        if is_masked(layer):
            for weight in layer.masked_weights():
                mask_of[position[id(weight.masked_kernel)]] = position[id(weight.mask)]
    masks = set(mask_of.values())
    return [(v.path, tuple(v.shape), str(v.dtype),
             "mask" if i in masks else "masked kernel" if i in mask_of else "weight",
             mask_of.get(i)) for i, v in enumerate(model.weights)]


def _check_same_layout(start, end, model) -> list[tuple]:
    """``start``'s layout, once ``end`` and ``model`` are checked to have the same one."""
    reference = _layout(start)
    for param, other_model in (("end", end), ("model", model)):
        other = _layout(other_model)
        if len(other) != len(reference):
            raise ValueError(f"{param}: has {len(other)} weights, start has {len(reference)}; "
                             "the models must be built the same way.")
        for i, (mine, theirs) in enumerate(zip(other, reference)):
            if mine[1:] != theirs[1:]:
                raise ValueError(
                    f"{param}: weight {i} ({mine[0]}) is {_describe(mine)}, but start's "
                    f"({theirs[0]}) is {_describe(theirs)}; the models must be built the "
                    "same way.")
    return reference


def _describe(entry: tuple) -> str:
    return f"a {entry[3]} of shape {entry[1]} and dtype {entry[2]}"


def interpolate(model, start, end, alpha: float, mask: str = "start") -> None:
    """Sets ``model``'s weights to the point ``alpha`` of the line from ``start`` to ``end``.

    Args:
        model: the model written to (it may be ``start`` or ``end`` only if it is not read
            again: its weights are overwritten).
        start, end: the endpoints (``alpha = 0`` and ``1``), built like ``model``.
        alpha: position on the line, in [0, 1].
        mask: ``"start"``, ``"end"`` or ``"union"``: the masks of the point (module doc).

    Raises:
        ValueError: naming the parameter, for ``alpha`` outside [0, 1], an unknown ``mask``,
            models built differently (weight counts, shapes, dtypes or masks that differ),
            or a model with truly sparse layers.
    """
    alpha = check_alpha(alpha)
    if mask not in MASK_CHOICES:
        raise ValueError(f"mask: unknown {mask!r}; allowed: {MASK_CHOICES}.")
    layout = _check_same_layout(start, end, model)
    a_values = [keras.ops.convert_to_numpy(v) for v in start.weights]
    b_values = [keras.ops.convert_to_numpy(v) for v in end.weights]
    point = {}
    for i, (_, _, _, role, _) in enumerate(layout):
        if role == "mask":
            a, b = a_values[i] != 0, b_values[i] != 0
            point[i] = {"start": a, "end": b, "union": a | b}[mask]
    for i, (path, _, _, role, mask_position) in enumerate(layout):
        if role == "mask":
            continue
        a, b = a_values[i], b_values[i]
        if not np.issubdtype(a.dtype, np.floating):
            if not np.array_equal(a, b):
                raise ValueError(f"end: weight {i} ({path}) is not a float and differs from "
                                 "start's; only floats can be interpolated.")
            point[i] = a
            continue
        value = (1.0 - alpha) * a + alpha * b
        if role == "masked kernel":
            value = np.where(point[mask_position], value, 0)
        point[i] = value.astype(a.dtype)
    for i, variable in enumerate(model.weights):
        variable.assign(point[i])


def evaluate(model, x, y, batch_size: int = 10_000) -> dict[str, float]:
    """Mean softmax cross-entropy (no weight decay) and accuracy of ``model`` on ``(x, y)``.

    The loss the reference's ``test_model`` reports; the regularisation terms the compiled
    loss adds are left out, so models with different weights compare on the data alone.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}.")
    n = len(y)
    if n == 0:
        raise ValueError("y: no examples to evaluate on.")
    total_loss = 0.0
    correct = 0
    for first in range(0, n, batch_size):
        logits = model(x[first:first + batch_size], training=False)
        labels = y[first:first + batch_size]
        total_loss += float(keras.ops.sum(cross_entropy(labels, logits)))
        predicted = np.argmax(keras.ops.convert_to_numpy(logits), axis=-1)
        correct += int(np.sum(predicted == np.asarray(labels)))
    return {"loss": total_loss / n, "accuracy": correct / n}


def loss_along_path(model, start, end, alphas: Sequence[float], x, y, mask: str = "start",
                    batch_size: int = 10_000) -> list[dict[str, float]]:
    """``evaluate`` at every ``alpha`` of the line from ``start`` to ``end`` (written into
    ``model``): one ``{"alpha", "loss", "accuracy"}`` per alpha, in the given order."""
    rows = []
    for alpha in alphas:
        interpolate(model, start, end, alpha, mask)
        rows.append({"alpha": float(alpha), **evaluate(model, x, y, batch_size)})
    return rows


def barrier(rows: Sequence[dict]) -> float:
    """The loss barrier of a path: the largest excess of the loss over the straight line
    between the endpoints' losses, ``max_a [L(a) - ((1 - a) L(0) + a L(1))]`` (Frankle et al.
    2020, https://arxiv.org/abs/1912.05671); 0 or less when the path has no bump.

    Args:
        rows: ``loss_along_path``'s rows; alpha 0 and 1 among them.
    """
    by_alpha = {row["alpha"]: row["loss"] for row in rows}
    if 0.0 not in by_alpha or 1.0 not in by_alpha:
        raise ValueError(f"rows: need alpha = 0 and 1 among the points, got "
                         f"{sorted(by_alpha)}.")
    low, high = by_alpha[0.0], by_alpha[1.0]
    return max(loss - ((1.0 - a) * low + a * high) for a, loss in by_alpha.items())

"""The one place that reads and resets optimizer slots (momentum, Adam moments, ...).

Keras 3 optimizers keep one list per kind of slot, indexed like the optimizer's trainable
variables (``SGD.momentums``, ``Adam._momentums`` and ``Adam._velocities``, ...). Rather than
naming every optimizer, slots are found as those per-variable lists.
"""

from __future__ import annotations

import keras

# Per-variable lists holding a first moment (a running average of the gradient).
_FIRST_MOMENT_LISTS = ("momentums", "_momentums")


def unwrap(optimizer):
    """The optimizer that owns the slots (through LossScaleOptimizer wrappers)."""
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    return optimizer


def _slot_lists(optimizer) -> dict[str, list]:
    optimizer = unwrap(optimizer)
    tracked = getattr(optimizer, "_trainable_variables", None) or []
    lists = {}
    for name, value in vars(optimizer).items():
        if name == "_trainable_variables" or not isinstance(value, list | tuple):
            continue
        if len(value) != len(tracked) or not value:
            continue
        if all(v is None or isinstance(v, keras.Variable) for v in value):
            lists[name] = value
    return lists


def _index(optimizer, variable) -> int | None:
    optimizer = unwrap(optimizer)
    if not optimizer.built:
        return None
    try:
        return optimizer._get_variable_index(variable)
    except KeyError:
        return None


def slots(optimizer, variable) -> list:
    """Every slot variable ``optimizer`` keeps for ``variable`` (empty if none or unbuilt)."""
    index = _index(optimizer, variable)
    if index is None:
        return []
    found = []
    for values in _slot_lists(optimizer).values():
        slot = values[index]
        if slot is not None and tuple(slot.shape) == tuple(variable.shape):
            found.append(slot)
    return found


def first_moment(optimizer, variable):
    """The slot holding ``variable``'s gradient momentum (SGD momentum, Adam's m).

    Raises:
        ValueError: naming ``optimizer`` when it keeps no first moment (plain SGD with
            momentum=0, Adagrad, ...) or is not built for ``variable``.
    """
    index = _index(optimizer, variable)
    lists = _slot_lists(optimizer)
    for name in _FIRST_MOMENT_LISTS:
        if index is not None and name in lists and lists[name][index] is not None:
            return lists[name][index]
    raise ValueError(
        f"optimizer: {type(unwrap(optimizer)).__name__} keeps no gradient momentum for "
        f"{variable.path!r}; SNFS grows by it, so use SGD with momentum > 0, Adam, or another "
        "optimizer with a first-moment slot (and build it on the model's variables)."
    )

"""Schedules over training steps: update windows, drop-fraction decay, pruning, learning rate.

The mask schedules are frozen dataclasses validated at construction, evaluated in Python on
the step number, so the compiled update function receives plain numbers and never retraces.
The learning-rate schedule (``WarmupSchedule``) is a Keras schedule evaluated in the graph.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import keras

DROP_FRACTION_DECAYS = ("constant", "cosine", "inverse_power")


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}.")
    return int(value)


def _check_real(name: str, value, low: float, high: float, high_open: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and low <= value and (value < high if high_open
                                                            else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name}: must be a number in [{low}, {high}{bracket}, got {value!r}.")
    return float(value)


@dataclasses.dataclass(frozen=True)
class UpdateSchedule:
    """Mask updates every ``update_freq`` steps from ``begin_step`` to ``end_step`` inclusive.

    Step ``t`` is the number of optimizer steps already applied (``optimizer.iterations``):
    the update at ``t`` happens before the ``t``-th gradient step is taken.

    Attributes:
        update_freq: ΔT, steps between updates (>= 1).
        begin_step: first update step.
        end_step: last step that may be an update step; ``None`` until the training length
            is known, then ``resolve(total_steps)`` sets it to 75% of training.
        include_end_step: also update at ``end_step`` when it is off the ΔT grid (gradual
            pruning uses this to land exactly on its final sparsity).
    """

    update_freq: int = 100
    begin_step: int = 0
    end_step: int | None = None
    include_end_step: bool = False

    def __post_init__(self):
        _check_int("update_freq", self.update_freq, 1)
        _check_int("begin_step", self.begin_step, 0)
        if self.end_step is not None:
            _check_int("end_step", self.end_step, 0)
            if self.end_step < self.begin_step:
                raise ValueError(
                    f"end_step: must be >= begin_step ({self.begin_step}), got {self.end_step}."
                )

    def resolve(self, total_steps: int) -> UpdateSchedule:
        """This schedule with ``end_step`` defaulted to 75% of ``total_steps`` if unset."""
        if self.end_step is not None:
            return self
        _check_int("total_steps", total_steps, 1)
        return dataclasses.replace(self, end_step=max(self.begin_step, int(0.75 * total_steps)))

    def end(self) -> int:
        """``end_step``, or a ValueError naming it while it is unknown."""
        if self.end_step is None:
            raise ValueError(
                "end_step: unknown; pass end_step, or total steps (model.fit knows them) so "
                "that it defaults to 75% of training."
            )
        return self.end_step

    def is_update_step(self, step: int) -> bool:
        end = self.end()
        if step < self.begin_step or step > end:
            return False
        return (step - self.begin_step) % self.update_freq == 0 or (
            self.include_end_step and step == end
        )

    def last_update_step(self, step: int) -> int | None:
        """The latest update step ``<= step``, or ``None`` if there is none yet."""
        end = self.end()
        if step < self.begin_step:
            return None
        if self.include_end_step and step >= end:
            return end
        last = min(step, end)
        return last - (last - self.begin_step) % self.update_freq


@dataclasses.dataclass(frozen=True)
class DropFraction:
    """The fraction of active connections dropped (and regrown) at an update step.

    ``constant``: f(t) = α; ``cosine``: f(t) = α/2 · (1 + cos(π t / T_end)) (the paper's
    default); ``inverse_power``: f(t) = α · (1 - t / T_end)^k.
    """

    initial: float = 0.3
    decay: str = "cosine"
    power: float = 1.0

    def __post_init__(self):
        _check_real("drop_fraction", self.initial, 0.0, 1.0)
        if self.decay not in DROP_FRACTION_DECAYS:
            raise ValueError(
                f"drop_fraction_decay: unknown {self.decay!r}; allowed: {DROP_FRACTION_DECAYS}."
            )
        _check_real("decay_power", self.power, 0.0, math.inf, high_open=True)

    def __call__(self, step: int, end_step: int) -> float:
        if self.decay == "constant" or end_step <= 0:
            return self.initial
        progress = min(max(step / end_step, 0.0), 1.0)
        if self.decay == "cosine":
            return 0.5 * self.initial * (1.0 + math.cos(math.pi * progress))
        return self.initial * (1.0 - progress) ** self.power


def polynomial_sparsity(
    step: int, final: float, initial: float, begin_step: int, end_step: int, power: float = 3.0
) -> float:
    """Zhu & Gupta (2017) gradual pruning: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t_end - t0))^3.

    Before ``begin_step`` the sparsity is ``initial``; from ``end_step`` on it is ``final``.
    """
    if step <= begin_step:
        return initial
    if step >= end_step:
        return final
    progress = (step - begin_step) / (end_step - begin_step)
    return final + (initial - final) * (1.0 - progress) ** power


# ------------------------------------------------------------------- learning rate
# Registered with Keras (package "rigl"), so that models saved with it load after
# `import rigl`.


@keras.saving.register_keras_serializable(package="rigl")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``base``, then constant, step decay or cosine decay.

    Args:
        base: peak learning rate.
        total_steps: training length (for cosine).
        warmup_steps: steps of linear warm-up from ~0 to ``base``.
        schedule: "constant", "step" (multiply by ``decay_factor`` at every boundary) or
            "cosine" (from ``base`` after warm-up to 0 at ``total_steps``).
        boundaries: steps where "step" decays.
        decay_factor: multiplier applied at each boundary.
    """

    def __init__(self, base, total_steps, warmup_steps=0, schedule="constant",
                 boundaries=(), decay_factor=0.1):
        self.base = float(base)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.schedule = schedule
        self.boundaries = [int(b) for b in boundaries]
        self.decay_factor = float(decay_factor)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        if self.schedule == "step":
            lr = keras.ops.convert_to_tensor(self.base, "float32")
            for boundary in self.boundaries:
                lr = keras.ops.where(step >= boundary, lr * self.decay_factor, lr)
        elif self.schedule == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = keras.ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
            lr = 0.5 * self.base * (1.0 + keras.ops.cos(math.pi * progress))
        else:
            lr = keras.ops.convert_to_tensor(self.base, "float32")
        if self.warmup_steps:
            warm = self.base * (step + 1.0) / self.warmup_steps
            lr = keras.ops.where(step < self.warmup_steps, warm, lr)
        return lr

    def get_config(self):
        return {"base": self.base, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "schedule": self.schedule,
                "boundaries": self.boundaries, "decay_factor": self.decay_factor}

"""What changes step by step over a run: the learning rate and the KL weight β (optax schedules).

Both are functions of the step, counted from 0, and both are written in epochs on the
command line (`--lr-warmup-epochs`, `--lr-decay-epochs`, `--kl-warmup-epochs`), turned into
steps here. The course trains with a constant learning rate and β = 1.
"""

from __future__ import annotations

from typing import Literal

import optax

LearningRateScheduleName = Literal["constant", "cosine", "exponential"]


def kl_weight_schedule(weight: float = 1.0, warmup_steps: int = 0) -> optax.Schedule:
    """β, the KL term's weight, at each step: `weight`, reached linearly from 0 over the
    first `warmup_steps` steps (0: `weight` from the first step on)."""
    if warmup_steps <= 0:
        return optax.constant_schedule(weight)
    return optax.linear_schedule(0.0, weight, warmup_steps)


COURSE_KL_WEIGHT = kl_weight_schedule()  # β = 1 throughout, as the course trains


def learning_rate_schedule(peak: float, kind: LearningRateScheduleName = "constant", *,
                           warmup_steps: int = 0, decay_steps: int = 0,
                           end_fraction: float = 0.01) -> optax.ScalarOrSchedule:
    """Adam's learning rate at each step.

    Linear from 0 to `peak` over the first `warmup_steps` steps; then `constant`: `peak`;
    `cosine`: half a cosine from `peak` down to `end_fraction * peak` at step `decay_steps`
    (warm-up included); `exponential`: `peak * end_fraction ** ((step - warmup) / (decay -
    warmup))`, the same end on a log scale. Both hold their end value after `decay_steps`.
    The course's constant rate is the float `peak` itself, so that Adam's state has the
    course's structure and its steps are bitwise the course's.
    """
    end = end_fraction * peak
    if kind != "constant" and decay_steps <= warmup_steps:
        raise ValueError(f"a {kind} decay needs decay_steps {decay_steps} > warmup_steps "
                         f"{warmup_steps}")
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, decay_steps, end)
    if kind == "exponential":
        return optax.warmup_exponential_decay_schedule(
            0.0, peak, warmup_steps, decay_steps - warmup_steps, end_fraction, end_value=end)
    if warmup_steps > 0:
        return optax.linear_schedule(0.0, peak, warmup_steps)
    return peak


def value_at(schedule: optax.ScalarOrSchedule, step: int) -> float:
    """A schedule's value at `step` (a constant is its own value)."""
    return float(schedule(step) if callable(schedule) else schedule)

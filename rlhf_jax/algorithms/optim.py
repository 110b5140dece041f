"""Optimizers and learning-rate schedules of the two papers.

Ziegler et al. (LHP) train with TensorFlow's Adam (docs/implementation_details.md item 26),
which folds the bias corrections into the step size and adds eps to the
*uncorrected* sqrt(v):

    lr_t   = lr * sqrt(1 - b2^t) / (1 - b1^t)
    update = lr_t * m_t / (sqrt(v_t) + eps)

whereas `optax.adam` (PyTorch style) adds eps to the corrected sqrt(v_hat):

    update = lr * m_hat / (sqrt(v_hat) + eps)

The TF form equals the PyTorch form with eps replaced by eps / sqrt(1 - b2^t),
i.e. eps is about 31.6x larger on the first step (b2=0.999), which damps the
first updates of parameters with tiny gradients; in reproductions this changed
early-update approxkl about 6x. With eps=1e-5 (LHP) the two converge as t grows.

Schedules follow optax's convention: the schedule is evaluated at the number
of updates already applied, so the first update uses `schedule(0)`.
No gradient clipping anywhere: neither paper clips.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

Array = jax.Array

SCHEDULES = ("linear", "cosine", "constant")
ADAM_STYLES = ("tf", "torch")


class ScaleByTfAdamState(NamedTuple):
    """State of `scale_by_tf_adam`: a plain pytree of arrays (Orbax-savable).

    count: int32 scalar, the number of updates applied so far.
    mu: first moment, same structure as the params.
    nu: second moment, same structure as the params.
    """

    count: Array
    mu: optax.Updates
    nu: optax.Updates


def _check_betas_eps(b1: float, b2: float, eps: float) -> None:
    if not 0.0 <= b1 < 1.0:
        raise ValueError(f"b1 must be in [0, 1), got {b1}")
    if not 0.0 <= b2 < 1.0:
        raise ValueError(f"b2 must be in [0, 1), got {b2}")
    if not eps > 0.0:
        raise ValueError(f"eps must be > 0, got {eps}")


def scale_by_tf_adam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-5
) -> optax.GradientTransformation:
    """TensorFlow-style Adam scaling, without the learning rate or the sign.

    Produces `sqrt(1 - b2^t) / (1 - b1^t) * m_t / (sqrt(v_t) + eps)`, the
    counterpart of `optax.scale_by_adam`; chain it with
    `optax.scale_by_learning_rate` (see `tf_adam`) to get descent steps.

    Args:
      b1: decay of the first moment.
      b2: decay of the second moment.
      eps: added to sqrt(v_t) before the division (LHP: 1e-5).

    Returns:
      An `optax.GradientTransformation` with state `ScaleByTfAdamState`.
    """
    _check_betas_eps(b1, b2, eps)
    log_b1 = math.log(b1) if b1 > 0 else -math.inf
    log_b2 = math.log(b2) if b2 > 0 else -math.inf

    def init_fn(params):
        return ScaleByTfAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree_utils.tree_zeros_like(params),
            nu=optax.tree_utils.tree_zeros_like(params),
        )

    def update_fn(updates, state, params=None):
        del params
        mu = optax.tree_utils.tree_update_moment(updates, state.mu, b1, 1)
        nu = optax.tree_utils.tree_update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        t = count.astype(jnp.float32)
        # Both bias corrections go into one scalar step factor (TF's lr_t).
        # 1 - b^t as -expm1(t log b), with log b taken in float64: in float32
        # the naive 1 - 0.999**t is off by ~5e-5 relative at t=1 (0.999 rounds).
        step_factor = jnp.sqrt(-jnp.expm1(t * log_b2)) / -jnp.expm1(t * log_b1)
        updates = jax.tree.map(
            lambda m, v: (step_factor * m / (jnp.sqrt(v) + eps)).astype(m.dtype), mu, nu
        )
        return updates, ScaleByTfAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def tf_adam(
    learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-5
) -> optax.GradientTransformation:
    """TensorFlow-style Adam (LHP's optimizer): `scale_by_tf_adam` then `-lr`.

    Args:
      learning_rate: a float or an optax schedule (step -> lr).
      b1, b2, eps: see `scale_by_tf_adam`.

    Returns:
      An `optax.GradientTransformation` whose updates are added to the params.
    """
    return optax.chain(
        scale_by_tf_adam(b1=b1, b2=b2, eps=eps),
        optax.scale_by_learning_rate(learning_rate),
    )


# --------------------------------------------------------------------------
# Schedules.
# --------------------------------------------------------------------------


def _check_lr_steps(lr: float, total_steps: int) -> None:
    if not lr >= 0.0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= 0:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")


def linear_to_zero(lr: float, total_steps: int) -> optax.Schedule:
    """Ziegler's schedule: `lr * (1 - step / total_steps)`, 0 from `total_steps` on.

    The first update (step 0) uses `lr`, the last (step total_steps - 1) uses
    `lr / total_steps` (docs/implementation_details.md items 13, 25).
    """
    _check_lr_steps(lr, total_steps)
    return optax.linear_schedule(init_value=lr, end_value=0.0, transition_steps=total_steps)


def cosine_to_zero(lr: float, total_steps: int, warmup_steps: int = 0) -> optax.Schedule:
    """Stiennon's schedule: cosine decay from `lr` to 0 at `total_steps`.

    With `warmup_steps > 0`, the lr first rises linearly from 0 (at step 0) to
    `lr` (at `warmup_steps`), then decays by a half cosine to 0 at
    `total_steps`; `total_steps` counts the warmup.
    """
    _check_lr_steps(lr, total_steps)
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int):
        raise ValueError(f"warmup_steps must be an int, got {warmup_steps!r}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}"
        )
    if warmup_steps == 0:
        return optax.cosine_decay_schedule(init_value=lr, decay_steps=total_steps, alpha=0.0)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=lr,
        warmup_steps=warmup_steps,
        decay_steps=total_steps,
        end_value=0.0,
    )


def constant(lr: float) -> optax.Schedule:
    """A constant learning rate, as a schedule."""
    if not lr >= 0.0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    return optax.constant_schedule(lr)


def make_schedule(
    schedule: str, *, lr: float, total_steps: int, warmup_steps: int = 0
) -> optax.Schedule:
    """The schedule named `schedule` ("linear" | "cosine" | "constant").

    Trainers use this to log the current lr beside the optimizer that
    `make_optimizer` builds from the same arguments.

    Raises:
      ValueError: unknown `schedule`, or `warmup_steps` with a schedule that
        has no warmup.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if warmup_steps and schedule != "cosine":
        raise ValueError(
            f"warmup_steps={warmup_steps} is only supported with schedule='cosine', "
            f"got schedule={schedule!r}"
        )
    if schedule == "linear":
        return linear_to_zero(lr, total_steps)
    if schedule == "cosine":
        return cosine_to_zero(lr, total_steps, warmup_steps)
    _check_lr_steps(lr, total_steps)
    return constant(lr)


def per_update_linear(lr, num_updates: int, steps_per_update: int) -> optax.Schedule:
    """LHP's PPO schedule (`lrnow`, docs/implementation_details.md item 25):
    `lr * (1 - update / num_updates)` for the `update`-th PPO update, constant over
    its `steps_per_update` optimizer steps. `lr` may be traced (a member's own)."""

    def schedule(count):
        return lr * (1.0 - (count // steps_per_update) / num_updates)

    return schedule


def adam_optimizer(learning_rate: optax.ScalarOrSchedule, style: str, *, eps: float,
                   b1: float = 0.9, b2: float = 0.999) -> optax.GradientTransformation:
    """Adam of `style` "tf" (`tf_adam`, LHP) or "torch" (`optax.adam`)."""
    if style not in ADAM_STYLES:
        raise ValueError(f"adam must be one of {ADAM_STYLES}, got {style!r}")
    if style == "tf":
        return tf_adam(learning_rate, b1=b1, b2=b2, eps=eps)
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def make_optimizer(
    *,
    lr: float,
    total_steps: int,
    schedule: str = "linear",
    adam: str = "tf",
    eps: float = 1e-5,
    b1: float = 0.9,
    b2: float = 0.999,
    warmup_steps: int = 0,
) -> optax.GradientTransformation:
    """Adam with a learning-rate schedule, as the trainers use it.

    Args:
      lr: peak learning rate.
      total_steps: number of optimizer updates in the run (the schedule
        reaches 0 there for "linear" and "cosine").
      schedule: "linear" (Ziegler), "cosine" (Stiennon) or "constant".
      adam: "tf" (LHP's TensorFlow Adam, `tf_adam`) or "torch" (`optax.adam`,
        eps added to the bias-corrected sqrt(v_hat)), both with `eps`.
      eps, b1, b2: Adam constants.
      warmup_steps: linear warmup steps, "cosine" only.

    Returns:
      An `optax.GradientTransformation`; no gradient clipping.

    Raises:
      ValueError: naming the argument, for an unknown `schedule` or `adam` or
        an out-of-range value.
    """
    if adam not in ADAM_STYLES:
        raise ValueError(f"adam must be one of {ADAM_STYLES}, got {adam!r}")
    _check_betas_eps(b1, b2, eps)
    lr_schedule = make_schedule(schedule, lr=lr, total_steps=total_steps, warmup_steps=warmup_steps)
    return adam_optimizer(lr_schedule, adam, eps=eps, b1=b1, b2=b2)

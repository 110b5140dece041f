"""KL coefficient control (beta), fixed or adaptive, as pure checkpointable state.

Ziegler et al. 2019 / LHP `train_policy.py` (`FixedKLController`,
`AdaptiveKLController`), docs/implementation_details.md item 27: after each PPO update the
coefficient moves toward a target KL,

    err  = clip(kl / target - 1, -0.2, 0.2)
    beta = beta * (1 + err * n_steps / horizon)

with `kl = objective/kl` of that update (mean over samples of the summed
per-token KL), `n_steps` the episodes in the update (`ppo.batch_size`) and
`horizon` in episodes (10000). The state is a pytree of arrays, so it lives in
the Orbax checkpoint and can be updated inside a jitted step.
"""

from __future__ import annotations

import numbers

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array


@flax.struct.dataclass
class KLState:
    """KL controller state: `coef` is the current beta, a float32 scalar array."""

    coef: Array


def init_kl_state(coef) -> KLState:
    """The initial controller state with beta = `coef` (config `kl.coef`)."""
    if isinstance(coef, numbers.Real) and not coef >= 0:
        raise ValueError(f"kl.coef must be >= 0, got {coef}")
    return KLState(coef=jnp.asarray(coef, jnp.float32))


def adaptive_kl_coef(coef, current_kl, n_steps, target, horizon) -> Array:
    """One adaptive step of beta (docs/implementation_details.md item 27).

    `coef * (1 + clip(current_kl / target - 1, -0.2, 0.2) * n_steps / horizon)`.
    The error is clipped so that beta moves by at most
    `0.2 * n_steps / horizon` (relative) per update, however far the KL is
    from `target`.
    """
    proportional_error = jnp.clip(current_kl / target - 1.0, -0.2, 0.2)
    return coef * (1.0 + proportional_error * n_steps / horizon)


def update_kl_state(
    state: KLState,
    current_kl,
    n_steps,
    *,
    adaptive: bool,
    target=None,
    horizon=None,
) -> KLState:
    """The controller after one PPO update that observed `current_kl`.

    Args:
        state: the current `KLState`.
        current_kl: `objective/kl` of the update just done (scalar).
        n_steps: episodes in that update (`ppo.batch_size`).
        adaptive: a static Python bool (`kl.adaptive`); False keeps beta fixed.
        target, horizon: `kl.target` and `kl.horizon`, required when adaptive.
    Returns:
        A new `KLState`; the input is not modified.
    """
    if not adaptive:
        return state
    if target is None or (isinstance(target, numbers.Real) and not target > 0):
        raise ValueError(f"kl.target must be > 0 when kl.adaptive is set, got {target}")
    if horizon is None or (isinstance(horizon, numbers.Real) and not horizon > 0):
        raise ValueError(f"kl.horizon must be > 0 when kl.adaptive is set, got {horizon}")
    current_kl = jnp.asarray(current_kl, jnp.float32)
    coef = adaptive_kl_coef(state.coef, current_kl, n_steps, target, horizon)
    return state.replace(coef=coef.astype(state.coef.dtype))

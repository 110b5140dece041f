"""KL controllers: the adaptive rule's hand numbers, fixed control, jit, state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms import kl


def test_adaptive_kl_coef_hand_numbers():
    # coef 0.15, target 6, horizon 10000, 512 episodes: n_steps / horizon = 0.0512.
    # kl=12: err = clip(12/6 - 1 = 1) = 0.2   -> 0.15 * (1 + 0.2 * 0.0512) = 0.151536
    # kl=6:  err = 0                          -> 0.15
    # kl=0:  err = clip(-1) = -0.2            -> 0.15 * (1 - 0.01024)    = 0.148464
    # kl=6.6: err = 0.1 (inside the clip)      -> 0.15 * (1 + 0.00512)    = 0.150768
    for current, want in [(12.0, 0.151536), (6.0, 0.15), (0.0, 0.148464), (6.6, 0.150768)]:
        got = kl.adaptive_kl_coef(0.15, current, 512, 6.0, 10000)
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_fixed_controller_is_constant():
    state = kl.init_kl_state(0.05)
    for current in [0.0, 3.0, 100.0]:
        state = kl.update_kl_state(state, current, 512, adaptive=False)
    np.testing.assert_allclose(state.coef, 0.05, rtol=1e-7)


def test_adaptive_trajectory_matches_python_loop():
    kls = [0.5, 3.0, 7.0, 20.0, 6.0, 5.5, 0.0]
    state = kl.init_kl_state(0.15)
    ref = 0.15
    for current in kls:
        state = kl.update_kl_state(state, current, 512, adaptive=True, target=6.0, horizon=10000)
        ref *= 1 + np.clip(current / 6.0 - 1, -0.2, 0.2) * 512 / 10000
        np.testing.assert_allclose(state.coef, ref, rtol=1e-6)
    assert state.coef.dtype == jnp.float32


def test_update_jits_with_static_adaptive():
    @jax.jit
    def step(state, current):
        return kl.update_kl_state(state, current, 64, adaptive=True, target=6.0, horizon=10000)

    state = kl.init_kl_state(0.1)
    state = step(state, jnp.float32(12.0))
    np.testing.assert_allclose(state.coef, 0.1 * (1 + 0.2 * 64 / 10000), rtol=1e-6)
    fixed = jax.jit(lambda s, c: kl.update_kl_state(s, c, 64, adaptive=False))(state, 1.0)
    np.testing.assert_allclose(fixed.coef, state.coef)


def test_state_is_a_pytree_of_one_array():
    state = kl.init_kl_state(0.2)
    leaves = jax.tree_util.tree_leaves(state)
    assert len(leaves) == 1 and leaves[0].shape == ()
    doubled = jax.tree_util.tree_map(lambda x: 2 * x, state)
    assert isinstance(doubled, kl.KLState)
    np.testing.assert_allclose(doubled.coef, 0.4, rtol=1e-7)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="kl.coef"):
        kl.init_kl_state(-0.1)
    state = kl.init_kl_state(0.1)
    with pytest.raises(ValueError, match="kl.target"):
        kl.update_kl_state(state, 1.0, 8, adaptive=True, target=None, horizon=10000)
    with pytest.raises(ValueError, match="kl.horizon"):
        kl.update_kl_state(state, 1.0, 8, adaptive=True, target=6.0, horizon=0)

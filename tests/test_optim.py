"""Tests for rlhf_jax.algorithms.optim: TF-style Adam against numpy, schedules, state."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from rlhf_jax.algorithms import optim

# Small quadratic f(x) = 0.5 * sum(a * (x - c)^2), gradient a * (x - c).
_A = np.array([1.0, 10.0, 0.01])
_C = np.array([0.5, -1.0, 2.0])
_X0 = np.array([0.0, 0.3, -0.7])


def _grad(x):
    return _A * (x - _C)


def _numpy_adam(lrs, *, style, b1=0.9, b2=0.999, eps=1e-5):
    """Hand-written float64 Adam on the quadratic; lrs[k] is the k-th update's lr."""
    x, m, v = _X0.copy(), np.zeros(3), np.zeros(3)
    for k, lr in enumerate(lrs):
        t = k + 1
        g = _grad(x)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        if style == "tf":
            # TensorFlow: bias corrections folded into lr_t, eps on raw sqrt(v).
            lr_t = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
            x = x - lr_t * m / (np.sqrt(v) + eps)
        else:
            # PyTorch: eps on the bias-corrected sqrt(v_hat).
            m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
            x = x - lr * m_hat / (np.sqrt(v_hat) + eps)
    return x


def _run_optax(opt, n_steps):
    x = jnp.asarray(_X0, jnp.float32)
    state = opt.init(x)
    for _ in range(n_steps):
        g = jnp.asarray(_grad(np.asarray(x, np.float64)), jnp.float32)
        updates, state = opt.update(g, state, x)
        x = optax.apply_updates(x, updates)
    return np.asarray(x, np.float64), state


def test_tf_adam_matches_numpy_five_steps():
    x, state = _run_optax(optim.tf_adam(0.1), 5)
    np.testing.assert_allclose(x, _numpy_adam([0.1] * 5, style="tf"), atol=1e-6, rtol=0)
    assert int(state[0].count) == 5
    # And it really is not the PyTorch variant on this problem.
    assert np.max(np.abs(x - _numpy_adam([0.1] * 5, style="torch"))) > 1e-4


@pytest.mark.parametrize("adam", ["tf", "torch"])
def test_make_optimizer_linear_schedule_matches_numpy(adam):
    # total_steps=5: updates use lr * (1 - k/5) = 0.1, 0.08, 0.06, 0.04, 0.02.
    opt = optim.make_optimizer(lr=0.1, total_steps=5, schedule="linear", adam=adam)
    x, _ = _run_optax(opt, 5)
    expected = _numpy_adam([0.1, 0.08, 0.06, 0.04, 0.02], style=adam)
    # optax.adam computes 1 - 0.999^t naively in float32 (~5e-5 relative
    # error at t=1), so it gets a looser bound than our expm1 form.
    np.testing.assert_allclose(x, expected, atol=1e-6 if adam == "tf" else 1e-5, rtol=0)


def test_first_step_tiny_gradient_tf_vs_torch():
    # Step 1, grad g = 1e-6, lr = 1, b1 = 0.9, b2 = 0.999, eps = 1e-5:
    #   m = 0.1 g = 1e-7,  v = 0.001 g^2 = 1e-15,  sqrt(v) = 3.16228e-8.
    # TF:    lr_t = sqrt(1 - 0.999) / (1 - 0.9) = 0.0316228 / 0.1 = 0.316228
    #        update = 0.316228 * 1e-7 / (3.16228e-8 + 1e-5) = 0.316228 * 9.96847e-3
    #               = 3.15231e-3   (= g / (g + eps / sqrt(0.001)) = 1e-6 / 3.17228e-4)
    # Torch: m_hat = 1e-6, sqrt(v_hat) = 1e-6, update = 1e-6 / (1e-6 + 1e-5) = 1/11
    #        = 0.0909091.
    # TF's first step on a tiny gradient is ~29x smaller.
    g = jnp.array([1e-6, 1.0])
    params = jnp.zeros(2)
    tf_opt = optim.make_optimizer(lr=1.0, total_steps=10, schedule="constant", adam="tf")
    torch_opt = optim.make_optimizer(lr=1.0, total_steps=10, schedule="constant", adam="torch")
    tf_upd, _ = tf_opt.update(g, tf_opt.init(params), params)
    torch_upd, _ = torch_opt.update(g, torch_opt.init(params), params)
    np.testing.assert_allclose(-tf_upd[0], 3.15231e-3, rtol=1e-5)
    np.testing.assert_allclose(-torch_upd[0], 1 / 11, rtol=1e-5)
    # For g = 1 both are ~lr: TF 0.316228 * 0.1 / (0.0316228 + 1e-5) = 0.999684,
    # torch 1 / (1 + 1e-5) = 0.999990.
    np.testing.assert_allclose(-tf_upd[1], 0.999684, rtol=1e-5)
    np.testing.assert_allclose(-torch_upd[1], 0.999990, rtol=1e-5)


def test_schedules_start_middle_end():
    lin = optim.linear_to_zero(1e-3, 100)
    np.testing.assert_allclose(
        [lin(0), lin(50), lin(99), lin(100), lin(150)],
        [1e-3, 5e-4, 1e-5, 0.0, 0.0],
        rtol=1e-5,
        atol=1e-12,
    )
    cos = optim.cosine_to_zero(1e-3, 100)
    # 0.5 * (1 + cos(pi * step / 100)): 1, (1 + 1/sqrt 2)/2 = 0.853553, 0.5, 0.
    np.testing.assert_allclose(
        [cos(0), cos(25), cos(50), cos(100)],
        [1e-3, 0.853553e-3, 5e-4, 0.0],
        rtol=1e-5,
        atol=1e-12,
    )
    warm = optim.cosine_to_zero(1e-3, 110, warmup_steps=10)
    # Linear 0 -> lr over 10 steps, then cosine over the remaining 100.
    np.testing.assert_allclose(
        [warm(0), warm(5), warm(10), warm(60), warm(110)],
        [0.0, 5e-4, 1e-3, 5e-4, 0.0],
        rtol=1e-5,
        atol=1e-12,
    )
    const = optim.constant(3e-4)
    np.testing.assert_allclose([const(0), const(10**6)], [3e-4, 3e-4], rtol=1e-6)
    sched = optim.make_schedule("cosine", lr=1e-3, total_steps=100)
    np.testing.assert_allclose(sched(50), 5e-4, rtol=1e-5)


def test_jit_update_no_retrace_and_matches_eager():
    opt = optim.make_optimizer(lr=0.05, total_steps=10)
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    grads = {"w": jnp.full((2, 3), 0.5), "b": jnp.array([1.0, -1.0, 1e-3])}

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    p_jit, s_jit = params, opt.init(params)
    p_eager, s_eager = params, opt.init(params)
    for _ in range(3):
        p_jit, s_jit = step(p_jit, s_jit)
        updates, s_eager = opt.update(grads, s_eager, p_eager)
        p_eager = optax.apply_updates(p_eager, updates)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), p_jit, p_eager)


def test_state_is_orbax_savable(tmp_path):
    opt = optim.make_optimizer(lr=0.05, total_steps=10)
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    state = opt.init(params)
    _, state = opt.update(jax.tree.map(jnp.ones_like, params), state, params)
    leaves = jax.tree_util.tree_leaves(state)
    assert leaves and all(isinstance(x, jax.Array) for x in leaves)
    assert isinstance(state[0], optim.ScaleByTfAdamState)

    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "opt", state)
    ckpt.wait_until_finished()
    restored = ckpt.restore(tmp_path / "opt", jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    jax.tree.map(np.testing.assert_array_equal, restored, state)
    assert int(restored[0].count) == 1


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="schedule must be one of"):
        optim.make_optimizer(lr=1e-3, total_steps=10, schedule="exponential")
    with pytest.raises(ValueError, match="adam must be one of"):
        optim.make_optimizer(lr=1e-3, total_steps=10, adam="adamw")
    with pytest.raises(ValueError, match="warmup_steps=5 is only supported"):
        optim.make_optimizer(lr=1e-3, total_steps=10, schedule="linear", warmup_steps=5)
    with pytest.raises(ValueError, match="warmup_steps must be in"):
        optim.make_optimizer(lr=1e-3, total_steps=10, schedule="cosine", warmup_steps=10)
    with pytest.raises(ValueError, match="total_steps must be a positive int"):
        optim.make_optimizer(lr=1e-3, total_steps=0)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        optim.make_optimizer(lr=-1.0, total_steps=10)
    with pytest.raises(ValueError, match="eps must be > 0"):
        optim.make_optimizer(lr=1e-3, total_steps=10, eps=0.0)
    with pytest.raises(ValueError, match="b2 must be in"):
        optim.scale_by_tf_adam(b2=1.0)

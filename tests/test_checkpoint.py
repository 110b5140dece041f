"""Checkpointer: round trips, retention, torn checkpoints, finished flag, SIGTERM."""

import logging
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax.infra.checkpoint import Checkpointer, PreemptionHandler, mark_finished


def make_state(scale: float = 1.0):
    """A training-like pytree: params, adam state, int step, PRNG keys, numpy."""
    params = {"dense": {"w": jnp.arange(6.0).reshape(2, 3) * scale,
                        "b": jnp.array([1.0, -2.0, 0.5]) * scale},
              "head": jnp.full((3,), 0.25 * scale, jnp.bfloat16)}
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)
    # One real update so mu/nu/count are not all zeros.
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = tx.update(grads, opt_state, params)
    return {
        "params": params,
        "opt_state": opt_state,
        "step": 7,
        "rng": jax.random.key(int(scale)),  # typed key
        "legacy_rng": jax.random.PRNGKey(3),  # raw uint32 key
        "cursor": np.array([4, 5], np.int64),
    }


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert type(x) is type(y) or (isinstance(x, jax.Array) and isinstance(y, jax.Array))
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert np.asarray(x).dtype == np.asarray(y).dtype


def save_steps(ckpt, steps):
    for s in steps:
        assert ckpt.save(s, make_state(float(s)), {"cursor": s * 10, "finished": False})
    ckpt.wait()


def test_round_trip_concrete_and_abstract_targets(tmp_path):
    state = make_state(2.0)
    meta = {"cursor": 128, "finished": False, "rng": [0, 42], "note": "ppo"}
    with Checkpointer(str(tmp_path / "ppo")) as ckpt:
        assert ckpt.restore(state) is None  # nothing saved yet
        assert ckpt.latest_step() is None
        assert ckpt.save(5, state, meta)
        ckpt.wait()
        assert ckpt.latest_step() == 5

        step, restored, restored_meta = ckpt.restore(make_state(9.0))
        assert step == 5
        assert restored_meta == meta
        assert_trees_equal(restored, state)
        assert isinstance(restored["step"], int) and restored["step"] == 7
        assert isinstance(restored["cursor"], np.ndarray)
        assert isinstance(restored["opt_state"], type(state["opt_state"]))
        # The restored typed key draws the same numbers as the saved one.
        np.testing.assert_array_equal(jax.random.uniform(restored["rng"], (3,)),
                                      jax.random.uniform(state["rng"], (3,)))

        # An abstract target (no data) restores the same values.
        abstract = jax.eval_shape(lambda: make_state(9.0))
        abstract["step"] = 0  # keep the Python int a Python int
        abstract["cursor"] = np.zeros(2, np.int64)
        _, restored2, _ = ckpt.restore(abstract)
        assert_trees_equal(restored2, state)


def test_restore_into_target_shardings(tmp_path):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
    assert mesh.size == 4  # conftest: 4 CPU devices
    sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = {"w": jax.device_put(jnp.arange(8.0).reshape(4, 2), sharded),
             "rng": jax.device_put(jax.random.key(5), replicated)}
    with Checkpointer(str(tmp_path / "mesh")) as ckpt:
        ckpt.save(1, state, {})
        ckpt.wait()
        abstract = {"w": jax.ShapeDtypeStruct((4, 2), jnp.float32, sharding=sharded),
                    "rng": jax.ShapeDtypeStruct((), jax.random.key(0).dtype,
                                                sharding=replicated)}
        _, restored, _ = ckpt.restore(abstract)
    assert restored["w"].sharding == sharded
    np.testing.assert_array_equal(restored["w"], np.arange(8.0).reshape(4, 2))
    np.testing.assert_array_equal(jax.random.key_data(restored["rng"]),
                                  jax.random.key_data(jax.random.key(5)))


def test_meta_must_be_json_and_steps_unique(tmp_path):
    with Checkpointer(str(tmp_path / "rm")) as ckpt:
        with pytest.raises(ValueError, match="meta at step 1 is not JSON"):
            ckpt.save(1, make_state(), {"rng": np.zeros(2)})
        ckpt.save(1, make_state(), {})
        ckpt.wait()
        with pytest.raises(ValueError, match="step 1 already exists"):
            ckpt.save(1, make_state(), {})


def test_max_to_keep_and_save_interval(tmp_path):
    with Checkpointer(str(tmp_path / "ppo"), max_to_keep=2,
                      save_interval_steps=2) as ckpt:
        assert not ckpt.save(3, make_state(), {})  # not a multiple of 2
        save_steps(ckpt, [2, 4, 6])
        assert ckpt.save(7, make_state(7.0), {}, force=True)
        ckpt.wait()
        assert ckpt.all_steps() == [6, 7]
        assert sorted(os.listdir(tmp_path / "ppo")) == ["6", "7"]


def corrupt_state_metadata(step_dir):
    os.remove(step_dir / "state" / "_METADATA")


def test_corrupt_latest_falls_back_with_warning(tmp_path, caplog):
    directory = tmp_path / "ppo"
    with Checkpointer(str(directory), max_to_keep=3) as ckpt:
        save_steps(ckpt, [1, 2, 3])
    corrupt_state_metadata(directory / "3")
    # A save killed midway: Orbax's tmp directory for step 4, half written.
    shutil.copytree(directory / "2", directory / "4.orbax-checkpoint-tmp-1700000000")
    os.remove(directory / "4.orbax-checkpoint-tmp-1700000000" / "state" / "manifest.ocdbt")

    with Checkpointer(str(directory), max_to_keep=3) as ckpt:
        assert ckpt.latest_step() == 3  # the tmp dir is not a step
        with caplog.at_level(logging.WARNING):
            step, state, meta = ckpt.restore(make_state())
        assert step == 2 and meta["cursor"] == 20
        assert_trees_equal(state, make_state(2.0))
        warnings = " ".join(r.getMessage() for r in caplog.records
                            if r.levelno == logging.WARNING)
        assert "step 3 failed to restore" in warnings
        # The bad step is moved aside, so the resumed run can save 3 and 4 again.
        assert ckpt.all_steps() == [1, 2]
        assert any(n.startswith("3.corrupt-") for n in os.listdir(directory))
        save_steps(ckpt, [3, 4])
        assert not any("orbax-checkpoint-tmp" in n for n in os.listdir(directory))
        step, state, meta = ckpt.restore(make_state())
        assert step == 4 and meta["cursor"] == 40
        assert_trees_equal(state, make_state(4.0))


def test_all_corrupt_raises(tmp_path):
    directory = tmp_path / "ppo"
    with Checkpointer(str(directory)) as ckpt:
        save_steps(ckpt, [1, 2])
    for step in ("1", "2"):
        corrupt_state_metadata(directory / step)
    with Checkpointer(str(directory)) as ckpt:
        with pytest.raises(RuntimeError, match=f"no checkpoint in {directory} restores"):
            ckpt.restore(make_state())
        assert ckpt.all_steps() == [1, 2]  # nothing moved when nothing restores


def test_structure_mismatch_is_not_a_silent_restart(tmp_path):
    with Checkpointer(str(tmp_path / "ppo")) as ckpt:
        save_steps(ckpt, [1])
        target = make_state()
        target["extra"] = jnp.zeros(2)
        with pytest.raises(RuntimeError, match="restores"):
            ckpt.restore(target)


def test_finished_flag(tmp_path):
    with Checkpointer(str(tmp_path / "rm")) as ckpt:
        assert ckpt.restore(make_state()) is None
        meta = {"cursor": 3, "finished": False}
        ckpt.save(1, make_state(), meta)
        ckpt.wait()
        assert ckpt.restore(make_state())[2]["finished"] is False
        assert mark_finished(meta) == {"cursor": 3, "finished": True}
        assert meta["finished"] is False  # not mutated
        ckpt.save(2, make_state(), mark_finished(meta), force=True)
    # A relaunch sees the finished stage.
    with Checkpointer(str(tmp_path / "rm")) as ckpt:
        step, _, meta = ckpt.restore(make_state())
        assert step == 2 and meta == {"cursor": 3, "finished": True}


def test_sigterm_sets_flag_and_restores_handler():
    def previous(signum, frame):
        raise AssertionError("the previous handler must not run inside the context")

    old = signal.signal(signal.SIGTERM, previous)
    try:
        with PreemptionHandler() as preempt:
            assert not preempt.should_stop(0)
            os.kill(os.getpid(), signal.SIGTERM)
            assert preempt.should_stop(1)
            assert preempt.received_signal == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, old)

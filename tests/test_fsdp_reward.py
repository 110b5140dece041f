"""The reward-model step with FSDP (`rlhf_jax.stages.supervised` under a ("data", "fsdp") mesh).

Pairwise (Stiennon) labels, two steps of batch 16 on 4 simulated devices:
`pmap` against the mesh with the reward model's params and Adam state split
2 and 4 ways. The trained params agree to float noise, and come back split.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rlhf_jax.infra import fsdp
from rlhf_jax.infra.parallel import DataParallel
from rlhf_jax.models.heads import RewardModel
from rlhf_jax.stages import reward_train
from tests.test_reward import CONFIG, Q, R, assert_trees_close, make_cfg, make_labels

NUM_TRAIN, BATCH = 32, 16


@pytest.fixture(scope="module")
def setup():
    model = RewardModel(CONFIG)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, Q + R), jnp.int32))["params"]
    return model, params, make_labels(NUM_TRAIN, 2, 1, "pairwise")


def train(setup, mode, f=1):
    model, params, labels = setup
    cfg = make_cfg("pairwise", NUM_TRAIN, 0, batch_size=BATCH, lr=1e-3, mode=mode)
    out, summary = reward_train.train_reward_model(
        cfg, rm_model=model, rm_params=params, train=labels, val=None,
        dp=DataParallel(mode, num_devices=4, fsdp=f), rng=jax.random.key(2))
    assert summary["steps"] == NUM_TRAIN // BATCH
    return out


@pytest.fixture(scope="module")
def pmap_params(setup):
    return jax.device_get(train(setup, "pmap"))


@pytest.mark.parametrize("f", [2, 4])
def test_reward_step_with_fsdp_equals_pmap(setup, pmap_params, f):
    params = train(setup, "mesh", f)
    assert_trees_close(jax.device_get(params), pmap_params, atol=2e-6)
    # Training moved the params, so the comparison is not vacuous.
    moved = np.abs(pmap_params["reward_head"]["kernel"]
                   - np.asarray(setup[1]["reward_head"]["kernel"])).max()
    assert moved > 1e-4
    # The trained params come back split along fsdp where a dimension divides.
    kernel = params["transformer"]["h_0"]["mlp"]["c_fc"]["kernel"]  # [32, 128]
    assert kernel.sharding.spec == P(None, "fsdp")
    assert {s.data.shape for s in kernel.addressable_shards} == {(32, 128 // f)}
    gain = params["reward_gain"]  # a scalar: replicated
    assert gain.sharding.spec == P() and fsdp.shard_dim(gain.shape, gain.dtype, f) is None

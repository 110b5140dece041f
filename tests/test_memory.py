"""The memory report (`rlhf_jax.memory`) against XLA's own memory analysis.

`memory.report` is arithmetic on shapes; `memory.compiled_update_step`
compiles the real PPO update for abstract inputs and reads XLA's
`memory_analysis()`. On small float32 configs (1 and 4 simulated devices,
fsdp 1 / 2 / 4, shared and separate value) the report's update-step footprint
is within 20% of XLA's; in every case (bfloat16 compute too) its state bytes
(params and Adam moments per device, after splitting) are XLA's argument
bytes. XLA's CPU backend computes bfloat16 elementwise math in float32, so
for bfloat16 the report (which halves the activations, as on TPU) is checked
to lie below the CPU's temp size rather than near it.
"""

import pytest

from rlhf_jax import config_check, config_lib, memory
from rlhf_jax.infra import parallel
from rlhf_jax.models import loading


def small_config(*, d=64, layers=2, vocab=512, q=32, r=16, batch=64, separate=False, f=1,
                 dtype="float32"):
    c = config_lib.base_config()
    c.stages = "ppo"
    c.model.init, c.model.tokenizer = "scratch", "synthetic"
    c.pretrain.vocab_size = vocab
    c.model.n_embd, c.model.n_layer, c.model.n_head, c.model.n_positions = d, layers, 1, q + r
    c.model.dtype = dtype
    c.task.query_length, c.task.response_length, c.task.truncate_after = q, r, 1
    c.ppo.batch_size, c.ppo.nminibatches, c.ppo.noptepochs = batch, 1, 1
    c.ppo.total_episodes = 4 * batch
    c.ppo.value_model = "separate" if separate else "shared"
    c.parallel.mode, c.parallel.fsdp = "mesh", f
    return c


@pytest.mark.parametrize("devices,kwargs", [
    (1, dict()),
    (4, dict(layers=1, separate=True, f=4)),
    (4, dict(layers=1, f=2)),
    (4, dict(layers=1, f=2, dtype="bfloat16")),
], ids=["1dev-shared", "4dev-fsdp4-separate", "4dev-fsdp2", "4dev-fsdp2-bf16"])
def test_report_matches_xla_memory_analysis(devices, kwargs):
    c = small_config(**kwargs)
    config_check.resolve(c, devices)
    rep = memory.report(c, devices)
    dp = parallel.DataParallel("mesh", devices, fsdp=c.parallel.fsdp)
    xla_bytes, analysis = memory.compiled_update_step(c, dp)
    ratio = rep.update_step / xla_bytes
    print(f"{kwargs}: report {rep.update_step / 2**20:.2f} MiB, XLA {xla_bytes / 2**20:.2f} MiB "
          f"(argument {analysis.argument_size_in_bytes / 2**20:.2f} + temp "
          f"{analysis.temp_size_in_bytes / 2**20:.2f}), ratio {ratio:.3f}")
    if c.model.dtype == "float32":
        assert 0.8 < ratio < 1.2
    else:  # bf16 activations are TPU-sized in the report, f32-sized on CPU
        temp = rep.update_step - sum(m.params + m.optimizer for m in rep.models if m.trained)
        assert 0.4 * analysis.temp_size_in_bytes < temp < analysis.temp_size_in_bytes
    # The state part exactly: XLA's arguments are the trained params and Adam moments
    # per device (after splitting) plus this device's rollout rows and a few scalars.
    rows = c.ppo.batch_size // devices
    q, r = c.task.query_length, c.task.response_length
    rollout_bytes = rows * (2 * q + 5 * r + 2) * 4
    state_bytes = sum(m.params + m.optimizer for m in rep.models if m.trained)
    assert analysis.argument_size_in_bytes - rollout_bytes == pytest.approx(state_bytes,
                                                                             abs=256)


def test_fsdp_divides_the_state_and_bf16_halves_the_kv_cache():
    base = memory.report(small_config(), 4)
    split = memory.report(small_config(f=4), 4)
    for a, b in zip(base.models, split.models):
        # Everything but a handful of indivisible scalars and the value head's bias.
        assert b.params == pytest.approx(a.params / 4, rel=0.01)
        assert b.optimizer == pytest.approx(a.optimizer / 4, rel=0.01)
        assert b.num_params == a.num_params and b.full_params == a.full_params
    assert [m.trained for m in base.models] == [True, False, False]  # policy, reference, RM
    c = small_config()
    c.model.kv_cache_dtype = "bfloat16"
    assert memory.report(c, 4).kv_cache * 2 == base.kv_cache


def test_every_stage_has_a_peak_and_the_reward_step_matches_xla():
    # The reward stage's training step: the report's model (trained RM state + a
    # step of K responses per label, no LM head) against the compiled step.
    c = small_config(layers=1, f=2)
    c.stages = "labels,reward,ppo,eval"
    c.labels.source, c.labels.type = "mock", "best_of_4"
    c.reward.batch_size, c.labels.num_train = 16, 64
    c.reward.rollout_batch_size, c.labels.batch_size, c.eval.batch_size = 16, 16, 16
    config_check.resolve(c, 4)
    rep = memory.report(c, 4)
    assert [s.stage for s in rep.stages] == ["labels", "reward", "ppo", "eval"]
    assert rep.stages[2].peak == rep.peak  # the PPO stage is the table's peak
    assert rep.peak_stage.peak == max(s.peak for s in rep.stages)
    text = memory.format_report(rep)
    assert "every stage" in text and "the largest: " + rep.peak_stage.stage in text
    config, _ = loading.architecture(c)
    rm = memory._model("RM", memory.param_shapes(memory.RewardModel(config)), 2, True)
    rows = 16 // 4 * 4  # 4 labels per device, 4 responses each
    estimate = rm.params + rm.optimizer + sum(memory.step_temporaries(
        config, 2, [rm], 1, rows, c.task.query_length + c.task.response_length, 0))
    dp = parallel.DataParallel("mesh", 4, fsdp=2)
    xla_bytes, analysis = memory.compiled_reward_step(c, dp)
    ratio = estimate / xla_bytes
    print(f"reward step: report {estimate / 2**20:.2f} MiB, XLA {xla_bytes / 2**20:.2f} MiB, "
          f"ratio {ratio:.3f}")
    assert 0.8 < ratio < 1.2
    # The stage holds the RM's state and the policy that samples for the normalisation.
    reward_stage = rep.stages[1]
    assert reward_stage.resident == rm.params + rm.optimizer + rep.models[1].params
    assert reward_stage.temporaries >= estimate - rm.params - rm.optimizer

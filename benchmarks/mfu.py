"""PPO model-FLOPs utilisation (MFU) on one accelerator: GPT-2 774M in bfloat16.

One PPO iteration at the issue's shape: random GPT-2 774M weights (float32
master params, bfloat16 compute), Ziegler's shared value head, a reward model
on the same trunk, batch 512 episodes of query 64 + response 24 tokens,
4 epochs x 4 minibatches. The rollout (sample, policy and reference forwards,
reward-model score) and the update run through `PPOTrainer`'s own compiled
steps, each compiled first and then timed over `--iters` calls (median).

FLOP count (stated, so the number can be checked): model FLOPs of the update,
recomputation not counted (standard MFU):

    3 x noptepochs x [ B*T * 2*N_blocks        (dense matmuls, N_blocks = 12*L*d^2)
                     + B * L * 4*T^2*d         (attention scores and weighted sum)
                     + B*R * 2*d*V ]           (LM head at the R response positions)

(the factor 3: forward + backward = 3 forwards). XLA's own count
(`compiled.cost_analysis()["flops"]`, recomputation included) is printed beside
it. MFU = model FLOPs / update time / the datasheet dense bf16 peak of the
detected device (H100 SXM and H200: 989 TFLOP/s); the matmul peak measured in
the same run (an 8192^3 bf16 matmul) is printed too.

    python benchmarks/mfu.py            # GPT-2 774M, 512 x 88, 4 x 4: on one GPU, ~3 min
    python benchmarks/mfu.py --small    # a tiny model on the CPU: a smoke run (CI)

`--attention_impl` and `--logits_chunk` set the model's `attention_impl`
(models/attention.py) and `logits_chunk` (algorithms/logprobs.py); `--json
PATH` writes the numbers printed (benchmarks/gpu_suite.py collects them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Dense bfloat16 tensor-core peaks from the vendors' datasheets (TFLOP/s, no sparsity),
# matched against `device_kind` in this order.
DATASHEET_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM (device_kind "NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
)


def datasheet_peak(device_kind: str) -> float | None:
    for name, tflops in DATASHEET_BF16_TFLOPS:
        if name.lower() in device_kind.lower():
            return tflops * 1e12
    return None


def update_model_flops(cfg, batch: int, query: int, response: int, noptepochs: int) -> float:
    """Model FLOPs of one PPO update (see the module docstring)."""
    d, l, v = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    t = query + response
    forward = (batch * t * 2 * 12 * l * d * d + batch * l * 4 * t * t * d
               + batch * response * 2 * d * v)
    return 3 * noptepochs * forward


def xla_flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # not every backend implements it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def fmt_flops(x: float) -> str:
    """FLOPs (or FLOP/s) in the largest unit that keeps a digit before the point."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} "


def median_time(fn, iters: int) -> float:
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a tiny model: a CPU smoke run")
    parser.add_argument("--model", default="gpt2-large", help="GPT-2 size (gpt2-large: 774M)")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--query", type=int, default=64)
    parser.add_argument("--response", type=int, default=24)
    parser.add_argument("--noptepochs", type=int, default=4)
    parser.add_argument("--nminibatches", type=int, default=4)
    parser.add_argument("--iters", type=int, default=3, help="timed calls of each step (median)")
    parser.add_argument("--remat", action="store_true", help="rematerialise each block")
    parser.add_argument("--attention_impl", choices=("", "xla", "cudnn"), default="",
                        help="the model's attention_impl ('': cuDNN where it applies, else XLA)")
    parser.add_argument("--logits_chunk", type=int, default=0,
                        help="LM head + log-softmax in chunks of this many positions (0: at once)")
    parser.add_argument("--json", default="", help="write the measured numbers to this file")
    parser.add_argument("--profile", default="", help="trace one rollout and one update into "
                        "this dir and print where their device time goes")
    args = parser.parse_args()

    from benchmarks.ppo import Shape, run_config
    from benchmarks.sampling import measure_matmul_peak
    from rlhf_jax.infra import parallel
    from rlhf_jax.models import GPT2Config, GPT2LMHeadModel
    from rlhf_jax.models.heads import PolicyWithValueHead, RewardModel
    from rlhf_jax.stages.rollout import PPOModels
    from rlhf_jax.stages.train_ppo import PPOTrainer, init_state, stack_members

    if args.small:
        cfg = GPT2Config(vocab_size=512, n_positions=64, n_embd=64, n_layer=1, n_head=4)
        args.batch, args.query, args.response, args.iters = 16, 8, 4, 1
        args.noptepochs, args.nminibatches = 2, 2
    else:
        cfg = GPT2Config.from_name(args.model)
    cfg = cfg.replace(dtype=jnp.bfloat16, param_dtype=jnp.float32, remat=args.remat,
                      attention_impl=args.attention_impl or None, logits_chunk=args.logits_chunk)
    shape = Shape(batch=args.batch, query=args.query, response=args.response,
                  nminibatches=args.nminibatches, noptepochs=args.noptepochs, temperature=0.7)
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"model: {args.model if not args.small else 'tiny'} {cfg.num_params() / 1e6:.0f}M params, "
          f"bf16 compute / f32 params{', remat' if args.remat else ''}; batch {shape.batch} x "
          f"({shape.query} + {shape.response}), {shape.noptepochs} epochs x "
          f"{shape.nminibatches} minibatches; attention {args.attention_impl or 'auto'}, "
          f"logits chunk {args.logits_chunk or 'none'}", flush=True)

    t_setup = time.perf_counter()
    # Random weights made on the device, one compiled init (no host copy of 774M params).
    lm = GPT2LMHeadModel(cfg)
    trunk = jax.jit(lambda k: lm.init(k, jnp.zeros((1, 8), jnp.int32))["params"]["transformer"])(
        jax.random.key(0))
    d = cfg.n_embd
    rm_params = {"transformer": jax.tree.map(jnp.copy, trunk),
                 "reward_head": {"kernel": jnp.full((d, 1), 0.02), "bias": jnp.zeros((1,))},
                 "reward_gain": jnp.ones(()), "reward_bias": jnp.zeros(())}
    models = PPOModels(policy=PolicyWithValueHead(cfg), reference=lm, reward=RewardModel(cfg))
    params = {"policy": {"transformer": trunk,
                         "value_head": {"kernel": jnp.zeros((d, 1)), "bias": jnp.zeros((1,))}}}
    ref_params = {"transformer": jax.tree.map(jnp.copy, trunk)}
    run_cfg = run_config(shape, cfg.vocab_size)
    dp = parallel.DataParallel("mesh", 1)
    trainer = PPOTrainer(run_cfg, models, dp)
    # A run is a group of one: a member axis first on the state and models, second
    # on the queries.
    state = dp.replicate(stack_members([init_state(params, trainer.optimizer, run_cfg)]))
    ref_r = dp.replicate(stack_members([ref_params]))
    rm_r = dp.replicate(stack_members([rm_params]))
    q_BxQ = np.random.default_rng(0).integers(0, cfg.vocab_size, (shape.batch, 1, shape.query))
    q_BxQ = q_BxQ.astype(np.int32)
    qm_BxQ = np.ones_like(q_BxQ)

    t0 = time.perf_counter()
    trainer.rollout_fn = trainer.rollout_fn.lower(
        state.params, ref_r, rm_r, dp.shard(q_BxQ), dp.shard(qm_BxQ),
        trainer.keys_fn(state.rng, state.step)).compile()
    t_compile_rollout = time.perf_counter() - t0
    ro, _ = trainer.rollout(state, ref_r, rm_r, q_BxQ, qm_BxQ)
    t0 = time.perf_counter()
    update = trainer.update_fn.lower(state, ro, None).compile()
    t_compile_update = time.perf_counter() - t0
    flops_xla = xla_flops(update)
    print(f"setup {t0 - t_setup - t_compile_rollout:.0f}s; compile: rollout "
          f"{t_compile_rollout:.0f}s, update {t_compile_update:.0f}s", flush=True)

    holder = {"state": state}

    def rollout():
        return trainer.rollout(holder["state"], ref_r, rm_r, q_BxQ, qm_BxQ)[0]

    def step():
        # The update donates its state: carry the new one forward.
        holder["state"], stats = update(holder["state"], ro, None)
        return stats

    step()  # warm-up (first-call allocations)
    t_rollout = median_time(rollout, args.iters)
    t_update = median_time(step, args.iters)

    flops = update_model_flops(cfg, shape.batch, shape.query, shape.response, shape.noptepochs)
    peak = datasheet_peak(device.device_kind)
    matmul = measure_matmul_peak(jnp.bfloat16, 512 if args.small else 8192)
    achieved = flops / t_update
    tokens = shape.batch * (shape.query + shape.response)
    print(f"rollout: {t_rollout:.3f} s ({shape.batch * shape.response / t_rollout:,.0f} new tokens/s; "
          f"sample + policy, reference and reward forwards)")
    print(f"update:  {t_update:.3f} s ({shape.noptepochs * tokens / t_update:,.0f} tokens/s "
          f"trained, {shape.noptepochs} epochs)")
    print(f"iteration: {t_rollout + t_update:.3f} s = rollout {t_rollout / (t_rollout + t_update):.0%}"
          f" + update {t_update / (t_rollout + t_update):.0%}")
    print(f"update model FLOPs: {fmt_flops(flops)}FLOP (formula above)"
          + (f"; XLA cost_analysis: {fmt_flops(flops_xla)}FLOP" if flops_xla else ""))
    print(f"achieved: {fmt_flops(achieved)}FLOP/s")
    print(f"measured matmul peak (bf16, same run): {fmt_flops(matmul)}FLOP/s "
          f"-> {achieved / matmul:.1%} of it")
    if peak:
        print(f"datasheet dense bf16 peak ({device.device_kind}): {peak / 1e12:.0f} TFLOP/s "
              f"-> MFU {achieved / peak:.1%}")
    else:
        print(f"datasheet peak: unknown for {device.device_kind!r}; MFU vs the measured "
              f"matmul peak only")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({
                "device": device.device_kind, "backend": jax.default_backend(),
                "jax": jax.__version__, "model": "tiny" if args.small else args.model,
                "params": cfg.num_params(), "batch": shape.batch, "query": shape.query,
                "response": shape.response, "noptepochs": shape.noptepochs,
                "nminibatches": shape.nminibatches, "attention_impl": args.attention_impl or "auto",
                "logits_chunk": args.logits_chunk, "rollout_s": t_rollout, "update_s": t_update,
                "update_model_flops": flops, "xla_flops": flops_xla, "achieved_flops": achieved,
                "matmul_peak_flops": matmul, "update_vs_matmul_peak": achieved / matmul,
                "datasheet_peak_flops": peak, "mfu": achieved / peak if peak else None,
                "compile_s": {"rollout": t_compile_rollout, "update": t_compile_update},
            }, f, indent=1)

    if args.profile:
        from benchmarks import trace_summary
        for name, fn in (("update", step), ("rollout", rollout)):
            out = os.path.join(args.profile, name)
            with jax.profiler.trace(out, create_perfetto_trace=True):
                t = time.perf_counter()
                jax.block_until_ready(fn())
                wall = time.perf_counter() - t
            events = trace_summary.device_events(trace_summary.load(trace_summary.newest_trace(out)))
            print(f"profile of one {name} (traced, so slower than the median):\n"
                  + trace_summary.report(trace_summary.summarize(events), wall), flush=True)


if __name__ == "__main__":
    main()

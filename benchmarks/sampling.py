"""Sampler throughput: rlhf_jax's KV-cache sampler vs transformers `generate`.

Ziegler's books shape: GPT-2 124M (random weights), batch 16, query 64,
24 new tokens, T=0.7, plain categorical sampling. Both run on this machine's
CPU with the same weights, in one process. Prints new tokens/s of each, their
ratio, and the fraction of the machine's matmul FLOP/s (measured in the same
run with a large float32 matmul) that the sampler achieves.

    python benchmarks/sampling.py            # full shape
    python benchmarks/sampling.py --small    # seconds, for a smoke run
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def measure_matmul_peak(n: int = 2048, reps: int = 10) -> float:
    """float32 matmul FLOP/s of this machine through XLA (best of `reps`)."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def sampler_flops(cfg, batch: int, query: int, new: int) -> float:
    """Matmul FLOPs of prefill + decode (attention included, embeddings excluded)."""
    d, l, v = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    per_token_dense = 2 * 12 * l * d * d
    prefill = batch * query * per_token_dense + 2 * batch * query * query * d * l * 2
    prefill += 2 * batch * d * v  # logits at the last query position only
    decode = 0
    for t in range(1, new):  # token 0 comes from the prefill logits
        ctx = query + t
        decode += batch * (per_token_dense + 2 * 2 * ctx * d * l + 2 * d * v)
    return prefill + decode


def timeit(fn, reps: int) -> float:
    fn()  # warm-up / compile
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a tiny model, for a smoke run")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--query", type=int, default=64)
    parser.add_argument("--new", type=int, default=24)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    import torch
    from transformers import GPT2Config as HFConfig
    from transformers import GPT2LMHeadModel as HFModel

    from rlhf_jax.models.hf import config_from_hf, state_dict_to_params
    from rlhf_jax.models.gpt2 import GPT2LMHeadModel
    from rlhf_jax.sampling import sample

    torch.manual_seed(0)
    size = dict(n_embd=64, n_layer=2, n_head=4, vocab_size=1000) if args.small else {}
    hf_cfg = HFConfig(**size)
    hf_model = HFModel(hf_cfg).eval()
    sd = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    cfg = config_from_hf(hf_cfg.to_dict())
    params = jax.tree.map(jnp.asarray, state_dict_to_params(sd, cfg, source="random"))
    model = GPT2LMHeadModel(cfg)

    b, q, r = args.batch, args.query, args.new
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, (b, q)).astype(np.int32)
    mask = np.ones((b, q), np.int32)
    ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)
    keys = iter(jax.random.split(jax.random.key(0), 100))

    def ours():
        sample(
            model, params, ids_j, mask_j, next(keys), response_length=r, temperature=args.temperature
        ).tokens.block_until_ready()

    ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

    def theirs():
        with torch.inference_mode():
            hf_model.generate(
                ids_t,
                attention_mask=mask_t,
                max_new_tokens=r,
                min_new_tokens=r,
                do_sample=True,
                temperature=args.temperature,
                top_k=0,
                top_p=1.0,
                pad_token_id=0,
            )

    peak = measure_matmul_peak()
    t_ours = timeit(ours, args.reps)
    t_hf = timeit(theirs, args.reps)
    tok = b * r
    flops = sampler_flops(cfg, b, q, r)
    print(f"shape: {cfg.num_params() / 1e6:.0f}M params, batch {b}, query {q}, new {r}, T={args.temperature}")
    print(f"devices: {jax.devices()}  torch threads: {torch.get_num_threads()}")
    print(f"matmul peak (f32, measured): {peak / 1e9:.1f} GFLOP/s")
    print(f"rlhf_jax sampler:       {tok / t_ours:8.1f} new tokens/s  ({t_ours:.3f} s/call)")
    print(f"transformers generate:  {tok / t_hf:8.1f} new tokens/s  ({t_hf:.3f} s/call)")
    print(f"ratio (ours / transformers): {t_hf / t_ours:.2f}x")
    print(f"sampler achieved {flops / t_ours / 1e9:.1f} GFLOP/s = {flops / t_ours / peak:.0%} of matmul peak")


if __name__ == "__main__":
    main()

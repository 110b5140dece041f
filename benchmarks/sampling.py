"""Sampler throughput: rlhf_jax's KV-cache sampler vs transformers `generate`.

Ziegler's books shape: GPT-2 124M (random weights), batch 16, query 64,
24 new tokens, T=0.7, plain categorical sampling. Both run on the same device
(JAX's default backend; torch on CUDA when JAX runs on a GPU) with the same
weights, in one process, alternating ours and theirs over `--rounds` rounds so
that a change in machine load hits both sides alike. Prints per round and the
median: new tokens/s of each, their ratio, our prefill time and time per
decode step, and the fraction of the matmul peak (a large matmul in the
benchmark's dtype, measured in every round) that the sampler achieves.

The load average (a CPU machine shared with other jobs) is printed beside the
result; on a CPU above 1.5 the headline ratio is withheld, since the numbers
then measure the other jobs as much as the sampler.

    python benchmarks/sampling.py                   # full shape, 5 rounds
    python benchmarks/sampling.py --small           # seconds, for a smoke run
    python benchmarks/sampling.py --batch 512       # a GPU-sized batch
    python benchmarks/sampling.py --dtype bfloat16  # both sides in bf16
    python benchmarks/sampling.py --json out.json   # also write the numbers (gpu_suite.py)
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

MAX_LOAD = 1.5  # above this 1-minute load average no headline ratio is printed


def load_average() -> float:
    return os.getloadavg()[0]


def measure_matmul_peak(dtype=jnp.float32, n: int | None = None, reps: int = 10) -> float:
    """Matmul FLOP/s of this device through XLA (best of `reps`); n x n x n,
    by default 2048 on a CPU and 8192 on an accelerator."""
    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    # Random data: a product of constants runs faster on GPUs (less switching
    # power, higher clocks) and would overstate the peak.
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    # Float32 results, as the model's dots have on a CPU (its fast bf16 kernels).
    f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
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


def timed(fn) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call. CPU seconds (all threads) are
    less stretched by other users' load than wall seconds."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a tiny model, for a smoke run")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--query", type=int, default=64)
    parser.add_argument("--new", type=int, default=24)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (>= 5 for a headline)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--json", default="", help="write the median numbers to this file")
    args = parser.parse_args()

    import torch
    from transformers import GPT2Config as HFConfig
    from transformers import GPT2LMHeadModel as HFModel

    from rlhf_jax.algorithms.sampling import sample
    from rlhf_jax.models.gpt2 import GPT2LMHeadModel
    from rlhf_jax.models.hf import config_from_hf, state_dict_to_params

    on_gpu = jax.default_backend() == "gpu"
    if on_gpu:
        # Full float32 matmuls on both sides (no TF32), so the sides compute the same thing.
        jax.config.update("jax_default_matmul_precision", "highest")
        torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda" if on_gpu else "cpu")
    jdtype, tdtype = {"float32": (jnp.float32, torch.float32), "bfloat16": (jnp.bfloat16, torch.bfloat16)}[
        args.dtype
    ]

    torch.manual_seed(0)
    small = dict(n_embd=64, n_layer=2, n_head=4, vocab_size=1000, bos_token_id=0, eos_token_id=0)
    size = small if args.small else {}
    hf_cfg = HFConfig(**size)
    hf_model = HFModel(hf_cfg).eval()
    sd = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    cfg = config_from_hf(hf_cfg.to_dict()).replace(dtype=jdtype, param_dtype=jdtype)
    params = jax.tree.map(lambda x: jnp.asarray(x, jdtype), state_dict_to_params(sd, cfg, source="random"))
    model = GPT2LMHeadModel(cfg)
    hf_model = hf_model.to(device=dev, dtype=tdtype)

    b, q, r = args.batch, args.query, args.new
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, (b, q)).astype(np.int32)
    mask = np.ones((b, q), np.int32)
    ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)
    keys = iter(jax.random.split(jax.random.key(0), 4 * args.rounds + 4))

    def ours(new=r):
        sample(
            model, params, ids_j, mask_j, next(keys), response_length=new, temperature=args.temperature
        ).tokens.block_until_ready()

    ids_t = torch.tensor(ids, dtype=torch.long, device=dev)
    mask_t = torch.tensor(mask, dtype=torch.long, device=dev)

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
        if on_gpu:
            torch.cuda.synchronize()

    tok = b * r
    flops = sampler_flops(cfg, b, q, r)
    print(f"shape: {cfg.num_params() / 1e6:.0f}M params, batch {b}, query {q}, new {r}, "
          f"T={args.temperature}, {args.dtype}")
    print(f"devices: {jax.devices()}  torch: {dev}, {torch.get_num_threads()} threads")
    ours(), ours(1), theirs()  # compile / warm up
    loads = [load_average()]
    rows = []
    print("round  load  matmul GF/s  ours tok/s  theirs tok/s  ratio  CPU ratio  prefill s  "
          "decode ms/step  % peak")
    for i in range(args.rounds):
        peak = measure_matmul_peak(jdtype)
        t_prefill = timed(lambda: ours(1))[0]
        # Alternate which side goes first, so neither always follows the matmul.
        if i % 2:
            (t_hf, c_hf), (t_ours, c_ours) = timed(theirs), timed(ours)
        else:
            (t_ours, c_ours), (t_hf, c_hf) = timed(ours), timed(theirs)
        loads.append(load_average())
        step_ms = 1e3 * (t_ours - t_prefill) / max(r - 1, 1)
        rows.append((peak, t_ours, t_hf, t_prefill, step_ms, c_hf / c_ours))
        print(f"{i:5d}  {loads[-1]:4.2f}  {peak / 1e9:11.1f}  {tok / t_ours:10.1f}  {tok / t_hf:12.1f}  "
              f"{t_hf / t_ours:5.2f}  {c_hf / c_ours:9.2f}  {t_prefill:9.3f}  {step_ms:14.1f}  "
              f"{flops / t_ours / peak:6.0%}")
    peak, t_ours, t_hf, t_prefill, step_ms, cpu_ratio = np.median(np.array(rows), axis=0)
    ratio = float(np.median([row[2] / row[1] for row in rows]))
    frac = float(np.median([flops / row[1] / row[0] for row in rows]))
    print(f"median of {args.rounds} rounds (load average {min(loads):.2f} .. {max(loads):.2f}):")
    print(f"matmul peak ({args.dtype}, measured): {peak / 1e9:.1f} GFLOP/s")
    print(f"rlhf_jax sampler:       {tok / t_ours:8.1f} new tokens/s  ({t_ours:.3f} s/call; "
          f"prefill {t_prefill:.3f} s, {step_ms:.1f} ms per decode step)")
    print(f"transformers generate:  {tok / t_hf:8.1f} new tokens/s  ({t_hf:.3f} s/call)")
    # The load rule guards a shared CPU; on an accelerator both sides run on the device.
    headline = (on_gpu or max(loads) <= MAX_LOAD) and args.rounds >= 5
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(jax.devices()[0].device_kind), "torch_device": str(dev),
                       "dtype": args.dtype, "batch": b, "query": q, "new": r,
                       "ours_tokens_per_s": tok / t_ours, "generate_tokens_per_s": tok / t_hf,
                       "ratio": ratio, "cpu_seconds_ratio": float(cpu_ratio),
                       "prefill_s": float(t_prefill), "decode_ms_per_step": float(step_ms),
                       "matmul_peak_flops": float(peak), "fraction_of_matmul_peak": frac,
                       "load_average": [min(loads), max(loads)], "headline": headline}, f, indent=1)
    if not headline:
        why = f"load average reached {max(loads):.2f} > {MAX_LOAD}" if max(loads) > MAX_LOAD else "fewer than 5 rounds"
        print(f"no headline ratio: {why}; the rounds above are for comparison only "
              f"(median ratio {ratio:.2f}x, CPU-seconds ratio {cpu_ratio:.2f}x, "
              f"{frac:.0%} of matmul peak)")
    else:
        print(f"ratio (ours / transformers, median of {args.rounds}): {ratio:.2f}x "
              f"(CPU seconds: {cpu_ratio:.2f}x)")
        print(f"sampler achieved {frac:.0%} of matmul peak ({flops / t_ours / 1e9:.1f} GFLOP/s)")


if __name__ == "__main__":
    main()

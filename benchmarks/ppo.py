"""PPO iteration throughput: rlhf_jax vs TRL's PPO trainer, same weights and shapes.

Ziegler's books shape (LHP sentiment config): GPT-2 124M random weights
(`GPT2Config.from_name("gpt2")`), query 64, response 24, batch 64 episodes,
nminibatches 1, noptepochs 4, temperature 0.7, float32. One PPO iteration is:
sample the responses, recompute policy logprobs and values, the reference's
logprobs, the reward model's scores, then the update (4 epochs of clipped
policy + value losses with Adam). Our policy carries Ziegler's shared value
head (`--value separate`: Stiennon's separate value network, which is what
TRL always uses).

Printed: episodes/s of a full iteration through `PPOTrainer.rollout` +
`update_fn` (each compiled ahead of time, then run), its breakdown (each piece
compiled on its own and timed alone), the same iteration with TRL, and the
ratio; each side runs in its own process. Wall and process CPU seconds are
both shown: on a shared machine other users' load stretches wall time, not
CPU time.

    python benchmarks/ppo.py            # full shape: several minutes on a CPU
    python benchmarks/ppo.py --small    # a tiny model: seconds
    python benchmarks/ppo.py --json out.json   # also write the numbers (gpu_suite.py)

On a GPU both sides run there (TRL through accelerate, the hand-written
baseline on CUDA too), float32 with TF32 matmuls on both (JAX's default).

The baseline needs TRL's PPO: `pip install "trl==1.12.0"`. TRL exported
`trl.PPOTrainer` up to 0.28, kept it in `trl.experimental.ppo` from 0.26 to
1.12, and removed it in 1.13, so a plain `pip install trl` gets a TRL without
PPO; the script then says so and times a hand-written PyTorch PPO iteration
with the same shapes instead (`transformers` `generate` + forward passes;
labelled as such). TRL is a benchmark-only dependency, not one of the package's.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import dataclasses
import json
import math
import multiprocessing
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # PPO is in trl.experimental


@dataclasses.dataclass(frozen=True)
class Shape:
    batch: int
    query: int
    response: int
    nminibatches: int
    noptepochs: int
    temperature: float


# --------------------------------------------------------------------------- weights


def build_weights(cfg, seed: int = 0):
    """One random GPT-2 (transformers init) and a reward head, as torch and as Flax params.

    Returns `(hf_lm, trunk, rm_head_Dx1)`: the transformers `GPT2LMHeadModel`,
    our `transformer` params with identical weights, and the reward head's
    kernel ~ N(0, 1/sqrt(d+1)) (docs/implementation_details.md item 11).
    """
    import torch
    from transformers import GPT2Config as HFConfig
    from transformers import GPT2LMHeadModel as HFModel

    from rlhf_jax.models.hf import config_to_hf, state_dict_to_params

    torch.manual_seed(seed)
    hf_lm = HFModel(HFConfig(**config_to_hf(cfg))).eval()
    sd = {k: v.detach().numpy() for k, v in hf_lm.state_dict().items()}
    trunk = state_dict_to_params(sd, cfg, source="random")["transformer"]
    head = np.random.default_rng(seed).normal(0, 1 / math.sqrt(cfg.n_embd + 1), (cfg.n_embd, 1))
    return hf_lm, trunk, head.astype(np.float32)


def ours_params(cfg, trunk, head_Dx1, value: str):
    """(models, params, ref_params, rm_params) for our PPO stack."""
    from rlhf_jax.models import GPT2LMHeadModel
    from rlhf_jax.models.heads import (PolicyWithValueHead, RewardModel, ValueModel,
                                       value_params_from_reward)
    from rlhf_jax.stages.rollout import PPOModels

    d = cfg.n_embd
    trunk = jax.tree.map(jnp.asarray, trunk)
    rm_params = {"transformer": trunk,
                 "reward_head": {"kernel": jnp.asarray(head_Dx1), "bias": jnp.zeros((1,))},
                 "reward_gain": jnp.ones(()), "reward_bias": jnp.zeros(())}
    lm = GPT2LMHeadModel(cfg)
    if value == "shared":
        models = PPOModels(policy=PolicyWithValueHead(cfg), reference=lm, reward=RewardModel(cfg))
        params = {"policy": {"transformer": trunk, "value_head": {
            "kernel": jnp.zeros((d, 1)), "bias": jnp.zeros((1,))}}}
    else:
        models = PPOModels(policy=lm, reference=lm, value=ValueModel(cfg), reward=RewardModel(cfg))
        params = {"policy": {"transformer": trunk}, "value": value_params_from_reward(rm_params)}
    # Distinct buffers per role: the update donates the policy's.
    copy_ = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731
    return models, copy_(params), {"transformer": copy_(trunk)}, rm_params


def run_config(shape: Shape, vocab: int):
    """The base config with the benchmark's shape (every field a trainer reads exists)."""
    from rlhf_jax import config_lib

    c = config_lib.base_config()
    c.seed = 0
    c.task.update(dict(response_length=shape.response, temperature=shape.temperature,
                       pad_token=vocab, truncate_token=None, truncate_after=0,
                       penalty_reward_value=None, eos_token=None, stop_at_eos=False))
    c.ppo.update(dict(batch_size=shape.batch, nminibatches=shape.nminibatches,
                      noptepochs=shape.noptepochs, lr=1e-5, adam="tf", adam_eps=1e-5,
                      cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95,
                      whiten_rewards=True, whiten_scope="global",
                      total_episodes=shape.batch * 10, reward_source="rm", log_every=1,
                      checkpoint_every=10, num_logged_samples=0))
    c.kl.update(dict(coef=0.15, adaptive=True, target=6.0, horizon=10000))
    return c


# --------------------------------------------------------------------------- ours


@dataclasses.dataclass(frozen=True)
class Clock:
    """Wall and process CPU seconds (all threads). On a shared machine the CPU
    seconds are the fairer measure: other users' load stretches wall time only."""

    wall: float
    cpu: float

    @staticmethod
    def now() -> "Clock":
        return Clock(time.perf_counter(), time.process_time())

    def __sub__(self, other: "Clock") -> "Clock":
        return Clock(self.wall - other.wall, self.cpu - other.cpu)

    def __add__(self, other: "Clock") -> "Clock":
        return Clock(self.wall + other.wall, self.cpu + other.cpu)


def timed(fn, *args):
    """(Clock, result) of one call, waiting for the device."""
    t = Clock.now()
    out = jax.block_until_ready(fn(*args))
    return Clock.now() - t, out


def aot(fn, *args):
    """`fn` (jitted) compiled ahead of time for `args`: later calls only run."""
    return fn.lower(*args).compile()


def bench_ours(cfg, trunk, head_Dx1, shape: Shape, queries_BxQ, value: str,
               iters: int) -> dict:
    """Breakdown pieces, then full iterations through PPOTrainer: a `Clock` per part."""
    from rlhf_jax.algorithms.ppo import forward_policy_value
    from rlhf_jax.algorithms.sampling import sample
    from rlhf_jax.infra import parallel
    from rlhf_jax.stages.rollout import TaskSpec, rm_scores
    from rlhf_jax.stages.train_ppo import PPOTrainer, init_state, stack_members

    models, params, ref_params, rm_params = ours_params(cfg, trunk, head_Dx1, value)
    run_cfg = run_config(shape, cfg.vocab_size)
    task = TaskSpec.from_config(run_cfg.task)
    t_ = shape.temperature
    q_BxQ = jnp.asarray(queries_BxQ)
    qm_BxQ = jnp.ones_like(q_BxQ)
    rng = jax.random.key(0)
    times = {}

    # Each piece alone, as the rollout runs it (compiled first, then timed once).
    sample_fn = jax.jit(lambda p, q, qm, k: sample(
        models.policy, p["policy"], q, qm, k, response_length=shape.response, temperature=t_,
        pad_token_id=task.pad_token))
    policy_fn = jax.jit(lambda p, q, qm, r, m: forward_policy_value(
        models.apply_policy_value, p, q, qm, r, m, t_)[::2])
    ref_fn = jax.jit(lambda p, q, qm, r, m: models.reference_logprobs(p, q, qm, r, m, t_))
    rm_fn = jax.jit(lambda p, q, qm, r: rm_scores(models.reward, p, q, qm, r, task))

    times["sample"], s = timed(aot(sample_fn, params, q_BxQ, qm_BxQ, rng), params, q_BxQ,
                               qm_BxQ, rng)
    fwd_args = (q_BxQ, qm_BxQ, s.tokens, s.mask)
    times["policy forward (logprobs, values)"], _ = timed(
        aot(policy_fn, params, *fwd_args), params, *fwd_args)
    times["reference forward"], _ = timed(aot(ref_fn, ref_params, *fwd_args), ref_params,
                                          *fwd_args)
    times["score (RM forward)"], _ = timed(aot(rm_fn, rm_params, q_BxQ, qm_BxQ, s.tokens),
                                           rm_params, q_BxQ, qm_BxQ, s.tokens)
    del s

    # The full iteration: PPOTrainer's own compiled rollout and update steps.
    dp = parallel.DataParallel("mesh", 1)
    trainer = PPOTrainer(run_cfg, models, dp)
    # A run is a group of one: a member axis first on the state and models, second
    # on the queries.
    state = dp.replicate(stack_members([init_state(params, trainer.optimizer, run_cfg)]))
    ref_r = dp.replicate(stack_members([ref_params]))
    rm_r = dp.replicate(stack_members([rm_params]))
    q_BxMxQ = queries_BxQ[:, None]
    qm_BxMxQ = np.ones_like(q_BxMxQ)
    trainer.rollout_fn = aot(trainer.rollout_fn, state.params, ref_r, rm_r, dp.shard(q_BxMxQ),
                             dp.shard(qm_BxMxQ), trainer.keys_fn(state.rng, state.step))
    for i in range(iters):  # the last iteration's times are reported
        t0 = Clock.now()
        ro, _ = trainer.rollout(state, ref_r, rm_r, q_BxMxQ, qm_BxMxQ)
        jax.block_until_ready(ro)
        times["iteration: rollout"] = Clock.now() - t0
        if i == 0:
            trainer.update_fn = aot(trainer.update_fn, state, ro, None)
        times["iteration: train (the update)"], (state, stats) = timed(trainer.update_fn, state,
                                                                       ro, None)
        if i == 0:
            approxkl = float(stats["ppo/policy/approxkl"][0])
    times["iteration"] = times["iteration: rollout"] + times["iteration: train (the update)"]
    print(f"  (ours: first-update approxkl {approxkl:.2e})", flush=True)
    return times


# --------------------------------------------------------------------------- TRL


def trl_ppo():
    """TRL's `(PPOConfig, PPOTrainer)`, wherever this TRL version keeps them."""
    try:
        from trl.experimental.ppo import PPOConfig, PPOTrainer  # TRL 0.26 - 1.12
    except ImportError:
        from trl import PPOConfig, PPOTrainer  # TRL <= 0.28
    return PPOConfig, PPOTrainer


def trl_ppo_unavailable_reason() -> str | None:
    """None if TRL's PPO trainer imports, else exactly why not."""
    try:
        import trl
    except ImportError as e:
        return f"TRL is not installed ({e}); pip install \"trl==1.12.0\""
    try:
        trl_ppo()
    except ImportError as e:
        return (f"TRL {trl.__version__} has no PPO trainer (neither trl.experimental.ppo nor "
                f"trl.PPOTrainer: {e}): TRL removed PPO in 1.13; pip install \"trl==1.12.0\"")
    return None


def _hf_heads(cfg, hf_lm, head_Dx1, value: str):
    """transformers reward and value models (`GPT2ForSequenceClassification`), policy's trunk."""
    import torch
    from transformers import GPT2Config as HFConfig
    from transformers import GPT2ForSequenceClassification

    from rlhf_jax.models.hf import config_to_hf

    def scalar_model(kernel_Dx1):
        m = GPT2ForSequenceClassification(HFConfig(**config_to_hf(cfg), num_labels=1)).eval()
        m.transformer.load_state_dict(hf_lm.transformer.state_dict())
        with torch.no_grad():
            m.score.weight.copy_(torch.from_numpy(kernel_Dx1.T.copy()))
        return m

    reward = scalar_model(head_Dx1)
    value_model = scalar_model(head_Dx1 if value == "separate" else np.zeros_like(head_Dx1))
    return reward, value_model


def _word_level_tokenizer(vocab: int):
    """A fast tokenizer whose ids are the model's ids (TRL wants a processing class).

    Pad is id `vocab`, outside the model's vocabulary (docs/implementation_details.md item 2):
    TRL masks pads and zeroes them before each forward; queries have none.
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = {str(i): i for i in range(vocab)}
    words["<pad>"] = vocab
    tok = Tokenizer(WordLevel(words, unk_token="0"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                   eos_token=str(vocab - 1))


def bench_trl(cfg, hf_lm, head_Dx1, shape: Shape, queries_BxQ, value: str, iters: int,
              micro_batch: int | None = None) -> Clock:
    """TRL's last PPO iteration of `iters` (its `train()` loop, one batch each).

    `micro_batch` < the minibatch runs each minibatch as gradient accumulation
    over micro-batches: the same update, less activation memory.
    """
    micro = micro_batch or shape.batch // shape.nminibatches
    if (shape.batch // shape.nminibatches) % micro:
        raise ValueError(f"--trl_micro_batch={micro} does not divide the minibatch "
                         f"{shape.batch // shape.nminibatches}")
    from transformers import TrainerCallback

    PPOConfig, PPOTrainer = trl_ppo()
    reward, value_model = _hf_heads(cfg, hf_lm, head_Dx1, value)
    policy = copy.deepcopy(hf_lm)
    ref = copy.deepcopy(hf_lm)
    tokenizer = _word_level_tokenizer(cfg.vocab_size)
    # A list of rows is all the trainer needs (len + a DataLoader with the padding
    # collator); a `datasets.Dataset` would only add hashing of the data.
    data = [{"input_ids": row} for row in queries_BxQ.tolist()] * iters

    marks = []

    class Marks(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks.append(Clock.now())

        def on_step_end(self, args, state, control, **kwargs):
            marks.append(Clock.now())

    with tempfile.TemporaryDirectory() as out:
        args = PPOConfig(
            output_dir=out, per_device_train_batch_size=micro,
            gradient_accumulation_steps=shape.batch // shape.nminibatches // micro,
            num_mini_batches=shape.nminibatches, num_ppo_epochs=shape.noptepochs,
            total_episodes=shape.batch * iters, local_rollout_forward_batch_size=shape.batch,
            response_length=shape.response, temperature=shape.temperature, stop_token=None,
            missing_eos_penalty=None, kl_coef=0.15, whiten_rewards=True, learning_rate=1e-5,
            cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95,
            # As ours: float32, no activation recomputation (TRL's defaults are bf16 and
            # gradient checkpointing), no logging backends, no checkpoints, no sample tables.
            bf16=False, gradient_checkpointing=False, report_to=[], save_strategy="no",
            num_sample_generations=0, logging_steps=1, disable_tqdm=True, seed=0,
            dataloader_num_workers=0,
        )
        trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref,
                             reward_model=reward, train_dataset=data, value_model=value_model,
                             eval_dataset=data, callbacks=[Marks()])
        trainer.train()
    return marks[-1] - marks[-2]


# --------------------------------------------------------------------------- hand-written torch


def bench_torch(cfg, hf_lm, head_Dx1, shape: Shape, queries_BxQ, value: str, iters: int) -> Clock:
    """The last of `iters` faithful hand-written PyTorch PPO iterations (the fallback baseline).

    `generate` (plain sampling at T, exactly `response` tokens), then forwards for
    policy logprobs and values, reference logprobs and RM scores, rewards with the
    KL penalty, whitening and GAE, and `noptepochs` x `nminibatches` Adam steps on
    the clipped losses. Values come from a linear head on the policy's last hidden
    state (`value="shared"`) or from a second GPT-2 (`"separate"`).
    """
    import torch

    b, q, r, t_ = shape.batch, shape.query, shape.response, shape.temperature
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as TRL (accelerate)
    reward, value_net = (m.to(dev) for m in _hf_heads(cfg, hf_lm, head_Dx1, value))
    policy = copy.deepcopy(hf_lm).to(dev).train()
    ref = copy.deepcopy(hf_lm).to(dev).eval()
    value_head = torch.nn.Linear(cfg.n_embd, 1).to(dev)
    torch.nn.init.zeros_(value_head.weight)
    torch.nn.init.zeros_(value_head.bias)
    trained = list(policy.parameters()) + (
        list(value_head.parameters()) if value == "shared" else list(value_net.parameters()))
    opt = torch.optim.Adam(trained, lr=1e-5, eps=1e-5)
    ids = torch.tensor(queries_BxQ, dtype=torch.long, device=dev)

    def values_of(seq, hidden):
        if value == "shared":
            return value_head(hidden[:, q - 1: -1])[..., 0]
        h = value_net.transformer(seq).last_hidden_state
        return value_net.score(h[:, q - 1: -1])[..., 0]

    def whiten(x, shift_mean=True):
        mean, var = x.mean(), x.var(unbiased=False)
        out = (x - mean) * torch.rsqrt(var + 1e-8)
        return out if shift_mean else out + mean

    def iteration():
        with torch.no_grad():
            seq = policy.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=r,
                                  min_new_tokens=r, do_sample=True, temperature=t_, top_k=0,
                                  top_p=1.0, pad_token_id=0)
            resp = seq[:, q:]
            out = policy(seq, output_hidden_states=True)
            old_logp = torch.log_softmax(out.logits[:, q - 1: -1] / t_, -1).gather(
                -1, resp[..., None])[..., 0]
            old_values = values_of(seq, out.hidden_states[-1])
            ref_logp = torch.log_softmax(ref(seq).logits[:, q - 1: -1] / t_, -1).gather(
                -1, resp[..., None])[..., 0]
            h = reward.transformer(seq).last_hidden_state
            scores = reward.score(h[:, -1])[:, 0]
            kl = old_logp - ref_logp
            rewards = -0.15 * kl
            rewards[:, -1] += scores
            rewards = whiten(rewards, shift_mean=False)
            adv, last = torch.zeros_like(rewards), torch.zeros(b, device=dev)
            for i in reversed(range(r)):
                next_v = old_values[:, i + 1] if i < r - 1 else torch.zeros(b, device=dev)
                last = rewards[:, i] + next_v - old_values[:, i] + 0.95 * last
                adv[:, i] = last
            returns = adv + old_values
            adv = whiten(adv)
        mb = b // shape.nminibatches
        for _ in range(shape.noptepochs):
            perm = torch.randperm(b, device=dev)
            for j in range(shape.nminibatches):
                rows = perm[j * mb:(j + 1) * mb]
                out = policy(seq[rows], output_hidden_states=True)
                logp = torch.log_softmax(out.logits[:, q - 1: -1] / t_, -1).gather(
                    -1, resp[rows][..., None])[..., 0]
                v = values_of(seq[rows], out.hidden_states[-1])
                ratio = torch.exp(logp - old_logp[rows])
                a = adv[rows]
                pg = torch.max(-a * ratio, -a * ratio.clamp(0.8, 1.2)).mean()
                v_clip = old_values[rows] + (v - old_values[rows]).clamp(-0.2, 0.2)
                vf = 0.5 * torch.max((v - returns[rows]) ** 2, (v_clip - returns[rows]) ** 2).mean()
                opt.zero_grad()
                (pg + 0.1 * vf).backward()
                opt.step()

    for _ in range(iters):  # the last iteration's time is reported
        t0 = Clock.now()
        iteration()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        spent = Clock.now() - t0
    return spent


# --------------------------------------------------------------------------- main


def make_queries(cfg, shape: Shape) -> np.ndarray:
    return np.random.default_rng(0).integers(0, cfg.vocab_size, (shape.batch, shape.query)
                                             ).astype(np.int32)


def run_ours(cfg, shape: Shape, value: str, iters: int) -> dict:
    _, trunk, head = build_weights(cfg)
    return bench_ours(cfg, trunk, head, shape, make_queries(cfg, shape), value, iters)


def run_baseline(kind: str, cfg, shape: Shape, value: str, iters: int,
                 trl_micro_batch: int | None = None) -> Clock:
    import torch

    # On a GPU JAX's default float32 matmuls use TF32 tensor cores; torch's
    # default does not. The same arithmetic on both sides: TF32 here too.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    hf_lm, _, head = build_weights(cfg)
    if kind == "trl":
        return bench_trl(cfg, hf_lm, head, shape, make_queries(cfg, shape), value, iters,
                         trl_micro_batch)
    return bench_torch(cfg, hf_lm, head, shape, make_queries(cfg, shape), value, iters)


def in_subprocess(fn, *args):
    """`fn(*args)` in a fresh process: one side's memory (XLA buffers, torch caches) is
    returned to the OS before the other starts, so the two never share the RAM."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true",
                        help="a tiny model: a seconds-long smoke run")
    parser.add_argument("--value", choices=("shared", "separate"), default="shared",
                        help="our value model: Ziegler's shared head or Stiennon's separate "
                             "net (at the full shape the separate net's update needs ~14 GB "
                             "of XLA temp buffers on CPU; shared: ~7.5 GB)")
    parser.add_argument("--iters", type=int, default=None,
                        help="iterations per side, the last one timed (default: 1, --small: 2)")
    parser.add_argument("--baseline", choices=("trl", "torch"), default="trl",
                        help="trl: TRL's PPOTrainer (falls back to torch if it cannot run); "
                             "torch: the hand-written PyTorch iteration")
    parser.add_argument("--trl_micro_batch", type=int, default=None,
                        help="TRL: gradient accumulation over micro-batches of this size "
                             "(the same update; at the full shape TRL's 64-row minibatch "
                             "needs more than 23 GB, so 16 fits a 24 GB machine)")
    parser.add_argument("--json", default="", help="write the measured numbers to this file")
    args = parser.parse_args()

    import torch

    from rlhf_jax.models import GPT2Config

    if args.small:
        cfg = GPT2Config(vocab_size=1000, n_positions=64, n_embd=64, n_layer=2, n_head=4)
        shape = Shape(batch=16, query=16, response=8, nminibatches=1, noptepochs=4,
                      temperature=0.7)
    else:
        cfg = GPT2Config.from_name("gpt2")
        shape = Shape(batch=64, query=64, response=24, nminibatches=1, noptepochs=4,
                      temperature=0.7)
    iters = args.iters or (2 if args.small else 1)
    print(f"shape: GPT-2 {cfg.num_params() / 1e6:.0f}M (random weights), batch {shape.batch}, "
          f"query {shape.query}, response {shape.response}, nminibatches {shape.nminibatches}, "
          f"noptepochs {shape.noptepochs}, T={shape.temperature}, float32")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)

    # Separate processes keep the two sides' memory apart at the full shape.
    run = (lambda fn, *a: fn(*a)) if args.small else in_subprocess  # noqa: E731
    times = run(run_ours, cfg, shape, args.value, iters)
    ours = times["iteration"]
    print(f"rlhf_jax ({args.value} value), PPO iteration {iters} of {iters} (compiled ahead of "
          f"time):")
    print(f"  {'':44s} {'wall s':>8s} {'CPU s':>8s}")
    for name, spent in times.items():
        print(f"  {name:44s} {spent.wall:8.2f} {spent.cpu:8.2f}")
    print(f"  => {shape.batch / ours.wall:.3f} episodes/s, "
          f"{shape.batch / ours.cpu:.3f} episodes per CPU-second", flush=True)

    baseline = args.baseline
    if baseline == "trl":
        reason = trl_ppo_unavailable_reason()
        if reason is not None:
            print(f"TRL's PPO cannot run here: {reason}")
            print("baseline: a hand-written PyTorch PPO iteration (transformers generate + "
                  "forwards), NOT TRL")
            baseline = "torch"
    if baseline == "trl":
        import trl

        name = f"TRL {trl.__version__} PPOTrainer (separate value model, always)"
        if args.trl_micro_batch:
            name += f", micro-batches of {args.trl_micro_batch}"
    else:
        name = f"hand-written PyTorch PPO ({args.value} value)"
    print(f"load average {os.getloadavg()[0]:.1f}; running {name} ...", flush=True)
    base = run(run_baseline, baseline, cfg, shape, args.value, iters, args.trl_micro_batch)
    print(f"{name}, iteration {iters} of {iters}: {base.wall:.2f} s wall, {base.cpu:.2f} CPU s "
          f"=> {shape.batch / base.wall:.3f} episodes/s, "
          f"{shape.batch / base.cpu:.3f} episodes per CPU-second")
    print(f"ratio (rlhf_jax / baseline): {base.wall / ours.wall:.2f}x episodes/s (wall), "
          f"{base.cpu / ours.cpu:.2f}x per CPU-second")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"platform": jax.devices()[0].platform, "value": args.value,
                       "model_params": cfg.num_params(), "batch": shape.batch,
                       "baseline": baseline, "baseline_name": name,
                       "torch_cuda": torch.cuda.is_available(),
                       "ours_s": ours.wall, "ours_cpu_s": ours.cpu,
                       "ours_parts_s": {k: v.wall for k, v in times.items()},
                       "baseline_s": base.wall, "baseline_cpu_s": base.cpu,
                       "ours_episodes_per_s": shape.batch / ours.wall,
                       "baseline_episodes_per_s": shape.batch / base.wall,
                       "ratio": base.wall / ours.wall}, f, indent=1)


if __name__ == "__main__":
    main()

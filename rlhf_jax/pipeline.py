"""Stage orchestration for `launch.py`: pretrain -> sft -> labels -> reward -> ppo -> dpo -> eval -> figures.

Each stage a config names runs in that order. A finished stage leaves
`WORKDIR/stages/<stage>.json` (its summary) and its artifacts; a relaunch skips
it. A stage interrupted midway resumes from its own Orbax checkpoints
(`WORKDIR/checkpoints/<stage>`), so a run killed at any moment and relaunched
with the same command ends with the same metrics as one never interrupted.

Artifacts:
  tokenizer/                 the trained tokenizer (offline default)
  models/{pretrained,sft,policy,dpo}/   Hugging Face GPT-2 directories
  models/reward/             reward model params (msgpack) and its config
  labels/{train,val}.jsonl   the labels the reward model trained on
  labels/online_<r>.jsonl, online/round_<r>/   online collection rounds (rlhf_jax.online)
  eval.json                  the final evaluation summary
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Callable

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rlhf_jax import config_lib, parallel
from rlhf_jax.data import datasets, labels as labels_lib, tasks
from rlhf_jax.metrics import MetricsWriter
from rlhf_jax.models import GPT2Config, GPT2LMHeadModel, load_pretrained, save_pretrained
from rlhf_jax.models.heads import PolicyWithValueHead, RewardModel, ValueModel, value_params_from_reward
from rlhf_jax.ppo import forward_policy_value
from rlhf_jax.rollout import lm_apply
from rlhf_jax.sampling import sample

# Fold-in constants: one independent PRNG stream per stage from the base key.
_STREAMS = {s: i + 101 for i, s in enumerate(config_lib.STAGES)}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def stage_key(cfg, stage: str) -> jax.Array:
    return jax.random.fold_in(jax.random.key(cfg.seed), _STREAMS[stage])


@dataclasses.dataclass
class Context:
    """What the stages share: config, workdir, devices, writer, tokenizer, task fields."""

    cfg: ml_collections.ConfigDict
    workdir: str
    dp: parallel.DataParallel
    writer: MetricsWriter
    stages: list[str]
    tokenizer: Any = None
    corpus: list[str] | None = None

    def path(self, *parts) -> str:
        return os.path.join(self.workdir, *parts)

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids if 0 <= int(i) < len(self.tokenizer)]
        return self.tokenizer.decode(ids, skip_special_tokens=True)


# --------------------------------------------------------------------------
# Models and artifacts.


def _model_config(cfg, vocab_size: int) -> GPT2Config:
    m = cfg.model
    return GPT2Config(vocab_size=vocab_size, n_positions=m.n_positions, n_embd=m.n_embd,
                      n_layer=m.n_layer, n_head=m.n_head, dtype=_DTYPES[m.dtype],
                      param_dtype=_DTYPES[m.param_dtype], remat=m.remat,
                      kv_cache_dtype=_kv_cache_dtype(cfg))


def _kv_cache_dtype(cfg):
    return _DTYPES[cfg.model.kv_cache_dtype] if cfg.model.kv_cache_dtype else None


def _load_lm(cfg, path: str):
    return load_pretrained(path, dtype=_DTYPES[cfg.model.dtype],
                           param_dtype=_DTYPES[cfg.model.param_dtype], remat=cfg.model.remat,
                           kv_cache_dtype=_kv_cache_dtype(cfg))


def base_model(ctx: Context):
    """(model, params) before any fine-tuning: pretrained here, random, or a checkpoint."""
    cfg = ctx.cfg
    if "pretrain" in ctx.stages:
        return _load_lm(cfg, ctx.path("models", "pretrained"))
    if cfg.model.init == "scratch":
        # A seeded random GPT-2 (runlocal): the same on every call and relaunch.
        model = GPT2LMHeadModel(_model_config(cfg, len(ctx.tokenizer)))
        key = jax.random.fold_in(jax.random.key(cfg.seed), 7)
        init = lambda k: model.init(k, jnp.zeros((1, 8), jnp.int32))["params"]  # noqa: E731
        if ctx.dp.mode == "mesh":  # created split along fsdp: no full copy anywhere
            return model, ctx.dp.init(init, key)
        return model, init(key)
    if not cfg.model.name_or_path:
        raise ValueError("model.name_or_path is empty and there is no pretrain stage")
    return _load_lm(cfg, cfg.model.name_or_path)


def initial_policy(ctx: Context):
    """(model, params) the policy starts from and the frozen reference: the SFT
    model when the config has an sft stage (Stiennon), else the base model."""
    if "sft" in ctx.stages:
        return _load_lm(ctx.cfg, ctx.path("models", "sft"))
    return base_model(ctx)


def save_reward_model(path: str, rm_model: RewardModel, rm_params) -> None:
    os.makedirs(path, exist_ok=True)
    from rlhf_jax.models.hf import config_to_hf

    meta = {"head": rm_model.head, "gpt2": config_to_hf(rm_model.config)}
    tmp = os.path.join(path, "params.msgpack.tmp")
    with open(tmp, "wb") as f:
        f.write(flax.serialization.msgpack_serialize(jax.device_get(rm_params)))
    os.replace(tmp, os.path.join(path, "params.msgpack"))
    with open(os.path.join(path, "reward_config.json"), "w") as f:
        json.dump(meta, f, indent=2)


def load_reward_model(cfg, path: str):
    from rlhf_jax.models.hf import config_from_hf

    with open(os.path.join(path, "reward_config.json")) as f:
        meta = json.load(f)
    config = config_from_hf(meta["gpt2"], source=path, dtype=_DTYPES[cfg.model.dtype],
                            param_dtype=_DTYPES[cfg.model.param_dtype], remat=cfg.model.remat,
                            kv_cache_dtype=_kv_cache_dtype(cfg))
    with open(os.path.join(path, "params.msgpack"), "rb") as f:
        params = flax.serialization.msgpack_restore(f.read())
    return RewardModel(config, head=meta["head"]), jax.tree.map(jnp.asarray, params)


# --------------------------------------------------------------------------
# Tokenizer, corpus and queries.


def _setup_tokenizer(ctx: Context) -> None:
    cfg = ctx.cfg
    from rlhf_jax.data import synthetic
    from rlhf_jax.models import load_tokenizer

    if cfg.task.query_dataset == "synthetic" or cfg.model.tokenizer == "synthetic":
        ctx.corpus = synthetic.generate_corpus(cfg.pretrain.num_docs, cfg.seed)
    if cfg.model.tokenizer == "synthetic":
        tok_dir = ctx.path("tokenizer")
        if os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
            ctx.tokenizer = load_tokenizer(tok_dir)
        elif parallel.process_is_main():
            ctx.tokenizer = synthetic.train_tokenizer(ctx.corpus, cfg.pretrain.vocab_size, tok_dir)
        else:
            raise RuntimeError("multi-host runs need the tokenizer trained first (process 0)")
    else:
        ctx.tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path)


def _resolve_task(ctx: Context) -> None:
    """Fills token ids the config leaves to the tokenizer (pad, eos)."""
    t = ctx.cfg.task
    with t.unlocked():
        if t.pad_token is None:
            t.pad_token = len(ctx.tokenizer)  # outside the vocabulary: never sampled
        if t.eos_token is None:
            t.eos_token = ctx.tokenizer.eos_token_id
    if t.pad_token < len(ctx.tokenizer):
        raise ValueError(f"task.pad_token={t.pad_token} is inside the vocabulary (size "
                         f"{len(ctx.tokenizer)}); it must be an id the model can never emit")


def queries(ctx: Context, split: str, limit: int | None = None) -> datasets.QueryDataset:
    return datasets.load_queries(ctx.cfg.task, ctx.tokenizer, split=split,
                                 seed=ctx.cfg.seed, limit=limit, synthetic_texts=ctx.corpus)


# --------------------------------------------------------------------------
# Device-parallel sampling, scoring and KL, shared by the labels and eval stages.


def _sampler(ctx: Context, model, *, greedy: bool = False) -> Callable:
    t = ctx.cfg.task
    R, S = parallel.REP, parallel.SHARD

    def fn(params, q_BxQ, m_BxQ, rng):
        out = sample(model, params, q_BxQ, m_BxQ, rng, response_length=t.response_length,
                     temperature=t.temperature, greedy=greedy, stop_at_eos=t.stop_at_eos,
                     eos_token_id=t.eos_token, pad_token_id=t.pad_token,
                     row_offset=parallel.global_row_offset(q_BxQ.shape[0]))
        return out.tokens, out.mask

    return ctx.dp.compile(fn, (R, S, S, R), (S, S))


def sample_responses(ctx: Context, model, params, q_NxQ, m_NxQ, rng, batch_size: int):
    """Samples for N queries in device-parallel batches; host arrays [N,R]."""
    dp = ctx.dp
    fn = _sampler(ctx, model)
    params_r = dp.replicate(params)
    toks, masks = [], []
    n = len(q_NxQ)
    padded = -(-n // batch_size) * batch_size
    q = np.concatenate([q_NxQ, np.repeat(q_NxQ[-1:], padded - n, 0)])
    m = np.concatenate([m_NxQ, np.repeat(m_NxQ[-1:], padded - n, 0)])
    for i in range(0, padded, batch_size):
        key = jax.random.fold_in(rng, i // batch_size)
        tk, mk = fn(params_r, dp.shard(q[i:i + batch_size]), dp.shard(m[i:i + batch_size]),
                    dp.replicate(key))
        toks.append(np.asarray(dp.unshard(tk)))
        masks.append(np.asarray(dp.unshard(mk)))
    return np.concatenate(toks)[:n], np.concatenate(masks)[:n]


def postprocess(ctx: Context, responses_NxR: np.ndarray):
    """Truncated responses and their masks (what labellers and the RM see)."""
    t = ctx.cfg.task
    processed = np.asarray(tasks.postprocess_responses(
        jnp.asarray(responses_NxR), t.truncate_token, t.truncate_after, t.pad_token))
    return processed, (processed != t.pad_token).astype(np.int32)


def gold_function(ctx: Context) -> Callable | None:
    """`gold(query, query_mask, processed) -> [B]` on the host, or None without a gold reward."""
    if ctx.cfg.labels.gold != "vader":
        return None
    from rlhf_jax.labelers import VaderGold

    vader = VaderGold()
    pad = ctx.cfg.task.pad_token

    def gold(q_BxQ, m_BxQ, processed_BxR):
        return vader([ctx.decode(r[r != pad]) for r in np.asarray(processed_BxR)])

    return gold


def _sequence_kl_fn(ctx: Context, policy_model, ref_model):
    """Per-shard KL(policy || ref) of given responses: sum_t logp - ref_logp (temperature-scaled)."""
    t = ctx.cfg.task

    def fn(pol_params, ref_params, q, m, r, rm):
        logp, _, _ = forward_policy_value(lm_apply(policy_model), pol_params, q, m, r, rm,
                                          t.temperature)
        ref, _, _ = forward_policy_value(lm_apply(ref_model), ref_params, q, m, r, rm,
                                         t.temperature)
        return jnp.sum((logp - ref) * rm, axis=1)

    R, S = parallel.REP, parallel.SHARD
    return ctx.dp.compile(fn, (R, R, S, S, S, S), S)


# --------------------------------------------------------------------------
# Stages.


def stage_pretrain(ctx: Context) -> dict:
    """Tiny GPT-2 pretrained on the synthetic corpus (offline default only)."""
    from rlhf_jax import sft

    cfg = ctx.cfg
    p = cfg.pretrain
    eos = ctx.tokenizer.eos_token_id
    stream: list[int] = []
    for text in ctx.corpus:
        stream.extend(ctx.tokenizer.encode(text, add_special_tokens=False))
        stream.append(eos)
    n = len(stream) // p.seq_len
    tokens = np.asarray(stream[: n * p.seq_len], np.int32).reshape(n, p.seq_len)
    n_val = min(p.num_val, n // 10)
    n_train = (n - n_val) // p.batch_size * p.batch_size
    train, val = tokens[:n_train], tokens[n - n_val:]
    config = _model_config(cfg, len(ctx.tokenizer))
    model = GPT2LMHeadModel(config)
    params = model.init(stage_key(cfg, "pretrain"), jnp.zeros((1, 8), jnp.int32))["params"]
    params, summary = sft.train_lm(cfg, model=model, params=params, tokens_NxT=train,
                                   mask_NxT=np.ones_like(train), val_tokens_NxT=val,
                                   val_mask_NxT=np.ones_like(val), dp=ctx.dp,
                                   rng=stage_key(cfg, "pretrain"), workdir=ctx.workdir,
                                   writer=ctx.writer)
    _raise_if_preempted(summary, "pretrain")
    out = ctx.path("models", "pretrained")
    if parallel.process_is_main():
        save_pretrained(model, params, out)
        ctx.tokenizer.save_pretrained(out)
    return {"sequences": int(n_train), "tokens": int(n_train * p.seq_len),
            **_scalars(summary)}


def stage_sft(ctx: Context) -> dict:
    from rlhf_jax import sft

    cfg = ctx.cfg
    train_q = queries(ctx, "train", limit=cfg.sft.num_train)
    val_q = queries(ctx, "valid", limit=cfg.sft.num_val)
    if train_q.reference_NxR is None:
        raise ValueError(f"task.query_dataset={cfg.task.query_dataset!r} has no reference "
                         "responses; the sft stage needs them")
    if len(train_q) < cfg.sft.num_train:
        raise ValueError(f"sft.num_train={cfg.sft.num_train} but the dataset has only "
                         f"{len(train_q)} training examples")
    as_data = lambda d: sft.SFTData(d.query_NxQ, d.query_mask_NxQ, d.reference_NxR,  # noqa: E731
                                    d.reference_mask_NxR)
    model, params = base_model(ctx)
    params, summary = sft.train_sft(cfg, model=model, params=params, train=as_data(train_q),
                                    val=as_data(val_q), dp=ctx.dp, rng=stage_key(cfg, "sft"),
                                    workdir=ctx.workdir, writer=ctx.writer)
    _raise_if_preempted(summary, "sft")
    if parallel.process_is_main():
        save_pretrained(model, params, ctx.path("models", "sft"))
        ctx.tokenizer.save_pretrained(ctx.path("models", "sft"))
    return _scalars(summary)


def stage_labels(ctx: Context) -> dict:
    """Labels for the reward model: from files, or a mock labeller on policy samples."""
    cfg = ctx.cfg
    lb = cfg.labels
    os.makedirs(ctx.path("labels"), exist_ok=True)
    kind, k = labels_lib.parse_label_type(lb.type)
    if lb.source == "file":
        read = dict(format=lb.format)
        if lb.format == "sff":
            read.update(encode=lambda s: ctx.tokenizer.encode(s, add_special_tokens=False),
                        query_length=cfg.task.query_length,
                        response_length=cfg.task.response_length,
                        eos_token=cfg.task.eos_token, pad_token=cfg.task.pad_token)
        elif lb.format == "lhp":
            read.update(label_type=lb.type, vocab_size=len(ctx.tokenizer),
                        pad_token=cfg.task.pad_token)
        else:
            read.update(label_type=kind, vocab_size=len(ctx.tokenizer),
                        pad_token=cfg.task.pad_token, query_length=cfg.task.query_length,
                        response_length=cfg.task.response_length)
        train = labels_lib.read_labels(lb.path, **read)
        val = labels_lib.read_labels(lb.val_path, **read) if lb.val_path else None
    else:
        from rlhf_jax.labelers import LabelRequest, MockLabeler, VaderGold

        if lb.gold != "vader":
            raise ValueError(f"labels.gold={lb.gold!r}: the mock labeller supports 'vader'")
        model, params = initial_policy(ctx)
        labeler = MockLabeler(VaderGold(), label_type=kind, noise=lb.mock_noise, seed=cfg.seed)
        need = lb.num_train + lb.num_val
        qs = queries(ctx, "train")
        rows = qs.indices(0, need)  # the first `need` of the seeded order
        q, m = qs.query_NxQ[rows], qs.query_mask_NxQ[rows]
        key = stage_key(cfg, "labels")
        responses = []
        for j in range(k):
            raw, _ = sample_responses(ctx, model, params, q, m, jax.random.fold_in(key, j),
                                      lb.batch_size)
            responses.append(postprocess(ctx, raw))
        resp_NxKxR = np.stack([r for r, _ in responses], axis=1)
        mask_NxKxR = np.stack([mk for _, mk in responses], axis=1)
        request = LabelRequest.from_tokens(q, m, resp_NxKxR, mask_NxKxR, pad_token=cfg.task.pad_token,
                                           decode=ctx.decode)
        every = labeler.label(request)
        train = every.subset(np.arange(lb.num_train))
        val = every.subset(np.arange(lb.num_train, need)) if lb.num_val else None
    if parallel.process_is_main():
        labels_lib.write_labels_jsonl(ctx.path("labels", "train.jsonl"), train)
        if val is not None:
            labels_lib.write_labels_jsonl(ctx.path("labels", "val.jsonl"), val)
    out = {"num_train": len(train), "num_val": 0 if val is None else len(val)}
    if train.gold_NxK is not None:
        # How often the labelled best is the gold best (1.0 for a noiseless mock).
        out["gold_best_agreement"] = float(np.mean(np.argmax(train.gold_NxK, 1) == train.best_N))
    return out


def _read_labels(ctx: Context):
    cfg = ctx.cfg
    kind, _ = labels_lib.parse_label_type(cfg.labels.type)
    kw = dict(query_length=cfg.task.query_length, response_length=cfg.task.response_length,
              pad_token=cfg.task.pad_token, vocab_size=len(ctx.tokenizer), label_type=kind)
    train = labels_lib.read_labels_jsonl(ctx.path("labels", "train.jsonl"), **kw)
    val_path = ctx.path("labels", "val.jsonl")
    val = labels_lib.read_labels_jsonl(val_path, **kw) if os.path.exists(val_path) else None
    return train, val


def init_reward_model(cfg, key: jax.Array, policy_model, policy_params):
    """`(rm_model, rm_params)`: a fresh reward head on the policy's language model (Ziegler)."""
    rm_model = RewardModel(policy_model.config, head=cfg.reward.head)
    ids = jnp.zeros((1, 8), jnp.int32)
    rm_params = rm_model.init(key, ids)["params"]
    return rm_model, {**rm_params, "transformer": policy_params["transformer"]}


def reward_normalizer(ctx: Context, policy_model, policy_params) -> Callable:
    """The reference sampler the reward model is normalised on
    (`reward.train_reward_model`'s `normalizer`)."""
    from rlhf_jax import reward

    cfg = ctx.cfg
    if cfg.reward.normalize_mode == "bias_only":
        ref = queries(ctx, "train", limit=cfg.reward.normalize_samples)
        if ref.reference_NxR is None:
            raise ValueError("reward.normalize_mode='bias_only' needs reference responses "
                             f"(task.query_dataset={cfg.task.query_dataset!r} has none)")
        normalizer = reward.fixed_reference_sampler(ref.query_NxQ, ref.query_mask_NxQ,
                                                    ref.reference_NxR, ref.reference_mask_NxR)
    else:
        qs = queries(ctx, "train")
        rows = qs.indices(1 << 16, max(cfg.reward.normalize_samples * 2, 1))
        normalizer = reward.make_reference_sampler(
            cfg, policy_model=policy_model, policy_params=policy_params,
            query_NxQ=qs.query_NxQ[rows], query_mask_NxQ=qs.query_mask_NxQ[rows])
    return normalizer


def stage_reward(ctx: Context) -> dict:
    from rlhf_jax import reward

    cfg = ctx.cfg
    train, val = _read_labels(ctx)
    policy_model, policy_params = initial_policy(ctx)
    rm_model, rm_params = init_reward_model(cfg, stage_key(cfg, "reward"), policy_model,
                                            policy_params)
    normalizer = reward_normalizer(ctx, policy_model, policy_params)
    rm_params, summary = reward.train_reward_model(
        cfg, rm_model=rm_model, rm_params=rm_params, train=train, val=val, dp=ctx.dp,
        rng=stage_key(cfg, "reward"), workdir=ctx.workdir, writer=ctx.writer,
        normalizer=normalizer)
    _raise_if_preempted(summary, "reward")
    if parallel.process_is_main():
        save_reward_model(ctx.path("models", "reward"), rm_model, rm_params)
    return _scalars(summary)


def _ppo_models_and_params(ctx: Context):
    cfg = ctx.cfg
    ref_model, ref_params = initial_policy(ctx)
    rm_model = rm_params = None
    if os.path.exists(ctx.path("models", "reward", "params.msgpack")):
        rm_model, rm_params = load_reward_model(cfg, ctx.path("models", "reward"))
    if cfg.ppo.reward_source == "rm" and rm_model is None:
        raise ValueError("ppo.reward_source='rm' needs the reward stage (models/reward is missing)")
    from rlhf_jax.rollout import PPOModels

    if cfg.ppo.value_model == "shared":
        policy = PolicyWithValueHead(ref_model.config)
        init = policy.init(stage_key(cfg, "ppo"), jnp.zeros((1, 8), jnp.int32))["params"]
        params = {"policy": {"transformer": ref_params["transformer"],
                             "value_head": init["value_head"]}}
        models = PPOModels(policy=policy, reference=ref_model, reward=rm_model)
    else:
        if rm_model is None:
            raise ValueError("ppo.value_model='separate' is initialised from the reward model")
        value = ValueModel(rm_model.config, head=rm_model.head)
        params = {"policy": ref_params, "value": value_params_from_reward(rm_params)}
        models = PPOModels(policy=ref_model, reference=ref_model, value=value, reward=rm_model)
    return models, params, ref_params, rm_params


def stage_ppo(ctx: Context) -> dict:
    from rlhf_jax.train_ppo import PPOTrainer

    cfg = ctx.cfg
    models, params, ref_params, rm_params = _ppo_models_and_params(ctx)
    trainer = PPOTrainer(cfg, models, ctx.dp)
    qs = queries(ctx, "train")
    online = None
    if cfg.labels.online.enabled:  # Ziegler 2.3: label as the policy moves, retrain the RM
        from rlhf_jax.online import OnlineCollector

        online = OnlineCollector(ctx, policy_model=models.reference, rm_model=models.reward,
                                 rm_params=rm_params)
    params, summary = trainer.train(params=params, ref_params=ref_params,
                                    rm_params=rm_params if cfg.ppo.reward_source == "rm" else None,
                                    queries=qs, workdir=ctx.workdir, writer=ctx.writer,
                                    gold_fn=gold_function(ctx), decode=ctx.decode, online=online)
    _raise_if_preempted(summary, "ppo")
    if parallel.process_is_main():
        policy_params = {"transformer": params["policy"]["transformer"]}
        save_pretrained(models.reference, policy_params, ctx.path("models", "policy"))
        ctx.tokenizer.save_pretrained(ctx.path("models", "policy"))
    hist = summary["history"]
    return {"updates": summary["updates"], **({k: v for k, v in hist[-1].items()} if hist else {})}


def stage_dpo(ctx: Context) -> dict:
    from rlhf_jax import dpo

    cfg = ctx.cfg
    train, val = _read_labels(ctx)
    model, params = initial_policy(ctx)
    params, summary = dpo.train_dpo(cfg, model=model, params=params, ref_params=params,
                                    train=train, val=val, dp=ctx.dp, rng=stage_key(cfg, "dpo"),
                                    workdir=ctx.workdir, writer=ctx.writer)
    _raise_if_preempted(summary, "dpo")
    if parallel.process_is_main():
        save_pretrained(model, params, ctx.path("models", "dpo"))
        ctx.tokenizer.save_pretrained(ctx.path("models", "dpo"))
    return _scalars(summary)


def stage_eval(ctx: Context) -> dict:
    """Held-out comparison: initial policy, PPO, DPO, best-of-N; RM score, gold score, KL."""
    from rlhf_jax import reward
    from rlhf_jax.rollout import best_of_n_kl

    cfg = ctx.cfg
    e, t = cfg.eval, cfg.task
    qs = queries(ctx, "test", limit=e.num_queries)
    if len(qs) < e.num_queries:
        qs = queries(ctx, "test")
        rows = qs.indices(0, e.num_queries)
        qs = dataclasses.replace(qs, query_NxQ=qs.query_NxQ[rows],
                                 query_mask_NxQ=qs.query_mask_NxQ[rows])
    q, m = qs.query_NxQ, qs.query_mask_NxQ
    ref_model, ref_params = initial_policy(ctx)
    rm = None
    if os.path.exists(ctx.path("models", "reward", "params.msgpack")):
        rm = load_reward_model(cfg, ctx.path("models", "reward"))
    gold = gold_function(ctx)
    key = stage_key(cfg, "eval")
    kl_fn = _sequence_kl_fn(ctx, ref_model, ref_model)
    dp = ctx.dp

    def score_all(processed, pmask):
        out = {}
        if rm is not None:
            s = reward.score(rm[0], rm[1], q, m, processed, pmask, reward_at=cfg.reward.reward_at,
                             eos_token=t.eos_token, batch_size=e.batch_size)
            out["score"] = np.asarray(tasks.penalize_scores(
                jnp.asarray(s), jnp.asarray(processed), t.truncate_token, t.truncate_after,
                t.penalty_reward_value) if t.penalty_reward_value is not None else s)
        if gold is not None:
            out["gold_score"] = np.asarray(gold(q, m, processed))
        return out

    def kl_of(params, raw, rmask):
        kls = []
        for i in range(0, len(q), e.batch_size):
            sl = slice(i, i + e.batch_size)
            kls.append(np.asarray(dp.unshard(kl_fn(
                dp.replicate(params), dp.replicate(ref_params), dp.shard(q[sl]), dp.shard(m[sl]),
                dp.shard(raw[sl]), dp.shard(rmask[sl])))))
        return np.concatenate(kls)

    results, samples = {}, []
    policies = {"initial": ref_params}
    for name in ("policy", "dpo"):
        if os.path.exists(ctx.path("models", name, "model.safetensors")):
            policies["ppo" if name == "policy" else "dpo"] = _load_lm(cfg, ctx.path("models", name))[1]
    for i, (name, params) in enumerate(policies.items()):
        raw, rmask = sample_responses(ctx, ref_model, params, q, m, jax.random.fold_in(key, i),
                                      e.batch_size)
        processed, pmask = postprocess(ctx, raw)
        scores = score_all(processed, pmask)
        kl = kl_of(params, raw, rmask)
        results[name] = {**{k: float(np.mean(v)) for k, v in scores.items()},
                         "kl": float(np.mean(kl))}
        for j in range(min(e.num_samples_logged, len(q))):
            samples.append({"policy": name, "query": ctx.decode(q[j][m[j] > 0]),
                            "response": ctx.decode(processed[j][pmask[j] > 0]),
                            **{k: float(v[j]) for k, v in scores.items()}, "kl": float(kl[j])})
    if rm is not None:
        for n in e.best_of_n:
            cands = []
            for j in range(n):
                raw, _ = sample_responses(ctx, ref_model, ref_params, q, m,
                                          jax.random.fold_in(key, 1000 + j), e.batch_size)
                processed, pmask = postprocess(ctx, raw)
                cands.append((processed, pmask, score_all(processed, pmask)))
            rm_NxC = np.stack([c[2]["score"] for c in cands], 1)
            best = np.argmax(rm_NxC, 1)
            res = {"score": float(np.mean(rm_NxC[np.arange(len(q)), best])),
                   "kl": best_of_n_kl(n)}
            if gold is not None:
                g = np.stack([c[2]["gold_score"] for c in cands], 1)
                res["gold_score"] = float(np.mean(g[np.arange(len(q)), best]))
            results[f"best_of_{n}"] = res
    flat = {f"eval/{name}/{k}": v for name, r in results.items() for k, v in r.items()}
    ctx.writer.write(0, "eval", flat)
    ctx.writer.write_samples(0, "eval", samples)
    if parallel.process_is_main():
        with open(ctx.path("eval.json"), "w") as f:
            json.dump(results, f, indent=2)
    for name, r in results.items():
        print(f"eval | {name:>12} | " + " | ".join(f"{k} {v:.3f}" for k, v in r.items()),
              flush=True)
    return results


def stage_figures(ctx: Context) -> dict:
    from rlhf_jax import figures

    paths = figures.make_figures(ctx.workdir) if parallel.process_is_main() else []
    return {"figures": [os.path.relpath(p, ctx.workdir) for p in paths]}


STAGE_FNS = {
    "pretrain": stage_pretrain,
    "sft": stage_sft,
    "labels": stage_labels,
    "reward": stage_reward,
    "ppo": stage_ppo,
    "dpo": stage_dpo,
    "eval": stage_eval,
    "figures": stage_figures,
}


class Preempted(Exception):
    """A stage stopped early on SIGTERM after saving; relaunch to resume."""


def _raise_if_preempted(summary: dict, stage: str) -> None:
    """A trainer that returned early (SIGTERM) saved its checkpoint: stop the
    pipeline before exporting a half-trained model or marking the stage done."""
    if summary.get("stopped_early") or summary.get("preempted"):
        raise Preempted(stage)


def _scalars(summary: dict) -> dict:
    out = {}
    for k, v in (summary or {}).items():
        if isinstance(v, (int, float, bool, str)) or (np.ndim(v) == 0 and hasattr(v, "item")):
            out[k] = v.item() if hasattr(v, "item") else v
        elif isinstance(v, dict):
            inner = _scalars(v)
            if inner:
                out[k] = inner
    return out


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=float)
    os.replace(tmp, path)


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs (or resumes) every stage the config names; returns their summaries."""
    parallel.initialize_distributed()
    dp = parallel.DataParallel(cfg.parallel.mode, cfg.parallel.num_devices or None,
                               fsdp=cfg.parallel.fsdp)
    derived = config_lib.resolve(cfg, dp.num_devices)
    os.makedirs(os.path.join(workdir, "stages"), exist_ok=True)
    wandb = {"project": cfg.log.wandb_project, "name": cfg.name} if cfg.log.wandb_project else None
    writer = MetricsWriter(workdir, tensorboard=cfg.log.tensorboard, wandb_config=wandb)
    ctx = Context(cfg=cfg, workdir=workdir, dp=dp, writer=writer,
                  stages=config_lib.stage_list(cfg))
    _setup_tokenizer(ctx)
    _resolve_task(ctx)
    if parallel.process_is_main():
        _write_json(os.path.join(workdir, "config.json"), json.loads(cfg.to_json_best_effort()))
    logging.info("derived sizes: %s", derived)
    results = {}
    t0 = time.time()
    try:
        for stage in ctx.stages:
            marker = ctx.path("stages", f"{stage}.json")
            if os.path.exists(marker):
                with open(marker) as f:
                    results[stage] = json.load(f)
                print(f"[{stage}] done earlier; skipping", flush=True)
                continue
            print(f"[{stage}] starting", flush=True)
            ts = time.time()
            out = STAGE_FNS[stage](ctx)  # raises Preempted on SIGTERM: no marker
            out = {**(out or {}), "seconds": round(time.time() - ts, 1)}
            if parallel.process_is_main():
                _write_json(marker, out)
            results[stage] = out
            print(f"[{stage}] done in {out['seconds']:.0f}s", flush=True)
    finally:
        writer.close()
    results["total_seconds"] = round(time.time() - t0, 1)
    return results

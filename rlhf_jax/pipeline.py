"""The stages `launch.py` runs: pretrain -> sft -> labels -> reward -> ppo -> dpo -> eval -> figures.

Each stage a config names runs in that order. A finished stage leaves
`WORKDIR/stages/<stage>.json` (its summary) and its artifacts; a relaunch skips
it. A stage interrupted midway resumes from its own Orbax checkpoints
(`WORKDIR/checkpoints/<stage>`), so a run killed at any moment and relaunched
with the same command ends with the same metrics as one never interrupted.

A stage reads what earlier stages left in the workdir and calls one trainer;
what the stages share (config, devices, tokenizer, models on disk) is
`context.Context`, a run's bookkeeping (workdir, stage markers) is `stages.run`,
host-batched sampling is `batched`, the eval stage is `eval`.

Artifacts:
  tokenizer/                 the trained tokenizer (offline default)
  models/{pretrained,sft,policy,dpo}/   Hugging Face GPT-2 directories
  models/reward/             reward model params (msgpack) and its config
  labels/{train,val}.jsonl   the labels the reward model trained on
  labels/online_<r>.jsonl, online/round_<r>/   online collection rounds (rlhf_jax.stages.online)
  eval.json                  the final evaluation summary
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rlhf_jax.data import label_files as label_files_lib, labels as labels_lib
from rlhf_jax.infra import compile_cache, parallel
from rlhf_jax.labelling import spans
from rlhf_jax.labelling.labelers import LabelRequest, MockLabeler, make_gold
from rlhf_jax.models import loading
from rlhf_jax.stages import (dpo, eval as eval_lib, expert_iteration, figures, reward_train, sft,
                             summary_eval, train_ppo, unlikelihood)
from rlhf_jax.stages.batched import postprocess, ppo_gold_function, sample_responses
from rlhf_jax.stages.context import Context, stage_key
from rlhf_jax.stages.online import OnlineCollector
from rlhf_jax.stages.run import (finished_stage, open_run, raise_if_preempted, record_stage,
                                 scalars, start_stage)
# What `run` raises on SIGTERM (launch.py catches `pipeline.Preempted`).
from rlhf_jax.stages.run import Preempted  # noqa: F401


# --------------------------------------------------------------------------
# Stages.


def _train_lm(ctx: Context, stage: str, train_fn, model, params, *, saved_as: str | None = None,
              **inputs) -> dict:
    """A stage that trains the LM `model` from `params`: `train_fn` with the stage's
    key, devices and logs; stops on SIGTERM (`Preempted`), else exports
    `models/<saved_as or stage>`. Returns the stage's summary."""
    params, summary = train_fn(ctx.cfg, model=model, params=params, dp=ctx.dp,
                               rng=stage_key(ctx.cfg, stage), workdir=ctx.workdir,
                               writer=ctx.writer, **inputs)
    raise_if_preempted(summary, stage)
    ctx.save_lm(saved_as or stage, model, params)
    return scalars(summary)


def stage_pretrain(ctx: Context) -> dict:
    """Tiny GPT-2 pretrained on the synthetic corpus (offline default only)."""
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
    model = loading.causal_lm(cfg, len(ctx.tokenizer))
    # Jitted: an eager init compiles one tiny program per op (about 80 here).
    params = jax.jit(model.init)(stage_key(cfg, "pretrain"), jnp.zeros((1, 8), jnp.int32))["params"]
    return {"sequences": int(n_train), "tokens": int(n_train * p.seq_len),
            **_train_lm(ctx, "pretrain", sft.train_lm, model, params, saved_as="pretrained",
                        tokens_NxT=train, mask_NxT=np.ones_like(train), val_tokens_NxT=val,
                        val_mask_NxT=np.ones_like(val))}


def stage_sft(ctx: Context) -> dict:
    cfg = ctx.cfg
    train_q = ctx.queries("train", limit=cfg.sft.num_train)
    val_q = ctx.queries("valid", limit=cfg.sft.num_val)
    if train_q.reference_NxR is None:
        raise ValueError(f"task.query_dataset={cfg.task.query_dataset!r} has no reference "
                         "responses; the sft stage needs them")
    if len(train_q) < cfg.sft.num_train:
        raise ValueError(f"sft.num_train={cfg.sft.num_train} but the dataset has only "
                         f"{len(train_q)} training examples")
    as_data = lambda d: sft.SFTData(*ctx.policy_queries(d.query_NxQ, d.query_mask_NxQ),  # noqa: E731
                                    d.reference_NxR, d.reference_mask_NxR)
    return _train_lm(ctx, "sft", sft.train_sft, *ctx.base_model(), train=as_data(train_q),
                     val=as_data(val_q))


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
                        offsets=lambda s: ctx.tokenizer(s, add_special_tokens=False,
                                                        return_offsets_mapping=True)[
                                                            "offset_mapping"],
                        query_length=cfg.task.query_length,
                        response_length=cfg.task.response_length,
                        eos_token=cfg.task.eos_token, pad_token=cfg.task.pad_token)
        elif lb.format == "lhp":
            read.update(label_type=lb.type, vocab_size=ctx.vocab_rows,
                        pad_token=cfg.task.pad_token)
        else:
            read.update(label_type=kind, vocab_size=ctx.vocab_rows,
                        pad_token=cfg.task.pad_token, query_length=cfg.task.query_length,
                        response_length=cfg.task.response_length)
        train = label_files_lib.read_labels(lb.path, **read)
        val = label_files_lib.read_labels(lb.val_path, **read) if lb.val_path else None
    else:
        model, params = ctx.initial_policy()
        labeler = MockLabeler(make_gold(lb.gold, ungrammatical_penalty=lb.ungrammatical_penalty),
                              label_type=kind, noise=lb.mock_noise, seed=cfg.seed)
        need = lb.num_train + lb.num_val
        qs = ctx.queries("train")
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
        if lb.reference_share:
            if qs.reference_NxR is None:
                raise ValueError(f"labels.reference_share={lb.reference_share}: "
                                 f"task.query_dataset={cfg.task.query_dataset!r} has no "
                                 "reference summaries")
            resp_NxKxR, ref_slot_N = labels_lib.with_references(
                resp_NxKxR, qs.reference_NxR[rows], lb.reference_share, cfg.seed)
            mask_NxKxR = (resp_NxKxR != cfg.task.pad_token).astype(np.int32)
        request = LabelRequest.from_tokens(q, m, resp_NxKxR, mask_NxKxR, pad_token=cfg.task.pad_token,
                                           decode=ctx.decode)
        every = labeler.label(request)
        train = every.subset(np.arange(lb.num_train))
        val = every.subset(np.arange(lb.num_train, need)) if lb.num_val else None
    if lb.spans.enabled:  # the mock span labeller marks records that carry no marks
        train, val = (spans.mark_unmarked(cfg, ctx.decode, x) for x in (train, val))
    if parallel.process_is_main():
        label_files_lib.write_labels_jsonl(ctx.path("labels", "train.jsonl"), train)
        if val is not None:
            label_files_lib.write_labels_jsonl(ctx.path("labels", "val.jsonl"), val)
    out = {"num_train": len(train), "num_val": 0 if val is None else len(val)}
    if lb.source == "mock" and lb.reference_share:
        with_ref_N = ref_slot_N[:lb.num_train] >= 0
        out["reference_records"] = int(with_ref_N.sum())
        if with_ref_N.any():  # how often the labeller preferred the reference
            out["reference_preferred"] = float(np.mean(
                train.best_N[with_ref_N] == ref_slot_N[:lb.num_train][with_ref_N]))
    if train.gold_NxK is not None:
        # How often the labelled best is the gold best (1.0 for a noiseless mock).
        out["gold_best_agreement"] = float(np.mean(np.argmax(train.gold_NxK, 1) == train.best_N))
        # The same over records whose gold best is unique (a tie has no right answer).
        top_N = np.max(train.gold_NxK, 1)
        untied_N = np.sum(train.gold_NxK == top_N[:, None], 1) == 1
        if kind in ("best_of_n", "pairwise") and np.any(untied_N):
            out["gold_best_agreement_untied"] = float(np.mean(
                (np.argmax(train.gold_NxK, 1) == train.best_N)[untied_N]))
            out["gold_tied_fraction"] = float(1 - np.mean(untied_N))
    if train.span_mask_NxKxR is not None:
        out["span_marked_fraction"] = float(train.span_mask_NxKxR.sum()
                                            / train.response_mask_NxKxR.sum())
    return out


def stage_reward(ctx: Context) -> dict:
    inputs = reward_train.reward_inputs(ctx)
    rm_params, summary = reward_train.train_reward_model(
        ctx.cfg, **inputs, dp=ctx.dp, workdir=ctx.workdir, writer=ctx.writer)
    return reward_train.finish_reward(ctx, inputs["rm_model"], rm_params, summary)


def stage_ppo(ctx: Context) -> dict:
    cfg = ctx.cfg
    models, params, ref_params, rm_params = train_ppo.ppo_models_and_params(ctx)
    trainer = train_ppo.PPOTrainer(cfg, models, ctx.dp, task=ctx.task_spec())
    qs = ctx.queries("train")
    online = None
    if cfg.labels.online.enabled:  # Ziegler 2.3: label as the policy moves, retrain the RM
        online = OnlineCollector(ctx, policy_model=models.reference, rm_model=models.reward,
                                 rm_params=rm_params)
    params, summary = trainer.train(params=params, ref_params=ref_params,
                                    rm_params=rm_params if cfg.ppo.reward_source == "rm" else None,
                                    queries=qs, workdir=ctx.workdir, writer=ctx.writer,
                                    gold_fn=ppo_gold_function(ctx, models.reference, ref_params),
                                    decode=ctx.decode, online=online)
    return train_ppo.finish_ppo(ctx, models, params, summary)


def _policy_labels(ctx: Context, labels):
    """`labels` with their (raw) queries as the policy reads them (DPO trains the policy)."""
    if labels is None:
        return None
    q, m = ctx.policy_queries(labels.query_NxQ, labels.query_mask_NxQ)
    return dataclasses.replace(labels, query_NxQ=q, query_mask_NxQ=m)


def stage_dpo(ctx: Context) -> dict:
    train, val = reward_train.read_labels(ctx)
    # Labels hold raw queries (what the RM reads); the policy reads them formatted.
    train, val = _policy_labels(ctx, train), _policy_labels(ctx, val)
    model, params = ctx.initial_policy()
    return _train_lm(ctx, "dpo", dpo.train_dpo, model, params, ref_params=params, train=train,
                     val=val)


def stage_bon_sft(ctx: Context) -> dict:
    """Expert iteration: best-of-n by the reward model, then SFT on the chosen samples."""
    rm = ctx.reward_model()
    if rm is None:
        raise ValueError("the bon_sft stage ranks samples with the reward model: add the reward "
                         "stage (models/reward is missing)")
    return _train_lm(ctx, "bon_sft", expert_iteration.train_bon_sft, *ctx.initial_policy(),
                     task=ctx.task_spec(), rm_model=rm[0], rm_params=rm[1],
                     queries=ctx.queries("train"))


def stage_ul(ctx: Context) -> dict:
    """Likelihood on preferred responses + unlikelihood on span-marked tokens (no RL)."""
    train, val = reward_train.read_labels(ctx)
    return _train_lm(ctx, "ul", unlikelihood.train_ul, *ctx.initial_policy(), train=train,
                     val=val)


def stage_eval(ctx: Context) -> dict:
    results = eval_lib.evaluate(ctx)
    if ctx.cfg.task.query_dataset == "world_tldr":  # Stiennon's evaluation against references
        results["summarization"] = summary_eval.evaluate(ctx)
    return results


def stage_figures(ctx: Context) -> dict:
    paths = figures.make_figures(ctx.workdir) if parallel.process_is_main() else []
    return {"figures": [os.path.relpath(p, ctx.workdir) for p in paths]}


STAGE_FNS = {
    "pretrain": stage_pretrain,
    "sft": stage_sft,
    "labels": stage_labels,
    "reward": stage_reward,
    "ppo": stage_ppo,
    "dpo": stage_dpo,
    "bon_sft": stage_bon_sft,
    "ul": stage_ul,
    "eval": stage_eval,
    "figures": stage_figures,
}


def run(cfg: ml_collections.ConfigDict, workdir: str, *, until: str | None = None,
        allow_config_change: bool = False) -> dict:
    """Runs (or resumes) every stage the config names; returns their summaries.

    `until`: stop before that stage (a sweep runs a group's shared stage for
    all its members at once, `rlhf_jax.members`, then relaunches each).
    `allow_config_change`: see `stages.run.open_run`.
    """
    ctx = open_run(cfg, workdir, allow_config_change=allow_config_change)
    results = {}
    t0 = time.time()
    compile_cache.track()
    try:
        for stage in ctx.stages:
            if stage == until:
                break
            done = finished_stage(ctx, stage)
            if done is not None:
                results[stage] = done
                print(f"[{stage}] done earlier; skipping", flush=True)
                continue
            print(f"[{stage}] starting", flush=True)
            start_stage(ctx, stage)
            ts, cs = time.time(), compile_cache.stats()
            out = STAGE_FNS[stage](ctx)  # raises Preempted on SIGTERM: no marker
            results[stage] = record_stage(ctx, stage, out, time.time() - ts,
                                          compile_cache.stats() - cs)
    finally:
        ctx.writer.close()
    results["total_seconds"] = round(time.time() - t0, 1)
    return results

"""Reward-model training on labels (docs/implementation_details.md items 12-14).

Training (item 13): one epoch (`reward.epochs`) over `labels.num_train`
labels, which must divide by `reward.batch_size`; the loss by label type
(item 12): K-way softmax cross-entropy (`best_of_n`), Bradley-Terry
(`pairwise`), MSE to the score (`scalar_rating`), MSE of `r1 - r0` to the
difference (`scalar_compare`); the loop (`rlhf_jax.stages.supervised`) gives the lr
schedule, TF-style Adam, data parallelism, validation and exact resume.
Scoring and normalisation: `reward`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.algorithms import losses
from rlhf_jax.config_lib import LoopConfig
from rlhf_jax.data import label_files as label_files_lib
from rlhf_jax.data.labels import Labels, parse_label_type
from rlhf_jax.infra import parallel
from rlhf_jax.models import loading
from rlhf_jax.stages import supervised
from rlhf_jax.stages.context import Context, stage_key
from rlhf_jax.stages.reward import (NORMALIZE_MODES, ReferenceSamples, check_reward_at, get_rewards,
                                    get_rewards_and_token_logits, label_target_moments,
                                    normalize_params, reference_normalizer)
from rlhf_jax.stages.run import raise_if_preempted, scalars

# --------------------------------------------------------------------------
# Losses on label batches (per shard).


def label_metrics(label_type: str, r_BxK, target_B) -> dict:
    """The loss and diagnostics of one label type on rewards [B, K].

    `target_B` is `best_N` (best_of_n, pairwise), `score_N` (scalar_rating)
    or `difference_N` (scalar_compare). Returns a dict with "loss" and
    "accuracy" (except scalar_rating: "abs_error"), pairwise also "margin".
    """
    if label_type == "best_of_n":
        return losses.best_of_n_metrics(r_BxK, target_B)
    if label_type == "pairwise":
        best_B = target_B.astype(jnp.int32)
        chosen_B = jnp.take_along_axis(r_BxK, best_B[:, None], axis=1)[:, 0]
        rejected_B = jnp.take_along_axis(r_BxK, 1 - best_B[:, None], axis=1)[:, 0]
        return losses.bradley_terry_metrics(chosen_B, rejected_B)
    if label_type == "scalar_rating":
        return losses.scalar_rating_metrics(r_BxK[:, 0], target_B)
    if label_type == "scalar_compare":
        return losses.scalar_compare_metrics(r_BxK[:, 0], r_BxK[:, 1], target_B)
    raise ValueError(f"label type {label_type!r} is not one of best_of_n, pairwise, "
                     "scalar_rating, scalar_compare")


def _rewards_BxK(rm_model, params, batch, reward_at, eos_token):
    """Rewards of every (query, response_k) in a label batch, one forward pass, and
    with span marks in the batch the span head's logits [B*K, R] (else None)."""
    b, k, r = batch["responses"].shape
    # Row-major flattening: row b*K + j is (query b, response j).
    args = (params, jnp.repeat(batch["query"], k, axis=0),
            jnp.repeat(batch["query_mask"], k, axis=0), batch["responses"].reshape(b * k, r),
            batch["response_mask"].reshape(b * k, r))
    kw = dict(reward_at=reward_at, eos_token=eos_token)
    if "span_mask" in batch:
        r_BK, logits_BKxR = get_rewards_and_token_logits(rm_model, *args, **kw)
        return r_BK.reshape(b, k), logits_BKxR
    return get_rewards(rm_model, *args, **kw).reshape(b, k), None


def _span_sums(batch, logits_BKxR, weight_B=None):
    b, k, r = batch["responses"].shape
    mask_BxKxR = batch["response_mask"].astype(jnp.float32)
    if weight_B is not None:
        mask_BxKxR = mask_BxKxR * weight_B[:, None, None]
    return losses.span_token_sums(logits_BKxR, batch["span_mask"].reshape(b * k, r),
                                  mask_BxKxR.reshape(b * k, r))


def _loss_fn(params, batch, rng, *, rm_model, label_type, reward_at, eos_token, span_coef):
    del rng  # no dropout (docs/implementation_details.md item 15)
    r_BxK, logits_BKxR = _rewards_BxK(rm_model, params, batch, reward_at, eos_token)
    metrics = label_metrics(label_type, r_BxK, batch["target"])
    loss = metrics.pop("loss")
    if logits_BKxR is not None:
        # The span loss is a mean over the global batch's response tokens: this
        # shard's sum times devices / global count, so the loop's mean over
        # shards is that mean whatever the shards' token counts.
        sums = _span_sums(batch, logits_BKxR)
        g = parallel.psum(sums)
        count = jnp.maximum(g["count"], 1.0)
        metrics.update(label_loss=loss, span_loss=g["loss"] / count,
                       span_accuracy=g["correct"] / count,
                       span_recall=g["found"] / jnp.maximum(g["marked"], 1.0))
        loss = loss + span_coef * sums["loss"] * parallel.psum(1) / count
    return loss, metrics


def _eval_fn(params, batch, *, rm_model, label_type, reward_at, eos_token, span_coef):
    del span_coef
    r_BxK, logits_BKxR = _rewards_BxK(rm_model, params, batch, reward_at, eos_token)
    # Per-record metrics: the batch functions on one record at a time.
    per_B = jax.vmap(lambda r_K, t: label_metrics(label_type, r_K[None], t[None]))(
        r_BxK, batch["target"])
    w_B = batch["weight"]
    out = {k: (jnp.sum(w_B * v_B), jnp.sum(w_B)) for k, v_B in per_B.items()}
    if logits_BKxR is not None:
        sums = _span_sums(batch, logits_BKxR, w_B)
        out.update(span_loss=(sums["loss"], sums["count"]),
                   span_accuracy=(sums["correct"], sums["count"]),
                   span_recall=(sums["found"], sums["marked"]))
    return out


def labels_to_data(labels: Labels, spans: bool = False) -> dict[str, np.ndarray]:
    """The host arrays the RM loop consumes (one row per labelled query); with
    `spans`, the span marks too (the token-level RM's targets)."""
    target = {"best_of_n": labels.best_N, "pairwise": labels.best_N,
              "scalar_rating": labels.score_N,
              "scalar_compare": labels.difference_N}[labels.label_type]
    data = {"query": labels.query_NxQ, "query_mask": labels.query_mask_NxQ,
            "responses": labels.responses_NxKxR, "response_mask": labels.response_mask_NxKxR,
            "target": target}
    if spans:
        data["span_mask"] = labels.span_mask_NxKxR
    return data


def check_labels(labels: Labels, *, label_type: str, count: int, count_field: str,
                 what: str) -> Labels:
    """The first `count` records of `labels`, after checking them against the config.

    ValueError naming `labels.type` when the kind or K differs, and
    `count_field` when there are fewer than `count` records.
    """
    kind, k = parse_label_type(label_type)
    if labels.label_type != kind:
        raise ValueError(f"labels.type={label_type!r} but the {what} labels are "
                         f"{labels.label_type!r}")
    if k is not None and labels.num_responses != k:
        raise ValueError(f"labels.type={label_type!r} needs K={k} responses per query, the "
                         f"{what} labels have K={labels.num_responses}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"{count_field}={count!r} must be a non-negative int")
    if len(labels) < count:
        raise ValueError(f"{count_field}={count} but only {len(labels)} {what} labels were given")
    return labels.subset(np.arange(count))


def training_labels(cfg, train: Labels, val: Labels | None) -> tuple[Labels, Labels | None]:
    """`(train, val)` cut to `labels.num_train` / `labels.num_val` after checking them
    against `labels.type` (`check_labels`); val is None when `num_val` is 0, and a
    missing held-out set with `num_val > 0` is an error naming the field."""
    train = check_labels(train, label_type=cfg.labels.type, count=cfg.labels.num_train,
                         count_field="labels.num_train", what="training")
    num_val = cfg.labels.num_val
    if num_val and val is None:
        raise ValueError(f"labels.num_val={num_val} but no held-out labels were given")
    if not num_val:
        return train, None
    return train, check_labels(val, label_type=cfg.labels.type, count=num_val,
                               count_field="labels.num_val", what="held-out")


# --------------------------------------------------------------------------
# The trainer.


def train_reward_model(cfg, *, rm_model, rm_params, train: Labels, val: Labels | None, dp,
                       rng, workdir: str | None = None, writer=None,
                       normalizer: Callable[[int, jax.Array], ReferenceSamples] | None = None,
                       stop_after: int | None = None) -> tuple[Any, dict]:
    """Trains a reward model on labels; normalises before / after; resumable.

    Config fields read (a missing one raises):
      reward.batch_size: labels per step, all devices (LHP: 32 sentiment,
        16 cnndm/tldr); divides `labels.num_train` and the device count.
      reward.epochs: passes over the labels (the papers: 1).
      reward.lr, reward.schedule ("linear" Ziegler | "cosine" Stiennon |
        "constant"), reward.adam ("tf" | "torch"), reward.adam_eps (1e-5).
      reward.log_every, reward.eval_every (0: before and after training only),
        reward.checkpoint_every: in steps.
      reward.normalize_before, reward.normalize_after: bools (LHP: both).
      reward.normalize_samples: reference samples per normalisation (LHP 256),
        rounded up to whole `reward.rollout_batch_size` batches by the sampler.
      reward.normalize_mode: "gain_bias" (Ziegler) | "bias_only" (Stiennon).
      reward.head: "linear" | "scalar_mix" | "selector"; must match `rm_model.head`.
      reward.token_head, reward.span_coef: with a token head (must match
        `rm_model.token_head`) the loss adds `span_coef` times the mean
        per-token cross-entropy against the labels' span marks
        (`losses.span_token_loss`); metrics `reward/span_loss`,
        `reward/span_accuracy`, `reward/span_recall` (and `val_` ones).
      reward.reward_at: "last" (Ziegler) | "eos" (Stiennon).
      labels.type: `best_of_4`, `pairwise`, `scalar_rating`, `scalar_compare`.
      labels.num_train: training labels used (the first ones of `train`).
      labels.num_val: held-out labels used (the first ones of `val`); 0 or
        `val=None` skips validation.
      parallel.mode: must match `dp.mode`.
      task.eos_token: only when `reward.reward_at == "eos"`.
      (`make_reference_sampler` reads task.temperature, task.response_length
      and reward.rollout_batch_size.)

    Args:
      cfg: the experiment's ConfigDict.
      rm_model, rm_params: a `RewardModel` and its initial params (host).
      train, val: labelled comparisons (`rlhf_jax.data.labels.Labels`).
      dp: `DataParallel`.
      rng: the base key (data order; normalisation samples).
      workdir: metrics and `checkpoints/reward`; None for neither.
      writer: a `MetricsWriter`; default one on `workdir`.
      normalizer: `(num_samples, rng) -> ReferenceSamples`
        (`make_reference_sampler` or `fixed_reference_sampler`); required
        when normalising.
      stop_after: stop and checkpoint after this many steps (tests).

    Returns:
      `(rm_params, summary)`; metrics `reward/loss`, `reward/accuracy`,
      `reward/lr`, `reward/val_loss`, `reward/val_accuracy` (pairwise also
      `margin`, scalar_rating `abs_error` in place of accuracy); the summary
      holds the normalisation stats under `init` (before) and `finalize`
      (after).
    """
    p = prepare(cfg, rm_model=rm_model, train=train, val=val, dp=dp, normalizer=normalizer)
    return supervised.run(
        p.loop,
        loss_fn=p.loss_fn,
        eval_fn=p.eval_fn,
        params=rm_params,
        train_data=p.train_data,
        val_data=p.val_data,
        dp=dp,
        rng=rng,
        num_train_field="labels.num_train",
        workdir=workdir,
        writer=writer,
        init_fn=p.init_fn,
        finalize_fn=p.finalize_fn,
        stop_after=stop_after,
        cache_key=p.cache_key,
    )


@dataclasses.dataclass(frozen=True)
class RewardLoop:
    """What the supervised loop takes for one reward model (`prepare`)."""

    loop: LoopConfig
    loss_fn: Callable
    eval_fn: Callable
    train_data: dict
    val_data: dict | None
    init_fn: Callable | None
    finalize_fn: Callable | None
    cache_key: tuple


def prepare(cfg, *, rm_model, train: Labels, val: Labels | None, dp,
            normalizer: Callable[[int, jax.Array], ReferenceSamples] | None) -> RewardLoop:
    """Checks the config against the model and labels (one ValueError naming the
    field) and builds the loop's pieces: `train_reward_model` and the members'
    trainer (`rlhf_jax.members.run_reward_members`) share them."""
    r = cfg.reward
    loop = LoopConfig.from_config(cfg, "reward")
    dp.check_config(cfg)
    if r.head != rm_model.head:
        raise ValueError(f"reward.head={r.head!r} but the reward model has head "
                         f"{rm_model.head!r}")
    if bool(r.token_head) != rm_model.token_head:
        raise ValueError(f"reward.token_head={r.token_head} but the reward model "
                         f"{'has' if rm_model.token_head else 'has no'} token head")
    reward_at = r.reward_at
    eos_token = cfg.task.eos_token if reward_at == "eos" else None
    check_reward_at(reward_at, eos_token)
    mode = r.normalize_mode
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"reward.normalize_mode={mode!r}: expected one of {NORMALIZE_MODES}")
    normalize_before, normalize_after = bool(r.normalize_before), bool(r.normalize_after)
    num_samples = r.normalize_samples
    if normalize_before or normalize_after:
        if normalizer is None:
            raise ValueError("reward.normalize_before/normalize_after is set but no "
                             "normalizer (reference sampler) was given")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
            raise ValueError(f"reward.normalize_samples={num_samples!r} must be an int >= 2 "
                             "when normalising")
    train, val = training_labels(cfg, train, val)

    spans = rm_model.token_head
    for what, labels in (("training", train), ("held-out", val)):
        if spans and labels is not None and labels.span_mask_NxKxR is None:
            raise ValueError(f"reward.token_head trains on span marks, but the {what} labels "
                             "carry none: set labels.spans.enabled (the mock span labeller) "
                             "or use a label file with marks")
    kw = dict(rm_model=rm_model, label_type=train.label_type, reward_at=reward_at,
              eos_token=eos_token, span_coef=float(r.span_coef))
    target_mean, target_std = label_target_moments(train)

    def normalize(params, rng, target_mean, target_std, when):
        samples = normalizer(num_samples, rng)
        params, info = normalize_params(rm_model, params, samples, target_mean=target_mean,
                                  target_std=target_std, mode=mode, reward_at=reward_at,
                                  eos_token=eos_token, batch_size=loop.batch_size, dp=dp)
        supervised.log_line(
            f"reward: normalised {when} training on {info['num_samples']} samples: raw "
            f"{info['raw_mean']:.4g} +- {info['raw_std']:.4g} -> target {target_mean:.4g} "
            f"+- {target_std:.4g} (gain {info['gain']:.4g}, bias {info['bias']:.4g})")
        return params, info

    init_fn = finalize_fn = None
    if normalize_before:
        init_fn = lambda p, k: normalize(p, k, target_mean, target_std, "before")  # noqa: E731
    if normalize_after:
        finalize_fn = lambda p, k: normalize(p, k, 0.0, 1.0, "after")  # noqa: E731

    return RewardLoop(
        loop=loop, loss_fn=functools.partial(_loss_fn, **kw),
        eval_fn=functools.partial(_eval_fn, **kw), train_data=labels_to_data(train, spans),
        val_data=None if val is None else labels_to_data(val, spans), init_fn=init_fn,
        finalize_fn=finalize_fn,
        cache_key=("reward", rm_model, train.label_type, reward_at, eos_token,
                   float(r.span_coef)))


# --------------------------------------------------------------------------
# The reward stage in a workdir (`pipeline.stage_reward`, `rlhf_jax.members`).


def read_labels(ctx: Context) -> tuple[Labels, Labels | None]:
    """The labels the labels stage left (`labels/{train,val}.jsonl`; val may be absent)."""
    cfg = ctx.cfg
    kind, _ = parse_label_type(cfg.labels.type)
    kw = dict(query_length=cfg.task.query_length, response_length=cfg.task.response_length,
              pad_token=cfg.task.pad_token, vocab_size=ctx.vocab_rows, label_type=kind)
    train = label_files_lib.read_labels_jsonl(ctx.path("labels", "train.jsonl"), **kw)
    val_path = ctx.path("labels", "val.jsonl")
    val = label_files_lib.read_labels_jsonl(val_path, **kw) if os.path.exists(val_path) else None
    return train, val


def reward_inputs(ctx: Context) -> dict:
    """The reward stage's inputs: `rm_model`, `rm_params` (initial), `train`, `val`
    labels, `normalizer` and the stage key `rng` (also for `rlhf_jax.members`)."""
    cfg = ctx.cfg
    train, val = read_labels(ctx)
    policy_model, policy_params = ctx.initial_policy()
    rm_model, rm_params = loading.init_reward_model(cfg, stage_key(cfg, "reward"), policy_model,
                                                    policy_params)
    return dict(rm_model=rm_model, rm_params=rm_params, train=train, val=val,
                normalizer=reference_normalizer(ctx, policy_model, policy_params),
                rng=stage_key(cfg, "reward"))


def finish_reward(ctx: Context, rm_model, rm_params, summary: dict) -> dict:
    """Saves the trained reward model; the stage's summary for its marker."""
    raise_if_preempted(summary, "reward")
    if parallel.process_is_main():
        loading.save_reward_model(ctx.path("models", "reward"), rm_model, rm_params)
    return scalars(summary)

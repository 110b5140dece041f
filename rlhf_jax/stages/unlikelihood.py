"""The critique's direct route, no RL: likelihood on preferred samples plus
unlikelihood on the tokens people marked wrong (the `ul` stage).

If labellers can point at the bad tokens ("Portland, the capitol of
France"), the policy can be trained on them directly: raise the probability
of the preferred response's unmarked tokens (maximum likelihood, as SFT) and
lower the probability of every marked token in any response with the
unlikelihood loss `-log(1 - p(token))` (Welleck et al. 2019):

    loss = mean_{preferred, unmarked}(-log p) + ul.alpha * mean_{marked}(-log(1 - p))

(`losses.likelihood_unlikelihood_loss`; each mean over its own tokens of the
global batch). Token log-probs are at temperature 1, as SFT and DPO.

Data: each labelled record gives one row per response (query, response,
which tokens to raise, which to lower); rows with neither are dropped. The
labels need span marks (`labels.spans.enabled`, or a label file that carries
people's marks). Training uses the shared loop (`rlhf_jax.stages.supervised`):
Adam, lr schedule, data parallel, held-out evaluation, exact resume.
"""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
import numpy as np

from rlhf_jax.algorithms import losses
from rlhf_jax.algorithms.ppo import forward_policy_value
from rlhf_jax.config_lib import LoopConfig
from rlhf_jax.data.labels import Labels
from rlhf_jax.infra import parallel
from rlhf_jax.stages import supervised
from rlhf_jax.stages.reward_train import training_labels
from rlhf_jax.stages.rollout import lm_apply


def ul_rows(labels: Labels) -> dict[str, np.ndarray]:
    """Host rows: `query`, `query_mask`, `response`, `response_mask`, `like`, `unlike`.

    Record i's response j is a row when it has tokens to raise (j is the
    preferred response: its unmarked tokens) or to lower (its marked tokens).
    """
    if labels.span_mask_NxKxR is None:
        raise ValueError("the ul stage trains on span marks, but the labels carry none: set "
                         "labels.spans.enabled (the mock span labeller) or use a label file "
                         "with marks")
    if labels.best_N is None:
        raise ValueError(f"the ul stage needs a preferred response; label type "
                         f"{labels.label_type!r} has none")
    n, k, r = labels.responses_NxKxR.shape
    marks = labels.span_mask_NxKxR
    mask = labels.response_mask_NxKxR
    preferred_NxK = np.arange(k)[None] == labels.best_N[:, None]
    like = mask * (1 - marks) * preferred_NxK[..., None]
    rows = {"query": np.repeat(labels.query_NxQ, k, 0),
            "query_mask": np.repeat(labels.query_mask_NxQ, k, 0),
            "response": labels.responses_NxKxR.reshape(n * k, r),
            "response_mask": mask.reshape(n * k, r),
            "like": like.reshape(n * k, r).astype(np.int32),
            "unlike": (marks * mask).reshape(n * k, r).astype(np.int32)}
    keep = (rows["like"].sum(1) + rows["unlike"].sum(1)) > 0
    return {name: v[keep] for name, v in rows.items()}


def _sums(model, params, batch, weight_B=None):
    logp_BxR, _, _ = forward_policy_value(lm_apply(model), params, batch["query"],
                                          batch["query_mask"], batch["response"],
                                          batch["response_mask"], 1.0)
    like, unlike = batch["like"], batch["unlike"]
    if weight_B is not None:
        like, unlike = like * weight_B[:, None], unlike * weight_B[:, None]
    return losses.likelihood_unlikelihood_sums(logp_BxR, like, unlike)


def _loss_fn(params, batch, rng, *, model, alpha):
    del rng  # no dropout
    s = _sums(model, params, batch)
    g = parallel.psum(s)
    n_like, n_unlike = jnp.maximum(g["like_count"], 1.0), jnp.maximum(g["unlike_count"], 1.0)
    # Each term a mean over the global batch's tokens: this shard's sums times
    # devices / global counts, so the loop's mean over shards is that mean.
    devices = parallel.psum(1)
    loss = devices * (s["like"] / n_like + alpha * s["unlike"] / n_unlike)
    return loss, {"likelihood": g["like"] / n_like, "unlikelihood": g["unlike"] / n_unlike,
                  "marked_prob": g["unlike_prob"] / n_unlike}


def _eval_fn(params, batch, *, model, alpha):
    del alpha
    s = _sums(model, params, batch, batch["weight"])
    return {"likelihood": (s["like"], s["like_count"]),
            "unlikelihood": (s["unlike"], s["unlike_count"]),
            "marked_prob": (s["unlike_prob"], s["unlike_count"])}


def train_ul(cfg, *, model, params, train: Labels, val: Labels | None, dp, rng,
             workdir: str | None = None, writer=None,
             stop_after: int | None = None) -> tuple[Any, dict]:
    """Trains a policy with likelihood + unlikelihood on span-marked labels; resumable.

    Config fields read: ul.alpha (>= 0), ul.batch_size (rows per step, all
    devices), ul.epochs, ul.lr, ul.schedule, ul.adam, ul.adam_eps,
    ul.log_every, ul.eval_every, ul.checkpoint_every; labels.type,
    labels.num_train, labels.num_val (as the reward model reads them);
    parallel.mode (must match `dp.mode`).

    Returns `(params, summary)`; metrics `ul/loss`, `ul/likelihood` (mean NLL
    of the preferred responses' unmarked tokens), `ul/unlikelihood` (mean
    `-log(1 - p)` of marked tokens), `ul/marked_prob` (their mean probability),
    and the same with `val_` on held-out labels.
    """
    loop = LoopConfig.from_config(cfg, "ul")
    alpha = cfg.ul.alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha < 0:
        raise ValueError(f"ul.alpha={alpha!r} must be a number >= 0")
    dp.check_config(cfg)
    train, val = training_labels(cfg, train, val)
    val_rows = None if val is None else ul_rows(val)
    dp.check_divisible(loop.batch_size, "ul.batch_size")
    kw = dict(model=model, alpha=float(alpha))
    return supervised.run(
        loop,
        loss_fn=functools.partial(_loss_fn, **kw),
        eval_fn=functools.partial(_eval_fn, **kw),
        params=params,
        train_data=ul_rows(train),
        val_data=val_rows if val_rows is not None and len(val_rows["query"]) else None,
        dp=dp,
        rng=rng,
        num_train_field=f"the ul row count (from labels.num_train={cfg.labels.num_train})",
        drop_last=True,
        workdir=workdir,
        writer=writer,
        stop_after=stop_after,
        cache_key=("ul", model, float(alpha)),
    )

"""Direct Preference Optimisation (Rafailov et al. 2023) on the RM's labels.

DPO trains the policy directly on preference pairs with a frozen reference:
`loss = -log sigmoid(beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r))))`
(`losses.dpo_loss`), where `log pi(y)` is the summed log-prob of response y
given its query (temperature 1: DPO's implicit reward is defined on the
policy itself, not on the sampling distribution).

Pairs come from the same `Labels` the reward model trains on
(`preference_pairs`): a pairwise record is one pair; a best-of-K record gives
K-1 pairs (the chosen response against each other one); a `scalar_compare`
record prefers the response its `difference` points to (ties dropped).

The reference is frozen, so its log-probs are computed once, in a
data-parallel pass before training, and travel with the batches.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.algorithms import losses
from rlhf_jax.config_lib import LoopConfig
from rlhf_jax.data.labels import Labels
from rlhf_jax.stages import supervised
from rlhf_jax.stages.reward_train import training_labels
from rlhf_jax.stages.sft import response_logprobs


@dataclasses.dataclass(frozen=True, eq=False)
class PreferencePairs:
    """P (query, chosen, rejected) triples on host; queries left-padded,
    responses right-padded, int32 0/1 masks."""

    query_PxQ: np.ndarray
    query_mask_PxQ: np.ndarray
    chosen_PxR: np.ndarray
    chosen_mask_PxR: np.ndarray
    rejected_PxR: np.ndarray
    rejected_mask_PxR: np.ndarray

    def __len__(self) -> int:
        return self.query_PxQ.shape[0]

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"query": self.query_PxQ, "query_mask": self.query_mask_PxQ,
                "chosen": self.chosen_PxR, "chosen_mask": self.chosen_mask_PxR,
                "rejected": self.rejected_PxR, "rejected_mask": self.rejected_mask_PxR}


def preference_pairs(labels: Labels) -> PreferencePairs:
    """The (chosen, rejected) pairs a label set implies.

    `pairwise` and `best_of_n` (K responses): the best response against each
    of the K-1 others, record by record; `scalar_compare`: sample1 is chosen
    when `difference > 0`, sample0 when `< 0`, records with 0 are dropped.
    `scalar_rating` carries no preference: ValueError.
    """
    k = labels.num_responses
    if labels.label_type in ("pairwise", "best_of_n"):
        best_N = labels.best_N.astype(np.int64)
        # Record-major: record i's pairs are rows i*(K-1) .. i*(K-1)+K-2.
        others_NxK1 = np.stack([np.delete(np.arange(k), b) for b in best_N]) if len(labels) \
            else np.zeros((0, k - 1), np.int64)
        rec_P = np.repeat(np.arange(len(labels)), k - 1)
        chosen_P = np.repeat(best_N, k - 1)
        rejected_P = others_NxK1.reshape(-1)
    elif labels.label_type == "scalar_compare":
        d_N = labels.difference_N
        rec_P = np.nonzero(d_N != 0)[0]
        chosen_P = (d_N[rec_P] > 0).astype(np.int64)
        rejected_P = 1 - chosen_P
    else:
        raise ValueError(f"DPO needs preferences; label type {labels.label_type!r} has none "
                         "(use pairwise, best_of_<N> or scalar_compare labels)")
    r, m = labels.responses_NxKxR, labels.response_mask_NxKxR
    return PreferencePairs(labels.query_NxQ[rec_P], labels.query_mask_NxQ[rec_P],
                           r[rec_P, chosen_P], m[rec_P, chosen_P],
                           r[rec_P, rejected_P], m[rec_P, rejected_P])


def pair_logprobs(model, params, query_BxQ, query_mask_BxQ, chosen_BxR, chosen_mask_BxR,
                  rejected_BxR, rejected_mask_BxR):
    """`(logp_chosen_B, logp_rejected_B)`, summed response log-probs, in one forward pass."""
    b = query_BxQ.shape[0]
    logp_2B = response_logprobs(
        model, params,
        jnp.concatenate([query_BxQ, query_BxQ]), jnp.concatenate([query_mask_BxQ, query_mask_BxQ]),
        jnp.concatenate([chosen_BxR, rejected_BxR]),
        jnp.concatenate([chosen_mask_BxR, rejected_mask_BxR]))
    return logp_2B[:b], logp_2B[b:]


def _batch_logprobs(model, params, batch):
    return pair_logprobs(model, params, batch["query"], batch["query_mask"], batch["chosen"],
                         batch["chosen_mask"], batch["rejected"], batch["rejected_mask"])


def _reference_fn(ref_params, batch, *, model):
    chosen_B, rejected_B = _batch_logprobs(model, ref_params, batch)
    return {"ref_chosen": chosen_B, "ref_rejected": rejected_B}


def _loss_fn(params, batch, rng, *, model, beta):
    del rng  # no dropout
    pi_chosen_B, pi_rejected_B = _batch_logprobs(model, params, batch)
    metrics = losses.dpo_metrics(pi_chosen_B, pi_rejected_B, batch["ref_chosen"],
                                 batch["ref_rejected"], beta)
    return metrics.pop("loss"), metrics


def _eval_fn(params, batch, *, model, beta):
    pi_chosen_B, pi_rejected_B = _batch_logprobs(model, params, batch)
    # Per-pair metrics: the batch function on one pair at a time.
    per_B = jax.vmap(lambda *xs: losses.dpo_metrics(*(x[None] for x in xs), beta))(
        pi_chosen_B, pi_rejected_B, batch["ref_chosen"], batch["ref_rejected"])
    w_B = batch["weight"]
    return {k: (jnp.sum(w_B * v_B), jnp.sum(w_B)) for k, v_B in per_B.items()}


def reference_logprobs(dp, model, ref_params, pairs: PreferencePairs,
                       batch_size: int) -> dict[str, np.ndarray]:
    """`{"ref_chosen", "ref_rejected"}` [P] under the frozen reference, data-parallel."""
    return supervised.map_batches(dp, functools.partial(_reference_fn, model=model),
                                  dp.replicate(ref_params), pairs.as_dict(), batch_size,
                                  cache_key=("dpo_reference", model))


def train_dpo(cfg, *, model, params, ref_params, train: Labels, val: Labels | None, dp, rng,
              workdir: str | None = None, writer=None,
              stop_after: int | None = None) -> tuple[Any, dict]:
    """Trains a policy with DPO against a frozen reference; resumable.

    Config fields read (a missing one raises):
      dpo.beta: the KL strength (> 0).
      dpo.batch_size: pairs per step, all devices; divisible by the device
        count; each epoch uses floor(P / batch_size) batches of a fresh
        permutation of the P pairs.
      dpo.epochs, dpo.lr, dpo.schedule, dpo.adam, dpo.adam_eps,
        dpo.log_every, dpo.eval_every (0: before and after only),
        dpo.checkpoint_every.
      labels.type, labels.num_train, labels.num_val: which labels, as the
        reward model reads them (`num_val` 0 or `val=None`: no validation).
      parallel.mode: must match `dp.mode`.

    Args:
      cfg: the experiment's ConfigDict.
      model: the LM (`models.causal_lm`: GPT-2 or the Llama family) or a `PolicyWithValueHead`.
      params: the policy's initial params (usually the reference's).
      ref_params: the frozen reference's params.
      train, val: `Labels` (pairwise, best_of_<N> or scalar_compare).
      dp, rng, workdir, writer, stop_after: as `reward_train.train_reward_model`.

    Returns:
      `(params, summary)`; metrics `dpo/loss`, `dpo/accuracy` (implicit
      reward of chosen > rejected), `dpo/margin` (mean implicit-reward gap),
      `dpo/chosen_reward`, `dpo/rejected_reward`, `dpo/lr`, and the same with
      `val_` on held-out pairs (`dpo/val_margin`, `dpo/val_accuracy`, ...).
    """
    d = cfg.dpo
    loop = LoopConfig.from_config(cfg, "dpo")
    beta = d.beta
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"dpo.beta={beta!r} must be a number > 0")
    dp.check_config(cfg)
    train, val = training_labels(cfg, train, val)
    dp.check_divisible(loop.batch_size, "dpo.batch_size")

    train_pairs = preference_pairs(train)
    train_data = {**train_pairs.as_dict(),
                  **reference_logprobs(dp, model, ref_params, train_pairs, loop.batch_size)}
    val_data = None
    if val is not None:
        val_pairs = preference_pairs(val)
        if len(val_pairs):
            val_data = {**val_pairs.as_dict(),
                        **reference_logprobs(dp, model, ref_params, val_pairs, loop.batch_size)}
    kw = dict(model=model, beta=float(beta))
    return supervised.run(
        loop,
        loss_fn=functools.partial(_loss_fn, **kw),
        eval_fn=functools.partial(_eval_fn, **kw),
        params=params,
        train_data=train_data,
        val_data=val_data,
        dp=dp,
        rng=rng,
        num_train_field=f"the DPO pair count (from labels.num_train={cfg.labels.num_train})",
        drop_last=True,
        workdir=workdir,
        writer=writer,
        stop_after=stop_after,
        cache_key=("dpo", model, float(beta)),
    )

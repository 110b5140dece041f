"""Supervised fine-tuning (Stiennon et al. 2020) and causal-LM pretraining.

SFT (docs/implementation_details.md item 28): next-token cross-entropy on `query + reference`,
counted on the reference tokens only (`loss_on="response"`), one epoch with a
cosine lr. The same trainer is the LM pretraining of the offline default's
tiny GPT-2 (`train_lm`: every real token is a target).

The loss is the mean over all target tokens of the global batch, not a mean
of per-sequence means; each shard divides its token sum by the global token
count, so the result does not depend on how rows fall on devices.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax.numpy as jnp
import numpy as np

from rlhf_jax.algorithms import logprobs
from rlhf_jax.config_lib import LoopConfig
from rlhf_jax.infra import parallel
from rlhf_jax.stages import supervised

LOSS_ON = ("response", "all")


@dataclasses.dataclass(frozen=True, eq=False)
class SFTData:
    """N (query, response) pairs for causal-LM training, on host.

    Attributes:
      query_NxQ, query_mask_NxQ: queries, left-padded (mask 1 on tokens).
      response_NxR, response_mask_NxR: responses (reference summaries),
        right-padded. R may be 0 (`from_sequences`).
    """

    query_NxQ: np.ndarray
    query_mask_NxQ: np.ndarray
    response_NxR: np.ndarray
    response_mask_NxR: np.ndarray

    def __post_init__(self):
        for name in ("query_NxQ", "query_mask_NxQ", "response_NxR", "response_mask_NxR"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), np.int32))
        q, qm, r, rm = (self.query_NxQ, self.query_mask_NxQ, self.response_NxR,
                        self.response_mask_NxR)
        if q.ndim != 2 or qm.shape != q.shape:
            raise ValueError(f"SFTData: field 'query_mask_NxQ' shape {qm.shape} must equal "
                             f"query_NxQ's {q.shape}, which must be 2-D")
        if r.ndim != 2 or rm.shape != r.shape or r.shape[0] != q.shape[0]:
            raise ValueError(f"SFTData: field 'response_NxR' shape {r.shape} (mask {rm.shape}) "
                             f"must be [N={q.shape[0]}, R] with an equal mask")

    @classmethod
    def from_sequences(cls, tokens_NxT, mask_NxT) -> "SFTData":
        """Whole sequences (LM pretraining): the tokens as the query, no response."""
        tokens_NxT = np.asarray(tokens_NxT)
        empty_Nx0 = np.zeros((tokens_NxT.shape[0], 0), np.int32)
        return cls(tokens_NxT, mask_NxT, empty_Nx0, empty_Nx0)

    def __len__(self) -> int:
        return self.query_NxQ.shape[0]

    def subset(self, indices) -> "SFTData":
        """The rows at `indices`."""
        idx = np.asarray(indices)
        return SFTData(self.query_NxQ[idx], self.query_mask_NxQ[idx], self.response_NxR[idx],
                       self.response_mask_NxR[idx])

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"query": self.query_NxQ, "query_mask": self.query_mask_NxQ,
                "response": self.response_NxR, "response_mask": self.response_mask_NxR}


# --------------------------------------------------------------------------
# Pure pieces.


def causal_logits(model, params, ids_BxT, mask_BxT):
    """[B, T, V] float32 logits of an LM (`models.causal_lm`) or of the shared
    policy+value model (`PolicyWithValueHead`, whose values are dropped)."""
    out = model.apply({"params": params}, ids_BxT, attention_mask=mask_BxT)
    if isinstance(out, tuple):
        out = out[0]
    return out.logits


def target_mask(query_mask_BxQ, response_mask_BxR, loss_on: str):
    """[B, T-1] 1 where position t's logits are trained to predict token t+1.

    Token t+1 is a target when it is a real token in the trained region (the
    response, or every token for `loss_on="all"`) and token t is real too, so
    the first real token (which follows only padding) is never a target.
    """
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on={loss_on!r}: expected one of {LOSS_ON}")
    qm_BxQ = query_mask_BxQ.astype(jnp.int32)
    rm_BxR = response_mask_BxR.astype(jnp.int32)
    mask_BxT = jnp.concatenate([qm_BxQ, rm_BxR], axis=1)
    region_BxT = jnp.concatenate([qm_BxQ if loss_on == "all" else jnp.zeros_like(qm_BxQ),
                                  rm_BxR], axis=1)
    return mask_BxT[:, :-1] * mask_BxT[:, 1:] * region_BxT[:, 1:]


def token_nll(model, params, query_BxQ, query_mask_BxQ, response_BxR, response_mask_BxR,
              loss_on: str):
    """`(nll_B, count_B)`: summed next-token NLL of each row's targets and their number."""
    ids_BxT = jnp.concatenate([query_BxQ, response_BxR.astype(query_BxQ.dtype)], axis=1)
    mask_BxT = jnp.concatenate([query_mask_BxQ.astype(jnp.int32),
                                response_mask_BxR.astype(jnp.int32)], axis=1)
    tmask_BxT1 = target_mask(query_mask_BxQ, response_mask_BxR, loss_on)
    logits_BxTxV = causal_logits(model, params, ids_BxT, mask_BxT)
    logp_B = logprobs.sequence_logprobs(logits_BxTxV[:, :-1], ids_BxT[:, 1:], tmask_BxT1)
    return -logp_B, jnp.sum(tmask_BxT1, axis=1).astype(jnp.float32)


def response_logprobs(model, params, query_BxQ, query_mask_BxQ, response_BxR,
                      response_mask_BxR, temperature: float = 1.0):
    """[B] summed log-prob of each response given its query (masked tokens 0).

    The logits at position Q-1+t (the last query token, then response tokens)
    predict response token t; they are divided by `temperature`.
    """
    q, r = query_BxQ.shape[1], response_BxR.shape[1]
    if q < 1:
        raise ValueError("response_logprobs needs a query of at least one position")
    ids_BxT = jnp.concatenate([query_BxQ, response_BxR.astype(query_BxQ.dtype)], axis=1)
    mask_BxT = jnp.concatenate([query_mask_BxQ.astype(jnp.int32),
                                response_mask_BxR.astype(jnp.int32)], axis=1)
    logits_BxTxV = causal_logits(model, params, ids_BxT, mask_BxT)
    return logprobs.sequence_logprobs(logits_BxTxV[:, q - 1:q + r - 1], response_BxR,
                                    response_mask_BxR, temperature)


def _loss_fn(params, batch, rng, *, model, loss_on):
    del rng  # no dropout
    nll_B, count_B = token_nll(model, params, batch["query"], batch["query_mask"],
                               batch["response"], batch["response_mask"], loss_on)
    # The loop averages gradients over devices; scaling the shard's token sum
    # by devices / global tokens makes that average the global token mean.
    global_count = jnp.maximum(parallel.psum(jnp.sum(count_B)), 1.0)
    num_devices = parallel.psum(1)
    return jnp.sum(nll_B) * num_devices / global_count, {}


def _eval_fn(params, batch, *, model, loss_on):
    nll_B, count_B = token_nll(model, params, batch["query"], batch["query_mask"],
                               batch["response"], batch["response_mask"], loss_on)
    w_B = batch["weight"]
    return {"loss": (jnp.sum(w_B * nll_B), jnp.sum(w_B * count_B))}


# --------------------------------------------------------------------------
# Trainers.


def _train(cfg, stage: str, loss_on: str, **kwargs):
    return train_causal_lm(cfg, LoopConfig.from_config(cfg, stage), loss_on, **kwargs)


def train_causal_lm(cfg, loop: LoopConfig, loss_on: str, *, model, params,
                    train: SFTData, val: SFTData | None, dp, rng, workdir, writer,
                    stop_after=None):
    """Next-token training of `model` on `train` with the loop `loop` (its stage
    names the metrics and checkpoints); `train_sft` and `train_lm` are this
    with their config group's loop. Also expert iteration's rounds."""
    stage = loop.stage
    dp.check_config(cfg)
    if loss_on not in LOSS_ON:
        raise ValueError(f"{stage}.loss_on={loss_on!r}: expected one of {LOSS_ON}")
    if loss_on == "response" and train.response_NxR.shape[1] == 0:
        raise ValueError(f"{stage}.loss_on='response' but the data has no response tokens")
    kw = dict(model=model, loss_on=loss_on)
    return supervised.run(
        loop,
        loss_fn=functools.partial(_loss_fn, **kw),
        eval_fn=functools.partial(_eval_fn, **kw),
        params=params,
        train_data=train.as_dict(),
        val_data=None if val is None or len(val) == 0 else val.as_dict(),
        dp=dp,
        rng=rng,
        num_train_field=f"the {stage} example count",
        drop_last=True,
        workdir=workdir,
        writer=writer,
        stop_after=stop_after,
        cache_key=("causal_lm", model, loss_on),
    )


def train_sft(cfg, *, model, params, train: SFTData, val: SFTData | None, dp, rng,
              workdir: str | None = None, writer=None,
              stop_after: int | None = None) -> tuple[Any, dict]:
    """Supervised fine-tuning on (query, reference) pairs (Stiennon); resumable.

    Config fields read (a missing one raises):
      sft.batch_size: pairs per step, all devices; divisible by the device
        count. Each epoch uses floor(N / batch_size) batches of a fresh
        permutation (the remainder differs per epoch).
      sft.epochs (Stiennon: 1), sft.lr, sft.schedule ("cosine" in Stiennon),
        sft.adam ("tf" | "torch"), sft.adam_eps.
      sft.log_every, sft.eval_every (0: before and after only),
        sft.checkpoint_every.
      sft.loss_on: "response" (reference tokens only, Stiennon) | "all".
      parallel.mode: must match `dp.mode`.

    Args:
      cfg: the experiment's ConfigDict.
      model, params: an LM (`models.causal_lm` or `PolicyWithValueHead`) and
        its initial params (host).
      train, val: `SFTData`; `val` None or empty skips validation.
      dp: `DataParallel`; rng: the base key (data order).
      workdir: metrics and `checkpoints/sft`; None for neither.
      writer: a `MetricsWriter`; default one on `workdir`.
      stop_after: stop and checkpoint after this many steps (tests).

    Returns:
      `(params, summary)`; metrics `sft/loss` (mean NLL per target token),
      `sft/lr`, `sft/val_loss`; the summary has `initial_val` / `final_val`.
    """
    return _train(cfg, "sft", cfg.sft.loss_on, model=model, params=params, train=train,
                  val=val, dp=dp, rng=rng, workdir=workdir, writer=writer,
                  stop_after=stop_after)


def train_lm(cfg, *, model, params, tokens_NxT, mask_NxT, val_tokens_NxT=None,
             val_mask_NxT=None, dp, rng, workdir: str | None = None, writer=None,
             stop_after: int | None = None) -> tuple[Any, dict]:
    """Causal-LM pretraining on whole sequences (the offline default's tiny GPT-2).

    Every real token after a sequence's first is a target. Reads the same
    fields as `train_sft` from the `pretrain` group except `loss_on`:
    pretrain.batch_size, pretrain.epochs, pretrain.lr, pretrain.schedule,
    pretrain.adam, pretrain.adam_eps, pretrain.log_every, pretrain.eval_every,
    pretrain.checkpoint_every; and parallel.mode. Metrics `pretrain/loss`,
    `pretrain/lr`, `pretrain/val_loss`; checkpoints under
    `checkpoints/pretrain`.

    Args:
      tokens_NxT, mask_NxT: sequences and their masks (padding on either side).
      val_tokens_NxT, val_mask_NxT: held-out sequences, or None.
      Others: as `train_sft`.
    """
    train = SFTData.from_sequences(tokens_NxT, mask_NxT)
    val = None if val_tokens_NxT is None else SFTData.from_sequences(val_tokens_NxT, val_mask_NxT)
    return _train(cfg, "pretrain", "all", model=model, params=params, train=train, val=val,
                  dp=dp, rng=rng, workdir=workdir, writer=writer, stop_after=stop_after)

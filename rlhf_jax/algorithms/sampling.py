"""KV-cache sampler: jit-compiled, fixed shapes, one `lax.scan` over the response.

Plain categorical sampling from `logits / T` (docs/implementation_details.md item 6); greedy,
top-k and top-p exist as options, off by default. Returned logprobs are those
of the temperature-scaled, *unfiltered* distribution: the quantity PPO and the
reference recompute with a full forward pass (item 7), so top-k/top-p change
which tokens are drawn, not how they are scored.

Ziegler mode (`stop_at_eos=False`) always emits `response_length` tokens. In
Stiennon mode (`stop_at_eos=True`) a row stops after its first EOS: later
positions hold `pad_token_id`, logprob 0 and mask 0.
"""

from __future__ import annotations

import functools
import math

import flax.struct
import jax
import jax.numpy as jnp

from rlhf_jax.algorithms.logprobs import token_logprobs
from rlhf_jax.models.arch import init_cache


# The sampler needs only the trunk and the LM head, so any model exposing
# `.transformer` and `.lm_logits` (the LM, or the shared policy+value model)
# samples without computing values.
def _trunk(module, *args):
    return module.transformer(*args)


def _lm_logits(module, h_BxTxD):
    return module.lm_logits(h_BxTxD)


@flax.struct.dataclass
class SampleOutput:
    tokens: jax.Array  # [B, R] int32
    logprobs: jax.Array  # [B, R] float32, log p(token) under logits / T
    mask: jax.Array  # [B, R] int32: 1 for emitted tokens (through EOS), 0 after


def _filter_logits(logits_BxV, top_k: int, top_p: float):
    neg = jnp.finfo(logits_BxV.dtype).min
    if top_k:
        kth_BxK = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_BxK, neg, logits_BxV)
    if top_p < 1.0:
        sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
        cum_BxV = jnp.cumsum(jax.nn.softmax(sorted_BxV, axis=-1), axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always).
        keep_BxV = (cum_BxV - jax.nn.softmax(sorted_BxV, axis=-1)) < top_p
        cutoff_B1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
        logits_BxV = jnp.where(logits_BxV < cutoff_B1, neg, logits_BxV)
    return logits_BxV


def _inverse_cdf(u_B, weights_BxV):
    """Index i with probability weights[i] / sum(weights), by inverting the CDF at u in [0, 1).

    Two levels (blocks of about sqrt(V) tokens, then a token within the chosen
    block), so one uniform per row draws from 50k tokens with two short cumsums.
    """
    b, v = weights_BxV.shape
    c = -(-(math.isqrt(v - 1) + 1) // 8) * 8  # block length: ceil(sqrt(V)), rounded up to 8
    n = -(-v // c)
    w_BxJxC = jnp.pad(weights_BxV, ((0, 0), (0, n * c - v))).reshape(b, n, c)
    cum_BxJ = jnp.cumsum(jnp.sum(w_BxJxC, axis=-1), axis=-1)
    # Clamped below the total so rounding cannot step past the last token with mass.
    x_B = jnp.minimum(u_B * cum_BxJ[:, -1], cum_BxJ[:, -1] * (1 - 2.0**-20))
    # The first block whose cumulative mass exceeds x (a block of zero mass never does).
    blk_B = jnp.sum(cum_BxJ <= x_B[:, None], axis=-1)
    blk_B = jnp.minimum(blk_B, n - 1)
    prev_B = jnp.take_along_axis(cum_BxJ, jnp.maximum(blk_B - 1, 0)[:, None], axis=-1)[:, 0]
    before_B = jnp.where(blk_B > 0, prev_B, 0.0)  # mass of the blocks before blk
    block_BxC = jnp.take_along_axis(w_BxJxC, blk_B[:, None, None], axis=1)[:, 0]
    cum_BxC = jnp.cumsum(block_BxC, axis=-1)
    rest_B = jnp.minimum(x_B - before_B, cum_BxC[:, -1] * (1 - 2.0**-20))
    within_B = jnp.minimum(jnp.sum(cum_BxC <= rest_B[:, None], axis=-1), c - 1)
    return blk_B * c + within_B


def _draw(keys_B, logits_BxV, temperature, greedy, top_k, top_p):
    """One token per row (row i uses keys_B[i]) and its logprob under the tempered full distribution.

    Sampling inverts the CDF of softmax(filtered logits / T) at one uniform per
    row: the same law as Gumbel-max, whose 50k random numbers per row and step
    cost more on a CPU than the rest of the draw.
    """
    scaled_BxV = logits_BxV / temperature
    if greedy:
        tok_B = jnp.argmax(scaled_BxV, axis=-1)
    else:
        exp_BxV = jnp.exp(scaled_BxV - jnp.max(scaled_BxV, axis=-1, keepdims=True))
        if top_k or top_p < 1.0:
            keep_BxV = _filter_logits(scaled_BxV, top_k, top_p) > jnp.finfo(scaled_BxV.dtype).min
            exp_BxV = jnp.where(keep_BxV, exp_BxV, 0.0)
        u_B = jax.vmap(jax.random.uniform)(keys_B)
        tok_B = _inverse_cdf(u_B, exp_BxV)
    tok_B = tok_B.astype(jnp.int32)
    return tok_B, token_logprobs(logits_BxV, tok_B, temperature)


@functools.partial(
    jax.jit,
    static_argnames=(
        "model",
        "response_length",
        "greedy",
        "top_k",
        "top_p",
        "stop_at_eos",
        "eos_token_id",
        "pad_token_id",
        "cache_dtype",
    ),
)
def _sample_jit(
    model,
    params,
    query_BxQ,
    query_mask_BxQ,
    rng,
    temperature,
    row_offset,
    *,
    response_length,
    greedy,
    top_k,
    top_p,
    stop_at_eos,
    eos_token_id,
    pad_token_id,
    cache_dtype,
):
    b, q = query_BxQ.shape
    r = response_length
    s = q + r
    variables = {"params": params}
    cache = init_cache(model.config, b, s, cache_dtype)
    # The mask spans the whole cache buffer; response slots switch on as written.
    mask_BxS = jnp.concatenate(
        [query_mask_BxQ.astype(jnp.int32), jnp.zeros((b, r), jnp.int32)], axis=1
    )
    # Prefill; logits only at the last query position (the LM head over every
    # position would cost about half the trunk's FLOPs at GPT-2 small's shape).
    out = model.apply(
        variables, query_BxQ, mask_BxS, None, cache, 0, method=_trunk
    )
    logits_BxV = model.apply(variables, out.hidden_states[-1][:, -1:], method=_lm_logits)[:, 0]
    # One key per row and step, derived from the row's global index: a row's
    # sample does not depend on the batch it is in or the device it is on.
    row_keys_B = jax.vmap(jax.random.fold_in, (None, 0))(rng, row_offset + jnp.arange(b))

    def step_keys(t):
        return jax.vmap(jax.random.fold_in, (0, None))(row_keys_B, t)

    tok_B, logp_B = _draw(step_keys(0), logits_BxV, temperature, greedy, top_k, top_p)
    done_B = jnp.zeros((b,), bool)

    def emit(tok_B, logp_B, done_B):
        # After a row's EOS (Stiennon mode): pad, logprob 0, mask 0.
        live_B = ~done_B
        tok_B = jnp.where(live_B, tok_B, pad_token_id)
        logp_B = jnp.where(live_B, logp_B, 0.0)
        new_done_B = done_B | (stop_at_eos & (tok_B == eos_token_id))
        return tok_B, logp_B, live_B.astype(jnp.int32), new_done_B

    tok_B, logp_B, live_B, done_B = emit(tok_B, logp_B, done_B)

    def step(carry, t):
        cache, mask_BxS, tok_B, done_B = carry
        idx = q + t - 1  # the slot of the token being fed
        mask_BxS = jax.lax.dynamic_update_slice(mask_BxS, jnp.ones((b, 1), jnp.int32), (0, idx))
        out = model.apply(variables, tok_B[:, None], mask_BxS, None, cache, idx, method=_trunk)
        logits_BxV = model.apply(variables, out.hidden_states[-1], method=_lm_logits)[:, -1]
        new_tok_B, new_logp_B = _draw(step_keys(t), logits_BxV, temperature, greedy, top_k, top_p)
        new_tok_B, new_logp_B, live_B, done_B = emit(new_tok_B, new_logp_B, done_B)
        return (out.cache, mask_BxS, new_tok_B, done_B), (new_tok_B, new_logp_B, live_B)

    carry = (out.cache, mask_BxS, tok_B, done_B)
    _, (toks_RxB, logps_RxB, live_RxB) = jax.lax.scan(step, carry, jnp.arange(1, r))
    tokens_BxR = jnp.concatenate([tok_B[:, None], toks_RxB.T], axis=1)
    logprobs_BxR = jnp.concatenate([logp_B[:, None], logps_RxB.T], axis=1)
    mask_BxR = jnp.concatenate([live_B[:, None], live_RxB.T], axis=1)
    return SampleOutput(tokens=tokens_BxR, logprobs=logprobs_BxR, mask=mask_BxR)


def sample(
    model,
    params,
    query_BxQ,
    query_mask_BxQ,
    rng,
    *,
    response_length: int,
    temperature: float = 1.0,
    greedy: bool = False,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_at_eos: bool = False,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    cache_dtype=None,
    row_offset=0,
) -> SampleOutput:
    """Samples `response_length` tokens after left-padded queries.

    Compiled once per (model, shapes, static options); `temperature` is traced,
    so changing it does not recompile. Deterministic for a given `rng`: row i
    draws with keys derived from `fold_in(rng, row_offset + i)`, so under data
    parallelism (pass the shard's global row offset) a row's sample does not
    depend on the device count.
    """
    if response_length < 1:
        raise ValueError(f"response_length must be >= 1, got {response_length}")
    if stop_at_eos and eos_token_id is None:
        raise ValueError("stop_at_eos=True needs eos_token_id")
    if query_BxQ.shape[1] + response_length > model.config.n_positions:
        raise ValueError(
            f"query length {query_BxQ.shape[1]} + response_length {response_length} exceeds "
            f"the model's n_positions={model.config.n_positions}"
        )
    if pad_token_id is None:
        pad_token_id = model.config.vocab_size  # outside the vocabulary: never sampled
    return _sample_jit(
        model,
        params,
        query_BxQ,
        query_mask_BxQ,
        rng,
        jnp.asarray(temperature, jnp.float32),
        jnp.asarray(row_offset, jnp.int32),
        response_length=response_length,
        greedy=greedy,
        top_k=top_k,
        top_p=float(top_p),
        stop_at_eos=stop_at_eos,
        eos_token_id=-1 if eos_token_id is None else int(eos_token_id),
        pad_token_id=int(pad_token_id),
        cache_dtype=cache_dtype,
    )

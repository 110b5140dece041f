"""Token log-probabilities and entropy: the one place they are computed.

The PPO ratio, the KL penalty, the eval KL, the SFT loss and DPO's implicit
rewards all hang on `log softmax(logits / T)[token]`, so every one of them
(and the sampler's own record of what it drew) goes through
`logprobs_and_entropy`. Its rules:

- logits are upcast to at least float32 *before* dividing by the temperature
  (bf16 logits lose the low bits of a division done in bf16);
- the temperature is the sampler's: a log-prob of a sample must be read from
  the distribution it was drawn from (docs/implementation_details.md);
- a target outside [0, V) (a pad id such as LHP's 50259) is read at id 0 so
  the result stays finite; callers mask those positions;
- logits of -inf (masked vocabulary entries) add 0 to the entropy, not NaN.

Pure and jit-safe; shapes are any `[..., V]` logits with `[...]` targets.

Where the LM head meets the log-softmax (PPO's forwards), a model may hand
over `HeadLogits` instead of logits: the hidden states and the head. Then
`logprobs_and_entropy_from_head` runs head, log-softmax and entropy over
chunks of positions, each chunk rematerialised in the backward pass, so the
float32 [B, L, V] logits and their log-softmax never exist whole (at GPT-2's
50k vocabulary they are the largest activations of a PPO minibatch); the
backward pass computes the head's product once more, chunk by chunk. The
results equal `logprobs_and_entropy(head(h), ...)`: each position's logits
are the same product, whichever chunk computes them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class HeadLogits:
    """Logits not computed yet: `head(h_BxLxD)` -> float32 [B, L, V], to be read in
    chunks of `chunk` positions (lives only inside one traced function)."""

    h_BxLxD: Array
    head: Callable[[Array], Array]
    chunk: int


def _check_temperature(temperature) -> None:
    # Only a concrete Python number can be checked; a traced one is trusted.
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def logprobs_and_entropy(logits_BxTxV: Array, targets_BxT: Array,
                         temperature: float = 1.0) -> tuple[Array, Array]:
    """`(logp_BxT, entropy_BxT)` of `softmax(logits / temperature)`.

    `logits[..., t, :]` is the distribution of `targets[..., t]`: the caller
    does the shift by one. `logp` is the targets' log-prob, `entropy` that of
    the whole tempered distribution at each position (under jit an unused
    entropy costs nothing).

    Args:
      logits_BxTxV: [..., V] logits (any float dtype; computed in >= float32).
      targets_BxT: [...] integer token ids.
      temperature: > 0; a float or a traced scalar.
    """
    _check_temperature(temperature)
    logits_BxTxV = jnp.asarray(logits_BxTxV)
    logits_BxTxV = logits_BxTxV.astype(jnp.promote_types(logits_BxTxV.dtype, jnp.float32))
    targets_BxT = jnp.asarray(targets_BxT)
    if targets_BxT.shape != logits_BxTxV.shape[:-1]:
        raise ValueError(
            f"targets_BxT must have shape {logits_BxTxV.shape[:-1]} to match "
            f"logits_BxTxV {tuple(logits_BxTxV.shape)}, got {tuple(targets_BxT.shape)}"
        )
    vocab = logits_BxTxV.shape[-1]
    # An out-of-range index would gather NaN (jnp's default fill), and
    # NaN * 0 survives masking; clamp pads to a real id instead.
    safe_BxT = jnp.where((targets_BxT >= 0) & (targets_BxT < vocab), targets_BxT, 0)
    logp_BxTxV = jax.nn.log_softmax(logits_BxTxV / temperature, axis=-1)
    logp_BxT = jnp.take_along_axis(logp_BxTxV, safe_BxT[..., None], axis=-1, mode="clip")[..., 0]
    p_BxTxV = jnp.exp(logp_BxTxV)
    entropy_BxT = -jnp.sum(jnp.where(p_BxTxV > 0, p_BxTxV * logp_BxTxV, 0.0), axis=-1)
    return logp_BxT, entropy_BxT


def logprobs_and_entropy_from_head(h_BxLxD: Array, head: Callable[[Array], Array],
                                   targets_BxL: Array, temperature: float = 1.0,
                                   chunk: int = 0) -> tuple[Array, Array]:
    """`logprobs_and_entropy(head(h_BxLxD), targets_BxL, temperature)`, over chunks of
    `chunk` positions (0, or at least L: in one piece, as that call).

    Each chunk's head product, log-softmax and entropy run under `jax.checkpoint`
    inside one `lax.map`: the backward pass keeps `h` and the head's weights,
    not the [B, L, V] logits.
    """
    b, l, d = h_BxLxD.shape
    if targets_BxL.shape != (b, l):
        raise ValueError(f"targets_BxL must have shape {(b, l)} to match h_BxLxD "
                         f"{tuple(h_BxLxD.shape)}, got {tuple(targets_BxL.shape)}")
    if not chunk or chunk >= l:
        return logprobs_and_entropy(head(h_BxLxD), targets_BxL, temperature)
    _check_temperature(temperature)
    n = -(-l // chunk)
    pad = n * chunk - l  # padded positions compute finite values and are cut off
    h_BxYOxD = jnp.pad(h_BxLxD, ((0, 0), (0, pad), (0, 0)))
    t_BxYO = jnp.pad(targets_BxL, ((0, 0), (0, pad)))
    h_YxBxOxD = h_BxYOxD.reshape(b, n, chunk, d).swapaxes(0, 1)
    t_YxBxO = t_BxYO.reshape(b, n, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one(xs):
        h_BxOxD, t_BxO = xs
        return logprobs_and_entropy(head(h_BxOxD), t_BxO, temperature)

    logp_YxBxO, entropy_YxBxO = jax.lax.map(one, (h_YxBxOxD, t_YxBxO))

    def back(x_YxBxO):
        return x_YxBxO.swapaxes(0, 1).reshape(b, n * chunk)[:, :l]

    return back(logp_YxBxO), back(entropy_YxBxO)


def token_logprobs(logits_BxTxV: Array, targets_BxT: Array, temperature: float = 1.0) -> Array:
    """[...] log-probs of `targets` under `softmax(logits / temperature)` (`logprobs_and_entropy`)."""
    return logprobs_and_entropy(logits_BxTxV, targets_BxT, temperature)[0]


def masked_token_logprobs(logits_BxTxV, targets_BxT, mask_BxT, temperature=1.0):
    """`(logp_BxT, mask_BxT)`: token log-probs with masked positions exactly 0, and
    the mask as floats. `where`, not multiply: masked positions contribute no
    value and no gradient, whatever the logits hold there."""
    logp_BxT = token_logprobs(logits_BxTxV, targets_BxT, temperature)
    mask_BxT = jnp.asarray(mask_BxT)
    if mask_BxT.shape != logp_BxT.shape:
        raise ValueError(
            f"mask_BxT must have shape {logp_BxT.shape} to match targets_BxT, "
            f"got {tuple(mask_BxT.shape)}"
        )
    logp_BxT = jnp.where(mask_BxT != 0, logp_BxT, 0.0)
    return logp_BxT, (mask_BxT != 0).astype(logp_BxT.dtype)


def sequence_logprobs(logits_BxTxV: Array, targets_BxT: Array, mask_BxT: Array,
                      temperature: float = 1.0) -> Array:
    """[B] `sum_t mask * log softmax(logits / temperature)[target]` (SFT, DPO)."""
    logp_BxT, _ = masked_token_logprobs(logits_BxTxV, targets_BxT, mask_BxT, temperature)
    return jnp.sum(logp_BxT, axis=-1)

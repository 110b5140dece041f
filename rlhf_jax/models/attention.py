"""Scaled dot-product attention: the one function every model's attention calls.

`dot_product_attention` takes queries with H heads and keys and values with
F heads (grouped-query attention when F < H: query head h reads key/value
head h // (H / F); F == H is ordinary multi-head attention) and one boolean
mask `allowed_BxTxS` that already holds everything a key must pass: the
causal rule, left padding (pad keys are never attended to) and, in a decode
step, which slots of the KV cache hold tokens yet. A query row with every key
masked (a left-pad query) softmaxes to uniform rather than NaN, as in Hugging
Face's GPT-2; callers mask those rows' outputs.

Implementations (`impl`, a model config's `attention_impl`):

- "cudnn": cuDNN's fused flash-attention kernel through
  `jax.nn.dot_product_attention(implementation="cudnn")`: no [B, H, T, S]
  score tensor in memory and no head transposes. NVIDIA GPUs only, bfloat16
  or float16 compute, head dim a multiple of 8 (<= 128; 256 on Hopper); the
  mask is passed as an additive bias (cuDNN's form of an arbitrary mask).
- "xla": `jax.nn.dot_product_attention(implementation="xla")` on GPUs and
  TPUs. Two forms with the same arithmetic suit XLA:CPU better: on a CPU the
  same einsums written out (there they compile to fewer copies and
  transposes: 40 against 50 copies in a 2-layer GPT-2 training step; and in
  bfloat16 the dots write float32 and are rounded once, `dot_dtype`, the form
  XLA:CPU's fast kernels run), and in a decode step on every backend, one
  query against the cache as a multiply-and-reduce over the cache in its own
  [B, S, F, d] layout (an einsum would transpose every layer's cache at every
  step, measured about 5x slower on a CPU).
- None (the default): "cudnn" where its kernel applies (a GPU, bfloat16 or
  float16, supported head dim and lengths, not a decode step), else "xla".

Numerics (tested against the attention written out by hand, on a CPU):
scores are accumulated in float32 and scaled by 1/sqrt(d), the softmax is in
float32, the probabilities are rounded to the compute dtype before they weight
the values, and the output is in the compute dtype.

Shapes: q_BxTxHxd, k_BxSxFxd, v_BxSxFxd, allowed_BxTxS -> out_BxTxHxd
(d: the head dim).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

IMPLS = ("xla", "cudnn")


def check_impl(impl) -> None:
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"attention_impl={impl!r}: expected None (auto) or one of {IMPLS}")


def cudnn_applies(dtype, head_dim: int, t: int, s: int, decode: bool,
                  backend: str | None = None) -> bool:
    """Whether the default picks cuDNN's fused kernel for these shapes.

    Its conditions as `jax.nn.dot_product_attention` checks them: half
    precision, a head dim that is a multiple of 8 and at most 128 (256 from
    Hopper on; 128 is what every GPU takes), even lengths when a mask (a bias
    to cuDNN) is trained through. Decode steps stay on the multiply-and-reduce.
    """
    backend = backend or jax.default_backend()
    return (backend == "gpu" and not decode
            and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
            and head_dim % 8 == 0 and head_dim <= 128 and t % 2 == 0 and s % 2 == 0)


def resolve_impl(impl, dtype, head_dim: int, t: int, s: int, decode: bool) -> str:
    """The implementation a call runs: "cudnn", "xla" or, for a decode step under
    "xla", "reduce" (the multiply-and-reduce over the cache)."""
    check_impl(impl)
    if impl is None:
        impl = "cudnn" if cudnn_applies(dtype, head_dim, t, s, decode) else "xla"
    if impl == "xla" and decode:
        return "reduce"
    return impl


def dot_product_attention(q_BxTxHxd, k_BxSxFxd, v_BxSxFxd, allowed_BxTxS, *, causal: bool = False,
                          impl: str | None = None, dot_dtype=None, decode: bool = False):
    """softmax(q k^T / sqrt(d), masked by `allowed_BxTxS`) v, per head; [B, T, H, d].

    Args:
      q_BxTxHxd: queries in the compute dtype.
      k_BxSxFxd, v_BxSxFxd: keys and values, F dividing H, the queries' dtype.
      allowed_BxTxS: bool, True where query t may attend to key s.
      causal: `allowed` lies within the causal triangle of T == S aligned
        positions (no cache): cuDNN then skips the blocks above the diagonal.
        The result does not depend on it.
      impl: "xla" | "cudnn" | None (see the module docstring).
      dot_dtype: result dtype of the XLA dots before rounding to the compute
        dtype (float32 for bfloat16 on a CPU: `gpt2._dot_dtype`), or None.
      decode: a decode step (T == 1 against a KV cache of length S).
    """
    b, t, h, d = q_BxTxHxd.shape
    s, f = k_BxSxFxd.shape[1], k_BxSxFxd.shape[2]
    if h % f or v_BxSxFxd.shape != k_BxSxFxd.shape:
        raise ValueError(f"attention: {h} query heads need key/value heads dividing them, "
                         f"with keys {k_BxSxFxd.shape} and values {v_BxSxFxd.shape} alike")
    if decode and t != 1:
        raise ValueError(f"attention: a decode step has one query position, got {t}")
    dtype = q_BxTxHxd.dtype
    which = resolve_impl(impl, dtype, d, t, s, decode)
    if which == "reduce":
        return _decode_reduce(q_BxTxHxd, k_BxSxFxd, v_BxSxFxd, allowed_BxTxS)
    if which == "xla" and (dot_dtype is not None or jax.default_backend() == "cpu"):
        return _xla_einsum(q_BxTxHxd, k_BxSxFxd, v_BxSxFxd, allowed_BxTxS, dot_dtype)
    return _jax_attention(q_BxTxHxd, k_BxSxFxd, v_BxSxFxd, allowed_BxTxS,
                          causal=causal and not decode, impl=which)


def _jax_attention(q_BxTxHxd, k_BxSxFxd, v_BxSxFxd, allowed_BxTxS, *, causal: bool, impl: str):
    """`jax.nn.dot_product_attention` with the mask (cuDNN takes it as a bias)."""
    return jax.nn.dot_product_attention(q_BxTxHxd, k_BxSxFxd, v_BxSxFxd,
                                        mask=allowed_BxTxS[:, None], is_causal=causal,
                                        implementation=impl)


def _grouped(q_BxTxHxd, f):
    b, t, h, d = q_BxTxHxd.shape
    return q_BxTxHxd.reshape(b, t, f, h // f, d)


def _xla_einsum(q_BxTxHxd, k_BxSxFxd, v_BxSxFxd, allowed_BxTxS, dot_dtype):
    """`jax.nn.dot_product_attention`'s XLA arithmetic, with the dot results in
    `dot_dtype` (float32) rounded once to the compute dtype: the form of a
    bfloat16 dot XLA:CPU's fast kernels run."""
    b, t, h, d = q_BxTxHxd.shape
    f = k_BxSxFxd.shape[2]
    dtype = q_BxTxHxd.dtype
    neg = jnp.finfo(jnp.float32).min
    if f == h:
        # Plain multi-head attention keeps the ungrouped einsums: XLA:CPU
        # accumulates a dot with a size-1 group axis in another order, and the
        # float-level difference flips sampled tokens (and the pinned runs).
        scores_BxHxTxS = jnp.einsum("bthd,bshd->bhts", q_BxTxHxd, k_BxSxFxd,
                                    preferred_element_type=jnp.float32) / math.sqrt(d)
        # `where`, not an additive bias: a fully masked row softmaxes to uniform, not NaN.
        scores_BxHxTxS = jnp.where(allowed_BxTxS[:, None], scores_BxHxTxS, neg)
        probs_BxHxTxS = jax.nn.softmax(scores_BxHxTxS, axis=-1).astype(dtype)
        return jnp.einsum("bhts,bshd->bthd", probs_BxHxTxS, v_BxSxFxd,
                          preferred_element_type=dot_dtype).astype(dtype)
    q_BxTxFxAxd = _grouped(q_BxTxHxd, f)
    scores_BxFxAxTxS = jnp.einsum("btfad,bsfd->bfats", q_BxTxFxAxd, k_BxSxFxd,
                                  preferred_element_type=jnp.float32) / math.sqrt(d)
    scores_BxFxAxTxS = jnp.where(allowed_BxTxS[:, None, None], scores_BxFxAxTxS, neg)
    probs = jax.nn.softmax(scores_BxFxAxTxS, axis=-1).astype(dtype)
    out_BxTxFxAxd = jnp.einsum("bfats,bsfd->btfad", probs, v_BxSxFxd,
                               preferred_element_type=dot_dtype).astype(dtype)
    return out_BxTxFxAxd.reshape(b, t, h, d)


def _decode_reduce(q_Bx1xHxd, k_BxSxFxd, v_BxSxFxd, allowed_Bx1xS):
    """One query against the cache, as multiply-and-reduce in the cache's own
    [B, S, F, d] layout (no per-step transposes of the cache)."""
    b, _, h, d = q_Bx1xHxd.shape
    f = k_BxSxFxd.shape[2]
    dtype = q_Bx1xHxd.dtype
    neg = jnp.finfo(jnp.float32).min
    if f == h:  # ungrouped, as in `_xla_einsum`
        scores_BxSxH = jnp.sum((q_Bx1xHxd * k_BxSxFxd).astype(jnp.float32), axis=-1) / math.sqrt(d)
        scores_BxSxH = jnp.where(allowed_Bx1xS[:, 0, :, None], scores_BxSxH, neg)
        probs_BxSxH = jax.nn.softmax(scores_BxSxH, axis=1).astype(dtype)
        return jnp.sum(probs_BxSxH[..., None] * v_BxSxFxd, axis=1, keepdims=True)
    q_Bx1xFxAxd = _grouped(q_Bx1xHxd, f)
    scores_BxSxFxA = jnp.sum(
        (q_Bx1xFxAxd * k_BxSxFxd[:, :, :, None]).astype(jnp.float32), axis=-1
    ) / math.sqrt(d)
    scores_BxSxFxA = jnp.where(allowed_Bx1xS[:, 0, :, None, None], scores_BxSxFxA, neg)
    probs_BxSxFxA = jax.nn.softmax(scores_BxSxFxA, axis=1).astype(dtype)
    out_BxFxAxd = jnp.sum(probs_BxSxFxA[..., None] * v_BxSxFxd[:, :, :, None], axis=1)
    return out_BxFxAxd.reshape(b, 1, h, d)

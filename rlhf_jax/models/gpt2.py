"""GPT-2 in Flax (linen), numerically matching Hugging Face's `GPT2LMHeadModel`.

Parameter names mirror the Hugging Face state dict (`transformer/h_0/attn/
c_attn/kernel` <-> `transformer.h.0.attn.c_attn.weight`; HF's Conv1D stores
weights as [in, out], the same as a Flax Dense kernel), so conversion is a
rename. The LM head is tied to `wte`.

Padding: sequences are left-padded; padded keys are masked out of attention and
pads do not advance positions (`position_ids = cumsum(mask) - mask`). Token ids
outside the vocabulary (LHP's pad id 50259) are mapped to 0 before the lookup;
they must be masked. No dropout anywhere (docs/implementation_details.md item 15).

Decoding uses an explicit KV cache pytree: `init_cache(...)` returns it, the
model takes `cache=` and `cache_index=` and returns the updated cache, so a
sampler can carry it through `lax.scan`. With a cache, `attention_mask` covers
the whole cache buffer [B, S] (1 for every real token written so far and the
ones being written now).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from rlhf_jax.models.attention import check_impl, dot_product_attention

Dtype = Any

# Sizes of the released GPT-2 models, and the Stiennon et al. 2020 sizes
# (GPT-3-style shapes with a GPT-2 architecture).
_SIZES = {
    "gpt2": dict(n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": dict(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": dict(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": dict(n_embd=1600, n_layer=48, n_head=25),
    "stiennon-1.3b": dict(n_embd=2048, n_layer=24, n_head=16, n_positions=2048),
    "stiennon-6.7b": dict(n_embd=4096, n_layer=32, n_head=32, n_positions=2048),
}


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """Architecture and numerics of a GPT-2. Frozen and hashable (jit-static)."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    dtype: Dtype = jnp.float32  # compute dtype (bfloat16 on TPU)
    param_dtype: Dtype = jnp.float32  # master weights
    remat: bool = False  # rematerialise each block in the backward pass
    kv_cache_dtype: Dtype | None = None  # sampler's KV cache (None: the compute dtype)
    # "xla" | "cudnn" | None: cuDNN's fused kernel where it applies, else XLA (models/attention.py)
    attention_impl: str | None = None
    # PPO's forwards: the LM head and log-softmax in chunks of this many positions,
    # rematerialised in the backward pass (0: all positions at once; algorithms/logprobs.py)
    logits_chunk: int = 0

    def __post_init__(self):
        check_impl(self.attention_impl)
        if self.logits_chunk < 0:
            raise ValueError(f"GPT2Config: logits_chunk={self.logits_chunk} must be >= 0")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPT2Config: n_embd={self.n_embd} is not divisible by n_head={self.n_head}"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_name(cls, name: str, **overrides) -> "GPT2Config":
        if name not in _SIZES:
            raise ValueError(f"unknown GPT-2 size {name!r}; known: {sorted(_SIZES)}")
        return cls(**{**_SIZES[name], **overrides})

    def replace(self, **kw) -> "GPT2Config":
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        d, l = self.n_embd, self.n_layer
        per_block = 12 * d * d + 13 * d
        return self.vocab_size * d + self.n_positions * d + l * per_block + 2 * d


@flax.struct.dataclass
class GPT2Output:
    logits: jax.Array | None  # [B, T, V] float32, None for the trunk alone
    hidden_states: tuple  # n_layer + 1 arrays [B, T, D]; the last is after ln_f
    cache: Any = None  # updated KV cache when one was given


def init_cache(config: GPT2Config, batch_size: int, max_length: int, dtype: Dtype | None = None):
    """An empty KV cache: per layer `k`, `v` of shape [B, S, H, head_dim].

    dtype: `dtype`, else `config.kv_cache_dtype`, else the compute dtype. A
    bfloat16 cache under float32 compute halves its memory; keys and values
    are rounded to bfloat16 as they are written and read back in the compute dtype.
    """
    dtype = dtype or config.kv_cache_dtype or config.dtype
    shape = (batch_size, max_length, config.n_head, config.head_dim)
    return {
        f"h_{i}": {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
        for i in range(config.n_layer)
    }


def position_ids_from_mask(mask_BxT: jax.Array) -> jax.Array:
    """Left padding does not advance positions (docs/implementation_details.md item 3)."""
    mask = mask_BxT.astype(jnp.int32)
    return jnp.cumsum(mask, axis=-1) - mask


def attention_layout(b: int, t: int, attention_mask, position_ids, cache, cache_index):
    """`(allowed_BxTxS, position_ids_BxT)` of a forward over `t` new tokens: the
    causal rule and the key padding mask, and positions that left padding does
    not advance. Without a cache S == T; with one, `attention_mask` covers the
    whole cache [B, S] and the new tokens sit at `cache_index`. Every
    architecture's trunk calls this."""
    if cache is None:
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.int32)
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        causal_TxS = jnp.tril(jnp.ones((t, t), bool))
    else:
        if attention_mask is None or cache_index is None:
            raise ValueError("decoding with a cache needs attention_mask [B, S] and cache_index")
        s = attention_mask.shape[1]
        start = jnp.asarray(cache_index, jnp.int32)
        if position_ids is None:
            position_ids = jax.lax.dynamic_slice_in_dim(
                position_ids_from_mask(attention_mask), start, t, axis=1)
        causal_TxS = jnp.arange(s)[None, :] <= (start + jnp.arange(t))[:, None]
    return causal_TxS[None] & attention_mask.astype(bool)[:, None, :], position_ids


def _dot_dtype(config: GPT2Config):
    """The result dtype, before rounding, of the low-precision dots whose output
    stays in the compute dtype (dense layers, the attention's probs @ v), or None.

    XLA:CPU's library kernels (YNNPACK, AMX on recent x86) run a bfloat16 x
    bfloat16 dot with a float32 result 3-4x faster than the same dot with a
    bfloat16 result (measured at GPT-2 124M's shapes: 186 vs 52 GFLOP/s at 16
    rows, 622 vs 172 at 1024). Both accumulate in float32, so on a CPU the
    dots write float32 and are rounded to the compute dtype once, as before;
    GPU and TPU programs keep the bfloat16-result dot their compilers fuse
    into the GEMM (None).
    """
    low = jnp.dtype(config.dtype).itemsize < 4
    return jnp.float32 if low and jax.default_backend() == "cpu" else None


def _f32_result_dot(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    # Flax's Dense calls this: the float32 result is rounded to the inputs'
    # dtype before the bias, as a bfloat16-result dot would have been.
    out = jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                              preferred_element_type=jnp.float32)
    return out.astype(preferred_element_type or jnp.result_type(lhs, rhs))


def _dense(config: GPT2Config, features: int, name: str, std: float) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        kernel_init=nn.initializers.normal(std),
        dot_general=_f32_result_dot if _dot_dtype(config) else None,
        name=name,
    )


def _layer_norm(config: GPT2Config, name: str) -> nn.LayerNorm:
    # Statistics in float32 even for bfloat16 compute.
    return nn.LayerNorm(
        epsilon=config.layer_norm_epsilon,
        dtype=jnp.float32,
        param_dtype=config.param_dtype,
        name=name,
    )


class Attention(nn.Module):
    config: GPT2Config

    @nn.compact
    def __call__(self, x_BxTxD, allowed_BxTxS, layer_cache=None, cache_index=None):
        cfg = self.config
        b, t, _ = x_BxTxD.shape
        h, hd = cfg.n_head, cfg.head_dim
        proj_std = cfg.initializer_range / math.sqrt(2 * cfg.n_layer)
        qkv = _dense(cfg, 3 * cfg.n_embd, "c_attn", cfg.initializer_range)(x_BxTxD)
        q_BxTxHxd, k_BxTxHxd, v_BxTxHxd = (
            a.reshape(b, t, h, hd) for a in jnp.split(qkv, 3, axis=-1)
        )
        new_cache = None
        if layer_cache is not None:
            zero = jnp.zeros((), jnp.int32)
            idx = (zero, jnp.asarray(cache_index, jnp.int32), zero, zero)
            k_cache = layer_cache["k"]
            k_BxSxHxd = jax.lax.dynamic_update_slice(k_cache, k_BxTxHxd.astype(k_cache.dtype), idx)
            v_BxSxHxd = jax.lax.dynamic_update_slice(
                layer_cache["v"], v_BxTxHxd.astype(k_cache.dtype), idx
            )
            new_cache = {"k": k_BxSxHxd, "v": v_BxSxHxd}
            k_BxTxHxd, v_BxTxHxd = k_BxSxHxd.astype(cfg.dtype), v_BxSxHxd.astype(cfg.dtype)
        # One shared attention (models/attention.py): cuDNN's fused kernel on a
        # GPU where it applies, else XLA's; a decode step reads the cache in place.
        # Without a cache `allowed` lies in the causal triangle (GPT2Model, SelectorHead).
        out_BxTxHxd = dot_product_attention(
            q_BxTxHxd, k_BxTxHxd, v_BxTxHxd, allowed_BxTxS, causal=layer_cache is None,
            impl=cfg.attention_impl, dot_dtype=_dot_dtype(cfg),
            decode=t == 1 and layer_cache is not None)
        out = _dense(cfg, cfg.n_embd, "c_proj", proj_std)(out_BxTxHxd.reshape(b, t, cfg.n_embd))
        return out, new_cache


# HF "gelu_new" (tanh approximation). Checkpointed: the backward pass keeps
# only its [B,T,4D] input and recomputes the elementwise chain, instead of
# saving its [B,T,4D] intermediates (measured: a GPT-2 124M layer's backward
# temp memory at batch 64 x 88 tokens, 520 -> 450 MB).
_gelu_new = jax.checkpoint(functools.partial(jax.nn.gelu, approximate=True))


class MLP(nn.Module):
    config: GPT2Config

    @nn.compact
    def __call__(self, x_BxTxD):
        cfg = self.config
        proj_std = cfg.initializer_range / math.sqrt(2 * cfg.n_layer)
        x = _dense(cfg, 4 * cfg.n_embd, "c_fc", cfg.initializer_range)(x_BxTxD)
        x = _gelu_new(x)
        return _dense(cfg, cfg.n_embd, "c_proj", proj_std)(x)


class Block(nn.Module):
    config: GPT2Config

    @nn.compact
    def __call__(self, x_BxTxD, allowed_BxTxS, layer_cache=None, cache_index=None):
        cfg = self.config
        y = _layer_norm(cfg, "ln_1")(x_BxTxD).astype(cfg.dtype)
        y, new_cache = Attention(cfg, name="attn")(y, allowed_BxTxS, layer_cache, cache_index)
        x_BxTxD = x_BxTxD + y
        y = _layer_norm(cfg, "ln_2")(x_BxTxD).astype(cfg.dtype)
        x_BxTxD = x_BxTxD + MLP(cfg, name="mlp")(y)
        return x_BxTxD, new_cache


class GPT2Model(nn.Module):
    """The transformer trunk: embeddings, blocks, final layer norm."""

    config: GPT2Config

    @nn.compact
    def __call__(
        self,
        input_ids_BxT,
        attention_mask=None,
        position_ids=None,
        cache=None,
        cache_index=None,
    ):
        cfg = self.config
        b, t = input_ids_BxT.shape
        wte = nn.Embed(
            cfg.vocab_size,
            cfg.n_embd,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            embedding_init=nn.initializers.normal(cfg.initializer_range),
            name="wte",
        )
        wpe = nn.Embed(
            cfg.n_positions,
            cfg.n_embd,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            embedding_init=nn.initializers.normal(cfg.initializer_range),
            name="wpe",
        )
        allowed_BxTxS, position_ids = attention_layout(b, t, attention_mask, position_ids, cache,
                                                       cache_index)

        # Ids outside the vocabulary (pads) would gather garbage; they are masked.
        ids = jnp.where((input_ids_BxT >= 0) & (input_ids_BxT < cfg.vocab_size), input_ids_BxT, 0)
        pos = jnp.clip(position_ids, 0, cfg.n_positions - 1)
        x_BxTxD = (wte(ids) + wpe(pos)).astype(cfg.dtype)

        block_cls = nn.remat(Block, static_argnums=()) if cfg.remat else Block
        hidden = [x_BxTxD]
        new_cache = {} if cache is not None else None
        for i in range(cfg.n_layer):
            layer_cache = None if cache is None else cache[f"h_{i}"]
            x_BxTxD, layer_new = block_cls(cfg, name=f"h_{i}")(
                x_BxTxD, allowed_BxTxS, layer_cache, cache_index
            )
            if cache is not None:
                new_cache[f"h_{i}"] = layer_new
            hidden.append(x_BxTxD)
        x_BxTxD = _layer_norm(cfg, "ln_f")(x_BxTxD).astype(cfg.dtype)
        hidden[-1] = x_BxTxD  # as HF: the last hidden state is after ln_f
        return GPT2Output(logits=None, hidden_states=tuple(hidden), cache=new_cache)

    def embedding(self):
        # Unboxed as `self.param` would be (an FSDP shard is gathered here).
        return nn.unbox(self.variables["params"]["wte"]["embedding"])


class GPT2LMHeadModel(nn.Module):
    """Trunk plus the LM head tied to the token embedding; logits in float32."""

    config: GPT2Config

    def setup(self):
        self.transformer = GPT2Model(self.config)

    def __call__(
        self, input_ids_BxT, attention_mask=None, position_ids=None, cache=None, cache_index=None
    ):
        out = self.transformer(input_ids_BxT, attention_mask, position_ids, cache, cache_index)
        return out.replace(logits=self.lm_logits(out.hidden_states[-1]))

    def lm_logits(self, h_BxTxD):
        # Unboxed as `self.param` would be (an FSDP shard is gathered here).
        wte = nn.unbox(self.transformer.variables["params"]["wte"]["embedding"])
        return tied_lm_logits(h_BxTxD, wte, self.config.dtype)

    def init_cache(self, batch_size: int, max_length: int, dtype: Dtype | None = None):
        return init_cache(self.config, batch_size, max_length, dtype)


def tied_lm_logits(h_BxTxD, wte_VxD, dtype):
    """Float32 logits against the token embedding, accumulated in float32 and
    not rounded to the compute dtype on the way (bfloat16 logits would carry
    3 significant digits into every logprob)."""
    return jnp.einsum("btd,vd->btv", h_BxTxD, wte_VxD.astype(dtype),
                      preferred_element_type=jnp.float32)


def init_params(config: GPT2Config, rng: jax.Array, seq_len: int = 8):
    """Random GPT-2 params (HF's initialisation scheme)."""
    model = GPT2LMHeadModel(config)
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return model, model.init(rng, ids)["params"]

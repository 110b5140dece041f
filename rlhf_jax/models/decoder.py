"""The Llama-family decoder in Flax (linen): Llama 3/3.1/3.2, Qwen2/2.5, Qwen3.

One module for the three families, which differ in three switches of a
frozen `DecoderConfig`: QKV biases (Qwen2/2.5), RMSNorm on each head's query
and key before the rotary embedding (Qwen3), and Llama 3's frequency scaling
of the rotary embedding (`rope_scaling`). Everything else is shared: RMSNorm
before attention and MLP, rotary position embeddings, grouped-query attention
(`n_kv_head` key/value heads, each read by `n_head / n_kv_head` query heads),
a SwiGLU MLP, and an LM head tied to the token embedding or separate.

Parameter names mirror Hugging Face's state dict (`transformer/layers_3/
self_attn/q_proj/kernel` <-> `model.layers.3.self_attn.q_proj.weight`,
transposed: torch's Linear stores [out, in]), so conversion (`hf.py`) is a
rename and a transpose. An untied LM head lives inside the trunk's subtree
(`transformer/lm_head/kernel`), created only when logits are asked for: the
stages copy `params["transformer"]` between the LM, the shared policy+value
model and the reward model, and a reward model or value network built on
the trunk carries no LM head.

The conventions are GPT-2's (`gpt2.py`): left padding with positions
`cumsum(mask) - mask`, the same output (`GPT2Output`: `.logits`,
`.hidden_states` with the last after the final norm, `.cache`), an explicit
KV cache pytree for the `lax.scan` sampler ([B, S, n_kv_head, head_dim] per
layer), the compute dtype for activations with float32 statistics (norms,
softmax, rotary angles) and float32 logits, and `remat` per layer.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.models.attention import check_impl, dot_product_attention
from rlhf_jax.models.gpt2 import (
    GPT2Output,
    _dot_dtype,
    _f32_result_dot,
    attention_layout,
    tied_lm_logits,
)

Dtype = Any
FAMILIES = ("llama", "qwen2", "qwen3")
ROPE_TYPES = ("default", "llama3")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Architecture and numerics of a Llama-family decoder. Frozen and hashable (jit-static).

    The GPT-2 field names (`n_embd`, `n_layer`, `n_head`, `n_positions`) are
    kept so sizes read the same for both architectures; `hf.py` maps them to
    and from Hugging Face's (`hidden_size`, `num_hidden_layers`, ...).
    `rope_scaling` is a tuple of (key, value) pairs (hashable): empty, or
    Llama 3's `rope_type`, `factor`, `low_freq_factor`, `high_freq_factor`,
    `original_max_position_embeddings`.
    """

    family: str = "llama"  # llama | qwen2 | qwen3: the Hugging Face model_type written on export
    vocab_size: int = 32000
    n_positions: int = 2048  # max_position_embeddings (the sampler's length limit)
    n_embd: int = 512
    n_layer: int = 4
    n_head: int = 8
    n_kv_head: int = 8
    head_dim: int = 0  # 0: n_embd // n_head
    intermediate_size: int = 1376
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple = ()
    qkv_bias: bool = False  # Qwen2/2.5
    o_bias: bool = False  # Llama/Qwen3 `attention_bias=True` biases o_proj too
    qk_norm: bool = False  # Qwen3
    tie_embeddings: bool = True
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    dtype: Dtype = jnp.float32  # compute dtype (bfloat16 on TPU)
    param_dtype: Dtype = jnp.float32  # master weights
    remat: bool = False  # rematerialise each layer in the backward pass
    kv_cache_dtype: Dtype | None = None  # sampler's KV cache (None: the compute dtype)
    attention_impl: str | None = None  # models/attention.py: "xla" | "cudnn" | None (auto)
    logits_chunk: int = 0  # PPO's LM head + log-softmax in chunks of this many positions (0: at once)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"DecoderConfig: family={self.family!r}, expected one of {FAMILIES}")
        check_impl(self.attention_impl)
        if self.logits_chunk < 0:
            raise ValueError(f"DecoderConfig: logits_chunk={self.logits_chunk} must be >= 0")
        if not self.head_dim:
            if self.n_embd % self.n_head:
                raise ValueError(f"DecoderConfig: n_embd={self.n_embd} is not divisible by "
                                 f"n_head={self.n_head} (and head_dim is not given)")
            object.__setattr__(self, "head_dim", self.n_embd // self.n_head)
        if self.n_kv_head < 1 or self.n_head % self.n_kv_head:
            raise ValueError(f"DecoderConfig: n_head={self.n_head} is not a multiple of "
                             f"n_kv_head={self.n_kv_head}")
        if self.head_dim % 2:
            raise ValueError(f"DecoderConfig: head_dim={self.head_dim} must be even (rotary pairs)")
        rope = dict(self.rope_scaling)
        if rope and rope.get("rope_type") not in ROPE_TYPES:
            raise ValueError(f"DecoderConfig: rope_scaling type {rope.get('rope_type')!r} "
                             f"unsupported; supported: {ROPE_TYPES}")

    def replace(self, **kw) -> "DecoderConfig":
        return dataclasses.replace(self, **kw)

    def block_num_params(self) -> int:
        d, hd, f = self.n_embd, self.head_dim, self.intermediate_size
        q, kv = self.n_head * hd, self.n_kv_head * hd
        n = d * (q + 2 * kv) + q * d + 3 * d * f + 2 * d
        n += (q + 2 * kv) * self.qkv_bias + d * self.o_bias + 2 * hd * self.qk_norm
        return n

    def embedding_num_params(self) -> int:
        return self.vocab_size * self.n_embd * (1 if self.tie_embeddings else 2)

    def num_params(self) -> int:
        return self.embedding_num_params() + self.n_layer * self.block_num_params() + self.n_embd


def init_cache(config: DecoderConfig, batch_size: int, max_length: int, dtype: Dtype | None = None):
    """An empty KV cache: per layer `k`, `v` of shape [B, S, n_kv_head, head_dim]
    (grouped-query attention stores only the key/value heads)."""
    dtype = dtype or config.kv_cache_dtype or config.dtype
    shape = (batch_size, max_length, config.n_kv_head, config.head_dim)
    return {
        f"layers_{i}": {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
        for i in range(config.n_layer)
    }


def rope_inv_freq(config: DecoderConfig) -> np.ndarray:
    """[head_dim / 2] float32 rotary frequencies, with Llama 3's scaling when configured.

    Llama 3 divides the low frequencies (wavelengths beyond the original
    context / low_freq_factor) by `factor`, keeps the high ones (below
    original context / high_freq_factor) and interpolates between them.
    """
    hd = config.head_dim
    inv = 1.0 / (config.rope_theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
    inv = inv.astype(np.float32)
    rope = dict(config.rope_scaling)
    if rope.get("rope_type") == "llama3":
        factor, lo, hi = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old = rope["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def rope_angles(config: DecoderConfig, position_ids_BxT):
    """(cos, sin) of the rotary angles, float32 [B, T, head_dim / 2]."""
    angles = position_ids_BxT.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(config))
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x_BxTxHxd, cos_BxTxd, sin_BxTxd):
    """Rotates the pairs (i, i + head_dim/2) by the position's angles (Hugging Face's
    `rotate_half` layout), in float32; returns the input's dtype."""
    x = x_BxTxHxd.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    cos, sin = cos_BxTxd[:, :, None], sin_BxTxd[:, :, None]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxHxd.dtype)


class RMSNorm(nn.Module):
    """x / rms(x) * scale, statistics in float32; returns float32 (callers cast)."""

    eps: float
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return scale.astype(jnp.float32) * x


def _dense(config: DecoderConfig, features: int, name: str, bias: bool = False) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=bias,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        kernel_init=nn.initializers.normal(config.initializer_range),
        dot_general=_f32_result_dot if _dot_dtype(config) else None,
        name=name,
    )


class SelfAttention(nn.Module):
    config: DecoderConfig

    @nn.compact
    def __call__(self, x_BxTxD, allowed_BxTxS, cos, sin, layer_cache=None, cache_index=None):
        cfg = self.config
        b, t, _ = x_BxTxD.shape
        h, kv, hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        q_BxTxHxd = _dense(cfg, h * hd, "q_proj", cfg.qkv_bias)(x_BxTxD).reshape(b, t, h, hd)
        k_BxTxKxd = _dense(cfg, kv * hd, "k_proj", cfg.qkv_bias)(x_BxTxD).reshape(b, t, kv, hd)
        v_BxTxKxd = _dense(cfg, kv * hd, "v_proj", cfg.qkv_bias)(x_BxTxD).reshape(b, t, kv, hd)
        if cfg.qk_norm:  # Qwen3: per-head RMSNorm before the rotation
            q_BxTxHxd = RMSNorm(cfg.rms_norm_eps, cfg.param_dtype, name="q_norm")(
                q_BxTxHxd).astype(cfg.dtype)
            k_BxTxKxd = RMSNorm(cfg.rms_norm_eps, cfg.param_dtype, name="k_norm")(
                k_BxTxKxd).astype(cfg.dtype)
        q_BxTxHxd = apply_rope(q_BxTxHxd, cos, sin)
        k_BxTxKxd = apply_rope(k_BxTxKxd, cos, sin)
        new_cache = None
        if layer_cache is not None:
            zero = jnp.zeros((), jnp.int32)
            idx = (zero, jnp.asarray(cache_index, jnp.int32), zero, zero)
            dt = layer_cache["k"].dtype
            k_BxSxKxd = jax.lax.dynamic_update_slice(layer_cache["k"], k_BxTxKxd.astype(dt), idx)
            v_BxSxKxd = jax.lax.dynamic_update_slice(layer_cache["v"], v_BxTxKxd.astype(dt), idx)
            new_cache = {"k": k_BxSxKxd, "v": v_BxSxKxd}
            k_BxTxKxd, v_BxTxKxd = k_BxSxKxd, v_BxSxKxd
        # The shared attention (models/attention.py): cuDNN's fused kernel on a GPU
        # where it applies, else XLA's; a decode step reads the cache in place.
        out_BxTxHxd = dot_product_attention(
            q_BxTxHxd, k_BxTxKxd.astype(cfg.dtype), v_BxTxKxd.astype(cfg.dtype), allowed_BxTxS,
            causal=layer_cache is None, impl=cfg.attention_impl, dot_dtype=_dot_dtype(cfg),
            decode=t == 1 and layer_cache is not None)
        out = _dense(cfg, cfg.n_embd, "o_proj", cfg.o_bias)(out_BxTxHxd.reshape(b, t, h * hd))
        return out, new_cache


# Checkpointed like GPT-2's gelu: the backward pass keeps the two [B, T, F]
# inputs and recomputes the elementwise product.
_swiglu = jax.checkpoint(lambda gate, up: jax.nn.silu(gate) * up)


class MLP(nn.Module):
    config: DecoderConfig

    @nn.compact
    def __call__(self, x_BxTxD):
        cfg = self.config
        gate = _dense(cfg, cfg.intermediate_size, "gate_proj")(x_BxTxD)
        up = _dense(cfg, cfg.intermediate_size, "up_proj")(x_BxTxD)
        return _dense(cfg, cfg.n_embd, "down_proj")(_swiglu(gate, up))


class DecoderLayer(nn.Module):
    config: DecoderConfig

    @nn.compact
    def __call__(self, x_BxTxD, allowed_BxTxS, cos, sin, layer_cache=None, cache_index=None):
        cfg = self.config
        norm = lambda name: RMSNorm(cfg.rms_norm_eps, cfg.param_dtype, name=name)  # noqa: E731
        y = norm("input_layernorm")(x_BxTxD).astype(cfg.dtype)
        y, new_cache = SelfAttention(cfg, name="self_attn")(y, allowed_BxTxS, cos, sin,
                                                            layer_cache, cache_index)
        x_BxTxD = x_BxTxD + y
        y = norm("post_attention_layernorm")(x_BxTxD).astype(cfg.dtype)
        x_BxTxD = x_BxTxD + MLP(cfg, name="mlp")(y)
        return x_BxTxD, new_cache


class LMHead(nn.Module):
    """An untied LM head: float32 logits accumulated in float32 (as `tied_lm_logits`)."""

    config: DecoderConfig

    @nn.compact
    def __call__(self, h_BxTxD):
        cfg = self.config
        kernel = self.param("kernel", nn.initializers.normal(cfg.initializer_range),
                            (cfg.n_embd, cfg.vocab_size), cfg.param_dtype)
        return jnp.einsum("btd,dv->btv", h_BxTxD.astype(cfg.dtype), kernel.astype(cfg.dtype),
                          preferred_element_type=jnp.float32)


class DecoderModel(nn.Module):
    """The trunk (embeddings, layers, final norm) and, through `lm_logits`, the LM head."""

    config: DecoderConfig

    def setup(self):
        cfg = self.config
        self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.n_embd, dtype=cfg.dtype,
                                     param_dtype=cfg.param_dtype,
                                     embedding_init=nn.initializers.normal(cfg.initializer_range))
        layer_cls = nn.remat(DecoderLayer, static_argnums=()) if cfg.remat else DecoderLayer
        self.layers = [layer_cls(cfg) for _ in range(cfg.n_layer)]
        self.norm = RMSNorm(cfg.rms_norm_eps, cfg.param_dtype)
        if not cfg.tie_embeddings:
            # Set up lazily: its params exist only in models that ask for logits.
            self.lm_head = LMHead(cfg)

    def __call__(self, input_ids_BxT, attention_mask=None, position_ids=None, cache=None,
                 cache_index=None):
        cfg = self.config
        b, t = input_ids_BxT.shape
        allowed_BxTxS, position_ids = attention_layout(b, t, attention_mask, position_ids, cache,
                                                       cache_index)
        cos, sin = rope_angles(cfg, position_ids)

        # Ids outside the vocabulary (pads) would gather garbage; they are masked.
        ids = jnp.where((input_ids_BxT >= 0) & (input_ids_BxT < cfg.vocab_size), input_ids_BxT, 0)
        x_BxTxD = self.embed_tokens(ids).astype(cfg.dtype)
        hidden = [x_BxTxD]
        new_cache = {} if cache is not None else None
        for i, layer in enumerate(self.layers):
            name = f"layers_{i}"
            x_BxTxD, layer_new = layer(x_BxTxD, allowed_BxTxS, cos, sin,
                                       None if cache is None else cache[name], cache_index)
            if cache is not None:
                new_cache[name] = layer_new
            hidden.append(x_BxTxD)
        hidden[-1] = self.norm(x_BxTxD).astype(cfg.dtype)  # as HF: after the final norm
        return GPT2Output(logits=None, hidden_states=tuple(hidden), cache=new_cache)

    def lm_logits(self, h_BxTxD):
        if self.config.tie_embeddings:
            return tied_lm_logits(h_BxTxD, self.embed_tokens.embedding, self.config.dtype)
        return self.lm_head(h_BxTxD)


class DecoderLMHeadModel(nn.Module):
    """Trunk plus LM head; logits in float32. The same interface as `GPT2LMHeadModel`."""

    config: DecoderConfig

    def setup(self):
        self.transformer = DecoderModel(self.config)

    def __call__(self, input_ids_BxT, attention_mask=None, position_ids=None, cache=None,
                 cache_index=None):
        out = self.transformer(input_ids_BxT, attention_mask, position_ids, cache, cache_index)
        return out.replace(logits=self.lm_logits(out.hidden_states[-1]))

    def lm_logits(self, h_BxTxD):
        return self.transformer.lm_logits(h_BxTxD)

    def init_cache(self, batch_size: int, max_length: int, dtype: Dtype | None = None):
        return init_cache(self.config, batch_size, max_length, dtype)

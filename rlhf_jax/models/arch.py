"""The one place that knows which module computes which architecture.

Everything outside `models/` builds, samples and sizes models through these
functions and never asks which architecture it holds: a config object
(`GPT2Config` or `decoder.DecoderConfig`) carries the answer, and the
functions here pick the trunk, the LM, the KV cache, a fresh block and the
final norm for it. `config_for` turns the config file's `model.arch` and sizes
into an architecture config (a random init or a pretrain stage).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from rlhf_jax.models import decoder, gpt2
from rlhf_jax.models.decoder import DecoderConfig, DecoderLMHeadModel, DecoderModel
from rlhf_jax.models.gpt2 import GPT2Config, GPT2LMHeadModel, GPT2Model

ARCHS = ("gpt2",) + decoder.FAMILIES


def is_decoder(config) -> bool:
    return isinstance(config, DecoderConfig)


def trunk(config, name: str | None = None) -> nn.Module:
    """The transformer trunk (embeddings, blocks, final norm) of `config`."""
    cls = DecoderModel if is_decoder(config) else GPT2Model
    return cls(config, name=name) if name else cls(config)


def causal_lm(config) -> nn.Module:
    """The language model (trunk and LM head, params `{"transformer": ...}`)."""
    return (DecoderLMHeadModel if is_decoder(config) else GPT2LMHeadModel)(config)


def lm_logits(transformer: nn.Module, config, h_BxTxD):
    """Float32 logits of the LM head on a bound trunk (tied, or the decoder's own head)."""
    if is_decoder(config):
        return transformer.lm_logits(h_BxTxD)
    # Unboxed as `self.param` would be (an FSDP shard is gathered here).
    wte = nn.unbox(transformer.variables["params"]["wte"]["embedding"])
    return gpt2.tied_lm_logits(h_BxTxD, wte, config.dtype)


def init_cache(config, batch_size: int, max_length: int, dtype=None):
    """An empty KV cache for the sampler (per layer `k`, `v`)."""
    mod = decoder if is_decoder(config) else gpt2
    return mod.init_cache(config, batch_size, max_length, dtype)


def fresh_block(config, name: str, x_BxTxD, mask_BxT):
    """One newly initialised block of `config`'s kind over `x` (causal, pads masked):
    the selector head's blocks. Call inside a compact module."""
    t = x_BxTxD.shape[1]
    allowed_BxTxS = jnp.tril(jnp.ones((t, t), bool))[None] & mask_BxT.astype(bool)[:, None, :]
    if is_decoder(config):
        cos, sin = decoder.rope_angles(config, gpt2.position_ids_from_mask(mask_BxT))
        return decoder.DecoderLayer(config, name=name)(x_BxTxD, allowed_BxTxS, cos, sin)[0]
    return gpt2.Block(config, name=name)(x_BxTxD, allowed_BxTxS)[0]


def final_norm(config, name: str):
    """A fresh final norm of `config`'s kind; returns float32."""
    if is_decoder(config):
        return decoder.RMSNorm(config.rms_norm_eps, config.param_dtype, name=name)
    return gpt2._layer_norm(config, name)


def block_num_params(config) -> int:
    """Params of one transformer block."""
    if is_decoder(config):
        return config.block_num_params()
    d = config.n_embd
    return 12 * d * d + 13 * d


def embedding_num_params(config) -> int:
    """Params of the embeddings and, when untied, the LM head."""
    if is_decoder(config):
        return config.embedding_num_params()
    return (config.vocab_size + config.n_positions) * config.n_embd


def kv_heads(config) -> int:
    """Key/value heads per layer (what the KV cache stores)."""
    return config.n_kv_head if is_decoder(config) else config.n_head


# Family defaults at a given width, for a random init: Qwen2 biases q/k/v,
# Qwen3 normalises q and k, Llama 3 scales its rotary frequencies (the released
# models' values; harmless at short contexts, kept so the code path runs).
_FAMILY = {
    "llama": dict(rope_theta=500000.0, rms_norm_eps=1e-5,
                  rope_scaling=(("rope_type", "llama3"), ("factor", 32.0),
                                ("low_freq_factor", 1.0), ("high_freq_factor", 4.0),
                                ("original_max_position_embeddings", 8192))),
    "qwen2": dict(rope_theta=1000000.0, qkv_bias=True),
    "qwen3": dict(rope_theta=1000000.0, qk_norm=True),
}


def config_for(arch: str, *, vocab_size: int, n_positions: int, n_embd: int, n_layer: int,
               n_head: int, n_kv_head: int = 0, **numerics):
    """An architecture config of family `arch` at these sizes (`model.arch` and the
    `model.*` sizes of a config file). `n_kv_head` 0: half the heads (grouped-query
    attention with groups of two), or one when there is one head. The MLP is
    SwiGLU's usual 8/3 of the width, rounded up to a multiple of 8; embeddings
    are tied."""
    if arch not in ARCHS:
        raise ValueError(f"model.arch={arch!r}: expected one of {ARCHS}")
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd,
                          n_layer=n_layer, n_head=n_head, **numerics)
    kv = n_kv_head or max(1, n_head // 2)
    ffn = -(-(8 * n_embd // 3) // 8) * 8
    return DecoderConfig(family=arch, vocab_size=vocab_size, n_positions=n_positions,
                         n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_kv_head=kv,
                         intermediate_size=ffn, tie_embeddings=True,
                         **_FAMILY[arch], **numerics)


# Released checkpoints' architectures (their config.json), so a config can size
# one (`--dry_run`, the memory report) before its weights are on disk.
_LLAMA3_ROPE = (("rope_type", "llama3"), ("factor", None), ("low_freq_factor", 1.0),
                ("high_freq_factor", 4.0), ("original_max_position_embeddings", 8192))


def _llama3_rope(factor: float) -> tuple:
    return tuple((k, factor if k == "factor" else v) for k, v in _LLAMA3_ROPE)


KNOWN = {
    "Qwen/Qwen2.5-0.5B": dict(family="qwen2", vocab_size=151936, n_positions=32768, n_embd=896,
                              n_layer=24, n_head=14, n_kv_head=2, intermediate_size=4864,
                              rope_theta=1000000.0, qkv_bias=True, tie_embeddings=True),
    "Qwen/Qwen2.5-1.5B": dict(family="qwen2", vocab_size=151936, n_positions=131072,
                              n_embd=1536, n_layer=28, n_head=12, n_kv_head=2,
                              intermediate_size=8960, rope_theta=1000000.0, qkv_bias=True,
                              tie_embeddings=True),
    "Qwen/Qwen3-0.6B": dict(family="qwen3", vocab_size=151936, n_positions=40960, n_embd=1024,
                            n_layer=28, n_head=16, n_kv_head=8, head_dim=128,
                            intermediate_size=3072, rope_theta=1000000.0, qk_norm=True,
                            tie_embeddings=True),
    "meta-llama/Llama-3.2-1B": dict(family="llama", vocab_size=128256, n_positions=131072,
                                    n_embd=2048, n_layer=16, n_head=32, n_kv_head=8,
                                    head_dim=64, intermediate_size=8192, rms_norm_eps=1e-5,
                                    rope_theta=500000.0, rope_scaling=_llama3_rope(32.0),
                                    tie_embeddings=True),
    "meta-llama/Llama-3.1-8B": dict(family="llama", vocab_size=128256, n_positions=131072,
                                    n_embd=4096, n_layer=32, n_head=32, n_kv_head=8,
                                    intermediate_size=14336, rms_norm_eps=1e-5,
                                    rope_theta=500000.0, rope_scaling=_llama3_rope(8.0),
                                    tie_embeddings=False),
}


def known_config(name: str, **numerics):
    """The architecture config of a released checkpoint named in `KNOWN`, or None."""
    spec = KNOWN.get(name)
    return None if spec is None else DecoderConfig(**spec, **numerics)

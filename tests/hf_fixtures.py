"""Tiny random transformers GPT-2 models of odd shapes, shared by the parity tests."""

import functools

import jax.numpy as jnp
import numpy as np
import torch
from transformers import GPT2Config as HFConfig
from transformers import GPT2LMHeadModel as HFModel

from rlhf_jax.models.gpt2 import GPT2LMHeadModel
from rlhf_jax.models.hf import config_from_hf, state_dict_to_params

# Odd sizes catch transposes and head-splitting mistakes a square shape hides.
ODD = dict(vocab_size=97, n_positions=48, n_embd=36, n_layer=3, n_head=3, bos_token_id=96, eos_token_id=96)


@functools.lru_cache(maxsize=None)
def tiny_pair(seed: int = 0):
    """(hf_model, our_model, our_params) with identical random weights."""
    torch.manual_seed(seed)
    hf_cfg = HFConfig(**ODD)
    hf_model = HFModel(hf_cfg).eval()
    # Non-trivial layer-norm and bias values so a dropped bias shows.
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    sd = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    cfg = config_from_hf(hf_cfg.to_dict())
    params = state_dict_to_params(sd, cfg, source="tiny")
    params = {"transformer": __import__("jax").tree.map(jnp.asarray, params["transformer"])}
    return hf_model, GPT2LMHeadModel(cfg), params


def left_padded_batch(vocab: int, lengths, width: int, seed: int = 0, pad: int | None = None):
    """ids_BxT, mask_BxT with each row left-padded to `width`."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (len(lengths), width)).astype(np.int32)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, width - n :] = 1
    ids[mask == 0] = vocab if pad is None else pad
    return ids, mask


def hf_logits(hf_model, ids, mask):
    """transformers' logits with explicit position ids (pads do not advance)."""
    pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    safe = np.where(mask == 1, ids, 0)
    with torch.no_grad():
        out = hf_model(
            torch.tensor(safe, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(pos, dtype=torch.long),
            output_hidden_states=True,
        )
    return out.logits.numpy(), [h.numpy() for h in out.hidden_states]


# Tiny Llama-family models, each with a different mix of what the families
# vary: grouped-query attention at group sizes 1, 2, 3 and 4, head dims that
# are not n_embd / n_head, tied and untied heads, Llama 3 rope scaling, biases,
# Qwen3's q/k norms. Large-ish init so logits are O(1) and a mistake shows.
_DECODER_COMMON = dict(vocab_size=97, hidden_size=36, intermediate_size=50, num_hidden_layers=2,
                       max_position_embeddings=64, initializer_range=0.2)
DECODER_KINDS = {
    "llama_gqa3_untied_rope_scaled": ("LlamaConfig", dict(
        num_attention_heads=6, num_key_value_heads=2, head_dim=10, tie_word_embeddings=False,
        rope_theta=500.0, rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                            high_freq_factor=4.0,
                                            original_max_position_embeddings=16))),
    "llama_mqa_bias": ("LlamaConfig", dict(
        num_attention_heads=4, num_key_value_heads=1, head_dim=12, tie_word_embeddings=True,
        attention_bias=True)),
    "qwen2_gqa2": ("Qwen2Config", dict(
        num_attention_heads=6, num_key_value_heads=3, tie_word_embeddings=True)),
    "qwen3_mha_qknorm_untied": ("Qwen3Config", dict(
        num_attention_heads=3, num_key_value_heads=3, head_dim=14, tie_word_embeddings=False)),
}


@functools.lru_cache(maxsize=None)
def decoder_pair(kind: str, seed: int = 0):
    """(hf_model, our_model, our_params) of one `DECODER_KINDS` entry, identical weights."""
    import jax
    import transformers

    from rlhf_jax.models.decoder import DecoderLMHeadModel

    cls_name, kw = DECODER_KINDS[kind]
    torch.manual_seed(seed)
    hf_cfg = getattr(transformers, cls_name)(**_DECODER_COMMON, **kw)
    hf_model = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
    with torch.no_grad():  # norms away from 1 and biases away from 0, so a dropped one shows
        for name, p in hf_model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    sd = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    cfg = config_from_hf(hf_model.config.to_dict())
    params = jax.tree.map(jnp.asarray, state_dict_to_params(sd, cfg, source=kind))
    return hf_model, DecoderLMHeadModel(cfg), params

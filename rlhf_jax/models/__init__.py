"""Models: Flax GPT-2 and the Llama family (Llama 3, Qwen2, Qwen3), reward / value heads,
Hugging Face interop."""

from rlhf_jax.models.arch import ARCHS, causal_lm, config_for, init_cache
from rlhf_jax.models.decoder import DecoderConfig, DecoderLMHeadModel, DecoderModel
from rlhf_jax.models.gpt2 import (
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    GPT2Output,
    init_params,
    position_ids_from_mask,
)
from rlhf_jax.models.hf import load_pretrained, load_tokenizer, save_pretrained

__all__ = [
    "ARCHS",
    "causal_lm",
    "config_for",
    "DecoderConfig",
    "DecoderLMHeadModel",
    "DecoderModel",
    "GPT2Config",
    "GPT2LMHeadModel",
    "GPT2Model",
    "GPT2Output",
    "init_cache",
    "init_params",
    "position_ids_from_mask",
    "load_pretrained",
    "load_tokenizer",
    "save_pretrained",
]

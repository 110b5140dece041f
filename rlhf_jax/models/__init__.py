"""Models: Flax GPT-2, reward / value heads, Hugging Face interop."""

from rlhf_jax.models.gpt2 import (
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    GPT2Output,
    init_cache,
    init_params,
    position_ids_from_mask,
)
from rlhf_jax.models.hf import load_pretrained, load_tokenizer, save_pretrained

__all__ = [
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

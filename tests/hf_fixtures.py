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

"""Models from a config: GPT-2 shapes and dtypes, LM checkpoints, the reward model on disk.

The stages load and save through these so every model a run builds gets the
dtypes, rematerialisation and KV-cache dtype the config's `model` group names.
LMs are Hugging Face GPT-2 directories (`hf.load_pretrained` / `save_pretrained`);
the reward model is `params.msgpack` beside `reward_config.json` (its head and
GPT-2 shape).
"""

from __future__ import annotations

import json
import os

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.models.gpt2 import _SIZES, GPT2Config
from rlhf_jax.models.heads import RewardModel
from rlhf_jax.models.hf import config_from_hf, config_to_hf, load_pretrained

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
GPT2_VOCAB = 50257
REWARD_PARAMS = "params.msgpack"


def kv_cache_dtype(cfg):
    return DTYPES[cfg.model.kv_cache_dtype] if cfg.model.kv_cache_dtype else None


def _kernels(cfg) -> dict:
    """The KV cache's dtype, the attention implementation and the LM head's chunking."""
    m = cfg.model
    return dict(kv_cache_dtype=kv_cache_dtype(cfg),
                attention_impl=m.get("attention_impl", "") or None,
                logits_chunk=m.get("logits_chunk", 0))


def model_config(cfg, vocab_size: int) -> GPT2Config:
    """The GPT-2 shape and precision `cfg.model` names, at `vocab_size`."""
    m = cfg.model
    return GPT2Config(vocab_size=vocab_size, n_positions=m.n_positions, n_embd=m.n_embd,
                      n_layer=m.n_layer, n_head=m.n_head, dtype=DTYPES[m.dtype],
                      param_dtype=DTYPES[m.param_dtype], remat=m.remat,
                      **_kernels(cfg))


def load_lm(cfg, path: str):
    """(GPT2LMHeadModel, params) of a Hugging Face GPT-2 directory, at `cfg.model`'s precision."""
    return load_pretrained(path, dtype=DTYPES[cfg.model.dtype],
                           param_dtype=DTYPES[cfg.model.param_dtype], remat=cfg.model.remat,
                           **_kernels(cfg))


def reward_model(cfg, config: GPT2Config) -> RewardModel:
    """The `RewardModel` the `reward` group describes (head, token head, selector), on a
    GPT-2 of `config`."""
    r = cfg.reward
    return RewardModel(config, head=r.head, token_head=bool(r.token_head),
                       selector_layers=tuple(r.selector_layers),
                       selector_blocks=r.selector_blocks)


def init_reward_model(cfg, key: jax.Array, policy_model, policy_params):
    """`(rm_model, rm_params)`: a fresh reward head on the policy's language model (Ziegler)."""
    rm_model = reward_model(cfg, policy_model.config)
    ids = jnp.zeros((1, 8), jnp.int32)
    rm_params = jax.jit(rm_model.init)(key, ids)["params"]  # one program, not one per op
    return rm_model, {**rm_params, "transformer": policy_params["transformer"]}


def save_reward_model(path: str, rm_model: RewardModel, rm_params) -> None:
    os.makedirs(path, exist_ok=True)
    meta = {"head": rm_model.head, "token_head": rm_model.token_head,
            "selector_layers": list(rm_model.selector_layers),
            "selector_blocks": rm_model.selector_blocks, "gpt2": config_to_hf(rm_model.config)}
    tmp = os.path.join(path, REWARD_PARAMS + ".tmp")
    with open(tmp, "wb") as f:
        f.write(flax.serialization.msgpack_serialize(jax.device_get(rm_params)))
    os.replace(tmp, os.path.join(path, REWARD_PARAMS))
    with open(os.path.join(path, "reward_config.json"), "w") as f:
        json.dump(meta, f, indent=2)


def load_reward_model(cfg, path: str):
    """(RewardModel, params) saved by `save_reward_model`, at `cfg.model`'s precision."""
    with open(os.path.join(path, "reward_config.json")) as f:
        meta = json.load(f)
    config = config_from_hf(meta["gpt2"], source=path, dtype=DTYPES[cfg.model.dtype],
                            param_dtype=DTYPES[cfg.model.param_dtype], remat=cfg.model.remat,
                            **_kernels(cfg))
    with open(os.path.join(path, REWARD_PARAMS), "rb") as f:
        params = flax.serialization.msgpack_restore(f.read())
    # Host arrays: each stage places them on its devices (`dp.replicate`: split
    # along fsdp on a mesh); a whole copy on the default device would not fit at scale.
    # Files written before the token head and the selector existed lack their keys.
    model = RewardModel(config, head=meta["head"], token_head=meta.get("token_head", False),
                        selector_layers=tuple(meta.get("selector_layers", ())),
                        selector_blocks=meta.get("selector_blocks", 1))
    return model, jax.tree.map(np.asarray, params)


def architecture(cfg) -> tuple[GPT2Config, str]:
    """The GPT-2 architecture the config runs, without loading weights, and its source.

    A known size name (`gpt2`, ..., `stiennon-6.7b`) or a local Hugging Face
    directory gives the dims; otherwise (a random init, a pretrain stage, or a
    hub name not on disk) the `model.*` fields do.
    """
    m = cfg.model
    dtypes = dict(dtype=getattr(jnp, m.dtype), param_dtype=getattr(jnp, m.param_dtype),
                  remat=m.remat)
    stages = cfg.stages.split(",")
    name = m.name_or_path
    if m.init != "scratch" and "pretrain" not in stages and name:
        if name in _SIZES:
            return GPT2Config.from_name(name, **dtypes), f"{name} (known size)"
        path = os.path.join(name, "config.json")
        if os.path.isfile(path):
            with open(path) as f:
                return config_from_hf(json.load(f), source=path, **dtypes), path
    vocab = cfg.pretrain.vocab_size if m.tokenizer == "synthetic" else GPT2_VOCAB
    config = GPT2Config(vocab_size=vocab, n_positions=m.n_positions, n_embd=m.n_embd,
                        n_layer=m.n_layer, n_head=m.n_head, **dtypes)
    return config, "model.n_embd / n_layer / n_head / n_positions"

"""Models from a config: architecture, shapes and dtypes, LM checkpoints, the reward model on disk.

The stages load and save through these so every model a run builds gets the
architecture (`model.arch`, or the checkpoint's config.json), dtypes,
rematerialisation and KV-cache dtype the config's `model` group names. LMs
are Hugging Face directories (`hf.load_pretrained` / `save_pretrained`); the
reward model is `params.msgpack` beside `reward_config.json` (its head and
its trunk's Hugging Face config).
"""

from __future__ import annotations

import json
import os

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.models import arch as arch_lib
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


def _arch(cfg) -> tuple[str, int]:
    # Configs written before `model.arch` existed are GPT-2.
    m = cfg.model
    return m.get("arch", "gpt2"), m.get("n_kv_head", 0)


def model_config(cfg, vocab_size: int):
    """The architecture, shape and precision `cfg.model` names, at `vocab_size`."""
    m = cfg.model
    arch, kv = _arch(cfg)
    return arch_lib.config_for(arch, vocab_size=vocab_size, n_positions=m.n_positions,
                               n_embd=m.n_embd, n_layer=m.n_layer, n_head=m.n_head,
                               n_kv_head=kv, dtype=DTYPES[m.dtype],
                               param_dtype=DTYPES[m.param_dtype], remat=m.remat,
                               **_kernels(cfg))


def causal_lm(cfg, vocab_size: int):
    """A fresh (unparameterised) language model of `model_config(cfg, vocab_size)`."""
    return arch_lib.causal_lm(model_config(cfg, vocab_size))


def load_lm(cfg, path: str):
    """(LM, params) of a Hugging Face directory (the architecture from its config.json),
    at `cfg.model`'s precision."""
    return load_pretrained(path, dtype=DTYPES[cfg.model.dtype],
                           param_dtype=DTYPES[cfg.model.param_dtype], remat=cfg.model.remat,
                           **_kernels(cfg))


def reward_model(cfg, config) -> RewardModel:
    """The `RewardModel` the `reward` group describes (head, token head, selector), on a
    trunk of `config`."""
    r = cfg.reward
    return RewardModel(config, head=r.head, token_head=bool(r.token_head),
                       selector_layers=tuple(r.selector_layers),
                       selector_blocks=r.selector_blocks)


def init_reward_model(cfg, key: jax.Array, policy_model, policy_params):
    """`(rm_model, rm_params)`: a fresh reward head on the policy's language model (Ziegler)."""
    rm_model = reward_model(cfg, policy_model.config)
    ids = jnp.zeros((1, 8), jnp.int32)
    rm_params = jax.jit(rm_model.init)(key, ids)["params"]  # one program, not one per op
    # The trunk's params without an untied LM head, which a reward model never reads.
    trunk = {k: v for k, v in policy_params["transformer"].items() if k in rm_params["transformer"]}
    return rm_model, {**rm_params, "transformer": trunk}


def save_reward_model(path: str, rm_model: RewardModel, rm_params) -> None:
    os.makedirs(path, exist_ok=True)
    meta = {"head": rm_model.head, "token_head": rm_model.token_head,
            "selector_layers": list(rm_model.selector_layers),
            "selector_blocks": rm_model.selector_blocks, "trunk": config_to_hf(rm_model.config)}
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
    # "gpt2": the key files written before other architectures existed.
    config = config_from_hf(meta.get("trunk") or meta["gpt2"], source=path, dtype=DTYPES[cfg.model.dtype],
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


def architecture(cfg) -> tuple[object, str]:
    """The architecture config the config runs, without loading weights, and its source.

    A known size name (GPT-2's `gpt2`, ..., `stiennon-6.7b`; `arch.KNOWN`'s
    released Llama / Qwen checkpoints) or a local Hugging
    Face directory gives the architecture and dims; otherwise (a random init,
    a pretrain stage, or a hub name not on disk) `model.arch` and the
    `model.*` fields do.
    """
    m = cfg.model
    dtypes = dict(dtype=getattr(jnp, m.dtype), param_dtype=getattr(jnp, m.param_dtype),
                  remat=m.remat)
    stages = cfg.stages.split(",")
    name = m.name_or_path
    if m.init != "scratch" and "pretrain" not in stages and name:
        if name in _SIZES:
            return GPT2Config.from_name(name, **dtypes), f"{name} (known size)"
        if name in arch_lib.KNOWN:
            return arch_lib.known_config(name, **dtypes), f"{name} (known size)"
        path = os.path.join(name, "config.json")
        if os.path.isfile(path):
            with open(path) as f:
                return config_from_hf(json.load(f), source=path, **dtypes), path
    vocab = cfg.pretrain.vocab_size if m.tokenizer == "synthetic" else GPT2_VOCAB
    arch, kv = _arch(cfg)
    config = arch_lib.config_for(arch, vocab_size=vocab, n_positions=m.n_positions,
                                 n_embd=m.n_embd, n_layer=m.n_layer, n_head=m.n_head,
                                 n_kv_head=kv, **dtypes)
    return config, f"model.arch={arch} / n_embd / n_layer / n_head / n_positions"

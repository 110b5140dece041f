"""Hugging Face config.json and state dicts of the Llama family (Llama, Qwen2, Qwen3)
to and from our `decoder.DecoderConfig` and params (`hf.py` dispatches here).

Torch's Linear stores [out, in] and Flax's Dense [in, out]: conversion is a
rename (`decoder_hf_key`) and a transpose of every kernel. The expected keys
and shapes come from the module itself (`jax.eval_shape` of its init), so a
checkpoint that disagrees with its config.json is named tensor by tensor.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.models.decoder import DecoderConfig, DecoderLMHeadModel

HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                    "qwen3": "Qwen3ForCausalLM"}


def decoder_config_from_hf(hf: dict, *, source: str, **overrides) -> DecoderConfig:
    """A DecoderConfig from a Llama / Qwen2 / Qwen3 config.json; what our module does
    not compute (sliding windows, MLP biases, other rotary scalings) is refused."""
    family = hf["model_type"]
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act={hf['hidden_act']!r} unsupported (need silu)")
    if hf.get("mlp_bias"):
        raise ValueError(f"{source}: mlp_bias=true unsupported")
    if hf.get("use_sliding_window"):
        raise ValueError(f"{source}: use_sliding_window=true unsupported (full attention only)")
    # transformers 5 writes `rope_parameters` (theta inside); older files rope_theta
    # and rope_scaling beside it.
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ValueError(f"{source}: rope type {rope_type!r} unsupported (default or llama3)")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"{source}: partial_rotary_factor unsupported")
    scaling = ()
    if rope_type == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        missing = [k for k in keys if k not in rope]
        if missing:
            raise ValueError(f"{source}: llama3 rope scaling lacks {missing}")
        scaling = (("rope_type", "llama3"),) + tuple((k, rope[k]) for k in keys)
    bias = bool(hf.get("attention_bias", False))
    n_head = hf["num_attention_heads"]
    eos = hf.get("eos_token_id")
    try:
        return _decoder_config(hf, family, n_head, theta, scaling, bias, eos, overrides)
    except ValueError as e:  # sizes that do not fit together
        raise ValueError(f"{source}: {e}") from None


def _decoder_config(hf, family, n_head, theta, scaling, bias, eos, overrides) -> DecoderConfig:
    return DecoderConfig(
        family=family,
        vocab_size=hf["vocab_size"],
        n_positions=hf.get("max_position_embeddings", 2048),
        n_embd=hf["hidden_size"],
        n_layer=hf["num_hidden_layers"],
        n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head,
        head_dim=hf.get("head_dim") or 0,
        intermediate_size=hf["intermediate_size"],
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(theta),
        rope_scaling=scaling,
        # Qwen2's q/k/v projections always have biases, its o_proj never.
        qkv_bias=True if family == "qwen2" else bias,
        o_bias=False if family == "qwen2" else bias,
        qk_norm=family == "qwen3",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        initializer_range=hf.get("initializer_range", 0.02),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=eos[0] if isinstance(eos, list) else eos,
        **overrides,
    )


def decoder_config_to_hf(config: DecoderConfig) -> dict:
    rope = dict(config.rope_scaling)
    out = {
        "architectures": [HF_ARCHITECTURES[config.family]],
        "model_type": config.family,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.n_positions,
        "hidden_size": config.n_embd,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": rope or None,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.initializer_range,
        "attention_dropout": 0.0,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "torch_dtype": "float32",
    }
    if config.family == "qwen2":
        out["use_sliding_window"] = False
    else:
        if config.qkv_bias != config.o_bias:
            raise ValueError(f"{config.family}: attention_bias biases q, k, v and o together")
        out["attention_bias"] = config.qkv_bias
        out["mlp_bias"] = False
    return out


def decoder_hf_key(path: tuple[str, ...]) -> str:
    """('transformer', 'layers_3', 'self_attn', 'q_proj', 'kernel') ->
    'model.layers.3.self_attn.q_proj.weight'; the untied head is 'lm_head.weight'."""
    names = list(path[1:])
    if names[0] == "lm_head":
        return "lm_head.weight"
    if names[0].startswith("layers_"):
        names = ["layers", names[0][len("layers_"):]] + names[1:]
    leaf = "bias" if names[-1] == "bias" else "weight"
    return "model." + ".".join(names[:-1] + [leaf])


def decoder_param_shapes(config: DecoderConfig) -> dict[tuple[str, ...], tuple]:
    """Every param path of the LM and its shape, from the module itself."""
    model = DecoderLMHeadModel(config)
    tree = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32)))
    flat = jax.tree_util.tree_flatten_with_path(tree["params"])[0]
    return {tuple(p.key for p in path): tuple(leaf.shape) for path, leaf in flat}


def decoder_state_dict_to_params(sd: dict, config: DecoderConfig, *, source: str) -> dict:
    shapes = decoder_param_shapes(config)
    want = {decoder_hf_key(path): path for path in shapes}
    # Buffers some checkpoints carry (rotary frequencies), and a tied head saved anyway.
    ignored = {k for k in sd if k.endswith("rotary_emb.inv_freq")}
    if config.tie_embeddings:
        ignored.add("lm_head.weight")
    have = set(sd) - ignored
    missing = sorted(set(want) - have)
    if missing:
        raise ValueError(f"{source}: missing weights {missing[:3]}{'...' if len(missing) > 3 else ''}")
    unexpected = sorted(have - set(want))
    if unexpected:
        raise ValueError(f"{source}: unexpected weights {unexpected[:3]} for a "
                         f"{config.n_layer}-layer {config.family}")
    params: dict[str, Any] = {}
    for key, path in want.items():
        value = sd[key]
        if path[-1] == "kernel":
            value = value.T  # torch Linear [out, in] -> Dense [in, out]
        if tuple(value.shape) != shapes[path]:
            raise ValueError(f"{source}: weight {key} has shape {tuple(sd[key].shape)}, which "
                             f"config.json does not imply (our {path[-2]} wants {shapes[path]})")
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = np.asarray(value, np.float32)
    return params


def decoder_params_to_state_dict(params: dict) -> dict[str, np.ndarray]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = tuple(p.key for p in path)
        value = np.asarray(leaf, np.float32)
        out[decoder_hf_key(names)] = np.ascontiguousarray(value.T if names[-1] == "kernel"
                                                           else value)
    return out

"""Load and save Hugging Face checkpoints (GPT-2, Llama, Qwen2, Qwen3) and tokenizers.

`load_pretrained(name_or_path)` reads a hub name or a local directory in
Hugging Face layout (config.json plus model.safetensors, shards listed in
model.safetensors.index.json, or pytorch_model.bin), picks the architecture
from config.json's `model_type` and returns our Flax model (`GPT2LMHeadModel`
or `decoder.DecoderLMHeadModel`) with host (numpy) params; `save_pretrained`
writes the same layout back, loadable by
`transformers.AutoModelForCausalLM.from_pretrained`. transformers 5 has no
Flax models, so the conversion is ours: GPT-2's Conv1D weights are already
[in, out] (a rename); the Llama family's Linear weights are [out, in] (a
rename and a transpose).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from rlhf_jax.models.decoder import DecoderConfig, DecoderLMHeadModel
from rlhf_jax.models.gpt2 import GPT2Config, GPT2LMHeadModel
from rlhf_jax.models.hf_decoder import (
    HF_ARCHITECTURES,
    decoder_config_from_hf,
    decoder_config_to_hf,
    decoder_params_to_state_dict,
    decoder_state_dict_to_params,
)

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# Buffers in old checkpoints (causal masks), not parameters.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


# Hugging Face model_type -> our architecture config; the Llama family shares one module.
MODEL_TYPES = ("gpt2", "llama", "qwen2", "qwen3")


def config_from_hf(hf: dict, *, source: str = "config.json", **overrides):
    """Our architecture config (`GPT2Config` or `DecoderConfig`) from a Hugging Face
    config dict, by its `model_type`; other model types are refused."""
    model_type = hf.get("model_type")
    if model_type in HF_ARCHITECTURES:
        return decoder_config_from_hf(hf, source=source, **overrides)
    if model_type != "gpt2":
        archs = hf.get("architectures") or []
        raise ValueError(
            f"{source}: model_type={model_type!r} (architectures={archs}) is not supported; "
            f"supported: {', '.join(MODEL_TYPES)}"
        )
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"{source}: activation_function={act!r} unsupported (need gelu_new)")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise ValueError(f"{source}: scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn unsupported")
    return GPT2Config(
        vocab_size=hf["vocab_size"],
        n_positions=hf.get("n_positions", 1024),
        n_embd=hf["n_embd"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        initializer_range=hf.get("initializer_range", 0.02),
        **overrides,
    )


def config_to_hf(config) -> dict:
    """The Hugging Face config.json dict of our `GPT2Config` or `DecoderConfig`."""
    if isinstance(config, DecoderConfig):
        return decoder_config_to_hf(config)
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.n_positions,
        "n_ctx": config.n_positions,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_range": config.initializer_range,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": 50256 if config.vocab_size > 50256 else 0,
        "eos_token_id": 50256 if config.vocab_size > 50256 else 0,
    }


def _resolve_dir(name_or_path: str) -> str:
    """A local directory holding config.json and weights, downloading from the hub if needed."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.path.exists(name_or_path):
        raise ValueError(f"{name_or_path}: expected a directory in Hugging Face layout, got a file")
    try:
        import huggingface_hub
        from huggingface_hub.errors import (
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError as e:  # pragma: no cover - transformers depends on it
        raise ValueError(f"{name_or_path}: not a local directory and huggingface_hub is missing") from e
    patterns = ["config.json", "*.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin"]
    try:
        return huggingface_hub.snapshot_download(name_or_path, allow_patterns=patterns)
    except RepositoryNotFoundError as e:
        raise ValueError(f"{name_or_path}: no such local directory and no such model on the hub") from e
    except LocalEntryNotFoundError as e:
        raise ValueError(
            f"{name_or_path}: not a local directory and not in the Hugging Face cache, "
            "and the hub cannot be reached (offline?); download it on a connected machine "
            "or pass a local directory"
        ) from e
    except Exception as e:  # network errors, bad repo ids
        raise ValueError(f"{name_or_path}: cannot be loaded locally or from the hub: {e}") from e


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                      "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32,
                      "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """The tensors of one safetensors file as read-only memory-mapped host arrays.

    Read here rather than by `safetensors.numpy`, which refuses bfloat16 (the
    dtype most released checkpoints are in): the format is an 8-byte header
    length, a JSON header of dtypes, shapes and byte ranges, then the data.
    """
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file (truncated header)")
        n = struct.unpack("<Q", head)[0]
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a safetensors file ({e})") from e
    data = np.memmap(path, np.uint8, "r", offset=8 + n) if os.path.getsize(path) > 8 + n else None
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {key} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        raw = data[begin:end] if end > begin else np.zeros(0, np.uint8)
        out[key] = raw.view(_SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def _read_state_dict(directory: str) -> dict[str, np.ndarray]:
    st = os.path.join(directory, "model.safetensors")
    if os.path.exists(st):
        return read_safetensors(st)
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):  # sharded: the index maps each tensor to its file
        try:
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise ValueError(f"{index}: not a safetensors index ({e!r})") from e
        sd = {}
        for name in files:
            shard = os.path.join(directory, name)
            if not os.path.exists(shard):
                raise ValueError(f"{index}: lists {name}, which is not in {directory}")
            sd.update(read_safetensors(shard))
        return sd
    pt = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(pt):
        try:
            import torch
        except ImportError as e:
            raise ValueError(f"{pt}: reading pytorch_model.bin needs torch installed") from e
        sd = torch.load(pt, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in sd.items()}
    raise ValueError(f"{directory}: no weights ({' or '.join(_WEIGHT_FILES)})")


def _expected_shapes(config: GPT2Config) -> dict[str, tuple]:
    d = config.n_embd
    shapes = {"wte.weight": (config.vocab_size, d), "wpe.weight": (config.n_positions, d)}
    for i in range(config.n_layer):
        p = f"h.{i}."
        shapes.update(
            {
                p + "ln_1.weight": (d,),
                p + "ln_1.bias": (d,),
                p + "attn.c_attn.weight": (d, 3 * d),
                p + "attn.c_attn.bias": (3 * d,),
                p + "attn.c_proj.weight": (d, d),
                p + "attn.c_proj.bias": (d,),
                p + "ln_2.weight": (d,),
                p + "ln_2.bias": (d,),
                p + "mlp.c_fc.weight": (d, 4 * d),
                p + "mlp.c_fc.bias": (4 * d,),
                p + "mlp.c_proj.weight": (4 * d, d),
                p + "mlp.c_proj.bias": (d,),
            }
        )
    shapes.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})
    return shapes


def _hf_to_flax_key(key: str) -> tuple[str, ...]:
    """`h.3.attn.c_attn.weight` -> ('h_3', 'attn', 'c_attn', 'kernel')."""
    parts = key.split(".")
    if parts[0] == "h":
        parts = [f"h_{parts[1]}"] + parts[2:]
    leaf = parts[-1]
    if parts[0] in ("wte", "wpe"):
        return (parts[0], "embedding")
    is_norm = parts[-2].startswith("ln_")
    if leaf == "weight":
        leaf = "scale" if is_norm else "kernel"
    return tuple(parts[:-1]) + (leaf,)


def state_dict_to_params(sd: dict[str, np.ndarray], config, *, source: str) -> dict:
    """HF state dict -> our params pytree (float32 host arrays), for either architecture."""
    if isinstance(config, DecoderConfig):
        return decoder_state_dict_to_params(sd, config, source=source)
    return _gpt2_state_dict_to_params(sd, config, source=source)


def _gpt2_state_dict_to_params(sd: dict[str, np.ndarray], config: GPT2Config, *,
                               source: str) -> dict:
    """HF state dict (GPT2Model or GPT2LMHeadModel keys) -> our params pytree."""
    tied = None
    trunk = {}
    for key, value in sd.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        if key == "lm_head.weight":
            tied = value
            continue
        trunk[key.removeprefix("transformer.")] = value
    expected = _expected_shapes(config)
    missing = sorted(set(expected) - set(trunk))
    if missing:
        raise ValueError(f"{source}: missing weights {missing[:3]}{'...' if len(missing) > 3 else ''}")
    unexpected = sorted(set(trunk) - set(expected))
    if unexpected:
        raise ValueError(f"{source}: unexpected weights {unexpected[:3]} for a {config.n_layer}-layer GPT-2")
    params: dict[str, Any] = {}
    for key, shape in expected.items():
        value = trunk[key]
        if tuple(value.shape) != shape:
            raise ValueError(
                f"{source}: weight {key} has shape {tuple(value.shape)} but config.json implies {shape}"
            )
        node = params
        path = _hf_to_flax_key(key)
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = np.asarray(value, np.float32)
    if tied is not None and not np.array_equal(tied, trunk["wte.weight"]):
        raise ValueError(f"{source}: lm_head.weight differs from wte.weight; untied heads are unsupported")
    return {"transformer": params}


def params_to_state_dict(params: dict, config=None) -> dict[str, np.ndarray]:
    """Our params -> HF state dict (a tied lm_head omitted); GPT-2 unless `config`
    is a `DecoderConfig`."""
    if isinstance(config, DecoderConfig):
        return decoder_params_to_state_dict(params)
    out = {}
    flat = jax.tree_util.tree_flatten_with_path(params["transformer"])[0]
    for path, leaf in flat:
        names = [p.key for p in path]
        if names[0] in ("wte", "wpe"):
            key = f"{names[0]}.weight"
        else:
            if names[0].startswith("h_"):
                names = ["h", names[0][2:]] + names[1:]
            leaf_name = {"kernel": "weight", "scale": "weight", "bias": "bias"}[names[-1]]
            key = ".".join(names[:-1] + [leaf_name])
        out["transformer." + key] = np.ascontiguousarray(np.asarray(leaf, np.float32))
    return out


def load_pretrained(
    name_or_path: str,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    **config_overrides,
):
    """Returns `(model, params)` for a hub name or a local HF-layout directory.

    The params are host (numpy) arrays in `param_dtype`: the caller places them
    on its devices (`DataParallel.replicate`, split along fsdp on a mesh), so a
    large model never sits whole on the default device first.
    """
    directory = _resolve_dir(name_or_path)
    cfg_path = os.path.join(directory, "config.json")
    if not os.path.exists(cfg_path):
        raise ValueError(f"{directory}: no config.json")
    with open(cfg_path) as f:
        try:
            hf_cfg = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path}: invalid JSON: {e}") from e
    config = config_from_hf(hf_cfg, source=cfg_path, dtype=dtype, param_dtype=param_dtype, **config_overrides)
    sd = _read_state_dict(directory)
    params = state_dict_to_params(sd, config, source=directory)
    params = jax.tree.map(lambda x: np.asarray(x, dtype=param_dtype), params)
    lm = DecoderLMHeadModel if isinstance(config, DecoderConfig) else GPT2LMHeadModel
    return lm(config), params


def save_pretrained(model, params, path: str) -> None:
    """Writes config.json and model.safetensors that transformers'
    `AutoModelForCausalLM.from_pretrained` loads (float32 tensors, one file)."""
    from safetensors.numpy import save_file

    config = model.config
    os.makedirs(path, exist_ok=True)
    sd = params_to_state_dict(jax.device_get(params), config)
    tmp = os.path.join(path, "model.safetensors.tmp")
    save_file(sd, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config_to_hf(config), f, indent=2)


def load_tokenizer(name_or_path: str):
    """A Hugging Face fast tokenizer (AutoTokenizer) from a hub name or directory."""
    from transformers import AutoTokenizer

    # transformers answers a directory without tokenizer files with a long
    # multi-line error about slow-tokenizer conversion; name the cause instead.
    if os.path.isdir(name_or_path) and not (
        os.path.exists(os.path.join(name_or_path, "tokenizer.json"))
        or all(os.path.exists(os.path.join(name_or_path, f)) for f in ("vocab.json", "merges.txt"))
    ):
        raise ValueError(
            f"{name_or_path}: no tokenizer files (tokenizer.json, or vocab.json and merges.txt)"
        )
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except OSError as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(
            f"{name_or_path}: tokenizer not found locally and the hub cannot provide it "
            f"(offline, or no such name): {first_line}"
        ) from e

"""Hugging Face interop: checkpoints both ways, the .bin variants, errors, tokenizers.

Every model here is transformers' PyTorch `GPT2LMHeadModel` with random
weights of odd sizes (`tests/hf_fixtures.ODD`); nothing touches the network.
"""

import functools
import json
import os
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import GPT2LMHeadModel as HFModel

from rlhf_jax.models import load_pretrained, load_tokenizer, save_pretrained
from tests.hf_fixtures import ODD, hf_logits, left_padded_batch, tiny_pair

V = ODD["vocab_size"]


def _batch():
    return left_padded_batch(V, [9, 4, 1, 7], 9, seed=5)


@functools.partial(jax.jit, static_argnums=0)
def _jit_logits(model, params, ids, mask):
    return model.apply({"params": params}, ids, attention_mask=mask).logits


def _our_logits(model, params, ids, mask):
    return np.asarray(_jit_logits(model, params, jnp.asarray(ids), jnp.asarray(mask)))


def _assert_params_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def _write_bin_checkpoint(directory, state_dict):
    """config.json from the fixture model plus `pytorch_model.bin` holding `state_dict`.

    transformers 5 ignores `safe_serialization=False` and always writes
    safetensors, so the legacy file is written with torch.save, as old
    checkpoints on the hub were.
    """
    hf_model, _, _ = tiny_pair()
    os.makedirs(directory, exist_ok=True)
    hf_model.config.save_pretrained(directory)
    torch.save({k: v.clone() for k, v in state_dict.items()}, os.path.join(directory, "pytorch_model.bin"))
    return directory


def _hf_safetensors_checkpoint(directory):
    hf_model, _, _ = tiny_pair()
    hf_model.save_pretrained(directory)
    return directory


def _error(fn, *args, **kwargs) -> str:
    """The message of the ValueError `fn` raises, checked to be one line."""
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------- round trips


def test_our_save_loads_in_transformers_with_equal_logits(tmp_path):
    _, model, params = tiny_pair()
    save_pretrained(model, params, str(tmp_path))
    assert {"config.json", "model.safetensors"} <= set(os.listdir(tmp_path))
    theirs, info = HFModel.from_pretrained(str(tmp_path), output_loading_info=True)
    theirs.eval()
    # Every tensor was used and none was invented: lm_head is tied to wte.
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert theirs.config.n_positions == 48 and theirs.config.n_layer == 3
    ids, mask = _batch()
    ref, _ = hf_logits(theirs, ids, mask)
    real = mask == 1
    np.testing.assert_allclose(_our_logits(model, params, ids, mask)[real], ref[real], atol=1e-4)


def test_transformers_safetensors_load_with_equal_logits(tmp_path):
    hf_model, _, want_params = tiny_pair()
    model, params = load_pretrained(_hf_safetensors_checkpoint(str(tmp_path)))
    cfg = model.config
    assert (cfg.vocab_size, cfg.n_positions, cfg.n_embd, cfg.n_layer, cfg.n_head) == (97, 48, 36, 3, 3)
    assert cfg.dtype == jnp.float32
    _assert_params_equal(params, want_params)
    # Host arrays, for the caller to place on its mesh: no whole copy on the default device.
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(params))
    ids, mask = _batch()
    ref, _ = hf_logits(hf_model, ids, mask)
    real = mask == 1
    np.testing.assert_allclose(_our_logits(model, params, ids, mask)[real], ref[real], atol=1e-4)


def _lm_head_state_dict():
    return dict(tiny_pair()[0].state_dict())  # transformer.* plus the tied lm_head.weight


def _trunk_state_dict_with_buffers():
    # GPT2Model keys have no `transformer.` prefix; old checkpoints also hold
    # the causal-mask buffers `h.N.attn.bias` / `attn.masked_bias`.
    sd = dict(tiny_pair()[0].transformer.state_dict())
    sd["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 48, 48))
    sd["h.1.attn.masked_bias"] = torch.tensor(-1e4)
    return sd


def _untied_missing_lm_head_state_dict():
    return {k: v for k, v in _lm_head_state_dict().items() if k != "lm_head.weight"}


@pytest.mark.parametrize(
    "make_state_dict",
    [_lm_head_state_dict, _trunk_state_dict_with_buffers, _untied_missing_lm_head_state_dict],
    ids=["GPT2LMHeadModel", "GPT2Model_with_buffers", "no_lm_head"],
)
def test_pytorch_bin_variants_load_exactly(tmp_path, make_state_dict):
    hf_model, _, want_params = tiny_pair()
    model, params = load_pretrained(_write_bin_checkpoint(str(tmp_path), make_state_dict()))
    _assert_params_equal(params, want_params)
    ids, mask = _batch()
    ref, _ = hf_logits(hf_model, ids, mask)
    real = mask == 1
    np.testing.assert_allclose(_our_logits(model, params, ids, mask)[real], ref[real], atol=1e-4)


def test_save_load_save_is_byte_identical(tmp_path):
    hf_dir = _hf_safetensors_checkpoint(str(tmp_path / "hf"))
    model, params = load_pretrained(hf_dir)
    save_pretrained(model, params, str(tmp_path / "a"))
    model_a, params_a = load_pretrained(str(tmp_path / "a"))
    save_pretrained(model_a, params_a, str(tmp_path / "b"))
    hf_sd = load_file(os.path.join(hf_dir, "model.safetensors"))
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    # transformers itself drops the tied lm_head, so all three name the same tensors.
    assert set(a) == set(b) == set(hf_sd) and len(a) == 2 + 12 * 3 + 2
    for key in a:
        assert a[key].dtype == b[key].dtype == hf_sd[key].dtype == np.float32, key
        assert a[key].shape == hf_sd[key].shape, key
        assert a[key].tobytes() == b[key].tobytes() == hf_sd[key].tobytes(), key
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()
    assert json.loads((tmp_path / "a" / "config.json").read_text()) == json.loads(
        (tmp_path / "b" / "config.json").read_text()
    )


def test_bfloat16_checkpoint_reads_as_float32(tmp_path):
    # Many hub checkpoints are stored in bfloat16, which numpy cannot hold.
    hf_model, _, _ = tiny_pair()
    sd16 = {k: v.to(torch.bfloat16) for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    from safetensors.torch import save_file

    hf_model.config.save_pretrained(str(tmp_path))
    save_file(sd16, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    _, params = load_pretrained(str(tmp_path))
    got = np.asarray(params["transformer"]["h_1"]["mlp"]["c_fc"]["kernel"])
    want = sd16["transformer.h.1.mlp.c_fc.weight"].float().numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_bfloat16_compute_keeps_float32_params(tmp_path):
    hf_model, _, _ = tiny_pair()
    path = _hf_safetensors_checkpoint(str(tmp_path))
    model16, params16 = load_pretrained(path, dtype=jnp.bfloat16)
    model32, params32 = load_pretrained(path)
    assert model16.config.dtype == jnp.bfloat16 and model16.config.param_dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(params16)} == {jnp.dtype(jnp.float32)}
    ids, mask = _batch()
    out16 = jax.jit(model16.apply)({"params": params16}, jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    assert out16.hidden_states[1].dtype == jnp.bfloat16  # the blocks really compute in bf16
    assert out16.logits.dtype == jnp.float32
    real = mask == 1
    l16 = np.asarray(out16.logits)[real]
    l32 = _our_logits(model32, params32, ids, mask)[real]
    np.testing.assert_allclose(l16, l32, atol=0.05)
    assert np.abs(l16 - l32).max() > 1e-6


# ---------------------------------------------------------------------- errors


def test_unsupported_architecture_is_refused(tmp_path):
    path = _hf_safetensors_checkpoint(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"])
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    msg = _error(load_pretrained, path)
    assert "config.json" in msg and "model_type='gpt_neox'" in msg and "not supported" in msg


def test_weight_shape_disagreeing_with_config_names_the_tensor(tmp_path):
    path = _hf_safetensors_checkpoint(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["n_positions"] = 40  # the checkpoint's wpe has 48 rows
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    msg = _error(load_pretrained, path)
    assert "wpe.weight has shape (48, 36) but config.json implies (40, 36)" in msg


def test_missing_weight_is_named(tmp_path):
    sd = _untied_missing_lm_head_state_dict()
    del sd["transformer.h.2.mlp.c_fc.weight"]
    msg = _error(load_pretrained, _write_bin_checkpoint(str(tmp_path), sd))
    assert "missing weights ['h.2.mlp.c_fc.weight']" in msg


def test_more_layers_than_config_is_refused(tmp_path):
    path = _hf_safetensors_checkpoint(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["n_layer"] = 2
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    msg = _error(load_pretrained, path)
    assert "unexpected weights ['h.2." in msg and "2-layer GPT-2" in msg


def test_untied_lm_head_is_refused(tmp_path):
    sd = _lm_head_state_dict()
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1.0
    msg = _error(load_pretrained, _write_bin_checkpoint(str(tmp_path), sd))
    assert "lm_head.weight differs from wte.weight" in msg


def test_directory_without_weights(tmp_path):
    tiny_pair()[0].config.save_pretrained(str(tmp_path))
    msg = _error(load_pretrained, str(tmp_path))
    assert str(tmp_path) in msg and "no weights (model.safetensors or model.safetensors.index.json or pytorch_model.bin)" in msg


def test_directory_without_config(tmp_path):
    path = _hf_safetensors_checkpoint(str(tmp_path))
    os.remove(tmp_path / "config.json")
    assert "no config.json" in _error(load_pretrained, path)


def test_invalid_config_json(tmp_path):
    path = _hf_safetensors_checkpoint(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    assert "config.json: invalid JSON" in _error(load_pretrained, path)


def test_a_file_is_not_a_checkpoint(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"")
    assert "expected a directory in Hugging Face layout" in _error(load_pretrained, str(f))


@pytest.fixture
def offline(monkeypatch):
    """HF offline mode, and any socket use fails the test (the machine has no network)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    # huggingface_hub reads the variable once, at import.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_unknown_hub_name_offline_is_a_clear_error(offline):
    msg = _error(load_pretrained, "no-such-org/no-such-model-xyz")
    assert "no-such-org/no-such-model-xyz" in msg
    assert "offline" in msg and "cache" in msg
    assert offline == []  # no connection was even attempted


# ------------------------------------------------------------------ tokenizers


def _train_tiny_tokenizer(directory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["the cat sat on the mat.", "the dog sat on the log.", "a happy cat is a good cat."]
    tok.train_from_iterator(corpus * 10, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(directory)
    return tok


def test_load_tokenizer_from_local_directory(tmp_path):
    raw = _train_tiny_tokenizer(str(tmp_path))
    tok = load_tokenizer(str(tmp_path))
    text = "the happy dog sat on a mat."
    ids = tok(text)["input_ids"]
    assert ids == raw.encode(text).ids
    assert len(ids) < len(text)  # merges were learned and are applied
    assert tok.decode(ids) == text
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == raw.token_to_id("<|endoftext|>")
    assert len(tok) == raw.get_vocab_size()


def test_load_tokenizer_errors(tmp_path, offline):
    msg = _error(load_tokenizer, str(tmp_path))
    assert str(tmp_path) in msg and "no tokenizer files" in msg
    msg = _error(load_tokenizer, "no-such-org/no-such-tokenizer-xyz")
    assert "no-such-org/no-such-tokenizer-xyz" in msg and "offline" in msg
    assert offline == []

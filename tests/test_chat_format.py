"""`task.query_format='chat'`: Stiennon's TL;DR query as a user turn in the tokenizer's
own chat template (instruct models), on a tiny local tokenizer with a ChatML template."""

import os

import ml_collections
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rlhf_jax.config_lib import fixtures_dir
from rlhf_jax.data import datasets
from rlhf_jax.models import load_tokenizer

# Qwen2.5-Instruct's layout (ChatML), without its default system prompt.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _tokenizer(directory, chat_template=CHATML):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                                  "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    with open(os.path.join(fixtures_dir(), "tldr_mini", "train.jsonl")) as f:
        tok.train_from_iterator(f.read().splitlines(), trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                            chat_template=chat_template).save_pretrained(directory)
    return load_tokenizer(directory)


def _task(**kw):
    t = dict(query_dataset="tldr", dataset_path=os.path.join(fixtures_dir(), "tldr_mini"),
             query_format="chat", query_length=300, response_length=16, query_prefix="",
             query_suffix="", start_text=None, end_text=None, pad_token=1 << 20, eos_token=0)
    t.update(kw)
    return ml_collections.ConfigDict(t)


def test_chat_queries_wrap_the_sff_template_in_the_chat_template(tmp_path):
    tok = _tokenizer(str(tmp_path))
    chat = datasets.load_queries(_task(), tok, split="valid", seed=0)
    sff = datasets.load_queries(_task(query_format="sff"), tok, split="valid", seed=0)
    start = tok.convert_tokens_to_ids("<|im_start|>")
    for i in range(2):
        ids = [int(t) for t, m in zip(chat.query_NxQ[i], chat.query_mask_NxQ[i]) if m]
        text = tok.decode(ids)
        assert ids[0] == start  # the special token itself, not its characters
        assert text.startswith("<|im_start|>user\nSUBREDDIT: r/")
        assert text.endswith("TL;DR:<|im_end|>\n<|im_start|>assistant\n")
        inner = tok.decode([int(t) for t, m in zip(sff.query_NxQ[i], sff.query_mask_NxQ[i]) if m])
        assert inner in text
    # A long post is cut back until the whole chat-formatted query fits.
    short = datasets.load_queries(_task(query_length=90), tok, split="valid", seed=0)
    assert short.query_NxQ.shape[1] == 90
    assert tok.decode([int(t) for t, m in zip(short.query_NxQ[0], short.query_mask_NxQ[0])
                       if m]).endswith("<|im_start|>assistant\n")


def test_chat_format_needs_a_template_and_a_summarisation_source(tmp_path):
    tok = _tokenizer(str(tmp_path), chat_template=None)
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        datasets.load_queries(_task(), tok, split="valid", seed=0)
    with pytest.raises(ValueError, match=r"task.query_format='chat'.*books"):
        datasets.check_query_format(_task(query_dataset="books"))


def test_a_checkpoint_with_more_rows_than_tokens_pads_beyond_both(tmp_path):
    # Qwen's embedding has 151,936 rows for 151,665 tokens; the policy can sample
    # the rows in between, so the pad and the label checks go beyond them.
    import torch
    import transformers

    from rlhf_jax.stages.context import Context, resolve_task
    from tests.test_configs import get_config

    tok = _tokenizer(str(tmp_path))
    hf = transformers.Qwen2Config(vocab_size=len(tok) + 16, hidden_size=16, intermediate_size=32,
                                  num_hidden_layers=1, num_attention_heads=2,
                                  num_key_value_heads=1, max_position_embeddings=256)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(hf).save_pretrained(str(tmp_path))
    cfg = get_config("stiennon_tldr_qwen", "runlocal")
    cfg.model.init, cfg.model.name_or_path, cfg.model.tokenizer = "pretrained", str(tmp_path), ""
    cfg.task.query_format = "chat"
    ctx = Context(cfg=cfg, workdir=str(tmp_path), dp=None, writer=None,
                  stages=cfg.stages.split(","), tokenizer=tok)
    resolve_task(ctx)
    assert ctx.vocab_rows == cfg.task.pad_token == len(tok) + 16

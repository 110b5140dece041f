"""The offline corpus and its tokenizer."""

import re

import numpy as np
import pytest
import transformers
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from rlhf_jax.data import synthetic
from rlhf_jax.data.synthetic import (generate_corpus, model_vocab_size, pad_token_id,
                                     period_token_id, train_tokenizer)

VADER = SentimentIntensityAnalyzer()


def test_corpus_is_deterministic_and_prefix_stable():
    docs = generate_corpus(40, seed=0)
    assert docs == generate_corpus(40, seed=0)
    assert generate_corpus(10, seed=0) == docs[:10]
    assert generate_corpus(40, seed=1) != docs
    # Pinned: a change here changes every offline-default result.
    assert docs[0] == ("Anna lifted her white box and brought the book. Everyone thought the "
                       "car looked boring. Anna pushed his cup at the shop.")
    assert generate_corpus(0, seed=3) == []
    with pytest.raises(ValueError, match="num_docs=-1"):
        generate_corpus(-1, seed=0)
    # Memoised per process: each call hands out its own list.
    docs.append("changed")
    docs[0] = "changed"
    assert generate_corpus(40, seed=0)[0].startswith("Anna lifted")
    assert len(generate_corpus(40, seed=0)) == 40


def _sentences(docs):
    return [s for d in docs for s in re.findall(r"[^.]+\.", d)]


def test_corpus_shape_and_variety():
    docs = generate_corpus(300, seed=0)
    sentences = [s.strip() for s in _sentences(docs)]
    assert all(d.endswith(".") and "!" not in d and "?" not in d for d in docs)
    per_doc = [len(_sentences([d])) for d in docs]
    assert min(per_doc) == 3 and max(per_doc) == 7
    lengths = np.array([len(s.split()) for s in sentences])
    assert lengths.min() >= 4 and lengths.max() <= 14 and 7 <= lengths.mean() <= 10
    assert all(s[0].isupper() for s in sentences)
    assert len(set(sentences)) > 0.9 * len(sentences)  # nearly all distinct
    assert " a a" not in " ".join(docs) and not re.search(r"\ba [aeiou]", " ".join(docs))
    # Sentiment varies across documents, in both directions.
    compound = np.array([VADER.polarity_scores(d)["compound"] for d in docs])
    assert (compound > 0.5).sum() > 50 and (compound < -0.5).sum() > 50
    assert (np.abs(compound) < 0.05).sum() > 5


def test_sentiment_words_are_vader_words_and_neutral_words_are_not():
    lexicon = VADER.lexicon
    positive = [synthetic.POSITIVE_ADJECTIVES, synthetic.POSITIVE_ADVERBS,
                synthetic.POSITIVE_FEELING_VERBS, synthetic.POSITIVE_FEELINGS]
    negative = [synthetic.NEGATIVE_ADJECTIVES, synthetic.NEGATIVE_ADVERBS,
                synthetic.NEGATIVE_FEELING_VERBS, synthetic.NEGATIVE_FEELINGS]
    sentiment_words = set()
    for words in positive:
        assert all(lexicon.get(w, 0) > 0 for w in words), words
        sentiment_words.update(words)
    for words in negative:
        assert all(lexicon.get(w, 0) < 0 for w in words), words
        sentiment_words.update(words)
    # Every other word the generator writes is outside the lexicon.
    text = " ".join(generate_corpus(300, seed=5)).lower()
    other = set(re.findall(r"[a-z]+", text)) - sentiment_words
    assert len(other) > 150
    assert sorted(w for w in other if w in lexicon) == []
    # So a neutral sentence scores exactly 0, and one word flips it.
    assert VADER.polarity_scores("Anna carried the red box in the garden.")["compound"] == 0
    assert VADER.polarity_scores("Anna carried the lovely box in the garden.")["compound"] > 0
    assert VADER.polarity_scores("Anna carried the awful box in the garden.")["compound"] < 0


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(generate_corpus(300, seed=0), vocab_size=512, out_dir=str(out))
    return out


def test_tokenizer_loads_with_autotokenizer_and_round_trips(tokenizer_dir):
    tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert len(tok) == 512
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 511
    assert tok.pad_token is None  # the pad is not a vocabulary token
    assert pad_token_id(tok) == 512 and model_vocab_size(tok) == 513
    for text in generate_corpus(20, seed=9) + ["Unseen words: zebra, naïve café ☃ 42!",
                                               "  spaces\n\nand newlines\t"]:
        ids = tok.encode(text)
        assert max(ids) < 511  # plain text never yields EOS or pad
        assert tok.decode(ids) == text
    doc = generate_corpus(1, seed=9)[0]
    assert len(tok.encode(doc)) < len(doc) / 2  # BPE merged the corpus' words
    assert tok.encode("Anna.<|endoftext|>")[-1] == 511  # EOS is special


def test_period_is_one_token_with_gpt2_id(tokenizer_dir):
    tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    period = period_token_id(tok)
    assert period == 13  # bytes sorted, as in GPT-2
    doc = generate_corpus(1, seed=2)[0]
    ids = tok.encode(doc)
    assert ids.count(period) == doc.count(".")
    assert ids[-1] == period


def test_tokenizer_training_is_deterministic(tokenizer_dir, tmp_path):
    train_tokenizer(generate_corpus(300, seed=0), vocab_size=512, out_dir=str(tmp_path))
    assert ((tmp_path / "tokenizer.json").read_bytes()
            == (tokenizer_dir / "tokenizer.json").read_bytes())


def test_tokenizer_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=256 must be >= 257"):
        train_tokenizer(["a b c."], vocab_size=256, out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="texts is empty"):
        train_tokenizer([], vocab_size=300, out_dir=str(tmp_path))


def test_batched_query_encoding_equals_one_by_one(tokenizer_dir):
    from rlhf_jax.data import datasets

    tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    texts = generate_corpus(300, seed=4)
    encode = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    batch = datasets._batch_encoder(tok)
    assert batch(texts[:3]) == [encode(t) for t in texts[:3]]
    period = period_token_id(tok)
    # Start and end at '.', 12 tokens: some texts are skipped, as in the default task.
    kw = dict(query_length=12, start_token=period, end_token=period, pad_token=512)
    whole = datasets.queries_from_texts(texts, encode, **kw)
    assert 50 < len(whole[0]) < len(texts)
    for limit in (None, 5, 70, len(whole[0]) - 1):
        one = datasets.queries_from_texts(texts, encode, limit=limit, **kw)
        # Chunks of 32: the limit falls inside a chunk, after several.
        many = datasets.queries_from_texts(iter(texts), encode, limit=limit, encode_batch=batch,
                                           chunk=32, **kw)
        assert len(one[0]) == (len(whole[0]) if limit is None else limit)
        np.testing.assert_array_equal(one[0], many[0])
        np.testing.assert_array_equal(one[1], many[1])


def test_context_memoises_synthetic_queries_by_what_they_depend_on(tokenizer_dir):
    import ml_collections

    from rlhf_jax.stages import context

    tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    period = tok.convert_ids_to_tokens(period_token_id(tok))

    def ctx(seed, tokenizer=tok, docs=200):
        cfg = ml_collections.ConfigDict({
            "seed": seed, "pretrain": {"num_docs": docs},
            "task": {"query_dataset": "synthetic", "dataset_path": None, "query_format": "lhp",
                     "query_length": 12, "response_length": 8, "start_text": period,
                     "end_text": period, "pad_token": 512, "eos_token": 511,
                     "query_prefix": "", "query_suffix": ""}})
        return context.Context(cfg=cfg, workdir="", dp=None, writer=None, stages=[],
                               tokenizer=tokenizer, corpus=generate_corpus(docs, seed))

    context._QUERIES.clear()
    first = ctx(0).queries("train")
    again = ctx(0).queries("train")  # another run of the same world: served from the memo
    assert again is first and not first.query_NxQ.flags.writeable
    # A different seed, corpus size, split or tokenizer is a different dataset.
    other_seed = ctx(1).queries("train")
    assert other_seed is not first and not np.array_equal(other_seed.query_NxQ[:20],
                                                          first.query_NxQ[:20])
    assert ctx(0, docs=150).queries("train") is not first
    assert ctx(0).queries("valid") is not first
    retrained = tok.__class__.from_pretrained(str(tokenizer_dir))
    retrained.add_tokens(["zebra"])
    assert ctx(0, tokenizer=retrained).queries("train") is not first
    # Equal to loading without the memo.
    direct = ctx(0)
    context._QUERIES.clear()
    np.testing.assert_array_equal(direct.queries("train").query_NxQ, first.query_NxQ)

"""The miniature world: grammar recogniser, exact story probabilities, the world gold."""

import math

import numpy as np
import pytest

from rlhf_jax.data import grammar, synthetic
from rlhf_jax.labelling.labelers import LabelRequest, MockLabeler, WorldGold, make_gold


def _sentences(docs):
    return [s for d in docs for s in d.split(".")[:-1]]


def test_every_generated_sentence_has_exactly_one_derivation():
    # Unambiguous grammar: the generator's derivation probability is the
    # sentence's probability, so corpus_log_probs is exact.
    sentences = _sentences(synthetic.generate_corpus(300, 5))
    assert len(sentences) > 1000
    for s in sentences:
        p = grammar.parse(grammar.words(s))
        assert p.derivations == 1, s
        assert p.prefix == len(grammar.words(s))


@pytest.mark.parametrize("text, prefix", [
    ("Anna found the box happily", 4),           # an adverb where a place or 'and' goes
    ("Anna found the the box", 3),               # a second determiner
    ("Anna found an box in the garden", 2),      # 'an' before a consonant
    ("It was a awful day for everyone", 2),      # 'a' before a vowel
    ("great wonderful amazing", 0),              # word salad
    ("Tom felt happy", 3),                       # unfinished: 'felt' needs a time
    ("Anna found the box in the", 6),            # unfinished place
])
def test_parse_rejects_and_locates_the_first_bad_word(text, prefix):
    p = grammar.parse(grammar.words(text))
    assert p.derivations == 0
    assert p.prefix == prefix


def test_article_rule_and_capitals():
    assert grammar.parse(grammar.words("It was an awful day for everyone")).derivations == 1
    assert grammar.parse(grammar.words("YESTERDAY, ANNA found THE box")).derivations == 1


def test_valences_signs_ranges_and_stability():
    for w in grammar.POSITIVE_WORDS:
        assert 0.5 <= grammar.valence(w) <= 1.0
    for w in grammar.NEGATIVE_WORDS:
        assert -1.0 <= grammar.valence(w) <= -0.5
    neutral = [w for w in grammar.vocabulary()
               if w not in grammar.POSITIVE_WORDS | grammar.NEGATIVE_WORDS and w != ","]
    assert len(neutral) > 200
    assert all(abs(grammar.valence(w)) <= 0.05 for w in neutral)
    assert len({grammar.valence(w) for w in neutral}) > 0.9 * len(neutral)  # dense: few ties
    assert grammar.valence("zebra") == 0.0 and grammar.valence(",") == 0.0
    # Hash-based, so fixed across machines and versions: pin two values.
    assert grammar.valence("wonderful") == pytest.approx(0.9626723393, abs=1e-9)
    assert grammar.valence("awful") == pytest.approx(-0.5691223071, abs=1e-9)


def test_story_log_probs_match_frequencies_in_a_tiny_world(monkeypatch):
    # Shrink the world until stories repeat: one template, two names, four
    # feelings (one listed twice). Each frequent story's count must then match
    # its computed probability; a missed factor (gender, a duplicate in a
    # list, the mood marginalisation) would be off by 2x or more.
    from rlhf_jax.data import synthetic as s

    monkeypatch.setattr(s, "TEMPLATES", (("SUBJECT", "felt", "FEELING"),))
    monkeypatch.setattr(s, "FEMALE_NAMES", ("Anna",))
    monkeypatch.setattr(s, "MALE_NAMES", ("Ben",))
    monkeypatch.setattr(s, "PEOPLE", ("the cook",))
    monkeypatch.setattr(s, "POLAR_SLOTS", {"FEELING": (("busy",), ("happy", "happy", "glad"),
                                                       ("sad",))})
    docs, logp = s.corpus_log_probs(40000, 3)
    probs = dict(zip(docs, np.exp(logp)))
    counts = {}
    for d in docs:
        counts[d] = counts.get(d, 0) + 1
    top = sorted(counts, key=counts.get, reverse=True)[:15]
    assert counts[top[-1]] > 40
    for d in top:
        expected = probs[d] * len(docs)
        assert abs(counts[d] - expected) < 4 * math.sqrt(expected), (d, counts[d], expected)


def test_corpus_entropy_is_below_a_unigram_model_and_stable():
    import collections

    tok = _tokenizer()
    h = synthetic.corpus_entropy(tok, num_docs=300, seed=1)
    docs = synthetic.generate_corpus(300, 1)
    ids = [i for d in docs for i in tok.encode(d) + [tok.eos_token_id]]
    freq = np.array(list(collections.Counter(ids).values()), float)
    unigram = float(-(freq / freq.sum() * np.log(freq / freq.sum())).sum())
    assert 1.0 < h < unigram


_TOK = {}


def _tokenizer():
    if "t" not in _TOK:
        import tempfile

        _TOK["t"] = synthetic.train_tokenizer(synthetic.generate_corpus(2000, 0), 1024,
                                              tempfile.mkdtemp())
    return _TOK["t"]


def test_world_gold_scores_sentences():
    g = WorldGold()
    good = " Anna found the wonderful box in the garden."
    assert g.score(good) == pytest.approx(sum(grammar.valence(w) for w in grammar.words(good)))
    assert g.score(good) > 0.5
    assert g.score(" Anna found the awful box in the garden.") < -0.4
    # Word salad of positive words is not a sentence: it scores the penalty.
    assert g.score(" wonderful great lovely amazing.") == -1.0
    # Two sentences add; a broken one costs the penalty whatever its words.
    two = good + " Everyone thought the cake looked perfect."
    assert g.score(two) == pytest.approx(g.score(good) + g.score(
        " Everyone thought the cake looked perfect."))
    assert g.score(good + " happily the lovely.") == pytest.approx(g.score(good) - 1.0)
    assert g.score(" Anna found the box in the") == -1.0  # unfinished
    assert g.score("") == -1.0
    assert WorldGold(ungrammatical_penalty=3.0).score(" great.") == -3.0
    with pytest.raises(ValueError, match="ungrammatical_penalty"):
        WorldGold(-1.0)


def test_world_gold_bad_spans_name_negative_words_and_where_english_stops():
    g = WorldGold()
    text = " Anna found the awful box in the garden. Tom happily the lovely."
    spans = g.bad_spans(text)
    assert [(text[a:b], k) for a, b, k in spans] == [
        ("awful", "negative"), ("the lovely", "ungrammatical")]  # "Tom happily ..." could go on
    assert g.bad_spans(" Everyone thought the cake looked perfect.") == []


def test_world_gold_eos_ends_a_sentence():
    g = WorldGold()
    ok = " Everyone thought the cake looked perfect."
    assert g.score(ok + "<|endoftext|>") == pytest.approx(g.score(ok))
    assert g.score(ok + "<|endoftext|>Anna found") == pytest.approx(g.score(ok) - 1.0)


def test_mock_labeller_picks_the_world_gold_best():
    g = make_gold("world")
    texts = [" Anna found the awful box in the garden.", " great lovely.",
             " Anna found the lovely box in the garden.", " Anna found the box in the garden."]
    tokens = np.arange(4 * 3, dtype=np.int32).reshape(1, 4, 3)
    request = LabelRequest(np.zeros((1, 2), np.int32), np.ones((1, 2), np.int32), tokens,
                           np.ones_like(tokens), 99, ("q",), (tuple(texts),))
    labels = MockLabeler(g, "best_of_4").label(request)
    assert int(labels.best_N[0]) == 2
    np.testing.assert_allclose(labels.gold_NxK[0], g(texts), rtol=1e-6)
    with pytest.raises(ValueError, match="labels.gold"):
        make_gold("nope")

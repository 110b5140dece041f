"""The summarisation world: stories and their facts, the authors' TL;DRs, the summary judges."""

import collections

import numpy as np
import pytest

from rlhf_jax.data import grammar, summaries
from rlhf_jax.labelling.labelers import LabelRequest, MockLabeler, make_gold
from rlhf_jax.labelling.summary_judge import (AccuracyJudge, FactsJudge, SkimJudge,
                                              SummaryJudge, read_story, split_sentences)

# A hand-written world story: main character Anna, main event "won a lovely
# cake" (at the market, on Monday), outcome happy, a distractor feeling
# (hungry) and a side sentence about the baker.
STORY = ("Anna found a red box in the garden. Yesterday, the baker cleaned the kitchen. "
         "On Monday, Anna won a lovely cake at the market. She felt hungry after dinner. "
         "In the end, Anna felt happy.")

# Summary -> the full judge's gold, worked by hand from the weights
# (+1 name, +2 event, +1.5 outcome, +0.25 place, +0.25 time, -2.5 per
# unsupported claim, -1.5 per broken sentence, -0.02 per word, -0.25 per word
# beyond 12) and the accuracy-only judge's score.
CASES = [
    # Good abstractive summary, 9 words: 1 + 2 + 1.5 - 0.18.
    ("Anna was happy after she won a lovely cake.", 4.32, 0.0),
    # The adjective may be left out; the place counts; 10 words: 4.75 - 0.2.
    ("Anna won a cake at the market and felt happy.", 4.55, 0.0),
    # Copy of the main event only: no outcome; place and time; 10 words: 3.5 - 0.2.
    ("On Monday, Anna won a lovely cake at the market.", 3.3, 0.0),
    # The whole story: everything covered, 35 words: 5 - 0.7 - 0.25 * 23.
    (STORY, -1.45, 0.0),
    # One irrelevant sentence, 6 words.
    ("Yesterday, the baker cleaned the kitchen.", -0.12, 0.0),
    # Missing main event, 6 words: 1 + 1.5 - 0.12.
    ("Anna was happy in the end.", 2.38, 0.0),
    # Fluent hallucination: the cake became a blue car: 1 + 1.5 - 2.5 - 0.18.
    ("Anna was happy after she won a blue car.", -0.18, -2.5),
    # A changed adjective is a stated fact not in the story, too.
    ("Anna was happy after she won a red cake.", -0.18, -2.5),
    # Hungry is in the story, but not as the outcome: 'in the end' is unsupported.
    ("Anna was hungry in the end.", 1.0 - 2.5 - 0.12, -2.5),
    # The wrong pronoun is someone else: the act and the feeling are unsupported.
    ("He was happy after he won a lovely cake.", -2.5 * 2 - 0.18, -5.0),
    # Unfinished, and word salad: one broken sentence each.
    ("Anna was happy after", -1.5 - 0.08, -1.5),
    ("happy cake Anna.", -1.5 - 0.06, -1.5),
    ("", -1.5, -1.5),
    # Two good sentences, 16 words: 4.75 - 0.32 - 0.25 * 4.
    ("Anna won a cake at the market and felt happy. Anna was happy in the end.", 3.43, 0.0),
]


@pytest.mark.parametrize("summary, gold, accuracy", CASES)
def test_judges_on_written_examples(summary, gold, accuracy):
    query = summaries.query_text(STORY)  # the judges read the query's story
    assert SummaryJudge().score(query, summary) == pytest.approx(gold, abs=1e-9)
    assert AccuracyJudge().score(query, summary) == pytest.approx(accuracy, abs=1e-9)


# Summary -> the facts judge's score (+1 per distinct supported claim, -2.5 per
# unsupported one, -1.5 per broken sentence; salience, length, copying free)
# and the skim judge's (the same, -1 per whole sentence not in the story).
FACTS_CASES = [
    # A feeling and an act; one sentence not in the story.
    ("Anna was happy after she won a lovely cake.", 2.0, 1.0),
    # The act (its adjective left out), its place, the feeling.
    ("Anna won a cake at the market and felt happy.", 3.0, 2.0),
    # Event and outcome sentences copied: act, place, time; feeling, 'in the end'.
    ("On Monday, Anna won a lovely cake at the market. In the end, Anna felt happy.", 5.0, 5.0),
    # The whole story: 2 + 2 + 3 + 2 (hungry, after dinner) + 2 claims, all copied.
    (STORY, 11.0, 11.0),
    # A side sentence is worth its facts: the baker's act and its time.
    ("Yesterday, the baker cleaned the kitchen.", 2.0, 2.0),
    # Fluent hallucination: the feeling holds, the act does not: 1 - 2.5 (- 1).
    ("Anna was happy after she won a blue car.", -1.5, -2.5),
    # A broken sentence is not doubted as well; an empty summary counts one broken.
    ("Anna was happy after", -1.5, -1.5),
    ("", -1.5, -1.5),
]


@pytest.mark.parametrize("summary, facts, skim", FACTS_CASES)
def test_facts_and_skim_judges_on_written_examples(summary, facts, skim):
    query = summaries.query_text(STORY)
    assert FactsJudge().score(query, summary) == pytest.approx(facts)
    assert SkimJudge().score(query, summary) == pytest.approx(skim)


def test_what_each_judge_makes_of_copying():
    """The event and outcome copied: below the good abstractive summary under the
    full judge, tied with it under accuracy-only, above it under facts and skim;
    under skim, a copy of the event also beats the best abstractive sentence."""
    good, copy = FACTS_CASES[0][0], FACTS_CASES[2][0]
    assert SummaryJudge().score(STORY, copy) < SummaryJudge().score(STORY, good)
    assert AccuracyJudge().score(STORY, copy) == AccuracyJudge().score(STORY, good) == 0.0
    assert FactsJudge().score(STORY, copy) > FactsJudge().score(STORY, good)
    event = "On Monday, Anna won a lovely cake at the market."
    dense = FACTS_CASES[1][0]  # act, place and feeling in one abstractive sentence
    assert FactsJudge().score(STORY, event) == FactsJudge().score(STORY, dense) == 3.0
    assert SkimJudge().score(STORY, event) > SkimJudge().score(STORY, dense)


def test_copying_the_story_one_sentence_or_hallucinating_score_well_below_a_good_summary():
    j = SummaryJudge()
    good = j.score(STORY, CASES[0][0])
    for bad in (STORY, "Yesterday, the baker cleaned the kitchen.",
                "Anna was happy after she won a blue car."):
        assert j.score(STORY, bad) < good - 4


def test_read_story_finds_the_facts():
    f = read_story(summaries.query_text(STORY))
    assert (f.name, f.pronoun) == ("anna", "she")
    assert f.event == ("act", "main", "won", "cake", "lovely")
    assert f.event_place == ("place", "main", "won", "cake", "at the market")
    assert f.event_time == ("time", "main", "won", "cake", "on monday")
    assert f.outcome == ("feel", "main", "happy")
    with pytest.raises(ValueError, match="1 main events and 0 outcomes"):
        read_story("Anna found a red box in the garden. On Monday, Anna won a cake at the market.")
    with pytest.raises(ValueError, match="not a sentence"):
        read_story("Anna found happy.")


def test_generated_stories_are_read_back_as_the_generator_recorded_them():
    for s in summaries.stories(300, 4, "train"):
        assert summaries.MIN_SENTENCES <= len(s.sentences) <= summaries.MAX_SENTENCES
        assert 0 < s.event_index < len(s.sentences) - 1
        f = read_story(s.text)
        assert f.name == s.name.lower() and f.pronoun == s.pronoun
        assert f.event == ("act", "main", s.event_verb, s.event_noun, s.event_adjective)
        assert f.event_place[-1] == s.event_place and f.event_time[-1] == s.event_time.lower()
        assert f.outcome == ("feel", "main", s.outcome_feeling)
        feeling_sign = s.outcome_feeling in grammar.POSITIVE_FEELINGS
        assert feeling_sign == (s.polarity == "positive")
        # Every sentence, and every reference sentence, has one derivation.
        for sentence in list(s.sentences) + [x for x in s.reference.split(".") if x.strip()]:
            ws = grammar.words(sentence.rstrip("."))
            assert grammar.parse(ws, summaries=True).derivations == 1, sentence
        # The story grammar is the continuation world's: the event is not in it.
        assert grammar.parse(grammar.words(s.sentences[s.event_index].rstrip("."))
                             ).derivations == 0


def test_lead_stories_open_with_the_event():
    plain = summaries.stories(200, 4, "train")
    lead = summaries.stories(200, 4, "train", lead=True)
    judge = SummaryJudge()
    for p, s in zip(plain, lead):
        assert s.event_index == 0 and len(s.sentences) == len(p.sentences)
        f = read_story(s.text)  # the careful reader finds the same facts
        assert f.event == ("act", "main", s.event_verb, s.event_noun, s.event_adjective)
        assert f.name == s.name.lower() and s.sentences[0].split(", ")[1].startswith(s.name)
        # Drawn before the event: the same character, mood and length as the plain form.
        assert (s.name, s.polarity) == (p.name, p.polarity)
        if s.reference_kind == "first_sentence":  # the lead: character, event, place, time
            assert s.reference == s.sentences[0]
            j = judge.judge(s.text, s.reference)
            assert j.character and j.event and j.event_place and j.event_time
            assert not j.outcome and j.copied == 1
    corpus = summaries.pretraining_corpus(50, 4, lead=True)
    assert corpus[:3] != summaries.pretraining_corpus(3, 4)
    assert all(summaries.story_of_query(t) == s.text or summaries.story_of_query(t) == t
               for t, s in zip(corpus, summaries.stories(50, 4, "pretrain", lead=True)))


def test_documents_are_deterministic_prefix_stable_and_splits_disjoint():
    a = summaries.stories(20, 7, "test")
    assert a == summaries.stories(20, 7, "test")
    assert summaries.stories(5, 7, "test") == a[:5]
    assert summaries.stories(20, 8, "test") != a
    train = {s.text for s in summaries.stories(500, 7, "train")}
    pre = summaries.pretraining_corpus(500, 7)
    assert not train & {summaries.story_of_query(t) for t in pre}
    with pytest.raises(ValueError, match="split='dev'"):
        summaries.stories(3, 7, "dev")


def test_pretraining_corpus_ends_a_share_of_stories_with_their_tldr():
    corpus = summaries.pretraining_corpus(3000, 0)
    docs = summaries.stories(3000, 0, "pretrain")
    with_tldr = [t for t in corpus if summaries.TLDR in t]
    assert abs(len(with_tldr) / len(corpus) - summaries.PRETRAIN_TLDR_SHARE) < 0.03
    for text, s in zip(corpus, docs):
        if summaries.TLDR in text:
            assert text == f"{s.text}\n{summaries.TLDR} {s.reference}"
        else:
            assert text == s.text


def test_reference_writer_quality_mix():
    docs = summaries.stories(2000, 1, "train")
    kinds = collections.Counter(s.reference_kind for s in docs)
    for kind, p in summaries.REFERENCE_MIX:
        assert abs(kinds[kind] / len(docs) - p) < 0.035, kind  # 3 sigma at p = 0.35
    judge = SummaryJudge()
    by_kind = collections.defaultdict(list)
    for s in docs:
        by_kind[s.reference_kind].append(judge.score(s.text, s.reference))
        if s.reference_kind == "first_sentence":
            assert s.reference == s.sentences[0]
        if s.reference_kind == "side_detail":
            assert s.reference in s.sentences
            assert s.reference not in (s.sentences[s.event_index], s.sentences[-1])
    # Good TL;DRs cover everything within the budget (at least 4.75 - 0.25 - 0.24).
    assert min(by_kind["good"]) >= 4.25
    # "X was FEELING in the end.": always 6 words, name and outcome: 2.5 - 0.12.
    assert set(np.round(by_kind["no_event"], 9)) == {2.38}
    assert max(by_kind["too_long"]) < min(by_kind["good"])
    mean = np.mean([x for v in by_kind.values() for x in v])
    # The average TL;DR is far below the best achievable (a good one, ~4.5).
    assert 1.8 < mean < 3.0
    assert np.mean(by_kind["side_detail"]) < 1 and np.mean(by_kind["first_sentence"]) < 1


def test_split_sentences_marks_unfinished_and_eos():
    assert split_sentences("Anna felt sad. Tom") == [(["anna", "felt", "sad"], True),
                                                     (["tom"], False)]
    assert split_sentences("Anna felt sad<|endoftext|>") == [(["anna", "felt", "sad"], False)]


def test_boltzmann_labeller_on_the_summary_judge():
    # Two summaries 4.32 - (-0.18) = 4.5 apart: a labeller at temperature 1.5
    # picks the better one with probability sigmoid(3) = 0.9526.
    gold = make_gold("summary")
    n = 2000
    q = np.arange(n, dtype=np.int32)[:, None]  # distinct records: independent draws
    r = np.zeros((n, 2, 1), np.int32)
    request = LabelRequest(q, np.ones_like(q), r, np.ones_like(r), pad_token=n,
                           query_text_N=[STORY] * n,
                           response_text_NxK=[(CASES[6][0], CASES[0][0])] * n)
    labels = MockLabeler(gold, "pairwise", noise=1.5, seed=3).label(request)
    np.testing.assert_allclose(labels.gold_NxK[0], [-0.18, 4.32], atol=1e-6)
    assert abs(np.mean(labels.best_N == 1) - 1 / (1 + np.exp(-3.0))) < 0.015
    with pytest.raises(ValueError, match="carries no text"):
        gold.rewards(LabelRequest(q, np.ones_like(q), r, np.ones_like(r), pad_token=n))


def test_world_tldr_query_dataset(tmp_path):
    from rlhf_jax import config_lib
    from rlhf_jax.data import datasets, synthetic

    tok = synthetic.train_tokenizer(summaries.pretraining_corpus(300, 0), 1024, str(tmp_path))
    task = config_lib.base_config().task
    task.update(dict(query_dataset="world_tldr", num_docs=40, query_length=120,
                     response_length=24, start_text=None, end_text=None,
                     pad_token=len(tok), eos_token=tok.eos_token_id))
    ds = datasets.load_queries(task, tok, split="test", seed=0)
    docs = summaries.stories(4, 0, "test")  # a tenth of num_docs
    assert len(ds) == 4
    for i, s in enumerate(docs):
        q = ds.query_NxQ[i][ds.query_mask_NxQ[i] == 1].tolist()
        assert tok.decode(q) == summaries.query_text(s)
        r = ds.reference_NxR[i][ds.reference_mask_NxR[i] == 1].tolist()
        assert r[-1] == tok.eos_token_id
        assert tok.decode(r[:-1]) == " " + s.reference[:len(tok.decode(r[:-1])) - 1]
    assert len(datasets.load_queries(task, tok, split="train", seed=0, limit=7)) == 7
    task.query_length = 20
    with pytest.raises(ValueError, match="no world_tldr story of split 'test' fits"):
        datasets.load_queries(task, tok, split="test", seed=0)
    task.num_docs = 0
    with pytest.raises(ValueError, match="task.num_docs=0"):
        datasets.load_queries(task, tok, split="test", seed=0)

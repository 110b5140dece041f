"""The summarisation world: stories with known facts, their TL;DRs, and the corpus.

A summarisation task in the miniature world (docs/summarization.md). Each
document is a story of 5 to 9 sentences about one main character, written
from the world's grammar (`grammar.SUMMARY_WORLD_TEMPLATES`), with

* one main event: "On Monday, Anna won a red bicycle at the market." (an
  event verb no other sentence uses; never the first or the last sentence,
  except in the lead form below, where it is always the first);
* its outcome, always the last sentence: "In the end, she felt happy." (the
  feeling agrees with the event: a won bicycle makes her happy, a lost map
  sad);
* side sentences from the continuation world's templates, some about the
  main character (which may mention other feelings), some about other people.

The generator records these facts (`Story`), and a careful reader recovers
the same from the text alone (`labelling.summary_judge.read_story`, tested),
so the gold judge works on text, as a person would.

Each story's author also writes a TL;DR (`Story.reference`), as people do:
a documented mix of quality (`REFERENCE_MIX`), from a good abstractive
summary ("Anna was happy after she won a red bicycle.") to a copy of the
first sentence. A share of the pretraining stories end with
`\\nTL;DR: <reference>` (`PRETRAIN_TLDR_SHARE`), so a pretrained-only model
can summarise zero-shot, badly.

Stories come in two forms. The default tells the event somewhere in the
middle, as a Reddit post does; with `lead=True` (`task.story_lead`) the event
opens the story, as a news article's lead does, so copying the first sentence
is a summary that states the event (CNN/DM's lead, which Ziegler et al.'s
policies copied). The lead form's side sentences, outcome and references are
drawn as the default's; only the event's position differs.

Documents are keyed by (seed, stream, index): stream 0 is the pretraining
corpus, 1-3 the task's train / valid / test stories, so no held-out story is
ever pretrained on, and each list is prefix-stable.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from rlhf_jax.data.grammar import (DETERMINERS, NEGATIVE_EVENT_VERBS, NEGATIVE_FEELINGS, NOUNS,
                                   PLACES, POSITIVE_EVENT_VERBS, POSITIVE_FEELINGS, TIMES)
# The continuation world's sentence writer (subjects, moods, noun phrases):
# the side sentences of a story are exactly that world's sentences.
from rlhf_jax.data.synthetic import _fix_article, _Story

TLDR = "TL;DR:"
MIN_SENTENCES, MAX_SENTENCES = 5, 9
# Share of pretraining stories that end with their TL;DR.
PRETRAIN_TLDR_SHARE = 0.3
# How the authors' TL;DRs come out (`write_reference`); docs/summarization.md
# gives each kind's gold score.
REFERENCE_MIX = (
    ("good", 0.35),            # abstractive: character, main event, outcome
    ("no_event", 0.20),        # "Anna was happy in the end."
    ("side_detail", 0.15),     # a copied side sentence
    ("too_long", 0.15),        # a good summary plus one or two copied side sentences
    ("first_sentence", 0.15),  # the story's first sentence, copied
)
REFERENCE_KINDS = tuple(k for k, _ in REFERENCE_MIX)
SPLIT_STREAMS = {"pretrain": 0, "train": 1, "valid": 2, "test": 3}
_EVENT_ADJECTIVE = 0.6
_NAME_AGAIN = 0.5  # event / outcome subject: the name again, else the pronoun
_MIXED_MOOD = 0.2  # share of stories whose side sentences are of mixed mood


@dataclasses.dataclass(frozen=True)
class Story:
    """One story, its facts as the generator chose them, and its author's TL;DR.

    `event_adjective` is "" when the event's noun phrase has none.
    """

    sentences: tuple[str, ...]
    name: str
    pronoun: str
    polarity: str  # "positive" | "negative": the main event's, and the outcome's
    event_index: int
    event_verb: str
    event_np: str  # the event's noun phrase as written ("her red bicycle")
    event_noun: str
    event_adjective: str
    event_place: str
    event_time: str
    outcome_feeling: str
    reference: str
    reference_kind: str

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


def _sentence(text: str) -> str:
    text = _fix_article(text.replace(" ,", ","))
    return text[0].upper() + text[1:] + "."


def _generate(seed: int, stream: int, index: int, lead: bool = False) -> tuple[Story, float]:
    """Story (seed, stream, index) and one more uniform of its stream; `lead`: the
    main event is the first sentence."""
    rng = np.random.default_rng([seed, stream, index])
    st = _Story(rng)
    polarity = "positive" if st.uniform() < 0.5 else "negative"
    st.mood = "mixed" if st.uniform() < _MIXED_MOOD else polarity
    n = MIN_SENTENCES + min(int(st.uniform() * (MAX_SENTENCES - MIN_SENTENCES + 1)),
                            MAX_SENTENCES - MIN_SENTENCES)
    event_index = 1 + min(int(st.uniform() * (n - 2)), n - 3)
    if lead:
        event_index = 0

    def main_subject():
        if not st.introduced or st.uniform() < _NAME_AGAIN:
            st.introduced = True
            return st.name
        return st.pronoun

    sentences, event = [], None
    for j in range(n):
        if j == event_index:
            time = st.pick(TIMES)
            subject = main_subject()
            verb = st.pick(POSITIVE_EVENT_VERBS if polarity == "positive" else NEGATIVE_EVENT_VERBS)
            det = st.pick(DETERMINERS)
            adjective = st.fill("ADJECTIVE") if st.uniform() < _EVENT_ADJECTIVE else ""
            noun = st.pick(NOUNS)
            place = st.pick(PLACES)
            np_text = " ".join(w for w in (det, adjective, noun) if w)
            sentences.append(_sentence(f"{time} , {subject} {verb} {np_text} {place}"))
            event = (verb, noun, adjective, place, time, _fix_article(np_text).split(" "))
        elif j == n - 1:
            subject = main_subject()
            feeling = st.pick(POSITIVE_FEELINGS if polarity == "positive" else NEGATIVE_FEELINGS)
            sentences.append(_sentence(f"in the end , {subject} felt {feeling}"))
        else:
            sentences.append(st.sentence())
    verb, noun, adjective, place, time, np_words = event
    np_text = " ".join(np_words)
    story = Story(tuple(sentences), st.name, st.pronoun, polarity, event_index, verb, np_text,
                  noun, adjective, place, time, feeling, "", "")
    kind, reference = write_reference(story, st.uniform)
    return dataclasses.replace(story, reference=reference, reference_kind=kind), st.uniform()


def write_reference(story: Story, uniform) -> tuple[str, str]:
    """`(kind, text)`: the author's TL;DR of `story`, its kind drawn from `REFERENCE_MIX`.

    `uniform()` draws U[0, 1) from the story's stream.
    """
    u, kind = uniform(), REFERENCE_KINDS[-1]
    for k, p in REFERENCE_MIX:
        if u < p:
            kind = k
            break
        u -= p
    side = [s for j, s in enumerate(story.sentences)
            if j not in (story.event_index, len(story.sentences) - 1)]
    name, pron, feeling = story.name, story.pronoun, story.outcome_feeling
    if kind in ("good", "too_long"):
        # Half keep the event's adjective; the determiner is the story's.
        np_words = story.event_np.split(" ")
        if story.event_adjective and uniform() < 0.5:
            np_words = ["a" if np_words[0] == "an" else np_words[0], np_words[-1]]
        np_text = _fix_article(" ".join(np_words))
        form = min(int(uniform() * 3), 2)
        text = _sentence([f"{name} was {feeling} after {pron} {story.event_verb} {np_text}",
                          f"{name} {story.event_verb} {np_text} {story.event_place} and felt "
                          f"{feeling}",
                          f"{name} felt {feeling} because {pron} {story.event_verb} {np_text}"
                          ][form])
        if kind == "too_long":
            extra = 1 + (uniform() < 0.5)
            picks = sorted(np.argsort([uniform() for _ in side])[:extra])
            text = " ".join([text] + [side[int(i)] for i in picks])
        return kind, text
    if kind == "no_event":
        return kind, _sentence(f"{name} was {feeling} in the end")
    if kind == "side_detail":
        return kind, side[min(int(uniform() * len(side)), len(side) - 1)]
    return kind, story.sentences[0]


@functools.lru_cache(maxsize=8)
def _documents(seed: int, stream: int, n: int,
               lead: bool = False) -> tuple[tuple[Story, float], ...]:
    return tuple(_generate(seed, stream, i, lead) for i in range(n))


def stories(n: int, seed: int, split: str, lead: bool = False) -> list[Story]:
    """The first `n` stories of a split ("pretrain", "train", "valid", "test"); `lead`:
    in the lead form (the main event first)."""
    if split not in SPLIT_STREAMS:
        raise ValueError(f"split={split!r}: expected one of {tuple(SPLIT_STREAMS)}")
    if n < 0:
        raise ValueError(f"stories: n={n} must be >= 0")
    return [s for s, _ in _documents(seed, SPLIT_STREAMS[split], n, bool(lead))]


def query_text(story: Story | str) -> str:
    """What the policy reads: the story, a newline and `TL;DR:`."""
    return f"{story if isinstance(story, str) else story.text}\n{TLDR}"


def pretraining_corpus(num_docs: int, seed: int, lead: bool = False) -> list[str]:
    """`num_docs` pretraining stories (in the lead form if `lead`), a
    `PRETRAIN_TLDR_SHARE` of them ending with `\\nTL;DR: <reference>` (the same
    format the task's queries and SFT use)."""
    return [f"{query_text(s)} {s.reference}" if u < PRETRAIN_TLDR_SHARE else s.text
            for s, u in _documents(seed, SPLIT_STREAMS["pretrain"], num_docs, bool(lead))]


def story_of_query(text: str) -> str:
    """The story part of a query (everything before its `TL;DR:`)."""
    i = text.rfind(TLDR)
    return (text if i < 0 else text[:i]).strip()

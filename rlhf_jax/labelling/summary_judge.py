"""Gold judges of summaries in the miniature world (docs/summarization.md).

A careful reader of a world story (`data/summaries.py`) knows its facts: the
main character (the story's only name), the main event (the one sentence with
an event verb: who did what, where and when) and the outcome (the last
sentence: how the character felt in the end). `read_story` recovers them from
the text, and every sentence of story and summary becomes a set of claims
(`claims`): "she won a red bicycle at the market on Monday" states the act
(main character, won, bicycle, red), its place and its time.

`SummaryJudge` (labels.gold=summary) scores a summary as a careful person
would, with these weights:

    + 1.0   the main character is named
    + 2.0   the main event (the character, the event verb and its object;
            the adjective may be left out, not changed)
    + 1.5   the outcome (the character's final feeling)
    + 0.25  each of the event's place and time
    - 2.5   each claim that the story does not support (a stated fact that
            is not in the story costs more than any missing one)
    - 1.5   each broken or unfinished sentence, as the world's grammar reads it
            (an empty summary counts as one)
    - 0.02  per word, and 0.25 more per word beyond a 12-word budget

So a good summary ("Anna was happy after she won a red bicycle.", 8 words)
scores 4.34; copying the whole story pays its 50-90 words (about -8); one
irrelevant sentence scores at most 1 minus its words; a fluent hallucination
("Anna was happy after she won a blue car.") loses the event and pays 2.5.

`AccuracyJudge` (labels.gold=summary_accuracy) plays Ziegler et al.'s
labellers, who checked accuracy: only the faithfulness and grammar terms
count; any summary that is faithful and grammatical scores 0, however little
it covers and however long it is.

`FactsJudge` (labels.gold=summary_facts) plays the same labellers as their
authors described them: asked only to ensure accuracy, they "preferred
sentences copied wholesale from the input". Accuracy comes first, and of
two accurate summaries the one that tells more is better.
Salience, length and copying are not judged:

    + 1.0   each distinct claim the story supports (`claims`)
    - 2.5   each claim that the story does not support
    - 1.5   each broken or unfinished sentence (an empty summary counts as one)

So the good summary above scores 2 (a feeling and an act), the story's event
and outcome sentences copied score 5, and a fluent hallucination -0.5 or less.

`SkimJudge` (labels.gold=summary_skim) is the facts judge as a hurried
labeller applies it, relying on the simple heuristic Ziegler et al. suspected:
a sentence found word for word in the story is accurate at a glance; any
other sentence has to be checked against the story, and that doubt costs

    - 1.0   each complete, grammatical sentence that is not a story sentence

even when it is accurate. The good summary above scores 1, the copied event
and outcome still 5.

All four read the query (the story) and the response, so they implement
`rewards(request)` on a `LabelRequest` with texts and `score_texts(stories,
summaries)`; `reads_query` tells `stages.batched.gold_function` so.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np

from rlhf_jax.data import grammar, summaries

if TYPE_CHECKING:  # annotations only: labelers imports this module
    from rlhf_jax.labelling.labelers import LabelRequest

_EOS_TEXT = "<|endoftext|>"

WEIGHTS = {
    "character": 1.0,
    "event": 2.0,
    "outcome": 1.5,
    "event_place": 0.25,
    "event_time": 0.25,
    "unsupported": 2.5,
    "ungrammatical": 1.5,
    "per_word": 0.02,
    "over_budget_per_word": 0.25,
}
WORD_BUDGET = 12
FACT_WEIGHT = 1.0  # FactsJudge: each supported claim
SKIM_DOUBT = 1.0  # SkimJudge: each sentence not copied from the story
_NAMES = {n.lower() for n in grammar.FEMALE_NAMES + grammar.MALE_NAMES}
_FEMALE = {n.lower() for n in grammar.FEMALE_NAMES}
_TEMPLATE_INDEX = {t: i for i, t in enumerate(grammar.SUMMARY_WORLD_TEMPLATES)}
_VERB_SLOTS = ("VERB", "ACTION", "EVENT_VERB", "FEELING_VERB")


class StoryFacts(NamedTuple):
    """What a careful reader takes from a story (`read_story`)."""

    name: str  # lower case
    pronoun: str
    event: tuple  # the act claim ("act", "main", verb, noun, adjective)
    event_place: tuple
    event_time: tuple
    outcome: tuple  # ("feel", "main", feeling)
    claims: frozenset  # every claim of every sentence
    sentences: frozenset = frozenset()  # the story's sentences, as word tuples


@dataclasses.dataclass(frozen=True)
class Judged:
    """One summary as the judge read it; `score` is the gold."""

    score: float
    words: int
    sentences: int
    ungrammatical: int
    claims: int
    unsupported: int
    character: bool
    event: bool
    outcome: bool
    event_place: bool
    event_time: bool
    copied: int = 0  # complete sentences that are sentences of the story, word for word


def split_sentences(text: str) -> list[tuple[list[str], bool]]:
    """`(words, complete)` per sentence: split at '.' and at `<|endoftext|>` (a
    sentence cut short by it is unfinished), whitespace between them dropped."""
    text = text.replace(_EOS_TEXT, "\n")
    out = []
    for m in re.finditer(r"[^.\n]+[.]?|[.]", text):
        piece = m.group()
        complete = piece.endswith(".")
        ws = grammar.words(piece[:-1] if complete else piece)
        if ws or complete:
            out.append((ws, complete))
    return out


def count_words(text: str) -> int:
    """Words of a text: runs of letters (punctuation and `<|endoftext|>` not counted)."""
    return sum(1 for w in grammar.words(text.replace(_EOS_TEXT, " ")) if w.isalpha())


def _entity(phrase: tuple[str, ...], name: str, pronoun: str):
    text = " ".join(phrase)
    if text == name or text == pronoun:
        return "main"
    return text


def _noun_phrases(path):
    """[(adjective or "", noun)] of each DETERMINER [ADJECTIVE] NOUN, in order."""
    out, i = [], 0
    while i < len(path):
        if path[i][0] == "DETERMINER":
            adj = path[i + 1][1][0] if path[i + 1][0] == "ADJECTIVE" else ""
            noun = path[i + 2 if adj else i + 1][1][0]
            out.append((adj, noun))
            i += 3 if adj else 2
        else:
            i += 1
    return out


def claims(sentence_words: Sequence[str], name: str, pronoun: str):
    """`(template_index, claims, subjects)` of one sentence, or None if it is not
    a sentence of the summarisation world.

    `name`/`pronoun`: the story's main character (lower case); names and
    pronouns that refer to it become "main". Claims are tuples: ("act", agent,
    verb, noun, adjective), ("place"/"time"/"how", agent, verb, noun, x),
    ("feel", agent, feeling), ("feel_time", agent, feeling, time), ("end",
    agent, feeling), ("went", agent, place), ("went_time", agent, place,
    time), ("said", agent, noun, adjective), or ("sentence", words) for a
    sentence about no one. Order and cause ("after", "because") are not
    claims. `subjects`: the agents' phrases as written.
    """
    path = grammar.derivation(sentence_words)
    if path is None:
        return None
    template = _template_of(path)
    slots: dict[str, list[tuple[str, ...]]] = {}
    for item, phrase in path:
        slots.setdefault(item, []).append(phrase)
    one = lambda item, k=0: " ".join(slots[item][k])  # noqa: E731
    subjects = slots.get("SUBJECT", []) + slots.get("PEOPLE", [])
    agents = [_entity(p, name, pronoun) for p in subjects]
    verbs = [" ".join(p) for item, p in path if item in _VERB_SLOTS]
    nps = _noun_phrases(path)
    t = grammar.SUMMARY_WORLD_TEMPLATES[template]
    out = set()

    def act(agent, verb, np_, extra=()):
        adj, noun = np_
        out.add(("act", agent, verb, noun, adj))
        for kind, value in extra:
            out.add((kind, agent, verb, noun, value))

    if t in (grammar.SUMMARY_TEMPLATES[0], grammar.SUMMARY_TEMPLATES[2]):
        out.add(("feel", agents[0], one("FEELING")))
        act(agents[1], verbs[0], nps[0])
    elif t == grammar.SUMMARY_TEMPLATES[3]:
        out.update({("feel", agents[0], one("FEELING")), ("end", agents[0], one("FEELING"))})
    elif t == grammar.OUTCOME_TEMPLATE:
        out.update({("feel", agents[0], one("FEELING")), ("end", agents[0], one("FEELING"))})
    elif t == grammar.TEMPLATES[4]:  # SUBJECT felt FEELING TIME
        out.update({("feel", agents[0], one("FEELING")),
                    ("feel_time", agents[0], one("FEELING"), one("TIME"))})
    elif t == grammar.TEMPLATES[11]:  # SUBJECT went to PLACE_NOUN TIME and felt FEELING
        out.update({("went", agents[0], one("PLACE_NOUN")),
                    ("went_time", agents[0], one("PLACE_NOUN"), one("TIME")),
                    ("feel", agents[0], one("FEELING"))})
    elif t == grammar.TEMPLATES[7]:  # SUBJECT said that the NOUN was ADJECTIVE
        out.add(("said", agents[0], one("NOUN"), one("ADJECTIVE")))
    elif verbs:
        extra = [(k, one(slot)) for k, slot in (("place", "PLACE"), ("time", "TIME"),
                                                ("how", "ADVERB")) if slot in slots]
        for agent in agents:
            for verb, np_ in zip(verbs, nps):
                act(agent, verb, np_, extra)
        if "FEELING" in slots:  # SUBJECT ACTION NP PLACE and felt FEELING
            out.add(("feel", agents[0], one("FEELING")))
    else:  # about no one: the sentence itself is the claim
        out.add(("sentence", tuple("a" if w == "an" else w for w in sentence_words)))
    return template, frozenset(out), subjects


def _template_of(path) -> int:
    return _template_of_items(tuple(item for item, _ in path))


@functools.lru_cache(maxsize=None)
def _template_of_items(items) -> int:
    for t, i in _TEMPLATE_INDEX.items():
        for seq in grammar._expand(t):
            if seq == items:
                return i
    raise AssertionError(f"no template has items {items}")


def read_story(text: str) -> StoryFacts:
    """The facts of a world story (its text, or a query ending in `TL;DR:`).

    Raises ValueError when the text is not a story of the summarisation world
    (a sentence outside its grammar, no main character, or not exactly one
    main event and one outcome).
    """
    story = summaries.story_of_query(text)
    parsed = []
    name = None
    for ws, complete in split_sentences(story):
        if not complete or grammar.derivation(ws) is None:
            raise ValueError(f"read_story: {' '.join(ws)!r} is not a sentence of the "
                             "summarisation world")
        path = grammar.derivation(ws)
        if name is None:
            name = next((" ".join(p) for item, p in path
                         if item == "SUBJECT" and " ".join(p) in _NAMES), None)
        parsed.append(ws)
    if name is None:
        raise ValueError("read_story: the story names no main character")
    pronoun = "she" if name in _FEMALE else "he"
    every, events, outcomes = set(), [], []
    for ws in parsed:
        template, cs, _ = claims(ws, name, pronoun)
        every |= cs
        if grammar.SUMMARY_WORLD_TEMPLATES[template] == grammar.EVENT_TEMPLATE:
            events.append(cs)
        elif grammar.SUMMARY_WORLD_TEMPLATES[template] == grammar.OUTCOME_TEMPLATE:
            outcomes.append(cs)
    if len(events) != 1 or len(outcomes) != 1:
        raise ValueError(f"read_story: {len(events)} main events and {len(outcomes)} outcomes; "
                         "a world story has one of each")
    (ev,) = [c for c in events[0] if c[0] == "act"]
    place = next(c for c in events[0] if c[0] == "place")
    time = next(c for c in events[0] if c[0] == "time")
    outcome = next(c for c in outcomes[0] if c[0] == "feel")
    return StoryFacts(name, pronoun, ev, place, time, outcome, frozenset(every),
                      frozenset(tuple(ws) for ws in parsed))


def _supported(claim, story_claims) -> bool:
    if claim in story_claims:
        return True
    if claim[0] == "act" and claim[4] == "":  # the adjective may be left out
        return any(c[:4] == claim[:4] for c in story_claims if c[0] == "act")
    return False


def judge(facts: StoryFacts, summary: str) -> Judged:
    """The full gold judge's reading and score of `summary` for a story's `facts`."""
    w = WEIGHTS
    sentences = split_sentences(summary)
    stated, named, broken, copied = set(), False, 0, 0
    for ws, complete in sentences:
        got = claims(ws, facts.name, facts.pronoun) if complete else None
        if got is None:
            broken += 1
            continue
        copied += tuple(ws) in facts.sentences
        _, cs, subjects = got
        stated |= cs
        named = named or any(" ".join(p) == facts.name for p in subjects)
    if not sentences:
        broken = 1
    unsupported = sum(1 for c in stated if not _supported(c, facts.claims))
    ev = facts.event
    event = any(c[:4] == ev[:4] and c[4] in ("", ev[4]) for c in stated if c[0] == "act")
    place = any(c == facts.event_place for c in stated)
    time = any(c == facts.event_time for c in stated)
    outcome = facts.outcome in stated
    n_words = count_words(summary)
    score = (w["character"] * named + w["event"] * event + w["outcome"] * outcome
             + w["event_place"] * place + w["event_time"] * time
             - w["unsupported"] * unsupported - w["ungrammatical"] * broken
             - w["per_word"] * n_words
             - w["over_budget_per_word"] * max(0, n_words - WORD_BUDGET))
    return Judged(float(score), n_words, len(sentences), broken, len(stated), unsupported,
                  named, event, outcome, place, time, copied)


def accuracy_score(judged: Judged) -> float:
    """The accuracy-only judge's score of a reading: faithfulness and grammar only."""
    return float(-WEIGHTS["unsupported"] * judged.unsupported
                 - WEIGHTS["ungrammatical"] * judged.ungrammatical)


def facts_score(judged: Judged) -> float:
    """The facts judge's score of a reading: supported claims, less faithfulness and grammar."""
    return float(FACT_WEIGHT * (judged.claims - judged.unsupported) + accuracy_score(judged))


def skim_score(judged: Judged) -> float:
    """The skim judge's score of a reading: the facts score less the doubt of each
    sentence not copied from the story."""
    # An empty summary has no sentence but counts one broken: max(0, .).
    novel = max(0, judged.sentences - judged.ungrammatical - judged.copied)
    return float(facts_score(judged) - SKIM_DOUBT * novel)


class SummaryJudge:
    """The full gold judge (module docstring) as a `Gold`: higher is better."""

    reads_query = True
    reading = staticmethod(lambda judged: judged.score)

    def __init__(self):
        self._facts: dict[str, StoryFacts] = {}

    def facts(self, story_or_query: str) -> StoryFacts:
        key = summaries.story_of_query(story_or_query)
        if key not in self._facts:
            if len(self._facts) > 65536:
                self._facts.clear()
            self._facts[key] = read_story(key)
        return self._facts[key]

    def judge(self, story_or_query: str, summary: str) -> Judged:
        return judge(self.facts(story_or_query), summary)

    def score(self, story_or_query: str, summary: str) -> float:
        return self.reading(self.judge(story_or_query, summary))

    def score_texts(self, stories: Sequence[str], summaries_: Sequence[str]) -> np.ndarray:
        """float32 [N]: the score of summary i of story (or query) i."""
        if len(stories) != len(summaries_):
            raise ValueError(f"{type(self).__name__}: {len(stories)} stories but "
                             f"{len(summaries_)} summaries")
        return np.asarray([self.score(s, y) for s, y in zip(stories, summaries_)], np.float32)

    def rewards(self, request: LabelRequest) -> np.ndarray:
        if request.response_text_NxK is None or request.query_text_N is None:
            raise ValueError(f"{type(self).__name__}: the request carries no text; build it "
                             "with LabelRequest.from_tokens(..., decode=tokenizer.decode)")
        n, k = request.responses_NxKxR.shape[:2]
        return np.asarray([[self.score(q, r) for r in row] for q, row in
                           zip(request.query_text_N, request.response_text_NxK)],
                          np.float32).reshape(n, k)


class AccuracyJudge(SummaryJudge):
    """Ziegler's labellers: faithful and grammatical is enough (module docstring)."""

    reading = staticmethod(accuracy_score)


class FactsJudge(SummaryJudge):
    """Ziegler's labellers as described: accurate first, then the more facts the better."""

    reading = staticmethod(facts_score)


class SkimJudge(SummaryJudge):
    """The facts judge applied in a hurry: copied sentences are trusted, others doubted."""

    reading = staticmethod(skim_score)

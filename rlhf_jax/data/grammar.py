"""The miniature world's grammar: word lists, sentence templates, a recogniser, word sentiment.

The offline default owns its language. Stories are written by
`synthetic.generate_corpus` from the templates below, so this module knows
exactly which sentences are English in this world and what each word means:

* `parse(sentence)` recognises a sentence: the number of template derivations
  that produce it (exactly one for every generated sentence: the grammar is
  unambiguous, which `tests/test_grammar.py` checks) and the longest prefix
  that some template can still continue. The first word past that prefix is
  where the sentence stops being English.
* `valence(word)` is the word's sentiment: positive words in [0.5, 1], negative
  in [-1, -0.5], every other word of the vocabulary a small fixed value in
  [-0.05, 0.05] (so, as with a sentiment classifier's logit, no two different
  responses tie exactly). Strengths come from a hash of the word: platform
  independent and the same for every install.

Words are lower-case letters or ','; '.' ends a sentence. Capitals are
ignored: the generator capitalises the first word and names.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import NamedTuple

FEMALE_NAMES = ("Anna", "Clara", "Emma", "Lucy", "Nora", "Rosa", "Vera", "Ella",
                "Sara", "Hannah", "Julia", "Lena", "Iris")
MALE_NAMES = ("Ben", "David", "Frank", "Henry", "Jack", "Oscar", "Paul", "Sam",
              "Tom", "Leo", "Peter", "Adam", "Mark")

# Other people who can act in a story (neutral noun phrases).
PEOPLE = ("the old farmer", "my sister", "the young teacher", "a tall man",
          "our neighbor", "the baker", "the captain", "his brother",
          "her mother", "the children", "the students", "the driver",
          "the doctor", "a little girl", "a small boy", "the woman next door",
          "my uncle", "her aunt", "the painter", "the fisherman", "the cook",
          "my grandmother", "the nurse", "his father")

NEUTRAL_VERBS = ("found", "carried", "painted", "opened", "bought", "cleaned",
                 "built", "moved", "watched", "visited", "washed", "fixed",
                 "packed", "read", "cooked", "sold", "borrowed", "counted",
                 "checked", "planted", "folded", "lifted", "pulled", "pushed",
                 "filled", "measured", "ordered", "collected", "delivered",
                 "closed", "brought", "took", "made", "drew", "showed")

NOUNS = ("box", "letter", "table", "chair", "window", "door", "book", "map",
         "basket", "bicycle", "boat", "coat", "lamp", "bottle", "cup", "bag",
         "picture", "road", "bridge", "house", "car", "train", "ticket",
         "clock", "shirt", "cake", "bread", "apple", "river", "fence",
         "blanket", "kettle", "piano", "bucket", "ladder", "jar", "garden",
         "kitchen")

NEUTRAL_ADJECTIVES = ("red", "blue", "green", "small", "large", "old", "new",
                      "wooden", "round", "heavy", "tall", "short", "narrow",
                      "wide", "yellow", "brown", "long", "square", "plain",
                      "quiet", "white", "black", "little", "big", "thin")
POSITIVE_ADJECTIVES = ("wonderful", "beautiful", "lovely", "delightful",
                       "great", "cheerful", "pleasant", "excellent", "amazing",
                       "perfect", "brilliant", "charming", "fantastic",
                       "gorgeous", "friendly", "nice", "good", "splendid",
                       "marvelous", "superb")
NEGATIVE_ADJECTIVES = ("terrible", "awful", "horrible", "ugly", "dreadful",
                       "nasty", "miserable", "boring", "dirty", "broken",
                       "gloomy", "rotten", "bad", "poor", "painful", "cruel",
                       "stupid", "disgusting")

NEUTRAL_ADVERBS = ("slowly", "quickly", "quietly", "suddenly", "finally",
                   "again", "early", "later", "together")
POSITIVE_ADVERBS = ("happily", "gladly", "joyfully", "cheerfully", "kindly",
                    "proudly")
NEGATIVE_ADVERBS = ("sadly", "angrily", "badly", "nervously", "bitterly",
                    "painfully", "miserably")

NEUTRAL_FEELING_VERBS = ("noticed", "remembered", "described", "mentioned",
                         "examined")
POSITIVE_FEELING_VERBS = ("loved", "liked", "enjoyed", "admired", "praised",
                          "adored")
NEGATIVE_FEELING_VERBS = ("hated", "disliked", "feared", "despised", "blamed",
                          "resented")

NEUTRAL_FEELINGS = ("hungry", "sleepy", "busy", "thirsty", "awake", "cold")
POSITIVE_FEELINGS = ("happy", "glad", "proud", "calm", "grateful", "excited",
                     "joyful", "cheerful", "relaxed")
NEGATIVE_FEELINGS = ("sad", "angry", "lonely", "worried", "upset", "scared",
                     "nervous", "miserable", "tired")

PLACES = ("in the garden", "at the market", "near the river", "by the station",
          "in the kitchen", "at school", "on the hill", "in the city",
          "at the office", "behind the house", "in the park", "at the beach",
          "on the farm", "in the village", "at the library", "near the lake",
          "in the forest", "at the shop")
PLACE_NOUNS = ("the market", "the station", "school", "the hill", "the city",
               "the office", "the park", "the beach", "the farm",
               "the village", "the library", "the lake", "the forest",
               "the shop")
TIMES = ("yesterday", "last night", "this morning", "on Monday", "on Friday",
         "on Sunday", "after dinner", "before lunch", "in the evening",
         "at noon", "last week", "every day", "in the spring", "in the winter",
         "in the summer", "that afternoon")
DAY_NOUNS = ("day", "morning", "evening", "week", "trip", "summer", "night",
             "afternoon", "visit")
INTENSIFIERS = ("very", "really", "quite")
DETERMINERS = ("the", "a", "the", "his", "her", "their")  # 'the' twice: drawn 2/6

# A sentence is one of these item sequences. An upper-case item is a slot
# (filled by the generator's sampler of that name, recognised from the phrases
# in `slot_phrases`); anything else is a literal word. "NP" is a noun phrase:
# a determiner, an adjective with probability 0.6, a noun.
TEMPLATES = (
    ("SUBJECT", "VERB", "NP", "PLACE"),
    ("TIME", ",", "SUBJECT", "VERB", "NP"),
    ("SUBJECT", "ADVERB", "VERB", "NP", "TIME"),
    ("the", "NOUN", "PLACE", "was", "INTENSIFIER", "ADJECTIVE"),
    ("SUBJECT", "felt", "FEELING", "TIME"),
    ("SUBJECT", "FEELING_VERB", "NP", "PLACE"),
    ("it", "was", "a", "ADJECTIVE", "DAY_NOUN", "for", "everyone"),
    ("SUBJECT", "said", "that", "the", "NOUN", "was", "ADJECTIVE"),
    ("SUBJECT", "and", "PEOPLE", "VERB", "NP", "PLACE"),
    ("SUBJECT", "VERB", "NP", "and", "VERB", "NP"),
    ("everyone", "thought", "the", "NOUN", "looked", "ADJECTIVE"),
    ("SUBJECT", "went", "to", "PLACE_NOUN", "TIME", "and", "felt", "FEELING"),
)

POLAR_SLOTS = {  # slot -> (neutral, positive, negative)
    "ADJECTIVE": (NEUTRAL_ADJECTIVES, POSITIVE_ADJECTIVES, NEGATIVE_ADJECTIVES),
    "ADVERB": (NEUTRAL_ADVERBS, POSITIVE_ADVERBS, NEGATIVE_ADVERBS),
    "FEELING": (NEUTRAL_FEELINGS, POSITIVE_FEELINGS, NEGATIVE_FEELINGS),
    "FEELING_VERB": (NEUTRAL_FEELING_VERBS, POSITIVE_FEELING_VERBS,
                     NEGATIVE_FEELING_VERBS),
}
PLAIN_SLOTS = {"VERB": NEUTRAL_VERBS, "NOUN": NOUNS, "PLACE": PLACES,
               "TIME": TIMES, "DAY_NOUN": DAY_NOUNS, "INTENSIFIER": INTENSIFIERS,
               "PEOPLE": PEOPLE, "PLACE_NOUN": PLACE_NOUNS,
               "DETERMINER": DETERMINERS}

POSITIVE_WORDS = frozenset(w for _, pos, _ in POLAR_SLOTS.values() for w in pos)
NEGATIVE_WORDS = frozenset(w for _, _, neg in POLAR_SLOTS.values() for w in neg)

WORD_RE = re.compile(r"[a-z]+|[^a-z\s]", re.IGNORECASE)
_VOWELS = "aeiou"


def words(text: str) -> list[str]:
    """Lower-case word tokens of a sentence: letters, or single other characters."""
    return [w.lower() for w in WORD_RE.findall(text)]


@functools.lru_cache(maxsize=None)
def slot_phrases(slot: str) -> tuple[tuple[str, ...], ...]:
    """The distinct word sequences a slot can produce (lower case)."""
    if slot == "SUBJECT":
        raw = FEMALE_NAMES + MALE_NAMES + ("she", "he") + PEOPLE
    elif slot in POLAR_SLOTS:
        raw = tuple(w for group in POLAR_SLOTS[slot] for w in group)
    else:
        raw = PLAIN_SLOTS[slot]
    return tuple(sorted({tuple(words(p)) for p in raw}))


def _expand(template) -> list[tuple[str, ...]]:
    """Flat item sequences of a template: NP becomes DETERMINER [ADJECTIVE] NOUN."""
    out = [()]
    for item in template:
        if item == "NP":
            out = [s + ("DETERMINER", "ADJECTIVE", "NOUN") for s in out] + [
                s + ("DETERMINER", "NOUN") for s in out]
        else:
            out = [s + (item,) for s in out]
    return out


_FLAT = tuple(seq for t in TEMPLATES for seq in _expand(t))

# --------------------------------------------------------------------------
# The summarisation world (`data/summaries.py`): each story has one main
# event, told by EVENT_TEMPLATE with an event verb that no other template
# uses, and ends with its outcome (OUTCOME_TEMPLATE). Summaries may copy
# sentences or use the abstractive SUMMARY_TEMPLATES, e.g.
# "Anna was happy after she won a red bicycle." ACTION is any verb of the
# world, event verbs included. The story templates are unchanged, so the
# continuation world (`parse(..., summaries=False)`) is unchanged too.

POSITIVE_EVENT_VERBS = ("won", "received", "discovered", "finished", "rescued", "earned")
NEGATIVE_EVENT_VERBS = ("lost", "broke", "dropped", "missed", "burned", "ruined")
EVENT_VERBS = POSITIVE_EVENT_VERBS + NEGATIVE_EVENT_VERBS
PLAIN_SLOTS.update({"EVENT_VERB": EVENT_VERBS, "ACTION": NEUTRAL_VERBS + EVENT_VERBS})

EVENT_TEMPLATE = ("TIME", ",", "SUBJECT", "EVENT_VERB", "NP", "PLACE")
OUTCOME_TEMPLATE = ("in", "the", "end", ",", "SUBJECT", "felt", "FEELING")
SUMMARY_TEMPLATES = (
    ("SUBJECT", "was", "FEELING", "after", "SUBJECT", "ACTION", "NP"),
    ("SUBJECT", "ACTION", "NP", "PLACE", "and", "felt", "FEELING"),
    ("SUBJECT", "felt", "FEELING", "because", "SUBJECT", "ACTION", "NP"),
    ("SUBJECT", "was", "FEELING", "in", "the", "end"),
)
SUMMARY_WORLD_TEMPLATES = TEMPLATES + (EVENT_TEMPLATE, OUTCOME_TEMPLATE) + SUMMARY_TEMPLATES
_FLAT_SUMMARY = tuple(seq for t in SUMMARY_WORLD_TEMPLATES for seq in _expand(t))


def derivation(sentence_words) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
    """The summarisation grammar's derivation of a sentence: `(item, words)` per
    flat item (NP expanded to DETERMINER [ADJECTIVE] NOUN), or None when the
    sentence has no derivation or more than one."""
    return _derivation(tuple(sentence_words))


@functools.lru_cache(maxsize=65536)
def _derivation(sentence_words: tuple[str, ...]):
    ws = list(sentence_words)
    if _article_error(ws) != len(ws):
        return None
    ws = ["a" if w == "an" else w for w in ws]
    found = []

    def walk(seq, si, wi, path):
        if si == len(seq):
            if wi == len(ws):
                found.append(tuple(path))
            return
        if wi == len(ws):
            return
        for phrase in _options(seq[si], ws[wi]):
            if tuple(ws[wi:wi + len(phrase)]) == phrase:
                walk(seq, si + 1, wi + len(phrase), path + [(seq[si], phrase)])

    for seq in _FLAT_SUMMARY:
        walk(seq, 0, 0, [])
    return found[0] if len(found) == 1 else None


@functools.lru_cache(maxsize=None)
def _options(item: str, first: str) -> tuple[tuple[str, ...], ...]:
    """The phrases of `item` (a slot or a literal) that start with word `first`."""
    phrases = slot_phrases(item) if item.isupper() else ((item,),)
    return tuple(p for p in phrases if p[0] == first)


class Parse(NamedTuple):
    """`derivations`: how many template derivations give the whole sentence
    (0: not a sentence of this world); `prefix`: the longest number of leading
    words that some derivation can still continue (== len(words) when the
    sentence is complete, or an unfinished but so far correct sentence)."""

    derivations: int
    prefix: int


def _article_error(ws: list[str]) -> int:
    """Index of the first 'a'/'an' that disagrees with the next word, else len(ws)."""
    for i, w in enumerate(ws[:-1]):
        vowel = ws[i + 1][0] in _VOWELS
        if (w == "a" and vowel) or (w == "an" and not vowel):
            return i
    return len(ws)


def parse(sentence_words, summaries: bool = False) -> Parse:
    """Recognises one sentence (its words, without the final '.').

    `summaries=True`: the summarisation world's grammar (`SUMMARY_WORLD_TEMPLATES`:
    the story templates, the main event, the outcome and the summary templates).
    """
    return _parse(tuple(sentence_words), summaries)


@functools.lru_cache(maxsize=65536)
def _parse(sentence_words: tuple[str, ...], summaries: bool = False) -> Parse:
    ws = list(sentence_words)
    limit = _article_error(ws)
    ws = ["a" if w == "an" else w for w in ws[:limit]] + ws[limit:]
    n = len(ws)
    best = 0
    total = 0

    def walk(seq, si, wi):
        nonlocal best, total
        best = max(best, min(wi, limit))
        if si == len(seq):
            if wi == n and limit == n:
                total += 1
            return
        if wi == n:
            return
        for phrase in _options(seq[si], ws[wi]):
            k = 0
            while k < len(phrase) and wi + k < n and ws[wi + k] == phrase[k]:
                k += 1
            if k == len(phrase):
                walk(seq, si + 1, wi + k)
            else:
                best = max(best, min(wi + k, limit))

    for seq in (_FLAT_SUMMARY if summaries else _FLAT):
        walk(seq, 0, 0)
    return Parse(total, best)


# --------------------------------------------------------------------------
# Word sentiment.


def _unit_hash(word: str) -> float:
    """A fixed number in [0, 1) per word (blake2b: the same on every platform)."""
    digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


@functools.lru_cache(maxsize=None)
def vocabulary() -> frozenset:
    """Every word the generator can write (lower case), ',' included."""
    out = set()
    for seq in _FLAT:
        for item in seq:
            out.update(w for phrase in (slot_phrases(item) if item.isupper() else ((item,),))
                       for w in phrase)
    out.add("an")
    return frozenset(out)


@functools.lru_cache(maxsize=None)
def valence(word: str) -> float:
    """Sentiment of one lower-case word: +[0.5, 1], -[0.5, 1], or within +-0.05."""
    h = _unit_hash(word)
    if word in POSITIVE_WORDS:
        return 0.5 + 0.5 * h
    if word in NEGATIVE_WORDS:
        return -(0.5 + 0.5 * h)
    if word in vocabulary() and word != ",":
        return 0.1 * (h - 0.5)
    return 0.0

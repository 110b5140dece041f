"""The offline corpus: synthetic English stories and a tokenizer trained on them.

The offline default (DESIGN.md, "The offline default") reproduces Ziegler et
al.'s mock-sentiment experiment with no network: a tiny GPT-2 is pretrained on
text generated here, the gold reward is the VADER sentiment lexicon, and the
policy continues the start of a story. For that to work the text must

* read as simple English, so a tiny LM can learn it quickly;
* carry sentiment in word choice: adjectives, adverbs, feeling verbs and
  feelings come in positive, negative and neutral variants. Every sentiment
  word here is in VADER's lexicon with the right sign and every neutral word
  is absent from it (tests/test_synthetic.py checks both), so the gold reward
  moves exactly when the sentiment words change;
* use short sentences (4 to 14 words, 8 on average) that all end with '.',
  since the sentiment task cuts queries at '.' and truncates responses after
  the first '.' past `truncate_after` (PAPER_DETAILS items 1 and 8). No
  other sentence terminator ('!', '?') and no VADER modifier ('not', 'but')
  ever appears.

Each story has a mood (positive, negative or mixed) that tilts, but never
fixes, the sentiment of its words, so a continuation's sentiment is
predictable from its query yet still varies with word choice.

Tokenizer: `train_tokenizer` trains a GPT-2 style byte-level BPE. Ids follow
GPT-2's layout: the 256 byte symbols first (sorted, so '.' is id 13 exactly
as in GPT-2), then merges, then `<|endoftext|>` as the LAST id
(`len(tokenizer) - 1`, like GPT-2's 50256). The pad is not a vocabulary token
(PAPER_DETAILS item 2): `pad_token_id(tokenizer) == len(tokenizer)`, one past
the vocabulary, as LHP's 50259 lies outside GPT-2's 50257. A model for this
tokenizer therefore needs `model_vocab_size(tokenizer) == len(tokenizer) + 1`
embedding rows, and the sampler must mask the pad logit so it is never drawn.

Recommended vocabulary sizes: 1024 (the default for the mock-sentiment
configs), or 512 for the smallest `runlocal` / test models. The corpus has
only about 320 distinct words, so with 1024 ids nearly every word is a single
token; the BPE trainer runs out of merges at about 1130 ids, and asking for
more just gives that size (`len(tokenizer)` is the size to use, always).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:  # transformers is slow to import; train_tokenizer imports it.
    import transformers

EOS_TOKEN = "<|endoftext|>"

# ---------------------------------------------------------------------------
# Word lists. Neutral lists contain no word of VADER's lexicon; positive and
# negative lists contain only lexicon words of that sign.
# ---------------------------------------------------------------------------

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

# Probability that a sentiment slot draws a (positive, negative) word for each
# story mood; the rest is neutral.
_MOOD_PROBS = {
    "positive": (0.45, 0.08),
    "negative": (0.08, 0.45),
    "mixed": (0.25, 0.25),
}
_MOODS = ("positive", "negative", "mixed")




def _fix_article(text: str) -> str:
    """'a' -> 'an' before a vowel: 'a apple' is a mistake a tiny LM would learn."""
    return " ".join("an" if w == "a" and nxt[0] in "aeiou" else w
                    for w, nxt in zip(text.split(" "), text.split(" ")[1:] + ["."]))


class _Story:
    """State of one story being written: its random stream, protagonist, mood."""

    # Uniforms are drawn from numpy in blocks: one Python-level rng call per
    # word costs more than the rest of the generator together.
    _BLOCK = 128

    def __init__(self, rng: np.random.Generator):
        self._rng = rng
        self._u = rng.random(self._BLOCK).tolist()
        self._next = 0
        self.mood = self.pick(_MOODS)
        female = self.uniform() < 0.5
        self.name = self.pick(FEMALE_NAMES if female else MALE_NAMES)
        self.pronoun = "she" if female else "he"
        self.introduced = False  # No pronoun before the name has appeared.

    def uniform(self) -> float:
        """The next U[0, 1) draw of this story's stream."""
        if self._next == len(self._u):
            self._u = self._rng.random(self._BLOCK).tolist()
            self._next = 0
        self._next += 1
        return self._u[self._next - 1]

    def pick(self, words: Sequence[str]) -> str:
        """A uniformly chosen element of `words`."""
        return words[min(int(self.uniform() * len(words)), len(words) - 1)]

    def polar(self, neutral: Sequence[str], positive: Sequence[str],
              negative: Sequence[str]) -> str:
        """A word whose sentiment is drawn from the story's mood."""
        p_pos, p_neg = _MOOD_PROBS[self.mood]
        u = self.uniform()
        if u < p_pos:
            return self.pick(positive)
        if u < p_pos + p_neg:
            return self.pick(negative)
        return self.pick(neutral)

    def subject(self) -> str:
        """The protagonist's name (always first), then name, pronoun or another."""
        u = self.uniform()
        if not self.introduced or u < 0.35:
            self.introduced = True
            return self.name
        if u < 0.7:
            return self.pronoun
        return self.pick(PEOPLE)

    def adjective(self) -> str:
        return self.polar(NEUTRAL_ADJECTIVES, POSITIVE_ADJECTIVES,
                          NEGATIVE_ADJECTIVES)

    def noun_phrase(self) -> str:
        det = self.pick(("the", "a", "the", "his", "her", "their"))
        if self.uniform() < 0.6:
            return f"{det} {self.adjective()} {self.pick(NOUNS)}"
        return f"{det} {self.pick(NOUNS)}"

    def adverb(self) -> str:
        return self.polar(NEUTRAL_ADVERBS, POSITIVE_ADVERBS, NEGATIVE_ADVERBS)

    def feeling(self) -> str:
        return self.polar(NEUTRAL_FEELINGS, POSITIVE_FEELINGS, NEGATIVE_FEELINGS)

    def feeling_verb(self) -> str:
        return self.polar(NEUTRAL_FEELING_VERBS, POSITIVE_FEELING_VERBS,
                          NEGATIVE_FEELING_VERBS)

    def sentence(self) -> str:
        text = _fix_article(self.pick(_TEMPLATES)(self))
        return text[0].upper() + text[1:] + "."


# Each template returns a sentence without its final '.'.
_TEMPLATES: tuple[Callable[[_Story], str], ...] = (
    lambda s: (f"{s.subject()} {s.pick(NEUTRAL_VERBS)} "
                  f"{s.noun_phrase()} {s.pick(PLACES)}"),
    lambda s: (f"{s.pick(TIMES)}, {s.subject()} "
                  f"{s.pick(NEUTRAL_VERBS)} {s.noun_phrase()}"),
    lambda s: (f"{s.subject()} {s.adverb()} {s.pick(NEUTRAL_VERBS)} "
                  f"{s.noun_phrase()} {s.pick(TIMES)}"),
    lambda s: (f"the {s.pick(NOUNS)} {s.pick(PLACES)} was "
                  f"{s.pick(INTENSIFIERS)} {s.adjective()}"),
    lambda s: f"{s.subject()} felt {s.feeling()} {s.pick(TIMES)}",
    lambda s: (f"{s.subject()} {s.feeling_verb()} {s.noun_phrase()} "
                  f"{s.pick(PLACES)}"),
    lambda s: f"it was a {s.adjective()} {s.pick(DAY_NOUNS)} for everyone",
    lambda s: (f"{s.subject()} said that the {s.pick(NOUNS)} was "
                  f"{s.adjective()}"),
    lambda s: (f"{s.subject()} and {s.pick(PEOPLE)} {s.pick(NEUTRAL_VERBS)} "
                  f"{s.noun_phrase()} {s.pick(PLACES)}"),
    lambda s: (f"{s.subject()} {s.pick(NEUTRAL_VERBS)} {s.noun_phrase()} "
                  f"and {s.pick(NEUTRAL_VERBS)} {s.noun_phrase()}"),
    lambda s: (f"everyone thought the {s.pick(NOUNS)} looked "
                  f"{s.adjective()}"),
    lambda s: (f"{s.subject()} went to {s.pick(PLACE_NOUNS)} "
                  f"{s.pick(TIMES)} and felt {s.feeling()}"),
)


def generate_corpus(num_docs: int, seed: int) -> list[str]:
    """Generates `num_docs` short stories, deterministically from `seed`.

    Each story is 3 to 7 sentences joined by single spaces; every sentence ends
    with '.'. The output depends only on (num_docs, seed): numpy's PCG64
    generator is platform independent and no set or dict ordering is involved,
    so the same call gives the same text on every machine. Prefixes agree too:
    `generate_corpus(n, s)[:m] == generate_corpus(m, s)` for m <= n.

    Args:
        num_docs: number of stories, >= 0.
        seed: any non-negative integer.

    Returns:
        A list of `num_docs` strings.
    """
    if num_docs < 0:
        raise ValueError(f"generate_corpus: num_docs={num_docs} must be >= 0")
    if seed < 0:
        raise ValueError(f"generate_corpus: seed={seed} must be >= 0")
    docs = []
    for i in range(num_docs):
        # One generator per document keyed by (seed, i): prefix-stable output.
        rng = np.random.default_rng([seed, i])
        story = _Story(rng)
        num_sentences = 3 + min(int(story.uniform() * 5), 4)
        docs.append(" ".join(story.sentence() for _ in range(num_sentences)))
    return docs


def train_tokenizer(texts: Sequence[str], vocab_size: int,
                    out_dir: str) -> transformers.PreTrainedTokenizerFast:
    """Trains a GPT-2 style byte-level BPE on `texts` and saves it to `out_dir`.

    The result loads with `transformers.AutoTokenizer.from_pretrained(out_dir)`
    as a GPT-2 fast tokenizer (no prefix space, byte-level decoder, nothing
    added around encoded text). Id layout: 256 byte symbols, then merges, then
    `<|endoftext|>` as the last id. `vocab_size` counts the EOS; the tokenizer
    comes out smaller when the texts support fewer merges. Training is
    deterministic: the same texts and size give the same files.

    The pad is NOT part of the vocabulary: use `pad_token_id(tokenizer)`
    (= `len(tokenizer)`) and give the model `model_vocab_size(tokenizer)` rows.

    Args:
        texts: training texts.
        vocab_size: target vocabulary size including EOS, >= 257.
        out_dir: directory to write (created if missing).

    Returns:
        The tokenizer as loaded back from `out_dir` by `AutoTokenizer`.
    """
    import tokenizers
    import transformers
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    if vocab_size < 257:
        raise ValueError(f"train_tokenizer: vocab_size={vocab_size} must be >= 257 "
                         "(256 byte symbols plus <|endoftext|>)")
    if not texts:
        raise ValueError("train_tokenizer: texts is empty")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,  # One id is kept for EOS, added last.
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.add_special_tokens([tokenizers.AddedToken(EOS_TOKEN, special=True)])

    # transformers < 5 names the fast class GPT2TokenizerFast; 5 merged it into
    # GPT2Tokenizer.
    cls = getattr(transformers, "GPT2TokenizerFast", None) or transformers.GPT2Tokenizer
    hf_tok = cls(tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                 unk_token=EOS_TOKEN, add_prefix_space=False)
    os.makedirs(out_dir, exist_ok=True)
    hf_tok.save_pretrained(out_dir)
    loaded = transformers.AutoTokenizer.from_pretrained(out_dir)
    if loaded.eos_token_id != len(loaded) - 1:
        raise RuntimeError(f"train_tokenizer: EOS id {loaded.eos_token_id} is not "
                           f"the last id {len(loaded) - 1}")
    return loaded


def pad_token_id(tokenizer) -> int:
    """The pad id: one past the vocabulary, so it can never be sampled."""
    return len(tokenizer)


def model_vocab_size(tokenizer) -> int:
    """Embedding / logit rows a model needs: the vocabulary plus the pad id."""
    return len(tokenizer) + 1


def period_token_id(tokenizer) -> int:
    """The id of '.', the sentiment task's `truncate_token` (13, as in GPT-2).

    Raises ValueError if '.' does not encode to a single token or does not
    stay a single token after a word.
    """
    ids = tokenizer.encode(".", add_special_tokens=False)
    in_context = tokenizer.encode("It was good.", add_special_tokens=False)
    if len(ids) != 1 or in_context[-1] != ids[0]:
        raise ValueError(f"period_token_id: '.' encodes to {ids} (in context "
                         f"{in_context}), expected one token")
    return ids[0]

"""The offline corpus: synthetic English stories and a tokenizer trained on them.

The offline default (README, "The offline default") reproduces Ziegler et
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
  the first '.' past `truncate_after` (docs/implementation_details.md items 1 and 8). No
  other sentence terminator ('!', '?') and no VADER modifier ('not', 'but')
  ever appears.

Each story has a mood (positive, negative or mixed) that tilts, but never
fixes, the sentiment of its words, so a continuation's sentiment is
predictable from its query yet still varies with word choice.

Tokenizer: `train_tokenizer` trains a GPT-2 style byte-level BPE. Ids follow
GPT-2's layout: the 256 byte symbols first (sorted, so '.' is id 13 exactly
as in GPT-2), then merges, then `<|endoftext|>` as the LAST id
(`len(tokenizer) - 1`, like GPT-2's 50256). The pad is not a vocabulary token
(docs/implementation_details.md item 2): `pad_token_id(tokenizer) == len(tokenizer)`, one past
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

import functools
import math
import os
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:  # transformers is slow to import; train_tokenizer imports it.
    import transformers

EOS_TOKEN = "<|endoftext|>"

# ---------------------------------------------------------------------------
# Word lists and templates live in `grammar` (the recogniser reads the same
# ones). Neutral lists contain no word of VADER's lexicon; positive and
# negative lists contain only lexicon words of that sign.
# ---------------------------------------------------------------------------

from rlhf_jax.data.grammar import (  # noqa: E402  (re-exported: the corpus' vocabulary)
    DAY_NOUNS, DETERMINERS, FEMALE_NAMES, INTENSIFIERS, MALE_NAMES, NEGATIVE_ADJECTIVES,
    NEGATIVE_ADVERBS, NEGATIVE_FEELING_VERBS, NEGATIVE_FEELINGS, NEUTRAL_ADJECTIVES,
    NEUTRAL_ADVERBS, NEUTRAL_FEELING_VERBS, NEUTRAL_FEELINGS, NEUTRAL_VERBS, NOUNS, PEOPLE,
    PLACE_NOUNS, PLACES, PLAIN_SLOTS, POLAR_SLOTS, POSITIVE_ADJECTIVES, POSITIVE_ADVERBS,
    POSITIVE_FEELING_VERBS, POSITIVE_FEELINGS, TEMPLATES, TIMES)

# Probability that a sentiment slot draws a (positive, negative) word for each
# story mood; the rest is neutral.
_MOOD_PROBS = {
    "positive": (0.45, 0.08),
    "negative": (0.08, 0.45),
    "mixed": (0.25, 0.25),
}
_MOODS = ("positive", "negative", "mixed")
_SUBJECT_NAME, _SUBJECT_PRONOUN = 0.35, 0.7  # cumulative: name, pronoun, other people
_NP_ADJECTIVE = 0.6


def _fix_article(text: str) -> str:
    """'a' -> 'an' before a vowel: 'a apple' is a mistake a tiny LM would learn."""
    return " ".join("an" if w == "a" and nxt[0] in "aeiou" else w
                    for w, nxt in zip(text.split(" "), text.split(" ")[1:] + ["."]))


class _Story:
    """State of one story being written: its random stream, protagonist, mood.

    Every choice also adds its log-probability, under each of the three moods,
    to `logp_by_mood`, so the story's exact probability is known
    (`log_prob`): the corpus' entropy, the floor of any LM's loss, follows.
    """

    # Uniforms are drawn from numpy in blocks: one Python-level rng call per
    # word costs more than the rest of the generator together.
    _BLOCK = 128

    def __init__(self, rng: np.random.Generator):
        self._rng = rng
        self._u = rng.random(self._BLOCK).tolist()
        self._next = 0
        self.logp_by_mood = [0.0, 0.0, 0.0]
        self.mood = self.pick(_MOODS, record=False)
        female = self.uniform() < 0.5
        self.name = self.pick(FEMALE_NAMES if female else MALE_NAMES)
        self.pronoun = "she" if female else "he"
        self._add(math.log(0.5))
        self.introduced = False  # No pronoun before the name has appeared.

    def _add(self, logp: float, by_mood=None):
        for m in range(3):
            self.logp_by_mood[m] += logp if by_mood is None else by_mood[m]

    def log_prob(self) -> float:
        """log p(story), the mood marginalised out (uniform prior)."""
        top = max(self.logp_by_mood)
        return top + math.log(sum(math.exp(x - top) for x in self.logp_by_mood) / 3)

    def uniform(self) -> float:
        """The next U[0, 1) draw of this story's stream."""
        if self._next == len(self._u):
            self._u = self._rng.random(self._BLOCK).tolist()
            self._next = 0
        self._next += 1
        return self._u[self._next - 1]

    def pick(self, words: Sequence, record: bool = True):
        """A uniformly chosen element of `words`."""
        w = words[min(int(self.uniform() * len(words)), len(words) - 1)]
        if record:
            self._add(math.log(words.count(w) / len(words)))
        return w

    def polar(self, neutral: Sequence[str], positive: Sequence[str],
              negative: Sequence[str]) -> str:
        """A word whose sentiment is drawn from the story's mood."""
        p_pos, p_neg = _MOOD_PROBS[self.mood]
        u = self.uniform()
        if u < p_pos:
            w, group, which = self.pick(positive, record=False), positive, 0
        elif u < p_pos + p_neg:
            w, group, which = self.pick(negative, record=False), negative, 1
        else:
            w, group, which = self.pick(neutral, record=False), neutral, 2
        share = group.count(w) / len(group)
        self._add(0.0, [math.log(share * ((*_MOOD_PROBS[m], 1 - sum(_MOOD_PROBS[m]))[which]))
                        for m in _MOODS])
        return w

    def subject(self) -> str:
        """The protagonist's name (always first), then name, pronoun or another."""
        u = self.uniform()
        if not self.introduced:
            self.introduced = True
            return self.name
        if u < _SUBJECT_NAME:
            self._add(math.log(_SUBJECT_NAME))
            return self.name
        if u < _SUBJECT_PRONOUN:
            self._add(math.log(_SUBJECT_PRONOUN - _SUBJECT_NAME))
            return self.pronoun
        self._add(math.log(1 - _SUBJECT_PRONOUN))
        return self.pick(PEOPLE)

    def noun_phrase(self) -> str:
        det = self.pick(DETERMINERS)
        if self.uniform() < _NP_ADJECTIVE:
            self._add(math.log(_NP_ADJECTIVE))
            return f"{det} {self.fill('ADJECTIVE')} {self.pick(NOUNS)}"
        self._add(math.log(1 - _NP_ADJECTIVE))
        return f"{det} {self.pick(NOUNS)}"

    def fill(self, item: str) -> str:
        """The text of one template item, drawn left to right."""
        if item == "SUBJECT":
            return self.subject()
        if item == "NP":
            return self.noun_phrase()
        if item in POLAR_SLOTS:
            return self.polar(*POLAR_SLOTS[item])
        if item in PLAIN_SLOTS:
            return self.pick(PLAIN_SLOTS[item])
        return item  # a literal word

    def sentence(self) -> str:
        template = self.pick(TEMPLATES)
        text = " ".join(self.fill(item) for item in template).replace(" ,", ",")
        text = _fix_article(text)
        return text[0].upper() + text[1:] + "."


def _story(seed: int, i: int) -> tuple[str, float]:
    # One generator per document keyed by (seed, i): prefix-stable output.
    story = _Story(np.random.default_rng([seed, i]))
    num_sentences = 3 + min(int(story.uniform() * 5), 4)
    story._add(math.log(1 / 5))
    text = " ".join(story.sentence() for _ in range(num_sentences))
    return text, story.log_prob()


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
    return list(_corpus(num_docs, seed))


@functools.lru_cache(maxsize=8)
def _corpus(num_docs: int, seed: int) -> tuple[str, ...]:
    # Memoised: a sweep opens each run several times in one process, and
    # 40,000 stories take seconds to generate each time.
    return tuple(_story(seed, i)[0] for i in range(num_docs))


def corpus_log_probs(num_docs: int, seed: int) -> tuple[list[str], np.ndarray]:
    """`(docs, logp)`: `generate_corpus(num_docs, seed)` and each story's exact
    log-probability under the generator (nats; the mood marginalised out)."""
    pairs = [_story(seed, i) for i in range(num_docs)]
    return [p[0] for p in pairs], np.asarray([p[1] for p in pairs], np.float64)


def corpus_entropy(tokenizer, num_docs: int = 2000, seed: int = 12345) -> float:
    """The corpus' entropy in nats per token (each story's tokens plus its EOS).

    A Monte-Carlo estimate of E[-log p(story)] / E[tokens per story] from
    `num_docs` fresh stories: the loss of a perfect model of the generator
    that reads whole stories. A language model trained on fixed windows sees
    some stories without their beginning, so its loss stays somewhat above.
    """
    docs, logp = corpus_log_probs(num_docs, seed)
    tokens = sum(len(tokenizer.encode(d, add_special_tokens=False)) + 1 for d in docs)
    return float(-np.sum(logp) / tokens)


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

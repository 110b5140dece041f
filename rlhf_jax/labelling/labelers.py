"""Gold reward functions and labellers.

A *gold* reward is the ground truth a mock experiment optimises against
without telling the policy (Ziegler et al. 2019's mock sentiment task; the
"true reward" of Stiennon et al. 2020 Fig. 5). Three are provided:

* `WorldGold`: the offline default's gold, a judge of the miniature world
  that knows its grammar and every word's sentiment (`data.grammar`): each
  complete, grammatical sentence scores the sum of its words' valences;
  every broken or unfinished sentence scores `-ungrammatical_penalty`. Dense
  like Ziegler's classifier log-odds, and degenerate text scores low, as a
  person would judge it.
* `VaderGold`: the VADER sentiment lexicon's compound score in [-1, 1], from
  the `vaderSentiment` package, on text. No one here wrote it, which is the
  point of a gold reward.
* `TokenFractionGold`: the fraction of response tokens in a target set, on
  token ids; cheap and exact, for tests.

A *labeller* answers label requests: N queries, each with K candidate
responses (token ids, and decoded text for labellers that read). The
protocol is one method, `label(request) -> Labels`, so a labeller's answers
go straight to the reward trainer or to `write_labels_jsonl`. `MockLabeler`
answers from a gold reward; `rlhf_jax.labelling.label_server.HumanQueue` implements the
same protocol with people (items posted to the label server's database, the
call waits for their answers); the online loop (`rlhf_jax.stages.online`) uses either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Callable, NamedTuple, Optional, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.data import grammar
from rlhf_jax.data.labels import Labels, parse_label_type
from rlhf_jax.labelling import summary_judge


@dataclasses.dataclass(frozen=True, eq=False)
class LabelRequest:
    """N queries with K responses each, to be labelled.

    Token arrays are padded as in `Labels` (queries left, responses right,
    int32 0/1 masks). Pass the responses exactly as they should be judged:
    for Ziegler's tasks that is the post-processed (truncated) response.

    Attributes:
      query_NxQ, query_mask_NxQ: query ids and mask.
      responses_NxKxR, response_mask_NxKxR: response ids and mask.
      pad_token: the pad id.
      query_text_N: decoded queries, or None when no labeller needs text.
      response_text_NxK: decoded responses (a tuple of K-tuples), or None.
    """

    query_NxQ: np.ndarray
    query_mask_NxQ: np.ndarray
    responses_NxKxR: np.ndarray
    response_mask_NxKxR: np.ndarray
    pad_token: int
    query_text_N: Optional[tuple[str, ...]] = None
    response_text_NxK: Optional[tuple[tuple[str, ...], ...]] = None

    def __post_init__(self):
        for name in ("query_NxQ", "query_mask_NxQ", "responses_NxKxR",
                     "response_mask_NxKxR"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.int32))
        n = self.query_NxQ.shape[0]
        if (self.query_NxQ.ndim != 2 or self.responses_NxKxR.ndim != 3
                or self.responses_NxKxR.shape[0] != n
                or self.query_mask_NxQ.shape != self.query_NxQ.shape
                or self.response_mask_NxKxR.shape != self.responses_NxKxR.shape):
            raise ValueError(
                f"LabelRequest: shapes query {self.query_NxQ.shape} (mask "
                f"{self.query_mask_NxQ.shape}), responses {self.responses_NxKxR.shape} "
                f"(mask {self.response_mask_NxKxR.shape}) are not [N,Q] and [N,K,R]")
        k = self.responses_NxKxR.shape[1]
        if self.query_text_N is not None:
            object.__setattr__(self, "query_text_N", tuple(self.query_text_N))
            if len(self.query_text_N) != n:
                raise ValueError(f"LabelRequest: field 'query_text_N' has "
                                 f"{len(self.query_text_N)} texts, expected N={n}")
        if self.response_text_NxK is not None:
            texts = tuple(tuple(row) for row in self.response_text_NxK)
            object.__setattr__(self, "response_text_NxK", texts)
            if len(texts) != n or any(len(row) != k for row in texts):
                raise ValueError(f"LabelRequest: field 'response_text_NxK' is not "
                                 f"N={n} rows of K={k} texts")

    def __len__(self) -> int:
        return self.query_NxQ.shape[0]

    @classmethod
    def from_tokens(cls, query_NxQ, query_mask_NxQ, responses_NxKxR, response_mask_NxKxR,
                    *, pad_token: int,
                    decode: Optional[Callable[[list[int]], str]] = None) -> "LabelRequest":
        """A request from padded token arrays, with texts from `decode` if given.

        `decode` maps a list of (unpadded) ids to text, e.g. a Hugging Face
        tokenizer's `decode`.
        """
        q = np.asarray(query_NxQ)
        qm = np.asarray(query_mask_NxQ)
        r = np.asarray(responses_NxKxR)
        rm = np.asarray(response_mask_NxKxR)
        query_text = response_text = None
        if decode is not None:
            query_text = tuple(decode(row[m == 1].tolist()) for row, m in zip(q, qm))
            response_text = tuple(
                tuple(decode(row[m == 1].tolist()) for row, m in zip(rows, ms))
                for rows, ms in zip(r, rm))
        return cls(q, qm, r, rm, pad_token, query_text, response_text)


class Gold(Protocol):
    """A gold reward: higher is better."""

    def rewards(self, request: LabelRequest) -> np.ndarray:
        """float32 [N, K]: the gold reward of each response of `request`."""
        ...


# --------------------------------------------------------------------------
# Gold rewards.

_EOS_TEXT = "<|endoftext|>"


class Sentence(NamedTuple):
    """One sentence of a response as the world's judge reads it.

    `start`/`end` are character offsets of the sentence's words (the final '.'
    excluded); `complete`: it ends with '.'; `grammatical`: complete and a
    sentence of the world's grammar; `bad_from`: character offset where it
    stops being English (`end` when grammatical); `score`: its gold.
    """

    start: int
    end: int
    complete: bool
    grammatical: bool
    bad_from: int
    score: float


class WorldGold:
    """The miniature world's gold reward on response text (higher is better).

    gold(text) = sum over its sentences of: the sum of the words' valences
    (`grammar.valence`) if the sentence is complete and grammatical, else
    `-ungrammatical_penalty`. A response with no words scores
    `-ungrammatical_penalty`. `<|endoftext|>` ends a sentence like '.', but a
    sentence cut short by it is unfinished.
    """

    def __init__(self, ungrammatical_penalty: float = 1.0):
        if not ungrammatical_penalty >= 0:
            raise ValueError(f"WorldGold: ungrammatical_penalty={ungrammatical_penalty} "
                             "must be >= 0")
        self.penalty = float(ungrammatical_penalty)

    def sentences(self, text: str) -> list[Sentence]:
        """The sentences of `text`, each judged."""
        text = text.replace(_EOS_TEXT, "\n" * len(_EOS_TEXT))  # a boundary, same offsets
        out = []
        for m in re.finditer(r"[^.\n]+[.]?|[.]", text):
            piece = m.group()
            complete = piece.endswith(".")
            body_end = m.end() - (1 if complete else 0)
            spans = [(w.start() + m.start(), w.end() + m.start(), w.group().lower())
                     for w in grammar.WORD_RE.finditer(piece[:body_end - m.start()])]
            if not spans and not complete:
                continue  # whitespace between sentences
            ws = [w for _, _, w in spans]
            parse = grammar.parse(ws)
            ok = complete and parse.derivations > 0
            start = spans[0][0] if spans else m.start()
            end = spans[-1][1] if spans else m.start()
            if ok:
                bad_from, score = end, sum(grammar.valence(w) for w in ws)
            else:
                bad_from = spans[parse.prefix][0] if parse.prefix < len(spans) else (
                    start if not complete else end)
                score = -self.penalty
            out.append(Sentence(start, end, complete, ok, bad_from, float(score)))
        return out

    def score(self, text: str) -> float:
        sentences = self.sentences(text)
        return sum(s.score for s in sentences) if sentences else -self.penalty

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts)] gold scores."""
        if isinstance(texts, str):
            raise ValueError("WorldGold: expected a list of strings, got one string")
        return np.asarray([self.score(t) for t in texts], np.float32).reshape(len(texts))

    def rewards(self, request: LabelRequest) -> np.ndarray:
        if request.response_text_NxK is None:
            raise ValueError("WorldGold: the request carries no text; build it with "
                             "LabelRequest.from_tokens(..., decode=tokenizer.decode)")
        n, k = request.responses_NxKxR.shape[:2]
        return self([t for row in request.response_text_NxK for t in row]).reshape(n, k)

    def bad_spans(self, text: str) -> list[tuple[int, int, str]]:
        """Character spans that lower the gold: `(start, end, kind)`.

        kind "negative": a negative word in a grammatical sentence;
        "ungrammatical": from where a sentence stops being English to its end
        (an unfinished sentence: all of it).
        """
        out = []
        for s in self.sentences(text):
            if s.grammatical:
                out.extend((w.start() + s.start, w.end() + s.start, "negative")
                           for w in grammar.WORD_RE.finditer(text[s.start:s.end])
                           if grammar.valence(w.group().lower()) <= -0.5)
            else:
                out.append((s.bad_from, max(s.end, s.bad_from + 1), "ungrammatical"))
        return out


class VaderGold:
    """VADER compound sentiment in [-1, 1] (positive text scores higher).

    The analyser loads its lexicon once, on construction. Scores the response
    text alone by default (what the policy writes); `include_query=True`
    scores query + response.
    """

    def __init__(self, include_query: bool = False):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()
        self.include_query = include_query

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts)] compound scores."""
        if isinstance(texts, str):
            raise ValueError("VaderGold: expected a list of strings, got one string")
        return np.asarray([self._analyzer.polarity_scores(t)["compound"] for t in texts],
                          dtype=np.float32).reshape(len(texts))

    def rewards(self, request: LabelRequest) -> np.ndarray:
        if request.response_text_NxK is None or (
                self.include_query and request.query_text_N is None):
            raise ValueError("VaderGold: the request carries no text; build it with "
                             "LabelRequest.from_tokens(..., decode=tokenizer.decode)")
        n, k = request.responses_NxKxR.shape[:2]
        texts = [(request.query_text_N[i] if self.include_query else "") + t
                 for i, row in enumerate(request.response_text_NxK) for t in row]
        return self(texts).reshape(n, k)


SUMMARY_GOLDS = {"summary": summary_judge.SummaryJudge,
                 "summary_accuracy": summary_judge.AccuracyJudge,
                 "summary_facts": summary_judge.FactsJudge,
                 "summary_skim": summary_judge.SkimJudge}
GOLDS = ("world", "vader") + tuple(SUMMARY_GOLDS)


def make_gold(name: str, *, ungrammatical_penalty: float = 1.0):
    """The gold reward a config names (`labels.gold`): "world", "vader", or the
    summarisation world's judges "summary", "summary_accuracy", "summary_facts"
    and "summary_skim" (`summary_judge`, which reads the query too)."""
    if name == "world":
        return WorldGold(ungrammatical_penalty)
    if name == "vader":
        return VaderGold()
    if name in SUMMARY_GOLDS:
        return SUMMARY_GOLDS[name]()
    raise ValueError(f"labels.gold={name!r}: expected one of {GOLDS}")


def token_fraction(tokens_BxR: jax.Array, mask_BxR: jax.Array,
                   target_ids_T: jax.Array) -> jax.Array:
    """Fraction of the masked-in tokens of each row that are in `target_ids_T`.

    Pure and jit-safe. A row with no tokens scores 0.
    """
    hit_BxR = jnp.any(tokens_BxR[..., None] == target_ids_T, axis=-1)
    m_BxR = mask_BxR.astype(jnp.float32)
    count_B = jnp.sum(m_BxR, axis=-1)
    return jnp.sum(hit_BxR * m_BxR, axis=-1) / jnp.maximum(count_B, 1.0)


_token_fraction_jit = jax.jit(token_fraction)


class TokenFractionGold:
    """Gold = fraction of response tokens whose id is in `target_ids` (tests)."""

    def __init__(self, target_ids: Sequence[int]):
        ids = np.unique(np.asarray(list(target_ids), dtype=np.int32))
        if ids.size == 0:
            raise ValueError("TokenFractionGold: target_ids is empty")
        self.target_ids = ids

    def __call__(self, tokens_BxR, mask_BxR=None) -> np.ndarray:
        """float32 [B]; `mask_BxR` None counts every token."""
        tokens_BxR = np.asarray(tokens_BxR, dtype=np.int32)
        if mask_BxR is None:
            mask_BxR = np.ones_like(tokens_BxR)
        return np.asarray(_token_fraction_jit(tokens_BxR, np.asarray(mask_BxR),
                                              self.target_ids), dtype=np.float32)

    def rewards(self, request: LabelRequest) -> np.ndarray:
        n, k, r = request.responses_NxKxR.shape
        return self(request.responses_NxKxR.reshape(n * k, r),
                    request.response_mask_NxKxR.reshape(n * k, r)).reshape(n, k)


# --------------------------------------------------------------------------
# Mock labeller.


def _record_rng(seed: int, request: LabelRequest, i: int) -> np.random.Generator:
    """A generator keyed by (seed, record i's tokens).

    Keying on content, not on a call counter, makes a record's label
    independent of batching, order and restarts: relabelling the same samples
    after a resume gives the same answers.
    """
    h = hashlib.blake2b(digest_size=16)
    for row, m in [(request.query_NxQ[i], request.query_mask_NxQ[i])] + list(
            zip(request.responses_NxKxR[i], request.response_mask_NxKxR[i])):
        tokens = row[m == 1].astype("<i4")
        h.update(len(tokens).to_bytes(4, "little"))
        h.update(tokens.tobytes())
    words = np.frombuffer(h.digest(), dtype="<u4")
    return np.random.default_rng([seed, *words.tolist()])


class MockLabeler:
    """Labels from a gold reward, optionally noisy (Ziegler's mock labels).

    best_of_n / pairwise: with `noise=0` the answer is the argmax of the gold
    reward, ties broken uniformly at random. With `noise > 0` the labeller is
    Boltzmann-rational: it picks response j with probability
    `softmax(gold / noise)_j` (for K=2 this is Bradley-Terry with temperature
    `noise`), so small gold gaps are labelled nearly at random and large ones
    reliably.
    scalar_rating: `score = gold_0 + noise * N(0, 1)`.
    scalar_compare: `difference = gold_1 - gold_0 + noise * N(0, 1)`.

    Randomness is keyed by (seed, the record's tokens): deterministic, and the
    same whatever the batching. The returned Labels keep the gold rewards
    (`gold_NxK`) and name the labeller (`labeler_N`).

    Args:
      gold: a `Gold` (e.g. VaderGold, TokenFractionGold).
      label_type: best_of_n, best_of_<K>, pairwise, scalar_rating or scalar_compare.
      noise: temperature (best/pairwise) or Gaussian std (scalar types), >= 0.
      seed: base seed.
      name: written to `labeler_N`.
    """

    def __init__(self, gold: Gold, label_type: str = "best_of_n", noise: float = 0.0,
                 seed: int = 0, name: str = "mock"):
        self.label_type, self._k = parse_label_type(label_type)
        if not noise >= 0:
            raise ValueError(f"MockLabeler: noise={noise} must be >= 0")
        self.gold = gold
        self.noise = float(noise)
        self.seed = int(seed)
        self.name = name

    def _answer(self, gold_K: np.ndarray, rng: np.random.Generator):
        if self.label_type == "scalar_rating":
            return np.float32(gold_K[0] + self.noise * rng.standard_normal())
        if self.label_type == "scalar_compare":
            return np.float32(gold_K[1] - gold_K[0] + self.noise * rng.standard_normal())
        if self.noise > 0:
            # Gumbel-max: argmax(g / noise + Gumbel) ~ softmax(g / noise).
            return int(np.argmax(gold_K.astype(np.float64) / self.noise
                                 + rng.gumbel(size=gold_K.shape)))
        ties = np.flatnonzero(gold_K == gold_K.max())
        return int(ties[rng.integers(len(ties))]) if len(ties) > 1 else int(ties[0])

    def label(self, request: LabelRequest) -> Labels:
        """Labels for `request`, answered from the gold reward."""
        n, k = request.responses_NxKxR.shape[:2]
        if self._k is not None and k != self._k:
            raise ValueError(f"MockLabeler: request has K={k} responses per query, "
                             f"{self.label_type} needs K={self._k}")
        gold_NxK = np.asarray(self.gold.rewards(request), dtype=np.float32)
        if gold_NxK.shape != (n, k):
            raise ValueError(f"MockLabeler: gold rewards have shape {gold_NxK.shape}, "
                             f"expected ({n}, {k})")
        answers = [self._answer(gold_NxK[i], _record_rng(self.seed, request, i))
                   for i in range(n)]
        target = {"best_of_n": "best_N", "pairwise": "best_N", "scalar_rating": "score_N",
                  "scalar_compare": "difference_N"}[self.label_type]
        return Labels(
            label_type=self.label_type,
            query_NxQ=request.query_NxQ,
            query_mask_NxQ=request.query_mask_NxQ,
            responses_NxKxR=request.responses_NxKxR,
            response_mask_NxKxR=request.response_mask_NxKxR,
            pad_token=request.pad_token,
            gold_NxK=gold_NxK,
            labeler_N=np.asarray([self.name] * n, dtype=np.str_),
            **{target: np.asarray(answers)},
        )

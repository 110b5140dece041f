"""Token span marks: which response tokens lower the gold ("Portland, the capitol of France").

People mark wrong tokens in the label server; in the miniature world the gold
reward is word-level, so a mock labeller can mark them too. This module holds
that mock span labeller and the held-out judge built on the same marks.

* A *span source* is anything with `bad_spans(text) -> [(char_start,
  char_end, kind)]`: the character ranges of the words that lower the gold,
  `kind` in `KINDS`. The miniature world's gold (`labelers.WorldGold`,
  `labels.gold=world`) provides it: its negative words and the stretch of a
  sentence from where it stops being grammatical. For the VADER gold,
  `VaderSpans` marks the words VADER's lexicon gives a negative valence.
* `token_offsets` maps a response's token ids to character ranges of its
  decoded text (the offsets of the tokenizer that decodes it), and
  `data.labels.char_spans_to_mask` maps the spans onto tokens: a token is
  marked when its characters overlap a bad span.
* `SpanLabeler` marks every response of a label set (`Labels.span_mask_NxKxR`,
  written to the label files as `spans`), with a noise switch: each bad span
  is missed with probability `miss`, each other token is marked anyway with
  probability `flip`. Draws are keyed by (seed, the response's tokens), so a
  response gets the same marks however the labels are batched or resumed,
  and another seed is another labeller's draw.
* `JudgeGold` is the held-out evaluator (the papers' policies were judged by
  the labellers who trained them): the gold minus a weight per marked word
  of each kind, answered through `MockLabeler` with its own noise and seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np

from rlhf_jax.data.labels import Labels, char_spans_to_mask
from rlhf_jax.labelling.labelers import LabelRequest, MockLabeler, VaderGold, make_gold

KINDS = ("negative", "ungrammatical")
Span = tuple[int, int, str]


class SpanSource(Protocol):
    """The words of a text that lower the gold, as character ranges."""

    def bad_spans(self, text: str) -> list[Span]:
        ...


class VaderSpans(VaderGold):
    """The VADER gold, which also marks the words its lexicon scores negative
    (kind "negative"): a gold with `__call__`, `rewards` and `bad_spans`.

    VADER's compound score is a normalised sum of word valences (with
    boosters and negation rules on top); a word of negative valence is the
    word-level part of it that lowers the score.
    """

    _WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")

    def __init__(self):
        super().__init__()
        self.lexicon = self._analyzer.lexicon

    def bad_spans(self, text: str) -> list[Span]:
        return [(m.start(), m.end(), "negative") for m in self._WORD.finditer(text)
                if self.lexicon.get(m.group().lower(), 0.0) < 0]


def span_source(cfg) -> SpanSource:
    """The gold `labels.gold` names, with its word-level spans: the miniature
    world's `WorldGold` (negative words, ungrammatical stretches) or
    `VaderSpans`; ValueError naming the field for a gold without spans."""
    gold = cfg.labels.gold
    if gold == "world":
        return make_gold("world", ungrammatical_penalty=cfg.labels.ungrammatical_penalty)
    if gold == "vader":
        return VaderSpans()
    raise ValueError(f"labels.gold={gold!r} has no word-level spans (span marks need 'world' "
                     "or 'vader')")


def token_offsets(ids: Sequence[int], decode: Callable[[list[int]], str]) -> np.ndarray:
    """int64 [len(ids), 2]: each token's `[start, end)` range in `decode(ids)`.

    Token i covers the characters that `decode(ids[:i+1])` adds to
    `decode(ids[:i])`, counted on their common prefix with the full text (a
    decoder that rewrites earlier characters, e.g. a partial UTF-8 sequence,
    then gives the rewritten token an empty range rather than a wrong one).
    """
    ids = [int(t) for t in ids]
    full = decode(ids)
    out = np.zeros((len(ids), 2), np.int64)
    prev = 0
    for i in range(len(ids)):
        prefix = decode(ids[:i + 1])
        n = 0
        limit = min(len(prefix), len(full))
        while n < limit and prefix[n] == full[n]:
            n += 1
        end = max(n, prev)
        out[i] = (prev, end)
        prev = end
    return out


def _response_rng(seed: int, tokens: np.ndarray) -> np.random.Generator:
    h = hashlib.blake2b(np.asarray(tokens, "<i4").tobytes(), digest_size=16)
    return np.random.default_rng([seed, *np.frombuffer(h.digest(), "<u4").tolist()])


@dataclasses.dataclass(frozen=True)
class SpanLabeler:
    """Marks the tokens that lower the gold in every response, optionally noisy.

    Attributes:
      source: the span source (`VaderSpans`, or the world's gold).
      decode: token ids -> text, as the gold reads responses.
      kinds: which kinds of bad span are marked.
      miss: probability that a bad span goes unmarked.
      flip: probability that a token outside every bad span is marked.
      seed: the labeller's noise draw.
    """

    source: SpanSource
    decode: Callable[[list[int]], str]
    kinds: tuple[str, ...] = KINDS
    miss: float = 0.0
    flip: float = 0.0
    seed: int = 0

    def __post_init__(self):
        for name in ("miss", "flip"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"labels.spans.{name}={p} must lie in [0, 1]")
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"labels.spans.kinds: unknown kind(s) {sorted(unknown)}; known "
                             f"{KINDS}")

    def mark(self, tokens: Sequence[int], length: int) -> np.ndarray:
        """int32 [length]: the marks of one response (its real tokens, unpadded)."""
        tokens = np.asarray(tokens, np.int32)
        rng = _response_rng(self.seed, tokens)
        text = self.decode(tokens.tolist())
        spans = [s for s in self.source.bad_spans(text) if s[2] in self.kinds]
        kept = [s for s, u in zip(spans, rng.random(len(spans))) if u >= self.miss]
        offsets = token_offsets(tokens, self.decode)
        mask = char_spans_to_mask(offsets, kept, length)
        false = (rng.random(length) < self.flip) & (np.arange(length) < len(tokens))
        return np.where(false, 1, mask).astype(np.int32)

    def annotate(self, labels: Labels) -> Labels:
        """`labels` with `span_mask_NxKxR` set from this labeller's marks."""
        r, m = labels.responses_NxKxR, labels.response_mask_NxKxR
        length = r.shape[2]
        marks = np.asarray([[self.mark(r[i, j][m[i, j] == 1], length)
                             for j in range(r.shape[1])] for i in range(len(labels))],
                           np.int32).reshape(r.shape)
        return dataclasses.replace(labels, span_mask_NxKxR=marks)


def bad_word_counts(source: SpanSource, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Per kind, float32 [len(texts)]: how many bad spans of that kind each text has."""
    counts = {k: np.zeros(len(texts), np.float32) for k in KINDS}
    for i, t in enumerate(texts):
        for _, _, kind in source.bad_spans(t):
            counts[kind][i] += 1
    return counts


class JudgeGold:
    """The held-out evaluator's reward: `gold(text) - sum_kind weight_kind * count_kind(text)`.

    A different weighting of the same world than the training labeller's
    (the gold alone); `MockLabeler(JudgeGold(...), noise=..., seed=...)`
    answers with its own noise draw. Implements the `labelers.Gold` protocol.
    """

    def __init__(self, gold: Callable[[Sequence[str]], np.ndarray], source: SpanSource,
                 weights: Mapping[str, float]):
        unknown = set(weights) - set(KINDS)
        if unknown:
            raise ValueError(f"eval.judge: unknown span kind(s) {sorted(unknown)}")
        self.gold, self.source, self.weights = gold, source, dict(weights)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        out = np.asarray(self.gold(texts), np.float32).reshape(len(texts))
        if any(self.weights.values()):
            counts = bad_word_counts(self.source, texts)
            for kind, w in self.weights.items():
                out = out - np.float32(w) * counts[kind]
        return out

    def rewards(self, request) -> np.ndarray:
        if request.response_text_NxK is None:
            raise ValueError("JudgeGold: the request carries no text; build it with "
                             "LabelRequest.from_tokens(..., decode=...)")
        n, k = request.responses_NxKxR.shape[:2]
        return self([t for row in request.response_text_NxK for t in row]).reshape(n, k)


def labeler_for_config(cfg, decode: Callable[[list[int]], str]) -> SpanLabeler:
    """The mock span labeller `labels.spans` describes, on `labels.gold`'s span source."""
    sp = cfg.labels.spans
    kinds = tuple(k.strip() for k in sp.kinds.split(",") if k.strip())
    return SpanLabeler(span_source(cfg), decode, kinds=kinds, miss=sp.miss,
                       flip=sp.flip, seed=sp.seed)


def mark_unmarked(cfg, decode: Callable[[list[int]], str], labels: Labels | None):
    """`labels` marked by the config's mock span labeller unless they carry marks
    already (people's, from a label file); None stays None."""
    if labels is None or labels.span_mask_NxKxR is not None:
        return labels
    return labeler_for_config(cfg, decode).annotate(labels)


def judge_for_config(cfg) -> MockLabeler:
    """The held-out pairwise labeller `eval.judge` describes (module doc)."""
    j = cfg.eval.judge
    world = span_source(cfg)
    gold = JudgeGold(world, world, {"negative": j.weight_negative,
                                    "ungrammatical": j.weight_ungrammatical})
    return MockLabeler(gold, label_type="pairwise", noise=j.noise, seed=j.seed, name="judge")


def judge_winrates(judge: MockLabeler, decode, query_NxQ, query_mask_NxQ, baseline, policies,
                   pad_token: int) -> dict[str, dict[str, float]]:
    """Per policy, how often the judge prefers its response to the baseline's for
    the same query (`judge_winrate`), and the judge's mean reward of its
    responses (`judge_score`). `baseline` and each of `policies` are
    `(responses_NxR, mask_NxR)` as the gold reads them (post-processed)."""
    out = {}
    for name, (resp_NxR, mask_NxR) in policies.items():
        request = LabelRequest.from_tokens(
            query_NxQ, query_mask_NxQ, np.stack([baseline[0], resp_NxR], 1),
            np.stack([baseline[1], mask_NxR], 1), pad_token=pad_token, decode=decode)
        labels = judge.label(request)
        out[name] = {"judge_winrate": float(np.mean(labels.best_N == 1)),
                     "judge_score": float(np.mean(labels.gold_NxK[:, 1]))}
    return out

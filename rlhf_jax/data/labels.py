"""Label sets for reward-model training: `Labels`, the in-memory form the reward
trainer consumes (N queries, each with K responses and one answer per query),
the label types and the span-mask conversions. The files labels come from:
`label_files`.

Padding: queries are LEFT-padded and responses RIGHT-padded with `pad_token`,
a token outside the vocabulary (docs/implementation_details.md item 2); masks are
int32 0/1, as `rlhf_jax.data.tasks.pad_left` makes them.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional, Sequence

import numpy as np


# The kinds of answer a label holds (Labels.label_type).
LABEL_TYPES = ("best_of_n", "pairwise", "scalar_rating", "scalar_compare")
# LHP's pad id for GPT-2 (outside the 50257-token vocabulary).
LHP_PAD_TOKEN = 50259

_BEST_OF_RE = re.compile(r"best_of_(\d+)")
_FIXED_K = {"pairwise": 2, "scalar_rating": 1, "scalar_compare": 2}
# The answer field each label type carries.
TARGET_FIELD = {"best_of_n": "best_N", "pairwise": "best_N",
                 "scalar_rating": "score_N", "scalar_compare": "difference_N"}


def parse_label_type(label_type: str) -> tuple[str, Optional[int]]:
    """Splits a config label type into (kind, K), K None when not fixed.

    `best_of_4` -> (`best_of_n`, 4) (Ziegler, and LHP file names);
    `best_of_n` -> (`best_of_n`, None); `pairwise` -> (`pairwise`, 2);
    `scalar_rating` -> (`scalar_rating`, 1); `scalar_compare` -> (`scalar_compare`, 2).
    """
    m = _BEST_OF_RE.fullmatch(label_type) if isinstance(label_type, str) else None
    if m:
        k = int(m.group(1))
        if k < 2:
            raise ValueError(f"label_type={label_type!r}: best_of_N needs N >= 2")
        return "best_of_n", k
    if label_type == "best_of_n":
        return "best_of_n", None
    if label_type in _FIXED_K:
        return label_type, _FIXED_K[label_type]
    raise ValueError(f"label_type={label_type!r} is not one of best_of_<N>, best_of_n, "
                     "pairwise, scalar_rating, scalar_compare")


def _readonly(x: np.ndarray) -> np.ndarray:
    x = np.array(x, copy=True)
    x.flags.writeable = False
    return x


@dataclasses.dataclass(frozen=True, eq=False)
class Labels:
    """N labelled queries with K responses each, padded to fixed shapes.

    Attributes:
      label_type: one of LABEL_TYPES.
      query_NxQ: int32 query ids, LEFT-padded with `pad_token`.
      query_mask_NxQ: int32, 1 on query tokens, 0 on pads.
      responses_NxKxR: int32 response ids, RIGHT-padded with `pad_token`.
      response_mask_NxKxR: int32, 1 on response tokens, 0 on pads.
      pad_token: the pad id (outside the vocabulary).
      best_N: int32 index of the preferred response (best_of_n, pairwise:
        the chosen one of K=2), else None.
      score_N: float32 rating of the single response (scalar_rating, K=1).
      difference_N: float32 target for r(response 1) - r(response 0)
        (scalar_compare, K=2).
      gold_NxK: float32 gold rewards of the responses (mock labels), or None.
      labeler_N: str name of who labelled each record ('' if unknown), or None.
      span_mask_NxKxR: int32 1 on response tokens marked as wrong (span
        marks), 0 elsewhere and on padding; None when the labels carry no
        marks (an all-zero row means "looked, found nothing").

    Arrays are copied and made read-only on construction. Every query and
    response has at least one token. `subset` and `concatenate` build new sets.
    """

    label_type: str
    query_NxQ: np.ndarray
    query_mask_NxQ: np.ndarray
    responses_NxKxR: np.ndarray
    response_mask_NxKxR: np.ndarray
    pad_token: int
    best_N: Optional[np.ndarray] = None
    score_N: Optional[np.ndarray] = None
    difference_N: Optional[np.ndarray] = None
    gold_NxK: Optional[np.ndarray] = None
    labeler_N: Optional[np.ndarray] = None
    span_mask_NxKxR: Optional[np.ndarray] = None

    def __post_init__(self):
        def bad(field, why):
            return ValueError(f"Labels: field '{field}' {why}")

        if self.label_type not in LABEL_TYPES:
            raise bad("label_type", f"={self.label_type!r} is not one of {LABEL_TYPES}")
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        int_fields = ("query_NxQ", "query_mask_NxQ", "responses_NxKxR",
                      "response_mask_NxKxR", "best_N", "span_mask_NxKxR")
        for name in int_fields:
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value)
                if value.size and not (np.issubdtype(value.dtype, np.integer)
                                       or value.dtype == np.bool_):
                    raise bad(name, f"must hold integers, got dtype {value.dtype}")
                set_(name, _readonly(value.astype(np.int32)))
        for name in ("score_N", "difference_N", "gold_NxK"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype=np.float32)
                if not np.all(np.isfinite(value)):
                    raise bad(name, "holds a non-finite value")
                set_(name, _readonly(value))
        if self.labeler_N is not None:
            set_("labeler_N", _readonly(np.asarray(self.labeler_N, dtype=np.str_)))
        set_("pad_token", int(self.pad_token))

        q, qm = self.query_NxQ, self.query_mask_NxQ
        r, rm = self.responses_NxKxR, self.response_mask_NxKxR
        if q.ndim != 2 or qm.shape != q.shape:
            raise bad("query_mask_NxQ", f"shape {qm.shape} must equal query_NxQ's "
                      f"{q.shape}, which must be 2-D")
        n = q.shape[0]
        if r.ndim != 3 or rm.shape != r.shape or r.shape[0] != n:
            raise bad("responses_NxKxR", f"shape {r.shape} (mask {rm.shape}) must be "
                      f"[N={n}, K, R] with an equal mask")
        k = r.shape[1]
        fixed_k = _FIXED_K.get(self.label_type)
        if (fixed_k is not None and k != fixed_k) or k < 1 or (
                self.label_type == "best_of_n" and k < 2):
            raise bad("responses_NxKxR", f"has K={k} responses per query, "
                      f"{self.label_type} needs K={fixed_k or '>=2'}")
        for name in ("query_mask_NxQ", "response_mask_NxKxR"):
            if np.any((getattr(self, name) != 0) & (getattr(self, name) != 1)):
                raise bad(name, "must hold only 0 and 1")
        # Left padding: the query mask never drops from 1 to 0 along Q; right
        # padding: the response mask never rises from 0 to 1 along R.
        if np.any(np.diff(qm, axis=-1) < 0):
            raise bad("query_mask_NxQ", "is not left padding (a pad follows a token)")
        if np.any(np.diff(rm, axis=-1) > 0):
            raise bad("response_mask_NxKxR", "is not right padding (a token follows a pad)")
        if np.any((q == self.pad_token) != (qm == 0)):
            raise bad("query_NxQ", f"must hold the pad {self.pad_token} exactly where "
                      "query_mask_NxQ is 0")
        if np.any((r == self.pad_token) != (rm == 0)):
            raise bad("responses_NxKxR", f"must hold the pad {self.pad_token} exactly "
                      "where response_mask_NxKxR is 0")
        if n and (qm.sum(-1).min() == 0 or rm.sum(-1).min() == 0):
            raise bad("query_mask_NxQ" if qm.sum(-1).min() == 0 else "response_mask_NxKxR",
                      "has an empty (all-pad) sequence")

        target = TARGET_FIELD[self.label_type]
        for name in ("best_N", "score_N", "difference_N"):
            value = getattr(self, name)
            if name == target and value is None:
                raise bad(name, f"is required for label_type {self.label_type}")
            if name != target and value is not None:
                raise bad(name, f"must be None for label_type {self.label_type}")
        answer = getattr(self, target)
        if answer.shape != (n,):
            raise bad(target, f"shape {answer.shape} must be (N={n},)")
        if target == "best_N" and n and (answer.min() < 0 or answer.max() >= k):
            raise bad("best_N", f"holds {int(answer.min())}..{int(answer.max())}, "
                      f"out of range [0, K={k})")
        if self.gold_NxK is not None and self.gold_NxK.shape != (n, k):
            raise bad("gold_NxK", f"shape {self.gold_NxK.shape} must be (N={n}, K={k})")
        if self.labeler_N is not None and self.labeler_N.shape != (n,):
            raise bad("labeler_N", f"shape {self.labeler_N.shape} must be (N={n},)")
        sm = self.span_mask_NxKxR
        if sm is not None:
            if sm.shape != r.shape:
                raise bad("span_mask_NxKxR", f"shape {sm.shape} must equal responses_NxKxR's "
                          f"{r.shape}")
            if np.any((sm != 0) & (sm != 1)):
                raise bad("span_mask_NxKxR", "must hold only 0 and 1")
            if np.any((sm == 1) & (rm == 0)):
                raise bad("span_mask_NxKxR", "marks a padding position")

    def __len__(self) -> int:
        return self.query_NxQ.shape[0]

    @property
    def num_responses(self) -> int:
        """K, the responses per query."""
        return self.responses_NxKxR.shape[1]

    def _array_fields(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)
                if f.name not in ("label_type", "pad_token")
                and getattr(self, f.name) is not None]

    def subset(self, indices) -> "Labels":
        """The records at `indices` (ints, any order, repeats allowed), as new Labels."""
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise ValueError(f"Labels.subset: indices must be a 1-D integer array, "
                             f"got shape {idx.shape} dtype {idx.dtype}")
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise ValueError(f"Labels.subset: index out of range for {len(self)} records")
        return dataclasses.replace(
            self, **{name: getattr(self, name)[idx] for name in self._array_fields()})

    @staticmethod
    def concatenate(parts: Sequence["Labels"]) -> "Labels":
        """Joins label sets with the same type, shapes, pad and optional fields."""
        if not parts:
            raise ValueError("Labels.concatenate: no label sets given")
        first = parts[0]
        for i, p in enumerate(parts[1:], start=1):
            if (p.label_type != first.label_type or p.pad_token != first.pad_token
                    or p.query_NxQ.shape[1:] != first.query_NxQ.shape[1:]
                    or p.responses_NxKxR.shape[1:] != first.responses_NxKxR.shape[1:]
                    or p._array_fields() != first._array_fields()):
                raise ValueError(f"Labels.concatenate: part {i} differs from part 0 in "
                                 "label_type, pad_token, Q, K, R or its optional fields")
        return dataclasses.replace(first, **{
            name: np.concatenate([getattr(p, name) for p in parts])
            for name in first._array_fields()})


def with_references(resp_NxKxR: np.ndarray, reference_NxR: np.ndarray, share: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Responses to label in which a `share` of the records hold their query's
    reference in one slot (drawn uniformly), as Stiennon et al.'s comparisons
    include the dataset's references; returns the responses and the slot of
    the reference per record (-1: none). Records and slots come from `seed`
    alone, so they are the same on every process and relaunch."""
    n, k, r = resp_NxKxR.shape
    if reference_NxR.shape != (n, r):
        raise ValueError(f"references {reference_NxR.shape} do not match responses "
                         f"{resp_NxKxR.shape}")
    rng = np.random.default_rng([seed, 0x5EF])
    chosen_N = rng.random(n) < share
    slot_N = np.where(chosen_N, rng.integers(0, k, n), -1)
    out = np.array(resp_NxKxR)
    rows = np.flatnonzero(chosen_N)
    out[rows, slot_N[rows]] = reference_NxR[rows]
    return out, slot_N


def mask_to_ranges(mask_R) -> list[list[int]]:
    """`[start, end)` ranges of the runs of 1 in a 0/1 token mask (end exclusive)."""
    m = np.concatenate([[0], np.asarray(mask_R, np.int8) != 0, [0]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(m))
    return [[int(a), int(b)] for a, b in zip(edges[0::2], edges[1::2])]


def ranges_to_mask(ranges, length: int) -> np.ndarray:
    """int32 [length] with 1 inside each `[start, end)` range."""
    mask = np.zeros(length, np.int32)
    for a, b in ranges:
        mask[a:b] = 1
    return mask


def char_spans_to_mask(offsets, char_spans, length: int) -> np.ndarray:
    """int32 [length]: 1 on each token whose characters overlap a span.

    `offsets` gives each token's `[start, end)` character range in the text
    (a tokenizer's offset mapping); `char_spans` are `(start, end, ...)`
    character ranges in the same text. A token that renders no characters
    (start == end, e.g. EOS) is never marked; tokens past `len(offsets)`
    (padding) are 0.
    """
    mask = np.zeros(length, np.int32)
    if not len(offsets) or not len(char_spans):
        return mask
    off = np.asarray(offsets, np.int64).reshape(-1, 2)[:length]
    spans = np.asarray([s[:2] for s in char_spans], np.int64).reshape(-1, 2)
    overlap = ((off[:, None, 0] < spans[None, :, 1]) & (spans[None, :, 0] < off[:, None, 1])
               & (off[:, None, 1] > off[:, None, 0]))
    mask[:len(off)] = np.any(overlap, axis=1)
    return mask

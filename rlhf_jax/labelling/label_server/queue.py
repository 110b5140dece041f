"""The human labeller: label requests posted to the label server's database.

`HumanQueue` implements the labeller protocol of `rlhf_jax.labelling.labelers`
(`label(request) -> Labels`), like `MockLabeler`, but people answer: it posts
each query with its K responses as an item to the SQLite file that
`python -m rlhf_jax.labelling.label_server` serves, then waits until every item is
answered or retired, printing how many are outstanding.

Restarts are clean: the batch name ends in a hash of the request's tokens, so
posting the same request again (a relaunched run) finds its items, and the
answers given meanwhile, already there. `should_stop` (e.g. a SIGTERM flag)
ends the wait with `LabelingStopped`; nothing is lost, since the answers live
in the database.
"""

from __future__ import annotations

import hashlib
import time
from typing import Callable, Optional

import numpy as np

from rlhf_jax.data.labels import Labels, parse_label_type
from rlhf_jax.labelling.label_server.db import Item, LabelDB, Response

_POLL_SLICE_S = 0.2  # how often a wait checks `should_stop`


class LabelingStopped(Exception):
    """`should_stop()` turned true while waiting for human labels."""


def request_batch_name(request, name: str = "request") -> str:
    """`<name>:<hash>`, the hash of the request's tokens and masks only."""
    h = hashlib.blake2b(digest_size=12)
    for a in (request.query_NxQ, request.query_mask_NxQ, request.responses_NxKxR,
              request.response_mask_NxKxR):
        a = np.ascontiguousarray(a, dtype="<i4")
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return f"{name}:{h.hexdigest()}"


class HumanQueue:
    """Labels from people, through the label server's database.

    Args:
      db: the label database (a `LabelDB` or its path), as served by
        `python -m rlhf_jax.labelling.label_server --db PATH`.
      label_type: `best_of_<K>`, `best_of_n` or `pairwise` (what a person
        answers: the best response).
      decode: token ids -> text (the tokenizer's decode); each response token
        becomes one piece a labeller can mark as wrong.
      poll_seconds: how often the database is polled while waiting.
      max_skips: an item skipped by this many labellers is retired (left out
        of the returned labels).
      should_stop: polled while waiting; when it returns True the wait ends
        with `LabelingStopped`.
      log: where progress lines go (print).
      log_every_s: the outstanding count is printed when it changes and at
        least this often.
      name: the batch names' prefix (e.g. the run and round), shown by the
        server's `status` and accepted by `export --batch`.
    """

    def __init__(self, db, *, label_type: str, decode: Callable[[list[int]], str],
                 poll_seconds: float = 10.0, max_skips: int = 3,
                 should_stop: Optional[Callable[[], bool]] = None,
                 log: Callable[[str], None] = print, log_every_s: float = 60.0,
                 name: str = "request"):
        self.label_type, self._k = parse_label_type(label_type)
        if self.label_type not in ("best_of_n", "pairwise"):
            raise ValueError(f"HumanQueue: label_type={label_type!r}: people answer best_of_<K> "
                             "or pairwise comparisons")
        if not poll_seconds > 0:
            raise ValueError(f"HumanQueue: poll_seconds={poll_seconds} must be > 0")
        self.db = db if isinstance(db, LabelDB) else LabelDB(db)
        self.decode = decode
        self.poll_seconds = float(poll_seconds)
        self.max_skips = max_skips
        self.should_stop = should_stop or (lambda: False)
        self.log = log
        self.log_every_s = log_every_s
        self.name = name

    def items(self, request) -> list[Item]:
        """The request as database items (texts decoded, one piece per token)."""
        items = []
        for i in range(len(request)):
            q = request.query_NxQ[i][request.query_mask_NxQ[i] == 1].tolist()
            responses = []
            for j, (r, m) in enumerate(zip(request.responses_NxKxR[i],
                                           request.response_mask_NxKxR[i])):
                ids = r[m == 1].tolist()
                text = (request.response_text_NxK[i][j] if request.response_text_NxK is not None
                        else self.decode(ids))
                responses.append(Response(text, tuple(self.decode([t]) for t in ids), tuple(ids)))
            query_text = (request.query_text_N[i] if request.query_text_N is not None
                          else self.decode(q))
            items.append(Item(self.label_type, query_text, tuple(responses),
                              query_tokens=tuple(q)))
        return items

    def post(self, request) -> str:
        """Posts the request's items (idempotent); returns the batch name."""
        n, k = request.responses_NxKxR.shape[:2]
        if self._k is not None and k != self._k:
            raise ValueError(f"HumanQueue: request has K={k} responses per query, "
                             f"{self.label_type} needs K={self._k}")
        batch = request_batch_name(request, self.name)
        self.db.add_items(batch, self.items(request), max_skips=self.max_skips)
        return batch

    def wait(self, batch: str) -> dict:
        """Blocks until no item of `batch` is open; returns its final counts."""
        last, last_log = None, -float("inf")
        while True:
            p = self.db.progress(batch=batch)
            if p["open"] == 0:
                return p
            now = time.monotonic()
            counts = (p["open"], p["answered"], p["retired"])
            if counts != last or now - last_log >= self.log_every_s:
                self.log(f"labels | waiting for human labels: {p['open']} of {p['total']} "
                         f"outstanding ({p['answered']} answered, {p['retired']} skipped out) "
                         f"in {self.db.path}")
                last, last_log = counts, now
            deadline = now + self.poll_seconds
            while time.monotonic() < deadline:
                if self.should_stop():
                    raise LabelingStopped(f"stopped with {p['open']} of {p['total']} items "
                                          f"outstanding in {self.db.path}")
                time.sleep(min(_POLL_SLICE_S, max(deadline - time.monotonic(), 0.0)))

    def label(self, request) -> Labels:
        """Posts `request`, waits for people, returns the answered records.

        Records keep the request's order; retired items are left out, so there
        may be fewer than requested. `labeler_N` names who answered each.
        """
        batch = self.post(request)
        counts = self.wait(batch)
        by_idx = {item.idx: answer for item, answer in self.db.answers(batch=batch)}
        rows = np.asarray(sorted(by_idx), dtype=np.int64)
        self.log(f"labels | {counts['answered']} of {counts['total']} items answered, "
                 f"{counts['retired']} skipped out")
        return Labels(
            label_type=self.label_type,
            query_NxQ=request.query_NxQ[rows],
            query_mask_NxQ=request.query_mask_NxQ[rows],
            responses_NxKxR=request.responses_NxKxR[rows],
            response_mask_NxKxR=request.response_mask_NxKxR[rows],
            pad_token=request.pad_token,
            best_N=np.asarray([by_idx[i].choice for i in rows.tolist()], dtype=np.int32),
            labeler_N=np.asarray([by_idx[i].labeler for i in rows.tolist()], dtype=np.str_),
            span_mask_NxKxR=_span_mask([by_idx[i] for i in rows.tolist()],
                                       request.responses_NxKxR.shape[1:]),
        )


def _span_mask(answers, k_r: tuple[int, int]) -> np.ndarray:
    """[N, K, R] token marks of the answers (each piece of a posted item is one token)."""
    mask = np.zeros((len(answers), *k_r), np.int32)
    for i, answer in enumerate(answers):
        for s in answer.spans:
            mask[i, s["response"], s["start"]:s["end"]] = 1
    return mask

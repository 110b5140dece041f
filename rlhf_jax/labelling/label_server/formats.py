"""Export the label database to the papers' label formats, and import from them.

* LHP (Ziegler et al.; openai/lm-human-preferences): a JSON list of
  `{"query": [ids], "sample0".."sample{K-1}": [ids], "best": int}`, token lists
  right-padded with the pad (50259 for GPT-2) to fixed lengths, as
  `rlhf_jax.data.label_files.read_lhp_labels` reads. Only items with token ids.
* SFF comparisons (Stiennon et al.; openai/summarize-from-feedback): jsonl of
  `{"info", "summaries": [{"text", "policy", "note"} x 2], "choice", "worker",
  "batch", "split", "extra"}`, as `read_sff_comparisons` reads. A best-of-K
  item (K > 2) becomes K - 1 comparisons, its best response against each
  other one (`extra.best_of_k`).

Both carry what the formats have no field for in extra fields that their
readers ignore: who labelled (`labeler`, SFF `worker`), when (`time`), the
database item (`item_id`), and the span marks. LHP `spans` is one list per
sample of `[start, end)` token ranges; SFF `extra.spans` is one list per
summary of `{"start", "end", "text", "chars"}`: `start`/`end` count display
pieces (`extra.span_unit`: "token" for token items, "word" for text items,
whose display pieces are words), `chars` is the character range in the
summary's text.

Import reads the same files (validated with one-line errors naming the file,
record and field) into items, with their answers unless `answers=False`, which
queues them for (re)labelling. Importing the same file twice adds nothing:
items are keyed by the file's content hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Iterable, Optional

from rlhf_jax.data import label_files as label_files_lib
from rlhf_jax.data.labels import LHP_PAD_TOKEN
from rlhf_jax.infra.files import write_text_atomic
from rlhf_jax.labelling.label_server.db import (Answer, Conflict, Item, LabelDB, LabelError,
                                                Response, word_pieces)

IMPORT_LABELER = "import"  # labeller id of imported answers that name none


def _spans_by_response(answer: Answer, k: int) -> list[list[dict]]:
    out: list[list[dict]] = [[] for _ in range(k)]
    for s in answer.spans:
        out[s["response"]].append(s)
    return out


# --------------------------------------------------------------------------
# Export.


def lhp_records(pairs: Iterable[tuple[Item, Answer]], *, pad_token: int = LHP_PAD_TOKEN,
                query_length: Optional[int] = None,
                response_length: Optional[int] = None) -> list[dict]:
    """LHP best-of-K records of answered token items (see the module doc).

    Lengths default to the longest query / response. ValueError for a text-only
    item, mixed K, a sequence longer than the length given, or a token equal
    to the pad.
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no answered items to export")
    ks = sorted({item.k for item, _ in pairs})
    if len(ks) > 1:
        raise ValueError(f"answered items have different numbers of responses {ks}; an LHP "
                         "file holds one best_of_K: export one batch at a time (--batch)")
    for item, _ in pairs:
        if item.query_tokens is None or any(r.tokens is None for r in item.responses):
            raise ValueError(f"item {item.id} has no token ids (a text item, e.g. imported "
                             "from SFF comparisons); export it with format 'sff'")
        for seq in (item.query_tokens, *(r.tokens for r in item.responses)):
            if pad_token in seq:
                raise ValueError(f"item {item.id} holds the pad token {pad_token} as a token; "
                                 "choose another pad_token")
    q_len = max(len(i.query_tokens) for i, _ in pairs) if query_length is None else query_length
    r_len = (max(len(r.tokens) for i, _ in pairs for r in i.responses)
             if response_length is None else response_length)

    def padded(ids, length, what, item):
        if len(ids) > length:
            raise ValueError(f"item {item.id}: {what} has {len(ids)} tokens, more than "
                             f"{length}")
        return list(ids) + [pad_token] * (length - len(ids))

    records = []
    for item, answer in pairs:
        rec = {"query": padded(item.query_tokens, q_len, "the query", item)}
        for j, r in enumerate(item.responses):
            rec[f"sample{j}"] = padded(r.tokens, r_len, f"response {j}", item)
        rec["best"] = answer.choice
        rec["labeler"] = answer.labeler
        rec["time"] = answer.created_at
        rec["item_id"] = item.id
        rec["spans"] = [[[s["start"], s["end"]] for s in spans]
                        for spans in _spans_by_response(answer, item.k)]
        records.append(rec)
    return records


def _sff_query_text(info: dict) -> str:
    """The text a labeller reads for an SFF `info` (Stiennon's query layout)."""
    if "post" in info:
        return (f"SUBREDDIT: r/{info.get('subreddit', '')}\n\nTITLE: {info.get('title', '')}"
                f"\n\nPOST: {info['post']}\n\nTL;DR:")
    if "article" in info:
        return f"{info['article']}\n\nTL;DR:"
    return str(info.get("query", ""))


def sff_records(pairs: Iterable[tuple[Item, Answer]], *, split: str = "train") -> list[dict]:
    """SFF comparison records of answered items (see the module doc).

    Items imported from SFF keep their `info`, policies, notes, batch, split
    and extra; others get `info = {"id": "<batch>:<idx>", "query": text}`,
    `batch` = the item's batch and `split` = `split`.
    """
    records = []
    for item, answer in pairs:
        src = item.meta or {}
        unit = "token" if item.query_tokens is not None else "word"
        spans = _spans_by_response(answer, item.k)
        b = answer.choice
        others = [j for j in range(item.k) if j != b]
        for j in (others if item.k > 2 else [1 - b]):
            pair = sorted((b, j))
            summaries = []
            for m in pair:
                policies, notes = src.get("policies"), src.get("notes")
                summaries.append({"text": item.responses[m].text,
                                  "policy": policies[m] if policies else item.batch,
                                  "note": notes[m] if notes else None})
            extra = {**src.get("extra", {}), "item_id": item.id, "time": answer.created_at,
                     "span_unit": unit,
                     "spans": [[_sff_mark(item.responses[m].pieces, s) for s in spans[m]]
                               for m in pair]}
            if item.k > 2:
                extra["best_of_k"] = item.k
                extra["responses"] = pair
            records.append({
                "info": src.get("info", {"id": f"{item.batch}:{item.idx}",
                                         "query": item.query_text}),
                "summaries": summaries,
                "choice": pair.index(b),
                "worker": answer.labeler,
                "batch": src.get("batch", item.batch),
                "split": src.get("split", split),
                "extra": extra,
            })
    return records


def _sff_mark(pieces, span: dict) -> dict:
    """A span mark as SFF `extra.spans` holds it: piece range, text, and `chars`,
    its character range in the summary text (what `read_sff_comparisons` maps
    to the re-encoded summary's tokens, whatever the display unit)."""
    start = len("".join(pieces[:span["start"]]))
    text = "".join(pieces[span["start"]:span["end"]])
    return {"start": span["start"], "end": span["end"], "text": text,
            "chars": [start, start + len(text)]}


def export_lhp(db: LabelDB, path, *, batch: Optional[str] = None, **kwargs) -> int:
    """Writes answered items (of one batch) as an LHP JSON file, atomically.

    `kwargs` go to `lhp_records` (pad_token, query_length, response_length).
    Returns the number of records.
    """
    records = lhp_records(db.answers(batch=batch), **kwargs)
    write_text_atomic(path, json.dumps(records, separators=(",", ":")) + "\n")
    return len(records)


def export_sff(db: LabelDB, path, *, batch: Optional[str] = None, split: str = "train") -> int:
    """Writes answered items (of one batch) as SFF comparisons (jsonl), atomically.

    Returns the number of records (K - 1 per best-of-K item).
    """
    pairs = db.answers(batch=batch)
    if not pairs:
        raise ValueError("no answered items to export")
    records = sff_records(pairs, split=split)
    write_text_atomic(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
    return len(records)


# --------------------------------------------------------------------------
# Import.


def _file_batch(path, fmt: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"import-{fmt}:{os.path.basename(os.fspath(path))}:{h.hexdigest()[:12]}"


def _store(db: LabelDB, batch: str, items: list[Item], answers: list, *,
           max_skips: int) -> tuple[int, int]:
    """Adds items and their answers (None: unlabelled); returns (new items, new answers)."""
    before = db.progress(batch=batch)["total"]
    ids = db.add_items(batch, items, max_skips=max_skips)
    stored = 0
    for item_id, ans in zip(ids, answers):
        if ans is None:
            continue
        rec, labeler, choice, spans, created = ans
        try:
            db.answer(item_id, labeler, choice, spans, source="import", created_at=created)
            stored += 1
        except Conflict:
            continue  # imported before: the item keeps its first answer
        except LabelError as e:
            raise ValueError(f"{rec.prefix}: {e}") from None
    return db.progress(batch=batch)["total"] - before, stored


def import_lhp(db: LabelDB, path, *, decode: Callable[[list[int]], str], vocab_size: int,
               label_type: str = "best_of_4", pad_token: int = LHP_PAD_TOKEN,
               answers: bool = True, max_skips: int = 3) -> tuple[int, int]:
    """Imports an LHP best-of-K file (ours, with extras, or the papers' own).

    `decode(ids) -> str` renders the tokens (e.g. the GPT-2 tokenizer's); each
    token is one display piece. Records are validated by `read_lhp_labels`;
    `labeler`, `time` and `spans` are kept when present. Returns (new items,
    new answers).
    """
    labels = label_files_lib.read_lhp_labels(path, label_type=label_type, vocab_size=vocab_size,
                                             pad_token=pad_token)
    if labels.label_type != "best_of_n":
        raise ValueError(f"{os.fspath(path)}: label_type={label_type!r}: only best_of_<K> "
                         "files hold comparisons to label")
    raw = label_files_lib._load_json(path)  # the extras read_lhp_labels does not keep
    items, found = [], []
    for i, obj in enumerate(raw):
        rec = label_files_lib._Record(path, i)
        q = labels.query_NxQ[i][labels.query_mask_NxQ[i] == 1].tolist()
        responses = []
        for r, m in zip(labels.responses_NxKxR[i], labels.response_mask_NxKxR[i]):
            ids = r[m == 1].tolist()
            responses.append(Response(decode(ids), tuple(decode([t]) for t in ids), tuple(ids)))
        items.append(Item("best_of_n", decode(q), tuple(responses), query_tokens=tuple(q)))
        if not answers:
            found.append(None)
            continue
        spans = obj.get("spans")
        if spans is not None:
            if (not isinstance(spans, list) or len(spans) != labels.num_responses
                    or not all(isinstance(s, list) for s in spans)):
                raise rec.error("spans", f" must be {labels.num_responses} lists of "
                                "[start, end] ranges")
            try:
                spans = [{"response": j, "start": s[0], "end": s[1]}
                         for j, rs in enumerate(spans) for s in rs]
            except (TypeError, IndexError, KeyError):
                raise rec.error("spans", " holds a range that is not [start, end]") from None
        found.append((rec, _optional_str(rec, obj, "labeler") or IMPORT_LABELER,
                      int(labels.best_N[i]), spans, _optional_str(rec, obj, "time")))
    return _store(db, _file_batch(path, "lhp"), items, found, max_skips=max_skips)


def _optional_str(rec, obj: dict, field: str) -> Optional[str]:
    value = obj.get(field)
    if value is not None and not isinstance(value, str):
        raise rec.error(field, f"={label_files_lib._short(value)} is not a string")
    return value


def import_sff(db: LabelDB, path, *, answers: bool = True, split: Optional[str] = None,
               max_skips: int = 3) -> tuple[int, int]:
    """Imports SFF comparisons (jsonl) as pairwise text items.

    The query shown is Stiennon's layout of `info` (TL;DR post or CNN/DM
    article; `info.query` for our own exports); responses are cut into words
    for span marks. `split` keeps only records of that split. `worker` becomes
    the labeller (IMPORT_LABELER if empty); word spans from our exports
    (`extra.span_unit == "word"`) are kept. Returns (new items, new answers).
    """
    items, found = [], []
    for rec, obj in label_files_lib._jsonl_records(path):
        info = rec.get(obj, "info")
        if not isinstance(info, dict) or not ({"post", "article", "query"} & set(info)):
            raise rec.error("info", " must be an object with 'post' (TL;DR), 'article' "
                            "(CNN/DM) or 'query'")
        summaries = rec.get(obj, "summaries")
        if (not isinstance(summaries, list) or len(summaries) != 2
                or not all(isinstance(s, dict) and isinstance(s.get("text"), str)
                           for s in summaries)):
            raise rec.error("summaries", " must be 2 objects with a 'text' string")
        if split is not None and obj.get("split") != split:
            continue
        extra = obj.get("extra") or {}
        if not isinstance(extra, dict):
            raise rec.error("extra", " must be an object")
        meta = {"info": info, "policies": [s.get("policy") for s in summaries],
                "notes": [s.get("note") for s in summaries],
                "extra": {k: v for k, v in extra.items()
                          if k not in ("item_id", "time", "span_unit", "spans")}}
        for field in ("batch", "split"):
            if field in obj:
                meta[field] = obj[field]
        responses = tuple(Response(s["text"], word_pieces(s["text"])) for s in summaries)
        items.append(Item("pairwise", _sff_query_text(info), responses, meta=meta))
        if not answers:
            found.append(None)
            continue
        choice = rec.get(obj, "choice")
        spans = None
        if extra.get("span_unit") == "word" and extra.get("spans") is not None:
            try:
                spans = [{"response": j, "start": s["start"], "end": s["end"]}
                         for j, rs in enumerate(extra["spans"]) for s in rs]
            except (TypeError, KeyError):
                raise rec.error("extra.spans", " must be 2 lists of {start, end}") from None
        found.append((rec, _optional_str(rec, obj, "worker") or IMPORT_LABELER, choice, spans,
                      extra.get("time") if isinstance(extra.get("time"), str) else None))
    if not items:
        raise ValueError(f"{os.fspath(path)}: no records"
                         + (f" with split={split!r}" if split is not None else ""))
    return _store(db, _file_batch(path, "sff"), items, found, max_skips=max_skips)

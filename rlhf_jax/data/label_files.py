"""Label files: three formats read into `labels.Labels`, one written.

The formats:

* LHP (openai/lm-human-preferences label files, e.g. `sentiment/offline_5k.json`):
  a JSON list of records with GPT-2 token ids (`read_lhp_labels`).
* SFF comparisons (openai/summarize-from-feedback, jsonl with text), encoded
  here with the Stiennon query format (`read_sff_comparisons`).
* Our own jsonl, written by the mock labeller and the label server
  (`write_labels_jsonl` / `read_labels_jsonl`), one record per line:
  `{"query": [ids], "responses": [[ids], ...], "best": int, "gold": [floats],
  "labeler": str, "spans": [[[start, end], ...], ...]}` with `score`
  (scalar_rating) or `difference` (scalar_compare) in place of `best`;
  `gold`, `labeler` and `spans` are optional. Token lists are unpadded.

Span marks ("these tokens are wrong", from people in the label server or from
the mock span labeller `rlhf_jax.labelling.spans`) are, per response, a list of
`[start, end)` token ranges, end exclusive: the label server's LHP export
field. In memory they are a 0/1 token mask, `Labels.span_mask_NxKxR`. LHP
files carry them in the same `spans` field; SFF comparisons in
`extra.spans` (character ranges `chars` of the summary text, mapped to the
encoded summary's tokens here).

Padding: queries are LEFT-padded and responses RIGHT-padded with `pad_token`,
a token outside the vocabulary (docs/implementation_details.md item 2); masks
are int32 0/1, as `rlhf_jax.data.tasks.pad_left` makes them. LHP files right-pad their
queries; the LHP reader moves the padding to the left.

Bad input fails with one ValueError line naming the file, the record (0-based
index into the file's records) and the field, e.g.
`labels.json: record 3: field 'best'=5 out of range for best_of_4`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from rlhf_jax.data.labels import (char_spans_to_mask, Labels, LHP_PAD_TOKEN, mask_to_ranges,
                                  parse_label_type, ranges_to_mask, TARGET_FIELD)
from rlhf_jax.data.tasks import format_cnndm_query, format_tldr_query, pad_left, pad_right
from rlhf_jax.infra.files import write_text_atomic

# --------------------------------------------------------------------------
# Record validation.


class _Record:
    """One record under validation: builds the one-line error messages."""

    def __init__(self, path, index: int, line: Optional[int] = None):
        where = f"record {index}" if line is None else f"record {index} (line {line})"
        self.prefix = f"{os.fspath(path)}: {where}"

    def error(self, field: str, detail: str) -> ValueError:
        # `detail` starts with '=' (a value) or ' ' (a sentence).
        return ValueError(f"{self.prefix}: field '{field}'{detail}")

    def get(self, obj: dict, field: str, *, name: Optional[str] = None):
        if field not in obj:
            raise self.error(name or field, " is missing")
        return obj[field]


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _short(value: Any) -> str:
    """A value as it reads in the file (JSON), cut to 40 characters."""
    s = json.dumps(value)
    return s if len(s) <= 40 else s[:37] + "..."


def _token_list(rec: _Record, value, field: str, *, vocab_size: int, pad_token: int,
                allow_pad: bool, length: Optional[int] = None,
                max_length: Optional[int] = None) -> list[int]:
    """Checks a list of token ids: type, length, range (pad allowed if asked)."""
    if not isinstance(value, list) or not all(_is_int(t) for t in value):
        raise rec.error(field, f"={_short(value)} is not a list of ints")
    if length is not None and len(value) != length:
        raise rec.error(field, f" has length {len(value)}, expected {length}")
    if max_length is not None and len(value) > max_length:
        raise rec.error(field, f" has {len(value)} tokens, more than {max_length}")
    for j, t in enumerate(value):
        if not 0 <= t < vocab_size and not (allow_pad and t == pad_token):
            extra = f" and is not the pad {pad_token}" if allow_pad else ""
            raise rec.error(f"{field}[{j}]", f"={t} is outside [0, {vocab_size}){extra}")
    return value


def _strip_pads(rec: _Record, tokens: list[int], field: str, pad_token: int, *,
                trailing_only: bool) -> list[int]:
    """The tokens of a padded LHP sequence. Pads must sit only at the ends
    (only at the end when `trailing_only`), and a token must remain."""
    pos = [j for j, t in enumerate(tokens) if t != pad_token]
    if not pos:
        raise rec.error(field, f" has no tokens (all pad {pad_token})")
    first, last = pos[0], pos[-1]
    if last - first + 1 != len(pos) or (trailing_only and first != 0):
        where = "only after" if trailing_only else "only around"
        raise rec.error(field, f" has the pad {pad_token} inside the sequence; pads may "
                        f"sit {where} the tokens")
    return tokens[first:last + 1]


def _number(rec: _Record, obj: dict, field: str) -> float:
    value = rec.get(obj, field)
    if not _is_number(value):
        raise rec.error(field, f"={_short(value)} is not a finite number")
    return float(value)


def _best(rec: _Record, obj: dict, k: int, label_type: str) -> int:
    value = rec.get(obj, "best")
    if not _is_int(value):
        raise rec.error("best", f"={_short(value)} is not an int")
    if not 0 <= value < k:
        raise rec.error("best", f"={value} out of range for {label_type}")
    return value


def _all_or_none(rec: "_Record", container: dict, key: str, has: Optional[bool],
                 field: Optional[str] = None, first: str = "record 0") -> bool:
    """Whether this record carries the optional `key`; the first record decides
    for all (`has` None there), a record that differs is an error."""
    present = key in container
    if has is None:
        return present
    if present != has:
        raise rec.error(field or key, f" is missing ({first} has it)" if has else
                        f" is present but {first} has none (all or none)")
    return has


def _span_ranges(rec: "_Record", value, field: str, lengths: Sequence[int]) -> list:
    """Checks per-response `[start, end)` token ranges against the response lengths."""
    if not isinstance(value, list) or len(value) != len(lengths):
        raise rec.error(field, f"={_short(value)} is not {len(lengths)} lists of [start, end] "
                        "ranges (one per response)")
    for j, (ranges, n) in enumerate(zip(value, lengths)):
        if not isinstance(ranges, list):
            raise rec.error(f"{field}[{j}]", f"={_short(ranges)} is not a list of ranges")
        for r in ranges:
            if (not isinstance(r, list) or len(r) != 2 or not all(_is_int(x) for x in r)
                    or not 0 <= r[0] < r[1] <= n):
                raise rec.error(f"{field}[{j}]", f" holds {_short(r)}, not a token range "
                                f"[start, end) inside the response's {n} tokens")
    return value


def _span_mask(spans: list, k: int, response_length: int) -> np.ndarray:
    """[N, K, R] mask from per-record, per-response ranges (tokens counted from 0)."""
    return np.asarray([[ranges_to_mask(spans[i][j], response_length) for j in range(k)]
                       for i in range(len(spans))], np.int32).reshape(-1, k, response_length)


def _load_json(path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{os.fspath(path)}: invalid JSON at line {e.lineno} column "
                         f"{e.colno} (char {e.pos}): {e.msg}") from None


def _jsonl_records(path) -> Iterator[tuple[_Record, dict]]:
    """(validation context, object) for each non-blank line of a jsonl file."""
    with open(path, encoding="utf-8") as f:
        index = 0
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            rec = _Record(path, index, lineno)
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{rec.prefix}: invalid JSON at column {e.colno}: "
                                 f"{e.msg}") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{rec.prefix}: expected a JSON object, got "
                                 f"{type(obj).__name__}")
            yield rec, obj
            index += 1


def _check_lengths(path, field: str, value: Optional[int]) -> None:
    if value is not None and (not _is_int(value) or value <= 0):
        raise ValueError(f"{os.fspath(path)}: {field}={value!r} must be a positive int")


# --------------------------------------------------------------------------
# LHP label files.


def read_lhp_labels(path, *, label_type: str, vocab_size: int,
                    pad_token: int = LHP_PAD_TOKEN, query_length: Optional[int] = None,
                    response_length: Optional[int] = None) -> Labels:
    """Reads an openai/lm-human-preferences label file (a JSON list).

    Records by `label_type`: `best_of_<N>` -> `query`, `sample0`..`sample{N-1}`,
    `best`; `scalar_rating` -> `query`, `sample`, `score`; `scalar_compare` ->
    `query`, `sample0`, `sample1`, `difference`. Token lists are fixed length
    (queries right-padded, left padding accepted too; samples right-padded
    after truncation; both with `pad_token`); unknown fields are ignored
    except `spans` (the label server's span marks: per sample a list of
    `[start, end)` token ranges; all records or none), read into
    `span_mask_NxKxR`.

    Args:
      path: the .json file.
      label_type: `best_of_4` etc., `scalar_rating` or `scalar_compare`.
      vocab_size: ids must lie in [0, vocab_size) (50257 for GPT-2), or be the pad.
      pad_token: pad id in the file and in the result (LHP: 50259).
      query_length / response_length: expected lengths; None takes record 0's.

    Returns:
      Labels with queries moved to left padding; label_type `best_of_n`,
      `scalar_rating` or `scalar_compare`.
    """
    kind, k = parse_label_type(label_type)
    if k is None or kind == "pairwise":
        raise ValueError(f"{os.fspath(path)}: label_type={label_type!r}: LHP files hold "
                         "best_of_<N>, scalar_rating or scalar_compare")
    _check_lengths(path, "query_length", query_length)
    _check_lengths(path, "response_length", response_length)
    records = _load_json(path)
    if not isinstance(records, list):
        raise ValueError(f"{os.fspath(path)}: expected a JSON list of records, got "
                         f"{type(records).__name__}")
    if not records:
        raise ValueError(f"{os.fspath(path)}: holds no records")
    sample_fields = ["sample"] if kind == "scalar_rating" else [f"sample{i}" for i in range(k)]

    queries, responses, answers, spans = [], [], [], []
    has_spans = None
    for i, obj in enumerate(records):
        rec = _Record(path, i)
        if not isinstance(obj, dict):
            raise ValueError(f"{rec.prefix}: expected a JSON object, got {type(obj).__name__}")
        query = _token_list(rec, rec.get(obj, "query"), "query", vocab_size=vocab_size,
                            pad_token=pad_token, allow_pad=True, length=query_length)
        if query_length is None:
            query_length = len(query)
        queries.append(_strip_pads(rec, query, "query", pad_token, trailing_only=False))
        samples, lengths = [], []
        for field in sample_fields:
            sample = _token_list(rec, rec.get(obj, field), field, vocab_size=vocab_size,
                                 pad_token=pad_token, allow_pad=True, length=response_length)
            if response_length is None:
                response_length = len(sample)
            lengths.append(len(_strip_pads(rec, sample, field, pad_token, trailing_only=True)))
            samples.append(sample)
        responses.append(samples)
        # Span marks: the label server's export field (one list of token ranges per sample).
        has_spans = _all_or_none(rec, obj, "spans", has_spans)
        if has_spans:
            spans.append(_span_ranges(rec, obj["spans"], "spans", lengths))
        if kind == "best_of_n":
            answers.append(_best(rec, obj, k, label_type))
        else:
            answers.append(_number(rec, obj, "score" if kind == "scalar_rating" else "difference"))

    query_NxQ, query_mask_NxQ = pad_left(queries, query_length, pad_token)
    responses_NxKxR = np.asarray(responses, dtype=np.int32)
    target = TARGET_FIELD[kind]
    return Labels(
        label_type=kind,
        query_NxQ=query_NxQ,
        query_mask_NxQ=query_mask_NxQ,
        responses_NxKxR=responses_NxKxR,
        response_mask_NxKxR=(responses_NxKxR != pad_token).astype(np.int32),
        pad_token=pad_token,
        span_mask_NxKxR=(_span_mask(spans, len(sample_fields), response_length)
                         if has_spans else None),
        **{target: np.asarray(answers)},
    )


# --------------------------------------------------------------------------
# SFF comparisons.


def _str_field(rec: _Record, obj: dict, field: str, name: str) -> str:
    value = rec.get(obj, field, name=name)
    if not isinstance(value, str):
        raise rec.error(name, f"={_short(value)} is not a string")
    return value


def read_sff_comparisons(path, *, encode: Callable[[str], list[int]], query_length: int,
                         response_length: int, eos_token: int, pad_token: int,
                         split: Optional[str] = None,
                         offsets: Optional[Callable[[str], Sequence]] = None) -> Labels:
    """Reads openai/summarize-from-feedback comparisons (jsonl) as pairwise labels.

    Each record: `info` ({id, post, title, subreddit} for TL;DR, {id, article,
    site, title} for CNN/DM), `summaries` (2 x {text, policy, note}), `choice`
    (0/1), `worker`, `batch`, `split`, `extra.confidence`. The query is the
    Stiennon format (`tasks.format_tldr_query` / `format_cnndm_query`),
    left-padded. Each summary is encoded as `" " + text` (docs/implementation_details.md item
    5), EOS appended, then cut to `response_length` (a summary that long
    loses its EOS) and right-padded.

    Args:
      path: the .jsonl file.
      encode: str -> list of token ids (e.g. a Hugging Face tokenizer's encode).
      query_length, response_length: padded lengths.
      eos_token, pad_token: ids; the pad must not be a vocabulary token.
      split: keep only records with this `split` (e.g. 'train', 'valid1');
        None keeps all. Every record is validated either way.
      offsets: str -> the `[start, end)` character range of each token of
        `encode(str)` (a fast tokenizer's offset mapping). With it, span
        marks in `extra.spans` (our exports: per summary a list of
        `{"chars": [start, end], ...}`, character ranges of the text) become
        `span_mask_NxKxR` over the encoded summary's tokens; all kept records
        or none must carry them.

    Returns:
      Labels with label_type 'pairwise', best_N = choice, labeler_N = worker.
    """
    _check_lengths(path, "query_length", query_length)
    _check_lengths(path, "response_length", response_length)
    queries, responses, choices, workers, span_masks = [], [], [], [], []
    has_spans = None
    for rec, obj in _jsonl_records(path):
        info = rec.get(obj, "info")
        if not isinstance(info, dict):
            raise rec.error("info", f"={_short(info)} is not an object")
        summaries = rec.get(obj, "summaries")
        if not isinstance(summaries, list) or len(summaries) != 2:
            raise rec.error("summaries", f"={_short(summaries)} is not a list of 2 summaries")
        texts = []
        for j, s in enumerate(summaries):
            if not isinstance(s, dict):
                raise rec.error(f"summaries[{j}]", f"={_short(s)} is not an object")
            texts.append(_str_field(rec, s, "text", f"summaries[{j}].text"))
        choice = rec.get(obj, "choice")
        if not _is_int(choice) or choice not in (0, 1):
            raise rec.error("choice", f"={_short(choice)} is not 0 or 1")
        worker = obj.get("worker", "")
        if not isinstance(worker, str):
            raise rec.error("worker", f"={_short(worker)} is not a string")
        if split is not None:
            record_split = _str_field(rec, obj, "split", "split")
            if record_split != split:
                continue

        if "post" in info:
            fields = {name: _str_field(rec, info, name, f"info.{name}")
                      for name in ("subreddit", "title", "post")}
            make_query = lambda: format_tldr_query(  # noqa: E731
                encode, query_length=query_length, **fields)
        elif "article" in info:
            article = _str_field(rec, info, "article", "info.article")
            make_query = lambda: format_cnndm_query(  # noqa: E731
                encode, article=article, query_length=query_length)
        else:
            raise rec.error("info", " has neither 'post' (TL;DR) nor 'article' (CNN/DM)")
        try:
            query = list(make_query())
        except ValueError as e:
            raise rec.error("info", f" does not make a query: {e}") from None
        if not query or len(query) > query_length:
            raise rec.error("info", f" makes a query of {len(query)} tokens, not in "
                            f"[1, {query_length}]")
        queries.append(query)
        responses.append([(list(encode(" " + t)) + [eos_token])[:response_length]
                          for t in texts])
        choices.append(choice)
        workers.append(worker)
        if offsets is not None:
            extra = obj.get("extra") if isinstance(obj.get("extra"), dict) else {}
            has_spans = _all_or_none(rec, extra, "spans", has_spans, "extra.spans",
                                     "the first record read")
            if has_spans:
                span_masks.append(_sff_span_masks(rec, extra["spans"], texts, offsets,
                                                  response_length))

    if not queries:
        raise ValueError(f"{os.fspath(path)}: no records" +
                         (f" with split={split!r}" if split is not None else ""))
    query_NxQ, query_mask_NxQ = pad_left(queries, query_length, pad_token)
    flat_ids, flat_mask = pad_right([r for pair in responses for r in pair],
                                    response_length, pad_token)
    n = len(queries)
    return Labels(
        label_type="pairwise",
        query_NxQ=query_NxQ,
        query_mask_NxQ=query_mask_NxQ,
        responses_NxKxR=flat_ids.reshape(n, 2, response_length),
        response_mask_NxKxR=flat_mask.reshape(n, 2, response_length),
        pad_token=pad_token,
        best_N=np.asarray(choices),
        labeler_N=np.asarray(workers, dtype=np.str_),
        span_mask_NxKxR=np.asarray(span_masks, np.int32) if has_spans else None,
    )


def _sff_span_masks(rec: _Record, value, texts: Sequence[str], offsets: Callable,
                    response_length: int) -> list[np.ndarray]:
    """Per summary, the token mask of its `chars` span marks (text encoded as `" " + text`)."""
    if not isinstance(value, list) or len(value) != len(texts):
        raise rec.error("extra.spans", f" must be {len(texts)} lists of span marks")
    out = []
    for j, (marks, text) in enumerate(zip(value, texts)):
        chars = []
        for m in marks if isinstance(marks, list) else [None]:
            c = m.get("chars") if isinstance(m, dict) else None
            if (not isinstance(c, list) or len(c) != 2 or not all(_is_int(x) for x in c)
                    or not 0 <= c[0] < c[1] <= len(text)):
                raise rec.error(f"extra.spans[{j}]", f" holds {_short(m)}, not a mark with "
                                f"'chars': [start, end) inside the {len(text)}-character text")
            chars.append((c[0] + 1, c[1] + 1))  # the text is encoded after a space
        out.append(char_spans_to_mask(offsets(" " + text), chars, response_length))
    return out


# --------------------------------------------------------------------------
# Our jsonl.


def _record_to_json(labels: Labels, i: int) -> dict:
    """Record `i` of `labels` as a jsonl object (token lists unpadded)."""
    q = labels.query_NxQ[i][labels.query_mask_NxQ[i] == 1]
    out: dict[str, Any] = {
        "query": q.tolist(),
        "responses": [r[m == 1].tolist() for r, m in
                      zip(labels.responses_NxKxR[i], labels.response_mask_NxKxR[i])],
    }
    if labels.best_N is not None:
        out["best"] = int(labels.best_N[i])
    if labels.score_N is not None:
        out["score"] = float(labels.score_N[i])
    if labels.difference_N is not None:
        out["difference"] = float(labels.difference_N[i])
    if labels.gold_NxK is not None:
        out["gold"] = [float(g) for g in labels.gold_NxK[i]]
    if labels.labeler_N is not None and labels.labeler_N[i]:
        out["labeler"] = str(labels.labeler_N[i])
    if labels.span_mask_NxKxR is not None:
        out["spans"] = [mask_to_ranges(s[m == 1]) for s, m in
                        zip(labels.span_mask_NxKxR[i], labels.response_mask_NxKxR[i])]
    return out


def write_labels_jsonl(path, labels: Labels) -> None:
    """Writes `labels` as our jsonl, atomically.

    The lines go to a temporary file in the same directory, which then
    replaces `path` (`os.replace`), so a crash leaves either the old file or
    the complete new one, never a partial file. The label type is not stored:
    pass it again to `read_labels_jsonl`. Floats are written exactly (float32
    values survive the round trip bit for bit).
    """
    write_text_atomic(path, "".join(
        json.dumps(_record_to_json(labels, i), separators=(",", ":")) + "\n"
        for i in range(len(labels))))


def read_labels_jsonl(path, *, query_length: int, response_length: int, pad_token: int,
                      vocab_size: int, label_type: str) -> Labels:
    """Reads our jsonl (see the module docstring) into padded Labels.

    Args:
      path: the .jsonl file.
      query_length, response_length: padded lengths; longer token lists are
        an error, not cut.
      pad_token: pad id of the result (must not occur in the file).
      vocab_size: ids must lie in [0, vocab_size).
      label_type: `best_of_<N>` / `best_of_n` (K from record 0), `pairwise`,
        `scalar_rating` or `scalar_compare`.

    Returns:
      Labels; `gold_NxK` if the records carry `gold` and `span_mask_NxKxR` if
      they carry `spans` (all or none must, for each), `labeler_N` if any
      carries `labeler` ('' where absent).
    """
    kind, k = parse_label_type(label_type)
    _check_lengths(path, "query_length", query_length)
    _check_lengths(path, "response_length", response_length)
    answer_field = {"best_N": "best", "score_N": "score",
                    "difference_N": "difference"}[TARGET_FIELD[kind]]
    queries, responses, answers, golds, labelers, spans = [], [], [], [], [], []
    has_gold = has_spans = None
    for rec, obj in _jsonl_records(path):
        queries.append(_token_list(rec, rec.get(obj, "query"), "query",
                                   vocab_size=vocab_size, pad_token=pad_token,
                                   allow_pad=False, max_length=query_length))
        if not queries[-1]:
            raise rec.error("query", " has no tokens")
        rs = rec.get(obj, "responses")
        if not isinstance(rs, list) or not rs:
            raise rec.error("responses", f"={_short(rs)} is not a list of token lists")
        if k is None:
            k = len(rs)
            if k < 2:
                raise rec.error("responses", f" has {k} response, best_of_n needs >= 2")
        if len(rs) != k:
            raise rec.error("responses", f" has {len(rs)} responses, expected {k} "
                            f"for {label_type}")
        responses.append([])
        for j, r in enumerate(rs):
            responses[-1].append(_token_list(rec, r, f"responses[{j}]", vocab_size=vocab_size,
                                             pad_token=pad_token, allow_pad=False,
                                             max_length=response_length))
            if not r:
                raise rec.error(f"responses[{j}]", " has no tokens")
        if answer_field == "best":
            answers.append(_best(rec, obj, k, label_type))
        else:
            answers.append(_number(rec, obj, answer_field))
        has_gold = _all_or_none(rec, obj, "gold", has_gold)
        if has_gold:
            gold = obj["gold"]
            if (not isinstance(gold, list) or len(gold) != k
                    or not all(_is_number(g) for g in gold)):
                raise rec.error("gold", f"={_short(gold)} is not a list of {k} finite numbers")
            golds.append(gold)
        labeler = obj.get("labeler", "")
        if not isinstance(labeler, str):
            raise rec.error("labeler", f"={_short(labeler)} is not a string")
        labelers.append(labeler)
        has_spans = _all_or_none(rec, obj, "spans", has_spans)
        if has_spans:
            spans.append(_span_ranges(rec, obj["spans"], "spans",
                                      [len(r) for r in responses[-1]]))

    if not queries:
        raise ValueError(f"{os.fspath(path)}: holds no records")
    query_NxQ, query_mask_NxQ = pad_left(queries, query_length, pad_token)
    flat_ids, flat_mask = pad_right([r for rs in responses for r in rs], response_length,
                                    pad_token)
    n = len(queries)
    return Labels(
        label_type=kind,
        query_NxQ=query_NxQ,
        query_mask_NxQ=query_mask_NxQ,
        responses_NxKxR=flat_ids.reshape(n, k, response_length),
        response_mask_NxKxR=flat_mask.reshape(n, k, response_length),
        pad_token=pad_token,
        gold_NxK=np.asarray(golds) if has_gold else None,
        labeler_N=np.asarray(labelers, dtype=np.str_) if any(labelers) else None,
        span_mask_NxKxR=_span_mask(spans, k, response_length) if has_spans else None,
        **{TARGET_FIELD[kind]: np.asarray(answers)},
    )


_READERS = {"lhp": read_lhp_labels, "sff": read_sff_comparisons, "jsonl": read_labels_jsonl}


def read_labels(path, *, format: str, **kwargs) -> Labels:  # noqa: A002
    """Reads a label file: `format` 'lhp', 'sff' or 'jsonl'; `kwargs` go to that reader."""
    if format not in _READERS:
        raise ValueError(f"read_labels: field 'format'={format!r} is not one of "
                         f"{sorted(_READERS)}")
    return _READERS[format](path, **kwargs)

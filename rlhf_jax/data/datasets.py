"""Query datasets: text sources -> fixed-length, left-padded query batches.

A `QueryDataset` holds every query of one split as int32 arrays and serves
`batch(index, n)`: batch `index` of size `n` from a per-epoch permutation
seeded by `(seed, epoch)`, so the data cursor of a resumed run is just the
batch index (exact resume without saving iterator state).

Sources (config `task.query_dataset`, `task.dataset_path`):
- `synthetic`: the offline corpus (`data/synthetic.py`), generated here.
- `books`: one text per line from a local `.txt` / `.jsonl` (`text` field),
  or the Hugging Face `bookcorpus` dataset through the `datasets` package
  (LHP's book files are gone; the public reproductions used bookcorpus).
- `tldr`: Stiennon's TL;DR posts (SFF jsonl: id, subreddit, title, post,
  summary), a local file or a Hugging Face dataset name.
- `cnndm`: CNN/DM articles (jsonl: article, highlights), local or hub.
- `world_tldr`: the summarisation world's stories (`data/summaries.py`), each
  query `story\nTL;DR:` with its author's TL;DR as the reference; generated
  here, `task.num_docs` in the train split and a tenth of that in valid and
  test (disjoint from the pretraining stories).
Queries are held as the reward model reads them. `task.query_format='lhp'`
(LHP, every source): the raw text cut by `extract_query` (start/end tokens,
`query_length` tokens): a books passage, a TL;DR post, a CNN/DM article. The
policy reads `task.query_prefix + query + task.query_suffix`
(`tasks.format_queries`; LHP's `query_formatter`), never stored here.
`task.query_format='sff'` (Stiennon; tldr and cnndm only): the SFF query
template (`format_tldr_query`, `format_cnndm_query`), read by policy and
reward model alike. `task.query_format='chat'` (instruct models; tldr and
cnndm): the same template as the user turn of the tokenizer's own chat
template, ending with the assistant's turn opened (`chat_encoder`). The reference summaries of tldr/cnndm come along for SFT
and for Stiennon's reward bias.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import re
from typing import Callable, Iterable, Sequence

import numpy as np

from rlhf_jax.data import summaries, tasks

SOURCES = ("synthetic", "books", "tldr", "cnndm", "world_tldr")
QUERY_FORMATS = ("lhp", "sff", "chat")
# The text field (LHP query) and reference field of each summarisation source.
_TEXT_FIELDS = {"tldr": ("post", "summary"), "cnndm": ("article", "highlights")}
SPLITS = ("train", "valid", "test")
_HUB_HINT = {
    "books": "bookcorpus (pip install datasets; or a local .txt with one passage per line)",
    "tldr": "the SFF TL;DR posts, e.g. openai/summarize-from-feedback's "
            "tldr_3_filtered/{train,valid,test}.jsonl, or a Hugging Face dataset name "
            "(pip install datasets)",
    "cnndm": "CNN/DailyMail as jsonl with 'article' and 'highlights', or the Hugging Face "
             "dataset 'cnn_dailymail' (pip install datasets)",
}


@dataclasses.dataclass(frozen=True)
class QueryDataset:
    """All queries of one split, left-padded, plus optional reference responses.

    The queries are those the reward model reads; the policy reads
    `tasks.format_queries` of them (the task's prefix and suffix).
    """

    query_NxQ: np.ndarray  # int32, left-padded with the pad token
    query_mask_NxQ: np.ndarray  # int32 0/1
    seed: int
    reference_NxR: np.ndarray | None = None  # int32, right-padded (tldr/cnndm)
    reference_mask_NxR: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.query_NxQ)

    def indices(self, index: int, n: int) -> np.ndarray:
        """Rows of batch `index` (size n): epochs are fresh seeded permutations."""
        total = len(self)
        if total == 0:
            raise ValueError("the query dataset is empty")
        start = index * n
        rows = np.empty(n, np.int64)
        for j in range(n):
            epoch, pos = divmod(start + j, total)
            rows[j] = self._perm(epoch)[pos]
        return rows

    def _perm(self, epoch: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_perm_cache", {})
        if epoch not in cache:
            cache.clear()
            cache[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self))
        return cache[epoch]

    def batch(self, index: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.indices(index, n)
        return self.query_NxQ[rows], self.query_mask_NxQ[rows]

    def head(self, n: int) -> "QueryDataset":
        """The first n queries (fixed evaluation sets)."""
        ref = None if self.reference_NxR is None else self.reference_NxR[:n]
        ref_m = None if self.reference_mask_NxR is None else self.reference_mask_NxR[:n]
        return dataclasses.replace(self, query_NxQ=self.query_NxQ[:n],
                                   query_mask_NxQ=self.query_mask_NxQ[:n],
                                   reference_NxR=ref, reference_mask_NxR=ref_m)


def _read_jsonl(path: str) -> list[dict]:
    rows = []
    with open(path) as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {i + 1}: invalid JSON: {e.msg}") from e
    return rows


def _load_records(source: str, path: str, split: str) -> list[dict]:
    """Records of a split from a local file/dir or a Hugging Face dataset name."""
    if not path:
        raise ValueError(f"task.dataset_path is empty; task.query_dataset={source!r} needs "
                         f"{_HUB_HINT[source]}")
    if os.path.isdir(path):
        for name in (f"{split}.jsonl", f"{split}.txt"):
            candidate = os.path.join(path, name)
            if os.path.exists(candidate):
                return _load_records(source, candidate, split)
        raise ValueError(f"{path}: no {split}.jsonl or {split}.txt; expected {_HUB_HINT[source]}")
    if os.path.exists(path):
        if path.endswith(".jsonl") or path.endswith(".json"):
            return _read_jsonl(path)
        with open(path) as f:
            return [{"text": line.rstrip("\n")} for line in f if line.strip()]
    if path.startswith((".", "/")) or path.endswith((".jsonl", ".txt", ".json")):
        raise ValueError(f"task.dataset_path={path!r} does not exist; get {_HUB_HINT[source]}")
    try:
        import datasets  # noqa: F401  (optional: only for hub datasets)
    except ImportError as e:
        raise ValueError(f"task.dataset_path={path!r} is not a local file; loading it from the "
                         f"Hugging Face hub needs `pip install datasets`") from e
    hub_split = {"valid": "validation"}.get(split, split)
    try:
        ds = datasets.load_dataset(path, split=hub_split)
    except Exception as e:  # offline, unknown name, missing split
        raise ValueError(f"task.dataset_path={path!r}: cannot load split {hub_split!r} from the "
                         f"Hugging Face hub ({e}); get {_HUB_HINT[source]}") from e
    return [dict(r) for r in ds]


def _field(record: dict, name: str, path: str, i: int):
    if name not in record:
        raise ValueError(f"{path}: record {i}: missing field {name!r}")
    return record[name]


def _split_rows(n: int, split: str, seed: int, fractions=(0.9, 0.05, 0.05)) -> np.ndarray:
    """A deterministic train/valid/test split of n single-file records."""
    perm = np.random.default_rng([seed, 7919]).permutation(n)
    a = int(n * fractions[0])
    b = a + int(n * fractions[1])
    return {"train": perm[:a], "valid": perm[a:b], "test": perm[b:]}[split]


def queries_from_texts(texts: Iterable[str], encode: Callable[[str], list[int]], *,
                       query_length: int, start_token: int | None, end_token: int | None,
                       pad_token: int, limit: int | None = None,
                       encode_batch: Callable[[list[str]], list[list[int]]] | None = None,
                       chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """LHP-style (raw) queries: `extract_query` on each text, skipping those it rejects.

    `encode_batch` (optional) encodes `chunk` texts per call, as `encode` would
    one by one: a fast tokenizer's batch call is several times faster than
    36k single calls, which a sweep otherwise pays each time it opens a run.
    """
    if encode_batch is None:
        encode_batch = lambda chunk_texts: [encode(t) for t in chunk_texts]  # noqa: E731
    queries = []
    it = iter(texts)
    while limit is None or len(queries) < limit:
        block = list(itertools.islice(it, chunk))
        if not block:
            break
        for ids in encode_batch(block):
            q = tasks.extract_query(ids, query_length=query_length, start_token=start_token,
                                    end_token=end_token, pad_token=pad_token)
            if q is None:
                continue
            queries.append([int(t) for t in q if t != pad_token])
            if limit is not None and len(queries) >= limit:
                break
    if not queries:
        return np.zeros((0, query_length), np.int32), np.zeros((0, query_length), np.int32)
    return tasks.pad_left(queries, query_length, pad_token)


def _batch_encoder(tokenizer) -> Callable[[list[str]], list[list[int]]] | None:
    """A fast (Rust) tokenizer's batch call, else None (encode one by one)."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    return lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]


def chat_encoder(tokenizer) -> Callable[[str], list[int]]:
    """str -> the ids of that text as one user message in the tokenizer's chat
    template, with the assistant's turn opened (`add_generation_prompt`), so the
    policy answers in the format an instruct model was tuned on."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("task.query_format='chat' needs a tokenizer with a chat template "
                         f"({getattr(tokenizer, 'name_or_path', '') or 'this tokenizer'} has none)")

    def encode(text: str) -> list[int]:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                 tokenize=False, add_generation_prompt=True)
        # The template writes its own special tokens (BOS included, where it has one).
        return tokenizer.encode(rendered, add_special_tokens=False)

    return encode


def _single_token(encode, text: str | None, field: str) -> int | None:
    if text is None:
        return None
    ids = encode(text)
    if len(ids) != 1:
        raise ValueError(f"{field}={text!r} encodes to {len(ids)} tokens; it must be one token")
    return ids[0]


def lhp_text(text: str) -> str:
    """LHP's clean-up of a TL;DR post / CNN/DM article (`datasets/tldr.py` lines
    26-28, `datasets/cnndm.py` lines 99-102): runs of 3+ newlines become two,
    the ends stripped. (LHP also ran `ftfy.fix_text`, not a dependency here.)"""
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def check_query_format(task) -> None:
    """One line naming the field when `task.query_format` and its companions disagree."""
    fmt = task.query_format
    if fmt not in QUERY_FORMATS:
        raise ValueError(f"task.query_format={fmt!r}: expected one of {QUERY_FORMATS}")
    if fmt in ("sff", "chat"):
        if task.query_dataset not in _TEXT_FIELDS:
            raise ValueError(f"task.query_format={fmt!r} formats TL;DR posts and CNN/DM "
                             f"articles, not task.query_dataset={task.query_dataset!r}")
        if task.query_prefix or task.query_suffix:
            raise ValueError("task.query_prefix / task.query_suffix are LHP's policy-only "
                             "formatting (task.query_format='lhp'); the SFF template "
                             f"(task.query_format={fmt!r}) holds its own")


def _world_tldr_queries(task, tokenizer, *, split: str, seed: int,
                        limit: int | None) -> QueryDataset:
    """The summarisation world's split: `story\nTL;DR:` queries and their references
    (` <TL;DR>` + EOS, as SFT and the reward bias read them). A story whose query
    exceeds `task.query_length` tokens is skipped, like SFF's filtered posts."""
    if task.query_format != "lhp" or task.query_prefix or task.query_suffix:
        raise ValueError("task.query_dataset='world_tldr' writes its own queries (story, "
                         "newline, 'TL;DR:'): set task.query_format='lhp' and no "
                         "task.query_prefix / task.query_suffix")
    if task.num_docs <= 0:
        raise ValueError(f"task.num_docs={task.num_docs}: task.query_dataset='world_tldr' "
                         "needs the number of training stories")
    total = task.num_docs if split == "train" else max(task.num_docs // 10, 1)
    n = total if limit is None else min(limit, total)
    docs = summaries.stories(n, seed, split, lead=task.story_lead)
    encode_batch = _batch_encoder(tokenizer) or (lambda texts: [  # noqa: E731
        tokenizer.encode(t, add_special_tokens=False) for t in texts])
    q_ids = encode_batch([summaries.query_text(s) for s in docs])
    r_ids = encode_batch([" " + s.reference for s in docs])
    eos = task.eos_token
    queries, refs = [], []
    for q, r in zip(q_ids, r_ids):
        if len(q) > task.query_length:
            continue
        queries.append(q)
        refs.append(list(r)[: task.response_length - 1] + ([eos] if eos is not None else []))
    if len(queries) < len(docs):
        logging.warning("world_tldr (%s): skipped %d of %d stories longer than "
                        "task.query_length=%d tokens", split, len(docs) - len(queries),
                        len(docs), task.query_length)
    if not queries:
        raise ValueError(f"task.query_length={task.query_length}: no world_tldr story of split "
                         f"{split!r} fits")
    q, m = tasks.pad_left(queries, task.query_length, task.pad_token)
    ref, ref_m = tasks.pad_right(refs, task.response_length, task.pad_token)
    return QueryDataset(q, m, seed, ref, ref_m)


def load_queries(task, tokenizer, *, split: str, seed: int, limit: int | None = None,
                 synthetic_texts: Sequence[str] | None = None) -> QueryDataset:
    """The (raw) query dataset of `task.query_dataset` for one split.

    Reads `task.query_dataset`, `task.dataset_path`, `task.query_format`,
    `task.query_length`, `task.response_length`, `task.start_text`,
    `task.end_text`, `task.pad_token`, `task.eos_token`.
    """
    source = task.query_dataset
    if source not in SOURCES:
        raise ValueError(f"task.query_dataset={source!r}: expected one of {SOURCES}")
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    check_query_format(task)
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    if source == "world_tldr":
        return _world_tldr_queries(task, tokenizer, split=split, seed=seed, limit=limit)
    pad = task.pad_token
    start = _single_token(encode, task.start_text, "task.start_text")
    end = _single_token(encode, task.end_text, "task.end_text")
    if source in ("synthetic", "books"):
        if source == "synthetic":
            if synthetic_texts is None:
                raise ValueError("task.query_dataset='synthetic' needs the corpus texts")
            texts = list(synthetic_texts)
        else:
            texts = [str(_field(r, "text", task.dataset_path, i))
                     for i, r in enumerate(_load_records(source, task.dataset_path, "train"))]
        rows = _split_rows(len(texts), split, seed)
        q, m = queries_from_texts((texts[i] for i in rows), encode,
                                  query_length=task.query_length, start_token=start,
                                  end_token=end, pad_token=pad, limit=limit,
                                  encode_batch=_batch_encoder(tokenizer))
        if len(q) == 0:
            raise ValueError(f"task.query_dataset={source!r}: no text of split {split!r} yields a "
                             f"query (check task.start_text / task.end_text)")
        return QueryDataset(q, m, seed)
    records = _load_records(source, task.dataset_path, split)
    text_field, ref_field = _TEXT_FIELDS[source]
    encode_query = chat_encoder(tokenizer) if task.query_format == "chat" else encode
    if task.query_format != "lhp" and limit is not None:
        records = records[:limit]
    queries, refs = [], []
    eos = task.eos_token
    skipped = 0
    for i, r in enumerate(records):
        text = str(_field(r, text_field, task.dataset_path, i))
        if task.query_format == "lhp":
            # LHP `language/datasets.py` lines 47-71 on the cleaned text.
            q = tasks.extract_query(encode(lhp_text(text)), query_length=task.query_length,
                                    start_token=start, end_token=end, pad_token=pad)
            if q is None:
                skipped += 1
                continue
            q = [int(t) for t in q if t != pad]
        else:
            try:
                if source == "tldr":
                    q = tasks.format_tldr_query(
                        encode_query, subreddit=str(_field(r, "subreddit", task.dataset_path, i)),
                        title=str(_field(r, "title", task.dataset_path, i)), post=text,
                        query_length=task.query_length)
                else:
                    q = tasks.format_cnndm_query(encode_query, article=text,
                                                 query_length=task.query_length)
            except tasks.QueryTooLong:
                # The rest of the query (subreddit, title) alone exceeds query_length:
                # SFF's filtered TL;DR excludes such posts; skip them here too.
                skipped += 1
                continue
        queries.append(q)
        ref_text = r.get(ref_field)
        if ref_text is not None:
            # References get a leading space (docs/implementation_details.md item 5) and
            # end with EOS.
            ref = encode(" " + str(ref_text).strip())[: task.response_length - 1]
            refs.append(ref + ([eos] if eos is not None else []))
        if task.query_format == "lhp" and limit is not None and len(queries) >= limit:
            break
    if skipped:
        why = ("has no task.end_text within task.query_length tokens"
               if task.query_format == "lhp" else "cannot fit task.query_length")
        logging.warning("%s (%s): skipped %d of %d records whose query %s (%d tokens)",
                        task.dataset_path, split, skipped, len(records), why, task.query_length)
    if not queries:
        raise ValueError(f"task.dataset_path={task.dataset_path!r}: split {split!r} has no "
                         f"record that makes a query of task.query_length={task.query_length}"
                         " (check task.start_text / task.end_text)")
    q, m = tasks.pad_left(queries, task.query_length, pad)
    ref, ref_m = (None, None)
    if len(refs) == len(queries):
        ref, ref_m = tasks.pad_right(refs, task.response_length, pad)
    return QueryDataset(q, m, seed, ref, ref_m)

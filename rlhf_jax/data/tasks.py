"""Query formatting and response post-processing for the RLHF tasks.

Two halves:

* Device side (jnp, jit-safe, fixed shapes): truncating sampled responses at a
  token, the penalty for responses that never produce it (Ziegler), and the
  EOS index and mask (Stiennon). docs/implementation_details.md items 8-10.
* Host side (numpy / Python): cutting dataset text into queries (LHP
  `language/datasets.py`), the Stiennon TL;DR and CNN/DM query formats
  (SFF `tasks.process_query`), and left / right padding. Items 1, 2, 5.

Padding convention: queries are LEFT-padded, because the response follows
the query and the model reads pads as masked tokens that do not advance
positions (`position_ids = cumsum(mask) - mask`, implementation details item 3). LHP right-padded
its queries instead; with masked attention and those position ids the two
give the same logits. The pad id is a token outside the vocabulary (LHP:
50259 for GPT-2), never EOS (item 2).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


# --------------------------------------------------------------------------
# Device side: responses.


def _check_truncate_after(truncate_after: int, response_length: int) -> None:
    if not 0 <= truncate_after < response_length:
        raise ValueError(
            f"task.truncate_after={truncate_after} must lie in [0, response_length="
            f"{response_length}): otherwise no response can ever be truncated")


def postprocess_responses(
    responses_BxR: Array,
    truncate_token: Optional[int],
    truncate_after: int,
    pad_token: int,
) -> Array:
    """Truncate each response after its first `truncate_token` at or after `truncate_after`.

    The truncating token itself is kept; every token after it becomes
    `pad_token`. Occurrences before `truncate_after` are ignored, so
    responses are at least `truncate_after + 1` tokens long. Rows without the
    token are unchanged, as is everything when `truncate_token` is None.
    Matches LHP `lm_tasks.postprocess_fn_from_hparams` (item 8).
    """
    if truncate_token is None:
        return responses_BxR
    _check_truncate_after(truncate_after, responses_BxR.shape[1])
    idx_R = jnp.arange(responses_BxR.shape[1])
    hit_BxR = (responses_BxR == truncate_token) & (idx_R >= truncate_after)[None, :]
    hit_i32_BxR = hit_BxR.astype(jnp.int32)
    # Strictly after the first hit: at least one hit at an earlier index.
    after_first_hit_BxR = (jnp.cumsum(hit_i32_BxR, axis=1) - hit_i32_BxR) > 0
    return jnp.where(after_first_hit_BxR, jnp.asarray(pad_token, responses_BxR.dtype),
                     responses_BxR)


def penalize_scores(
    scores_B: Array,
    responses_BxR: Array,
    truncate_token: Optional[int],
    truncate_after: int,
    penalty_reward_value,
) -> Array:
    """Replace the score by `penalty_reward_value` where the response never ends.

    A response "ends" when `truncate_token` occurs in `responses[:, truncate_after:]`
    (LHP `filter_fn_from_hparams` + `make_score_fn.penalize`, item 9). Pass
    either the raw or the post-processed responses: truncation keeps the
    token, so the result is the same. `truncate_token=None` disables the penalty.
    """
    if truncate_token is None:
        return scores_B
    _check_truncate_after(truncate_after, responses_BxR.shape[1])
    valid_B = jnp.any(responses_BxR[:, truncate_after:] == truncate_token, axis=1)
    return jnp.where(valid_B, scores_B, jnp.asarray(penalty_reward_value, scores_B.dtype))


def first_eos_index(responses_BxR: Array, eos_token: int) -> Array:
    """Index of the first `eos_token` in each row, or R-1 where there is none.

    Stiennon scores a summary at its EOS; a response that never emits EOS is
    scored at its last token (item 10).
    """
    is_eos_BxR = responses_BxR == eos_token
    last = responses_BxR.shape[1] - 1
    return jnp.where(jnp.any(is_eos_BxR, axis=1),
                     jnp.argmax(is_eos_BxR, axis=1), last).astype(jnp.int32)


# --------------------------------------------------------------------------
# Host side: queries.


def extract_query(
    tokens: Sequence[int],
    *,
    query_length: int,
    start_token: Optional[int] = None,
    end_token: Optional[int] = None,
    pad_token: int,
) -> Optional[np.ndarray]:
    """Cut one encoded text into a fixed-length query, or None to skip the text.

    As LHP `language/datasets.py` (`Dataset.tf_dataset`), on token ids:

    1. `start_token` set: drop everything up to and including its first
       occurrence; skip the text if it has none. Quirk kept from LHP: when that
       first occurrence is the text's last token, the text is kept whole
       rather than cut to nothing.
    2. Keep the first `query_length` tokens.
    3. `end_token` set: cut back to, and including, its last occurrence in
       what is left; skip the text if there is none.
    4. Left-pad with `pad_token` to `query_length` (LHP right-pads; see the
       module docstring). A text that leaves no tokens is skipped (LHP would
       emit an all-pad query, which gives the policy nothing to condition on).

    For the sentiment / descriptiveness tasks LHP uses start = end = '.'
    (token 13); for CNN/DM end = '\\n' (198).

    Returns:
        int32 array [query_length], or None.
    """
    if query_length <= 0:
        raise ValueError(f"task.query_length must be positive, got {query_length}")
    tokens = list(tokens)
    if start_token is not None:
        if start_token not in tokens:
            return None
        first = tokens.index(start_token) + 1
        if first < len(tokens):
            tokens = tokens[first:]
    tokens = tokens[:query_length]
    if end_token is not None:
        if end_token not in tokens:
            return None
        tokens = tokens[:len(tokens) - tokens[::-1].index(end_token)]
    if not tokens:
        return None
    ids_1xT, _ = pad_left([tokens], query_length, pad_token)
    return ids_1xT[0]


def _pad(seqs: Sequence[Sequence[int]], length: int, pad_token: int, left: bool):
    if length <= 0:
        raise ValueError(f"pad length must be positive, got {length}")
    ids_NxT = np.full((len(seqs), length), pad_token, dtype=np.int32)
    mask_NxT = np.zeros((len(seqs), length), dtype=np.int32)
    for i, seq in enumerate(seqs):
        n = len(seq)
        if n > length:
            raise ValueError(f"sequence {i} has {n} tokens, more than the pad length {length}")
        cols = slice(length - n, length) if left else slice(0, n)
        ids_NxT[i, cols] = np.asarray(seq)
        mask_NxT[i, cols] = 1
    return ids_NxT, mask_NxT


def pad_left(
    seqs: Sequence[Sequence[int]], length: int, pad_token: int
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists to `length`: `(ids_NxT, mask_NxT)`, int32, mask 1 on tokens.

    Queries are left-padded (the response follows them). A sequence longer
    than `length` is an error, not silently cut.
    """
    return _pad(seqs, length, pad_token, left=True)


def pad_right(
    seqs: Sequence[Sequence[int]], length: int, pad_token: int
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token lists to `length`: `(ids_NxT, mask_NxT)`, int32, mask 1 on tokens.

    Responses and reference summaries are right-padded (LHP label files store
    `sample*` that way).
    """
    return _pad(seqs, length, pad_token, left=False)


def format_queries(query_BxQ, query_mask_BxQ, prefix: Sequence[int] = (),
                   suffix: Sequence[int] = (), pad_token: int = 0):
    """The policy's view of raw queries: `prefix + query + suffix`, left-padded.

    LHP's `lm_tasks.query_formatter` (lines 68-80): the policy and the
    reference read `query_prefix + query + query_suffix`, while the reward
    model and the label files hold the raw query. `query_BxQ` is left-padded
    (its tokens contiguous at the right); the result has width
    `len(prefix) + Q + len(suffix)` with the prefix right before each row's
    first token. numpy in, numpy out; jax arrays (also traced, under jit) in,
    jax out. Without prefix and suffix the inputs come back unchanged.

    Returns:
        `(ids_BxW, mask_BxW)`.
    """
    prefix, suffix = tuple(int(t) for t in prefix), tuple(int(t) for t in suffix)
    if not prefix and not suffix:
        return query_BxQ, query_mask_BxQ
    xp = np if isinstance(query_BxQ, np.ndarray) else jnp
    p, q, s = len(prefix), query_BxQ.shape[1], len(suffix)
    w = p + q + s
    j_1xW = xp.arange(w)[None, :]
    first_Bx1 = q - xp.sum(query_mask_BxQ != 0, axis=1, keepdims=True)  # first token column
    in_suffix = j_1xW >= p + q
    in_query = (j_1xW >= first_Bx1 + p) & ~in_suffix
    in_prefix = (j_1xW >= first_Bx1) & (j_1xW < first_Bx1 + p)
    table = xp.asarray(prefix + suffix + (pad_token,), dtype=query_BxQ.dtype)
    from_query = xp.take_along_axis(
        query_BxQ, xp.broadcast_to(xp.clip(j_1xW - p, 0, q - 1), (query_BxQ.shape[0], w)),
        axis=1)
    from_table = table[xp.where(in_prefix, xp.clip(j_1xW - first_Bx1, 0, max(p - 1, 0)),
                                xp.where(in_suffix, j_1xW - q, p + s))]
    ids = xp.where(in_query, from_query, from_table)
    mask = (in_prefix | in_query | in_suffix).astype(query_mask_BxQ.dtype)
    return ids, mask


def _cut_point(text: str) -> int:
    """Where to cut `text` next: its last newline, else drop one character.

    SFF `tasks.process_query` (`truncate_text='\\n'`): `rindex` of the newline,
    and `i = -1` (one character off the end) when there is none.
    """
    i = text.rfind("\n")
    return i if i >= 0 else len(text) - 1


class QueryTooLong(ValueError):
    """A formatted query exceeds `task.query_length` even with its body emptied."""


def _fit_field(
    encode: Callable[[str], list[int]],
    render: Callable[[str], str],
    text: str,
    query_length: int,
    *,
    caller: str,
    field: str,
) -> list[int]:
    """Encode `render(text)`, shortening `text` from the right until it fits.

    SFF `tasks.process_query` with `truncate_text='\\n'`: repeatedly cut the
    text at its last newline (without one, drop its last character) and
    re-encode, so the query ends on a paragraph boundary where possible.
    """
    if query_length <= 0:
        raise ValueError(f"task.query_length must be positive, got {query_length}")
    tokens = list(encode(render(text)))
    while len(tokens) > query_length:
        if not text:
            raise QueryTooLong(
                f"{caller}: the query takes {len(tokens)} tokens even with an empty {field}, "
                f"more than task.query_length={query_length}")
        text = text[:_cut_point(text)]
        tokens = list(encode(render(text)))
    return tokens


def format_tldr_query(
    encode: Callable[[str], list[int]],
    *,
    subreddit: str,
    title: str,
    post: str,
    query_length: int,
) -> list[int]:
    """The Stiennon et al. 2020 TL;DR query, encoded, at most `query_length` tokens.

    Format (SFF, docs/implementation_details.md item 5):
    `"SUBREDDIT: r/{subreddit}\\n\\nTITLE: {title}\\n\\nPOST: {post}\\n\\nTL;DR:"`.
    If too long, the post is cut back at its last newline (without one, by a
    character) until the query fits, as SFF. Unpadded: pad with `pad_left`.

    Raises:
        ValueError: if even an empty post does not fit.
    """
    def render(p: str) -> str:
        return f"SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {p}\n\nTL;DR:"

    return _fit_field(encode, render, post, query_length,
                      caller="format_tldr_query", field="post")


CNNDM_QUERY_PREFIX = "Article:\n\n"
CNNDM_QUERY_SUFFIX = "\n\nTL;DR:"


def format_cnndm_query(
    encode: Callable[[str], list[int]],
    *,
    article: str,
    query_length: int,
) -> list[int]:
    """The CNN/DM query, encoded, at most `query_length` tokens.

    Format: `"Article:\\n\\n{article}\\n\\nTL;DR:"`.

    The SFF-style CNN/DM query (`task.query_format='sff'`): the prefix and
    suffix of LHP's cnndm task around the article, cut back at its last
    newline (without one, by a character) until the whole query fits
    `query_length`. LHP's own format (`task.query_format='lhp'`) gives the
    article alone 500 tokens (`extract_query` with `end_token` '\\n') and adds
    prefix and suffix for the policy only (`format_queries`). Unpadded: pad
    with `pad_left`.

    Raises:
        ValueError: if even an empty article does not fit.
    """
    def render(a: str) -> str:
        return f"{CNNDM_QUERY_PREFIX}{a}{CNNDM_QUERY_SUFFIX}"

    return _fit_field(encode, render, article, query_length,
                      caller="format_cnndm_query", field="article")

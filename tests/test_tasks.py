"""Response truncation / penalty / EOS masks, query extraction and formatting."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest

from rlhf_jax.config_lib import fixtures_dir
from rlhf_jax.data import datasets, tasks

PAD = 99
DOT = 13


def chars(s):
    return [ord(c) for c in s]


def unchars(tokens):
    return "".join(chr(t) for t in tokens)


# ---------------------------------------------------------------- responses

RESPONSES = jnp.array([
    [DOT, 5, 6, DOT, 7, DOT],  # DOT at 0 is before truncate_after=2: ignored; cut after 3
    [1, 2, 3, 4, 5, 6],        # no DOT: unchanged
    [1, 2, DOT, 4, 5, 6],      # DOT exactly at truncate_after: cut after 2
    [1, 2, 3, 4, 5, DOT],      # DOT last: nothing to pad
    [DOT, DOT, 1, 2, 3, 4],    # DOTs only before truncate_after: unchanged
])


def test_postprocess_responses_hand_cases():
    got = tasks.postprocess_responses(RESPONSES, DOT, 2, PAD)
    np.testing.assert_array_equal(got, [
        [DOT, 5, 6, DOT, PAD, PAD],
        [1, 2, 3, 4, 5, 6],
        [1, 2, DOT, PAD, PAD, PAD],
        [1, 2, 3, 4, 5, DOT],
        [DOT, DOT, 1, 2, 3, 4],
    ])
    assert got.dtype == RESPONSES.dtype
    # truncate_after = 0: the first DOT anywhere.
    np.testing.assert_array_equal(tasks.postprocess_responses(RESPONSES, DOT, 0, PAD)[0],
                                  [DOT] + [PAD] * 5)
    assert tasks.postprocess_responses(RESPONSES, None, 2, PAD) is RESPONSES


def test_postprocess_responses_jits():
    fn = jax.jit(functools.partial(tasks.postprocess_responses, truncate_token=DOT,
                                   truncate_after=2, pad_token=PAD))
    np.testing.assert_array_equal(fn(RESPONSES), tasks.postprocess_responses(RESPONSES, DOT, 2, PAD))


def test_penalize_scores_hand_cases():
    scores = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])
    got = tasks.penalize_scores(scores, RESPONSES, DOT, 2, -1.0)
    # Rows 1 (no DOT) and 4 (DOTs only before truncate_after) never end: penalised.
    np.testing.assert_array_equal(got, [1.0, -1.0, 3.0, 4.0, -1.0])
    # Same answer on the post-processed responses (the truncating token is kept).
    post = tasks.postprocess_responses(RESPONSES, DOT, 2, PAD)
    np.testing.assert_array_equal(tasks.penalize_scores(scores, post, DOT, 2, -1.0), got)
    np.testing.assert_array_equal(tasks.penalize_scores(scores, RESPONSES, None, 2, -1.0), scores)
    jitted = jax.jit(lambda s, r: tasks.penalize_scores(s, r, DOT, 2, -1.0))(scores, RESPONSES)
    np.testing.assert_array_equal(jitted, got)


def test_truncate_after_out_of_range_raises():
    with pytest.raises(ValueError, match="task.truncate_after"):
        tasks.postprocess_responses(RESPONSES, DOT, 6, PAD)
    with pytest.raises(ValueError, match="task.truncate_after"):
        tasks.penalize_scores(jnp.zeros(5), RESPONSES, DOT, -1, -1.0)


def test_first_eos_index():
    eos = 0
    responses = jnp.array([[5, 0, 3, 0], [1, 2, 3, 4], [0, 1, 1, 1]])
    np.testing.assert_array_equal(tasks.first_eos_index(responses, eos), [1, 3, 0])


# ---------------------------------------------------------------- queries


def test_extract_query_cases():
    extract = functools.partial(tasks.extract_query, query_length=5, pad_token=PAD)
    # After the first DOT: [2,3,DOT,4,5,DOT] -> first 5: [2,3,DOT,4,5] -> back to last DOT.
    got = extract([1, DOT, 2, 3, DOT, 4, 5, DOT], start_token=DOT, end_token=DOT)
    np.testing.assert_array_equal(got, [PAD, PAD, 2, 3, DOT])
    assert got.dtype == np.int32 and got.shape == (5,)
    # No start token: skipped.
    assert extract([1, 2, 3], start_token=DOT) is None
    # No end token within the first query_length tokens after the start: skipped.
    assert extract([DOT, 1, 2, 3, 4, 5, 6, DOT], start_token=DOT, end_token=DOT) is None
    # LHP quirk: the start token is the last token -> the text is kept whole.
    np.testing.assert_array_equal(extract([1, 2, DOT], start_token=DOT), [PAD, PAD, 1, 2, DOT])
    # Neither set: just the first query_length tokens.
    np.testing.assert_array_equal(extract([1, 2, 3, 4, 5, 6, 7]), [1, 2, 3, 4, 5])
    # Nothing left: skipped.
    assert extract([]) is None
    with pytest.raises(ValueError, match="task.query_length"):
        tasks.extract_query([1], query_length=0, pad_token=PAD)


def test_pad_left_and_right():
    ids, mask = tasks.pad_left([[1, 2], [3], []], 3, 0)
    np.testing.assert_array_equal(ids, [[0, 1, 2], [0, 0, 3], [0, 0, 0]])
    np.testing.assert_array_equal(mask, [[0, 1, 1], [0, 0, 1], [0, 0, 0]])
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    ids, mask = tasks.pad_right([[1, 2], [3]], 3, PAD)
    np.testing.assert_array_equal(ids, [[1, 2, PAD], [3, PAD, PAD]])
    np.testing.assert_array_equal(mask, [[1, 1, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match="sequence 1 has 4 tokens"):
        tasks.pad_left([[1], [1, 2, 3, 4]], 3, 0)


def tldr(post):
    return f"SUBREDDIT: r/a\n\nTITLE: t\n\nPOST: {post}\n\nTL;DR:"


def test_format_tldr_query_cuts_post_back():
    # Fixed part: "SUBREDDIT: r/a" (14) + "\n\nTITLE: t" (10) + "\n\nPOST: " (8)
    # + "\n\nTL;DR:" (8) = 40 characters; the post adds its own length.
    assert len(tldr("")) == 40
    post = "line one\nline two\nthree four"  # 28 characters -> 68
    fmt = functools.partial(tasks.format_tldr_query, chars, subreddit="a", title="t", post=post)
    cases = [
        (68, post),                   # fits as is
        (60, "line one\nline two"),   # one cut at the last newline: 57
        (50, "line one"),             # two newline cuts: 48
        # No newline left: SFF drops one character at a time (`i = -1` in
        # `tasks.process_query`), not back to a space: "line on" (47) -> "line " (45).
        (47, "line on"),
        (45, "line "),
        (42, "li"),
        (40, ""),                     # the empty post just fits
    ]
    for query_length, want_post in cases:
        got = fmt(query_length=query_length)
        assert unchars(got) == tldr(want_post), query_length
        assert len(got) <= query_length
    with pytest.raises(ValueError, match="format_tldr_query.*empty post.*task.query_length=39"):
        fmt(query_length=39)


def test_format_cnndm_query():
    # "Article:\n\n" (10) + article + "\n\nTL;DR:" (8)
    article = "First para.\n\nSecond para."  # 25 characters -> 43
    got = tasks.format_cnndm_query(chars, article=article, query_length=43)
    assert unchars(got) == "Article:\n\nFirst para.\n\nSecond para.\n\nTL;DR:"
    # Too long by one: cut at the last newline, keeping what precedes it, as SFF
    # (`text[:text.rindex("\n")]`): "First para.\n" -> 30 characters.
    got = tasks.format_cnndm_query(chars, article=article, query_length=42)
    assert unchars(got) == "Article:\n\nFirst para.\n\n\nTL;DR:"
    # One fewer: a second newline cut -> "First para." (29).
    got = tasks.format_cnndm_query(chars, article=article, query_length=29)
    assert unchars(got) == "Article:\n\nFirst para.\n\nTL;DR:"
    with pytest.raises(ValueError, match="format_cnndm_query.*empty article"):
        tasks.format_cnndm_query(chars, article=article, query_length=17)


# ---------------------------------------------------------------- LHP formats


def test_format_queries_puts_prefix_before_each_row_and_suffix_at_the_end():
    q = np.array([[PAD, PAD, 1, 2], [3, 4, 5, 6], [PAD, PAD, PAD, 7]], np.int32)
    m = (q != PAD).astype(np.int32)
    ids, mask = tasks.format_queries(q, m, (20, 21), (30,), PAD)
    np.testing.assert_array_equal(ids, [[PAD, PAD, 20, 21, 1, 2, 30],
                                        [20, 21, 3, 4, 5, 6, 30],
                                        [PAD, PAD, PAD, 20, 21, 7, 30]])
    np.testing.assert_array_equal(mask, ids != PAD)
    assert isinstance(ids, np.ndarray)
    # The same under jit (the rollout formats on device).
    got = jax.jit(lambda a, b: tasks.format_queries(a, b, (20, 21), (30,), PAD))(q, m)
    np.testing.assert_array_equal(got[0], ids)
    np.testing.assert_array_equal(got[1], mask)
    # No prefix or suffix: the inputs themselves.
    same = tasks.format_queries(q, m, (), (), PAD)
    assert same[0] is q and same[1] is m


class CharTokenizer:
    """One token per character (ids = code points): every text is its own token list."""

    def encode(self, text, add_special_tokens=False):
        return chars(text)


def lhp_task(source, **overrides):
    t = dict(query_dataset=source, dataset_path=os.path.join(fixtures_dir(), f"{source}_mini"),
             query_format="lhp", query_length=150, response_length=40,
             query_prefix="Article:\n\n" if source == "cnndm" else "", query_suffix="\n\nTL;DR:",
             start_text=None, end_text="\n" if source == "cnndm" else None, pad_token=1 << 20,
             eos_token=0)
    t.update(overrides)
    return ml_collections.ConfigDict(t)


def test_lhp_tldr_and_cnndm_queries_are_the_raw_text_the_policy_adds_prefix_and_suffix():
    for source, field in (("tldr", "post"), ("cnndm", "article")):
        task = lhp_task(source)
        qs = datasets.load_queries(task, CharTokenizer(), split="valid", seed=0)
        with open(f"{task.dataset_path}/valid.jsonl") as f:
            records = [json.loads(line) for line in f]
        for i in range(3):
            text = records[i][field]
            raw = unchars(qs.query_NxQ[i][qs.query_mask_NxQ[i] > 0])
            # LHP `language/datasets.py`: the first query_length tokens, cut back
            # to the last end token (cnndm: '\n', which drops the last paragraph).
            want = text[:150]
            if source == "cnndm":
                want = want[:want.rindex("\n") + 1]
            assert raw == want, (source, i)
            assert "SUBREDDIT" not in raw and not raw.endswith("TL;DR:")
            ids, mask = tasks.format_queries(qs.query_NxQ[i:i + 1], qs.query_mask_NxQ[i:i + 1],
                                             chars(task.query_prefix), chars(task.query_suffix),
                                             task.pad_token)
            assert unchars(ids[0][mask[0] > 0]) == task.query_prefix + want + "\n\nTL;DR:"
    # Stiennon's template is the query itself, read by policy and reward model alike.
    sff = datasets.load_queries(lhp_task("tldr", query_format="sff", query_suffix="",
                                         query_length=400), CharTokenizer(), split="valid",
                                seed=0)
    first = unchars(sff.query_NxQ[0][sff.query_mask_NxQ[0] > 0])
    assert first.startswith("SUBREDDIT: r/") and first.endswith("\n\nTL;DR:")


def test_query_format_fields_are_checked():
    with pytest.raises(ValueError, match=r"task.query_format='sff'.*books"):
        datasets.check_query_format(lhp_task("books", query_format="sff", query_suffix=""))
    with pytest.raises(ValueError, match=r"task.query_prefix / task.query_suffix"):
        datasets.check_query_format(lhp_task("tldr", query_format="sff"))
    with pytest.raises(ValueError, match=r"task.query_format='raw'"):
        datasets.check_query_format(lhp_task("tldr", query_format="raw"))

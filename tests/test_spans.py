"""Span marks: token masks from character spans, the mock span labeller and its
noise, the label files that carry marks, the held-out judge (`rlhf_jax.labelling.spans`)."""

import json

import numpy as np
import pytest

from rlhf_jax.data.label_files import read_labels_jsonl, read_sff_comparisons, write_labels_jsonl
from rlhf_jax.data.labels import Labels, char_spans_to_mask, mask_to_ranges, ranges_to_mask
from rlhf_jax.labelling import spans

# A toy tokenizer: id -> text piece.
PIECES = {1: "The", 2: " cat", 3: " was", 4: " horrible", 5: " bad", 6: "ly", 7: ".", 8: ""}
PAD = 99


def decode(ids):
    return "".join(PIECES[int(t)] for t in ids)


class BadWords:
    """A span source that marks the words 'horrible' and 'badly'."""

    def bad_spans(self, text):
        out = []
        for word in ("horrible", "badly"):
            start = text.find(word)
            if start >= 0:
                out.append((start, start + len(word), "negative"))
        return out


def test_ranges_and_masks_by_hand():
    assert mask_to_ranges([0, 1, 1, 0, 1]) == [[1, 3], [4, 5]]
    assert mask_to_ranges([0, 0]) == []
    np.testing.assert_array_equal(ranges_to_mask([[1, 3], [4, 5]], 6), [0, 1, 1, 0, 1, 0])


def test_char_spans_mark_overlapping_tokens_and_never_empty_ones():
    # "The cat was" = [0,3) [3,7) [7,11); an EOS renders nothing at [11,11).
    offsets = [(0, 3), (3, 7), (7, 11), (11, 11)]
    np.testing.assert_array_equal(char_spans_to_mask(offsets, [(4, 7, "negative")], 6),
                                  [0, 1, 0, 0, 0, 0])
    # A span covering a token boundary marks both tokens; one ending at 11 not the EOS.
    np.testing.assert_array_equal(char_spans_to_mask(offsets, [(5, 11, "x")], 4), [0, 1, 1, 0])
    np.testing.assert_array_equal(char_spans_to_mask(offsets, [], 4), [0, 0, 0, 0])


def test_token_offsets_from_prefix_decodes():
    np.testing.assert_array_equal(spans.token_offsets([1, 2, 4, 8], decode),
                                  [[0, 3], [3, 7], [7, 16], [16, 16]])


def test_span_labeler_marks_the_bad_word_tokens():
    lab = spans.SpanLabeler(BadWords(), decode)
    # "The cat was horrible." and "The cat was badly." ("bad" + "ly" both marked).
    np.testing.assert_array_equal(lab.mark([1, 2, 3, 4, 7], 7), [0, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(lab.mark([1, 2, 3, 5, 6, 7], 7), [0, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(lab.mark([1, 2, 7], 4), [0, 0, 0, 0])


def test_span_labeler_noise_miss_and_flip():
    toks = [1, 2, 3, 4, 7]
    assert spans.SpanLabeler(BadWords(), decode, miss=1.0).mark(toks, 7).sum() == 0
    # flip=1 marks every real token, never padding.
    np.testing.assert_array_equal(spans.SpanLabeler(BadWords(), decode, flip=1.0).mark(toks, 7),
                                  [1, 1, 1, 1, 1, 0, 0])
    # A half-noisy labeller: the draw is keyed by (seed, tokens), so it repeats
    # for the same seed and differs across seeds on some response.
    many = [[1, 2, 3, 4, 7][: 2 + i % 4] + [7] * (i // 4) for i in range(40)]
    def marks(seed):
        lab = spans.SpanLabeler(BadWords(), decode, miss=0.5, flip=0.3, seed=seed)
        return np.stack([lab.mark(t, 16) for t in many])
    np.testing.assert_array_equal(marks(3), marks(3))
    assert (marks(3) != marks(4)).any()
    # The flip rate is about right over many tokens (300 draws at p=0.3).
    flips = np.stack([spans.SpanLabeler(BadWords(), decode, flip=0.3, seed=s).mark([1, 2, 3], 3)
                      for s in range(100)])
    assert 0.2 < flips.mean() < 0.4
    with pytest.raises(ValueError, match=r"labels.spans.miss=1.5 must lie in \[0, 1\]"):
        spans.SpanLabeler(BadWords(), decode, miss=1.5)


def _labels():
    r = np.full((2, 2, 6), PAD, np.int32)
    r[0, 0, :5] = [1, 2, 3, 4, 7]
    r[0, 1, :3] = [1, 2, 7]
    r[1, 0, :6] = [1, 2, 3, 5, 6, 7]
    r[1, 1, :4] = [1, 2, 3, 7]
    return Labels("pairwise", np.asarray([[PAD, 1], [1, 2]]), np.asarray([[0, 1], [1, 1]]), r,
                  (r != PAD).astype(np.int32), PAD, best_N=np.asarray([1, 0]))


def test_annotate_then_jsonl_round_trip(tmp_path):
    marked = spans.SpanLabeler(BadWords(), decode).annotate(_labels())
    expected = np.zeros((2, 2, 6), np.int32)
    expected[0, 0, 3] = 1
    expected[1, 0, 3:5] = 1
    np.testing.assert_array_equal(marked.span_mask_NxKxR, expected)
    path = tmp_path / "l.jsonl"
    write_labels_jsonl(path, marked)
    rec = json.loads(path.read_text().splitlines()[1])
    assert rec["spans"] == [[[3, 5]], []]
    back = read_labels_jsonl(path, query_length=2, response_length=6, pad_token=PAD,
                             vocab_size=10, label_type="pairwise")
    np.testing.assert_array_equal(back.span_mask_NxKxR, expected)
    # Unmarked labels are written without the field and read back as None.
    write_labels_jsonl(path, _labels())
    assert "spans" not in path.read_text()
    assert read_labels_jsonl(path, query_length=2, response_length=6, pad_token=PAD,
                             vocab_size=10, label_type="pairwise").span_mask_NxKxR is None


def test_bad_span_fields_fail_with_one_line(tmp_path):
    path = tmp_path / "l.jsonl"
    write_labels_jsonl(path, spans.SpanLabeler(BadWords(), decode).annotate(_labels()))
    lines = path.read_text().splitlines()
    rec = json.loads(lines[0])
    rec["spans"] = [[[3, 9]], []]
    path.write_text(json.dumps(rec) + "\n" + lines[1] + "\n")
    kw = dict(query_length=2, response_length=6, pad_token=PAD, vocab_size=10,
              label_type="pairwise")
    with pytest.raises(ValueError, match=r"record 0 \(line 1\): field 'spans\[0\]' holds "
                                         r"\[3, 9\], not a token range"):
        read_labels_jsonl(path, **kw)
    del rec["spans"]
    path.write_text(json.dumps(rec) + "\n" + lines[1] + "\n")
    with pytest.raises(ValueError, match="record 1 .* field 'spans' is present but record 0"):
        read_labels_jsonl(path, **kw)
    with pytest.raises(ValueError, match="field 'span_mask_NxKxR' marks a padding position"):
        bad = np.zeros((2, 2, 6), np.int32)
        bad[0, 1, 5] = 1
        Labels(**{**_labels().__dict__, "span_mask_NxKxR": bad})


def test_sff_reader_maps_character_marks_to_the_encoded_tokens(tmp_path):
    # One token per character; the summary is encoded as " " + text, then EOS 0.
    encode = lambda s: [ord(c) for c in s]  # noqa: E731
    offsets = lambda s: [(i, i + 1) for i in range(len(s))]  # noqa: E731
    rec = {"info": {"id": "1", "subreddit": "r", "title": "t", "post": "p"},
           "summaries": [{"text": "ab cd"}, {"text": "xyz"}], "choice": 1,
           "extra": {"spans": [[{"start": 1, "end": 2, "text": " cd", "chars": [2, 5]}], []]}}
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    kw = dict(encode=encode, query_length=64, response_length=8, eos_token=0, pad_token=999)
    labels = read_sff_comparisons(path, offsets=offsets, **kw)
    # " ab cd" + EOS: characters 2..5 of the text are tokens 3..6.
    np.testing.assert_array_equal(labels.span_mask_NxKxR[0, 0], [0, 0, 0, 1, 1, 1, 0, 0])
    assert labels.span_mask_NxKxR[0, 1].sum() == 0
    assert read_sff_comparisons(path, **kw).span_mask_NxKxR is None  # no offsets: ignored
    rec["extra"]["spans"][0][0]["chars"] = [2, 9]
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match=r"record 0 \(line 1\): field 'extra.spans\[0\]' holds"):
        read_sff_comparisons(path, offsets=offsets, **kw)


def test_vader_spans_mark_negative_lexicon_words():
    text = "The happy dog looked horrible and gloomy."
    got = [text[a:b] for a, b, kind in spans.VaderSpans().bad_spans(text)]
    assert got == ["horrible", "gloomy"]


def test_judge_gold_subtracts_weighted_bad_word_counts():
    judge = spans.JudgeGold(lambda texts: np.asarray([0.5] * len(texts)), BadWords(),
                            {"negative": 0.25, "ungrammatical": 1.0})
    out = judge(["The cat was horrible.", "The cat.", "horrible badly"])
    np.testing.assert_allclose(out, [0.25, 0.5, 0.0])
    with pytest.raises(ValueError, match="unknown span kind"):
        spans.JudgeGold(lambda t: t, BadWords(), {"rude": 1.0})


def test_human_queue_answers_carry_their_marks_as_a_token_mask():
    from rlhf_jax.labelling.label_server.db import Answer
    from rlhf_jax.labelling.label_server.queue import _span_mask

    answers = [Answer(1, "a", 0, ({"response": 1, "start": 0, "end": 2},), "web", "t"),
               Answer(2, "b", 1, (), "web", "t")]
    mask = _span_mask(answers, (2, 3))
    np.testing.assert_array_equal(mask, [[[0, 0, 0], [1, 1, 0]], [[0, 0, 0], [0, 0, 0]]])


def test_world_gold_marks_negative_words_and_ungrammatical_stretches():
    from rlhf_jax import config_lib

    cfg = config_lib.base_config()  # labels.gold = world
    text = "He remembered the awful jar on the hill. Peter wa"
    ids = [ord(c) for c in text]  # one token per character
    world = spans.span_source(cfg)
    assert world([text])[0] < 0  # the gold itself, as the labeller's
    both = spans.SpanLabeler(world, lambda t: "".join(chr(i) for i in t)).mark(ids, len(ids) + 2)
    marked = "".join(c for c, m in zip(text, both) if m)
    assert marked == "awfulwa" and both[-2:].sum() == 0
    neg = spans.SpanLabeler(world, lambda t: "".join(chr(i) for i in t), kinds=("negative",))
    assert "".join(c for c, m in zip(text, neg.mark(ids, len(ids))) if m) == "awful"
    cfg.labels.gold = "none"
    with pytest.raises(ValueError, match="labels.gold='none' has no word-level spans"):
        spans.span_source(cfg)

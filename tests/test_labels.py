"""Label sets and their file formats: LHP json, SFF comparisons, our jsonl."""

import json
import os
import pathlib

import numpy as np
import pytest

from rlhf_jax.data import label_files as label_files_lib
from rlhf_jax.data.label_files import (read_labels, read_labels_jsonl, read_lhp_labels,
                                       read_sff_comparisons, write_labels_jsonl)
from rlhf_jax.data.labels import Labels, parse_label_type, with_references
from rlhf_jax.data.tasks import format_tldr_query

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
P = 50259  # LHP pad
GPT2_VOCAB = 50257


def _lhp(name="lhp_best_of_4.json", label_type="best_of_4", **kw):
    return read_lhp_labels(FIXTURES / name, label_type=label_type, vocab_size=GPT2_VOCAB, **kw)


def _arrays_equal(a: Labels, b: Labels):
    assert a.label_type == b.label_type and a.pad_token == b.pad_token
    for f in ("query_NxQ", "query_mask_NxQ", "responses_NxKxR", "response_mask_NxKxR",
              "best_N", "score_N", "difference_N", "gold_NxK", "labeler_N"):
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None) == (y is None), f
        if x is not None:
            assert x.dtype == y.dtype, f
            np.testing.assert_array_equal(x, y, err_msg=f)


# --------------------------------------------------------------------------
# LHP.


def test_parse_label_type():
    assert parse_label_type("best_of_4") == ("best_of_n", 4)
    assert parse_label_type("best_of_n") == ("best_of_n", None)
    assert parse_label_type("pairwise") == ("pairwise", 2)
    assert parse_label_type("scalar_rating") == ("scalar_rating", 1)
    assert parse_label_type("scalar_compare") == ("scalar_compare", 2)
    with pytest.raises(ValueError, match="best_of_1"):
        parse_label_type("best_of_1")
    with pytest.raises(ValueError, match="'ranking'"):
        parse_label_type("ranking")


def test_lhp_best_of_4_reads_and_left_pads_queries():
    labels = _lhp()
    assert len(labels) == 4 and labels.num_responses == 4
    assert labels.label_type == "best_of_n" and labels.pad_token == P
    assert labels.query_NxQ.shape == (4, 8) and labels.query_NxQ.dtype == np.int32
    assert labels.responses_NxKxR.shape == (4, 4, 6)
    # File: [464, 3807, 373, 922, 13, 632, P, P] (right-padded) -> left-padded.
    np.testing.assert_array_equal(labels.query_NxQ[0], [P, P, 464, 3807, 373, 922, 13, 632])
    np.testing.assert_array_equal(labels.query_mask_NxQ[0], [0, 0, 1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(labels.query_NxQ[1], [P, P, P, 40, 1842, 428, 1492, 13])
    # A full-length query is unchanged.
    np.testing.assert_array_equal(labels.query_NxQ[2], [1544, 6807, 284, 262, 3650, 13, 1375, 1392])
    np.testing.assert_array_equal(labels.query_mask_NxQ[2], np.ones(8))
    # Samples stay right-padded.
    np.testing.assert_array_equal(labels.responses_NxKxR[0, 0], [373, 1049, 13, P, P, P])
    np.testing.assert_array_equal(labels.response_mask_NxKxR[0, 0], [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(labels.response_mask_NxKxR[1, 2], np.ones(6))
    np.testing.assert_array_equal(labels.best_N, [3, 0, 2, 1])
    assert labels.score_N is None and labels.gold_NxK is None and labels.labeler_N is None
    # Explicit lengths that match are accepted.
    _arrays_equal(_lhp(query_length=8, response_length=6), labels)


def test_lhp_scalar_rating_and_compare():
    rating = _lhp("lhp_scalar_rating.json", "scalar_rating")
    assert rating.label_type == "scalar_rating" and rating.responses_NxKxR.shape == (3, 1, 6)
    np.testing.assert_array_equal(rating.score_N, np.float32([1.5, -2.25, 0.0]))
    np.testing.assert_array_equal(rating.responses_NxKxR[1, 0], [632, 373, 2089, 13, P, P])
    assert rating.best_N is None

    compare = _lhp("lhp_scalar_compare.json", "scalar_compare")
    assert compare.label_type == "scalar_compare" and compare.responses_NxKxR.shape == (2, 2, 6)
    np.testing.assert_array_equal(compare.difference_N, np.float32([-1.0, 0.75]))
    np.testing.assert_array_equal(compare.responses_NxKxR[1, 1], [383, 1621, 373, 1049, 13, P])


def _fixture_records(name="lhp_best_of_4.json"):
    return json.loads((FIXTURES / name).read_text())


def _set(i, field, value):
    def edit(records):
        records[i][field] = value
    return edit


def _delete(i, field):
    def edit(records):
        del records[i][field]
    return edit


def _set_token(i, field, j, value):
    def edit(records):
        records[i][field][j] = value
    return edit


LHP_BAD = [
    (_set(3, "best", 5), {}, "record 3: field 'best'=5 out of range for best_of_4"),
    (_set(0, "best", -1), {}, "record 0: field 'best'=-1 out of range for best_of_4"),
    (_set(2, "best", "2"), {}, "record 2: field 'best'=\"2\" is not an int"),
    (_set(2, "best", 1.0), {}, "record 2: field 'best'=1.0 is not an int"),
    (_delete(1, "sample2"), {}, "record 1: field 'sample2' is missing"),
    (_delete(0, "query"), {}, "record 0: field 'query' is missing"),
    (_delete(2, "best"), {}, "record 2: field 'best' is missing"),
    (_set(2, "query", [1544, 6807, 284, 262, 3650, 13, 1375]), {},
     "record 2: field 'query' has length 7, expected 8"),
    (lambda r: None, {"query_length": 9}, "record 0: field 'query' has length 8, expected 9"),
    (_set(1, "sample3", [383, 5739, 547, 8531, 13]), {},
     "record 1: field 'sample3' has length 5, expected 6"),
    (_set_token(0, "sample1", 2, 60000), {},
     "record 0: field 'sample1[2]'=60000 is outside [0, 50257) and is not the pad 50259"),
    (_set_token(3, "query", 0, -4), {},
     "record 3: field 'query[0]'=-4 is outside [0, 50257) and is not the pad 50259"),
    (_set(1, "sample0", [383, P, 373, 1049, 13, P]), {},
     "record 1: field 'sample0' has the pad 50259 inside the sequence"),
    (_set(0, "sample0", [P] * 6), {}, "record 0: field 'sample0' has no tokens (all pad 50259)"),
    (_set(1, "query", [40, P, 428, 1492, 13, P, P, P]), {},
     "record 1: field 'query' has the pad 50259 inside the sequence"),
    (_set(1, "query", "I love this"), {}, "record 1: field 'query'=\"I love this\" is not a list of ints"),
]


@pytest.mark.parametrize("edit, kw, message", LHP_BAD)
def test_lhp_malformed_names_file_record_field(tmp_path, edit, kw, message):
    records = _fixture_records()
    edit(records)
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(records))
    with pytest.raises(ValueError) as e:
        read_lhp_labels(path, label_type="best_of_4", vocab_size=GPT2_VOCAB, **kw)
    text = str(e.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: {message}"), text


def test_lhp_malformed_scalar_and_file_level(tmp_path):
    records = _fixture_records("lhp_scalar_rating.json")
    records[2]["score"] = None
    path = tmp_path / "rating.json"
    path.write_text(json.dumps(records))
    with pytest.raises(ValueError, match=r"rating\.json: record 2: field 'score'=null is not a "
                                         r"finite number$"):
        read_lhp_labels(path, label_type="scalar_rating", vocab_size=GPT2_VOCAB)

    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[\n  {"query": [1, 2],\n  "best" 1}\n]')
    with pytest.raises(ValueError) as e:
        read_lhp_labels(bad_json, label_type="best_of_4", vocab_size=GPT2_VOCAB)
    assert str(e.value) == (f"{bad_json}: invalid JSON at line 3 column 10 (char 31): "
                            "Expecting ':' delimiter")

    not_list = tmp_path / "dict.json"
    not_list.write_text('{"query": []}')
    with pytest.raises(ValueError, match=r"dict\.json: expected a JSON list of records, got dict"):
        read_lhp_labels(not_list, label_type="best_of_4", vocab_size=GPT2_VOCAB)

    not_record = tmp_path / "items.json"
    not_record.write_text(json.dumps(_fixture_records() + [[1, 2]]))
    with pytest.raises(ValueError, match=r"items\.json: record 4: expected a JSON object, got list"):
        read_lhp_labels(not_record, label_type="best_of_4", vocab_size=GPT2_VOCAB)

    with pytest.raises(ValueError, match="LHP files hold"):
        read_lhp_labels(FIXTURES / "lhp_best_of_4.json", label_type="pairwise",
                        vocab_size=GPT2_VOCAB)


# --------------------------------------------------------------------------
# SFF comparisons, with a toy byte-level encoding: ids 0..255, EOS 256, pad 257.


def _encode(text):
    return list(text.encode("utf-8"))


EOS, PAD = 256, 257


def _sff(path=FIXTURES / "sff_comparisons.jsonl", **kw):
    kw = {"encode": _encode, "query_length": 300, "response_length": 48, "eos_token": EOS,
          "pad_token": PAD, **kw}
    return read_sff_comparisons(path, **kw)


def test_sff_comparisons_reads_pairwise():
    labels = _sff()
    assert labels.label_type == "pairwise" and len(labels) == 4
    assert labels.query_NxQ.shape == (4, 300) and labels.responses_NxKxR.shape == (4, 2, 48)
    np.testing.assert_array_equal(labels.best_N, [0, 1, 0, 1])
    np.testing.assert_array_equal(labels.labeler_N, ["worker_a", "worker_b", "worker_a", "worker_c"])

    record = json.loads((FIXTURES / "sff_comparisons.jsonl").read_text().splitlines()[0])
    info = record["info"]
    query = format_tldr_query(_encode, subreddit=info["subreddit"], title=info["title"],
                              post=info["post"], query_length=300)
    n_pad = 300 - len(query)
    np.testing.assert_array_equal(labels.query_NxQ[0], [PAD] * n_pad + query)
    np.testing.assert_array_equal(labels.query_mask_NxQ[0], [0] * n_pad + [1] * len(query))
    assert bytes(query).decode().startswith("SUBREDDIT: r/relationships\n\nTITLE: My roommate")

    # Summary: " " + text, EOS appended, right-padded.
    text = "I like my roommate."
    ids = _encode(" " + text) + [EOS]
    np.testing.assert_array_equal(labels.responses_NxKxR[0, 1], ids + [PAD] * (48 - len(ids)))
    assert labels.response_mask_NxKxR[0, 1].sum() == len(text) + 2


def test_sff_truncation_and_split():
    short = _sff(query_length=170, response_length=10)
    # The long first summary is cut to 10 tokens and loses its EOS.
    np.testing.assert_array_equal(short.responses_NxKxR[0, 0], _encode(" Roommate "))
    assert short.response_mask_NxKxR[0, 0].all() and EOS not in short.responses_NxKxR[0, 0]
    # A short one keeps its EOS: " Bread." + EOS + 2 pads.
    np.testing.assert_array_equal(short.responses_NxKxR[2, 1], _encode(" Bread.") + [EOS, PAD, PAD])
    # The post is cut back at its newline by the Stiennon formatter.
    query = bytes(t for t in short.query_NxQ[0] if t != PAD).decode()
    assert query.endswith("without asking.\n\nTL;DR:") and "I tried" not in query

    train = _sff(split="train")
    np.testing.assert_array_equal(train.best_N, [0, 1])
    np.testing.assert_array_equal(train.labeler_N, ["worker_a", "worker_b"])
    valid = _sff(split="valid1")
    assert len(valid) == 1 and valid.best_N[0] == 0
    np.testing.assert_array_equal(valid.query_NxQ, _sff().query_NxQ[2:3])
    with pytest.raises(ValueError, match=r"sff_comparisons\.jsonl: no records with split='test'"):
        _sff(split="test")


def _sff_edit(i, edit):
    def apply(lines):
        obj = json.loads(lines[i])
        edit(obj)
        lines[i] = json.dumps(obj)
    return apply


SFF_BAD = [
    (_sff_edit(1, lambda o: o.update(choice=2)), "record 1 (line 2): field 'choice'=2 is not 0 or 1"),
    (_sff_edit(0, lambda o: o["summaries"].pop()),
     "record 0 (line 1): field 'summaries'="),
    (_sff_edit(2, lambda o: o["summaries"][1].pop("text")),
     "record 2 (line 3): field 'summaries[1].text' is missing"),
    (_sff_edit(3, lambda o: o["info"].pop("post")),
     "record 3 (line 4): field 'info' has neither 'post' (TL;DR) nor 'article' (CNN/DM)"),
    (_sff_edit(0, lambda o: o["info"].update(title=7)),
     "record 0 (line 1): field 'info.title'=7 is not a string"),
    (_sff_edit(1, lambda o: o.pop("info")), "record 1 (line 2): field 'info' is missing"),
    (lambda lines: lines.__setitem__(2, lines[2][:-5]), "record 2 (line 3): invalid JSON at column"),
]


@pytest.mark.parametrize("edit, message", SFF_BAD)
def test_sff_malformed_names_file_record_field(tmp_path, edit, message):
    lines = (FIXTURES / "sff_comparisons.jsonl").read_text().splitlines()
    edit(lines)
    path = tmp_path / "comparisons.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as e:
        _sff(path)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"{path}: {message}"), str(e.value)


def test_sff_query_that_cannot_fit_names_record():
    # Even an empty post does not fit 20 tokens: the formatter's error, located.
    with pytest.raises(ValueError, match=r"record 0 \(line 1\): field 'info' does not make a "
                                         r"query: "):
        _sff(query_length=20)


def test_sff_posts_fixture_has_the_real_schema():
    rows = [json.loads(line) for line in (FIXTURES / "sff_tldr_posts.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert set(row) == {"id", "subreddit", "title", "post", "summary"}
        assert all(isinstance(v, str) and v for v in row.values())


# --------------------------------------------------------------------------
# Our jsonl.


def _mock_labels():
    """Two pairwise records with gold rewards and labeller names, pad 9."""
    return Labels(
        label_type="pairwise",
        query_NxQ=[[9, 1, 2], [3, 4, 5]],
        query_mask_NxQ=[[0, 1, 1], [1, 1, 1]],
        responses_NxKxR=[[[6, 9], [7, 8]], [[1, 9], [2, 9]]],
        response_mask_NxKxR=[[[1, 0], [1, 1]], [[1, 0], [1, 0]]],
        pad_token=9,
        best_N=[1, 0],
        gold_NxK=np.float32([[0.1, 1 / 3], [-0.7, 2.5e-8]]),
        labeler_N=["mock", "alice"],
    )


def test_jsonl_format_and_round_trip(tmp_path):
    labels = _mock_labels()
    path = tmp_path / "labels.jsonl"
    write_labels_jsonl(path, labels)
    first = json.loads(path.read_text().splitlines()[0])
    assert first["query"] == [1, 2] and first["responses"] == [[6], [7, 8]]
    assert first["best"] == 1 and first["labeler"] == "mock"
    assert first["gold"][0] == float(np.float32(0.1))
    back = read_labels_jsonl(path, query_length=3, response_length=2, pad_token=9,
                             vocab_size=9, label_type="pairwise")
    _arrays_equal(back, labels)  # float32 gold bit for bit

    for name, label_type, kw in [("lhp_best_of_4.json", "best_of_4", {}),
                                 ("lhp_scalar_rating.json", "scalar_rating", {}),
                                 ("lhp_scalar_compare.json", "scalar_compare", {})]:
        lhp = _lhp(name, label_type)
        out = tmp_path / f"{name}.jsonl"
        write_labels_jsonl(out, lhp)
        back = read_labels_jsonl(out, query_length=8, response_length=6, pad_token=P,
                                 vocab_size=GPT2_VOCAB, label_type=label_type)
        _arrays_equal(back, lhp)
    # best_of_n infers K from the records.
    inferred = read_labels(tmp_path / "lhp_best_of_4.json.jsonl", format="jsonl", query_length=8,
                           response_length=6, pad_token=P, vocab_size=GPT2_VOCAB,
                           label_type="best_of_n")
    assert inferred.num_responses == 4


JSONL_BAD = [
    ({"query": [1, 2, 3, 4]}, 0, "record 0 (line 1): field 'query' has 4 tokens, more than 3"),
    ({"query": [1, 9]}, 0, "record 0 (line 1): field 'query[1]'=9 is outside [0, 9)"),
    ({"responses": [[1]]}, 1, "record 1 (line 2): field 'responses' has 1 responses, expected 2 "
                              "for pairwise"),
    ({"responses": [[1], []]}, 1, "record 1 (line 2): field 'responses[1]' has no tokens"),
    ({"best": 2}, 1, "record 1 (line 2): field 'best'=2 out of range for pairwise"),
    ({"gold": [0.5]}, 1, "record 1 (line 2): field 'gold'=[0.5] is not a list of 2 finite numbers"),
    ({"labeler": 3}, 0, "record 0 (line 1): field 'labeler'=3 is not a string"),
]


@pytest.mark.parametrize("update, i, message", JSONL_BAD)
def test_jsonl_malformed(tmp_path, update, i, message):
    path = tmp_path / "labels.jsonl"
    write_labels_jsonl(path, _mock_labels())
    lines = path.read_text().splitlines()
    obj = json.loads(lines[i])
    obj.update(update)
    lines[i] = json.dumps(obj)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as e:
        read_labels_jsonl(path, query_length=3, response_length=2, pad_token=9, vocab_size=9,
                          label_type="pairwise")
    assert str(e.value) == f"{path}: {message}"


def test_jsonl_gold_all_or_none(tmp_path):
    path = tmp_path / "labels.jsonl"
    write_labels_jsonl(path, _mock_labels())
    lines = path.read_text().splitlines()
    obj = json.loads(lines[1])
    del obj["gold"]
    path.write_text(lines[0] + "\n" + json.dumps(obj) + "\n")
    with pytest.raises(ValueError, match=r"record 1 \(line 2\): field 'gold' is missing "
                                         r"\(record 0 has it\)"):
        read_labels_jsonl(path, query_length=3, response_length=2, pad_token=9, vocab_size=9,
                          label_type="pairwise")


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "labels.jsonl"
    write_labels_jsonl(path, _mock_labels())
    before = path.read_bytes()

    real = label_files_lib._record_to_json

    def fail_on_second(labels, i):
        if i == 1:
            raise RuntimeError("disk full")
        return real(labels, i)

    monkeypatch.setattr(label_files_lib, "_record_to_json", fail_on_second)
    with pytest.raises(RuntimeError, match="disk full"):
        write_labels_jsonl(path, _lhp())
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["labels.jsonl"]  # no temp file left behind

    monkeypatch.undo()
    write_labels_jsonl(path, _lhp())  # and a successful write replaces it
    assert len(path.read_text().splitlines()) == 4


def test_read_labels_dispatch():
    _arrays_equal(read_labels(FIXTURES / "lhp_best_of_4.json", format="lhp",
                              label_type="best_of_4", vocab_size=GPT2_VOCAB), _lhp())
    _arrays_equal(read_labels(FIXTURES / "sff_comparisons.jsonl", format="sff", encode=_encode,
                              query_length=300, response_length=48, eos_token=EOS,
                              pad_token=PAD), _sff())
    with pytest.raises(ValueError, match=r"read_labels: field 'format'='csv' is not one of"):
        read_labels(FIXTURES / "lhp_best_of_4.json", format="csv")


# --------------------------------------------------------------------------
# The Labels container.


def test_labels_subset_concatenate_readonly():
    labels = _lhp()
    sub = labels.subset([3, 1, 1])
    np.testing.assert_array_equal(sub.best_N, [1, 0, 0])
    np.testing.assert_array_equal(sub.query_NxQ[0], labels.query_NxQ[3])
    assert len(sub) == 3 and sub.label_type == "best_of_n"
    both = Labels.concatenate([labels, sub])
    assert len(both) == 7
    np.testing.assert_array_equal(both.best_N, [3, 0, 2, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="part 1 differs"):
        Labels.concatenate([labels, _lhp("lhp_scalar_compare.json", "scalar_compare")])
    with pytest.raises(ValueError):  # read-only arrays
        labels.best_N[0] = 1
    with pytest.raises(ValueError, match="out of range"):
        labels.subset([4])


def test_labels_validation():
    good = _mock_labels()
    fields = {f: getattr(good, f) for f in ("label_type", "query_NxQ", "query_mask_NxQ",
                                            "responses_NxKxR", "response_mask_NxKxR",
                                            "pad_token", "best_N")}
    with pytest.raises(ValueError, match=r"field 'best_N' holds 0\.\.2, out of range \[0, K=2\)"):
        Labels(**{**fields, "best_N": [0, 2]})
    with pytest.raises(ValueError, match="field 'difference_N' is required for label_type "
                                         "scalar_compare"):
        Labels(**{**fields, "label_type": "scalar_compare", "best_N": None})
    with pytest.raises(ValueError, match="field 'best_N' must be None for label_type "
                                         "scalar_compare"):
        Labels(**{**fields, "label_type": "scalar_compare", "difference_N": [0.5, 1.0]})
    with pytest.raises(ValueError, match="field 'query_mask_NxQ' is not left padding"):
        Labels(**{**fields, "query_NxQ": [[1, 2, 9], [3, 4, 5]],
                  "query_mask_NxQ": [[1, 1, 0], [1, 1, 1]]})
    with pytest.raises(ValueError, match="field 'responses_NxKxR' must hold the pad 9"):
        Labels(**{**fields, "responses_NxKxR": [[[6, 5], [7, 8]], [[1, 9], [2, 9]]]})
    with pytest.raises(ValueError, match="needs K=2"):
        Labels(**{**fields, "responses_NxKxR": good.responses_NxKxR[:, :1],
                  "response_mask_NxKxR": good.response_mask_NxKxR[:, :1]})


def test_with_references_puts_the_reference_in_one_random_slot_of_a_share_of_records():
    n, k, r = 400, 2, 5
    resp = np.arange(n * k * r, dtype=np.int32).reshape(n, k, r)
    refs = -np.arange(n * r, dtype=np.int32).reshape(n, r) - 1
    out, slot = with_references(resp, refs, 0.5, seed=3)
    chosen = slot >= 0
    assert 0.42 < chosen.mean() < 0.58  # binomial(400, 0.5): 4 standard deviations
    assert 0.35 < (slot[chosen] == 0).mean() < 0.65  # either slot
    for i in range(n):
        for j in range(k):
            want = refs[i] if slot[i] == j else resp[i, j]
            np.testing.assert_array_equal(out[i, j], want)
    again, slot2 = with_references(resp, refs, 0.5, seed=3)
    np.testing.assert_array_equal(again, out)
    np.testing.assert_array_equal(slot2, slot)
    assert (with_references(resp, refs, 0.0, seed=3)[1] == -1).all()
    assert (with_references(resp, refs, 1.0, seed=3)[1] >= 0).all()
    with pytest.raises(ValueError, match="do not match"):
        with_references(resp, refs[:, :3], 0.5, seed=3)


@pytest.mark.parametrize("config, share, error", [
    ("world_tldr", 0.5, None), ("world_tldr", 1.5, "must be in"),
    ("mock_sentiment", 0.5, "a task.query_dataset with references")])
def test_reference_share_is_checked_before_any_work(config, share, error):
    import importlib.util

    from rlhf_jax.config_check import resolve
    spec = importlib.util.spec_from_file_location(
        config, os.path.join(os.path.dirname(__file__), "..", "configs", f"{config}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config("runlocal")
    cfg.labels.reference_share = share
    if error is None:
        resolve(cfg, 1)
    else:
        with pytest.raises(ValueError, match=f"labels.reference_share={share}.*{error}"):
            resolve(cfg, 1)

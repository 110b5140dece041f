"""The label server over HTTP on 127.0.0.1: pages, answers, safety, concurrency, formats, queue."""

import datetime
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.label_server_fixtures import Client, best_of_4_items, decode, piece, serve, token_item
from rlhf_jax.data.label_files import read_lhp_labels, read_sff_comparisons
from rlhf_jax.labelling.label_server import (Conflict, HumanQueue, Item, LabelDB, LabelingStopped,
                                             Response, export_lhp, export_sff, import_lhp,
                                             import_sff)
from rlhf_jax.labelling.label_server.__main__ import main as cli_main
from rlhf_jax.labelling.labelers import LabelRequest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
VOCAB = 1000


@pytest.fixture
def db(tmp_path):
    return LabelDB(tmp_path / "labels.sqlite")


def answer_count(db) -> int:
    return len(db.answers())


# --------------------------------------------------------------------------
# The page and the answer endpoint.


def test_page_shows_the_item_escaped_with_progress_and_csp(db):
    hostile = '<script>window.pwned=1</script> & "quotes"'
    db.add_items("b", [Item("pairwise", hostile,
                            (Response("<b>x</b> fine", ("<b>x</b>", " fine")),
                             Response("ok", ("ok",))))])
    with serve(db) as base:
        c = Client(base)
        status, html, _ = c.get("/")
        assert status == 200 and "Who is labelling?" in html  # no labeller yet
        status, html, headers = c.get("/?labeler=alice")  # sets the cookie, redirects to /
        assert status == 200
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt; &amp; &#34;quotes&#34;" in html
    assert "<script>window.pwned" not in html and "<b>x</b>" not in html
    assert '<span class="tok" data-i="0">&lt;b&gt;x&lt;/b&gt;</span>' in html
    assert "Which response is better?" in html and 'data-k="2"' in html
    assert "0 of 1 answered" in html and "you: 0" in html
    assert "script-src 'self'" in headers["Content-Security-Policy"]


def test_answer_is_stored_with_labeller_spans_and_time(db):
    [item_id] = db.add_items("b", best_of_4_items(1))
    with serve(db) as base:
        status, body, _ = Client(base).post("/api/answer", {
            "item_id": item_id, "labeler": "alice", "choice": 2,
            "spans": [{"response": 1, "start": 0, "end": 1}, {"response": 0, "start": 0,
                                                                "end": 1}]})
    assert status == 201 and body["stored"] is True
    [(item, answer)] = db.answers()
    assert item.status == "answered"
    assert (answer.labeler, answer.choice, answer.source) == ("alice", 2, "web")
    # Stored sorted by response.
    assert answer.spans == ({"response": 0, "start": 0, "end": 1},
                            {"response": 1, "start": 0, "end": 1})
    t = datetime.datetime.fromisoformat(answer.created_at)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - t).total_seconds()) < 60
    assert body["time"] == answer.created_at


@pytest.mark.parametrize("body, status, message", [
    ({"item_id": 1, "labeler": "alice", "choice": 4}, 400, "'choice'=4 is not an integer in 0..3"),
    ({"item_id": 1, "labeler": "alice", "choice": -1}, 400, "'choice'=-1"),
    ({"item_id": 1, "labeler": "alice", "choice": "1"}, 400, "'choice'='1'"),
    ({"item_id": 1, "labeler": "alice", "choice": True}, 400, "'choice'=True"),
    ({"item_id": 99, "labeler": "alice", "choice": 0}, 404, "item 99 does not exist"),
    ({"item_id": "1", "labeler": "alice", "choice": 0}, 400, "'item_id'='1'"),
    ({"item_id": 1, "labeler": "al ice", "choice": 0}, 400, "'labeler'='al ice'"),
    ({"item_id": 1, "labeler": "alice", "choice": 0,
      "spans": [{"response": 0, "start": 0, "end": 9}]}, 400, "'spans[0]'=[0, 9)"),
    ({"item_id": 1, "labeler": "alice", "choice": 0,
      "spans": [{"response": 4, "start": 0, "end": 1}]}, 400, "'spans[0].response'=4"),
    ({"item_id": 1, "labeler": "alice", "choice": 0,
      "spans": [{"response": 0, "start": 0, "end": 2}, {"response": 0, "start": 1, "end": 3}]},
     400, "overlap"),
    ({"item_id": 1, "labeler": "alice", "choice": 0, "extra": 1}, 400, "unknown field"),
    ({"item_id": 1, "labeler": "alice"}, 400, "missing field(s) ['choice']"),
    ([1, 2], 400, "not a JSON object"),
])
def test_bad_answers_are_4xx_and_store_nothing(db, body, status, message):
    db.add_items("b", [token_item([1, 2], [[3, 4, 5], [6], [7, 8], [9]])])
    with serve(db) as base:
        got, reply, _ = Client(base).post("/api/answer", body)
    assert (got, message in reply["error"]) == (status, True), reply
    assert answer_count(db) == 0 and db.item(1).status == "open"


def test_non_json_post_is_415(db):
    db.add_items("b", best_of_4_items(1))
    with serve(db) as base:
        status, reply, _ = Client(base).post(
            "/api/answer", raw=b"item_id=1&labeler=a&choice=0",
            headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and "JSON" in reply["error"] and answer_count(db) == 0


def test_replayed_answer_is_409_keeps_the_first_and_names_nobody(db):
    db.add_items("b", best_of_4_items(1))
    with serve(db) as base:
        c = Client(base)
        first = c.post("/api/answer", {"item_id": 1, "labeler": "alice", "choice": 1})
        replay = c.post("/api/answer", {"item_id": 1, "labeler": "alice", "choice": 1})
        other = c.post("/api/answer", {"item_id": 1, "labeler": "bob", "choice": 3})
        skip = c.post("/api/skip", {"item_id": 1, "labeler": "bob"})
    assert first[0] == 201
    answered_at = db.answers()[0][1].created_at
    for status, reply, _ in (replay, other, skip):
        # Nobody is told who answered, nor when.
        assert (status, reply["error"]) == (409, "item 1 is already answered; nothing stored")
        assert "alice" not in json.dumps(reply) and answered_at[:16] not in json.dumps(reply)
    [(_, answer)] = db.answers()
    assert (answer.labeler, answer.choice) == ("alice", 1)
    assert db.skips() == []


def test_shared_token_guards_everything_but_static_files(db):
    db.add_items("b", best_of_4_items(1))
    with serve(db, token="s3cret") as base:
        c = Client(base)
        assert c.get("/api/progress")[0] == 401
        assert c.get("/api/progress", headers={"X-Label-Token": "wrong"})[0] == 401
        assert c.get("/api/progress", headers={"X-Label-Token": "s3cret"})[0] == 200
        assert c.get("/api/progress", headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert c.post("/api/answer", {"item_id": 1, "labeler": "a", "choice": 0})[0] == 401
        status, html, _ = c.get("/")
        assert status == 401 and "Access token required" in html
        assert c.get("/?token=wrong&labeler=alice")[0] == 401
        assert c.get("/static/label.js")[0] == 200
        assert answer_count(db) == 0
        # The link with the token sets an HttpOnly cookie; the page and the API then work.
        status, html, _ = c.get("/?token=s3cret&labeler=alice")
        assert status == 200 and 'data-item-id="1"' in html
        assert c.post("/api/answer", {"item_id": 1, "labeler": "alice", "choice": 0})[0] == 201


def test_next_item_leases_different_items_to_different_labellers(db):
    db.add_items("b", best_of_4_items(3))
    with serve(db) as base:
        c = Client(base)
        a1 = c.get("/api/next?labeler=alice")[1]["item"]["id"]
        b1 = c.get("/api/next?labeler=bob")[1]["item"]["id"]
        a2 = c.get("/api/next?labeler=alice")[1]["item"]["id"]  # a reload: the same item
        assert (a1, b1, a2) == (1, 2, 1)
        assert c.post("/api/answer", {"item_id": a1, "labeler": "alice", "choice": 0})[0] == 201
        assert c.get("/api/next?labeler=alice")[1]["item"]["id"] == 3
        # Both remaining items are leased: carol gets none until a lease ends or an answer.
        status, reply, _ = c.get("/api/next?labeler=carol")
        assert status == 200 and reply["item"] is None and reply["progress"]["open"] == 2
        assert c.get("/api/next")[0] == 400  # no labeller


def test_skips_move_items_on_and_retire_them(db):
    db.add_items("b", best_of_4_items(2), max_skips=2)
    with serve(db) as base:
        c = Client(base)
        assert c.post("/api/skip", {"item_id": 1, "labeler": "alice"})[1]["status"] == "open"
        assert c.post("/api/skip", {"item_id": 1, "labeler": "alice"})[0] == 409  # twice
        assert c.get("/api/next?labeler=alice")[1]["item"]["id"] == 2  # 1 is skipped by alice
        assert c.get("/api/next?labeler=bob")[1]["item"]["id"] == 1
        assert c.post("/api/skip", {"item_id": 1, "labeler": "bob"})[1]["status"] == "retired"
        status, reply, _ = c.post("/api/answer", {"item_id": 1, "labeler": "carol", "choice": 0})
        assert status == 409 and "retired" in reply["error"]
        assert c.get("/api/progress")[1] == {"total": 2, "open": 1, "answered": 0,
                                             "retired": 1}
    assert [(i, name) for i, name, _ in db.skips()] == [(1, "alice"), (1, "bob")]


# --------------------------------------------------------------------------
# Several labellers at once.


def test_concurrent_labellers_lose_and_duplicate_nothing(db):
    n_items, n_labellers = 48, 8
    db.add_items("b", best_of_4_items(n_items))
    results = {name: [] for name in (f"l{i}" for i in range(n_labellers))}
    errors = []
    start = threading.Barrier(n_labellers)

    def labeller(name, base):
        c = Client(base)
        start.wait()
        try:
            while True:
                status, reply, _ = c.get(f"/api/next?labeler={name}")
                assert status == 200, reply
                if reply["item"] is None:
                    if reply["progress"]["open"] == 0:
                        return
                    time.sleep(0.01)  # the rest are leased to others
                    continue
                body = {"item_id": reply["item"]["id"], "labeler": name,
                        "choice": reply["item"]["id"] % 4}
                status, _, _ = c.post("/api/answer", body)
                results[name].append((reply["item"]["id"], status))
                # A double-submit: must never store a second answer.
                results[name].append((reply["item"]["id"], c.post("/api/answer", body)[0]))
        except Exception as e:  # surfaced below: a thread's assert would be lost
            errors.append(repr(e))

    with serve(db) as base:
        threads = [threading.Thread(target=labeller, args=(name, base)) for name in results]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors
    stored = [(i, name) for name, rs in results.items() for i, s in rs if s == 201]
    assert all(s in (201, 409) for rs in results.values() for _, s in rs)
    answers = db.answers()
    assert sorted(i for i, _ in stored) == list(range(1, n_items + 1))
    assert sorted((item.id, a.labeler) for item, a in answers) == sorted(stored)
    assert all(a.choice == item.id % 4 for item, a in answers)
    assert db.progress() == {"total": n_items, "open": 0, "answered": n_items, "retired": 0}
    assert sum(1 for rs in results.values() if rs) > 1  # the work was shared


def test_racing_answers_to_one_item_store_exactly_one(db):
    db.add_items("b", best_of_4_items(1))
    n = 8
    statuses = [None] * n
    go = threading.Barrier(n)

    def post(i, base):
        c = Client(base)
        go.wait()
        statuses[i] = c.post("/api/answer", {"item_id": 1, "labeler": f"l{i}", "choice": i % 4})[0]

    with serve(db) as base:
        threads = [threading.Thread(target=post, args=(i, base)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert sorted(statuses) == [201] + [409] * (n - 1)
    [(_, answer)] = db.answers()
    assert answer.labeler == f"l{statuses.index(201)}"


# --------------------------------------------------------------------------
# Export and import.


def _answer_all(db, spans=True):
    for item in db.items(status="open"):
        db.answer(item.id, f"lab{item.id % 2}", item.id % item.k,
                  [{"response": 0, "start": 0, "end": 1}] if spans else None)


def test_export_lhp_is_read_by_the_lhp_reader_and_carries_spans(db, tmp_path):
    items = best_of_4_items(5)
    db.add_items("b", items)
    _answer_all(db)
    path = tmp_path / "out.json"
    assert export_lhp(db, path, query_length=4, response_length=3) == 5
    labels = read_lhp_labels(path, label_type="best_of_4", vocab_size=VOCAB)
    np.testing.assert_array_equal(labels.best_N, [i % 4 for i in range(1, 6)])
    for i, item in enumerate(items):
        assert labels.query_NxQ[i][labels.query_mask_NxQ[i] == 1].tolist() == list(
            item.query_tokens)
        for j in range(4):
            r, m = labels.responses_NxKxR[i, j], labels.response_mask_NxKxR[i, j]
            assert r[m == 1].tolist() == list(item.responses[j].tokens)
    records = json.loads(path.read_text())
    assert records[0]["query"] == [10, 11, 12, 50259]  # right-padded, LHP's pad
    assert records[0]["spans"] == [[[0, 1]], [], [], []]
    # The reader keeps the marks as a token mask: response 0's first token.
    expected = np.zeros(labels.responses_NxKxR.shape, np.int32)
    expected[:, 0, 0] = 1
    np.testing.assert_array_equal(labels.span_mask_NxKxR, expected)
    assert records[0]["labeler"] == "lab1" and records[1]["labeler"] == "lab0"
    assert records[0]["time"] == db.answers()[0][1].created_at


def test_lhp_import_then_export_reproduces_the_file(db, tmp_path):
    db.add_items("b", best_of_4_items(4))
    _answer_all(db)
    first = tmp_path / "first.json"
    export_lhp(db, first)
    again = LabelDB(tmp_path / "again.sqlite")
    assert import_lhp(again, first, decode=decode, vocab_size=VOCAB) == (4, 4)
    assert import_lhp(again, first, decode=decode, vocab_size=VOCAB) == (0, 0)  # idempotent
    second = tmp_path / "second.json"
    export_lhp(again, second)
    assert json.loads(second.read_text()) == json.loads(first.read_text())
    item, answer = again.answers()[0]
    assert item.responses[0].pieces == tuple(piece(t) for t in item.responses[0].tokens)
    assert answer.source == "import"
    # Unlabelled: the same items queued for people.
    queued = LabelDB(tmp_path / "queued.sqlite")
    assert import_lhp(queued, first, decode=decode, vocab_size=VOCAB, answers=False) == (4, 0)
    assert queued.progress()["open"] == 4


def test_sff_import_export_round_trip_and_reader(db, tmp_path):
    src = FIXTURES / "sff_comparisons.jsonl"
    n = sum(1 for line in src.read_text().splitlines() if line.strip())
    assert import_sff(db, src) == (n, n)
    out = tmp_path / "out.jsonl"
    assert export_sff(db, out) == n
    original = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    for a, b in zip(original, exported):
        for field in ("info", "summaries", "choice", "worker", "batch", "split"):
            assert b[field] == a[field], field
        assert b["extra"]["confidence"] == a["extra"]["confidence"]
        assert b["extra"]["span_unit"] == "word" and b["extra"]["spans"] == [[], []]
    labels = read_sff_comparisons(out, encode=lambda s: [ord(ch) % 200 for ch in s],
                                  query_length=512, response_length=64, eos_token=0,
                                  pad_token=999)
    np.testing.assert_array_equal(labels.best_N, [r["choice"] for r in original])
    # Word spans marked on an SFF item survive export and re-import.
    fresh = LabelDB(tmp_path / "fresh.sqlite")
    import_sff(fresh, src, answers=False)
    fresh.answer(1, "alice", 1, [{"response": 0, "start": 1, "end": 3}])
    out2 = tmp_path / "out2.jsonl"
    export_sff(fresh, out2)
    [rec] = [json.loads(line) for line in out2.read_text().splitlines()]
    words = fresh.item(1).responses[0].pieces
    chars = [len(words[0]), len(words[0] + words[1] + words[2])]
    assert rec["extra"]["spans"][0] == [{"start": 1, "end": 3, "text": words[1] + words[2],
                                         "chars": chars}]
    assert rec["summaries"][0]["text"][chars[0]:chars[1]] == words[1] + words[2]
    third = LabelDB(tmp_path / "third.sqlite")
    assert import_sff(third, out2) == (1, 1)
    assert third.answers()[0][1].spans == ({"response": 0, "start": 1, "end": 3},)


def test_sff_export_of_best_of_4_is_best_against_each_other(db, tmp_path):
    db.add_items("b", best_of_4_items(1))
    db.answer(1, "alice", 2, [{"response": 2, "start": 0, "end": 1}])
    out = tmp_path / "o.jsonl"
    assert export_sff(db, out) == 3
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    best_text = db.item(1).responses[2].text
    for rec, other in zip(recs, (0, 1, 3)):
        assert rec["extra"]["responses"] == sorted((2, other))
        assert rec["summaries"][rec["choice"]]["text"] == best_text
        assert rec["extra"]["best_of_k"] == 4 and rec["worker"] == "alice"
        assert rec["info"]["query"] == db.item(1).query_text
    assert recs[0]["extra"]["spans"][1][0]["text"] == db.item(1).responses[2].pieces[0]


def test_export_and_import_errors_are_one_line(db, tmp_path):
    with pytest.raises(ValueError, match="no answered items"):
        export_lhp(db, tmp_path / "x.json")
    import_sff(db, FIXTURES / "sff_comparisons.jsonl")
    with pytest.raises(ValueError, match="item 1 has no token ids .* format 'sff'"):
        export_lhp(db, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"info": {"post": "p"}, "summaries": [{"text": "a"}], "choice": 0}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: record 0 \(line 1\): field 'summaries'"):
        import_sff(LabelDB(tmp_path / "e.sqlite"), bad)
    bad.write_text('{"info": {"post": "p"}, "summaries": [{"text": "a"}, {"text": "b"}], '
                   '"choice": 2, "worker": "w"}\n')
    with pytest.raises(ValueError, match=r"record 0 \(line 1\): field 'choice'=2"):
        import_sff(LabelDB(tmp_path / "e2.sqlite"), bad)
    lhp = tmp_path / "bad.json"
    lhp.write_text(json.dumps([{"query": [1], "sample0": [2], "sample1": [3], "sample2": [4],
                                "sample3": [5], "best": 4}]))
    with pytest.raises(ValueError, match="record 0: field 'best'=4 out of range"):
        import_lhp(LabelDB(tmp_path / "e3.sqlite"), lhp, decode=decode, vocab_size=VOCAB)
    with pytest.raises(ValueError, match="not a usable label database"):
        LabelDB(lhp)


def test_cli_import_export_status_and_errors(tmp_path, capsys):
    db = str(tmp_path / "c.sqlite")
    assert cli_main(["--db", db, "import", "--format", "sff",
                     str(FIXTURES / "sff_comparisons.jsonl"), "--unlabelled"]) == 0
    assert "imported 4 new items and 0 answers" in capsys.readouterr().out
    LabelDB(db).answer(2, "alice", 0)
    assert cli_main(["--db", db, "export", "--format", "sff", "--out",
                     str(tmp_path / "o.jsonl")]) == 0
    assert "wrote 1 sff records" in capsys.readouterr().out
    assert cli_main(["--db", db, "status"]) == 0
    assert '"answered": 1' in capsys.readouterr().out
    assert cli_main(["--db", db, "export", "--format", "lhp", "--out",
                     str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: item 2 has no token ids") and "\n" not in err


def test_server_command_serves_over_http(tmp_path):
    db = tmp_path / "s.sqlite"
    LabelDB(db).add_items("b", best_of_4_items(2))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LABEL_SERVER_TOKEN": "tok"}
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_jax.labelling.label_server", "--db",
                             str(db), "--port", "0"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"label server: {db} at http://127.0.0.1:"), line
        base = line.split(" at ")[1].split("/?")[0].rstrip("/")
        c = Client(base)
        assert c.get("/api/progress")[0] == 401
        status, reply, _ = c.get("/api/progress", headers={"X-Label-Token": "tok"})
        assert status == 200 and reply["open"] == 2
    finally:
        proc.terminate()
        proc.wait(10)


# --------------------------------------------------------------------------
# The human labeller (the queue the online loop waits on).


def _request(n=3):
    rng = np.random.default_rng(0)
    q = rng.integers(1, VOCAB, (n, 4))
    r = rng.integers(1, VOCAB, (n, 2, 3))
    return LabelRequest(q, np.ones_like(q), r, np.ones_like(r), pad_token=VOCAB)


def test_human_queue_posts_waits_and_returns_the_answers(db):
    request = _request(3)
    lines = []
    queue = HumanQueue(db, label_type="pairwise", decode=decode, poll_seconds=0.05,
                       max_skips=1, log=lines.append)

    def people():
        while db.progress()["total"] < 3:
            time.sleep(0.02)
        time.sleep(0.2)  # let the queue report the outstanding count first
        db.answer(1, "alice", 1)
        db.skip(2, "bob")  # max_skips=1: retired, left out
        time.sleep(0.2)
        db.answer(3, "carol", 0, [{"response": 0, "start": 1, "end": 3}])

    t = threading.Thread(target=people)
    t.start()
    labels = queue.label(request)
    t.join()
    assert len(labels) == 2 and labels.label_type == "pairwise"
    np.testing.assert_array_equal(labels.best_N, [1, 0])
    assert labels.labeler_N.tolist() == ["alice", "carol"]
    np.testing.assert_array_equal(labels.responses_NxKxR, request.responses_NxKxR[[0, 2]])
    assert any("waiting for human labels: 3 of 3 outstanding" in line for line in lines)
    assert any("1 of 3 outstanding (1 answered, 1 skipped out)" in line for line in lines)
    # The items carry the tokens, one piece per token.
    item = db.item(1)
    assert item.query_tokens == tuple(request.query_NxQ[0].tolist())
    assert item.responses[1].pieces == tuple(piece(t) for t in request.responses_NxKxR[0, 1])
    # Posting the same request again (a restarted run) adds nothing and returns at once.
    again = HumanQueue(db, label_type="pairwise", decode=decode, poll_seconds=0.05,
                       log=lines.append).label(request)
    assert db.progress()["total"] == 3
    np.testing.assert_array_equal(again.best_N, labels.best_N)


def test_human_queue_stops_waiting_when_asked(db):
    stop = threading.Event()
    queue = HumanQueue(db, label_type="best_of_2", decode=decode, poll_seconds=30.0,
                       should_stop=stop.is_set, log=lambda line: None)
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(LabelingStopped, match="3 of 3 items outstanding"):
        queue.label(_request(3))
    assert time.monotonic() - t0 < 5  # not the 30 s poll
    assert db.progress()["open"] == 3  # the items stay queued for the relaunch
    with pytest.raises(ValueError, match="K=2 responses per query, best_of_n needs K=4"):
        HumanQueue(db, label_type="best_of_4", decode=decode).label(_request(1))
    with pytest.raises(ValueError, match="people answer best_of_<K> or pairwise"):
        HumanQueue(db, label_type="scalar_rating", decode=decode)


def test_database_is_shared_between_connections_and_conflicts_raise(db, tmp_path):
    other = LabelDB(db.path)  # a second process would open it like this
    db.add_items("b", best_of_4_items(2))
    assert other.add_items("b", best_of_4_items(2)) == [1, 2]  # idempotent by (batch, idx)
    other.answer(1, "alice", 0)
    with pytest.raises(Conflict):
        db.answer(1, "bob", 1)
    assert db.progress("alice") == {"total": 2, "open": 1, "answered": 1, "retired": 0,
                                    "mine": 1}

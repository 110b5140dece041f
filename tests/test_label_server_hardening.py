"""The label server under hostile or careless use: tokens, bad input, slow clients,
read-only and foreign databases, who may label, bad settings, the Host header."""

import io
import json
import os
import pathlib
import shutil
import socket
import sqlite3
import stat
import threading
import time

import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app

from tests.label_server_fixtures import ROOT

from rlhf_jax.labelling.label_server import LabelDB, __main__ as cli, create_app
from rlhf_jax.labelling.label_server.app import TooManyNewLabelers, _NewLabelerLimit
from rlhf_jax.labelling.label_server.db import Conflict, _repair_sidecars
from rlhf_jax.labelling.label_server.server import MAX_WAITING
from tests.label_server_fixtures import (Client, best_of_4_items, chunked, raw_http, read_only,
                                         serve, start_server)
SECRET = "s3cret-token-value"


@pytest.fixture
def db(tmp_path):
    db = LabelDB(tmp_path / "labels.sqlite")
    db.add_items("b", best_of_4_items(3))
    return db


def run_cli(argv) -> tuple[int, str]:
    """(exit code, stderr) of the CLI, run in this process."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = cli.main(argv)
        except SystemExit as e:
            rc = e.code
    return rc, err.getvalue()


# --------------------------------------------------------------------------
# 1. The token stays out of logs and the process table.


def test_token_is_never_logged_nor_on_the_command_line(db, tmp_path):
    proc, base = start_server(db.path, env={"LABEL_SERVER_TOKEN": SECRET})
    try:
        c = Client(base)
        status, html, _ = c.get(f"/?token={SECRET}&labeler=alice")  # the onboarding link
        assert status == 200 and 'data-item-id="1"' in html
        assert c.get("/?token=wrong-guess")[0] == 401
        assert SECRET not in pathlib.Path(f"/proc/{proc.pid}/cmdline").read_text()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    log = out + err
    # What follows the token may be its tail: the log keeps none of it.
    assert '"GET /?token=<redacted> HTTP/1.1" 302' in log, log
    assert SECRET not in log and "wrong-guess" not in log

    # From a file instead of the environment; --token itself is refused in one line.
    token_file = tmp_path / "token.txt"
    token_file.write_text(SECRET + "\n")
    proc, base = start_server(db.path, "--token-file", str(token_file))
    try:
        assert Client(base).get("/api/progress")[0] == 401
        assert Client(base).get("/api/progress", headers={"X-Label-Token": SECRET})[0] == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    rc, err = run_cli(["--db", db.path, "--token", SECRET])
    assert rc == 2 and err.count("\n") == 1 and "LABEL_SERVER_TOKEN" in err, err
    assert SECRET not in err


def test_a_token_of_any_characters_stays_out_of_the_log(db):
    # A shared token with a quote used to leak its tail: token=<redacted>'SECRETTAIL.
    token = "s3cret'SECRETTAIL"
    proc, base = start_server(db.path, env={"LABEL_SERVER_TOKEN": token})
    host = b"\r\nHost: 127.0.0.1\r\nConnection: close"
    try:
        for target in (b"/?token=s3cret'SECRETTAIL&labeler=alice",  # the token, raw
                       b"/?token=s3cret%27SECRETTAIL",  # the token, encoded
                       b'/?token=s3cret"SECRETTAIL', b"/?token=s3cret SECRETTAIL",
                       b"/?token=s3cret&SECRETTAIL=1&labeler=alice",  # an `&` in a token
                       b"/?labeler=alice&TOKEN=s3cret'SECRETTAIL",
                       b"/?%74oken=s3cret'SECRETTAIL", b"/api/progress?token=s3cret=SECRETTAIL"):
            reply = raw_http(base, b"GET " + target + b" HTTP/1.1" + host)
            assert reply.startswith((b"HTTP/1.1 ", b"HTTP/1.0 400")), (target, reply[:100])
        assert raw_http(base, b"GET /?token=s3cret'SECRETTAIL HTTP/1.1" + host).startswith(
            b"HTTP/1.1 302")  # the right token: let in
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    log = out + err
    assert log.count("token=<redacted>") >= 6 and "not a valid request" in log, log
    assert "SECRETTAIL" not in log and "s3cret" not in log, log
    assert '"GET /?labeler=alice&token=<redacted> HTTP/1.1"' in log, log


# --------------------------------------------------------------------------
# 2. Input that used to be an HTML 500 is a JSON 4xx.


@pytest.mark.parametrize("path, body", [
    ("/api/answer", {"item_id": 2 ** 63, "labeler": "alice", "choice": 0}),
    ("/api/answer", {"item_id": 10 ** 30, "labeler": "alice", "choice": 0}),
    ("/api/skip", {"item_id": 2 ** 63, "labeler": "alice"}),
    ("/api/skip", {"item_id": -1, "labeler": "alice"}),
])
def test_item_id_outside_sqlite_integers_is_400(db, path, body):
    with serve(db) as base:
        status, reply, headers = Client(base).post(path, body)
    assert (status, headers.get_content_type()) == (400, "application/json"), reply
    assert "field 'item_id'" in reply["error"] and "outside 0..9223372036854775807" in reply["error"]
    assert db.progress()["open"] == 3 and db.skips() == []


def test_deep_json_and_unknown_routes_are_json_errors(db):
    deep = b"[" * 1000 + b"]" * 1000
    with serve(db) as base:
        c = Client(base)
        status, reply, _ = c.post("/api/answer", raw=deep,
                                  headers={"Content-Type": "application/json"})
        assert status == 400 and reply["error"] == "the body is JSON nested too deeply"
        for method, path, code in (("GET", "/api/nosuch", 404), ("GET", "/api/answer", 405),
                                   ("POST", "/api/next", 405), ("DELETE", "/api/skip", 405)):
            status, reply, headers = c.call(method, path, {} if method == "POST" else None)
            assert (status, headers.get_content_type()) == (code, "application/json"), reply
            assert reply["error"].endswith(f"{method} {path}")
        assert c.get("/nosuch")[0] == 404  # pages stay HTML


# --------------------------------------------------------------------------
# 3. Body size, echoed values, slow bodies.


def test_large_bodies_are_413_and_errors_echo_little(db):
    with serve(db) as base:
        port = base.rsplit(":", 1)[1]
        reply = raw_http(base, b"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1:" + port.encode()
                         + b"\r\nContent-Type: application/json\r\nContent-Length: 52428800")
        head, _, payload = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), reply[:200]
        assert json.loads(payload) == {"error": "the request body is larger than 1048576 bytes"}
        long_id = "x" * 500_000
        status, reply, _ = Client(base).post("/api/answer", {"item_id": 1, "labeler": long_id,
                                                             "choice": 0})
        assert status == 400 and len(json.dumps(reply)) < 300, len(json.dumps(reply))
        assert "(500002 characters)" in reply["error"]
        status, reply, _ = Client(base).post("/api/answer", {"item_id": 1, "choice": 0,
                                                             long_id: 1, "labeler": "a"})
        assert status == 400 and len(reply["error"]) < 400
    assert db.answers() == []


def _post_raw(base: str, head: bytes, body: bytes) -> bytes:
    """Sends a request while reading the reply (a server that refuses a body
    closes before reading it all); returns the reply."""
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        def send():
            try:
                s.sendall(head + b"\r\n\r\n" + body)
            except OSError:  # refused before it was all sent
                pass
        sender = threading.Thread(target=send)
        sender.start()
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, socket.timeout):  # the reply so far is what counts
            pass
        sender.join(10)
    return b"".join(chunks)


def test_bodies_over_the_limit_are_refused_whole_chunked_or_declared(db):
    # A chunked 2 MiB body whose first MiB is a valid answer used to be cut to
    # 1 MiB and stored (201).
    def padded(item_id: int, size: int) -> bytes:
        answer = json.dumps({"item_id": item_id, "labeler": "alice", "choice": 0}).encode()
        return answer + b" " * (size - len(answer))

    head = (b"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\n")
    limit = 1 << 20
    with serve(db) as base:
        for body, framing in ((padded(1, 2 * limit), b"Transfer-Encoding: chunked"),
                              (padded(1, limit + 1), b"Transfer-Encoding: chunked"),
                              (padded(1, limit + 1), b"Content-Length: %d" % (limit + 1))):
            sent = chunked(body) if b"chunked" in framing else body
            reply = _post_raw(base, head + framing, sent)
            status, _, payload = reply.partition(b"\r\n\r\n")
            assert status.startswith(b"HTTP/1.1 413"), (framing, reply[:300])
            assert json.loads(payload) == {"error": "the request body is larger than 1048576 "
                                                    "bytes"}
        assert db.answers() == []
        # Exactly the limit is a body like any other.
        reply = _post_raw(base, head + b"Transfer-Encoding: chunked", chunked(padded(2, limit)))
        assert reply.startswith(b"HTTP/1.1 201"), reply[:300]
    assert [item.id for item, _ in db.answers()] == [2]
    # The app alone, under a WSGI server that hands it a chunked stream undecoded
    # (no length; werkzeug's own server does this): refused whole too.
    environ = EnvironBuilder(method="POST", path="/api/answer", content_type="application/json",
                             input_stream=io.BytesIO(padded(3, 2 * limit))).get_environ()
    del environ["CONTENT_LENGTH"]
    environ.update({"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"})
    payload, status, _ = run_wsgi_app(create_app(db), environ, buffered=True)
    assert status.startswith("413"), (status, b"".join(payload)[:200])
    assert [item.id for item, _ in db.answers()] == [2]


def _closed_by_server(s: socket.socket, wait: float) -> bool:
    """Whether the server closes `s` within `wait` seconds."""
    s.settimeout(wait)
    try:
        while s.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_trickled_requests_are_cut_at_the_deadline_and_hold_no_thread(db):
    # One byte every 0.2 s resets any silence timeout; the deadline counts from the
    # connection's first byte. The old server also gave each one a thread.
    n_slow = 20
    with serve(db, request_timeout=1.0) as base:
        Client(base).get("/api/progress")  # the worker threads are started
        threads = threading.active_count()
        host, port = base.split("//")[1].split(":")
        socks = [socket.create_connection((host, int(port)), timeout=10) for _ in range(n_slow)]
        for s in socks:
            s.sendall(b"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                      b"application/json\r\nContent-Length: 1000\r\n\r\n{\"item_id\": ")
        t0 = time.monotonic()
        open_socks, peak = list(socks), threads
        while open_socks and time.monotonic() - t0 < 10:
            for s in list(open_socks):
                try:
                    s.sendall(b" ")
                except OSError:  # closed by the server
                    open_socks.remove(s)
                    continue
                if _closed_by_server(s, 0.001):
                    open_socks.remove(s)
            peak = max(peak, threading.active_count())
            time.sleep(0.2)
        waited = time.monotonic() - t0
        for s in socks:
            s.close()
        assert Client(base).get("/api/progress")[0] == 200
    assert not open_socks
    # 1 s deadline, checked once a second: cut after 1-2 s, not kept alive by the trickle.
    assert 0.9 < waited < 4, waited
    assert peak == threads, (peak, threads)  # slow clients hold sockets, never threads
    assert db.answers() == []


def test_waiting_connections_are_capped_the_longest_waiting_closed_first(db):
    # Connections that have not sent a whole request have shown no token: at most
    # MAX_WAITING of them are kept, so they cannot fill the server.
    n_extra = 44
    with serve(db) as base:
        host, port = base.split("//")[1].split(":")
        socks = []
        for _ in range(MAX_WAITING + n_extra):  # accepted in this order
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(b"GET /api/progress HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
            socks.append(s)
        time.sleep(1.5)
        closed = [not _open(s) for s in socks]
        assert closed == [True] * n_extra + [False] * MAX_WAITING, closed.count(True)
        t0 = time.monotonic()
        assert Client(base).get("/api/progress")[0] == 200  # a labeller gets in at once
        assert time.monotonic() - t0 < 2
        for s in socks:
            s.close()


def _open(s: socket.socket) -> bool:
    """Whether `s` is still open, nothing received (not waiting)."""
    s.setblocking(False)
    try:
        return s.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------
# 4. Read-only databases.


def test_export_and_status_read_a_read_only_copy(db, tmp_path):
    db.answer(1, "alice", 2)
    folder = tmp_path / "copy"
    folder.mkdir()
    copy = str(folder / "labels.sqlite")
    shutil.copy(db.path, copy)
    with read_only(folder):
        assert run_cli(["--db", copy, "status"]) == (0, "")
        rc, err = run_cli(["--db", copy, "export", "--format", "lhp",
                           "--out", str(tmp_path / "labels.json")])
        assert (rc, err) == (0, "")
        assert json.loads((tmp_path / "labels.json").read_text())[0]["best"] == 2
        rc, err = run_cli(["--db", copy, "labelers", "add", "bob"])
        assert rc == 2 and err.count("\n") == 1 and copy in err, err
    assert os.listdir(folder) == ["labels.sqlite"]


def test_write_failure_under_a_running_server_is_one_503_then_recovers(db):
    with serve(db) as base:
        c = Client(base)
        with read_only(db.path):
            status, reply, headers = c.post("/api/answer", {"item_id": 1, "labeler": "alice",
                                                            "choice": 0})
            assert (status, headers.get_content_type()) == (503, "application/json"), reply
            assert reply["error"].startswith(f"{db.path}: the label database cannot be written")
            assert "\n" not in reply["error"]
            assert c.get("/api/progress")[1]["open"] == 3  # reads still work
        assert c.post("/api/answer", {"item_id": 1, "labeler": "alice", "choice": 0})[0] == 201
    assert [a.labeler for _, a in db.answers()] == ["alice"]


def test_wal_files_left_read_only_are_made_writable_again(db):
    # SQLite creates -wal/-shm with the database's mode: opened while the file was
    # read-only they stay 0444, and for a server not running as root every later
    # write fails, restarts included (the test above shows it end to end when not
    # root; as root SQLite reopens them itself, so here the repair is checked alone).
    for suffix in ("-wal", "-shm"):
        pathlib.Path(db.path + suffix).touch()
        os.chmod(db.path + suffix, 0o444)
    _repair_sidecars(db.path)
    for suffix in ("-wal", "-shm"):
        assert stat.S_IMODE(os.stat(db.path + suffix).st_mode) == 0o644, suffix
    os.chmod(db.path, 0o444)  # a read-only database keeps read-only WAL files
    os.chmod(db.path + "-shm", 0o444)
    _repair_sidecars(db.path)
    assert stat.S_IMODE(os.stat(db.path + "-shm").st_mode) == 0o444


# --------------------------------------------------------------------------
# 5. The schema version is checked.


def test_unknown_schema_version_is_refused_and_version_1_upgraded(tmp_path):
    path = tmp_path / "future.sqlite"
    LabelDB(path)
    with sqlite3.connect(path) as con:
        con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(ValueError, match="schema version 99; this code reads version 2"):
        LabelDB(path)
    rc, err = run_cli(["--db", str(path), "status"])
    assert rc == 2 and err.count("\n") == 1 and "schema version 99" in err
    with sqlite3.connect(path) as con:  # refused before anything was changed
        assert con.execute("SELECT value FROM meta").fetchone()[0] == "99"
    # A version-1 file (no labelers table) opens read-only, and is upgraded for writing.
    old = tmp_path / "v1.sqlite"
    LabelDB(old).add_items("b", best_of_4_items(1))
    with sqlite3.connect(old) as con:
        con.execute("DROP TABLE labelers")
        con.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    assert LabelDB(old, readonly=True).labelers() == []
    assert LabelDB(old).labelers() == [] and LabelDB(old).progress()["open"] == 1
    with sqlite3.connect(old) as con:
        assert con.execute("SELECT value FROM meta").fetchone()[0] == "2"


def _foreign(path):
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
        con.execute("INSERT INTO orders VALUES (1, 9.5)")
    return path


def _changed_label_db(path, sql):
    LabelDB(path)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute(sql)
    con.execute("PRAGMA journal_mode=DELETE")  # all in the file itself, no -wal
    con.close()
    return path


def _no_version_row(path):
    return _changed_label_db(path, "DELETE FROM meta")


def _label_db_plus_a_foreign_table(path):
    return _changed_label_db(path, "CREATE TABLE orders (id INTEGER PRIMARY KEY)")


@pytest.mark.parametrize("make, named", [
    (_foreign, "not a label database (it holds other tables: ['orders'])"),
    (_no_version_row, "no schema_version row"),
    (_label_db_plus_a_foreign_table, "not a label database (it holds other tables: ['orders'])"),
])
def test_a_file_that_is_not_a_label_database_is_refused_unchanged(tmp_path, monkeypatch, make,
                                                                   named):
    # `serve` used to add the label tables to another application's database,
    # stamp it version 2 and switch its journal to WAL.
    path = make(tmp_path / "other.sqlite")
    before = path.read_bytes()
    monkeypatch.setattr(cli, "serve", lambda *a, **k: pytest.fail("served"))
    for args in ([], ["status"], ["labelers", "add", "alice"],
                 ["import", "--format", "sff", str(ROOT / "tests/fixtures/sff_comparisons.jsonl")]):
        rc, err = run_cli(["--db", str(path), "--port", "0", *args])
        assert rc == 2 and err.count("\n") == 1 and named in err and str(path) in err, (args, err)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["other.sqlite"]  # no -wal, no -shm
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_schema_version_is_checked_on_every_write(db, tmp_path):
    with serve(db) as base:
        c = Client(base)
        assert c.get("/api/next?labeler=alice")[0] == 200
        with sqlite3.connect(db.path) as con:  # another program changes the file meanwhile
            con.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
        for status, reply, _ in (
                c.post("/api/answer", {"item_id": 1, "labeler": "alice", "choice": 0}),
                c.post("/api/skip", {"item_id": 2, "labeler": "alice"}),
                c.get("/api/next?labeler=bob")):
            assert status == 503 and "schema version '3'" in reply["error"], reply
            assert "\n" not in reply["error"]
        # Replaced by another application's database: no write lands in it either.
        with sqlite3.connect(db.path) as con:
            con.execute("DROP TABLE meta")
        status, reply, _ = c.post("/api/answer", {"item_id": 1, "labeler": "alice", "choice": 0})
        assert status == 503 and "no schema_version" in reply["error"], reply
        with sqlite3.connect(db.path) as con:
            con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            con.execute("INSERT INTO meta VALUES ('schema_version', '2')")
        assert c.post("/api/answer", {"item_id": 1, "labeler": "alice", "choice": 0})[0] == 201
    assert [(item.id, a.labeler) for item, a in db.answers()] == [(1, "alice")]
    assert db.skips() == []


# --------------------------------------------------------------------------
# 6. Registered labellers: a token says who labels.


def test_registered_labellers_cannot_act_as_anyone_else(db, capsys):
    assert cli.main(["--db", db.path, "labelers", "add", "alice", "bob"]) == 0
    tokens = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert sorted(tokens) == ["alice", "bob"] and tokens["alice"] != tokens["bob"]
    alice = {"X-Label-Token": tokens["alice"]}
    with serve(db) as base:
        c = Client(base)
        assert c.get("/api/next?labeler=alice")[0] == 401  # no token: no access
        # Invented ids cannot lease or skip anything.
        for i in range(20):
            status, reply, _ = c.get(f"/api/next?labeler=fake{i}", headers=alice)
            assert status == 403 and "it cannot act as 'fake" in reply["error"]
        for i in range(3):
            assert c.post("/api/skip", {"item_id": 1, "labeler": f"fake{i}"},
                          headers=alice)[0] == 403
        assert db.skips() == [] and db.progress()["open"] == 3
        # Each gets an item of their own; the labeller id comes from the token.
        status, reply, _ = c.get("/api/next", headers=alice)
        assert status == 200 and reply["item"]["id"] == 1
        bob_item = c.get("/api/next", headers={"Authorization": f"Bearer {tokens['bob']}"})
        assert bob_item[1]["item"]["id"] == 2
        status, reply, _ = c.post("/api/answer", {"item_id": 1, "choice": 3}, headers=alice)
        assert status == 201 and reply["labeler"] == "alice"
        assert c.post("/api/answer", {"item_id": 2, "labeler": "bob", "choice": 0},
                      headers=alice)[0] == 403
        # The link with the token is the whole onboarding: no id form.
        page = Client(base)
        status, html, _ = page.get(f"/?token={tokens['bob']}")
        assert status == 200 and '<b id="who">bob</b>' in html and 'data-item-id="2"' in html
        # A removed labeller's token stops working at once.
        assert cli.main(["--db", db.path, "labelers", "remove", "bob"]) == 0
        assert page.get("/api/progress")[0] == 401
    assert [(a.labeler, a.choice) for _, a in db.answers()] == [("alice", 3)]
    # A shared token on top of registered labellers is refused.
    os.environ["LABEL_SERVER_TOKEN"] = SECRET
    try:
        rc, err = run_cli(["--db", db.path, "--port", "0"])
    finally:
        del os.environ["LABEL_SERVER_TOKEN"]
    assert rc == 2 and "has registered labellers" in err and err.count("\n") == 1


# --------------------------------------------------------------------------
# 6b. Leases: a fixed deadline, one per labeller, few invented ids.


def _leased(db) -> dict:
    with sqlite3.connect(db.path) as con:
        return dict(con.execute("SELECT id, lease_labeler FROM items WHERE lease_until IS NOT "
                                "NULL ORDER BY id").fetchall())


def _lease_until(db, item_id):
    with sqlite3.connect(db.path) as con:
        return con.execute("SELECT lease_until FROM items WHERE id=?", (item_id,)).fetchone()[0]


def test_asking_again_does_not_extend_a_lease_only_renew_does(db):
    # Each /api/next used to push the deadline on, so polling held an item forever.
    t0 = 1_000_000.0
    assert db.next_item("alice", lease_seconds=60, now=t0).id == 1
    for dt in range(1, 60, 3):  # alice polls for a minute: the same item, the same deadline
        assert db.next_item("alice", lease_seconds=60, now=t0 + dt).id == 1
        assert _lease_until(db, 1) == t0 + 60
    assert _leased(db) == {1: "alice"}  # one lease however often she asks
    assert db.next_item("bob", lease_seconds=60, now=t0 + 60.5).id == 1  # the deadline held
    assert db.item(1).lease_until == t0 + 120.5
    # An explicit renew moves a running lease on; nobody else's, no ended one.
    assert db.next_item("carol", lease_seconds=60, now=t0 + 61).id == 2
    assert db.renew(2, "carol", lease_seconds=60, now=t0 + 100) == t0 + 160
    # At t0 + 130 bob's lease on 1 has ended, carol's renewed one on 2 has not.
    assert db.next_item("dave", lease_seconds=60, now=t0 + 130).id == 1
    assert db.next_item("erin", lease_seconds=60, now=t0 + 131).id == 3
    for item_id, labeler, now in ((2, "dave", t0 + 130), (1, "bob", t0 + 121)):
        with pytest.raises(Conflict, match=f"item {item_id} is not leased to {labeler}"):
            db.renew(item_id, labeler, lease_seconds=60, now=now)


def test_renew_over_http_and_one_lease_per_labeller(db):
    with serve(db, lease_seconds=30) as base:
        c = Client(base)
        first = c.get("/api/next?labeler=alice")[1]["item"]
        assert first["id"] == 1 and 29 < first["lease_seconds_left"] <= 30
        time.sleep(1.1)
        again = c.get("/api/next?labeler=alice")[1]["item"]
        assert again["id"] == 1 and again["lease_seconds_left"] <= 29  # not moved on
        # Answering someone else's item does not get her a second lease.
        assert c.get("/api/next?labeler=bob")[1]["item"]["id"] == 2
        assert c.post("/api/answer", {"item_id": 2, "labeler": "alice", "choice": 0})[0] == 201
        assert c.get("/api/next?labeler=alice")[1]["item"]["id"] == 1
        assert _leased(db) == {1: "alice"}
        status, reply, _ = c.post("/api/renew", {"item_id": 1, "labeler": "alice"})
        assert status == 200 and reply["item_id"] == 1 and reply["lease_seconds_left"] > 29.5
        status, reply, _ = c.post("/api/renew", {"item_id": 1, "labeler": "bob"})
        assert status == 409 and "not leased to bob" in reply["error"]
        assert c.post("/api/renew", {"item_id": 2, "labeler": "alice"})[0] == 409  # answered


@pytest.mark.parametrize("token", [SECRET, None])
def test_invented_labeller_ids_from_one_address_are_capped(tmp_path, token):
    # In open and shared-token modes, /api/next?labeler=hog1..20 used to lease all
    # 20 items, and an honest labeller got none. 10 new ids per address and hour.
    db = LabelDB(tmp_path / "labels.sqlite")
    db.add_items("b", best_of_4_items(24))
    db.skip(24, "erin")  # a labeller the database knows
    headers = {"X-Label-Token": token} if token else {}
    with serve(db, token=token) as base:
        c = Client(base)
        assert c.get("/api/next?labeler=alice", headers=headers)[1]["item"]["id"] == 1
        statuses = [c.get(f"/api/next?labeler=hog{i}", headers=headers)[0] for i in range(20)]
        assert statuses == [200] * 9 + [429] * 11, statuses
        status, reply, _ = c.post("/api/skip", {"item_id": 15, "labeler": "hog99"},
                                  headers=headers)
        assert status == 429 and "new labeller ids" in reply["error"], reply
        assert c.get("/?labeler=hog98", headers=headers)[0] == 429  # the page too
        # Known ids are never refused: alice again, erin from the database.
        assert c.get("/api/next?labeler=erin", headers=headers)[1]["item"]["id"] == 11
        assert c.post("/api/answer", {"item_id": 1, "labeler": "alice", "choice": 0},
                      headers=headers)[0] == 201
        assert c.get("/api/next?labeler=alice", headers=headers)[1]["item"]["id"] == 12
        assert c.get("/api/progress?labeler=hog97", headers=headers)[0] == 200  # a read
        assert len(_leased(db)) == 11  # alice, erin, 9 hogs: 13 of 24 items left for others
    assert [(i, name) for i, name, _ in db.skips()] == [(24, "erin")]


def test_the_allowance_of_new_ids_is_per_address_and_window():
    limit = _NewLabelerLimit({"erin"}, per_window=2, window_s=60.0)
    limit.admit("a1", "10.0.0.1", now=0.0)
    limit.admit("a2", "10.0.0.1", now=1.0)
    with pytest.raises(TooManyNewLabelers, match="started 2 new labeller ids in the last 60 s"):
        limit.admit("a3", "10.0.0.1", now=2.0)
    limit.admit("a1", "10.0.0.1", now=2.0)  # known now
    limit.admit("erin", "10.0.0.1", now=2.0)
    limit.admit("b1", "10.0.0.2", now=2.0)  # another address
    limit.admit("a3", "10.0.0.1", now=60.5)  # a1's minute is over
    with pytest.raises(TooManyNewLabelers):
        limit.admit("a4", "10.0.0.1", now=60.6)


# --------------------------------------------------------------------------
# 7. Bad settings: one line, exit 2, nothing served.


@pytest.mark.parametrize("args, named", [
    (["--lease-seconds", "-5"], "--lease-seconds=-5.0"),
    (["--lease-seconds", "0"], "--lease-seconds=0.0"),
    (["--lease-seconds", "nan"], "--lease-seconds=nan"),
    (["--request-timeout", "0"], "--request-timeout=0.0"),
    (["--request-timeout", "1e-6"], "--request-timeout=1e-06 must be a number of seconds >= 1"),
    (["--request-timeout", "0.5"], "--request-timeout=0.5"),
    (["--request-timeout", "inf"], "--request-timeout=inf"),
    (["--lease-seconds", "1e-300"], "--lease-seconds=1e-300 must be a number of seconds >= 5"),
    (["--lease-seconds", "4.9"], "--lease-seconds=4.9"),
    (["--new-labelers-per-hour", "0"], "--new-labelers-per-hour=0"),
    (["--port", "-1"], "--port=-1"),
    (["--port", "99999"], "--port=99999"),
    (["--port", "eighty"], "argument --port"),
    (["--db", ""], "label database ''"),
    (["--db", ":memory:"], "label database ':memory:'"),
    (["--host", "no.such.host.invalid"], "cannot serve on no.such.host.invalid"),
])
def test_bad_settings_are_one_line_errors(tmp_path, monkeypatch, args, named):
    argv = ["--db", str(tmp_path / "l.sqlite"), *args]
    if "--host" not in args:
        monkeypatch.setattr(cli, "serve", lambda *a, **k: pytest.fail("served"))
    rc, err = run_cli(argv)
    assert rc == 2 and err.count("\n") == 1 and named in err, err


def test_port_in_use_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        rc, err = run_cli(["--db", str(tmp_path / "l.sqlite"), "--port", str(port)])
    assert rc == 2 and err.count("\n") == 1 and f"cannot serve on 127.0.0.1:{port}" in err


# --------------------------------------------------------------------------
# 8. Without a token, only the hosts the server was started for.


def test_host_header_is_checked_without_a_token(db):
    with serve(db, allowed_hosts=("labels.lan",)) as base:
        port = base.rsplit(":", 1)[1]
        c = Client(base)
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "labels.lan", "LOCALHOST"):
            assert c.get("/api/progress", headers={"Host": host})[0] == 200, host
        for host in (f"evil.example:{port}", "127.0.0.1.evil.example", "attacker"):
            status, reply, _ = c.get("/api/progress", headers={"Host": host})
            assert status == 400 and "is not one this server was started for" in reply["error"]
            assert c.post("/api/answer", {"item_id": 1, "labeler": "a", "choice": 0},
                          headers={"Host": host})[0] == 400
    assert db.answers() == []
    with serve(db, token=SECRET) as base:  # the token is the guard then
        status, _, _ = Client(base).get("/api/progress", headers={"Host": "labels.example.org",
                                                                   "X-Label-Token": SECRET})
        assert status == 200

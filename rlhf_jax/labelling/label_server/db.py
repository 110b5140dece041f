"""SQLite storage for human labelling: items to label, answers, skips.

One file holds the queue that the web app serves, that the online loop
(`rlhf_jax.labelling.label_server.queue.HumanQueue`) posts to and waits on, and that
`export` / `import` convert to the papers' label formats. Several processes
and threads share it safely:

* every call opens its own connection (WAL journal, a 30 s busy timeout), and
  every write is one `BEGIN IMMEDIATE` transaction, so concurrent labellers
  serialise on the write lock instead of interleaving;
* `answers.item_id` is UNIQUE: an item has at most one answer, so a replayed
  or racing second answer is a `Conflict` (HTTP 409) and nothing is stored;
  `skips` is UNIQUE on (item, labeller);
* items are UNIQUE on (batch, idx), so re-posting a batch after a restart
  (`add_items`) stores nothing twice;
* `LabelDB(path, readonly=True)` (export, status) never writes, so it reads a
  read-only copy; a write that the file system refuses is one `StorageError`
  (HTTP 503) naming the file, and the next write after the cause is gone
  succeeds (see `_repair_sidecars`).

Registered labellers (`add_labeler`) each get a token of their own; the
database keeps only its SHA-256. When any are registered the web app accepts
only their tokens and takes the labeller id from the token.

An item is a query and its K responses, each response cut into display
pieces (one per token for token items; words for text-only imports); span
marks ("these tokens are wrong") index those pieces, end exclusive. An item is
`open` until answered (`answered`) or skipped by `max_skips` different
labellers (`retired`). `next_item` leases an open item to one labeller for a
while, so labellers working at once are shown different items.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import re
import secrets
import sqlite3
import stat
import time
import urllib.parse
from typing import Any, Iterator, Optional, Sequence

SCHEMA_VERSION = 2  # 2 added `labelers`; a version-1 file is upgraded when opened for writing
_TABLES = frozenset(("meta", "items", "answers", "skips", "labelers"))  # all a label database holds
MAX_ITEM_ID = 2 ** 63 - 1  # SQLite's INTEGER range
ITEM_LABEL_TYPES = ("best_of_n", "pairwise")
# Labeller ids: short, printable, safe in logs, files and HTML attributes.
LABELER_RE = re.compile(r"[A-Za-z0-9_.@+-]{1,64}")
# A labeller is given a new item only once their lease has ended or the item is
# answered or skipped: however often they ask, they keep at most this many.
MAX_LEASES_PER_LABELER = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    batch TEXT NOT NULL,             -- who posted it: a request hash, an import tag
    idx INTEGER NOT NULL,            -- position in that batch
    label_type TEXT NOT NULL CHECK (label_type IN ('best_of_n', 'pairwise')),
    k INTEGER NOT NULL CHECK (k >= 2),
    query_text TEXT NOT NULL,
    query_tokens TEXT,               -- JSON ids, NULL for text-only items
    responses TEXT NOT NULL,         -- JSON [{text, pieces, tokens}]
    meta TEXT,                       -- JSON: where an imported record came from
    max_skips INTEGER NOT NULL CHECK (max_skips >= 1),
    status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'answered', 'retired')),
    lease_labeler TEXT,
    lease_until REAL,
    created_at TEXT NOT NULL,
    UNIQUE (batch, idx)
);
CREATE INDEX IF NOT EXISTS items_status ON items (status, id);
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id INTEGER NOT NULL UNIQUE REFERENCES items (id),
    labeler TEXT NOT NULL,
    choice INTEGER NOT NULL,
    spans TEXT NOT NULL,             -- JSON [{response, start, end}]
    source TEXT NOT NULL,            -- web | import
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS skips (
    item_id INTEGER NOT NULL REFERENCES items (id),
    labeler TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (item_id, labeler)
);
CREATE TABLE IF NOT EXISTS labelers (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,   -- hex SHA-256 of the labeller's token
    created_at TEXT NOT NULL
);
"""


class LabelError(ValueError):
    """A rejected request; `status` is the HTTP status the web app answers with."""

    status = 400


class InvalidAnswer(LabelError):
    status = 400


class UnknownItem(LabelError):
    status = 404


class Conflict(LabelError):
    status = 409


class StorageError(LabelError):
    """The database file cannot be opened or written (read-only, disk full, locked)."""

    status = 503


def short(value: Any, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters: error messages never echo a huge input."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's 4300-digit str limit
        return f"<an integer of {value.bit_length()} bits>"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def now_iso() -> str:
    """UTC time with milliseconds, e.g. 2024-05-01T12:00:00.123+00:00."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def check_labeler(labeler: Any) -> str:
    """The labeller id, or InvalidAnswer: 1-64 of letters, digits and `_.@+-`."""
    if not isinstance(labeler, str) or not LABELER_RE.fullmatch(labeler):
        raise InvalidAnswer(f"field 'labeler'={short(labeler)} must be 1-64 characters from "
                            "letters, digits and _.@+-")
    return labeler


@dataclasses.dataclass(frozen=True)
class Response:
    """One response as shown: its text, its display pieces, its token ids.

    `pieces` joined give the displayed text; span marks index them. `tokens`
    holds one id per piece, or None for text-only items (which cannot be
    exported to the token-based LHP format).
    """

    text: str
    pieces: tuple[str, ...]
    tokens: Optional[tuple[int, ...]] = None

    def __post_init__(self):
        object.__setattr__(self, "pieces", tuple(self.pieces))
        if self.tokens is not None:
            object.__setattr__(self, "tokens", tuple(int(t) for t in self.tokens))
            if len(self.tokens) != len(self.pieces):
                raise ValueError(f"Response: {len(self.tokens)} tokens but "
                                 f"{len(self.pieces)} pieces; expected one piece per token")
        if not isinstance(self.text, str) or not all(isinstance(p, str) for p in self.pieces):
            raise ValueError("Response: text and pieces must be strings")

    def to_json(self) -> dict:
        return {"text": self.text, "pieces": list(self.pieces),
                "tokens": None if self.tokens is None else list(self.tokens)}

    @classmethod
    def from_json(cls, obj: dict) -> "Response":
        return cls(obj["text"], tuple(obj["pieces"]),
                   None if obj.get("tokens") is None else tuple(obj["tokens"]))


WORD_PIECE_RE = re.compile(r"\s*\S+|\s+")


def word_pieces(text: str) -> tuple[str, ...]:
    """Text cut into words, each with its leading whitespace (text-only items)."""
    return tuple(WORD_PIECE_RE.findall(text))


@dataclasses.dataclass(frozen=True)
class Item:
    """A query and its K responses, to be labelled best-of-K or pairwise."""

    label_type: str
    query_text: str
    responses: tuple[Response, ...]
    query_tokens: Optional[tuple[int, ...]] = None
    meta: Optional[dict] = None  # source metadata (an SFF record's info, policies, split)
    # Set when read back from the database.
    id: Optional[int] = None
    batch: Optional[str] = None
    idx: Optional[int] = None
    status: Optional[str] = None
    max_skips: Optional[int] = None
    created_at: Optional[str] = None
    lease_until: Optional[float] = None  # the lease's deadline (time.time()), when leased

    def __post_init__(self):
        object.__setattr__(self, "responses", tuple(self.responses))
        if self.query_tokens is not None:
            object.__setattr__(self, "query_tokens", tuple(int(t) for t in self.query_tokens))
        if self.label_type not in ITEM_LABEL_TYPES:
            raise ValueError(f"Item: label_type={self.label_type!r} is not one of "
                             f"{ITEM_LABEL_TYPES}")
        k = len(self.responses)
        if k < 2 or (self.label_type == "pairwise" and k != 2):
            raise ValueError(f"Item: {k} responses; {self.label_type} needs "
                             f"{'2' if self.label_type == 'pairwise' else '>= 2'}")

    @property
    def k(self) -> int:
        return len(self.responses)


@dataclasses.dataclass(frozen=True)
class Answer:
    """A stored answer: the chosen response, span marks, who and when."""

    item_id: int
    labeler: str
    choice: int
    spans: tuple[dict, ...]
    source: str
    created_at: str


def check_spans(spans: Any, item: Item) -> tuple[dict, ...]:
    """Validated span marks, sorted: [{response, start, end}], end exclusive.

    Each span lies inside one response's pieces; spans of one response do not
    overlap. InvalidAnswer names the bad field.
    """
    if spans is None:
        return ()
    if not isinstance(spans, list):
        raise InvalidAnswer(f"field 'spans' must be a list, got {type(spans).__name__}")
    out = []
    for n, s in enumerate(spans):
        if not isinstance(s, dict) or set(s) != {"response", "start", "end"}:
            raise InvalidAnswer(f"field 'spans[{n}]' must be an object with exactly "
                                "response, start, end")
        j, a, b = s["response"], s["start"], s["end"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (j, a, b)):
            raise InvalidAnswer(f"field 'spans[{n}]' must hold integers")
        if not 0 <= j < item.k:
            raise InvalidAnswer(f"field 'spans[{n}].response'={short(j)} is outside "
                                f"0..{item.k - 1}")
        size = len(item.responses[j].pieces)
        if not 0 <= a < b <= size:
            raise InvalidAnswer(f"field 'spans[{n}]'=[{short(a)}, {short(b)}) is not a "
                                f"non-empty range inside response {j}'s {size} tokens")
        out.append({"response": j, "start": a, "end": b})
    out.sort(key=lambda s: (s["response"], s["start"]))
    for prev, cur in zip(out, out[1:]):
        if prev["response"] == cur["response"] and cur["start"] < prev["end"]:
            raise InvalidAnswer(f"field 'spans': ranges [{prev['start']}, {prev['end']}) and "
                                f"[{cur['start']}, {cur['end']}) of response "
                                f"{cur['response']} overlap")
    return tuple(out)


def check_choice(choice: Any, item: Item) -> int:
    if not isinstance(choice, int) or isinstance(choice, bool) or not 0 <= choice < item.k:
        raise InvalidAnswer(f"field 'choice'={short(choice)} is not an integer in 0..{item.k - 1} "
                            f"(item {item.id} has {item.k} responses)")
    return choice


class LabelDB:
    """The label database at `path` (created, with its schema, if missing).

    Thread- and process-safe: each method opens its own connection.
    `readonly=True` opens an existing file without ever writing to it (export
    and status on a read-only copy); its write methods raise StorageError.
    """

    def __init__(self, path, *, timeout: float = 30.0, readonly: bool = False):
        self.path = os.fspath(path)
        self.timeout = timeout
        self.readonly = readonly
        if self.path in ("", ":memory:") or self.path.startswith("file:"):
            raise ValueError(f"label database {self.path!r}: give a file path (the database "
                             "is shared by the server, the run and the exports)")
        if os.path.isdir(self.path):
            raise ValueError(f"{self.path}: is a directory, not a label database file")
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise ValueError(f"{self.path}: directory {directory} does not exist")
        if readonly and not os.path.exists(self.path):
            raise ValueError(f"{self.path}: no such label database")
        try:
            with self._connect(write=not readonly) as con:
                self._check_tables(con)
                if not readonly:
                    self._create(con)
                version = self._schema_version(con)
        except StorageError as e:
            raise ValueError(str(e)) from None
        except sqlite3.DatabaseError as e:
            raise ValueError(f"{self.path}: not a usable label database ({e})") from None
        # A read-only open also reads version 1 (it has no registered labellers).
        if version != SCHEMA_VERSION and not (readonly and version == 1):
            raise ValueError(f"{self.path}: label database schema version {version}; this code "
                             f"reads version {SCHEMA_VERSION}")

    def _check_tables(self, con: sqlite3.Connection) -> None:
        """ValueError, before anything is written, for a file that is not a label
        database: tables of another application, or tables without a version row.
        An empty file (no tables) is a new label database."""
        tables = {r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")}
        foreign = sorted(tables - _TABLES)
        if foreign:
            raise ValueError(f"{self.path}: not a label database (it holds other tables: "
                             f"{short(foreign, 120)}); refusing to change it")
        if tables and self._schema_version(con, missing=None) is None:
            raise ValueError(f"{self.path}: not a label database (tables {sorted(tables)} but "
                             "no schema_version row); refusing to change it")

    def _create(self, con: sqlite3.Connection) -> None:
        # One write transaction: concurrent openers of a new file create it once,
        # and a file that changed since `_check_tables` is checked again inside it.
        con.execute("BEGIN IMMEDIATE")
        try:
            self._check_tables(con)
            version = self._schema_version(con, missing=None)
            if version is not None and version > SCHEMA_VERSION:
                con.execute("ROLLBACK")
                return  # refused by the caller, before anything is changed
            # IF NOT EXISTS throughout: safe to run again, and from several processes.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
            con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                        (str(SCHEMA_VERSION),))
            # Version 1 -> 2 only added the `labelers` table (created just above).
            con.execute("UPDATE meta SET value=? WHERE key='schema_version' AND value='1'",
                        (str(SCHEMA_VERSION),))
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        con.execute("PRAGMA journal_mode=WAL")  # only now: a refused file keeps its journal

    @contextlib.contextmanager
    def _write(self, con: sqlite3.Connection):
        """One write transaction: takes the write lock up front, so the reads inside
        it see the state the writes apply to (no lost updates between labellers).

        It first reads the schema version (one primary-key lookup): a file
        replaced or changed by another program while this one runs is refused
        (StorageError, HTTP 503) before anything is written to it.
        """
        con.execute("BEGIN IMMEDIATE")
        try:
            try:
                row = con.execute(
                    "SELECT value FROM meta WHERE key='schema_version'").fetchone()
            except sqlite3.OperationalError:  # no `meta` table
                row = None
            if row is None or row[0] != str(SCHEMA_VERSION):
                found = "no schema_version" if row is None else f"schema version {short(row[0])}"
                raise StorageError(f"{self.path}: the file has {found} now, not label database "
                                   f"version {SCHEMA_VERSION}; nothing written")
            yield
        except BaseException:
            if con.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def _schema_version(self, con: sqlite3.Connection, missing: Any = "error"):
        try:
            row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.OperationalError:  # no `meta` table: an empty or foreign file
            row = None
        if row is None:
            if missing != "error":
                return missing
            raise ValueError(f"{self.path}: not a label database (no schema_version)")
        try:
            return int(row[0])
        except ValueError:
            raise ValueError(f"{self.path}: schema version {short(row[0])} is not a "
                             "number") from None

    @contextlib.contextmanager
    def _connect(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection (autocommit mode: transactions are explicit, `_write`).

        SQLite errors from the file system (read-only, full disk, locked) become
        one StorageError naming the file.
        """
        if write and self.readonly:
            raise StorageError(f"{self.path}: opened read-only; nothing can be written")
        if write:
            _repair_sidecars(self.path)
        try:
            con = self._open()
        except sqlite3.OperationalError as e:
            raise StorageError(f"{self.path}: cannot open the label database ({e})") from None
        con.row_factory = sqlite3.Row
        try:
            con.execute("PRAGMA foreign_keys=ON")
            con.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            yield con
        except sqlite3.OperationalError as e:
            if "no such table" in str(e) or "no such column" in str(e):
                raise StorageError(f"{self.path}: not a label database ({e})") from None
            raise StorageError(f"{self.path}: the label database cannot be "
                               f"{'written' if write else 'read'} ({e})") from None
        finally:
            con.close()

    def _open(self) -> sqlite3.Connection:
        if not self.readonly:
            return sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
        con = sqlite3.connect(uri, timeout=self.timeout, isolation_level=None, uri=True)
        try:
            con.execute("SELECT 1 FROM sqlite_master LIMIT 1")
            return con
        except sqlite3.OperationalError:
            con.close()
        # A read-only directory without the WAL index (-shm), which SQLite cannot
        # create there: nobody can be writing the file, so read it as immutable.
        return sqlite3.connect(uri + "&immutable=1", timeout=self.timeout,
                               isolation_level=None, uri=True)

    # -- registered labellers ----------------------------------------------------

    def add_labeler(self, name: str) -> str:
        """Registers labeller `name`; returns their new token (stored only hashed).

        ValueError if `name` is already registered (remove it first to give a
        new token).
        """
        check_labeler(name)
        token = secrets.token_urlsafe(24)
        with self._connect(write=True) as con, self._write(con):
            try:
                con.execute("INSERT INTO labelers VALUES (?, ?, ?)",
                            (name, _token_hash(token), now_iso()))
            except sqlite3.IntegrityError:
                raise ValueError(f"labeller {name!r} is already registered") from None
        return token

    def remove_labeler(self, name: str) -> None:
        """Unregisters `name` (their token stops working; their answers stay)."""
        with self._connect(write=True) as con, self._write(con):
            if con.execute("DELETE FROM labelers WHERE name=?", (name,)).rowcount == 0:
                raise ValueError(f"labeller {name!r} is not registered")

    def labelers(self) -> list[tuple[str, str]]:
        """(name, registration time) of the registered labellers, by name."""
        with self._connect() as con:
            if not _has_table(con, "labelers"):
                return []
            return [tuple(r) for r in con.execute(
                "SELECT name, created_at FROM labelers ORDER BY name")]

    def has_labelers(self) -> bool:
        with self._connect() as con:
            return (_has_table(con, "labelers")
                    and con.execute("SELECT 1 FROM labelers LIMIT 1").fetchone() is not None)

    def labeler_ids(self) -> set[str]:
        """Every labeller id that has answered, skipped, or holds a lease."""
        with self._connect() as con:
            return {r[0] for r in con.execute(
                "SELECT labeler FROM answers UNION SELECT labeler FROM skips "
                "UNION SELECT lease_labeler FROM items WHERE lease_labeler IS NOT NULL")}

    def labeler_for_token(self, token: str) -> Optional[str]:
        """The registered labeller whose token this is, or None."""
        with self._connect() as con:
            if not _has_table(con, "labelers"):
                return None
            row = con.execute("SELECT name FROM labelers WHERE token_sha256=?",
                              (_token_hash(token),)).fetchone()
        return None if row is None else row[0]

    # -- posting ---------------------------------------------------------------

    def add_items(self, batch: str, items: Sequence[Item], *, max_skips: int = 3,
                  start_idx: int = 0) -> list[int]:
        """Stores `items` as `(batch, start_idx + i)`; returns their ids.

        Idempotent: an item already stored under the same (batch, idx) is kept
        as it is (re-posting after a restart adds nothing).
        """
        if not isinstance(max_skips, int) or max_skips < 1:
            raise ValueError(f"max_skips={max_skips!r} must be an int >= 1")
        ids = []
        created = now_iso()
        with self._connect(write=True) as con, self._write(con):
            for i, item in enumerate(items):
                idx = start_idx + i
                con.execute(
                    "INSERT OR IGNORE INTO items (batch, idx, label_type, k, query_text, "
                    "query_tokens, responses, meta, max_skips, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (batch, idx, item.label_type, item.k, item.query_text,
                     None if item.query_tokens is None else json.dumps(list(item.query_tokens)),
                     json.dumps([r.to_json() for r in item.responses]),
                     None if item.meta is None else json.dumps(item.meta), max_skips, created))
                ids.append(con.execute("SELECT id FROM items WHERE batch=? AND idx=?",
                                       (batch, idx)).fetchone()[0])
        return ids

    # -- reading ---------------------------------------------------------------

    def item(self, item_id: int) -> Item:
        """The item with this id; UnknownItem if there is none."""
        with self._connect() as con:
            return _get_item(con, item_id)

    def items(self, *, batch: Optional[str] = None, status: Optional[str] = None) -> list[Item]:
        """Items (of one batch, with one status), in id order."""
        sql, args = _where(batch=batch, status=status)
        with self._connect() as con:
            return [_row_to_item(r) for r in
                    con.execute(f"SELECT * FROM items{sql} ORDER BY id", args)]

    def answers(self, *, batch: Optional[str] = None) -> list[tuple[Item, Answer]]:
        """Answered items and their answers (of one batch), in item id order."""
        sql, args = _where(batch=batch, prefix="i.")
        with self._connect() as con:
            rows = con.execute(
                "SELECT i.*, a.labeler AS a_labeler, a.choice AS a_choice, a.spans AS a_spans, "
                "a.source AS a_source, a.created_at AS a_created_at FROM items i "
                f"JOIN answers a ON a.item_id = i.id{sql} ORDER BY i.id", args).fetchall()
        return [(_row_to_item(r), Answer(r["id"], r["a_labeler"], r["a_choice"],
                                         tuple(json.loads(r["a_spans"])), r["a_source"],
                                         r["a_created_at"])) for r in rows]

    def skips(self) -> list[tuple[int, str, str]]:
        """(item id, labeller, time) of every skip."""
        with self._connect() as con:
            return [tuple(r) for r in
                    con.execute("SELECT item_id, labeler, created_at FROM skips ORDER BY rowid")]

    def progress(self, labeler: Optional[str] = None, *, batch: Optional[str] = None) -> dict:
        """Counts: total, open, answered, retired items (of one batch); `mine`
        = answers by `labeler`."""
        sql, args = _where(batch=batch)
        with self._connect() as con:
            counts = dict.fromkeys(("open", "answered", "retired"), 0)
            for status, n in con.execute(
                    f"SELECT status, COUNT(*) FROM items{sql} GROUP BY status", args):
                counts[status] = n
            out = {"total": sum(counts.values()), **counts}
            if labeler is not None:
                out["mine"] = con.execute("SELECT COUNT(*) FROM answers WHERE labeler=?",
                                          (labeler,)).fetchone()[0]
        return out

    # -- labelling -------------------------------------------------------------

    def next_item(self, labeler: str, *, lease_seconds: float = 600.0,
                  now: Optional[float] = None) -> Optional[Item]:
        """The open item `labeler` should label next, leased to them; None if none.

        A labeller holds at most one lease (`MAX_LEASES_PER_LABELER`): while it
        runs they get that item again (a page reload shows the same item), and
        asking again does not move its deadline, which is fixed when the lease
        is granted; only `renew` moves it. Otherwise they get the oldest open
        item they have not skipped and nobody else holds. Leases only steer who
        sees what: any labeller may still answer any open item, the first
        answer wins. The returned item's `lease_until` is the deadline.
        """
        check_labeler(labeler)
        now = time.time() if now is None else now
        with self._connect(write=True) as con, self._write(con):
            row = con.execute(
                "SELECT * FROM items WHERE status='open' AND lease_labeler=? AND lease_until>? "
                "ORDER BY id LIMIT 1", (labeler, now)).fetchone()
            if row is not None:  # the lease they hold, deadline unchanged
                return _row_to_item(row)
            row = con.execute(
                "SELECT * FROM items i WHERE status='open' "
                "AND (lease_until IS NULL OR lease_until<=? OR lease_labeler=?) "
                "AND NOT EXISTS (SELECT 1 FROM skips s WHERE s.item_id=i.id AND s.labeler=?) "
                "ORDER BY id LIMIT 1", (now, labeler, labeler)).fetchone()
            if row is None:
                return None
            until = now + lease_seconds
            con.execute("UPDATE items SET lease_labeler=?, lease_until=? WHERE id=?",
                        (labeler, until, row["id"]))
        return dataclasses.replace(_row_to_item(row), lease_until=until)

    def renew(self, item_id: Any, labeler: Any, *, lease_seconds: float = 600.0,
              now: Optional[float] = None) -> float:
        """Moves `labeler`'s running lease on `item_id` to `now + lease_seconds`
        (the explicit "still working on it"); returns the new deadline.

        Conflict if the item is not open or the lease is not theirs or has
        ended (then anyone may have been given the item: ask `next_item`).
        """
        check_labeler(labeler)
        now = time.time() if now is None else now
        with self._connect(write=True) as con, self._write(con):
            item = _get_item(con, item_id)
            _check_open(con, item)
            until = now + lease_seconds
            n = con.execute("UPDATE items SET lease_until=? WHERE id=? AND lease_labeler=? "
                            "AND lease_until>?", (until, item.id, labeler, now)).rowcount
            if n == 0:
                raise Conflict(f"item {item.id} is not leased to {labeler} (the lease ended "
                               "or was never theirs); nothing renewed")
        return until

    def answer(self, item_id: Any, labeler: Any, choice: Any, spans: Any = None, *,
               source: str = "web", created_at: Optional[str] = None) -> Answer:
        """Stores `labeler`'s answer to an open item in one transaction.

        Raises UnknownItem (no such item), InvalidAnswer (a choice outside
        0..K-1, a bad span, a bad labeller id) or Conflict (the item is
        already answered or retired); nothing is stored then. `created_at`
        keeps an imported answer's original time (default: now).
        """
        check_labeler(labeler)
        created = now_iso() if created_at is None else created_at
        with self._connect(write=True) as con, self._write(con):
            item = _get_item(con, item_id)
            choice = check_choice(choice, item)
            spans = check_spans(spans, item)
            _check_open(con, item)
            try:
                con.execute("INSERT INTO answers (item_id, labeler, choice, spans, source, "
                            "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                            (item.id, labeler, choice, json.dumps(list(spans)), source, created))
            except sqlite3.IntegrityError:
                raise Conflict(f"item {item.id} is already answered; nothing stored") from None
            con.execute("UPDATE items SET status='answered', lease_labeler=NULL, "
                        "lease_until=NULL WHERE id=?", (item.id,))
        return Answer(item.id, labeler, choice, spans, source, created)

    def skip(self, item_id: Any, labeler: Any) -> str:
        """Records that `labeler` skipped an open item; returns its new status.

        The item goes to other labellers; after `max_skips` different
        labellers skip it, it is retired. UnknownItem / InvalidAnswer /
        Conflict (answered, retired, or already skipped by this labeller).
        """
        check_labeler(labeler)
        with self._connect(write=True) as con, self._write(con):
            item = _get_item(con, item_id)
            _check_open(con, item)
            try:
                con.execute("INSERT INTO skips (item_id, labeler, created_at) VALUES (?, ?, ?)",
                            (item.id, labeler, now_iso()))
            except sqlite3.IntegrityError:
                raise Conflict(f"item {item.id} is already skipped by {labeler}") from None
            n = con.execute("SELECT COUNT(*) FROM skips WHERE item_id=?",
                            (item.id,)).fetchone()[0]
            status = "retired" if n >= item.max_skips else "open"
            con.execute("UPDATE items SET status=?, lease_labeler=NULL, lease_until=NULL "
                        "WHERE id=?", (status, item.id))
        return status


# --------------------------------------------------------------------------
# Helpers (one connection, inside or outside a transaction).




def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _has_table(con, name: str) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                       (name,)).fetchone() is not None


def _repair_sidecars(path: str) -> None:
    """Gives the WAL files (-wal, -shm) the write permission the database has.

    SQLite creates them with the database file's mode. Opened while the file
    was read-only, they stay read-only after it is writable again, and every
    later write fails ("attempt to write a readonly database"), even after a
    restart. Only permission bits change, so it is safe beside open
    connections; a file we may not chmod is left for the write to report.
    """
    try:
        db_mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return
    writable = db_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    for suffix in ("-wal", "-shm"):
        try:
            mode = stat.S_IMODE(os.stat(path + suffix).st_mode)
            if writable & ~mode:
                os.chmod(path + suffix, mode | writable)
        except OSError:
            pass


def _where(*, batch=None, status=None, prefix="") -> tuple[str, tuple]:
    clauses, args = [], []
    if batch is not None:
        clauses.append(f"{prefix}batch=?")
        args.append(batch)
    if status is not None:
        clauses.append(f"{prefix}status=?")
        args.append(status)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)


def _json_or_none(text):
    return None if text is None else json.loads(text)


def _row_to_item(row) -> Item:
    tokens = _json_or_none(row["query_tokens"])
    return Item(
        label_type=row["label_type"], query_text=row["query_text"],
        responses=tuple(Response.from_json(r) for r in json.loads(row["responses"])),
        query_tokens=None if tokens is None else tuple(tokens),
        meta=_json_or_none(row["meta"]),
        id=row["id"], batch=row["batch"], idx=row["idx"], status=row["status"],
        max_skips=row["max_skips"], created_at=row["created_at"],
        lease_until=row["lease_until"] if row["status"] == "open" else None)


def _get_item(con, item_id) -> Item:
    if not isinstance(item_id, int) or isinstance(item_id, bool):
        raise InvalidAnswer(f"field 'item_id'={short(item_id)} is not an integer")
    if not 0 <= item_id <= MAX_ITEM_ID:
        raise InvalidAnswer(f"field 'item_id'={short(item_id)} is outside 0..{MAX_ITEM_ID}")
    row = con.execute("SELECT * FROM items WHERE id=?", (item_id,)).fetchone()
    if row is None:
        raise UnknownItem(f"item {item_id} does not exist")
    return _row_to_item(row)


def _check_open(con, item: Item) -> None:
    if item.status == "answered":
        # Not who answered nor when: that is for the exports, not for every labeller.
        raise Conflict(f"item {item.id} is already answered; nothing stored")
    if item.status == "retired":
        raise Conflict(f"item {item.id} was retired after {item.max_skips} skips; "
                       "nothing stored")

"""The labelling web app (Flask) over a `LabelDB`, and the server that runs it.

Pages and endpoints:

    GET  /                      the labelling page: the next item leased to the
                                labeller, or a form asking who they are
    GET  /?labeler=ID[&token=T] sets the labeller (and access) cookies, redirects
    GET  /switch                forgets the labeller
    GET  /api/next?labeler=ID   the next item as JSON ({"item": null} when none)
    POST /api/answer            {"item_id", "labeler", "choice", "spans"?} -> 201
    POST /api/skip              {"item_id", "labeler"} -> 200
    POST /api/renew             {"item_id", "labeler"} -> 200, the lease moved on
    GET  /api/progress[?labeler=ID]   counts

Errors under /api/ are JSON `{"error": "..."}` (one line, echoed values cut
short): 400 bad input (a choice outside 0..K-1, a bad span, item id or
labeller id, unknown fields, a body that is not JSON or nested too deep, an
unexpected Host), 401 a missing or wrong token, 403 a labeller's token used
for another labeller id, 404 an unknown item or path, 405 a wrong method, 409
an item already answered or retired (a replayed answer; it does not say who
answered, nor when) or a lease to renew that is not the labeller's, 413 a body
over `max_body_bytes` (declared or chunked: refused whole, never cut), 415 a
POST that is not JSON, 429 too many new labeller ids from one address, 503 a
database that cannot be written (read-only, full, replaced by another file).
Nothing is stored on any error.

Leases: `/api/next` leases one item to a labeller until a deadline fixed when
it is granted (`lease_seconds`); asking again returns the same item and does
not move it; only `/api/renew` does. A labeller holds at most one lease.

Access, one of three modes:
* registered labellers (`LabelDB.add_labeler`): each has a token of their own
  and the token says who they are; a `labeler` field naming anyone else is
  403. Checked per request, so adding or removing a labeller takes effect
  at once.
* a shared `token`: every holder may label under any labeller id (a team
  that trusts each other).
* neither (bind to 127.0.0.1 then): only requests whose Host header names a
  loopback address or one of `allowed_hosts` are served, so a web page on
  another site cannot reach the server through DNS rebinding.
In the last two modes labeller ids are claimed, not proven, so one client
could invent ids to lease many items: a client address may bring at most
`new_labelers_per_window` ids this server has not seen (in answers, skips,
leases or earlier requests) per `new_labeler_window_s`; more get 429.
A token goes in `?token=` once (which sets an HttpOnly SameSite=Strict cookie
and redirects to a URL without it), or in an `X-Label-Token` /
`Authorization: Bearer` header. Writes must be JSON, which a cross-site form
cannot send; templates are autoescaped (Jinja) and a strict
Content-Security-Policy allows only this app's own script and style.

The app is served by `server.make_server` (waitress), see there.
"""

from __future__ import annotations

import collections
import hmac
import json
import math
import threading
import time
from typing import Any, Optional

import flask
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from rlhf_jax.labelling.label_server.db import Item, LabelDB, LabelError, check_labeler, short

TOKEN_COOKIE = "label_token"
LABELER_COOKIE = "labeler"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY_BYTES = 1 << 20  # an answer with a span on every token of 4 long responses is ~100 KB
MAX_ERROR_CHARS = 300
# Below this an item leased to one labeller goes back to the pool before they
# can have read it, and several labellers are shown the same item at once.
MIN_LEASE_SECONDS = 5.0
NEW_LABELERS_PER_WINDOW = 10  # new labeller ids per client address per window
NEW_LABELER_WINDOW_S = 3600.0
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


class NotYours(LabelError):
    """A registered labeller's token used for another labeller id."""

    status = 403


class TooManyNewLabelers(LabelError):
    """One client address bringing more new labeller ids than the window allows."""

    status = 429


class _NewLabelerLimit:
    """Admits labeller ids: known ones always; new ones at most `per_window` per
    client address in any `window_s` seconds. Thread-safe."""

    def __init__(self, known, per_window: int, window_s: float):
        self.known = set(known)
        self.per_window, self.window_s = per_window, window_s
        self._recent: dict[str, collections.deque] = {}
        self._lock = threading.Lock()

    def admit(self, labeler: str, address: str, now: Optional[float] = None) -> None:
        if labeler in self.known:  # no lock: a set lookup, and `known` only grows
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            if labeler in self.known:
                return
            recent = self._recent.setdefault(address, collections.deque())
            while recent and recent[0] <= now - self.window_s:
                recent.popleft()
            if len(recent) >= self.per_window:
                raise TooManyNewLabelers(
                    f"this address has started {len(recent)} new labeller ids in the last "
                    f"{self.window_s:g} s, the most allowed; use an id you have used before "
                    "or ask the operator for a labeller token")
            recent.append(now)
            self.known.add(labeler)
            for a in [a for a, q in self._recent.items() if not q or q[-1] <= now - self.window_s]:
                del self._recent[a]  # addresses idle for a window: memory stays bounded


def host_name(host: str) -> str:
    """The name in a Host header, without the port: `[::1]:80` -> `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def item_json(item: Item) -> dict:
    """What a client needs to show and answer an item."""
    return {"id": item.id, "label_type": item.label_type, "k": item.k,
            "query": item.query_text,
            "responses": [{"text": r.text, "pieces": list(r.pieces)} for r in item.responses],
            "lease_seconds_left": _seconds_left(item.lease_until)}


def _seconds_left(until: Optional[float]) -> Optional[float]:
    # Seconds, not a time: the browser's clock need not agree with the server's.
    return None if until is None else round(max(until - time.time(), 0.0), 3)


def check_lease_seconds(lease_seconds: Any, name: str = "lease_seconds") -> float:
    """`lease_seconds` as a float, or ValueError naming `name` and the minimum."""
    if (isinstance(lease_seconds, bool) or not isinstance(lease_seconds, (int, float))
            or not math.isfinite(lease_seconds) or lease_seconds < MIN_LEASE_SECONDS):
        raise ValueError(f"{name}={lease_seconds!r} must be a number of seconds >= "
                         f"{MIN_LEASE_SECONDS:g} (a shorter lease gives an item back before its "
                         "labeller can have read it, so several are shown the same item)")
    return float(lease_seconds)


def create_app(db, *, token: Optional[str] = None, lease_seconds: float = 600.0,
               allowed_hosts: tuple[str, ...] = (),
               max_body_bytes: int = MAX_BODY_BYTES,
               new_labelers_per_window: int = NEW_LABELERS_PER_WINDOW,
               new_labeler_window_s: float = NEW_LABELER_WINDOW_S) -> flask.Flask:
    """The Flask app serving `db` (a `LabelDB` or a path).

    Args:
      db: the label database.
      token: a shared access token; None leaves the app open (bind it to
        127.0.0.1 then) unless the database has registered labellers.
      lease_seconds: how long an item shown to one labeller is kept from
        the others, from the grant (>= MIN_LEASE_SECONDS); `/api/renew` moves
        the deadline to now + lease_seconds.
      allowed_hosts: Host header names served without a token, besides the
        loopback names.
      max_body_bytes: larger request bodies are refused (413).
      new_labelers_per_window, new_labeler_window_s: without registered
        labellers, a client address may bring at most this many labeller ids
        not seen before in any window of this many seconds (429 beyond).
    """
    db = db if isinstance(db, LabelDB) else LabelDB(db)
    if token is not None and not token:
        raise ValueError("create_app: token is empty; pass None for no token")
    lease_seconds = check_lease_seconds(lease_seconds)
    if not isinstance(new_labelers_per_window, int) or new_labelers_per_window < 1:
        raise ValueError(f"new_labelers_per_window={new_labelers_per_window!r} must be an "
                         "int >= 1")
    if not (isinstance(new_labeler_window_s, (int, float)) and new_labeler_window_s > 0):
        raise ValueError(f"new_labeler_window_s={new_labeler_window_s!r} must be > 0 seconds")
    new_labelers = _NewLabelerLimit(db.labeler_ids(), new_labelers_per_window,
                                    new_labeler_window_s)
    hosts = frozenset(host_name(h) for h in (*LOOPBACK_HOSTS, *allowed_hosts))
    app = flask.Flask(__name__)
    app.config["LABEL_DB"] = db
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes

    def error(status: int, message: str):
        if len(message) > MAX_ERROR_CHARS:
            message = message[:MAX_ERROR_CHARS] + "..."
        return flask.jsonify({"error": message}), status

    def api() -> bool:
        return flask.request.path.startswith("/api/")

    def denied():
        if api():
            return error(401, "missing or wrong access token (X-Label-Token header)")
        return flask.render_template("label.html", denied=True), 401

    def given_token() -> Optional[str]:
        request = flask.request
        if request.endpoint == "page" and "token" in request.args:
            return request.args["token"]
        auth = request.headers.get("Authorization", "")
        return (request.headers.get("X-Label-Token")
                or (auth[len("Bearer "):] if auth.startswith("Bearer ") else None)
                or request.cookies.get(TOKEN_COOKIE))

    @app.before_request
    def check_access():
        flask.g.labeler = None  # set when the token is a registered labeller's
        if flask.request.endpoint == "static":
            return None
        given = given_token()
        if db.has_labelers():
            flask.g.labeler = db.labeler_for_token(given) if given else None
            if flask.g.labeler is None:
                return denied()
        elif token is not None:
            if not given or not hmac.compare_digest(given.encode(), token.encode()):
                return denied()
        elif host_name(flask.request.host) not in hosts:
            return error(400, f"Host {short(flask.request.host)} is not one this server was "
                              f"started for ({', '.join(sorted(hosts))})")
        if flask.request.method == "POST" and not flask.request.is_json:
            return error(415, "send the body as JSON (Content-Type: application/json)")
        return None

    @app.after_request
    def headers(response):
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(LabelError)
    def label_error(e: LabelError):
        return error(e.status, str(e))

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        if not api():
            return e
        if e.code == 413:
            return error(413, f"the request body is larger than {max_body_bytes} bytes")
        return error(e.code or 500, f"{e.name}: {flask.request.method} {flask.request.path}"
                     if e.code in (404, 405) else (e.description or e.name))

    @app.errorhandler(Exception)
    def internal_error(e: Exception):
        app.logger.error("unhandled error on %s %s", flask.request.method,
                         flask.request.path, exc_info=e)
        if api():
            return error(500, "internal error; the server log has the details")
        return "Internal error; the server log has the details.", 500

    def raw_body() -> bytes:
        request = flask.request
        if request.content_length is None and request.environ.get("wsgi.input_terminated"):
            # A chunked body: werkzeug's reader would stop at the limit and hand
            # over the first `max_body_bytes` as if they were all. Refuse it whole.
            data = request.environ["wsgi.input"].read(max_body_bytes + 1)
            if len(data) > max_body_bytes:
                raise RequestEntityTooLarge()
            return data
        return request.get_data(cache=False)  # the declared length is checked (413)

    def body(fields: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
        try:
            data = json.loads(raw_body())
        except RecursionError:
            raise LabelError("the body is JSON nested too deeply") from None
        except ValueError:
            raise LabelError("the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise LabelError("the body is not a JSON object")
        unknown = sorted(set(data) - set(fields) - set(optional))
        if unknown:
            raise LabelError(f"unknown field(s) {short(unknown, 120)}; expected "
                             f"{list(fields + optional)}")
        missing = [f for f in fields if f not in data]
        if missing:
            raise LabelError(f"missing field(s) {missing}")
        return data

    def admitted(labeler: str) -> str:
        """`labeler`, if this client may act as them (a claimed id, not a token's)."""
        new_labelers.admit(labeler, flask.request.remote_addr or "")
        return labeler

    def acting_labeler(claimed: Any, *, admit: bool = True) -> str:
        """The labeller a request acts for: the token's owner when labellers are
        registered (any other `claimed` id is 403), else the `claimed` id
        (`admit`: within the client's allowance of new ids, else 429)."""
        me = flask.g.labeler
        if me is None:
            labeler = check_labeler(claimed)
            return admitted(labeler) if admit else labeler
        if claimed is not None and claimed != me:
            raise NotYours(f"this token is labeller {me!r}'s; it cannot act as {short(claimed)}")
        return me

    def labeler_fields() -> tuple[tuple[str, ...], tuple[str, ...]]:
        # With registered labellers the token names the labeller: `labeler` is optional.
        return ((), ("labeler",)) if flask.g.labeler else (("labeler",), ())

    @app.get("/")
    def page():
        args = flask.request.args
        me = flask.g.labeler
        if "labeler" in args or "token" in args:
            response = flask.redirect(flask.url_for("page"))
            if "labeler" in args and me is None:
                try:
                    labeler = check_labeler(args["labeler"])
                except LabelError as e:
                    return flask.render_template("label.html", ask=True, message=str(e)), 400
                response.set_cookie(LABELER_COOKIE, labeler, samesite="Strict", httponly=True)
            if "token" in args and (token is not None or me is not None):
                response.set_cookie(TOKEN_COOKIE, args["token"], samesite="Strict",
                                    httponly=True)
            return response
        labeler = me or flask.request.cookies.get(LABELER_COOKIE)
        try:
            labeler = check_labeler(labeler) if labeler else None
        except LabelError:
            labeler = None
        if labeler is None:
            return flask.render_template("label.html", ask=True)
        if me is None:
            try:
                admitted(labeler)
            except TooManyNewLabelers as e:
                return flask.render_template("label.html", ask=True, message=str(e)), 429
        item = db.next_item(labeler, lease_seconds=lease_seconds)
        return flask.render_template("label.html", item=item, labeler=labeler,
                                     progress=db.progress(labeler),
                                     lease_left=None if item is None
                                     else _seconds_left(item.lease_until),
                                     lease_seconds=lease_seconds)

    @app.get("/switch")
    def switch():
        response = flask.redirect(flask.url_for("page"))
        response.delete_cookie(LABELER_COOKIE)
        if flask.g.labeler is not None:  # the token is the identity: forget it too
            response.delete_cookie(TOKEN_COOKIE)
        return response

    @app.get("/api/next")
    def api_next():
        labeler = acting_labeler(flask.request.args.get("labeler"))
        item = db.next_item(labeler, lease_seconds=lease_seconds)
        return flask.jsonify({"item": None if item is None else item_json(item),
                              "progress": db.progress(labeler)})

    @app.post("/api/answer")
    def api_answer():
        required, optional = labeler_fields()
        data = body(("item_id", "choice") + required, ("spans",) + optional)
        labeler = acting_labeler(data.get("labeler"))
        a = db.answer(data["item_id"], labeler, data["choice"], data.get("spans"))
        return flask.jsonify({"stored": True, "item_id": a.item_id, "labeler": a.labeler,
                              "choice": a.choice, "spans": list(a.spans),
                              "time": a.created_at}), 201

    @app.post("/api/skip")
    def api_skip():
        required, optional = labeler_fields()
        data = body(("item_id",) + required, optional)
        status = db.skip(data["item_id"], acting_labeler(data.get("labeler")))
        return flask.jsonify({"stored": True, "item_id": data["item_id"], "status": status})

    @app.post("/api/renew")
    def api_renew():
        required, optional = labeler_fields()
        data = body(("item_id",) + required, optional)
        until = db.renew(data["item_id"], acting_labeler(data.get("labeler")),
                         lease_seconds=lease_seconds)
        return flask.jsonify({"item_id": data["item_id"],
                              "lease_seconds_left": _seconds_left(until)})

    @app.get("/api/progress")
    def api_progress():
        labeler: Any = flask.request.args.get("labeler")
        if flask.g.labeler is not None or labeler:
            labeler = acting_labeler(labeler, admit=False)  # a read: no allowance used
        return flask.jsonify(db.progress(labeler or None))

    return app

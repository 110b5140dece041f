"""The labelling web app (Flask) over a `LabelDB`, and the server that runs it.

Pages and endpoints:

    GET  /                      the labelling page: the next item leased to the
                                labeller, or a form asking who they are
    GET  /?labeler=ID[&token=T] sets the labeller (and access) cookies, redirects
    GET  /switch                forgets the labeller
    GET  /api/next?labeler=ID   the next item as JSON ({"item": null} when none)
    POST /api/answer            {"item_id", "labeler", "choice", "spans"?} -> 201
    POST /api/skip              {"item_id", "labeler"} -> 200
    GET  /api/progress[?labeler=ID]   counts

Errors under /api/ are JSON `{"error": "..."}` (one line, echoed values cut
short): 400 bad input (a choice outside 0..K-1, a bad span, item id or
labeller id, unknown fields, a body that is not JSON or nested too deep, an
unexpected Host), 401 a missing or wrong token, 403 a labeller's token used
for another labeller id, 404 an unknown item or path, 405 a wrong method, 409
an item already answered or retired (a replayed answer), 413 a body over
`max_body_bytes`, 415 a POST that is not JSON, 503 a database that cannot be
written (read-only, full). Nothing is stored on any error.

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
A token goes in `?token=` once (which sets an HttpOnly SameSite=Strict cookie
and redirects to a URL without it), or in an `X-Label-Token` /
`Authorization: Bearer` header. Writes must be JSON, which a cross-site form
cannot send; templates are autoescaped (Jinja) and a strict
Content-Security-Policy allows only this app's own script and style.

`make_server` wraps werkzeug's threaded server so that a request (headers
and body) must arrive within `request_timeout` seconds, at most
`max_connections` are served at once (more wait in the listen queue), and the
access log never shows a token (`token=<redacted>`).
"""

from __future__ import annotations

import hmac
import json
import math
import re
import socket
import threading
import time
from typing import Any, Optional

import flask
from werkzeug.exceptions import HTTPException
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from rlhf_jax.labelling.label_server.db import Item, LabelDB, LabelError, check_labeler, short

TOKEN_COOKIE = "label_token"
LABELER_COOKIE = "labeler"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY_BYTES = 1 << 20  # an answer with a span on every token of 4 long responses is ~100 KB
MAX_ERROR_CHARS = 300
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_TOKEN_IN_TEXT = re.compile(r"(token=)[^&\s\"']*", re.IGNORECASE)


class NotYours(LabelError):
    """A registered labeller's token used for another labeller id."""

    status = 403


def redact(text: str) -> str:
    """`text` with every `token=...` value replaced by `<redacted>`."""
    return _TOKEN_IN_TEXT.sub(r"\1<redacted>", text)


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
            "responses": [{"text": r.text, "pieces": list(r.pieces)} for r in item.responses]}


def create_app(db, *, token: Optional[str] = None, lease_seconds: float = 600.0,
               allowed_hosts: tuple[str, ...] = (),
               max_body_bytes: int = MAX_BODY_BYTES) -> flask.Flask:
    """The Flask app serving `db` (a `LabelDB` or a path).

    Args:
      db: the label database.
      token: a shared access token; None leaves the app open (bind it to
        127.0.0.1 then) unless the database has registered labellers.
      lease_seconds: how long an item shown to one labeller is kept from
        the others (> 0).
      allowed_hosts: Host header names served without a token, besides the
        loopback names.
      max_body_bytes: larger request bodies are refused (413).
    """
    db = db if isinstance(db, LabelDB) else LabelDB(db)
    if token is not None and not token:
        raise ValueError("create_app: token is empty; pass None for no token")
    if (isinstance(lease_seconds, bool) or not isinstance(lease_seconds, (int, float))
            or not math.isfinite(lease_seconds) or lease_seconds <= 0):
        raise ValueError(f"lease_seconds={lease_seconds!r} must be a positive number of seconds "
                         "(an item shown to one labeller is kept from others that long)")
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

    def body(fields: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
        try:
            data = json.loads(flask.request.get_data(cache=False))
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

    def acting_labeler(claimed: Any) -> str:
        """The labeller a request acts for: the token's owner when labellers are
        registered (any other `claimed` id is 403), else the `claimed` id."""
        me = flask.g.labeler
        if me is None:
            return check_labeler(claimed)
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
        item = db.next_item(labeler, lease_seconds=lease_seconds)
        return flask.render_template("label.html", item=item, labeler=labeler,
                                     progress=db.progress(labeler))

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

    @app.get("/api/progress")
    def api_progress():
        labeler: Any = flask.request.args.get("labeler")
        if flask.g.labeler is not None or labeler:
            labeler = acting_labeler(labeler)
        return flask.jsonify(db.progress(labeler or None))

    return app


class _Handler(WSGIRequestHandler):
    """werkzeug's handler with the request deadline and tokens kept out of the log."""

    def handle(self):
        self.server.watch(self.connection)
        try:
            super().handle()
        finally:
            self.server.unwatch(self.connection)

    def log(self, type: str, message: str, *args: Any) -> None:
        super().log(type, "%s", redact(message % args if args else message))


class _Server(ThreadedWSGIServer):
    """A thread per connection (werkzeug closes each after one request), at most
    `max_connections` at once; a reaper shuts any connection whose request has
    not been answered `request_timeout` seconds after it was accepted (a stalled
    or trickled body), so slow clients cannot hold threads."""

    def __init__(self, sock: socket.socket, app, *, request_timeout: float,
                 max_connections: int):
        self.request_timeout = request_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._deadlines: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        host, port = sock.getsockname()[:2]
        super().__init__(host, port, app, handler=_Handler, fd=sock.fileno())
        self.server_name, self.server_port = host, self.port  # what binding would have set
        self._closed = threading.Event()  # after __init__, which closes a socket of its own
        threading.Thread(target=self._reap, name="label-server-reaper", daemon=True).start()

    def watch(self, conn: socket.socket) -> None:
        with self._lock:
            self._deadlines[conn] = time.monotonic() + self.request_timeout

    def unwatch(self, conn: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(conn, None)

    def _reap(self) -> None:
        tick = min(1.0, self.request_timeout / 4)
        while not self._closed.wait(tick):
            now = time.monotonic()
            with self._lock:
                late = [c for c, t in self._deadlines.items() if t < now]
            for conn in late:
                try:
                    conn.shutdown(socket.SHUT_RDWR)  # the handler's read ends; it cleans up
                except OSError:
                    pass

    def process_request(self, request, client_address):
        self._slots.acquire()  # the accept loop waits: more clients queue in the backlog
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def server_close(self):
        if hasattr(self, "_closed"):
            self._closed.set()
        super().server_close()


def make_server(app: flask.Flask, host: str, port: int, *, request_timeout: float = 30.0,
                max_connections: int = 64) -> _Server:
    """The threaded server for `app` on host:port (0: a free port), see the module doc."""
    if not request_timeout > 0:
        raise ValueError(f"request_timeout={request_timeout!r} must be > 0 seconds")
    if not isinstance(max_connections, int) or max_connections < 1:
        raise ValueError(f"max_connections={max_connections!r} must be an int >= 1")
    # Bound here, not by werkzeug, which prints and exits on a bind error: an
    # OSError (a bad host, a port in use) is the caller's to report.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.create_server((host, port), family=family) as sock:
        return _Server(sock, app, request_timeout=request_timeout,
                       max_connections=max_connections)  # it holds a duplicate of `sock`

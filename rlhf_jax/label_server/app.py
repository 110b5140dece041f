"""The labelling web app (Flask) over a `LabelDB`.

Pages and endpoints:

    GET  /                      the labelling page: the next item leased to the
                                labeller (cookie), or a form asking who they are
    GET  /?labeler=ID[&token=T] sets the labeller (and access) cookies, redirects
    GET  /switch                forgets the labeller
    GET  /api/next?labeler=ID   the next item as JSON ({"item": null} when none)
    POST /api/answer            {"item_id", "labeler", "choice", "spans"?} -> 201
    POST /api/skip              {"item_id", "labeler"} -> 200
    GET  /api/progress[?labeler=ID]   counts

Errors are JSON `{"error": "..."}`: 400 bad input (a choice outside 0..K-1,
a bad span or labeller id, unknown fields), 401 a missing or wrong token, 404
an unknown item, 409 an item already answered or retired (a replayed answer),
415 a POST that is not JSON. Nothing is stored on any error.

Safety: with a shared `token`, every request but the static files needs it
(`?token=` once, which sets an HttpOnly SameSite=Strict cookie, or an
`X-Label-Token` / `Authorization: Bearer` header); writes must be JSON, which
a cross-site form cannot send; templates are autoescaped (Jinja) and a strict
Content-Security-Policy allows only this app's own script and style.
"""

from __future__ import annotations

import hmac
from typing import Any, Optional

import flask

from rlhf_jax.label_server.db import Item, LabelDB, LabelError, check_labeler

TOKEN_COOKIE = "label_token"
LABELER_COOKIE = "labeler"
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def item_json(item: Item) -> dict:
    """What a client needs to show and answer an item."""
    return {"id": item.id, "label_type": item.label_type, "k": item.k,
            "query": item.query_text,
            "responses": [{"text": r.text, "pieces": list(r.pieces)} for r in item.responses]}


def create_app(db, *, token: Optional[str] = None, lease_seconds: float = 600.0) -> flask.Flask:
    """The Flask app serving `db` (a `LabelDB` or a path).

    Args:
      db: the label database.
      token: a shared access token; None leaves the app open (bind it to
        127.0.0.1 then).
      lease_seconds: how long an item shown to one labeller is kept from
        the others.
    """
    db = db if isinstance(db, LabelDB) else LabelDB(db)
    if token is not None and not token:
        raise ValueError("create_app: token is empty; pass None for no token")
    app = flask.Flask(__name__)
    app.config["LABEL_DB"] = db

    def authorised() -> bool:
        if token is None:
            return True
        given = (flask.request.headers.get("X-Label-Token")
                 or flask.request.cookies.get(TOKEN_COOKIE))
        auth = flask.request.headers.get("Authorization", "")
        if not given and auth.startswith("Bearer "):
            given = auth[len("Bearer "):]
        return bool(given) and hmac.compare_digest(given.encode(), token.encode())

    def error(status: int, message: str):
        return flask.jsonify({"error": message}), status

    @app.before_request
    def check_token():
        if flask.request.endpoint == "static":
            return None
        if token is not None and flask.request.endpoint == "page":
            given = flask.request.args.get("token")
            if given is not None:
                if not hmac.compare_digest(given.encode(), token.encode()):
                    return flask.render_template("label.html", denied=True), 401
                return None  # `page` sets the cookie and drops the token from the URL
        if not authorised():
            if flask.request.path.startswith("/api/"):
                return error(401, "missing or wrong access token (X-Label-Token header)")
            return flask.render_template("label.html", denied=True), 401
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

    def body(fields: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
        data = flask.request.get_json(silent=True)
        if not isinstance(data, dict):
            raise LabelError("the body is not a JSON object")
        unknown = sorted(set(data) - set(fields) - set(optional))
        if unknown:
            raise LabelError(f"unknown field(s) {unknown}; expected {list(fields + optional)}")
        missing = [f for f in fields if f not in data]
        if missing:
            raise LabelError(f"missing field(s) {missing}")
        return data

    @app.get("/")
    def page():
        args = flask.request.args
        if "labeler" in args or "token" in args:
            response = flask.redirect(flask.url_for("page"))
            if "labeler" in args:
                try:
                    labeler = check_labeler(args["labeler"])
                except LabelError as e:
                    return flask.render_template("label.html", ask=True, message=str(e)), 400
                response.set_cookie(LABELER_COOKIE, labeler, samesite="Strict", httponly=True)
            if token is not None and "token" in args:
                response.set_cookie(TOKEN_COOKIE, token, samesite="Strict", httponly=True)
            return response
        labeler = flask.request.cookies.get(LABELER_COOKIE)
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
        return response

    @app.get("/api/next")
    def api_next():
        labeler = check_labeler(flask.request.args.get("labeler"))
        item = db.next_item(labeler, lease_seconds=lease_seconds)
        return flask.jsonify({"item": None if item is None else item_json(item),
                              "progress": db.progress(labeler)})

    @app.post("/api/answer")
    def api_answer():
        data = body(("item_id", "labeler", "choice"), ("spans",))
        a = db.answer(data["item_id"], data["labeler"], data["choice"], data.get("spans"))
        return flask.jsonify({"stored": True, "item_id": a.item_id, "labeler": a.labeler,
                              "choice": a.choice, "spans": list(a.spans),
                              "time": a.created_at}), 201

    @app.post("/api/skip")
    def api_skip():
        data = body(("item_id", "labeler"))
        status = db.skip(data["item_id"], data["labeler"])
        return flask.jsonify({"stored": True, "item_id": data["item_id"], "status": status})

    @app.get("/api/progress")
    def api_progress():
        labeler: Any = flask.request.args.get("labeler")
        return flask.jsonify(db.progress(check_labeler(labeler) if labeler else None))

    return app

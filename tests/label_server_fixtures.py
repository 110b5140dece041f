"""Helpers for the label server tests: a live server on 127.0.0.1, an HTTP client, items."""

import contextlib
import http.cookiejar
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

from rlhf_jax.labelling.label_server import Item, Response, create_app, make_server

ROOT = pathlib.Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def serve(db, *, request_timeout=30.0, server_kwargs=None, **app_kwargs):
    """The app on a free port of 127.0.0.1, on the server the CLI runs (waitress,
    `make_server`); yields its base URL."""
    server = make_server(create_app(db, **app_kwargs), "127.0.0.1", 0,
                         request_timeout=request_timeout, **(server_kwargs or {}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def start_server(db_path, *args, env=None):
    """`python -m rlhf_jax.labelling.label_server --db DB --port 0 ARGS`, the one
    command that serves; returns (process, base URL) once it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhf_jax.labelling.label_server", "--db", str(db_path), "--port",
         "0", *args], env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("label server: "), (line, proc.stderr.read() if proc.poll() else "")
    return proc, line.split(" at ")[1].split("/?")[0].strip().rstrip("/")


def raw_http(base: str, head: bytes, body: bytes = b"", *, timeout: float = 10.0) -> bytes:
    """Sends `head` (request line and headers, CRLF-separated, no blank line) and
    `body` on one connection; returns everything the server sends back."""
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head + b"\r\n\r\n" + body)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def chunked(body: bytes, size: int = 65536) -> bytes:
    """`body` in HTTP/1.1 chunked transfer coding."""
    parts = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
             for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


@contextlib.contextmanager
def read_only(path):
    """Makes the file or directory `path` read-only for this process while inside.

    As root, whom file modes do not stop, with a read-only bind mount; else
    by clearing the write bits (of a directory: no new files in it)."""
    path = os.fspath(path)
    if os.geteuid() == 0:
        subprocess.run(["mount", "--bind", path, path], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", path], check=True)
            yield
        finally:
            subprocess.run(["umount", path], check=True)
    else:
        mode = os.stat(path).st_mode
        os.chmod(path, mode & ~0o222)
        try:
            yield
        finally:
            os.chmod(path, mode)


class Client:
    """A small HTTP client with its own cookie jar. `call` returns (status, body,
    headers); bodies of JSON responses are parsed."""

    def __init__(self, base: str):
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def call(self, method: str, path: str, body=None, *, headers=None, raw: bytes | None = None):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        hdrs = dict(headers or {})
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=hdrs)
        try:
            with self.opener.open(req, timeout=30) as res:
                status, payload, res_headers = res.status, res.read(), res.headers
        except urllib.error.HTTPError as e:
            status, payload, res_headers = e.code, e.read(), e.headers
        if res_headers.get_content_type() == "application/json":
            payload = json.loads(payload)
        else:
            payload = payload.decode()
        return status, payload, res_headers

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.call("POST", path, body, **kw)


def piece(t: int) -> str:
    """The display text of token t in these tests."""
    return f" w{t}"


def decode(ids) -> str:
    return "".join(piece(t) for t in ids)


def token_item(query, responses, label_type="best_of_n") -> Item:
    """A token item whose pieces are `piece(t)`."""
    return Item(label_type, decode(query),
                tuple(Response(decode(r), tuple(piece(t) for t in r), tuple(r))
                      for r in responses),
                query_tokens=tuple(query))


def best_of_4_items(n: int, start: int = 0) -> list[Item]:
    """n best-of-4 token items with distinct tokens (< 1000)."""
    return [token_item([10 + i, 11 + i, 12 + i],
                       [[100 + 10 * i + j, 200 + j, 300 + i][: 1 + (i + j) % 3] for j in range(4)])
            for i in range(start, start + n)]

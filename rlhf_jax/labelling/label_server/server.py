"""The label app's HTTP server: waitress, set up so that slow clients cannot starve labellers.

waitress (pure Python, on PyPI) reads every connection in one event loop and
hands a request to its pool of worker threads only once the request line,
headers and body have all arrived. A client that sends slowly, or not at all,
therefore holds a socket, never a worker, and is never shown to the app
before its request is whole (so the token check cannot be starved either).
On top of waitress's own limits, `LabelServer` adds:

* a deadline: a connection that is waiting for its client (a request not yet
  whole, an idle keep-alive, a response not being read) is closed
  `request_timeout` seconds after it began to wait, however it trickles
  bytes. waitress's own `channel_timeout` only counts silence, which one byte
  every few seconds resets;
* a cap on waiting connections, which are the unauthenticated ones (no token
  can be checked before the request is whole): when a new connection would
  make more than `max_waiting`, the one that has waited longest is closed.
  Slow clients cannot keep labellers out; they only evict each other. At most
  `max_connections` sockets are open in all (more wait in the listen queue);
* bodies over `max_body_bytes` (declared or chunked) are refused whole with
  413: waitress stops reading a body once it passes `max_body_bytes` plus
  64 KiB (a chunked body's framing counts), and hands the app the rest with
  its decoded length, which the app checks. waitress's error replies are JSON
  like the app's;
* an access log (stderr) that never shows a token, whatever its characters
  (`redact_query`).

`make_server` returns the server; `serve_forever`, `shutdown` and
`server_close` work as in `socketserver`.
"""

from __future__ import annotations

import json
import resource
import socket
import sys
import threading
import time
import urllib.parse
from typing import Callable, Optional

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, WSGITask

from rlhf_jax.labelling.label_server.db import LABELER_RE

# Below a second a request from an ordinary client over a network cannot be
# expected to arrive whole, and the deadline is checked once a second anyway.
MIN_REQUEST_TIMEOUT = 1.0
MAX_CONNECTIONS = 512  # open sockets in all
MAX_WAITING = 256  # sockets waiting for their client (see the module doc)
THREADS = 8  # workers running the app; each request opens its own SQLite connection
MAX_HEADER_BYTES = 32 * 1024
_CHUNK_FRAMING_BYTES = 64 * 1024
_SPARE_FILES = 64  # open files besides the connections (SQLite, temp buffers, logs)
_SAFE_PATH = "/-._~!$&'()*+,;=:@"


def redact_query(query: str) -> str:
    """A query string for the log, with no part of a token in it.

    A token may hold any character, `&` and `=` included, so what follows
    `token=` may be a token's tail that merely looks like more parameters: from
    the first `token` parameter (or any name that is not plain ASCII, such as a
    percent-encoded `%74oken`) to the end, all is `<redacted>`. Before it,
    `labeler=ID` with a valid id stays readable; other values are redacted.
    """
    out = []
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if name.lower() == "token":
            out.append("token=<redacted>")
            break
        if not (name.isascii() and name.isidentifier()):
            out.append("<redacted>")
            break
        out.append(part if name == "labeler" and LABELER_RE.fullmatch(value)
                   else f"{name}=<redacted>")
    return "&".join(out)


def _request_line(request) -> str:
    # A request waitress could not parse has none of these.
    command = getattr(request, "command", None)
    if not command:
        return "- (not a valid request)"
    path = urllib.parse.quote(getattr(request, "path", "") or "", safe=_SAFE_PATH)  # no CR/LF
    query = getattr(request, "query", "")
    query = f"?{redact_query(query)}" if query else ""
    return f"{command} {path}{query} HTTP/{getattr(request, 'version', None) or '-'}"


class _Logged:
    """A task that writes one access-log line when it is done."""

    def service(self):
        try:
            super().service()
        finally:
            self.channel.server.log_access(self)


class _WSGITask(_Logged, WSGITask):
    pass


class _ErrorTask(_Logged, ErrorTask):
    """waitress's protocol errors (413, 431, 400) as JSON `{"error": ...}`."""

    def execute(self):
        e = self.request.error
        if e.code == 413:
            message = f"the request body is larger than {self.channel.server.max_body_bytes} bytes"
        else:
            message = f"{e.reason}: {e.body}"[:300]
        body = json.dumps({"error": message}).encode()
        self.status = f"{e.code} {e.reason}"
        self.response_headers.extend([("Content-Type", "application/json"),
                                      ("X-Content-Type-Options", "nosniff")])
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):
    """A connection that knows since when it has been waiting for its client."""

    task_class = _WSGITask
    error_task_class = _ErrorTask

    def __init__(self, *args, **kwargs):
        self.waiting_since = time.monotonic()  # before registering: the loop may look
        super().__init__(*args, **kwargs)

    def service(self):  # a worker thread: one request (or more, pipelined) answered
        try:
            super().service()
        finally:
            if not self.requests:
                self.waiting_since = time.monotonic()


def _waiting(channel) -> bool:
    return not channel.requests and not channel.will_close


class LabelServer(TcpWSGIServer):
    """waitress's TCP server with the deadline and the cap on waiting sockets."""

    channel_class = _Channel

    def __init__(self, app, sock: socket.socket, *, request_timeout: float, max_waiting: int,
                 max_body_bytes: int, log: Callable[[str], None], adj: Adjustments):
        self.request_timeout = request_timeout
        self.max_waiting = max_waiting
        self.max_body_bytes = max_body_bytes
        self._log = log
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._serving = False
        super().__init__(app, map={}, _sock=sock, bind_socket=False, adj=adj,
                         sockinfo=(sock.family, sock.type, sock.proto, sock.getsockname()))
        self.server_port = int(self.effective_port)

    # -- the event loop's hooks (one thread) ------------------------------------

    def maintenance(self, now):
        """Closes every socket that has waited for its client past the deadline
        (replaces waitress's silence timeout; called about once a second)."""
        cutoff = time.monotonic() - self.request_timeout
        for channel in list(self.active_channels.values()):
            if _waiting(channel) and channel.waiting_since < cutoff:
                channel.will_close = True

    def handle_accept(self):
        super().handle_accept()
        waiting = [c for c in self.active_channels.values() if _waiting(c)]
        if len(waiting) > self.max_waiting:
            min(waiting, key=lambda c: c.waiting_since).will_close = True

    def log_access(self, task) -> None:
        request = task.request
        code = (task.status or "-").split(" ", 1)[0]
        when = time.strftime("%d/%b/%Y %H:%M:%S")
        self._log(f'{task.channel.addr[0]} - - [{when}] "{_request_line(request)}" {code} '
                  f"{task.content_bytes_written}")

    # -- like socketserver --------------------------------------------------------

    def serve_forever(self) -> None:
        self._serving = True
        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=self.adj.asyncore_loop_timeout, map=self._map,
                               use_poll=True, count=1)  # poll: no 1024-socket limit of select
        finally:
            self._close_all()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stops `serve_forever` (from another thread) and waits for it."""
        self._stop.set()
        if self._serving:
            try:
                self.trigger.pull_trigger()  # wake the loop now rather than at its timeout
            except OSError:  # the loop already stopped and closed its trigger
                pass
            self._stopped.wait(30)

    def server_close(self) -> None:
        if not self._serving:
            self._close_all()

    def _close_all(self) -> None:
        wasyncore.close_all(self._map)
        self.task_dispatcher.shutdown(timeout=10)


def _open_files_for(connections: int) -> int:
    """How many connections the open-file limit allows (raised if it may be)."""
    need = connections + _SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return connections
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    except (ValueError, OSError):
        pass
    return max(min(connections, soft - _SPARE_FILES), 1)


def make_server(app, host: str, port: int, *, request_timeout: float = 30.0,
                max_connections: int = MAX_CONNECTIONS, max_waiting: int = MAX_WAITING,
                threads: int = THREADS, log: Optional[Callable[[str], None]] = None
                ) -> LabelServer:
    """The server for the WSGI `app` on host:port (0: a free port), see the module doc.

    `max_body_bytes` comes from the app (`MAX_CONTENT_LENGTH`). OSError if the
    address cannot be bound; ValueError for a bad setting.
    """
    if not (isinstance(request_timeout, (int, float)) and request_timeout >= MIN_REQUEST_TIMEOUT
            and request_timeout < float("inf")):
        raise ValueError(f"request_timeout={request_timeout!r} must be a number of seconds >= "
                         f"{MIN_REQUEST_TIMEOUT:g}")
    for name, value in (("max_connections", max_connections), ("max_waiting", max_waiting),
                        ("threads", threads)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} must be an int >= 1")
    if max_waiting >= max_connections:
        raise ValueError(f"max_waiting={max_waiting} must be below max_connections="
                         f"{max_connections} (room for the connections being answered)")
    max_connections = _open_files_for(max_connections)
    max_waiting = min(max_waiting, max(max_connections // 2, 1))
    max_body_bytes = int(app.config["MAX_CONTENT_LENGTH"])
    if log is None:
        def log(line: str) -> None:
            print(line, file=sys.stderr, flush=True)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family)  # OSError: the caller's to report
    try:
        adj = Adjustments(
            sockets=[sock], threads=threads, connection_limit=max_connections,
            cleanup_interval=1, asyncore_loop_timeout=1,
            # waitress refuses a body of this size or more, counting a chunked body's
            # framing: room for it, and the app refuses a body over max_body_bytes.
            max_request_body_size=max_body_bytes + _CHUNK_FRAMING_BYTES,
            max_request_header_size=MAX_HEADER_BYTES,
            inbuf_overflow=64 * 1024,  # larger bodies wait in a temporary file, not memory
            ident="label-server", expose_tracebacks=False)
        return LabelServer(app, sock, request_timeout=float(request_timeout),
                           max_waiting=max_waiting, max_body_bytes=max_body_bytes, log=log,
                           adj=adj)
    except BaseException:
        sock.close()
        raise

"""`python -m rlhf_jax.labelling.label_server`: serve, export, import, status, labellers.

    python -m rlhf_jax.labelling.label_server --db labels.sqlite --port 8080 [--host 127.0.0.1]
    python -m rlhf_jax.labelling.label_server --db labels.sqlite labelers add alice bob
    LABEL_SERVER_TOKEN=secret python -m rlhf_jax.labelling.label_server --db labels.sqlite --host 0.0.0.0
    python -m rlhf_jax.labelling.label_server --db labels.sqlite --token-file token.txt --host 0.0.0.0
    python -m rlhf_jax.labelling.label_server --db labels.sqlite export --format lhp --out labels.json
    python -m rlhf_jax.labelling.label_server --db labels.sqlite export --format sff --out comparisons.jsonl
    python -m rlhf_jax.labelling.label_server --db labels.sqlite import --format sff comparisons.jsonl
    python -m rlhf_jax.labelling.label_server --db labels.sqlite import --format lhp offline_5k.json \
        --tokenizer gpt2 --unlabelled
    python -m rlhf_jax.labelling.label_server --db labels.sqlite status

The server is waitress (see `server.make_server`): one event loop reads the
connections, and a request reaches one of its worker threads, each request
with its own SQLite connection, only once it has arrived whole. Registered labellers
open `http://HOST:PORT/?token=THEIR_TOKEN`; with a shared token (from
`$LABEL_SERVER_TOKEN` or `--token-file`, never the command line, which `ps`
shows) labellers open `?token=...` and enter their labeller id. `export` and
`status` open the database read-only. Every error is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from rlhf_jax.data.labels import LHP_PAD_TOKEN
from rlhf_jax.labelling.label_server.app import (LOOPBACK_HOSTS, MIN_LEASE_SECONDS,
                                                 NEW_LABELERS_PER_WINDOW, check_lease_seconds)
from rlhf_jax.labelling.label_server.db import LabelDB
from rlhf_jax.labelling.label_server.server import MIN_REQUEST_TIMEOUT

TOKEN_ENV = "LABEL_SERVER_TOKEN"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m rlhf_jax.labelling.label_server",
                description="Human labelling server and label-format tools.")
    p.add_argument("--db", required=True, help="the SQLite label database (created if missing)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080,
                   help="port to serve on, 1-65535 (default 8080; 0: any free port)")
    p.add_argument("--token", default=None, help=argparse.SUPPRESS)  # refused: `ps` shows it
    p.add_argument("--token-file", default=None,
                   help=f"file holding the shared access token (default: ${TOKEN_ENV}; "
                        "neither: open access, or registered labellers' own tokens)")
    p.add_argument("--allowed-host", action="append", default=[],
                   help="a Host name served without a token besides the loopback names "
                        "(repeatable)")
    p.add_argument("--lease-seconds", type=float, default=600.0,
                   help="how long an item shown to one labeller is kept from others, from when "
                        f"it is shown (>= {MIN_LEASE_SECONDS:g}; the page renews it while "
                        "they work)")
    p.add_argument("--request-timeout", type=float, default=30.0,
                   help="seconds a client has to send a whole request; an idle connection "
                        f"is closed after as long (>= {MIN_REQUEST_TIMEOUT:g})")
    p.add_argument("--new-labelers-per-hour", type=int, default=NEW_LABELERS_PER_WINDOW,
                   help="without registered labellers: labeller ids not seen before that one "
                        f"client address may bring per hour (default {NEW_LABELERS_PER_WINDOW})")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    ex = sub.add_parser("export", help="write answered items as LHP JSON or SFF comparisons")
    ex.add_argument("--format", choices=("lhp", "sff"), required=True)
    ex.add_argument("--out", required=True, help="output file")
    ex.add_argument("--batch", default=None, help="only this batch (see `status`)")
    ex.add_argument("--pad-token", type=int, default=LHP_PAD_TOKEN, help="LHP pad id")
    ex.add_argument("--query-length", type=int, default=None, help="LHP query length")
    ex.add_argument("--response-length", type=int, default=None, help="LHP sample length")
    ex.add_argument("--split", default="train", help="SFF split of items not imported from SFF")
    im = sub.add_parser("import", help="add items (and their answers) from a label file")
    im.add_argument("--format", choices=("lhp", "sff"), required=True)
    im.add_argument("path", help="the label file")
    im.add_argument("--unlabelled", action="store_true",
                    help="import the items without their answers, to be labelled")
    im.add_argument("--tokenizer", default="gpt2",
                    help="LHP: tokenizer (hub name or directory) to show the tokens as text")
    im.add_argument("--label-type", default="best_of_4", help="LHP: best_of_<K>")
    im.add_argument("--pad-token", type=int, default=LHP_PAD_TOKEN, help="LHP pad id")
    im.add_argument("--split", default=None, help="SFF: only records of this split")
    im.add_argument("--max-skips", type=int, default=3,
                    help="retire an item after this many labellers skip it")
    sub.add_parser("status", help="print counts per batch")
    lab = sub.add_parser("labelers", help="register labellers, each with a token of their own")
    lab.add_argument("action", choices=("add", "remove", "list"))
    lab.add_argument("names", nargs="*", help="labeller ids (add, remove)")
    return p


def _check_settings(args) -> None:
    """ValueError naming the first bad setting."""
    if args.token is not None:
        raise ValueError(f"--token would show the token to every user of the machine (ps); "
                         f"set ${TOKEN_ENV} or use --token-file")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port={args.port} must be 1-65535 (0: any free port)")
    check_lease_seconds(args.lease_seconds, "--lease-seconds")
    if not (math.isfinite(args.request_timeout) and args.request_timeout >= MIN_REQUEST_TIMEOUT):
        raise ValueError(f"--request-timeout={args.request_timeout} must be a number of seconds "
                         f">= {MIN_REQUEST_TIMEOUT:g} (below it a request cannot be expected to "
                         "arrive whole)")
    if args.new_labelers_per_hour < 1:
        raise ValueError(f"--new-labelers-per-hour={args.new_labelers_per_hour} must be >= 1")


def _token(args) -> str | None:
    if args.token_file is None:
        return os.environ.get(TOKEN_ENV) or None
    try:
        with open(args.token_file) as f:
            token = f.read().strip()
    except OSError as e:
        raise ValueError(f"--token-file={args.token_file}: {e.strerror}") from None
    if not token:
        raise ValueError(f"--token-file={args.token_file} is empty")
    return token


def serve(db: LabelDB, *, host: str, port: int, token: str | None, lease_seconds: float,
          request_timeout: float = 30.0, allowed_hosts: tuple[str, ...] = (),
          new_labelers_per_hour: int = NEW_LABELERS_PER_WINDOW) -> None:
    from rlhf_jax.labelling.label_server.app import create_app
    from rlhf_jax.labelling.label_server.server import make_server

    registered = db.has_labelers()
    if registered and token is not None:
        raise ValueError(f"{db.path} has registered labellers, who use their own tokens; "
                         f"unset ${TOKEN_ENV} / --token-file (or remove the labellers)")
    app = create_app(db, token=token, lease_seconds=lease_seconds,
                     allowed_hosts=(host, *allowed_hosts),
                     new_labelers_per_window=new_labelers_per_hour, new_labeler_window_s=3600.0)
    try:
        server = make_server(app, host, port, request_timeout=request_timeout)
    except OSError as e:  # a bad host, a port in use or not ours
        raise ValueError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
    if token is None and not registered and host not in LOOPBACK_HOSTS:
        print(f"warning: serving on {host} without an access token; register labellers "
              f"(`labelers add NAME`) or set ${TOKEN_ENV}", file=sys.stderr)
    url = f"http://{host}:{server.server_port}/"
    access = ("?token=<each labeller's own token>" if registered
              else "?token=<token>" if token else "")
    print(f"label server: {db.path} at {url}{access}", flush=True)
    print(f"progress: {json.dumps(db.progress())}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _labelers(db: LabelDB, action: str, names: list[str]) -> None:
    if action == "list":
        for name, created in db.labelers():
            print(f"{name}\tregistered {created}")
        return
    if not names:
        raise ValueError(f"labelers {action}: name at least one labeller id")
    for name in names:
        if action == "add":
            # The only time the token is shown: the database keeps its hash.
            print(f"{name}\t{db.add_labeler(name)}")
        else:
            db.remove_labeler(name)
            print(f"removed {name}")
    if action == "add":
        print("send each labeller http://HOST:PORT/?token=<their token>", file=sys.stderr)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        _check_settings(args)
        readonly = args.command in ("export", "status")
        db = LabelDB(args.db, readonly=readonly)
        if args.command is None:
            serve(db, host=args.host, port=args.port, token=_token(args),
                  lease_seconds=args.lease_seconds, request_timeout=args.request_timeout,
                  allowed_hosts=tuple(args.allowed_host),
                  new_labelers_per_hour=args.new_labelers_per_hour)
        elif args.command == "labelers":
            _labelers(db, args.action, args.names)
        elif args.command == "export":
            from rlhf_jax.labelling.label_server import formats

            if args.format == "lhp":
                n = formats.export_lhp(db, args.out, batch=args.batch, pad_token=args.pad_token,
                                       query_length=args.query_length,
                                       response_length=args.response_length)
            else:
                n = formats.export_sff(db, args.out, batch=args.batch, split=args.split)
            print(f"wrote {n} {args.format} records to {args.out}")
        elif args.command == "import":
            from rlhf_jax.labelling.label_server import formats

            if args.format == "lhp":
                from rlhf_jax.models import load_tokenizer

                tok = load_tokenizer(args.tokenizer)
                items, answers = formats.import_lhp(
                    db, args.path, decode=tok.decode, vocab_size=len(tok),
                    label_type=args.label_type, pad_token=args.pad_token,
                    answers=not args.unlabelled, max_skips=args.max_skips)
            else:
                items, answers = formats.import_sff(db, args.path, answers=not args.unlabelled,
                                                    split=args.split, max_skips=args.max_skips)
            print(f"imported {items} new items and {answers} answers from {args.path}")
        else:
            batches = sorted({i.batch for i in db.items()})
            for b in batches:
                print(f"{b}: {json.dumps(db.progress(batch=b))}")
            print(f"all: {json.dumps(db.progress())}")
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

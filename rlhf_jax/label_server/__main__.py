"""`python -m rlhf_jax.label_server`: serve, export, import, status.

    python -m rlhf_jax.label_server --db labels.sqlite --port 8080 [--host 127.0.0.1]
    LABEL_SERVER_TOKEN=secret python -m rlhf_jax.label_server --db labels.sqlite --host 0.0.0.0
    python -m rlhf_jax.label_server --db labels.sqlite export --format lhp --out labels.json
    python -m rlhf_jax.label_server --db labels.sqlite export --format sff --out comparisons.jsonl
    python -m rlhf_jax.label_server --db labels.sqlite import --format sff comparisons.jsonl
    python -m rlhf_jax.label_server --db labels.sqlite import --format lhp offline_5k.json \
        --tokenizer gpt2 --unlabelled
    python -m rlhf_jax.label_server --db labels.sqlite status

The server is werkzeug's threaded WSGI server: one thread per request, each
with its own SQLite connection. Labellers open `http://HOST:PORT/` (with
`?token=...` when a token is set) and enter their labeller id.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from rlhf_jax.data.labels import LHP_PAD_TOKEN
from rlhf_jax.label_server.db import LabelDB

TOKEN_ENV = "LABEL_SERVER_TOKEN"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlhf_jax.label_server",
                                description="Human labelling server and label-format tools.")
    p.add_argument("--db", required=True, help="the SQLite label database (created if missing)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to serve on (default 8080)")
    p.add_argument("--token", default=None,
                   help=f"shared access token (default: ${TOKEN_ENV}; none: open access)")
    p.add_argument("--lease-seconds", type=float, default=600.0,
                   help="how long an item shown to one labeller is kept from others")
    sub = p.add_subparsers(dest="command")
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
    return p


def serve(db: LabelDB, *, host: str, port: int, token: str | None,
          lease_seconds: float) -> None:
    from werkzeug.serving import make_server

    from rlhf_jax.label_server.app import create_app

    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host} without an access token; set ${TOKEN_ENV}",
              file=sys.stderr)
    server = make_server(host, port, create_app(db, token=token, lease_seconds=lease_seconds),
                         threaded=True)
    url = f"http://{host}:{server.server_port}/"
    print(f"label server: {db.path} at {url}" + ("?token=<token>" if token else ""), flush=True)
    print(f"progress: {json.dumps(db.progress())}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        db = LabelDB(args.db)
        if args.command is None:
            serve(db, host=args.host, port=args.port,
                  token=args.token or os.environ.get(TOKEN_ENV) or None,
                  lease_seconds=args.lease_seconds)
        elif args.command == "export":
            from rlhf_jax.label_server import formats

            if args.format == "lhp":
                n = formats.export_lhp(db, args.out, batch=args.batch, pad_token=args.pad_token,
                                       query_length=args.query_length,
                                       response_length=args.response_length)
            else:
                n = formats.export_sff(db, args.out, batch=args.batch, split=args.split)
            print(f"wrote {n} {args.format} records to {args.out}")
        elif args.command == "import":
            from rlhf_jax.label_server import formats

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
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

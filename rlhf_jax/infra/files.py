"""Durable writes: a file is replaced whole or not at all.

Every artifact a relaunch reads to decide what is done (stage markers, label
files, online-round requests, sweep summaries) is written to a temporary file
in the same directory, flushed to disk, then `os.replace`d over the target, so
a kill at any moment leaves either the old file or the complete new one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile

import numpy as np


def _write_atomic(path, data: bytes) -> None:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text_atomic(path, text: str) -> None:
    """`text` (UTF-8) to `path`, atomically."""
    _write_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj) -> None:
    """`obj` as indented JSON to `path`, atomically (numpy scalars as floats)."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=float))


def savez_atomic(path, **arrays) -> None:
    """`np.savez(path, **arrays)`, atomically (`path` names the file exactly)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _write_atomic(path, buf.getvalue())

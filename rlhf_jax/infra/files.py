"""Durable writes: a file is replaced whole or not at all.

Every artifact a relaunch reads to decide what is done (stage markers, label
files, online-round requests, sweep summaries) is written to a temporary file
in the same directory, flushed to disk, then `os.replace`d over the target, so
a kill at any moment leaves either the old file or the complete new one.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
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


_DISK_FULL = re.compile(r"No space left on device|Read-only file system|Disk quota exceeded|"
                        r"File too large")


def disk_error(e: BaseException) -> str | None:
    """`<reason> writing <path>` for a write the disk refused (full, read-only, over
    quota or over a file-size limit); None for other errors.

    Looks through the exception's causes and contexts (and an ExceptionGroup's
    members), except behind a ValueError (a check that names the problem itself,
    such as a read-only workdir found up front): a background save that failed on
    a full disk may surface in the main thread as another exception raised while
    handling it. Orbax (tensorstore)
    reports these as ValueError("RESOURCE_EXHAUSTED: Failed writing: "PATH": ...
    No space left on device ...")."""
    seen, pending = set(), [e]
    while pending:
        x = pending.pop(0)
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        reason = _own_disk_error(x)
        if reason:
            return reason
        if not isinstance(x, ValueError):  # ours: a check's own message, which says more
            pending += [x.__cause__, x.__context__, *getattr(x, "exceptions", ())]
    return None


def _own_disk_error(e: BaseException) -> str | None:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT,
                                              errno.EFBIG):
        return f"{e.strerror} writing {e.filename}" if e.filename else e.strerror
    reason = _DISK_FULL.search(str(e))
    if reason is None or "os_error_code" not in str(e):  # tensorstore's, not our own checks
        return None
    path = re.search(r'(?:writing|file)[: ]+"([^"]+)"', str(e))
    return f"{reason.group(0)} writing {path.group(1)}" if path else reason.group(0)

"""rlhf_jax.infra.files: telling a refused write from other errors."""

import errno

from rlhf_jax.infra.files import disk_error


def test_disk_error_is_found_behind_another_exception():
    """A full disk that surfaces in the main thread wrapped in, or while handling,
    another exception is still named (launch.py's one `error:` line)."""
    full = OSError(errno.ENOSPC, "No space left on device", "/w/metrics.jsonl")
    assert disk_error(full) == "No space left on device writing /w/metrics.jsonl"
    try:
        try:
            raise full
        except OSError:
            raise RuntimeError("Event loop is closed")  # raised while handling it
    except RuntimeError as e:
        assert disk_error(e) == "No space left on device writing /w/metrics.jsonl"
    tensorstore = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/w/c/_sharding": '
                             "No space left on device [os_error_code='28']")
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = ExceptionGroup("writes", [KeyError("x"), tensorstore])
    assert disk_error(wrapped) == "No space left on device writing /w/c/_sharding"
    # Our own checks (ValueErrors) say more than the error behind them, and one that
    # mentions a disk word is not a disk error; nor is anything else.
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system", "/w")
        except OSError as e:
            raise ValueError("--workdir=/w cannot be written") from e
    except ValueError as e:
        assert disk_error(e) is None
    assert disk_error(ValueError("File too large: labels.num_train=10**9")) is None
    assert disk_error(RuntimeError("boom")) is None

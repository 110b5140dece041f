"""Metrics: JSONL, TensorBoard and W&B writers, NaN checks, log lines with rate and ETA.

What a run leaves in its workdir:

    metrics.jsonl         one JSON object per log step, e.g.
                          {"step": 12, "stage": "ppo", "objective/kl": 2.4}
    samples.jsonl         one JSON object per sample: {"step", "stage", **row}
    tensorboard/<stage>/  TensorBoard events, one *run* per stage; the scalar
                          tags are the metric names unchanged
                          (`objective/score`), so our curves sit beside the
                          original code's under the same names, and stages
                          that restart their step at 0 do not overlap.

Only process 0 writes (`enabled` defaults to `jax.process_index() == 0`).
Every write is flushed, so a run killed with `kill -9` loses at most the line
being written; readers drop such a torn last line, and a relaunch cuts the
rows logged after its last checkpoint with `MetricsWriter.resume` so the
resumed run does not log them twice.

Training loops keep metrics on device and fetch the previous step's after the
next step is dispatched (`DeferredMetrics`), check them with `check_finite`
and print one `format_log_line` per log step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Iterable, Mapping, Sequence, TextIO

import jax
import numpy as np

from rlhf_jax.infra.files import write_text_atomic

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
TENSORBOARD_DIR = "tensorboard"


# ---------------------------------------------------------------------------
# Conversion and checks.


def _to_float(name: str, value: Any) -> float:
    """A Python float from a Python, numpy or jax scalar; ValueError otherwise."""
    if isinstance(value, (bool, int, float)):
        return float(value)
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        arr = np.asarray(jax.device_get(value))
        if arr.ndim == 0 and (np.issubdtype(arr.dtype, np.number)
                              or arr.dtype == np.bool_):
            return float(arr)
        raise ValueError(
            f"metric {name!r}: expected a numeric scalar, got an array of "
            f"shape {arr.shape} and dtype {arr.dtype} (reduce it before logging)")
    raise ValueError(
        f"metric {name!r}: expected a numeric scalar, got {type(value).__name__}")


def _json_default(value: Any) -> Any:
    """JSON encoder fallback for numpy/jax values inside sample rows."""
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        return np.asarray(jax.device_get(value)).tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def check_finite(metrics: Mapping[str, Any], step: int, stage: str) -> None:
    """Raises FloatingPointError naming the step, stage and each non-finite metric.

    Values may be Python, numpy or jax scalars or arrays; an array is
    non-finite if any element is.
    """
    bad = []
    for name, value in metrics.items():
        arr = np.asarray(jax.device_get(value))
        if np.issubdtype(arr.dtype, np.number) and not np.all(np.isfinite(arr)):
            bad.append(f"{name}={arr.tolist()}")
    if bad:
        raise FloatingPointError(
            f"non-finite metrics at {stage} step {step}: {', '.join(bad)}")


# ---------------------------------------------------------------------------
# JSONL files: torn-tail tolerant reading, atomic truncation on resume.


def _drop_torn_tail(path: str) -> None:
    """Cuts a partial last line (a write killed midway) so appends start clean."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Scan back in blocks for the last newline; keep everything up to it.
        end = size
        while end > 0:
            start = max(0, end - 4096)
            f.seek(start)
            idx = f.read(end - start).rfind(b"\n")
            if idx >= 0:
                f.truncate(start + idx + 1)
                return
            end = start
        f.truncate(0)


def _read_jsonl_lines(path: str) -> list[tuple[str, dict]]:
    """(raw line, parsed row) pairs; a torn last line is dropped, others must parse."""
    if not os.path.exists(path):
        return []
    with open(path, "r", encoding="utf-8") as f:
        lines = f.read().split("\n")
    # After a final newline split() leaves ""; anything else there is torn.
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                logging.warning("%s: dropping torn last line %d (a write was "
                                "killed)", path, i + 1)
                continue
            raise ValueError(f"{path}: line {i + 1} is not valid JSON ({e})") from e
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {i + 1} is not a JSON object")
        out.append((line, row))
    return out


def read_metrics(workdir: str, stage: str | None = None) -> list[dict]:
    """Rows of `workdir/metrics.jsonl` in file order, optionally one stage's.

    A missing file gives `[]`; a torn last line (a run killed mid-write) is
    skipped; a malformed line elsewhere raises ValueError naming the line.
    """
    path = os.path.join(workdir, METRICS_FILE)
    rows = [row for _, row in _read_jsonl_lines(path)]
    if stage is not None:
        rows = [r for r in rows if r.get("stage") == stage]
    return rows


def _truncate_jsonl_after(path: str, stage: str, step: int) -> int:
    """Atomically drops `stage`'s rows with `step > step`; returns how many."""
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    for line, row in _read_jsonl_lines(path):
        if row.get("stage") == stage and row.get("step", -math.inf) > step:
            dropped += 1
        else:
            kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))
    return dropped


def truncate_metrics_after(workdir: str, stage: str, step: int) -> int:
    """Rewrites metrics.jsonl without `stage`'s rows logged after `step`.

    Used on resume from a checkpoint at `step`: those rows will be logged
    again. Other stages' rows, and the text of kept lines, are unchanged; a
    torn last line is dropped. The rewrite is atomic. Returns the number of
    rows dropped.
    """
    return _truncate_jsonl_after(os.path.join(workdir, METRICS_FILE), stage, step)


# ---------------------------------------------------------------------------
# The writer.


class MetricsWriter:
    """Writes metrics to JSONL, TensorBoard and optionally Weights & Biases.

    Args:
      workdir: the run's directory (created if missing).
      enabled: whether this process writes; default `jax.process_index() == 0`.
        A disabled writer accepts every call and writes nothing.
      tensorboard: also write TensorBoard scalars (tensorboardX, no
        TensorFlow) under `workdir/tensorboard/<stage>/`, tags = metric names.
      wandb_config: if given, keyword arguments for `wandb.init` (project,
        name, config, id, resume, ...). Metrics go to W&B as `<stage>/<name>`
        against a per-stage step metric `<stage>/step`, since each stage
        restarts its step count.
    """

    def __init__(self, workdir: str, *, enabled: bool | None = None,
                 tensorboard: bool = True,
                 wandb_config: Mapping[str, Any] | None = None):
        self.workdir = workdir
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tensorboard = tensorboard
        self._tb_writers: dict[str, Any] = {}
        self._purge_step: dict[str, int] = {}
        self._wandb_run = None
        self._wandb_stages: set[str] = set()
        self._metrics_file: TextIO | None = None
        self._samples_file: TextIO | None = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        if wandb_config is not None:
            try:
                import wandb
            except ImportError as e:
                raise ImportError(
                    "MetricsWriter: wandb_config was given but the wandb "
                    "package is not installed (pip install wandb)") from e
            self._wandb_run = wandb.init(**dict(wandb_config))

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.workdir, METRICS_FILE)

    @property
    def samples_path(self) -> str:
        return os.path.join(self.workdir, SAMPLES_FILE)

    def resume(self, stage: str, step: int) -> None:
        """Prepares to continue `stage` from its checkpoint at `step`.

        Drops the stage's metrics and samples logged after `step` (they will
        be logged again) and makes its TensorBoard run discard events after
        `step` (tensorboardX `purge_step`). Call before the stage's first write.
        """
        if not self.enabled:
            return
        if stage in self._tb_writers:
            raise ValueError(
                f"MetricsWriter.resume({stage!r}, {step}) called after the "
                "stage's first write; call it before writing")
        self._close_files()
        dropped = truncate_metrics_after(self.workdir, stage, step)
        _truncate_jsonl_after(self.samples_path, stage, step)
        self._purge_step[stage] = step + 1
        if dropped:
            logging.info("resuming %s at step %d: dropped %d metric rows "
                         "logged after it", stage, step, dropped)

    def _open(self, path: str) -> TextIO:
        _drop_torn_tail(path)
        return open(path, "a", encoding="utf-8")

    def _close_files(self) -> None:
        for f in (self._metrics_file, self._samples_file):
            if f is not None:
                f.close()
        self._metrics_file = self._samples_file = None

    def _tb_writer(self, stage: str):
        if stage not in self._tb_writers:
            # Imported here: tensorboardX pulls in torch, a slow import.
            from tensorboardX import SummaryWriter
            self._tb_writers[stage] = SummaryWriter(
                logdir=os.path.join(self.workdir, TENSORBOARD_DIR, stage),
                purge_step=self._purge_step.get(stage),
                # Event file names hold the time in whole seconds; a relaunch
                # within the same second would otherwise overwrite the file.
                filename_suffix=f".{os.getpid()}.{time.time_ns()}")
        return self._tb_writers[stage]

    def write(self, step: int, stage: str, metrics: Mapping[str, Any]) -> None:
        """Logs one row `{"step", "stage", **metrics}`; values become floats.

        Raises ValueError naming the metric if a value is not a numeric scalar.
        """
        if not self.enabled:
            return
        step = int(step)
        values = {name: _to_float(name, v) for name, v in metrics.items()}
        for reserved in ("step", "stage"):
            if reserved in values:
                raise ValueError(
                    f"metric name {reserved!r} is reserved for the row key")
        if self._metrics_file is None:
            self._metrics_file = self._open(self.metrics_path)
        # One write call per row, then flush: a kill tears at most this line.
        self._metrics_file.write(
            json.dumps({"step": step, "stage": stage, **values}) + "\n")
        self._metrics_file.flush()
        if self._tensorboard:
            tb = self._tb_writer(stage)
            for name, v in values.items():
                tb.add_scalar(name, v, global_step=step)
            tb.flush()
        if self._wandb_run is not None:
            if stage not in self._wandb_stages:
                self._wandb_run.define_metric(f"{stage}/step")
                self._wandb_run.define_metric(f"{stage}/*",
                                              step_metric=f"{stage}/step")
                self._wandb_stages.add(stage)
            row = {f"{stage}/{name}": v for name, v in values.items()}
            self._wandb_run.log({f"{stage}/step": step, **row})

    def write_samples(self, step: int, stage: str,
                      rows: Iterable[Mapping[str, Any]]) -> None:
        """Appends one `{"step", "stage", **row}` line per row to samples.jsonl.

        Rows hold strings and numbers (query, response, score, kl, ...);
        numpy and jax values are converted with `tolist`.
        """
        if not self.enabled:
            return
        lines = []
        for i, row in enumerate(rows):
            try:
                lines.append(json.dumps({"step": int(step), "stage": stage, **row},
                                        default=_json_default) + "\n")
            except TypeError as e:
                raise ValueError(f"write_samples: row {i}: {e}") from e
        if self._samples_file is None:
            self._samples_file = self._open(self.samples_path)
        self._samples_file.write("".join(lines))
        self._samples_file.flush()

    def close(self) -> None:
        """Flushes and closes every sink. Safe to call twice."""
        self._close_files()
        for tb in self._tb_writers.values():
            tb.close()
        self._tb_writers.clear()
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Deferred fetching: metrics stay on device until the next step is dispatched.


def _scalar_to_float(x: Any) -> Any:
    arr = np.asarray(x)
    if arr.ndim == 0 and np.issubdtype(arr.dtype, np.number):
        return float(arr)
    return x


class DeferredMetrics:
    """Holds one step's device metrics and fetches them one step later.

    `push` is called right after dispatching step `t` and returns step
    `t - 1`'s metrics on host. Step `t` is already queued, so fetching
    `t - 1` does not leave the accelerator idle:

        deferred = DeferredMetrics()
        for step in range(start, total):
            state, metrics = train_step(state, batch, rng)  # async dispatch
            if (done := deferred.push(step, metrics)) is not None:
                log(*done)
        if (done := deferred.flush()) is not None:
            log(*done)

    Flush before saving a checkpoint, so every step up to the checkpoint is
    logged when a relaunch resumes from it.
    """

    def __init__(self):
        self._pending: tuple[int, Any] | None = None

    def push(self, step: int, device_metrics: Any) -> tuple[int, Any] | None:
        """Queues `step`'s metrics; returns `(prev_step, host_metrics)` or None.

        Host metrics keep the pytree structure; 0-d values become floats.
        """
        prev, self._pending = self._pending, (int(step), device_metrics)
        return None if prev is None else self._fetch(prev)

    def flush(self) -> tuple[int, Any] | None:
        """Fetches the queued step's metrics; None if nothing is queued."""
        prev, self._pending = self._pending, None
        return None if prev is None else self._fetch(prev)

    @staticmethod
    def _fetch(pending: tuple[int, Any]) -> tuple[int, Any]:
        step, device_metrics = pending
        return step, jax.tree.map(_scalar_to_float, jax.device_get(device_metrics))


# ---------------------------------------------------------------------------
# Human-readable output.


def format_duration(seconds: float | None) -> str:
    """`45s`, `1m20s`, `2h03m`; `?` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def format_value(value: float) -> str:
    """A short rendering with about 3 significant digits: `130`, `2.40`, `0.150`."""
    v = float(value)
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.2f}"
    if a >= 0.01:
        return f"{v:.3f}"
    return f"{v:.2e}"


def format_log_line(step: int, total: int, metrics: Mapping[str, Any],
                    keys: Sequence[str | tuple[str, str]], *,
                    stage: str | None = None,
                    eta_s: float | None = None) -> str:
    """One log line, e.g. `ppo step 12/50 | score 0.310 | kl 2.40 | eta 1m20s`.

    Args:
      step, total: progress through the stage.
      metrics: host values (floats, numpy or jax scalars).
      keys: which metrics, in order. A name is labelled by its last path
        component (`objective/kl` -> `kl`), a `(label, name)` pair by
        `label`. Names absent from `metrics` are skipped (e.g. the gold score
        of a task without a gold function).
      stage: printed first when given.
      eta_s: estimated seconds left, appended as `eta ...` when given.
    """
    head = f"step {step}/{total}"
    parts = [f"{stage} {head}" if stage else head]
    for key in keys:
        label, name = (key.rsplit("/", 1)[-1], key) if isinstance(key, str) else key
        if name in metrics:
            parts.append(f"{label} {format_value(_to_float(name, metrics[name]))}")
    if eta_s is not None:
        parts.append(f"eta {format_duration(eta_s)}")
    return " | ".join(parts)


def rate_and_eta(step: int, total: int, start: int, elapsed_s: float
                 ) -> tuple[float | None, float | None]:
    """(steps per second, seconds left) of a stage at `step` of `total`.

    The rate counts only this process's steps (from `start`, where a resumed
    stage began) over `elapsed_s`; both are None before any progress.
    """
    done = step - start
    if elapsed_s <= 0 or done <= 0:
        return None, None
    rate = done / elapsed_s
    return rate, (total - step) / rate

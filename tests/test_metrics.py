"""Metrics writers, readers, NaN checks, deferred fetching and progress lines."""

import glob
import json
import os
import struct
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.infra import metrics as M


def read_events(path):
    """The Event protos of one TensorBoard event file.

    Parses the TFRecord framing (u64 length, u32 crc, data, u32 crc) and the
    Event protos with tensorboardX's own proto module.
    """
    from tensorboardX.proto import event_pb2
    with open(path, "rb") as f:
        data = f.read()
    events, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
        pos += 12 + length + 4
    return events


def read_event_scalars(logdir):
    """(tag, step, value) of every scalar in a one-file TensorBoard run directory."""
    files = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
    assert len(files) == 1, files
    return [(v.tag, e.step, v.simple_value)
            for e in read_events(files[0]) for v in e.summary.value]


def test_jsonl_rows_and_flush(tmp_path):
    writer = M.MetricsWriter(str(tmp_path), tensorboard=False)
    writer.write(1, "ppo", {"objective/score": np.float32(0.5),
                            "objective/kl": jnp.asarray(2.25),
                            "ppo/episodes": 64})
    # Flushed: readable before close.
    with open(tmp_path / "metrics.jsonl") as f:
        first = json.loads(f.readline())
    assert first == {"step": 1, "stage": "ppo", "objective/score": 0.5,
                     "objective/kl": 2.25, "ppo/episodes": 64.0}
    assert all(type(v) in (int, str, float) for v in first.values())
    writer.write(2, "ppo", {"objective/score": 0.75})
    writer.write_samples(2, "ppo", [{"query": "q", "response": "r", "score": np.float32(1.5),
                                     "tokens": jnp.array([3, 4])}])
    writer.close()
    writer.close()  # idempotent
    assert [r["step"] for r in M.read_metrics(str(tmp_path), "ppo")] == [1, 2]
    assert M.read_metrics(str(tmp_path), "reward") == []
    with open(tmp_path / "samples.jsonl") as f:
        assert json.loads(f.read()) == {"step": 2, "stage": "ppo", "query": "q",
                                        "response": "r", "score": 1.5, "tokens": [3, 4]}
    with pytest.raises(ValueError, match="metric 'objective/kl'.*shape \\(2,\\)"):
        M.MetricsWriter(str(tmp_path), tensorboard=False).write(
            3, "ppo", {"objective/kl": np.ones(2)})


def test_torn_last_line_is_tolerated_and_repaired(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "stage": "ppo", "a": 1.0}\n{"step": 2, "sta')
    assert M.read_metrics(str(tmp_path)) == [{"step": 1, "stage": "ppo", "a": 1.0}]
    # A relaunch appending to the file first cuts the torn line.
    with M.MetricsWriter(str(tmp_path), tensorboard=False) as writer:
        writer.write(2, "ppo", {"a": 2.0})
    assert path.read_text() == ('{"step": 1, "stage": "ppo", "a": 1.0}\n'
                                '{"step": 2, "stage": "ppo", "a": 2.0}\n')
    # Corruption anywhere but the last line is an error naming the line.
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        M.read_metrics(str(tmp_path))
    assert M.read_metrics(str(tmp_path / "missing")) == []


def test_truncate_metrics_after(tmp_path):
    rows = [(0, "reward"), (5, "reward"), (1, "ppo"), (2, "ppo"), (3, "ppo"), (4, "ppo")]
    lines = [json.dumps({"step": s, "stage": st, "x": float(s)}) for s, st in rows]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 5, "st')
    assert M.truncate_metrics_after(str(tmp_path), "ppo", 2) == 2
    kept = [(r["step"], r["stage"]) for r in M.read_metrics(str(tmp_path))]
    # Other stages keep all rows, even with larger steps; the torn line is gone.
    assert kept == [(0, "reward"), (5, "reward"), (1, "ppo"), (2, "ppo")]
    assert (tmp_path / "metrics.jsonl").read_text() == "\n".join(lines[:4]) + "\n"
    assert not os.path.exists(tmp_path / "metrics.jsonl.tmp")


def test_resume_drops_rows_and_purges_tensorboard(tmp_path):
    with M.MetricsWriter(str(tmp_path)) as writer:
        for step in (1, 2, 3):
            writer.write(step, "ppo", {"objective/kl": float(step)})
            writer.write_samples(step, "ppo", [{"response": str(step)}])
    with M.MetricsWriter(str(tmp_path)) as writer:
        writer.resume("ppo", 1)
        writer.write(2, "ppo", {"objective/kl": 20.0})
    assert [(r["step"], r["objective/kl"]) for r in M.read_metrics(str(tmp_path))] == [
        (1, 1.0), (2, 20.0)]
    with open(tmp_path / "samples.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [1]
    # The resumed run's event file holds a session START at step 2 before its
    # scalars, so TensorBoard discards the first run's events from step 2 on.
    files = glob.glob(str(tmp_path / "tensorboard" / "ppo" / "events.*"))
    assert len(files) == 2
    resumed = [e for f in files for e in read_events(f) if e.HasField("session_log")]
    assert [(e.step, e.session_log.status) for e in resumed] == [(2, 1)]  # 1: START


def test_check_finite_names_metric():
    M.check_finite({"a": 1.0, "b": np.array([1.0, 2.0]), "c": jnp.asarray(0.0)}, 3, "ppo")
    with pytest.raises(FloatingPointError,
                       match=r"at ppo step 7: objective/kl=nan, ppo/loss/value=\[1.0, inf\]"):
        M.check_finite({"objective/score": 1.0, "objective/kl": float("nan"),
                        "ppo/loss/value": np.array([1.0, np.inf])}, 7, "ppo")


def test_disabled_writer_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    with M.MetricsWriter(str(workdir), enabled=False) as writer:
        writer.resume("ppo", 0)
        writer.write(1, "ppo", {"a": 1.0})
        writer.write_samples(1, "ppo", [{"q": "x"}])
    assert not workdir.exists()
    # Default: only process 0 writes; this test process is process 0.
    assert M.MetricsWriter(str(workdir), tensorboard=False).enabled


def test_tensorboard_events_read_back(tmp_path):
    with M.MetricsWriter(str(tmp_path)) as writer:
        writer.write(1, "ppo", {"objective/score": 0.5, "objective/kl": 2.0})
        writer.write(2, "ppo", {"objective/score": 0.25})
        writer.write(0, "reward", {"reward/loss": 1.5})
    ppo = read_event_scalars(tmp_path / "tensorboard" / "ppo")
    assert ppo == [("objective/score", 1, 0.5), ("objective/kl", 1, 2.0),
                   ("objective/score", 2, 0.25)]
    assert read_event_scalars(tmp_path / "tensorboard" / "reward") == [("reward/loss", 0, 1.5)]


def test_wandb_per_stage_step_and_missing_package(tmp_path, monkeypatch):
    calls = []

    class FakeRun:
        def define_metric(self, name, **kw):
            calls.append(("define", name, kw))

        def log(self, row):
            calls.append(("log", row))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw)) or FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with M.MetricsWriter(str(tmp_path), tensorboard=False,
                         wandb_config={"project": "rlhf"}) as writer:
        writer.write(3, "ppo", {"objective/kl": 1.0})
        writer.write(4, "ppo", {"objective/kl": 2.0})
    assert calls == [
        ("init", {"project": "rlhf"}),
        ("define", "ppo/step", {}),
        ("define", "ppo/*", {"step_metric": "ppo/step"}),
        ("log", {"ppo/step": 3, "ppo/objective/kl": 1.0}),
        ("log", {"ppo/step": 4, "ppo/objective/kl": 2.0}),
        ("finish",),
    ]
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    with pytest.raises(ImportError, match="wandb package is not installed"):
        M.MetricsWriter(str(tmp_path), wandb_config={})


def test_format_log_line():
    m = {"objective/score": 0.31, "objective/gold_score": np.float32(0.12),
         "objective/kl": 2.4, "objective/kl_coef": 0.15, "elapsed/fps": 130.2}
    keys = [("score", "objective/score"), ("gold", "objective/gold_score"),
            "objective/kl", "objective/kl_coef", ("fps", "elapsed/fps"),
            ("missing", "objective/entropy")]
    assert M.format_log_line(12, 50, m, keys, stage="ppo", eta_s=80) == (
        "ppo step 12/50 | score 0.310 | gold 0.120 | kl 2.40 | kl_coef 0.150 "
        "| fps 130 | eta 1m20s")
    assert M.format_log_line(1, 2, {"reward/loss": 1e-5}, ["reward/loss"]) == (
        "step 1/2 | loss 1.00e-05")
    assert [M.format_duration(s) for s in (0, 45, 80, 7380, None)] == [
        "0s", "45s", "1m20s", "2h03m", "?"]


def test_rate_and_eta():
    # A stage resumed at step 2 reaches step 6 of 10 in 2 s: 2 steps/s, 4 left -> 2 s.
    assert M.rate_and_eta(6, 10, 2, 2.0) == (pytest.approx(2.0), pytest.approx(2.0))
    assert M.rate_and_eta(7, 10, 2, 3.0) == (pytest.approx(5 / 3), pytest.approx(1.8))
    assert M.rate_and_eta(2, 10, 2, 3.0) == (None, None)  # nothing done yet this process
    assert M.rate_and_eta(3, 10, 2, 0.0) == (None, None)


def test_deferred_metrics_ordering():
    deferred = M.DeferredMetrics()
    assert deferred.push(1, {"loss": jnp.asarray(1.5)}) is None
    step, host = deferred.push(2, {"loss": jnp.asarray(2.5)})
    assert step == 1 and host == {"loss": 1.5} and type(host["loss"]) is float
    step, host = deferred.push(3, {"loss": jnp.asarray(3.5), "v": jnp.ones(2)})
    assert (step, host) == (2, {"loss": 2.5})
    step, host = deferred.flush()
    assert step == 3 and host["loss"] == 3.5
    assert isinstance(host["v"], np.ndarray) and host["v"].tolist() == [1.0, 1.0]
    assert deferred.flush() is None

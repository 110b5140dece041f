"""Online label collection during PPO (Ziegler 2.3) on the offline default's runlocal config,
with a Qwen2-architecture model (`arch=qwen2`; the study's online runs use GPT-2).

`configs/mock_sentiment.py:runlocal,online=...` shrunk further: 32 offline
labels, 4 PPO updates of 16 episodes, one collect-retrain round of 16 queries
x 4 responses before update 3. The labels and reward stages run once (a
module fixture); each test copies that workdir and runs the PPO stage in this
process:

* the mock labeller: the round's labels, the retrained RM, the metrics, and
  that PPO's rollouts use the offline RM before the round and the new one
  after;
* SIGTERM during the round's RM retrain, then a relaunch: the same metrics
  and RM as the uninterrupted run;
* people (the label server's queue): the loop waits and reports what is
  outstanding, a SIGTERM while waiting stops it cleanly, and a relaunch picks
  up the answers labellers gave over HTTP meanwhile.
"""

import json
import os
import re
import shutil
import signal
import threading
import time

import flax.serialization
import jax
import numpy as np
import pytest

from rlhf_jax import config_check, pipeline
from rlhf_jax.infra.checkpoint import PreemptionHandler
from rlhf_jax.infra.metrics import MetricsWriter
from rlhf_jax.labelling.label_server import LabelDB
from rlhf_jax.models import loading
from rlhf_jax.stages import online as online_lib, reward_train as reward_train_lib, train_ppo
from tests.label_server_fixtures import Client, serve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {
    "pretrain.num_docs": 600,
    "labels.num_train": 32,
    "labels.num_val": 16,
    "labels.batch_size": 32,
    "reward.batch_size": 16,
    "reward.normalize_samples": 16,
    "reward.rollout_batch_size": 16,
    "reward.log_every": 1,
    "reward.checkpoint_every": 1,
    "ppo.batch_size": 16,
    "ppo.total_episodes": 64,  # 4 updates
    "ppo.log_every": 1,
    "ppo.checkpoint_every": 4,
    "labels.online.every": 2,  # round 1, before update 3
    "labels.online.num_queries": 16,
    "labels.online.poll_seconds": 0.1,
    "log.tensorboard": False,
}
ROUND = "online/round_0001"
TIMING = re.compile(r"(^elapsed/|/steps_per_s$|seconds)")


def make_config(switches: str, **extra):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "mock_sentiment_config", os.path.join(ROOT, "configs", "mock_sentiment.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config(switches)
    for dotted, value in {**OVERRIDES, **extra}.items():
        *groups, name = dotted.split(".")
        node = cfg
        for g in groups:
            node = node[g]
        node[name] = value
    cfg.lock()
    return cfg


def rows(workdir, stages=("ppo", "online")):
    out = []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if row["stage"] in stages:
                out.append({k: v for k, v in row.items() if not TIMING.search(k)})
    return out


def rm_params(path):
    with open(os.path.join(path, "params.msgpack"), "rb") as f:
        return flax.serialization.msgpack_restore(f.read())


def sigterm_when(condition, timeout=600):
    """A thread that sends this process SIGTERM once `condition()` holds (and a
    handler is installed, so the signal cannot kill the test process)."""

    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition() and signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.01)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A workdir with the labels and reward stages done."""
    workdir = str(tmp_path_factory.mktemp("online_base"))
    cfg = make_config("runlocal,arch=qwen2", stages="labels,reward")
    pipeline.run(cfg, workdir)
    return workdir


def copy_of(base, tmp_path, name):
    workdir = str(tmp_path / name)
    shutil.copytree(base, workdir)
    return workdir


def recording_retrain_starts(patch):
    """Records the `rm_params` each online retrain starts from; `patch(obj, name, value)`."""
    starts = []
    original = reward_train_lib.train_reward_model

    def train_reward_model(cfg, **kwargs):
        starts.append(jax.device_get(kwargs["rm_params"]))
        return original(cfg, **kwargs)

    patch(reward_train_lib, "train_reward_model", train_reward_model)
    return starts


@pytest.fixture(scope="module")
def mock_run(base, tmp_path_factory):
    """The uninterrupted mock run; records the RM bias each PPO rollout used and
    the params the round's retrain started from."""
    workdir = copy_of(base, tmp_path_factory.mktemp("online_mock"), "w")
    used = []
    original = train_ppo.PPOTrainer.rollout

    def recording(self, state, ref_params, rm_params, *args, **kwargs):
        used.append(float(np.asarray(rm_params["reward_bias"]).reshape(-1)[0]))
        return original(self, state, ref_params, rm_params, *args, **kwargs)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(train_ppo.PPOTrainer, "rollout", recording)
        starts = recording_retrain_starts(m.setattr)
        results = pipeline.run(make_config("runlocal,arch=qwen2,online=mock", stages="labels,reward,ppo"),
                               workdir)
    return workdir, results, used, starts


def test_mock_cycle_labels_retrains_and_ppo_uses_the_new_rm(mock_run, base):
    workdir, results, used, starts = mock_run
    assert results["ppo"]["updates"] == 4
    # The round's labels: 16 fresh queries x 4 policy samples, the gold picks the best.
    with open(os.path.join(workdir, "labels", "online_0001.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 16
    for r in records:
        assert len(r["responses"]) == 4 and r["labeler"] == "mock"
        assert r["gold"][r["best"]] == max(r["gold"])
    z = np.load(os.path.join(workdir, ROUND, "request.npz"))
    assert z["responses"].shape[:2] == (16, 4)
    assert [r["query"] for r in records] == [
        q[m == 1].tolist() for q, m in zip(z["query"], z["query_mask"])]
    # The RM retrained on the grown set (32 + 16 labels, 3 steps), logged at update 2.
    [online] = [r for r in rows(workdir) if r["stage"] == "online"]
    assert online["step"] == 2 and online["online/round"] == 1
    assert (online["online/labels_new"], online["online/labels_total"],
            online["online/labels_used"]) == (16, 48, 48)
    assert online["online/best_is_gold_max"] == 1.0
    assert 0.0 <= online["online/reward/val_accuracy"] <= 1.0
    round_rows = rows(os.path.join(workdir, ROUND), stages=("reward",))
    assert max(r["step"] for r in round_rows) == 3
    with open(os.path.join(workdir, ROUND, "done.json")) as f:
        assert json.load(f)["update"] == 2
    offline = rm_params(os.path.join(workdir, "models", "reward"))
    new = rm_params(os.path.join(workdir, ROUND, "reward"))
    assert not np.allclose(offline["reward_head"]["kernel"], new["reward_head"]["kernel"])
    # retrain="continue": the retrain started from the offline RM.
    [start] = starts
    for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(offline), strict=True):
        np.testing.assert_array_equal(a, b)
    # PPO rollouts 1-2 use the offline RM, 3-4 the retrained one.
    assert used == pytest.approx([float(offline["reward_bias"])] * 2
                                 + [float(new["reward_bias"])] * 2)
    assert float(offline["reward_bias"]) != float(new["reward_bias"])
    ppo_steps = [r["step"] for r in rows(workdir) if r["stage"] == "ppo"]
    assert ppo_steps == [1, 2, 3, 4]


def test_sigterm_during_the_retrain_resumes_to_the_same_run(mock_run, base, tmp_path, capsys,
                                                             monkeypatch):
    workdir = copy_of(base, tmp_path, "w")
    cfg = make_config("runlocal,arch=qwen2,online=mock", stages="labels,reward,ppo")

    class SigtermAfterFirstStep(MetricsWriter):
        """The round's RM writer: SIGTERM as the retrain logs its first step."""

        def write(self, step, stage, metrics):
            super().write(step, stage, metrics)
            if stage == "reward" and step == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as m:
        m.setattr(online_lib, "MetricsWriter", SigtermAfterFirstStep)
        with pytest.raises(pipeline.Preempted, match="ppo"):
            pipeline.run(cfg, workdir)
    assert not os.path.exists(os.path.join(workdir, ROUND, "done.json"))  # stopped mid-round
    assert os.path.exists(os.path.join(workdir, "labels", "online_0001.jsonl"))
    assert "reward: stopping at step" in capsys.readouterr().out
    pipeline.run(cfg, workdir)
    out = capsys.readouterr().out
    assert "reward: resuming at step" in out  # the retrain continued, not restarted
    reference = mock_run[0]
    assert rows(workdir) == rows(reference)
    assert rows(os.path.join(workdir, ROUND), ("reward",)) == rows(
        os.path.join(reference, ROUND), ("reward",))
    got, want = (rm_params(os.path.join(w, ROUND, "reward")) for w in (workdir, reference))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)


def test_human_labels_wait_stop_and_resume_with_answers_given_meanwhile(base, tmp_path, capsys,
                                                                      monkeypatch):
    workdir = copy_of(base, tmp_path, "w")
    waiting = threading.Event()  # set when the loop reports it waits for people

    def log(text):
        print(text, flush=True)
        if "waiting for human labels" in text:
            waiting.set()

    monkeypatch.setattr(online_lib, "_log", log)
    db_path = str(tmp_path / "labels.sqlite")
    cfg = make_config("runlocal,arch=qwen2,online=human", stages="labels,reward,ppo",
                      **{"labels.online.db": db_path, "labels.online.retrain": "reinit"})
    db = LabelDB(db_path)
    sigterm_when(lambda: db.progress()["total"] == 16)
    with pytest.raises(pipeline.Preempted, match="ppo"):
        pipeline.run(cfg, workdir)
    out = capsys.readouterr().out
    assert "labels | waiting for human labels: 16 of 16 outstanding" in out
    assert "relaunch the same command to resume" in out
    assert db.progress() == {"total": 16, "open": 16, "answered": 0, "retired": 0}
    assert {item.batch.split(":")[0] for item in db.items()} == {"w/round_0001"}
    assert not os.path.exists(os.path.join(workdir, "labels", "online_0001.jsonl"))
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "ppo", "2"))

    # People label over HTTP, partly before the relaunch and partly while it waits.
    given = {}

    def label(c, name, count):
        for _ in range(count):
            item = c.get(f"/api/next?labeler={name}")[1]["item"]
            if item["id"] == 5:  # everyone skips item 5: retired after max_skips=3
                for who in ("ann", "bob", "cy"):
                    assert c.post("/api/skip", {"item_id": 5, "labeler": who})[0] == 200
                continue
            choice = item["id"] % 4
            assert c.post("/api/answer", {"item_id": item["id"], "labeler": name,
                                          "choice": choice})[0] == 201
            given[item["id"]] = (name, choice)

    # retrain="reinit" (Ziegler): the retrain starts from a fresh head.
    fresh = []
    original_init = loading.init_reward_model

    def init_reward_model(*args):
        fresh.append(original_init(*args))
        return fresh[-1]

    monkeypatch.setattr(loading, "init_reward_model", init_reward_model)
    starts = recording_retrain_starts(monkeypatch.setattr)
    with serve(db) as url:
        label(Client(url), "ann", 6)
        waiting.clear()
        late = threading.Thread(target=lambda: (waiting.wait(600), label(Client(url), "bob", 10)))
        late.start()
        results = pipeline.run(cfg, workdir)
        late.join()
    out = capsys.readouterr().out
    assert results["ppo"]["updates"] == 4
    assert re.search(r"waiting for human labels: 10 of 16 outstanding \(5 answered, "
                     r"1 skipped out\)", out)
    assert len(given) == 15 and db.progress()["retired"] == 1
    # The round's labels are the people's answers, in the request's order.
    with open(os.path.join(workdir, "labels", "online_0001.jsonl")) as f:
        records = [json.loads(line) for line in f]
    want = [given[item_id] for item_id in sorted(given)]
    assert [(r["labeler"], r["best"]) for r in records] == want
    assert all("gold" not in r for r in records)
    [online] = [r for r in rows(workdir) if r["stage"] == "online"]
    # 32 + 15 labels; the 15 oldest beyond the last full batch of 16 sit out.
    assert (online["online/labels_new"], online["online/labels_total"],
            online["online/labels_used"]) == (15, 47, 32)
    assert [r["step"] for r in rows(workdir) if r["stage"] == "ppo"] == [1, 2, 3, 4]
    [(_, fresh_params)], [start] = fresh, starts
    for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(jax.device_get(fresh_params)),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    offline = rm_params(os.path.join(workdir, "models", "reward"))
    assert not np.array_equal(start["reward_head"]["kernel"], offline["reward_head"]["kernel"])


def test_nested_preemption_handlers_pass_the_signal_out():
    # The round's RM retrain runs its own handler inside PPO's: a SIGTERM it
    # catches must stop PPO too, even if the retrain has no step left to stop at.
    with PreemptionHandler() as outer:
        with PreemptionHandler() as inner:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
            assert inner.should_stop() and not outer.should_stop()
        assert outer.should_stop() and outer.received_signal == signal.SIGTERM
    with PreemptionHandler() as outer:
        with PreemptionHandler():
            pass
        assert not outer.should_stop()


@pytest.mark.parametrize("overrides, message", [
    ({"labels.online.every": 4}, "labels.online.every=4: no collection within the 4 PPO updates"),
    ({"labels.online.k": 2}, "labels.online.k=2 but labels.type='best_of_4' has K=4"),
    ({"labels.online.labeler": "human"}, "labels.online.labeler='human' needs labels.online.db"),
    ({"labels.online.labeler": "human", "labels.online.db": "/nonexistent/dir/l.sqlite"},
     "directory /nonexistent/dir does not exist"),
    ({"labels.online.retrain": "scratch"}, "labels.online.retrain='scratch'"),
    ({"labels.online.num_queries": 0}, "labels.online.num_queries=0 must be an int >= 1"),
    ({"ppo.reward_source": "gold"}, "labels.online.enabled needs ppo.reward_source='rm'"),
    ({"stages": "labels,ppo"}, "needs the reward and ppo stages"),
])
def test_impossible_online_configs_fail_up_front(overrides, message):
    cfg = make_config("runlocal,online=mock", **overrides)
    with pytest.raises(ValueError, match=re.escape(message)):
        config_check.resolve(cfg, 4)


def test_online_switch_and_resolved_rounds():
    cfg = make_config("runlocal,online=mock")
    assert cfg.labels.online.enabled and cfg.labels.online.labeler == "mock"
    assert config_check.resolve(cfg, 4)["online_rounds"] == 1
    assert not make_config("runlocal").labels.online.enabled

"""The whole offline pipeline: artifacts, no-op relaunch, exact resume after kill -9 and SIGTERM.

Every run is the real offline default (`configs/mock_sentiment.py:runlocal`)
shrunk further with `--config.*` overrides, launched as
`python launch.py ...` on 4 simulated CPU devices. The key property (DESIGN
"Checkpoints"): a run killed at any moment and relaunched with the same
command ends with the same metrics as one never interrupted. Two workdirs are
each interrupted twice, in the reward stage and in PPO (kill -9, SIGTERM, and
a torn checkpoint), at points chosen from the run's own output (log lines and
committed checkpoint directories); a last launch of the same command finishes
them, and every metric row and eval.json must equal an uninterrupted run's.

The launches share a persistent XLA compilation cache (the test session's, see
tests/conftest.py) with no minimum compile time: only the first run compiles,
the rest load the same executables.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/mock_sentiment.py:runlocal"

# Shrinks of mock_sentiment:runlocal: a small corpus, 8 reward steps and 6 PPO
# updates, each logged and checkpointed so a kill always finds a step to resume.
OVERRIDES = {
    "pretrain.num_docs": 600,
    "labels.num_val": 16,
    "reward.log_every": 1,
    "reward.checkpoint_every": 1,
    "ppo.log_every": 1,
    "ppo.checkpoint_every": 1,
    "eval.num_queries": 32,
    "eval.best_of_n": (1, 2),
}
# runlocal: labels.num_train / reward.batch_size; ppo.total_episodes / ppo.batch_size.
REWARD_STEPS, PPO_UPDATES = 128 // 16, 192 // 32

STAGES = ("pretrain", "labels", "reward", "ppo", "eval", "figures")
PPO_METRICS = ("objective/score", "objective/kl", "objective/kl_coef", "objective/entropy",
               "objective/score_total", "ppo/loss/policy", "ppo/loss/value",
               "ppo/policy/clipfrac", "ppo/policy/approxkl", "ppo/policy/entropy",
               "ppo/val/clipfrac", "ppo/val/var_explained", "ppo/returns/mean", "elapsed/fps",
               "objective/gold_score")
REWARD_METRICS = ("reward/loss", "reward/accuracy", "reward/val_accuracy")
# Wall-clock measurements differ between any two runs.
TIMING = re.compile(r"(^elapsed/|/steps_per_s$|seconds)")
RUN_TIMEOUT_S = 900  # a full run compiling from a cold cache on a busy 2-core machine
STEP_RE = r"^{stage} step {step}/{total} \|"


def flag(value) -> str:
    if isinstance(value, tuple):
        return "(" + ",".join(str(v) for v in value) + ")"
    return str(value)


def shrunk_config():
    """The config the launches run, built in-process from the same file and overrides."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "mock_sentiment_config", os.path.join(ROOT, "configs", "mock_sentiment.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config("runlocal")
    for dotted, value in OVERRIDES.items():
        group, name = dotted.split(".")
        cfg[group][name] = value
    cfg.lock()
    return cfg



class Launch:
    """`python launch.py` as a subprocess, its merged output read by a thread."""

    def __init__(self, workdir, cache_dir):
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
               "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
               "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", "PYTHONUNBUFFERED": "1"}
        args = [sys.executable, os.path.join(ROOT, "launch.py"), f"--config={CONFIG}",
                *(f"--config.{k}={flag(v)}" for k, v in OVERRIDES.items()),
                f"--workdir={workdir}"]
        self.workdir = str(workdir)
        self.lines: list[str] = []
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_until(self, condition, what: str, timeout=RUN_TIMEOUT_S):
        """Polls `condition()` every 10 ms; fails if the run ends or time runs out first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.proc.poll() is not None:
                self._reader.join(5)
                if condition():
                    return
                pytest.fail(f"run ended (code {self.proc.returncode}) before {what}:\n"
                            + self.output[-3000:])
            time.sleep(0.01)
        self.kill()
        pytest.fail(f"timed out waiting for {what}:\n" + self.output[-3000:])

    def saw(self, pattern: str) -> bool:
        return any(re.search(pattern, line) for line in list(self.lines))

    def send(self, sig) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._reader.join(5)

    def finish(self, timeout=RUN_TIMEOUT_S) -> int:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("run timed out:\n" + self.output[-3000:])
        self._reader.join(10)
        return self.proc.returncode


def committed_steps(directory) -> list[int]:
    """Checkpoint steps Orbax has committed (renamed from their tmp directory)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def merged_rows(workdir) -> dict:
    """metrics.jsonl as {(stage, step): merged row}, wall-clock values dropped.

    A stage may log several rows at one step (train and held-out metrics); a
    resumed stage re-logs the rows after its checkpoint (de-duplicated by
    `MetricsWriter.resume`): the last value of a metric wins.
    """
    rows: dict = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            key = (row["stage"], row["step"])
            rows.setdefault(key, {}).update(
                {k: v for k, v in row.items() if not TIMING.search(k)})
    return rows


def assert_same_results(workdir, reference):
    """Every metric row and eval.json equal the reference's (float tolerance 1e-5)."""
    got, want = merged_rows(workdir), merged_rows(reference)
    assert sorted(got) == sorted(want)
    for key in want:
        assert sorted(got[key]) == sorted(want[key]), key
        for name, value in want[key].items():
            if isinstance(value, float):
                np.testing.assert_allclose(got[key][name], value, rtol=0, atol=1e-5,
                                           err_msg=f"{key} {name}")
            else:
                assert got[key][name] == value, (key, name)
    with open(os.path.join(workdir, "eval.json")) as f:
        got_eval = json.load(f)
    with open(os.path.join(reference, "eval.json")) as f:
        want_eval = json.load(f)
    assert sorted(got_eval) == sorted(want_eval)
    for policy, results in want_eval.items():
        assert sorted(got_eval[policy]) == sorted(results)
        for name, value in results.items():
            np.testing.assert_allclose(got_eval[policy][name], value, rtol=0, atol=1e-5,
                                       err_msg=f"eval {policy} {name}")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """The session's persistent compilation cache (tests/conftest.py), else this module's."""
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
    """An uninterrupted run (the first launch: it also fills the compilation cache)."""
    workdir = tmp_path_factory.mktemp("pipeline") / "reference"
    run = Launch(workdir, cache_dir)
    code = run.finish()
    assert code == 0, run.output[-3000:]
    return str(workdir), run.output


# --------------------------------------------------------------------------
# End to end.


def test_end_to_end_artifacts(reference):
    workdir, output = reference
    assert "done in" in output
    for stage in STAGES:
        assert os.path.exists(os.path.join(workdir, "stages", f"{stage}.json")), stage

    rows = merged_rows(workdir)
    stages_logged = {stage for stage, _ in rows}
    assert {"pretrain", "reward", "ppo", "eval"} <= stages_logged
    pretrain_names = set().union(*(r for (s, _), r in rows.items() if s == "pretrain"))
    assert {"pretrain/loss", "pretrain/val_loss"} <= pretrain_names
    reward_names = set().union(*(r for (s, _), r in rows.items() if s == "reward"))
    assert set(REWARD_METRICS) <= reward_names
    assert sorted(step for s, step in rows if s == "reward") == list(range(REWARD_STEPS + 1))
    ppo_steps = sorted(step for s, step in rows if s == "ppo")
    assert ppo_steps == list(range(1, PPO_UPDATES + 1))
    for step in ppo_steps:
        for name in PPO_METRICS:
            if not TIMING.search(name):
                assert np.isfinite(rows[("ppo", step)][name]), (step, name)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        raw_ppo = [json.loads(line) for line in f if '"stage": "ppo"' in line]
    assert set(PPO_METRICS) <= set(raw_ppo[-1])  # elapsed/fps included in the file
    # The first rollout is scored before any update: KL to the reference is 0.
    assert rows[("ppo", 1)]["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    assert rows[("ppo", 1)]["objective/kl_coef"] == pytest.approx(0.15)

    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    assert config["name"] == "mock_sentiment"
    assert config["pretrain"]["num_docs"] == 600 and config["eval"]["best_of_n"] == [1, 2]
    with open(os.path.join(workdir, "eval.json")) as f:
        results = json.load(f)
    assert sorted(results) == ["best_of_1", "best_of_2", "initial", "ppo"]
    assert results["initial"]["kl"] == pytest.approx(0.0, abs=1e-6)
    # best-of-N's analytic KL: log N - (N - 1) / N.
    assert results["best_of_2"]["kl"] == pytest.approx(np.log(2) - 0.5)
    for name in ("initial", "ppo"):
        assert set(results[name]) == {"score", "gold_score", "kl"}
    with open(os.path.join(workdir, "samples.jsonl")) as f:
        samples = [json.loads(line) for line in f]
    assert {s["stage"] for s in samples} == {"ppo", "eval"}
    assert all({"query", "response", "score", "kl"} <= set(s) for s in samples)
    figures = os.listdir(os.path.join(workdir, "figures"))
    assert any(f.endswith(".png") for f in figures), figures
    tensorboard = os.path.join(workdir, "tensorboard")
    assert any(f.startswith("events.out.tfevents")
               for _, _, files in os.walk(tensorboard) for f in files)


def test_policy_loads_in_transformers_and_rlhf_jax(reference):
    import jax.numpy as jnp
    import torch
    import transformers

    from rlhf_jax.models import load_pretrained

    path = os.path.join(reference[0], "models", "policy")
    torch_model = transformers.GPT2LMHeadModel.from_pretrained(path).eval()
    model, params = load_pretrained(path)
    ids_1xT = np.array([[5, 17, 301, 42, 13, 7]], np.int32)
    with torch.no_grad():
        want_1xTxV = torch_model(torch.from_numpy(ids_1xT).long()).logits.numpy()
    got_1xTxV = model.apply({"params": params}, jnp.asarray(ids_1xT),
                            attention_mask=jnp.ones_like(ids_1xT)).logits
    assert got_1xTxV.shape == want_1xTxV.shape == (1, 6, torch_model.config.vocab_size)
    np.testing.assert_allclose(np.asarray(got_1xTxV), want_1xTxV, atol=1e-4, rtol=1e-4)


def test_relaunch_of_finished_run_does_no_new_work(reference):
    """In-process `pipeline.run` on the finished workdir: every stage skips."""
    from rlhf_jax import pipeline

    workdir = reference[0]

    def snapshot():
        out = {}
        for name in ("metrics.jsonl", "samples.jsonl", "eval.json",
                     *(os.path.join("stages", f"{s}.json") for s in STAGES)):
            with open(os.path.join(workdir, name), "rb") as f:
                out[name] = f.read()
        out["checkpoints"] = sorted(os.walk(os.path.join(workdir, "checkpoints")))
        return out

    with open(os.path.join(workdir, "config.json")) as f:
        launched_config = json.load(f)
    before = snapshot()
    results = pipeline.run(shrunk_config(), workdir)
    assert snapshot() == before  # metrics.jsonl byte for byte, no checkpoint written
    assert all(results[s]["seconds"] == json.loads(before[f"stages/{s}.json"])["seconds"]
               for s in STAGES)
    # The in-process config is the launched one: the flags and the overrides agree.
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f) == launched_config


# --------------------------------------------------------------------------
# Kill and resume. Two workdirs, each interrupted twice (reward, then PPO) and
# finished by a third launch of the same command.


def interrupt(workdir, cache_dir, stage: str, sig, *, min_checkpoints: int = 1) -> Launch:
    """Launches, waits until `stage` has logged step 2 and committed
    `min_checkpoints` checkpoints, then sends `sig`; returns the ended run."""
    total = {"reward": REWARD_STEPS, "ppo": PPO_UPDATES}[stage]
    ckpts = os.path.join(workdir, "checkpoints", stage)
    run = Launch(workdir, cache_dir)
    # Step k's line is printed just before its checkpoint save: the signal
    # lands mid-save or in the next step.
    run.wait_until(lambda: run.saw(STEP_RE.format(stage=stage, step=2, total=total))
                   and len(committed_steps(ckpts)) >= min_checkpoints,
                   f"{stage} step 2 and {min_checkpoints} {stage} checkpoint(s)")
    if sig == signal.SIGKILL:
        run.kill()
        assert run.proc.returncode == -signal.SIGKILL
    else:
        run.send(sig)
        assert run.finish() == 143, run.output[-3000:]
        assert f"preempted during {stage}" in run.output
        # It saved the step it stopped at before exiting.
        steps = committed_steps(ckpts)
        assert steps and 2 <= steps[-1] < total, steps
    # Interrupted inside the stage: no marker, so a relaunch resumes it.
    assert not os.path.exists(os.path.join(workdir, "stages", f"{stage}.json"))
    return run


def test_kill9_in_reward_then_sigterm_in_ppo_resumes_exactly(tmp_path, cache_dir, reference):
    workdir = str(tmp_path / "run")
    interrupt(workdir, cache_dir, "reward", signal.SIGKILL)
    assert os.path.exists(os.path.join(workdir, "stages", "labels.json"))
    second = interrupt(workdir, cache_dir, "ppo", signal.SIGTERM)
    assert "[pretrain] done earlier; skipping" in second.output
    assert re.search(rf"reward: resuming at step \d+/{REWARD_STEPS}", second.output)
    last = Launch(workdir, cache_dir)
    assert last.finish() == 0, last.output[-3000:]
    assert "[reward] done earlier; skipping" in last.output
    assert_same_results(workdir, reference[0])


def test_sigterm_in_reward_then_kill9_in_ppo_and_torn_checkpoint_resume_exactly(
        tmp_path, cache_dir, reference):
    workdir = str(tmp_path / "run")
    interrupt(workdir, cache_dir, "reward", signal.SIGTERM)
    # Two PPO checkpoints before the kill, so the torn latest one has a predecessor.
    second = interrupt(workdir, cache_dir, "ppo", signal.SIGKILL, min_checkpoints=2)
    assert re.search(rf"reward: resuming at step \d+/{REWARD_STEPS}", second.output)
    ckpts = os.path.join(workdir, "checkpoints", "ppo")
    latest = committed_steps(ckpts)[-1]
    os.remove(os.path.join(ckpts, str(latest), "state", "_METADATA"))

    last = Launch(workdir, cache_dir)
    assert last.finish() == 0, last.output[-3000:]
    assert re.search(rf"step {latest} failed to restore, trying the previous step",
                     last.output), last.output[-3000:]
    # The torn step was moved aside, and the run redid it from the previous one.
    assert any(d.startswith(f"{latest}.corrupt-") for d in os.listdir(ckpts))
    assert_same_results(workdir, reference[0])

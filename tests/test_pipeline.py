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

    def __init__(self, workdir, cache_dir, extra_args=()):
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
               "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
               "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", "PYTHONUNBUFFERED": "1"}
        args = [sys.executable, os.path.join(ROOT, "launch.py"), f"--config={CONFIG}",
                *(f"--config.{k}={flag(v)}" for k, v in OVERRIDES.items()),
                f"--workdir={workdir}", *extra_args]
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
        self._reader.join(60)
        if self._reader.is_alive():  # a child still holds the pipe: say so, lines may be missing
            self.lines.append("[test: output reader still open 60 s after the run ended]")
        return self.proc.returncode

    def errors_and_context(self) -> str:
        """The output without the asyncio 'Event loop is closed' tracebacks that
        Orbax's abandoned writes print at exit, which can fill a whole tail."""
        noise = ("asyncio/base_events.py", "self._check_closed()", "Event loop is closed",
                 "Traceback (most recent call last):")
        return "\n".join(x for x in self.lines if not any(n in x for n in noise))[-4000:]


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


def raw_rows(workdir, name) -> list[dict]:
    """The rows of `name` (metrics.jsonl, samples.jsonl) in file order, wall-clock values dropped."""
    with open(os.path.join(workdir, name)) as f:
        return [{k: v for k, v in json.loads(line).items() if not TIMING.search(k)}
                for line in f if line.strip()]


def assert_same_results(workdir, reference):
    """metrics.jsonl and samples.jsonl read as the reference's, row for row (none twice),
    and eval.json equals it (float tolerance 1e-5)."""
    for name in ("metrics.jsonl", "samples.jsonl"):
        got_rows, want_rows = raw_rows(workdir, name), raw_rows(reference, name)
        assert [(r["stage"], r["step"], sorted(r)) for r in got_rows] == [
            (r["stage"], r["step"], sorted(r)) for r in want_rows], name
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
        assert set(results[name]) == {"score", "gold_score", "kl", "score_se", "gold_score_se",
                                      "kl_se"}
    with open(os.path.join(workdir, "samples.jsonl")) as f:
        samples = [json.loads(line) for line in f]
    assert {s["stage"] for s in samples} == {"ppo", "eval"}
    # One key for the gold score in PPO and eval rows alike.
    assert all({"query", "response", "score", "kl", "gold_score"} <= set(s) and "gold" not in s
               for s in samples)
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


# --------------------------------------------------------------------------
# Relaunching with another config; bad input; a full or read-only disk.


def copy_run(reference_dir, tmp_path, name="run") -> str:
    import shutil

    workdir = str(tmp_path / name)
    shutil.copytree(reference_dir, workdir)
    return workdir


def changed(**fields):
    """The shrunk config with `group.name=value` fields changed (`ppo__lr=2e-4`)."""
    cfg = shrunk_config()
    with cfg.unlocked():
        for dotted, value in fields.items():
            group, name = dotted.split("__")
            cfg[group][name] = value
    return cfg


def test_relaunch_with_another_config_fails_up_front_naming_the_fields(
        reference, tmp_path, cache_dir, capsys):
    from rlhf_jax import pipeline

    workdir = copy_run(reference[0], tmp_path)
    with open(os.path.join(workdir, "config.json")) as f:
        config_text = f.read()
    run = Launch(workdir, cache_dir, ["--config.ppo.lr=0.0002"])
    assert run.finish() == 2
    [line] = [x for x in run.lines if x.startswith("error:")]
    assert "ppo.lr=0.0001 now 0.0002 (ppo)" in line and "--allow_config_change" in line, line
    assert "[pretrain]" not in run.output  # before any work
    # Another seed, or the full-size config: every started stage is named.
    with pytest.raises(ValueError, match=r"seed=0 now 1 \(pretrain, labels, reward, ppo, eval\)"):
        pipeline.run(_with(shrunk_config(), seed=1), workdir)
    full = _full_config()
    with pytest.raises(ValueError, match=r"model\.n_embd=32 now \d+ \(pretrain, labels"):
        pipeline.run(full, workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        assert f.read() == config_text  # never overwritten by a refused launch
    # An interrupted PPO stage refuses a new learning rate as well.
    for stage in ("ppo", "eval", "figures"):
        os.remove(os.path.join(workdir, "stages", f"{stage}.json"))
    with pytest.raises(ValueError, match=r"ppo\.lr=0\.0001 now 0\.005 \(ppo\)"):
        pipeline.run(changed(ppo__lr=5e-3), workdir)


def _with(cfg, **top):
    with cfg.unlocked():
        for k, v in top.items():
            cfg[k] = v
    return cfg


def _full_config():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "mock_sentiment_full", os.path.join(ROOT, "configs", "mock_sentiment.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(None)


def test_allowed_and_log_only_config_changes_keep_the_previous_config(reference, tmp_path,
                                                                      capsys):
    from rlhf_jax import pipeline

    workdir = copy_run(reference[0], tmp_path)
    with open(os.path.join(workdir, "config.json")) as f:
        first = json.load(f)
    pipeline.run(changed(reward__log_every=3), workdir)  # log-only: no conflict
    out = capsys.readouterr().out
    assert "config.json: updated (reward.log_every); the previous one is kept as config.1.json" \
        in out
    with open(os.path.join(workdir, "config.1.json")) as f:
        assert json.load(f) == first
    pipeline.run(changed(ppo__lr=2e-4), workdir, allow_config_change=True)
    out = capsys.readouterr().out
    assert "warning: continuing" in out and "ppo.lr=0.0001 now 0.0002 (ppo)" in out
    with open(os.path.join(workdir, "config_changes.jsonl")) as f:
        [change] = [json.loads(line) for line in f]
    assert change["stage"] == "ppo" and change["changed"] == {"ppo.lr": [0.0001, 0.0002]}
    assert os.path.exists(os.path.join(workdir, "config.2.json"))
    pipeline.run(changed(ppo__lr=2e-4), workdir)  # accepted once: no error from now on


@pytest.mark.parametrize("args, message", [
    (["--config.ppo.lrr=1e-4", "--dry_run"],
     "error: --config.ppo.lrr: the config has no field 'lrr' (did you mean \"lr\""),
    ([f"--config={CONFIG}", "--config.ppo.lrr=1e-4", "--dry_run"],
     "error: --config.ppo.lrr: the config has no field 'lrr' (did you mean \"lr\""),
    (["--config=configs/nosuch.py", "--dry_run"],
     "error: --config=configs/nosuch.py: cannot load it ([Errno 2] No such file"),
    ([f"--config={CONFIG}", "--config.labels.path=/nonexistent.json"],
     "error: labels.path='/nonexistent.json' is set but labels.source='mock' does not read it"),
    ([f"--config={CONFIG}", "--config.labels.source=file", "--config.labels.num_val=0",
      "--config.labels.path=/nonexistent.json", "--dry_run"],
     "error: labels.path='/nonexistent.json': no such file"),
    ([f"--config={CONFIG}", "--config.labels.source=file",
      "--config.labels.path=tests/fixtures/lhp_best_of_4.json"],
     "but labels.source='file' has no labels.val_path"),
    ([f"--config={CONFIG}", "--workdir=FILE"], "is a file, not a directory"),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, args, message):
    target = tmp_path / "a_file"
    target.write_text("not a directory\n")
    workdir = tmp_path / "run"
    args = [a.replace("FILE", str(target)) for a in args]
    if not any(a.startswith("--workdir") for a in args):
        args.append(f"--workdir={workdir}")
    out = subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr[-2000:]
    assert "starting" not in out.stdout and not workdir.exists()
    assert target.read_text() == "not a directory\n"


def snapshot(workdir) -> dict:
    """Every file's bytes under `workdir`, by relative path."""
    out = {}
    for root, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, workdir)] = f.read()
    return out


def test_read_only_workdir_is_one_error_and_nothing_changes(reference, tmp_path, cache_dir):
    from tests.label_server_fixtures import read_only

    workdir = copy_run(reference[0], tmp_path)
    for stage in ("ppo", "eval", "figures"):  # PPO left to finish: there is work to do
        os.remove(os.path.join(workdir, "stages", f"{stage}.json"))
    before = snapshot(workdir)
    with read_only(workdir):
        run = Launch(workdir, cache_dir)
        assert run.finish() == 2
    [line] = [x for x in run.lines if x.startswith("error:")]
    assert line.startswith(f"error: --workdir={workdir} cannot be written (") and \
        "nothing was written" in line, line
    assert snapshot(workdir) == before


def test_full_disk_is_one_error_and_the_relaunch_finishes_the_run(reference, tmp_path,
                                                                   cache_dir):
    """A workdir on a small tmpfs fills up mid-run; after the tmpfs grows, the same
    command resumes and ends with the uninterrupted run's results. (Not root:
    RLIMIT_FSIZE stands in for the full disk, failing writes with EFBIG.)"""
    workdir = tmp_path / "disk" / "run"
    workdir.parent.mkdir()
    size_kb = sum(len(b) for b in snapshot(reference[0]).values()) // 1024
    small = size_kb * 2 // 5  # fills up in a stage after pretrain
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={small}k", "tmpfs",
                        str(workdir.parent)], check=True)
        limit = None
    else:
        limit = small * 1024
    try:
        run = Launch(workdir, cache_dir) if limit is None else _launch_with_file_limit(
            workdir, cache_dir, limit)
        code = run.finish()
        errors = [x for x in run.lines if x.startswith("error:")]
        assert code == 1 and len(errors) == 1, run.errors_and_context()
        assert "No space left on device" in errors[0] or "File too large" in errors[0], errors
        assert "relaunch the same command to resume" in errors[0]
        assert run.saw(r"^\[pretrain\] done") and not os.path.exists(workdir / "eval.json")
        if limit is None:
            subprocess.run(["mount", "-o", f"remount,size={size_kb * 4}k", str(workdir.parent)],
                           check=True)
        last = Launch(workdir, cache_dir)
        assert last.finish() == 0, last.output[-3000:]
        assert_same_results(str(workdir), reference[0])
    finally:
        if limit is None:
            subprocess.run(["umount", str(workdir.parent)], check=True)


def _launch_with_file_limit(workdir, cache_dir, limit_bytes) -> Launch:
    import resource

    real = subprocess.Popen

    def limited(*args, **kw):
        def preexec():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
        return real(*args, preexec_fn=preexec, **kw)

    subprocess.Popen = limited
    try:
        return Launch(workdir, cache_dir)
    finally:
        subprocess.Popen = real


def test_kill_campaign_resumes_to_the_uninterrupted_results(reference, tmp_path, cache_dir):
    """scripts/kill_campaign.py with three kills against this module's reference run:
    pretrain after its first row and before any checkpoint (it starts over: its rows
    must not appear twice), mid-checkpoint-save in the reward stage, mid-export in PPO."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    out = subprocess.run(
        [sys.executable, "scripts/kill_campaign.py", "--plan",
         "pretrain:early,reward:save,ppo:export",
         "--reference", reference[0], "--workdir", str(tmp_path / "campaign"),
         *(f"--set={k}={flag(v)}" for k, v in OVERRIDES.items())],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=2 * RUN_TIMEOUT_S)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "kill campaign: 3 kills of 3 planned (pretrain 1, reward 1, ppo 1)" in out.stdout, \
        out.stdout
    assert "equal: metrics.jsonl" in out.stdout
    logs = "".join(open(os.path.join(tmp_path / "campaign", f)).read()
                   for f in os.listdir(tmp_path / "campaign") if f.endswith(".log"))
    assert "save(s) cut short" in logs  # the relaunch after the mid-save kill says so

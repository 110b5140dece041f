"""Sweeps (`rlhf_jax.experiments.sweep`, `launch.py --sweep`): runs, skip, resume, aggregation, CSV.

One real two-member sweep (PPO on the gold reward from a tiny random GPT-2,
seeds 0 and 1, two updates each, plus a third run with another fixed KL
coefficient that trains in the same program) runs through
`launch.py --sweep=FILE:runlocal` and aggregation; then the same workdir is relaunched in-process to pin the
skip of finished members and the resume of an unfinished one. The CSV is
checked against numbers recomputed from each member's own metrics.jsonl and
eval.json, and the aggregation arithmetic against hand-made metrics. Every
sweep file in configs/sweeps loads and validates (both variants) without
running anything.
"""

import csv
import dataclasses
import glob
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rlhf_jax.experiments import (sweep as sweep_lib, sweep_aggregate as sweep_aggregate_lib,
                                  sweep_run as sweep_run_lib)
from rlhf_jax.infra.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP_FILES = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "sweeps", "*.py"))
                     if not os.path.basename(p).endswith("_scale.py"))  # helpers, not sweeps

# Two members: one setting x seeds (0, 1). Stages ppo,eval from a random tiny
# GPT-2 (mock_sentiment:runlocal) on the world gold reward: no pretraining, no
# labels, so each member costs two PPO updates and a 16-query evaluation.
TWO_MEMBER_SWEEP = textwrap.dedent('''
    from rlhf_jax.experiments.sweep import (Curve, Figure, Panel, Points, Sweep, TopSamples,
                                            eval_point, eval_trajectory, grid, metric,
                                            seeds_of)

    OVERRIDES = {"stages": "ppo,eval", "ppo.reward_source": "gold", "pretrain.num_docs": 300,
                 "ppo.batch_size": 16, "ppo.total_episodes": 32, "ppo.log_every": 1,
                 "ppo.checkpoint_every": 1, "eval.num_queries": 16, "eval.batch_size": 16,
                 "eval.best_of_n": (), "log.tensorboard": False, "ppo.keep_checkpoints": 5,
                 "eval.ppo_snapshots": True}

    def get_sweep(arg=None):
        if arg != "runlocal":
            raise ValueError("this test sweep only has a runlocal variant")
        runs = grid("gold", "configs/mock_sentiment.py:runlocal", (0, 1), OVERRIDES)
        # Another member of the same program: another KL coefficient, not plotted.
        runs += grid("other", "configs/mock_sentiment.py:runlocal", (2,),
                     {**OVERRIDES, "kl.coef": 0.5})
        members = seeds_of("gold", (0, 1))
        fig = Figure("curves", "two-member test", (
            Panel("gold vs episodes", "episodes", "gold",
                  (Curve("gold PPO", (Points(members, metric("ppo", "ppo/episodes",
                                                             "objective/gold_score")),)),)),
            Panel("eval", "kl", "gold",
                  (Curve("final", (Points(members, eval_point("ppo", "kl", "gold_score")),),
                         line=False),
                   Curve("snapshots", (Points(members, eval_trajectory("kl", "gold_score")),)))),
        ))
        text = TopSamples("top", members, stage="ppo", key="score", k=3)
        return Sweep("two_member", tuple(runs), (fig,), (text,), runlocal=True)
''')
MEMBERS = ("gold-s0", "gold-s1")


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """(sweep file, workdir, launch output) after one `launch.py --sweep` run."""
    tmp = tmp_path_factory.mktemp("sweep")
    spec = tmp / "two_member.py"
    spec.write_text(TWO_MEMBER_SWEEP)
    workdir = tmp / "work"
    out = subprocess.run(
        [sys.executable, "launch.py", f"--sweep={spec}:runlocal", f"--workdir={workdir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return str(spec), str(workdir), out.stdout


def test_launch_runs_each_member_in_its_own_workdir_then_aggregates(swept):
    spec, workdir, stdout = swept
    for m in MEMBERS:
        run_dir = os.path.join(workdir, "runs", m)
        for stage in ("ppo", "eval"):
            assert os.path.exists(os.path.join(run_dir, "stages", f"{stage}.json")), (m, stage)
        with open(os.path.join(run_dir, "config.json")) as f:
            assert json.load(f)["seed"] == int(m[-1])
        assert any(m in line and "running in" in line for line in stdout.splitlines()), m
    out = os.path.join(workdir, "two_member")
    assert sorted(os.listdir(out)) == ["curves.csv", "curves.csv.json", "curves.png",
                                       "summary.json", "top.txt"]
    with open(os.path.join(out, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert set(summary["runs"]) == set(MEMBERS) | {"other-s2"}
    assert not any(r["skipped"] for r in summary["runs"].values())
    # A runlocal sweep is never copied into the repository's results/.
    assert not os.path.exists(os.path.join(ROOT, "results", "two_member"))


def test_csv_holds_every_plotted_number_from_the_members(swept):
    _, workdir, _ = swept
    rows = _read_csv(os.path.join(workdir, "two_member", "curves.csv"))
    # The runs differ only in their seed: no setting column.
    assert tuple(rows[0]) == sweep_aggregate_lib.CSV_FIELDS
    curve = [r for r in rows if r["curve"] == "gold PPO"]
    per_seed = []
    for m in MEMBERS:
        ppo = [r for r in read_metrics(os.path.join(workdir, "runs", m), "ppo")
               if "objective/gold_score" in r]
        per_seed.append([(r["ppo/episodes"], r["objective/gold_score"]) for r in ppo])
    assert [len(p) for p in per_seed] == [2, 2]  # two updates, each logged
    assert len(curve) == 2
    for i, row in enumerate(curve):
        ys = np.array([p[i][1] for p in per_seed])
        assert float(row["x_mean"]) == pytest.approx(16 * (i + 1))
        assert float(row["y_mean"]) == pytest.approx(ys.mean(), rel=1e-5, abs=1e-6)
        assert float(row["y_min"]) == pytest.approx(ys.min(), rel=1e-5, abs=1e-6)
        assert float(row["y_max"]) == pytest.approx(ys.max(), rel=1e-5, abs=1e-6)
        assert [float(v) for v in row["y_seeds"].split(";")] == pytest.approx(ys, rel=1e-5,
                                                                             abs=1e-6)
        assert row["runs"] == ";".join(MEMBERS) and row["num_seeds"] == "2"
        assert row["seeds"] == "0;1" and row["y_se_seeds"] == ""
        assert row["source"] == "ppo log: ppo/episodes vs objective/gold_score, each logged row"
    (final,) = [r for r in rows if r["curve"] == "final"]
    evals = []
    for m in MEMBERS:
        with open(os.path.join(workdir, "runs", m, "eval.json")) as f:
            evals.append(json.load(f)["ppo"])
    assert float(final["x_mean"]) == pytest.approx(np.mean([e["kl"] for e in evals]), rel=1e-5)
    assert float(final["y_mean"]) == pytest.approx(np.mean([e["gold_score"] for e in evals]),
                                                   rel=1e-5, abs=1e-6)
    # The evaluation's own standard error over its 16 queries, per seed.
    assert [float(v) for v in final["y_se_seeds"].split(";")] == pytest.approx(
        [e["gold_score_se"] for e in evals], rel=1e-5)
    # The held-out frontier: the snapshot of update 1 (the kept checkpoint before the
    # last), then the final policy.
    snaps = [r for r in rows if r["curve"] == "snapshots"]
    assert len(snaps) == 2 and snaps[1]["y_seeds"] == final["y_seeds"]
    for m, e in zip(MEMBERS, evals):
        with open(os.path.join(workdir, "runs", m, "eval.json")) as f:
            assert sweep_lib.snapshot_updates(json.load(f)) == [1]
    top = open(os.path.join(workdir, "two_member", "top.txt")).read()
    assert top.count("response:") == 3


def test_outputs_record_their_provenance_and_recompute_with_the_current_code(swept, tmp_path):
    spec, workdir, _ = swept
    out = os.path.join(workdir, "two_member")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(out, "curves.csv.json")) as f:
        side = json.load(f)
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    for record in (summary, side):
        assert record["commit"] == head and isinstance(record["dirty"], bool)
        assert "launch.py" in record["command"] and f"--sweep={spec}:runlocal" in record["command"]
        assert record["seeds"] == [0, 1, 2]
        assert record["aggregation_code"] == sweep_aggregate_lib.aggregation_code_hash()
        assert "ppo log: ppo/episodes vs objective/gold_score, each logged row (window 1)" in (
            record["smoothing"]["curves"])
    assert side["runs"]["gold-s1"]["seed"] == 1 and side["runs"]["gold-s1"]["ppo.batch_size"] == 16
    # Each run records the commit it trained at (the tree may be dirty under test).
    assert summary["run_commits"] in ([head], [head + "+dirty"])
    assert all(r["commits"] == summary["run_commits"] for r in summary["runs"].values())
    # The published CSV is what the current aggregation code makes of the runs.
    sweep = sweep_run_lib.load_sweep(f"{spec}:runlocal")
    again = tmp_path / "again"
    again.mkdir()
    os.symlink(os.path.join(workdir, "runs"), again / "runs")
    paths = sweep_aggregate_lib.aggregate(sweep, str(again))
    csv_again = [p for p in paths if p.endswith(".csv")][0]
    assert open(csv_again).read() == open(os.path.join(out, "curves.csv")).read()


def test_setting_columns_come_from_the_runs_records(tmp_path):
    root = str(tmp_path)
    for beta in (0.1, 0.3):
        for s in (0, 1):
            name = f"dpo-beta{beta:g}-s{s}"
            _fake_run(root, name, [], {"dpo": {"kl": beta * 10 + s, "gold_score": beta + s,
                                               "gold_score_se": 0.01}})
            with open(os.path.join(root, "runs", name, "sweep_run.json"), "w") as f:
                json.dump({"config": "c.py", "overrides": {
                    "seed": s, "dpo.beta": beta, "stages": "dpo,eval",
                    "model.name_or_path": {"ref": ["base", "models/pretrained"]}}}, f)
    curve = sweep_lib.Curve("DPO", tuple(
        sweep_lib.Points(sweep_lib.seeds_of(f"dpo-beta{b:g}", (0, 1)),
                         sweep_lib.eval_point("dpo", "kl", "gold_score"), setting=f"beta={b:g}")
        for b in (0.1, 0.3)))
    fig = sweep_lib.Figure("f", "t", (sweep_lib.Panel("p", "KL", "gold", (curve,),
                                                      xscale="sqrt"),), caption="gold: g.")
    png, path = sweep_aggregate_lib.draw_figure(fig, os.path.join(root, "runs"), root)
    rows = _read_csv(path)
    # Only the override that differs between the runs is a column (seeds have their own).
    assert list(rows[0])[len(sweep_aggregate_lib.CSV_FIELDS):] == ["set:dpo.beta"]
    assert [r["set:dpo.beta"] for r in rows] == ["0.1", "0.3"]
    assert [r["setting"] for r in rows] == ["beta=0.1", "beta=0.3"]
    assert [r["seeds"] for r in rows] == ["0;1", "0;1"]
    assert rows[1]["y_seeds"] == "0.3;1.3" and rows[1]["y_se_seeds"] == "0.01;0.01"
    assert os.path.getsize(png) > 1000


def test_relaunch_skips_finished_members_and_resumes_unfinished(swept):
    spec, workdir, _ = swept
    sweep = sweep_run_lib.load_sweep(f"{spec}:runlocal")
    s1 = os.path.join(workdir, "runs", "gold-s1")
    ppo_marker = os.path.join(s1, "stages", "ppo.json")
    ppo_mtime = os.path.getmtime(ppo_marker)
    with open(os.path.join(s1, "eval.json")) as f:
        eval_before = json.load(f)
    # gold-s1 "interrupted" after PPO: its eval never finished.
    os.remove(os.path.join(s1, "stages", "eval.json"))
    os.remove(os.path.join(s1, "eval.json"))
    lines = []
    summary = sweep_run_lib.run_sweep(sweep, workdir, results_dir=None, log=lines.append)
    assert summary["runs"]["gold-s0"]["skipped"] is True
    assert summary["runs"]["gold-s1"]["skipped"] is False
    assert any(line.endswith("gold-s0: finished; skipping") for line in lines)
    # Resumed, not restarted: PPO kept its marker; eval ran again, identically.
    assert os.path.getmtime(ppo_marker) == ppo_mtime
    with open(os.path.join(s1, "eval.json")) as f:
        eval_after = json.load(f)
    assert set(eval_after) == set(eval_before)
    for policy, values in eval_before.items():
        assert eval_after[policy] == pytest.approx(values)
    # A second relaunch does no work at all.
    again = sweep_run_lib.run_sweep(sweep, workdir, results_dir=None, log=lines.append)
    assert all(r["skipped"] for r in again["runs"].values())


def test_changed_overrides_on_an_existing_run_are_refused(swept, tmp_path):
    spec, workdir, _ = swept
    changed = tmp_path / "changed.py"
    changed.write_text(open(spec).read().replace('"eval.num_queries": 16',
                                                 '"eval.num_queries": 32'))
    sweep = sweep_run_lib.load_sweep(f"{changed}:runlocal")
    marker = os.path.join(workdir, "runs", "gold-s0", "stages", "eval.json")
    before = os.path.getmtime(marker)
    with pytest.raises(ValueError, match=r"gold-s0.*different overrides \['eval.num_queries'\]"):
        sweep_run_lib.run_sweep(sweep, workdir, results_dir=None, log=lambda _: None)
    assert os.path.getmtime(marker) == before


# --------------------------------------------------------------------------
# Aggregation arithmetic on hand-made runs (no training).


def _fake_run(root, name, rows, eval_json=None):
    d = os.path.join(root, "runs", name)
    os.makedirs(d)
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    if eval_json is not None:
        with open(os.path.join(d, "eval.json"), "w") as f:
            json.dump(eval_json, f)


def test_window_means_and_seed_band_by_hand(tmp_path):
    root = str(tmp_path)
    # Seed a: y = 0..5; seed b: y = 10..15, plus an extra row seed a lacks.
    _fake_run(root, "x-s0", [{"step": i, "stage": "ppo", "e": 10.0 * i, "y": float(i)}
                             for i in range(1, 7)])
    _fake_run(root, "x-s1", [{"step": i, "stage": "ppo", "e": 10.0 * i, "y": 10.0 + i}
                             for i in range(1, 8)]
              + [{"step": 3, "stage": "reward", "y": 99.0}])  # another stage: ignored
    pts = sweep_lib.Points(("x-s0", "x-s1"), sweep_lib.metric("ppo", "e", "y", window=2))
    data = sweep_aggregate_lib.curve_data(sweep_lib.Curve("c", (pts,)), os.path.join(root, "runs"))
    # Blocks of two rows: seed 0 -> 1.5, 3.5, 5.5; seed 1 -> 11.5, 13.5, 15.5 (row 7 dropped).
    np.testing.assert_allclose(data.y_XxZ, [[1.5, 11.5], [3.5, 13.5], [5.5, 15.5]])
    np.testing.assert_allclose(data.x_XxZ[:, 0], [15.0, 35.0, 55.0])
    fig = sweep_lib.Figure("f", "t", (sweep_lib.Panel("p", "x", "y", (
        sweep_lib.Curve("c", (pts,)),)),))
    png, path = sweep_aggregate_lib.draw_figure(fig, os.path.join(root, "runs"), root)
    rows = _read_csv(path)
    assert [float(r["y_mean"]) for r in rows] == [6.5, 8.5, 10.5]
    assert [float(r["y_min"]) for r in rows] == [1.5, 3.5, 5.5]
    assert [float(r["y_max"]) for r in rows] == [11.5, 13.5, 15.5]
    assert [float(r["y_std"]) for r in rows] == [5.0, 5.0, 5.0]
    assert os.path.getsize(png) > 1000


def test_points_from_several_run_groups_form_one_curve(tmp_path):
    root = str(tmp_path)
    for n, acc in ((128, (0.3, 0.4)), (512, (0.5, 0.7))):
        for s, a in enumerate(acc):
            _fake_run(root, f"rm-n{n}-s{s}", [{"step": 4, "stage": "reward",
                                               "reward/val_accuracy": a}])
    curve = sweep_lib.Curve("w", tuple(
        sweep_lib.Points(sweep_lib.seeds_of(f"rm-n{n}", (0, 1)),
                         sweep_lib.last_metric("reward", "reward/val_accuracy", n))
        for n in (128, 512)))
    data = sweep_aggregate_lib.curve_data(curve, os.path.join(root, "runs"))
    np.testing.assert_allclose(data.x_XxZ, [[128, 128], [512, 512]])
    np.testing.assert_allclose(data.y_XxZ.mean(1), [0.35, 0.6])
    assert data.runs_XxZ == [("rm-n128-s0", "rm-n128-s1"), ("rm-n512-s0", "rm-n512-s1")]


# --------------------------------------------------------------------------
# Validation and locking.


def _run(name, **overrides):
    return sweep_lib.Run(name, "configs/mock_sentiment.py:runlocal", overrides)


def test_bad_overrides_and_references_fail_before_any_work(tmp_path):
    bad_field = sweep_lib.Sweep("s", (_run("a", **{"ppo.nope": 1}),), ())
    with pytest.raises(ValueError, match=r"run 'a': override ppo.nope=1: .* no such field"):
        sweep_run_lib.run_sweep(bad_field, str(tmp_path), log=lambda _: None)
    impossible = sweep_lib.Sweep("s", (_run("a", **{"ppo.batch_size": 30}),), ())
    with pytest.raises(ValueError, match=r"run 'a': ppo.batch_size=30 is not divisible"):
        sweep_run_lib.run_sweep(impossible, str(tmp_path), log=lambda _: None)
    dangling = sweep_lib.Sweep("s", (_run("a", **{"model.name_or_path":
                                                  sweep_lib.Ref("missing", "m")}),), ())
    with pytest.raises(ValueError, match=r"run 'a' refers to run 'missing'"):
        sweep_run_lib.run_sweep(dangling, str(tmp_path), log=lambda _: None)
    cycle = sweep_lib.Sweep("s", (
        _run("a", **{"model.name_or_path": sweep_lib.Ref("b")}),
        _run("b", **{"model.name_or_path": sweep_lib.Ref("a")})), ())
    with pytest.raises(ValueError, match="circular dependency"):
        sweep_run_lib.run_sweep(cycle, str(tmp_path), log=lambda _: None)
    assert not os.path.exists(tmp_path / "runs")  # nothing started
    with pytest.raises(ValueError, match="no such file"):
        sweep_run_lib.load_sweep(str(tmp_path / "nope.py"))


def test_dependencies_run_first_and_refs_become_paths(tmp_path):
    runs = (_run("ppo", **{"model.name_or_path": sweep_lib.Ref("base", "models/pretrained")}),
            _run("base"))
    plan = sweep_run_lib.validate(sweep_lib.Sweep("s", runs, ()), str(tmp_path), 4)
    assert [r.name for r, _ in plan] == ["base", "ppo"]
    assert plan[1][1].model.name_or_path == str(tmp_path / "runs" / "base" / "models" /
                                                "pretrained")


def test_records_survive_a_moved_workdir_and_catch_a_changed_ref(tmp_path):
    runs = (_run("ppo", **{"model.name_or_path": sweep_lib.Ref("base", "models/pretrained")}),
            _run("base"))
    for run in runs:
        os.makedirs(tmp_path / "a" / "runs" / run.name)
        with open(tmp_path / "a" / "runs" / run.name / sweep_lib.RUN_RECORD, "w") as f:
            json.dump(sweep_run_lib._record(run), f)
    os.rename(tmp_path / "a", tmp_path / "b")  # refs are stored by run name, not path
    sweep_run_lib.validate(sweep_lib.Sweep("s", runs, ()), str(tmp_path / "b"), 4)
    moved = (_run("ppo", **{"model.name_or_path": sweep_lib.Ref("base", "models/other")}),
             _run("base"))
    with pytest.raises(ValueError, match=r"'ppo' was started with different overrides "
                                         r"\['model.name_or_path'\]"):
        sweep_run_lib.validate(sweep_lib.Sweep("s", moved, ()), str(tmp_path / "b"), 4)


def test_lock_is_exclusive_and_a_dead_owner_is_taken_over(tmp_path):
    run_dir = str(tmp_path / "r")
    lock = sweep_run_lib._try_lock(run_dir)
    assert lock is not None and open(lock).read() == str(os.getpid())
    assert sweep_run_lib._try_lock(run_dir) is None  # held (by us)
    os.remove(lock)
    # A live other process holds it: refused. A dead one: taken over.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with open(os.path.join(run_dir, sweep_lib.LOCK_FILE), "w") as f:
            f.write(str(sleeper.pid))
        assert sweep_run_lib._try_lock(run_dir) is None
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sweep_run_lib._try_lock(run_dir) is not None


@pytest.mark.parametrize("path", SWEEP_FILES, ids=os.path.basename)
@pytest.mark.parametrize("arg", ["", ":runlocal"])
def test_every_sweep_file_validates(path, arg, tmp_path):
    sweep = sweep_run_lib.load_sweep(path + arg)
    assert sweep.runlocal == (arg == ":runlocal")
    plan = sweep_run_lib.validate(sweep, str(tmp_path), 4)
    seeds = {cfg.seed for _, cfg in plan if cfg.stages != "pretrain,labels"
             and cfg.stages != "pretrain"}
    # A runlocal variant may run one seed (the study: its CI run tests the graph).
    assert len(seeds) >= (1 if arg else 3)
    assert sweep.figures
    for fig in sweep.figures:
        for panel in fig.panels:
            for curve in panel.curves:
                for pts in curve.points:
                    assert len(pts.runs) == len(seeds)


def test_a_run_alone_equals_the_same_run_inside_a_larger_group(swept, tmp_path):
    # The launch trained gold-s0, gold-s1 and other-s2 (another KL coefficient) as one
    # vmapped PPO program (rlhf_jax.members) ...
    spec, workdir, out = swept
    assert "gold-s0: running in " in out and "; ppo as one program with gold-s1, other-s2" in out
    assert "[ppo] starting: 3 members in one program (gold-s0, gold-s1, other-s2)" in out
    # ... and gold-s0 run alone, the whole run (PPO, snapshots, eval), logs the same
    # numbers and evaluates the same to float tolerance.
    sweep = sweep_run_lib.load_sweep(f"{spec}:runlocal")
    alone_sweep = dataclasses.replace(sweep, runs=sweep.runs[:1], figures=(), texts=())
    assert [r.name for r in alone_sweep.runs] == ["gold-s0"]
    alone = str(tmp_path / "alone")
    sweep_run_lib.run_sweep(alone_sweep, alone, results_dir=None, log=lambda _: None)
    timing = ("elapsed/fps", "seconds")
    name = "gold-s0"
    rows = [read_metrics(os.path.join(d, "runs", name), stage="ppo") for d in (workdir, alone)]
    assert len(rows[0]) == len(rows[1]) == 2  # two updates
    for got, want in zip(*rows):
        assert got.keys() == want.keys()
        for k, v in want.items():
            if isinstance(v, float) and not k.endswith(timing):
                assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-5), (name, k)
            elif not isinstance(v, float):
                assert got[k] == v, (name, k)
    evals = []
    for d in (workdir, alone):
        with open(os.path.join(d, "runs", name, "eval.json")) as f:
            evals.append(json.load(f))
    assert set(evals[0]) == set(evals[1]) == {"initial", "ppo", "ppo@1"}
    for policy, values in evals[1].items():
        assert evals[0][policy] == pytest.approx(values, rel=1e-4, abs=1e-5), (name, policy)


def test_setting_labels_merge_on_one_curve_and_move_apart_across_curves():
    from matplotlib.figure import Figure as MplFigure

    assert sweep_aggregate_lib._join_settings(["beta=0.5", "beta=0.2"]) == "beta=0.5, 0.2"
    assert sweep_aggregate_lib._join_settings(["N=4", "beta=1"]) == "N=4 / beta=1"
    ax = MplFigure(figsize=(4, 3)).add_subplot()
    ax.plot([0, 10], [0, 10])
    notes = [(5.0, 5.0, "beta=0.5", "C0"), (5.001, 5.0, "beta=0.2", "C0"),  # one point
             (5.0, 5.0, "beta=1", "C1"), (9.0, 1.0, "beta=3", "C1")]
    sweep_aggregate_lib._place_settings(ax, notes, dpi=100)
    texts = {t.get_text(): t for t in ax.texts}
    assert set(texts) == {"beta=0.5, 0.2", "beta=1", "beta=3"}
    # The other curve's label at the same point is moved off the first one.
    assert texts["beta=0.5, 0.2"].xyann != texts["beta=1"].xyann
    assert texts["beta=3"].xyann == (4, 4)

"""The study sweep (`configs/sweeps/study.py`) end to end at CI scale.

`launch.py --sweep=configs/sweeps/study.py:runlocal` runs every method of the
study (PPO with a shared or separate value, RLOO, GRPO, REINFORCE, token-level RM +
PPO, online labels, best-of-N then SFT, DPO, likelihood/unlikelihood, and
best-of-N), the held-out judge, and the three RM heads, at toy size with one
seed; then the figure's CSV must hold a finite point for each.
"""

import csv
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("study")
    out = subprocess.run(
        [sys.executable, "launch.py", "--sweep=configs/sweeps/study.py:runlocal",
         f"--workdir={workdir}"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    with open(os.path.join(workdir, "study", "study.csv"), newline="") as f:
        return str(workdir), list(csv.DictReader(f))


def test_every_method_has_a_finite_point_in_each_panel(study):
    _, rows = study
    by_panel = {}
    for r in rows:
        by_panel.setdefault(r["panel"], {}).setdefault(r["curve"], []).append(r)
    methods = {"best-of-N (RM-ranked; KL analytic)", "PPO, shared value", "PPO, separate value",
               "RLOO (no value model)", "GRPO (no value model)", "REINFORCE + baseline",
               "token-level RM + PPO (dense rewards)", "best-of-N then SFT", "DPO",
               "likelihood + unlikelihood on spans", "initial policy"}
    for panel in ("gold score vs KL", "held-out judge: win rate against the initial policy"):
        curves = by_panel[panel]
        online = [c for c in curves if c.startswith("PPO, online labels (32 + 1 x 32)")]
        assert set(curves) == methods | set(online) and len(online) == 1, sorted(curves)
        for name, points in curves.items():
            for p in points:
                assert math.isfinite(float(p["x_mean"])) and math.isfinite(float(p["y_mean"])), (
                    panel, name)
    judge = by_panel["held-out judge: win rate against the initial policy"]
    for name, points in judge.items():
        assert all(0.0 <= float(p["y_mean"]) <= 1.0 for p in points), name
    heads = by_panel["reward-model heads: held-out accuracy"]
    assert set(heads) == {"linear head", "scalar_mix head", "selector head"}
    for points in heads.values():
        assert [float(p["x_mean"]) for p in points] == [64.0]
        assert 0.0 <= float(points[0]["y_mean"]) <= 1.0


def test_the_study_tables_find_every_part(study):
    from rlhf_jax.experiments import study_table

    points = study_table.read_points(os.path.join(study[0], "study", "study.csv"))
    table = study_table.parts_table(points)
    # Every part names curves the study draws (one seed at CI scale: nothing tested).
    assert "no curve starts with" not in table, table
    for what, _, _ in study_table.PARTS:
        assert f"| {what} |" in table
    assert "| higher |" not in table and "| lower |" not in table, table
    # The aggregation wrote the same table, with the command that reprints it.
    with open(os.path.join(study[0], "study", "verdicts.md")) as f:
        assert table in f.read()
    with open(os.path.join(study[0], "study", "verdicts.json")) as f:
        assert "study_table" in json.load(f)["tested_at"]["command"]


def test_runs_record_what_each_method_trained_on(study):
    workdir, _ = study
    runs = os.path.join(workdir, "runs")

    def stage(run, name):
        with open(os.path.join(runs, run, "stages", f"{name}.json")) as f:
            return json.load(f)

    # Span marks on the pool (the mock span labeller), a token head trained on them,
    # dense rewards in PPO, and the methods' own metrics.
    assert 0 < stage("study-rm-s0", "labels")["span_marked_fraction"] < 1
    assert "span_accuracy" in stage("study-tokrm-s0", "reward")["train"]
    assert "objective/token_reward" in stage("study-tokppo-kl0.1-s0", "ppo")
    assert "pg/return_mean" in stage("study-rloo-kl0.1-s0", "ppo")
    assert "pg/baseline" in stage("study-reinforce-kl0.1-s0", "ppo")
    assert "unlikelihood" in stage("study-ul-s0", "ul")["train"]
    assert "chosen_score" in stage("study-bonsft-n4-s0", "bon_sft")["bon_sft"]
    with open(os.path.join(runs, "study-online-kl0.1-s0", "labels", "online_0001.jsonl")) as f:
        assert sum(1 for _ in f) == 32
    with open(os.path.join(runs, "study-rm-s0", "eval.json")) as f:
        ev = json.load(f)
    assert {"judge_winrate", "judge_score", "gold_score"} <= set(ev["best_of_2"])


def test_full_study_groups_only_runs_that_can_share_a_program(tmp_path):
    # The full study's seeds and KL coefficients of one method train as members of
    # one program (`rlhf_jax.members`); online-label runs never join a group.
    from rlhf_jax import members as members_lib
    from rlhf_jax.experiments import sweep_run as sweep_run_lib

    study = sweep_run_lib.load_sweep("configs/sweeps/study.py")
    plan = sweep_run_lib.validate(study, str(tmp_path), 4)
    groups = {}
    for run, cfg in plan:
        if members_lib.groupable(cfg):
            groups.setdefault(members_lib.shared_config_key(cfg), []).append((run.name, cfg))
    names = sorted(sorted(n for n, _ in g) for g in groups.values())
    assert [f"study-rloo-kl{c}-s{s}" for c in ("0.05", "0.2") for s in range(5)] in names
    for _, cfgs in ((k, [c for _, c in g]) for k, g in groups.items()):
        members_lib.check_members(cfgs)  # raises for a group that cannot share a program
    online = [cfg for run, cfg in plan if run.name.startswith("study-online")]
    assert len(online) == 10 and not any(members_lib.groupable(c) for c in online)


def test_csv_records_settings_and_provenance_and_recomputes(study, tmp_path):
    from rlhf_jax.experiments import sweep_aggregate, sweep_run as sweep_run_lib

    workdir, rows = study
    assert tuple(rows[0])[:len(sweep_aggregate.CSV_FIELDS)] == sweep_aggregate.CSV_FIELDS
    # The settings that differ between the study's runs are columns.
    assert {"set:dpo.beta", "set:ppo.algo", "set:stages"} <= set(rows[0])
    dpo = [r for r in rows if r["curve"] == "DPO" and r["panel"] == "gold score vs KL"]
    assert [r["set:dpo.beta"] for r in dpo] == ["0.1"] and dpo[0]["setting"] == "beta=0.1"
    assert all(r["seeds"] == "0" for r in rows)
    with open(os.path.join(workdir, "study", "study.csv.json")) as f:
        side = json.load(f)
    assert side["aggregation_code"] == sweep_aggregate.aggregation_code_hash()
    assert side["seeds"] == [0] and "--sweep=configs/sweeps/study.py:runlocal" in side["command"]
    assert side["commit"] and len(side["runs"]) == len(
        {r.name for r in sweep_run_lib.load_sweep("configs/sweeps/study.py:runlocal").runs})
    # Aggregating the same runs again with the current code gives the same CSV.
    again = tmp_path / "again"
    again.mkdir()
    os.symlink(os.path.join(workdir, "runs"), again / "runs")
    sweep = sweep_run_lib.load_sweep("configs/sweeps/study.py:runlocal")
    sweep_aggregate.aggregate(sweep, str(again))
    with open(again / "study" / "study.csv") as f, \
            open(os.path.join(workdir, "study", "study.csv")) as g:
        assert f.read() == g.read()

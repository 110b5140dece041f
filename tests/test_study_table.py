"""The study's tables from a hand-written CSV: equal-KL comparisons, intervals, tests."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from rlhf_jax.experiments import study_table

HEADER = ("figure,panel,curve,point,x_mean,x_min,x_max,y_mean,y_min,y_max,y_std,num_seeds,"
          "x_seeds,y_seeds,runs\n")
G, J = study_table.GOLD_PANEL, study_table.JUDGE_PANEL


def _row(panel, curve, point, kl, ys, runs):
    seeds = ";".join(str(y) for y in ys)
    kls = ";".join(str(kl) for _ in ys)
    names = ";".join(f"{runs}-s{i}" for i in range(len(ys)))
    return (f'study,{panel},"{curve}",{point},{kl},{kl},{kl},0,0,0,0,{len(ys)},{kls},{seeds},'
            f'{names}\n')


@pytest.fixture
def csv_path(tmp_path):
    rows = [
        _row(G, "initial policy", 0, 0.0, (0.0, 0.0, 0.0), "study-rm"),
        _row(G, "PPO, shared value", 0, 1.0, (0.4, 0.5, 0.6), "study-ppo-kl0.2"),
        _row(G, "PPO, shared value", 1, 4.0, (0.8, 0.9, 1.0), "study-ppo-kl0.05"),
        _row(G, "DPO", 0, 1.0, (0.1, 0.2, 0.3), "study-dpo-beta0.1"),
        _row(J, "PPO, shared value", 1, 4.0, (0.75, 0.8, 0.85), "study-ppo-kl0.05"),
        _row("reward-model heads: held-out accuracy", "linear head", 0, 512, (0.7,), "rm"),
    ]
    path = tmp_path / "study.csv"
    path.write_text(HEADER + "".join(rows))
    return str(path)


def test_points_settings_and_judge(csv_path):
    points = study_table.read_points(csv_path)
    assert [p.setting for p in points] == ["study-rm", "study-ppo-kl0.2", "study-ppo-kl0.05",
                                           "study-dpo-beta0.1"]
    assert points[2].gold == (0.8, 0.9, 1.0) and points[2].judge == (0.75, 0.8, 0.85)
    assert points[2].kl_seeds == (4.0, 4.0, 4.0) and points[1].judge is None


def test_compare_at_equal_kl_by_hand(csv_path):
    points = study_table.read_points(csv_path)
    rows = study_table.compare(points, "PPO, shared value", "DPO", budgets=(0.5, 1.0, 2.5))
    # KL 1: PPO's points (0.4, 0.5, 0.6) vs DPO's (0.1, 0.2, 0.3).
    assert rows[1]["with"] == pytest.approx([0.4, 0.5, 0.6])
    assert rows[1]["diff"] == pytest.approx(0.3)
    p = scipy_stats.ttest_ind([0.4, 0.5, 0.6], [0.1, 0.2, 0.3], equal_var=False).pvalue
    assert rows[1]["p"] == pytest.approx(p)
    # KL 0.5: between the initial policy (0 at d 0) and d 1, at d = sqrt(0.5).
    d = math.sqrt(0.5)
    assert rows[0]["with"] == pytest.approx([0.4 * d, 0.5 * d, 0.6 * d])
    assert rows[0]["without"] == pytest.approx([0.1 * d, 0.2 * d, 0.3 * d])
    # KL 2.5: PPO between d 1 and d 2; DPO never reached it: not compared.
    f = math.sqrt(2.5) - 1
    assert rows[2]["with"] == pytest.approx([0.4 + 0.4 * f, 0.5 + 0.4 * f, 0.6 + 0.4 * f])
    assert np.all(np.isnan(rows[2]["without"])) and math.isnan(rows[2]["p"])


def test_holm_over_the_table_and_verdicts(csv_path):
    points = study_table.read_points(csv_path)
    parts = (("RL vs DPO", "PPO, shared", "DPO"),)
    rows = study_table.parts_rows(points, parts, budgets=(0.5, 1.0, 2.5))
    p = scipy_stats.ttest_ind([0.4, 0.5, 0.6], [0.1, 0.2, 0.3], equal_var=False).pvalue
    # Two tested rows (KL 0.5 and 1 give the same t): each adjusted to 2p = 0.043 < 0.05.
    assert [r["p_holm"] for r in rows[:2]] == pytest.approx([2 * p, 2 * p])
    assert math.isnan(rows[2]["p_holm"])
    table = study_table.parts_table(points, parts, budgets=(0.5, 1.0, 2.5))
    assert "| RL vs DPO | 1 | 0.500 [" in table and "| +0.300 | 0.0213 | 0.0426 | higher |" in table
    assert "not reached (0 of 3 seeds)" in table and "did not reach this KL" in table
    # The permutation test's smallest p for 3 vs 3 (0.1) cannot pass: no difference called.
    perm = study_table.parts_table(points, parts, budgets=(1.0,), test="permutation")
    assert "| 0.1 | 0.1 | no difference shown (adjusted p >= 0.05) |" in perm
    assert "beyond" not in table + perm


def test_methods_table_has_interval_seeds_and_judge(csv_path):
    points = study_table.read_points(csv_path)
    table = study_table.methods_table(points)
    row = [line for line in table.splitlines() if "study-ppo-kl0.05" in line][0]
    assert row.startswith("| PPO, shared value | study-ppo-kl0.05 | 4.00 | 0.900 [")
    assert row.endswith("| 3 | - | 0.80 [0.75, 0.85] |")


def test_bad_inputs_name_the_file(tmp_path, csv_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="bad.csv: not a sweep CSV"):
        study_table.read_points(str(bad))
    other = tmp_path / "other.csv"
    other.write_text(HEADER + _row("another panel", "x", 0, 1.0, (0.1,), "r"))
    with pytest.raises(ValueError, match="no rows of panel"):
        study_table.read_points(str(other))
    points = study_table.read_points(csv_path)
    table = study_table.parts_table(points, parts=(("x", "no such curve", "DPO"),))
    assert "no curve starts with 'no such curve'" in table


def test_cli_prints_both_tables(csv_path, capsys):
    study_table.main([csv_path, "--test", "permutation"])
    out = capsys.readouterr().out
    assert "| method | setting | KL |" in out and "| part | KL |" in out and "permutation p" in out


def test_one_seed_is_not_tested(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text(HEADER + _row(G, "initial policy", 0, 0.0, (0.0,), "rm")
                    + _row(G, "PPO, shared value", 0, 1.0, (0.5,), "ppo")
                    + _row(G, "DPO", 0, 1.0, (0.4,), "dpo"))
    points = study_table.read_points(str(path))
    table = study_table.parts_table(points, (("p", "PPO", "DPO"),), budgets=(1.0,))
    assert "not tested: fewer than 2 seeds" in table


def test_any_panel_against_one_curve(csv_path, capsys):
    points = study_table.read_points(csv_path)
    assert study_table.against(points, "DPO") == (
        ("PPO, shared value vs DPO", "PPO, shared value", "DPO"),)
    study_table.main([csv_path, "--panel", G, "--against", "DPO"])
    out = capsys.readouterr().out
    assert "| PPO, shared value vs DPO | 1 | 0.500 [" in out
    with pytest.raises(SystemExit):
        study_table.main([csv_path, "--panel", "no such panel"])


def test_cli_names_a_missing_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        study_table.main([str(tmp_path / "none.csv")])
    assert "none.csv: no such file" in capsys.readouterr().err


def test_keep_seeds_cuts_every_per_seed_cell_and_refuses_a_missing_seed():
    row = {"curve": "c", "point": "0", "seeds": "0;1;2;3", "runs": "r-s0;r-s1;r-s2;r-s3",
           "x_seeds": "1;2;3;4", "y_seeds": "0.1;0.2;0.3;0.5", "y_se_seeds": "",
           "x_mean": "2.5", "y_mean": "0.275", "num_seeds": "4"}
    out = study_table.keep_seeds(row, (3, 1))
    assert (out["seeds"], out["runs"]) == ("1;3", "r-s1;r-s3")
    assert (out["x_seeds"], out["y_seeds"], out["num_seeds"]) == ("2;4", "0.2;0.5", "2")
    assert float(out["x_mean"]) == 3.0 and float(out["y_mean"]) == pytest.approx(0.35)
    assert float(out["y_std"]) == pytest.approx(0.15) and out["y_se_seeds"] == ""
    assert study_table.keep_seeds(row, None) is row
    with pytest.raises(ValueError, match=r"point 'c' #0: no seed \[7\]"):
        study_table.keep_seeds(row, (1, 7))


def test_read_points_of_some_seeds(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("figure,panel,curve,point,x_mean,seeds,x_seeds,y_seeds,runs\n"
                    f'f,{G},PPO,0,3,0;1;2,2;3;4,0.8;0.9;1.0,p-s0;p-s1;p-s2\n'
                    f'f,{J},PPO,0,3,0;1;2,2;3;4,0.75;0.8;0.85,p-s0;p-s1;p-s2\n')
    (ppo,) = study_table.read_points(str(path), seeds=(0, 2))
    assert ppo.gold == (0.8, 1.0) and ppo.judge == (0.75, 0.85)
    assert ppo.kl_seeds == (2.0, 4.0) and ppo.kl == 3.0
    with pytest.raises(ValueError, match=r"no seed \[5\]"):
        study_table.read_points(str(path), seeds=(0, 5))


def test_a_csv_without_seeds_cannot_be_cut(csv_path):
    with pytest.raises(ValueError, match="no 'seeds' column"):
        study_table.read_points(csv_path, seeds=(0,))

"""The study's tables from a hand-written CSV."""

import pytest

from rlhf_jax.experiments import study_table

HEADER = "figure,panel,curve,point,x_mean,x_min,x_max,y_mean,y_min,y_max,y_std,num_seeds,x_seeds,y_seeds,runs\n"
G, J = study_table.GOLD_PANEL, study_table.JUDGE_PANEL


def _row(panel, curve, point, kl, ys, runs):
    seeds = ";".join(str(y) for y in ys)
    names = ";".join(f"{runs}-s{i}" for i in range(len(ys)))
    return f'study,{panel},"{curve}",{point},{kl},{kl},{kl},0,0,0,0,{len(ys)},,{seeds},{names}\n'


@pytest.fixture
def csv_path(tmp_path):
    rows = [
        _row(G, "best-of-N (RM-ranked; KL analytic)", 0, 0.0, (0.0, 0.1, 0.2), "study-rm"),
        _row(G, "best-of-N (RM-ranked; KL analytic)", 1, 0.19, (0.3, 0.4, 0.5), "study-rm"),
        _row(G, "PPO, shared value", 0, 2.0, (0.6, 0.7, 0.8), "study-ppo-kl0.05"),
        _row(G, "PPO, shared value", 1, 1.0, (0.2, 0.3, 0.4), "study-ppo-kl0.2"),
        _row(G, "DPO", 0, 1.5, (0.5, 0.65, 0.7), "study-dpo-beta0.1"),
        _row(J, "PPO, shared value", 0, 2.0, (0.75, 0.8, 0.85), "study-ppo-kl0.05"),
        _row("reward-model heads: held-out accuracy", "linear head", 0, 512, (0.7,), "rm"),
    ]
    path = tmp_path / "study.csv"
    path.write_text(HEADER + "".join(rows))
    return str(path)


def test_points_settings_and_judge(csv_path):
    points = study_table.read_points(csv_path)
    assert [p.setting for p in points] == ["study-rm #0", "study-rm #1", "study-ppo-kl0.05",
                                           "study-ppo-kl0.2", "study-dpo-beta0.1"]
    assert points[2].gold == (0.6, 0.7, 0.8) and points[2].judge == (0.75, 0.8, 0.85)
    assert points[3].judge is None
    assert study_table.best(points, "PPO, shared").setting == "study-ppo-kl0.05"


def test_compare_by_hand(csv_path):
    points = study_table.read_points(csv_path)
    # PPO's best (0.7 mean) against best-of-N's best (0.4): every PPO seed above every other.
    c = study_table.compare(points, "PPO, shared value", "best-of-N (RM")
    assert c["diff"] == pytest.approx(0.3) and c["verdict"] == "higher, beyond seed range"
    # Against DPO (0.6167 mean; seeds 0.5-0.7 overlap PPO's 0.6-0.8).
    c = study_table.compare(points, "PPO, shared value", "DPO")
    assert c["diff"] == pytest.approx(0.7 - 1.85 / 3) and c["verdict"] == "within seed range"
    c = study_table.compare(points, "best-of-N (RM", "PPO, shared value")
    assert c["verdict"] == "lower, beyond seed range"


def test_tables_render(csv_path, capsys):
    points = study_table.read_points(csv_path)
    table = study_table.methods_table(points)
    assert "| PPO, shared value | study-ppo-kl0.05 | 2.00 | 0.700 [0.600, 0.800] | 0.80 [0.75, 0.85] |" in table
    parts = study_table.parts_table(points, parts=(("RL vs DPO", "PPO, shared", "DPO"),))
    assert "| RL vs DPO | study-ppo-kl0.05: 0.700 [0.600, 0.800] at KL 2.00 |" in parts
    assert "+0.083, within seed range |" in parts


def test_bad_inputs_name_the_file(tmp_path, csv_path):
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="x.csv: not a sweep CSV"):
        study_table.read_points(str(bad))
    with pytest.raises(ValueError, match="no curve starts with 'RLOO'"):
        study_table.best(study_table.read_points(csv_path), "RLOO")


def test_cli_prints_both_tables(csv_path, capsys):
    study_table.main([csv_path])
    out = capsys.readouterr().out
    assert "| method | setting |" in out and "| part | with it" in out


def test_one_seed_claims_no_range(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text(HEADER + _row(G, "PPO, shared value", 0, 1.0, (0.5,), "study-ppo")
                    + _row(G, "DPO", 0, 1.0, (0.2,), "study-dpo"))
    c = study_table.compare(study_table.read_points(str(path)), "PPO", "DPO")
    assert c["diff"] == pytest.approx(0.3) and c["verdict"] == "one seed: no range"

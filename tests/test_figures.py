"""Figures: PNGs from a fake metrics.jsonl, skipping figures without metrics."""

import json
import logging
import os

import matplotlib.image
import numpy as np
import pytest

from rlhf_jax.stages import figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_rows(workdir, rows):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def reward_rows():
    rows = [{"step": s, "stage": "reward", "reward/loss": 1.4 - 0.1 * s,
             "reward/accuracy": 0.25 + 0.05 * s} for s in range(5)]
    rows.append({"step": 4, "stage": "reward", "reward/val_accuracy": 0.6})
    return rows


def ppo_rows():
    return [{"step": s, "stage": "ppo", "ppo/episodes": 64 * (s + 1),
             "objective/score": 0.1 * s, "objective/gold_score": 0.05 * s,
             "objective/kl": 0.5 * s, "objective/kl_coef": 0.15 - 0.01 * s,
             "ppo/loss/policy": -0.01} for s in range(6)]


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert np.ptp(image[..., :3]) > 0  # something drawn, not a blank canvas


def test_full_run_writes_all_figures(tmp_path):
    workdir = str(tmp_path / "run")
    rows = reward_rows() + ppo_rows()
    # A resumed run that logged step 2 twice: the last row wins, no crash.
    rows.append({"step": 2, "stage": "ppo", "ppo/episodes": 192, "objective/kl": 1.1,
                 "objective/score": 0.2, "objective/kl_coef": 0.13})
    write_rows(workdir, rows)
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 9, "stage": "pp')  # torn last line
    paths = figures.make_figures(workdir)
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["ppo_curves.png", "reward_model.png", "reward_vs_kl.png"]
    for p in paths:
        assert os.path.dirname(p) == os.path.join(workdir, "figures")
        assert_png(p)


def test_series_uses_episodes_and_keeps_last_row():
    rows = ppo_rows() + [{"step": 2, "stage": "ppo", "ppo/episodes": 192,
                          "objective/kl": 7.0}]
    assert figures._x_axis(rows, ["objective/kl"]) == ("ppo/episodes", "episodes")
    xs, ys = figures._series(rows, "objective/kl", "ppo/episodes")["ppo"]
    assert xs == [64, 128, 192, 256, 320, 384]
    assert ys == [0.0, 0.5, 7.0, 1.5, 2.0, 2.5]
    # An eval row without episodes puts the axis back on steps.
    rows.append({"step": 6, "stage": "eval", "objective/kl": 3.0})
    assert figures._x_axis(rows, ["objective/kl"]) == ("step", "step")


def test_reward_only_workdir_gives_only_rm_figure(tmp_path, caplog):
    workdir = str(tmp_path / "rm_only")
    write_rows(workdir, reward_rows())
    with caplog.at_level(logging.INFO):
        paths = figures.make_figures(workdir)
    assert [os.path.basename(p) for p in paths] == ["reward_model.png"]
    assert sorted(os.listdir(os.path.join(workdir, "figures"))) == ["reward_model.png"]
    assert_png(paths[0])
    log = caplog.text
    assert "skipping ppo_curves.png" in log and "skipping reward_vs_kl.png" in log


def test_partial_workdirs_do_not_crash(tmp_path):
    assert figures.make_figures(str(tmp_path / "empty")) == []
    # PPO without a gold function: score, kl, kl_coef only.
    workdir = str(tmp_path / "no_gold")
    rows = [{k: v for k, v in r.items() if k != "objective/gold_score"} for r in ppo_rows()]
    write_rows(workdir, rows)
    paths = figures.make_figures(workdir)
    assert sorted(os.path.basename(p) for p in paths) == ["ppo_curves.png", "reward_vs_kl.png"]


def test_main_cli(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    write_rows(workdir, ppo_rows())
    paths = figures.main([workdir])
    assert capsys.readouterr().out.split() == paths
    assert len(paths) == 2
    with pytest.raises(SystemExit):
        figures.main([str(tmp_path / "nope")])


def test_reference_targets_carry_their_source():
    name, rows, source = figures.load_reference("lhp_sentiment")
    assert name == "lhp_sentiment"
    by = {(r["metric"], r["update"]): r["value"] for r in rows}
    assert by["objective/score", 1954] == 1.8
    assert by["objective/kl", 1954] == 6.0
    assert (by["objective/kl_coef", 0], by["objective/kl_coef", 1954]) == (0.15, 0.25)
    text = " ".join(source)
    assert "SUMMARY TARGETS, NOT PER-STEP DATA" in text
    assert "https://github.com/vwxyzjn/lm-human-preference-details" in text
    _, rows, _ = figures.load_reference("lhp_descriptiveness")
    by = {(r["metric"], r["update"]): r["value"] for r in rows}
    assert (by["objective/score", 1954], by["objective/kl_coef", 1954]) == (2.25, 0.32)


def test_reference_overlay_on_a_run(tmp_path, capsys):
    # A runlocal-sized workdir: a few PPO updates (step = update), plus a reward stage.
    workdir = str(tmp_path / "run")
    write_rows(workdir, reward_rows() + ppo_rows())
    paths = figures.main([workdir, "--reference", "lhp_sentiment"])
    ref_png = os.path.join(workdir, "figures", "reference_lhp_sentiment.png")
    assert ref_png in paths and capsys.readouterr().out.split() == paths
    assert_png(ref_png)
    # A per-step CSV (e.g. exported from the W&B projects the README names) by path.
    dense = tmp_path / "dense.csv"
    dense.write_text("# exported\nmetric,update,value\n" + "".join(
        f"objective/kl,{u},{6 * (1 - 0.9 ** u):.4f}\n" for u in range(40)))
    paths = figures.make_figures(workdir, reference=str(dense))
    assert_png(os.path.join(workdir, "figures", "reference_dense.png"))
    with pytest.raises(SystemExit):
        figures.main([workdir, "--reference", "no_such_reference"])
    assert "lhp_sentiment" in capsys.readouterr().err  # the error lists the known names
    bad = tmp_path / "bad.csv"
    bad.write_text("metric,update,value\nobjective/kl,one,6\n")
    with pytest.raises(ValueError, match=r"bad.csv: data row 1: needs metric, update and value"):
        figures.load_reference(str(bad))

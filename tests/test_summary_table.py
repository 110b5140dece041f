"""The Fig. 1 verdicts (`rlhf_jax.experiments.summary_table`) on hand-made CSVs."""

import csv
import json
import math
import os

import pytest

from rlhf_jax.experiments import stats
from rlhf_jax.experiments import summary_table as st

SEEDS = "0;1;2"


def _write(path, panel_rows):
    fields = ["figure", "panel", "curve", "point", "x_mean", "seeds", "y_seeds"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        for panel, curve, point, params, ys, seeds in panel_rows:
            w.writerow({"figure": "f", "panel": panel, "curve": curve, "point": point,
                        "x_mean": params, "seeds": seeds,
                        "y_seeds": ";".join(str(y) for y in ys)})


def _fig1(tmp_path, sft_seeds=SEEDS):
    g, lab, lc = st.GOLD_PANEL, st.LABELLER_PANEL, st.LC_PANEL
    # Size 0 (0.10M): HF 0.6/0.7/0.8, SFT 0.5 on every seed, pretrained 0.0/0.1/0.2.
    # Size 1 (0.30M): every policy the same on every seed.
    values = {st.PRETRAINED: ([0.0, 0.1, 0.2], [0.1] * 3), st.SFT: ([0.5] * 3, [0.5] * 3),
              st.HF: ([0.6, 0.7, 0.8], [0.9] * 3), "best-of-16": ([0.55] * 3, [0.6] * 3)}
    rows = []
    for curve, (y0, y1) in values.items():
        seeds = sft_seeds if curve == st.SFT else SEEDS
        for panel in (g, lab):
            rows += [(panel, curve, 0, 1e5, y0, seeds), (panel, curve, 1, 3e5, y1, seeds)]
    _write(tmp_path / st.GOLD_CSV, rows)
    _write(tmp_path / st.LC_CSV, [(lc, st.HF, 0, 1e5, [0.6, 0.7, 0.8], SEEDS),
                                  (lc, st.HF, 1, 3e5, [0.9] * 3, SEEDS)])


def test_fig1_verdicts_by_hand(tmp_path):
    _fig1(tmp_path)
    paths = st.fig1_verdicts(str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["verdicts.md", "verdicts.json"]
    tests = json.load(open(paths[1]))["tests"]
    by = {(r["claim"].split(" (vs")[0], r["size"]): r for r in tests}
    # 0.6, 0.7, 0.8 against 0.5 (and HF - SFT = 0.1, 0.2, 0.3 against 0): mean 0.2 over
    # se 0.1 / sqrt(3), t = 2 sqrt(3) on 2 dof: p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(12/14).
    p3 = 1 - math.sqrt(12 / 14)
    for claim in ("HF preferred to the reference (> 0.5)", "HF above SFT",
                  "HF length-controlled > 0.5"):
        r = by[(claim, "0.10M")]
        assert r["t"] == pytest.approx(2 * math.sqrt(3)) and r["p"] == pytest.approx(p3)
        assert r["effect"] == pytest.approx(0.2) and r["n"] == 3
    # Pretrained vs the next lowest (SFT, 0.5): 0.5, 0.4, 0.3, t = 0.4 / (0.1 / sqrt 3).
    r = by[("pretrained-only lowest", "0.10M")]
    assert "vs SFT" in r["claim"]
    t = 4 * math.sqrt(3)
    assert r["t"] == pytest.approx(t) and r["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t))
    # Size 1 has no spread: every claim there is certain (p = 0 up to float rounding).
    assert all(r["p"] < 1e-9 for r in tests if r["size"] == "0.30M")
    # HF 0.6/0.7/0.8 -> 0.9: Welch with one side constant is t = 0.2 / (0.1 / sqrt 3) on 2 dof.
    rise = by[("HF rises with size", "0.10M -> 0.30M")]
    assert rise["effect"] == pytest.approx(0.2) and rise["p"] == pytest.approx(p3)
    # Holm over the 9 rows: four 0s, then 0.0202 x 5, then 0.0742 x 4 (monotone).
    assert len(tests) == 9
    p_pre = 1 - t / math.sqrt(2 + t * t)
    assert r["p_holm"] == pytest.approx(5 * p_pre)
    assert rise["p_holm"] == pytest.approx(4 * p3)
    assert {r["verdict"] for r in tests if r["size"] == "0.30M"} == {"holds"}
    assert {r["verdict"] for r in tests if r["size"] != "0.30M"} == {"not shown"}
    md = open(paths[0]).read()
    assert "| HF above SFT | 0.30M | +0.400 [+0.400, +0.400] | 3 | paired t |" in md
    assert f"| {st.LABELLER_PANEL} | {st.HF} | 0.30M | 0.900 [0.900, 0.900] | 3 |" in md


def test_fig1_verdict_signs():
    assert st.verdict(0.1, 0.01) == "holds"
    assert st.verdict(-0.1, 0.01) == "reversed"
    assert st.verdict(0.1, 0.2) == "not shown"
    assert st.verdict(-0.1, 0.2) == "not shown (opposite sign)"
    assert st.verdict(0.0, 1.0) == "not shown (no difference)"


def test_fig1_verdicts_refuse_misaligned_or_missing(tmp_path):
    _fig1(tmp_path, sft_seeds="0;2;1")
    with pytest.raises(ValueError, match="HF vs SFT at 0.10M: seeds differ"):
        st.fig1_verdicts(str(tmp_path))
    os.remove(tmp_path / st.LC_CSV)
    with pytest.raises(ValueError, match="fig1_length_controlled.csv: missing"):
        st.fig1_verdicts(str(tmp_path))


def test_copying_verdicts_by_hand(tmp_path):
    nov, lcs = st.NOVELTY_PANEL, st.LCS_PANEL
    # x: 0 pretrained, 1 SFT, 2 HF, 3 best-of-N, 4 reference.
    values = {st.ACCURACY: {nov: [[1.0] * 3, [0.9] * 3, [0.2, 0.3, 0.4], [1.0] * 3, [0.7] * 3],
                            lcs: [[0.3] * 3, [0.4] * 3, [0.8, 0.8, 0.9], [0.4] * 3, [0.6] * 3]},
              st.FULL: {nov: [[1.0] * 3, [0.9] * 3, [0.95, 0.95, 1.0], [1.0] * 3, [0.7] * 3],
                        lcs: [[0.3] * 3, [0.4] * 3, [0.35, 0.3, 0.25], [0.4] * 3, [0.6] * 3]}}
    _write(tmp_path / st.COPYING_CSV, [
        (panel, curve, x, x, ys, SEEDS) for curve, panels in values.items()
        for panel, per_x in panels.items() for x, ys in enumerate(per_x)])
    paths = st.copying_verdicts(str(tmp_path))
    out = json.load(open(paths[1]))
    by = {r["claim"]: r for r in out["tests"]}
    # SFT - HF = 0.7, 0.6, 0.5: mean 0.6 over se 0.1 / sqrt(3), t = 6 sqrt(3) on 2 dof.
    r = by["accuracy only: HF novelty below SFT's"]
    t = 6 * math.sqrt(3)
    assert r["t"] == pytest.approx(t) and r["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert r["ratio"] == pytest.approx(0.3 / 0.9) and r["effect"] == pytest.approx(0.6)
    r = by["accuracy only: HF novelty below reference's"]
    t = 4 * math.sqrt(3)
    assert r["t"] == pytest.approx(t) and r["ratio"] == pytest.approx(0.3 / 0.7)
    # Under full labels HF copies less than SFT: the claim's effect is negative.
    assert by["full judge: HF novelty below SFT's"]["effect"] == pytest.approx(-0.0667, abs=1e-4)
    assert by["full judge: HF novelty below SFT's"]["verdict"].startswith(("not shown", "rev"))
    # Holm over the family of 7, and the copier flag from its rule.
    assert len(out["tests"]) == 7
    assert [r["p_holm"] for r in out["tests"]] == pytest.approx(
        stats.holm([r["p"] for r in out["tests"]]))
    below = [by["accuracy only: HF novelty below SFT's"],
             by["accuracy only: HF novelty below reference's"]]
    assert out["smart_copier"] == all(r["verdict"] == "holds" and r["ratio"] < 0.5
                                      for r in below)
    md = open(paths[0]).read()
    assert "| sentence novelty | labels: accuracy only | HF | 0.300 [0.200, 0.400] | 3 |" in md
    assert f"**{'yes' if out['smart_copier'] else 'no'}**" in md


def test_a_seed_without_a_value_leaves_its_claim_untested(tmp_path):
    nov, lcs = st.NOVELTY_PANEL, st.LCS_PANEL
    per_x = [[1.0] * 3, [0.9] * 3, [0.5, 0.6, 0.7], [1.0] * 3, [0.7] * 3]
    lcs_x = [[0.3] * 3, [0.4] * 3, [0.5, float("nan"), 0.5], [0.4] * 3, [0.6] * 3]
    _write(tmp_path / st.COPYING_CSV, [
        (panel, curve, x, x, ys, SEEDS) for curve in (st.ACCURACY, st.FULL)
        for panel, rows in ((nov, per_x), (lcs, lcs_x)) for x, ys in enumerate(rows)])
    out = json.load(open(st.copying_verdicts(str(tmp_path))[1]))
    by = {r["claim"]: r for r in out["tests"]}
    r = by["accuracy only: HF bigram LCS above SFT's"]
    assert math.isnan(r["p"]) and r["n"] == 2
    assert r["verdict"] == "not testable (a seed has no value)"
    # Both labellers' LCS rows hold the missing seed; the other five are tested, and
    # Holm counts only them.
    tested = [r for r in out["tests"] if not math.isnan(r["p"])]
    assert len(tested) == 5
    assert [r["p_holm"] for r in tested] == pytest.approx(stats.holm([r["p"] for r in tested]))
    # The seed without a value is left out of the mean, and n says so.
    (m,) = [m for m in out["means"] if m["panel"] == lcs and m["policy"] == st.ACCURACY
            and m["params"] == "HF"]
    assert m["mean"] == pytest.approx(0.5) and m["n"] == 2


def _overopt(tmp_path, gold, rm, kl):
    fields = ["figure", "panel", "curve", "point", "setting", "seeds", "x_seeds", "y_seeds"]
    with open(tmp_path / st.OVEROPT_CSV, "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        for panel, curve, values in ((st.OVEROPT_GOLD_PANEL, st.OVEROPT_GOLD, gold),
                                     (st.OVEROPT_RM_PANEL, st.OVEROPT_RM, rm)):
            for k, (setting, ys) in enumerate(values.items()):
                w.writerow({"figure": "f", "panel": panel, "curve": curve, "point": k,
                            "setting": setting, "seeds": SEEDS,
                            "x_seeds": ";".join(str(x) for x in kl[setting]),
                            "y_seeds": ";".join(str(y) for y in ys)})


def test_overopt_verdicts_by_hand(tmp_path):
    # The CSV lists beta=0.05 before beta=0.5; the ladder is ordered by KL.
    kl = {"SFT": [0.0] * 3, "beta=0.05": [4.0, 5.0, 6.0], "beta=0.5": [0.5, 0.6, 0.7]}
    gold = {"SFT": [0.5] * 3, "beta=0.05": [0.3, 0.5, 0.4], "beta=0.5": [0.6, 0.7, 0.8]}
    rm = {"SFT": [0.0] * 3, "beta=0.05": [2.0, 2.3, 2.3], "beta=0.5": [1.0, 1.1, 1.2]}
    _overopt(tmp_path, gold, rm, kl)
    paths = st.overopt_verdicts(str(tmp_path), main="beta=0.5")
    out = json.load(open(paths[1]))
    rows = out["tests"]
    assert [r["claim"] for r in rows] == [
        "gold: beta=0.5 above SFT", "gold falls from beta=0.5 to beta=0.05",
        "RM score rises from beta=0.5 to beta=0.05", "RM score rises from SFT to beta=0.5",
        "RM score rises from beta=0.5 to beta=0.05"]

    def p2(t):  # two-sided p of Student's t on 2 dof
        return 1 - t / math.sqrt(2 + t * t)

    # Differences 0.1/0.2/0.3 (t = 2 sqrt 3), 0.3/0.2/0.4 (t = 3 sqrt 3), 1.0/1.2/1.1
    # and 1.0/1.1/1.2 (t = 11 sqrt 3): each has sd 0.1.
    ts = [2 * math.sqrt(3), 3 * math.sqrt(3), 11 * math.sqrt(3), 11 * math.sqrt(3),
          11 * math.sqrt(3)]
    assert [r["t"] for r in rows] == pytest.approx(ts)
    assert [r["p"] for r in rows] == pytest.approx([p2(t) for t in ts])
    assert [r["effect"] for r in rows] == pytest.approx([0.2, 0.3, 1.1, 1.1, 1.1])
    assert [r["seeds_agreeing"] for r in rows] == [3] * 5
    # Holm over 5: 0.00274 x 5, then 0.0351 x 2 = 0.0702, 0.0742 x 1.
    holm = [r["p_holm"] for r in rows]
    assert holm == pytest.approx([p2(ts[0]), 2 * p2(ts[1]), 5 * p2(ts[2]), 5 * p2(ts[2]),
                                  5 * p2(ts[2])])
    assert [r["verdict"] for r in rows] == ["not shown"] * 2 + ["holds"] * 3
    assert out["overoptimisation_shown"] is False
    assert out["peaks"] == {"0": "beta=0.5", "1": "beta=0.5", "2": "beta=0.5"}
    assert [m["setting"] for m in out["means"]] == ["SFT", "beta=0.5", "beta=0.05"]
    md = open(paths[0]).read()
    assert "| beta=0.05 | 5.000 [4.000, 6.000] | 0.400 [0.300, 0.500] |" in md
    assert "**not shown**." in md
    assert "| RM score rises from SFT to beta=0.5 | +1.100 [" in md and "| 3/3 | 3 |" in md


def test_overopt_verdicts_shown_and_refused(tmp_path):
    kl = {"SFT": [0.0] * 3, "beta=0.5": [0.5] * 3, "beta=0.01": [9.0] * 3}
    gold = {"SFT": [0.5] * 3, "beta=0.5": [0.70, 0.71, 0.72], "beta=0.01": [0.1, 0.12, 0.11]}
    rm = {"SFT": [0.0] * 3, "beta=0.5": [1.0, 1.01, 1.02], "beta=0.01": [3.0, 3.0, 3.01]}
    _overopt(tmp_path, gold, rm, kl)
    out = json.load(open(st.overopt_verdicts(str(tmp_path), main="beta=0.5")[1]))
    assert out["overoptimisation_shown"] is True
    assert all(r["verdict"] == "holds" for r in out["tests"])
    with pytest.raises(ValueError, match="no setting 'beta=0.2'"):
        st.overopt_verdicts(str(tmp_path), main="beta=0.2")


def test_mock_overopt_reads_the_initial_policy_from_its_own_panel(tmp_path):
    # configs/sweeps/overoptimization.py: the base is the initial policy (gold only,
    # from the held-out trajectory panel); the ladder's settings carry both scores.
    lay = st.MOCK_OVEROPT
    fields = ["figure", "panel", "curve", "point", "setting", "seeds", "x_seeds", "y_seeds"]
    rows = [(lay.base_panel, lay.base_curve, "", [0.0] * 3, [0.0, 0.01, -0.01]),
            (lay.gold_panel, lay.gold_curve, "beta=0", [50.0] * 3, [-1.0, -1.1, -0.9]),
            (lay.gold_panel, lay.gold_curve, "beta=0.15", [2.0] * 3, [0.5, 0.6, 0.55]),
            (lay.rm_panel, lay.rm_curve, "beta=0", [50.0] * 3, [3.0, 3.1, 3.2]),
            (lay.rm_panel, lay.rm_curve, "beta=0.15", [2.0] * 3, [2.0, 2.0, 2.1])]
    with open(tmp_path / lay.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        for k, (panel, curve, setting, xs, ys) in enumerate(rows):
            w.writerow({"figure": "f", "panel": panel, "curve": curve, "point": k,
                        "setting": setting, "seeds": SEEDS,
                        "x_seeds": ";".join(map(str, xs)), "y_seeds": ";".join(map(str, ys))})
    md, js = st.overopt_verdicts(str(tmp_path), layout=lay)
    out = json.load(open(js))
    assert [r["claim"] for r in out["tests"]] == [
        "gold: beta=0.15 above initial policy", "gold falls from beta=0.15 to beta=0",
        "RM score rises from beta=0.15 to beta=0", "RM score rises from beta=0.15 to beta=0"]
    # Paired differences 0.5/0.59/0.56 against the initial policy's seeds.
    assert out["tests"][0]["effect"] == pytest.approx((0.5 + 0.59 + 0.56) / 3)
    assert [m["setting"] for m in out["means"]] == ["initial policy", "beta=0.15", "beta=0"]
    assert out["means"][0]["rm_score"]["n"] == 0
    assert "| initial policy | 0.000 [0.000, 0.000] | 0.000 [" in open(md).read()
    assert "| gold score | RM score |" in open(md).read()


def test_rm_scaling_slopes_and_width_tests_by_hand(tmp_path):
    fields = ["figure", "panel", "curve", "point", "x_mean", "seeds", "y_seeds"]
    acc = {"width 32": {512: [0.4, 0.5, 0.6], 1024: [0.6, 0.6, 0.9]},
           "width 64": {512: [0.5, 0.5, 0.6], 1024: [0.7, 0.8, 0.7]}}
    with open(tmp_path / st.RM_SCALING_CSV, "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        for curve, pts in acc.items():
            for k, (n, ys) in enumerate(pts.items()):
                w.writerow({"figure": "f", "panel": st.RM_SCALING_PANEL, "curve": curve,
                            "point": k, "x_mean": n, "seeds": SEEDS,
                            "y_seeds": ";".join(map(str, ys))})
    md, js = st.rm_scaling_verdicts(str(tmp_path))
    rows = json.load(open(js))["tests"]
    assert [(r["claim"], r["size"]) for r in rows] == [
        ("width 32: accuracy rises per doubling of labels", ""),
        ("width 64: accuracy rises per doubling of labels", ""),
        ("width 64 above width 32", "512 labels"), ("width 64 above width 32", "1024 labels")]
    # Two counts one doubling apart: each seed's slope is its difference.
    assert rows[0]["effect"] == pytest.approx((0.2 + 0.1 + 0.3) / 3)
    assert rows[1]["effect"] == pytest.approx(0.2)
    # slopes 0.2, 0.3, 0.1: mean 0.2, sd 0.1, t = 0.2 / (0.1 / sqrt 3)
    assert rows[1]["t"] == pytest.approx(2 * math.sqrt(3))
    assert rows[2]["effect"] == pytest.approx(1.6 / 3 - 0.5)
    assert rows[3]["effect"] == pytest.approx(2.2 / 3 - 0.7)
    assert rows[0]["r2_of_mean"] == pytest.approx(1.0)
    assert "| width 32 | 0.500 [" in open(md).read()


def test_overopt_replication_tests_only_its_seeds(tmp_path):
    kl = {"SFT": [0.0] * 3, "beta=0.5": [0.5] * 3, "beta=0.01": [9.0] * 3}
    gold = {"SFT": [0.5] * 3, "beta=0.5": [0.9, 0.70, 0.72], "beta=0.01": [0.1, 0.12, 0.11]}
    rm = {"SFT": [0.0] * 3, "beta=0.5": [1.0, 1.01, 1.02], "beta=0.01": [3.0, 3.0, 3.01]}
    _overopt(tmp_path, gold, rm, kl)
    md, js = st.overopt_verdicts(str(tmp_path), main="beta=0.5", seeds=(1, 2),
                                 name="verdicts_replication")
    assert os.path.basename(js) == "verdicts_replication.json"
    assert not os.path.exists(tmp_path / "verdicts.json")
    out = json.load(open(js))
    # Seeds 1 and 2 only: gold 0.70, 0.72 against SFT's 0.5.
    assert out["seeds"] == [1, 2] and out["tests"][0]["n"] == 2
    assert out["tests"][0]["effect"] == pytest.approx(0.21)
    assert out["peaks"] == {"1": "beta=0.5", "2": "beta=0.5"}
    assert "(seeds 1, 2 only)" in open(md).read().splitlines()[0]


def test_frontier_verdicts_by_hand(tmp_path):
    g = "held-out gold vs KL"
    rows = [("initial policy", "0", "0;0;0", "0;0;0"), ("gold reward", "0", "1;1;1", "0.4;0.5;0.6"),
            ("RM", "0", "1;1;1", "0.1;0.2;0.3")]
    (tmp_path / "f.csv").write_text(
        "figure,panel,curve,point,x_mean,seeds,x_seeds,y_seeds,runs\n" + "".join(
            f"f,{g},{c},{p},1,0;1;2,{x},{y},r-s0;r-s1;r-s2\n" for c, p, x, y in rows))
    layout = st.FrontierTests("f.csv", g, "gold reward", (1.0,), "t")
    md, js = st.frontier_verdicts(str(tmp_path), layout)
    (r,) = json.load(open(js))["rows"]
    # At KL 1: RM (0.1, 0.2, 0.3) against gold (0.4, 0.5, 0.6): Welch, one row.
    assert r["diff"] == pytest.approx(-0.3) and r["with"] == pytest.approx([0.1, 0.2, 0.3])
    assert r["p"] == pytest.approx(stats.p_value([0.1, 0.2, 0.3], [0.4, 0.5, 0.6], "welch"))
    assert r["p_holm"] == pytest.approx(r["p"])
    text = open(md).read()
    assert "| RM vs gold reward | 1 | 0.200 [" in text and "| lower |" in text
    tested = json.load(open(js))["tested_at"]["command"]
    assert tested.endswith("f.csv --panel 'held-out gold vs KL' --against 'gold reward' --budgets 1")
    _, js2 = st.frontier_verdicts(str(tmp_path), layout, seeds=(1, 2), name="verdicts_replication")
    assert json.load(open(js2))["rows"][0]["with"] == pytest.approx([0.2, 0.3])


def test_arch_verdicts_by_hand(tmp_path):
    rows = [("RM acc", "gpt2", "0;0;0", "0.7;0.8;0.9"), ("RM acc", "llama", "1;1;1", "0.7;0.8;0.9"),
            ("gold vs KL", "gpt2", "3;3;3", "0.5;0.6;0.7"),
            ("gold vs KL", "llama", "2;3;4", "0.9;1.0;1.1")]
    (tmp_path / st.ARCH_CSV).write_text(
        "figure,panel,curve,point,x_seeds,y_seeds\n" + "".join(
            f"a,{p},{c},0,{x},{y}\n" for p, c, x, y in rows))
    md, js = st.arch_verdicts(str(tmp_path))
    out = json.load(open(js))
    same, gold = out["tests"]
    # Equal seeds: t 0, p 1. Gold: +0.4 with sd 0.1 each side, Welch t = 0.4 / sqrt(2 * 0.01 / 3).
    assert same["effect"] == pytest.approx(0.0) and same["p"] == pytest.approx(1.0)
    assert gold["t"] == pytest.approx(0.4 / math.sqrt(0.02 / 3))
    assert gold["p_holm"] == pytest.approx(2 * gold["p"])
    assert (same["verdict"], gold["verdict"]) == ("no difference shown", "differs")
    text = open(md).read()
    assert "| gold vs KL | llama | 1.000 [" in text and "| 3.00 | 3 |" in text
    assert "| RM acc | gpt2 | 0.800 [" in text and "| - | 3 |" in text

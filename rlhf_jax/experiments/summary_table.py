"""Verdicts of the summarisation sweeps over seeds: Stiennon's Fig. 1 claims, tested.

    python -m rlhf_jax.experiments.summary_table results/world_fig1
    python -m rlhf_jax.experiments.summary_table results/world_copying
    python -m rlhf_jax.experiments.summary_table results/world_copying_skim
    python -m rlhf_jax.experiments.summary_table results/world_copying_lead
    python -m rlhf_jax.experiments.summary_table results/world_overopt
    python -m rlhf_jax.experiments.summary_table results/overoptimization
    python -m rlhf_jax.experiments.summary_table results/rm_scaling
    python -m rlhf_jax.experiments.summary_table results/ziegler_fig2
    python -m rlhf_jax.experiments.summary_table results/study
    python -m rlhf_jax.experiments.summary_table results/architectures

Reads the CSVs `configs/sweeps/world_fig1.py` writes (one point per model
size, the per-seed values in `y_seeds`) and tests each claim of the paper's
Fig. 1 at every size, over seeds:

- HF (PPO) is preferred to the reference more than half the time, by the
  noise-free gold judge: Student's t of the seeds' shares against 0.5;
- HF is preferred more often than SFT: t of the per-seed differences HF - SFT
  against 0 (paired: seed k's HF and SFT are evaluated on the same stories);
- pretrained-only is the lowest policy: paired t of (the next-lowest policy -
  pretrained) against 0;
- length-controlled (logistic fit read at the reference's length), HF stays
  above 0.5: t against 0.5;
- HF's preference rises with size: Welch's t between adjacent sizes.

And for `configs/sweeps/world_copying.py`, `world_copying_skim.py` and
`world_copying_lead.py`
(`copying_verdicts`): under each labeller, HF's sentence novelty against
SFT's and the references' (paired t, with the ratio of means) and HF's bigram
LCS with the story against SFT's; HF's novelty under the two labellers (Welch).

And for `configs/sweeps/world_overopt.py` (`overopt_verdicts`): Stiennon's
Fig. 5, the gold preference against the reference and the RM score along a
ladder of fixed KL coefficients from the same SFT model and RM per seed; the
same tests for `configs/sweeps/overoptimization.py` (mock sentiment: the gold
score, from the initial policy, `MOCK_OVEROPT`). And for
`configs/sweeps/rm_scaling.py` (`rm_scaling_verdicts`): Stiennon's Fig. 6,
RM accuracy per doubling of labels at each width, and each width against the
next smaller one at each label count. And for `configs/sweeps/ziegler_fig2.py`
and `configs/sweeps/study.py` (`frontier_verdicts`): methods at equal KL, each
seed's held-out gold-vs-KL frontier read at fixed budgets (`study_table`).
And for `configs/sweeps/architectures.py` (`arch_verdicts`): each architecture
against GPT-2 on every panel (Welch).

All two-sided, Holm-corrected over each sweep's family. A claim "holds" when the
effect has the claimed sign and its adjusted p is below `ALPHA`; otherwise
the verdict says "not shown" or "reversed", with the numbers. The world
sweeps' aggregation writes `verdicts.md` and `verdicts.json` beside the
figures (`Sweep.tables`).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os

import numpy as np

from rlhf_jax.experiments import frontier, stats, study_table
from rlhf_jax.experiments.sweep import git_commit

ALPHA = 0.05
GOLD_CSV = "fig1_preference_vs_size.csv"
LC_CSV = "fig1_length_controlled.csv"
GOLD_PANEL = "by the noise-free gold judge"
LABELLER_PANEL = "by a noisy held-out labeller"
LC_PANEL = "length-controlled, gold judge"
PRETRAINED, SFT, HF = "pretrained only", "SFT", "HF (PPO)"


def read_panel(path: str, panel: str, x: str = "params",
               sweep: str = "world_fig1") -> dict[str, list[dict]]:
    """{curve: [{x, "seeds", "y"} per point, in the CSV's order]} of one panel (`x`:
    the name given to the point's x_mean, the model size for world_fig1)."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("panel") == panel]
    if not rows:
        raise ValueError(f"{path}: no rows of panel {panel!r}; is it {sweep}'s CSV?")
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["curve"], []).append(
            {x: float(r["x_mean"]), "seeds": r["seeds"].split(";"),
             "y": np.asarray(study_table.read_floats(r["y_seeds"]), np.float64)})
    return out


def _paired(a: dict, b: dict, what: str) -> np.ndarray:
    """Per-seed a - b, checking both list the same seeds in the same order."""
    if a["seeds"] != b["seeds"]:
        raise ValueError(f"{what}: seeds differ ({a['seeds']} vs {b['seeds']})")
    return a["y"] - b["y"]


def _test(claim: str, size: str, effect: np.ndarray, *, t_p, what: str) -> dict:
    """One claim's row. `t_p`: a function giving (t, p) of `effect`'s test; a seed
    with no value (NaN, e.g. no summary sentence to measure) leaves it untested."""
    if not np.all(np.isfinite(effect)):
        return {"claim": claim, "size": size, "effect": float("nan"),
                "effect_ci95": [float("nan")] * 2, "n": int(np.isfinite(effect).sum()),
                "t": float("nan"), "p": float("nan"), "test": what}
    ci = stats.bootstrap_ci(effect)
    t, p = t_p()
    return {"claim": claim, "size": size, "effect": ci.mean, "effect_ci95": [ci.lo, ci.hi],
            "n": ci.n, "t": t, "p": p, "test": what}


def _welch_row(claim: str, size: str, b: np.ndarray, a: np.ndarray) -> dict:
    """The claim mean(b) > mean(a) over independent seeds, by Welch's t. The
    effect's interval folds in both sides' bootstrap intervals (not paired)."""
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return _test(claim, size, np.asarray([np.nan]), t_p=None, what="Welch t")
    ca, cb = stats.bootstrap_ci(a), stats.bootstrap_ci(b)
    t, p = stats.welch(b, a)
    return {"claim": claim, "size": size, "effect": cb.mean - ca.mean,
            "effect_ci95": [cb.lo - ca.hi, cb.hi - ca.lo], "n": min(ca.n, cb.n),
            "t": t, "p": p, "test": "Welch t"}


def fig1_tests(gold: dict[str, list[dict]], lc: dict[str, list[dict]]) -> list[dict]:
    """Every Fig. 1 claim as a test row (see the module doc), Holm-adjusted."""
    for name in (PRETRAINED, SFT, HF):
        if name not in gold:
            raise ValueError(f"world_fig1 CSV: no curve {name!r} (curves: {sorted(gold)})")
    sizes = len(gold[HF])
    rows = []
    for k in range(sizes):
        size = f"{gold[HF][k]['params'] / 1e6:.2f}M"
        hf, sft, pre = gold[HF][k], gold[SFT][k], gold[PRETRAINED][k]
        rows.append(_test("HF preferred to the reference (> 0.5)", size, hf["y"] - 0.5,
                          t_p=lambda: stats.one_sample_t(hf["y"], 0.5), what="t vs 0.5"))
        d = _paired(hf, sft, f"HF vs SFT at {size}")
        rows.append(_test("HF above SFT", size, d, t_p=lambda: stats.one_sample_t(d, 0.0),
                          what="paired t"))
        others = [c for c in gold if c != PRETRAINED]
        nearest = min(others, key=lambda c: gold[c][k]["y"].mean())
        d = _paired(gold[nearest][k], pre, f"{nearest} vs pretrained at {size}")
        rows.append(_test(f"pretrained-only lowest (vs {nearest}, the next lowest)", size, d,
                          t_p=lambda: stats.one_sample_t(d, 0.0), what="paired t"))
        if HF in lc:
            y = lc[HF][k]["y"]
            rows.append(_test("HF length-controlled > 0.5", size, y - 0.5,
                              t_p=lambda: stats.one_sample_t(y, 0.5), what="t vs 0.5"))
    for k in range(sizes - 1):
        a, b = gold[HF][k], gold[HF][k + 1]
        size = f"{a['params'] / 1e6:.2f}M -> {b['params'] / 1e6:.2f}M"
        rows.append(_welch_row("HF rises with size", size, b["y"], a["y"]))
    return _holm_verdicts(rows)


def _holm_verdicts(rows: list[dict]) -> list[dict]:
    """Adds each row's Holm-adjusted p (over `rows`, one family) and its verdict."""
    for r, adj in zip(rows, stats.holm([r["p"] for r in rows])):
        r["p_holm"] = adj
        r["verdict"] = verdict(r["effect"], adj)
    return rows


def verdict(effect: float, p_holm: float, alpha: float = ALPHA) -> str:
    if not np.isfinite(p_holm):
        return "not testable (a seed has no value)"
    if p_holm < alpha:
        return "holds" if effect > 0 else "reversed"
    if effect == 0:
        return "not shown (no difference)"
    return "not shown" if effect > 0 else "not shown (opposite sign)"


def seed_interval(v: np.ndarray) -> dict:
    """{"mean", "ci95", "n"} over the seeds with a value (a NaN seed does not count)."""
    y = v[np.isfinite(v)]
    ci = stats.bootstrap_ci(y) if len(y) else stats.Interval(*[float("nan")] * 3, 0)
    return {"mean": ci.mean, "ci95": [ci.lo, ci.hi], "n": ci.n}


def means_table(panels: dict[str, dict[str, list[dict]]]) -> list[dict]:
    """Per panel, curve and size: the seed mean, its 95% bootstrap interval and n."""
    return [{"panel": panel, "policy": curve, "params": p["params"], **seed_interval(p["y"])}
            for panel, curves in panels.items() for curve, pts in curves.items() for p in pts]


def _f(v: float) -> str:
    return f"{v:+.3f}" if abs(v) < 100 else f"{v:.3g}"


def markdown(means: list[dict], tests: list[dict]) -> str:
    lines = ["# Stiennon Fig. 1 in miniature: tests over seeds", "",
             "Share of held-out summaries preferred to the reference (T = 0): seed mean "
             "[95% bootstrap interval over seeds], n seeds.", "",
             "| panel | policy | parameters | mean [95% CI] | n |", "|---|---|---|---|---|"]
    for m in means:
        lines.append(f"| {m['panel']} | {m['policy']} | {m['params'] / 1e6:.2f}M | "
                     f"{m['mean']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}] | {m['n']} |")
    lines += ["", f"Claims: two-sided tests over seeds, Holm-adjusted over all {len(tests)} "
              f"rows; a claim holds when its effect has the claimed sign and adjusted "
              f"p < {ALPHA}.", "",
              "| claim | size | effect [95% CI] | n | test | t | p | Holm p | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in tests:
        lines.append(f"| {r['claim']} | {r['size']} | {_f(r['effect'])} "
                     f"[{_f(r['effect_ci95'][0])}, {_f(r['effect_ci95'][1])}] | {r['n']} | "
                     f"{r['test']} | {r['t']:.2f} | {r['p']:.3g} | {r['p_holm']:.3g} | "
                     f"**{r['verdict']}** |")
    return "\n".join(lines) + "\n"


def fig1_verdicts(out_dir: str) -> list[str]:
    """Reads world_fig1's CSVs in `out_dir`, writes verdicts.md and verdicts.json there."""
    gold_path, lc_path = os.path.join(out_dir, GOLD_CSV), os.path.join(out_dir, LC_CSV)
    for p in (gold_path, lc_path):
        if not os.path.isfile(p):
            raise ValueError(f"{p}: missing; run the world_fig1 sweep's aggregation first")
    gold = read_panel(gold_path, GOLD_PANEL)
    lc = read_panel(lc_path, LC_PANEL)
    tests = fig1_tests(gold, lc)
    means = means_table({GOLD_PANEL: gold, LABELLER_PANEL: read_panel(gold_path, LABELLER_PANEL),
                         LC_PANEL: lc})
    return _write_verdicts(out_dir, markdown(means, tests), {"means": means, "tests": tests})


# --------------------------------------------------------------------------
# world_copying(_skim): does the RL policy copy under a labeller who checks
# accuracy (the accuracy-only, facts or skim judge) and not under the full one?

COPYING_CSV = "copying.csv"
NOVELTY_PANEL = "sentence novelty"
LCS_PANEL = "bigram LCS with the story"
FULL, ACCURACY = "labels: full judge", "labels: accuracy only"
FACTS, SKIM = "labels: facts judge", "labels: skim judge"
# The labellers a copying sweep sets against the full judge, as its claims name them.
COPIER_LABELLERS = {ACCURACY: "accuracy-only", FACTS: "facts-judge", SKIM: "skim-judge"}
# The copying sweep's x positions (configs/sweeps/world_copying.py POLICIES).
POSITIONS = {"pretrained": 0, "SFT": 1, "HF": 2, "best-of-N": 3, "reference": 4}
COPIER_RATIO = 0.5  # "far below": under half SFT's novelty


def _by_position(curve: list[dict]) -> dict[str, dict]:
    names = {v: k for k, v in POSITIONS.items()}
    return {names[int(round(p["params"]))]: p for p in curve}


def copier_labels(novelty: dict[str, list[dict]]) -> str:
    """The curve set against the full judge's in a copying CSV (`COPIER_LABELLERS`)."""
    found = [c for c in COPIER_LABELLERS if c in novelty]
    if FULL not in novelty or len(found) != 1:
        raise ValueError(f"copying CSV: expected curve {FULL!r} and one of "
                         f"{sorted(COPIER_LABELLERS)} (curves: {sorted(novelty)})")
    return found[0]


def copying_tests(novelty: dict[str, list[dict]], lcs: dict[str, list[dict]]) -> list[dict]:
    """Ziegler's smart copiers as tests over seeds (paired: one seed's policies are
    evaluated on the same stories); Holm-adjusted."""
    copier = copier_labels(novelty)
    rows = []
    for labels in (copier, FULL):
        nov, lc = _by_position(novelty[labels]), _by_position(lcs[labels])
        who = labels.split(": ")[1]
        for other in ("SFT", "reference"):
            d = _paired(nov["HF"], nov[other], f"{labels}: HF vs {other}")
            rows.append(_test(f"{who}: HF novelty below {other}'s", "", -d,
                              t_p=lambda: stats.one_sample_t(-d, 0.0), what="paired t"))
            rows[-1]["ratio"] = float(nov["HF"]["y"].mean() / nov[other]["y"].mean())
        d = _paired(lc["HF"], lc["SFT"], f"{labels}: HF vs SFT LCS")
        rows.append(_test(f"{who}: HF bigram LCS above SFT's", "", d,
                          t_p=lambda: stats.one_sample_t(d, 0.0), what="paired t"))
    a, f = _by_position(novelty[copier])["HF"], _by_position(novelty[FULL])["HF"]
    rows.append(_welch_row(f"HF novelty lower under {COPIER_LABELLERS[copier]} labels than "
                           "under full", "", f["y"], a["y"]))
    return _holm_verdicts(rows)


def copying_verdicts(out_dir: str) -> list[str]:
    """A copying sweep's tests (`copying_tests`) into verdicts.md / verdicts.json; the
    smart-copier verdict needs HF's novelty under half SFT's and the references'
    (`COPIER_RATIO`) beside a significant drop, under the copier labeller."""
    path = os.path.join(out_dir, COPYING_CSV)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: missing; run the copying sweep's aggregation first")
    novelty, lcs = read_panel(path, NOVELTY_PANEL), read_panel(path, LCS_PANEL)
    tests = copying_tests(novelty, lcs)
    labels = copier_labels(novelty)
    below = [r for r in tests
             if r["claim"].startswith(f"{labels.split(': ')[1]}: HF novelty below")]
    copier = all(r["verdict"] == "holds" and r["ratio"] < COPIER_RATIO for r in below)
    means = means_table({NOVELTY_PANEL: novelty, LCS_PANEL: lcs})
    for m in means:  # x is the policy's position, not a parameter count
        m["params"] = {v: k for k, v in POSITIONS.items()}[int(round(m["params"]))]
    lines = ["# Copying under two labellers: tests over seeds", "",
             "| panel | labels | policy | mean [95% CI] | n |", "|---|---|---|---|---|"]
    for m in means:
        lines.append(f"| {m['panel']} | {m['policy']} | {m['params']} | {m['mean']:.3f} "
                     f"[{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}] | {m['n']} |")
    lines += ["", f"Two-sided tests over seeds, Holm-adjusted over {len(tests)} rows.", "",
              "| claim | effect [95% CI] | ratio HF / other | n | test | t | p | Holm p | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in tests:
        lines.append(_claim_row(r, f"{r['ratio']:.2f}" if "ratio" in r else "-"))
    lines += ["", f"Smart copier under {COPIER_LABELLERS[labels]} labels (HF novelty under "
              f"{COPIER_RATIO:g}x SFT's and the references', significantly): "
              f"**{'yes' if copier else 'no'}**."]
    return _write_verdicts(out_dir, "\n".join(lines) + "\n",
                           {"smart_copier": copier, "means": means, "tests": tests})


def _claim_row(r: dict, extra: str) -> str:
    """A claim's markdown row; `extra`: the cell between the effect and n."""
    return (f"| {r['claim']} | {_f(r['effect'])} [{_f(r['effect_ci95'][0])}, "
            f"{_f(r['effect_ci95'][1])}] | {extra} | {r['n']} | {r['test']} | {r['t']:.2f} | "
            f"{r['p']:.3g} | {r['p_holm']:.3g} | **{r['verdict']}** |")


def _write_verdicts(out_dir: str, text: str, payload: dict, name: str = "verdicts",
                    command: str | None = None) -> list[str]:
    """NAME.md (`text`) and NAME.json (alpha, correction, `payload`)."""
    md, js = os.path.join(out_dir, f"{name}.md"), os.path.join(out_dir, f"{name}.json")
    with open(md, "w") as f:
        f.write(text)
    with open(js, "w") as f:
        # The commit of the code that ran the tests (the CSV's own summary.json
        # names the commit that trained and aggregated the runs).
        json.dump({"alpha": ALPHA, "correction": "holm",
                   "tested_at": {**git_commit(),
                                 "command": command or f"python -m rlhf_jax.experiments."
                                                       f"summary_table {out_dir}"},
                   **payload}, f, indent=1)
    return [md, js]


# --------------------------------------------------------------------------
# world_overopt: does the gold preference peak and fall while the RM rises?

OVEROPT_CSV = "overoptimization_summaries.csv"
OVEROPT_GOLD_PANEL = "held-out: preferred to the reference (gold)"
OVEROPT_RM_PANEL = "held-out: RM score (each seed its own RM)"
OVEROPT_GOLD, OVEROPT_RM = "gold judge", "RM score"
SFT_SETTING = "SFT"


@dataclasses.dataclass(frozen=True)
class OveroptLayout:
    """Where a ladder sweep's CSV keeps the numbers the over-optimisation tests read.

    `base`: the policy every rung starts from (its gold from `base_panel`'s
    `base_curve`, the first point); `main`: the rung fixed before the data (the
    config's own coefficient) that must beat the base."""

    csv: str
    gold_panel: str
    gold_curve: str
    rm_panel: str
    rm_curve: str
    base: str
    main: str
    gold_name: str
    title: str
    base_panel: str | None = None  # None: the base is a setting of the gold curve
    base_curve: str | None = None


WORLD_OVEROPT = OveroptLayout(
    OVEROPT_CSV, OVEROPT_GOLD_PANEL, OVEROPT_GOLD, OVEROPT_RM_PANEL, OVEROPT_RM, SFT_SETTING,
    "beta=0.5", "preferred to the reference (gold)",
    "Over-optimisation on summaries: tests over seeds")
# configs/sweeps/overoptimization.py: fixed coefficients from the initial policy; the
# offline default starts its adaptive controller at 0.15.
MOCK_OVEROPT = OveroptLayout(
    "overoptimization.csv", "held-out eval after training, one point per beta", "gold score",
    "held-out eval after training, one point per beta", "RM score", "initial policy",
    "beta=0.15", "gold score", "Over-optimisation on mock sentiment: tests over seeds",
    base_panel="held-out gold vs KL along training, Gao RL fit", base_curve="initial policy")


def read_settings(path: str, panel: str, curve: str, seeds=None) -> dict[str, dict]:
    """{setting: {"seeds", "x", "y"}} of one curve, in the CSV's order (x: per seed;
    `seeds`: only these seeds' values, None: all)."""
    with open(path, newline="") as f:
        rows = [study_table.keep_seeds(r, seeds) for r in csv.DictReader(f)
                if r.get("panel") == panel and r["curve"] == curve]
    if not rows:
        raise ValueError(f"{path}: no rows of panel {panel!r}, curve {curve!r}; is it "
                         f"world_overopt's CSV?")
    return {r["setting"]: {"seeds": r["seeds"].split(";"),
                           "x": np.asarray(study_table.read_floats(r["x_seeds"]), np.float64),
                           "y": np.asarray(study_table.read_floats(r["y_seeds"]), np.float64)}
            for r in rows}


def ladder(gold: dict[str, dict], base: str = SFT_SETTING) -> list[str]:
    """The settings in KL order: the base first, then by the seeds' mean KL."""
    return sorted(gold, key=lambda k: (k != base, float(np.nanmean(gold[k]["x"]))))


def overopt_tests(gold: dict[str, dict], rm: dict[str, dict], main: str,
                  base: str = SFT_SETTING) -> list[dict]:
    """Stiennon's Fig. 5 as paired tests over seeds (one seed's runs share its RM and
    are evaluated on the same queries), Holm-adjusted: the config's own coefficient
    `main` is above the base policy by the gold judge; from `main` to the highest-KL
    setting the gold falls while the RM score rises; and the RM score rises at every
    step of the ladder in KL order (from the base too where its RM score is known).
    `main` is fixed before the data, not picked as the peak, so the tests are not
    optimistic."""
    for name in (base, main):
        if name not in gold:
            raise ValueError(f"over-optimisation CSV: no setting {name!r} (settings: "
                             f"{sorted(gold)})")
    if main not in rm:
        raise ValueError(f"over-optimisation CSV: no RM score for {main!r}")
    order = ladder(gold, base)
    far = order[-1]
    rows = []

    def paired(claim, a, b, of):
        d = _paired(of[a], of[b], claim)
        rows.append(_test(claim, "", d, t_p=lambda: stats.one_sample_t(d, 0.0),
                          what="paired t"))
        rows[-1]["seeds_agreeing"] = int(np.sum(d > 0))  # seeds with the claimed sign

    paired(f"gold: {main} above {base}", main, base, gold)
    paired(f"gold falls from {main} to {far}", main, far, gold)
    paired(f"RM score rises from {main} to {far}", far, main, rm)
    for a, b in zip(order, order[1:]):
        if a in rm:
            paired(f"RM score rises from {a} to {b}", b, a, rm)
    return _holm_verdicts(rows)


def overopt_verdicts(out_dir: str, main: str | None = None,
                     layout: OveroptLayout = WORLD_OVEROPT, seeds=None,
                     name: str = "verdicts") -> list[str]:
    """A ladder sweep's tests (`overopt_tests`) into verdicts.md / verdicts.json, with
    each setting's KL, gold and RM score (seed mean [95% CI]) and the setting where
    each seed's gold peaks. Over-optimisation is shown when the first three claims
    hold: the policy at `main` (default: the layout's) beats the base, and beyond it
    the gold falls while the RM score rises. `seeds`: only these seeds (a
    replication on seeds that were not in an earlier test), written to NAME.md."""
    main = main or layout.main
    path = os.path.join(out_dir, layout.csv)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: missing; run the sweep's aggregation first")
    gold = read_settings(path, layout.gold_panel, layout.gold_curve, seeds)
    rm = read_settings(path, layout.rm_panel, layout.rm_curve, seeds)
    if layout.base_panel is not None:
        gold = {layout.base: next(iter(read_settings(path, layout.base_panel,
                                                     layout.base_curve, seeds).values())),
                **gold}
    tests = overopt_tests(gold, rm, main, layout.base)
    shown = all(r["verdict"] == "holds" for r in tests[:3])
    order = ladder(gold, layout.base)
    names = gold[order[0]]["seeds"]
    ys = np.stack([gold[k]["y"] for k in order])  # (settings, seeds)
    peaks = {s: order[int(np.nanargmax(ys[:, i]))] for i, s in enumerate(names)}
    nan = {"mean": float("nan"), "ci95": [float("nan")] * 2, "n": 0}
    means = [{"setting": k, "kl": seed_interval(gold[k]["x"]),
              "gold_pref": seed_interval(gold[k]["y"]),
              "rm_score": seed_interval(rm[k]["y"]) if k in rm else nan}
             for k in order]
    lines = [f"# {layout.title}" + _seeds_note(seeds), "",
             "Held-out evaluation: seed mean [95% bootstrap interval over seeds].", "",
             f"| setting | KL [nats] | {layout.gold_name} | RM score | n |",
             "|---|---|---|---|---|"]
    for m in means:
        cells = [f"{m[k]['mean']:.3f} [{m[k]['ci95'][0]:.3f}, {m[k]['ci95'][1]:.3f}]"
                 if m[k]["n"] else "-" for k in ("kl", "gold_pref", "rm_score")]
        lines.append(f"| {m['setting']} | " + " | ".join(cells) + f" | {m['gold_pref']['n']} |")
    lines += ["", "Peak of the gold, per seed: " +
              ", ".join(f"seed {s}: {k}" for s, k in peaks.items()) + ".", "",
              f"Two-sided paired tests over seeds, Holm-adjusted over {len(tests)} rows.", "",
              "| claim | effect [95% CI] | seeds with its sign | n | test | t | p | Holm p | "
              "verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in tests:
        lines.append(_claim_row(r, f"{r['seeds_agreeing']}/{r['n']}"))
    lines += ["", f"Over-optimisation ({main} above {layout.base}; from there to {order[-1]} "
              f"the gold falls while the RM score rises): "
              f"**{'shown' if shown else 'not shown'}**."]
    return _write_verdicts(out_dir, "\n".join(lines) + "\n",
                           {"overoptimisation_shown": shown, "main": main, "base": layout.base,
                            "seeds": seeds and list(seeds), "peaks": peaks, "means": means,
                            "tests": tests}, name)


def _seeds_note(seeds) -> str:
    return "" if seeds is None else f" (seeds {', '.join(map(str, seeds))} only)"


@dataclasses.dataclass(frozen=True)
class FrontierTests:
    """Curves compared at fixed KL budgets on their held-out frontiers: every curve
    against the one whose label starts with `against`, or (None) the study's
    `study_table.PARTS`."""

    csv: str
    panel: str
    against: str | None
    budgets: tuple[float, ...]
    title: str


ZIEGLER_FIG2 = FrontierTests(
    "ziegler_fig2.csv", "held-out gold vs KL along training", "gold reward",
    # Budgets every gold-reward seed reaches: it stops near 2 nats under the
    # adaptive controller's 3-nat target.
    (0.5, 1.0, 1.5), "Ziegler Fig. 2: each RM against the gold reward at equal KL")
STUDY = FrontierTests("study.csv", study_table.GOLD_PANEL, None, frontier.BUDGETS,
                      "Which parts were necessary: each part against a method without it, "
                      "at equal KL")


def frontier_verdicts(out_dir: str, layout: FrontierTests, seeds=None,
                      name: str = "verdicts") -> list[str]:
    """`layout`'s comparisons (`study_table`: each seed's held-out frontier read at
    each budget; Welch's t, Holm over every tested row) into NAME.md / NAME.json,
    with every point's mean, interval and seeds. `seeds`: only these seeds."""
    path = os.path.join(out_dir, layout.csv)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: missing; run the sweep's aggregation first")
    points = study_table.read_points(path, layout.panel, seeds)
    parts = (study_table.PARTS if layout.against is None
             else study_table.against(points, layout.against))
    rows = study_table.parts_rows(points, parts, layout.budgets)
    flags = "" if layout.panel == study_table.GOLD_PANEL else f" --panel {layout.panel!r}"
    flags += "" if layout.against is None else f" --against {layout.against!r}"
    flags += f" --budgets {','.join(f'{b:g}' for b in layout.budgets)}"
    flags += "" if seeds is None else f" --seeds {','.join(map(str, seeds))}"
    tested = sum(np.isfinite(r.get("p", np.nan)) for r in rows)
    text = "\n".join([
        f"# {layout.title}" + _seeds_note(seeds), "",
        f"Panel {layout.panel!r}: each seed's frontier (linear in sqrt(KL), anchored at "
        f"the initial policy) read at each budget; mean [95% bootstrap interval over seeds] "
        f"(n). Two-sided Welch's t, Holm-adjusted over the {tested} tested rows; a side "
        f"that did not reach a budget on every seed is not compared there.", "",
        study_table.parts_table(points, parts, layout.budgets), "",
        "Every point:", "", study_table.methods_table(points), ""])

    def plain(r):
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()}

    return _write_verdicts(out_dir, text, {"panel": layout.panel, "against": layout.against,
                                           "budgets": list(layout.budgets),
                                           "seeds": seeds and list(seeds),
                                           "rows": [plain(r) for r in rows]},
                           name, f"python -m rlhf_jax.experiments.study_table {path}{flags}")


# --------------------------------------------------------------------------
# rm_scaling: RM accuracy linear in log(labels), larger models above smaller?

RM_SCALING_CSV = "rm_scaling.csv"
RM_SCALING_PANEL = "accuracy vs labels"


def rm_scaling_tests(curves: dict[str, list[dict]]) -> list[dict]:
    """Stiennon's Fig. 6 over seeds, Holm-adjusted: for each width, the accuracy
    gained per doubling of labels (each seed's least-squares slope on log2 labels;
    Student's t against 0); at each label count, each width above the next
    smaller one (Welch's t: the widths are different pretrained models)."""
    def width(c):
        return float(c.split()[-1])

    names = sorted(curves, key=width)
    rows = []
    for c in names:
        pts = curves[c]
        x = np.log2([p["x"] for p in pts])
        ys = np.stack([p["y"] for p in pts])  # (counts, seeds)
        slopes = np.polyfit(x, ys, 1)[0]
        rows.append(_test(f"{c}: accuracy rises per doubling of labels", "", slopes,
                          t_p=lambda s=slopes: stats.one_sample_t(s, 0.0),
                          what="one-sample t of slopes"))
        mean = ys.mean(axis=1)
        fit = np.polyval(np.polyfit(x, mean, 1), x)
        rows[-1]["r2_of_mean"] = float(1 - np.sum((mean - fit) ** 2)
                                       / np.sum((mean - mean.mean()) ** 2))
    for small, large in zip(names, names[1:]):
        for ps, pl in zip(curves[small], curves[large]):
            rows.append(_welch_row(f"{large} above {small}", f"{ps['x']:g} labels",
                                   pl["y"], ps["y"]))
    return _holm_verdicts(rows)


def rm_scaling_verdicts(out_dir: str) -> list[str]:
    """`rm_scaling_tests` into verdicts.md / verdicts.json, with each width's
    accuracy per label count (seed mean [95% CI])."""
    path = os.path.join(out_dir, RM_SCALING_CSV)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: missing; run the rm_scaling sweep's aggregation first")
    curves = read_panel(path, RM_SCALING_PANEL, x="x", sweep="rm_scaling")
    tests = rm_scaling_tests(curves)
    counts = [p["x"] for p in next(iter(curves.values()))]
    lines = ["# RM accuracy against labels and width: tests over seeds", "",
             "Held-out 4-way accuracy (chance 0.25): seed mean [95% bootstrap interval].", "",
             "| curve | " + " | ".join(f"{n:g} labels" for n in counts) + " | n |",
             "|---|" + "---|" * (len(counts) + 1)]
    means = {}
    for c, pts in curves.items():
        cells = [seed_interval(p["y"]) for p in pts]
        means[c] = cells
        lines.append(f"| {c} | " + " | ".join(
            f"{m['mean']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]" for m in cells)
            + f" | {cells[0]['n']} |")
    lines += ["", f"Two-sided tests, Holm-adjusted over {len(tests)} rows.", "",
              "| claim | at | effect [95% CI] | n | test | t | p | Holm p | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in tests:
        extra = r["size"] or (f"R^2 of the mean {r['r2_of_mean']:.2f}" if "r2_of_mean" in r
                              else "")
        lines.append(_claim_row(r, extra).replace(f" | {extra} | {r['n']} |",
                                                  f" | {r['n']} |", 1)
                     .replace(f"| {r['claim']} |", f"| {r['claim']} | {extra} |", 1))
    return _write_verdicts(out_dir, "\n".join(lines) + "\n",
                           {"means": means, "tests": tests})


# --------------------------------------------------------------------------
# architectures: does the default's effect carry over from GPT-2?

ARCH_CSV = "architectures.csv"
ARCH_BASE = "gpt2"


def arch_verdicts(out_dir: str, base: str = ARCH_BASE) -> list[str]:
    """Every panel of the architectures sweep (RM accuracy, PPO's and best-of-N's
    held-out gold), each architecture against `base` by Welch's t over seeds,
    Holm over all of them; with each curve's KL, so that a gold difference is
    read at the KL it came with. A difference is claimed only where the
    adjusted p is below `ALPHA`."""
    path = os.path.join(out_dir, ARCH_CSV)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: missing; run the sweep's aggregation first")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    panels = list(dict.fromkeys(r["panel"] for r in rows))
    means, tests = [], []
    for panel in panels:
        curves = {r["curve"]: r for r in rows if r["panel"] == panel}
        if base not in curves:
            raise ValueError(f"{path}: panel {panel!r} has no curve {base!r}")
        ys = {c: np.asarray(study_table.read_floats(r["y_seeds"]), np.float64)
              for c, r in curves.items()}
        for c, r in curves.items():
            kl = np.asarray(study_table.read_floats(r["x_seeds"]), np.float64)
            means.append({"panel": panel, "arch": c, "y": seed_interval(ys[c]),
                          "x": seed_interval(kl)})
        tests += [_welch_row(f"{panel}: {c} - {base}", c, ys[c], ys[base])
                  for c in curves if c != base]
    for r, adj in zip(tests, stats.holm([r["p"] for r in tests])):
        r["p_holm"] = adj
        r["verdict"] = ("not testable" if not np.isfinite(adj) else
                        "differs" if adj < ALPHA else "no difference shown")
    lines = [f"# The default on {len(means) // max(len(panels), 1)} architectures: "
             f"tests over seeds", "",
             "Seed mean [95% bootstrap interval over seeds]; KL (nats) where the panel "
             "plots against it.", "",
             "| panel | architecture | value | KL | n |", "|---|---|---|---|---|"]
    for m in means:
        y, x = m["y"], m["x"]
        kl = f"{x['mean']:.2f}" if "KL" in m["panel"] else "-"
        lines.append(f"| {m['panel']} | {m['arch']} | {y['mean']:.3f} [{y['ci95'][0]:.3f}, "
                     f"{y['ci95'][1]:.3f}] | {kl} | {y['n']} |")
    lines += ["", f"Each architecture against {base}: two-sided Welch's t, Holm over "
              f"{len(tests)} rows.", "",
              "| comparison | effect [95% CI] | n | test | t | p | Holm p | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    for r in tests:
        lines.append(f"| {r['claim']} | {_f(r['effect'])} [{_f(r['effect_ci95'][0])}, "
                     f"{_f(r['effect_ci95'][1])}] | {r['n']} | {r['test']} | {r['t']:.2f} | "
                     f"{r['p']:.3g} | {r['p_holm']:.3g} | **{r['verdict']}** |")
    return _write_verdicts(out_dir, "\n".join(lines) + "\n",
                           {"base": base, "means": means, "tests": tests})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dir", help="world_fig1's, world_copying's, world_overopt's or "
                                    "overoptimization's folder (results/world_fig1)")
    args = parser.parse_args(argv)
    try:
        if os.path.isfile(os.path.join(args.dir, COPYING_CSV)):
            paths = copying_verdicts(args.dir)
        elif os.path.isfile(os.path.join(args.dir, OVEROPT_CSV)):
            paths = overopt_verdicts(args.dir)
        elif os.path.isfile(os.path.join(args.dir, MOCK_OVEROPT.csv)):
            paths = overopt_verdicts(args.dir, layout=MOCK_OVEROPT)
        elif os.path.isfile(os.path.join(args.dir, RM_SCALING_CSV)):
            paths = rm_scaling_verdicts(args.dir)
        elif os.path.isfile(os.path.join(args.dir, ARCH_CSV)):
            paths = arch_verdicts(args.dir)
        elif os.path.isfile(os.path.join(args.dir, ZIEGLER_FIG2.csv)):
            paths = frontier_verdicts(args.dir, ZIEGLER_FIG2)
        elif os.path.isfile(os.path.join(args.dir, STUDY.csv)):
            paths = frontier_verdicts(args.dir, STUDY)
        else:
            paths = fig1_verdicts(args.dir)
    except ValueError as e:
        parser.error(str(e))
    with open(paths[0]) as f:
        print(f.read())


if __name__ == "__main__":
    main()

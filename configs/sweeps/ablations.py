"""Ablations of the PPO setup, in miniature: value model, Adam style, reward whitening, RM head.

    python launch.py --sweep=configs/sweeps/ablations.py --workdir=runs/sweeps
    python launch.py --sweep=configs/sweeps/ablations.py:runlocal --workdir=/tmp/sweep_local

The baseline is Ziegler Fig. 2's run on the largest label count (shared
value head, TF-style Adam, whitened rewards, linear RM head, adaptive KL);
each variant changes one thing, 5 seeds each: `ppo.value_model=separate`
(Stiennon: a value model initialised from the RM), `ppo.adam=torch`
(PyTorch's epsilon placement; eps stays 1e-5, so the ablation is the
formula alone), `ppo.whiten_rewards=False`, and `reward.head=scalar_mix`
(its own reward models). Panels: gold score vs episodes per ablation, the
first updates' approxkl for the Adam pair, the final held-out gold
score, each run's held-out gold every 25 updates against its KL (the
ablations at equal KL:
`python -m rlhf_jax.experiments.study_table CSV --panel "held-out gold vs KL along training" --against baseline`)
and RM held-out accuracy per head.
"""

from configs.sweeps import mock_scale
from rlhf_jax.experiments.sweep import (Curve, Figure, Panel, Points, Sweep, eval_point,
                                        eval_trajectory, last_metric, metric, seeds_of)

FRONTIER_PANEL = "held-out gold vs KL along training"

VARIANTS = (  # (label, run name, ppo_runs keyword arguments)
    ("separate value model", "ppo-value-separate",
     dict(overrides={"ppo.value_model": "separate"})),
    ("PyTorch-style Adam", "ppo-adam-torch", dict(overrides={"ppo.adam": "torch"})),
    ("no reward whitening", "ppo-whiten-off", dict(overrides={"ppo.whiten_rewards": False})),
    ("scalar_mix RM head", "ppo-head-scalar_mix", dict(rm=(None, "scalar_mix"))),
)


def get_sweep(arg=None):
    s = mock_scale.scale(arg)
    base = f"ppo-rm-n{s.max_labels}"
    runs = mock_scale.ppo_runs(s, base, rm=(s.max_labels, "linear"))
    for _, name, kw in VARIANTS:
        runs += mock_scale.ppo_runs(s, name, **kw)
    window = 1 if s.runlocal else 5
    label = "baseline (shared value, TF Adam, whitened, linear head)"

    def pair(name, variant_label, x, y, **kw):
        return (Curve(label, (Points(seeds_of(base, s.seeds), metric("ppo", x, y, **kw)),)),
                Curve(variant_label, (Points(seeds_of(name, s.seeds), metric("ppo", x, y, **kw)),)))

    panels = []
    for variant_label, name, _ in VARIANTS:
        if name == "ppo-adam-torch":
            panels.append(Panel(f"Adam: approxkl, first {s.adam_updates} updates",
                                f"episodes ({s.ppo_batch} per update)",
                                "ppo/policy/approxkl",
                                pair(name, variant_label, "ppo/episodes", "ppo/policy/approxkl",
                                     first=s.adam_updates)))
        panels.append(Panel(f"{variant_label}: gold score", "episodes", "gold score",
                            pair(name, variant_label, "ppo/episodes", "objective/gold_score",
                                 window=window)))
    final = [Curve(label, (Points(seeds_of(base, s.seeds), eval_point("ppo", "kl",
                                                                      "gold_score")),), line=False)]
    final += [Curve(lab, (Points(seeds_of(name, s.seeds), eval_point("ppo", "kl", "gold_score")),),
                    line=False) for lab, name, _ in VARIANTS]
    panels.append(Panel("held-out eval after training", "KL(policy || initial) [nats]",
                        "gold score", tuple(final), xscale="sqrt"))
    # Each run's policy every `snapshot_every` updates: the ablations at equal KL
    # (`python -m rlhf_jax.experiments.study_table CSV --panel FRONTIER_PANEL --against baseline`).
    along = [Curve(lab, (Points(seeds_of(name, s.seeds), eval_trajectory("kl", "gold_score")),))
             for lab, name in [(label, base)] + [(lab, name) for lab, name, _ in VARIANTS]]
    along.append(Curve("initial policy", (Points(seeds_of(base, s.seeds),
                                                 eval_point("initial", "kl", "gold_score")),),
                       line=False))
    panels.append(Panel(FRONTIER_PANEL, "KL(policy || initial) [nats]", "gold score",
                        tuple(along), xscale="sqrt"))
    heads = tuple(Curve(f"{head} head", (Points(seeds_of(mock_scale.rm_name(s.max_labels, s.width,
                                                                            head), s.seeds),
                                                last_metric("reward", "reward/val_accuracy", x)),),
                        line=False) for x, head in enumerate(("linear", "scalar_mix")))
    panels.append(Panel("RM held-out accuracy by head", "reward-model head",
                        "held-out accuracy", heads, xticks=((0, "linear"), (1, "scalar_mix"))))
    caption = (mock_scale.GOLD + f" Training panels: means of blocks of {window} updates; "
               f"held-out panel: each run's policy every {s.snapshot_every} updates and at the "
               "end.")
    return Sweep("ablations", tuple(runs), (Figure("ablations", "PPO ablations (one change each "
                                                   "from the baseline)", tuple(panels),
                                                   caption=caption),),
                 runlocal=s.runlocal)

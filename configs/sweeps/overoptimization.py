"""Stiennon et al. 2020 Fig. 5 in miniature: over-optimising a learned reward model.

    python launch.py --sweep=configs/sweeps/overoptimization.py --workdir=runs/sweeps
    python launch.py --sweep=configs/sweeps/overoptimization.py:runlocal --workdir=/tmp/sweep_local

PPO against the reward model of the largest label count with a fixed KL
coefficient in `mock_scale.FULL.kl_coefs` (0 included: no KL penalty), 10
seeds each (`mock_scale.ten_seeds`; seeds 5-9 also tested alone). RM score
(each seed's own RM, so each seed's own line) and gold score against
KL(policy || initial), along training (means of blocks of 5
updates) and at the held-out evaluation of the policy every 25 updates
(`eval.ppo_snapshots`), on a sqrt(KL) axis: KL spans 0-150 nats. Paper: the RM score
keeps rising with KL while the true preference peaks and then falls. For
coefficient 0 the run's highest-RM-score samples, with their gold score,
go to `results/overoptimization/reward_hacking_kl0.txt`.
"""

import dataclasses
import functools

from configs.sweeps import mock_scale
from rlhf_jax.experiments import summary_table
from rlhf_jax.experiments.sweep import (Curve, Figure, Panel, Points, Sweep, TopSamples, eval_point,
                                        eval_trajectory, metric, seeds_of)


def coef_runs(s):
    """(coef, run name, runs) per fixed KL coefficient."""
    out = []
    for c in s.kl_coefs:
        name = mock_scale.coef_name(c)
        out.append((c, name, mock_scale.ppo_runs(
            s, name, overrides={"kl.adaptive": False, "kl.coef": c})))
    return out


def final_curve(s, label, coefs, y):
    """One point per coefficient (the final eval), joined in KL order."""
    return Curve(label, tuple(Points(seeds_of(name, s.seeds), eval_point("ppo", "kl", y),
                                     setting=f"beta={c:g}")
                              for c, name, _ in coefs))


def get_sweep(arg=None):
    s = mock_scale.ten_seeds(mock_scale.scale(arg))
    coefs = coef_runs(s)
    runs = [r for _, _, rs in coefs for r in rs]
    window = 1 if s.runlocal else 5

    def along(y, per_seed=False):
        return tuple(Curve(f"beta = {c:g}", (Points(seeds_of(name, s.seeds),
                                                    metric("ppo", "objective/kl", y,
                                                           window=window)),),
                           per_seed=per_seed)
                     for c, name, _ in coefs)

    held_out = tuple(Curve(f"beta = {c:g}", (Points(seeds_of(name, s.seeds),
                                                    eval_trajectory("kl", "gold_score")),),
                           fit="rl") for c, name, _ in coefs)
    initial = Curve("initial policy", (Points(seeds_of(coefs[0][1], s.seeds),
                                              eval_point("initial", "kl", "gold_score")),),
                    line=False)

    fig = Figure("overoptimization",
                 "Stiennon Fig. 5 style: fixed KL coefficients against a learned RM",
                 (Panel("RM score vs KL (training; each seed its own RM)",
                        "KL(policy || initial) [nats]", "reward model score",
                        along("objective/score", per_seed=True), xscale="sqrt"),
                  Panel("gold score vs KL (training)", "KL(policy || initial) [nats]",
                        "gold score", along("objective/gold_score"), xscale="sqrt"),
                  Panel("held-out gold vs KL along training, Gao RL fit",
                        "KL(policy || initial) [nats]", "gold score", held_out + (initial,),
                        xscale="sqrt"),
                  Panel("held-out eval after training, one point per beta",
                        "KL(policy || initial) [nats]", "score",
                        (final_curve(s, "RM score", coefs, "score"),
                         final_curve(s, "gold score", coefs, "gold_score")), xscale="sqrt")),
                 caption=mock_scale.GOLD + " RM score: the seed's own reward model, normalised "
                 "to mean 0, std 1 on the initial policy's samples. Held-out panel: each run's "
                 f"policy every {s.snapshot_every} updates and at the end.")
    zero = [name for c, name, _ in coefs if c == 0.0]
    texts = tuple(TopSamples("reward_hacking_kl0", seeds_of(name, s.seeds), stage="ppo",
                             key="score", k=15,
                             title="KL coefficient 0: the PPO samples with the highest reward-"
                                   "model score (all seeds, all logged updates), with their "
                                   "gold score")
                  for name in zero)
    # Tests over seeds (verdicts.md): the mildest coefficient (fixed by the design, not
    # picked as the peak) above the initial policy, then gold falling and the RM
    # score rising from it to beta = 0.
    layout = dataclasses.replace(summary_table.MOCK_OVEROPT, main=f"beta={max(s.kl_coefs):g}")
    verdicts = functools.partial(summary_table.overopt_verdicts, layout=layout)
    return Sweep("overoptimization", tuple(runs), (fig,), texts, runlocal=s.runlocal,
                 tables=mock_scale.with_replication(s, verdicts))

"""Best-of-N vs PPO vs DPO at matched KL, in miniature.

    python launch.py --sweep=configs/sweeps/bon_ppo_dpo.py --workdir=runs/sweeps
    python launch.py --sweep=configs/sweeps/bon_ppo_dpo.py:runlocal --workdir=/tmp/sweep_local

Gold score against KL(policy || initial) on held-out queries for
three ways to use the same labels: best-of-N sampling from the initial
policy ranked by the reward model (N in `mock_scale.FULL.best_of_n`, KL
analytic: log N - (N-1)/N), PPO against that reward model at the fixed KL
coefficients of the over-optimisation sweep (the same runs), and DPO on the
labels themselves at several beta; 5 seeds each. Every setting is labelled
on its point; Gao et al.'s forms are fitted and drawn for best-of-N and
PPO (the PPO frontier from each run's held-out snapshots every 25 updates).
Shares every PPO run with `overoptimization.py`.
"""

from configs.sweeps import mock_scale, overoptimization
from rlhf_jax.experiments.sweep import (Curve, Figure, Panel, Points, Sweep, eval_point,
                                        eval_trajectory, seeds_of)


def get_sweep(arg=None):
    s = mock_scale.scale(arg)
    coefs = overoptimization.coef_runs(s)
    rm = mock_scale.rm_name(s.max_labels, s.width)
    runs = [r for _, _, rs in coefs for r in rs] + mock_scale.rm_runs(s, s.max_labels, s.width)
    for beta in s.dpo_betas:
        runs += mock_scale.dpo_runs(s, beta)
    rm_seeds = seeds_of(rm, s.seeds)

    def bon(y):
        return Curve("best-of-N (RM-ranked; KL analytic)",
                     tuple(Points(rm_seeds, eval_point(f"best_of_{n}", "kl", y),
                                  setting=f"N={n}") for n in s.best_of_n),
                     fit="bon" if y == "gold_score" else None,
                     per_seed=y == "score")  # each seed's own RM: its own line

    def ppo(y):
        return Curve("PPO, fixed beta " + ", ".join(f"{c:g}" for c, _, _ in coefs),
                     tuple(Points(seeds_of(name, s.seeds), eval_point("ppo", "kl", y),
                                  setting=f"beta={c:g}") for c, name, _ in coefs), line=False,
                     per_seed=y == "score")

    def ppo_frontier(y):
        return Curve(f"PPO, every {s.snapshot_every} updates (all beta)",
                     tuple(Points(seeds_of(name, s.seeds), eval_trajectory("kl", y))
                           for _, name, _ in coefs), trajectories=True,
                     fit="rl" if y == "gold_score" else None)

    dpo = Curve("DPO, beta " + ", ".join(f"{b:g}" for b in s.dpo_betas),
                tuple(Points(seeds_of(f"dpo-beta{b:g}", s.seeds), eval_point("dpo", "kl",
                                                                             "gold_score"),
                             setting=f"beta={b:g}")
                      for b in s.dpo_betas))
    initial = Curve("initial policy", (Points(rm_seeds, eval_point("initial", "kl",
                                                                   "gold_score")),), line=False)
    fig = Figure("bon_ppo_dpo", "Best-of-N vs PPO vs DPO at matched KL (held-out eval)",
                 (Panel("gold score vs KL", "KL(policy || initial) [nats]", "gold score",
                        (bon("gold_score"), ppo_frontier("gold_score"), ppo("gold_score"), dpo,
                         initial), xscale="sqrt"),
                  Panel("RM score vs KL (each seed its own RM)", "KL(policy || initial) [nats]",
                        "reward model score",
                        (bon("score"), ppo("score")), xscale="sqrt")),
                 caption=mock_scale.GOLD + " Dashed: Gao et al.'s forms fitted to every seed's "
                 "points (gain over the initial policy).")
    return Sweep("bon_ppo_dpo", tuple(runs), (fig,), runlocal=s.runlocal)

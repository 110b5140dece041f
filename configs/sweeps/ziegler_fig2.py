"""Ziegler et al. 2019 Fig. 2 in miniature: PPO on the gold reward vs on RMs from N labels.

    python launch.py --sweep=configs/sweeps/ziegler_fig2.py --workdir=runs/sweeps
    python launch.py --sweep=configs/sweeps/ziegler_fig2.py:runlocal --workdir=/tmp/sweep_local

PPO (adaptive KL, the offline default's controller) from the shared base
model, optimising either the world gold directly (`reward=gold`) or a reward model
trained on the first N mock best-of-4 labels of the shared pool, N in
`mock_scale.FULL.label_counts`; 10 seeds each (`mock_scale.ten_seeds`). The
gold reward is normalised as the reward models are (`ppo.gold_normalize`: gain and bias that give it
mean 0, std 1 on the initial policy's samples), so the KL penalty weighs the
same against every reward. Panels: gold score against episodes (the paper's
axis; training batches, means of blocks of 5 updates), against KL during
training, and the held-out gold of each run's policy every 25 updates
against its KL (sqrt axis), the frontier on which gold and RMs compare at
equal KL. The aggregation tests every RM curve against the gold reward at
0.5, 1 and 1.5 nats (`summary_table.ZIEGLER_FIG2`; `verdicts.md`, 10 seeds)
and again on seeds 5-9 alone (`verdicts_replication.md`), as

    python -m rlhf_jax.experiments.study_table results/ziegler_fig2/ziegler_fig2.csv \
        --panel "held-out gold vs KL along training" --against "gold reward" --budgets 0.5,1,1.5

Paper: on mock sentiment, RMs from 2.5k-20k labels approach direct
optimisation of the gold reward, more labels closer. Outputs: `results/ziegler_fig2/`.
"""

import functools

from configs.sweeps import mock_scale
from rlhf_jax.experiments import summary_table
from rlhf_jax.experiments.sweep import (Curve, Figure, Panel, Points, Sweep, eval_point,
                                        eval_trajectory, metric, seeds_of)

FRONTIER_PANEL = summary_table.ZIEGLER_FIG2.panel


def settings(s):
    """(label, run name, PPO runs) per curve: gold first, then N ascending."""
    out = [("gold reward", "ppo-gold", mock_scale.ppo_runs(s, "ppo-gold", rm=None))]
    for n in s.label_counts:
        out.append((f"RM, {n} labels", f"ppo-rm-n{n}",
                    mock_scale.ppo_runs(s, f"ppo-rm-n{n}", rm=(n, "linear"))))
    return out


def get_sweep(arg=None):
    s = mock_scale.ten_seeds(mock_scale.scale(arg))
    sets = settings(s)
    runs = [r for _, _, rs in sets for r in rs]
    window = 1 if s.runlocal else 5

    def curves(x, y, **kw):
        return tuple(Curve(label, (Points(seeds_of(name, s.seeds), metric("ppo", x, y, **kw)),))
                     for label, name, _ in sets)

    initial = Curve("initial policy", (Points(seeds_of("ppo-gold", s.seeds),
                                              eval_point("initial", "kl", "gold_score")),),
                    line=False)
    held_out = tuple(Curve(label, (Points(seeds_of(name, s.seeds),
                                          eval_trajectory("kl", "gold_score")),), fit="rl")
                     for label, name, _ in sets)
    fig = Figure("ziegler_fig2",
                 "Ziegler Fig. 2 style: PPO on the (normalised) gold reward vs on RMs from N labels",
                 (Panel("gold score vs episodes", "episodes", "gold score",
                        curves("ppo/episodes", "objective/gold_score", window=window)),
                  Panel("gold score vs KL (training)", "KL(policy || initial) [nats]",
                        "gold score",
                        curves("objective/kl", "objective/gold_score", window=window),
                        xscale="sqrt"),
                  Panel(FRONTIER_PANEL, "KL(policy || initial) [nats]", "gold score",
                        held_out + (initial,), xscale="sqrt")),
                 caption=mock_scale.GOLD + " PPO on the gold reward optimises it normalised "
                 "to mean 0, std 1 on the initial policy's samples, as the RMs are. Held-out "
                 f"panel: each run's policy every {s.snapshot_every} updates and at the end; "
                 "dashed: Gao et al.'s RL form fitted to every seed's points.")
    tests = functools.partial(summary_table.frontier_verdicts, layout=summary_table.ZIEGLER_FIG2)
    return Sweep("ziegler_fig2", tuple(runs), (fig,), runlocal=s.runlocal,
                 tables=mock_scale.with_replication(s, tests))

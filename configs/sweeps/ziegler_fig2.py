"""Ziegler et al. 2019 Fig. 2 in miniature: PPO on the gold reward vs on RMs from N labels.

    python launch.py --sweep=configs/sweeps/ziegler_fig2.py --workdir=runs/sweeps
    python launch.py --sweep=configs/sweeps/ziegler_fig2.py:runlocal --workdir=/tmp/sweep_local

PPO (adaptive KL, the offline default's controller) from the shared base
model, optimising either the world gold directly (`reward=gold`) or a reward model
trained on the first N mock best-of-4 labels of the shared pool, N in
`mock_scale.FULL.label_counts`; 3 seeds each. Gold score against
episodes and against KL(policy || initial), logged per update and averaged
over blocks of 5 updates, and the final held-out evaluation. Paper: on
mock sentiment, RMs from 2.5k-20k labels approach direct optimisation of the
gold reward, more labels closer. Outputs: `results/ziegler_fig2/`.
"""

from configs.sweeps import mock_scale
from rlhf_jax.experiments.sweep import (Curve, Figure, Panel, Points, Sweep, eval_point, metric,
                                        seeds_of)


def settings(s):
    """(label, run name, PPO runs) per curve: gold first, then N ascending."""
    out = [("gold reward", "ppo-gold", mock_scale.ppo_runs(s, "ppo-gold", rm=None))]
    for n in s.label_counts:
        out.append((f"RM, {n} labels", f"ppo-rm-n{n}",
                    mock_scale.ppo_runs(s, f"ppo-rm-n{n}", rm=(n, "linear"))))
    return out


def get_sweep(arg=None):
    s = mock_scale.scale(arg)
    sets = settings(s)
    runs = [r for _, _, rs in sets for r in rs]
    window = 1 if s.runlocal else 5

    def curves(x, y, **kw):
        return tuple(Curve(label, (Points(seeds_of(name, s.seeds), metric("ppo", x, y, **kw)),))
                     for label, name, _ in sets)

    final = tuple(Curve(label, (Points(seeds_of(name, s.seeds), eval_point("ppo", "kl",
                                                                           "gold_score")),),
                        line=False) for label, name, _ in sets)
    initial = Curve("initial policy", (Points(seeds_of("ppo-gold", s.seeds),
                                              eval_point("initial", "kl", "gold_score")),),
                    line=False)
    fig = Figure("ziegler_fig2",
                 "Ziegler Fig. 2 style: PPO on the gold reward vs on RMs from N labels",
                 (Panel("gold score vs episodes", "episodes", "gold score",
                        curves("ppo/episodes", "objective/gold_score", window=window)),
                  Panel("gold score vs KL (training)", "KL(policy || initial) [nats]",
                        "gold score",
                        curves("objective/kl", "objective/gold_score", window=window)),
                  Panel("held-out eval after training", "KL(policy || initial) [nats]",
                        "gold score", final + (initial,))))
    return Sweep("ziegler_fig2", tuple(runs), (fig,), runlocal=s.runlocal)

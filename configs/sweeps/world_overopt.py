"""Stiennon et al. 2020 Fig. 5 on the summarisation task: gold preference vs KL.

    python launch.py --sweep=configs/sweeps/world_overopt.py --workdir=runs/sweeps
    python launch.py --sweep=configs/sweeps/world_overopt.py:runlocal --workdir=/tmp/sweep_local

PPO at the main width from the same SFT model and reward model per seed
(five seeds) with fixed KL coefficients (`world_scale.FULL.kl_coefs` and the
config's own 0.5, which is its main run). At the final held-out evaluation: the gold
judge's preference against the reference and the RM score of the HF policy
against KL(policy || SFT); along training, RM and gold score against KL.
Paper: the RM score keeps rising with KL while the true preference peaks
and falls.
"""

from configs import world_tldr
from configs.sweeps import world_scale
from rlhf_jax.stages.summary_eval import summarization_point
from rlhf_jax.experiments.sweep import Curve, Figure, Panel, Points, Sweep, metric, seeds_of


def coef_runs(s):
    """(coef, run name, runs): the config's own coefficient is the main run."""
    default = world_tldr.get_config().kl.coef
    out = []
    for c in sorted(set(s.kl_coefs) | {default}):
        if c == default:
            out.append((c, world_scale.tldr_name(s.widths[s.main]),
                        world_scale.tldr_runs(s, s.widths[s.main])))
        else:
            out.append((c, world_scale.kl_name(c), world_scale.kl_runs(s, c)))
    return out


def get_sweep(arg=None):
    s = world_scale.scale(arg)
    coefs = coef_runs(s)
    runs = [r for _, _, rs in coefs for r in rs]
    kl = ("eval", "ppo", "kl")

    def final(label, y):
        return Curve(label, tuple(Points(seeds_of(name, s.seeds), summarization_point("hf", y, kl))
                                  for _, name, _ in coefs))

    def along(y):
        return tuple(Curve(f"beta = {c:g}", (Points(seeds_of(name, s.seeds),
                                                    metric("ppo", "objective/kl", y, window=1
                                                           if s.runlocal else 5)),))
                     for c, name, _ in coefs)

    fig = Figure("overoptimization_summaries",
                 "Over-optimisation on summaries: fixed KL coefficients, one RM per seed",
                 (Panel("held-out: preferred to reference (gold)", "KL(HF || SFT) [nats]",
                        "fraction", (final("gold judge", "gold_pref"),
                                     final("length-controlled", "length_controlled_pref"))),
                  Panel("held-out: RM score of HF summaries", "KL(HF || SFT) [nats]",
                        "RM score (references 0)", (final("RM", "rm_score"),)),
                  Panel("training: RM score", "KL [nats]", "RM score",
                        along("objective/score")),
                  Panel("training: gold score", "KL [nats]", "gold score",
                        along("objective/gold_score"))))
    return Sweep("world_overopt", tuple(runs), (fig,), runlocal=s.runlocal)

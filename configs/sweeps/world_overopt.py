"""Stiennon et al. 2020 Fig. 5 on the summarisation task: gold preference vs KL.

    python launch.py --sweep=configs/sweeps/world_overopt.py --workdir=runs/sweeps
    python launch.py --sweep=configs/sweeps/world_overopt.py:runlocal --workdir=/tmp/sweep_local

PPO at the KL ladder's width (`world_scale.FULL.kl_main`: 0.18M parameters,
the middle size, so that the sweep fits 90 minutes from an empty workdir on
2 CPU cores) from the same SFT model and reward model per seed (five seeds)
with fixed KL coefficients (`world_scale.FULL.kl_coefs`: 0.2,
0.05, 0.01, and the config's own 0.5, which is its main run); SFT is the
ladder's KL-0 end. At the final held-out evaluation: the gold judge's
preference against the reference and the RM score of the HF policy against
KL(policy || SFT), on a sqrt(KL) axis, one line per seed; along training,
RM and gold score against KL. Paper: the RM score keeps rising with KL while the true
preference peaks and falls. `verdicts.md` tests it over the seeds
(`rlhf_jax.experiments.summary_table.overopt_tests`).
"""

import functools

from configs import world_tldr
from configs.sweeps import world_scale
from rlhf_jax.experiments import summary_table
from rlhf_jax.experiments.sweep import Curve, Figure, Panel, Points, Sweep, metric, seeds_of
from rlhf_jax.stages.summary_eval import summarization_point

WINDOW = 5  # updates per training-panel point


def coef_runs(s):
    """(coef, run name, runs): the config's own coefficient is the main run."""
    default = world_tldr.get_config().kl.coef
    out = []
    for c in sorted(set(s.kl_coefs) | {default}):
        if c == default:
            out.append((c, world_scale.tldr_name(s.widths[s.kl_main]),
                        world_scale.tldr_runs(s, s.widths[s.kl_main])))
        else:
            out.append((c, world_scale.kl_name(c, s.widths[s.kl_main]),
                        world_scale.kl_runs(s, c)))
    return out


def get_sweep(arg=None):
    s = world_scale.scale(arg)
    coefs = coef_runs(s)
    runs = [r for _, _, rs in coefs for r in rs]
    main = world_scale.tldr_name(s.widths[s.kl_main])
    kl = ("eval", "ppo", "kl")

    def final(label, y, per_seed=False):
        """SFT at KL 0 (each seed's own evaluation of it), then HF at each beta."""
        sft = Points(seeds_of(main, s.seeds), summarization_point("sft", y, 0.0),
                     setting=summary_table.SFT_SETTING)
        return Curve(label, (sft,) + tuple(
            Points(seeds_of(name, s.seeds), summarization_point("hf", y, kl),
                   setting=f"beta={c:g}") for c, name, _ in coefs), per_seed=per_seed)

    def along(y, per_seed=False):
        return tuple(Curve(f"beta = {c:g}", (Points(seeds_of(name, s.seeds),
                                                    metric("ppo", "objective/kl", y, window=1
                                                           if s.runlocal else WINDOW)),),
                           per_seed=per_seed)
                     for c, name, _ in coefs)

    x = "KL(HF || SFT) [nats]"
    caption = ("Held-out stories, T = 0. Each seed is drawn alone: at small beta the seeds "
               "reach very different KL. Preferred to the reference: the share of HF summaries the "
               "noise-free gold judge (coverage, faithfulness, grammar, brevity) scores above "
               "the story's reference. RM score: the seed's own reward model, biased so the "
               "references score 0. Gold score: that judge's score of a sample. Training "
               f"panels: means of blocks of {WINDOW} updates.")
    fig = Figure("overoptimization_summaries",
                 "Over-optimisation on summaries: fixed KL coefficients, one RM per seed",
                 (Panel(summary_table.OVEROPT_GOLD_PANEL, x, "fraction",
                        (final(summary_table.OVEROPT_GOLD, "gold_pref", per_seed=True),),
                        xscale="sqrt", hline=(0.5, "as good as the references (0.5)")),
                  Panel(summary_table.OVEROPT_RM_PANEL, x, "RM score (references 0)",
                        (final(summary_table.OVEROPT_RM, "rm_score", per_seed=True),),
                        xscale="sqrt"),
                  Panel("training: RM score (each seed its own RM)", "KL [nats]", "RM score",
                        along("objective/score", per_seed=True), xscale="sqrt"),
                  Panel("training: gold score", "KL [nats]", "gold score",
                        along("objective/gold_score", per_seed=True), xscale="sqrt")),
                 caption=caption)
    verdicts = functools.partial(summary_table.overopt_verdicts,
                                 main=f"beta={world_tldr.get_config().kl.coef:g}")
    return Sweep("world_overopt", tuple(runs), (fig,), runlocal=s.runlocal, tables=(verdicts,))

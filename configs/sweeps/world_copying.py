"""Ziegler et al. 2019's "smart copiers" in miniature: copying depends on what labellers reward.

    python launch.py --sweep=configs/sweeps/world_copying.py --workdir=runs/sweeps
    python launch.py --sweep=configs/sweeps/world_copying.py:runlocal --workdir=/tmp/sweep_local

configs/world_tldr.py at the main width, five seeds, with labels from the
full summary judge (coverage, faithfulness, grammar, brevity: Stiennon's
labellers) or from the accuracy-only judge (faithful and grammatical is
enough: Ziegler's). Per policy (x: 0 pretrained only, 1 SFT, 2 HF, 3
best-of-16, 4 the references): sentence novelty (share of summary sentences
not in the story), bigram LCS with the story, length, and the gold
preference. Paper: under accuracy-checking labellers the RL policy copies
(TL;DR novelty 29% against 94-99% for references, zero-shot and
supervised); under Stiennon's labellers HF copies less than pretrained.
`verdicts.md` tests these over the seeds (`rlhf_jax.experiments.summary_table`).
"""

import dataclasses

from configs.sweeps import world_scale
from rlhf_jax.stages.summary_eval import summarization_point
from rlhf_jax.experiments import summary_table
from rlhf_jax.experiments.sweep import Curve, Figure, Panel, Points, Sweep, seeds_of

POLICIES = ("pretrained", "sft", "hf", "best_of", "reference")
# judge (world_tldr's switch) -> the curve's label (summary_table's names).
LABELS = {"full": summary_table.FULL, "accuracy": summary_table.ACCURACY,
          "facts": summary_table.FACTS, "skim": summary_table.SKIM}


def curves(s, y, judges, kl_coef=None):
    bon = "best_of_16" if not s.runlocal else "best_of_2"
    main = s.widths[s.main]
    out = []
    for judge in judges:
        runs = seeds_of(world_scale.tldr_name(main, judge, kl_coef, s.lead), s.seeds)
        pts = [Points(runs, summarization_point(bon if p == "best_of" else p, y, x=i))
               for i, p in enumerate(POLICIES) if not (p == "reference" and y == "gold_pref")]
        out.append(Curve(LABELS[judge], tuple(pts), line=False))
    return tuple(out)


def copying_sweep(name, judges, arg=None, kl_coef=None, lead=False, ppo_updates=None):
    """The copying sweep `name`: world_tldr at the main width, one group of seeds per
    judge in `judges` (the full judge first), each with its own labels, RM and PPO
    (at fixed KL coefficient `kl_coef`, None for the config's); `lead`: on stories in
    the lead form, with their own pretrained and SFT models; `ppo_updates`: PPO's
    length at the full scale (None: the scale's)."""
    s = dataclasses.replace(world_scale.scale(arg), lead=lead)
    if ppo_updates is not None and not s.runlocal:
        s = dataclasses.replace(s, ppo_updates=ppo_updates)
    main = s.widths[s.main]
    runs = [r for judge in judges for r in world_scale.tldr_runs(s, main, judge, kl_coef)]
    runs = list({r.name: r for r in runs}.values())  # pretraining and SFT once
    x = "policy"
    bon = "best-of-16" if not s.runlocal else "best-of-2"
    ticks = tuple(enumerate(("pretrained", "SFT", "HF", bon, "reference")))
    beta = ("Stories in the lead form (the main event first). " if lead else "") + (
        "" if kl_coef is None else f"PPO at fixed KL coefficient {kl_coef:g}. ") + (
        "" if ppo_updates is None else f"{s.ppo_updates} PPO updates. ")
    caption = (beta + "Held-out stories, T = 0. Sentence novelty: share of a summary's sentences "
               "not in the story; bigram LCS: longest common subsequence of the summary's "
               "and the story's word bigrams over the summary's bigrams. Pretrained, SFT and "
               "the references are the same under both labellers, so their points coincide.")
    fig = Figure("copying", "Copying under two labellers (Ziegler's smart copiers)",
                 (Panel("sentence novelty", x, "share of sentences not in the story",
                        curves(s, "novelty", judges, kl_coef), xticks=ticks),
                  Panel("bigram LCS with the story", x, "LCS / summary bigrams",
                        curves(s, "bigram_lcs", judges, kl_coef), xticks=ticks),
                  Panel("length", x, "words", curves(s, "words", judges, kl_coef), xticks=ticks),
                  Panel("preferred to the reference (gold)", x, "fraction",
                        curves(s, "gold_pref", judges, kl_coef), xticks=ticks[:4],
                        hline=(0.5, "as good as the references (0.5)"))), caption=caption)
    return Sweep(name, tuple(runs), (fig,), runlocal=s.runlocal,
                 tables=(summary_table.copying_verdicts,))


def get_sweep(arg=None):
    return copying_sweep("world_copying", ("full", "accuracy"), arg)

"""Stiennon et al. 2020 Fig. 1 in miniature: preference against the reference vs model size.

    python launch.py --sweep=configs/sweeps/world_fig1.py --workdir=runs/sweeps
    python launch.py --sweep=configs/sweeps/world_fig1.py:runlocal --workdir=/tmp/sweep_local

configs/world_tldr.py at three widths (`world_scale.FULL`: 0.06M, 0.18M,
0.55M parameters, each pretrained in the world), five seeds each. On 256
held-out stories, at T = 0: the fraction of each policy's summaries preferred
to the story's reference by the noise-free gold judge and by a noisy held-out
labeller, for pretrained-only, SFT, HF (PPO) and best-of-16 by the RM,
against parameters; a line per policy type with the seed band. Second
figure: the length-controlled preference (Stiennon App. F). Paper: HF above
the reference (61-70%) and above SFT at every size; pretrained-only lowest;
HF rising with size; length control costs HF about 5 points. `verdicts.md` tests each claim over
the seeds (`rlhf_jax.experiments.summary_table`).
"""

from configs.sweeps import world_scale
from rlhf_jax.stages.summary_eval import summarization_point
from rlhf_jax.experiments import summary_table
from rlhf_jax.experiments.sweep import Curve, Figure, Panel, Points, Sweep, seeds_of


def policy_curves(s, y):
    bon = "best_of_16" if not s.runlocal else "best_of_2"
    out = []
    policies = [("pretrained only", "pretrained"), ("SFT", "sft"), ("HF (PPO)", "hf"),
                (bon.replace("_", "-"), bon)]
    if y == "words":  # the references have a length, not a preference against themselves
        policies.append(("reference", "reference"))
    for label, policy in policies:
        out.append(Curve(label, tuple(
            Points(seeds_of(world_scale.tldr_name(w), s.seeds), summarization_point(policy, y))
            for w in s.widths)))
    return tuple(out)


def get_sweep(arg=None):
    s = world_scale.scale(arg)
    runs = [r for w in s.widths for r in world_scale.tldr_runs(s, w)]
    x = "parameters"
    half = (0.5, "as good as the references (0.5)")
    caption = ("Fraction preferred: share of 256 held-out stories whose greedy (T = 0) "
               "summary the judge prefers to the story's reference. One pretrained and one "
               "SFT model per size; seeds change labels, RM, PPO and the evaluation's stories. "
               "Tests over seeds: verdicts.md.")
    fig1 = Figure("fig1_preference_vs_size",
                  "Stiennon Fig. 1 in miniature: fraction preferred to the reference (T = 0)",
                  (Panel("by the noise-free gold judge", x, "fraction preferred to reference",
                         policy_curves(s, "gold_pref"), xscale="log", hline=half),
                   Panel("by a noisy held-out labeller", x, "fraction preferred to reference",
                         policy_curves(s, "labeller_pref"), xscale="log", hline=half)),
                  caption=caption)
    fig_lc = Figure("fig1_length_controlled",
                    "Length-controlled preference (logistic fit read at the reference's length)",
                    (Panel("length-controlled, gold judge", x, "fraction preferred to reference",
                           policy_curves(s, "length_controlled_pref"), xscale="log",
                           hline=half),
                     Panel("summary length", x, "words", policy_curves(s, "words"),
                           xscale="log")), caption=caption)
    return Sweep("world_fig1", tuple(runs), (fig1, fig_lc), runlocal=s.runlocal,
                 tables=(summary_table.fig1_verdicts,))

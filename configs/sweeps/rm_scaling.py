"""Stiennon et al. 2020 Fig. 6 in miniature: RM held-out accuracy vs labels x model width.

    python launch.py --sweep=configs/sweeps/rm_scaling.py --workdir=runs/sweeps
    python launch.py --sweep=configs/sweeps/rm_scaling.py:runlocal --workdir=/tmp/sweep_local

Reward models trained on the first N labels of the shared pool
(`mock_scale.FULL.rm_label_counts`) from GPT-2s of each width in
`mock_scale.FULL.rm_widths` (2 layers, each pretrained on the same corpus
and tokenizer), 5 seeds each; held-out 4-way accuracy on the pool's held-out
labels (chance 0.25). Paper: accuracy grows with both data and model size
(roughly log-linearly).
"""

from configs.sweeps import mock_scale
from rlhf_jax.experiments import summary_table
from rlhf_jax.experiments.sweep import Curve, Figure, Panel, Points, Sweep, last_metric, seeds_of

ACC = "reward/val_accuracy"


def get_sweep(arg=None):
    s = mock_scale.scale(arg)
    runs = []
    for w in s.rm_widths:
        for n in s.rm_label_counts:
            runs += mock_scale.rm_runs(s, n, w)

    def pts(n, w, x):
        return Points(seeds_of(mock_scale.rm_name(n, w), s.seeds), last_metric("reward", ACC, x))

    by_n = tuple(Curve(f"width {w}", tuple(pts(n, w, n) for n in s.rm_label_counts))
                 for w in s.rm_widths)
    by_w = tuple(Curve(f"{n} labels", tuple(pts(n, w, w) for w in s.rm_widths))
                 for n in s.rm_label_counts)
    fig = Figure("rm_scaling",
                 "Stiennon Fig. 6 style: RM held-out accuracy (best of 4; chance 0.25)",
                 (Panel("accuracy vs labels", "training labels", "held-out accuracy", by_n,
                        xscale="log"),
                  Panel("accuracy vs width", "model width (n_embd)", "held-out accuracy", by_w,
                        xscale="log")))
    # Tests over seeds (verdicts.md): accuracy per doubling of labels, width against width.
    return Sweep("rm_scaling", tuple(runs), (fig,), runlocal=s.runlocal,
                 tables=(summary_table.rm_scaling_verdicts,))

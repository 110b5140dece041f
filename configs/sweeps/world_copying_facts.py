"""Ziegler et al. 2019's "smart copiers" under the labellers its authors described.

    python launch.py --sweep=configs/sweeps/world_copying_facts.py --workdir=runs/sweeps
    python launch.py --sweep=configs/sweeps/world_copying_facts.py:runlocal --workdir=/tmp/sweep_local

world_copying's experiment with the facts judge in place of the accuracy-only
one (configs/world_tldr.py:judge=facts): accuracy first, and of two accurate
summaries the one that states more of the story's facts is better; salience,
length and copying are not judged. Ziegler's labellers, asked only to ensure
accuracy, "preferred sentences copied wholesale from the input". The full
judge's group is world_fig1's (and world_copying's), trained once per workdir.
Same figure, CSV and tests (`verdicts.md`) as world_copying.
"""

from configs.sweeps.world_copying import copying_sweep


def get_sweep(arg=None):
    return copying_sweep("world_copying_facts", ("full", "facts"), arg)

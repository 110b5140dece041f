"""Ziegler et al. 2019's "smart copiers" under a labeller who trusts copied text.

    python launch.py --sweep=configs/sweeps/world_copying_skim.py --workdir=runs/sweeps
    python launch.py --sweep=configs/sweeps/world_copying_skim.py:runlocal --workdir=/tmp/sweep_local

world_copying's experiment with the skim judge in place of the accuracy-only
one (configs/world_tldr.py:judge=skim): accuracy first, then the more of the
story's facts the better, with a sentence copied word for word trusted at a
glance and any other sentence doubted (-1), the heuristic Ziegler et al.
suspected their labellers of (they "preferred sentences copied wholesale
from the input"). Both groups, five seeds each, run PPO at the
fixed KL coefficient 0.05 instead of the config's 0.5: at 0.5 the policy
barely leaves SFT (0.2-0.6 nats). Same figure, CSV and tests (`verdicts.md`)
as world_copying.
"""

from configs.sweeps.world_copying import copying_sweep

KL_COEF = 0.05


def get_sweep(arg=None):
    return copying_sweep("world_copying_skim", ("full", "skim"), arg, kl_coef=KL_COEF)

"""rlhf_jax: reinforcement learning from human preferences in JAX/Flax.

Reproduces Ziegler et al. 2019 and Stiennon et al. 2020; see README.md.
"""

__version__ = "0.1.0"

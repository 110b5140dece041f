"""The numerical core: log-probs, losses, PPO, KL control, optimizers, the sampler.

Pure, jit-safe functions of arrays; nothing here reads a config file, a
workdir or the device layout.
"""

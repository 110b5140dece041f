"""Test setup: 4 simulated CPU devices, set before jax is imported anywhere."""

import os

# Must precede the first `import jax` in the process: device count is fixed at
# backend initialisation.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

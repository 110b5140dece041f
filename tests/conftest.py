"""Test setup: 4 simulated CPU devices, set before jax is imported anywhere."""

import os
import tempfile

# Must precede the first `import jax` in the process: device count is fixed at
# backend initialisation.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Subprocess-based tests (launch.py runs, multi-host workers) compile the same
# functions again; a persistent cache shared by the session's processes saves
# that time. Environment variables, so child processes inherit them.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "rlhf_jax_test_jit_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# A size limit makes JAX lock the cache around each read and write: the two
# workers and their subprocesses share it, and an entry read while another
# process is still writing it crashes the reader (infra/compile_cache.py).
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(16 << 30))

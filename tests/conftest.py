"""Every test process sees 8 CPU devices, so sharded and 1-device runs can be compared.

This must run before jax is imported anywhere.
"""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# commands the tests start share one persistent compilation cache for this session only (not the user's)
if "R1JAX_COMPILE_CACHE" not in os.environ:
    import tempfile

    os.environ["R1JAX_COMPILE_CACHE"] = tempfile.mkdtemp(prefix="r1jax-test-jax-cache-")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

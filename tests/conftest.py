"""Test set-up: eight simulated CPU devices, strict dtype promotion, offline data."""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TFDS_DISABLE_GCS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_dtype_promotion", "strict")
# Partitionable threefry compiles a new program (~3 s on a 2-core CPU) for every new
# random shape under jit; the classic form is as random and ten times faster to build.
jax.config.update("jax_threefry_partitionable", False)

# Hypothesis: bounded, deterministic runs (JIT compiles make the first examples slow).
settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True)
settings.load_profile("ci")

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The real offline data files beside the repository (``../shared/data``)."""
  if not SHARED_DATA.is_dir():
    if os.environ.get("CI"):
      pytest.fail(f"{SHARED_DATA} is missing: CI runs with ../shared beside the clone.")
    pytest.skip(f"{SHARED_DATA} is not here (the real data sits beside the clone).")
  return SHARED_DATA


def pytest_configure(config):
  assert jax.device_count() == 8, (
    "tests need 8 simulated CPU devices; jax was initialised before conftest ran"
  )

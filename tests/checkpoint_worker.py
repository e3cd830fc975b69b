"""A small checkpointed training run shared by test_checkpoint.py and its subprocesses.

Run as a fresh process: ``python tests/checkpoint_worker.py DIR NUM_STEPS [HANG_AT]``
trains to NUM_STEPS with checkpoints in DIR (resuming from the latest one there); with
HANG_AT it writes ``DIR/HANGING`` and sleeps when it is about to run step HANG_AT, so
the test can kill it between two checkpoints; $CHECKPOINT_WORKER_DELAY (seconds) slows
every batch, so that a signal can arrive mid-run.

The run has everything a checkpoint must carry: BatchNorm statistics, Adam's state, a
learned loss parameter (NT-Xent's log-temperature), a cross-batch memory, and batches
drawn from (seed, step).
"""

from __future__ import annotations

import functools
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

# The same random-number implementation as the test process (tests/conftest.py), so
# that this process and the test compute the same run.
jax.config.update("jax_threefry_partitionable", False)

from metriclearn import models, training  # noqa: E402
from metriclearn.losses.softmax import ntxent_loss  # noqa: E402

SAVE_EVERY, KEEP = 2, 3


def learned_temperature_ntxent(embeddings, labels, *, log_temperature, **kwargs):
  return ntxent_loss(embeddings, labels, temperature=jnp.exp(log_temperature), **kwargs)


def batches(step: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng([7, step])
  return {
    "image": rng.normal(size=(8, 6)).astype(np.float32),
    "label": rng.integers(0, 3, 8).astype(np.int32),
  }


@functools.cache
def setup() -> tuple:
  """(step, initial state): the same in every process."""
  model = models.Encoder(
    models.MLPEncoder(hidden=(16,), batch_norm=True),
    models.EmbeddingHead(4, normalize=False),
  )
  state = training.create_train_state(
    jax.random.PRNGKey(0),
    model,
    optax.adam(1e-2),
    batches(0)["image"],
    loss_params={"log_temperature": jnp.log(0.5)},
    memory_size=20,
  )
  return training.make_train_step(model, learned_temperature_ntxent), state


def run(directory, num_steps: int, hang_at: int | None = None):
  step, state = setup()

  delay = float(os.environ.get("CHECKPOINT_WORKER_DELAY", 0))  # seconds a batch

  def source(s):
    time.sleep(delay)
    if s == hang_at:
      pathlib.Path(directory, "HANGING").touch()
      time.sleep(3600)
    return batches(s)

  return training.fit(
    step,
    state,
    source,
    num_steps=num_steps,
    checkpoint_dir=directory,
    save_every=SAVE_EVERY,
    keep=KEEP,
    progress=False,
  )


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  jax.config.update("jax_num_cpu_devices", 8)  # as in conftest: same numerics
  jax.config.update("jax_numpy_dtype_promotion", "strict")
  directory, num_steps = sys.argv[1], int(sys.argv[2])
  run(directory, num_steps, int(sys.argv[3]) if len(sys.argv) > 3 else None)

"""Conv-4's 2x2 max pool: Flax's ``nn.max_pool`` (XLA ``reduce_window``, whose
gradient is a select-and-scatter) against ``models.max_pool_2x2`` (a crop, a reshape
and a max), in the main job's training step: Conv-4 (64 filters) on 28 x 28 images,
SupCon over 32 classes x 4 a batch, forward + backward, on the default backend.

  python benchmarks/pooling.py --write benchmarks/pooling.md

The two steps are timed alternately in one process (5 rounds of 20 steps each, the
median round), so the ratio is measured on the same machine state.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from machine import command, machine  # benchmarks/machine.py (run from benchmarks/)

from metriclearn import losses, models


class Conv4(nn.Module):
  """models.ConvEncoder's blocks with the pooling function as a parameter."""

  pool: object

  @nn.compact
  def __call__(self, x):
    for _ in range(4):
      x = nn.Conv(64, (3, 3), padding="SAME")(x)
      x = nn.relu(nn.BatchNorm(use_running_average=False)(x))
      x = self.pool(x)
    return x.reshape(x.shape[0], -1)


def step_fn(pool, x, y):
  model = Conv4(pool)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)

  def loss(v):
    e, _ = model.apply(v, x, mutable=["batch_stats"])
    e = e / jnp.linalg.norm(e, axis=-1, keepdims=True)
    return losses.supcon_loss(e, y, temperature=0.1).mean()

  grad = jax.jit(jax.value_and_grad(loss))
  jax.block_until_ready(grad(variables))  # compile
  return grad, variables


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--write", default=None, help="a Markdown file for the results")
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((128, 28, 28, 1), np.float32))
  y = jnp.repeat(jnp.arange(32), 4)
  pools = {
    "nn.max_pool": lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)),
    "max_pool_2x2": models.max_pool_2x2,
  }
  steps = {name: step_fn(pool, x, y) for name, pool in pools.items()}
  values = {name: float(g(v)[0]) for name, (g, v) in steps.items()}
  rates = {name: [] for name in pools}
  for _ in range(args.rounds):
    for name, (grad, variables) in steps.items():
      start = time.perf_counter()
      for _ in range(args.steps):
        out = grad(variables)
      jax.block_until_ready(out)
      rates[name].append(args.steps / (time.perf_counter() - start))
  lines = [f"Machine: {machine()}", ""]
  for name in pools:
    lines.append(
      f"{name}: {statistics.median(rates[name]):.2f} steps/s (loss {values[name]:.6f})"
    )
  ratio = statistics.median(rates["max_pool_2x2"]) / statistics.median(
    rates["nn.max_pool"]
  )
  lines.append(f"ratio {ratio:.3f}  (max_pool_2x2 over nn.max_pool)")
  print("\n".join(lines))
  if args.write:
    with open(args.write, "w") as f:
      f.write("# Conv-4's max pool: reduce_window against reshape-and-max\n\n")
      f.write(f"Command: {command()}\n\n")
      f.write("```\n" + "\n".join(lines) + "\n```\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())

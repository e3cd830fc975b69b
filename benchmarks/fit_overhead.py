"""How much of the device's time ``training.fit`` loses to the host: fit as a user runs
it against a bare jitted loop on batches already on the device.

  python benchmarks/fit_overhead.py --write benchmarks/fit_overhead.md

For each case (a 3-layer MLP on scikit-learn's digits, a step well under a millisecond
on a 2-core CPU; a Conv-4 on the bundled Omniglot pack) it times, in one process:

- **bare**: ``jax.jit(step)`` called on pre-made device batches (one per step, made
  before timing), the metrics left on the device, one ``block_until_ready`` at the end;
- **fit**: ``training.fit`` with the library's seeded ``balanced_batches`` sampler and
  the uint8 -> float conversion in the input function, its background prefetch
  (depth 2), logging to a JSON-lines file every 10 steps, no evaluation or progress bar,

each after a warm-up of the same length (compilation excluded), alternating bare and fit
three times, and prints the median steps/s of each and ``ratio <fit / bare>`` lines.
The issue's target is a ratio >= 0.9 on the CPU.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from machine import command, machine  # benchmarks/machine.py (run from benchmarks/)

from metriclearn import data, losses, models, training


def _cases():
  digits = data.load("digits")
  mlp = models.Encoder(
    models.MLPEncoder(hidden=(256, 256), batch_norm=True), models.EmbeddingHead(32)
  )
  omniglot = data.load("omniglot", "background")
  conv4 = models.Encoder(models.ConvEncoder(filters=64), models.EmbeddingHead(128))
  return {
    "mlp_digits": (mlp, digits, 10, 10),  # 10 classes x 10 images = 100 a batch
    "conv4_omniglot": (conv4, omniglot, 64, 4),  # 256 a batch
  }


def _sampler(ds, p, k):
  to_float = jax.jit(data.to_float)
  for batch in data.balanced_batches(ds, p, k, seed=0):
    yield {"image": to_float(batch["image"]), "label": batch["label"]}


def measure(name: str, steps: int) -> dict:
  model, ds, p, k = _cases()[name]
  loss = functools.partial(losses.supcon_loss, temperature=0.1)
  step = training.make_train_step(model, loss)
  example = np.asarray(data.to_float(ds.images[:2]))
  state = training.create_train_state(
    jax.random.PRNGKey(0), model, optax.adam(1e-3), example
  )
  sampler = _sampler(ds, p, k)
  premade = [jax.device_put(next(sampler)) for _ in range(steps)]
  run = jax.jit(step, donate_argnums=0)

  def bare() -> float:
    s = jax.tree.map(jnp.array, state)
    jax.block_until_ready(s)
    start = time.perf_counter()
    for batch in premade:
      s, metrics = run(s, batch)
    jax.block_until_ready((s, metrics))
    return steps / (time.perf_counter() - start)

  def fit() -> float:
    with tempfile.TemporaryDirectory() as tmp:
      start = time.perf_counter()
      out = training.fit(
        step,
        state,
        _sampler(ds, p, k),
        num_steps=steps,
        log_path=os.path.join(tmp, "log.jsonl"),
        log_every=10,
        progress=False,
      )
      jax.block_until_ready(out)
      return steps / (time.perf_counter() - start)

  bare(), fit()  # warm-up: compilation, first-call costs
  rates = {"bare": [], "fit": []}
  for _ in range(3):
    rates["bare"].append(bare())
    rates["fit"].append(fit())
  b, f = statistics.median(rates["bare"]), statistics.median(rates["fit"])
  return {"case": name, "bare": b, "fit": f, "ratio": f / b, "step_ms": 1e3 / b}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cases", nargs="*", default=list(_cases()))
  parser.add_argument("--steps", type=int, default=None, help="default: per case")
  parser.add_argument("--write", default=None, help="a Markdown file for the results")
  args = parser.parse_args(argv)
  lines = [f"Machine: {machine()}", ""]
  print(lines[0], flush=True)
  for name in args.cases:
    steps = args.steps or (400 if name.startswith("mlp") else 60)
    r = measure(name, steps)
    line = (
      f"{name}: bare {r['bare']:.1f} steps/s ({r['step_ms']:.2f} ms a step), fit "
      f"{r['fit']:.1f} steps/s, {steps} steps"
    )
    print(line)
    print(f"ratio {r['ratio']:.3f}", flush=True)
    lines += [f"- {line}", f"  `ratio {r['ratio']:.3f}`"]
  if args.write:
    text = "\n".join(
      [
        "# fit against a bare jitted loop",
        "",
        f"Command: {command()}.",
        "",
        *lines,
        "",
      ]
    )
    with open(args.write, "w") as f:
      f.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())

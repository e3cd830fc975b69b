"""The block shape of a slot pass: batch-all and semi-hard triplet with
``max_positives=k`` (terms of [block_a, k, block_c]) at n = 4096, forward + backward,
for several (block_a, block_c), in one process, against one n x n x d product timed
beside each: where ``pairs.auto_slot_block_size`` comes from.

  python benchmarks/slot_blocks.py --write benchmarks/slot_blocks.md

Embeddings float32 N(0, 1), d = 128, labels from n/4 classes (NumPy seed 0, as
``benchmarks/losses.py``), k = the batch's most positives of an anchor. Each shape is
timed in ``--rounds`` rounds that alternate the shapes (the median of each shape's
rounds), so a change of load spreads over all of them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from machine import command, machine  # benchmarks/machine.py (run from benchmarks/)

from metriclearn import losses

SHAPES = ((512, 512), (256, 1024), (128, 2048), (128, 4096), (64, 4096))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--n", type=int, default=4096)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--write", default=None, help="a Markdown file for the results")
  args = parser.parse_args(argv)
  n = args.n
  rng = np.random.default_rng(0)
  e = jnp.asarray(rng.standard_normal((n, 128)), jnp.float32)
  labels = rng.integers(0, max(1, n // 4), size=n)
  b = jnp.asarray(rng.standard_normal((n, 128)), jnp.float32)
  k = int(np.bincount(labels).max()) - 1
  labels = jnp.asarray(labels, jnp.int32)
  product = jax.jit(lambda x, y: x @ y.T).lower(e, b).compile()

  def timed(f, *a) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(f(*a))
    return time.perf_counter() - t0

  header = f"Machine: {machine()}. n = {n}, d = 128, k = {k}."
  print(header, flush=True)
  lines = [
    "| loss | block (anchors, candidates) | forward + backward | × the product "
    "| × (512, 512) |",
    "|---|---|---|---|---|",
  ]
  for name in ("batch_all_triplet_loss", "semi_hard_triplet_loss"):
    fn = getattr(losses, name)
    steps = {}
    for shape in SHAPES:

      def objective(x, shape=shape, fn=fn):
        return jnp.mean(fn(x, labels, block_size=shape, max_positives=k))

      steps[shape] = jax.jit(jax.value_and_grad(objective)).lower(e).compile()
      timed(steps[shape], e)  # one untimed run
    times: dict = {shape: [] for shape in SHAPES}
    ratios: dict = {shape: [] for shape in SHAPES}
    for _ in range(args.rounds):
      for shape in SHAPES:
        t = timed(steps[shape], e)
        times[shape].append(t)
        ratios[shape].append(t / min(timed(product, e, b) for _ in range(3)))
    base = statistics.median(ratios[SHAPES[0]])
    for shape in SHAPES:
      ratio = statistics.median(ratios[shape])
      lines.append(
        f"| {name} | {shape} | {1e3 * statistics.median(times[shape]):.0f} ms | "
        f"{ratio:.1f}× | {ratio / base:.2f} |"
      )
      print(lines[-1], flush=True)
  if args.write:
    with open(args.write, "w") as f:
      doc = __doc__.split("\n\n")
      f.write("# The block shape of a slot pass\n\n")
      f.write("\n\n".join([doc[0], doc[2]]) + "\n\n")
      f.write(f"Command: {command()}.\n\n{header}\n\n" + "\n".join(lines) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())

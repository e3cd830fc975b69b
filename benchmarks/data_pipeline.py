"""Does the Omniglot input pipeline keep up with training the 4-block conv encoder?

Times, in batches (or steps) per second:

1. ``sampler``: host P x K batches from ``balanced_batches`` (NumPy gather).
2. ``augment``: ``device_put`` of a host batch + Koch et al.'s random affine on device.
3. ``pipeline``: (1) -> ``prefetch_to_device`` (size 2) -> (2), what training consumes.
4. ``train step``: augmentation + forward + backward + Adam of ``Encoder(ConvEncoder(),
   EmbeddingHead(64))`` with the batch-hard triplet loss on one fixed device batch.
5. ``train loop``: (3) feeding (4), augmentation inside the jitted step; the gap to (4)
   is what the data path costs the training loop.

Run from the repository root (the results file records the command and machine):

  python benchmarks/data_pipeline.py --out benchmarks/data_pipeline.md
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import optax

from metriclearn import data
from metriclearn.losses.triplet import batch_hard_triplet_loss
from metriclearn.models import ConvEncoder, EmbeddingHead, Encoder

ROOT = pathlib.Path(__file__).resolve().parents[1]


def rate(fn, iters: int, repeats: int) -> float:
  """Calls per second: the median over ``repeats`` runs of ``iters`` calls."""
  fn()  # warm-up (compilation)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(iters):
      out = fn()
    jax.block_until_ready(out)
    times.append(time.perf_counter() - start)
  return iters / statistics.median(times)


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--omniglot", default=str(ROOT.parent / "shared" / "data" / "omniglot")
  )
  parser.add_argument("--image-size", type=int, default=28)
  parser.add_argument("--classes", type=int, default=32, help="P classes per batch")
  parser.add_argument("--samples", type=int, default=4, help="K images per class")
  parser.add_argument("--iters", type=int, default=50)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default=None, help="write the results (markdown) here")
  args = parser.parse_args(argv)

  t0 = time.perf_counter()
  ds = data.load_omniglot(args.omniglot, "background", image_size=args.image_size)
  load_s = time.perf_counter() - t0
  p, k = args.classes, args.samples
  augment = partial(data.random_affine, **data.KOCH_AFFINE)

  # 1. host sampler
  sampler = data.balanced_batches(ds, p, k, seed=0)
  sampler_rate = rate(lambda: next(sampler), args.iters, args.repeats)

  # 2. transfer + augmentation on device
  aug = jax.jit(lambda key, x: augment(key, data.to_float(x)))
  key = jax.random.key(0)
  host = next(sampler)
  augment_rate = rate(
    lambda: aug(key, jax.device_put(host["image"])), args.iters, args.repeats
  )

  # 3. the whole input pipeline
  prefetched = data.prefetch_to_device(data.balanced_batches(ds, p, k, seed=1))
  keys = iter(jax.random.split(key, 10**5))
  pipeline_rate = rate(
    lambda: aug(next(keys), next(prefetched)["image"]), args.iters, args.repeats
  )

  # 4. the train step alone
  model = Encoder(ConvEncoder(), EmbeddingHead(64))
  variables = model.init(jax.random.key(1), data.to_float(host["image"][:2]))
  tx = optax.adam(1e-3)
  state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

  @jax.jit
  def step(state, batch, key):
    params, stats, opt = state

    def loss_fn(params):
      x = augment(key, data.to_float(batch["image"]))
      emb, new = model.apply(
        {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
      )
      loss = batch_hard_triplet_loss(emb, batch["label"], margin=0.2)
      return jnp.mean(loss), new["batch_stats"]

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return (optax.apply_updates(params, updates), stats, opt), loss

  fixed = jax.device_put(host)
  holder = {"state": state}

  def one_step(batch):
    holder["state"], loss = step(holder["state"], batch, next(keys))
    return loss

  step_rate = rate(lambda: one_step(fixed), args.iters, args.repeats)

  # 5. the train loop fed by the pipeline
  loop_rate = rate(lambda: one_step(next(prefetched)), args.iters, args.repeats)
  prefetched.close()

  device = jax.devices()[0]
  lines = [
    "# Omniglot input pipeline vs. the 4-block conv encoder",
    "",
    f"Command: `{' '.join([os.path.basename(sys.executable), *sys.argv])}` "
    "(from the repository root)",
    "",
    f"- machine: {platform.platform()}, {os.cpu_count()} CPU threads visible, "
    f"processor {platform.processor() or platform.machine()}, load average "
    f"{os.getloadavg()[0]:.1f} at the end (other processes share the machine)",
    f"- JAX {jax.__version__}, backend {jax.default_backend()}, device "
    f"{device.device_kind} x {jax.device_count()}",
    f"- data: images_background.zip, {len(ds)} images, {ds.num_classes} classes, "
    f"{args.image_size}x{args.image_size}; load {load_s:.1f} s (cache hit if < 1 s)",
    f"- batch: P={p} classes x K={k} images = {p * k}; augmentation: random_affine "
    "with KOCH_AFFINE; model: Encoder(ConvEncoder(), EmbeddingHead(64)), batch-hard "
    "triplet loss, Adam",
    f"- each figure: median of {args.repeats} runs of {args.iters} iterations",
    "",
    "| stage | per second | ms each |",
    "| --- | ---: | ---: |",
  ]
  for name, value in [
    ("1. host sampler (batches)", sampler_rate),
    ("2. device_put + augmentation (batches)", augment_rate),
    ("3. pipeline: sampler -> prefetch -> augmentation (batches)", pipeline_rate),
    ("4. train step alone, fixed batch (steps)", step_rate),
    ("5. train loop fed by the pipeline (steps)", loop_rate),
  ]:
    lines.append(f"| {name} | {value:,.1f} | {1000 / value:.2f} |")
  lines += [
    "",
    f"Pipeline / step rate: {pipeline_rate / step_rate:.1f}x; the fed loop runs at "
    f"{100 * loop_rate / step_rate:.0f}% of the step-alone rate.",
  ]
  report = "\n".join(lines) + "\n"
  print(report)
  if args.out:
    pathlib.Path(args.out).write_text(report)
  return report


if __name__ == "__main__":
  main()

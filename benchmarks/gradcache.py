"""Peak memory and time of one training step of a Conv-4 on n Omniglot-sized images
(28 x 28, SupCon), the plain step against the GradCache step
(``metriclearn.gradcache``: chunked embedding, the loss's gradient at the
embeddings, chunked VJPs).

  python benchmarks/gradcache.py --write benchmarks/gradcache.md

Each (step, n) runs in its own process, so its peak resident memory (``ru_maxrss``)
is its own: the first step (compilation) untimed, then the median of ``--repeats``
steps. The images are random (memory and time do not depend on them), labels n/4
classes x 4. Both steps use blockwise SupCon (``block_size=1024``) so that the n x n
matrices never exist; the GradCache step embeds ``--chunk`` images at a time.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from machine import machine  # benchmarks/machine.py (scripts run from benchmarks/)

SIZES = (4096, 16384, 65536)


def case(mode: str, n: int, chunk: int, repeats: int) -> dict:
  import functools

  import jax
  import numpy as np
  import optax

  from metriclearn import gradcache, losses, models, training

  model = models.Encoder(models.ConvEncoder(filters=64), models.EmbeddingHead(128))
  rng = np.random.default_rng(0)
  batch = {
    "image": rng.random((n, 28, 28, 1), dtype=np.float32),
    "label": (np.arange(n) // 4).astype(np.int32),
  }
  loss = functools.partial(losses.supcon_loss, temperature=0.1, block_size=1024)
  if mode == "plain":
    step = training.make_train_step(model, loss)
  else:
    step = gradcache.make_gradcache_step(model, loss, chunk_size=chunk)
  state = training.create_train_state(
    jax.random.key(0), model, optax.adam(1e-3), batch["image"][:2]
  )
  run = jax.jit(step, donate_argnums=0)
  batch = jax.device_put(batch)
  times = []
  for i in range(repeats + 1):
    start = time.perf_counter()
    state, metrics = run(state, batch)
    jax.block_until_ready((state, metrics))
    if i:
      times.append(time.perf_counter() - start)
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
  return {
    "mode": mode,
    "n": n,
    "seconds": statistics.median(times),
    "peak_gib": peak,
    "loss": float(metrics["loss"]),
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--case", help="internal: MODE:N in this process")
  parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
  parser.add_argument("--chunk", type=int, default=1024)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--plain-max", type=int, default=16384, help="largest plain n")
  parser.add_argument("--timeout", type=float, default=1800.0)
  parser.add_argument("--write", help="a Markdown file for the results")
  args = parser.parse_args(argv)
  if args.case:
    mode, n = args.case.split(":")
    print(json.dumps(case(mode, int(n), args.chunk, args.repeats)))
    return 0
  lines = [f"Machine: {machine()}", ""]
  print(lines[0], flush=True)
  rows = []
  for n in args.sizes:
    for mode in ("plain", "gradcache"):
      if mode == "plain" and n > args.plain_max:
        rows.append(f"| {mode} | {n} | not run (over --plain-max) | |")
        print(rows[-1], flush=True)
        continue
      cmd = [sys.executable, __file__, "--case", f"{mode}:{n}"]
      cmd += ["--chunk", str(args.chunk), "--repeats", str(args.repeats)]
      try:
        out = subprocess.run(
          cmd, capture_output=True, text=True, timeout=args.timeout, check=True
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(
          f"| {mode} | {n} | {r['seconds']:.2f} s | {r['peak_gib']:.2f} GiB |"
        )
      except subprocess.CalledProcessError as e:
        tail = (e.stderr or "").strip().splitlines()[-1:]
        rows.append(f"| {mode} | {n} | failed: {' '.join(tail)[:80]} | |")
      except subprocess.TimeoutExpired:
        rows.append(f"| {mode} | {n} | over {args.timeout:.0f} s | |")
      print(rows[-1], flush=True)
  table = ["| step | n | time a step | peak memory |", "|---|---|---|---|", *rows]
  if args.write:
    command = " ".join(["python", "benchmarks/gradcache.py", *(argv or sys.argv[1:])])
    text = [
      "# GradCache: a Conv-4 step on n images, plain against chunked",
      "",
      __doc__.split("\n\n")[0].replace("\n", " "),
      "",
      f"Command: `{command}`",
      "",
      *lines,
      *table,
      "",
    ]
    with open(args.write, "w") as f:
      f.write("\n".join(text))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())

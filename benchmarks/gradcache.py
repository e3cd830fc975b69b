"""Peak memory and time of one training step of a Conv-4 on n Omniglot-sized images
(28 x 28, SupCon), the plain step against the GradCache step
(``metriclearn.gradcache``: chunked embedding, the loss's gradient at the
embeddings, chunked VJPs) in its two loop forms.

  python benchmarks/gradcache.py --write benchmarks/gradcache.md

Each (step, n) runs in its own process, so its peak resident memory (``ru_maxrss``)
is its own: the first step (compilation) untimed, then the median of ``--repeats``
steps. The images are random (memory and time do not depend on them), labels n/4
classes x 4. Every step uses blockwise SupCon (``block_size=1024``) so that the n x n
matrices never exist; the GradCache steps embed ``--chunk`` images at a time, with
``loop='scan'`` (one jitted program) or ``loop='python'`` (a compiled call a chunk).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from machine import machine, write_generated  # benchmarks/machine.py

CASES = (
  "plain:1024",
  "plain:4096",
  "scan:1024",
  "python:1024",
  "python:4096",
  "python:16384",
  "python:65536",
)


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
    chunk = min(chunk, n)
    step = gradcache.make_gradcache_step(model, loss, chunk_size=chunk, loop=mode)
  state = training.create_train_state(
    jax.random.key(0), model, optax.adam(1e-3), batch["image"][:2]
  )
  # a loop='python' step compiles (and donates) its parts itself
  run = step if mode == "python" else jax.jit(step, donate_argnums=0)
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
  parser.add_argument(
    "--cases", nargs="+", default=list(CASES), help="MODE:N, MODE plain/scan/python"
  )
  parser.add_argument("--chunk", type=int, default=1024)
  parser.add_argument("--repeats", type=int, default=2)
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
  for spec in args.cases:
    mode, n = spec.split(":")
    name = "plain" if mode == "plain" else f"GradCache, loop='{mode}'"
    cmd = [sys.executable, __file__, "--case", spec]
    cmd += ["--chunk", str(args.chunk), "--repeats", str(args.repeats)]
    try:
      out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=args.timeout, check=True
      )
      r = json.loads(out.stdout.strip().splitlines()[-1])
      rows.append(
        f"| {name} | {n} | {r['seconds']:.2f} s | {r['peak_gib']:.2f} GiB "
        f"| {r['loss']:.5f} |"
      )
    except subprocess.CalledProcessError as e:
      tail = (e.stderr or "").strip().splitlines()[-1:]
      rows.append(f"| {name} | {n} | failed: {' '.join(tail)[:80]} | | |")
    except subprocess.TimeoutExpired:
      rows.append(f"| {name} | {n} | over {args.timeout:.0f} s | | |")
    print(rows[-1], flush=True)
  table = [
    "| step | n | time a step | peak memory | loss (last step) |",
    "|---|---|---|---|---|",
    *rows,
  ]
  if args.write:
    command = " ".join(["python", "benchmarks/gradcache.py", *(argv or sys.argv[1:])])
    body = [
      __doc__.split("\n\n")[0].replace("\n", " "),
      "",
      f"Command: `{command}`",
      "",
      *lines,
      *table,
    ]
    title = "GradCache: a Conv-4 step on n images, plain against chunked"
    write_generated(args.write, "\n".join(body), title)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())

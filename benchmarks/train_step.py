"""Time of one compiled training step (encoder forward + loss + backward + AdamW update)
on whatever JAX's default backend is (CPU, GPU or TPU).

  python benchmarks/train_step.py                      # every case below
  python benchmarks/train_step.py --cases conv4_supcon_256 --steps 20

Each case builds the experiments' step (``training.make_train_step`` under
``jax.jit`` with the state donated), feeds a fixed random batch, and reports the
compile time and the median of ``--steps`` steps after 3 warm-up steps, with
``block_until_ready`` on the new state. Data loading is not included (see
``benchmarks/data_pipeline.py``). Device memory is the backend's
``peak_bytes_in_use`` where it reports one (GPU, TPU), else the process's peak
resident memory. Every case runs in its own process, so its peak is its own.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import time

# name -> (model, image side, channels, batch, loss, kind)
CASES = {
  "conv4_supcon_256": ("conv4", 28, 1, 256, "supcon", "batch"),
  "conv4_supcon_1024": ("conv4", 28, 1, 1024, "supcon", "batch"),
  "conv4_contrastive_128pairs": ("conv4", 28, 1, 128, "contrastive", "pair"),
  "conv4_arcface_256": ("conv4", 28, 1, 256, "arcface", "proxy"),
  "conv4_84px_ntxent_256": ("conv4", 84, 3, 256, "ntxent", "batch"),
  "koch_105px_contrastive_128pairs": ("koch", 105, 1, 128, "contrastive", "pair"),
  "resnet18_84px_multi_similarity_256": ("resnet", 84, 3, 256, "ms", "batch"),
}


def run_case(name: str, steps: int) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from metriclearn import losses, models, training
  from metriclearn.losses import proxy

  model_name, side, channels, batch, loss_name, kind = CASES[name]
  backbone = {
    "conv4": models.ConvEncoder,
    "koch": functools.partial(models.KochTower, padding="SAME"),
    "resnet": models.ResNet,
  }[model_name]()
  model = models.Encoder(backbone, models.EmbeddingHead(128))
  loss, params = {
    "supcon": (losses.supcon_loss, {}),
    "ntxent": (losses.ntxent_loss, {}),
    "ms": (losses.multi_similarity_loss, {}),
    "contrastive": (losses.contrastive_loss, {}),
    "arcface": (
      proxy.arcface_loss,
      {"proxies": proxy.init_proxies(jax.random.PRNGKey(1), 1000, 128)},
    ),
  }[loss_name]
  rng = np.random.default_rng(0)
  shape = (batch, side, side, channels)
  labels = jnp.asarray(np.repeat(np.arange(batch // 4), 4), jnp.int32)
  if kind == "pair":
    data = {
      "x1": jnp.asarray(rng.random(shape), jnp.float32),
      "x2": jnp.asarray(rng.random(shape), jnp.float32),
      "similar": jnp.asarray(rng.random(batch) < 0.5),
    }
    example = data["x1"][:2]
  else:
    data = {"image": jnp.asarray(rng.random(shape), jnp.float32), "label": labels}
    example = data["image"][:2]
  state = training.create_train_state(
    jax.random.PRNGKey(0), model, optax.adamw(1e-3), example, loss_params=params
  )
  step = jax.jit(training.make_train_step(model, loss, kind=kind), donate_argnums=0)
  t0 = time.perf_counter()
  compiled = step.lower(state, data).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(3):
    state, metrics = compiled(state, data)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, data)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  images = batch * (2 if kind == "pair" else 1)
  median = float(np.median(times))
  return {
    "case": name,
    "images_per_step": images,
    "compile_s": round(compile_s, 2),
    "step_ms": round(1e3 * median, 3),
    "images_per_s": round(images / median),
    "memory_mib": round(
      peak / 2**20 if peak is not None else resource.getrusage(0).ru_maxrss / 1024
    ),
    "memory_kind": "device peak" if peak is not None else "process peak RSS",
    "loss": float(metrics["loss"]),
    "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
  }


def describe() -> str:
  import jax

  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(x.split(":", 1)[1].strip() for x in f if x.startswith("model name"))
  except (OSError, StopIteration):
    pass
  dev = jax.devices()[0]
  return (
    f"{getattr(dev, 'device_kind', dev.platform)} ({jax.default_backend()}), host "
    f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, JAX "
    f"{jax.__version__}"
  )


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
  parser.add_argument("--steps", type=int, default=20, help="timed steps per case")
  parser.add_argument("--case", help="internal: run one case in this process")
  args = parser.parse_args(argv)
  if args.case:
    print(json.dumps(run_case(args.case, args.steps)), flush=True)
    return
  print(f"machine: {describe()}", flush=True)
  command = "python benchmarks/train_step.py " + " ".join(
    argv if argv is not None else sys.argv[1:]
  )
  print(f"command: `{command.strip()}`\n", flush=True)
  head = "| case | images/step | params | compile s | step ms | images/s | memory MiB |"
  print(head + "\n|---|---|---|---|---|---|---|", flush=True)
  for name in args.cases:
    cmd = [sys.executable, __file__, "--case", name, "--steps", str(args.steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode or not lines:
      tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:120]
      print(f"| {name} | failed: {tail} |", flush=True)
      continue
    r = json.loads(lines[-1])
    print(
      f"| {name} | {r['images_per_step']} | {r['params']:,} | {r['compile_s']} | "
      f"{r['step_ms']} | {r['images_per_s']:,} | {r['memory_mib']} "
      f"({r['memory_kind']}) |",
      flush=True,
    )


if __name__ == "__main__":
  main()

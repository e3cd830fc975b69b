"""Several hosts: two processes on 127.0.0.1 train as one, and equal one 8-device run.

  python examples/multihost.py          # starts both processes and the reference

Each process starts ``jax.distributed`` (CPU: gloo collectives, 4 simulated devices),
so the mesh spans 8 devices over 2 processes. The step is jitted over that mesh, the
parameters replicated and the global batch sharded: each process feeds its half
(``parallel.shard_batch`` assembles the global array), and the loss is SupCon over a
ring of the 8 devices (``ring=True``: every device's embeddings are candidates of every
anchor, passed around with ``ppermute`` across the processes). A single process with 8
devices runs the same global batches; the example compares the final parameters and
exits non-zero if they differ (rtol 1e-5). It prints one summary line.

On a GPU cluster or a TPU pod the same worker code runs with one process per host:
call ``parallel.initialize(coordinator, num_processes, process_id)`` first (without
``local_device_count``: each host's accelerators are its local devices), and give each
process its own part of the global batch.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import socket
import subprocess
import sys

STEPS, GLOBAL_BATCH, PROCESSES, LOCAL_DEVICES = 6, 64, 2, 4


def train(out: pathlib.Path, process_id: int) -> None:
  """The run itself: the same code in every process (and in the reference)."""
  import jax
  import numpy as np
  import optax

  from metriclearn import data, losses, models, parallel, training

  mesh = parallel.make_mesh()
  digits = data.load("digits")
  sampler = data.balanced_batches(digits, GLOBAL_BATCH // 8, 8, seed=0)
  model = models.Encoder(models.MLPEncoder(hidden=(64,)), models.EmbeddingHead(16))
  example = np.asarray(data.to_float(digits.images[:2]))
  state = training.create_train_state(
    jax.random.PRNGKey(0), model, optax.sgd(0.1, momentum=0.9), example
  )
  loss = parallel.shard_loss(losses.supcon_loss, mesh, ring=True, block_size=4)
  step = parallel.jit_step(training.make_train_step(model, loss), mesh)
  state = parallel.replicate(state, mesh=mesh)
  part = GLOBAL_BATCH // jax.process_count()
  rows = slice(process_id * part, (process_id + 1) * part)
  for _ in range(STEPS):
    batch = next(sampler)  # every process draws the global batch, keeps its part
    local = {"image": np.asarray(data.to_float(batch["image"][rows]))}
    local["label"] = batch["label"][rows]
    state, metrics = step(state, parallel.shard_batch(local, mesh=mesh))
  flat = {
    "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)
  }
  if process_id == 0:
    np.savez(out, loss=np.asarray(metrics["loss"]), **flat)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--role", choices=("launch", "worker", "reference"), default="launch"
  )
  parser.add_argument("--process-id", type=int, default=0)
  parser.add_argument("--coordinator", default=None)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  if args.role == "worker":
    from metriclearn import parallel

    parallel.initialize(
      args.coordinator, PROCESSES, args.process_id, local_device_count=LOCAL_DEVICES
    )
    train(pathlib.Path(args.out), args.process_id)
    return 0
  if args.role == "reference":
    import jax

    jax.config.update("jax_num_cpu_devices", PROCESSES * LOCAL_DEVICES)
    train(pathlib.Path(args.out), 0)
    return 0

  import tempfile

  import numpy as np

  tmp = pathlib.Path(tempfile.mkdtemp())
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  run = functools.partial(subprocess.Popen, env=env)
  me = [sys.executable, os.path.abspath(__file__)]
  coordinator = f"127.0.0.1:{_free_port()}"
  workers = [
    run(
      me
      + [
        "--role",
        "worker",
        "--process-id",
        str(i),
        "--coordinator",
        coordinator,
        "--out",
        str(tmp / "multi.npz"),
      ]
    )
    for i in range(PROCESSES)
  ]
  reference = run(me + ["--role", "reference", "--out", str(tmp / "single.npz")])
  codes = [p.wait(timeout=600) for p in [*workers, reference]]
  if any(codes):
    print(f"multihost: FAILED, exit codes {codes} (workers, reference)")
    return 1
  multi, single = np.load(tmp / "multi.npz"), np.load(tmp / "single.npz")
  worst = max(
    float(np.max(np.abs(multi[k] - single[k]) / np.max(np.abs(single[k]))))
    for k in single.files
  )
  same = sorted(multi.files) == sorted(single.files) and all(
    np.allclose(multi[k], single[k], rtol=1e-5, atol=1e-6) for k in single.files
  )
  print(
    f"multihost: {PROCESSES} processes x {LOCAL_DEVICES} devices vs 1 x "
    f"{PROCESSES * LOCAL_DEVICES}, {STEPS} steps of ring SupCon: final loss "
    f"{float(multi['loss']):.6f} vs {float(single['loss']):.6f}, largest parameter "
    f"difference (relative to its array's largest entry) {worst:.2e}: "
    f"{'equal' if same else 'DIFFERENT'}"
  )
  return 0 if same else 1


if __name__ == "__main__":
  sys.exit(main())

"""Forward + backward time and peak memory of every batch-form loss, dense and
blockwise, against optax and against the n x n x d matrix product.

Run from the repository root::

  python benchmarks/losses.py --write benchmarks/results.md     # full run, ~20 min
  python benchmarks/losses.py --sizes 256 1024 --quick           # smoke test, ~2 min

Every (loss, form, n) case runs in its own subprocess (``--case``), so its peak
resident memory (``ru_maxrss`` of that process) is its own; a watchdog kills a case
whose resident memory passes ``--mem-limit-gib`` and a case that needs more than the
limit by a conservative estimate is not started ("not run: reason"). Timings are the
median of several runs of the compiled ``value_and_grad`` after one untimed run (one
run and no warm-up at n >= 16384, where a run takes seconds to minutes), compile time
excluded. Each loss case also times one n x n x d matrix product in its own process,
right after the loss (n <= 16384), and its ratio is to that product, so that a change
of load during the run does not skew the ratios. Embeddings are float32 N(0, 1),
d = 128, labels drawn from n/4 classes (about 4 per class, as in m-per-class
batches). Batch-all and semi-hard run as their slot forms (``max_positives`` = the
batch's most positives of an anchor: 11 at n = 4096), dense and in the blocks that
``block_size="auto"`` gives a slot pass (128 anchors x 4096 candidates on the CPU),
and as their exact forms for any number of positives ("exact": batch-all sorted in
blocks of 256 anchors, semi-hard's sorted rows).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

from machine import write_generated  # benchmarks/machine.py (run from benchmarks/)

SIZES = (256, 1024, 4096, 16384, 65536)
D = 128
GIB = 2**30

# loss -> the forms it has, and the largest n each form runs at (time caps: dense
# O(n^3) batch-all, the sorted O(n^2 log n) forms and the 65536 blockwise cases cost
# minutes each; n = 65536 runs for the three target losses).
CAPS = {
  "ntxent": {"dense": 65536, "blockwise": 65536, "optax": 65536},
  "supcon": {"dense": 65536, "blockwise": 65536},
  "multi_similarity": {"dense": 65536, "blockwise": 65536},
  "soft_nearest_neighbor": {"dense": 65536, "blockwise": 16384},
  "sigmoid_pairwise": {"dense": 65536, "blockwise": 16384},
  "npair": {"dense": 65536, "blockwise": 16384},
  "circle": {"dense": 65536, "blockwise": 16384},
  "contrastive": {"dense": 65536, "blockwise": 16384},
  "lifted_structure": {"dense": 65536, "blockwise": 16384},
  "margin": {"dense": 65536, "blockwise": 16384},
  "batch_hard_triplet": {"dense": 65536, "blockwise": 16384},
  # the slot forms (max_positives = the batch's most positives) dense and blockwise,
  # and the exact forms for any number of positives
  "semi_hard_triplet": {"dense": 4096, "blockwise": 16384, "exact": 4096},
  "batch_all_triplet": {"dense": 4096, "blockwise": 16384, "exact": 4096},
}
SLOT_LOSSES = ("semi_hard_triplet", "batch_all_triplet")
BLOCKWISE_TARGETS = ("ntxent", "supcon", "multi_similarity")
MATMUL_MAX_N = 16384  # the [n, n] product itself needs 17 GB at 65536


# ----------------------------------------------------------------------------------
# One case (runs in the child process).


def _loss_fn(loss: str, form: str, block_size, max_positives=None):
  import functools

  import jax.numpy as jnp
  import optax

  from metriclearn import losses

  fns = {
    "ntxent": losses.ntxent_loss,
    "supcon": losses.supcon_loss,
    "multi_similarity": losses.multi_similarity_loss,
    "soft_nearest_neighbor": losses.soft_nearest_neighbor_loss,
    "sigmoid_pairwise": functools.partial(
      losses.sigmoid_pairwise_loss, scale=10.0, bias=-10.0
    ),
    "npair": losses.npair_loss,
    "circle": losses.circle_loss,
    "contrastive": losses.batch_contrastive_loss,
    "lifted_structure": losses.lifted_structure_loss,
    "margin": losses.margin_loss,
    "batch_hard_triplet": losses.batch_hard_triplet_loss,
    "semi_hard_triplet": losses.semi_hard_triplet_loss,
    "batch_all_triplet": losses.batch_all_triplet_loss,
  }
  fn = fns[loss]
  if loss in SLOT_LOSSES:
    if form == "exact":  # batch-all sorted, 256 anchors a block; semi-hard sorted rows
      block = 256 if loss == "batch_all_triplet" else None
      fn = functools.partial(fn, block_size=block_size or block)
      return lambda e, labels: jnp.mean(fn(e, labels))
    fn = functools.partial(fn, max_positives=max_positives)
  if form == "dense":
    return lambda e, labels: jnp.mean(fn(e, labels))
  if form == "blockwise":  # 512 x 512 blocks; slot forms: what "auto" gives them
    if loss in SLOT_LOSSES and not block_size:
      from metriclearn import pairs

      block_size = pairs.auto_slot_block_size(10**9)  # (128, 4096) on the CPU
    fn = functools.partial(fn, block_size=block_size or 512)
    return lambda e, labels: jnp.mean(fn(e, labels))
  if form == "optax" and loss == "ntxent":
    return lambda e, labels: optax.losses.ntxent(e, labels, temperature=0.1)
  raise ValueError(f"no form {form!r} for {loss!r}")


def run_case(loss: str, form: str, n: int, block_size, repeats: int) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  rng = np.random.default_rng(0)
  e = jnp.asarray(rng.standard_normal((n, D)), jnp.float32)
  out = {}
  if loss == "matmul":
    b = jnp.asarray(rng.standard_normal((n, D)), jnp.float32)
    step = jax.jit(lambda x, y: x @ y.T)
    args = (e, b)
  elif loss == "triplet_form":
    # n explicit triplets (no labels): the triplet form, where optax applies.
    p = jnp.asarray(rng.standard_normal((n, D)), jnp.float32)
    q = jnp.asarray(rng.standard_normal((n, D)), jnp.float32)
    if form == "optax":
      import optax

      def fn(a):
        return jnp.mean(optax.losses.triplet_margin_loss(a, p, q, margin=0.2))
    else:
      from metriclearn.losses import triplet

      def fn(a):
        losses = jax.vmap(
          lambda x, y, z: triplet.triplet_margin_loss(x, y, z, squared=False)
        )(a, p, q)
        return jnp.mean(losses)

    step = jax.jit(jax.value_and_grad(fn))
    args = (e,)
  elif loss == "baseline":
    step = jax.jit(lambda x: jnp.sum(x * x))
    args = (e,)
  else:
    labels = jnp.asarray(rng.integers(0, max(1, n // 4), size=n), jnp.int32)
    k = int(np.bincount(np.asarray(labels)).max()) - 1  # the most positives
    out["max_positives"] = k
    step = jax.jit(jax.value_and_grad(_loss_fn(loss, form, block_size, k)))
    args = (e, labels)
  t0 = time.perf_counter()
  compiled = step.lower(*args).compile()
  out["compile_s"] = time.perf_counter() - t0
  if n <= 4096:  # one untimed run (first-call costs); too slow to repeat above
    jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  out["times_s"] = times
  out["time_s"] = float(np.median(times))
  # an accelerator reports its own peak; on CPU the process's peak resident memory
  peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  out["memory_mib"] = (
    peak / 2**20
    if peak is not None
    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  )
  if loss in CAPS and n <= MATMUL_MAX_N:
    # The reference product, timed in the same process right after the loss, so
    # that the ratio holds however loaded the machine is (memory was read above).
    b = jnp.asarray(rng.standard_normal((n, D)), jnp.float32)
    product = jax.jit(lambda x, y: x @ y.T).lower(e, b).compile()
    jax.block_until_ready(product(e, b))
    ref = []
    for _ in range(3):
      t0 = time.perf_counter()
      jax.block_until_ready(product(e, b))
      ref.append(time.perf_counter() - t0)
    out["matmul_s"] = float(np.median(ref))
  return out


# ----------------------------------------------------------------------------------
# The parent: estimates, subprocesses, tables.


def estimate_bytes(loss: str, form: str, n: int) -> float:
  """A conservative guess of the memory a case needs (to skip, not to report)."""
  base = 0.4 * GIB
  if loss == "matmul":
    return base + 4.0 * n * n
  if loss in ("baseline", "triplet_form"):
    return base
  if form == "blockwise":
    return base + 64.0 * n * D * 4
  if form == "optax":  # broadcasts an [n, n, d] difference tensor (and its gradient)
    return base + 3.0 * n * n * D * 4
  if loss in SLOT_LOSSES and form == "dense":  # [n, k, n] terms, k about 16
    return base + 6.0 * n * n * 16 * 4
  return base + 8.0 * n * n * 4  # a few [n, n] float matrices, forward and backward


def _rss_mib(pid: int) -> float:
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return 0.0


def spawn(args, loss, form, n) -> dict:
  if n > CAPS.get(loss, {}).get(form, 10**9):
    return {"status": "capped", "reason": "time cap (see CAPS)"}
  need = estimate_bytes(loss, form, n)
  if need > args.mem_limit_gib * GIB:
    return {
      "status": "skipped",
      "reason": f"needs ~{need / GIB:.0f} GiB > {args.mem_limit_gib} GiB",
    }
  repeats = 5 if n <= 1024 else 3 if n <= 4096 else 1
  if loss == "matmul":  # the reference: always a median of several runs
    repeats = max(repeats, 3)
  if args.quick:
    repeats = min(repeats, 2)
  cmd = [
    sys.executable,
    os.path.abspath(__file__),
    "--case",
    f"{loss}:{form}:{n}:{repeats}",
  ]
  if args.block_size:
    cmd += ["--block-size", str(args.block_size)]
  env = dict(os.environ, JAX_PLATFORMS=args.platform)
  t0 = time.time()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
  peak, why = 0.0, None
  while proc.poll() is None:
    rss = _rss_mib(proc.pid)
    peak = max(peak, rss)
    if rss > args.mem_limit_gib * 1024:
      why = f"killed: resident memory passed {args.mem_limit_gib} GiB"
    elif time.time() - t0 > args.timeout:
      why = f"killed: over the {args.timeout} s timeout"
    if why:
      proc.kill()
      proc.wait()
      return {"status": "killed", "reason": why, "watch_peak_mib": peak}
    time.sleep(0.05)
  stdout, stderr = proc.communicate()
  lines = [x for x in stdout.decode().splitlines() if x.startswith("{")]
  if proc.returncode != 0 or not lines:
    tail = stderr.decode().strip().splitlines()[-1:] or ["?"]
    return {"status": "failed", "reason": tail[0][:200]}
  out = json.loads(lines[-1])
  out["status"] = "ok"
  out["wall_s"] = time.time() - t0
  return out


def machine() -> dict:
  import jax
  import jaxlib

  cpu = platform.processor() or "?"
  try:
    with open("/proc/cpuinfo") as f:
      names = [x.split(":", 1)[1].strip() for x in f if x.startswith("model name")]
      cpu = names[0] if names else cpu
  except OSError:
    pass
  mem = "?"
  try:
    with open("/proc/meminfo") as f:
      kib = int(next(x for x in f if x.startswith("MemTotal")).split()[1])
      mem = f"{kib / 2**20:.1f} GiB"
  except (OSError, StopIteration):
    pass
  return {
    "cpu": cpu,
    "cores": os.cpu_count(),
    "memory": mem,
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "platform": platform.platform(),
  }


def _cell_time(r: dict, matmul: dict | None) -> str:
  if r["status"] != "ok":
    return {"capped": "—", "skipped": "not run", "killed": "killed"}.get(
      r["status"], "failed"
    )
  s = f"{r['time_s']:.3g} s"
  ratio = _ratio(r, matmul)
  if ratio is not None:
    s += f" ({ratio:.1f}×)"
  return s


def _ratio(r: dict, matmul: dict | None) -> float | None:
  """Time over one matrix product: the product timed in the case's own process."""
  if "matmul_s" in r:
    return r["time_s"] / r["matmul_s"]
  if matmul and matmul.get("status") == "ok":
    return r["time_s"] / matmul["time_s"]
  return None


def _cell_mem(r: dict) -> str:
  if r["status"] == "ok":
    return f"{r['memory_mib']:.0f}"
  if r["status"] == "killed":
    return f">{r['watch_peak_mib'] / 1024:.0f} GiB"
  return "—"


def tables(results: dict, sizes) -> str:
  out = []
  head = "| loss | form | " + " | ".join(f"n = {n}" for n in sizes) + " |"
  rule = "|" + "---|" * (len(sizes) + 2)
  mm = {n: results.get(("matmul", "-", n)) for n in sizes}
  out += ["### Matrix product n × n × d (one, forward only)", "", head, rule]
  cells = []
  for n in sizes:
    r = mm[n]
    if r and r["status"] == "ok":
      gflops = 2 * n * n * D / r["time_s"] / 1e9
      cells.append(f"{r['time_s']:.3g} s, {gflops:.0f} GFLOP/s")
    else:
      cells.append(f"not run: {r['reason']}" if r else "—")
  out += ["| matmul | — | " + " | ".join(cells) + " |", ""]
  out += [
    "### Forward + backward time (median; in parentheses: × one n × n × d matrix "
    "product at the same n, timed in the same process right after the loss)",
    "",
    head,
    rule,
  ]
  keys = sorted(
    {(loss, form) for (loss, form, _) in results if loss in CAPS},
    key=lambda k: (list(CAPS).index(k[0]), k[1]),
  )
  for loss, form in keys:
    row = [
      _cell_time(results[(loss, form, n)], mm[n]) if (loss, form, n) in results else "—"
      for n in sizes
    ]
    out.append(f"| {loss} | {form} | " + " | ".join(row) + " |")
  out += ["", "### Peak resident memory of the process (MiB)", "", head, rule]
  for loss, form in [("matmul", "-")] + keys:
    row = [
      _cell_mem(results[(loss, form, n)]) if (loss, form, n) in results else "—"
      for n in sizes
    ]
    out.append(f"| {loss} | {form} | " + " | ".join(row) + " |")
  out += [
    "",
    "### Triplet form, n explicit (anchor, positive, negative) triplets: forward + "
    "backward (this is where optax's triplet_margin_loss applies)",
    "",
    head,
    rule,
  ]
  for form in ("metriclearn", "optax"):
    row = [
      _cell_time(results[("triplet_form", form, n)], None)
      if ("triplet_form", form, n) in results
      else "—"
      for n in sizes
    ]
    out.append(f"| triplet_margin_loss | {form} | " + " | ".join(row) + " |")
  notes = sorted(
    {
      f"- {loss} {form} n = {n}: {r['status']}: {r['reason']}"
      for (loss, form, n), r in results.items()
      if r["status"] in ("skipped", "killed", "failed")
    }
  )
  if notes:
    out += ["", "Not run or not finished:", ""] + notes
  return "\n".join(out)


def targets(results: dict) -> str:
  lines = []
  mm = results.get(("matmul", "-", 4096))
  if mm and mm["status"] == "ok":
    lines.append(
      f"1. n = 4096: every loss within 5× one 4096 × 128 × 4096 product "
      f"({mm['time_s'] * 1e3:.1f} ms in its own process; each ratio uses the "
      "product timed beside the loss):"
    )
    for (loss, form, n), r in sorted(results.items()):
      if n == 4096 and loss in CAPS and r["status"] == "ok":
        ratio = _ratio(r, mm)
        verdict = "met" if ratio <= 5 else "MISSED"
        lines.append(f"   - {loss} ({form}): {ratio:.1f}× — {verdict}")
  lines.append("2. n = 65536: NT-Xent, SupCon, multi-similarity under 2 GiB peak:")
  for loss in BLOCKWISE_TARGETS:
    r = results.get((loss, "blockwise", 65536))
    if r is None:
      lines.append(f"   - {loss}: not run")
    elif r["status"] == "ok":
      gib = r["memory_mib"] / 1024
      verdict = "met" if gib < 2 else "MISSED"
      lines.append(
        f"   - {loss} (blockwise): {gib:.2f} GiB, {r['time_s']:.0f} s — {verdict}"
      )
    else:
      lines.append(f"   - {loss} (blockwise): {r['status']}: {r.get('reason')}")
  lines.append(
    "3. Blockwise within 1.3× of dense time where dense fits (each time in units of "
    "the product timed beside it, which cancels a change of load between the two):"
  )
  for (loss, form, n), r in sorted(results.items()):
    dense = results.get((loss, "dense", n))
    if form == "blockwise" and r["status"] == "ok" and dense:
      if dense["status"] == "ok":
        ratio = r["time_s"] / dense["time_s"]
        if "matmul_s" in r and "matmul_s" in dense:  # each in units of its product
          ratio *= dense["matmul_s"] / r["matmul_s"]
        verdict = "met" if ratio <= 1.3 else "MISSED"
        lines.append(f"   - {loss} n = {n}: {ratio:.2f}× dense — {verdict}")
  mm = results.get(("matmul", "-", 4096))
  r = results.get(("semi_hard_triplet", "blockwise", 4096))
  if mm and r and r["status"] == "ok":
    ratio = _ratio(r, mm)
    verdict = "met" if ratio <= 10 else "MISSED"
    lines.append(
      f"4. Semi-hard blockwise at n = 4096 within 10× one product: {ratio:.1f}× — "
      f"{verdict}"
    )
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--case", help="internal: LOSS:FORM:N:REPEATS in this process")
  parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
  parser.add_argument("--losses", nargs="+", default=list(CAPS))
  parser.add_argument("--block-size", type=int, default=None)
  parser.add_argument("--mem-limit-gib", type=float, default=12.0)
  parser.add_argument("--timeout", type=float, default=420.0)
  parser.add_argument("--quick", action="store_true", help="at most 2 timed runs")
  parser.add_argument("--write", help="write the tables into this markdown file")
  parser.add_argument(
    "--platform", default="cpu", help="JAX_PLATFORMS of the cases (cpu, cuda, tpu)"
  )
  args = parser.parse_args(argv)

  if args.case:
    loss, form, n, repeats = args.case.split(":")
    out = run_case(loss, form, int(n), args.block_size, int(repeats))
    print(json.dumps(out), flush=True)
    return

  info = machine()
  load_start = os.getloadavg()
  print(json.dumps(info), flush=True)
  print(f"load average at start: {load_start}", flush=True)
  results = {}
  plan = [("baseline", "-", 256)]
  plan += [("matmul", "-", n) for n in args.sizes]
  plan += [("triplet_form", f, n) for n in args.sizes for f in ("metriclearn", "optax")]
  for loss in args.losses:
    for form in CAPS[loss]:
      plan += [(loss, form, n) for n in args.sizes]
  t_start = time.time()
  for loss, form, n in plan:
    r = spawn(args, loss, form, n)
    results[(loss, form, n)] = r
    if r["status"] != "capped":
      shown = (
        f"{r['time_s']:.4g} s, {r['memory_mib']:.0f} MiB"
        if r["status"] == "ok"
        else f"{r['status']}: {r.get('reason')}"
      )
      print(f"{loss:22s} {form:11s} n={n:6d}  {shown}", flush=True)
  results = {k: v for k, v in results.items() if v["status"] != "capped"}
  load_end = os.getloadavg()
  elapsed = time.time() - t_start
  command = "python benchmarks/losses.py " + " ".join(
    a for a in (argv if argv is not None else sys.argv[1:])
  )
  baseline = results[("baseline", "-", 256)]
  body = "\n".join(
    [
      f"Command: `{command.strip()}` (from the repository root, {elapsed / 60:.0f} "
      "min).",
      "",
      f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory']}; "
      f"{info['platform']}; Python {info['python']}, JAX {info['jax']}, "
      f"jaxlib {info['jaxlib']}, {args.platform} backend. Load average (1, 5, 15 "
      f"min) at the start: {', '.join(f'{x:.2f}' for x in load_start)}; at the end: "
      f"{', '.join(f'{x:.2f}' for x in load_end)}.",
      "",
      (
        "Memory is the peak resident set of the case's own process"
        if args.platform == "cpu"
        else f"Memory is the {args.platform} device's peak_bytes_in_use in the "
        "case's own process"
      )
      + "; a process that only imports JAX and runs a tiny function peaks at "
      + f"{baseline.get('memory_mib', float('nan')):.0f} MiB.",
      "",
      tables(results, args.sizes),
      "",
      "### The issue's targets",
      "",
      targets(results),
    ]
  )
  print(body, flush=True)
  if args.write:
    write_generated(args.write, body, "Loss benchmarks")


if __name__ == "__main__":
  main()

"""metriclearn against pytorch-metric-learning (PML), side by side on one machine.

Forward + backward w.r.t. the embeddings of the same function in both libraries, on
the same float32 N(0, 1) embeddings (d = 128) and the same labels, drawn uniformly
from n/4 classes with NumPy's seed 0 (as ``benchmarks/losses.py`` draws them). Each
(library, loss, form, n) case runs in its own process; PML's run under the Python
given by ``--pml-python`` (a scratch venv with torch and pytorch-metric-learning),
with ``torch.set_num_threads`` = the machine's cores. Times are the median of
``--repeats`` runs (at least 30 at n <= 1024) after one untimed run (compile time
excluded for JAX). Every case
also prints its loss value, so the two libraries are seen computing the same number.

  python -m venv /tmp/pml && /tmp/pml/bin/pip install torch pytorch-metric-learning
  python benchmarks/pml.py --pml-python /tmp/pml/bin/python --write benchmarks/pml.md

(``benchmarks/pml.md`` names the command and the versions of its run.)

The pairs compared (PML's reduction, the same in metriclearn):

* batch_all: ``TripletMarginLoss(margin=0.2, distance=LpDistance(normalize_embeddings=
  False))`` (every triplet, ``AvgNonZeroReducer``) against ``batch_all_triplet_loss(
  margin=0.2, average='batch', max_positives=k).mean()``, k = the batch's largest class
  minus one (its most positives), and without ``max_positives`` (the exact sorted form);
* npair: ``NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False))``
  against ``npair_loss(l2_reg=0)``, summed over the used anchors (one per class) and
  divided by their number;
* batch_hard: ``TripletMarginLoss(margin=0.2, distance=lp)`` on ``BatchHardMiner(
  distance=lp)``'s triplets, lp = ``LpDistance(normalize_embeddings=False)``, against
  ``batch_hard_triplet_loss(margin=0.2)`` averaged over the anchors that have a
  positive and a negative;
* supcon, multi_similarity, circle, ntxent: each library's defaults (the values differ
  where the defaults do: timing only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

D = 128
SIZES = (256, 1024, 4096, 16384)

# loss -> metriclearn's forms (PML's is "pml"); "auto" is block_size="auto".
FORMS = {
  "batch_all": ("bounded", "sorted"),
  "npair": ("dense", "auto"),
  "batch_hard": ("dense", "auto"),
  "supcon": ("dense", "auto"),
  "multi_similarity": ("dense", "auto"),
  "circle": ("dense", "auto"),
  "ntxent": ("dense", "auto"),
}
# the largest n each loss runs at (PML's batch-all holds n x n x n triplets; the
# others hold several n x n matrices: N-pair alone, K x K, goes to 16384)
CAPS = {loss: 4096 for loss in FORMS if loss != "npair"}


def data(n: int):
  import numpy as np

  rng = np.random.default_rng(0)
  e = rng.standard_normal((n, D)).astype(np.float32)
  labels = rng.integers(0, max(1, n // 4), size=n).astype(np.int64)
  return e, labels


def _timed(run, repeats: int) -> tuple[float, list[float]]:
  import statistics

  run()  # one untimed run
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def pml_case(loss: str, n: int, repeats: int) -> dict:
  import torch
  from pytorch_metric_learning import distances, losses, miners

  torch.set_num_threads(os.cpu_count() or 1)
  e_np, y_np = data(n)
  labels = torch.from_numpy(y_np)
  lp = distances.LpDistance(normalize_embeddings=False)
  miner = None
  if loss == "batch_all":
    fn = losses.TripletMarginLoss(margin=0.2, distance=lp)
  elif loss == "batch_hard":
    fn = losses.TripletMarginLoss(margin=0.2, distance=lp)
    miner = miners.BatchHardMiner(distance=lp)  # (its default distance normalises)
  elif loss == "npair":  # (its default similarity normalises: compare the same dot)
    dot = distances.DotProductSimilarity(normalize_embeddings=False)
    fn = losses.NPairsLoss(distance=dot)
  else:
    fn = {
      "supcon": losses.SupConLoss,
      "multi_similarity": losses.MultiSimilarityLoss,
      "circle": losses.CircleLoss,
      "ntxent": losses.NTXentLoss,
    }[loss]()
  value = []

  def run():
    e = torch.from_numpy(e_np).requires_grad_(True)
    out = fn(e, labels, miner(e, labels)) if miner else fn(e, labels)
    out.backward()
    value[:] = [float(out)]

  median, times = _timed(run, repeats)
  return {"time_s": median, "times_s": times, "value": value[0]}


def metriclearn_case(loss: str, form: str, n: int, repeats: int) -> dict:
  import functools

  import jax
  import jax.numpy as jnp
  import numpy as np

  from metriclearn import losses

  e_np, y_np = data(n)
  e, labels = jnp.asarray(e_np), jnp.asarray(y_np, jnp.int32)
  block = {"dense": None, "auto": "auto"}.get(form, "auto")
  if loss == "batch_all":
    k = int(np.bincount(y_np).max()) - 1 if form == "bounded" else None
    fn = functools.partial(
      losses.batch_all_triplet_loss, margin=0.2, average="batch", max_positives=k
    )
    if form == "sorted":
      block = 256
    objective = lambda x: jnp.mean(fn(x, labels, block_size=block))  # noqa: E731
  elif loss == "npair":

    def objective(x):
      per = losses.npair_loss(x, labels, l2_reg=0.0, block_size=block)
      used = _npair_used(y_np)
      return jnp.sum(per) / used
  elif loss == "batch_hard":
    has_both = _has_positive_and_negative(y_np)

    def objective(x):
      per = losses.batch_hard_triplet_loss(x, labels, margin=0.2, block_size=block)
      return jnp.sum(per) / has_both
  else:
    fn = {
      "supcon": losses.supcon_loss,
      "multi_similarity": losses.multi_similarity_loss,
      "circle": losses.circle_loss,
      "ntxent": losses.ntxent_loss,
    }[loss]
    objective = lambda x: jnp.mean(fn(x, labels, block_size=block))  # noqa: E731
  step = jax.jit(jax.value_and_grad(objective))
  t0 = time.perf_counter()
  compiled = step.lower(e).compile()
  compile_s = time.perf_counter() - t0
  median, times = _timed(lambda: jax.block_until_ready(compiled(e)), repeats)
  return {
    "time_s": median,
    "times_s": times,
    "compile_s": compile_s,
    "value": float(compiled(e)[0]),
  }


def _npair_used(y) -> int:
  import numpy as np

  return int(np.sum(np.bincount(y) >= 2))  # one used anchor per class with a pair


def _has_positive_and_negative(y) -> int:
  import numpy as np

  counts = np.bincount(y)[y]
  return int(np.sum((counts >= 2) & (counts < len(y))))


# ----------------------------------------------------------------------------------
# The parent.


def repeats_for(n: int, repeats: int) -> int:
  """Cases of milliseconds (n <= 1024) are noisy: at least 30 runs."""
  return max(repeats, 30) if n <= 1024 else repeats


def spawn(python: str, case: str, repeats: int, timeout: float) -> dict:
  cmd = [python, os.path.abspath(__file__), "--case", case, "--repeats", str(repeats)]
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s"}
  if proc.returncode != 0:
    return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  out["wall_s"] = time.perf_counter() - t0
  return out


def _ms(r: dict) -> str:
  return r["error"] if "error" in r else f"{1e3 * r['time_s']:.1f} ms"


def table(results: dict, sizes) -> str:
  lines = [
    "| loss | n | PML | metriclearn (form) | PML / metriclearn | loss values (PML; "
    "metriclearn) |",
    "|---|---|---|---|---|---|",
  ]
  for loss, forms in FORMS.items():
    for n in sizes:
      ref = results.get(f"pml:{loss}:{n}")
      if ref is None:
        continue
      for form in forms:
        r = results.get(f"metriclearn:{loss}:{form}:{n}")
        if r is None:
          continue
        ratio = (
          f"**{ref['time_s'] / r['time_s']:.2f}x**"
          if "error" not in r and "error" not in ref
          else "—"
        )
        values = "; ".join(
          f"{x['value']:.6g}" if "value" in x else "—" for x in (ref, r)
        )
        lines.append(
          f"| {loss} | {n} | {_ms(ref)} | {_ms(r)} ({form}) | {ratio} | {values} |"
        )
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--case", help="internal: LIB:LOSS[:FORM]:N in this process")
  parser.add_argument("--pml-python", help="a Python with torch and PML installed")
  parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
  parser.add_argument("--losses", nargs="+", default=list(FORMS))
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--timeout", type=float, default=600.0)
  parser.add_argument("--write", help="a Markdown file for the results")
  args = parser.parse_args(argv)
  if args.case:
    lib, *rest = args.case.split(":")
    if lib == "pml":
      out = pml_case(rest[0], int(rest[1]), args.repeats)
    else:
      out = metriclearn_case(rest[0], rest[1], int(rest[2]), args.repeats)
    print(json.dumps(out))
    return 0
  if not args.pml_python:
    parser.error("give --pml-python (a venv with torch and pytorch-metric-learning)")
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from machine import command, machine

  versions = subprocess.run(
    [
      args.pml_python,
      "-c",
      "import torch, pytorch_metric_learning as p; print(torch.__version__, "
      "p.__version__)",
    ],
    capture_output=True,
    text=True,
    check=True,
  ).stdout.split()
  header = (
    f"Machine: {machine()}; PML {versions[1]} on torch {versions[0]} "
    f"({os.cpu_count()} threads)."
  )
  print(header, flush=True)
  results: dict = {}
  for n in args.sizes:
    for loss in args.losses:
      if n > CAPS.get(loss, n):
        continue
      cases = [(args.pml_python, f"pml:{loss}:{n}")] + [
        (sys.executable, f"metriclearn:{loss}:{form}:{n}") for form in FORMS[loss]
      ]
      for python, case in cases:
        repeats = repeats_for(n, args.repeats)
        results[case] = r = spawn(python, case, repeats, args.timeout)
        print(case, _ms(r), r.get("value", ""), flush=True)
  text = table(results, args.sizes)
  print(text)
  if args.write:
    with open(args.write, "w") as f:
      f.write("# metriclearn against pytorch-metric-learning\n\n")
      doc = (__doc__ or "").split("\n\n")
      f.write("\n\n".join([doc[1]] + doc[4:]) + "\n\n")  # what runs, what is compared
      f.write(f"Command: {command()}.\n\n{header}\n\n{text}\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""Runs a configuration over seeds and a grid of overrides, then tabulates mean +- std.

  python experiments/sweep.py --config experiments/configs/omniglot_oneshot.py \\
      --seeds 0 1 2 --grid train_split=background,small1,small2 --out runs/omniglot
  python experiments/sweep.py --config experiments/configs/compare.py --seeds 0 1 2 \\
      --grid dataset=omniglot,mnist --grid loss=contrastive,log_likelihood --jobs 4 \\
      --out runs/compare

Each run is ``experiments/train.py`` in its own process (``--jobs`` at a time), in
``OUT/<key>=<value>,..._s<seed>/`` with its output in ``stdout.txt``. A run whose
``metrics.json`` exists is not run again, so an interrupted sweep resumes (and train.py
resumes a run from its checkpoints). At the end ``OUT/summary.md`` and
``OUT/summary.json`` hold, for each grid point, every metric's mean and sample standard
deviation over the seeds that finished; ``--report`` writes them without running.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent


def grid_points(grid: list[str]) -> list[dict[str, str]]:
  """``["a=1,2", "b=x"]`` -> ``[{"a": "1", "b": "x"}, {"a": "2", "b": "x"}]``."""
  axes = []
  for item in grid:
    key, sep, values = item.partition("=")
    if not sep or not values:
      raise ValueError(f"--grid {item!r}: expected key=value1,value2,...")
    axes.append([(key, v) for v in values.split(",")])
  return [dict(point) for point in itertools.product(*axes)]


def run_name(point: dict[str, str], seed: int) -> str:
  label = ",".join(f"{k}={v}" for k, v in point.items()) or "run"
  return f"{label}_s{seed}"


def sample_std(values) -> float:
  """The sample standard deviation (ddof=1); 0 for a single value."""
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def markdown_table(head, rows) -> str:
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def run_one(config: str, point, seed, sets, out: pathlib.Path) -> tuple[str, float]:
  workdir = out / run_name(point, seed)
  if (workdir / "metrics.json").exists():
    return f"{workdir.name}: done before", 0.0
  workdir.mkdir(parents=True, exist_ok=True)
  command = [sys.executable, str(HERE / "train.py"), "--config", config]
  command += ["--seed", str(seed), "--workdir", str(workdir), "--no-progress"]
  for key, value in [*(s.split("=", 1) for s in sets), *point.items()]:
    command += ["--set", f"{key}={value}"]
  start = time.time()
  with open(workdir / "stdout.txt", "w") as log:
    code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
  took = time.time() - start
  status = "ok" if code == 0 else f"FAILED (exit {code}, see stdout.txt)"
  return f"{workdir.name}: {status} in {took:.0f} s", took


def summarize(out: pathlib.Path, points, seeds) -> tuple[str, list[dict]]:
  """One row per grid point: mean and sample std (ddof=1) of each metric."""
  rows = []
  for point in points:
    results = []
    for seed in seeds:
      path = out / run_name(point, seed) / "metrics.json"
      if path.exists():
        results.append(json.loads(path.read_text()))
    if not results:
      continue
    keys = list(results[0]["metrics"])
    values = {k: [r["metrics"][k] for r in results] for k in keys}
    rows.append(
      {
        "point": point,
        "seeds": [r["config"]["seed"] for r in results],
        "mean": {k: float(np.mean(v)) for k, v in values.items()},
        "std": {k: sample_std(v) for k, v in values.items()},
        "values": values,
        "wall_time_s": [r["wall_time_s"] for r in results],
        "machine": results[0]["machine"],
      }
    )
  if not rows:
    return "no finished runs\n", rows
  metrics = list(rows[0]["mean"])
  axes = list(rows[0]["point"])
  head = [*axes, "seeds", *metrics, "wall s / run"]
  cells = []
  for row in rows:
    cells.append([row["point"][a] for a in axes] + [str(len(row["seeds"]))])
    for k in metrics:
      mean, std = row["mean"].get(k), row["std"].get(k)
      cells[-1].append("" if mean is None else f"{mean:.4f} ± {std:.4f}")
    cells[-1].append(f"{np.mean(row['wall_time_s']):.0f}")
  machine = rows[0]["machine"]
  note = (
    f"mean ± sample std over seeds; machine: {machine['devices']} "
    f"({machine['backend']}), {machine['cpu']}, {machine['cores']} cores, "
    f"JAX {machine['jax']}"
  )
  return f"{markdown_table(head, cells)}\n\n{note}\n", rows


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--config", required=True)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  parser.add_argument("--out", required=True, help="folder of the runs and summary")
  parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
  parser.add_argument("--report", action="store_true", help="only tabulate")
  args = parser.parse_args(argv)
  if args.jobs < 1:
    parser.error(f"--jobs must be >= 1, got {args.jobs}.")
  points = grid_points(args.grid)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  if not args.report:
    if args.jobs > 1:  # runs share one accelerator: allocate on demand
      os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    start = time.time()
    todo = [(p, s) for p in points for s in args.seeds]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
      futures = [
        pool.submit(run_one, args.config, p, s, args.set, out) for p, s in todo
      ]
      for future in concurrent.futures.as_completed(futures):
        print(future.result()[0], flush=True)
    print(f"sweep: {len(todo)} runs in {time.time() - start:.0f} s", flush=True)
  table, rows = summarize(out, points, args.seeds)
  command = " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
  (out / "summary.md").write_text(f"`{command}`\n\n{table}")
  (out / "summary.json").write_text(json.dumps(rows, indent=2))
  print(table)
  return table


if __name__ == "__main__":
  main()

"""Writes the committed results (tables and figures) from the runs' metrics.json files.

  python experiments/report.py oneshot runs/oneshot runs/oneshot_small \\
      --out experiments/results/omniglot_oneshot.md
  python experiments/report.py compare runs/compare --paired runs/siamese \\
      --validation runs/siamese_val --out experiments/results/loss_comparison.md

Reads every ``*/metrics.json`` under the given folders (written by
``experiments/sweep.py``), groups the runs by their configuration (all but the seed),
and replaces the part of ``--out`` between the GENERATED markers with the tables (mean
± sample standard deviation over seeds, and each seed's value of the headline metric);
the figures go into a folder named after ``--out`` beside it. The prose around the
markers is written by hand and kept. ``compare``'s ``--paired`` runs (the pair losses,
seed for seed on the same pairs and initial encoder) give each metric's mean paired
difference and its 95 % t-interval; ``--validation`` runs (``holdout=validation``) the
table the hyperparameters were chosen from.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys

import numpy as np
from scipy import stats

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent / "benchmarks"))  # machine.write_generated

import ensemble  # noqa: E402
import figures  # noqa: E402
import registry  # noqa: E402
from machine import BEGIN, END, write_generated  # noqa: E402
from sweep import markdown_table as table  # noqa: E402
from sweep import sample_std  # noqa: E402

# 20-way within-alphabet one-shot accuracy of published methods, mostly from Lake,
# Salakhutdinov & Tenenbaum, Science 2015 (and its supplement), on the same 20 runs:
# (trained on, method, accuracy, source, what its protocol adds to ours).
CONVNET = "a convnet of the training characters (details in Lake et al.'s supplement)"
PUBLISHED = [
  (
    "background",
    "Attentive Recurrent Comparators (ConvARC)",
    0.985,
    "Shyam et al. 2017",
    "1.5 % error (its abstract); a recurrent comparator run on each (test, "
    "training) pair, not an embedding; its code (github.com/pranv/ARC) trains on the "
    "30 background alphabets at 32×32 with flips, rotation ±20°, shear ±10°, scale "
    "±20 %, shift ±5 px, validates on 10 of the evaluation alphabets (those the 20 "
    "runs are drawn from) and scores these 20 runs (one_shot_tests.py)",
  ),
  (
    "background",
    "Bayesian program learning (BPL)",
    0.967,
    "Lake et al. 2015",
    "the strokes of the background drawings (a generative model of motor programs)",
  ),
  ("background", "people", 0.955, "Lake et al. 2015", "no training on the task"),
  (
    "background",
    "generative neuro-symbolic model (GNS)",
    0.943,
    "Feinman & Lake 2020",
    "the strokes of the background drawings",
  ),
  (
    "background",
    "deep siamese convnet (Koch et al. 2015)",
    0.920,
    "Lake et al. 2015",
    "105×105 images, 8 affine distortions of each training pair",
  ),
  ("background", "deep convnet", 0.865, "Lake et al. 2015", CONVNET),
  ("small1", "deep convnet", 0.760, "Lake et al. 2015", CONVNET),
  ("small2", "deep convnet", 0.777, "Lake et al. 2015", CONVNET),
]
OURS_PROTOCOL = (
  "{size}×{size} images, Koch et al.'s affine augmentation, no strokes; the nearest "
  "training image by embedding distance"
)


def load_runs(folders) -> list[dict]:
  runs = []
  for folder in folders:
    for path in sorted(pathlib.Path(folder).glob("*/metrics.json")):
      result = json.loads(path.read_text())
      result["dir"] = path.parent
      runs.append(result)
  if not runs:
    raise SystemExit(f"no */metrics.json under {', '.join(map(str, folders))}")
  return runs


def group(runs, keys) -> dict[tuple, list[dict]]:
  out: dict[tuple, list[dict]] = {}
  for r in sorted(runs, key=lambda r: r["config"]["seed"]):
    out.setdefault(tuple(r["config"].get(k) for k in keys), []).append(r)
  return out


def stat(runs, metric, scale=1.0, digits=None) -> str:
  v = np.array([r["metrics"][metric] for r in runs]) * scale
  std = sample_std(v)
  digits = digits or (1 if scale == 100 else 3)
  return f"{v.mean():.{digits}f} ± {std:.{digits}f}"


def binomial(p: float, trials: int = 400) -> float:
  """Half-width, in points, of the 95 % normal interval of one score of ``trials``
  trials at accuracy ``p``: 1.96 sqrt(p (1 - p) / trials) (97 %: ±1.7)."""
  return 100 * 1.96 * float(np.sqrt(p * (1 - p) / trials))


def mean(runs, metric) -> float:
  return float(np.mean([r["metrics"][metric] for r in runs]))


def machine_line(runs) -> str:
  m = runs[0]["machine"]
  walls = [r["wall_time_s"] for r in runs]
  return (
    f"Machine: {m['devices']} ({m['backend']}), {m['cpu']}, {m['cores']} cores, JAX "
    f"{m['jax']}. Wall time per run: {min(walls):.0f}–{max(walls):.0f} s (several runs "
    "shared the machine at a time, so these are upper bounds)."
  )


def copy_figures(run, folder: pathlib.Path, prefix: str, names) -> list[str]:
  """Copies a run's figures next to the results file; a run committed without its
  figures (metrics.json only) keeps the copies already there."""
  folder.mkdir(parents=True, exist_ok=True)
  out = []
  for name in names:
    source, target = run["dir"] / "figures" / name, folder / f"{prefix}{name}"
    if source.exists():
      shutil.copyfile(source, target)
    if target.exists():
      out.append(target.name)
  return out


# ------------------------------------------------------------------ one-shot


TTA = "; at test time the mean embedding of 9 one-pixel shifts"


def steps_label(result: dict) -> str:
  """', 6,000 steps' where an ``ensemble.py`` result's members trained that long
  (results written before 2026-12-04 do not say: '')."""
  steps = set(result.get("steps", []))
  return f", {steps.pop():,} steps" if len(steps) == 1 else ""


# our official scores with 2 decimals: a score of 400 trials is a multiple of 0.25 %
def ensemble_rows(result: dict) -> list[list[str]]:
  """The official-runs rows of an ``ensemble.py`` result (``holdout=test``): its
  members' mean ± std and their ensemble, without and with test-time shifts."""
  size = result["config"]["image_size"]
  split = result["config"].get("train_split", "background")
  rows = []
  for tta in (False, True):
    rs = [r for r in result["rows"] if r["tta"] == tta]
    members = [r["official"] for r in rs if not ensemble.is_ensemble(r)]
    label = steps_label(result) + (", test-time shifts" if tta else "")
    protocol = OURS_PROTOCOL.format(size=size) + (TTA if tta else "")
    v = 100 * np.array(members)
    seeds = ", ".join(f"{x:.2f}" for x in v)
    rows.append(
      [
        split,
        f"**metriclearn: Conv-4 + SupCon, {size}x{size}{label} (CPU runs)**",
        f"**{v.mean():.2f} ± {sample_std(v):.2f}**",
        f"{len(v)} seeds ({seeds}); ±{binomial(v.mean() / 100):.1f} a score",
        protocol,
      ]
    )
    for r in filter(ensemble.is_ensemble, rs):
      rows.append(
        [
          split,
          f"**metriclearn: {r['encoder']} seeds{label}**",
          f"**{100 * r['official']:.2f}**",
          f"one score; ±{binomial(r['official']):.1f}",
          protocol + "; the seeds' embeddings concatenated",
        ]
      )
  return rows


def oneshot(runs, out: pathlib.Path, ensembles=()) -> str:
  """The official-runs table (ours beside PUBLISHED), the held-out metrics, the
  figures; ``ensembles``: ``ensemble.py`` results, rows of the official table
  (``holdout=test``) or a validation table each (``holdout=validation``)."""
  folder = out.with_suffix("")
  groups = group(runs, ("train_split", "batch_by_group", "image_size"))
  rows = [
    [split, name, f"{100 * acc:.1f}", source, protocol]
    for split, name, acc, source, protocol in PUBLISHED
  ]
  ours = {}
  for (split, by_group, size), rs in groups.items():
    name = f"metriclearn: Conv-4 + SupCon, {size}x{size}"
    name += ", alphabet-grouped batches" if by_group else ""
    seeds = ", ".join(
      f"{100 * r['metrics']['official_20way_one_shot']:.2f}" for r in rs
    )
    acc = mean(rs, "official_20way_one_shot")
    rows.append(
      [
        split,
        f"**{name}**",
        f"**{stat(rs, 'official_20way_one_shot', 100, digits=2)}**",
        f"{len(rs)} seeds ({seeds}); ±{binomial(acc):.1f} a score",
        OURS_PROTOCOL.format(size=size),
      ]
    )
    ours[(split, by_group)] = rs
  for result in ensembles:
    if result["holdout"] == "test":
      rows += ensemble_rows(result)
  order = {"background": 0, "small1": 1, "small2": 2}
  rows.sort(key=lambda r: (order[r[0]], -float(r[2].strip("*").split()[0])))
  head = ["trained on", "method", "20-way one-shot accuracy, %", "source", "protocol"]
  main = table(head, rows)
  metrics = [
    "precision_at_1",
    "r_precision",
    "map_at_r",
    "20way_one_shot",
    "20way_within_alphabet",
    "nmi",
    "roc_auc",
  ]
  held = [
    [split, "yes" if by_group else "no", *[stat(rs, m) for m in metrics]]
    for (split, by_group), rs in ours.items()
  ]
  held_table = table(["trained on", "grouped", *metrics], held)
  # the figure: ours (each seed a dot) beside the published numbers
  labels, values, points = [], [], []
  for split, name, acc, *_ in PUBLISHED:
    labels.append(f"{name} [{split}]")
    values.append(acc)
    points.append([])
  for (split, by_group), rs in ours.items():
    labels.append(f"metriclearn{' grouped' if by_group else ''} [{split}]")
    accs = [r["metrics"]["official_20way_one_shot"] for r in rs]
    values.append(float(np.mean(accs)))
    points.append(accs)
  for result in ensembles:
    if result["holdout"] != "test":
      continue
    split = result["config"].get("train_split", "background")
    shifted = [r for r in result["rows"] if r["tta"]]
    accs = [r["official"] for r in shifted if not ensemble.is_ensemble(r)]
    label = f"metriclearn{steps_label(result)}"
    labels.append(f"{label}, test-time shifts [{split}]")
    values.append(float(np.mean(accs)))
    points.append(accs)
    for r in filter(ensemble.is_ensemble, shifted):
      labels.append(f"{label}, {r['encoder']} + shifts [{split}]")
      values.append(r["official"])
      points.append([])
  figures.accuracy_bars(
    labels, values, points, folder / "accuracy.png", highlight="metriclearn"
  )
  first = ours[("background", False)][0]
  names = copy_figures(
    first,
    folder,
    "background_s0_",
    ["training_curves.png", "embedding_map.png", "distance_histograms.png", "roc.png"],
  )
  images = "\n".join(f"![{n}]({folder.name}/{n})" for n in ["accuracy.png", *names])
  validation = []
  for result in ensembles:
    if result["holdout"] == "validation":
      where = sorted({str(pathlib.Path(w).parent) for w in result.get("workdirs", [])})
      validation += [
        "### Validation: held-out background alphabets"
        + (f" ({', '.join(where)})" if where else ""),
        f"`{result['command']}`",
        ensemble.rows_table(result["rows"]),
      ]
  return "\n\n".join(
    [
      "### The official 20 runs (Lake et al.'s protocol)",
      main,
      *validation,
      "### The held-out evaluation alphabets (all 13,180 images of the 659 characters)",
      held_table,
      machine_line([r for rs in ours.values() for r in rs]),
      "### Figures",
      "`accuracy.png`: the official-runs accuracy beside Lake et al.'s table (dots: "
      "seeds). The other four are seed 0 trained on `images_background`: training "
      "curves with the held-out metrics every 500 steps, a PCA map of held-out "
      "embeddings, held-out pair distances, the verification ROC.",
      images,
    ]
  )


# ------------------------------------------------------------------ comparison


def paired_difference(a, b) -> tuple[float, float, float]:
  """Mean of the paired differences a_i - b_i and its 95 % Student-t interval:
  mean ± t(0.975, n - 1) · sd / sqrt(n)."""
  d = np.asarray(a, float) - np.asarray(b, float)
  if len(d) < 2:
    raise ValueError(f"a paired interval needs >= 2 pairs, got {len(d)}.")
  half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
  return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def interval(a, b) -> tuple[str, float, float]:
  """``paired_difference`` as the tables write it, with the interval's ends."""
  diff, low, high = paired_difference(a, b)
  return f"{diff:+.4f} [{low:+.4f}, {high:+.4f}]", low, high


def seed_pairs(runs, other) -> list[tuple[dict, dict]]:
  """The runs of two groups with the same seed, side by side."""
  by_seed = {r["config"]["seed"]: r for r in other}
  seeds = [r["config"]["seed"] for r in runs]
  return [(r, by_seed[s]) for r, s in zip(runs, seeds, strict=True) if s in by_seed]


def one_shot_metrics(run) -> list[str]:
  return [k for k in run["metrics"] if k.endswith("way_one_shot")]


# The pair-loss tables' columns: Omniglot's runs have the official 20 runs beside
# their random episodes, MNIST's only the episodes (5-way).
PAIR_HEAD = ["MAP@R", "P@1", "N-way one-shot", "official 20 runs"]


def pair_cells(runs, cell) -> list[str]:
  """``cell(runs, metric)`` for MAP@R, P@1, the episodes and the official runs."""
  shot = [k for k in one_shot_metrics(runs[0]) if not k.startswith("official")]
  columns = ["map_at_r", "precision_at_1", shot[0], "official_20way_one_shot"]
  return [cell(runs, m) if m in runs[0]["metrics"] else "" for m in columns]


def head_to_head(groups, first: str, second: str) -> str:
  """``first`` against ``second`` seed for seed on every dataset: the means, the mean
  paired difference with its 95 % interval, and what the interval says."""
  rows = []
  for dataset in ("omniglot", "mnist"):
    rs, other = groups.get((dataset, first)), groups.get((dataset, second))
    if rs is None or other is None:
      continue
    pairs = seed_pairs(rs, other)
    if len(pairs) < 2:
      continue
    for metric in ["map_at_r", "precision_at_1", *one_shot_metrics(rs[0])]:
      a = [x["metrics"][metric] for x, _ in pairs]
      b = [y["metrics"][metric] for _, y in pairs]
      text, low, high = interval(a, b)
      verdict = "no measurable difference"
      if low > 0 or high < 0:
        verdict = f"{first if low > 0 else second} ahead"
      rows.append(
        [
          dataset,
          metric,
          str(len(pairs)),
          f"{np.mean(a):.4f}",
          f"{np.mean(b):.4f}",
          text,
          verdict,
        ]
      )
  head = ["held-out", "metric", "seeds", first, second]
  return table([*head, "difference, 95 % interval", "the interval says"], rows)


def loss_options(config) -> list[tuple[str, object]]:
  """The options a run set on its loss (loss_kwargs, loss_init), sorted."""
  options = {**config.get("loss_kwargs", {}), **config.get("loss_init", {})}
  return sorted(options.items())


def setting(config) -> str:
  return ", ".join(f"{k}={v}" for k, v in loss_options(config)) or "default"


def validation(runs) -> str:
  """The validation runs: each setting's metrics on the held-out training alphabets
  (classes); bold: the best MAP@R of each loss, the setting the test runs use."""
  rows = []
  for (dataset, loss), rs in group(runs, ("dataset", "loss")).items():
    best = max(r["metrics"]["map_at_r"] for r in rs)
    for r in sorted(rs, key=lambda r: loss_options(r["config"])):
      chosen = r["metrics"]["map_at_r"] == best
      cells = pair_cells([r], lambda rs, m: f"{rs[0]['metrics'][m]:.4f}")
      name = f"**{setting(r['config'])}**" if chosen else setting(r["config"])
      rows.append([dataset, loss, name, str(r["config"]["seed"]), *cells])
  head = ["training set", "loss", "setting", "seed", *PAIR_HEAD[:3]]
  caption = (
    "Each setting once (the seed in the table), on classes held out of the training "
    "set (`holdout=validation`); bold: each loss's best MAP@R, the setting of its "
    "test runs."
  )
  return caption + "\n\n" + table(head, [row[: len(head)] for row in rows])


def paired(runs) -> list[str]:
  """The pair losses on one backend, seed for seed: contrastive against
  log-likelihood, then every variant beside the contrastive loss."""
  groups = group(runs, ("dataset", "loss"))
  parts = [
    "### Contrastive against log-likelihood, seed for seed",
    head_to_head(groups, "contrastive", "log_likelihood"),
  ]
  rows = []
  for (dataset, loss), rs in sorted(
    groups.items(), key=lambda g: (g[0][0], g[0][1] != "contrastive", g[0][1])
  ):
    cells = pair_cells(rs, lambda rs, m: stat(rs, m, digits=4))
    common = seed_pairs(rs, groups.get((dataset, "contrastive"), []))
    versus = ""
    if loss != "contrastive" and len(common) > 1:
      versus = interval(
        [r["metrics"]["map_at_r"] for r, _ in common],
        [c["metrics"]["map_at_r"] for _, c in common],
      )[0]
    rows.append([dataset, loss, setting(rs[0]["config"]), str(len(rs)), *cells, versus])
  head = ["held-out", "loss", "setting", "seeds", *PAIR_HEAD]
  parts += [
    "### Every pair loss (mean ± sample std over seeds; MAP@R minus the contrastive "
    "loss's, seed for seed, with its 95 % interval)",
    table([*head, "MAP@R − contrastive"], rows),
    machine_line(runs),
  ]
  return parts


def compare(runs, out: pathlib.Path, paired_runs=(), validation_runs=()) -> str:
  folder = out.with_suffix("")
  parts = []
  if validation_runs:
    parts += ["### Validation: the settings tried", validation(validation_runs)]
  if paired_runs:
    parts += paired(paired_runs)
  groups = group(runs, ("dataset", "loss"))
  order = list(registry.LOSSES)
  parts += [
    "### Contrastive against log-likelihood (the ten-loss runs)",
    head_to_head(groups, "contrastive", "log_likelihood"),
  ]
  chart = {}
  for dataset in ("omniglot", "mnist"):
    rows, chart[dataset] = [], {}
    by_loss = {loss: rs for (d, loss), rs in groups.items() if d == dataset}
    if not by_loss:
      continue
    some = next(iter(by_loss.values()))
    shot = next(k for k in some[0]["metrics"] if k.endswith("way_one_shot"))
    cols = ["map_at_r", "r_precision", "precision_at_1", shot]
    if dataset == "omniglot":
      cols += ["20way_within_alphabet", "official_20way_one_shot"]
    best = {c: max(mean(rs, c) for rs in by_loss.values()) for c in cols}
    for loss in sorted(by_loss, key=order.index):
      rs = by_loss[loss]
      cells = []
      for c in cols:
        cell = stat(rs, c)
        cells.append(f"**{cell}**" if mean(rs, c) == best[c] else cell)
      kind = registry.get(loss).kind
      rows.append([loss, kind, len(rs), *cells])
      chart[dataset][loss] = [r["metrics"]["map_at_r"] for r in rs]
    cfg = some[0]["config"]
    parts += [
      f"### {dataset}: {len(by_loss)} losses x {len(some)} seeds, held-out classes",
      f"Conv-4, {cfg['image_size']}x{cfg['image_size']}, "
      f"{cfg['embedding_dim']}-d normalised embedding, {cfg['steps']} steps of "
      f"{cfg['batch_size']} images (pair losses: {cfg['batch_size'] // 2} pairs; "
      f"batch losses: {cfg['batch_size'] // cfg['samples_per_class']} classes x "
      f"{cfg['samples_per_class']}), AdamW lr {cfg['learning_rate']}, evaluated on "
      f"{cfg['max_test']} held-out images. Bold: the best mean.",
      table(["loss", "kind", "seeds", *cols], rows),
      machine_line([r for rs in by_loss.values() for r in rs]),
    ]
  figures.grouped_bars(chart, folder / "map_at_r.png", ylabel="held-out MAP@R")
  images = ["map_at_r.png"]
  for loss in ("contrastive", "supcon"):
    rs = groups.get(("mnist", loss))
    if rs:
      images += copy_figures(rs[0], folder, f"mnist_{loss}_s0_", ["embedding_map.png"])
  parts += [
    "### Figures",
    "`map_at_r.png`: held-out MAP@R of each loss (bars: mean; dots: seeds). The two "
    "maps are t-SNE projections of held-out MNIST digits (5-9), seed 0, for the "
    "contrastive and SupCon encoders.",
    "\n".join(f"![{n}]({folder.name}/{n})" for n in images),
  ]
  return "\n\n".join(parts)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("kind", choices=["oneshot", "compare"])
  parser.add_argument("runs", nargs="+", help="folders of sweep runs")
  parser.add_argument("--out", required=True, help="the results Markdown file")
  parser.add_argument("--paired", nargs="*", default=[], help="compare: pair losses")
  parser.add_argument("--validation", nargs="*", default=[], help="compare: settings")
  parser.add_argument(
    "--ensembles", nargs="*", default=[], help="oneshot: ensemble.py JSON files"
  )
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  runs = load_runs(args.runs)
  if args.kind == "oneshot":
    ensembles = [json.loads(pathlib.Path(f).read_text()) for f in args.ensembles]
    body = oneshot(runs, out, ensembles)
  else:
    paired_runs = load_runs(args.paired) if args.paired else []
    validation_runs = load_runs(args.validation) if args.validation else []
    body = compare(runs, out, paired_runs, validation_runs)
  command = "python experiments/report.py " + " ".join(
    argv if argv is not None else sys.argv[1:]
  )
  if out.exists() and not all(m in out.read_text() for m in (BEGIN, END)):
    raise SystemExit(f"--out {out} has no {BEGIN} ... {END} markers.")
  write_generated(str(out), f"<!-- written by: {command} -->\n\n{body}", "Results")
  print(body)


if __name__ == "__main__":
  main()

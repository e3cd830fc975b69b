"""Trained encoders scored alone and together, with and without test-time shifts.

  python experiments/ensemble.py runs/oneshot_val/s0 runs/oneshot_val/s1 \\
      --out runs/oneshot_val/ensemble.json

Each argument is a workdir of ``train.py`` (its ``config.json`` and its exported
``encoder/``, read with ``metriclearn.inference.load_encoder``). The data are the runs'
own held-out set: with ``holdout=validation`` the held-out background alphabets (the
official runs stay unseen), with ``holdout=test`` the evaluation alphabets and Lake's
20 official runs; so the workdirs must agree on every key that decides the data.

The ensemble of M encoders embeds an image as the concatenation of its M
L2-normalised embeddings divided by sqrt(M), whose squared Euclidean distance is the
mean of the members' squared distances: a nearest-neighbour rule on the mean
distance. Test-time shifts: ``train.tta_embedder`` (the normalised mean embedding of
the 9 one-pixel shifts of an image). Each encoder embeds the data once a setting
of the shifts, and the ensemble is built from those arrays. The within-alphabet
episodes are those of
``train.py`` (seed 0), so a member without shifts scores what its ``metrics.json``
says.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import train  # noqa: E402
from sweep import markdown_table  # noqa: E402

from metriclearn import evaluation, inference  # noqa: E402

# what decides the held-out data of a run: the members must agree on these
DATA_KEYS = (
  "dataset",
  "train_split",
  "image_size",
  "holdout",
  "validation_groups",
  "validation_classes",
  "test_classes",
  "max_test",
  "ways",
  "episodes",
)
METRICS = ("precision_at_1", "map_at_r", "20way_within_alphabet", "official")


def load_members(workdirs) -> tuple[list[dict], list]:
  """(the members' configurations, [(name, loaded encoder)]); a difference in what
  decides the data is refused, naming the key and the two workdirs."""
  configs, members = [], []
  for w in map(pathlib.Path, workdirs):
    for need in ("config.json", "encoder"):
      if not (w / need).exists():
        raise FileNotFoundError(f"{w} has no {need}: not a finished train.py workdir.")
    configs.append(json.loads((w / "config.json").read_text()))
    members.append((w.name, inference.load_encoder(w / "encoder")))
  first = configs[0]
  for w, c in zip(workdirs[1:], configs[1:], strict=True):
    for key in DATA_KEYS:
      if c.get(key) != first.get(key):
        raise ValueError(
          f"{workdirs[0]} and {w} differ in {key!r} ({first.get(key)!r} against "
          f"{c.get(key)!r}): their held-out data would differ."
        )
  return configs, members


ENSEMBLE = "ensemble of"  # the name of a result's ensemble rows: "ensemble of M"


def is_ensemble(row: dict) -> bool:
  """Whether a row of an ``ensemble.py`` result is an ensemble (else a member)."""
  return row["encoder"].startswith(ENSEMBLE)


def embeddings(embed, test, runs) -> dict[str, np.ndarray]:
  """The held-out set's embeddings and, with ``runs``, the official runs' (their
  training and test images, ``train.run_images``), computed once an encoder."""
  out = {"test": embed(test.images)}  # as stored: the encoder's preprocessing
  if runs is not None:
    out["run_train"], out["run_test"] = map(embed, train.run_images(runs))
  return out


def score(emb: dict, config: dict, test, runs) -> dict:
  """P@1 and MAP@R of the held-out set, train.py's within-alphabet episodes and,
  with ``runs``, the official runs, from ``embeddings``' arrays."""
  out = evaluation.retrieval_metrics(emb["test"], test.labels)
  metrics = {k: out[k] for k in ("precision_at_1", "map_at_r")}
  if test.groups is not None:
    episodes = dict(ways=config.get("ways", 20), episodes=config.get("episodes", 200))
    acc, ways = train._one_shot_episodes(
      emb["test"], test.labels, groups=test.groups, **episodes, seed=0
    )
    metrics[f"{ways}way_within_alphabet"] = acc
  if runs is not None:
    metrics["official"] = train.official_accuracy(
      emb["run_train"], emb["run_test"], runs
    )
  return metrics


def concatenated(members: list[dict]) -> dict[str, np.ndarray]:
  """The members' ``embeddings``, each L2-normalised, side by side / sqrt(M)."""

  def join(parts):
    parts = [
      p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12) for p in parts
    ]
    return np.concatenate(parts, axis=1) / np.sqrt(len(parts))

  return {key: join([m[key] for m in members]) for key in members[0]}


def evaluate(workdirs) -> dict:
  configs, members = load_members(workdirs)
  config = configs[0]  # they agree on DATA_KEYS
  _, test, runs = train.load_data(config)
  rows = []
  for tta in (False, True):
    named = []
    for name, encoder in members:
      embed = lambda x, e=encoder: e.embed(x, batch_size=512)
      named.append(
        (name, embeddings(train.tta_embedder(embed) if tta else embed, test, runs))
      )
    if len(members) > 1:
      named.append((f"{ENSEMBLE} {len(members)}", concatenated([e for _, e in named])))
    for name, emb in named:
      rows.append({"encoder": name, "tta": tta, **score(emb, config, test, runs)})
      print(rows[-1], flush=True)
  return {
    "workdirs": [str(w) for w in workdirs],
    "holdout": config.get("holdout", "test"),
    "config": {k: config.get(k) for k in DATA_KEYS},
    # each member's training steps (not a data key: they may differ)
    "steps": [c.get("steps") for c in configs],
    "rows": rows,
  }


def rows_table(rows: list[dict]) -> str:
  """A result's rows as a Markdown table: encoder, shifts, each metric they hold."""
  keys = [k for k in METRICS if rows[0].get(k) is not None]
  return markdown_table(
    ["encoder", "test-time shifts", *keys],
    [
      [r["encoder"], "yes" if r["tta"] else "no", *(f"{r[k]:.4f}" for k in keys)]
      for r in rows
    ],
  )


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdirs", nargs="+", help="train.py workdirs")
  parser.add_argument("--out", help="a JSON file for the rows (and the command)")
  args = parser.parse_args(argv)
  result = evaluate(args.workdirs)
  result["command"] = " ".join(
    ["python experiments/ensemble.py", *(argv or sys.argv[1:])]
  )
  result["machine"] = train.machine()
  print(rows_table(result["rows"]))
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
  return result


if __name__ == "__main__":
  main()

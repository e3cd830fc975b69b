"""Search new items with an exported encoder: embed a split, index it, draw a grid.

  python experiments/search.py runs/omniglot_supcon_omniglot_s0/encoder
  python experiments/search.py ENCODER --dataset omniglot --split evaluation \\
      --queries 10 --k 6 --out grid.png

The split's first image of each of ``--queries`` classes (drawn with a fixed seed) is a
query; every other image of the split is the gallery, held in a
``metriclearn.inference.Index``. The grid shows each query beside its ``--k`` nearest
gallery items (green: same class, red: other) and the command prints P@1 of the
queries. The encoder folder is all it needs (``load_encoder`` rebuilds the model from
it); the data comes from ``metriclearn.data.load`` (Omniglot: the bundled pack).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import figures  # noqa: E402

from metriclearn import data, inference  # noqa: E402


def search_grid(encoder_dir, dataset, split, *, queries=8, k=6, out=None, seed=0):
  """Embeds ``split``, indexes all but one image of ``queries`` classes, searches those
  images; writes the grid to ``out`` and returns ``(P@1 of the queries, out)``."""
  encoder = inference.load_encoder(encoder_dir)
  ds = data.load(dataset, split)
  rng = np.random.default_rng(seed)
  classes = np.sort(rng.choice(ds.classes, min(queries, ds.num_classes), replace=False))
  picks = np.array([np.flatnonzero(ds.labels == c)[0] for c in classes])
  gallery = np.setdiff1d(np.arange(len(ds)), picks)
  index = inference.Index(encoder.embed(ds.images[gallery]), labels=ds.labels[gallery])
  _, found = index.search(encoder.embed(ds.images[picks]), k=k)  # positions
  neighbours = gallery[found]
  out = pathlib.Path(out or pathlib.Path(encoder_dir).parent / "search_grid.png")
  figures.retrieval_grid(
    ds.images[picks],
    ds.labels[picks],
    ds.images[neighbours],
    ds.labels[neighbours],
    out,
    title=f"{ds.name}: queries beside their {k} nearest gallery items",
  )
  return float(np.mean(ds.labels[neighbours[:, 0]] == ds.labels[picks])), out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("encoder", help="an exported encoder folder (<workdir>/encoder)")
  parser.add_argument("--dataset", default="omniglot")
  parser.add_argument("--split", default="evaluation")
  parser.add_argument("--queries", type=int, default=8)
  parser.add_argument("--k", type=int, default=6)
  parser.add_argument("--out", default=None, help="default: beside the encoder folder")
  args = parser.parse_args(argv)
  p1, out = search_grid(
    args.encoder, args.dataset, args.split, queries=args.queries, k=args.k, out=args.out
  )
  print(f"{args.queries} queries of {args.dataset}/{args.split}: P@1 {p1:.3f}")
  print(f"wrote {out}")
  return p1


if __name__ == "__main__":
  main()

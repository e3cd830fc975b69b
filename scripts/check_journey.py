"""The journey's acceptance check on a trained run, in a new process: load the
exported encoder, embed 500 images of the pack's evaluation set, search them with
``inference.Index`` and compare with a brute-force NumPy k-NN and a save / load.

  python scripts/check_journey.py runs/omniglot_supcon_omniglot_s0/encoder
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import numpy as np

from metriclearn import data, inference


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("encoder", help="an exported encoder folder (<workdir>/encoder)")
  parser.add_argument("--n", type=int, default=500)
  parser.add_argument("--k", type=int, default=5)
  args = parser.parse_args(argv)
  encoder = inference.load_encoder(args.encoder)
  ds = data.load("omniglot", "evaluation", image_size=28)
  e = encoder.embed(ds.images[: args.n])
  index = inference.Index(e, labels=ds.labels[: args.n])
  d, ids = index.search(e, k=args.k)
  self_first = bool((ids[:, 0] == np.arange(len(e))).all())
  squared = ((e[:, None, :] - e[None, :, :]) ** 2).sum(-1)  # brute force, float32
  order = np.argsort(squared, axis=1, kind="stable")[:, : args.k]
  brute = np.sqrt(np.maximum(np.take_along_axis(squared, order, 1), 0))
  same_ids = bool((order == ids).all())
  gap = float(np.abs(brute - d).max())
  with tempfile.TemporaryDirectory() as tmp:
    index.save(f"{tmp}/index")
    d2, ids2 = inference.Index.load(f"{tmp}/index").search(e, k=args.k)
  identical = bool((ids2 == ids).all() and (d2 == d).all())
  print(f"embedded {e.shape} {e.dtype}; self at rank 1: {self_first}")
  print(f"brute-force ids agree: {same_ids}; max |distance - brute force| = {gap:.2g}")
  print(f"save / load identical: {identical}")
  return 0 if self_first and same_ids and identical else 1


if __name__ == "__main__":
  sys.exit(main())

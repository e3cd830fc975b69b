"""Builds the bundled Omniglot pack, ``metriclearn/data/omniglot/omniglot28.npz``.

This script is the only way the pack is made. It reads Lake's five archives through
:func:`metriclearn.data.load_omniglot` and :func:`metriclearn.data.load_omniglot_runs`
(``image_size=28``: Lanczos from 105 x 105, ink 255 on 0) and writes their arrays,
8-bit as the loaders give them, into one ``.npz`` whose bytes depend on the archives
only (fixed member order, timestamps and attributes; deflate level 9):

    python scripts/build_omniglot_pack.py               # reads ../shared/data/omniglot
    python scripts/build_omniglot_pack.py --source DIR  # a folder with the 5 zips
    python scripts/build_omniglot_pack.py --check       # compare with the committed

Members (all ``allow_pickle=False``): ``{background,evaluation}_{images,labels,groups,
alphabet_char_id,drawer}``; ``small1_index`` / ``small2_index`` (rows of background: the
subsets are checked to be background images, pixel for pixel at 28 x 28, with the same
labels, alphabets and drawers); ``runs_{train,test}_images`` and ``runs_answers``;
``pack_version``; ``source_files`` and ``source_sha256`` (the archives read).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import pathlib
import sys
import time
import zipfile
from collections.abc import Mapping

import numpy as np

from metriclearn.data import load_omniglot, load_omniglot_runs
from metriclearn.data.pack import OMNIGLOT_PACK_IMAGE_SIZE, OMNIGLOT_PACK_VERSION

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "omniglot"
DEFAULT_OUT = ROOT / "metriclearn" / "data" / "omniglot" / "omniglot28.npz"
SOURCES = (
  "images_background.zip",
  "images_evaluation.zip",
  "images_background_small1.zip",
  "images_background_small2.zip",
  "all_runs.zip",
)
FIELDS = ("images", "labels", "groups")
META = ("alphabet_char_id", "drawer")
_EPOCH = (1980, 1, 1, 0, 0, 0)


def _subset_index(background, subset, split: str) -> np.ndarray:
  """The rows of background holding ``subset`` (same label and drawer), checked to be
  the same images, alphabets and alphabet_char_ids."""
  keys = zip(
    background.labels.tolist(), background.meta["drawer"].tolist(), strict=True
  )
  where = {key: i for i, key in enumerate(keys)}
  pairs = zip(subset.labels.tolist(), subset.meta["drawer"].tolist(), strict=True)
  try:
    rows = np.array([where[key] for key in pairs], np.int32)
  except KeyError as e:
    raise ValueError(f"{split}: (label, drawer) {e} is not in background.") from None
  same = np.array_equal(subset.images, background.images[rows]) and all(
    np.array_equal(getattr(subset, f), getattr(background, f)[rows]) for f in FIELDS
  )
  same = same and all(
    np.array_equal(subset.meta[m], background.meta[m][rows]) for m in META
  )
  if not same:
    raise ValueError(f"{split} is not a subset of background at 28 x 28.")
  return rows


def build_arrays(source: str | pathlib.Path) -> dict[str, np.ndarray]:
  """The pack's arrays from the archives in ``source`` (any folder holding the five
  zips, e.g. one made of a few alphabets for a test)."""
  source = pathlib.Path(source)
  size = OMNIGLOT_PACK_IMAGE_SIZE
  arrays: dict[str, np.ndarray] = {"pack_version": np.array(OMNIGLOT_PACK_VERSION)}
  full = {}
  for split in ("background", "evaluation"):
    ds = load_omniglot(source, split, image_size=size, cache=False)
    full[split] = ds
    for field in FIELDS:
      arrays[f"{split}_{field}"] = getattr(ds, field)
    for m in META:
      arrays[f"{split}_{m}"] = ds.meta[m]
  for split in ("small1", "small2"):
    subset = load_omniglot(source, split, image_size=size, cache=False)
    arrays[f"{split}_index"] = _subset_index(full["background"], subset, split)
  runs = load_omniglot_runs(source, image_size=size)
  arrays["runs_train_images"] = runs.train_images
  arrays["runs_test_images"] = runs.test_images
  arrays["runs_answers"] = runs.answers
  digests = [hashlib.sha256((source / f).read_bytes()).hexdigest() for f in SOURCES]
  arrays["source_files"] = np.array(SOURCES)
  arrays["source_sha256"] = np.array(digests)
  return arrays


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
  """An ``.npz`` (a zip of ``.npy`` members, as ``np.savez_compressed`` writes) with
  fixed timestamps and attributes, so equal arrays give equal bytes."""
  out = io.BytesIO()
  with zipfile.ZipFile(out, "w") as zf:
    for key, value in arrays.items():
      member = io.BytesIO()
      np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
      info = zipfile.ZipInfo(f"{key}.npy", date_time=_EPOCH)
      info.compress_type = zipfile.ZIP_DEFLATED
      info.external_attr = 0o644 << 16
      info.create_system = 3  # Unix, whatever the building machine
      zf.writestr(info, member.getvalue(), compresslevel=9)
  return out.getvalue()


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--source", type=pathlib.Path, default=DEFAULT_SOURCE)
  parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
  parser.add_argument(
    "--check", action="store_true", help="compare with --out instead of writing it"
  )
  args = parser.parse_args(argv)
  start = time.perf_counter()
  data = npz_bytes(build_arrays(args.source))
  digest = hashlib.sha256(data).hexdigest()
  took = time.perf_counter() - start
  if args.check:
    same = args.out.is_file() and args.out.read_bytes() == data
    print(f"{args.out}: {'identical' if same else 'DIFFERS'} ({digest}, {took:.1f} s)")
    return 0 if same else 1
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_bytes(data)
  print(f"wrote {args.out}: {len(data):,} bytes, sha256 {digest} ({took:.1f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""The bundled Omniglot pack: Lake's Omniglot at 28 x 28, installed with the package.

``metriclearn/data/omniglot/omniglot28.npz`` (built by
``scripts/build_omniglot_pack.py`` from Lake's archives, MIT-licensed; see the
``README.md`` and ``LICENSE`` beside it) holds the background and evaluation sets,
the ``small1`` / ``small2`` subsets and the 20 official one-shot runs, exactly as
:func:`metriclearn.data.load_omniglot` and :func:`~metriclearn.data.load_omniglot_runs`
give them from the archives with ``image_size=28`` (8-bit, no quantisation). A fresh
install reads Omniglot with no download and no files beside the repository.

The file is read on first use and kept in memory for the process (about 26 MB when
all of it has been read); every call returns fresh copies.
"""

from __future__ import annotations

import functools
import importlib.resources
import zipfile
import zlib
from importlib.resources.abc import Traversable

import numpy as np

from metriclearn.data.archives import (
  _OMNIGLOT_URL,
  OMNIGLOT_ALPHABETS,
  OMNIGLOT_CLASS_NAMES,
  OMNIGLOT_SPLITS,
  OneShotRuns,
)
from metriclearn.data.dataset import ImageDataset

__all__ = [
  "OMNIGLOT_PACK_IMAGE_SIZE",
  "OMNIGLOT_PACK_VERSION",
  "load_omniglot_pack",
  "load_omniglot_pack_runs",
  "omniglot_pack_file",
]

OMNIGLOT_PACK_IMAGE_SIZE = 28
OMNIGLOT_PACK_VERSION = 1
_PACK_NAME = "omniglot28.npz"
_FULL = ("background", "evaluation")


def omniglot_pack_file() -> Traversable:
  """The pack's file, an ``importlib.resources`` traversable (a path when installed
  as files)."""
  return importlib.resources.files("metriclearn.data").joinpath("omniglot", _PACK_NAME)


def _check_image_size(image_size: int | None, what: str, archive: str) -> None:
  """Raises unless ``image_size`` is None or the pack's 28, saying how to get the
  archive (a path under Lake's ``python/``) for other sizes."""
  if image_size is None or image_size == OMNIGLOT_PACK_IMAGE_SIZE:
    return
  size = OMNIGLOT_PACK_IMAGE_SIZE
  raise ValueError(
    f"{what}: image_size={image_size} needs Lake's archives; the bundled Omniglot "
    f"pack (read when no path is given) holds {size} x {size} images only "
    f"(image_size=None or {size}). Download {_OMNIGLOT_URL}{archive} into a folder "
    "FOLDER and pass path=FOLDER (or data_dir= for a prepared TFDS omniglot)."
  )


@functools.cache
def _verified() -> None:
  """Checks every member's CRC once per process: a damaged pack is named, not read."""
  resource = omniglot_pack_file()
  try:
    with resource.open("rb") as f, zipfile.ZipFile(f) as zf:
      bad = zf.testzip()
  except FileNotFoundError:
    return  # reported by _array with the remedy
  except (zipfile.BadZipFile, zlib.error, EOFError) as e:
    bad = f"{type(e).__name__}: {e}"
  if bad is not None:
    raise ValueError(
      f"the bundled Omniglot pack {resource} is damaged ({bad}); reinstall "
      "metriclearn or rebuild it with scripts/build_omniglot_pack.py."
    )


@functools.cache
def _array(key: str) -> np.ndarray:
  """One array of the pack, read once per process (read-only; callers copy)."""
  _verified()
  resource = omniglot_pack_file()
  try:
    with resource.open("rb") as f, np.load(f, allow_pickle=False) as npz:
      version = int(npz["pack_version"])
      if version != OMNIGLOT_PACK_VERSION:
        raise ValueError(
          f"{resource}: pack version {version}, this metriclearn reads version "
          f"{OMNIGLOT_PACK_VERSION}. Rebuild it with scripts/build_omniglot_pack.py."
        )
      array = npz[key]
  except FileNotFoundError as e:
    raise FileNotFoundError(
      f"the bundled Omniglot pack {resource} is missing (an install without package "
      "data?). Reinstall metriclearn, build it with scripts/build_omniglot_pack.py, or "
      "pass path= with Lake's archives."
    ) from e
  except (zipfile.BadZipFile, zlib.error, KeyError, EOFError) as e:  # e.g. a member
    raise ValueError(  # missing from a pack of another version
      f"the bundled Omniglot pack {resource} is damaged ({type(e).__name__}: {e}); "
      "reinstall metriclearn or rebuild it with scripts/build_omniglot_pack.py."
    ) from e
  array.flags.writeable = False
  return array


def _split(split: str) -> str:
  if split not in OMNIGLOT_SPLITS:
    raise ValueError(
      f"unknown Omniglot split {split!r}; expected one of {sorted(OMNIGLOT_SPLITS)} "
      "(TFDS split expressions such as 'train[:80%]' need data_dir=, a prepared "
      "TFDS omniglot)."
    )
  return OMNIGLOT_SPLITS[split].removeprefix("images_")


def load_omniglot_pack(
  split: str = "background", *, image_size: int | None = None
) -> ImageDataset:
  """Omniglot from the bundled pack: what :func:`~metriclearn.data.load_omniglot`
  gives from Lake's archives with ``image_size=28``.

  Args:
    split: ``"background"`` (alias ``"train"``; 964 characters, 19,280 images),
      ``"evaluation"`` (alias ``"test"``; 659, 13,180), ``"small1"`` (136, 2,720) or
      ``"small2"`` (156, 3,120).
    image_size: None or 28 (None means the pack's 28); other sizes raise, saying how to
      get the archives.

  Returns:
    An :class:`ImageDataset`: ``images`` uint8 ``[n, 28, 28, 1]`` (ink 255 on 0),
    ``labels`` = Lake's global character id - 1, ``groups`` = index into
    ``OMNIGLOT_ALPHABETS``, ``meta`` ``alphabet_char_id`` and ``drawer`` (drawer ids
    are arbitrary outside 8 background alphabets: see the pack's README); ordered by
    label, then drawer.

  >>> ds = load_omniglot_pack("evaluation")
  >>> ds.images.shape, ds.num_classes, ds.name
  ((13180, 28, 28, 1), 659, 'omniglot/evaluation')
  """
  stem = _split(split)
  _check_image_size(image_size, f"Omniglot {split!r}", f"images_{stem}.zip")
  rows: slice | np.ndarray
  if stem in _FULL:
    base, rows = stem, slice(None)
  else:  # small1 / small2: rows of background, stored as indices
    base, rows = "background", _array(f"{stem.removeprefix('background_')}_index")
  field = lambda name: np.array(_array(f"{base}_{name}")[rows])
  return ImageDataset(
    field("images"),
    field("labels"),
    field("groups"),
    {"alphabet_char_id": field("alphabet_char_id"), "drawer": field("drawer")},
    class_names=OMNIGLOT_CLASS_NAMES,
    group_names=OMNIGLOT_ALPHABETS,
    name=f"omniglot/{stem}",
  )


def load_omniglot_pack_runs(*, image_size: int | None = None) -> OneShotRuns:
  """Lake's 20 official one-shot runs from the bundled pack: what
  :func:`~metriclearn.data.load_omniglot_runs` gives with ``image_size=28``.

  Args:
    image_size: None or 28 (None means the pack's 28); other sizes raise.

  Returns:
    :class:`OneShotRuns`: ``train_images`` and ``test_images`` uint8
    ``[20, 20, 28, 28, 1]``, ``answers`` int32 ``[20, 20]`` (0-based classes).

  >>> runs = load_omniglot_pack_runs()
  >>> runs.train_images.shape, runs.answers[0, :3].tolist()
  ((20, 20, 28, 28, 1), [7, 8, 1])
  """
  _check_image_size(
    image_size, "Omniglot one-shot runs", "one-shot-classification/all_runs.zip"
  )
  return OneShotRuns(
    np.array(_array("runs_train_images")),
    np.array(_array("runs_test_images")),
    np.array(_array("runs_answers")),
  )

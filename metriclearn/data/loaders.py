"""One entry point for every dataset: ``load(name, split, ...)``."""

from __future__ import annotations

import dataclasses
import os

from metriclearn.data import archives, pack, tfds_data
from metriclearn.data.dataset import ImageDataset, resize_images

PathLike = str | os.PathLike
__all__ = ["ARCHIVE_DATASETS", "BUILTIN_DATASETS", "load"]

ARCHIVE_DATASETS = ("mnist", "omniglot")
BUILTIN_DATASETS = ("digits",)


def load(
  name: str,
  split: str = "train",
  *,
  path: PathLike | None = None,
  data_dir: PathLike | None = None,
  download: bool = False,
  image_size: int | None = None,
  cache: bool = True,
  cache_dir: PathLike | None = None,
) -> ImageDataset:
  """Loads a named dataset into host memory as an :class:`ImageDataset`.

  Where the data comes from:

  - ``"digits"``: scikit-learn's bundled 8 x 8 digits (no download, one split
    ``"train"`` of 1,797 images; make class-disjoint splits with
    :func:`metriclearn.data.class_split`).
  - ``"omniglot"`` with no ``path``, no ``data_dir`` and ``download=False``: the
    bundled 28 x 28 pack (:func:`~metriclearn.data.load_omniglot_pack`; no files, no
    network). ``image_size`` None means the pack's 28; any other size raises, saying
    how to get Lake's archives for ``path``.
  - ``"mnist"`` / ``"omniglot"`` with ``path``: the original archives in the folder
    ``path`` (:func:`~metriclearn.data.load_mnist`,
    :func:`~metriclearn.data.load_omniglot`; ``image_size`` None keeps 105). Omniglot
    splits, here and from the pack: ``"background"`` = ``"train"``, ``"evaluation"``
    = ``"test"``, ``"small1"``, ``"small2"``. Pack and archives give the same format:
    uint8 ``[n, s, s, 1]`` with ink 255, labels = Lake's character id - 1, groups =
    the alphabet.
  - anything else, mnist without ``path``, and omniglot with ``data_dir`` or
    ``download=True``: tensorflow-datasets, read from ``data_dir``
    (:func:`~metriclearn.data.load_tfds`; Omniglot's alphabet becomes ``groups``; its
    images keep TFDS's format, three channels with background 255).

  Args:
    name: the dataset name.
    split: the split (TFDS split expressions for TFDS datasets).
    path: the folder with the original archives (mnist, omniglot).
    data_dir: the TFDS data folder.
    download: let TFDS download and prepare (default: never download).
    image_size: resize to ``image_size x image_size`` on load (Omniglot's pack: None
      or 28 only).
    cache: cache decoded Omniglot archives (see :func:`load_omniglot`).
    cache_dir: where that cache lives.

  Returns:
    The dataset.

  >>> ds = load("digits")
  >>> len(ds), ds.num_classes
  (1797, 10)
  >>> load("omniglot", "background").images.shape  # the bundled pack
  (19280, 28, 28, 1)
  """
  if name == "digits":
    if split != "train" or path is not None:
      raise ValueError(
        f"'digits' has one split, 'train' (got split={split!r}), and reads no path."
      )
    ds = archives.load_digits()
    return ds if image_size is None else _resized(ds, image_size)
  if path is not None:
    if name == "omniglot":
      return archives.load_omniglot(
        path, split, image_size=image_size, cache=cache, cache_dir=cache_dir
      )
    if name == "mnist":
      ds = archives.load_mnist(path, split)
      return ds if image_size is None else _resized(ds, image_size)
    raise ValueError(
      f"path= reads the original archives of {ARCHIVE_DATASETS} only, not {name!r}; "
      "for TFDS datasets pass data_dir= instead."
    )
  if name == "omniglot" and data_dir is None and not download:
    return pack.load_omniglot_pack(split, image_size=image_size)
  return tfds_data.load_tfds(
    name,
    split,
    data_dir=data_dir,
    download=download,
    group_key="alphabet" if name.split("/")[0].split(":")[0] == "omniglot" else None,
    image_size=image_size,
  )


def _resized(ds: ImageDataset, image_size: int) -> ImageDataset:
  return dataclasses.replace(ds, images=resize_images(ds.images, image_size))

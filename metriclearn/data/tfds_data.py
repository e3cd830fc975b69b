"""tensorflow-datasets without TensorFlow: ``tfds.data_source`` into host arrays.

TFDS's random-access data sources read datasets prepared in the ``array_record``
format with NumPy and Pillow only. Preparing (downloading and converting) most image
datasets does need TensorFlow (TFDS's extractor uses ``tf.io.gfile``): do it once, e.g.
``tfds build mnist --file_format=array_record --data_dir=DIR`` in an environment with
``tensorflow``, then read ``DIR`` here. MNIST and Omniglot can also be read straight
from their original archives (:mod:`metriclearn.data.archives`).

Nothing is downloaded unless ``download=True``. A dataset that is not prepared in
``data_dir`` then fails at once with a message that says what to do, and a download
without network fails within seconds: TFDS's retries per URL are lowered from 10
(minutes of back-off) to 2 during the call.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any, cast

import numpy as np

from metriclearn.data.dataset import ImageDataset, resize_images

__all__ = [
  "tfds_source",
  "load_tfds",
]

PathLike = str | os.PathLike
_DOWNLOAD_RETRIES = 2


@contextlib.contextmanager
def _few_retries() -> Iterator[None]:
  from tensorflow_datasets.core.download import downloader

  saved = downloader.MAX_RETRIES
  downloader.MAX_RETRIES = min(saved, _DOWNLOAD_RETRIES)
  try:
    yield
  finally:
    downloader.MAX_RETRIES = saved


def _how_to_prepare(name: str, where: Any) -> str:
  return (
    f"Prepare it once where there is network (and TensorFlow, which TFDS needs to "
    f"extract most archives): `tfds build {name} --file_format=array_record "
    f"--data_dir=DIR`, then pass data_dir=DIR (now: {where}); or pass "
    "download=True. MNIST and Omniglot can be read from their original archives "
    "instead: metriclearn.data.load('mnist' or 'omniglot', path=FOLDER)."
  )


def _import_tfds():
  """tensorflow_datasets, or an error that says which extra installs it."""
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(
      f"reading TFDS datasets needs tensorflow-datasets ({e}): "
      "pip install 'metriclearn[tfds]'. The bundled Omniglot pack, the original "
      "MNIST / Omniglot archives and 'digits' do not."
    ) from e
  return tfds


def _builder(name: str, data_dir: PathLike | None, download: bool):
  """A TFDS builder whose data is prepared in ``data_dir``, or a clear error."""
  tfds = _import_tfds()

  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(
      f"unknown dataset {name!r}: it is neither one metriclearn reads itself "
      "('digits', and 'mnist' / 'omniglot' from their archives) nor a TFDS dataset "
      "(see tfds.list_builders())."
    ) from None
  if builder.is_prepared():
    return builder
  if not download:
    raise FileNotFoundError(
      f"TFDS dataset {name!r} is not prepared in {builder.data_dir} and "
      f"download=False. {_how_to_prepare(name, data_dir)}"
    )
  try:
    with _few_retries():
      builder.download_and_prepare(file_format="array_record")
  except Exception as e:
    if "tensorflow" in str(e):
      why = "preparing it needs TensorFlow, which is not installed"
    elif isinstance(e, OSError):
      why = "the download failed (no network?)"
    else:
      raise
    raise RuntimeError(
      f"TFDS dataset {name!r} could not be prepared in {builder.data_dir}: {why} "
      f"({type(e).__name__}: {str(e)[:300]}). {_how_to_prepare(name, data_dir)}"
    ) from e
  return builder


def tfds_source(
  name: str,
  split: str = "train",
  *,
  data_dir: PathLike | None = None,
  download: bool = False,
) -> Sequence[dict[str, Any]]:
  """A TFDS split as a random-access sequence of NumPy examples (no TensorFlow).

  Args:
    name: a TFDS name, e.g. ``"mnist"``, ``"cifar100"``, ``"cars196"``,
      ``"omniglot"`` (optionally ``"name/config:version"``).
    split: a TFDS split expression, e.g. ``"train"`` or ``"train[:80%]"``.
    data_dir: where the dataset is prepared (TFDS's default: ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``).
    download: prepare the dataset if it is not (needs network, and TensorFlow for most
      datasets). With False (the default) nothing is fetched.

  Returns:
    ``tfds.data_source``'s sequence: ``len(source)`` and ``source[i]`` (a dict of NumPy
    arrays, e.g. ``{"image": uint8 [h, w, c], "label": int64}``).

  Raises:
    ValueError: unknown ``name``.
    FileNotFoundError: not prepared and ``download=False``.
    RuntimeError: ``download=True`` and preparing failed (no network, no TensorFlow).
  """
  builder = _builder(name, data_dir, download)
  try:
    return builder.as_data_source(split=split)
  except NotImplementedError as e:  # prepared, but not in a random-access format
    raise ValueError(
      f"TFDS dataset {name!r} in {builder.data_dir} is prepared in a format without "
      f"random access ({e}). Prepare it again with --file_format=array_record into "
      "another data_dir."
    ) from e


def load_tfds(
  name: str,
  split: str = "train",
  *,
  data_dir: PathLike | None = None,
  download: bool = False,
  image_key: str = "image",
  label_key: str = "label",
  group_key: str | None = None,
  image_size: int | None = None,
) -> ImageDataset:
  """A TFDS image-classification split read into host memory.

  Args:
    name, split, data_dir, download: as in :func:`tfds_source`.
    image_key: the image feature (``uint8 [h, w, c]``).
    label_key: the integer class feature.
    group_key: an optional integer super-class feature for ``groups`` (Omniglot:
      ``"alphabet"``).
    image_size: resize every image to ``image_size x image_size`` (Lanczos, aspect
      ratio not kept); needed when the images differ in size (cars196, birds).

  Returns:
    An :class:`ImageDataset` with the images as TFDS gives them (e.g. Omniglot from
    TFDS has three channels with background 255, unlike
    :func:`metriclearn.data.load_omniglot`).

  >>> ds = load_tfds("cifar100", data_dir="~/tensorflow_datasets")  # doctest: +SKIP
  >>> ds.images.shape  # doctest: +SKIP
  (50000, 32, 32, 3)
  """
  source = tfds_source(name, split, data_dir=data_dir, download=download)
  images, labels, groups = [], [], []
  for i in range(len(source)):
    example = source[i]
    missing = cast(set[str], {image_key, label_key, group_key} - {None, *example})
    if missing:
      raise ValueError(
        f"TFDS dataset {name!r} has no feature {sorted(missing)}; its features are "
        f"{sorted(example)} (set image_key / label_key / group_key)."
      )
    image = np.asarray(example[image_key])
    if image.ndim == 2:
      image = image[..., None]
    if image_size is not None:
      image = resize_images(image[None], image_size)[0]
    images.append(image)
    labels.append(int(example[label_key]))
    if group_key is not None:
      groups.append(int(example[group_key]))
  shapes = {im.shape for im in images}
  if len(shapes) > 1:
    raise ValueError(
      f"the images of TFDS dataset {name!r} differ in shape ({len(shapes)} shapes, "
      f"e.g. {sorted(shapes)[:3]}); pass image_size to resize them on load."
    )
  features = getattr(getattr(source, "dataset_info", None), "features", None)
  return ImageDataset(
    np.stack(images) if images else np.zeros((0, 1, 1, 1), np.uint8),
    np.asarray(labels, np.int32),
    np.asarray(groups, np.int32) if group_key is not None else None,
    class_names=_names(features, label_key),
    group_names=_names(features, group_key),
    name=f"{name}/{split}",
  )


def _names(features: Any, key: str | None) -> tuple[str, ...] | None:
  try:
    return tuple(features[key].names)
  except Exception:  # noqa: BLE001 - not a ClassLabel, or no feature info
    return None

"""In-memory image datasets on the host, a decode cache, and resizing.

Every loader in :mod:`metriclearn.data` returns an :class:`ImageDataset`: NumPy arrays
in host memory, ``images`` ``[n, h, w, c]`` (``uint8`` unless said otherwise) and
integer ``labels`` ``[n]``, with optional ``groups`` ``[n]`` (a super-class such as
Omniglot's alphabet) and further per-image arrays in ``meta``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pathlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
  "ImageDataset",
  "default_cache_dir",
  "cache_path",
  "load_cached",
  "save_cached",
  "resize_images",
  "as_dataset",
]

_CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
  """Images with integer class labels, held as NumPy arrays on the host.

  Attributes:
    images: [n, h, w, c] images (``uint8`` from every loader of this package).
    labels: [n] int32 class ids. They need not be contiguous (Omniglot's evaluation
      characters are 964..1622) and are never -1.
    groups: optional [n] int32 super-class of each image (Omniglot: the alphabet), used
      by group-wise splits and within-group pair sampling.
    meta: further [n] arrays (Omniglot: ``alphabet_char_id``, ``drawer``).
    class_names: optional names indexed by label id.
    group_names: optional names indexed by group id.
    name: a short description, e.g. ``"omniglot/background"``.

  >>> ds = ImageDataset(np.zeros((4, 2, 2, 1), np.uint8), np.array([0, 0, 1, 1]))
  >>> len(ds), ds.num_classes, ds.take(np.array([2, 3])).labels.tolist()
  (4, 2, [1, 1])
  """

  images: np.ndarray
  labels: np.ndarray
  groups: np.ndarray | None = None
  meta: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  class_names: Sequence[str] | None = None
  group_names: Sequence[str] | None = None
  name: str = ""

  def __post_init__(self):
    images, labels = np.asarray(self.images), np.asarray(self.labels)
    if images.ndim != 4:
      raise ValueError(f"images must be [n, h, w, c], got shape {images.shape}.")
    if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(
        f"labels must be [n] integers with n = {images.shape[0]}, got shape "
        f"{labels.shape} and dtype {labels.dtype}."
      )
    object.__setattr__(self, "images", images)
    object.__setattr__(self, "labels", labels.astype(np.int32, copy=False))
    if self.groups is not None:
      groups = np.asarray(self.groups)
      if groups.shape != labels.shape:
        raise ValueError(f"groups must have shape {labels.shape}, got {groups.shape}.")
      object.__setattr__(self, "groups", groups.astype(np.int32, copy=False))
    for key, value in self.meta.items():
      if np.shape(value)[:1] != labels.shape:
        raise ValueError(f"meta[{key!r}] must have {labels.shape[0]} rows.")

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  @property
  def classes(self) -> np.ndarray:
    """The sorted distinct labels."""
    return np.unique(self.labels)

  @property
  def num_classes(self) -> int:
    return int(self.classes.size)

  def take(self, indices: np.ndarray, name: str | None = None) -> ImageDataset:
    """The images at ``indices`` (an index array or a boolean mask), all fields kept."""
    indices = np.asarray(indices)
    return dataclasses.replace(
      self,
      images=self.images[indices],
      labels=self.labels[indices],
      groups=None if self.groups is None else self.groups[indices],
      meta={k: np.asarray(v)[indices] for k, v in self.meta.items()},
      name=self.name if name is None else name,
    )


def default_cache_dir() -> pathlib.Path:
  """``$METRICLEARN_CACHE``, else ``$XDG_CACHE_HOME/metriclearn`` (``~/.cache``)."""
  if env := os.environ.get("METRICLEARN_CACHE"):
    return pathlib.Path(env).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base).expanduser() / "metriclearn"


def cache_path(
  source: pathlib.Path, variant: str, cache_dir: str | os.PathLike | None
) -> pathlib.Path:
  """The cache file for ``source`` decoded as ``variant``.

  The key holds the source's absolute path, size and modification time, so a replaced
  archive is decoded again.
  """
  stat = source.stat()
  key = f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{variant}|"
  key += str(_CACHE_VERSION)
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  folder = default_cache_dir() if cache_dir is None else pathlib.Path(cache_dir)
  return folder / f"{source.stem}-{variant}-{digest}.npz"


def load_cached(path: pathlib.Path) -> dict[str, np.ndarray] | None:
  """The arrays saved by :func:`save_cached`, or None if absent or unreadable."""
  if not path.is_file():
    return None
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except Exception:  # noqa: BLE001 - a damaged cache file is decoded again
    return None
  if "images_packed" in arrays:
    shape = tuple(arrays.pop("images_shape"))
    bits = np.unpackbits(arrays.pop("images_packed"), count=int(np.prod(shape)))
    arrays["images"] = bits.reshape(shape) * np.uint8(255)
  return arrays


def save_cached(path: pathlib.Path, arrays: Mapping[str, np.ndarray]) -> None:
  """Writes ``arrays`` atomically; binary (0/255) images are stored as packed bits.

  A cache that cannot be written only warns: the data was decoded all the same.
  """
  arrays = dict(arrays)
  images = arrays["images"]
  if images.dtype == np.uint8 and not np.any((images != 0) & (images != 255)):
    del arrays["images"]
    arrays["images_packed"] = np.packbits(images.reshape(-1) == 255)
    arrays["images_shape"] = np.asarray(images.shape, np.int64)
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)  # type: ignore[arg-type]  # mypy matches ** to allow_pickle
    os.replace(tmp, path)
  except OSError as e:
    with contextlib.suppress(OSError):
      tmp.unlink()
    warnings.warn(f"could not write the cache {path}: {e}", stacklevel=3)


def resize_images(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
  """Resizes ``uint8`` images ``[n, h, w, c]`` to ``size`` with Lanczos filtering.

  ``size`` is an int (square) or ``(height, width)``; the aspect ratio is not kept.
  Lanczos is the filter of the MAML Omniglot pipeline (105 -> 28 pixels).

  >>> resize_images(np.full((2, 8, 8, 1), 255, np.uint8), 4).shape
  (2, 4, 4, 1)
  """
  h, w = (size, size) if isinstance(size, int) else tuple(size)
  if h <= 0 or w <= 0:
    raise ValueError(f"image_size must be positive, got {size}.")
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(
      f"resize_images takes uint8 [n, h, w, c], got {images.dtype} {images.shape}."
    )
  if images.shape[1:3] == (h, w):
    return images
  out = np.empty((images.shape[0], h, w, images.shape[3]), np.uint8)
  lanczos = Image.Resampling.LANCZOS
  for i, image in enumerate(images):
    for ch in range(images.shape[3]):
      out[i, :, :, ch] = np.asarray(
        Image.fromarray(image[:, :, ch]).resize((w, h), lanczos)
      )
  return out


def as_dataset(arrays: Mapping[str, Any], **fields: Any) -> ImageDataset:
  """An :class:`ImageDataset` from cached arrays (keys ``images``, ``labels``,
  ``groups`` and ``meta_<name>``)."""
  meta = {k[5:]: v for k, v in arrays.items() if k.startswith("meta_")}
  return ImageDataset(
    arrays["images"], arrays["labels"], arrays.get("groups"), meta, **fields
  )

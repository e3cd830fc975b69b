"""Class-disjoint splits: the classes of one part are never seen in another.

Metric learning is evaluated on classes the model has not trained on, so data is split
by class (or by a group of classes, such as Omniglot's alphabets), never by image.

For Omniglot the standard split of Lake et al. is the archives themselves:
``images_background`` (30 alphabets) to train and ``images_evaluation`` (20 alphabets)
to test. A validation set is carved out of the background, either by alphabet
(``class_split(background, (0.8, 0.2), by="group", seed=0)``: validation alphabets are
unseen) or by character (``by="label"``: unseen characters of seen alphabets).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from metriclearn.data.dataset import ImageDataset

__all__ = [
  "class_disjoint_indices",
  "class_split",
]


def class_disjoint_indices(
  labels: np.ndarray,
  fractions: Sequence[float] | np.ndarray,
  *,
  seed: int,
  groups: np.ndarray | None = None,
) -> tuple[np.ndarray, ...]:
  """Index arrays of class-disjoint parts (or group-disjoint, if ``groups`` is given).

  The distinct classes (or groups) are shuffled with ``seed`` and cut into parts of
  ``fraction * count`` units (largest-remainder rounding; every positive fraction gets
  at least one unit); each part gets every image of its units. Fractions are of
  classes (or groups), not of images.

  Args:
    labels: [n] int class of each image.
    fractions: the share of classes per part, summing to 1, e.g. ``(0.8, 0.1, 0.1)``.
    seed: the shuffle's seed.
    groups: optional [n] int super-class; whole groups go to one part. Every class
      must then lie in one group.

  Returns:
    One sorted index array per fraction.

  >>> parts = class_disjoint_indices(np.array([0, 0, 1, 1, 2, 2]), (2 / 3, 1 / 3),
  ...                                seed=0)
  >>> [p.size for p in parts]
  [4, 2]
  """
  labels = np.asarray(labels)
  fractions = np.asarray(fractions, np.float64)
  if fractions.ndim != 1 or fractions.size == 0 or np.any(fractions < 0):
    raise ValueError(f"fractions must be non-negative numbers, got {fractions}.")
  if not np.isclose(fractions.sum(), 1.0):
    raise ValueError(f"fractions must sum to 1, got {fractions.tolist()}.")
  units = labels if groups is None else np.asarray(groups)
  if units.shape != labels.shape:
    raise ValueError(f"groups must have shape {labels.shape}, got {units.shape}.")
  if groups is not None:
    pairs = np.unique(np.stack([labels, units]), axis=1)
    if np.unique(pairs[0]).size != pairs.shape[1]:
      raise ValueError("a class spans several groups: cannot split by group.")
  what = "classes" if groups is None else "groups"
  distinct = np.random.default_rng(seed).permutation(np.unique(units))
  n, positive = distinct.size, fractions > 0
  if positive.sum() > n:
    raise ValueError(
      f"{n} {what} are too few for fractions {fractions.tolist()}: a part would be "
      "empty."
    )
  # Largest-remainder rounding, with at least one unit for every positive fraction.
  sizes = np.floor(fractions * n).astype(int)
  sizes[positive] = np.maximum(sizes[positive], 1)
  while sizes.sum() > n:
    sizes[np.argmax(sizes)] -= 1
  remainder = fractions * n - sizes
  sizes[np.argsort(-remainder, kind="stable")[: n - sizes.sum()]] += 1
  parts = np.split(distinct, np.cumsum(sizes)[:-1])
  return tuple(np.flatnonzero(np.isin(units, part)) for part in parts)


def class_split(
  dataset: ImageDataset,
  fractions: Sequence[float] = (0.8, 0.1, 0.1),
  *,
  seed: int,
  by: str = "label",
) -> tuple[ImageDataset, ...]:
  """Splits a dataset into class-disjoint parts, e.g. train / validation / test.

  Args:
    dataset: the dataset.
    fractions: the share of classes (or groups) per part, summing to 1.
    seed: the shuffle's seed.
    by: ``"label"`` (disjoint classes) or ``"group"`` (disjoint groups, e.g. whole
      Omniglot alphabets).

  Returns:
    One :class:`ImageDataset` per fraction.

  >>> ds = ImageDataset(np.zeros((6, 1, 1, 1), np.uint8), np.array([0, 0, 1, 1, 2, 2]))
  >>> train, test = class_split(ds, (2 / 3, 1 / 3), seed=0)
  >>> set(train.labels.tolist()) & set(test.labels.tolist())
  set()
  """
  if by not in ("label", "group"):
    raise ValueError(f"by must be 'label' or 'group', got {by!r}.")
  if by == "group" and dataset.groups is None:
    raise ValueError(
      f"by='group' needs a dataset with groups; {dataset.name!r} has none."
    )
  groups = dataset.groups if by == "group" else None
  parts = class_disjoint_indices(dataset.labels, fractions, seed=seed, groups=groups)
  return tuple(
    dataset.take(idx, name=f"{dataset.name}[part {i}]") for i, idx in enumerate(parts)
  )

"""Seeded, endless, fixed-shape batch samplers over an in-memory dataset (NumPy).

Every sampler validates its arguments when called and returns an endless iterator of
batches: dicts of NumPy arrays whose shapes never change, so a jitted step compiles
once. The same ``seed`` gives the same batches. Keys:

- :func:`balanced_batches`: ``image`` [P*K, h, w, c], ``label`` [P*K], ``index`` [P*K]
  (the row in the dataset).
- :func:`hierarchical_batches`: the same keys over [G*P*K] rows, and ``group``
  [G*P*K] (the super-class of each row).
- :func:`pair_batches`: ``x1``, ``x2`` [B, h, w, c], ``similar`` [B] bool (True: same
  class), ``label1``, ``label2``, ``index1``, ``index2`` [B].
- :func:`triplet_batches`: ``anchor``, ``positive``, ``negative`` [B, h, w, c],
  ``label`` [B] (anchor and positive), ``negative_label`` [B], and ``anchor_index``,
  ``positive_index``, ``negative_index`` [B].
- :func:`padded_batches` (finite, for evaluation): ``image``, ``label``, ``index``;
  the last batch is padded with zero images, label -1 and index -1.

Labels, groups and indices are int32.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from metriclearn.data.dataset import ImageDataset

__all__ = [
  "balanced_batches",
  "hierarchical_batches",
  "padded_batches",
  "pair_batches",
  "triplet_batches",
]

Batch = dict[str, np.ndarray]


class _Classes:
  """The dataset's rows grouped by class: ``rows[start[c]:start[c] + count[c]]``."""

  def __init__(self, dataset: ImageDataset):
    labels = dataset.labels
    self.rows = np.argsort(labels, kind="stable")
    self.ids, self.start, self.count = np.unique(
      labels[self.rows], return_index=True, return_counts=True
    )
    self.size = self.ids.size

  def draw(self, rng: np.random.Generator, classes: np.ndarray) -> np.ndarray:
    """One uniformly drawn row of each class position in ``classes``."""
    return self.rows[self.start[classes] + rng.integers(0, self.count[classes])]

  def draw_k(self, rng: np.random.Generator, c: int, k: int) -> np.ndarray:
    """``k`` rows of class position ``c``: without replacement, or, if it has fewer,
    each of its rows once and the rest drawn with replacement."""
    n = self.count[c]
    if n >= k:
      pick = rng.choice(n, k, replace=False)
    else:
      pick = np.concatenate([rng.permutation(n), rng.integers(0, n, k - n)])
    return self.rows[self.start[c] + pick]

  def groups(self, dataset: ImageDataset, option: str) -> np.ndarray:
    """The group of each class position (``option`` names the argument that needs
    ``dataset.groups``)."""
    if dataset.groups is None:
      raise ValueError(
        f"{option} needs a dataset with groups; {dataset.name!r} has none."
      )
    return dataset.groups[self.rows[self.start]]

  def draw_two(
    self, rng: np.random.Generator, classes: np.ndarray
  ) -> tuple[np.ndarray, np.ndarray]:
    """Two distinct rows of each class (each class must have >= 2 rows)."""
    n = self.count[classes]
    first = rng.integers(0, n)
    second = (first + 1 + rng.integers(0, n - 1)) % n
    return self.rows[self.start[classes] + first], self.rows[
      self.start[classes] + second
    ]


class _Negatives:
  """Draws a class other than a given one, anywhere or within the same group."""

  def __init__(self, dataset: ImageDataset, classes: _Classes, same_group: bool):
    self.same_group = same_group
    if not same_group:
      if classes.size < 2:
        raise ValueError(f"negatives need >= 2 classes, {dataset.name!r} has 1.")
      self.eligible = np.arange(classes.size)
      return
    group_of_class = classes.groups(dataset, "same_group=True")
    self.order = np.argsort(group_of_class, kind="stable")  # class positions by group
    _, self.gstart, self.gcount = np.unique(
      group_of_class[self.order], return_index=True, return_counts=True
    )
    self.group = np.searchsorted(
      group_of_class[self.order][self.gstart], group_of_class
    )
    self.rank = np.empty(classes.size, np.int64)  # position of a class in its group
    self.rank[self.order] = np.arange(classes.size) - np.repeat(
      self.gstart, self.gcount
    )
    self.eligible = np.flatnonzero(self.gcount[self.group] >= 2)
    if self.eligible.size == 0:
      raise ValueError(
        f"same_group=True needs a group with >= 2 classes; {dataset.name!r} has none."
      )

  def other(
    self, rng: np.random.Generator, classes: np.ndarray, num_classes: int
  ) -> np.ndarray:
    if not self.same_group:
      return (
        classes + 1 + rng.integers(0, num_classes - 1, classes.size)
      ) % num_classes
    g = self.group[classes]
    n = self.gcount[g]
    rank = (self.rank[classes] + 1 + rng.integers(0, n - 1)) % n
    return self.order[self.gstart[g] + rank]


def _check_size(value: int, name: str) -> int:
  if int(value) != value or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}.")
  return int(value)


def balanced_batches(
  dataset: ImageDataset,
  classes_per_batch: int,
  samples_per_class: int,
  *,
  seed: int,
  by_group: bool = False,
) -> Iterator[Batch]:
  """Endless P x K batches: ``P`` distinct classes, exactly ``K`` images of each.

  Each batch draws ``P`` classes uniformly without replacement, then ``K`` images of
  each class without replacement. With ``by_group=True`` the classes come from as few
  groups as the draw allows (Omniglot: alphabets): groups are taken in a random order
  until they hold ``P`` classes, and the ``P`` classes are drawn among theirs, so the
  negatives of a batch are mostly of the same group, as in a within-alphabet test.

  A class with fewer than ``K`` images gives each of its images once and fills the
  remaining places with images of that class drawn with replacement, so every batch
  holds exactly ``P x K`` rows and ``K`` per class. Rows are grouped by class (``K``
  consecutive rows each).

  Args:
    dataset: the training part (class-disjoint from evaluation).
    classes_per_batch: ``P`` (at most the number of classes).
    samples_per_class: ``K`` (>= 2 gives every anchor a positive).
    seed: the random seed.
    by_group: draw the classes of a batch from few groups (needs ``dataset.groups``).

  Returns:
    An endless iterator of ``{"image", "label", "index"}`` batches.

  >>> ds = ImageDataset(np.zeros((6, 1, 1, 1), np.uint8), np.array([0, 0, 0, 1, 1, 2]))
  >>> batch = next(balanced_batches(ds, 2, 3, seed=0))
  >>> batch["image"].shape, np.unique(batch["label"], return_counts=True)[1].tolist()
  ((6, 1, 1, 1), [3, 3])

  References:
    Hermans, Beyer & Leibe, "In Defense of the Triplet Loss for Person
    Re-Identification", 2017 (P x K batches).
  """
  p = _check_size(classes_per_batch, "classes_per_batch")
  k = _check_size(samples_per_class, "samples_per_class")
  classes = _Classes(dataset)
  if p > classes.size:
    raise ValueError(
      f"classes_per_batch={p} exceeds the {classes.size} classes of {dataset.name!r}."
    )
  if by_group:
    group_of_class = classes.groups(dataset, "by_group=True")
    group_ids = np.unique(group_of_class)
    members = [np.flatnonzero(group_of_class == g) for g in group_ids]

  def draw_classes(rng: np.random.Generator) -> np.ndarray:
    if not by_group:
      return rng.choice(classes.size, p, replace=False)
    pool = []
    for g in rng.permutation(len(members)):
      pool.append(members[g])
      if sum(map(len, pool)) >= p:
        break
    return rng.choice(np.concatenate(pool), p, replace=False)

  def batches() -> Iterator[Batch]:
    rng = np.random.default_rng(seed)
    while True:
      chosen = draw_classes(rng)
      rows = np.concatenate([classes.draw_k(rng, c, k) for c in chosen])
      yield _rows_batch(dataset, rows)

  return batches()


def _rows_batch(dataset: ImageDataset, rows: np.ndarray) -> Batch:
  return {
    "image": dataset.images[rows],
    "label": dataset.labels[rows],
    "index": rows.astype(np.int32),
  }


def hierarchical_batches(
  dataset: ImageDataset,
  groups_per_batch: int,
  classes_per_group: int,
  samples_per_class: int,
  *,
  seed: int,
) -> Iterator[Batch]:
  """Endless G x P x K batches: ``G`` groups (super-classes), ``P`` classes of each,
  ``K`` images of each class.

  Each batch draws ``G`` distinct groups uniformly among the groups with at least
  ``P`` classes (Omniglot: alphabets with at least ``P`` characters), then ``P``
  distinct classes of each group uniformly, then ``K`` images of each class as
  :func:`balanced_batches` does (without replacement; a class with fewer than ``K``
  images gives each once and fills up with replacement). Every batch therefore holds
  exactly ``G x P x K`` rows, ``K`` per class, and the classes of exactly ``G``
  groups: each anchor meets negatives of its own group (hard: a similar alphabet)
  and of other groups. Rows are grouped by group, then by class.

  PML's ``HierarchicalSampler`` (``super_classes_per_batch=G``,
  ``samples_per_class=K``) is the same idea as a PyTorch sampler over an epoch of
  precomputed batches (``batches_per_super_tuple``); here every batch is drawn
  afresh, endlessly, and its number of classes per group is fixed.

  Args:
    dataset: the training part; needs ``dataset.groups`` (the super-class of each
      row; every row of a class in the same group).
    groups_per_batch: ``G`` (at most the number of groups with ``P`` classes).
    classes_per_group: ``P``.
    samples_per_class: ``K`` (>= 2 gives every anchor a positive).
    seed: the random seed.

  Returns:
    An endless iterator of ``{"image", "label", "group", "index"}`` batches
    (``group`` [G*P*K] int32, the group of each row).

  >>> ds = ImageDataset(np.zeros((8, 1, 1, 1), np.uint8), np.arange(8) // 2,
  ...                   groups=np.array([0, 0, 0, 0, 1, 1, 2, 2]))
  >>> batch = next(hierarchical_batches(ds, 1, 2, 2, seed=0))  # only group 0 has 2
  >>> batch["label"].tolist(), batch["group"].tolist()
  ([0, 0, 1, 1], [0, 0, 0, 0])

  References:
    Cakir, He, Xia, Kulis, Sclaroff. Deep Metric Learning to Rank. CVPR 2019
    (mini-batches from a few super-labels, several classes each); PML's
    ``samplers.HierarchicalSampler``.
  """
  g = _check_size(groups_per_batch, "groups_per_batch")
  p = _check_size(classes_per_group, "classes_per_group")
  k = _check_size(samples_per_class, "samples_per_class")
  classes = _Classes(dataset)
  group_of_class = classes.groups(dataset, "hierarchical_batches")
  groups = dataset.groups
  assert groups is not None  # classes.groups raised otherwise
  if np.any(np.repeat(group_of_class, classes.count) != groups[classes.rows]):
    raise ValueError(
      f"groups must be the same for every row of a class; {dataset.name!r} has a "
      "class in two groups."
    )
  group_ids, sizes = np.unique(group_of_class, return_counts=True)
  eligible = group_ids[sizes >= p]
  if g > eligible.size:
    raise ValueError(
      f"groups_per_batch={g} exceeds the {eligible.size} groups of {dataset.name!r} "
      f"with at least classes_per_group={p} classes."
    )
  members = [np.flatnonzero(group_of_class == e) for e in eligible]

  def batches() -> Iterator[Batch]:
    rng = np.random.default_rng(seed)
    while True:
      chosen = [
        rng.choice(members[e], p, replace=False)
        for e in rng.choice(eligible.size, g, replace=False)
      ]
      rows = np.concatenate([classes.draw_k(rng, c, k) for c in np.concatenate(chosen)])
      yield {**_rows_batch(dataset, rows), "group": groups[rows]}

  return batches()


def pair_batches(
  dataset: ImageDataset,
  batch_size: int,
  *,
  similar_fraction: float = 0.5,
  same_group: bool = False,
  seed: int,
) -> Iterator[Batch]:
  """Endless batches of image pairs, exactly ``round(batch_size * similar_fraction)``
  of them similar (same class), in shuffled rows.

  A similar pair is two distinct images of a class drawn uniformly among classes with
  at least two images; a dissimilar pair is an image of a uniformly drawn class and an
  image of another class: any other class, or with ``same_group`` one of the same group
  (Koch et al. draw dissimilar characters from the same alphabet).

  Args:
    dataset: the training part.
    batch_size: pairs per batch.
    similar_fraction: the share of similar pairs, in [0, 1].
    same_group: draw dissimilar pairs within one group (needs ``dataset.groups``).
    seed: the random seed.

  Returns:
    An endless iterator of ``{"x1", "x2", "similar", "label1", "label2", "index1",
    "index2"}`` batches.

  >>> ds = ImageDataset(np.zeros((4, 1, 1, 1), np.uint8), np.array([0, 0, 1, 1]))
  >>> batch = next(pair_batches(ds, 4, similar_fraction=0.25, seed=0))
  >>> int(batch["similar"].sum()), batch["x1"].shape
  (1, (4, 1, 1, 1))

  References:
    Koch, Zemel & Salakhutdinov, "Siamese Neural Networks for One-shot Image
    Recognition", ICML Deep Learning Workshop 2015.
  """
  b = _check_size(batch_size, "batch_size")
  if not 0.0 <= similar_fraction <= 1.0:
    raise ValueError(f"similar_fraction must lie in [0, 1], got {similar_fraction}.")
  n_similar = int(round(b * similar_fraction))
  classes = _Classes(dataset)
  pairable = np.flatnonzero(classes.count >= 2)
  if n_similar and pairable.size == 0:
    raise ValueError(
      f"similar pairs need a class with >= 2 images in {dataset.name!r}."
    )
  negatives = _Negatives(dataset, classes, same_group) if n_similar < b else None

  def batches() -> Iterator[Batch]:
    rng = np.random.default_rng(seed)
    while True:
      pos = pairable[rng.integers(0, pairable.size, n_similar)]
      pos1, pos2 = classes.draw_two(rng, pos)
      if negatives is not None:
        neg = negatives.eligible[
          rng.integers(0, negatives.eligible.size, b - n_similar)
        ]
        neg1 = classes.draw(rng, neg)
        neg2 = classes.draw(rng, negatives.other(rng, neg, classes.size))
      else:
        neg1 = neg2 = np.zeros(0, np.int64)
      order = rng.permutation(b)
      rows1 = np.concatenate([pos1, neg1])[order]
      rows2 = np.concatenate([pos2, neg2])[order]
      yield {
        "x1": dataset.images[rows1],
        "x2": dataset.images[rows2],
        "similar": (np.arange(b) < n_similar)[order],
        "label1": dataset.labels[rows1],
        "label2": dataset.labels[rows2],
        "index1": rows1.astype(np.int32),
        "index2": rows2.astype(np.int32),
      }

  return batches()


def triplet_batches(
  dataset: ImageDataset,
  batch_size: int,
  *,
  same_group: bool = False,
  seed: int,
) -> Iterator[Batch]:
  """Endless batches of (anchor, positive, negative) triplets.

  The anchor's class is drawn uniformly among classes with at least two images; the
  positive is another image of that class; the negative an image of another class (of
  the same group with ``same_group``).

  Args:
    dataset: the training part.
    batch_size: triplets per batch.
    same_group: draw negatives within the anchor's group.
    seed: the random seed.

  Returns:
    An endless iterator of ``{"anchor", "positive", "negative", "label",
    "negative_label", "anchor_index", "positive_index", "negative_index"}`` batches.

  >>> ds = ImageDataset(np.zeros((4, 1, 1, 1), np.uint8), np.array([0, 0, 1, 1]))
  >>> batch = next(triplet_batches(ds, 3, seed=0))
  >>> bool(np.all(batch["label"] != batch["negative_label"]))
  True

  References:
    Schroff, Kalenichenko & Philbin, "FaceNet: A Unified Embedding for Face
    Recognition and Clustering", CVPR 2015.
  """
  b = _check_size(batch_size, "batch_size")
  classes = _Classes(dataset)
  negatives = _Negatives(dataset, classes, same_group)
  anchors = np.intersect1d(np.flatnonzero(classes.count >= 2), negatives.eligible)
  if anchors.size == 0:
    raise ValueError(
      f"triplets need a class with >= 2 images (and, with same_group, another class "
      f"in its group) in {dataset.name!r}."
    )

  def batches() -> Iterator[Batch]:
    rng = np.random.default_rng(seed)
    while True:
      cls = anchors[rng.integers(0, anchors.size, b)]
      anchor, positive = classes.draw_two(rng, cls)
      negative = classes.draw(rng, negatives.other(rng, cls, classes.size))
      yield {
        "anchor": dataset.images[anchor],
        "positive": dataset.images[positive],
        "negative": dataset.images[negative],
        "label": dataset.labels[anchor],
        "negative_label": dataset.labels[negative],
        "anchor_index": anchor.astype(np.int32),
        "positive_index": positive.astype(np.int32),
        "negative_index": negative.astype(np.int32),
      }

  return batches()


def padded_batches(dataset: ImageDataset, batch_size: int) -> Iterator[Batch]:
  """The dataset once, in order, in batches of a fixed size (for evaluation).

  The last batch is filled up with zero images, label -1 and index -1 (the padding
  label every metriclearn loss and metric ignores).

  >>> ds = ImageDataset(np.ones((3, 1, 1, 1), np.uint8), np.array([0, 1, 2]))
  >>> [b["label"].tolist() for b in padded_batches(ds, 2)]
  [[0, 1], [2, -1]]
  """
  b = _check_size(batch_size, "batch_size")

  def batches() -> Iterator[Batch]:
    for start in range(0, len(dataset), b):
      rows = np.arange(start, min(start + b, len(dataset)))
      pad = b - rows.size
      image = dataset.images[rows]
      if pad:
        image = np.concatenate([image, np.zeros((pad, *image.shape[1:]), image.dtype)])
      fill = np.full(pad, -1, np.int32)
      yield {
        "image": image,
        "label": np.concatenate([dataset.labels[rows], fill]),
        "index": np.concatenate([rows.astype(np.int32), fill]),
      }

  return batches()

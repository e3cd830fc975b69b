"""NumPy references and batches shared by the triplet and miner tests: the pair
relations by the label convention, one pair at a time, distances, and random batches."""

import math

import numpy as np


def np_distance(u, v, distance="euclidean", squared=False):
  u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
  if distance == "euclidean":
    d = math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v, strict=True)))
  else:  # cosine
    d = 1.0 - float(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v))
  return d * d if squared else d


def _is_pad(label) -> bool:
  return bool(np.all(np.asarray(label) < 0))


def np_pairs(labels, ref_labels=None, positive_mask=None, mask=None, compare=None):
  """Positive / negative pair relations by the label convention, one pair at a time:
  both rows real (not -1 padding), not a self-pair, inside ``mask``; positive by
  ``positive_mask``, else ``compare(a, b)``, else equal labels."""
  own = ref_labels is None
  ref_labels = labels if own else ref_labels
  n, m = len(labels), len(ref_labels)
  pos, neg = np.zeros((n, m), bool), np.zeros((n, m), bool)
  for a in range(n):
    for j in range(m):
      if _is_pad(labels[a]) or _is_pad(ref_labels[j]) or (own and a == j):
        continue
      if mask is not None and not mask[a, j]:
        continue
      if positive_mask is not None:
        same = bool(positive_mask[a, j])
      elif compare is not None:
        same = bool(compare(labels[a], ref_labels[j]))
      else:
        same = labels[a] == ref_labels[j]
      pos[a, j], neg[a, j] = same, not same
  return pos, neg


# Random batches. Coordinates are multiples of 1/4 in [-2, 2]: squared distances are
# then exact in float32 too, so exact ties (duplicated rows, equal distances) are ties
# in both precisions and the float32 comparison is not spoiled by the cancellation of
# |a|^2 + |b|^2 - 2 a.b on duplicated rows.


def grid_batch(seed, n, d, classes, *, pad=0, duplicates=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(-8, 9, size=(n, d)) / 4.0
  labels = rng.integers(0, classes, size=n)
  for _ in range(duplicates):
    i, j = rng.choice(n, 2, replace=False)
    x[j] = x[i]
  labels[rng.choice(n, pad, replace=False)] = -1
  return x, labels


def normal_batch(seed, n, d, classes):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)), rng.integers(0, classes, size=n)


# Every case has 12 anchors of size 4 (and 12 candidates), so that the compiled
# operations are shared between cases.
CASES = {
  # name: (x, labels, ref_x, ref_labels, extra keyword arguments)
  "2 classes": (*grid_batch(0, 12, 4, 2), None, None, {}),
  "3 classes, padding, duplicates": (
    *grid_batch(1, 12, 4, 3, pad=2, duplicates=3),
    None,
    None,
    {},
  ),
  "5 classes, padding, duplicate": (
    *grid_batch(2, 12, 4, 5, pad=3, duplicates=1),
    None,
    None,
    {},
  ),
  "memory bank": (
    *grid_batch(3, 12, 4, 3, pad=1),
    *grid_batch(4, 12, 4, 3, pad=1, duplicates=2),
    {},
  ),
  "positive_mask": (
    *grid_batch(5, 12, 4, 4, pad=1),
    None,
    None,
    {"positive_mask": np.random.default_rng(6).random((12, 12)) < 0.3},
  ),
  "continuous values": (*normal_batch(7, 12, 4, 3), None, None, {}),
}

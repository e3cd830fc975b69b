"""Labels to pair masks: which (anchor, candidate) pairs are positives or negatives.

Conventions (see DESIGN.md): labels are integers; ``-1`` marks padding, a row that takes
part in no pair; a self-pair (an anchor against its own copy among the candidates) is
never a positive and never a negative. All masks are boolean ``[n, m]`` arrays of fixed
shape, so they work under ``jit`` and across devices.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = [
  "LabelComparison",
  "valid_rows",
  "label_equal",
  "self_mask",
  "valid_mask",
  "pair_masks",
  "positive_mask",
  "negative_mask",
  "triplet_mask",
]

LabelComparison = Callable[[jax.Array, jax.Array], jax.Array]


def valid_rows(labels: jax.Array) -> jax.Array:
  """[n] bool: the real rows; a row is padding when all its label entries are < 0."""
  labels = jnp.asarray(labels)
  if labels.ndim == 1:
    return labels >= 0
  return jnp.any(labels.reshape(labels.shape[0], -1) >= 0, axis=1)


def label_equal(labels: jax.Array, ref_labels: jax.Array) -> jax.Array:
  """Default label comparison: ``labels[i] == ref_labels[j]`` as an [n, m] bool mask."""
  return labels[:, None] == ref_labels[None, :]


def self_mask(n: int, m: int, offset: int | jax.Array = 0) -> jax.Array:
  """[n, m] bool, True where candidate ``j`` is anchor ``i``: ``j == i + offset``.

  ``offset`` is the position of the first anchor among the candidates, e.g.
  ``axis_index * n`` when the candidates are gathered from every device.
  """
  rows = jnp.arange(n)[:, None]
  return rows + jnp.asarray(offset).astype(rows.dtype) == jnp.arange(m)[None, :]


def valid_mask(
  labels: jax.Array,
  ref_labels: jax.Array | None = None,
  *,
  self_offset: int | jax.Array | None = 0,
) -> jax.Array:
  """[n, m] bool: both rows are real (not padding) and the pair is not a self-pair.

  Args:
    labels: [n] integer labels of the anchors (or [n, ...] for a custom comparison).
    ref_labels: [m] labels of the candidates; defaults to ``labels``.
    self_offset: where anchor 0 sits among the candidates; ``None`` when the candidates
      are a different set (no self-pairs). Taken as 0 if ``ref_labels`` is None.
  """
  if ref_labels is None:
    ref_labels, self_offset = labels, 0
  valid = valid_rows(labels)[:, None] & valid_rows(ref_labels)[None, :]
  if self_offset is not None:
    n, m = valid.shape
    valid &= ~self_mask(n, m, self_offset)
  return valid


def pair_masks(
  labels: jax.Array,
  ref_labels: jax.Array | None = None,
  *,
  self_offset: int | jax.Array | None = 0,
  label_comparison: LabelComparison | None = None,
  positive_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Positive and negative [n, m] masks from labels.

  A pair is positive if it is valid (see :func:`valid_mask`) and the labels compare
  equal (or ``label_comparison(labels, ref_labels)`` is True, or ``positive_mask`` is
  True when given); it is negative if it is valid and not positive.
  """
  if ref_labels is None:
    ref_labels, self_offset = labels, 0
  valid = valid_mask(labels, ref_labels, self_offset=self_offset)
  if positive_mask is not None:
    same = positive_mask.astype(bool)
  else:
    same = (label_comparison or label_equal)(labels, ref_labels)
  return valid & same, valid & ~same


def positive_mask(labels, ref_labels=None, **kwargs) -> jax.Array:
  """[n, m] bool mask of positive pairs; see :func:`pair_masks` for the options."""
  return pair_masks(labels, ref_labels, **kwargs)[0]


def negative_mask(labels, ref_labels=None, **kwargs) -> jax.Array:
  """[n, m] bool mask of negative pairs; see :func:`pair_masks` for the options."""
  return pair_masks(labels, ref_labels, **kwargs)[1]


def triplet_mask(positive: jax.Array, negative: jax.Array) -> jax.Array:
  """[n, m, m] bool: ``(a, p, q)`` is a valid triplet if (a, p) is positive and (a, q)
  is negative. Memory grows with n·m²: use it for small batches and references."""
  return positive[:, :, None] & negative[:, None, :]

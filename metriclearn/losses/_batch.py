"""What every batch-form loss does before its formula: checks, references, masks.

``prepare`` turns the batch-form arguments ``(embeddings, labels, *, ref_embeddings,
ref_labels, positive_mask, label_comparison, mask, axis_name)`` into anchors,
candidates and boolean positive / negative masks. Losses then only apply their formula
to a distance or similarity matrix and reduce over candidates.

Inside ``pmap`` / ``shard_map`` with ``axis_name``, the candidates (the reference set,
or the embeddings themselves) are gathered from every device with
``lax.all_gather(..., tiled=True)``: local anchors are compared against the global
candidates, and gradients flow back through the gather to the device that owns each
candidate (no world-size correction is needed or applied).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metriclearn import _checks, distances, masks


class Batch(NamedTuple):
  anchors: jax.Array  # [n, d], float32 or wider
  candidates: jax.Array  # [m, d]
  positive: jax.Array  # [n, m] bool
  negative: jax.Array  # [n, m] bool
  anchor_labels: jax.Array  # [n] (or [n, ...] with label_comparison)
  candidate_labels: jax.Array  # [m]
  self_offset: jax.Array | int | None  # where anchor 0 sits among the candidates


def gather(x: jax.Array, axis_name: str | None) -> jax.Array:
  """Concatenates ``x`` over the devices of ``axis_name`` along axis 0 (None: as is)."""
  if axis_name is None:
    return x
  return jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


def check_inputs(
  embeddings: jax.Array,
  labels: jax.Array,
  ref_embeddings: jax.Array | None,
  ref_labels: jax.Array | None,
  label_comparison: masks.LabelComparison | None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """The batch-form argument checks alone: (anchors, labels, candidates, candidate
  labels), the candidates being the anchors themselves when no reference is given."""
  embeddings = _checks.as_float(embeddings, "embeddings")
  _checks.check_rank(embeddings, 2, "embeddings", "[n, d]")
  n, d = embeddings.shape
  labels = jnp.asarray(labels)
  if label_comparison is None:
    labels = _checks.check_labels(labels, n, "labels")
  elif labels.shape[:1] != (n,):
    raise ValueError(
      f"labels must have leading dimension {n} to match embeddings, got "
      f"{tuple(labels.shape)}."
    )
  if (ref_embeddings is None) != (ref_labels is None):
    raise ValueError("ref_embeddings and ref_labels must be given together.")
  if ref_embeddings is None:
    candidates, cand_labels = embeddings, labels
  else:
    candidates = _checks.as_float(ref_embeddings, "ref_embeddings")
    _checks.check_rank(candidates, 2, "ref_embeddings", "[m, d]")
    if candidates.shape[1] != d:
      raise ValueError(
        f"ref_embeddings must have embedding size {d} like embeddings, got "
        f"{tuple(candidates.shape)}."
      )
    cand_labels = jnp.asarray(ref_labels)
    if label_comparison is None:
      cand_labels = _checks.check_labels(cand_labels, candidates.shape[0], "ref_labels")
    embeddings, candidates = _checks.common_float(embeddings, candidates)
  return embeddings, labels, candidates, cand_labels


def prepare(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
) -> Batch:
  """Validates the batch-form arguments and builds anchors, candidates and masks.

  Args:
    embeddings: [n, d] anchors.
    labels: [n] integer labels, -1 for padding (any [n, ...] with ``label_comparison``).
    ref_embeddings: optional [m, d] candidates (memory bank, another view); defaults to
      the embeddings themselves, in which case self-pairs are excluded.
    ref_labels: [m] labels of ``ref_embeddings``; required with it.
    positive_mask: optional [n, m] bool relation that replaces label equality (padding
      rows and self-pairs are still excluded).
    label_comparison: optional ``f(labels [n,...], ref_labels [m,...]) -> [n, m] bool``.
    mask: optional [n, m] bool, e.g. a miner's output: pairs outside it take no part.
    axis_name: gather candidates from every device of this mapped axis.
  """
  embeddings, labels, candidates, cand_labels = check_inputs(
    embeddings, labels, ref_embeddings, ref_labels, label_comparison
  )
  n = embeddings.shape[0]
  self_offset = 0 if ref_embeddings is None else None
  if axis_name is not None:
    candidates = gather(candidates, axis_name)
    cand_labels = gather(cand_labels, axis_name)
    if self_offset is not None:
      self_offset = jax.lax.axis_index(axis_name) * n
  m = candidates.shape[0]
  if positive_mask is not None:
    positive_mask = _checks.check_mask(positive_mask, (n, m), "positive_mask")
  pos, neg = masks.pair_masks(
    labels,
    cand_labels,
    self_offset=self_offset,
    label_comparison=label_comparison,
    positive_mask=positive_mask,
  )
  if mask is not None:
    mask = _checks.check_mask(mask, (n, m), "mask")
    pos, neg = pos & mask, neg & mask
  return Batch(embeddings, candidates, pos, neg, labels, cand_labels, self_offset)


def similarity_matrix(batch: Batch, similarity) -> jax.Array:
  """[n, m] similarities of the anchors to the candidates: 'cosine', 'dot' or a
  callable ``(a, b) -> [n, m]``."""
  return distances.get_pairwise_similarity(similarity)(batch.anchors, batch.candidates)

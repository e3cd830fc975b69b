"""Per-(anchor, positive) slots: the k first positives of each anchor as the engine's
slot statistics, shared by the triplet, pair-triplet and ranking losses.

A loss that needs a statistic for every (anchor, positive) pair (the semi-hard
negative, the triplets of batch-all, the rank of a positive) takes the first
``max_positives`` positives of each anchor as slots (:func:`by_slots`: their indices,
counts and the distance to each slot's positive; on labels alone from one sort of the
labels, otherwise from two engine passes), then a last pass of its own over
``[ba, k, bc]`` terms, in O(n m k), dense, blockwise or over a ring. :func:`bounded`
falls back to the loss's exact form when an anchor has more than k positives;
:func:`by_rows` runs an exact form in blocks of anchors against every candidate.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from metriclearn import pairs
from metriclearn.losses import _engine
from metriclearn.losses._engine import Block, Pass

__all__ = [
  "bounded",
  "by_rows",
  "by_slots",
  "candidate_rows",
  "candidates",
  "distances_at",
  "fallback_rows",
  "first_positive_rows",
  "max_positives",
  "plain",
  "rows_to_candidates",
  "slot_view",
  "slots_of",
  "sorted_slots",
]


def max_positives(k) -> int | None:
  if k is not None and not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
    raise ValueError(f"max_positives must be None or a positive int, got {k!r}.")
  return k


# The k first positives of each anchor as slots (engine passes): their indices, the
# anchor's positive and negative counts, then the distance to each slot's positive.
# Flattened statistics of those passes: 0 slot, 1 n_pos, 2 n_neg, 3 d_ap.


def first_positives(b: Block):
  index = jnp.broadcast_to(b.c_index.astype(b.s.dtype), b.s.shape)
  ones = _engine.ones(b)
  return [(index, b.positive), (ones, b.positive), (ones, b.negative)]


def positive_distances(b: Block):
  index = b.c_index.astype(b.s.dtype)
  hit = (index[None, None, :] == b.prev[0][:, :, None]) & b.positive[:, None, :]
  return [(jnp.broadcast_to(b.s[:, None, :], hit.shape), hit)]


def slot_indices(b: Block):
  return [(jnp.broadcast_to(b.c_index.astype(b.s.dtype), b.s.shape), b.positive)]


def slots_of(b: Block) -> tuple[jax.Array, jax.Array, Any]:
  """In a last slot pass: (slot index [ba, k], +inf past the last; d_ap [ba, k]; the
  slots' positives [ba, k, d] or None), from the earlier passes or, on the sorted
  path (no earlier pass), from the anchors' aux."""
  if b.prev:
    return b.prev[0], b.prev[3], b.a_aux if not isinstance(b.a_aux, tuple) else None
  slot, d_ap, *rows = b.a_aux
  return slot, d_ap, rows[0] if rows else None


def plain(rel: pairs.Relation) -> bool:
  """Positives are label equality alone: one sort of the labels finds them."""
  return (
    rel.axis_name is None
    and rel.label_comparison is None
    and rel.positive_mask is None
    and rel.mask is None
    and rel.labels.ndim == 1
  )


def sorted_slots(rel: pairs.Relation, k: int) -> tuple[jax.Array, ...]:
  """For a :func:`plain` relation, without a pass over the pairs: each anchor's first
  ``k`` positives (candidate indices, ascending; +inf past the last), its number of
  positives and of negatives, from one stable sort of the candidates' labels:
  O(m log m + n k)."""
  idx = _engine.index_dtype()
  labels, ref = rel.labels, rel.ref_labels
  n, m = labels.shape[0], ref.shape[0]
  order = jnp.argsort(ref, stable=True).astype(idx)  # padding (-1) first
  ordered = ref[order]
  lo = jnp.searchsorted(ordered, labels, side="left").astype(idx)
  hi = jnp.searchsorted(ordered, labels, side="right").astype(idx)
  real = labels >= 0
  same = jnp.where(real, hi - lo, 0)  # candidates of the anchor's label
  j = jnp.arange(k, dtype=idx)[None, :]
  if rel.self_pairs:  # skip the anchor itself among its class
    where = jnp.zeros((m,), idx).at[order].set(jnp.arange(m, dtype=idx))
    j = j + (j >= (where[:n] - lo)[:, None]).astype(idx)
    n_pos = jnp.maximum(same - 1, 0)
  else:
    n_pos = same
  dtype = rel.anchors.dtype
  slot = jnp.where(
    jnp.arange(k, dtype=idx)[None, :] < n_pos[:, None],
    order[jnp.clip(lo[:, None] + j, 0, m - 1)].astype(dtype),
    jnp.inf,
  )
  n_neg = jnp.where(real, jnp.sum(ref >= 0, dtype=idx) - same, 0)
  return slot, n_pos.astype(dtype), n_neg.astype(dtype)


def candidate_rows(rel: pairs.Relation, index: jax.Array) -> jax.Array:
  """The candidates (of every device) at the positions ``index`` [...]: [..., d].

  Positions count the candidates as the engine's ``Block.c_index`` does (device by
  device with ``axis_name``). Over a ring (``rel.ring``) each device picks the rows
  from the shards as they pass (``lax.ppermute``): no device holds every candidate.
  Differentiable in the candidates.
  """
  index = index.astype(_engine.index_dtype())
  if not rel.ring:
    candidates = pairs.gather(rel.candidates, rel.axis_name)
    return jnp.take(candidates, index, axis=0, mode="clip")
  size, m = jax.lax.axis_size(rel.axis_name), rel.candidates.shape[0]
  me = jax.lax.axis_index(rel.axis_name).astype(index.dtype)
  ring = [(i, (i + 1) % size) for i in range(size)]

  def pick(out, shard, src):
    local = index - src * m
    rows = jnp.take(shard, jnp.clip(local, 0, m - 1), axis=0)
    return jnp.where(((local >= 0) & (local < m))[..., None], rows, out)

  def step(carry, w):
    out, shard = carry
    shard = jax.lax.ppermute(shard, rel.axis_name, ring)
    return (pick(out, shard, (me - w) % size), shard), None

  empty = jnp.zeros(index.shape + rel.candidates.shape[1:], rel.candidates.dtype)
  start = (pick(empty, rel.candidates, me), rel.candidates)
  (out, _), _ = jax.lax.scan(step, start, jnp.arange(1, size, dtype=index.dtype))
  return out


def _to_rows(dist_fn, anchors: jax.Array, rows: jax.Array) -> jax.Array:
  """``dist_fn`` from each anchor [n, d] to its own rows [n, k, d]: [n, k]."""
  return jax.vmap(lambda a, r: dist_fn(a[None], r)[0])(anchors, rows)


def distances_at(rel: pairs.Relation, dist_fn, index: jax.Array) -> jax.Array:
  """``dist_fn`` from each anchor to the candidates at ``index`` [n, k] (a slot index
  or an ``'argmin'`` statistic; 0 where +inf, NaN where NaN): [n, k], differentiable
  in the anchors and those candidates (O(n k d))."""
  found = jnp.isfinite(index)
  d = _to_rows(dist_fn, rel.anchors, candidate_rows(rel, jnp.where(found, index, 0.0)))
  return jnp.where(jnp.isnan(index), jnp.nan, jnp.where(found, d, 0.0))


def first_positive_rows(rel: pairs.Relation, k: int) -> tuple[jax.Array, jax.Array]:
  """The first ``k`` positives of each anchor (the slots of the bounded forms):
  ``(valid [n, k] bool, their embeddings [n, k, d], zeros past the last)``."""
  if plain(rel):
    slot = sorted_slots(rel, k)[0]
  else:
    ((slot,),) = _engine.pair_statistics(
      rel, (Pass(slot_indices, ("smallest",), slots=k),), _engine.no_similarity
    )
  valid = jnp.isfinite(slot)
  rows = candidate_rows(rel, jnp.where(valid, slot, 0.0))
  return valid, jnp.where(valid[..., None], rows, 0.0)


def rows_to_candidates(dist_fn, rows: jax.Array, candidates: jax.Array) -> jax.Array:
  """``dist_fn`` between rows [ba, k, d] and candidates [bc, d]: [ba, k, bc]."""
  ba, k, d = rows.shape
  return dist_fn(rows.reshape(ba * k, d), candidates).reshape(ba, k, -1)


def slot_view(b: Block, swap=None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(negatives of valid slots [ba, k, bc], d_ap [ba, k, 1], D_an [ba, 1, bc]); with
  ``swap`` (the distance function) D_an is min(D_an, D_pn) [ba, k, bc], the slots'
  positives being those of :func:`slots_of` and the candidates ``b.c_aux``."""
  slot, d_ap, rows = slots_of(b)
  valid = jnp.isfinite(slot)[:, :, None]
  d_an = b.s[:, None, :]
  if swap is not None:
    d_an = jnp.minimum(d_an, rows_to_candidates(swap, rows, b.c_aux))
  return valid & b.negative[:, None, :], d_ap[:, :, None], d_an


def by_slots(rel, k: int, dist_fn, last: Pass, margin, swap: bool = False):
  """The slot statistics and the ``last`` pass's: ``(valid [n, k], n_pos, n_neg,
  d_ap [n, k], last's statistics)``. A :func:`plain` relation finds its slots with
  one sort (:func:`sorted_slots`) and d_ap from the slots' rows, so the engine runs
  ``last`` alone; otherwise two passes find them first. ``block_size="auto"`` gives
  the slot passes their own blocks (:func:`metriclearn.pairs.auto_slot_block_size`)."""
  if rel.auto and rel.block_size is not None:
    rel = rel._replace(block_size=pairs.auto_slot_block_size(candidates(rel)))
  if plain(rel):
    slot, n_pos, n_neg = sorted_slots(rel, k)
    valid = jnp.isfinite(slot)
    rows = candidate_rows(rel, jnp.where(valid, slot, 0.0))
    d_ap = jnp.where(valid, _to_rows(dist_fn, rel.anchors, rows), 0.0)
    # d_ap is a constant in ``last`` unless it asks for its gradient (statistic 3)
    seen = d_ap if 3 in last.prev_grad else jax.lax.stop_gradient(d_ap)
    (stats,) = _engine.pair_statistics(
      rel,
      (dataclasses.replace(last, prev_grad=()),),
      dist_fn,
      consts=margin,
      anchor_aux=(slot, seen, rows) if swap else (slot, seen),
      candidate_aux=rel.candidates if swap else (),
    )
    return valid, n_pos, n_neg, d_ap, stats
  passes = (
    Pass(first_positives, ("smallest", "sum", "sum"), slots=k),
    Pass(positive_distances, ("sum",), positive_only=True),
    last,
  )
  aux = {}
  if swap:  # the slots' positives travel with the anchors, the candidates with theirs
    aux = dict(anchor_aux=first_positive_rows(rel, k)[1], candidate_aux=rel.candidates)
  (slot, n_pos, n_neg), (d_ap,), stats = _engine.pair_statistics(
    rel, passes, dist_fn, consts=margin, **aux
  )
  return jnp.isfinite(slot), n_pos, n_neg, d_ap, stats


def bounded(rel, k: int | None, slot_form, exact, per_row: int | None = None):
  """The slot form, or ``exact(rel)`` where a batch has more than ``k`` positives for
  an anchor (NaN for those anchors where there is no exact form: over a ring);
  ``exact(rel)`` alone without ``k``. As the fallback of a dense slot form, ``exact``
  gets ``rel`` in rows of anchors (:func:`fallback_rows`) when its rows hold
  ``per_row`` elements each."""
  if k is None:
    return exact(rel)
  total, count, n_pos = slot_form()
  over = n_pos > k
  if rel.ring:
    return jnp.where(over, jnp.nan, total), count
  any_over = jnp.any(over)
  if rel.axis_name is not None:
    any_over = jax.lax.psum(any_over.astype(jnp.int32), rel.axis_name) > 0
  # checkpointed: under autodiff the cond keeps the exact form's inputs, not its
  # intermediates (zero-filled residuals of an unused branch cost its full memory)
  rows = rel if per_row is None else fallback_rows(rel, per_row)
  fallback = jax.checkpoint(lambda: exact(rows))
  return jax.lax.cond(any_over, fallback, lambda: (total, count))


def candidates(rel: pairs.Relation) -> int:
  """M, the number of candidates of every device."""
  m = rel.candidates.shape[0]
  return m if rel.axis_name is None else m * jax.lax.axis_size(rel.axis_name)


def fallback_rows(rel: pairs.Relation, per_row: int) -> pairs.Relation:
  """``rel`` for a dense bounded form's exact fallback: rows of anchors such that a
  block of ``per_row`` elements a row stays near 2^24 elements (64 MiB in float32)."""
  if rel.block_size is not None:
    return rel
  rows = max(1, min(rel.anchors.shape[0], 2**24 // max(1, per_row)))
  return rel._replace(block_size=(rows, rows))


def by_rows(rel: pairs.Relation, fn) -> tuple[jax.Array, jax.Array]:
  """``fn(pairs.Pairs) -> (total [ba], count [ba])`` on blocks of anchors against every
  candidate (``rel.block_size[0]`` at a time, all at once without a block size), each
  block recomputed in the backward pass. Memory: ``block x M``."""
  if rel.ring:
    raise ValueError(
      "ring=True needs max_positives: the exact form compares each anchor with all "
      "its candidates at once."
    )
  n = rel.anchors.shape[0]
  if rel.block_size is None:
    return fn(pairs.dense(rel))
  ba = max(1, min(rel.block_size[0], n))
  na = _engine.round_up(n, ba)

  def pad(x, value):
    return None if x is None else _engine.pad_rows(x, na, value)

  padded = rel._replace(
    anchors=pad(rel.anchors, 0),
    labels=pad(rel.labels, -1),
    positive_mask=pad(rel.positive_mask, False),
    mask=pad(rel.mask, False),
  )
  block = jax.checkpoint(lambda i0: fn(pairs.dense(padded, rows=(i0, ba))))
  starts = jnp.arange(0, na, ba, dtype=_engine.index_dtype())
  total, count = jax.lax.map(block, starts)
  return total.reshape(na)[:n], count.reshape(na)[:n]

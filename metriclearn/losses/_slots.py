"""Per-(anchor, positive) slots: the k first positives of each anchor as the engine's
slot statistics, shared by the triplet, pair-triplet and ranking losses.

A loss that needs a statistic for every (anchor, positive) pair (the semi-hard
negative, the triplets of batch-all, the rank of a positive) takes the first
``max_positives`` positives of each anchor as slots (:func:`by_slots`: their indices,
counts, the farthest negative, the distance to each slot's positive), then a last pass
of its own over ``[ba, k, bc]`` terms, in O(n m k), dense, blockwise or over a ring.
:func:`bounded` falls back to the loss's exact form when an anchor has more than k
positives; :func:`by_rows` runs an exact form in blocks of anchors against every
candidate.
"""

from __future__ import annotations

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
  "first_positive_rows",
  "max_positives",
  "rows_to_candidates",
  "slot_view",
]


def max_positives(k) -> int | None:
  if k is not None and not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
    raise ValueError(f"max_positives must be None or a positive int, got {k!r}.")
  return k


# The k first positives of each anchor as slots (engine passes): their indices, the
# anchor's positive and negative counts and its farthest negative, then the distance to
# each slot's positive. Flattened statistics: 0 slot, 1 n_pos, 2 n_neg, 3 far, 4 d_ap.


def first_positives(b: Block):
  index = jnp.broadcast_to(b.c_index.astype(b.s.dtype), b.s.shape)
  ones = _engine.ones(b)
  return [
    (index, b.positive),
    (ones, b.positive),
    (ones, b.negative),
    (b.s, b.negative),
  ]


def positive_distances(b: Block):
  index = b.c_index.astype(b.s.dtype)
  hit = (index[None, None, :] == b.prev[0][:, :, None]) & b.positive[:, None, :]
  return [(jnp.broadcast_to(b.s[:, None, :], hit.shape), hit)]


def slot_indices(b: Block):
  return [(jnp.broadcast_to(b.c_index.astype(b.s.dtype), b.s.shape), b.positive)]


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


def first_positive_rows(rel: pairs.Relation, k: int) -> tuple[jax.Array, jax.Array]:
  """The first ``k`` positives of each anchor (the slots of the bounded forms):
  ``(valid [n, k] bool, their embeddings [n, k, d], zeros past the last)``."""
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
  positives being ``b.a_aux`` and the candidates ``b.c_aux``."""
  valid = jnp.isfinite(b.prev[0])[:, :, None]
  d_an = b.s[:, None, :]
  if swap is not None:
    d_an = jnp.minimum(d_an, rows_to_candidates(swap, b.a_aux, b.c_aux))
  return valid & b.negative[:, None, :], b.prev[4][:, :, None], d_an


def by_slots(rel, k: int, dist_fn, last: Pass, margin, swap: bool = False):
  passes = (
    Pass(first_positives, ("smallest", "sum", "sum", "max"), slots=k),
    Pass(positive_distances, ("sum",), positive_only=True),
    last,
  )
  aux = {}
  if swap:  # the slots' positives travel with the anchors, the candidates with theirs
    aux = dict(anchor_aux=first_positive_rows(rel, k)[1], candidate_aux=rel.candidates)
  (slot, n_pos, n_neg, far), (d_ap,), stats = _engine.pair_statistics(
    rel, passes, dist_fn, consts=margin, **aux
  )
  return jnp.isfinite(slot), n_pos, n_neg, far, d_ap, stats


def bounded(rel, k: int | None, slot_form, exact, fallback: bool = True):
  """The slot form, or the exact one where a batch has more than ``k`` positives for
  an anchor (NaN for those anchors where there is no exact form: over a ring)."""
  if k is None:
    return exact()
  total, count, n_pos = slot_form()
  over = n_pos > k
  if rel.ring or not fallback:
    return jnp.where(over, jnp.nan, total), count
  any_over = jnp.any(over)
  if rel.axis_name is not None:
    any_over = jax.lax.psum(any_over.astype(jnp.int32), rel.axis_name) > 0
  return jax.lax.cond(any_over, exact, lambda: (total, count))


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

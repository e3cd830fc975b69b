r"""The two executors of every in-batch loss: dense, and blockwise (also over a ring).

An in-batch loss is written once, in its family module, as one or more passes
(:class:`Pass`): each a function of a :class:`Block` (a similarity or distance block
``s`` between anchors and candidates, with the pair masks) that returns ``(values,
mask)`` terms, and for each term how it is reduced over the candidates: ``'sum'``,
``'lse'`` (log-sum-exp), ``'max'``, ``'min'``, ``'smallest'`` (the ``slots`` smallest
values, e.g. the indices of the first positives) or ``'argmin'`` / ``'argmax'`` (the
index of the candidate that attains the extreme); the last three have no gradient. A
later pass sees the earlier passes' per-anchor statistics (``block.prev``), and a term
may carry a slot axis (values ``[ba, k, bc]``, statistics ``[n, k]``: one per (anchor,
positive) pair, as the semi-hard and the bounded batch-all triplet losses need). The
loss then combines the statistics per anchor. :func:`pair_statistics` runs the passes

* **dense** (``rel.block_size`` None): the whole ``[n, M]`` matrix at once, ordinary
  autodiff: fastest where it fits;
* **blockwise** (``rel.block_size`` an int or a pair): blocks of anchors against
  blocks of candidates with running statistics and a recomputing backward pass, memory
  ``block_a x block_c`` (:mod:`metriclearn.losses._blockwise`);
* **over a ring** (``rel.ring``, with ``axis_name``): the candidates travel around the
  devices with ``lax.ppermute``, one shard a step, and so do their gradients.

The gradients of the two executors agree; ``'max'`` / ``'min'`` share the gradient
equally among ties (as ``jnp.max``). Blockwise gradients are reverse-mode only
(``jax.grad``, ``jax.vjp``). A statistic of an earlier pass that a later pass uses
outside ``prev_grad`` is a constant there (a threshold in a mask), in both executors.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from metriclearn import distances, pairs
from metriclearn.losses import _blockwise
from metriclearn.losses._blockwise import (
  KINDS,
  Block,
  Pass,
  TermFn,
  index_dtype,
  pad_rows,
  round_up,
)

__all__ = [
  "KINDS",
  "SYMMETRIC",
  "Block",
  "Pass",
  "TermFn",
  "AVERAGES",
  "active",
  "average_terms",
  "check_average",
  "index_dtype",
  "log1p_exp",
  "mean",
  "no_similarity",
  "ones",
  "pad_rows",
  "pair_statistics",
  "round_up",
]

# ----------------------------------------------------------------------------------
# Helpers the family modules share.


def ones(b: Block) -> jax.Array:
  """A block of ones: sums of it count the pairs of a mask."""
  return jnp.ones_like(b.s)


def active(*counts: jax.Array) -> jax.Array:
  """Where every count is positive (an anchor that has each kind of pair)."""
  out = counts[0] > 0
  for c in counts[1:]:
    out &= c > 0
  return out


def mean(total: jax.Array, count: jax.Array) -> jax.Array:
  """``total / count``, 0 (and a zero gradient) where ``count`` is 0."""
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


def log1p_exp(lse: jax.Array, count: jax.Array) -> jax.Array:
  r""":math:`\log(1 + \sum e^x)` from the log-sum-exp; 0 where nothing was summed."""
  return jnp.where(count > 0, jax.nn.softplus(lse), 0.0)


def no_similarity(a: jax.Array, c: jax.Array) -> jax.Array:
  """For passes that look at the masks and indices only: no matrix product."""
  return jnp.zeros((a.shape[0], c.shape[0]), a.dtype)


AVERAGES = ("anchor", "batch")


def check_average(average: str) -> None:
  if average not in AVERAGES:
    raise ValueError(f"average must be one of {AVERAGES}, got {average!r}.")


def average_terms(
  total: jax.Array, count: jax.Array, average: str, axis_name: str | None
) -> jax.Array:
  """Per-anchor ``total`` [n] over ``count`` [n] terms, as an anchor or batch average.

  'anchor': ``total / count`` (0 where ``count`` is 0). 'batch': ``total * N / C`` with
  ``N`` the number of anchors and ``C`` the number of terms in the whole batch (every
  device of ``axis_name``), so that the plain mean of the values is ``sum(total) / C``.
  """
  if average == "anchor":
    safe = jnp.maximum(count, 1).astype(total.dtype)
    return jnp.where(count > 0, total / safe, 0.0)
  n_anchors = count.shape[0]
  batch_count = jnp.sum(count)
  if axis_name is not None:
    n_anchors *= jax.lax.axis_size(axis_name)
    batch_count = jax.lax.psum(batch_count, axis_name)
  scale = n_anchors / jnp.maximum(batch_count, 1).astype(total.dtype)
  return total * scale


# Pairwise functions with f(c, a) == f(a, c).T.
SYMMETRIC = (
  distances.pairwise_dot,
  distances.pairwise_cosine_similarity,
  distances.pairwise_cosine_distance,
  distances.pairwise_euclidean,
  distances.pairwise_squared_euclidean,
  no_similarity,
)


# ----------------------------------------------------------------------------------
# Dense: the whole matrix, ordinary autodiff.


def _dense_stat(kind: str, v, mask, slots: int, c_index) -> jax.Array:
  if kind == "sum":
    return jnp.sum(jnp.where(mask, v, 0.0), axis=-1)
  if kind == "lse":
    has = jnp.any(mask, axis=-1, keepdims=True)
    safe = jnp.where(mask, v, jnp.finfo(v.dtype).min)
    peak = jax.lax.stop_gradient(jnp.where(has, jnp.max(safe, -1, keepdims=True), 0.0))
    total = jnp.sum(jnp.where(mask, jnp.exp(safe - peak), 0.0), -1, keepdims=True)
    out = jnp.where(has, jnp.log(jnp.where(has, total, 1.0)) + peak, 0.0)
    return out[..., 0]
  if kind == "max":
    return jnp.max(jnp.where(mask, v, -jnp.inf), axis=-1)
  if kind == "min":
    return jnp.min(jnp.where(mask, v, jnp.inf), axis=-1)
  if kind in ("argmin", "argmax"):
    return jax.lax.stop_gradient(_blockwise.arg_best(kind, v, mask, c_index)[1])
  return jax.lax.stop_gradient(_blockwise.smallest(jnp.where(mask, v, jnp.inf), slots))


def _dense(rel: pairs.Relation, passes, sim_fn, params, consts, a_aux, c_aux):
  p = pairs.dense(rel)
  c_aux = jax.tree.map(lambda x: pairs.gather(x, rel.axis_name), c_aux)
  s = sim_fn(p.anchors, p.candidates)
  n, m = s.shape
  idx = index_dtype()
  base = 0 if rel.axis_name is None else jax.lax.axis_index(rel.axis_name) * n
  a_index = jnp.arange(n, dtype=idx) + jnp.asarray(base, idx)
  c_index = jnp.arange(m, dtype=idx)
  stats: list[tuple[jax.Array, ...]] = []
  for ps in passes:
    flat = [x for per_pass in stats for x in per_pass]
    prev = tuple(
      x if k in ps.prev_grad else jax.lax.stop_gradient(x) for k, x in enumerate(flat)
    )
    blk = Block(
      s, p.positive, p.negative, params, consts, a_aux, c_aux, prev, a_index, c_index
    )
    terms = ps.terms(blk)
    stats.append(
      tuple(
        _dense_stat(kind, v, msk, ps.slots, c_index)
        for (v, msk), kind in zip(terms, ps.kinds, strict=True)
      )
    )
  return tuple(stats)


def pair_statistics(
  rel: pairs.Relation,
  passes: Sequence[Pass],
  sim_fn: Callable[[jax.Array, jax.Array], jax.Array],
  *,
  params: Any = (),
  consts: Any = (),
  anchor_aux: Any = (),
  candidate_aux: Any = (),
) -> tuple[tuple[jax.Array, ...], ...]:
  """Per-anchor statistics of every pass, dense or blockwise as ``rel`` says.

  Dense when ``rel.block_size`` is None and ``rel.ring`` is False; otherwise blockwise
  (blocks of ``rel.block_size``, or whole shards for a ring without a block size).
  Differentiable in the relation's embeddings, ``params``, ``anchor_aux`` and
  ``candidate_aux``; ``consts`` are constants.

  Args:
    rel: the checked relation (:func:`metriclearn.pairs.resolve`).
    passes: the sweeps, in order (a later pass sees the earlier statistics).
    sim_fn: ``(a [ba, d], c [bc, d]) -> [ba, bc]``, e.g. a pairwise distance.
    params: differentiable pytree passed to every block.
    consts: non-differentiable pytree passed to every block.
    anchor_aux: pytree of [n, ...] per-anchor arrays.
    candidate_aux: pytree of [m, ...] per-candidate arrays (this device's).

  Returns:
    For every pass, a tuple of its statistics ([n] or [n, k], in ``kinds`` order).
  """
  passes = tuple(passes)
  if rel.block_size is None and not rel.ring:
    return _dense(rel, passes, sim_fn, params, consts, anchor_aux, candidate_aux)
  symmetric = sim_fn in SYMMETRIC
  # With label sorting, ``block.c_index`` counts candidates in the sorted order: an
  # index statistic is only meaningful inside the same call.
  sortable = (
    any(ps.positive_only for ps in passes)
    and rel.axis_name is None
    and rel.label_comparison is None
    and rel.positive_mask is None
    and rel.mask is None
    and rel.labels.ndim == 1
    and not jax.tree.leaves(anchor_aux)
    and not jax.tree.leaves(candidate_aux)
  )
  run = functools.partial(
    _blockwise.run,
    passes=passes,
    sim_fn=sim_fn,
    params=params,
    consts=consts,
    anchor_aux=anchor_aux,
    candidate_aux=candidate_aux,
    symmetric=symmetric,
  )
  if not sortable:
    return run(rel)
  # Sort both sides by label: the positives of a block of anchors then lie in a few
  # blocks of candidates, and passes over positives skip the other blocks.
  order = jnp.argsort(rel.labels, stable=True)
  c_order = order if rel.self_pairs else jnp.argsort(rel.ref_labels, stable=True)
  sorted_rel = rel._replace(
    anchors=rel.anchors[order],
    candidates=rel.candidates[c_order],
    labels=rel.labels[order],
    ref_labels=rel.ref_labels[c_order],
  )
  stats = run(sorted_rel, labels_sorted=True)
  return jax.tree.map(lambda x: jnp.zeros_like(x).at[order].set(x), stats)

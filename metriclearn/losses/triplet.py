r"""Triplet losses: one (anchor, positive, negative) triplet, or triplets from labels.

Every loss here applies one formula to an anchor-positive distance :math:`d_{ap}` and
an anchor-negative distance :math:`d_{an}`:

.. math::
  \ell = \max(0,\; m + d_{ap} - d_{an}), \qquad
  \ell_\text{soft} = \log(1 + e^{\,m + d_{ap} - d_{an}})

(the second with ``soft=True``), and differs only in which triplets it takes.
``margin=None`` (the default) means :math:`m = 0.2` (FaceNet's value) for the hinge
and :math:`m = 0` for ``soft=True`` (Hermans et al.'s soft margin,
:math:`\log(1 + e^{d_{ap} - d_{an}})`); pass a margin with ``soft=True`` for
pytorch-metric-learning's ``smooth_loss``.

``distance`` picks the metric and ``squared=True`` squares it (with ``'euclidean'`` this
is FaceNet's :math:`\|a - p\|^2`). Defaults follow each function's paper:

=========================  ======================  ====================================
function                   defaults                source
=========================  ======================  ====================================
triplet_margin_loss        squared, m = 0.2        Schroff et al. 2015 (FaceNet)
batch_all_triplet_loss     not squared, m = 0.2    Hermans et al. 2017, "BA≠0"
batch_hard_triplet_loss    not squared, m = 0.2    Hermans et al. 2017, "BH"
semi_hard_triplet_loss     squared, m = 0.2        Schroff et al. 2015; TF-addons
=========================  ======================  ====================================

The batch forms take the arguments of :mod:`metriclearn.pairs` (``ref_embeddings``,
``ref_labels``, ``positive_mask``, ``label_comparison``, ``mask`` -- e.g. a miner's
output -- and ``axis_name``) and return one value per anchor, 0 where the anchor has
no valid triplet. Batch-hard is one pass of the losses' engine (dense, or blockwise with
``block_size``). Batch-all and semi-hard need a statistic per (anchor, positive) pair:
with ``max_positives=k`` they take the k first positives of each anchor as slots and run
through the engine too, in O(n m k) (dense, blockwise or over a ring); without it, the
exact forms for any number of positives (batch-all: every triplet, n x m x m, or the
sorted O(n m log m) form in blocks of anchors; semi-hard: sorted rows).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from metriclearn import _checks, distances, masks, pairs, reduce
from metriclearn.losses import _engine
from metriclearn.losses._engine import Block, Pass

__all__ = [
  "DEFAULT_MARGIN",
  "average_terms",
  "batch_all_triplet_loss",
  "batch_hard_triplet_loss",
  "resolve_margin",
  "semi_hard_negative_distance",
  "semi_hard_triplet_loss",
  "triplet_formula",
  "triplet_margin_loss",
]

DEFAULT_MARGIN = 0.2
_AVERAGES = ("anchor", "batch")


# ----------------------------------------------------------------------------------
# Shared pieces (also used by metriclearn.miners).


def resolve_margin(margin: float | jax.Array | None, soft: bool) -> float | jax.Array:
  """``None`` -> 0.2 for the hinge, 0 for the soft-plus; otherwise checks ``>= 0``."""
  if margin is None:
    return 0.0 if soft else DEFAULT_MARGIN
  _checks.check_non_negative(margin, "margin")
  return margin


def triplet_formula(
  d_ap: jax.Array, d_an: jax.Array, margin: float | jax.Array, soft: bool
) -> jax.Array:
  r""":math:`\max(0, m + d_{ap} - d_{an})`, or its soft-plus if ``soft``."""
  x = d_ap - d_an + jnp.asarray(margin).astype(d_ap.dtype)
  return jax.nn.softplus(x) if soft else jax.nn.relu(x)


def _check_average(average: str) -> None:
  if average not in _AVERAGES:
    raise ValueError(f"average must be one of {_AVERAGES}, got {average!r}.")


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


# ----------------------------------------------------------------------------------
# Triplet form.


def triplet_margin_loss(
  anchor: jax.Array,
  positive: jax.Array,
  negative: jax.Array,
  *,
  margin: float | jax.Array | None = None,
  distance: str | distances.DistanceFn = "euclidean",
  squared: bool = True,
  soft: bool = False,
) -> jax.Array:
  r"""Triplet margin loss of one triplet (FaceNet by default).

  .. math::
    \ell = \max\big(0,\; m + D(a, p)^k - D(a, n)^k\big), \qquad
    \ell_\text{soft} = \log\big(1 + e^{\,m + D(a, p)^k - D(a, n)^k}\big)

  with :math:`k = 2` if ``squared`` else 1. The defaults are FaceNet's
  :math:`\max(\|a - p\|^2 - \|a - n\|^2 + 0.2, 0)`; ``squared=False`` is the plain
  Euclidean form (``torch.nn.TripletMarginLoss``); ``soft=True`` is Hermans et al.'s
  soft margin :math:`\log(1 + e^{d_{ap} - d_{an}})`. A batch of triplets is
  ``jax.vmap(triplet_margin_loss)(anchors, positives, negatives)``.

  Args:
    anchor: [d] embedding of the anchor.
    positive: [d] embedding of an item of the anchor's kind.
    negative: [d] embedding of an item of another kind.
    margin: m >= 0; ``None``: 0.2 for the hinge, 0 with ``soft=True``.
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine', or a callable
      ``(x1 [d], x2 [d]) -> scalar``.
    squared: square the distance (default True, FaceNet).
    soft: replace the hinge by the soft-plus :math:`\log(1 + e^x)`.

  Returns:
    A scalar loss.

  >>> import jax.numpy as jnp
  >>> a, p, n = jnp.zeros(2), jnp.array([0.3, 0.4]), jnp.array([0.0, 0.6])
  >>> round(float(triplet_margin_loss(a, p, n)), 4)  # 0.25 - 0.36 + 0.2
  0.09

  References:
    Schroff, Kalenichenko, Philbin. FaceNet: A Unified Embedding for Face Recognition
    and Clustering. CVPR 2015. Hermans, Beyer, Leibe. In Defense of the Triplet Loss
    for Person Re-Identification. arXiv:1703.07737, 2017.
  """
  names = ("anchor", "positive", "negative")
  arrays = [
    _checks.as_float(x, name)
    for x, name in zip((anchor, positive, negative), names, strict=True)
  ]
  shapes = [tuple(x.shape) for x in arrays]
  if len(set(shapes)) != 1 or len(shapes[0]) != 1:
    raise ValueError(
      "anchor, positive and negative must be 1-D embeddings of the same size (one "
      f"triplet; use jax.vmap for a batch), got shapes {shapes}."
    )
  anchor, positive, negative = _checks.common_float(*arrays)
  margin = resolve_margin(margin, soft)
  dist = distances.distance_fn(distance, squared, pairwise=False)
  return triplet_formula(dist(anchor, positive), dist(anchor, negative), margin, soft)


# ----------------------------------------------------------------------------------
# Batch forms.

_batch_loss = pairs.batch_form(executor=True)


def _max_positives(k) -> int | None:
  if k is not None and not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
    raise ValueError(f"max_positives must be None or a positive int, got {k!r}.")
  return k


# The k first positives of each anchor as slots (engine passes): their indices, the
# anchor's positive and negative counts and its farthest negative, then the distance to
# each slot's positive. Flattened statistics: 0 slot, 1 n_pos, 2 n_neg, 3 far, 4 d_ap.


def _first_positives(b: Block):
  index = jnp.broadcast_to(b.c_index.astype(b.s.dtype), b.s.shape)
  ones = _engine.ones(b)
  return [
    (index, b.positive),
    (ones, b.positive),
    (ones, b.negative),
    (b.s, b.negative),
  ]


def _positive_distances(b: Block):
  index = b.c_index.astype(b.s.dtype)
  hit = (index[None, None, :] == b.prev[0][:, :, None]) & b.positive[:, None, :]
  return [(jnp.broadcast_to(b.s[:, None, :], hit.shape), hit)]


def _slot_view(b: Block) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(negatives of valid slots [ba, k, bc], d_ap [ba, k, 1], D_an [ba, 1, bc])."""
  valid = jnp.isfinite(b.prev[0])[:, :, None]
  return valid & b.negative[:, None, :], b.prev[4][:, :, None], b.s[:, None, :]


def _by_slots(rel, k: int, dist_fn, last: Pass, margin):
  passes = (
    Pass(_first_positives, ("smallest", "sum", "sum", "max"), slots=k),
    Pass(_positive_distances, ("sum",), positive_only=True),
    last,
  )
  (slot, n_pos, n_neg, far), (d_ap,), stats = _engine.pair_statistics(
    rel, passes, dist_fn, consts=margin
  )
  return jnp.isfinite(slot), n_pos, n_neg, far, d_ap, stats


def _bounded(rel, k: int | None, bounded, exact, fallback: bool = True):
  """The slot form, or the exact one where a batch has more than ``k`` positives for
  an anchor (NaN for those anchors where there is no exact form: over a ring)."""
  if k is None:
    return exact()
  total, count, n_pos = bounded()
  over = n_pos > k
  if rel.ring or not fallback:
    return jnp.where(over, jnp.nan, total), count
  any_over = jnp.any(over)
  if rel.axis_name is not None:
    any_over = jax.lax.psum(any_over.astype(jnp.int32), rel.axis_name) > 0
  return jax.lax.cond(any_over, exact, lambda: (total, count))


def _by_rows(rel: pairs.Relation, fn) -> tuple[jax.Array, jax.Array]:
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


def batch_all_terms(
  dist: jax.Array, positive: jax.Array, negative: jax.Array, margin, soft: bool
) -> tuple[jax.Array, jax.Array]:
  """Every triplet of an [n, m] distance matrix (n x m x m): per anchor, the sum of the
  triplet losses and the number of active (non-zero) triplets."""
  triplets = masks.triplet_mask(positive, negative)  # [n, p, q]
  losses = triplet_formula(dist[:, :, None], dist[:, None, :], margin, soft)
  total = reduce.masked_sum(losses, triplets, axis=(1, 2))
  return total, jnp.sum(triplets & (losses > 0), axis=(1, 2)).astype(total.dtype)


def _sorted_batch_all(p: pairs.Pairs, dist_fn, margin) -> tuple[jax.Array, jax.Array]:
  """The batch-all sum and count from each row's sorted negatives: for positive p,
  the k_p negatives with D_an < D_ap + m (a binary search) and their prefix sum."""
  d = dist_fn(p.anchors, p.candidates)
  sorted_neg = reduce.sorted_where(p.negative, d)  # +inf past the negatives
  # Sums relative to the row's nearest negative (less cancellation below).
  ref = jax.lax.stop_gradient(
    jnp.where(jnp.isfinite(sorted_neg[:, :1]), sorted_neg[:, :1], 0.0)
  )
  shifted = jnp.where(jnp.isfinite(sorted_neg), sorted_neg - ref, 0.0)
  prefix = jnp.concatenate(
    [jnp.zeros_like(shifted[:, :1]), jnp.cumsum(shifted, axis=1)], axis=1
  )
  k = reduce.count_sorted(sorted_neg, d + margin, "left")  # D_an < D_ap + m
  below = jnp.take_along_axis(prefix, k, axis=1)
  per_positive = k.astype(d.dtype) * (d + margin - ref) - below
  total = jnp.sum(jnp.where(p.positive, per_positive, 0.0), axis=1)
  return total, jnp.sum(jnp.where(p.positive, k, 0), axis=1).astype(total.dtype)


def _batch_all_hinge(b: Block):
  negative, d_ap, d_an = _slot_view(b)
  active = negative & (d_an < d_ap + b.consts)
  d_an = jnp.broadcast_to(d_an, active.shape)
  return [(jnp.ones_like(d_an), active), (d_an, active)]


def _batch_all_soft(b: Block):
  negative, d_ap, d_an = _slot_view(b)
  per = triplet_formula(d_ap, d_an, b.consts, True)
  return [(per, negative), (jnp.ones_like(per), negative & (per > 0))]


@_batch_loss
def batch_all_triplet_loss(
  rel: pairs.Relation,
  *,
  margin: float | jax.Array | None = None,
  distance: str | distances.DistanceFn = "euclidean",
  squared: bool = False,
  soft: bool = False,
  average: Literal["anchor", "batch"] = "anchor",
  max_positives: int | None = None,
) -> jax.Array:
  r"""Batch-all triplet loss: every valid triplet, averaged over the active ones.

  For anchor :math:`a`, with :math:`P_a` its positives and :math:`N_a` its negatives
  among the candidates, and :math:`\ell_{apn}` the triplet formula (module docstring):

  .. math::
    S_a = \sum_{p \in P_a} \sum_{n \in N_a} \ell_{apn}, \qquad
    C_a = \big|\{(p, n) : \ell_{apn} > 0\}\big|

  and the loss of anchor :math:`a` is

  * ``average='anchor'`` (default): :math:`S_a / C_a` (0 if :math:`C_a = 0`), the
    anchor's mean over its active triplets;
  * ``average='batch'``: :math:`N\, S_a / \sum_b C_b`, with :math:`N` the number of
    anchors (all rows, padding included, on every device of ``axis_name``). The
    plain mean of these values, ``losses.mean()``, is exactly the paper's batch-wide
    average over active triplets :math:`\sum_a S_a / \sum_a C_a` (Hermans et al.'s
    BA≠0; pytorch-metric-learning's ``TripletMarginLoss(margin=m)`` with its default
    ``AvgNonZeroReducer`` is ``average='batch'``, ``margin=m``, ``losses.mean()``).

  How it is computed (the same values and gradients):

  * ``max_positives=k``: the first k positives of each anchor are its slots; a pass
    counts, for each slot, the negatives with :math:`D_{an} < D_{ap} + m` and sums
    them: O(n m k) time, memory n x k plus one block, dense or blockwise
    (``block_size``, ``ring``). A batch in which an anchor has more than k positives
    falls back to the exact form below (NaN for that anchor where there is none: over
    a ring, or with ``soft=True`` and a block size).
  * ``max_positives=None``, ``block_size=None``: every triplet, an [n, m, m] array
    (n = m = 512 in float32 is 512 MiB).
  * ``max_positives=None`` with ``block_size``: each anchor's negatives sorted once,
    then per positive a binary search and a prefix sum: O(n m log m) time, memory
    block x m (hinge only: ``soft=True`` has no sorted form).

  Args:
    {relation}
    margin: m >= 0; ``None``: 0.2 for the hinge, 0 with ``soft=True``.
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine', or a callable
      ``(a [n, d], b [m, d]) -> [n, m]``.
    squared: square the distance (default False, as Hermans et al.).
    soft: soft-plus instead of the hinge (every triplet is then active).
    average: 'anchor' or 'batch', see above.
    max_positives: a static bound k on the positives of an anchor, or None.

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[0.0], [0.5], [0.4]])  # d(0, 1) = 0.5, d(0, 2) = 0.4
  >>> # anchor 0: 0.2 + 0.5 - 0.4; anchor 1: 0.2 + 0.5 - 0.1; anchor 2: no positive
  >>> losses = batch_all_triplet_loss(x, jnp.array([0, 0, 1]))
  >>> [round(v, 4) for v in losses.tolist()]
  [0.3, 0.6, 0.0]

  References:
    Hermans, Beyer, Leibe. In Defense of the Triplet Loss for Person
    Re-Identification. arXiv:1703.07737, 2017 (batch all, "BA≠0").
  """
  _check_average(average)
  k = _max_positives(max_positives)
  margin = resolve_margin(margin, soft)
  dist_fn = distances.distance_fn(distance, squared)
  m = jnp.asarray(margin).astype(rel.anchors.dtype)

  def bounded():
    last = (
      Pass(_batch_all_soft, ("sum", "sum"), prev_grad=(4,))
      if soft
      else Pass(_batch_all_hinge, ("sum", "sum"))
    )
    valid, n_pos, _, _, d_ap, stats = _by_slots(rel, k, dist_fn, last, m)
    if soft:
      total, count = stats
    else:
      count, d_an_sum = stats
      total = count * (d_ap + m) - d_an_sum
    total = jnp.sum(jnp.where(valid, total, 0.0), axis=1)
    return total, jnp.sum(jnp.where(valid, count, 0.0), axis=1), n_pos

  def exact():
    if rel.block_size is None and not rel.ring:
      p = pairs.dense(rel)
      dist = dist_fn(p.anchors, p.candidates)
      return batch_all_terms(dist, p.positive, p.negative, m, soft)
    if soft:
      raise ValueError(
        "soft=True has no sorted form: use block_size=None (every triplet) or give "
        "max_positives."
      )
    return _by_rows(rel, lambda p: _sorted_batch_all(p, dist_fn, m))

  fallback = not (soft and rel.block_size is not None)
  total, count = _bounded(rel, k, bounded, exact, fallback)
  return average_terms(total, count, average, rel.axis_name)


def _hardest_terms(b: Block):
  return [(b.s, b.positive), (b.s, b.negative)]


@_batch_loss
def batch_hard_triplet_loss(
  rel: pairs.Relation,
  *,
  margin: float | jax.Array | None = None,
  distance: str | distances.DistanceFn = "euclidean",
  squared: bool = False,
  soft: bool = False,
) -> jax.Array:
  r"""Batch-hard triplet loss: the hardest positive and hardest negative of each anchor.

  .. math::
    \ell_a = \max\Big(0,\; m + \max_{p \in P_a} D_{ap} - \min_{n \in N_a} D_{an}\Big)

  (or :math:`\log(1 + e^{\,m + \max_p D_{ap} - \min_n D_{an}})` with ``soft=True``;
  Hermans et al.'s recommended "batch hard, soft margin" is ``soft=True`` with the
  default margin 0), and 0 for an anchor without a positive or without a negative.
  Hermans et al. average over the anchors: ``losses.mean()`` on a batch without
  padding. The gradient goes to the pairs that attain the maximum and the minimum,
  shared among ties. pytorch-metric-learning's ``TripletMarginLoss(margin=m)`` with a
  ``BatchHardMiner`` is ``losses.mean()`` over anchors that have both kinds of pair.

  Args:
    {relation}
    margin: m >= 0; ``None``: 0.2 for the hinge, 0 with ``soft=True``.
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine', or a callable
      ``(a [n, d], b [m, d]) -> [n, m]``.
    squared: square the distance (default False, as Hermans et al.).
    soft: soft-plus instead of the hinge.

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[0.0], [0.5], [0.4], [0.9]])
  >>> # anchor 0: hardest positive 0.5, hardest negative 0.4: 0.2 + 0.5 - 0.4
  >>> # anchor 1: hardest positive 0.5, hardest negative 0.1: 0.2 + 0.5 - 0.1
  >>> # anchor 2: hardest positive 0.5, hardest negative 0.1; anchor 3: 0.5 and 0.4
  >>> losses = batch_hard_triplet_loss(x, jnp.array([0, 0, 1, 1]))
  >>> [round(v, 4) for v in losses.tolist()]
  [0.3, 0.6, 0.6, 0.3]

  References:
    Hermans, Beyer, Leibe. In Defense of the Triplet Loss for Person
    Re-Identification. arXiv:1703.07737, 2017.
  """
  margin = resolve_margin(margin, soft)
  ((hardest_pos, hardest_neg),) = _engine.pair_statistics(
    rel,
    (Pass(_hardest_terms, ("max", "min")),),
    distances.distance_fn(distance, squared),
  )
  # (not isfinite: a NaN distance must make the loss NaN, not 0)
  valid = (hardest_pos != -jnp.inf) & (hardest_neg != jnp.inf)
  loss = triplet_formula(
    jnp.where(valid, hardest_pos, 0.0), jnp.where(valid, hardest_neg, 0.0), margin, soft
  )
  return jnp.where(valid, loss, 0.0)


def semi_hard_negative_distance(
  dist: jax.Array, negative: jax.Array
) -> tuple[jax.Array, jax.Array]:
  r"""For every (anchor a, candidate p): the distance to a's semi-hard negative.

  That is :math:`\min\{D_{an} : n \in N_a, D_{an} > D_{ap}\}` (the closest negative
  farther than p), or :math:`\max_{n \in N_a} D_{an}` if there is none (TF-addons).
  Sorts each row once: O(n m log m) time, O(n m) memory.

  Returns:
    ([n, m] distances, [n] bool: the anchor has a negative at all).
  """
  m = dist.shape[1]
  sorted_negatives = reduce.sorted_where(negative, dist)  # +inf past the negatives
  num_negatives = jnp.sum(negative, axis=1, keepdims=True, dtype=jnp.int32)
  at_most = reduce.count_sorted(sorted_negatives, dist, "right")  # D_an <= D_ap
  closest_farther = jnp.take_along_axis(
    sorted_negatives, jnp.minimum(at_most, m - 1), axis=1
  )
  farthest = reduce.masked_max(dist, negative, axis=1)[:, None]
  d_an = jnp.where(at_most < num_negatives, closest_farther, farthest)
  return d_an, num_negatives[:, 0] > 0


def _sorted_semi_hard(p: pairs.Pairs, dist_fn, margin, soft):
  dist = dist_fn(p.anchors, p.candidates)
  d_an, has_negative = semi_hard_negative_distance(dist, p.negative)
  valid = p.positive & has_negative[:, None]
  total = reduce.masked_sum(triplet_formula(dist, d_an, margin, soft), valid, axis=1)
  return total, jnp.sum(valid, axis=1).astype(total.dtype)


def _semi_hard_terms(b: Block):
  negative, d_ap, d_an = _slot_view(b)
  farther = negative & (d_an > d_ap)
  return [(jnp.broadcast_to(d_an, farther.shape), farther)]


@_batch_loss
def semi_hard_triplet_loss(
  rel: pairs.Relation,
  *,
  margin: float | jax.Array | None = None,
  distance: str | distances.DistanceFn = "euclidean",
  squared: bool = True,
  soft: bool = False,
  average: Literal["anchor", "batch"] = "anchor",
  max_positives: int | None = None,
) -> jax.Array:
  r"""Semi-hard triplet loss: each positive pair with its semi-hard negative.

  For every positive pair (a, p) the negative is the closest one farther from the
  anchor than the positive; if no negative is farther, the farthest negative:

  .. math::
    d^-_{ap} = \begin{cases}
      \min\{D_{an} : n \in N_a,\ D_{an} > D_{ap}\} & \text{if this set is not empty} \\
      \max_{n \in N_a} D_{an} & \text{otherwise}
    \end{cases}, \qquad
    \ell_{ap} = \max(0,\; m + D_{ap} - d^-_{ap})

  This is the TF-addons / ``tf.contrib`` ``triplet_semihard_loss``, the in-batch form
  of FaceNet's semi-hard selection (FaceNet's semi-hard negatives satisfy
  :math:`D_{ap} < D_{an} < D_{ap} + m`; the closest negative beyond the positive is
  the hardest of them, and a farther one costs 0 anyway). Positive pairs of an
  anchor without any negative take no part. With :math:`P_a` the anchor's remaining
  positives:

  * ``average='anchor'`` (default): :math:`\frac{1}{|P_a|} \sum_{p \in P_a}
    \ell_{ap}` (0 if :math:`P_a` is empty);
  * ``average='batch'``: :math:`N \sum_{p \in P_a} \ell_{ap} / \sum_b |P_b|`, with
    :math:`N` the number of anchors (all rows, every device), so that
    ``losses.mean()`` is TF-addons' value, the mean over all positive pairs of the
    batch (``margin=1.0`` and the squared distance are its defaults).

  How it is computed (the same values and gradients): with ``max_positives=k``, the
  first k positives of each anchor are slots and a pass finds each slot's semi-hard
  negative (a minimum over the negatives farther than the slot's positive): O(n m k),
  dense or blockwise (``block_size``, ``ring``); a batch in which an anchor has more
  than k positives falls back to the exact form (over a ring: NaN for that anchor).
  Without it, each row's negatives are sorted once (O(n m log m)), all rows at once,
  or ``block_size`` rows at a time (memory block x m).

  Args:
    {relation}
    margin: m >= 0; ``None``: 0.2 (FaceNet) for the hinge, 0 with ``soft=True``.
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine', or a callable
      ``(a [n, d], b [m, d]) -> [n, m]``.
    squared: square the distance (default True, FaceNet).
    soft: soft-plus instead of the hinge.
    average: 'anchor' or 'batch', see above.
    max_positives: a static bound k on the positives of an anchor, or None.

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[0.0], [0.5], [0.4], [0.7]])
  >>> # anchor 0: positive 1 at 0.5^2 = 0.25; negatives at 0.16, 0.49: the one at 0.49
  >>> # is the closest farther than 0.25 -> 0.2 + 0.25 - 0.49 < 0 -> 0
  >>> # anchor 1: positive 0 at 0.25; negatives at 0.01, 0.04 are all closer: the
  >>> # farthest (0.04) -> 0.2 + 0.25 - 0.04 = 0.41
  >>> losses = semi_hard_triplet_loss(x, jnp.array([0, 0, 1, 1]))
  >>> [round(v, 4) for v in losses[:2].tolist()]
  [0.0, 0.41]

  References:
    Schroff, Kalenichenko, Philbin. FaceNet: A Unified Embedding for Face Recognition
    and Clustering. CVPR 2015.
  """
  _check_average(average)
  k = _max_positives(max_positives)
  margin = resolve_margin(margin, soft)
  dist_fn = distances.distance_fn(distance, squared)
  m = jnp.asarray(margin).astype(rel.anchors.dtype)

  def bounded():
    last = Pass(_semi_hard_terms, ("min",))
    valid, n_pos, n_neg, far, d_ap, (farther,) = _by_slots(rel, k, dist_fn, last, m)
    has_neg = n_neg > 0
    d_an = jnp.where(jnp.isfinite(farther), farther, far[:, None])
    d_an = jnp.where(has_neg[:, None], d_an, 0.0)
    valid &= has_neg[:, None]
    loss = triplet_formula(d_ap, d_an, m, soft)
    total = jnp.sum(jnp.where(valid, loss, 0.0), axis=1)
    return total, jnp.sum(valid, axis=1).astype(total.dtype), n_pos

  def exact():
    return _by_rows(rel, lambda p: _sorted_semi_hard(p, dist_fn, m, soft))

  total, count = _bounded(rel, k, bounded, exact)
  return average_terms(total, count, average, rel.axis_name)

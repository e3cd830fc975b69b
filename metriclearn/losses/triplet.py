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

``swap=True`` (Balntas et al. 2016's distance swap) replaces :math:`d_{an}` by
:math:`\min(d_{an}, d_{pn})`: the positive takes the anchor's place when it is the one
nearer the negative. It needs the positive's distances to the negatives, so the batch
forms fetch the embedding of each triplet's positive (the k slot positives, or the
hardest positive of batch-hard: :func:`candidate_rows`, which passes the rows around
the ring with ``ring=True``) and compare it with the candidates in one more pass.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp

from metriclearn import _checks, distances, masks, pairs, reduce
from metriclearn.losses import _engine, _slots
from metriclearn.losses._engine import Block, Pass, average_terms

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
  swap: bool = False,
) -> jax.Array:
  r"""Triplet margin loss of one triplet (FaceNet by default).

  .. math::
    \ell = \max\big(0,\; m + D(a, p)^k - D(a, n)^k\big), \qquad
    \ell_\text{soft} = \log\big(1 + e^{\,m + D(a, p)^k - D(a, n)^k}\big)

  with :math:`k = 2` if ``squared`` else 1; with ``swap=True`` (Balntas et al.'s
  distance swap) :math:`D(a, n)^k` becomes :math:`\min(D(a, n)^k, D(p, n)^k)`, as
  ``torch.nn.TripletMarginLoss(swap=True)``. The defaults are FaceNet's
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
    swap: use the smaller of D(a, n) and D(p, n) (the distance swap).

  Returns:
    A scalar loss.

  >>> import jax.numpy as jnp
  >>> a, p, n = jnp.zeros(2), jnp.array([0.3, 0.4]), jnp.array([0.0, 0.6])
  >>> round(float(triplet_margin_loss(a, p, n)), 4)  # 0.25 - 0.36 + 0.2
  0.09
  >>> # swap: |p - n|^2 = 0.09 + 0.04 = 0.13 < 0.36 -> 0.25 - 0.13 + 0.2
  >>> round(float(triplet_margin_loss(a, p, n, swap=True)), 4)
  0.32

  References:
    Schroff, Kalenichenko, Philbin. FaceNet: A Unified Embedding for Face Recognition
    and Clustering. CVPR 2015. Hermans, Beyer, Leibe. In Defense of the Triplet Loss
    for Person Re-Identification. arXiv:1703.07737, 2017. Balntas, Riba, Ponsa,
    Mikolajczyk. Learning local feature descriptors with triplets and shallow
    convolutional neural networks. BMVC 2016 (the distance swap).
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
  d_an = dist(anchor, negative)
  if swap:
    d_an = jnp.minimum(d_an, dist(positive, negative))
  return triplet_formula(dist(anchor, positive), d_an, margin, soft)


# ----------------------------------------------------------------------------------
# Batch forms.

_batch_loss = pairs.batch_form(executor=True)


def batch_all_terms(
  dist: jax.Array,
  positive: jax.Array,
  negative: jax.Array,
  margin,
  soft: bool,
  d_pn: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Every triplet of an [n, m] distance matrix (n x m x m): per anchor, the sum of the
  triplet losses and the number of active (non-zero) triplets. ``d_pn`` [m, m]: the
  distances between candidates, for the distance swap."""
  triplets = masks.triplet_mask(positive, negative)  # [n, p, q]
  d_an = dist[:, None, :]
  if d_pn is not None:
    d_an = jnp.minimum(d_an, d_pn[None])
  losses = triplet_formula(dist[:, :, None], d_an, margin, soft)
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


def _batch_all_hinge(b: Block, swap=None):
  negative, d_ap, d_an = _slots.slot_view(b, swap)
  active = negative & (d_an < d_ap + b.consts)
  d_an = jnp.broadcast_to(d_an, active.shape)
  return [(jnp.ones_like(d_an), active), (d_an, active)]


def _batch_all_soft(b: Block, swap=None):
  negative, d_ap, d_an = _slots.slot_view(b, swap)
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
  swap: bool = False,
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
    falls back to an exact form in blocks of anchors (the sorted one below for the
    hinge, every triplet for ``soft`` or ``swap``; over a ring, NaN for that anchor).
    For a batch of label equality alone the slots come from one sort of the labels
    (no pass), so the engine runs the slot pass alone.
  * ``max_positives=None``, ``block_size=None``: every triplet, an [n, m, m] array
    (n = m = 512 in float32 is 512 MiB).
  * ``max_positives=None`` with ``block_size``: each anchor's negatives sorted once,
    then per positive a binary search and a prefix sum: O(n m log m) time, memory
    block x m (hinge only: ``soft=True`` has no sorted form).

  ``swap=True``: every triplet takes :math:`\min(D_{an}, D_{pn})` for :math:`D_{an}`
  (Balntas et al.). With ``max_positives=k`` one more pass compares the k slot
  positives with the candidates; without it the [m, m] distances between candidates
  join the triplets (blocks of anchors with ``block_size``: memory block x m x m, the
  sorted form no longer applies). pytorch-metric-learning's
  ``TripletMarginLoss(margin=m, swap=True)`` is ``swap=True, average='batch'``,
  ``losses.mean()`` on L2-normalised embeddings (its default distance normalises);
  with a ``BatchHardMiner`` it is the same with ``mask=miners.batch_hard_miner(...)``
  (its mined triplet, then the swap).

  Args:
    {relation}
    margin: m >= 0; ``None``: 0.2 for the hinge, 0 with ``soft=True``.
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine', or a callable
      ``(a [n, d], b [m, d]) -> [n, m]``.
    squared: square the distance (default False, as Hermans et al.).
    soft: soft-plus instead of the hinge (every triplet is then active).
    average: 'anchor' or 'batch', see above.
    max_positives: a static bound k on the positives of an anchor, or None.
    swap: the distance swap, see above.

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
    Re-Identification. arXiv:1703.07737, 2017 (batch all, "BA≠0"). Balntas, Riba,
    Ponsa, Mikolajczyk. Learning local feature descriptors with triplets and shallow
    convolutional neural networks. BMVC 2016 (the distance swap).
  """
  _engine.check_average(average)
  k = _slots.max_positives(max_positives)
  margin = resolve_margin(margin, soft)
  dist_fn = distances.distance_fn(distance, squared)
  m = jnp.asarray(margin).astype(rel.anchors.dtype)
  swap_fn = dist_fn if swap else None

  def bounded():
    last = (
      Pass(functools.partial(_batch_all_soft, swap=swap_fn), ("sum", "sum"), (3,))
      if soft
      else Pass(functools.partial(_batch_all_hinge, swap=swap_fn), ("sum", "sum"))
    )
    valid, n_pos, _, d_ap, stats = _slots.by_slots(rel, k, dist_fn, last, m, swap)
    if soft:
      total, count = stats
    else:
      count, d_an_sum = stats
      total = count * (d_ap + m) - d_an_sum
    total = jnp.sum(jnp.where(valid, total, 0.0), axis=1)
    return total, jnp.sum(jnp.where(valid, count, 0.0), axis=1), n_pos

  def every_triplet(p: pairs.Pairs):
    d_pn = dist_fn(p.candidates, p.candidates) if swap else None
    dist = dist_fn(p.anchors, p.candidates)
    return batch_all_terms(dist, p.positive, p.negative, m, soft, d_pn)

  def exact(r):  # (as the fallback, r is in rows of anchors)
    if r.block_size is None and not r.ring:
      return every_triplet(pairs.dense(r))
    if swap or soft:
      if soft and not swap and r.block_size is not None and k is None:
        raise ValueError(
          "soft=True has no sorted form: use block_size=None (every triplet) or "
          "give max_positives."
        )
      return _slots.by_rows(r, every_triplet)
    return _slots.by_rows(r, lambda p: _sorted_batch_all(p, dist_fn, m))

  n_cand = _slots.candidates(rel)  # every triplet n x M x M; sorted rows ~8 x M
  per_row = n_cand**2 if swap or soft else 8 * n_cand
  total, count = _slots.bounded(rel, k, bounded, exact, per_row)
  return _engine.average_terms(total, count, average, rel.axis_name)


def _hardest_terms(b: Block):
  return [(b.s, b.positive), (b.s, b.negative)]


def _hardest_positive_index(b: Block):  # the first positive at the largest distance
  index = jnp.broadcast_to(b.c_index.astype(b.s.dtype), b.s.shape)
  return [(index, b.positive & (b.s == b.prev[0][:, None]))]


def _nearest_to_positive(b: Block, dist_fn):  # D(p*, q) for the anchor's negatives q
  return [(dist_fn(b.a_aux, b.c_aux), b.negative)]


@_batch_loss
def batch_hard_triplet_loss(
  rel: pairs.Relation,
  *,
  margin: float | jax.Array | None = None,
  distance: str | distances.DistanceFn = "euclidean",
  squared: bool = False,
  soft: bool = False,
  swap: bool = False,
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

  ``swap=True`` (Balntas et al.'s distance swap) applied to the hardest triplet: with
  :math:`p^*` the hardest positive (the first among ties, by position), the negative
  distance is the hardest one of the swapped triplets :math:`(a, p^*, n)`,

  .. math::
    \min_{n \in N_a} \min(D_{an}, D_{p^* n})
    = \min\big(\min_{n \in N_a} D_{an},\; \min_{n \in N_a} D_{p^* n}\big)

  (the row of :math:`p^*` over the anchor's negatives: two more passes, one for the
  index of :math:`p^*`, one over its distances, after its embedding is fetched). This
  differs from swapping the mined triplet :math:`(a, p^*, n^*)` alone (PML's
  ``TripletMarginLoss(swap=True)`` with a ``BatchHardMiner``, which is
  ``batch_all_triplet_loss(..., swap=True, mask=miners.batch_hard_miner(...))``).

  Args:
    {relation}
    margin: m >= 0; ``None``: 0.2 for the hinge, 0 with ``soft=True``.
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine', or a callable
      ``(a [n, d], b [m, d]) -> [n, m]``.
    squared: square the distance (default False, as Hermans et al.).
    soft: soft-plus instead of the hinge.
    swap: the distance swap, see above.

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
  dist_fn = distances.distance_fn(distance, squared)
  passes: tuple[Pass, ...] = (Pass(_hardest_terms, ("max", "min")),)
  if swap:
    passes += (Pass(_hardest_positive_index, ("smallest",), slots=1),)
  (hardest_pos, hardest_neg), *index = _engine.pair_statistics(rel, passes, dist_fn)
  if swap:
    found = jnp.isfinite(index[0][0][:, 0])
    rows = _slots.candidate_rows(rel, jnp.where(found, index[0][0][:, 0], 0.0))
    ((nearest,),) = _engine.pair_statistics(
      rel,
      (Pass(functools.partial(_nearest_to_positive, dist_fn=dist_fn), ("min",)),),
      _engine.no_similarity,
      anchor_aux=rows,
      candidate_aux=rel.candidates,
    )
    hardest_neg = jnp.minimum(hardest_neg, nearest)
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


def _semi_hard_terms(b: Block):  # each slot's closest farther negative, the farthest
  negative, d_ap, d_an = _slots.slot_view(b)
  farther = negative & (d_an > d_ap)
  return [(jnp.broadcast_to(d_an, farther.shape), farther), (b.s, b.negative)]


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
  swap: bool = False,
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
  first k positives of each anchor are slots and a pass finds which negative is each
  slot's semi-hard one (an ``'argmin'`` over the negatives farther than the slot's
  positive, no gradient): O(n m k), dense or blockwise (``block_size``, ``ring``);
  its distance is then recomputed from the two rows, so the backward pass costs
  O(n k d), not a second sweep; a batch in which an anchor has more
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
    swap: not defined here (raises): the semi-hard negative is chosen by its distance
      to the anchor, and the swap would change which negatives are semi-hard; swap
      the triplets of a miner's pairs instead, with
      ``batch_all_triplet_loss(..., swap=True, mask=miners.semi_hard_miner(...))``.

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
  if swap:
    raise ValueError(
      "swap=True has no semi-hard form (the swap changes which negatives are "
      "semi-hard): swap the triplets of a miner's pairs instead, with "
      "batch_all_triplet_loss(..., swap=True, mask=miners.semi_hard_miner(...))."
    )
  _engine.check_average(average)
  k = _slots.max_positives(max_positives)
  margin = resolve_margin(margin, soft)
  dist_fn = distances.distance_fn(distance, squared)
  m = jnp.asarray(margin).astype(rel.anchors.dtype)

  def bounded():  # which negative in the pass, its distance from its row
    last = Pass(_semi_hard_terms, ("argmin", "argmax"))
    valid, n_pos, n_neg, d_ap, (closest, farthest) = _slots.by_slots(
      rel, k, dist_fn, last, m
    )
    has_neg = n_neg > 0
    index = jnp.where(jnp.isinf(closest), farthest[:, None], closest)
    d_an = jnp.where(has_neg[:, None], _slots.distances_at(rel, dist_fn, index), 0.0)
    valid &= has_neg[:, None]
    loss = triplet_formula(d_ap, d_an, m, soft)
    total = jnp.sum(jnp.where(valid, loss, 0.0), axis=1)
    return total, jnp.sum(valid, axis=1).astype(total.dtype), n_pos

  def exact(r):
    return _slots.by_rows(r, lambda p: _sorted_semi_hard(p, dist_fn, m, soft))

  total, count = _slots.bounded(rel, k, bounded, exact)
  return _engine.average_terms(total, count, average, rel.axis_name)

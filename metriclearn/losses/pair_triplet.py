r"""More pair and triplet losses: angular, tuplet margin, intra-pair variance, SNR
contrastive, centroid triplet, threshold-consistent margin, dynamic soft margin and
the manifold loss.

Every loss is in batch form, ``loss(embeddings [n, d], labels [n], *, ...) -> [n]``,
one value per anchor, 0 where the anchor has nothing valid (see
:mod:`metriclearn.pairs` for the relation arguments). Those that decompose per anchor
over candidates are written once as passes of the losses' engine and run dense or
blockwise (``block_size=``, ``ring=True``) with the same values and gradients. Those
that need one statistic per (anchor, positive) pair (angular, dynamic soft margin)
take the bounded slot form of the triplet losses with ``max_positives=k`` (the k first
positives of each anchor, through the engine) and have an exact form over every
triplet otherwise. The manifold loss is a random walk over the whole batch graph (a
matrix inverse): dense only.

``average='anchor'`` (the default where it applies, as in
:mod:`~metriclearn.losses.triplet`) averages each anchor's terms; ``average='batch'``
scales them by ``N / (terms in the whole batch)`` so that ``losses.mean()`` is the
batch-wide mean of the papers and of pytorch-metric-learning's reducers.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, cast

import jax
import jax.numpy as jnp

from metriclearn import _checks, distances, masks, pairs, reduce
from metriclearn.losses import _engine, _slots
from metriclearn.losses._engine import Block, Pass
from metriclearn.losses.pair import contrastive_from_distance
from metriclearn.losses.triplet import triplet_formula

__all__ = [
  "angular_loss",
  "centroid_triplet_loss",
  "dynamic_soft_margin_loss",
  "intra_pair_variance_loss",
  "manifold_loss",
  "snr_contrastive_loss",
  "threshold_consistent_margin_loss",
  "tuplet_margin_loss",
]

_batch_loss = pairs.batch_form(executor=True)
_HIGHEST = jax.lax.Precision.HIGHEST


def _consts(rel: pairs.Relation, *values) -> tuple[jax.Array, ...]:
  return tuple(jnp.asarray(v).astype(rel.anchors.dtype) for v in values)


def _normalized(rel: pairs.Relation) -> pairs.Relation:
  return rel._replace(
    anchors=distances.l2_normalize(rel.anchors),
    candidates=distances.l2_normalize(rel.candidates),
  )


def _two_sided(
  rel, pos: tuple[jax.Array, jax.Array], neg: tuple[jax.Array, jax.Array], average: str
) -> jax.Array:
  """``average_terms`` of the positive and of the negative ``(total, count)``."""
  return _engine.average_terms(*pos, average, rel.axis_name) + _engine.average_terms(
    *neg, average, rel.axis_name
  )


def _check_open(value, name: str, low: float, high: float) -> None:
  v = _checks.concrete_value(value)
  if v is not None and not (low < v < high):
    raise ValueError(f"{name} must lie in ({low}, {high}), got {v.tolist()}.")


def _sum_over_batch(x: jax.Array, axis_name: str | None) -> jax.Array:
  total = jnp.sum(x, axis=0)
  return total if axis_name is None else jax.lax.psum(total, axis_name)


# ----------------------------------------------------------------------------------
# Angular loss


def _angular_pair_loss(lse, ap_dot, has_negative, tan2):
  """log(1 + sum_n e^{f_apn}) from lse = log sum_n e^{4 tan^2 (x_a + x_p) . x_n}."""
  return jnp.where(has_negative, jax.nn.softplus(lse - 2 * (1 + tan2) * ap_dot), 0.0)


def _angular_slots(b: Block):
  tan2 = b.consts
  sums, valid = b.a_aux  # x_a + x_p of each slot [ba, k, d], [ba, k]
  logits = 4 * tan2 * _slots.rows_to_candidates(distances.pairwise_dot, sums, b.c_aux)
  negative = b.negative[:, None, :] & (valid > 0)[:, :, None]
  ones = _engine.ones(b)
  return [(logits, negative), (ones, b.negative), (ones, b.positive)]


def _angular_every_pair(p: pairs.Pairs, tan2):
  s_an = distances.pairwise_dot(p.anchors, p.candidates)  # [n, M]
  s_pn = distances.pairwise_dot(p.candidates, p.candidates)  # [M, M]
  logits = 4 * tan2 * (s_an[:, None, :] + s_pn[None])  # [n, p, q]
  lse = reduce.masked_logsumexp(logits, p.negative[:, None, :])  # -inf if none
  per = _angular_pair_loss(lse, s_an, jnp.any(p.negative, 1)[:, None], tan2)
  total = jnp.sum(jnp.where(p.positive, per, 0.0), axis=1)
  return total, jnp.sum(p.positive, axis=1).astype(total.dtype)


@_batch_loss
def angular_loss(
  rel: pairs.Relation,
  *,
  alpha: float = 40.0,
  average: Literal["anchor", "batch"] = "anchor",
  max_positives: int | None = None,
) -> jax.Array:
  r"""Angular loss (Wang et al. 2017), N-pair form over every positive pair.

  With L2-normalised embeddings, for each positive pair (a, p) and the anchor's
  negatives :math:`N_a`:

  .. math::
    \ell_{ap} = \log\Big[1 + \sum_{n \in N_a} e^{f_{apn}}\Big], \qquad
    f_{apn} = 4 \tan^2\alpha\, (x_a + x_p)^\top x_n - 2 (1 + \tan^2\alpha)\,
      x_a^\top x_p

  (the paper's N-pair form; its triplet form bounds the angle at the negative,
  :math:`\|x_a - x_p\| \le 2 \tan\alpha\, \|x_n - x_c\|`, :math:`x_c` the pair's
  centre). The anchor's loss is the mean of :math:`\ell_{ap}` over its positives
  (``average='anchor'``) or its share of the batch mean over all positive pairs
  (``'batch'``); a pair without negatives costs 0. Each pair needs the positive's
  own products with the negatives: with ``max_positives=k`` the k first positives of
  each anchor are fetched and one pass of the engine runs over the candidates (dense,
  ``block_size``, ``ring``; an anchor with more positives falls back to the exact form,
  NaN over a ring); without it every (a, p, n) at once, [n, m, m] (in blocks of
  anchors with ``block_size``). pytorch-metric-learning's ``AngularLoss(alpha=a)`` is
  ``alpha=a, average='batch'``, ``losses.mean()`` on L2-normalised embeddings (its
  2.x normalises the anchors and positives, not the negatives).

  Args:
    {relation}
    alpha: the angle in degrees, in (0, 90) (default 40, pytorch-metric-learning's;
      the paper tunes it per dataset).
    average: 'anchor' or 'batch', see above.
    max_positives: a static bound k on the positives of an anchor, or None.

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
  >>> # alpha 45: tan^2 = 1. Pair (0, 1): x_0 + x_1 = (1.6, 0.8), . x_2 = 0.8;
  >>> # f = 4 * 0.8 - 2 * 2 * 0.6 = 0.8 -> log(1 + e^0.8) = log(3.2255409) = 1.1711
  >>> [round(v, 4) for v in angular_loss(e, jnp.array([0, 0, 1]), alpha=45.0).tolist()]
  [1.1711, 1.1711, 0.0]

  References:
    Wang, Zhou, Wen, Liu, Lin. Deep Metric Learning with Angular Loss. ICCV 2017.
  """
  _check_open(alpha, "alpha", 0.0, 90.0)
  _engine.check_average(average)
  k = _slots.max_positives(max_positives)
  rel = _normalized(rel)
  (tan2,) = _consts(rel, jnp.tan(jnp.deg2rad(alpha)) ** 2)

  def bounded():
    valid, rows = _slots.first_positive_rows(rel, k)
    ((lse, n_neg, n_pos),) = _engine.pair_statistics(
      rel,
      (Pass(_angular_slots, ("lse", "sum", "sum")),),
      _engine.no_similarity,
      consts=tan2,
      anchor_aux=(rel.anchors[:, None, :] + rows, valid.astype(tan2.dtype)),
      candidate_aux=rel.candidates,
    )
    ap_dot = jnp.sum(rel.anchors[:, None, :] * rows, axis=-1)
    per = _angular_pair_loss(lse, ap_dot, (n_neg > 0)[:, None], tan2)
    total = jnp.sum(jnp.where(valid, per, 0.0), axis=1)
    return total, jnp.sum(valid, axis=1).astype(total.dtype), n_pos

  def exact(r):
    return _slots.by_rows(r, lambda p: _angular_every_pair(p, tan2))

  per_row = _slots.candidates(rel) ** 2  # n x M x M
  total, count = _slots.bounded(rel, k, bounded, exact, per_row)
  return _engine.average_terms(total, count, average, rel.axis_name)


# ----------------------------------------------------------------------------------
# Tuplet margin loss


def _tuplet_negatives(b: Block):
  scale = b.consts[0]
  ones = _engine.ones(b)
  return [(scale * b.s, b.negative), (ones, b.negative), (ones, b.positive)]


def _tuplet_positives(b: Block):
  scale, cos_m, sin_m = b.consts
  lse, n_neg = b.prev[0], b.prev[1]
  c = jnp.clip(b.s, -1.0, 1.0)  # cos(theta - m); the sine's gradient is 0 at 0, pi
  shifted = c * cos_m + distances.safe_sqrt(1.0 - c * c) * sin_m
  per = jax.nn.softplus(lse[:, None] - scale * shifted)
  return [(jnp.where((n_neg > 0)[:, None], per, 0.0), b.positive)]


@_batch_loss
def tuplet_margin_loss(
  rel: pairs.Relation,
  *,
  margin: float = 0.1,
  scale: float = 64.0,
  average: Literal["anchor", "batch"] = "anchor",
) -> jax.Array:
  r"""Tuplet margin loss (Yu & Tao 2019), one value per anchor.

  For each positive pair (a, p), with :math:`\theta` the angles between embeddings:

  .. math::
    \ell_{ap} = \log\Big(1 + \sum_{n \in N_a}
      e^{\,s (\cos\theta_{an} - \cos(\theta_{ap} - \beta))}\Big)
    = \operatorname{softplus}\Big(\log \sum_{n \in N_a} e^{s \cos\theta_{an}}
      - s \cos(\theta_{ap} - \beta)\Big)

  with :math:`\cos(\theta - \beta) = \cos\theta \cos\beta + \sin\theta \sin\beta`
  (cosines clipped to [-1, 1]; the sine has a zero gradient at 0 and pi). Two passes:
  the negatives' log-sum-exp per anchor, then the positives. The anchor's loss is the
  mean over its positives (``average='anchor'``) or its share of the batch mean over
  all positive pairs (``'batch'``); pairs of an anchor without negatives cost 0. The
  paper adds :func:`intra_pair_variance_loss`. pytorch-metric-learning's
  ``TupletMarginLoss(margin=5.73, scale=64)`` (its margin in degrees: 0.1 rad) is
  ``margin=0.1, scale=64, average='batch'``, ``losses.mean()``.

  Args:
    {relation}
    margin: the angular margin beta in radians, in [0, pi/2] (paper: 0.1).
    scale: the scale s > 0 (64).
    average: 'anchor' or 'batch', see above.

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])  # cos01 .6, cos02 0, cos12 .8
  >>> # cos(theta_01 - 0.1) = 0.6 cos 0.1 + 0.8 sin 0.1 = 0.5970025 + 0.0798667
  >>> #   = 0.6768692; a0: log(1 + e^{2 (0 - 0.6768692)}) = log(1.2582729) = 0.2297
  >>> # a1: log(1 + e^{2 (0.8 - 0.6768692)}) = log(2.2792341) = 0.8238
  >>> losses = tuplet_margin_loss(e, jnp.array([0, 0, 1]), scale=2.0)
  >>> [round(v, 4) for v in losses.tolist()]
  [0.2297, 0.8238, 0.0]

  References:
    Yu, Tao. Deep Metric Learning with Tuplet Margin Loss. ICCV 2019.
  """
  _checks.check_in_range(margin, "margin", 0.0, math.pi / 2)
  _checks.check_positive(scale, "scale")
  _engine.check_average(average)
  consts = _consts(rel, scale, jnp.cos(margin), jnp.sin(margin))
  (_, n_neg, n_pos), (total,) = _engine.pair_statistics(
    rel,
    (
      Pass(_tuplet_negatives, ("lse", "sum", "sum")),
      Pass(_tuplet_positives, ("sum",), prev_grad=(0,), positive_only=True),
    ),
    distances.pairwise_cosine_similarity,
    consts=consts,
  )
  return _engine.average_terms(total, n_pos, average, rel.axis_name)


# ----------------------------------------------------------------------------------
# Intra-pair variance loss


def _pair_sums(b: Block):
  ones = _engine.ones(b)
  return [(b.s, b.positive), (ones, b.positive), (b.s, b.negative), (ones, b.negative)]


def _variance_terms(b: Block):
  mean_pos, mean_neg = b.params
  eps_pos, eps_neg = b.consts
  pos = jnp.square(jax.nn.relu((1.0 - eps_pos) * mean_pos - b.s))
  neg = jnp.square(jax.nn.relu(b.s - (1.0 + eps_neg) * mean_neg))
  return [(pos, b.positive), (neg, b.negative)]


@_batch_loss
def intra_pair_variance_loss(
  rel: pairs.Relation,
  *,
  pos_eps: float = 0.01,
  neg_eps: float = 0.01,
  average: Literal["anchor", "batch"] = "anchor",
) -> jax.Array:
  r"""Intra-pair variance loss (Yu & Tao 2019), one value per anchor.

  With :math:`\cos\theta` the cosine similarity and :math:`\mu_+`, :math:`\mu_-` its
  means over all positive and all negative pairs of the batch (every device of
  ``axis_name``):

  .. math::
    L_+ = \mathbb{E}_{(a,p)}\big[(1 - \epsilon_+)\mu_+ - \cos\theta_{ap}\big]_+^2,
    \qquad
    L_- = \mathbb{E}_{(a,n)}\big[\cos\theta_{an} - (1 + \epsilon_-)\mu_-\big]_+^2

  Positive pairs much less similar than the average, and negative pairs much more
  similar, are pulled towards it. The means are differentiated (two calls of the
  engine: the sums, then the terms with the means as parameters). The anchor's loss
  is the sum of its two means (``average='anchor'``) or its share of the two batch
  means (``'batch'``: ``losses.mean()`` is :math:`L_+ + L_-`, pytorch-metric-learning's
  ``IntraPairVarianceLoss()``, whose value is ``average='batch'``, ``losses.mean()``).

  Args:
    {relation}
    pos_eps: :math:`\epsilon_+` in [0, 1] (paper: 0.01).
    neg_eps: :math:`\epsilon_-` >= 0 (paper: 0.01).
    average: 'anchor' or 'batch', see above.

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])  # cos01 .6, cos02 0, cos12 .8
  >>> # mu+ = 0.6: no term. mu- = (0 + 0 + 0.8 + 0.8) / 4 = 0.4, threshold 0.404:
  >>> # a0: (0 - .404)_+ = 0; a1: 0.396^2 = 0.156816; a2: (0 + 0.156816) / 2
  >>> losses = intra_pair_variance_loss(e, jnp.array([0, 0, 1]))
  >>> [round(v, 6) for v in losses.tolist()]
  [0.0, 0.156816, 0.078408]

  References:
    Yu, Tao. Deep Metric Learning with Tuplet Margin Loss. ICCV 2019.
  """
  _checks.check_in_range(pos_eps, "pos_eps", 0.0, 1.0)
  _checks.check_non_negative(neg_eps, "neg_eps")
  _engine.check_average(average)
  sim_fn = distances.pairwise_cosine_similarity
  ((sum_pos, n_pos, sum_neg, n_neg),) = _engine.pair_statistics(
    rel, (Pass(_pair_sums, ("sum",) * 4),), sim_fn
  )
  means = tuple(
    _engine.mean(_sum_over_batch(s, rel.axis_name), _sum_over_batch(c, rel.axis_name))
    for s, c in ((sum_pos, n_pos), (sum_neg, n_neg))
  )
  ((pos, neg),) = _engine.pair_statistics(
    rel,
    (Pass(_variance_terms, ("sum", "sum")),),
    sim_fn,
    params=means,
    consts=_consts(rel, pos_eps, neg_eps),
  )
  return _two_sided(rel, (pos, n_pos), (neg, n_neg), average)


# ----------------------------------------------------------------------------------
# SNR contrastive loss


def _snr_terms(b: Block):
  pos_margin, neg_margin = b.consts
  per = contrastive_from_distance(
    b.s,
    b.positive,
    margin=neg_margin,
    pos_margin=pos_margin,
    pos_power=1,
    neg_power=1,
  )
  active = ~(per <= 0)  # (NaN counts: a NaN distance must not vanish)
  return [
    (per, b.positive),
    (_engine.ones(b), b.positive & active),
    (per, b.negative),
    (_engine.ones(b), b.negative & active),
    (_engine.ones(b), b.positive | b.negative),
  ]


@_batch_loss
def snr_contrastive_loss(
  rel: pairs.Relation,
  *,
  pos_margin: float = 0.0,
  neg_margin: float = 1.0,
  regularizer_weight: float = 0.0,
  normalize: bool = False,
  average: Literal["anchor", "batch"] = "anchor",
) -> jax.Array:
  r"""Contrastive loss on the signal-to-noise ratio distance (Yuan et al. 2019, DSML).

  With :math:`d_S(a, j) = \operatorname{Var}(x_j - x_a) / \operatorname{Var}(x_a)`
  (:func:`metriclearn.distances.pairwise_snr_distance`, the anchor as the signal):

  .. math::
    \ell_a = \frac{\sum_{p \in P_a} [d_S(a, p) - m_+]_+}{C_+}
      + \frac{\sum_{n \in N_a} [m_- - d_S(a, n)]_+}{C_-}
      + \lambda \Big|\sum_k x_{ak}\Big|

  where :math:`C_\pm` count the non-zero terms, of the anchor
  (``average='anchor'``), or of the whole batch with the ``N / C`` scaling of
  ``'batch'``, and the last term is the paper's regulariser towards zero-mean
  features (the raw embeddings' sum; ``regularizer_weight`` :math:`\lambda`; 0, as
  the rest, for an anchor without any pair).
  pytorch-metric-learning's ``SignalToNoiseRatioContrastiveLoss()`` (its
  ``AvgNonZeroReducer``; its ``SNRDistance`` L2-normalises first) is
  ``normalize=True, average='batch'``, ``losses.mean()``; with
  ``embedding_regularizer=ZeroMeanRegularizer(), embedding_reg_weight=w`` add
  ``regularizer_weight=w``.

  Args:
    {relation}
    pos_margin: m+ >= 0, below which a positive pair costs nothing.
    neg_margin: m- >= 0, above which a negative pair costs nothing.
    regularizer_weight: lambda >= 0 (default 0, pytorch-metric-learning's; the paper
      adds the regulariser).
    normalize: L2-normalise the embeddings before the distance (not the
      regulariser's sum).
    average: 'anchor' or 'batch', see above.

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[0.0, 2.0], [0.0, 3.0], [2.0, 0.0]])
  >>> # centred rows: (-1, 1), (-1.5, 1.5), (1, -1). d_S(0, 1) = |(-.5, .5)|^2 / 2
  >>> # = 0.25; d_S(1, 0) = 0.5 / 4.5; d_S(0, 2) = 8 / 2 = 4, d_S(1, 2) = 12.5 / 4.5,
  >>> # d_S(2, 0) = 4, d_S(2, 1) = 12.5 / 2 = 6.25. With m- = 5: a0: .25 + (5 - 4);
  >>> # a1: 1 / 9 + (5 - 25 / 9) = 2.3333; a2: no positive, (5 - 4) / 1 (6.25 is 0)
  >>> losses = snr_contrastive_loss(e, jnp.array([0, 0, 1]), neg_margin=5.0)
  >>> [round(v, 4) for v in losses.tolist()]
  [1.25, 2.3333, 1.0]

  References:
    Yuan, Deng, Tang, Tang, Chen. Signal-to-Noise Ratio: A Robust Distance Metric for
    Deep Metric Learning. CVPR 2019.
  """
  _checks.check_non_negative(regularizer_weight, "regularizer_weight")
  _engine.check_average(average)
  _checks.check_non_negative(pos_margin, "pos_margin")
  _checks.check_non_negative(neg_margin, "neg_margin")
  regularizer = regularizer_weight * jnp.abs(jnp.sum(rel.anchors, axis=1))
  ((pos, n_pos, neg, n_neg, pairs_),) = _engine.pair_statistics(
    _normalized(rel) if normalize else rel,
    (Pass(_snr_terms, ("sum",) * 5),),
    distances.pairwise_snr_distance,
    consts=_consts(rel, pos_margin, neg_margin),
  )
  loss = _two_sided(rel, (pos, n_pos), (neg, n_neg), average)
  return loss + jnp.where(pairs_ > 0, regularizer, 0.0)


# ----------------------------------------------------------------------------------
# Centroid triplet loss


def _class_sums(rel: pairs.Relation, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """For each label of ``labels`` [q]: the sum [q, d] and the number [q] of the real
  candidates (of every device) with that label. Blocks of candidates with a block
  size, shards passed around with ``ring``: memory q x block."""

  def part(ref_labels, candidates):
    same = masks.label_equal(labels, ref_labels) & (ref_labels >= 0)[None, :]
    w = same.astype(candidates.dtype)
    return jnp.matmul(w, candidates, precision=_HIGHEST), jnp.sum(w, axis=1)

  def add(acc, chunk):
    return jax.tree.map(jnp.add, acc, part(*chunk)), None

  if rel.ring:
    size = jax.lax.axis_size(rel.axis_name)
    ring = [(i, (i + 1) % size) for i in range(size)]

    def step(carry, _):
      acc, chunk = carry
      chunk = jax.lax.ppermute(chunk, rel.axis_name, ring)
      return (add(acc, chunk)[0], chunk), None

    own = (rel.ref_labels, rel.candidates)
    (acc, _), _ = jax.lax.scan(step, (part(*own), own), None, length=size - 1)
    return acc
  ref_labels = pairs.gather(rel.ref_labels, rel.axis_name)
  candidates = pairs.gather(rel.candidates, rel.axis_name)
  if rel.block_size is None:
    return part(ref_labels, candidates)
  m = candidates.shape[0]
  bc = max(1, min(rel.block_size[1], m))
  chunks = (
    _engine.pad_rows(ref_labels, _engine.round_up(m, bc), -1).reshape(-1, bc),
    _engine.pad_rows(candidates, _engine.round_up(m, bc), 0).reshape(
      -1, bc, candidates.shape[1]
    ),
  )
  zeros: tuple[jax.Array, ...]
  zeros = (jnp.zeros((labels.shape[0],) + candidates.shape[1:], candidates.dtype),)
  zeros += (jnp.zeros(labels.shape, candidates.dtype),)
  return jax.lax.scan(add, zeros, chunks)[0]


def _rowwise(dist_fn, a: jax.Array, b: jax.Array) -> jax.Array:
  """``dist_fn`` (pairwise) between row i of ``a`` and row i of ``b``: [n]."""
  return jax.vmap(lambda u, v: dist_fn(u[None], v[None])[0, 0])(a, b)


def _centroid_terms(b: Block, soft: bool):
  d_ap, has_positive = b.a_aux
  per = triplet_formula(d_ap[:, None], b.s, b.consts, soft) * b.c_aux[None, :]
  negative = b.negative & (has_positive > 0)[:, None]
  weight = jnp.broadcast_to(b.c_aux[None, :], per.shape)
  counted = weight if soft else jnp.where(per <= 0, 0.0, weight)  # (NaN counts)
  return [(per, negative), (counted, negative)]


@_batch_loss
def centroid_triplet_loss(
  rel: pairs.Relation,
  *,
  margin: float = 0.05,
  distance: str | distances.DistanceFn = "euclidean",
  squared: bool = True,
  soft: bool = False,
  average: Literal["anchor", "batch"] = "anchor",
) -> jax.Array:
  r"""Centroid triplet loss (Wieczorek et al. 2021): anchors against class centroids.

  With :math:`c_P` the mean of the other members of the anchor's class and
  :math:`c_k` the mean of each other class :math:`k` among the candidates:

  .. math::
    \ell_{ak} = \big[D(x_a, c_P) - D(x_a, c_k) + m\big]_+

  (:math:`\log(1 + e^x)` with ``soft=True``), :math:`D` the squared Euclidean
  distance by default, as in the paper. An anchor alone in its class has no
  :math:`c_P` and gets 0 (its class is still a negative of the others). The anchor's
  loss is its mean over the negative classes with a non-zero loss
  (``average='anchor'``), or its share of the batch mean over them (``'batch'``).
  The centroids are sums over the candidates of each label (blocks of candidates, or
  the ring); the loss over them is one pass of the engine, each candidate standing
  for its class with weight 1 / (class size). Labels only: ``positive_mask``,
  ``label_comparison`` and ``mask`` raise. pytorch-metric-learning 2.9 has no
  centroid loss; the ``CentroidTripletLoss()`` of its earlier code (the Euclidean
  distance of L2-normalised vectors, ``AvgNonZeroReducer``) corresponds to
  ``distance=lambda a, b: distances.pairwise_euclidean(distances.l2_normalize(a),
  distances.l2_normalize(b)), squared=False, average='batch'``, ``losses.mean()``
  (read from that code, not run against it).

  Args:
    {relation}
    margin: m >= 0 (default 0.05, as pytorch-metric-learning's earlier code).
    distance: 'euclidean' (default), 'cosine', 'snr' or a callable
      ``(a [n, d], b [m, d]) -> [n, m]``.
    squared: square the distance (default True, the paper's squared norms).
    soft: soft-plus instead of the hinge (every class is then counted).
    average: 'anchor' or 'batch', see above.

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[0.0], [0.4], [0.5], [0.8]])  # centroids 0.2 and 0.65
  >>> # a0: c_P 0.4: .16 - .65^2 + .05 < 0; a1: c_P 0: .16 - .25^2 + .05 = 0.1475
  >>> # a2: c_P 0.8: .09 - .3^2 + .05 = 0.05; a3: c_P .5: .09 - .6^2 + .05 < 0
  >>> losses = centroid_triplet_loss(x, jnp.array([0, 0, 1, 1]))
  >>> [round(v, 4) for v in losses.tolist()]
  [0.0, 0.1475, 0.05, 0.0]

  References:
    Wieczorek, Rychalska, Dąbrowski. On the Unreasonable Effectiveness of Centroids
    in Image Retrieval. ICONIP 2021.
  """
  for value, name in (
    (rel.positive_mask, "positive_mask"),
    (rel.label_comparison, "label_comparison"),
    (rel.mask, "mask"),
  ):
    if value is not None:
      raise ValueError(f"centroid_triplet_loss takes class labels only: not {name}.")
  _checks.check_non_negative(margin, "margin")
  _engine.check_average(average)
  dist_fn = distances.distance_fn(distance, squared)
  a_sum, a_count = _class_sums(rel, rel.labels)
  c_sum, c_count = (a_sum, a_count)
  if not rel.self_pairs:
    c_sum, c_count = _class_sums(rel, rel.ref_labels)
  own = (rel.labels >= 0).astype(a_count.dtype) if rel.self_pairs else 0.0
  others = a_count - own  # the anchor leaves its own centroid
  has_positive = others > 0
  mine = rel.anchors * cast(jax.Array, own)[:, None] if rel.self_pairs else 0.0
  c_pos = (a_sum - mine) / jnp.maximum(others, 1.0)[:, None]
  d_ap = jnp.where(has_positive, _rowwise(dist_fn, rel.anchors, c_pos), 0.0)
  centroids = c_sum / jnp.maximum(c_count, 1.0)[:, None]
  weight = jnp.where(c_count > 0, 1.0 / jnp.maximum(c_count, 1.0), 0.0)
  ((total, count),) = _engine.pair_statistics(
    rel._replace(candidates=centroids, self_pairs=False),
    (Pass(functools.partial(_centroid_terms, soft=soft), ("sum", "sum")),),
    dist_fn,
    consts=_consts(rel, margin)[0],
    anchor_aux=(d_ap, has_positive.astype(d_ap.dtype)),
    candidate_aux=weight,
  )
  return _engine.average_terms(total, count, average, rel.axis_name)


# ----------------------------------------------------------------------------------
# Threshold-consistent margin loss


def _tcm_terms(b: Block):
  margin_pos, margin_neg = b.consts
  pos = b.positive & ~(b.s > margin_pos)  # s <= m+ (NaN counts)
  neg = b.negative & ~(b.s < margin_neg)  # s >= m-
  ones = _engine.ones(b)
  return [(margin_pos - b.s, pos), (ones, pos), (b.s - margin_neg, neg), (ones, neg)]


@_batch_loss
def threshold_consistent_margin_loss(
  rel: pairs.Relation,
  *,
  lambda_plus: float = 1.0,
  lambda_minus: float = 1.0,
  margin_plus: float = 0.9,
  margin_minus: float = 0.5,
  average: Literal["anchor", "batch"] = "anchor",
) -> jax.Array:
  r"""Threshold-consistent margin (TCM) loss (Zhang et al. 2023), a regulariser added
  to a base loss.

  With :math:`s` the cosine similarity, the positive pairs below :math:`m^+` and the
  negative pairs above :math:`m^-` are penalised by how far they are on the wrong
  side, each averaged over the violating pairs:

  .. math::
    L = \lambda^+ \frac{\sum_{s_{ap} \le m^+} (m^+ - s_{ap})}
      {|\{s_{ap} \le m^+\}|}
    + \lambda^- \frac{\sum_{s_{an} \ge m^-} (s_{an} - m^-)}
      {|\{s_{an} \ge m^-\}|}

  (0 for a side without violations). ``average='batch'`` gives each anchor its share
  of the batch-wide means (``losses.mean()`` is :math:`L`, the paper's), ``'anchor'``
  the anchor's own means. Add it to a base loss, as the paper does;
  pytorch-metric-learning's ``ThresholdConsistentMarginLoss()`` (the regulariser
  alone, as here) is ``average='batch'``, ``losses.mean()``.

  Args:
    {relation}
    lambda_plus, lambda_minus: the weights of the two sides, >= 0 (1, 1).
    margin_plus, margin_minus: the thresholds m+ and m- on the cosine (0.9, 0.5).
    average: 'anchor' or 'batch', see above.

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])  # cos01 .6, cos02 0, cos12 .8
  >>> # positive (0, 1): 0.9 - 0.6 = 0.3 for both anchors; negatives: cos12 = 0.8 >=
  >>> # 0.5 -> 0.3 for anchors 1 and 2 (cos 0 is fine): a0 .3, a1 .3 + .3, a2 .3
  >>> losses = threshold_consistent_margin_loss(e, jnp.array([0, 0, 1]))
  >>> [round(v, 4) for v in losses.tolist()]
  [0.3, 0.6, 0.3]

  References:
    Zhang, Xu, Tang, Fang, Wu, Tighe, Xing. Threshold-Consistent Margin Loss for
    Open-World Deep Metric Learning. ICLR 2024 (arXiv:2307.04047, 2023).
  """
  _checks.check_non_negative(lambda_plus, "lambda_plus")
  _checks.check_non_negative(lambda_minus, "lambda_minus")
  for value, name in ((margin_plus, "margin_plus"), (margin_minus, "margin_minus")):
    _checks.check_in_range(value, name, -1.0, 1.0)
  _engine.check_average(average)
  ((pos, n_pos, neg, n_neg),) = _engine.pair_statistics(
    rel,
    (Pass(_tcm_terms, ("sum",) * 4),),
    distances.pairwise_cosine_similarity,
    consts=_consts(rel, margin_plus, margin_minus),
  )
  return lambda_plus * _engine.average_terms(
    pos, n_pos, average, rel.axis_name
  ) + lambda_minus * _engine.average_terms(neg, n_neg, average, rel.axis_name)


# ----------------------------------------------------------------------------------
# Dynamic soft margin loss


def _bin_weights(delta: jax.Array, mask: jax.Array, min_val, width, bins: int):
  """[..., bins]: each difference split between its two nearest bins (linearly)."""
  t = (delta - min_val) / width
  low = jnp.floor(t)
  frac = (t - low)[..., None]
  index = jnp.arange(bins, dtype=delta.dtype)

  def at(i):
    return (jnp.clip(i, 0, bins - 1)[..., None] == index).astype(delta.dtype)

  weights = (1.0 - frac) * at(low) + frac * at(low + 1)
  return jax.lax.stop_gradient(jnp.where(mask[..., None], weights, 0.0))


def _cdf_weighted(delta: jax.Array, mask: jax.Array, min_val, width, cdf) -> jax.Array:
  """F(delta) delta, F the histogram's CDF at delta's bin (a constant weight)."""
  low = jnp.clip(jnp.floor((delta - min_val) / width), 0, cdf.shape[0] - 1)
  weight = jax.lax.stop_gradient(jnp.take(cdf, low.astype(jnp.int32)))
  return jnp.where(mask, weight * delta, 0.0)


def _dsm_histogram_terms(b: Block, bins: int):
  min_val, width = b.consts
  negative, d_ap, d_an = _slots.slot_view(b)
  weights = _bin_weights(d_ap - d_an, negative, min_val, width, bins)  # [ba,k,bc,B]
  per_bin = jnp.moveaxis(jnp.sum(weights, axis=1), -1, 1)  # [ba, B, bc]
  return [(per_bin, jnp.ones(per_bin.shape, bool))]


def _dsm_loss_terms(b: Block):
  min_val, width, cdf = b.consts
  d_ap, valid = b.a_aux  # [ba, k]
  delta = d_ap[:, :, None] - b.s[:, None, :]
  mask = (valid > 0)[:, :, None] & b.negative[:, None, :]
  per = _cdf_weighted(delta, mask, min_val, width, cdf)
  return [(jnp.sum(per, axis=1), b.negative)]


def _dsm_every_triplet(p: pairs.Pairs, dist_fn, min_val, width, bins: int):
  dist = dist_fn(p.anchors, p.candidates)
  delta = dist[:, :, None] - dist[:, None, :]
  triplets = p.positive[:, :, None] & p.negative[:, None, :]
  counts = _bin_weights(delta, triplets, min_val, width, bins).sum(axis=(1, 2))
  count = jnp.sum(triplets, axis=(1, 2)).astype(dist.dtype)
  return counts, count, lambda cdf: _cdf_weighted(delta, triplets, min_val, width, cdf)


@_batch_loss
def dynamic_soft_margin_loss(
  rel: pairs.Relation,
  histogram: jax.Array | None = None,
  *,
  min_val: float = -2.0,
  num_bins: int = 10,
  momentum: float = 0.01,
  normalize: bool = True,
  distance: str | distances.DistanceFn = "euclidean",
  average: Literal["anchor", "batch"] = "anchor",
  max_positives: int | None = None,
  return_histogram: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  r"""Dynamic soft margin loss (Zhang et al. 2019): triplets weighted by the CDF of
  their distance differences.

  For every triplet (a, p, n), :math:`\Delta = D(x_a, x_p) - D(x_a, x_n)` and

  .. math::
    \ell = \hat F(\Delta)\, \Delta, \qquad
    \hat h \leftarrow (1 - \eta)\, \hat h + \eta\, h_\text{batch}, \qquad
    \hat F(\Delta) = \sum_{b \le \operatorname{bin}(\Delta)} \hat h_b

  with :math:`h_\text{batch}` the normalised histogram of the batch's differences
  (``num_bins`` bins of width :math:`2 |m_0| / B` from ``min_val`` :math:`m_0`, each
  difference split linearly between its two nearest bins) and :math:`\hat F` a
  constant weight: the gradient of a triplet is :math:`\hat F(\Delta)`, a margin that
  follows the distribution (the histogram starts empty: the first batch's own). The
  running histogram is the caller's state: pass it as ``histogram`` and take the new
  one with ``return_histogram=True`` (it is summed over every device of
  ``axis_name``). The anchor's loss is its mean over its triplets
  (``average='anchor'``) or its share of the batch mean (``'batch'``). Triplets need
  a statistic per positive pair: ``max_positives=k`` takes the slot form of the
  triplet losses (the k first positives, through the engine; more positives fall
  back to every triplet without a block size, NaN for those anchors otherwise);
  without it every triplet at once, [n, m, m] (no block size).
  pytorch-metric-learning's ``DynamicSoftMarginLoss()`` on its first call (empty
  histogram) is ``average='batch'``, ``losses.mean()`` (later, version 2.x mixes the
  raw counts of the batch, not its normalised histogram).

  Args:
    {relation}
    histogram: [num_bins] running histogram (None or zeros: empty).
    min_val: m0 < 0, the lower end of the bins; they cover [m0, -m0] (-2: the range
      of the difference of two Euclidean distances of unit vectors).
    num_bins: the number of bins B (when ``histogram`` is None).
    momentum: eta in [0, 1], the weight of the batch's histogram (0.01).
    normalize: L2-normalise the embeddings first (the paper's descriptors).
    distance: 'euclidean' (default), 'cosine' or a callable.
    average: 'anchor' or 'batch', see above.
    max_positives: a static bound k on the positives of an anchor, or None.
    return_histogram: also return the updated histogram.

  Returns:
    [n] per-anchor losses, and with ``return_histogram`` the [num_bins] histogram.

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[0.0], [0.5], [0.4]])  # bins of 0.5 from -2 (num_bins 8)
  >>> # a0: 0.5 - 0.4 = 0.1 (t = 4.2: .8 to bin 4, .2 to bin 5); a1: 0.5 - 0.1 = 0.4
  >>> # (t = 4.8: .2, .8): histogram .5, .5; both in bin 4: F = 0.5 -> .05, .2
  >>> losses = dynamic_soft_margin_loss(
  ...   x, jnp.array([0, 0, 1]), num_bins=8, normalize=False)
  >>> [round(v, 4) for v in losses.tolist()]
  [0.05, 0.2, 0.0]

  References:
    Zhang, Rusinkiewicz. Learning Local Descriptors With a CDF-Based Dynamic Soft
    Margin. ICCV 2019.
  """
  if histogram is None:
    histogram = jnp.zeros((num_bins,), rel.anchors.dtype)
  histogram = _checks.as_float(histogram, "histogram").astype(rel.anchors.dtype)
  if histogram.ndim != 1 or histogram.shape[0] < 1:
    raise ValueError(f"histogram must be [num_bins], got {tuple(histogram.shape)}.")
  bins = histogram.shape[0]
  if _checks.concrete_value(min_val) is not None and not min_val < 0:
    raise ValueError(f"min_val must be < 0, got {min_val}.")
  _checks.check_in_range(momentum, "momentum", 0.0, 1.0)
  _engine.check_average(average)
  k = _slots.max_positives(max_positives)
  if normalize:
    rel = _normalized(rel)
  dist_fn = distances.get_pairwise_distance(distance)
  m0, width = _consts(rel, min_val, 2.0 * abs(min_val) / bins)

  def update(counts):  # the running histogram with this batch's
    batch = _sum_over_batch(counts, rel.axis_name)
    mass, old = jnp.sum(batch), jnp.sum(histogram)
    batch = batch / jnp.where(mass > 0, mass, 1.0)
    mixed = jnp.where(old > 0, (1 - momentum) * histogram + momentum * batch, batch)
    new = jnp.where(mass > 0, mixed, histogram)
    return new, jnp.cumsum(new)

  def exact():
    if rel.block_size is not None or rel.ring:
      raise ValueError(
        "dynamic_soft_margin_loss compares every triplet at once without "
        "max_positives: give max_positives for block_size / ring."
      )
    counts, count, weighted = _dsm_every_triplet(
      pairs.dense(rel), dist_fn, m0, width, bins
    )
    new, cdf = update(counts)
    return jnp.sum(weighted(cdf), axis=(1, 2)), count, new

  def bounded():
    last = Pass(functools.partial(_dsm_histogram_terms, bins=bins), ("sum",))
    valid, n_pos, n_neg, d_ap, (counts,) = _slots.by_slots(
      rel, k, dist_fn, last, (m0, width)
    )
    new, cdf = update(counts)
    ((total,),) = _engine.pair_statistics(
      rel,
      (Pass(_dsm_loss_terms, ("sum",)),),
      dist_fn,
      consts=(m0, width, cdf),
      anchor_aux=(d_ap, valid.astype(d_ap.dtype)),
    )
    return total, jnp.sum(valid, axis=1).astype(n_neg.dtype) * n_neg, new, n_pos > k

  if k is None:
    total, count, new = exact()
  else:
    total, count, new, over = bounded()
    if rel.block_size is None and not rel.ring:
      any_over = jnp.any(over)
      if rel.axis_name is not None:
        any_over = jax.lax.psum(any_over.astype(jnp.int32), rel.axis_name) > 0
      total, count, new = jax.lax.cond(any_over, exact, lambda: (total, count, new))
    else:
      total = jnp.where(over, jnp.nan, total)
  loss = _engine.average_terms(total, count, average, rel.axis_name)
  return (loss, new) if return_histogram else loss


# ----------------------------------------------------------------------------------
# Manifold loss


def _violations(scores: jax.Array, own: jax.Array, margin) -> jax.Array:
  """log(1 + sum_{k != own} e^{t_k}) over t_k = scores_k - scores_own + m > 0."""
  k = scores.shape[1]
  t = scores - jnp.take_along_axis(scores, own[:, None], axis=1) + margin
  enter = ~(t <= 0) & (jnp.arange(k, dtype=own.dtype)[None, :] != own[:, None])
  return jnp.log1p(jnp.sum(jnp.where(enter, jnp.exp(jnp.where(enter, t, 0.0)), 0.0), 1))


@pairs.batch_form
def manifold_loss(
  rel: pairs.Relation,
  proxies: jax.Array,
  *,
  lambda_c: float = 1.0,
  alpha: float = 0.8,
  margin: float = 5e-4,
  temperature: float = 0.5,
) -> jax.Array:
  r"""Manifold loss with hard proxies (Aziere & Todorovic 2019), one value per
  embedding.

  Over the graph of the :math:`N` embeddings and :math:`K` proxies, with affinities
  :math:`S_{ij} = e^{\max(\cos(x_i, x_j), 0) / T}` (:math:`i \ne j`), degrees
  :math:`D` and a random walk with restart :math:`\alpha`:

  .. math::
    F = (1 - \alpha)\big(I - \alpha D^{-1/2} S D^{-1/2}\big)^{-1}, \qquad
    \ell_i = \log\Big(1 + \sum_{k \ne c(i)} e^{[F_{i,k} - F_{i,c(i)} + m]_+}\Big)
      + \lambda_C \log\Big(1 + \sum_{k \ne c(i)}
      e^{[\cos(F_i, F_k) - \cos(F_i, F_{c(i)}) + m]_+}\Big)

  where :math:`c(i)` is the proxy of embedding i (``labels``: proxy indices in
  [0, K), not class labels; the paper assigns the classes to K meta-classes at
  random per learner of its ensemble), :math:`F_{i,k}` the manifold similarity of
  embedding i and proxy k (intrinsic term) and :math:`F_i` the rows of F (context
  term); only violating terms (:math:`[\cdot]_+ > 0`) enter the sums. Dense by
  nature: the random walk couples the whole batch through an
  :math:`(N + K)^2` inverse (the embeddings of every device with ``axis_name``);
  padding rows are left out of the graph. The mean of the values is
  pytorch-metric-learning's ``ManifoldLoss(l, K, lambdaC, alpha, margin)`` with
  ``indices_tuple=labels`` and its ``proxies``.

  Args:
    {relation}
    proxies: [K, d] the proxies (learned parameters).
    lambda_c: the weight lambda_C >= 0 of the context term (1).
    alpha: the random walk's alpha in (0, 1) (0.8).
    margin: m (5e-4).
    temperature: T > 0 of the affinities (0.5).

  Returns:
    [n] per-embedding losses (0 for padding).

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[1.0, 0.0]])
  >>> p = jnp.array([[-0.5, 0.866], [-0.5, -0.866]])  # all cosines -0.5: S = 1 - I
  >>> # 3 nodes, S-bar = (J - I) / 2: F = (1 - .8) / 1.4 (I + 2 J) -> F_ik = 2/7 for
  >>> # both proxies, cos(F_x, F_pk) = 16/17 for both: each term is e^m, m = 0.5:
  >>> # 2 log(1 + e^0.5) = 2 log(2.6487213) = 1.9481540
  >>> [round(v, 4) for v in manifold_loss(x, jnp.array([0]), p, margin=0.5).tolist()]
  [1.9482]

  References:
    Aziere, Todorovic. Ensemble Deep Manifold Similarity Learning using Hard Proxies.
    CVPR 2019.
  """
  for value, name in (
    (not rel.self_pairs, "ref_embeddings"),
    (rel.positive_mask is not None, "positive_mask"),
    (rel.label_comparison is not None, "label_comparison"),
    (rel.mask is not None, "mask"),
  ):
    if value:
      raise ValueError(f"manifold_loss takes proxy indices as labels only: not {name}.")
  proxies = _checks.as_float(proxies, "proxies")
  if proxies.ndim != 2 or proxies.shape[1] != rel.anchors.shape[1]:
    raise ValueError(
      f"proxies must be [K, {rel.anchors.shape[1]}] to match the embeddings, got "
      f"{tuple(proxies.shape)}."
    )
  num_proxies = proxies.shape[0]
  values = _checks.concrete_value(rel.labels)
  if values is not None and values.size and values.max() >= num_proxies:
    raise ValueError(
      f"labels are proxy indices and must be < {num_proxies} (the number of "
      f"proxies), got {int(values.max())}."
    )
  _checks.check_non_negative(lambda_c, "lambda_c")
  _check_open(alpha, "alpha", 0.0, 1.0)
  _checks.check_positive(temperature, "temperature")
  (embeddings, proxies) = _checks.common_float(rel.anchors, proxies)
  embeddings = pairs.gather(embeddings, rel.axis_name)
  labels = pairs.gather(rel.labels, rel.axis_name)
  n = embeddings.shape[0]
  nodes = jnp.concatenate([embeddings, proxies])
  real = jnp.concatenate([labels >= 0, jnp.ones((num_proxies,), bool)])
  edges = real[:, None] & real[None, :] & ~jnp.eye(nodes.shape[0], dtype=bool)
  cos = distances.pairwise_cosine_similarity(nodes)
  affinity = jnp.where(edges, jnp.exp(jax.nn.relu(cos) / temperature), 0.0)
  degree = jnp.sum(affinity, axis=1)
  scale = jnp.where(degree > 0, jax.lax.rsqrt(jnp.where(degree > 0, degree, 1.0)), 0.0)
  walk = jnp.eye(nodes.shape[0], dtype=nodes.dtype) - alpha * (
    scale[:, None] * affinity * scale[None, :]
  )
  f = (1 - alpha) * jnp.linalg.solve(walk, jnp.eye(nodes.shape[0], dtype=nodes.dtype))
  own = jnp.clip(labels, 0, num_proxies - 1)
  intrinsic = _violations(f[:n, n:], own, margin)
  context = _violations(distances.pairwise_cosine_similarity(f[:n], f[n:]), own, margin)
  loss = jnp.where(labels >= 0, intrinsic + lambda_c * context, 0.0)
  if rel.axis_name is None:
    return loss
  start = jax.lax.axis_index(rel.axis_name) * rel.anchors.shape[0]
  return jax.lax.dynamic_slice_in_dim(loss, start, rel.anchors.shape[0])

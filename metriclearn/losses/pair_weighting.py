"""Pair-weighting losses in batch form: every pair of a labelled batch takes part.

In Wang et al. 2019's *general pair weighting* view, these losses differ only in how
they weight the gradient of each positive and negative pair of an anchor: contrastive
(equal weights), multi-similarity, circle, lifted structure and the margin loss.

Each loss is written once, as the passes of the losses' engine (per-pair terms of a
similarity or distance block, reduced over candidates by sums and log-sum-exps) and
their per-anchor combination, and runs dense (``block_size=None``) or blockwise
(``block_size=`` an int, ``ring=True`` across devices) with the same values and
gradients. An anchor with nothing valid gets 0 and a zero gradient. Reduce with
:mod:`metriclearn.reduce`, e.g. ``reduce.mean_over_valid(losses)``.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from metriclearn import _checks, distances, pairs
from metriclearn.losses import _engine
from metriclearn.losses._engine import Block, Pass
from metriclearn.losses.pair import contrastive_from_distance

__all__ = [
  "anchor_beta",
  "batch_contrastive_loss",
  "circle_loss",
  "contrastive_pair_losses",
  "lifted_structure_loss",
  "margin_loss",
  "multi_similarity_loss",
]

_batch_loss = pairs.batch_form(executor=True)


def _consts(rel: pairs.Relation, *values) -> tuple[jax.Array, ...]:
  return tuple(jnp.asarray(v).astype(rel.anchors.dtype) for v in values)


# ----------------------------------------------------------------------------------
# Contrastive over all pairs


_CONTRASTIVE_OPTIONS = ("margin", "pos_margin", "pos_weight", "neg_weight")


def _contrastive_terms(powers: tuple[float, float]):
  def terms(b: Block):
    per_pair = contrastive_from_distance(
      b.s,
      b.positive,
      **dict(zip(_CONTRASTIVE_OPTIONS, b.consts, strict=True)),
      pos_power=powers[0],
      neg_power=powers[1],
    )
    valid = b.positive | b.negative
    return [(per_pair, valid), (_engine.ones(b), valid)]

  return terms


@pairs.batch_form
def contrastive_pair_losses(
  rel: pairs.Relation,
  *,
  margin: float = 1.0,
  pos_margin: float = 0.0,
  distance: str | distances.DistanceFn = "euclidean",
  pos_power: float = 2,
  neg_power: float = 2,
  pos_weight: float = 1.0,
  neg_weight: float = 1.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The contrastive loss of every (anchor, candidate) pair, with the pair masks.

  The options of :func:`batch_contrastive_loss`; for reductions over pairs rather than
  anchors (see there). Dense: it returns the [n, M] matrices.

  Args:
    {relation}
    margin, pos_margin, distance, pos_power, neg_power, pos_weight, neg_weight: as in
      :func:`batch_contrastive_loss`.

  Returns:
    ``(losses [n, M], positive [n, M] bool, negative [n, M] bool)``; entries outside
    ``positive | negative`` are not pairs and must be ignored.
  """
  p = pairs.dense(rel)
  dist = distances.get_pairwise_distance(distance)(p.anchors, p.candidates)
  losses = contrastive_from_distance(
    dist,
    p.positive,
    margin=margin,
    pos_margin=pos_margin,
    pos_power=pos_power,
    neg_power=neg_power,
    pos_weight=pos_weight,
    neg_weight=neg_weight,
  )
  return losses, p.positive, p.negative


@_batch_loss
def batch_contrastive_loss(
  rel: pairs.Relation,
  *,
  margin: float = 1.0,
  pos_margin: float = 0.0,
  distance: str | distances.DistanceFn = "euclidean",
  pos_power: float = 2,
  neg_power: float = 2,
  pos_weight: float = 1.0,
  neg_weight: float = 1.0,
) -> jax.Array:
  r"""Contrastive loss over every pair of the batch, averaged per anchor.

  .. math::
    \ell_a = \frac{1}{|P_a| + |N_a|} \Big(
      \sum_{p \in P_a} w_+ \max(0, D_{ap} - m_+)^{p_+}
      + \sum_{q \in N_a} w_- \max(0, m - D_{aq})^{p_-} \Big)

  with :math:`P_a, N_a` the anchor's positive and negative candidates and
  :math:`D` = ``distance``. The pair formula is
  :func:`metriclearn.losses.pair.contrastive_from_distance`, so every option (and
  every published form in ``CONTRASTIVE_VARIANTS``) of the pair form
  :func:`~metriclearn.losses.pair.contrastive_loss` is available, and the two agree
  pair by pair. A positive or a negative pair alone is valid: only an anchor with no
  pair at all (padding, or alone in the batch) gets 0.

  pytorch-metric-learning's ``ContrastiveLoss()`` (``AvgNonZeroReducer``: the mean over
  the positive pairs with a non-zero loss plus the same over the negative pairs, on
  L2-normalised embeddings) is::

    losses, pos, neg = contrastive_pair_losses(
        distances.l2_normalize(e), labels, **CONTRASTIVE_VARIANTS["pml"])
    loss = reduce.mean_over_nonzero(losses, pos) + reduce.mean_over_nonzero(losses, neg)

  Args:
    {relation}
    margin: m >= 0, beyond which a negative pair costs nothing.
    pos_margin: m+ >= 0, within which a positive pair costs nothing.
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine' or a callable
      ``(a [n, d], b [m, d]) -> [n, m]``.
    pos_power, neg_power: the powers p+, p- (>= 1).
    pos_weight, neg_weight: the factors w+, w-.

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[0.0, 0.0], [0.5, 0.0], [0.8, 0.0]])
  >>> [round(float(v), 4) for v in batch_contrastive_loss(e, jnp.array([0, 0, 1]))]
  [0.145, 0.37, 0.265]

  References:
    Hadsell, Chopra, LeCun. Dimensionality Reduction by Learning an Invariant Mapping.
    CVPR 2006.
  """
  options = (margin, pos_margin, pos_weight, neg_weight)
  # The options' checks, once, on their Python values.
  contrastive_from_distance(
    jnp.zeros(()),
    jnp.zeros((), bool),
    **dict(zip(_CONTRASTIVE_OPTIONS, options, strict=True)),
    pos_power=pos_power,
    neg_power=neg_power,
  )
  ((total, count),) = _engine.pair_statistics(
    rel,
    (Pass(_contrastive_terms((pos_power, neg_power)), ("sum", "sum")),),
    distances.get_pairwise_distance(distance),
    consts=_consts(rel, *options),
  )
  return _engine.mean(total, count)


# ----------------------------------------------------------------------------------
# Multi-similarity


def _ms_thresholds(b: Block):
  return [(b.s, b.positive), (b.s, b.negative)]


def _ms_terms(mining: bool):
  def terms(b: Block):
    alpha, beta, base, epsilon = b.consts
    pos, neg = b.positive, b.negative
    if mining:  # Wang et al.'s eqs. 8-9 with the thresholds of the first pass
      least_pos, most_neg = b.prev
      pos = pos & (b.s - epsilon < most_neg[:, None])
      neg = neg & (b.s + epsilon > least_pos[:, None])
    return [
      (-alpha * (b.s - base), pos),
      (beta * (b.s - base), neg),
      (_engine.ones(b), pos),
      (_engine.ones(b), neg),
    ]

  return terms


@_batch_loss
def multi_similarity_loss(
  rel: pairs.Relation,
  *,
  alpha: float | jax.Array = 2.0,
  beta: float | jax.Array = 50.0,
  base: float = 0.5,
  similarity: str | distances.DistanceFn = "cosine",
  mining_epsilon: float | None = None,
) -> jax.Array:
  r"""Multi-similarity loss (Wang et al. 2019), one value per anchor.

  .. math::
    \ell_a = \frac{1}{\alpha} \log\Big(1 + \sum_{p \in P_a} e^{-\alpha (S_{ap} -
    \lambda)}\Big) + \frac{1}{\beta} \log\Big(1 + \sum_{q \in N_a} e^{\beta (S_{aq}
    - \lambda)}\Big)

  with :math:`S` = ``similarity`` (cosine by default: the paper's S is the inner
  product of L2-normalised embeddings), :math:`\lambda` = ``base``. Computed as a
  log-sum-exp with a 0 term, finite for any similarity. As in the authors' code, an
  anchor needs at least one positive and one negative, else its loss is 0.

  The paper's pair mining (keep negatives with :math:`S_{aq} > \min_p S_{ap} -
  \epsilon` and positives with :math:`S_{ap} < \max_q S_{aq} + \epsilon`) is done
  inside with ``mining_epsilon`` (a first pass finds each anchor's least similar
  positive and most similar negative): the same value as
  ``mask=miners.multi_similarity_miner(..., epsilon=...)`` without the [n, m] mask.
  pytorch-metric-learning's ``MultiSimilarityLoss()`` with its
  ``MultiSimilarityMiner(0.1)`` is ``losses.mean()`` with ``mining_epsilon=0.1``
  (alpha 2, beta 50, base 0.5).

  Args:
    {relation}
    alpha: scale of the positive term, > 0 (paper: 2).
    beta: scale of the negative term, > 0 (paper: 50).
    base: the similarity offset lambda (0.5, as in the authors' code and
      pytorch-metric-learning).
    similarity: 'cosine' (default), 'dot' or a callable ``(a, b) -> [n, m]``.
    mining_epsilon: None (no mining) or the mining margin epsilon >= 0 (paper: 0.1).

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])
  >>> [round(float(v), 4) for v in multi_similarity_loss(e, jnp.array([0, 0, 1, 1]))]
  [0.5991, 0.7591, 0.5991, 0.7591]

  References:
    Wang, Han, Huang, Dong, Scott. Multi-Similarity Loss with General Pair Weighting
    for Deep Metric Learning. CVPR 2019.
  """
  _checks.check_positive(alpha, "alpha")
  _checks.check_positive(beta, "beta")
  mining = mining_epsilon is not None
  if mining:
    _checks.check_non_negative(mining_epsilon, "mining_epsilon")
  consts = _consts(rel, alpha, beta, base, mining_epsilon if mining else 0.0)
  passes: tuple[Pass, ...] = (Pass(_ms_terms(mining), ("lse", "lse", "sum", "sum")),)
  if mining:
    passes = (Pass(_ms_thresholds, ("min", "max")),) + passes
  *thresholds, (lse_p, lse_n, n_pos, n_neg) = _engine.pair_statistics(
    rel, passes, distances.get_pairwise_similarity(similarity), consts=consts
  )
  alpha, beta = consts[:2]
  loss = (
    _engine.log1p_exp(lse_p, n_pos) / alpha + _engine.log1p_exp(lse_n, n_neg) / beta
  )
  loss = jnp.where(_engine.active(n_pos, n_neg), loss, 0.0)
  if mining:  # a NaN threshold selects nothing: say so rather than give 0
    least_pos, most_neg = thresholds[0]
    loss = jnp.where(jnp.isnan(least_pos) | jnp.isnan(most_neg), jnp.nan, loss)
  return loss


# ----------------------------------------------------------------------------------
# Circle


def _circle_terms(detach: bool):
  def terms(b: Block):
    margin, gamma = b.consts
    alpha_p = jax.nn.relu(1.0 + margin - b.s)  # [O_p - s_p]_+, O_p = 1 + m
    alpha_n = jax.nn.relu(b.s + margin)  # [s_n - O_n]_+, O_n = -m
    if detach:
      alpha_p = jax.lax.stop_gradient(alpha_p)
      alpha_n = jax.lax.stop_gradient(alpha_n)
    return [
      (-gamma * alpha_p * (b.s - (1.0 - margin)), b.positive),  # Delta_p = 1 - m
      (gamma * alpha_n * (b.s - margin), b.negative),  # Delta_n = m
      (_engine.ones(b), b.positive),
      (_engine.ones(b), b.negative),
    ]

  return terms


@_batch_loss
def circle_loss(
  rel: pairs.Relation,
  *,
  margin: float = 0.4,
  gamma: float = 80.0,
  similarity: str | distances.DistanceFn = "cosine",
  detach_weights: bool = True,
) -> jax.Array:
  r"""Circle loss with pair-wise labels (Sun et al. 2020), one value per anchor.

  .. math::
    \ell_a = \log\Big(1 + \sum_{j \in N_a} e^{\gamma \alpha_n^j (s_n^j - \Delta_n)}
    \sum_{i \in P_a} e^{-\gamma \alpha_p^i (s_p^i - \Delta_p)}\Big)

  with :math:`s` = ``similarity`` (cosine), :math:`\alpha_p = [1 + m - s_p]_+`,
  :math:`\alpha_n = [s_n + m]_+` (the optima :math:`O_p = 1 + m`, :math:`O_n = -m`),
  :math:`\Delta_p = 1 - m`, :math:`\Delta_n = m`. Computed as the softplus of the sum
  of two log-sum-exps, finite for any :math:`\gamma`. The weights :math:`\alpha` are
  constants in back-propagation, as in the paper (``detach_weights=False``
  differentiates through them). An anchor without a positive or a negative gets 0.

  Defaults are the paper's setting for pair-wise labels (fine-grained retrieval,
  also pytorch-metric-learning's ``CircleLoss()``, whose value is ``losses.mean()``
  over anchors that have both kinds of pair): ``margin=0.4, gamma=80``. Its
  face-recognition setting (class-level labels) is ``margin=0.25, gamma=256``.

  Args:
    {relation}
    margin: the relaxation m >= 0.
    gamma: the scale factor > 0.
    similarity: 'cosine' (default), 'dot' or a callable ``(a, b) -> [n, m]``.
    detach_weights: stop the gradient through alpha_p and alpha_n (paper).

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
  >>> losses = circle_loss(e, jnp.array([0, 0, 1]), margin=0.25, gamma=2.0)
  >>> [round(float(v), 4) for v in losses]
  [0.7288, 1.5805, 0.0]

  References:
    Sun, Cheng, Zhang, Zhang, Zheng, Wang, Wei. Circle Loss: A Unified Perspective of
    Pair Similarity Optimization. CVPR 2020.
  """
  _checks.check_non_negative(margin, "margin")
  _checks.check_positive(gamma, "gamma")
  ((lse_p, lse_n, n_pos, n_neg),) = _engine.pair_statistics(
    rel,
    (Pass(_circle_terms(detach_weights), ("lse", "lse", "sum", "sum")),),
    distances.get_pairwise_similarity(similarity),
    consts=_consts(rel, margin, gamma),
  )
  return jnp.where(_engine.active(n_pos, n_neg), jax.nn.softplus(lse_p + lse_n), 0.0)


# ----------------------------------------------------------------------------------
# Lifted structure


def _lifted_terms(b: Block):
  margin = b.consts
  return [
    (b.s, b.positive),
    (margin - b.s, b.negative),
    (_engine.ones(b), b.positive),
    (_engine.ones(b), b.negative),
  ]


def _song_negative_terms(b: Block):
  return [(b.consts - b.s, b.negative), (_engine.ones(b), b.negative)]


def _song_terms(b: Block):
  """Song et al.'s pair term, given each side's negative log-sum-exp (aux)."""
  low = jnp.finfo(b.s.dtype).min  # a finite stand-in for log(0)
  a_lse, a_has = b.a_aux
  c_lse, c_has = b.c_aux
  a = jnp.where(a_has > 0, a_lse, low)[:, None]
  c = jnp.where(c_has > 0, c_lse, low)[None, :]
  valid = b.positive & ((a_has > 0)[:, None] | (c_has > 0)[None, :])
  j = jnp.where(valid, jnp.logaddexp(a, c) + b.s, 0.0)
  return [(0.5 * jnp.square(jax.nn.relu(j)), valid), (_engine.ones(b), valid)]


@_batch_loss
def lifted_structure_loss(
  rel: pairs.Relation,
  *,
  margin: float | jax.Array = 1.0,
  form: Literal["generalized", "song2016"] = "generalized",
  distance: str | distances.DistanceFn = "euclidean",
) -> jax.Array:
  r"""Lifted structure loss, one value per anchor.

  ``form="generalized"`` (default), Hermans et al. 2017's generalisation:

  .. math::
    \ell_a = \Big[\log \sum_{p \in P_a} e^{D_{ap}} + \log \sum_{q \in N_a}
    e^{m - D_{aq}}\Big]_+

  ``form="song2016"``, Song et al. 2016's smooth loss on each positive pair, which
  also takes the positive's own negatives:

  .. math::
    J_{ap} = \log\Big(\sum_{q \in N_a} e^{m - D_{aq}} + \sum_{q \in N_p}
    e^{m - D_{pq}}\Big) + D_{ap}, \qquad
    \ell_a = \frac{1}{|P_a|} \sum_{p \in P_a} \tfrac12 [J_{ap}]_+^2

  so that the mean of :math:`\ell_a` over anchors is the paper's
  :math:`\frac{1}{2|\hat P|} \sum_{(i,j) \in \hat P} [J_{ij}]_+^2` when every anchor
  has as many positives (m-per-class batches); weight anchors by ``|P_a|`` otherwise.
  The positive's negatives :math:`N_p` are its own row of the negative mask, so this
  form needs the candidates to be the anchors (no ``ref_embeddings``); it takes two
  passes (each row's negative term travels with it as a per-candidate statistic).

  :math:`D` = ``distance`` (Euclidean, not squared, in both papers). Log-sum-exps
  keep it finite for any distance. An anchor without a positive or without a
  negative (in either form: on either side of the pair) gets 0.
  pytorch-metric-learning's ``GeneralizedLiftedStructureLoss(neg_margin=m)`` is the
  generalized form's ``losses.mean()`` (``margin=m``).

  Args:
    {relation}
    margin: m >= 0.
    form: 'generalized' (Hermans et al. 2017) or 'song2016'.
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine' or a callable.

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[0.0, 0.0], [0.5, 0.0], [0.8, 0.0]])
  >>> [round(float(v), 4) for v in lifted_structure_loss(e, jnp.array([0, 0, 1]))]
  [0.7, 1.2, 0.0]

  References:
    Song, Xiang, Jegelka, Savarese. Deep Metric Learning via Lifted Structured Feature
    Embedding. CVPR 2016. Hermans, Beyer, Leibe. In Defense of the Triplet Loss for
    Person Re-Identification. arXiv:1703.07737, 2017.
  """
  _checks.check_non_negative(margin, "margin")
  if form not in ("generalized", "song2016"):
    raise ValueError(f"form must be 'generalized' or 'song2016', got {form!r}.")
  if form == "song2016" and not rel.self_pairs:
    raise ValueError(
      "form='song2016' needs each positive's own negatives, so the candidates must "
      "be the anchors: ref_embeddings is not supported with it."
    )
  sim_fn = distances.get_pairwise_distance(distance)
  (margin,) = _consts(rel, margin)
  if form == "generalized":
    ((lse_p, lse_n, n_pos, n_neg),) = _engine.pair_statistics(
      rel,
      (Pass(_lifted_terms, ("lse", "lse", "sum", "sum")),),
      sim_fn,
      consts=margin,
    )
    return jnp.where(_engine.active(n_pos, n_neg), jax.nn.relu(lse_p + lse_n), 0.0)
  ((lse, has),) = _engine.pair_statistics(
    rel, (Pass(_song_negative_terms, ("lse", "sum")),), sim_fn, consts=margin
  )
  side = (lse, (has > 0).astype(lse.dtype))
  ((total, count),) = _engine.pair_statistics(
    rel,
    (Pass(_song_terms, ("sum", "sum")),),
    sim_fn,
    consts=margin,
    anchor_aux=side,
    candidate_aux=side,
  )
  return _engine.mean(total, count)


# ----------------------------------------------------------------------------------
# Margin loss


def anchor_beta(beta: jax.Array, labels: jax.Array, n: int) -> jax.Array:
  """The boundary of each anchor: the scalar, or the anchor's class entry of [C]."""
  if beta.ndim == 0:
    return jnp.broadcast_to(beta, (n,))
  if labels.ndim != 1:
    raise ValueError(
      f"a per-class beta of shape {tuple(beta.shape)} needs [n] integer labels, got "
      f"labels of shape {tuple(labels.shape)}."
    )
  values = _checks.concrete_value(labels)
  if values is not None and values.size and np.max(values) >= beta.shape[0]:
    raise ValueError(
      f"labels must be < {beta.shape[0]} (one beta per class, beta of shape "
      f"{tuple(beta.shape)}), got a label {int(np.max(values))}."
    )
  # Padding (-1) takes the first entry; it has no pair, so it never contributes.
  return jnp.take(beta, jnp.maximum(labels, 0), mode="clip")


def _margin_terms(b: Block):
  margin = b.consts
  beta = b.a_aux[:, None]
  per_pair = jnp.where(
    b.positive, jax.nn.relu(margin + b.s - beta), jax.nn.relu(margin - b.s + beta)
  )
  valid = b.positive | b.negative
  return [
    (per_pair, valid),
    (_engine.ones(b), valid),
    (_engine.ones(b), b.positive),
    (_engine.ones(b), b.negative),
  ]


@_batch_loss
def margin_loss(
  rel: pairs.Relation,
  beta: jax.Array | float = 1.2,
  *,
  margin: float = 0.2,
  nu: float = 0.0,
  normalize: bool = True,
  distance: str | distances.DistanceFn = "euclidean",
) -> jax.Array:
  r"""Margin loss with a learnable boundary (Wu et al. 2017), one value per anchor.

  .. math::
    \ell_a = \frac{1}{|P_a| + |N_a|} \sum_{j \in P_a \cup N_a}
    \Big( \big[\alpha + y_{aj} (D_{aj} - \beta_{c(a)})\big]_+ + \nu\, \beta_{c(a)}
    \Big), \qquad y_{aj} = +1 \text{ if } j \in P_a, -1 \text{ if } j \in N_a

  with :math:`\alpha` = ``margin`` and :math:`D` the Euclidean distance between
  L2-normalised embeddings, as in the paper (``normalize``, ``distance``). The
  boundary ``beta`` is an array so that it can be learned with the encoder (the paper
  initialises it at 1.2): a scalar :math:`\beta^{(0)}`, or one entry per class [C]
  indexed by the anchor's label (the paper's :math:`\beta^{(class)}`; add
  :math:`\beta^{(0)}` yourself to combine them). The paper's regulariser
  :math:`\nu \beta_{c(a)}` is added to the loss of every pair of the anchor; the
  authors' code adds it once per sampled triplet (two pairs) and divides by the number
  of non-zero pairs, so its ``nu`` is not directly comparable. As in the paper (pairs
  drawn for anchors that have both), an anchor without a positive or a negative gets
  0. Pass distance-weighted sampling's output as ``mask``.

  Args:
    {relation}
    beta: scalar or [C] boundary, >= 0 (a learned parameter; labels must be < C).
    margin: alpha >= 0, the half-width of the band around beta.
    nu: the regularisation weight on beta, >= 0 (default 0, as in
      pytorch-metric-learning and the authors' code).
    normalize: L2-normalise anchors and candidates first (paper).
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine' or a callable.

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[0.0, 0.0], [0.5, 0.0], [0.8, 0.0]])
  >>> losses = margin_loss(e, jnp.array([0, 0, 1]), 0.4, normalize=False)
  >>> [round(float(v), 4) for v in losses]
  [0.15, 0.3, 0.0]

  References:
    Wu, Manmatha, Smola, Krähenbühl. Sampling Matters in Deep Embedding Learning.
    ICCV 2017.
  """
  _checks.check_non_negative(margin, "margin")
  _checks.check_non_negative(nu, "nu")
  beta = _checks.as_float(beta, "beta")
  if beta.ndim > 1:
    raise ValueError(
      f"beta must be a scalar or a [C] vector (one per class), got shape "
      f"{tuple(beta.shape)}."
    )
  _checks.check_non_negative(beta, "beta")
  if normalize:
    rel = rel._replace(
      anchors=distances.l2_normalize(rel.anchors),
      candidates=distances.l2_normalize(rel.candidates),
    )
  dtype = rel.anchors.dtype
  beta_of_anchor = anchor_beta(beta, rel.labels, rel.anchors.shape[0]).astype(dtype)
  ((total, count, n_pos, n_neg),) = _engine.pair_statistics(
    rel,
    (Pass(_margin_terms, ("sum", "sum", "sum", "sum")),),
    distances.get_pairwise_distance(distance),
    consts=jnp.asarray(margin).astype(dtype),
    anchor_aux=beta_of_anchor,
  )
  loss = _engine.mean(total, count) + nu * beta_of_anchor
  return jnp.where(_engine.active(n_pos, n_neg), loss, 0.0)

"""Pair-weighting losses in batch form: every pair of a labelled batch takes part.

In Wang et al. 2019's *general pair weighting* view, these losses differ only in how
they weight the gradient of each positive and negative pair of an anchor: contrastive
(equal weights), multi-similarity, circle, lifted structure and the margin loss.

Each loss is two layers:

* a *formula* (``*_from_distance`` / ``*_from_similarity``): a function of an [n, m]
  distance or similarity matrix and boolean [n, m] positive / negative masks, returning
  [n] per-anchor values; it never looks at labels, devices or padding, and it reduces
  over candidates only through sums, means and log-sum-exps, so a blockwise
  (memory-bounded) version can reuse it;
* the batch-form loss, ``loss(embeddings, labels, *, ...) -> [n]``, which validates the
  arguments and builds the masks with :func:`metriclearn.losses._batch.prepare`
  (``ref_embeddings`` / ``ref_labels``, ``positive_mask``, ``label_comparison``,
  ``mask`` — e.g. a miner's output — and ``axis_name``), then applies the formula.

An anchor with nothing valid gets 0 and a zero gradient. Reduce with
:mod:`metriclearn.reduce`, e.g. ``reduce.mean_over_valid(losses)``.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from metriclearn import _checks, distances, masks, reduce
from metriclearn.losses import _batch
from metriclearn.losses.pair import contrastive_from_distance

# ----------------------------------------------------------------------------------
# Helpers


def _has(mask: jax.Array) -> jax.Array:
  """[n] bool: the anchor has at least one selected candidate."""
  return jnp.any(mask, axis=1)


def _log1p_sum_exp(x: jax.Array, mask: jax.Array) -> jax.Array:
  r"""[n] :math:`\log(1 + \sum_{j \in mask} e^{x_j})` per row: a log-sum-exp with an
  extra 0 term, stable for any ``x``; exactly 0 (zero gradient) on an empty row."""
  has = _has(mask)
  lse = reduce.masked_logsumexp(x, mask, axis=1)
  return jnp.where(has, jax.nn.softplus(jnp.where(has, lse, 0.0)), 0.0)


def _finite_lse(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-row masked log-sum-exp, and whether the row has entries. Empty rows hold 0."""
  has = _has(mask)
  return jnp.where(has, reduce.masked_logsumexp(x, mask, axis=1), 0.0), has


def _batch_distance(batch: _batch.Batch, distance) -> jax.Array:
  return distances.get_pairwise_distance(distance)(batch.anchors, batch.candidates)


# ----------------------------------------------------------------------------------
# Contrastive over all pairs


def contrastive_pair_losses(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
  margin: float = 1.0,
  pos_margin: float = 0.0,
  distance: str | distances.DistanceFn = "euclidean",
  pos_power: float = 2,
  neg_power: float = 2,
  pos_weight: float = 1.0,
  neg_weight: float = 1.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The contrastive loss of every (anchor, candidate) pair, with the pair masks.

  Same arguments as :func:`batch_contrastive_loss`. Use it for reductions over pairs
  rather than anchors (see there).

  Returns:
    ``(losses [n, m], positive [n, m] bool, negative [n, m] bool)``; entries outside
    ``positive | negative`` are not pairs and must be ignored.
  """
  batch = _batch.prepare(
    embeddings,
    labels,
    ref_embeddings=ref_embeddings,
    ref_labels=ref_labels,
    positive_mask=positive_mask,
    label_comparison=label_comparison,
    mask=mask,
    axis_name=axis_name,
  )
  losses = contrastive_from_distance(
    _batch_distance(batch, distance),
    batch.positive,
    margin=margin,
    pos_margin=pos_margin,
    pos_power=pos_power,
    neg_power=neg_power,
    pos_weight=pos_weight,
    neg_weight=neg_weight,
  )
  return losses, batch.positive, batch.negative


def batch_contrastive_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
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

  pytorch-metric-learning's ``ContrastiveLoss`` (``AvgNonZeroReducer``: the mean over
  the positive pairs with a non-zero loss plus the same over the negative pairs, on
  L2-normalised embeddings) is::

    losses, pos, neg = contrastive_pair_losses(
        distances.l2_normalize(e), labels, **CONTRASTIVE_VARIANTS["pml"])
    loss = reduce.mean_over_nonzero(losses, pos) + reduce.mean_over_nonzero(losses, neg)

  Args:
    embeddings: [n, d] anchors.
    labels: [n] integer labels, -1 for padding.
    ref_embeddings, ref_labels: optional [m, d] candidates and their [m] labels.
    positive_mask: optional [n, m] bool relation replacing label equality.
    label_comparison: optional ``f(labels, ref_labels) -> [n, m] bool``.
    mask: optional [n, m] bool (e.g. a miner's output); other pairs take no part.
    axis_name: inside ``pmap`` / ``shard_map``, compare against every device's
      candidates.
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
  losses, pos, neg = contrastive_pair_losses(
    embeddings,
    labels,
    ref_embeddings=ref_embeddings,
    ref_labels=ref_labels,
    positive_mask=positive_mask,
    label_comparison=label_comparison,
    mask=mask,
    axis_name=axis_name,
    margin=margin,
    pos_margin=pos_margin,
    distance=distance,
    pos_power=pos_power,
    neg_power=neg_power,
    pos_weight=pos_weight,
    neg_weight=neg_weight,
  )
  return reduce.masked_mean(losses, pos | neg, axis=1)


# ----------------------------------------------------------------------------------
# Multi-similarity


def multi_similarity_from_similarity(
  sim: jax.Array,
  positive: jax.Array,
  negative: jax.Array,
  *,
  alpha: float = 2.0,
  beta: float = 50.0,
  base: float = 0.5,
) -> jax.Array:
  r"""The multi-similarity formula on an [n, m] similarity matrix (see
  :func:`multi_similarity_loss`); 0 for an anchor without a positive or a negative."""
  pos_term = _log1p_sum_exp(-alpha * (sim - base), positive) / alpha
  neg_term = _log1p_sum_exp(beta * (sim - base), negative) / beta
  valid = _has(positive) & _has(negative)
  return jnp.where(valid, pos_term + neg_term, 0.0)


def multi_similarity_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
  alpha: float = 2.0,
  beta: float = 50.0,
  base: float = 0.5,
  similarity: str | distances.DistanceFn = "cosine",
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

  The paper's pair *mining* step (keep negatives with :math:`S_{aq} > \min_p S_{ap}
  - \epsilon` and positives with :math:`S_{ap} < \max_q S_{aq} + \epsilon`) is a
  separate miner in :mod:`metriclearn.miners`; pass its output as ``mask``.

  Args:
    embeddings: [n, d] anchors.
    labels: [n] integer labels, -1 for padding.
    ref_embeddings, ref_labels, positive_mask, label_comparison, mask, axis_name: as
      in :func:`batch_contrastive_loss`.
    alpha: scale of the positive term, > 0 (paper: 2).
    beta: scale of the negative term, > 0 (paper: 50).
    base: the similarity offset lambda (0.5, as in the authors' code and
      pytorch-metric-learning).
    similarity: 'cosine' (default), 'dot' or a callable ``(a, b) -> [n, m]``.

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
  batch = _batch.prepare(
    embeddings,
    labels,
    ref_embeddings=ref_embeddings,
    ref_labels=ref_labels,
    positive_mask=positive_mask,
    label_comparison=label_comparison,
    mask=mask,
    axis_name=axis_name,
  )
  return multi_similarity_from_similarity(
    _batch.similarity_matrix(batch, similarity),
    batch.positive,
    batch.negative,
    alpha=alpha,
    beta=beta,
    base=base,
  )


# ----------------------------------------------------------------------------------
# Circle


def circle_from_similarity(
  sim: jax.Array,
  positive: jax.Array,
  negative: jax.Array,
  *,
  margin: float = 0.4,
  gamma: float = 80.0,
  detach_weights: bool = True,
) -> jax.Array:
  r"""The circle formula on an [n, m] similarity matrix (see :func:`circle_loss`);
  0 for an anchor without a positive or a negative."""
  alpha_p = jax.nn.relu(1.0 + margin - sim)  # [O_p - s_p]_+, O_p = 1 + m
  alpha_n = jax.nn.relu(sim + margin)  # [s_n - O_n]_+, O_n = -m
  if detach_weights:
    alpha_p = jax.lax.stop_gradient(alpha_p)
    alpha_n = jax.lax.stop_gradient(alpha_n)
  logit_p = -gamma * alpha_p * (sim - (1.0 - margin))  # Delta_p = 1 - m
  logit_n = gamma * alpha_n * (sim - margin)  # Delta_n = m
  lse_p, has_p = _finite_lse(logit_p, positive)
  lse_n, has_n = _finite_lse(logit_n, negative)
  valid = has_p & has_n
  return jnp.where(valid, jax.nn.softplus(lse_p + lse_n), 0.0)


def circle_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
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
  also pytorch-metric-learning's): ``margin=0.4, gamma=80``. Its face-recognition
  setting (class-level labels) is ``margin=0.25, gamma=256``.

  Args:
    embeddings: [n, d] anchors.
    labels: [n] integer labels, -1 for padding.
    ref_embeddings, ref_labels, positive_mask, label_comparison, mask, axis_name: as
      in :func:`batch_contrastive_loss`.
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
  batch = _batch.prepare(
    embeddings,
    labels,
    ref_embeddings=ref_embeddings,
    ref_labels=ref_labels,
    positive_mask=positive_mask,
    label_comparison=label_comparison,
    mask=mask,
    axis_name=axis_name,
  )
  return circle_from_similarity(
    _batch.similarity_matrix(batch, similarity),
    batch.positive,
    batch.negative,
    margin=margin,
    gamma=gamma,
    detach_weights=detach_weights,
  )


# ----------------------------------------------------------------------------------
# Lifted structure


def lifted_structure_from_distance(
  dist: jax.Array,
  positive: jax.Array,
  negative: jax.Array,
  *,
  margin: float = 1.0,
) -> jax.Array:
  r"""Hermans et al.'s generalized lifted structure on an [n, m] distance matrix (see
  :func:`lifted_structure_loss`); 0 for an anchor without a positive or a negative."""
  lse_p, has_p = _finite_lse(dist, positive)
  lse_n, has_n = _finite_lse(margin - dist, negative)
  return jnp.where(has_p & has_n, jax.nn.relu(lse_p + lse_n), 0.0)


def lifted_negative_log_sum_exp(
  dist: jax.Array, negative: jax.Array, *, margin: float = 1.0
) -> tuple[jax.Array, jax.Array]:
  r"""Per anchor :math:`\log \sum_{q \in N_a} e^{m - D_{aq}}` ([n], 0 where there is
  no negative) and whether the anchor has a negative ([n] bool): the anchor's share
  of Song et al.'s lifted structure."""
  return _finite_lse(margin - dist, negative)


def song_lifted_structure_from_distance(
  dist: jax.Array,
  positive: jax.Array,
  anchor_lse: jax.Array,
  anchor_has: jax.Array,
  candidate_lse: jax.Array,
  candidate_has: jax.Array,
) -> jax.Array:
  r"""Song et al.'s lifted structure per anchor, given each side's negative term.

  ``anchor_lse`` / ``anchor_has`` [n] and ``candidate_lse`` / ``candidate_has`` [m]
  come from :func:`lifted_negative_log_sum_exp` of the anchors' rows and of the
  candidates' own rows. Returns the mean over the anchor's valid positive pairs of
  :math:`\tfrac12 [J_{ap}]_+^2`, 0 where there is none.
  """
  low = jnp.finfo(dist.dtype).min  # finite stand-in for log(0)
  a = jnp.where(anchor_has, anchor_lse, low)[:, None]
  b = jnp.where(candidate_has, candidate_lse, low)[None, :]
  valid = positive & (anchor_has[:, None] | candidate_has[None, :])
  j = jnp.where(valid, jnp.logaddexp(a, b) + dist, 0.0)
  return reduce.masked_mean(0.5 * jnp.square(jax.nn.relu(j)), valid, axis=1)


def lifted_structure_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
  margin: float = 1.0,
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
  form needs the candidates to be the anchors (no ``ref_embeddings``); with
  ``axis_name`` each device's terms are gathered.

  :math:`D` = ``distance`` (Euclidean, not squared, in both papers). Log-sum-exps
  keep it finite for any distance. An anchor without a positive or without a
  negative (in either form: on either side of the pair) gets 0.

  Args:
    embeddings: [n, d] anchors.
    labels: [n] integer labels, -1 for padding.
    ref_embeddings, ref_labels, positive_mask, label_comparison, mask, axis_name: as
      in :func:`batch_contrastive_loss`.
    margin: m >= 0 (alpha = 1 in Song et al.).
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
  if form == "song2016" and ref_embeddings is not None:
    raise ValueError(
      "form='song2016' needs each positive's own negatives, so the candidates must "
      "be the anchors: ref_embeddings is not supported with it."
    )
  batch = _batch.prepare(
    embeddings,
    labels,
    ref_embeddings=ref_embeddings,
    ref_labels=ref_labels,
    positive_mask=positive_mask,
    label_comparison=label_comparison,
    mask=mask,
    axis_name=axis_name,
  )
  dist = _batch_distance(batch, distance)
  if form == "generalized":
    return lifted_structure_from_distance(
      dist, batch.positive, batch.negative, margin=margin
    )
  lse, has = lifted_negative_log_sum_exp(dist, batch.negative, margin=margin)
  return song_lifted_structure_from_distance(
    dist,
    batch.positive,
    lse,
    has,
    _batch.gather(lse, axis_name),
    _batch.gather(has, axis_name),
  )


# ----------------------------------------------------------------------------------
# Margin loss


def margin_from_distance(
  dist: jax.Array,
  positive: jax.Array,
  negative: jax.Array,
  beta: jax.Array,
  *,
  margin: float = 0.2,
  nu: float = 0.0,
) -> jax.Array:
  r"""The margin-loss formula on an [n, m] distance matrix with a per-anchor boundary
  ``beta`` [n] (see :func:`margin_loss`); 0 for an anchor without a positive or a
  negative."""
  b = beta[:, None]
  pair = jnp.where(
    positive, jax.nn.relu(margin + dist - b), jax.nn.relu(margin - dist + b)
  )
  valid = _has(positive) & _has(negative)
  per_anchor = reduce.masked_mean(pair, positive | negative, axis=1) + nu * beta
  return jnp.where(valid, per_anchor, 0.0)


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


def margin_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  beta: jax.Array | float = 1.2,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
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
  of non-zero pairs, so its ``nu`` is not directly comparable.
  As in the paper (pairs drawn for anchors that have both), an anchor without a
  positive or a negative gets 0. Pass distance-weighted sampling's output as ``mask``.

  Args:
    embeddings: [n, d] anchors.
    labels: [n] integer labels, -1 for padding (< C with a per-class beta).
    beta: scalar or [C] boundary, >= 0 (a learned parameter).
    ref_embeddings, ref_labels, positive_mask, label_comparison, mask, axis_name: as
      in :func:`batch_contrastive_loss`.
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
  batch = _batch.prepare(
    embeddings,
    labels,
    ref_embeddings=ref_embeddings,
    ref_labels=ref_labels,
    positive_mask=positive_mask,
    label_comparison=label_comparison,
    mask=mask,
    axis_name=axis_name,
  )
  anchors, candidates = batch.anchors, batch.candidates
  if normalize:
    anchors, candidates = (
      distances.l2_normalize(anchors),
      distances.l2_normalize(candidates),
    )
  dist = distances.get_pairwise_distance(distance)(anchors, candidates)
  beta_of_anchor = anchor_beta(beta, batch.anchor_labels, anchors.shape[0])
  return margin_from_distance(
    dist,
    batch.positive,
    batch.negative,
    beta_of_anchor.astype(dist.dtype),
    margin=margin,
    nu=nu,
  )

"""Softmax and cross-entropy batch losses: N-pair, NT-Xent / InfoNCE, SupCon, soft
nearest neighbour, and the sigmoid (SigLIP) pairwise loss.

Every loss is in batch form, ``loss(embeddings [n, d], labels [n], ...) -> [n]``, one
value per anchor, 0 where the anchor has nothing valid (see :mod:`metriclearn.pairs`
for ``ref_embeddings``, ``positive_mask``, ``label_comparison``, ``mask`` and
``axis_name``). Each is written once, as the passes of :mod:`metriclearn.losses`'s
engine and their per-anchor combination, and runs dense (``block_size=None``) or
blockwise (``block_size=`` an int, ``ring=True`` across devices) with the same values
and gradients. Sums of exponentials are log-sum-exps with a running maximum, so the
losses stay finite for any embedding norm.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from metriclearn import _checks, distances, pairs
from metriclearn.losses import _engine
from metriclearn.losses._engine import Block, Pass

__all__ = [
  "infonce_loss",
  "npair_loss",
  "ntxent_loss",
  "sigmoid_pairwise_loss",
  "soft_nearest_neighbor_loss",
  "supcon_loss",
]

_batch_loss = pairs.batch_form(executor=True)


def _similarity(rel: pairs.Relation, similarity) -> tuple[Any, Any]:
  return distances.get_pairwise_similarity(similarity), rel.anchors.dtype


# ----------------------------------------------------------------------------------
# NT-Xent / InfoNCE


def _ntxent_negatives(b: Block):
  logits = b.s / b.params
  return [(logits, b.negative), (_engine.ones(b), b.negative)]


def _ntxent_positives(b: Block):
  neg_lse, neg_count = b.prev
  pos = b.positive & (neg_count > 0)[:, None]
  x = neg_lse[:, None] - b.s / b.params
  # -log(e^a / (e^a + e^B)) = softplus(B - a), written so that its derivative reuses
  # exp(-|x|)
  per_pair = jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))
  return [(per_pair, pos), (_engine.ones(b), pos)]


_NTXENT = (
  Pass(_ntxent_negatives, ("lse", "sum")),
  Pass(_ntxent_positives, ("sum", "sum"), prev_grad=(0,), positive_only=True),
)


@_batch_loss
def ntxent_loss(
  rel: pairs.Relation,
  *,
  temperature: float | jax.Array = 0.1,
  similarity: str | distances.DistanceFn = "cosine",
) -> jax.Array:
  r"""NT-Xent / InfoNCE with any number of positives per anchor.

  Each positive pair is classified against the anchor's negatives only, and the
  anchor's loss is the mean over its positives:

  .. math::
    \ell_i = -\frac{1}{|P_i|} \sum_{p \in P_i}
      \log \frac{e^{s_{ip}/\tau}}{e^{s_{ip}/\tau} + \sum_{q \in N_i} e^{s_{iq}/\tau}}

  with :math:`s` = ``similarity`` (cosine by default), :math:`\tau` = ``temperature``,
  :math:`P_i`, :math:`N_i` the anchor's positive and negative candidates. With one
  positive per anchor (SimCLR's 2N views, labels = the image index) this is SimCLR's
  NT-Xent exactly and ``losses.mean()`` is its loss. An anchor without a positive or
  without a negative gets 0. Blockwise, two sweeps: each anchor's negative
  log-sum-exp, then its positive pairs.

  pytorch-metric-learning's ``NTXentLoss(temperature=t)`` averages over positive
  pairs instead of anchors: ``sum(losses * n_pos) / sum(n_pos)`` with ``n_pos`` the
  anchors' positive counts gives its value (``temperature=t``, cosine).

  Args:
    {relation}
    temperature: :math:`\tau > 0`, a number or a scalar array (may be learned; a
      traced value is not checked). Default 0.1, SimCLR's ImageNet setting (CIFAR-10:
      0.5; MoCo and pytorch-metric-learning: 0.07).
    similarity: 'cosine' (default, SimCLR's normalized embeddings), 'dot', or a
      callable ``(a [n, d], b [m, d]) -> [n, m]``.

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  >>> ntxent_loss(e, jnp.array([0, 0, 1]), temperature=1.0)  # log(1 + e^-1)
  Array([0.31326..., 0.31326..., 0.        ], dtype=float32)
  >>> ntxent_loss(e, jnp.array([0, 0, 1]), temperature=1.0, block_size=2)
  Array([0.31326..., 0.31326..., 0.        ], dtype=float32)

  References:
    Chen, Kornblith, Norouzi, Hinton. A Simple Framework for Contrastive Learning of
    Visual Representations. ICML 2020. van den Oord, Li, Vinyals. Representation
    Learning with Contrastive Predictive Coding. arXiv:1807.03748, 2018.
  """
  sim_fn, dtype = _similarity(rel, similarity)
  tau = _checks.scalar(temperature, "temperature", dtype, positive=True)
  _, (total, count) = _engine.pair_statistics(rel, _NTXENT, sim_fn, params=tau)
  return _engine.mean(total, count)


infonce_loss = ntxent_loss


# ----------------------------------------------------------------------------------
# SupCon and the soft nearest neighbour loss: a log-sum-exp over every valid pair.


def _all_pairs_terms(sign: float):
  """Logits ``sign * s / t`` over every valid pair and over the positives, and the
  pair counts: SupCon (similarities, sign 1) and the soft nearest neighbour loss
  (distances, sign -1)."""

  def terms(b: Block):
    logits = sign * b.s / b.params
    return [
      (logits, b.positive | b.negative),
      (logits, b.positive),
      (_engine.ones(b), b.positive),
      (_engine.ones(b), b.negative),
    ]

  return terms


@_batch_loss
def supcon_loss(
  rel: pairs.Relation,
  *,
  temperature: float | jax.Array = 0.1,
  similarity: str | distances.DistanceFn = "cosine",
) -> jax.Array:
  r"""Supervised contrastive loss (SupCon, the :math:`\mathcal{L}^{sup}_{out}` form).

  .. math::
    \ell_i = -\frac{1}{|P_i|} \sum_{p \in P_i}
      \log \frac{e^{s_{ip}/\tau}}{\sum_{a \in P_i \cup N_i} e^{s_{ia}/\tau}}
    = \log \sum_{a \in P_i \cup N_i} e^{s_{ia}/\tau}
      - \frac{1}{|P_i|} \sum_{p \in P_i} s_{ip}/\tau

  The denominator runs over every valid candidate other than the anchor itself
  (positives included, unlike :func:`ntxent_loss`). An anchor without a positive or
  without a negative gets 0: with positives only the formula (at least
  :math:`\log |P_i|`) has no contrast in it. The paper's loss is ``losses.sum() / n``
  over the 2N augmented views (the official code averages over all anchors, those
  without a positive counting 0). pytorch-metric-learning's ``SupConLoss(temperature=
  t)`` is ``losses.mean()`` over anchors that have a positive and a negative, with
  ``temperature=t``.

  Args:
    {relation}
    temperature: :math:`\tau > 0`, a number or a scalar array (a traced value is not
      checked). Default 0.1, the paper's value (its code's class default is 0.07).
    similarity: 'cosine' (default: the paper normalizes the projections), 'dot', or a
      callable.

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  >>> supcon_loss(e, jnp.array([0, 0, 1]), temperature=1.0)  # log(1 + e^-1)
  Array([0.31326..., 0.31326..., 0.        ], dtype=float32)

  References:
    Khosla et al. Supervised Contrastive Learning. NeurIPS 2020.
  """
  sim_fn, dtype = _similarity(rel, similarity)
  tau = _checks.scalar(temperature, "temperature", dtype, positive=True)
  ((lse, pos_sum, n_pos, n_neg),) = _engine.pair_statistics(
    rel,
    (Pass(_all_pairs_terms(1.0), ("lse", "sum", "sum", "sum")),),
    sim_fn,
    params=tau,
  )
  return jnp.where(
    _engine.active(n_pos, n_neg), lse - _engine.mean(pos_sum, n_pos), 0.0
  )


@_batch_loss
def soft_nearest_neighbor_loss(
  rel: pairs.Relation,
  *,
  temperature: float | jax.Array = 1.0,
  distance: str | distances.DistanceFn = "squared_euclidean",
) -> jax.Array:
  r"""Soft nearest neighbour loss: how entangled the classes are at a temperature.

  .. math::
    \ell_i = -\log \frac{\sum_{p \in P_i} e^{-D_{ip}/T}}
      {\sum_{a \in P_i \cup N_i} e^{-D_{ia}/T}}

  with :math:`D` = ``distance`` (squared Euclidean, as in the paper) and :math:`T` =
  ``temperature``. The paper's loss is ``losses.mean()`` over the batch. An anchor
  without a positive (where the paper's term is infinite) or without a negative (where
  it is 0) gets 0.

  Args:
    {relation}
    temperature: :math:`T > 0`, a number or a scalar array (the paper optimizes it;
      pass ``jnp.exp(log_t)`` to learn it; a traced value is not checked). Default 1.
    distance: 'squared_euclidean' (default), 'euclidean', 'cosine', or a callable.

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  >>> soft_nearest_neighbor_loss(e, jnp.array([0, 0, 1]))  # log(1 + e^-2)
  Array([0.12692..., 0.12692..., 0.        ], dtype=float32)

  References:
    Frosst, Papernot, Hinton. Analyzing and Improving Representations with the Soft
    Nearest Neighbor Loss. ICML 2019.
  """
  t = _checks.scalar(temperature, "temperature", rel.anchors.dtype, positive=True)
  ((lse_all, lse_pos, n_pos, n_neg),) = _engine.pair_statistics(
    rel,
    (Pass(_all_pairs_terms(-1.0), ("lse", "lse", "sum", "sum")),),
    distances.get_pairwise_distance(distance),
    params=t,
  )
  return jnp.where(_engine.active(n_pos, n_neg), lse_all - lse_pos, 0.0)


# ----------------------------------------------------------------------------------
# Sigmoid (SigLIP): every pair an independent binary decision.


def _sigmoid_terms(b: Block):
  scale, bias = b.params
  logits = scale * b.s + bias
  per_pair = jax.nn.softplus(jnp.where(b.positive, -logits, logits))
  return [(per_pair, b.positive | b.negative)]


@_batch_loss
def sigmoid_pairwise_loss(
  rel: pairs.Relation,
  scale: jax.Array,
  bias: jax.Array,
  *,
  similarity: str | distances.DistanceFn = "cosine",
) -> jax.Array:
  r"""Sigmoid pairwise loss (SigLIP), every pair an independent binary decision.

  .. math::
    \ell_i = -\sum_{j \in P_i \cup N_i} \log \sigma\big(z_{ij} (t\, s_{ij} + b)\big),
    \qquad z_{ij} = +1 \text{ for } j \in P_i, \; -1 \text{ for } j \in N_i

  with :math:`s` = ``similarity`` (cosine), :math:`t` = ``scale`` and :math:`b` =
  ``bias``. Unlike the softmax losses, an anchor with negatives only (or positives
  only) still has a loss: every valid pair is a labelled example; only anchors
  without any valid candidate get 0. SigLIP's loss, normalized by the batch size, is
  ``losses.mean()`` when every anchor is real (with padding rows: ``losses.sum()``
  over the number of real anchors). SigLIP compares images (``embeddings``) with texts
  (``ref_embeddings``), labels ``arange(n)`` for both.

  Args:
    {relation}
    scale: scalar :math:`t > 0`, learned as ``t = exp(t')`` with :math:`t'`
      initialised to :math:`\log 10` (the paper calls it the temperature; it
      multiplies).
    bias: scalar :math:`b`, learned, initialised to -10 in the paper.
    similarity: 'cosine' (default, the paper's normalized embeddings), 'dot', or a
      callable.

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  >>> # anchor 0: log(1 + e^-1) + log(1 + e^0); anchor 2: 2 log 2
  >>> sigmoid_pairwise_loss(e, jnp.array([0, 0, 1]), 1.0, 0.0)
  Array([1.00640..., 1.00640..., 1.38629...], dtype=float32)

  References:
    Zhai, Mustafa, Kolesnikov, Beyer. Sigmoid Loss for Language Image Pre-Training.
    ICCV 2023.
  """
  sim_fn, dtype = _similarity(rel, similarity)
  params = (
    _checks.scalar(scale, "scale", dtype, positive=True),
    _checks.scalar(bias, "bias", dtype),
  )
  ((total,),) = _engine.pair_statistics(
    rel, (Pass(_sigmoid_terms, ("sum",)),), sim_fn, params=params
  )
  return total


# ----------------------------------------------------------------------------------
# N-pair: one (anchor, positive) pair per class, then a softmax over the pairs.


def _first_positive_terms(b: Block):
  return [(jnp.broadcast_to(b.c_index.astype(b.s.dtype), b.s.shape), b.positive)]


def _earlier_with_positive_terms(b: Block):
  earlier = (b.c_index[None, :] < b.a_index[:, None]) & (b.c_aux > 0)[None, :]
  return [(_engine.ones(b), b.positive & earlier)]


def _npair_terms(b: Block):
  first, used = b.a_aux
  picked, c_sq = b.c_aux
  used = (used > 0)[:, None]
  pair_pos = (b.c_index.astype(b.s.dtype)[None, :] == first[:, None]) & used
  pair_neg = b.negative & (picked > 0)[None, :] & used
  return [
    (b.s, pair_pos),
    (b.s, pair_neg),
    (_engine.ones(b), pair_neg),
    (jnp.broadcast_to(c_sq[None, :], b.s.shape), pair_pos),
    (_engine.ones(b), pair_pos),
  ]


def _npair_selection(rel: pairs.Relation) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Each anchor's first positive candidate (global index), whether the anchor is
  used (the first of its class to have a positive), and the candidates that are some
  used anchor's pick (this device's [m])."""
  idx = _engine.index_dtype()
  axis_name = rel.axis_name
  n, m = rel.anchors.shape[0], rel.candidates.shape[0]
  dtype = rel.anchors.dtype
  frozen = rel._replace(
    anchors=jax.lax.stop_gradient(rel.anchors),
    candidates=jax.lax.stop_gradient(rel.candidates),
  )
  ((first,),) = _engine.pair_statistics(
    frozen, (Pass(_first_positive_terms, ("min",)),), _engine.no_similarity
  )
  has_pos = first < jnp.inf
  first = jnp.where(has_pos, first, 0.0)
  me = 0 if axis_name is None else jax.lax.axis_index(axis_name).astype(idx)
  anchor_index = me * n + jnp.arange(n, dtype=idx)
  if rel.positive_mask is None:  # the first anchor of each class (with a positive)
    among_anchors = frozen._replace(
      candidates=frozen.anchors,
      ref_labels=rel.labels,
      self_pairs=True,
      mask=None,
    )
    ((earlier,),) = _engine.pair_statistics(
      among_anchors,
      (Pass(_earlier_with_positive_terms, ("max",)),),
      _engine.no_similarity,
      candidate_aux=has_pos.astype(dtype),
    )
    used = has_pos & ~(earlier > 0)
  else:  # j is of i's class when j's pick is a positive of i (or i itself)
    p = pairs.dense(rel)
    first_all = pairs.gather(first, axis_name).astype(idx)
    has_all = pairs.gather(has_pos, axis_name)
    same = jnp.take(p.positive, first_all, axis=1)
    if rel.self_pairs:
      same |= first_all[None, :] == anchor_index[:, None]
    rank = jnp.arange(first_all.shape[0], dtype=idx)
    earlier = rank[None, :] < anchor_index[:, None]
    used = has_pos & ~jnp.any(same & earlier & has_all[None, :], axis=1)
  first_all = pairs.gather(first, axis_name).astype(idx)
  used_all = pairs.gather(used, axis_name)
  m_all = m * (1 if axis_name is None else jax.lax.axis_size(axis_name))
  picked = (
    jnp.zeros((m_all,), bool)
    .at[jnp.where(used_all, first_all, m_all)]
    .set(True, mode="drop")
  )
  if axis_name is not None:
    picked = jax.lax.dynamic_slice_in_dim(picked, me * m, m)
  return first, used, picked


@_batch_loss
def npair_loss(
  rel: pairs.Relation,
  *,
  l2_reg: float = 0.002,
  similarity: str | distances.DistanceFn = "dot",
) -> jax.Array:
  r"""Multi-class N-pair loss, with the N pairs taken from a labelled batch.

  For each used anchor :math:`i` with its pair positive :math:`p_i`, and the pair
  positives :math:`p_j` of the other classes as negatives:

  .. math::
    \ell_i = \log\Big(1 + \sum_{j \ne i} e^{s(x_i, x_{p_j}) - s(x_i, x_{p_i})}\Big)
      + \frac{\lambda}{4} \big(\|x_i\|^2 + \|x_{p_i}\|^2\big)

  with :math:`s` = ``similarity`` (the inner product, as in the paper) and
  :math:`\lambda` = ``l2_reg``. The selection is pytorch-metric-learning's
  ``NPairsLoss``: of each class, only the first anchor (in the order of the global
  batch) that has a positive is used, paired with its first positive candidate; its
  negatives are the pairs' positives of the other used anchors that are its
  negatives. With an explicit ``positive_mask``, anchor ``j`` counts as of ``i``'s
  class when ``j``'s pick is a positive of ``i`` (or ``i`` itself); that relation is
  built dense ([n, M]). A batch built as in the paper (labels ``[0, 0, 1, 1, ...]``)
  gives the paper's loss as ``losses.sum()`` over the number of used anchors;
  ``l2_reg=0`` with that reduction is PML's ``NPairsLoss()``. Negatives respect
  ``mask``; unused anchors, and anchors whose pair has no negative, get 0 (the penalty
  included).

  Args:
    {relation}
    l2_reg: :math:`\lambda \ge 0`, the paper's L2 regularization of the embedding
      vectors, with the weight 0.002 and the 1/4 factor of TensorFlow's
      ``npairs_loss`` (so the mean over used anchors is that function's value).
    similarity: 'dot' (default), 'cosine', or a callable.

  Returns:
    [n] per-anchor losses, nonzero only for the one used anchor of each class.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
  >>> # anchor 0: log(1 + e^(0-1)); anchor 2: log(1 + e^(0-2))
  >>> npair_loss(e, jnp.array([0, 0, 1, 1]), l2_reg=0.0)
  Array([0.31326..., 0.        , 0.12692..., 0.        ], dtype=float32)

  References:
    Sohn. Improved Deep Metric Learning with Multi-class N-pair Loss Objective.
    NeurIPS 2016.
  """
  _checks.check_non_negative(l2_reg, "l2_reg")
  first, used, picked = _npair_selection(rel)
  dtype = rel.anchors.dtype
  c_sq = jnp.sum(jnp.square(rel.candidates), axis=1)
  ((pos_logit, neg_lse, n_neg, pick_sq, n_pair),) = _engine.pair_statistics(
    rel,
    (Pass(_npair_terms, ("sum", "lse", "sum", "sum", "sum")),),
    distances.get_pairwise_similarity(similarity),
    anchor_aux=(first, used.astype(dtype)),
    candidate_aux=(picked.astype(dtype), c_sq),
  )
  loss = jax.nn.softplus(neg_lse - pos_logit)
  if l2_reg:
    a_sq = jnp.sum(jnp.square(rel.anchors), axis=1)
    loss = loss + 0.25 * l2_reg * (a_sq + pick_sq)
  return jnp.where(_engine.active(n_pair, n_neg), loss, 0.0)

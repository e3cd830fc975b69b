"""Softmax and cross-entropy batch losses: N-pair, NT-Xent / InfoNCE, SupCon and its
multi-label form, decoupled contrastive (DCL, DCLW), the instance loss, soft nearest
neighbour, and the sigmoid (SigLIP) pairwise loss.

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

import functools
import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metriclearn import _checks, distances, pairs
from metriclearn.losses import _engine, _slots
from metriclearn.losses._engine import Block, Pass

__all__ = [
  "decoupled_contrastive_loss",
  "infonce_loss",
  "instance_loss",
  "multi_supcon_loss",
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


def _npair_pairs(rel: pairs.Relation) -> tuple[pairs.Relation, jax.Array]:
  """For a relation of label equality alone: the used anchors and their picks as a
  relation of K x K pairs (pair j: used anchor j and its first positive, K the most
  used anchors there can be, padding past the last), and where each used anchor is
  in the batch. From sorts of the labels: O(n log n), no pass over the n x m pairs.

  K = n // 2 when the candidates are the anchors (a used anchor's class has two
  members), else min(n, m).
  """
  idx = _engine.index_dtype()
  n, m = rel.anchors.shape[0], rel.candidates.shape[0]
  slot, n_pos, _ = _slots.sorted_slots(rel, 1)
  order = jnp.argsort(rel.labels, stable=True)
  ordered = rel.labels[order]
  leads = jnp.concatenate([jnp.ones((1,), bool), ordered[1:] != ordered[:-1]])
  first_of_class = jnp.zeros((n,), bool).at[order].set(leads)
  used = first_of_class & (n_pos > 0)
  size = max(1, n // 2 if rel.self_pairs else min(n, m))
  (at,) = jnp.nonzero(used, size=size, fill_value=n)
  real = at < n
  at = jnp.minimum(at, n - 1)
  pick = jnp.where(real, slot[at, 0], 0.0).astype(idx)
  keep = real[:, None]
  compact = rel._replace(
    anchors=jnp.where(keep, rel.anchors[at], 0.0),
    candidates=jnp.where(keep, rel.candidates[pick], 0.0),
    labels=jnp.where(real, rel.labels[at], -1),
    ref_labels=jnp.where(real, rel.ref_labels[pick], -1),
    self_pairs=False,
  )
  return compact, jnp.where(real, at, n)


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
  m_all = _slots.candidates(rel)
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

  Cost: on labels alone (no ``positive_mask``, ``label_comparison``, ``mask`` or
  ``axis_name``) the pairs are found by sorting the labels and only they are compared,
  a K x K problem with K = n // 2 (min(n, m) with ``ref_embeddings``), the most used
  anchors there can be; otherwise the selection and the loss are passes over the
  n x m pairs.

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
  dtype, n = rel.anchors.dtype, rel.anchors.shape[0]
  at = None
  if _slots.plain(rel):  # the K x K pairs alone, as pytorch-metric-learning
    rel, at = _npair_pairs(rel)
    real = (rel.labels >= 0).astype(dtype)
    first, used, picked = jnp.arange(rel.labels.shape[0], dtype=dtype), real, real
  else:
    first, used, picked = _npair_selection(rel)
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
  loss = jnp.where(_engine.active(n_pair, n_neg), loss, 0.0)
  if at is None:
    return loss
  return jnp.zeros((n,), dtype).at[at].set(loss, mode="drop")


# ----------------------------------------------------------------------------------
# Instance loss: every item its own class, the batch's embeddings as the classifier.


def _self_similarity(rel: pairs.Relation, sim_fn) -> jax.Array:
  """[n] ``s(x_i, x_i)``: each anchor against itself (1 for cosine, ``|x|^2`` for
  the inner product)."""
  return jax.vmap(lambda a: sim_fn(a[None], a[None])[0, 0])(rel.anchors)


@_batch_loss
def instance_loss(
  rel: pairs.Relation,
  *,
  scale: float | jax.Array = 64.0,
  similarity: str | distances.DistanceFn = "cosine",
) -> jax.Array:
  r"""Instance loss: a softmax classification in which every item is its own class.

  The paper classifies each image (and its caption) into its own instance class with
  a learned classifier shared by both modalities. In a batch, the classifier's rows
  are the batch's own embeddings: anchor :math:`i`'s class is represented by itself
  and by its positives :math:`P_i` (other views of the same instance: same label),
  every negative is another class, and

  .. math::
    \ell_i = -\log \frac{e^{\gamma s_{ii}} + \sum_{p \in P_i} e^{\gamma s_{ip}}}
      {e^{\gamma s_{ii}} + \sum_{j \in P_i \cup N_i} e^{\gamma s_{ij}}}

  with :math:`s` = ``similarity`` (cosine, so :math:`s_{ii} = 1`) and
  :math:`\gamma` = ``scale``. With ``ref_embeddings`` (e.g. the captions, labels the
  instance ids) the anchor itself is not a candidate and the :math:`s_{ii}` terms
  drop out: the image-to-text softmax over the batch's instances (an anchor without
  a positive there gets 0). An anchor without a negative gets 0. With labels all
  distinct (one view per instance) it is pytorch-metric-learning's
  ``InstanceLoss(gamma=g)`` (labels None): ``instance_loss(e, jnp.arange(n),
  scale=g).mean()``, its AvgNonZeroReducer (every value is positive), up to the 1e-6
  it adds to the norms. Its labelled form takes the label's rank as the target
  column, which is this loss only for distinct, increasing labels.

  Args:
    {relation}
    scale: :math:`\gamma > 0`, a number or a scalar array (a traced value is not
      checked). Default 64, pytorch-metric-learning's.
    similarity: 'cosine' (default), 'dot', or a callable.

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  >>> # scale 1, every item its own class; anchor 0: -log(e / (e + e^1 + e^0)) =
  >>> # log(2 + e^-1); anchor 2: -log(e / (e + 2 e^0)) = log(1 + 2 e^-1)
  >>> instance_loss(e, jnp.array([0, 1, 2]), scale=1.0)
  Array([0.86199..., 0.86199..., 0.55144...], dtype=float32)

  References:
    Zheng, Zheng, Garrett, Yang, Xu, Shen. Dual-Path Convolutional Image-Text
    Embeddings with Instance Loss. ACM TOMM 2020.
  """
  sim_fn, dtype = _similarity(rel, similarity)
  gamma = _checks.scalar(scale, "scale", dtype, positive=True)
  ((lse_all, lse_pos, n_pos, n_neg),) = _engine.pair_statistics(
    rel,
    (Pass(_all_pairs_terms(1.0), ("lse", "lse", "sum", "sum")),),
    sim_fn,
    params=1.0 / gamma,
  )
  if not rel.self_pairs:
    return jnp.where(_engine.active(n_pos, n_neg), lse_all - lse_pos, 0.0)
  own = gamma * _self_similarity(rel, sim_fn)
  numerator = jnp.where(n_pos > 0, jnp.logaddexp(own, lse_pos), own)
  return jnp.where(n_neg > 0, jnp.logaddexp(own, lse_all) - numerator, 0.0)


# ----------------------------------------------------------------------------------
# Decoupled contrastive learning: NT-Xent without the positive in the denominator.

_WEIGHTINGS = (None, "dclw")


def _dcl_terms(b: Block):
  tau, sigma = b.params[:2]
  return [
    (b.s / tau, b.negative),
    (_engine.ones(b), b.negative),
    (b.s / tau, b.positive),
    (_engine.ones(b), b.positive),
    (b.s / sigma, b.positive),
  ]


def _dclw_terms(b: Block):
  tau, sigma = b.params
  weight = 2.0 - jnp.exp(b.s / sigma - b.a_aux[:, None])
  return [(weight * b.s / tau, b.positive)]


def _log_mean_exp(lse: jax.Array, count: jax.Array, axis_name: str | None):
  r""":math:`\log` of the mean of :math:`e^x` over every pair summed in the per-anchor
  log-sum-exps ``lse`` (``count`` pairs each), over the devices of ``axis_name``."""
  has = count > 0
  peak = jax.lax.stop_gradient(jnp.max(jnp.where(has, lse, -jnp.inf)))
  if axis_name is not None:
    peak = jax.lax.pmax(peak, axis_name)
  peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
  total = jnp.sum(jnp.where(has, jnp.exp(jnp.where(has, lse, peak) - peak), 0.0))
  pairs_ = jnp.sum(count)
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)
    pairs_ = jax.lax.psum(pairs_, axis_name)
  ok = pairs_ > 0
  return jnp.where(
    ok, jnp.log(jnp.where(ok, total, 1.0)) + peak - jnp.log(jnp.maximum(pairs_, 1.0)), 0
  )


@_batch_loss
def decoupled_contrastive_loss(
  rel: pairs.Relation,
  *,
  temperature: float | jax.Array = 0.1,
  weighting: str | None = None,
  sigma: float | jax.Array = 0.5,
  similarity: str | distances.DistanceFn = "cosine",
) -> jax.Array:
  r"""Decoupled contrastive loss (DCL, and the weighted DCLW): NT-Xent without the
  positive in the denominator.

  .. math::
    \ell_i = \frac{1}{|P_i|} \sum_{p \in P_i} -w_{ip}\, s_{ip}/\tau
      + \log \sum_{q \in N_i} e^{s_{iq}/\tau}

  with :math:`s` = ``similarity`` (cosine), :math:`\tau` = ``temperature`` and
  :math:`w_{ip} = 1` (DCL, ``weighting=None``) or, with ``weighting='dclw'``,

  .. math::
    w_{ip} = 2 - \frac{e^{s_{ip}/\sigma}}{\mathbb{E}\big[e^{s/\sigma}\big]},

  the expectation over every positive pair of the batch (of every device with
  ``axis_name``), :math:`\sigma` = ``sigma``: easy positives (already similar) weigh
  less. Dropping the positive from the denominator removes the negative-positive
  coupling that makes NT-Xent's gradient vanish for small batches; the loss may be
  negative. SimCLR's batch of 2N views (labels the image index) gives the paper's
  loss: the authors' ``DCL(temperature=t)(z1, z2) + DCL(...)(z2, z1)`` (and ``DCLW(
  sigma, temperature)`` likewise) is ``2 * losses.mean()`` over the 2N rows. The
  weights are differentiated, as in the authors' code. An anchor without a positive
  or without a negative gets 0. Blockwise, DCLW sweeps twice (the batch mean of the
  positives' exponentials first).

  Args:
    {relation}
    temperature: :math:`\tau > 0`, a number or a scalar array (a traced value is not
      checked). Default 0.1, the authors'.
    weighting: None (DCL) or 'dclw' (the von Mises-Fisher weighting of DCLW).
    sigma: :math:`\sigma > 0`, DCLW's weighting temperature (0.5, the authors').
    similarity: 'cosine' (default), 'dot', or a callable.

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  >>> # anchor 0: positive at cos 1, negatives at cos 0 and -1, tau 1:
  >>> # -1 + log(e^0 + e^-1) = -0.68673...
  >>> decoupled_contrastive_loss(e, jnp.array([0, 0, 1, 2]), temperature=1.0)[0]
  Array(-0.68673..., dtype=float32)

  References:
    Yeh, Hong, Hsu, Liu, Chen, LeCun. Decoupled Contrastive Learning. ECCV 2022.
  """
  if weighting not in _WEIGHTINGS:
    raise ValueError(f"weighting must be None or 'dclw', got {weighting!r}.")
  sim_fn, dtype = _similarity(rel, similarity)
  tau = _checks.scalar(temperature, "temperature", dtype, positive=True)
  sig = _checks.scalar(sigma, "sigma", dtype, positive=True)
  ((neg_lse, n_neg, pos_sum, n_pos, pos_lse),) = _engine.pair_statistics(
    rel,
    (Pass(_dcl_terms, ("lse", "sum", "sum", "sum", "lse")),),
    sim_fn,
    params=(tau, sig),
  )
  if weighting == "dclw":
    # The batch mean, one copy per anchor: a per-device array (inside shard_map
    # its gradient is summed over the devices where it is broadcast).
    log_mean = _log_mean_exp(pos_lse, n_pos, rel.axis_name) + jnp.zeros_like(pos_lse)
    ((pos_sum,),) = _engine.pair_statistics(
      rel,
      (Pass(_dclw_terms, ("sum",), positive_only=True),),
      sim_fn,
      params=(tau, sig),
      anchor_aux=log_mean,
    )
  return jnp.where(
    _engine.active(n_pos, n_neg), neg_lse - _engine.mean(pos_sum, n_pos), 0.0
  )


# ----------------------------------------------------------------------------------
# SupCon for multi-label batches: positives weighted by the overlap of label sets.


def _label_sets(labels, rows: int, name: str) -> jax.Array:
  """Integer labels [n] (each a one-label set), or multi-hot label sets [n, C] (bool
  or 0/1; a row of -1 is padding), checked."""
  labels = jnp.asarray(labels)
  if labels.ndim == 1:
    return _checks.check_labels(labels, rows, name)
  if labels.ndim != 2 or labels.shape[0] != rows:
    raise ValueError(
      f"{name} must be [{rows}] integer labels or [{rows}, C] multi-hot label sets "
      f"to match the embeddings, got shape {tuple(labels.shape)}."
    )
  if labels.dtype == jnp.bool_:
    return labels.astype(jnp.int32)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"{name} must be bool or integers (0/1), got {labels.dtype}.")
  value = _checks.concrete_value(labels)
  if value is not None:
    pad = np.all(value == -1, axis=1)
    if not np.all(pad[:, None] | (value == 0) | (value == 1)):
      raise ValueError(
        f"{name} must hold 0/1 label sets, or rows of -1 for padding; got other values."
      )
  return labels


def _overlap(a: jax.Array, b: jax.Array, dtype=jnp.float32) -> jax.Array:
  """[n, m] Jaccard index |A & B| / |A | B| of label sets [n, C], [m, C] (1 for two
  empty sets); of integer labels [n], [m]: 1 where equal, else 0."""
  if a.ndim == 1:
    return (a[:, None] == b[None, :]).astype(dtype)
  a, b = (a > 0).astype(dtype), (b > 0).astype(dtype)
  inter = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
  union = jnp.sum(a, axis=1)[:, None] + jnp.sum(b, axis=1)[None, :] - inter
  return jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 1.0)


@functools.cache
def _overlap_at_least(threshold: float):
  """The label comparison 'Jaccard index >= threshold' (one function per value)."""
  return lambda a, b: _overlap(a, b) >= threshold


def _multi_supcon_terms(b: Block):
  logits = b.s / b.params
  if jax.tree.leaves(b.a_aux):  # label sets: the Jaccard index of the two rows
    weight = _overlap(b.a_aux, b.c_aux, b.s.dtype)
  else:  # one label per row: every positive weighs 1
    weight = _engine.ones(b)
  return [
    (logits, b.positive | b.negative),
    (weight * logits, b.positive),
    (weight, b.positive),
    (_engine.ones(b), b.positive),
    (_engine.ones(b), b.negative),
  ]


@_batch_loss
def _multi_supcon(
  rel: pairs.Relation,
  *,
  temperature: float | jax.Array = 0.1,
  threshold: float = 0.5,
  similarity: str | distances.DistanceFn = "cosine",
) -> jax.Array:
  r"""Supervised contrastive loss for multi-label batches: positives weighted by the
  overlap of their label sets.

  .. math::
    \ell_i = -\frac{1}{|P_i|} \sum_{p \in P_i} J_{ip}
      \log \frac{e^{s_{ip}/\tau}}{\sum_{a \in P_i \cup N_i} e^{s_{ia}/\tau}},
    \qquad
    J_{ij} = \frac{|Y_i \cap Y_j|}{|Y_i \cup Y_j|},
    \quad P_i = \{j : J_{ij} \ge c\}

  with :math:`Y_i` the label set of row :math:`i`, :math:`J` the Jaccard index (1 for
  two empty sets, 0 for an empty and a non-empty one), :math:`c` = ``threshold``,
  :math:`N_i` the other valid candidates (:math:`J < c`), :math:`s` = ``similarity``
  (cosine) and :math:`\tau` = ``temperature``. ``labels`` are multi-hot label sets
  [n, C] (bool, or 0/1 integers with a row of -1 for padding; ``ref_labels`` [m, C]
  likewise), or integer labels [n] (one-label sets: :math:`J` is 1 for equal labels, 0
  otherwise, and the loss is :func:`supcon_loss`). A ``label_comparison`` or
  ``positive_mask`` replaces the threshold rule (the weights stay :math:`J`). An
  anchor without a positive or without a negative gets 0, as in
  :func:`supcon_loss`. The weights are computed block by block from the label rows,
  so the loss runs blockwise like the others.

  pytorch-metric-learning 3's ``MultiSupConLoss(temperature=t, threshold=c)``
  (Jaccard-weighted, the threshold inclusive, cosine) is ``losses.mean()`` over the
  anchors that have a positive and a negative (it also gives a loss to an anchor
  whose candidates are all positives; here that anchor gets 0).

  Args:
    {relation}
    temperature: :math:`\tau > 0`, a number or a scalar array (a traced value is not
      checked). Default 0.1, as SupCon.
    threshold: :math:`c \in (0, 1]`, a number known at trace time: the least overlap
      of a positive. Default 0.5, pytorch-metric-learning's.
    similarity: 'cosine' (default), 'dot', or a callable.

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  >>> y = jnp.array([[1, 1, 0], [1, 0, 0], [0, 0, 1]])  # {0, 1}, {0}, {2}
  >>> # J(0, 1) = 1/2: a positive of weight 1/2; row 2 a negative; tau 1:
  >>> # -1/2 log(e / (e + e^0)) = log(1 + e^-1) / 2
  >>> multi_supcon_loss(e, y, temperature=1.0)
  Array([0.15663..., 0.15663..., 0.        ], dtype=float32)

  References:
    Khosla et al. Supervised Contrastive Learning. NeurIPS 2020 (the loss it extends;
    the Jaccard-weighted multi-label form is pytorch-metric-learning's
    ``MultiSupConLoss``).
  """
  sim_fn, dtype = _similarity(rel, similarity)
  tau = _checks.scalar(temperature, "temperature", dtype, positive=True)
  sets = () if rel.labels.ndim == 1 else (rel.labels > 0).astype(dtype)
  ref_sets = () if rel.labels.ndim == 1 else (rel.ref_labels > 0).astype(dtype)
  ((lse, w_logit, w_sum, n_pos, n_neg),) = _engine.pair_statistics(
    rel,
    (Pass(_multi_supcon_terms, ("lse", "sum", "sum", "sum", "sum")),),
    sim_fn,
    params=tau,
    anchor_aux=sets,
    candidate_aux=ref_sets,
  )
  loss = (w_sum * lse - w_logit) / jnp.maximum(n_pos, 1.0)
  return jnp.where(_engine.active(n_pos, n_neg), loss, 0.0)


def multi_supcon_loss(
  embeddings: jax.Array, labels: jax.Array, **kwargs: Any
) -> jax.Array:
  # The public form of ``_multi_supcon`` (its signature and docstring): label sets
  # [n, C] are checked here, and 'Jaccard >= threshold' is the default comparison.
  _checks.check_rank(jnp.asarray(embeddings), 2, "embeddings", "[n, d]")
  threshold = kwargs.setdefault("threshold", 0.5)
  if isinstance(threshold, bool) or _checks.concrete_value(threshold) is None:
    raise ValueError(
      f"threshold must be a number known at trace time, got {threshold!r}."
    )
  if np.ndim(threshold) != 0:
    raise ValueError(f"threshold must be a scalar, got shape {np.shape(threshold)}.")
  _checks.check_positive(threshold, "threshold")
  _checks.check_in_range(threshold, "threshold", 0.0, 1.0)
  labels = _label_sets(labels, jnp.shape(embeddings)[0], "labels")
  ref_labels, ref = kwargs.get("ref_labels"), kwargs.get("ref_embeddings")
  if ref_labels is not None and ref is not None:
    _checks.check_rank(jnp.asarray(ref), 2, "ref_embeddings", "[m, d]")
    ref_labels = _label_sets(ref_labels, jnp.shape(ref)[0], "ref_labels")
    if ref_labels.shape[1:] != labels.shape[1:]:
      raise ValueError(
        "ref_labels must have the form of labels (the same number of classes), got "
        f"{tuple(ref_labels.shape)} and {tuple(labels.shape)}."
      )
    kwargs["ref_labels"] = ref_labels
  if kwargs.get("label_comparison") is None:
    kwargs["label_comparison"] = _overlap_at_least(float(threshold))
  return _multi_supcon(embeddings, labels, **kwargs)


multi_supcon_loss.__signature__ = (  # type: ignore[attr-defined]  # read by inspect
  inspect.signature(_multi_supcon)
)
multi_supcon_loss.__doc__, _multi_supcon.__doc__ = _multi_supcon.__doc__, None

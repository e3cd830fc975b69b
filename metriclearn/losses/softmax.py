"""Softmax and cross-entropy batch losses: N-pair, NT-Xent / InfoNCE, SupCon, soft
nearest neighbour, and the sigmoid (SigLIP) pairwise loss.

Every loss is in batch form: ``loss(embeddings [n, d], labels [n], ...) -> [n]``, one
value per anchor, 0 where the anchor has nothing valid (see ``losses._batch.prepare``
for ``ref_embeddings``, ``positive_mask``, ``label_comparison``, ``mask`` and
``axis_name``). Each loss is split in two: the masking (``prepare`` and a similarity or
distance matrix) and the formula, a ``*_from_logits(logits, positive, negative) -> [n]``
function of an ``[n, m]`` logit matrix and the boolean pair masks, which blockwise
(memory-bounded) versions can reuse. Sums of exponentials go through
``reduce.masked_logsumexp``, so the losses stay finite for any embedding norm.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from metriclearn import _checks, distances, masks, reduce
from metriclearn.losses import _batch

# ----------------------------------------------------------------------------------
# Formulas: functions of an [n, m] logit matrix and [n, m] boolean pair masks.


def _where_any(mask: jax.Array, x: jax.Array) -> jax.Array:
  """``x`` where a row of ``mask`` has an entry, else 0 (value and gradient)."""
  return jnp.where(jnp.any(mask, axis=-1), x, 0.0)


def _safe_lse(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Row-wise masked log-sum-exp, 0 (not -inf) for empty rows."""
  return _where_any(mask, reduce.masked_logsumexp(logits, mask, axis=-1))


def ntxent_from_logits(
  logits: jax.Array, positive: jax.Array, negative: jax.Array
) -> jax.Array:
  r"""Per-anchor NT-Xent / InfoNCE from logits (the formula of :func:`ntxent_loss`).

  .. math::
    \ell_i = \frac{1}{|P_i|} \sum_{p \in P_i}
      \log\Big(1 + \sum_{q \in N_i} e^{l_{iq} - l_{ip}}\Big)

  Args:
    logits: [n, m] logits (similarity / temperature).
    positive: [n, m] bool, the positive pairs :math:`P_i`.
    negative: [n, m] bool, the negative pairs :math:`N_i`.

  Returns:
    [n] losses; 0 for anchors without a positive or without a negative.
  """
  has_neg = jnp.any(negative, axis=-1, keepdims=True)
  neg_lse = jnp.where(
    has_neg, reduce.masked_logsumexp(logits, negative, axis=-1, keepdims=True), 0.0
  )
  # -log(e^a / (e^a + e^B)) = log(1 + e^(B - a)) = softplus(B - a)
  per_pair = jnp.where(has_neg, jax.nn.softplus(neg_lse - logits), 0.0)
  return reduce.masked_mean(per_pair, positive, axis=-1)


def supcon_from_logits(
  logits: jax.Array, positive: jax.Array, negative: jax.Array
) -> jax.Array:
  r"""Per-anchor SupCon :math:`\mathcal{L}^{out}` from logits (see :func:`supcon_loss`).

  .. math::
    \ell_i = \log \sum_{a \in P_i \cup N_i} e^{l_{ia}}
      - \frac{1}{|P_i|} \sum_{p \in P_i} l_{ip}

  Returns:
    [n] losses; 0 for anchors without a positive or without a negative.
  """
  active = jnp.any(positive, axis=-1) & jnp.any(negative, axis=-1)
  lse = _safe_lse(logits, positive | negative)
  return jnp.where(active, lse - reduce.masked_mean(logits, positive, axis=-1), 0.0)


def soft_nearest_neighbor_from_logits(
  logits: jax.Array, positive: jax.Array, negative: jax.Array
) -> jax.Array:
  r"""Per-anchor soft nearest neighbour loss from logits :math:`l = -D / T`.

  .. math::
    \ell_i = \log \sum_{a \in P_i \cup N_i} e^{l_{ia}}
      - \log \sum_{p \in P_i} e^{l_{ip}}

  Returns:
    [n] losses; 0 for anchors without a positive or without a negative.
  """
  active = jnp.any(positive, axis=-1) & jnp.any(negative, axis=-1)
  lse_all = _safe_lse(logits, positive | negative)
  return jnp.where(active, lse_all - _safe_lse(logits, positive), 0.0)


def sigmoid_pairwise_from_logits(
  logits: jax.Array, positive: jax.Array, negative: jax.Array
) -> jax.Array:
  r"""Per-anchor sigmoid pairwise loss from logits :math:`l = t s + b`.

  .. math::
    \ell_i = \sum_{j \in P_i} \log(1 + e^{-l_{ij}})
      + \sum_{j \in N_i} \log(1 + e^{l_{ij}})

  Returns:
    [n] losses; 0 for anchors without any valid pair.
  """
  per_pair = jax.nn.softplus(jnp.where(positive, -logits, logits))
  return reduce.masked_sum(per_pair, positive | negative, axis=-1)


# ----------------------------------------------------------------------------------
# Shared argument handling.


def _scalar(value: Any, name: str, dtype, *, positive: bool = False) -> jax.Array:
  """A scalar (possibly learnable) parameter, checked while it is still concrete."""
  if positive:
    _checks.check_positive(value, name)
  x = _checks.as_float(value, name)
  if x.shape != ():
    raise ValueError(f"{name} must be a scalar, got shape {tuple(x.shape)}.")
  return x.astype(dtype)


# ----------------------------------------------------------------------------------
# Losses.


def ntxent_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
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
  NT-Xent exactly and ``losses.mean()`` is its loss; with several positives it is
  pytorch-metric-learning's ``NTXentLoss`` per anchor (that library averages over
  positive pairs instead: weight each anchor by its number of positives to get it).
  An anchor without a positive or without a negative gets 0.

  Args:
    embeddings: [n, d] anchors.
    labels: [n] integer labels, -1 for padding.
    ref_embeddings: optional [m, d] candidates (a memory bank, another view).
    ref_labels: [m] integer labels of ``ref_embeddings``.
    positive_mask: optional [n, m] bool relation that replaces label equality.
    label_comparison: optional ``f(labels, ref_labels) -> [n, m] bool``.
    mask: optional [n, m] bool (e.g. a miner's output): other pairs take no part.
    axis_name: inside ``pmap`` / ``shard_map``, compare against every device's
      candidates.
    temperature: :math:`\tau > 0`, a number or a scalar array (may be learned).
      Default 0.1, SimCLR's ImageNet setting (its CIFAR-10 setting is 0.5; MoCo and
      pytorch-metric-learning use 0.07).
    similarity: 'cosine' (default, SimCLR's normalized embeddings), 'dot', or a
      callable ``(a [n, d], b [m, d]) -> [n, m]``.

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  >>> ntxent_loss(e, jnp.array([0, 0, 1]), temperature=1.0)  # log(1 + e^-1)
  Array([0.31326..., 0.31326..., 0.        ], dtype=float32)

  References:
    Chen, Kornblith, Norouzi, Hinton. A Simple Framework for Contrastive Learning of
    Visual Representations. ICML 2020. van den Oord, Li, Vinyals. Representation
    Learning with Contrastive Predictive Coding. arXiv:1807.03748, 2018.
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
  sim = _batch.similarity_matrix(batch, similarity)
  tau = _scalar(temperature, "temperature", sim.dtype, positive=True)
  return ntxent_from_logits(sim / tau, batch.positive, batch.negative)


infonce_loss = ntxent_loss


def supcon_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
  temperature: float | jax.Array = 0.1,
  similarity: str | distances.DistanceFn = "cosine",
) -> jax.Array:
  r"""Supervised contrastive loss (SupCon, the :math:`\mathcal{L}^{sup}_{out}` form).

  .. math::
    \ell_i = -\frac{1}{|P_i|} \sum_{p \in P_i}
      \log \frac{e^{s_{ip}/\tau}}{\sum_{a \in P_i \cup N_i} e^{s_{ia}/\tau}}

  The denominator runs over every valid candidate other than the anchor itself
  (positives included, unlike :func:`ntxent_loss`). An anchor without a positive or
  without a negative gets 0: with positives only, the formula's value (at least
  :math:`\log |P_i|`) has no contrast in it (pytorch-metric-learning's ``SupConLoss``
  likewise returns 0 when the batch has no negative pair). The paper's loss is
  ``losses.sum() / n`` over the 2N augmented views (the official code averages over all
  anchors, those without a positive counting 0).

  Args:
    embeddings: [n, d] anchors (every augmented view is a row).
    labels: [n] integer labels, -1 for padding.
    ref_embeddings: optional [m, d] candidates (a memory bank, another view).
    ref_labels: [m] integer labels of ``ref_embeddings``.
    positive_mask: optional [n, m] bool relation that replaces label equality.
    label_comparison: optional ``f(labels, ref_labels) -> [n, m] bool``.
    mask: optional [n, m] bool (e.g. a miner's output): other pairs take no part.
    axis_name: inside ``pmap`` / ``shard_map``, compare against every device's
      candidates.
    temperature: :math:`\tau > 0`, a number or a scalar array. Default 0.1, the
      paper's value (the reference code's class default is 0.07).
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
  sim = _batch.similarity_matrix(batch, similarity)
  tau = _scalar(temperature, "temperature", sim.dtype, positive=True)
  return supcon_from_logits(sim / tau, batch.positive, batch.negative)


def soft_nearest_neighbor_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
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
    embeddings: [n, d] anchors.
    labels: [n] integer labels, -1 for padding.
    ref_embeddings: optional [m, d] candidates (a memory bank, another view).
    ref_labels: [m] integer labels of ``ref_embeddings``.
    positive_mask: optional [n, m] bool relation that replaces label equality.
    label_comparison: optional ``f(labels, ref_labels) -> [n, m] bool``.
    mask: optional [n, m] bool (e.g. a miner's output): other pairs take no part.
    axis_name: inside ``pmap`` / ``shard_map``, compare against every device's
      candidates.
    temperature: :math:`T > 0`, a number or a scalar array (the paper optimizes it;
      pass ``jnp.exp(log_t)`` to learn it). Default 1.
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
  dist = distances.get_pairwise_distance(distance)(batch.anchors, batch.candidates)
  t = _scalar(temperature, "temperature", dist.dtype, positive=True)
  return soft_nearest_neighbor_from_logits(-dist / t, batch.positive, batch.negative)


def sigmoid_pairwise_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  scale: jax.Array,
  bias: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
  similarity: str | distances.DistanceFn = "cosine",
) -> jax.Array:
  r"""Sigmoid pairwise loss (SigLIP), every pair an independent binary decision.

  .. math::
    \ell_i = -\sum_{j \in P_i \cup N_i} \log \sigma\big(z_{ij} (t\, s_{ij} + b)\big),
    \qquad z_{ij} = +1 \text{ for } j \in P_i, \; -1 \text{ for } j \in N_i

  with :math:`s` = ``similarity`` (cosine), :math:`t` = ``scale`` and :math:`b` =
  ``bias``. Any number of positives per anchor is allowed. Unlike the softmax losses,
  an anchor with negatives only (or positives only) still has a loss: every valid pair
  is a labelled example. Only anchors without any valid candidate get 0.

  The per-anchor value is the paper's inner sum over candidates; SigLIP's loss,
  normalized by the batch size, is ``losses.mean()`` when every anchor is real (with
  padding rows: ``losses.sum()`` over the number of real anchors). SigLIP itself
  compares images (``embeddings``) with texts (``ref_embeddings``), labels
  ``arange(n)`` for both.

  Args:
    embeddings: [n, d] anchors.
    labels: [n] integer labels, -1 for padding.
    scale: scalar :math:`t > 0`, learned as ``t = exp(t')`` with :math:`t'` initialised
      to :math:`\log 10` (the paper calls it the temperature; it multiplies).
    bias: scalar :math:`b`, learned, initialised to -10 in the paper.
    ref_embeddings: optional [m, d] candidates (a memory bank, another view).
    ref_labels: [m] integer labels of ``ref_embeddings``.
    positive_mask: optional [n, m] bool relation that replaces label equality.
    label_comparison: optional ``f(labels, ref_labels) -> [n, m] bool``.
    mask: optional [n, m] bool (e.g. a miner's output): other pairs take no part.
    axis_name: inside ``pmap`` / ``shard_map``, compare against every device's
      candidates.
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
  sim = _batch.similarity_matrix(batch, similarity)
  t = _scalar(scale, "scale", sim.dtype, positive=True)
  b = _scalar(bias, "bias", sim.dtype)
  return sigmoid_pairwise_from_logits(t * sim + b, batch.positive, batch.negative)


def npair_pair_masks(
  batch: _batch.Batch,
  *,
  label_comparison: masks.LabelComparison | None = None,
  by_labels: bool = True,
  axis_name: str | None = None,
) -> tuple[jax.Array, jax.Array]:
  """The N-pair selection: one (anchor, positive) pair per class, fixed-shape masks.

  Anchor ``i`` (in the order of the global batch) is used when it has a positive and
  no earlier anchor that has a positive is of its class; its pair is its first
  positive candidate. Its negatives are the pairs' positives of the other used anchors
  (those that are negatives of ``i``). With ``by_labels`` the class relation between
  anchors is ``label_comparison`` (label equality by default); otherwise (an explicit
  ``positive_mask``) anchor ``j`` counts as of ``i``'s class when ``j``'s chosen
  positive is a positive of ``i`` (or is ``i`` itself).

  Returns:
    ``(pair_positive, pair_negative)``, [n, m] bool each; rows of unused anchors are
    empty.
  """
  n, m = batch.positive.shape
  pos_all = _batch.gather(batch.positive.astype(jnp.int8), axis_name) > 0  # [N, m]
  size = pos_all.shape[0]
  has_pos = jnp.any(pos_all, axis=1)
  first = jnp.argmax(pos_all, axis=1)  # first positive candidate of every anchor
  rank = jnp.arange(size, dtype=first.dtype)
  if by_labels:
    labels_all = _batch.gather(batch.anchor_labels, axis_name)
    same = (label_comparison or masks.label_equal)(labels_all, labels_all)
  else:
    same = jnp.take(pos_all, first, axis=1)  # [i, j]: j's pair positive is i's positive
    if batch.self_offset is not None:  # candidates are the anchors: j's pick may be i
      same |= first[None, :] == rank[:, None]
  earlier = rank[None, :] < rank[:, None]
  used = has_pos & ~jnp.any(same & earlier & has_pos[None, :], axis=1)  # [N]
  picked = jnp.any(
    (first[:, None] == jnp.arange(m, dtype=first.dtype)[None, :]) & used[:, None],
    axis=0,
  )  # [m]: candidates that are some used anchor's pair positive
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * n
  rows = jnp.arange(n, dtype=first.dtype) + jnp.asarray(offset, first.dtype)
  used_here, first_here = used[rows], first[rows]
  cols = jnp.arange(m, dtype=first.dtype)
  pair_pos = (cols[None, :] == first_here[:, None]) & used_here[:, None]
  pair_neg = batch.negative & picked[None, :] & used_here[:, None]
  return pair_pos, pair_neg


def npair_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
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
  ``NPairsLoss``: of each class, only the first anchor that has a positive is used,
  paired with its first positive candidate (order of the batch; see
  :func:`npair_pair_masks`, also for ``positive_mask`` and ``label_comparison``). A
  batch built as in the paper (labels ``[0, 0, 1, 1, ...]``, or ``embeddings`` the N
  anchors and ``ref_embeddings`` their N positives, labels ``arange(N)`` for both)
  gives the paper's loss exactly, as ``losses.sum()`` over the number of used anchors.
  Negatives respect ``mask``; unused anchors, and anchors whose pair has no negative,
  get 0 (the penalty included).

  Args:
    embeddings: [n, d] anchors.
    labels: [n] integer labels, -1 for padding.
    ref_embeddings: optional [m, d] candidates (a memory bank, another view).
    ref_labels: [m] integer labels of ``ref_embeddings``.
    positive_mask: optional [n, m] bool relation that replaces label equality.
    label_comparison: optional ``f(labels, ref_labels) -> [n, m] bool``.
    mask: optional [n, m] bool (e.g. a miner's output): other pairs take no part.
    axis_name: inside ``pmap`` / ``shard_map``, compare against every device's
      candidates.
    l2_reg: :math:`\lambda \ge 0`, the paper's L2 regularization of the embedding
      vectors, with the weight 0.002 and the 1/4 factor of TensorFlow's
      ``npairs_loss`` (so the mean over used anchors is that function's value). 0
      gives pytorch-metric-learning's ``NPairsLoss``.
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
  pair_pos, pair_neg = npair_pair_masks(
    batch,
    label_comparison=label_comparison,
    by_labels=positive_mask is None,
    axis_name=axis_name,
  )
  sim = _batch.similarity_matrix(batch, similarity)
  loss = ntxent_from_logits(sim, pair_pos, pair_neg)
  if l2_reg:
    sq_anchor = jnp.sum(jnp.square(batch.anchors), axis=1)
    sq_cand = jnp.sum(jnp.square(batch.candidates), axis=1)
    sq_pair = reduce.masked_sum(jnp.broadcast_to(sq_cand, sim.shape), pair_pos, axis=1)
    loss = loss + 0.25 * l2_reg * (sq_anchor + sq_pair)
  active = jnp.any(pair_pos, axis=1) & jnp.any(pair_neg, axis=1)
  return jnp.where(active, loss, 0.0)

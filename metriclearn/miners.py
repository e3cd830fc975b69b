r"""Miners: fixed-shape boolean masks of the (anchor, candidate) pairs to train on.

A miner takes the batch-form arguments of a loss (``embeddings``, ``labels``,
``ref_embeddings``, ``ref_labels``, ``positive_mask``, ``label_comparison``, ``mask``,
``axis_name``; see :mod:`metriclearn.pairs`) and returns an [n, m]
boolean mask, True for the selected positive and negative pairs. It never returns
index lists, so it works under ``jit`` and across devices, and its output is the
``mask=`` of any batch-form loss: pairs outside it take no part::

  selected = miners.pair_margin_miner(embeddings, labels)
  losses = batch_all_triplet_loss(embeddings, labels, mask=selected)

Mining is not differentiated: the embeddings pass through ``lax.stop_gradient``. With
``axis_name`` the local anchors' rows are computed against the candidates of every
device and equal the rows of the single-device mask of the whole batch.

A triplet loss given a pair mask forms its triplets from the selected positives and
the selected negatives of each anchor: with the batch-hard miner that is exactly one
triplet per anchor; with the others it is every combination of a selected positive
and a selected negative.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metriclearn import _checks, distances, pairs, reduce

__all__ = [
  "batch_hard_miner",
  "distance_weighted_miner",
  "distance_weighted_probabilities",
  "multi_similarity_miner",
  "pair_margin_miner",
  "semi_hard_miner",
]

# FaceNet's margin, as the triplet losses' default.
_FACENET_MARGIN = 0.2


def _dense(rel: pairs.Relation) -> pairs.Pairs:
  """The dense relation, not differentiated (mining selects, it has no gradient)."""
  p = pairs.dense(rel)
  return p._replace(
    anchors=jax.lax.stop_gradient(p.anchors),
    candidates=jax.lax.stop_gradient(p.candidates),
  )


def _one_hot_columns(index: jax.Array, m: int) -> jax.Array:
  return jnp.arange(m)[None, :] == index[:, None]


@pairs.batch_form
def batch_hard_miner(
  rel: pairs.Relation,
  *,
  distance: str | distances.DistanceFn = "euclidean",
) -> jax.Array:
  r"""The hardest positive and the hardest negative of each anchor.

  .. math::
    \text{selected}_{aj} = [a \text{ has a positive and a negative}] \cdot
    \big([j = \arg\max_{p \in P_a} D_{ap}] \lor [j = \arg\min_{n \in N_a} D_{an}]\big)

  (ties: the first candidate). As pytorch-metric-learning's ``BatchHardMiner``, an
  anchor without a positive or without a negative selects nothing. Any triplet loss
  given this mask sees one triplet per anchor, Hermans et al.'s batch-hard triplet.

  Args:
    {relation}
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine', or a callable
      ``(a [n, d], b [m, d]) -> [n, m]``.

  Returns:
    [n, m] bool mask of the selected pairs.

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[0.0], [0.5], [0.4], [0.9], [1.0]])
  >>> batch_hard_miner(x, jnp.array([0, 0, 1, 1, 1]))[0]  # positive 1, negative 2
  Array([False,  True,  True, False, False], dtype=bool)

  References:
    Hermans, Beyer, Leibe. In Defense of the Triplet Loss for Person
    Re-Identification. arXiv:1703.07737, 2017.
  """
  batch = _dense(rel)
  dist = distances.get_pairwise_distance(distance)(batch.anchors, batch.candidates)
  m = dist.shape[1]
  hardest_positive = jnp.argmax(jnp.where(batch.positive, dist, -jnp.inf), axis=1)
  hardest_negative = jnp.argmin(jnp.where(batch.negative, dist, jnp.inf), axis=1)
  selected = _one_hot_columns(hardest_positive, m) | _one_hot_columns(
    hardest_negative, m
  )
  both = jnp.any(batch.positive, axis=1) & jnp.any(batch.negative, axis=1)
  return selected & both[:, None]


@pairs.batch_form
def semi_hard_miner(
  rel: pairs.Relation,
  *,
  margin: float | jax.Array = _FACENET_MARGIN,
  distance: str | distances.DistanceFn = "euclidean",
  squared: bool = True,
) -> jax.Array:
  r"""The pairs that form FaceNet's semi-hard triplets.

  A triplet (a, p, n) is semi-hard when the negative is farther than the positive but
  within the margin, :math:`D_{ap} < D_{an} < D_{ap} + m` (Schroff et al. 2015;
  pytorch-metric-learning's ``TripletMarginMiner(type_of_triplets="semihard")``). The
  mask holds every positive and every negative pair that is part of at least one
  semi-hard triplet:

  .. math::
    \text{selected}_{an} = [n \in N_a]\,[\exists p \in P_a:
      D_{ap} < D_{an} < D_{ap} + m], \quad
    \text{selected}_{ap} = [p \in P_a]\,[\exists n \in N_a:
      D_{ap} < D_{an} < D_{ap} + m]

  Each row is sorted once: O(n m log m) time and O(n m) memory.

  Args:
    {relation}
    margin: m >= 0 (default 0.2, FaceNet).
    distance: 'euclidean' (default), 'cosine', or a callable
      ``(a [n, d], b [m, d]) -> [n, m]``.
    squared: square the distance (default True, FaceNet).

  Returns:
    [n, m] bool mask of the selected pairs.

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[0.0], [0.5], [0.4], [0.6], [2.0]])
  >>> # anchor 0: positive at 0.25; negatives at 0.16 (closer), 0.36 (in (0.25, 0.45)),
  >>> # 4.0 (beyond)
  >>> semi_hard_miner(x, jnp.array([0, 0, 1, 1, 1]))[0]
  Array([False,  True, False,  True, False], dtype=bool)

  References:
    Schroff, Kalenichenko, Philbin. FaceNet: A Unified Embedding for Face Recognition
    and Clustering. CVPR 2015.
  """
  _checks.check_non_negative(margin, "margin")
  batch = _dense(rel)
  dist = distances.distance_fn(distance, squared)(batch.anchors, batch.candidates)
  upper = dist + jnp.asarray(margin).astype(dist.dtype)  # D_ap + m
  count = reduce.count_sorted
  # Negative n: #{p : D_ap < D_an} - #{p : D_ap + m <= D_an} = #{p : semi-hard}.
  sorted_pos = reduce.sorted_where(batch.positive, dist)
  sorted_pos_upper = reduce.sorted_where(batch.positive, upper)
  negatives = count(sorted_pos, dist, "left") > count(sorted_pos_upper, dist, "right")
  # Positive p: #{n : D_an < D_ap + m} - #{n : D_an <= D_ap} = #{n : semi-hard}.
  sorted_neg = reduce.sorted_where(batch.negative, dist)
  positives = count(sorted_neg, upper, "left") > count(sorted_neg, dist, "right")
  return (batch.negative & negatives) | (batch.positive & positives)


@pairs.batch_form
def multi_similarity_miner(
  rel: pairs.Relation,
  *,
  epsilon: float | jax.Array = 0.1,
  similarity: str | distances.DistanceFn = "cosine",
) -> jax.Array:
  r"""Multi-similarity pair mining (Wang et al. 2019, eqs. 8 and 9).

  With similarities :math:`S` (higher = more alike), a negative pair is kept if it is
  more similar than the anchor's least similar positive, and a positive pair if it is
  less similar than the anchor's most similar negative, both up to :math:`\epsilon`:

  .. math::
    \text{selected}_{an} = [n \in N_a]\,[S_{an} + \epsilon > \min_{p \in P_a} S_{ap}],
    \quad
    \text{selected}_{ap} = [p \in P_a]\,[S_{ap} - \epsilon < \max_{n \in N_a} S_{an}]

  An anchor without positives keeps no negative and one without negatives keeps no
  positive (pytorch-metric-learning's ``MultiSimilarityMiner``).

  Args:
    {relation}
    epsilon: :math:`\epsilon \ge 0` (default 0.1, the paper's value).
    similarity: 'cosine' (default), 'dot', or a callable
      ``(a [n, d], b [m, d]) -> [n, m]``.

  Returns:
    [n, m] bool mask of the selected pairs.

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
  >>> # anchor 0: positive 1 (S = 0.6); negatives 2 (0.8) and 3 (0.0): 0.6 - 0.1 < 0.8
  >>> # keeps the positive; 0.8 + 0.1 > 0.6 keeps 2, 0.0 + 0.1 < 0.6 drops 3
  >>> multi_similarity_miner(x, jnp.array([0, 0, 1, 1]))[0]
  Array([False,  True,  True, False], dtype=bool)

  References:
    Wang, Han, Huang, Dong, Scott. Multi-Similarity Loss with General Pair Weighting
    for Deep Metric Learning. CVPR 2019.
  """
  _checks.check_non_negative(epsilon, "epsilon")
  batch = _dense(rel)
  sim = distances.get_pairwise_similarity(similarity)(batch.anchors, batch.candidates)
  epsilon = jnp.asarray(epsilon).astype(sim.dtype)
  least_similar_positive = jnp.min(
    jnp.where(batch.positive, sim, jnp.inf), axis=1, keepdims=True
  )
  most_similar_negative = jnp.max(
    jnp.where(batch.negative, sim, -jnp.inf), axis=1, keepdims=True
  )
  negatives = batch.negative & (sim + epsilon > least_similar_positive)
  positives = batch.positive & (sim - epsilon < most_similar_negative)
  return negatives | positives


@pairs.batch_form
def pair_margin_miner(
  rel: pairs.Relation,
  *,
  pos_margin: float | jax.Array = 0.2,
  neg_margin: float | jax.Array = 0.8,
  distance: str | distances.DistanceFn = "euclidean",
) -> jax.Array:
  r"""Positive pairs farther than ``pos_margin`` and negative pairs closer than
  ``neg_margin`` (pytorch-metric-learning's ``PairMarginMiner``).

  .. math::
    \text{selected}_{aj} = [j \in P_a]\,[D_{aj} > m_+] \lor [j \in N_a]\,[D_{aj} < m_-]

  These are the pairs with a non-zero contrastive loss of margins :math:`m_+, m_-`.
  pytorch-metric-learning's default distance L2-normalizes the embeddings first: to
  reproduce it, pass ``distances.l2_normalize(embeddings)``.

  Args:
    {relation}
    pos_margin: :math:`m_+ \ge 0` (default 0.2, pytorch-metric-learning's).
    neg_margin: :math:`m_- \ge 0` (default 0.8, pytorch-metric-learning's).
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine', or a callable
      ``(a [n, d], b [m, d]) -> [n, m]``.

  Returns:
    [n, m] bool mask of the selected pairs.

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[0.0], [0.1], [0.5], [0.9]])
  >>> # anchor 0: positive 1 at 0.1 <= 0.2 (dropped), positive 2 at 0.5 (kept),
  >>> # negative 3 at 0.9 >= 0.8 (dropped)
  >>> pair_margin_miner(x, jnp.array([0, 0, 0, 1]))[0]
  Array([False, False,  True, False], dtype=bool)
  """
  _checks.check_non_negative(pos_margin, "pos_margin")
  _checks.check_non_negative(neg_margin, "neg_margin")
  batch = _dense(rel)
  dist = distances.get_pairwise_distance(distance)(batch.anchors, batch.candidates)
  pos_margin = jnp.asarray(pos_margin).astype(dist.dtype)
  neg_margin = jnp.asarray(neg_margin).astype(dist.dtype)
  return (batch.positive & (dist > pos_margin)) | (batch.negative & (dist < neg_margin))


def _distance_weighted_logits(
  batch: pairs.Pairs, cutoff, nonzero_loss_cutoff
) -> tuple[jax.Array, jax.Array]:
  """Log sampling weights [n, m] (-inf outside the support) and the support [n, m]."""
  _checks.check_positive(cutoff, "cutoff")
  _checks.check_positive(nonzero_loss_cutoff, "nonzero_loss_cutoff")
  anchors = distances.l2_normalize(batch.anchors)
  candidates = distances.l2_normalize(batch.candidates)
  dist = distances.pairwise_euclidean(anchors, candidates)
  dim = anchors.shape[1]
  clipped = jnp.maximum(dist, jnp.asarray(cutoff).astype(dist.dtype))
  # -log q(D) for points uniform on the unit sphere in R^dim (Wu et al., section 4).
  one_minus = jnp.maximum(1.0 - 0.25 * clipped * clipped, jnp.finfo(dist.dtype).eps)
  log_weight = (2.0 - dim) * jnp.log(clipped) - 0.5 * (dim - 3.0) * jnp.log(one_minus)
  support = batch.negative & (
    dist < jnp.asarray(nonzero_loss_cutoff).astype(dist.dtype)
  )
  fallback = ~jnp.any(support, axis=1, keepdims=True)  # every negative is too far
  support = jnp.where(fallback, batch.negative, support)
  log_weight = jnp.where(fallback, 0.0, log_weight)
  return jnp.where(support, log_weight, -jnp.inf), support


@pairs.batch_form
def distance_weighted_probabilities(
  rel: pairs.Relation,
  *,
  cutoff: float = 0.5,
  nonzero_loss_cutoff: float = 1.4,
) -> jax.Array:
  r"""The distribution over negatives that :func:`distance_weighted_miner` samples.

  On the L2-normalized embeddings, with :math:`d` the embedding size, a negative at
  distance :math:`D` is drawn with probability proportional to

  .. math::
    w(D) = \frac{[D < \tau]}{q(\max(D, c))}, \qquad
    q(D) \propto D^{d-2} \left(1 - \tfrac{D^2}{4}\right)^{\frac{d-3}{2}}

  where :math:`q` is the density of distances between points uniform on the unit
  sphere, :math:`c` = ``cutoff`` bounds the weight (the paper's :math:`\lambda`, as
  in its code) and :math:`\tau` = ``nonzero_loss_cutoff`` drops negatives too far to
  have a loss. If every negative of an anchor is that far, it falls back to uniform
  over its negatives (as the authors' code does).

  Args:
    {relation}
    cutoff: c > 0 (default 0.5, the paper's).
    nonzero_loss_cutoff: :math:`\tau` > 0 (default 1.4, the paper's).

  Returns:
    [n, m] probabilities; each row sums to 1 over the anchor's negatives, or is all 0
    if it has none.

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.6, 0.8, 0.0, 0.0]])
  >>> # d = 4, from anchor 0: D = sqrt(2) >= 1.4 (dropped), D = sqrt(0.8) (kept)
  >>> distance_weighted_probabilities(x, jnp.array([0, 1, 2]))[0]
  Array([0., 0., 1.], dtype=float32)

  References:
    Wu, Manmatha, Smola, Krähenbühl. Sampling Matters in Deep Embedding Learning.
    ICCV 2017.
  """
  batch = _dense(rel)
  logits, support = _distance_weighted_logits(batch, cutoff, nonzero_loss_cutoff)
  log_total = reduce.masked_logsumexp(logits, support, axis=1, keepdims=True)
  return jnp.where(support, jnp.exp(logits - log_total), 0.0)


@pairs.batch_form
def distance_weighted_miner(
  rel: pairs.Relation,
  key: jax.Array,
  *,
  num_negatives: int = 1,
  cutoff: float = 0.5,
  nonzero_loss_cutoff: float = 1.4,
) -> jax.Array:
  r"""Distance-weighted sampling (Wu et al. 2017): every positive pair, and
  ``num_negatives`` negatives per anchor drawn by inverse distance density.

  The negatives of each anchor are drawn without replacement from
  :func:`distance_weighted_probabilities` (Gumbel top-k: the ``num_negatives``
  largest :math:`\log w_{an} + g_{an}`, :math:`g` standard Gumbel noise); an anchor
  with fewer candidates in the support takes them all. The noise of anchor ``i`` (its
  global row, with ``axis_name``) comes from ``jax.random.fold_in(key, i)``, so the
  mask does not depend on how the batch is split over devices.

  Args:
    {relation}
    key: a PRNG key.
    num_negatives: negatives per anchor (default 1; the paper's code draws one per
      positive pair, with replacement).
    cutoff: c > 0 (default 0.5, the paper's).
    nonzero_loss_cutoff: :math:`\tau` > 0 (default 1.4, the paper's).

  Returns:
    [n, m] bool mask: the positive pairs and the sampled negative pairs.

  >>> import jax
  >>> import jax.numpy as jnp
  >>> x = jax.random.normal(jax.random.key(0), (6, 8))
  >>> selected = distance_weighted_miner(x, jnp.array([0, 0, 1, 1, 2, 2]),
  ...                                    jax.random.key(1))
  >>> selected.shape, selected.sum(axis=1).tolist()  # 1 positive + 1 negative each
  ((6, 6), [2, 2, 2, 2, 2, 2])

  References:
    Wu, Manmatha, Smola, Krähenbühl. Sampling Matters in Deep Embedding Learning.
    ICCV 2017.
  """
  if not isinstance(num_negatives, int) or num_negatives < 1:
    raise ValueError(f"num_negatives must be an int >= 1, got {num_negatives!r}.")
  batch = _dense(rel)
  logits, support = _distance_weighted_logits(batch, cutoff, nonzero_loss_cutoff)
  n, m = logits.shape
  first = 0 if rel.axis_name is None else jax.lax.axis_index(rel.axis_name) * n
  rows = first + jnp.arange(n)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(rows)
  noise = jax.vmap(lambda k: jax.random.gumbel(k, (m,), logits.dtype))(keys)
  scores = jnp.where(support, logits + noise, -jnp.inf)
  kth_best = jax.lax.top_k(scores, min(num_negatives, m))[0][:, -1:]
  return batch.positive | (support & (scores >= kth_best))

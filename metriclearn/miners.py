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
and a selected negative. A miner defined on triplets (semi-hard, triplet margin,
angular) therefore selects the pairs of its triplets, and a loss given that mask may
see more triplets than the miner chose; each docstring says what that means against
pytorch-metric-learning's (PML's) triplet lists.

Miners that choose among the pairs of the whole batch (HDC, uniform histogram) see,
with ``axis_name``, the pairs of every device's anchors, so that they too give the
rows of the single-device mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metriclearn import _checks, distances, pairs, reduce

__all__ = [
  "angular_miner",
  "batch_easy_hard_miner",
  "batch_hard_miner",
  "distance_weighted_miner",
  "distance_weighted_probabilities",
  "hdc_miner",
  "multi_similarity_miner",
  "pair_margin_miner",
  "semi_hard_miner",
  "triplet_margin_miner",
  "uniform_histogram_miner",
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


# ----------------------------------------------------------------------------------
# Batch easy / hard, HDC, uniform histogram, angular and triplet-margin mining.

_STRATEGIES = ("easy", "semihard", "hard", "all")
_TRIPLET_TYPES = ("all", "hard", "semihard", "easy")


def _whole_batch(rel: pairs.Relation, *arrays: jax.Array):
  """The [n, M] arrays of every device's anchors ([N, M]), and the function that takes
  this device's rows back out of an [N, M] result (both identity without axis_name)."""
  if rel.axis_name is None:
    return arrays, lambda x: x
  n = arrays[0].shape[0]
  start = jax.lax.axis_index(rel.axis_name) * n
  gathered = tuple(pairs.gather(a, rel.axis_name) for a in arrays)
  return gathered, lambda x: jax.lax.dynamic_slice_in_dim(x, start, n, 0)


def _check_count(value, name: str) -> int:
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
  return value


def _check_range(allowed, name: str):
  if allowed is None:
    return None
  if not isinstance(allowed, tuple | list) or len(allowed) != 2:
    raise ValueError(f"{name} must be None or a pair (low, high), got {allowed!r}.")
  low, high = (_checks.concrete_value(v) for v in allowed)
  if low is not None and high is not None and not low <= high:
    raise ValueError(f"{name} must have low <= high, got {allowed!r}.")
  return tuple(allowed)


def _within(dist: jax.Array, allowed) -> jax.Array | bool:
  if allowed is None:
    return True
  low, high = (jnp.asarray(v).astype(dist.dtype) for v in allowed)
  return (dist >= low) & (dist <= high)


def _pick(dist: jax.Array, candidates: jax.Array, farthest: bool):
  """Per row, the farthest (or the closest) of ``candidates``, the first of equals:
  ([n, m] one-hot mask, [n] its distance, [n] whether the row has a candidate)."""
  if farthest:
    index = jnp.argmax(jnp.where(candidates, dist, -jnp.inf), axis=1)
  else:
    index = jnp.argmin(jnp.where(candidates, dist, jnp.inf), axis=1)
  has = jnp.any(candidates, axis=1)
  chosen = jnp.take_along_axis(dist, index[:, None], axis=1)[:, 0]
  return _one_hot_columns(index, dist.shape[1]) & has[:, None], chosen, has


@pairs.batch_form
def batch_easy_hard_miner(
  rel: pairs.Relation,
  *,
  pos_strategy: str = "easy",
  neg_strategy: str = "semihard",
  allowed_pos_range: tuple[float, float] | None = None,
  allowed_neg_range: tuple[float, float] | None = None,
  distance: str | distances.DistanceFn = "euclidean",
) -> jax.Array:
  r"""One positive and one negative per anchor, each easy, semi-hard or hard
  (Xuan et al. 2020), or all of them.

  With :math:`P_a, N_a` the anchor's positives and negatives (restricted to
  ``allowed_pos_range`` / ``allowed_neg_range``, :math:`l \le D \le h`, when given):

  .. math::
    p^\ast = \begin{cases}
      \arg\min_{p \in P_a} D_{ap} & \text{easy} \\
      \arg\max_{p \in P_a} D_{ap} & \text{hard} \\
      \arg\max \{D_{ap} : p \in P_a,\ D_{ap} < D_{an^\ast}\} & \text{semihard}
    \end{cases}
    \qquad
    n^\ast = \begin{cases}
      \arg\max_{n \in N_a} D_{an} & \text{easy} \\
      \arg\min_{n \in N_a} D_{an} & \text{hard} \\
      \arg\min \{D_{an} : n \in N_a,\ D_{an} > D_{ap^\ast}\} & \text{semihard}
    \end{cases}

  (ties: the first candidate). An anchor keeps its pair :math:`(p^\ast, n^\ast)`
  only if it has both; ``'all'`` on one side keeps every pair of that side (of every
  anchor) and the chosen pair of the other side wherever it exists. The default,
  easy positive and semi-hard negative, is the paper's EPSHN: the closest positive
  and the closest negative beyond it. A semi-hard side is defined by the other
  side's choice, so the two cannot both be semi-hard and semi-hard cannot go with
  ``'all'`` (ValueError, as in PML).

  pytorch-metric-learning's ``BatchEasyHardMiner(pos_strategy, neg_strategy,
  allowed_pos_range, allowed_neg_range)`` returns exactly these pairs; its default
  distance L2-normalises, so pass ``distances.l2_normalize(embeddings)``. One
  difference: PML ignores an allowed range on an ``'all'`` side; here the range
  applies to every strategy. Given this mask, a triplet loss forms the triplets
  :math:`(a, p^\ast, n^\ast)` (every combination with ``'all'``), as PML's
  ``convert_to_triplets``: ``TripletMarginLoss(margin=m)`` with this miner is
  ``batch_all_triplet_loss(x, y, margin=m, average='batch', mask=...).mean()`` on
  ``x = distances.l2_normalize(embeddings)``.

  Args:
    {relation}
    pos_strategy: 'easy' (default), 'semihard', 'hard' or 'all'.
    neg_strategy: 'semihard' (default), 'easy', 'hard' or 'all'.
    allowed_pos_range: optional ``(low, high)``: only positives with
      :math:`low \le D_{ap} \le high` take part.
    allowed_neg_range: optional ``(low, high)`` for the negatives.
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine', or a callable
      ``(a [n, d], b [m, d]) -> [n, m]``.

  Returns:
    [n, m] bool mask of the selected pairs.

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[0.0], [0.5], [0.4], [0.9], [0.3]])
  >>> y = jnp.array([0, 0, 1, 1, 0])
  >>> # anchor 0: positives 1 (0.5), 4 (0.3); negatives 2 (0.4), 3 (0.9). Easy
  >>> # positive: 4; semi-hard negative: the closest beyond 0.3, i.e. 2
  >>> batch_easy_hard_miner(x, y)[0]
  Array([False, False,  True, False,  True], dtype=bool)
  >>> # hard / hard: the farthest positive 1 and the closest negative 2
  >>> batch_easy_hard_miner(x, y, pos_strategy="hard", neg_strategy="hard")[0]
  Array([False,  True,  True, False, False], dtype=bool)

  References:
    Xuan, Stylianou, Liu, Pless. Hard Negative Examples are Hard, but Useful.
    ECCV 2020. Xuan, Stylianou, Pless. Improved Embeddings with Easy Positive
    Triplet Mining. WACV 2020.
  """
  for name, value in (("pos_strategy", pos_strategy), ("neg_strategy", neg_strategy)):
    if value not in _STRATEGIES:
      raise ValueError(f"{name} must be one of {_STRATEGIES}, got {value!r}.")
  sides = (pos_strategy, neg_strategy)
  if sides == ("semihard", "semihard"):
    raise ValueError(
      "pos_strategy and neg_strategy cannot both be 'semihard': each semi-hard side "
      "is defined by the pair chosen on the other side."
    )
  if "semihard" in sides and "all" in sides:
    raise ValueError(
      "'semihard' cannot be combined with 'all': a semi-hard pair is defined by the "
      f"one pair chosen on the other side (got {sides})."
    )
  pos_range = _check_range(allowed_pos_range, "allowed_pos_range")
  neg_range = _check_range(allowed_neg_range, "allowed_neg_range")
  batch = _dense(rel)
  dist = distances.get_pairwise_distance(distance)(batch.anchors, batch.candidates)
  positive = batch.positive & _within(dist, pos_range)
  negative = batch.negative & _within(dist, neg_range)
  pos_far, neg_far = pos_strategy != "easy", neg_strategy == "easy"
  pos = neg = None
  if pos_strategy == "semihard":
    neg = _pick(dist, negative, neg_far)
    pos = _pick(dist, positive & (dist < neg[1][:, None]), pos_far)
  elif neg_strategy == "semihard":
    pos = _pick(dist, positive, pos_far)
    neg = _pick(dist, negative & (dist > pos[1][:, None]), neg_far)
  else:
    if pos_strategy != "all":
      pos = _pick(dist, positive, pos_far)
    if neg_strategy != "all":
      neg = _pick(dist, negative, neg_far)
  if pos is None or neg is None:
    return (positive if pos is None else pos[0]) | (negative if neg is None else neg[0])
  return (pos[0] | neg[0]) & (pos[2] & neg[2])[:, None]


def _largest_share(score: jax.Array, select: jax.Array, share: jax.Array) -> jax.Array:
  """The ceil(share * count) entries of ``select`` with the largest ``score``, over the
  whole array (ties: the earlier entry in row-major order)."""
  flat = jnp.where(select, -score, jnp.inf).reshape(-1)
  order = jnp.argsort(flat, stable=True)
  rank = (
    jnp.zeros(flat.shape, jnp.int32)
    .at[order]
    .set(jnp.arange(flat.size, dtype=jnp.int32))
  )
  count = jnp.sum(select, dtype=jnp.int32).astype(share.dtype)
  k = jnp.ceil(share * count).astype(jnp.int32)
  return select & (rank < k).reshape(score.shape)


@pairs.batch_form
def hdc_miner(
  rel: pairs.Relation,
  *,
  filter_percentage: float | jax.Array = 0.5,
  distance: str | distances.DistanceFn = "euclidean",
) -> jax.Array:
  r"""The hardest share of the batch's positive and negative pairs (Yuan et al. 2017).

  With :math:`P` and :math:`N` the positive and negative pairs of the whole batch and
  :math:`f` = ``filter_percentage``:

  .. math::
    \text{selected} = \operatorname{top}_{\lceil f |P| \rceil}\{(a, p) \in P\ \text{by}
      \ D_{ap}\ \text{descending}\} \cup
      \operatorname{top}_{\lceil f |N| \rceil}\{(a, n) \in N\ \text{by}\ D_{an}
      \ \text{ascending}\}

  the farthest positive pairs and the closest negative pairs (ties: the earlier pair,
  row-major; :math:`\lceil f |P| \rceil` is computed in the embeddings' float
  dtype). The selection is over every pair of the batch, not per anchor; with
  ``axis_name`` over the pairs of every device's anchors. One sort of the n x M
  pairs.

  This is one stage of HDC's cascade: the paper trains models of increasing depth,
  each on the pairs the previous one finds hard. pytorch-metric-learning's
  ``HDCMiner(filter_percentage=f)`` returns exactly these pairs (its default distance
  L2-normalises: pass ``distances.l2_normalize(embeddings)``); any batch-form loss
  given ``mask=`` sees them (a triplet loss, every combination per anchor, as PML's
  ``convert_to_triplets``).

  Args:
    {relation}
    filter_percentage: :math:`f \in [0, 1]` (default 0.5, PML's).
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine', or a callable
      ``(a [n, d], b [m, d]) -> [n, m]``.

  Returns:
    [n, m] bool mask of the selected pairs.

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[0.0], [1.0], [3.0], [6.0]])
  >>> # positive pairs (0, 1), (1, 0) at 1 and (2, 3), (3, 2) at 3: keep ceil(0.5 * 4)
  >>> # = 2, the pairs at 3; of the 8 negative pairs (at 3, 6, 2, 5 and their mirror
  >>> # images) keep 4: those at 2, (1, 2) and (2, 1), and at 3, (0, 2) and (2, 0)
  >>> hdc_miner(x, jnp.array([0, 0, 1, 1])).astype(int).tolist()
  [[0, 0, 1, 0], [0, 0, 1, 0], [1, 1, 0, 1], [0, 0, 1, 0]]

  References:
    Yuan, Yang, Zhang. Hard-Aware Deeply Cascaded Embedding. ICCV 2017.
  """
  _checks.check_in_range(filter_percentage, "filter_percentage", 0.0, 1.0)
  batch = _dense(rel)
  dist = distances.get_pairwise_distance(distance)(batch.anchors, batch.candidates)
  (dist, positive, negative), local = _whole_batch(
    rel, dist, batch.positive, batch.negative
  )
  share = jnp.asarray(filter_percentage).astype(dist.dtype)
  hard = _largest_share(dist, positive, share) | _largest_share(-dist, negative, share)
  return local(hard)


def _uniform_over_bins(
  dist: jax.Array, select: jax.Array, key: jax.Array, num_bins: int, per_bin: int
) -> jax.Array:
  """``per_bin`` draws with replacement in each non-empty bin (equal widths over
  [min, max] of the selected distances); the mask of the entries drawn."""
  flat, chosen = dist.reshape(-1), select.reshape(-1)
  size = flat.size
  low = jnp.min(jnp.where(chosen, flat, jnp.inf))
  high = jnp.max(jnp.where(chosen, flat, -jnp.inf))
  some = jnp.any(chosen)
  edges = jnp.linspace(
    jnp.where(some, low, 0.0), jnp.where(some, high, 0.0), num_bins + 1
  )
  # bin i holds edges[i] <= D < edges[i + 1], the last one also D = edges[-1]
  bins = jnp.clip(jnp.searchsorted(edges, flat, side="right") - 1, 0, num_bins - 1)
  bins = jnp.where(chosen, bins, num_bins)  # an extra bin, never drawn from
  order = jnp.argsort(bins, stable=True)  # entries grouped by bin
  counts = jnp.bincount(bins, length=num_bins + 1)[:num_bins].astype(jnp.int32)
  starts = jnp.cumsum(counts) - counts
  draws = jax.random.randint(
    key, (num_bins, per_bin), 0, jnp.maximum(counts, 1)[:, None], jnp.int32
  )
  where = jnp.where(counts[:, None] > 0, starts[:, None] + draws, size).reshape(-1)
  drawn_sorted = jnp.zeros(size, bool).at[where].set(True, mode="drop")
  return jnp.zeros(size, bool).at[order].set(drawn_sorted).reshape(dist.shape)


@pairs.batch_form
def uniform_histogram_miner(
  rel: pairs.Relation,
  key: jax.Array,
  *,
  num_bins: int = 100,
  pos_per_bin: int = 10,
  neg_per_bin: int = 10,
  distance: str | distances.DistanceFn = "euclidean",
) -> jax.Array:
  r"""Pairs drawn so that their distances are spread uniformly over ``num_bins`` bins
  (pytorch-metric-learning's ``UniformHistogramMiner``).

  For the positive pairs of the whole batch (then, separately, the negative pairs),
  :math:`[\min D, \max D]` is cut into ``num_bins`` bins of equal width
  (:math:`e_i \le D < e_{i+1}`, the last bin closed), and in each non-empty bin
  ``pos_per_bin`` (``neg_per_bin``) pairs are drawn uniformly **with replacement**
  among its pairs. The mask holds the pairs drawn at least once: a pair in a bin of
  :math:`c` pairs is selected with probability :math:`1 - (1 - 1/c)^k`. With
  ``axis_name`` the bins and draws are over the pairs of every device's anchors
  (each device computes them from the same ``key``), so the mask does not depend on
  how the batch is split.

  PML draws the same way but returns index lists, in which a pair drawn twice counts
  twice in the loss; a mask holds it once, so PML's loss values are reproduced only
  when no pair is drawn twice (each bin's draws distinct). PML's default distance
  L2-normalises: pass ``distances.l2_normalize(embeddings)``.

  Args:
    {relation}
    key: a PRNG key.
    num_bins: bins per side (default 100, PML's).
    pos_per_bin: draws per non-empty bin of positive pairs (default 10, PML's).
    neg_per_bin: draws per non-empty bin of negative pairs (default 10, PML's).
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine', or a callable
      ``(a [n, d], b [m, d]) -> [n, m]``.

  Returns:
    [n, m] bool mask of the drawn pairs.

  >>> import jax
  >>> import jax.numpy as jnp
  >>> x = jax.random.normal(jax.random.key(0), (6, 3))
  >>> y = jnp.array([0, 0, 1, 1, 2, 2])
  >>> # one bin and one draw per side: one positive pair and one negative pair
  >>> mask = uniform_histogram_miner(x, y, jax.random.key(1), num_bins=1,
  ...                                pos_per_bin=1, neg_per_bin=1)
  >>> int(mask.sum())
  2

  References:
    Musgrave, Belongie, Lim. PyTorch Metric Learning. arXiv:2008.09164, 2020
    (``miners.UniformHistogramMiner``).
  """
  _check_count(num_bins, "num_bins")
  _check_count(pos_per_bin, "pos_per_bin")
  _check_count(neg_per_bin, "neg_per_bin")
  batch = _dense(rel)
  dist = distances.get_pairwise_distance(distance)(batch.anchors, batch.candidates)
  (dist, positive, negative), local = _whole_batch(
    rel, dist, batch.positive, batch.negative
  )
  pos_key, neg_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
  drawn = _uniform_over_bins(dist, positive, pos_key, num_bins, pos_per_bin)
  drawn |= _uniform_over_bins(dist, negative, neg_key, num_bins, neg_per_bin)
  return local(drawn)


@pairs.batch_form
def angular_miner(
  rel: pairs.Relation,
  *,
  angle: float | jax.Array = 20.0,
) -> jax.Array:
  r"""The pairs of the triplets whose angle at the negative exceeds ``angle``
  (pytorch-metric-learning's ``AngularMiner``, the angle of Wang et al. 2017).

  For a triplet (a, p, n) with :math:`x_c = (x_a + x_p) / 2` the centre of the
  positive pair, the angle at the negative is

  .. math::
    \theta_{apn} = \arctan \frac{\|x_a - x_p\|}{2\, \|x_n - x_c\|}

  (:math:`90°` when :math:`x_n = x_c \ne x_a`), and the mask holds every positive
  and every negative pair of a triplet with :math:`\theta_{apn} >` ``angle``:

  .. math::
    \text{selected}_{ap} = [p \in P_a]\,[\exists n \in N_a: \theta_{apn} > \alpha],
    \quad
    \text{selected}_{an} = [n \in N_a]\,[\exists p \in P_a: \theta_{apn} > \alpha]

  The angles are computed on the embeddings as given, as PML does (its ``LpDistance``
  normalises in ``forward`` but not in the ``pairwise_distance`` this miner uses);
  pass ``distances.l2_normalize(embeddings)`` for the unit-sphere setting of the
  angular loss. Every (a, p, n) is formed: O(n m^2) time, computed 16 anchors at a
  time (memory 16 x m x m).

  PML returns the triplets themselves; a triplet loss given this mask forms every
  combination of a selected positive and a selected negative, a superset of them, so
  no metriclearn call reproduces a PML loss on this miner's triplets exactly; the
  mask's pairs are PML's pairs (the distinct pairs of its triplets). Up to the 1e-6
  that ``torch.nn.functional.pairwise_distance`` adds, PML's ``AngularMiner(angle=α)``
  selects the triplets of ``angular_miner(x, y, angle=α)`` on the same ``x``.

  Args:
    {relation}
    angle: :math:`\alpha` in degrees, in [0, 90] (default 20, PML's).

  Returns:
    [n, m] bool mask of the selected pairs.

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[0.0, 0.0], [2.0, 0.0], [1.0, 1.0], [1.0, 3.0]])
  >>> # anchor 0, positive 1: |x_a - x_p| = 2, centre (1, 0). Negative 2 at 1 from it:
  >>> # arctan(2 / 2) = 45 > 20; negative 3 at 3: arctan(2 / 6) = 18.4 < 20
  >>> angular_miner(x, jnp.array([0, 0, 1, 2]))[0]
  Array([False,  True,  True, False], dtype=bool)

  References:
    Wang, Zhou, Wen, Liu, Lin. Deep Metric Learning with Angular Loss. ICCV 2017.
  """
  _checks.check_in_range(angle, "angle", 0.0, 90.0)
  batch = _dense(rel)
  a, c = batch.anchors, batch.candidates
  g_ac = distances.pairwise_dot(a, c)  # [n, M]
  g_cc = distances.pairwise_dot(c, c)  # [M, M]
  sq_a, sq_c = jnp.sum(a * a, axis=1), jnp.sum(c * c, axis=1)
  d_ap = distances.pairwise_euclidean(a, c)
  limit = jnp.deg2rad(jnp.asarray(angle).astype(d_ap.dtype))

  def row(inputs):
    g_a, sq, d, positive, negative = inputs  # one anchor: [M], [], [M], [M], [M]
    # |x_q - (x_a + x_p) / 2|^2 = |x_q|^2 - x_a.x_q - x_p.x_q + |x_a + x_p|^2 / 4
    d_nc2 = (
      sq_c[None, :] - g_a[None, :] - g_cc + ((sq + 2.0 * g_a + sq_c) / 4.0)[:, None]
    )
    d_nc = jnp.sqrt(jnp.maximum(d_nc2, 0.0))  # [p, q]
    wide = jnp.arctan2(d[:, None], 2.0 * d_nc) > limit
    triplets = positive[:, None] & negative[None, :] & wide
    return jnp.any(triplets, axis=1), jnp.any(triplets, axis=0)

  rows = (g_ac, sq_a, d_ap, batch.positive, batch.negative)
  positives, negatives = jax.lax.map(row, rows, batch_size=min(16, a.shape[0]))
  return (batch.positive & positives) | (batch.negative & negatives)


@pairs.batch_form
def triplet_margin_miner(
  rel: pairs.Relation,
  *,
  margin: float | jax.Array = _FACENET_MARGIN,
  type_of_triplets: str = "all",
  distance: str | distances.DistanceFn = "euclidean",
  squared: bool = False,
) -> jax.Array:
  r"""The pairs of the triplets inside (or, 'easy', beyond) the margin
  (pytorch-metric-learning's ``TripletMarginMiner``).

  With :math:`t_{apn} = D_{an} - D_{ap}` and :math:`m` = ``margin``, a triplet is
  selected when

  ==========  =======================  =============================================
  type        condition                meaning
  ==========  =======================  =============================================
  'all'       :math:`t \le m`          within the margin (every non-zero hinge loss)
  'hard'      :math:`t \le 0`          the negative is not farther than the positive
  'semihard'  :math:`0 < t \le m`      farther, but within the margin
  'easy'      :math:`t > m`            satisfies the margin
  ==========  =======================  =============================================

  and the mask holds every positive and negative pair of a selected triplet:

  .. math::
    \text{selected}_{ap} = [p \in P_a]\,[\exists n \in N_a: t_{apn} \in T], \quad
    \text{selected}_{an} = [n \in N_a]\,[\exists p \in P_a: t_{apn} \in T]

  Each row is sorted once: O(n m log m) time, O(n m) memory. 'semihard' here is
  PML's :math:`0 < t \le m` on the plain distance; :func:`semi_hard_miner` is
  FaceNet's :math:`0 < t < m` on the squared distance.

  PML's ``TripletMarginMiner(margin, type_of_triplets)`` returns the triplets; its
  default distance L2-normalises (pass ``x = distances.l2_normalize(embeddings)``; a
  ``CosineSimilarity`` there is ``distance='cosine'`` here). A triplet loss given this
  mask forms every combination of a selected positive and a selected negative, a
  superset of PML's triplets. With ``'all'`` and a loss margin :math:`m_l \le m` the
  extra triplets have a zero loss, so PML's ``TripletMarginLoss(margin=m_l)`` on
  this miner's triplets is ``batch_all_triplet_loss(x, y, margin=m_l,
  average='batch').mean()``, with or without this mask; for 'hard', 'semihard' and
  'easy' no pair mask reproduces PML's triplets.

  Args:
    {relation}
    margin: m >= 0 (default 0.2, PML's).
    type_of_triplets: 'all' (default), 'hard', 'semihard' or 'easy'.
    distance: 'euclidean' (default), 'cosine', or a callable
      ``(a [n, d], b [m, d]) -> [n, m]``.
    squared: square the distance (default False, PML's).

  Returns:
    [n, m] bool mask of the selected pairs.

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[0.0], [0.5], [0.4], [0.9], [0.3]])
  >>> y = jnp.array([0, 0, 1, 1, 0])
  >>> # anchor 0: positives 1 (0.5), 4 (0.3); negatives 2 (0.4), 3 (0.9):
  >>> # t = -0.1 (1, 2), 0.4 (1, 3), 0.1 (4, 2), 0.6 (4, 3)
  >>> triplet_margin_miner(x, y)[0]  # t <= 0.2: (1, 2) and (4, 2)
  Array([False,  True,  True, False,  True], dtype=bool)
  >>> triplet_margin_miner(x, y, type_of_triplets="hard")[0]  # t <= 0: (1, 2)
  Array([False,  True,  True, False, False], dtype=bool)
  >>> triplet_margin_miner(x, y, type_of_triplets="easy")[0]  # (1, 3), (4, 3)
  Array([False,  True, False,  True,  True], dtype=bool)

  References:
    Schroff, Kalenichenko, Philbin. FaceNet: A Unified Embedding for Face Recognition
    and Clustering. CVPR 2015.
  """
  if type_of_triplets not in _TRIPLET_TYPES:
    raise ValueError(
      f"type_of_triplets must be one of {_TRIPLET_TYPES}, got {type_of_triplets!r}."
    )
  _checks.check_non_negative(margin, "margin")
  batch = _dense(rel)
  dist = distances.distance_fn(distance, squared)(batch.anchors, batch.candidates)
  m = jnp.asarray(margin).astype(dist.dtype)
  zero = jnp.zeros((), dist.dtype)
  low, high = {  # selected: low < t <= high (None: unbounded)
    "all": (None, m),
    "hard": (None, zero),
    "semihard": (zero, m),
    "easy": (m, None),
  }[type_of_triplets]
  count = reduce.count_sorted
  sorted_pos = reduce.sorted_where(batch.positive, dist)
  sorted_neg = reduce.sorted_where(batch.negative, dist)
  # Negative n: #{p : D_an - high <= D_ap < D_an - low}.
  n_pos = jnp.sum(batch.positive, axis=1, keepdims=True, dtype=jnp.int32)
  below = n_pos if low is None else count(sorted_pos, dist - low, "left")
  under = 0 if high is None else count(sorted_pos, dist - high, "left")
  negatives = batch.negative & (below > under)
  # Positive p: #{n : D_ap + low < D_an <= D_ap + high}.
  n_neg = jnp.sum(batch.negative, axis=1, keepdims=True, dtype=jnp.int32)
  upto = n_neg if high is None else count(sorted_neg, dist + high, "right")
  past = 0 if low is None else count(sorted_neg, dist + low, "right")
  positives = batch.positive & (upto > past)
  return negatives | positives

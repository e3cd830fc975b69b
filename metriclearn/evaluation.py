"""The evaluation metrics metric-learning papers publish.

- Retrieval: exact k nearest neighbours computed block by block (:func:`knn`), and from
  one top-k pass Precision@1, Recall@K, R-precision, MAP@R and the mean reciprocal rank
  (:func:`retrieval_metrics`).
- Clustering: k-means with one cluster per class, NMI and AMI
  (:func:`clustering_metrics`).
- Verification on pairs: ROC curve and AUC, equal error rate, TAR at a FAR, best
  threshold accuracy (:func:`verification_metrics`).
- Few-shot: N-way K-shot accuracy (:func:`few_shot_accuracy`) and the official Omniglot
  20-way one-shot protocol of Lake et al. 2015 (:func:`omniglot_one_shot`).

Retrieval never builds the ``n x m`` distance matrix: queries go through in blocks
(``lax.map``) and, for each block, references go through in blocks (``lax.scan``)
while a running top-k is kept, so memory grows with ``query_block * (k + ref_block)``
plus the outputs (``n * k`` for :func:`knn`, a few numbers per query for the metrics);
blocks are slices of the inputs, never padded copies.

Ties are broken by the smaller reference index: of two references at the same computed
distance the one that comes first in ``references`` is the nearer. This holds exactly
for equal computed values (``lax.top_k`` puts the lower index first, and the running
top-k always holds references that come before the current block); distances are
computed as ``|q|^2 + |r|^2 - 2 q.r`` in one matrix product, so two mathematically
equal distances may differ in their last bit, as in any GEMM-based search.

Label ``-1`` marks padding: a padding reference is never a neighbour, a padding query is
not scored. When the queries are the references, a query is never its own neighbour.

Embeddings with a NaN or inf row are refused with a ValueError that says how many rows
(a NaN has no nearest neighbour; no metric is computed from it), whenever their values
are known: always for the metric functions, for :func:`knn` and
:func:`few_shot_predict` unless the caller traces them (its own ``jit``/``vmap``).
Counts (``k``, ``query_block``, ``ref_block``, ``recall_ks``, ``max_r``) must be
positive ints; labels that are classes must be integers.

:func:`knn` and :func:`few_shot_predict` are jit-compiled array functions. The metric
functions take concrete arrays (the number of neighbours needed depends on the class
sizes), do the heavy part in JAX and return Python floats.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metriclearn import _checks, distances

__all__ = [
  "DISTANCES",
  "FEW_SHOT_METHODS",
  "best_threshold_accuracy",
  "clustering_metrics",
  "equal_error_rate",
  "few_shot_accuracy",
  "few_shot_predict",
  "knn",
  "map_at_r",
  "mean_reciprocal_rank",
  "Neighbors",
  "omniglot_one_shot",
  "precision_at_1",
  "r_precision",
  "recall_at_k",
  "retrieval_metrics",
  "roc_auc",
  "roc_curve",
  "tar_at_far",
  "verification_metrics",
]

DISTANCES = ("euclidean", "squared_euclidean", "cosine", "dot")
FEW_SHOT_METHODS = ("prototype", "nearest_neighbor")


class Neighbors(NamedTuple):
  """The k nearest references of each query, nearest first.

  Attributes:
    values: [n, k] distances (``euclidean``, ``squared_euclidean``, ``cosine``), or
      similarities for ``dot`` (largest first). ``inf`` (``-inf`` for ``dot``) where
      fewer than k references are eligible.
    indices: [n, k] int32 row indices into the references; ``-1`` where fewer than k
      references are eligible.
  """

  values: jax.Array
  indices: jax.Array


# ----------------------------------------------------------------------------------
# Blockwise exact k nearest neighbours.


def _check_distance(distance: str) -> None:
  if distance not in DISTANCES:
    raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}.")


def _prepare(x: jax.Array, distance: str) -> tuple[jax.Array, jax.Array]:
  """Rows and their squared norms (zeros when the score does not need them)."""
  if distance == "cosine":
    x = distances.l2_normalize(x)
  if distance in ("euclidean", "squared_euclidean"):
    return x, jnp.sum(x * x, axis=1)
  return x, jnp.zeros(x.shape[:1], x.dtype)


def _score(q: jax.Array, q_sq: jax.Array, r: jax.Array, r_sq: jax.Array, distance: str):
  """[qb, rb] ranking score, larger = nearer: -squared distance, cosine or dot."""
  dots = jnp.matmul(q, r.T, precision=jax.lax.Precision.HIGHEST)
  if distance in ("euclidean", "squared_euclidean"):
    return -jnp.maximum(q_sq[:, None] + r_sq[None, :] - 2.0 * dots, 0.0)
  return dots


def _to_values(score: jax.Array, distance: str) -> jax.Array:
  """Ranking score back to the reported value (``-inf`` becomes ``inf`` distance)."""
  if distance == "euclidean":
    return jnp.sqrt(-score)
  if distance == "squared_euclidean":
    return -score
  if distance == "cosine":
    return 1.0 - score
  return score


def _balanced_block(n: int, block: int) -> int:
  """The smallest block size <= ``block`` that splits n rows into as few blocks."""
  num_blocks = -(-n // max(1, min(block, n)))
  return -(-n // num_blocks)


def _rows(x: jax.Array, start: jax.Array, size: int) -> jax.Array:
  return jax.lax.dynamic_slice_in_dim(x, start, size, axis=0)


def _blockwise(
  queries: jax.Array,
  references: jax.Array,
  ref_valid: jax.Array,
  per_query: Any,
  reducer,
  *,
  k: int,
  distance: str,
  exclude_self: bool,
  query_block: int,
  ref_block: int,
):
  """Top-k of each query block over all reference blocks, then ``reducer`` per block.

  ``reducer(scores [qb, k], indices [qb, k], per_query_block)`` returns a pytree of
  ``[qb, ...]`` arrays; the result is that pytree for all n queries. Blocks are slices
  of the inputs (no padded copies): the last block is shifted back to end at the last
  row, and the rows it shares with the block before are skipped (references) or
  dropped from the output (queries).
  """
  n, m = queries.shape[0], references.shape[0]
  qb, rb = _balanced_block(n, query_block), _balanced_block(m, ref_block)
  num_q, num_r = -(-n // qb), -(-m // rb)
  low = jnp.array(-jnp.inf, queries.dtype)

  def one_query_block(b):
    q_start = jnp.minimum(b * qb, n - qb)
    q_index = q_start + jnp.arange(qb, dtype=jnp.int32)
    qx, qx_sq = _prepare(_rows(queries, q_start, qb), distance)

    def merge(carry, c):
      best, best_idx = carry
      first_new = c * rb  # where this block starts; earlier rows are done
      r_start = jnp.minimum(first_new, m - rb)
      r_index = r_start + jnp.arange(rb, dtype=jnp.int32)
      rx, rx_sq = _prepare(_rows(references, r_start, rb), distance)
      s = _score(qx, qx_sq, rx, rx_sq, distance)
      keep = (_rows(ref_valid, r_start, rb) & (r_index >= first_new))[None, :]
      if exclude_self:
        keep = keep & (r_index[None, :] != q_index[:, None])
      # -0.0 -> 0.0: top_k orders -0.0 below 0.0; equal values must tie.
      s = jnp.where(keep, jnp.where(s == 0, 0.0, s), low)
      # The running top-k comes first and holds only smaller indices, so top_k's
      # lower-position-first rule is the smaller-index-first rule. (Putting the
      # running best first is also what makes XLA's CPU top_k fast: a partial sort
      # rejects most later entries after one comparison.)
      top, pos = jax.lax.top_k(jnp.concatenate([best, s], axis=1), k)
      kept = jnp.take_along_axis(best_idx, jnp.minimum(pos, k - 1), axis=1)
      return (top, jnp.where(pos < k, kept, r_start + pos - k)), None

    init = (jnp.full((qb, k), low), jnp.full((qb, k), -1, jnp.int32))
    (best, best_idx), _ = jax.lax.scan(merge, init, jnp.arange(num_r, dtype=jnp.int32))
    best_idx = jnp.where(best == low, -1, best_idx)
    extra = jax.tree.map(lambda a: _rows(a, q_start, qb), per_query)
    return reducer(best, best_idx, extra)

  out = jax.lax.map(one_query_block, jnp.arange(num_q, dtype=jnp.int32))
  shared = num_q * qb - n  # rows of the last block already in the one before

  def unblock(a):
    head = a[:-1].reshape((-1,) + a.shape[2:])
    return jnp.concatenate([head, a[-1, shared:]], axis=0)

  return jax.tree.map(unblock, out)


@functools.partial(
  jax.jit,
  static_argnames=("k", "distance", "exclude_self", "query_block", "ref_block"),
)
def _knn(
  queries, references, ref_valid, *, k, distance, exclude_self, query_block, ref_block
):
  def reducer(best, best_idx, _):
    return _to_values(best, distance), best_idx

  return _blockwise(
    queries,
    references,
    ref_valid,
    None,
    reducer,
    k=k,
    distance=distance,
    exclude_self=exclude_self,
    query_block=query_block,
    ref_block=ref_block,
  )


def _embeddings(x: Any, name: str) -> jax.Array:
  x = _checks.as_float(x, name)
  _checks.check_rank(x, 2, name, "[n, d]")
  _checks.check_finite_rows(x, name)
  return x


def knn(
  queries: jax.Array | np.ndarray,
  references: jax.Array | None = None,
  *,
  k: int,
  distance: str = "euclidean",
  ref_valid: jax.Array | None = None,
  exclude_self: bool | None = None,
  query_block: int = 512,
  ref_block: int = 8192,
) -> Neighbors:
  r"""Exact k nearest references of every query, computed block by block.

  .. math::
    \mathrm{indices}_{i,:} = \operatorname{arg\,top\text{-}k}_{j \ne i,\
      \mathrm{ref\_valid}_j} \; -d(q_i, r_j)

  Memory is ``O(query_block * (k + ref_block) + n * k)``; the ``n x m`` matrix is never
  formed. Ties go to the smaller reference index. Jit-compiled; each new combination of
  shapes and options compiles once.

  Args:
    queries: [n, d] query embeddings.
    references: [m, d] reference embeddings; ``None`` means the queries themselves.
    k: number of neighbours (may exceed the number of eligible references: the extra
      slots hold index ``-1``).
    distance: ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"`` (``1 - cos``) or
      ``"dot"`` (a similarity: largest first).
    ref_valid: [m] bool, False for references that may not be neighbours (padding).
    exclude_self: whether reference ``i`` is query ``i`` and must be skipped; default
      True when ``references`` is None, else False.
    query_block: at most this many queries at once.
    ref_block: at most this many references at once.

  Returns:
    :class:`Neighbors` ``(values [n, k], indices [n, k])``, nearest first.

  >>> x = jnp.array([[0.0], [1.0], [3.0]])
  >>> knn(x, k=1).indices.ravel().tolist()
  [1, 0, 1]
  """
  _check_distance(distance)
  queries = _embeddings(queries, "queries")
  if exclude_self is None:
    exclude_self = references is None
  references = queries if references is None else _embeddings(references, "references")
  if queries.shape[1] != references.shape[1]:
    raise ValueError(
      f"queries and references must have the same embedding size, got "
      f"{tuple(queries.shape)} and {tuple(references.shape)}."
    )
  queries, references = _checks.common_float(queries, references)
  if exclude_self and queries.shape[0] != references.shape[0]:
    raise ValueError(
      f"exclude_self needs as many queries as references, got {tuple(queries.shape)} "
      f"and {tuple(references.shape)}."
    )
  m = references.shape[0]
  ref_valid = (
    jnp.ones((m,), bool)
    if ref_valid is None
    else _checks.check_mask(ref_valid, (m,), "ref_valid")
  )
  return Neighbors(
    *_knn(
      queries,
      references,
      ref_valid,
      k=_checks.check_count(k, "k"),
      distance=distance,
      exclude_self=bool(exclude_self),
      query_block=_checks.check_count(query_block, "query_block"),
      ref_block=_checks.check_count(ref_block, "ref_block"),
    )
  )


# ----------------------------------------------------------------------------------
# Retrieval metrics from one top-k pass.


def _per_query_metrics(
  indices: jax.Array,
  query_labels: jax.Array,
  num_relevant: jax.Array,
  ref_labels: jax.Array,
  recall_ks: tuple[int, ...],
  dtype,
) -> jax.Array:
  """[qb, 4 + len(recall_ks)]: P@1, R-precision, AP@R, reciprocal rank, Recall@K."""
  k = indices.shape[1]
  neighbor_labels = jnp.where(indices >= 0, ref_labels[jnp.maximum(indices, 0)], -1)
  rel = (neighbor_labels == query_labels[:, None]) & (indices >= 0)
  relf = rel.astype(dtype)
  ranks = jnp.arange(1, k + 1, dtype=dtype)
  within_r = jnp.arange(1, k + 1)[None, :] <= num_relevant[:, None]
  denom = jnp.maximum(num_relevant, 1).astype(dtype)
  precision_at_i = jnp.cumsum(relf, axis=1) / ranks
  r_precision = jnp.sum(jnp.where(within_r, relf, 0.0), axis=1) / denom
  map_at_r = jnp.sum(jnp.where(within_r & rel, precision_at_i, 0.0), axis=1) / denom
  found = jnp.any(rel, axis=1)
  first = jnp.argmax(rel, axis=1).astype(dtype)
  rr = jnp.where(found, 1.0 / (first + 1.0), 0.0)
  recalls = [jnp.any(rel[:, :kk], axis=1).astype(dtype) for kk in recall_ks]
  return jnp.stack([relf[:, 0], r_precision, map_at_r, rr, *recalls], axis=1)


@functools.partial(
  jax.jit,
  static_argnames=(
    "k",
    "recall_ks",
    "distance",
    "exclude_self",
    "query_block",
    "ref_block",
  ),
)
def _retrieval(
  queries,
  references,
  query_labels,
  ref_labels,
  num_relevant,
  *,
  k,
  recall_ks,
  distance,
  exclude_self,
  query_block,
  ref_block,
):
  def reducer(_, best_idx, extra):
    labels, r = extra
    return _per_query_metrics(best_idx, labels, r, ref_labels, recall_ks, queries.dtype)

  return _blockwise(
    queries,
    references,
    ref_labels >= 0,
    (query_labels, num_relevant),
    reducer,
    k=k,
    distance=distance,
    exclude_self=exclude_self,
    query_block=query_block,
    ref_block=ref_block,
  )


def _labels(labels: Any, n: int, name: str) -> np.ndarray:
  labels = np.asarray(labels)
  if not np.issubdtype(labels.dtype, np.integer):
    raise TypeError(f"{name} must be integers, got dtype {labels.dtype}.")
  if labels.shape != (n,):
    raise ValueError(
      f"{name} must have shape ({n},) to match the embeddings, got "
      f"{tuple(labels.shape)}."
    )
  return labels.astype(np.int64)


def _count_matches(query_labels: np.ndarray, ref_labels: np.ndarray) -> np.ndarray:
  """[n] number of valid references with each query's label."""
  classes, counts = np.unique(ref_labels[ref_labels >= 0], return_counts=True)
  if len(classes) == 0:
    return np.zeros(query_labels.shape, np.int64)
  pos = np.minimum(np.searchsorted(classes, query_labels), len(classes) - 1)
  hit = (classes[pos] == query_labels) & (query_labels >= 0)
  return np.where(hit, counts[pos], 0)


def retrieval_metrics(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  distance: str = "euclidean",
  recall_ks: Sequence[int] = (1, 2, 4, 8),
  max_r: int | None = None,
  query_block: int = 512,
  ref_block: int = 8192,
) -> dict[str, float]:
  r"""Precision@1, Recall@K, R-precision, MAP@R and MRR from one blockwise top-k pass.

  For query :math:`q` with :math:`R` relevant references (same label; itself excluded
  when the queries are the references), :math:`\mathrm{rel}(i) = 1` if its i-th
  nearest reference is relevant and :math:`P(i) = \frac{1}{i}\sum_{j \le i}
  \mathrm{rel}(j)`:

  .. math::
    \mathrm{P@1} = \mathrm{rel}(1), \quad
    \mathrm{Recall@K} = \max_{i \le K} \mathrm{rel}(i), \quad
    \mathrm{R\text{-}precision} = \frac{1}{R}\sum_{i=1}^{R} \mathrm{rel}(i), \quad
    \mathrm{MAP@R} = \frac{1}{R}\sum_{i=1}^{R} P(i)\,\mathrm{rel}(i), \quad
    \mathrm{RR} = \frac{1}{\min\{i : \mathrm{rel}(i) = 1\}}

  each averaged over the scored queries. Recall@K is the deep-metric-learning
  definition (Song et al. 2016): 1 if any of the K nearest shares the label, not the
  information-retrieval recall. R is capped at ``max_r`` (the default is the largest R,
  so nothing is capped); the pass finds ``k = max(max_r, max(recall_ks))`` neighbours,
  and the reciprocal rank is 0 when no relevant reference is among those k (MRR@k; with
  the default ``max_r`` it is exact unless a query's first relevant reference lies
  beyond rank max R). Queries with label ``-1`` or with no relevant reference (R = 0)
  are not scored (as in pytorch-metric-learning); references with label ``-1`` are
  never neighbours.

  Args:
    embeddings: [n, d] query embeddings.
    labels: [n] int query labels (``-1``: padding).
    ref_embeddings: [m, d] references; default: the queries (leave-one-out).
    ref_labels: [m] int reference labels; required with ``ref_embeddings``.
    distance: ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"`` or ``"dot"``.
    recall_ks: the K of each Recall@K.
    max_r: cap on R (and the top-k size); default the largest R of any query.
    query_block: at most this many queries at once.
    ref_block: at most this many references at once.

  Returns:
    ``{"precision_at_1", "recall_at_K" for each K, "r_precision", "map_at_r", "mrr"}``
    as floats.

  >>> x = jnp.array([[0.0], [0.1], [1.0], [1.2]])
  >>> retrieval_metrics(x, jnp.array([0, 0, 1, 1]))["map_at_r"]
  1.0

  References:
    Musgrave, Belongie & Lim, "A Metric Learning Reality Check", ECCV 2020.
    Song, Xiang, Jegelka & Savarese, "Deep Metric Learning via Lifted Structured
    Feature Embedding", CVPR 2016.
  """
  _check_distance(distance)
  queries = _embeddings(embeddings, "embeddings")
  q_labels = _labels(labels, queries.shape[0], "labels")
  exclude_self = ref_embeddings is None
  if exclude_self:
    if ref_labels is not None:
      raise ValueError("ref_labels given without ref_embeddings.")
    references, r_labels = queries, q_labels
  else:
    if ref_labels is None:
      raise ValueError("ref_embeddings needs ref_labels.")
    references = _embeddings(ref_embeddings, "ref_embeddings")
    if references.shape[1] != queries.shape[1]:
      raise ValueError(
        f"embeddings and ref_embeddings must have the same embedding size, got "
        f"{tuple(queries.shape)} and {tuple(references.shape)}."
      )
    r_labels = _labels(ref_labels, references.shape[0], "ref_labels")
  queries, references = _checks.common_float(queries, references)
  recall_ks = tuple(_checks.check_count(kk, "recall_ks") for kk in recall_ks)
  query_block = _checks.check_count(query_block, "query_block")
  ref_block = _checks.check_count(ref_block, "ref_block")

  num_relevant = _count_matches(q_labels, r_labels)
  if exclude_self:
    num_relevant = np.where(q_labels >= 0, num_relevant - 1, 0)
  scored = num_relevant > 0
  if not scored.any():
    raise ValueError(
      "no query has a relevant reference: every label is -1 or has no other "
      "reference with the same label (check labels and ref_labels)."
    )
  max_r = (
    int(num_relevant.max()) if max_r is None else _checks.check_count(max_r, "max_r")
  )
  num_relevant = np.minimum(num_relevant, max_r)
  k = max(max_r, *recall_ks)

  per_query = _retrieval(
    queries,
    references,
    jnp.asarray(q_labels, jnp.int32),
    jnp.asarray(r_labels, jnp.int32),
    jnp.asarray(num_relevant, jnp.int32),
    k=k,
    recall_ks=recall_ks,
    distance=distance,
    exclude_self=exclude_self,
    query_block=query_block,
    ref_block=ref_block,
  )
  means = np.asarray(per_query, np.float64)[scored].mean(axis=0).tolist()
  p1, r_prec, map_r, mrr, *recalls = means
  return {
    "precision_at_1": p1,
    **{f"recall_at_{kk}": v for kk, v in zip(recall_ks, recalls, strict=True)},
    "r_precision": r_prec,
    "map_at_r": map_r,
    "mrr": mrr,
  }


def precision_at_1(embeddings: jax.Array, labels: jax.Array, **kwargs) -> float:
  """Precision@1: the fraction of queries whose nearest reference shares the label.

  Same arguments as :func:`retrieval_metrics`.
  """
  metrics = retrieval_metrics(embeddings, labels, recall_ks=(1,), max_r=1, **kwargs)
  return metrics["precision_at_1"]


def recall_at_k(embeddings: jax.Array, labels: jax.Array, k: int, **kwargs) -> float:
  """Recall@K (Song et al. 2016): the fraction of queries with a same-label reference
  among their K nearest. Same keyword arguments as :func:`retrieval_metrics`."""
  metrics = retrieval_metrics(embeddings, labels, recall_ks=(k,), max_r=1, **kwargs)
  return metrics[f"recall_at_{k}"]


def r_precision(embeddings: jax.Array, labels: jax.Array, **kwargs) -> float:
  """R-precision (Musgrave et al. 2020). Same arguments as :func:`retrieval_metrics`."""
  return retrieval_metrics(embeddings, labels, recall_ks=(1,), **kwargs)["r_precision"]


def map_at_r(embeddings: jax.Array, labels: jax.Array, **kwargs) -> float:
  """MAP@R (Musgrave et al. 2020). Same arguments as :func:`retrieval_metrics`."""
  return retrieval_metrics(embeddings, labels, recall_ks=(1,), **kwargs)["map_at_r"]


def mean_reciprocal_rank(embeddings: jax.Array, labels: jax.Array, **kwargs) -> float:
  """Mean reciprocal rank of the first relevant reference (MRR@k, see
  :func:`retrieval_metrics`). Same arguments as :func:`retrieval_metrics`."""
  return retrieval_metrics(embeddings, labels, recall_ks=(1,), **kwargs)["mrr"]


# ----------------------------------------------------------------------------------
# Clustering.


def clustering_metrics(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  num_clusters: int | None = None,
  distance: str = "euclidean",
  seed: int = 0,
  n_init: int = 1,
) -> dict[str, float]:
  r"""NMI and AMI of k-means clusters against the labels (one cluster per class).

  .. math::
    \mathrm{NMI} = \frac{I(Y; C)}{\tfrac12 (H(Y) + H(C))}

  with :math:`C` the k-means assignment (scikit-learn ``KMeans``, k-means++, seeded)
  and :math:`Y` the labels; AMI corrects the mutual information for chance.

  Args:
    embeddings: [n, d].
    labels: [n] int (``-1``: padding, left out).
    num_clusters: default the number of distinct labels.
    distance: ``"euclidean"``, or ``"cosine"`` to cluster the L2-normalised rows.
    seed: k-means random state.
    n_init: k-means restarts.

  Returns:
    ``{"nmi": float, "ami": float}``.

  >>> x = jnp.array([[0.0], [0.1], [5.0], [5.1]])
  >>> clustering_metrics(x, jnp.array([0, 0, 1, 1]))["nmi"]
  1.0

  References:
    Song, Xiang, Jegelka & Savarese, CVPR 2016 (NMI for deep metric learning); Vinh,
    Epps & Bailey, JMLR 2010 (AMI).
  """
  from sklearn.cluster import KMeans
  from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

  if distance not in ("euclidean", "cosine"):
    raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}.")
  x: jax.Array | np.ndarray
  x = _embeddings(embeddings, "embeddings")
  y = _labels(labels, x.shape[0], "labels")
  if distance == "cosine":
    x = distances.l2_normalize(x)
  keep = y >= 0
  x, y = np.asarray(x, np.float64)[keep], y[keep]
  if num_clusters is None:
    num_clusters = len(np.unique(y))
  if not 1 <= num_clusters <= len(y):
    raise ValueError(
      f"num_clusters must lie in [1, {len(y)}] (the number of labelled rows), got "
      f"{num_clusters}."
    )
  assignment = KMeans(
    n_clusters=num_clusters, n_init=n_init, random_state=seed
  ).fit_predict(x)
  return {
    "nmi": float(normalized_mutual_info_score(y, assignment)),
    "ami": float(adjusted_mutual_info_score(y, assignment)),
  }


# ----------------------------------------------------------------------------------
# Verification on pairs.


def _pairs(scores: Any, similar: Any, is_distance: bool) -> tuple[np.ndarray, ...]:
  scores = np.asarray(scores, np.float64)
  similar = np.asarray(similar)
  if scores.ndim != 1 or similar.shape != scores.shape:
    raise ValueError(
      f"scores and similar must be 1-D of the same length, got {scores.shape} and "
      f"{similar.shape}."
    )
  if similar.dtype != np.bool_:
    if not np.all((similar == 0) | (similar == 1)):
      raise ValueError("similar must be boolean or 0/1.")
    similar = similar != 0
  if similar.all() or not similar.any():
    raise ValueError("similar must hold both similar and dissimilar pairs.")
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores must be finite.")
  return (-scores if is_distance else scores), similar


def roc_curve(
  scores: Any, similar: Any, *, is_distance: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  r"""ROC curve: false and true accept rates at every threshold.

  .. math::
    \mathrm{FAR}(t) = P(s \ge t \mid \lnot\mathrm{similar}), \quad
    \mathrm{TAR}(t) = P(s \ge t \mid \mathrm{similar})

  Args:
    scores: [p] pair similarities (larger = more alike), or distances with
      ``is_distance=True`` (then a pair is accepted when ``distance <= t``).
    similar: [p] bool, True for pairs of the same kind.
    is_distance: whether ``scores`` are distances.

  Returns:
    ``(far, tar, thresholds)``, each [t], thresholds from strict to lenient (the first
    accepts nothing); every operating point is kept.

  >>> far, tar, _ = roc_curve([0.9, 0.1], [True, False])
  >>> far.tolist(), tar.tolist()
  ([0.0, 0.0, 1.0], [0.0, 1.0, 1.0])
  """
  from sklearn import metrics

  s, y = _pairs(scores, similar, is_distance)
  fpr, tpr, thresholds = metrics.roc_curve(y, s, drop_intermediate=False)
  return fpr, tpr, (-thresholds if is_distance else thresholds)


def roc_auc(scores: Any, similar: Any, *, is_distance: bool = False) -> float:
  """Area under the ROC curve: P(a similar pair outscores a dissimilar one), ties 1/2.

  Args as in :func:`roc_curve`.

  >>> roc_auc([0.9, 0.4, 0.5, 0.1], [True, True, False, False])
  0.75
  """
  from sklearn import metrics

  s, y = _pairs(scores, similar, is_distance)
  return float(metrics.roc_auc_score(y, s))


def equal_error_rate(scores: Any, similar: Any, *, is_distance: bool = False) -> float:
  r"""Equal error rate: the FAR where it equals the false reject rate ``1 - TAR``.

  Found on the ROC curve drawn as straight segments between operating points: the
  first segment where :math:`\mathrm{FRR} - \mathrm{FAR}` changes sign is
  interpolated linearly. Args as in :func:`roc_curve`.

  >>> equal_error_rate([0.9, 0.8, 0.2, 0.1], [True, True, False, False])
  0.0
  """
  far, tar, _ = roc_curve(scores, similar, is_distance=is_distance)
  gap = (1.0 - tar) - far  # FRR - FAR: 1 at the strictest threshold, -1 at the end
  i = int(np.argmax(gap <= 0))
  if gap[i] == 0 or i == 0:
    return float(far[i])
  t = gap[i - 1] / (gap[i - 1] - gap[i])
  return float(far[i - 1] + t * (far[i] - far[i - 1]))


def tar_at_far(
  scores: Any, similar: Any, far: float, *, is_distance: bool = False
) -> float:
  """True accept rate at the most lenient threshold whose FAR is <= ``far``.

  No interpolation: the best operating point that does not exceed the allowed false
  accept rate. Args as in :func:`roc_curve`; ``far`` in [0, 1].

  >>> tar_at_far([0.9, 0.4, 0.5, 0.1], [True, True, False, False], 0.0)
  0.5
  """
  _checks.check_in_range(far, "far", 0.0, 1.0)
  fars, tars, _ = roc_curve(scores, similar, is_distance=is_distance)
  return float(np.max(tars[fars <= far]))


def best_threshold_accuracy(
  scores: Any, similar: Any, *, is_distance: bool = False
) -> tuple[float, float]:
  """Best pair accuracy over thresholds, and that threshold.

  A pair is predicted similar when ``score >= threshold`` (``distance <= threshold``
  with ``is_distance``); of equally good thresholds the strictest is returned.
  Args as in :func:`roc_curve`.

  Returns:
    ``(accuracy, threshold)``.

  >>> best_threshold_accuracy([0.9, 0.4, 0.5, 0.1], [True, True, False, False])
  (0.75, 0.9)
  """
  _, y = _pairs(scores, similar, is_distance)
  fars, tars, thresholds = roc_curve(scores, similar, is_distance=is_distance)
  pos, neg = y.sum(), (~y).sum()
  accuracy = (tars * pos + (1.0 - fars) * neg) / (pos + neg)
  i = int(np.argmax(accuracy))
  return float(accuracy[i]), float(thresholds[i])


def verification_metrics(
  scores: Any,
  similar: Any,
  *,
  is_distance: bool = False,
  fars: Sequence[float] = (1e-3, 1e-2, 1e-1),
) -> dict[str, float]:
  """AUC, EER, TAR at each FAR, best accuracy and its threshold, as one dict.

  Args as in :func:`roc_curve`; ``fars``: the false accept rates for ``tar_at_far_F``.

  Returns:
    ``{"auc", "eer", "tar_at_far_<far>" for each far, "best_accuracy",
    "best_threshold"}``.

  >>> verification_metrics([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], fars=())["eer"]
  0.0
  """
  accuracy, threshold = best_threshold_accuracy(
    scores, similar, is_distance=is_distance
  )
  out = {
    "auc": roc_auc(scores, similar, is_distance=is_distance),
    "eer": equal_error_rate(scores, similar, is_distance=is_distance),
  }
  for far in fars:
    out[f"tar_at_far_{far:g}"] = tar_at_far(
      scores, similar, far, is_distance=is_distance
    )
  out["best_accuracy"], out["best_threshold"] = accuracy, threshold
  return out


# ----------------------------------------------------------------------------------
# Few-shot classification.


def _few_shot_predict_one(support, support_labels, queries, method, distance):
  if method == "prototype":
    same = (support_labels[:, None] == support_labels[None, :]).astype(support.dtype)
    # Each support row is replaced by its class mean (K identical copies per class).
    support = (same @ support) / jnp.sum(same, axis=1, keepdims=True)
  q, q_sq = _prepare(queries, distance)
  s, s_sq = _prepare(support, distance)
  score = _score(q, q_sq, s, s_sq, distance)
  return support_labels[jnp.argmax(score, axis=1)]


def few_shot_predict(
  support: jax.Array,
  support_labels: jax.Array,
  queries: jax.Array,
  *,
  method: str = "prototype",
  distance: str = "euclidean",
) -> jax.Array:
  r"""Labels of queries by nearest class prototype or nearest support example.

  .. math::
    \hat y(q) = \operatorname*{arg\,min}_{c} d\Big(q, \tfrac{1}{|S_c|}
      \textstyle\sum_{x \in S_c} x\Big) \quad \text{(prototype)}, \qquad
    \hat y(q) = y\big(\operatorname*{arg\,min}_{x \in S} d(q, x)\big)
      \quad \text{(nearest_neighbor)}

  Ties go to the class (or example) that appears first in ``support``. Leading axes
  are episodes; works under jit and vmap.

  Args:
    support: [..., s, d] support embeddings (N classes x K shots, any order).
    support_labels: [..., s] int labels of the support examples.
    queries: [..., q, d] query embeddings.
    method: ``"prototype"`` (Snell et al. 2017; mean of each class's support) or
      ``"nearest_neighbor"`` (1-NN over the support examples).
    distance: ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"`` or ``"dot"``.

  Returns:
    [..., q] predicted labels.

  Non-finite ``support`` or ``queries`` rows raise a ValueError when their values are
  known (an eager call); under the caller's ``jit``/``vmap`` they cannot be checked.

  >>> few_shot_predict(jnp.array([[0.0], [4.0]]), jnp.array([7, 9]),
  ...                  jnp.array([[1.0], [3.0]])).tolist()
  [7, 9]
  """
  _checks.check_finite_rows(support, "support")
  _checks.check_finite_rows(queries, "queries")
  return _few_shot_predict(
    support, support_labels, queries, method=method, distance=distance
  )


@functools.partial(jax.jit, static_argnames=("method", "distance"))
def _few_shot_predict(support, support_labels, queries, *, method, distance):
  _check_distance(distance)
  if method not in FEW_SHOT_METHODS:
    raise ValueError(f"method must be one of {FEW_SHOT_METHODS}, got {method!r}.")
  support = _checks.as_float(support, "support")
  queries = _checks.as_float(queries, "queries")
  support, queries = _checks.common_float(support, queries)
  support_labels = jnp.asarray(support_labels)
  if not jnp.issubdtype(support_labels.dtype, jnp.integer):
    raise TypeError(
      f"support_labels must be integers (classes), got dtype {support_labels.dtype}."
    )
  if support.ndim < 2 or queries.ndim != support.ndim:
    raise ValueError(
      f"support [..., s, d] and queries [..., q, d] must have the same rank >= 2, got "
      f"{tuple(support.shape)} and {tuple(queries.shape)}."
    )
  if support.shape[:-2] != queries.shape[:-2] or support.shape[-1] != queries.shape[-1]:
    raise ValueError(
      f"support and queries must share episode axes and embedding size, got "
      f"{tuple(support.shape)} and {tuple(queries.shape)}."
    )
  if support_labels.shape != support.shape[:-1]:
    raise ValueError(
      f"support_labels must have shape {tuple(support.shape[:-1])}, got "
      f"{tuple(support_labels.shape)}."
    )
  batch = support.shape[:-2]
  flat = jax.vmap(
    functools.partial(_few_shot_predict_one, method=method, distance=distance)
  )(
    support.reshape((-1,) + support.shape[-2:]),
    support_labels.reshape((-1, support.shape[-2])),
    queries.reshape((-1,) + queries.shape[-2:]),
  )
  return flat.reshape(batch + queries.shape[-2:-1])


def few_shot_accuracy(
  support: jax.Array,
  support_labels: jax.Array,
  queries: jax.Array,
  query_labels: jax.Array | np.ndarray,
  *,
  method: str = "prototype",
  distance: str = "euclidean",
) -> float:
  """N-way K-shot accuracy: the fraction of queries labelled right by
  :func:`few_shot_predict` (over all episodes).

  Args:
    support, support_labels, queries, method, distance: as in
      :func:`few_shot_predict`.
    query_labels: [..., q] int true labels.

  >>> few_shot_accuracy(jnp.array([[0.0], [4.0]]), jnp.array([0, 1]),
  ...                   jnp.array([[1.0], [1.5]]), jnp.array([0, 1]))
  0.5

  References:
    Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016 (N-way
    K-shot episodes); Snell, Swersky & Zemel, "Prototypical Networks for Few-shot
    Learning", NeurIPS 2017.
  """
  predicted = few_shot_predict(
    support, support_labels, queries, method=method, distance=distance
  )
  query_labels = np.asarray(query_labels)
  if query_labels.shape != predicted.shape:
    raise ValueError(
      f"query_labels must have shape {tuple(predicted.shape)}, got "
      f"{tuple(query_labels.shape)}."
    )
  return float(np.mean(np.asarray(predicted) == query_labels))


def omniglot_one_shot(
  train_embeddings: jax.Array,
  test_embeddings: jax.Array,
  answers: jax.Array | np.ndarray,
  *,
  distance: str = "euclidean",
) -> dict[str, Any]:
  r"""The official Omniglot one-shot protocol: 20 runs of 20-way within-alphabet 1-NN.

  Each run has one training image of each of 20 characters of one alphabet and 20 test
  images; a test image is classified as the training image nearest to it (1-NN), and
  the score is the error averaged over runs:

  .. math::
    \mathrm{error} = \frac{1}{R} \sum_{r=1}^{R} \frac{1}{T} \sum_{t=1}^{T}
      \Big[\operatorname*{arg\,min}_c d(x^{test}_{rt}, x^{train}_{rc}) \ne a_{rt}\Big]

  Args:
    train_embeddings: [runs, 20, d] embeddings of ``runNN/training/classCC.png``,
      classes in order.
    test_embeddings: [runs, 20, d] embeddings of ``runNN/test/itemTT.png``.
    answers: [runs, 20] int, the 0-based index of the training class of each test item
      (from ``runNN/class_labels.txt``).
    distance: as in :func:`few_shot_predict`.

  Returns:
    ``{"error": float, "accuracy": float, "run_errors": np.ndarray [runs]}`` (fractions,
    not percent).

  >>> train = jnp.eye(3)[None]
  >>> omniglot_one_shot(train, train[:, ::-1], jnp.array([[2, 1, 0]]))["error"]
  0.0

  References:
    Lake, Salakhutdinov & Tenenbaum, "Human-level concept learning through
    probabilistic program induction", Science 2015 (github.com/brendenlake/omniglot,
    ``all_runs.zip``).
  """
  train = _checks.as_float(train_embeddings, "train_embeddings")
  _checks.check_rank(train, 3, "train_embeddings", "[runs, classes, d]")
  test = _checks.as_float(test_embeddings, "test_embeddings")
  _checks.check_rank(test, 3, "test_embeddings", "[runs, items, d]")
  _checks.check_finite_rows(train, "train_embeddings")
  _checks.check_finite_rows(test, "test_embeddings")
  answers = np.asarray(answers)
  if answers.shape != test.shape[:2]:
    raise ValueError(
      f"answers must have shape {tuple(test.shape[:2])} (runs, test items), got "
      f"{tuple(answers.shape)}."
    )
  runs, ways = train.shape[:2]
  labels = jnp.broadcast_to(jnp.arange(ways, dtype=jnp.int32), (runs, ways))
  predicted = few_shot_predict(
    train, labels, test, method="nearest_neighbor", distance=distance
  )
  run_errors = np.mean(np.asarray(predicted) != answers, axis=1)
  error = float(run_errors.mean())
  return {"error": error, "accuracy": 1.0 - error, "run_errors": run_errors}

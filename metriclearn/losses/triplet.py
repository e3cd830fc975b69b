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

The batch forms take the arguments of :func:`metriclearn.losses._batch.prepare`
(``ref_embeddings``, ``ref_labels``, ``positive_mask``, ``label_comparison``, ``mask``
-- e.g. a miner's output -- and ``axis_name``) and return one value per anchor, 0 where
the anchor has no valid triplet.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp

from metriclearn import _checks, distances, masks, reduce
from metriclearn.losses import _batch

DEFAULT_MARGIN = 0.2
_AVERAGES = ("anchor", "batch")


# ----------------------------------------------------------------------------------
# Shared pieces (also used by metriclearn.miners).


def resolve_margin(margin: float | jax.Array | None, soft: bool) -> float | jax.Array:
  """``None`` -> 0.2 for the hinge, 0 for the soft-plus; otherwise checks ``>= 0``."""
  if margin is None:
    return 0.0 if soft else DEFAULT_MARGIN
  _checks.check_non_negative(margin, "margin")
  return margin


def distance_fn(
  distance: str | Callable, squared: bool, *, pairwise: bool = True
) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The distance named ``distance``, squared if ``squared`` (pairwise or one pair)."""
  get = distances.get_pairwise_distance if pairwise else distances.get_distance
  if squared and isinstance(distance, str):
    if distance == "squared_euclidean":
      raise ValueError(
        "distance='squared_euclidean' is already squared: pass distance='euclidean' "
        "with squared=True, or squared=False."
      )
    if distance == "euclidean":
      return get("squared_euclidean")
  fn = get(distance)
  if not squared:
    return fn
  return lambda a, b: jnp.square(fn(a, b))


def triplet_formula(
  d_ap: jax.Array, d_an: jax.Array, margin: float | jax.Array, soft: bool
) -> jax.Array:
  r""":math:`\max(0, m + d_{ap} - d_{an})`, or its soft-plus if ``soft``."""
  x = d_ap - d_an + jnp.asarray(margin).astype(d_ap.dtype)
  return jax.nn.softplus(x) if soft else jax.nn.relu(x)


def sorted_where(mask: jax.Array, values: jax.Array) -> jax.Array:
  """Each row of ``values`` restricted to ``mask`` and sorted; +inf fills the rest."""
  return jnp.sort(jnp.where(mask, values, jnp.inf), axis=-1)


def count_sorted(sorted_rows: jax.Array, queries: jax.Array, side: str) -> jax.Array:
  """Per row, how many sorted entries are < (side 'left') or <= ('right') each query."""
  search = functools.partial(jnp.searchsorted, side=side)
  return jax.vmap(search)(sorted_rows, queries)


def _check_average(average: str) -> None:
  if average not in _AVERAGES:
    raise ValueError(f"average must be one of {_AVERAGES}, got {average!r}.")


def average_terms(
  total: jax.Array, count: jax.Array, average: str, axis_name: str | None
) -> jax.Array:
  """Per-anchor ``total`` [n] over ``count`` [n] terms, as an anchor or batch average.

  'anchor': ``total / count`` (0 where ``count`` is 0). 'batch': ``total * N / C`` with
  ``N`` the number of anchors and ``C`` the number of terms in the whole batch (every
  device of ``axis_name``), so that the plain mean of the values is ``sum(total) / C``.
  """
  if average == "anchor":
    safe = jnp.maximum(count, 1).astype(total.dtype)
    return jnp.where(count > 0, total / safe, 0.0)
  n_anchors = count.shape[0]
  batch_count = jnp.sum(count)
  if axis_name is not None:
    n_anchors *= jax.lax.axis_size(axis_name)
    batch_count = jax.lax.psum(batch_count, axis_name)
  scale = n_anchors / jnp.maximum(batch_count, 1).astype(total.dtype)
  return total * scale


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
) -> jax.Array:
  r"""Triplet margin loss of one triplet (FaceNet by default).

  .. math::
    \ell = \max\big(0,\; m + D(a, p)^k - D(a, n)^k\big), \qquad
    \ell_\text{soft} = \log\big(1 + e^{\,m + D(a, p)^k - D(a, n)^k}\big)

  with :math:`k = 2` if ``squared`` else 1. The defaults are FaceNet's
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

  Returns:
    A scalar loss.

  >>> import jax.numpy as jnp
  >>> a, p, n = jnp.zeros(2), jnp.array([0.3, 0.4]), jnp.array([0.0, 0.6])
  >>> round(float(triplet_margin_loss(a, p, n)), 4)  # 0.25 - 0.36 + 0.2
  0.09

  References:
    Schroff, Kalenichenko, Philbin. FaceNet: A Unified Embedding for Face Recognition
    and Clustering. CVPR 2015. Hermans, Beyer, Leibe. In Defense of the Triplet Loss
    for Person Re-Identification. arXiv:1703.07737, 2017.
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
  dist = distance_fn(distance, squared, pairwise=False)
  return triplet_formula(dist(anchor, positive), dist(anchor, negative), margin, soft)


# ----------------------------------------------------------------------------------
# Batch forms.


def batch_all_triplet_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
  margin: float | jax.Array | None = None,
  distance: str | distances.DistanceFn = "euclidean",
  squared: bool = False,
  soft: bool = False,
  average: Literal["anchor", "batch"] = "anchor",
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
    plain mean of these values, ``losses.mean()`` (the mean over all devices with
    ``axis_name``), is exactly the paper's batch-wide average over active triplets,
    :math:`\sum_a S_a / \sum_a C_a` (Hermans et al.'s BA≠0, pytorch-metric-learning's
    ``TripletMarginLoss`` with its default ``AvgNonZeroReducer``).

  The two differ unless every anchor has the same number of active triplets: the
  batch average weights each anchor's mean by :math:`C_a`, which no per-anchor
  reduction in :mod:`metriclearn.reduce` can recover from the 'anchor' values.

  Memory: the loss of every triplet is materialized, an [n, m, m] array for n anchors
  and m candidates (n = m = 512 in float32 is 512 MiB).

  Args:
    embeddings: [n, d] anchors (and candidates when ``ref_embeddings`` is None).
    labels: [n] integer labels; -1 marks padding.
    ref_embeddings, ref_labels, positive_mask, label_comparison, mask, axis_name: see
      :func:`metriclearn.losses._batch.prepare`.
    margin: m >= 0; ``None``: 0.2 for the hinge, 0 with ``soft=True``.
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine', or a callable
      ``(a [n, d], b [m, d]) -> [n, m]``.
    squared: square the distance (default False, as Hermans et al.).
    soft: soft-plus instead of the hinge (every triplet is then active).
    average: 'anchor' or 'batch', see above.

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
    Re-Identification. arXiv:1703.07737, 2017 (batch all, "BA≠0").
  """
  _check_average(average)
  margin = resolve_margin(margin, soft)
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
  dist = distance_fn(distance, squared)(batch.anchors, batch.candidates)  # [n, m]
  triplets = masks.triplet_mask(batch.positive, batch.negative)  # [n, p, q]
  losses = triplet_formula(dist[:, :, None], dist[:, None, :], margin, soft)
  total = reduce.masked_sum(losses, triplets, axis=(1, 2))
  count = jnp.sum(triplets & (losses > 0), axis=(1, 2))
  return average_terms(total, count, average, axis_name)


def batch_hard_triplet_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
  margin: float | jax.Array | None = None,
  distance: str | distances.DistanceFn = "euclidean",
  squared: bool = False,
  soft: bool = False,
) -> jax.Array:
  r"""Batch-hard triplet loss: the hardest positive and hardest negative of each anchor.

  .. math::
    \ell_a = \max\Big(0,\; m + \max_{p \in P_a} D_{ap} - \min_{n \in N_a} D_{an}\Big)

  (or :math:`\log(1 + e^{\,m + \max_p D_{ap} - \min_n D_{an}})` with ``soft=True``;
  Hermans et al.'s recommended "batch hard, soft margin" is ``soft=True`` with the
  default margin 0), and 0 for an anchor without a positive or without a negative.
  Hermans et al. average over the anchors: ``losses.mean()`` on a batch without
  padding.

  Args:
    embeddings: [n, d] anchors (and candidates when ``ref_embeddings`` is None).
    labels: [n] integer labels; -1 marks padding.
    ref_embeddings, ref_labels, positive_mask, label_comparison, mask, axis_name: see
      :func:`metriclearn.losses._batch.prepare`.
    margin: m >= 0; ``None``: 0.2 for the hinge, 0 with ``soft=True``.
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine', or a callable
      ``(a [n, d], b [m, d]) -> [n, m]``.
    squared: square the distance (default False, as Hermans et al.).
    soft: soft-plus instead of the hinge.

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
  dist = distance_fn(distance, squared)(batch.anchors, batch.candidates)
  hardest_positive = reduce.masked_max(dist, batch.positive, axis=1)
  hardest_negative = reduce.masked_min(dist, batch.negative, axis=1)
  loss = triplet_formula(hardest_positive, hardest_negative, margin, soft)
  valid = jnp.any(batch.positive, axis=1) & jnp.any(batch.negative, axis=1)
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
  sorted_negatives = sorted_where(negative, dist)  # [n, m], +inf past the negatives
  num_negatives = jnp.sum(negative, axis=1, keepdims=True, dtype=jnp.int32)
  at_most = count_sorted(sorted_negatives, dist, "right")  # negatives with D_an <= D_ap
  closest_farther = jnp.take_along_axis(
    sorted_negatives, jnp.minimum(at_most, m - 1), axis=1
  )
  farthest = reduce.masked_max(dist, negative, axis=1)[:, None]
  d_an = jnp.where(at_most < num_negatives, closest_farther, farthest)
  return d_an, num_negatives[:, 0] > 0


def semi_hard_triplet_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
  margin: float | jax.Array | None = None,
  distance: str | distances.DistanceFn = "euclidean",
  squared: bool = True,
  soft: bool = False,
  average: Literal["anchor", "batch"] = "anchor",
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
    batch. Both agree when every anchor has the same number of positives (P x K
    batches without padding).

  TF-addons' defaults are ``margin=1.0`` with the squared Euclidean distance; the
  default here is FaceNet's margin 0.2.

  Args:
    embeddings: [n, d] anchors (and candidates when ``ref_embeddings`` is None).
    labels: [n] integer labels; -1 marks padding.
    ref_embeddings, ref_labels, positive_mask, label_comparison, mask, axis_name: see
      :func:`metriclearn.losses._batch.prepare`.
    margin: m >= 0; ``None``: 0.2 for the hinge, 0 with ``soft=True``.
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine', or a callable
      ``(a [n, d], b [m, d]) -> [n, m]``.
    squared: square the distance (default True, FaceNet).
    soft: soft-plus instead of the hinge.
    average: 'anchor' or 'batch', see above.

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
  _check_average(average)
  margin = resolve_margin(margin, soft)
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
  dist = distance_fn(distance, squared)(batch.anchors, batch.candidates)
  d_an, has_negative = semi_hard_negative_distance(dist, batch.negative)
  pairs = batch.positive & has_negative[:, None]
  total = reduce.masked_sum(triplet_formula(dist, d_an, margin, soft), pairs, axis=1)
  return average_terms(total, jnp.sum(pairs, axis=1), average, axis_name)

r"""Ranking losses: average precision and its smooth surrogates, histograms of
similarities, and ranked lists.

Every loss is in batch form, ``loss(embeddings [n, d], labels [n], ...)``, and takes
the arguments of :mod:`metriclearn.pairs` (``ref_embeddings``, ``positive_mask``,
``label_comparison``, ``mask``, ``axis_name``) and ``block_size`` / ``ring``. Each
anchor is a query that ranks its candidates; how a loss is computed depends on what
its ranking needs:

* **sums over candidates per anchor**: FastAP's soft histograms of distances, the
  ranked list loss's weighted means, and (summed over anchors as well) the histogram
  loss's similarity distributions. These are passes of the losses' engine and run
  dense (``block_size=None``) or blockwise (``block_size=`` an int, ``ring=True``
  across devices) with the same values and gradients.
* **the rank of each positive among all the candidates** (Smooth-AP, PNP): a sum over
  candidates per (anchor, positive) pair. Exactly, that is an [n, m, m] array (or
  ``block_size`` rows at a time, [block, m, m]); with ``max_positives=k`` the first
  k positives of each anchor are slots of the engine and the sums cost O(n m k),
  dense, blockwise or over a ring.

An anchor with nothing valid gets 0 and a zero gradient; the histogram loss, a
statistic of the whole batch, returns one scalar. Reduce the others with
:mod:`metriclearn.reduce`, e.g. ``reduce.mean_over_valid(losses)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from metriclearn import _checks, distances, pairs
from metriclearn.losses import _engine, _slots
from metriclearn.losses._engine import Block, Pass

__all__ = [
  "PNP_VARIANTS",
  "fastap_loss",
  "histogram_loss",
  "pnp_loss",
  "ranked_list_loss",
  "smooth_ap_loss",
]

_batch_loss = pairs.batch_form(executor=True)


# ----------------------------------------------------------------------------------
# Shared pieces


def _num_bins(num_bins) -> int:
  if not (
    isinstance(num_bins, int | np.integer)
    and not isinstance(num_bins, bool)
    and num_bins >= 1
  ):
    raise ValueError(f"num_bins must be a positive int, got {num_bins!r}.")
  return int(num_bins)


def _ratio(num: jax.Array, den: jax.Array) -> jax.Array:
  """``num / den``, 0 where ``den`` is 0 (a NaN ``den`` stays NaN, never 0)."""
  nonzero = den != 0
  return jnp.where(nonzero, num / jnp.where(nonzero, den, 1.0), 0.0)


def _unit(rel: pairs.Relation) -> pairs.Relation:
  """The relation with L2-normalised anchors and candidates."""
  anchors = distances.l2_normalize(rel.anchors)
  candidates = anchors if rel.self_pairs else distances.l2_normalize(rel.candidates)
  return rel._replace(anchors=anchors, candidates=candidates)


def _triangles(x: jax.Array, nodes: jax.Array, delta: jax.Array) -> jax.Array:
  """[ba, R, bc]: the weight of each value of ``x`` [ba, bc] on each node, linear
  between neighbouring nodes (the triangular kernel of width ``delta``)."""
  return jax.nn.relu(1.0 - jnp.abs(x[:, None, :] - nodes[None, :, None]) / delta)


def _histogram_terms(b: Block):
  """Soft histograms of ``s`` over the nodes, for positive and negative pairs."""
  nodes, delta = b.consts
  pulse = _triangles(jnp.clip(b.s, nodes[0], nodes[-1]), nodes, delta)
  ones = _engine.ones(b)
  return [
    (pulse, b.positive[:, None, :]),
    (pulse, b.negative[:, None, :]),
    (ones, b.positive),
    (ones, b.negative),
  ]


def _histograms(rel: pairs.Relation, sim_fn, low: float, high: float, bins: int):
  """Per anchor: soft histograms [n, bins + 1] of its positive and negative pairs on
  ``bins + 1`` evenly spaced nodes from ``low`` to ``high``, and the pair counts."""
  dtype = rel.anchors.dtype
  nodes = jnp.linspace(low, high, bins + 1, dtype=dtype)
  delta = jnp.asarray((high - low) / bins, dtype)
  ((h_pos, h_neg, n_pos, n_neg),) = _engine.pair_statistics(
    rel, (Pass(_histogram_terms, ("sum",) * 4),), sim_fn, consts=(nodes, delta)
  )
  return h_pos, h_neg, n_pos, n_neg


# ----------------------------------------------------------------------------------
# FastAP

_DISTANCE_RANGE = {"squared_euclidean": 4.0, "euclidean": 2.0, "cosine": 2.0}


def _distance_range(distance, normalize: bool, max_distance) -> float:
  if max_distance is not None:
    _checks.check_positive(max_distance, "max_distance")
    return float(max_distance)
  if callable(distance):
    raise ValueError("max_distance is required with a callable distance.")
  if not normalize and distance != "cosine":
    raise ValueError(
      f"distance={distance!r} between unnormalised embeddings has no fixed range: "
      "give max_distance, or normalize=True."
    )
  return _DISTANCE_RANGE[distance]


@_batch_loss
def fastap_loss(
  rel: pairs.Relation,
  *,
  num_bins: int = 10,
  distance: str | distances.DistanceFn = "squared_euclidean",
  normalize: bool = True,
  max_distance: float | None = None,
) -> jax.Array:
  r"""FastAP (Cakir et al. 2019): one minus a histogram estimate of each anchor's AP.

  The distances from anchor :math:`q` to its candidates are binned with the
  triangular kernel :math:`\delta(d, z_l) = [1 - |d - z_l| / \Delta]_+` on the
  nodes :math:`z_l = l \Delta`, :math:`l = 0 \ldots L`, :math:`\Delta = D / L`
  (:math:`L` = ``num_bins``, :math:`D` = ``max_distance``):

  .. math::
    h^\pm_l = \sum_{j \in P_q / N_q} \delta(d_{qj}, z_l), \qquad
    H^\pm_l = \sum_{l' \le l} h^\pm_{l'}, \qquad H_l = H^+_l + H^-_l

  .. math::
    \ell_q = 1 - \frac{1}{|P_q|} \sum_{l=0}^{L} \frac{h^+_l H^+_l}{H_l}
    = \frac{1}{|P_q|} \sum_{l=0}^{L} \frac{h^+_l H^-_l}{H_l}

  (terms with :math:`H_l = 0` are 0). The second form, computed here, equals the
  first because the kernel's weights of a distance sum to 1: distances are clipped
  to :math:`[0, D]`, so that every pair is binned. It is exactly 0, with a zero
  gradient, for an anchor without a negative (its AP is 1), and 0 for an anchor
  without a positive.

  The histograms are sums over candidates per anchor (a statistic with one slot per
  node), so this runs through the engine: dense, or blockwise with ``block_size``
  (memory ``block_a x (L + 1) x block_c``) and ``ring``.

  pytorch-metric-learning's ``FastAPLoss()`` (``num_bins=10``, squared Euclidean
  distance of normalised embeddings over [0, 4]) averages over the anchors that have
  a positive: ``reduce.masked_mean(losses, has_positive)`` with the defaults here and
  ``has_positive = (labels[:, None] == labels[None, :]).sum(1) > 1``.

  Args:
    {relation}
    num_bins: L >= 1, the number of bins (paper: 10).
    distance: 'squared_euclidean' (default, as the authors' code), 'euclidean',
      'cosine' or a callable ``(a [n, d], b [m, d]) -> [n, m]``.
    normalize: L2-normalise anchors and candidates first (paper).
    max_distance: D > 0, the top of the histogram; None: the largest distance
      between unit vectors (4 squared Euclidean, 2 Euclidean or cosine); required
      with a callable distance or without ``normalize``.

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  >>> # squared distances: d(0, 1) = 2, d(0, 2) = 4, d(1, 2) = 2.
  >>> # anchor 0: its positive (2) comes before its negative (4): AP 1, loss 0;
  >>> # anchor 1: positive and negative tie at 2: h+ = h- = 1 on that node,
  >>> # H- = 1, H = 2 there: loss 1 * 1 / 2; anchor 2 has no positive.
  >>> losses = fastap_loss(e, jnp.array([0, 0, 1]))
  >>> [round(float(v), 4) for v in losses]
  [0.0, 0.5, 0.0]

  References:
    Cakir, He, Xia, Kulis, Sclaroff. Deep Metric Learning to Rank. CVPR 2019.
  """
  bins = _num_bins(num_bins)
  dist_fn = distances.get_pairwise_distance(distance)
  top = _distance_range(distance, normalize, max_distance)
  if normalize:
    rel = _unit(rel)
  h_pos, h_neg, n_pos, _ = _histograms(rel, dist_fn, 0.0, top, bins)
  below_neg = jnp.cumsum(h_neg, axis=1)
  below = jnp.cumsum(h_pos, axis=1) + below_neg
  total = jnp.sum(_ratio(h_pos * below_neg, below), axis=1)
  return _engine.mean(total, n_pos)


# ----------------------------------------------------------------------------------
# Smooth-AP and PNP: the soft rank of each positive among the candidates


def _rank_terms(b: Block):
  """The last slot pass (``_slots.by_slots``): for the positive i of each slot,
  sigmoid((s_j - s_i) / tau) over the other positives and over the negatives j, with
  the slot's index and its similarity s_i (differentiated: statistic 3)."""
  slot, s_i, _ = _slots.slots_of(b)
  slot, s_i = slot[:, :, None], s_i[:, :, None]
  filled = jnp.isfinite(slot)
  other = filled & (b.c_index.astype(b.s.dtype)[None, None, :] != slot)
  sig = jax.nn.sigmoid((b.s[:, None, :] - s_i) / b.consts)
  return [(sig, other & b.positive[:, None, :]), (sig, filled & b.negative[:, None, :])]


def _rank_sums(p: pairs.Pairs, sim_fn, tau) -> tuple[jax.Array, jax.Array]:
  """Every (anchor, candidate i) at once ([b, m, m]): the soft counts of the other
  positives and of the negatives ranked above i."""
  s = sim_fn(p.anchors, p.candidates)
  sig = jax.nn.sigmoid((s[:, None, :] - s[:, :, None]) / tau)  # [b, i, j]
  other = ~jnp.eye(s.shape[1], dtype=bool)[None]
  above_pos = jnp.sum(jnp.where(p.positive[:, None, :] & other, sig, 0.0), axis=-1)
  above_neg = jnp.sum(jnp.where(p.negative[:, None, :], sig, 0.0), axis=-1)
  return above_pos, above_neg


def _mean_over_positives(
  rel: pairs.Relation,
  similarity,
  temperature,
  max_positives,
  term: Callable[[jax.Array, jax.Array], jax.Array],
) -> jax.Array:
  """Per anchor, the mean over its positives i of ``term(P_i, N_i)``, with P_i, N_i
  the soft counts of the other positives and of the negatives ranked above i."""
  k = _slots.max_positives(max_positives)
  sim_fn = distances.get_pairwise_similarity(similarity)
  tau = _checks.scalar(temperature, "temperature", rel.anchors.dtype, positive=True)

  def bounded():
    last = Pass(_rank_terms, ("sum", "sum"), prev_grad=(3,))
    valid, n_pos, _, _, (above_pos, above_neg) = _slots.by_slots(
      rel, k, sim_fn, last, tau
    )
    terms = jnp.where(valid, term(above_pos, above_neg), 0.0)
    return jnp.sum(terms, axis=1), jnp.sum(valid, axis=1).astype(terms.dtype), n_pos

  def rows(p: pairs.Pairs):
    above_pos, above_neg = _rank_sums(p, sim_fn, tau)
    terms = jnp.where(p.positive, term(above_pos, above_neg), 0.0)
    return jnp.sum(terms, axis=1), jnp.sum(p.positive, axis=1).astype(terms.dtype)

  per_row = _slots.candidates(rel) ** 2  # n x M x M
  total, count = _slots.bounded(
    rel, k, bounded, lambda r: _slots.by_rows(r, rows), per_row
  )
  return _engine.mean(total, count)


_HOW_RANKS = (
  "The rank of a positive i is a sum over all candidates, one per (anchor,\n"
  "  positive) pair, so the loss does not reduce to per-anchor sums over candidates:\n"
  "\n"
  "  * ``max_positives=k``: the first k positives of each anchor are slots of the\n"
  "    engine (their similarity a statistic of an earlier pass), and one pass sums\n"
  "    the sigmoids of every slot: O(n m k), memory n x k plus one block, dense or\n"
  "    blockwise (``block_size``, ``ring``). A batch in which an anchor has more\n"
  "    than k positives falls back to the exact form (over a ring: NaN for that\n"
  "    anchor).\n"
  "  * ``max_positives=None``: every (anchor, i, j) at once, an [n, m, m] array\n"
  "    (n = m = 512 in float32 is 512 MiB), or ``block_size`` rows of anchors at a\n"
  "    time (memory block x m x m; no ring)."
)


@_batch_loss
def smooth_ap_loss(
  rel: pairs.Relation,
  *,
  temperature: float = 0.01,
  similarity: str | distances.DistanceFn = "cosine",
  max_positives: int | None = None,
) -> jax.Array:
  r"""Smooth-AP (Brown et al. 2020): one minus a sigmoid-smoothed AP per anchor.

  With :math:`s_j` the similarity of anchor :math:`q` and candidate :math:`j`,
  :math:`P` and :math:`N` its positives and negatives, :math:`\mathcal{G}(x) = 1 /
  (1 + e^{-x/\tau})`, the soft counts of the other positives and of the negatives
  ranked above positive :math:`i` are :math:`R^+_i = \sum_{j \in P, j \ne i}
  \mathcal{G}(s_j - s_i)` and :math:`R^-_i = \sum_{j \in N} \mathcal{G}(s_j - s_i)`:

  .. math::
    \mathrm{AP}_q \approx \frac{1}{|P|} \sum_{i \in P}
      \frac{1 + R^+_i}{1 + R^+_i + R^-_i}, \qquad
    \ell_q = 1 - \mathrm{AP}_q = \frac{1}{|P|} \sum_{i \in P}
      \frac{R^-_i}{1 + R^+_i + R^-_i}

  computed in the second form (no cancellation; exactly 0 with a zero gradient for
  an anchor without a negative). An anchor without a positive gets 0.

  {how_ranks}

  The authors' code and pytorch-metric-learning count the query itself among its
  positives (with similarity 1, it ranks first). ``SmoothAPLoss()`` (temperature
  0.01, cosine) is, with ``others = (labels[:, None] == labels[None, :]).sum(1) > 1``
  (the queries with another positive, over which it averages)::

    losses = smooth_ap_loss(e, labels, ref_embeddings=e, ref_labels=labels)
    loss = reduce.masked_mean(losses, others)

  Args:
    {relation}
    temperature: tau > 0, the sigmoid's temperature (paper: 0.01). A traced value
      cannot be checked.
    similarity: 'cosine' (default, paper), 'dot' or a callable ``(a, b) -> [n, m]``.
    max_positives: a static bound k on the positives of an anchor, or None (exact).

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])
  >>> # anchor 0 ranks the negative (similarity 0.8) above its positives (0.6, 0.0):
  >>> # AP = (1/2 + 2/3) / 2 = 7/12, loss 5/12
  >>> losses = smooth_ap_loss(e, jnp.array([0, 0, 0, 1]))
  >>> round(float(losses[0]), 4)
  0.4167

  References:
    Brown, Xie, Kalogeiton, Zisserman. Smooth-AP: Smoothing the Path Towards
    Large-Scale Image Retrieval. ECCV 2020.
  """
  return _mean_over_positives(
    rel,
    similarity,
    temperature,
    max_positives,
    lambda above_pos, above_neg: above_neg / (1.0 + above_pos + above_neg),
  )


PNP_VARIANTS = ("O", "Ds", "Dq", "Iu", "Ib")
"""The forms of :func:`pnp_loss` (pytorch-metric-learning's names)."""


def _pnp_term(variant: str, alpha, b) -> Callable[[jax.Array], jax.Array]:
  if variant == "O":
    return lambda r: r
  if variant == "Ds":
    return jnp.log1p
  if variant == "Dq":  # 1 - (1 + R)^-alpha
    return lambda r: -jnp.expm1(-alpha * jnp.log1p(r))
  if variant == "Iu":
    return lambda r: (1.0 + r) * jnp.log1p(r)
  return lambda r: (b * r - jnp.log1p(b * r)) / (b * b)


@_batch_loss
def pnp_loss(
  rel: pairs.Relation,
  *,
  variant: Literal["O", "Ds", "Dq", "Iu", "Ib"] = "Dq",
  temperature: float = 0.01,
  alpha: float | jax.Array = 1.0,
  b: float | jax.Array = 2.0,
  similarity: str | distances.DistanceFn = "cosine",
  max_positives: int | None = None,
) -> jax.Array:
  r"""PNP loss (Li et al. 2022): penalise the negatives ranked above each positive.

  With :math:`R_i = \sum_{j \in N} \sigma((s_j - s_i) / \tau)` the soft number of
  negatives ranked above positive :math:`i` of anchor :math:`q` (similarities
  :math:`s`), the loss of :math:`q` is :math:`\frac{1}{|P|} \sum_{i \in P} f(R_i)`:

  .. math::
    f_O(R) = R, \quad f_{D_s}(R) = \log(1 + R), \quad
    f_{D_q}(R) = 1 - \frac{1}{(1 + R)^\alpha}, \quad
    f_{I_u}(R) = (1 + R) \log(1 + R), \quad
    f_{I_b}(R) = \frac{b R - \log(1 + b R)}{b^2}

  (``variant``: PNP-O, the decreasing-derivative PNP-D_s and PNP-D_q, the increasing
  PNP-I_u and PNP-I_b). The paper finds PNP-D best; PNP-D_q is the default (the
  authors' best run on Stanford Online Products uses ``alpha=4``). An anchor without
  a positive, or without a negative, gets 0 (every :math:`f(0) = 0`).

  {how_ranks}

  The authors' code and pytorch-metric-learning count the query itself among its
  positives. ``PNPLoss()`` (variant 'O', anneal 0.01 = ``temperature``, cosine) is,
  with ``others = (labels[:, None] == labels[None, :]).sum(1) > 1`` (the queries with
  another positive, over which it averages)::

    losses = pnp_loss(e, labels, ref_embeddings=e, ref_labels=labels, variant="O")
    loss = reduce.masked_mean(losses, others)

  Args:
    {relation}
    variant: 'O', 'Ds', 'Dq' (default), 'Iu' or 'Ib' (:data:`PNP_VARIANTS`).
    temperature: tau > 0, the sigmoid's temperature (paper's code: 0.01).
    alpha: the exponent of PNP-D_q, > 0 (the paper takes alpha >= 1; code: 1).
    b: the parameter of PNP-I_b, > 0 (code: 2).
    similarity: 'cosine' (default, paper), 'dot' or a callable ``(a, b) -> [n, m]``.
    max_positives: a static bound k on the positives of an anchor, or None (exact).

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])
  >>> # anchor 0: one negative (similarity 0.8) above each positive (0.6, 0.0):
  >>> # R = 1 for both; PNP-O: 1; PNP-D_q: 1 - 1/2
  >>> labels = jnp.array([0, 0, 0, 1])
  >>> round(float(pnp_loss(e, labels, variant="O")[0]), 4)
  1.0
  >>> round(float(pnp_loss(e, labels)[0]), 4)
  0.5

  References:
    Li, Xia, Yang, Kang, Guo, Zhao. Rethinking the Optimization of Average Precision:
    Only Penalizing Negative Instances before Positive Ones is Enough. AAAI 2022.
  """
  if variant not in PNP_VARIANTS:
    raise ValueError(f"variant must be one of {PNP_VARIANTS}, got {variant!r}.")
  dtype = rel.anchors.dtype
  alpha = _checks.scalar(alpha, "alpha", dtype, positive=True)
  b = _checks.scalar(b, "b", dtype, positive=True)
  f = _pnp_term(variant, alpha, b)
  return _mean_over_positives(
    rel, similarity, temperature, max_positives, lambda _, above_neg: f(above_neg)
  )


for _fn in (smooth_ap_loss, pnp_loss):
  _fn.__doc__ = _fn.__doc__.replace("{how_ranks}", _HOW_RANKS)
del _fn


# ----------------------------------------------------------------------------------
# Histogram loss


@_batch_loss
def histogram_loss(
  rel: pairs.Relation,
  *,
  num_bins: int = 100,
  similarity: str | distances.DistanceFn = "cosine",
) -> jax.Array:
  r"""Histogram loss (Ustinova & Lempitsky 2016): a scalar for the whole batch.

  The similarities of the positive pairs :math:`S^+` and of the negative pairs
  :math:`S^-` of the batch are binned with linear interpolation on the nodes
  :math:`t_r = -1 + r \Delta`, :math:`r = 0 \ldots B`, :math:`\Delta = 2 / B`
  (:math:`B` = ``num_bins``):

  .. math::
    p^\pm_r = \frac{1}{|S^\pm|} \sum_{(i, j) \in S^\pm}
      \Big[1 - \frac{|s_{ij} - t_r|}{\Delta}\Big]_+, \qquad
    L = \sum_{r=0}^{B} p^-_r \sum_{q \le r} p^+_q

  an estimate of the probability that a random negative pair is more similar than a
  random positive pair. Similarities are clipped to [-1, 1]. The pairs are every
  (anchor, candidate) pair of the relation (each unordered pair of a batch twice,
  which leaves the histograms unchanged); 0 if there is no positive or no negative
  pair.

  The loss is defined by the distributions of the whole batch, so it returns one
  scalar, not one value per anchor. The histograms are sums over pairs (per-anchor
  sums over candidates, then over anchors), so they run through the engine (dense,
  or blockwise with ``block_size``: memory ``block_a x (B + 1) x block_c``; the dense
  form holds [n, B + 1, m]) and, with ``axis_name``, are summed over the devices
  (``lax.psum``): every device returns the loss of the global batch (train it with
  ``make_train_step(..., reduction='total')``).

  pytorch-metric-learning's ``HistogramLoss()`` (100 bins, cosine) is the same value
  when every label of the batch occurs at least twice (it takes the pairs of the
  batch's triplets).

  Args:
    {relation}
    num_bins: B >= 1 (the bin width is 2 / B; pytorch-metric-learning: 100).
    similarity: 'cosine' (default, paper), or 'dot' / a callable ``(a, b) -> [n, m]``
      with values in [-1, 1].

  Returns:
    A scalar loss (the same on every device of ``axis_name``).

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
  >>> # positive pairs (0, 1), (2, 3): similarity 0; negative pairs: half at -1, half
  >>> # at 0 (tied with the positives, counted as more similar): L = 0.5 * 0 + 0.5 * 1
  >>> round(float(histogram_loss(e, jnp.array([0, 0, 1, 1]))), 4)
  0.5

  References:
    Ustinova, Lempitsky. Learning Deep Embeddings with Histogram Loss. NeurIPS 2016.
  """
  bins = _num_bins(num_bins)
  sim_fn = distances.get_pairwise_similarity(similarity)
  stats = _histograms(rel, sim_fn, -1.0, 1.0, bins)
  stats = [jnp.sum(x, axis=0) for x in stats]
  if rel.axis_name is not None:
    stats = jax.lax.psum(stats, rel.axis_name)
  h_pos, h_neg, n_pos, n_neg = stats
  p_pos = h_pos / jnp.maximum(n_pos, 1.0)
  p_neg = h_neg / jnp.maximum(n_neg, 1.0)
  loss = jnp.sum(p_neg * jnp.cumsum(p_pos))
  return jnp.where((n_pos > 0) & (n_neg > 0), loss, 0.0)


# ----------------------------------------------------------------------------------
# Ranked list loss


def _violators(b: Block):
  """The positives beyond alpha - m and the negatives within alpha (a NaN distance
  belongs to both, so that it reaches the loss), and their weights' exponents."""
  alpha, margin, t_pos, t_neg = b.consts
  pos = b.positive & ~(b.s <= alpha - margin)
  neg = b.negative & ~(b.s >= alpha)
  return pos, neg, t_pos * (b.s - (alpha - margin)), t_neg * (alpha - b.s)


def _rll_peaks(b: Block):
  pos, neg, log_wp, log_wn = _violators(b)
  ones = _engine.ones(b)
  return [(log_wp, pos), (log_wn, neg), (ones, b.positive), (ones, b.negative)]


def _rll_terms(detach: bool):
  def terms(b: Block):
    alpha, margin = b.consts[:2]
    pos, neg, log_wp, log_wn = _violators(b)
    # Weights relative to each anchor's largest (a constant: it cancels in the
    # weighted means), so that no exponential overflows.
    peak_p, peak_n = (jnp.where(x == -jnp.inf, 0.0, x)[:, None] for x in b.prev[:2])
    w_p = jnp.exp(jnp.where(pos, log_wp - peak_p, 0.0))
    w_n = jnp.exp(jnp.where(neg, log_wn - peak_n, 0.0))
    if detach:
      w_p, w_n = jax.lax.stop_gradient(w_p), jax.lax.stop_gradient(w_n)
    return [
      (w_p * (b.s - (alpha - margin)), pos),
      (w_p, pos),
      (w_n * (alpha - b.s), neg),
      (w_n, neg),
    ]

  return terms


@_batch_loss
def ranked_list_loss(
  rel: pairs.Relation,
  *,
  margin: float = 0.4,
  alpha: float = 1.2,
  imbalance: float = 0.5,
  pos_temperature: float = 0.0,
  neg_temperature: float = 10.0,
  distance: str | distances.DistanceFn = "euclidean",
  normalize: bool = True,
  detach_weights: bool = True,
) -> jax.Array:
  r"""Ranked list loss (Wang et al. 2019), one value per anchor.

  Each anchor :math:`i` pushes its negatives beyond the boundary :math:`\alpha` and
  pulls its positives within :math:`\alpha - m`. With :math:`P^*_i = \{j \in P_i :
  d_{ij} > \alpha - m\}` and :math:`N^*_i = \{j \in N_i : d_{ij} < \alpha\}` the
  violating pairs:

  .. math::
    L_P = \frac{\sum_{j \in P^*_i} w_{ij} (d_{ij} - (\alpha - m))}
      {\sum_{j \in P^*_i} w_{ij}}, \quad
    L_N = \frac{\sum_{j \in N^*_i} w_{ij} (\alpha - d_{ij})}
      {\sum_{j \in N^*_i} w_{ij}}, \quad
    \ell_i = (1 - \lambda) L_P + \lambda L_N

  with :math:`w_{ij} = e^{T_p (d_{ij} - (\alpha - m))}` on positives and
  :math:`w_{ij} = e^{T_n (\alpha - d_{ij})}` on negatives, :math:`\lambda` =
  ``imbalance``, :math:`d` the Euclidean distance of L2-normalised embeddings
  (paper). An empty violating set contributes 0; an anchor without a positive or
  without a negative gets 0. The defaults (:math:`T_p = 0`) are the paper's
  RLL-Simpler. The weights only weight each pair's gradient, as in the paper
  (``detach_weights=False`` differentiates through them).

  Both weighted means are sums over candidates per anchor: a first pass finds each
  anchor's largest weight exponent (the weights are taken relative to it, so no
  exponential overflows), a second sums; dense or blockwise (``block_size``,
  ``ring``).

  pytorch-metric-learning's ``RankedListLoss(margin=m, Tn=T)`` (named
  ``neg_temperature`` in later versions; its alpha defaults to ``1 + m / 2``) is
  ``losses.mean()`` with ``margin=m, alpha=1 + m / 2, neg_temperature=T`` when every
  anchor has a positive and a negative (it differentiates through the weights:
  ``detach_weights=False``).

  Args:
    {relation}
    margin: m >= 0, the gap between the positives' and the negatives' boundaries
      (paper: 0.4).
    alpha: the negatives' boundary, > 0 (paper: 1.2).
    imbalance: lambda in [0, 1], the weight of the negatives' term (paper: 0.5).
    pos_temperature: T_p >= 0 (0: RLL-Simpler, every violating positive weighs the
      same).
    neg_temperature: T_n >= 0, how much more a more violating negative weighs
      (default 10; pytorch-metric-learning has no default).
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine' or a callable.
    normalize: L2-normalise anchors and candidates first (paper).
    detach_weights: the weights as constants in back-propagation (paper).

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[0.0], [1.0], [0.5], [2.0]])
  >>> # alpha - m = 0.8. Anchor 0: positive at 1.0 (violates by 0.2), negatives at
  >>> # 0.5 (by 0.7) and 2.0 (no): 0.5 * 0.2 + 0.5 * 0.7. Anchor 1: positive at 1.0;
  >>> # negatives at 0.5 (by 0.7) and 1.0 (by 0.2) weighted e^7 and e^2:
  >>> # 0.5 * 0.2 + 0.5 * (0.7 e^7 + 0.2 e^2) / (e^7 + e^2)
  >>> losses = ranked_list_loss(x, jnp.array([0, 0, 1, 1]), normalize=False)
  >>> [round(float(v), 4) for v in losses]
  [0.45, 0.4483, 0.7, 0.45]

  References:
    Wang, Hua, Kodirov, Hu, Garnier, Robertson. Ranked List Loss for Deep Metric
    Learning. CVPR 2019.
  """
  _checks.check_non_negative(margin, "margin")
  _checks.check_positive(alpha, "alpha")
  _checks.check_in_range(imbalance, "imbalance", 0.0, 1.0)
  _checks.check_non_negative(pos_temperature, "pos_temperature")
  _checks.check_non_negative(neg_temperature, "neg_temperature")
  dtype = rel.anchors.dtype
  consts = tuple(
    _checks.scalar(v, name, dtype)
    for v, name in (
      (alpha, "alpha"),
      (margin, "margin"),
      (pos_temperature, "pos_temperature"),
      (neg_temperature, "neg_temperature"),
    )
  )
  lam = _checks.scalar(imbalance, "imbalance", dtype)
  if normalize:
    rel = _unit(rel)
  passes = (
    Pass(_rll_peaks, ("max", "max", "sum", "sum")),
    Pass(_rll_terms(detach_weights), ("sum",) * 4),
  )
  (_, _, n_pos, n_neg), (pos_total, pos_weight, neg_total, neg_weight) = (
    _engine.pair_statistics(
      rel, passes, distances.get_pairwise_distance(distance), consts=consts
    )
  )
  loss = (1.0 - lam) * _ratio(pos_total, pos_weight) + lam * _ratio(
    neg_total, neg_weight
  )
  return jnp.where(_engine.active(n_pos, n_neg), loss, 0.0)

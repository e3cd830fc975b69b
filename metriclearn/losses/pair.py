"""Pair losses: one pair of embeddings and a ``similar`` flag in, a scalar out.

A batch of pairs is ``jax.vmap(loss)(x1s, x2s, similars)``. ``similar=True`` means the
two items are of the same kind (a positive pair), whatever convention a paper used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metriclearn import _checks, distances

__all__ = [
  "CONTRASTIVE_VARIANTS",
  "contrastive_from_distance",
  "contrastive_loss",
  "binary_cross_entropy_with_logits",
  "pair_logit",
  "sigmoid_pair_loss",
  "weighted_l1_logit",
  "weighted_l1_loss",
]

# Keyword options that reproduce each published form of the contrastive loss exactly.
CONTRASTIVE_VARIANTS: dict[str, dict[str, float]] = {
  # Hadsell, Chopra & LeCun 2006, eq. 4 (their Y = 0 is our similar=True):
  #   (1 - Y) 1/2 D^2 + Y 1/2 max(0, m - D)^2
  "hadsell2006": dict(pos_weight=0.5, neg_weight=0.5, pos_power=2, neg_power=2),
  # The same without the 1/2 factors (this function's default).
  "squared": dict(pos_weight=1.0, neg_weight=1.0, pos_power=2, neg_power=2),
  # y D + (1 - y) max(0, m - D), y = 1 for similar: plain, not squared.
  "linear": dict(pos_weight=1.0, neg_weight=1.0, pos_power=1, neg_power=1),
  # 1/2 y D^2 + (1 - y) max(m - D, 0), y = 1 for similar.
  "half_squared_pos": dict(pos_weight=0.5, neg_weight=1.0, pos_power=2, neg_power=1),
  # pytorch-metric-learning's ContrastiveLoss: max(0, D - m_pos) and max(0, m_neg - D),
  # powers 1; pass pos_margin (their default 0) and margin (their neg_margin, 1).
  "pml": dict(pos_weight=1.0, neg_weight=1.0, pos_power=1, neg_power=1),
}


def _power(x: jax.Array, p: float) -> jax.Array:
  if p == 1:
    return x
  if p == 2:
    return x * x
  return jnp.power(x, p)


def contrastive_from_distance(
  dist: jax.Array,
  similar: jax.Array,
  *,
  margin: float = 1.0,
  pos_margin: float = 0.0,
  pos_power: float = 2,
  neg_power: float = 2,
  pos_weight: float = 1.0,
  neg_weight: float = 1.0,
) -> jax.Array:
  r"""The contrastive formula applied elementwise to distances (shared by pair and batch
  forms):

  .. math::
    \ell = [s]\, w_+ \max(0, D - m_+)^{p_+} + [\lnot s]\, w_- \max(0, m - D)^{p_-}
  """
  for value, name in ((margin, "margin"), (pos_margin, "pos_margin")):
    _checks.check_non_negative(value, name)
  for value, name in ((pos_power, "pos_power"), (neg_power, "neg_power")):
    if value < 1:
      raise ValueError(f"{name} must be >= 1 (smaller powers have infinite gradients).")
  pos = pos_weight * _power(jax.nn.relu(dist - pos_margin), pos_power)
  neg = neg_weight * _power(jax.nn.relu(margin - dist), neg_power)
  return jnp.where(similar, pos, neg)


def _one_pair(x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, ...]:
  x1 = _checks.as_float(x1, "x1")
  x2 = _checks.as_float(x2, "x2")
  if x1.shape != x2.shape:
    raise ValueError(
      f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and "
      f"{tuple(x2.shape)}."
    )
  if x1.ndim != 1:
    raise ValueError(
      f"x1 and x2 must be 1-D embeddings (one pair; use jax.vmap for a batch), got "
      f"shape {tuple(x1.shape)}."
    )
  return _checks.common_float(x1, x2)


def contrastive_loss(
  x1: jax.Array,
  x2: jax.Array,
  similar: jax.Array | bool,
  *,
  margin: float = 1.0,
  pos_margin: float = 0.0,
  distance: str | distances.DistanceFn = "euclidean",
  pos_power: float = 2,
  neg_power: float = 2,
  pos_weight: float = 1.0,
  neg_weight: float = 1.0,
) -> jax.Array:
  r"""Contrastive (siamese) loss of one pair.

  .. math::
    \ell = [s]\, w_+ \max(0, D - m_+)^{p_+} + [\lnot s]\, w_- \max(0, m - D)^{p_-}

  with :math:`D` = ``distance(x1, x2)``, :math:`s` = ``similar``, :math:`m` =
  ``margin``, :math:`m_+` = ``pos_margin``. Similar pairs are pulled together (beyond
  ``pos_margin``); dissimilar pairs are pushed out to ``margin``, after which they cost
  nothing. Each published form is a set of options (``CONTRASTIVE_VARIANTS``):

  =================================================  ==================================
  source (as written there)                          options
  =================================================  ==================================
  Hadsell et al. 2006: (1-Y)½D² + Y½max(0,m-D)²,     ``pos_weight=0.5, neg_weight=0.5``
  Y = 0 for similar
  the same without ½ (default)                       (defaults)
  y·D + (1-y)·max(0, m-D), y = 1 for similar         ``pos_power=1, neg_power=1``
  ½·y·D² + (1-y)·max(m-D, 0), y = 1 for similar      ``pos_weight=0.5, neg_power=1``
  pytorch-metric-learning ContrastiveLoss            ``pos_power=1, neg_power=1,``
  (pos_margin, neg_margin)                           ``pos_margin=…, margin=…``
  =================================================  ==================================

  Args:
    x1: [d] embedding of the first item.
    x2: [d] embedding of the second item.
    similar: scalar bool (or 0/1): True if the two items are of the same kind.
    margin: m >= 0, the distance beyond which a dissimilar pair costs nothing.
    pos_margin: m+ >= 0, the distance within which a similar pair costs nothing.
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine', or a callable.
    pos_power, neg_power: the powers p+, p- (>= 1).
    pos_weight, neg_weight: the factors w+, w-.

  Returns:
    A scalar loss.

  >>> import jax.numpy as jnp
  >>> float(contrastive_loss(jnp.zeros(2), jnp.array([0.3, 0.4]), False))  # (1-0.5)^2
  0.25

  References:
    Hadsell, Chopra, LeCun. Dimensionality Reduction by Learning an Invariant Mapping.
    CVPR 2006.
  """
  x1, x2 = _one_pair(x1, x2)
  similar = _checks.check_similar(similar)
  dist = distances.get_distance(distance)(x1, x2)
  return contrastive_from_distance(
    dist,
    similar,
    margin=margin,
    pos_margin=pos_margin,
    pos_power=pos_power,
    neg_power=neg_power,
    pos_weight=pos_weight,
    neg_weight=neg_weight,
  )


def binary_cross_entropy_with_logits(logit: jax.Array, target: jax.Array) -> jax.Array:
  r"""Cross-entropy of a logit ``z`` against a 0/1 target ``t``, stable for any ``z``.

  .. math::
    -t \log \sigma(z) - (1 - t) \log(1 - \sigma(z)) = \mathrm{softplus}(z) - t z
  """
  return jax.nn.softplus(logit) - target.astype(logit.dtype) * logit


def _scalar_param(x: jax.Array, name: str) -> jax.Array:
  x = _checks.as_float(x, name)
  if x.shape != ():
    raise ValueError(f"{name} must be a scalar, got shape {tuple(x.shape)}.")
  return x


def pair_logit(
  x1: jax.Array,
  x2: jax.Array,
  scale: jax.Array,
  bias: jax.Array,
  *,
  distance: str | distances.DistanceFn = "euclidean",
) -> jax.Array:
  r"""The logit :math:`b - s\,D(x_1, x_2)` of the probability that a pair is similar."""
  x1, x2 = _one_pair(x1, x2)
  _checks.check_positive(scale, "scale")  # before conversion: a Python number is known
  scale = _scalar_param(scale, "scale")
  bias = _scalar_param(bias, "bias")
  return bias - scale * distances.get_distance(distance)(x1, x2)


def sigmoid_pair_loss(
  x1: jax.Array,
  x2: jax.Array,
  similar: jax.Array | bool,
  scale: jax.Array,
  bias: jax.Array,
  *,
  distance: str | distances.DistanceFn = "euclidean",
) -> jax.Array:
  r"""Log-likelihood (sigmoid cross-entropy) loss on the distance of one pair.

  The probability that the pair is similar is modelled as

  .. math::
    p = \sigma(b - s\,D(x_1, x_2)), \qquad
    \ell = -[s] \log p - [\lnot s] \log(1 - p)

  with a scale :math:`s > 0` and a bias :math:`b` passed as arrays, so a training
  step can learn them with the encoder. The bias is what makes this a usable
  probability: :math:`\sigma(D)` of a raw distance (or :math:`\sigma(-D)`) is pinned at
  :math:`\ge \tfrac12` (or :math:`\le \tfrac12`) for every :math:`D \ge 0`, so it can
  never say "dissimilar" (or "similar") with confidence, and its cross-entropy keeps
  pushing every pair at any distance.

  Args:
    x1, x2: [d] embeddings of the two items.
    similar: scalar bool (or 0/1): True if the two items are of the same kind.
    scale: scalar s > 0 (e.g. ``jnp.exp(log_scale)`` of a learned parameter).
    bias: scalar b, the log-odds of "similar" at distance 0.
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine', or a callable.

  Returns:
    A scalar loss, ``-log p`` for a similar pair and ``-log(1 - p)`` otherwise.

  >>> import jax.numpy as jnp
  >>> round(float(sigmoid_pair_loss(jnp.zeros(2), jnp.zeros(2), True, 1.0, 0.0)), 4)
  0.6931

  References:
    Chopra, Hadsell, LeCun. Learning a Similarity Metric Discriminatively. CVPR 2005;
    Zhai et al. Sigmoid Loss for Language Image Pre-Training. ICCV 2023 (learned
    scale and bias).
  """
  similar = _checks.check_similar(similar)
  logit = pair_logit(x1, x2, scale, bias, distance=distance)
  return binary_cross_entropy_with_logits(logit, similar)


def weighted_l1_logit(
  x1: jax.Array, x2: jax.Array, alpha: jax.Array, bias: jax.Array
) -> jax.Array:
  r"""Koch et al.'s logit :math:`\sum_j \alpha_j |x_{1j} - x_{2j}| + b`."""
  x1, x2 = _one_pair(x1, x2)
  alpha = _checks.as_float(alpha, "alpha")
  if alpha.shape != x1.shape:
    raise ValueError(
      f"alpha must have the embedding's shape {tuple(x1.shape)}, got "
      f"{tuple(alpha.shape)}."
    )
  bias = _scalar_param(bias, "bias")
  return jnp.sum(alpha * jnp.abs(x1 - x2)) + bias


def weighted_l1_loss(
  x1: jax.Array,
  x2: jax.Array,
  similar: jax.Array | bool,
  alpha: jax.Array,
  bias: jax.Array,
) -> jax.Array:
  r"""Koch et al. 2015's siamese head: weighted L1 distance, sigmoid, cross-entropy.

  .. math::
    p = \sigma\Big(\sum_j \alpha_j |x_{1j} - x_{2j}| + b\Big), \qquad
    \ell = -[s] \log p - [\lnot s] \log(1 - p)

  ``alpha`` [d] and ``bias`` are learned with the encoder (the paper's fully connected
  output unit); training drives the useful :math:`\alpha_j` negative so that distant
  pairs get a low probability of being similar.

  Args:
    x1, x2: [d] embeddings (the twin network's feature vectors).
    similar: scalar bool (or 0/1): True if the two items are of the same kind.
    alpha: [d] component weights.
    bias: scalar bias.

  Returns:
    A scalar cross-entropy loss.

  >>> import jax.numpy as jnp
  >>> round(float(weighted_l1_loss(jnp.zeros(2), jnp.ones(2), False,
  ...                              -jnp.ones(2), 0.0)), 4)  # softplus(-2)
  0.1269

  References:
    Koch, Zemel, Salakhutdinov. Siamese Neural Networks for One-shot Image
    Recognition. ICML Deep Learning Workshop 2015.
  """
  similar = _checks.check_similar(similar)
  return binary_cross_entropy_with_logits(
    weighted_l1_logit(x1, x2, alpha, bias), similar
  )

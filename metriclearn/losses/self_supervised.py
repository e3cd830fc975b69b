r"""Self-supervised, non-contrastive losses of two views: VICReg and Barlow Twins.

Both take the embeddings of two augmented views of the same items, ``z1 [n, d]`` and
``z2 [n, d]`` (row ``b`` of each is item ``b``), and return one scalar: the loss of the
batch. There are no labels and no negatives; what keeps the embeddings from
collapsing is a penalty on their statistics over the batch (per-dimension means,
variances, covariances, cross-correlations).

**The global batch.** With ``axis_name`` (under ``shard_map`` or ``pmap``, each
device holding its rows of ``z1`` and ``z2``) every statistic is that of the global
batch: each device adds up its rows' sufficient statistics (sums, centred sums of
squares, ``[d, d]`` cross-products) and a ``psum`` combines them, so that no device
gathers the others' embeddings. Every device returns the same scalar, the loss of the
global batch, equal to the one-device call on the concatenated batch. Gradients: under
``shard_map`` with JAX's default ``check_vma=True`` (differentiated inside or outside
it, ``out_specs=P()``) a device's gradient w.r.t. its rows is that of the one-device
call. Under ``pmap``, or inside a ``shard_map`` with ``check_vma=False`` (as
:func:`metriclearn.parallel.shard_map_step` runs the train step), a device's gradient
of its copy is that of the sum of the equal copies, the device count times it, as for
every loss that each device computes in full (``reduction='total'`` in
:func:`metriclearn.training.make_train_step`): the step's ``pmean`` of the parameter
gradients undoes exactly that.

**Padding.** ``valid`` (``[n]`` bool, e.g. ``labels >= 0``) marks the real rows; the
others take no part in any statistic, whatever they hold (a NaN there reaches no value
and no gradient). With fewer than two real rows in the (global) batch there is no
variance to estimate: the loss is 0, with a zero gradient. A NaN or infinity in a real
row makes the loss NaN. bfloat16 and float16 inputs are computed in float32.

**In a train step** (two views of each item, ``metriclearn.data.two_views``): encode
both views in one forward pass, split the embeddings back into ``z1`` and ``z2`` row
by row, and call ``loss(z1, z2, axis_name=axis_name, valid=...)``: a scalar, already
the whole loss (no further reduction).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from metriclearn import _checks
from metriclearn.losses._classes import psum

__all__ = ["barlow_twins_loss", "vicreg_loss"]

_HIGHEST = jax.lax.Precision.HIGHEST


def _two_views(
  z1: Any, z2: Any, valid: Any, axis_name: str | None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Checked views (float, one dtype), the [n] real-row mask and the global count."""
  z1 = _checks.as_float(z1, "z1")
  z2 = _checks.as_float(z2, "z2")
  _checks.check_rank(z1, 2, "z1", "[n, d]: the embeddings of the first views")
  _checks.check_rank(z2, 2, "z2", "[n, d]: the embeddings of the second views")
  if z1.shape != z2.shape:
    raise ValueError(
      f"z1 and z2 must have the same shape [n, d] (row b of each is item b), got "
      f"{tuple(z1.shape)} and {tuple(z2.shape)}."
    )
  z1, z2 = _checks.common_float(z1, z2)
  n, d = z1.shape
  devices = 1 if axis_name is None else jax.lax.axis_size(axis_name)
  if n * devices < 2 or d < 1:
    where = "" if axis_name is None else f" over the {devices} devices of {axis_name!r}"
    raise ValueError(
      f"z1 and z2 need n >= 2 rows{where} (a variance over the batch) and d >= 1 "
      f"dimensions, got shape {tuple(z1.shape)}."
    )
  if valid is None:
    valid = jnp.ones((n,), bool)
  else:
    valid = _checks.check_mask(valid, (n,), "valid")
  count = psum(jnp.sum(valid).astype(z1.dtype), axis_name)
  return z1, z2, valid, count


def _rows(valid: jax.Array, x: jax.Array) -> jax.Array:
  """``x`` on the real rows, 0 on padding rows (their contents reach nothing)."""
  return jnp.where(valid[:, None], x, jnp.zeros((), x.dtype))


def _centred(z: jax.Array, valid: jax.Array, count: jax.Array, axis_name) -> jax.Array:
  """``z`` minus its global per-dimension mean over the real rows (padding rows 0)."""
  mean = psum(jnp.sum(_rows(valid, z), axis=0), axis_name) / jnp.maximum(count, 1)
  return _rows(valid, z - mean)


def _gram(a: jax.Array, b: jax.Array, axis_name) -> jax.Array:
  """The global ``sum_b a_b^T b_b``, [d, d]."""
  return psum(jnp.matmul(a.T, b, precision=_HIGHEST), axis_name)


def _off_diagonal_squares(c: jax.Array) -> jax.Array:
  """``sum_{i != j} c_ij^2`` (the diagonal masked, not subtracted: no cancellation)."""
  eye = jnp.eye(c.shape[0], dtype=bool)
  return jnp.sum(jnp.where(eye, jnp.zeros((), c.dtype), c) ** 2)


def _variance(count: jax.Array, variance: jax.Array, eps: jax.Array) -> jax.Array:
  """``variance + eps``, or 1 with fewer than two real rows (no variance, and no
  infinite square-root gradient behind the zero loss, even with ``eps=0``)."""
  return jnp.where(count >= 2, variance + eps, jnp.ones((), variance.dtype))


def _enough_rows(count: jax.Array, loss: jax.Array) -> jax.Array:
  """The loss, or 0 (with a zero gradient) when fewer than two rows are real."""
  return jnp.where(count >= 2, loss, jnp.zeros((), loss.dtype))


def vicreg_loss(
  z1: jax.Array,
  z2: jax.Array,
  *,
  invariance_weight: float | jax.Array = 25.0,
  variance_weight: float | jax.Array = 25.0,
  covariance_weight: float | jax.Array = 1.0,
  gamma: float | jax.Array = 1.0,
  eps: float | jax.Array = 1e-4,
  valid: jax.Array | None = None,
  axis_name: str | None = None,
) -> jax.Array:
  r"""VICReg: invariance, variance and covariance terms of two views' embeddings.

  .. math::
    \ell = \lambda\, \frac{1}{N d} \sum_{b=1}^{N} \lVert z^1_b - z^2_b \rVert_2^2
      + \mu \sum_{v=1}^{2} \frac{1}{d} \sum_{j=1}^{d}
        \max\Big(0, \gamma - \sqrt{C(Z^v)_{jj} + \epsilon}\Big)
      + \nu \sum_{v=1}^{2} \frac{1}{d} \sum_{j \ne k} C(Z^v)_{jk}^2,

  .. math::
    C(Z) = \frac{1}{N - 1} \sum_{b=1}^{N} (z_b - \bar z)(z_b - \bar z)^\top,
    \qquad \bar z = \frac{1}{N} \sum_b z_b,

  with :math:`z^1_b, z^2_b` = rows ``b`` of ``z1``, ``z2``, :math:`N` the real rows of
  the (global) batch, :math:`\lambda, \mu, \nu` = ``invariance_weight``,
  ``variance_weight``, ``covariance_weight``, :math:`\gamma` = ``gamma``,
  :math:`\epsilon` = ``eps``. :math:`C` is the unbiased covariance (the paper's
  ``var(dim=0)`` and ``/ (N - 1)``), its diagonal the per-dimension variance. The
  invariance term is the mean squared difference over the :math:`N d` entries (the
  paper's Algorithm 1, ``F.mse_loss``, with which the weights 25, 25, 1 were tuned;
  its Eq. 5 writes :math:`\frac{1}{N}\sum_b \lVert\cdot\rVert^2`, :math:`d` times as
  large). The variance term of each view counts in full, as in Eq. 6 and Algorithm 1:
  the authors' released code and pytorch-metric-learning halve it (the mean of the
  two views).

  pytorch-metric-learning: ``VICRegLoss()`` (``invariance_lambda=25,
  variance_mu=25, covariance_v=1, eps=1e-4``, its default mean reducer), called as
  ``loss_fn(z1, ref_emb=z2)``, is ``vicreg_loss(z1, z2, variance_weight=12.5)``: its
  invariance is the mean over rows of the per-row mean over dimensions (the same
  :math:`\frac{1}{Nd}` sum), its variance terms are ``relu(1 - std) / 2`` averaged
  over dimensions (half of ours), and its covariance term is the same
  (``/ (N - 1)``, off-diagonal squares summed, ``/ D``, both views).

  Args:
    z1: [n, d] embeddings of the first views (row b: item b).
    z2: [n, d] embeddings of the second views of the same items, in the same order.
    invariance_weight: :math:`\lambda \ge 0` (default 25, the paper's).
    variance_weight: :math:`\mu \ge 0` (default 25, the paper's).
    covariance_weight: :math:`\nu \ge 0` (default 1, the paper's).
    gamma: :math:`\gamma \ge 0`, the target standard deviation of each dimension
      (default 1, the paper's).
    eps: :math:`\epsilon \ge 0` inside the square root (default 1e-4, the paper's);
      with 0 a constant dimension has an infinite gradient. Options may be traced
      scalars (then not checked).
    valid: optional [n] bool (or 0/1): the real rows; the others are padding and take
      no part. Default: every row.
    axis_name: the mapped axis the batch is split over (``shard_map`` / ``pmap``): the
      statistics are those of the global batch (``psum`` of sums and ``[d, d]``
      cross-products); every device returns the global loss.

  Returns:
    A scalar: the loss of the (global) batch; 0 with fewer than two real rows.

  >>> import jax.numpy as jnp
  >>> z = jnp.array([[1.0, -1.0], [-1.0, 1.0]])
  >>> # variances (1 + 1) / 1 = 2: std 1.414 > gamma, no variance term; covariance
  >>> # (1 * -1 + -1 * 1) / 1 = -2, twice off the diagonal: (4 + 4) / d = 4 per view
  >>> float(vicreg_loss(z, z))  # 0 + 0 + 1 * (4 + 4)
  8.0
  >>> float(vicreg_loss(z, z + 1.0))  # invariance: 25 * mean(1^2) = 25, plus 8
  33.0

  References:
    Bardes, Ponce, LeCun. VICReg: Variance-Invariance-Covariance Regularization for
    Self-Supervised Learning. ICLR 2022.
  """
  z1, z2, valid, count = _two_views(z1, z2, valid, axis_name)
  dtype = z1.dtype
  lam = _checks.scalar(invariance_weight, "invariance_weight", dtype, non_negative=True)
  mu = _checks.scalar(variance_weight, "variance_weight", dtype, non_negative=True)
  nu = _checks.scalar(covariance_weight, "covariance_weight", dtype, non_negative=True)
  gamma = _checks.scalar(gamma, "gamma", dtype, non_negative=True)
  eps = _checks.scalar(eps, "eps", dtype, non_negative=True)
  d = z1.shape[1]
  squares = psum(jnp.sum(_rows(valid, z1 - z2) ** 2), axis_name)
  invariance = squares / (jnp.maximum(count, 1) * d)
  variance = covariance = jnp.zeros((), dtype)
  for z in (z1, z2):
    x = _centred(z, valid, count, axis_name)
    cov = _gram(x, x, axis_name) / jnp.maximum(count - 1, 1)
    std = jnp.sqrt(_variance(count, jnp.diagonal(cov), eps))
    variance = variance + jnp.mean(jax.nn.relu(gamma - std))
    covariance = covariance + _off_diagonal_squares(cov) / d
  loss = lam * invariance + mu * variance + nu * covariance
  return _enough_rows(count, loss)


def barlow_twins_loss(
  z1: jax.Array,
  z2: jax.Array,
  *,
  off_diagonal_weight: float | jax.Array = 5e-3,
  eps: float | jax.Array = 1e-5,
  unbiased: bool = False,
  valid: jax.Array | None = None,
  axis_name: str | None = None,
) -> jax.Array:
  r"""Barlow Twins: the cross-correlation of two views' embeddings pushed to identity.

  .. math::
    \ell = \sum_{i=1}^{d} (1 - \mathcal{C}_{ii})^2
      + \lambda \sum_{i=1}^{d} \sum_{j \ne i} \mathcal{C}_{ij}^2,
    \qquad
    \mathcal{C}_{ij} = \frac{1}{N} \sum_{b=1}^{N} \hat z^1_{bi}\, \hat z^2_{bj},

  .. math::
    \hat z^v_{bj} = \frac{z^v_{bj} - \bar z^v_j}{\sqrt{\sigma^{v\,2}_j + \epsilon}},
    \qquad
    \sigma^{v\,2}_j = \frac{1}{N} \sum_{b=1}^{N} (z^v_{bj} - \bar z^v_j)^2,

  with :math:`z^v_b` = row ``b`` of ``z1`` / ``z2``, :math:`\bar z^v` the per-dimension
  mean and :math:`N` the real rows of the (global) batch, :math:`\lambda` =
  ``off_diagonal_weight``, :math:`\epsilon` = ``eps``. Each view is standardised per
  dimension over the batch with the **biased** standard deviation (the paper's Eq. 2,
  where :math:`\mathcal{C}` is the correlation coefficient, in [-1, 1] when
  ``eps=0``, and the authors' code, ``BatchNorm1d(affine=False)`` in training mode,
  ``eps`` 1e-5), and the cross-correlation is divided by :math:`N`.
  ``unbiased=True`` divides :math:`\sigma^2` by :math:`N - 1` instead (the paper's
  Algorithm 1, ``z.std(0)``: then :math:`\mathcal{C}_{ii} \le (N-1)/N`).

  pytorch-metric-learning has no Barlow Twins loss.

  Args:
    z1: [n, d] embeddings of the first views (row b: item b).
    z2: [n, d] embeddings of the second views of the same items, in the same order.
    off_diagonal_weight: :math:`\lambda \ge 0`, the weight of the redundancy term
      (default 5e-3, the paper's; its code's default is 0.0051).
    eps: :math:`\epsilon \ge 0` added to the variance (default 1e-5, BatchNorm's);
      with 0 a constant dimension gives NaN. Options may be traced scalars (then not
      checked).
    unbiased: standardise with the unbiased variance (``/ (N - 1)``).
    valid: optional [n] bool (or 0/1): the real rows; the others are padding and take
      no part. Default: every row.
    axis_name: the mapped axis the batch is split over (``shard_map`` / ``pmap``): the
      means, variances and the cross-correlation are those of the global batch
      (``psum`` of sums and of the ``[d, d]`` cross-products); every device returns
      the global loss.

  Returns:
    A scalar: the loss of the (global) batch; 0 with fewer than two real rows.

  >>> import jax.numpy as jnp
  >>> z = jnp.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
  >>> # two uncorrelated dimensions of variance 1: C = I / (1 + eps), loss ~ 0
  >>> round(float(barlow_twins_loss(z, z)), 6)
  0.0
  >>> # the second view's dimensions swapped: C = [[0, 1], [1, 0]] / (1 + eps)
  >>> round(float(barlow_twins_loss(z, z[:, ::-1])), 6)  # (1 + 1) + 5e-3 * (1 + 1)
  2.01

  References:
    Zbontar, Jing, Misra, LeCun, Deny. Barlow Twins: Self-Supervised Learning via
    Redundancy Reduction. ICML 2021.
  """
  z1, z2, valid, count = _two_views(z1, z2, valid, axis_name)
  dtype = z1.dtype
  lam = _checks.scalar(
    off_diagonal_weight, "off_diagonal_weight", dtype, non_negative=True
  )
  eps = _checks.scalar(eps, "eps", dtype, non_negative=True)
  if not isinstance(unbiased, bool):
    raise TypeError(f"unbiased must be True or False, got {unbiased!r}.")
  denominator = jnp.maximum(count - 1 if unbiased else count, 1)
  standardised = []
  for z in (z1, z2):
    x = _centred(z, valid, count, axis_name)
    var = psum(jnp.sum(x**2, axis=0), axis_name) / denominator
    standardised.append(x / jnp.sqrt(_variance(count, var, eps)))
  s1, s2 = standardised
  c = _gram(s1, s2, axis_name) / jnp.maximum(count, 1)
  loss = jnp.sum((1 - jnp.diagonal(c)) ** 2) + lam * _off_diagonal_squares(c)
  return _enough_rows(count, loss)

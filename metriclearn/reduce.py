"""Reductions that never divide by zero: an empty selection gives 0 and a zero gradient.

Losses return unreduced values (one per pair or per anchor); these functions reduce
them. ``jnp.where`` (not multiplication by a mask) keeps a NaN or infinity in an
excluded entry from reaching the result or its gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from metriclearn import _checks

__all__ = [
  "class_weighted_mean",
  "count_sorted",
  "divisor_reduce",
  "global_mean",
  "masked_logsumexp",
  "masked_max",
  "masked_mean",
  "masked_min",
  "masked_sum",
  "mean_over_nonzero",
  "mean_over_valid",
  "sorted_where",
  "threshold_reduce",
]


def _count(mask: jax.Array, axis, keepdims: bool = False) -> jax.Array:
  return jnp.sum(mask, axis=axis, keepdims=keepdims)


def masked_sum(values: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """Sum of ``values`` where ``mask`` is True."""
  return jnp.sum(jnp.where(mask, values, 0.0), axis=axis)


def masked_mean(values: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """Mean of ``values`` over the entries where ``mask`` is True; 0 where there are none.

  With ``axis=1`` on an [n, m] array this is the per-anchor mean over candidates.
  """
  mask = jnp.broadcast_to(mask, values.shape)
  count = _count(mask, axis).astype(values.dtype)
  total = masked_sum(values, mask, axis)
  return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)


def mean_over_valid(values: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Scalar mean over the valid entries (all if ``valid`` is None); 0 if none."""
  if valid is None:
    return jnp.mean(values) if values.size else jnp.zeros((), values.dtype)
  return masked_mean(values, valid)


def mean_over_nonzero(
  values: jax.Array, valid: jax.Array | None = None, *, threshold: float = 0.0
) -> jax.Array:
  """Scalar mean over the entries greater than ``threshold`` (pytorch-metric-learning's
  ``AvgNonZeroReducer``): easy, zero-loss entries do not dilute the average."""
  mask = values > threshold
  if valid is not None:
    mask &= valid
  return masked_mean(values, mask)


def masked_max(values: jax.Array, mask: jax.Array, axis: int = -1) -> jax.Array:
  """Max over the masked entries along ``axis``; 0 where there are none."""
  low = jnp.finfo(values.dtype).min
  out = jnp.max(jnp.where(mask, values, low), axis=axis)
  return jnp.where(jnp.any(mask, axis=axis), out, 0.0)


def masked_min(values: jax.Array, mask: jax.Array, axis: int = -1) -> jax.Array:
  """Min over the masked entries along ``axis``; 0 where there are none."""
  return -masked_max(-values, mask, axis=axis)


def masked_logsumexp(
  x: jax.Array, mask: jax.Array, axis: int = -1, *, keepdims: bool = False
) -> jax.Array:
  r""":math:`\log \sum_{j \in mask} e^{x_j}` along ``axis``, stable for large ``x``.

  Where no entry is selected the result is ``-inf`` in value but the gradient is 0 (no
  NaN); callers test ``jnp.any(mask, axis)`` to replace it.
  """
  mask = jnp.broadcast_to(mask, x.shape)
  any_ = jnp.any(mask, axis=axis, keepdims=True)
  safe_x = jnp.where(mask, x, jnp.finfo(x.dtype).min)
  peak = jax.lax.stop_gradient(
    jnp.where(any_, jnp.max(safe_x, axis=axis, keepdims=True), 0.0)
  )
  total = jnp.sum(
    jnp.where(mask, jnp.exp(safe_x - peak), 0.0), axis=axis, keepdims=True
  )
  out = jnp.where(any_, jnp.log(jnp.where(any_, total, 1.0)) + peak, -jnp.inf)
  return out if keepdims else jnp.squeeze(out, axis=axis)


def sorted_where(mask: jax.Array, values: jax.Array) -> jax.Array:
  """Each row of ``values`` restricted to ``mask`` and sorted; +inf fills the rest."""
  return jnp.sort(jnp.where(mask, values, jnp.inf), axis=-1)


def count_sorted(sorted_rows: jax.Array, queries: jax.Array, side: str) -> jax.Array:
  """Per row, how many sorted entries are < (side 'left') or <= ('right') each query."""
  search = functools.partial(jnp.searchsorted, side=side)
  return jax.vmap(search)(sorted_rows, queries)


def global_mean(
  values: jax.Array,
  valid: jax.Array | None = None,
  *,
  axis_name: str | None = None,
  nonzero: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The mean over the valid entries of every device of ``axis_name``.

  Returns ``(local_sum, count, mean)``: this device's sum, the count over every device
  (at least 1) and the global mean (0 if nothing is valid). ``local_sum / count`` is
  this device's share of the mean: summed over the devices it is the mean, and so is
  the gradient. ``nonzero``: only entries > 0 count (``mean_over_nonzero``).
  """
  valid = jnp.ones(values.shape, bool) if valid is None else valid
  if nonzero:
    valid = valid & (values > 0)
  local = masked_sum(values, valid)
  count = jnp.sum(valid).astype(values.dtype)
  total = local
  if axis_name is not None:
    count = jax.lax.psum(count, axis_name)
    total = jax.lax.psum(local, axis_name)
  count = jnp.maximum(count, 1.0)
  return local, count, total / count


# ----------------------------------------------------------------------------------
# pytorch-metric-learning's other reducers. Each gives 0 when nothing is valid, and a
# NaN in a valid entry makes the result NaN.


def _valid(values: jax.Array, valid: jax.Array | None) -> jax.Array:
  """``valid`` as a bool mask of ``values``' shape (all True when None)."""
  if valid is None:
    return jnp.ones(values.shape, bool)
  valid = jnp.asarray(valid)
  try:
    shape = jnp.broadcast_shapes(valid.shape, values.shape)
  except ValueError:
    shape = None
  if shape != values.shape:
    raise ValueError(
      f"valid must be broadcastable to values {tuple(values.shape)}, got "
      f"{tuple(valid.shape)}."
    )
  return jnp.broadcast_to(_checks.check_mask(valid, valid.shape, "valid"), shape)


def class_weighted_mean(
  values: jax.Array,
  labels: jax.Array,
  class_weights: jax.Array,
  valid: jax.Array | None = None,
  *,
  normalize: bool = False,
) -> jax.Array:
  r"""Mean of per-example values, each weighted by the weight of its class
  (pytorch-metric-learning's ``ClassWeightedReducer``).

  .. math::
    \frac{1}{|V|} \sum_{i \in V} w_{y_i} \ell_i \quad \text{(default)}, \qquad
    \frac{\sum_{i \in V} w_{y_i} \ell_i}{\sum_{i \in V} w_{y_i}}
    \quad \text{(``normalize=True``)}

  with :math:`V` the valid entries whose label is not -1 (padding). 0 when
  :math:`V` is empty (or, normalised, when its weights sum to 0). Values of shape
  [n, ...] (per pair, [n, m]) take the weight of the row's (the anchor's) label.

  PML's ``ClassWeightedReducer(weights=w, low=l, high=h)`` (it requires ``low`` or
  ``high``: it is a ``ThresholdReducer``) on per-element losses is
  ``threshold_reduce(values * w[labels], low=l, high=h)``; with ``low=-math.inf``
  and finite values it is ``class_weighted_mean(values, labels, w)``. PML weights
  per-element losses only (its pair and triplet reductions ignore the weights).

  Args:
    values: [n] or [n, ...] per-example (per-anchor) values.
    labels: [n] integer classes in [0, C), -1 for padding. A label >= C raises when
      the labels are known at trace time and gives NaN when they are traced.
    class_weights: [C] the weight of each class.
    valid: optional bool mask broadcastable to ``values``.
    normalize: divide by the sum of the weights instead of the count.

  Returns:
    A scalar.

  >>> import jax.numpy as jnp
  >>> v, y, w = jnp.array([1.0, 2.0, 4.0]), jnp.array([0, 1, -1]), jnp.array([3.0, 0.5])
  >>> float(class_weighted_mean(v, y, w))  # (3 * 1 + 0.5 * 2) / 2; padding left out
  2.0
  >>> float(class_weighted_mean(v, y, w, normalize=True))  # 4 / (3 + 0.5)
  1.1428571939468384

  References:
    Musgrave, Belongie, Lim. PyTorch Metric Learning. arXiv:2008.09164, 2020
    (``reducers.ClassWeightedReducer``).
  """
  values = _checks.as_float(values, "values")
  if values.ndim < 1:
    raise ValueError("values must be [n] or [n, ...], got a scalar.")
  n = values.shape[0]
  if jnp.shape(labels) != (n,):
    raise ValueError(
      f"labels must have shape ({n},) to match values {tuple(values.shape)}, got "
      f"{tuple(jnp.shape(labels))}."
    )
  labels = _checks.check_labels(labels, n, "labels")  # integers, -1 for padding
  class_weights = _checks.as_float(class_weights, "class_weights")
  _checks.check_rank(class_weights, 1, "class_weights", "[C]")
  num_classes = class_weights.shape[0]
  known = _checks.concrete_value(labels)
  if known is not None and known.size and known.max() >= num_classes:
    raise ValueError(
      f"labels must lie in [0, {num_classes}) (the classes of class_weights), or be -1 "
      f"for padding; got {known.max()}."
    )
  real = labels >= 0
  weight = jnp.take(
    class_weights.astype(values.dtype),
    jnp.where(real, labels, 0),
    mode="fill",
    fill_value=np.nan,
  )
  shape = (n,) + (1,) * (values.ndim - 1)
  weight = jnp.broadcast_to(weight.reshape(shape), values.shape)
  mask = _valid(values, valid) & jnp.broadcast_to(real.reshape(shape), values.shape)
  if not normalize:
    return masked_mean(weight * values, mask)
  total = masked_sum(weight * values, mask)
  weights = masked_sum(weight, mask)
  return jnp.where(weights != 0, total / jnp.where(weights != 0, weights, 1.0), 0.0)


def divisor_reduce(
  values: jax.Array, divisor: float | jax.Array, valid: jax.Array | None = None
) -> jax.Array:
  r"""The sum of the valid values divided by a given divisor
  (pytorch-metric-learning's ``DivisorReducer``).

  .. math::
    \frac{1}{D} \sum_{i \in V} \ell_i \quad (0 \text{ if } D = 0)

  For a loss whose normaliser is not the number of its terms, e.g. SoftTriple's
  centre regulariser (:func:`metriclearn.regularizers.sparse_centers_regularizer`
  divides the sum over the upper triangle by :math:`C K (K - 1)`, the ``divisor`` PML
  passes). A divisor of 0 gives 0 (and a zero gradient), as PML.

  Args:
    values: any shape.
    divisor: a scalar D >= 0 (may be traced: then its sign is not checked).
    valid: optional bool mask broadcastable to ``values``.

  Returns:
    A scalar.

  >>> import jax.numpy as jnp
  >>> float(divisor_reduce(jnp.array([1.0, 2.0, 3.0]), 4))  # 6 / 4
  1.5

  References:
    Musgrave, Belongie, Lim. PyTorch Metric Learning. arXiv:2008.09164, 2020
    (``reducers.DivisorReducer``).
  """
  values = _checks.as_float(values, "values")
  divisor = _checks.scalar(divisor, "divisor", values.dtype, non_negative=True)
  total = masked_sum(values, _valid(values, valid))
  some = divisor != 0
  return jnp.where(some, total / jnp.where(some, divisor, 1.0), 0.0)


def threshold_reduce(
  values: jax.Array,
  valid: jax.Array | None = None,
  *,
  low: float | jax.Array | None = None,
  high: float | jax.Array | None = None,
) -> jax.Array:
  r"""Mean over the valid values strictly between ``low`` and ``high``
  (pytorch-metric-learning's ``ThresholdReducer``).

  .. math::
    \frac{1}{|S|} \sum_{i \in S} \ell_i, \qquad
    S = \{i \in V : \text{low} < \ell_i < \text{high}\}

  (a missing bound is no bound); 0 when :math:`S` is empty. A NaN value is not
  filtered out: it stays in :math:`S` and the result is NaN (PML's comparisons drop
  it). ``mean_over_nonzero`` is ``threshold_reduce(values, low=0)`` except for NaN
  (which it leaves out). PML's ``ThresholdReducer(low=l, high=h)`` is
  ``threshold_reduce(values, low=l, high=h)``.

  Args:
    values: any shape.
    valid: optional bool mask broadcastable to ``values``.
    low: exclude values <= low (None: no lower bound).
    high: exclude values >= high (None: no upper bound). Give at least one.

  Returns:
    A scalar.

  >>> import jax.numpy as jnp
  >>> v = jnp.array([0.0, 0.5, 2.0, 9.0])
  >>> float(threshold_reduce(v, low=0.0, high=5.0))  # (0.5 + 2) / 2
  1.25

  References:
    Musgrave, Belongie, Lim. PyTorch Metric Learning. arXiv:2008.09164, 2020
    (``reducers.ThresholdReducer``).
  """
  if low is None and high is None:
    raise ValueError(
      "threshold_reduce needs low, high or both (without them it is mean_over_valid)."
    )
  values = _checks.as_float(values, "values")
  keep = _valid(values, valid)
  if low is not None:
    keep &= ~(values <= _checks.scalar(low, "low", values.dtype))
  if high is not None:
    keep &= ~(values >= _checks.scalar(high, "high", values.dtype))
  return masked_mean(values, keep)

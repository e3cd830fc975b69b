"""Reductions that never divide by zero: an empty selection gives 0 and a zero gradient.

Losses return unreduced values (one per pair or per anchor); these functions reduce
them. ``jnp.where`` (not multiplication by a mask) keeps a NaN or infinity in an
excluded entry from reaching the result or its gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = [
  "count_sorted",
  "global_mean",
  "masked_logsumexp",
  "masked_max",
  "masked_mean",
  "masked_min",
  "masked_sum",
  "mean_over_nonzero",
  "mean_over_valid",
  "sorted_where",
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

"""Initialisers that models and losses share (so that models never import losses)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["init_proxies"]


def init_proxies(
  key: jax.Array,
  num_classes: int,
  dim: int,
  *,
  num_centers: int = 1,
  dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
  r"""Random proxies: normal entries of variance ``1 / dim`` (norms close to 1).

  The same draw is LeCun-normal for a linear head's ``[C, d]`` weights.

  Args:
    key: a PRNG key.
    num_classes: C.
    dim: embedding size d.
    num_centers: K sub-centres per class (sub-center ArcFace: 3, SoftTriple: 10).
    dtype: the proxies' dtype.

  Returns:
    ``[C, d]`` proxies, or ``[C, K, d]`` if ``num_centers > 1``.

  >>> init_proxies(jax.random.key(0), 10, 4, num_centers=3).shape
  (10, 3, 4)
  """
  for value, name in ((num_classes, "num_classes"), (dim, "dim")):
    if int(value) < 1:
      raise ValueError(f"{name} must be >= 1, got {value}.")
  if int(num_centers) < 1:
    raise ValueError(f"num_centers must be >= 1, got {num_centers}.")
  shape = (num_classes, dim) if num_centers == 1 else (num_classes, num_centers, dim)
  return jax.random.normal(key, shape, dtype) / math.sqrt(dim)

"""The plumbing every class loss shares: embeddings against one vector per class.

:mod:`metriclearn.losses.classification` (margin-based softmax classification) and
:mod:`metriclearn.losses.proxy` (the proxy losses) both stand on it: the checks of
``(embeddings [n, d], labels [n], proxies [C, d] or [C, K, d])``, the gathering of the
batch for class-sharded proxies (``proxy_axis_name``), the cosines to every class,
and the log-sum-exp and cross-entropy over the classes of every device (``pmax``
shift, ``psum`` of the exponential sums). The conventions are described in
:mod:`metriclearn.losses.classification`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metriclearn import _checks, distances

__all__ = [
  "Setup",
  "check_scalar",
  "class_cosines",
  "cross_entropy",
  "local_rows",
  "logsumexp",
  "max_cosines",
  "psum",
  "setup",
]


class Setup(NamedTuple):
  """The checked inputs of a class loss, with the batch gathered when sharded."""

  embeddings: jax.Array  # [N, d]: the whole batch (gathered when sharded)
  labels: jax.Array  # [N]
  proxies: jax.Array  # [C_local, d] or [C_local, K, d]
  target: jax.Array  # [N, C_local] bool: the local proxy of the row's class
  valid: jax.Array  # [N] bool: a real row whose class has a proxy on some device
  num_classes: int  # C over all devices
  n: int  # rows this device returns


def psum(x: jax.Array, axis_name: str | None) -> jax.Array:
  """``lax.psum`` over ``axis_name``; ``x`` itself when it is None."""
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def setup(
  embeddings: jax.Array,
  labels: jax.Array,
  proxies: jax.Array,
  *,
  proxy_axis_name: str | None,
  gather_axis: str | None = None,
  ranks: tuple[int, ...] = (2,),
  name: str = "proxies",
) -> Setup:
  """Checks ``(embeddings, labels, proxies)`` and, with ``proxy_axis_name`` (or
  ``gather_axis``), gathers the batch from every device and finds each row's local
  target proxy (module docstring of :mod:`metriclearn.losses.classification`)."""
  embeddings = _checks.check_embeddings(embeddings, "embeddings")
  n, d = embeddings.shape
  labels = _checks.check_labels(labels, n, "labels")
  proxies = _checks.as_float(proxies, name)
  if proxies.ndim not in ranks:
    forms = " or ".join({2: "[C, d]", 3: "[C, K, d]"}[r] for r in ranks)
    raise ValueError(f"{name} must be {forms}, got shape {tuple(proxies.shape)}.")
  if proxies.shape[-1] != d:
    raise ValueError(
      f"{name} must have the embedding size d={d} of embeddings {tuple((n, d))} in "
      f"their last axis, got shape {tuple(proxies.shape)}."
    )
  if proxies.shape[0] < 1 or (proxies.ndim == 3 and proxies.shape[1] < 1):
    raise ValueError(f"{name} must hold at least one proxy, got {proxies.shape}.")
  embeddings, proxies = _checks.common_float(embeddings, proxies)
  c_local = proxies.shape[0]
  offset: int | jax.Array
  if proxy_axis_name is None:
    num_classes, offset = c_local, 0
  else:
    num_classes = c_local * jax.lax.axis_size(proxy_axis_name)
    offset = jax.lax.axis_index(proxy_axis_name) * c_local
  value = _checks.concrete_value(labels)
  if (
    value is not None
    and value.size
    and (value.min() < -1 or value.max() >= num_classes)
  ):
    raise ValueError(
      f"labels must lie in [-1, {num_classes}) for the {num_classes} classes of "
      f"{name} {tuple(proxies.shape)} (-1 marks padding), got values in "
      f"[{value.min()}, {value.max()}]."
    )
  gather_axis = gather_axis or proxy_axis_name
  if gather_axis is not None:
    embeddings = jax.lax.all_gather(embeddings, gather_axis, axis=0, tiled=True)
    labels = jax.lax.all_gather(labels, gather_axis, axis=0, tiled=True)
  classes = jnp.arange(c_local, dtype=labels.dtype) + jnp.asarray(offset, labels.dtype)
  target = labels[:, None] == classes[None, :]
  target &= (labels >= 0)[:, None]
  valid = psum(jnp.sum(target, axis=1), proxy_axis_name) > 0
  return Setup(embeddings, labels, proxies, target, valid, num_classes, n)


def local_rows(x: jax.Array, setup: Setup, axis_name: str | None) -> jax.Array:
  """The rows of ``x`` [N] that belong to this device (all of them unsharded)."""
  if axis_name is None:
    return x
  start = jax.lax.axis_index(axis_name) * setup.n
  return jax.lax.dynamic_slice_in_dim(x, start, setup.n)


def class_cosines(embeddings: jax.Array, proxies: jax.Array) -> jax.Array:
  """[N, C] cosines; with sub-centres [C, K, d], the [N, C, K] cosines (no max)."""
  flat = proxies.reshape(-1, proxies.shape[-1])
  cos = distances.pairwise_cosine_similarity(embeddings, flat)
  return cos.reshape(embeddings.shape[0], *proxies.shape[:-1])


def max_cosines(embeddings: jax.Array, proxies: jax.Array) -> jax.Array:
  """[N, C] cosine to each class: the nearest sub-centre when proxies are [C, K, d]."""
  cos = class_cosines(embeddings, proxies)
  return jnp.max(cos, axis=-1) if proxies.ndim == 3 else cos


def logsumexp(
  x: jax.Array, mask: jax.Array, axis_name: str | None
) -> tuple[jax.Array, jax.Array]:
  """Row-wise ``log sum_{j in mask} exp(x_ij)`` over the classes of every device.

  Returns the [N] values and an [N] bool: whether the row had any entry (where it had
  none the value is finite but meaningless and its gradient is 0).
  """
  low = jnp.finfo(x.dtype).min
  safe = jnp.where(mask, x, low)
  peak = jax.lax.stop_gradient(jnp.max(safe, axis=1))
  if axis_name is not None:
    peak = jax.lax.stop_gradient(jax.lax.pmax(peak, axis_name))
  total = jnp.sum(jnp.where(mask, jnp.exp(safe - peak[:, None]), 0.0), axis=1)
  total = psum(total, axis_name)
  any_ = psum(jnp.sum(mask, axis=1), axis_name) > 0
  return jnp.log(jnp.where(any_, total, 1.0)) + peak, any_


def cross_entropy(
  logits: jax.Array,
  setup: Setup,
  axis_name: str | None,
  *,
  exclude_target: bool = False,
) -> jax.Array:
  """Per-row ``-log softmax(logits)[label]`` over every device's classes: [N]."""
  mask = ~setup.target if exclude_target else jnp.ones_like(setup.target)
  lse, any_ = logsumexp(logits, mask, axis_name)
  target = psum(jnp.sum(jnp.where(setup.target, logits, 0.0), axis=1), axis_name)
  return jnp.where(setup.valid & any_, lse - target, 0.0)


def check_scalar(value, name: str, *, positive: bool = True) -> None:
  """A scalar option, > 0 (``positive``) or >= 0, checked when its value is known."""
  if np.ndim(value) != 0:
    raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}.")
  if positive:
    _checks.check_positive(value, name)
  else:
    _checks.check_non_negative(value, name)

"""Trace-time argument checks shared by every module.

Every check runs in Python on static information (shapes, dtypes, Python numbers, and
the values of concrete arrays), so it raises while a function is traced, before any
computation, and never inside compiled code. Check a value before converting it: inside
``jit``, ``jnp.asarray(0.5)`` is already a tracer whose value is unknown.

A traced value (a hyperparameter passed into ``jit``, a learned temperature, traced
labels) cannot be checked at trace time. Inside :func:`metriclearn.pairs.checked` (a
``jax.experimental.checkify`` wrapper) the same checks are staged into the computation
as ``checkify.check`` calls instead, and a failure comes back as a checkify error.
"""

from __future__ import annotations

import contextvars
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_LOW_PRECISION = (jnp.bfloat16, jnp.float16)
# True while pairs.checked traces a function: traced values are checked with checkify.
STAGED = contextvars.ContextVar("metriclearn_staged_checks", default=False)


def _staged(ok: jax.Array, message: str, value: jax.Array) -> None:
  """Under ``pairs.checked``, a checkify check of a traced value (else nothing)."""
  if STAGED.get():
    from jax.experimental import checkify

    checkify.check(jnp.all(ok), message + " (got {value}).", value=value)


def concrete_value(x: Any) -> np.ndarray | None:
  """Returns ``x`` as a NumPy array when its value is known at trace time, else None."""
  if isinstance(x, jax.core.Tracer):
    return None
  try:
    return np.asarray(x)
  except Exception:  # noqa: BLE001 - anything that cannot be read is not concrete
    return None


def as_float(x: Any, name: str) -> jax.Array:
  """Converts to a floating array; bfloat16 and float16 become float32."""
  try:
    x = jnp.asarray(x)
  except TypeError as e:
    raise TypeError(
      f"{name} must hold real numbers, got {type(x).__name__} {x!r:.60}."
    ) from e
  if not (
    jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)
  ):
    raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}.")
  if x.dtype in _LOW_PRECISION or not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  return x


def common_float(*arrays: jax.Array) -> tuple[jax.Array, ...]:
  """Casts float arrays to their widest dtype (float64 wins only under x64)."""
  dtype = jnp.result_type(*[a.dtype for a in arrays])
  return tuple(a.astype(dtype) for a in arrays)


def check_positive(value: Any, name: str) -> None:
  """Raises ValueError if ``value`` is known now and is not > 0 everywhere."""
  v = concrete_value(value)
  if v is None:
    _staged(value > 0, f"{name} must be > 0", value)
  elif not np.all(v > 0):
    raise ValueError(f"{name} must be > 0, got {v.tolist()}.")


def check_non_negative(value: Any, name: str) -> None:
  """Raises ValueError if ``value`` is known now and is < 0 anywhere."""
  v = concrete_value(value)
  if v is None:
    _staged(value >= 0, f"{name} must be >= 0", value)
  elif not np.all(v >= 0):
    raise ValueError(f"{name} must be >= 0, got {v.tolist()}.")


def check_in_range(value: Any, name: str, low: float, high: float) -> None:
  """Raises ValueError if ``value`` is known now and is outside [low, high]."""
  v = concrete_value(value)
  if v is None:
    _staged(
      (value >= low) & (value <= high), f"{name} must lie in [{low}, {high}]", value
    )
  elif not np.all((v >= low) & (v <= high)):
    raise ValueError(f"{name} must lie in [{low}, {high}], got {v.tolist()}.")


def scalar(
  value: Any,
  name: str,
  dtype: Any = None,
  *,
  positive: bool = False,
  non_negative: bool = False,
) -> jax.Array:
  """A scalar option (a number, or a scalar array that may be learned) as an array.

  Its value is checked (``> 0`` or ``>= 0``) when it is known at trace time; a traced
  value (inside ``jit``, or learned) cannot be checked here, except under
  :func:`metriclearn.pairs.checked`.
  """
  if positive:
    check_positive(value, name)
  if non_negative:
    check_non_negative(value, name)
  x = as_float(value, name)
  if x.shape != ():
    raise ValueError(f"{name} must be a scalar, got shape {tuple(x.shape)}.")
  return x if dtype is None else x.astype(dtype)


def check_count(value: Any, name: str) -> int:
  """A positive int (a Python or NumPy integer; not a bool, not a float) as an int."""
  if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
    raise TypeError(f"{name} must be a positive int, got {value!r}.")
  if value < 1:
    raise ValueError(f"{name} must be >= 1, got {value}.")
  return int(value)


def check_finite_rows(x: Any, name: str) -> None:
  """Raises ValueError if ``x`` ([..., d], value known now) has rows holding NaN or
  inf, saying how many; a traced ``x`` cannot be checked here."""
  v = concrete_value(x)
  if v is None or v.size == 0 or not np.issubdtype(v.dtype, np.inexact):
    return
  bad = ~np.all(np.isfinite(v.reshape(-1, v.shape[-1])), axis=1)
  if bad.any():
    first = np.flatnonzero(bad)[:5].tolist()
    raise ValueError(
      f"{name} has {int(bad.sum())} of {bad.size} rows holding NaN or inf (flat row "
      f"indices {first}{' ...' if bad.sum() > 5 else ''}); evaluation needs finite "
      "embeddings."
    )


def check_rank(x: jax.Array, rank: int, name: str, what: str = "") -> None:
  if x.ndim != rank:
    hint = f" ({what})" if what else ""
    raise ValueError(f"{name} must be {rank}-D{hint}, got shape {tuple(x.shape)}.")


def check_embeddings(x: Any, name: str = "embeddings") -> jax.Array:
  """A batch of embeddings: [n, d] real numbers with n >= 1, as a float array.

  An empty batch (n = 0) raises here, the same way for every loss: it has no loss.
  """
  x = as_float(x, name)
  check_rank(x, 2, name, "[n, d]")
  if x.shape[0] == 0:
    raise ValueError(
      f"{name} must hold at least one row, got shape {tuple(x.shape)} (an empty "
      "batch has no loss; skip it, or pad it with label -1 rows)."
    )
  return x


def check_labels(labels: Any, n: int, name: str = "labels") -> jax.Array:
  """Checks integer labels of shape [n]; -1 marks padding."""
  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"{name} must be integers, got dtype {labels.dtype}.")
  if labels.shape != (n,):
    raise ValueError(
      f"{name} must have shape ({n},) to match the embeddings, got "
      f"{tuple(labels.shape)}."
    )
  value = concrete_value(labels)
  if value is None and labels.size:
    _staged(labels >= -1, f"{name} must be >= 0, or -1 for padding", jnp.min(labels))
  if value is not None and value.size and value.min() < -1:
    raise ValueError(
      f"{name} must be >= 0, or -1 for padding; got {value.min()} (the only "
      "negative label is -1)."
    )
  return labels


def check_mask(mask: Any, shape: tuple[int, ...], name: str) -> jax.Array:
  """Checks a boolean (or 0/1) mask of a given shape and returns it as bool."""
  mask = jnp.asarray(mask)
  if mask.shape != shape:
    raise ValueError(f"{name} must have shape {shape}, got {tuple(mask.shape)}.")
  if mask.dtype != jnp.bool_:
    v = concrete_value(mask)
    if v is not None and not np.all((v == 0) | (v == 1)):
      raise ValueError(f"{name} must be boolean or 0/1, got other values.")
    mask = mask != jnp.zeros((), mask.dtype)
  return mask


def check_similar(similar: Any, name: str = "similar") -> jax.Array:
  """Checks a scalar pair label (bool, or a 0/1 number) and returns it as float."""
  similar = jnp.asarray(similar)
  if similar.shape != ():
    raise ValueError(
      f"{name} must be a scalar (one pair; vmap for a batch), got shape "
      f"{tuple(similar.shape)}."
    )
  if similar.dtype != jnp.bool_:
    if not (
      jnp.issubdtype(similar.dtype, jnp.integer)
      or jnp.issubdtype(similar.dtype, jnp.floating)
    ):
      raise TypeError(f"{name} must be bool or 0/1, got dtype {similar.dtype}.")
    v = concrete_value(similar)
    if v is not None and v not in (0, 1):
      raise ValueError(f"{name} must be True/False or 0/1, got {v.item()}.")
    similar = similar != jnp.zeros((), similar.dtype)
  return similar

"""Distances and similarities between embeddings, for one pair and pairwise.

Distances grow with dissimilarity; similarities (``cosine_similarity``, ``dot``) have
their own names. The pairwise forms go through one matrix product, so an ``[n, d]`` by
``[m, d]`` comparison costs one ``n x m x d`` GEMM. The Euclidean distance is safe at
zero: its value and its gradient are finite when two points coincide (a plain
``sqrt`` has an infinite derivative there, which turns into NaN in the chain rule).
The signal-to-noise ratio distance (``snr``, Yuan et al. 2019) is not symmetric: the
first argument is the signal, the anchor.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from metriclearn import _checks

__all__ = [
  "DISTANCES",
  "SIMILARITIES",
  "DistanceFn",
  "cosine_distance",
  "cosine_similarity",
  "distance_fn",
  "dot",
  "euclidean",
  "get_distance",
  "get_pairwise_distance",
  "get_pairwise_similarity",
  "l2_normalize",
  "pairwise_cosine_distance",
  "pairwise_cosine_similarity",
  "pairwise_dot",
  "pairwise_euclidean",
  "pairwise_snr_distance",
  "pairwise_squared_euclidean",
  "safe_sqrt",
  "snr_distance",
  "squared_euclidean",
]

DistanceFn = Callable[[jax.Array, jax.Array], jax.Array]

_EPS = 1e-12


def safe_sqrt(x: jax.Array) -> jax.Array:
  """``sqrt(max(x, 0))`` whose derivative is 0, not infinite, where ``x <= 0``; NaN
  stays NaN."""
  positive = x > 0
  out = jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)
  return jnp.where(jnp.isnan(x), x, out)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = _EPS) -> jax.Array:
  """``x / max(||x||, eps)``: unit vectors, finite (zero) for the zero vector."""
  sq = jnp.sum(x * x, axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def _pair(x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, ...]:
  x1 = _checks.as_float(x1, "x1")
  x2 = _checks.as_float(x2, "x2")
  if x1.shape != x2.shape:
    raise ValueError(
      f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and "
      f"{tuple(x2.shape)}."
    )
  return _checks.common_float(x1, x2)


def squared_euclidean(x1: jax.Array, x2: jax.Array) -> jax.Array:
  r"""Squared Euclidean distance over the last axis, :math:`\|x_1 - x_2\|_2^2`."""
  x1, x2 = _pair(x1, x2)
  return jnp.sum(jnp.square(x1 - x2), axis=-1)


def euclidean(x1: jax.Array, x2: jax.Array) -> jax.Array:
  r"""Euclidean distance :math:`\|x_1 - x_2\|_2`, with a zero gradient at ``x1 == x2``.

  >>> float(euclidean(jnp.array([0.0, 3.0]), jnp.array([4.0, 0.0])))
  5.0
  """
  return safe_sqrt(squared_euclidean(x1, x2))


def cosine_similarity(x1: jax.Array, x2: jax.Array) -> jax.Array:
  r"""Cosine similarity :math:`x_1 \cdot x_2 / (\|x_1\| \|x_2\|)` (0 at 0)."""
  x1, x2 = _pair(x1, x2)
  return jnp.sum(l2_normalize(x1) * l2_normalize(x2), axis=-1)


def cosine_distance(x1: jax.Array, x2: jax.Array) -> jax.Array:
  r"""Cosine distance :math:`1 - \cos(x_1, x_2)`, in [0, 2]."""
  return 1.0 - cosine_similarity(x1, x2)


def dot(x1: jax.Array, x2: jax.Array) -> jax.Array:
  """Inner product over the last axis (a similarity)."""
  x1, x2 = _pair(x1, x2)
  return jnp.sum(x1 * x2, axis=-1)


def _noise_to_signal(noise: jax.Array, signal: jax.Array) -> jax.Array:
  """``noise / signal`` for variances: +inf for a constant signal (0 if the noise is 0
  too), with a finite gradient there; NaN stays NaN."""
  has_signal = signal > 0
  ratio = noise / jnp.where(has_signal, signal, 1.0)
  out = jnp.where(has_signal, ratio, jnp.where(noise > 0, jnp.inf, 0.0))
  return jnp.where(jnp.isnan(noise) | jnp.isnan(signal), jnp.nan, out)


def snr_distance(x1: jax.Array, x2: jax.Array) -> jax.Array:
  r"""Signal-to-noise ratio distance :math:`\operatorname{Var}(x_2 - x_1) /
  \operatorname{Var}(x_1)` over the last axis (Yuan et al. 2019).

  The anchor ``x1`` is the signal and ``x2 - x1`` the noise: the reciprocal of the
  signal-to-noise ratio, not symmetric, invariant to scaling both by the same factor
  and to adding a constant to each. A constant ``x1`` (no signal) gives +inf (0 if
  ``x2 - x1`` is constant too).

  >>> # Var([1, 3]) = 1; x2 - x1 = [1, -1], Var = 1 -> 1 / 1
  >>> float(snr_distance(jnp.array([1.0, 3.0]), jnp.array([2.0, 2.0])))
  1.0

  References:
    Yuan, Deng, Tang, Tang, Chen. Signal-to-Noise Ratio: A Robust Distance Metric for
    Deep Metric Learning. CVPR 2019.
  """
  x1, x2 = _pair(x1, x2)
  return _noise_to_signal(jnp.var(x2 - x1, axis=-1), jnp.var(x1, axis=-1))


# ----------------------------------------------------------------------------------
# Pairwise (matrix) forms: rows of ``a`` [n, d] against rows of ``b`` [m, d].


def _matrices(a: jax.Array, b: jax.Array | None) -> tuple[jax.Array, ...]:
  a = _checks.as_float(a, "a")
  _checks.check_rank(a, 2, "a", "[n, d]")
  if b is None:
    return a, a
  b = _checks.as_float(b, "b")
  _checks.check_rank(b, 2, "b", "[m, d]")
  if a.shape[1] != b.shape[1]:
    raise ValueError(
      f"a and b must have the same embedding size, got {tuple(a.shape)} and "
      f"{tuple(b.shape)}."
    )
  return _checks.common_float(a, b)


def _gram(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)


def pairwise_dot(a: jax.Array, b: jax.Array | None = None) -> jax.Array:
  """``a @ b.T``: [n, m] inner products (``b`` defaults to ``a``)."""
  a, b = _matrices(a, b)
  return _gram(a, b)


def pairwise_squared_euclidean(a: jax.Array, b: jax.Array | None = None) -> jax.Array:
  r"""[n, m] squared distances :math:`\|a_i\|^2 + \|b_j\|^2 - 2 a_i \cdot b_j`, >= 0.

  The expansion cancels: in float32 two identical rows come out about 1e-5 apart, not
  0. Without ``b`` the diagonal (each row against itself) is set to exactly 0, unless
  the row holds a NaN or inf (NaN in, NaN out).
  """
  is_self = b is None
  a, b = _matrices(a, b)
  sq_a = jnp.sum(a * a, axis=1)[:, None]
  sq_b = jnp.sum(b * b, axis=1)[None, :]
  d2 = jnp.maximum(sq_a + sq_b - 2.0 * _gram(a, b), 0.0)
  if is_self:
    d2 = jnp.where(jnp.eye(a.shape[0], dtype=bool) & jnp.isfinite(d2), 0.0, d2)
  return d2


def pairwise_euclidean(a: jax.Array, b: jax.Array | None = None) -> jax.Array:
  """[n, m] Euclidean distances through one matrix product; zero-safe gradient."""
  return safe_sqrt(pairwise_squared_euclidean(a, b))


def pairwise_cosine_similarity(a: jax.Array, b: jax.Array | None = None) -> jax.Array:
  """[n, m] cosine similarities of the rows."""
  a, b = _matrices(a, b)
  return _gram(l2_normalize(a), l2_normalize(b))


def pairwise_cosine_distance(a: jax.Array, b: jax.Array | None = None) -> jax.Array:
  """[n, m] cosine distances ``1 - cos``."""
  return 1.0 - pairwise_cosine_similarity(a, b)


def pairwise_snr_distance(a: jax.Array, b: jax.Array | None = None) -> jax.Array:
  r"""[n, m] SNR distances :math:`\operatorname{Var}(b_j - a_i) /
  \operatorname{Var}(a_i)` (:func:`snr_distance`; row i of ``a`` is the signal).

  Through one matrix product: with :math:`\tilde x = x - \operatorname{mean}(x)`,
  :math:`\|\tilde b_j - \tilde a_i\|^2 / \|\tilde a_i\|^2`. Not symmetric. The
  expansion's rounding (a few ulp of :math:`\|\tilde a_i\|^2 + \|\tilde b_j\|^2`) is
  taken as 0, so that identical rows are at 0 as in the pair form.
  """
  is_self = b is None
  a, b = _matrices(a, b)
  centred_a = a - jnp.mean(a, axis=1, keepdims=True)
  centred_b = b - jnp.mean(b, axis=1, keepdims=True)
  signal = jnp.sum(centred_a * centred_a, axis=1, keepdims=True)
  noise = pairwise_squared_euclidean(centred_a, centred_b)
  scale = signal + jnp.sum(centred_b * centred_b, axis=1)[None, :]
  noise = jnp.where(noise <= 8 * jnp.finfo(a.dtype).eps * scale, 0.0, noise)
  if is_self:  # each row against itself: no noise
    noise = jnp.where(jnp.eye(a.shape[0], dtype=bool), 0.0, noise)
  return _noise_to_signal(noise, signal)


_PAIR = {
  "euclidean": euclidean,
  "squared_euclidean": squared_euclidean,
  "cosine": cosine_distance,
  "snr": snr_distance,
}
_PAIRWISE = {
  "euclidean": pairwise_euclidean,
  "squared_euclidean": pairwise_squared_euclidean,
  "cosine": pairwise_cosine_distance,
  "snr": pairwise_snr_distance,
}
_SIMILARITY = {"cosine": pairwise_cosine_similarity, "dot": pairwise_dot}

DISTANCES = tuple(_PAIR)
SIMILARITIES = tuple(_SIMILARITY)


def _lookup(table: dict, name, what: str):
  if callable(name):
    return name
  if name not in table:
    raise ValueError(
      f"{what} must be one of {sorted(table)} or a callable, got {name!r}."
    )
  return table[name]


def get_distance(name: str | DistanceFn) -> DistanceFn:
  """Pair distance by name: 'euclidean', 'squared_euclidean', 'cosine', 'snr' or a
  callable."""
  return _lookup(_PAIR, name, "distance")


def get_pairwise_distance(name: str | DistanceFn) -> DistanceFn:
  """Pairwise distance matrix function by name (or a callable ``(a, b) -> [n, m]``)."""
  return _lookup(_PAIRWISE, name, "distance")


def get_pairwise_similarity(name: str | DistanceFn) -> DistanceFn:
  """Pairwise similarity matrix function by name: 'cosine' or 'dot' (or a callable)."""
  return _lookup(_SIMILARITY, name, "similarity")


def distance_fn(
  distance: str | DistanceFn, squared: bool = False, *, pairwise: bool = True
) -> DistanceFn:
  """The distance named ``distance`` (pairwise, or of one pair), squared if
  ``squared``: ``('euclidean', squared=True)`` is the squared Euclidean distance.

  >>> distance_fn("euclidean", True)(jnp.zeros((1, 2)), jnp.ones((1, 2)))
  Array([[2.]], dtype=float32)
  """
  get = get_pairwise_distance if pairwise else get_distance
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

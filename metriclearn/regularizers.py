r"""Regularizers: penalties on a batch of embeddings or on a loss's proxies.

Pure functions returning a scalar, added to a loss with a weight of your choice::

  objective = losses.mean() + 0.1 * regularizers.lp_regularizer(embeddings)

Two kinds, by their input:

- **on embeddings** ``[n, d]`` (a batch): :func:`lp_regularizer`,
  :func:`zero_mean_regularizer`. Each row gives one term and the result is their
  mean over the valid rows (``valid``: ``[n]`` bool, e.g. ``labels != -1`` to leave
  padding rows out; 0 when none is valid). That mean is pytorch-metric-learning's
  (PML's) default ``MeanReducer``, i.e. its ``embedding_regularizer``.
- **on proxies** (the class vectors of a proxy or classification loss, the
  ``proxies`` of :mod:`metriclearn.losses.proxy` and
  :mod:`metriclearn.losses.classification`): :func:`center_invariant_regularizer` and
  :func:`regular_face_regularizer` on ``[C, d]``, the mean over classes of a
  per-class term (PML's ``weight_regularizer`` with its ``MeanReducer``);
  :func:`sparse_centers_regularizer` on ``[C, K, d]`` sub-centres (SoftTriple's).

A NaN in a valid row (or in any proxy) makes the result NaN; a padding row left out
by ``valid`` reaches neither the value nor the gradient, whatever it holds.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from metriclearn import _checks, distances, reduce

__all__ = [
  "center_invariant_regularizer",
  "lp_regularizer",
  "regular_face_regularizer",
  "sparse_centers_regularizer",
  "zero_mean_regularizer",
]

# SoftTriple's regulariser: sqrt(2 + eps - 2 w.w') as in the authors' code, so two
# coinciding centres have a finite gradient.
_SOFTTRIPLE_EPS = 1e-5


def _embeddings(embeddings: jax.Array, valid: jax.Array | None):
  x = _checks.as_float(embeddings, "embeddings")
  _checks.check_rank(x, 2, "embeddings", "[n, d]")
  if valid is not None:
    valid = _checks.check_mask(valid, (x.shape[0],), "valid")
    # padding rows become zeros, so that nothing they hold reaches a gradient
    x = jnp.where(valid[:, None], x, jnp.zeros((), x.dtype))
  return x, valid


def _proxies(proxies: jax.Array) -> jax.Array:
  w = _checks.as_float(proxies, "proxies")
  _checks.check_rank(w, 2, "proxies", "[C, d]")
  return w


def _power_of(base: jax.Array, exponent: float) -> jax.Array:
  """``base ** exponent`` for base >= 0, 0 with a zero gradient where base is 0."""
  if exponent == 1:
    return base
  zero = base == 0
  return jnp.where(zero, 0.0, jnp.where(zero, 1.0, base) ** exponent)


def lp_regularizer(
  embeddings: jax.Array,
  valid: jax.Array | None = None,
  *,
  p: float = 2.0,
  power: float = 1.0,
) -> jax.Array:
  r"""Mean Lp norm of the embeddings (or of any [n, d] weights), to a power.

  .. math::
    R = \frac{1}{|V|} \sum_{i \in V} \|x_i\|_p^{\,k}, \qquad
    \|x\|_p = \Big(\sum_j |x_j|^p\Big)^{1/p}

  with :math:`k` = ``power`` and :math:`V` the valid rows (0 if none). PML's
  ``LpRegularizer(p=p)`` is ``lp_regularizer(x, p=p)`` (``power=1``); ``p=2,
  power=2`` is the mean squared norm (weight decay on the embeddings). The gradient at
  a zero row is 0.

  Args:
    embeddings: [n, d] embeddings (or the rows of a weight matrix).
    valid: optional [n] bool, the rows that count (e.g. ``labels != -1``).
    p: the norm, p >= 1 or ``math.inf`` (default 2).
    power: k > 0 (default 1, PML's).

  Returns:
    A scalar.

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[3.0, 4.0], [0.0, 1.0], [9.0, 9.0]])
  >>> round(float(lp_regularizer(x)), 4)  # (5 + 1 + 12.7279) / 3
  6.2426
  >>> # the first two rows only: (5 + 1) / 2; L1, squared: (7^2 + 1^2) / 2
  >>> valid = jnp.array([True, True, False])
  >>> float(lp_regularizer(x, valid)), float(lp_regularizer(x, valid, p=1, power=2))
  (3.0, 25.0)

  References:
    Sohn. Improved Deep Metric Learning with Multi-class N-pair Loss Objective.
    NeurIPS 2016 (the embeddings' squared L2 norm as a regularizer).
  """
  if not (p == math.inf or (isinstance(p, int | float) and p >= 1)):
    raise ValueError(f"p must be a number >= 1 or math.inf, got {p!r}.")
  if not (isinstance(power, int | float) and power > 0):
    raise ValueError(f"power must be a number > 0, got {power!r}.")
  x, valid = _embeddings(embeddings, valid)
  size = jnp.where(x == 0, 0.0, jnp.abs(x))  # |x| with the subgradient 0 at 0
  if p == math.inf:
    norms = _power_of(jnp.max(size, axis=1), power)
  else:
    norms = _power_of(jnp.sum(size**p, axis=1), power / p)
  return reduce.mean_over_valid(norms, valid)


def zero_mean_regularizer(
  embeddings: jax.Array, valid: jax.Array | None = None
) -> jax.Array:
  r"""Mean absolute sum of each embedding's components: pushes every embedding
  towards zero mean (Yuan et al. 2019, the SNR paper's regularizer).

  .. math::
    R = \frac{1}{|V|} \sum_{i \in V} \Big|\sum_{j=1}^{d} x_{ij}\Big|

  with :math:`V` the valid rows (0 if none). The SNR distance
  (``distances.snr_distance``) treats the embedding's components as a signal of zero
  mean; this keeps them so. PML's ``ZeroMeanRegularizer()`` is
  ``zero_mean_regularizer(x)``; the paper adds it to the loss with a weight
  :math:`\lambda`.

  Args:
    embeddings: [n, d] embeddings.
    valid: optional [n] bool, the rows that count (e.g. ``labels != -1``).

  Returns:
    A scalar.

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[1.0, -3.0], [2.0, 2.0]])
  >>> float(zero_mean_regularizer(x))  # (|1 - 3| + |2 + 2|) / 2
  3.0

  References:
    Yuan, Deng, Tang, Tang, Chen. Signal-to-Noise Ratio: A Robust Distance Metric for
    Deep Metric Learning. CVPR 2019.
  """
  x, valid = _embeddings(embeddings, valid)
  return reduce.mean_over_valid(jnp.abs(jnp.sum(x, axis=1)), valid)


def center_invariant_regularizer(proxies: jax.Array) -> jax.Array:
  r"""Centre invariant regularizer (Wu et al. 2017): every class vector the same
  squared norm.

  .. math::
    R = \frac{1}{C} \sum_{c=1}^{C} \frac{1}{4}
      \Big(\|w_c\|^2 - \frac{1}{C} \sum_{k=1}^{C} \|w_k\|^2\Big)^2

  The centre invariant loss penalises the spread of the squared norms of the class
  vectors, so that classes with more training images do not get larger vectors (and
  larger logits) than the others. The per-class terms are averaged over the classes,
  as PML's ``CenterInvariantRegularizer()`` with its default ``MeanReducer``, which
  this equals on the same ``[C, d]`` weights. Not normalised: it acts on the norms.

  Args:
    proxies: [C, d] class vectors (classification weights or proxies).

  Returns:
    A scalar (0 for equal norms, and for C = 1).

  >>> import jax.numpy as jnp
  >>> w = jnp.array([[1.0, 0.0], [0.0, 3.0]])
  >>> # squared norms 1 and 9, mean 5: (16 / 4 + 16 / 4) / 2
  >>> float(center_invariant_regularizer(w))
  4.0

  References:
    Wu, Liu, Li, Fu. Deep Face Recognition with Center Invariant Loss. Thematic
    Workshops of ACM Multimedia 2017.
  """
  w = _proxies(proxies)
  squared = jnp.sum(w * w, axis=1)
  return jnp.mean(jnp.square(squared - jnp.mean(squared)) / 4.0)


def regular_face_regularizer(proxies: jax.Array) -> jax.Array:
  r"""RegularFace's exclusive regularization: each class vector pushed away from its
  nearest other class vector (Zhao et al. 2019).

  .. math::
    R = \frac{1}{C} \sum_{i=1}^{C} \max_{j \ne i} \cos(w_i, w_j)

  The gradient is that of :math:`\cos(w_i, w_{j^\ast(i)})` with the nearest class
  :math:`j^\ast(i)` held fixed (the first of equals), for both vectors, as PML's
  ``RegularFaceRegularizer()``, which this equals (value and gradient) on the same
  ``[C, d]`` weights. 0 for C = 1 (no other class).

  Args:
    proxies: [C, d] class vectors (normalised inside).

  Returns:
    A scalar.

  >>> import jax.numpy as jnp
  >>> w = jnp.array([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]])
  >>> # nearest others: 0 -> 1 (0.6), 1 -> 0 (0.6), 2 -> 1 (-0.6); mean 0.2
  >>> round(float(regular_face_regularizer(w)), 6)
  0.2

  References:
    Zhao, Xu, Cheng. RegularFace: Deep Face Recognition via Exclusive Regularization.
    CVPR 2019.
  """
  w = _proxies(proxies)
  c = w.shape[0]
  if c < 2:
    return jnp.zeros((), w.dtype)
  cos = distances.pairwise_cosine_similarity(w, w)
  others = jnp.where(jnp.eye(c, dtype=bool), -jnp.inf, cos)
  nearest = jnp.argmax(jax.lax.stop_gradient(others), axis=1)
  return jnp.mean(jnp.take_along_axis(cos, nearest[:, None], axis=1))


def sparse_centers_regularizer(
  proxies: jax.Array,
  *,
  epsilon: float = _SOFTTRIPLE_EPS,
  proxy_axis_name: str | None = None,
) -> jax.Array:
  r"""SoftTriple's centre regulariser: the mean distance between the sub-centres of
  each class (Qian et al. 2019), which lets similar centres merge.

  .. math::
    R = \frac{1}{C K (K - 1)} \sum_{c} \sum_{t < k}
      \sqrt{2 + \epsilon - 2\, \hat w_c^t \cdot \hat w_c^k}

  (:math:`\|\hat w^t - \hat w^k\|` for unit vectors; :math:`\epsilon = 10^{-5}`, as
  in the authors' code, keeps the gradient finite when two centres coincide). 0 for
  K = 1 or [C, d] proxies. ``soft_triple_loss`` adds :math:`\tau R` with this default.

  PML's ``SparseCentersRegularizer(num_classes=C, centers_per_class=K)`` (its
  ``DivisorReducer`` divides by the same :math:`C K (K - 1)`) on its ``[C K, d]``
  centres ``W`` is ``sparse_centers_regularizer(W.reshape(C, K, d),
  epsilon=np.finfo(W.dtype).tiny)``.

  Args:
    proxies: [C, K, d] sub-centres (normalised inside), or [C, d].
    epsilon: :math:`\epsilon > 0` (default 1e-5, the authors').
    proxy_axis_name: the mapped axis the proxies are sharded over by class: the sum
      and the class count are over every device (each returns the same value).

  Returns:
    A scalar.

  >>> import jax.numpy as jnp
  >>> w = jnp.array([[[1.0, 0.0], [-1.0, 0.0]]])  # sqrt(2 + 1e-5 + 2) / (1 * 2 * 1)
  >>> round(float(sparse_centers_regularizer(w)), 4)
  1.0

  References:
    Qian, Shang, Sun, Hu, Li, Jin. SoftTriple Loss: Deep Metric Learning Without
    Triplet Sampling. ICCV 2019.
  """
  _checks.check_positive(epsilon, "epsilon")
  proxies = _checks.as_float(proxies, "proxies")
  if proxies.ndim == 2:
    return jnp.zeros((), proxies.dtype)
  _checks.check_rank(proxies, 3, "proxies", "[C, K, d]")
  c, k, _ = proxies.shape
  if k < 2:
    return jnp.zeros((), proxies.dtype)
  unit = distances.l2_normalize(proxies)
  gram = jnp.einsum("ckd,cld->ckl", unit, unit, precision=jax.lax.Precision.HIGHEST)
  upper = np.triu(np.ones((k, k), bool), 1)
  if not isinstance(epsilon, int | float):
    epsilon = jnp.asarray(epsilon).astype(gram.dtype)
  dist = jnp.sqrt(jnp.maximum(2.0 + epsilon - 2.0 * gram, epsilon))
  total = jnp.sum(jnp.where(upper, dist, 0.0))
  if proxy_axis_name is not None:
    total = jax.lax.psum(total, proxy_axis_name)
    c = c * jax.lax.axis_size(proxy_axis_name)
  return total / (c * k * (k - 1))

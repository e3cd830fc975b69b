"""Margin-based softmax classification: embeddings against one weight vector per class.

Every loss is ``loss(embeddings [n, d], labels [n], proxies [C, d], *, ...) -> [n]``,
one value per sample, 0 for a padding row (label -1): ArcFace, sub-center ArcFace,
CosFace, normalized softmax, softmax cross-entropy on a linear head, L-Softmax,
SphereFace (A-Softmax) and P2SGrad. The class vectors (proxies, or a linear head's
weights) are laid out ``[C, d]``, one row per class, or ``[C, K, d]`` with K
sub-centres per class; ``init_proxies`` makes them and ``metriclearn.models.Proxies``
holds them as Flax parameters, learned with the encoder. The proxy losses (ProxyNCA,
ProxyAnchor, SoftTriple) are in :mod:`metriclearn.losses.proxy`, with the same
conventions.

**Data parallel** (proxies replicated, each device its own batch): a sample's loss
depends on no other sample, so these losses need no communication; their
``axis_name`` is accepted for a uniform signature and does nothing.

**Class-sharded proxies** (``proxy_axis_name``, every loss here and in
:mod:`~metriclearn.losses.proxy`): inside ``pmap`` or ``shard_map`` each device holds
``C / W`` proxies, device ``k`` those of classes ``k C/W ... (k+1) C/W - 1`` (labels
stay global), and its own slice of the batch. The batch is gathered from every device
(``all_gather``, as Partial FC does), each device computes logits against its
proxies, and the softmax normaliser is reduced across devices (``pmax`` shift,
``psum`` of the exponential sums). Each device returns the losses of its own rows,
equal to the unsharded ones, and gradients flow back through the collectives: the sum
of every device's loss has the unsharded gradient. Under ``pmap``, ``jax.grad`` of a
device's loss gives its proxy shard the gradient of the *sum* over devices; a step
that averages per-device losses therefore scales a sharded proxy gradient by
``1 / W`` instead of ``pmean``-ing it (replicated parameters are ``pmean``-ed as
usual).

Labels must lie in ``[-1, C)``: checked at trace time when they are concrete; under
``jit`` a row whose label has no proxy is treated as padding (loss 0).
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp

from metriclearn import _checks, distances
from metriclearn.losses import _classes

__all__ = [
  "arcface_loss",
  "cosface_loss",
  "large_margin_softmax_loss",
  "normalized_softmax_loss",
  "p2sgrad_loss",
  "softmax_cross_entropy_loss",
  "sphereface_loss",
  "subcenter_arcface_loss",
]

_Fallback = Literal["linear", "easy", "none"]


# ----------------------------------------------------------------------------------
# Additive margins on normalised embeddings and proxies, and the plain softmax.


def _arc_margin(cos: jax.Array, margin, fallback: _Fallback) -> jax.Array:
  """cos(theta + m) from cos(theta) with a zero-safe sine, and the fallback past pi."""
  if fallback not in ("linear", "easy", "none"):
    raise ValueError(f"fallback must be 'linear', 'easy' or 'none', got {fallback!r}.")
  margin = jnp.asarray(margin, cos.dtype)
  cos_m, sin_m = jnp.cos(margin), jnp.sin(margin)
  sin = distances.safe_sqrt((1.0 - cos) * (1.0 + cos))
  phi = cos * cos_m - sin * sin_m
  if fallback == "linear":  # insightface: th = cos(pi - m), mm = sin(pi - m) m
    return jnp.where(cos > -cos_m, phi, cos - margin * sin_m)
  if fallback == "easy":
    return jnp.where(cos > 0.0, phi, cos)
  return phi


def arcface_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  proxies: jax.Array,
  *,
  scale: float = 64.0,
  margin: float = 0.5,
  fallback: _Fallback = "linear",
  axis_name: str | None = None,
  proxy_axis_name: str | None = None,
) -> jax.Array:
  r"""ArcFace: softmax cross-entropy with an additive angular margin on the target.

  .. math::
    \ell_i = -\log \frac{e^{s \cos(\theta_{i y_i} + m)}}
      {e^{s \cos(\theta_{i y_i} + m)} + \sum_{j \ne y_i} e^{s \cos\theta_{ij}}},
    \qquad \cos\theta_{ij} = \frac{x_i \cdot w_j}{\|x_i\| \|w_j\|}

  :math:`\cos(\theta + m)` is computed as :math:`\cos\theta \cos m - \sin\theta \sin m`
  with :math:`\sin\theta = \sqrt{\max(0, (1 - \cos\theta)(1 + \cos\theta))}` and a
  zero-safe square root, so gradients stay finite at :math:`\theta = 0` and
  :math:`\pi` (no ``arccos``). Past :math:`\theta = \pi - m`, :math:`\cos(\theta + m)`
  rises again and would reward moving away from the class; ``fallback`` chooses the
  target logit there:

  - ``'linear'`` (default, the authors' insightface code): where
    :math:`\cos\theta \le \cos(\pi - m)` use :math:`\cos\theta - m \sin m`, a
    monotonic penalty (``th = cos(pi - m)``, ``mm = sin(pi - m) m`` there);
  - ``'easy'`` (insightface's ``easy_margin``): the margin only where
    :math:`\cos\theta > 0`, :math:`\cos\theta` otherwise;
  - ``'none'``: :math:`\cos(\theta + m)` everywhere, the bare formula.

  With ``proxies`` [C, K, d], :math:`\cos\theta_{ij}` is the largest cosine to class
  j's K sub-centres (sub-center ArcFace, see ``subcenter_arcface_loss``).

  Args:
    embeddings: [n, d] embeddings x (normalised inside).
    labels: [n] class indices in [0, C), -1 for padding.
    proxies: [C, d] class centres w (normalised inside), or [C, K, d] sub-centres.
    scale: s > 0.
    margin: m in [0, pi), the additive angular margin (radians).
    fallback: 'linear', 'easy' or 'none', the target logit where theta + m > pi.
    axis_name: accepted for a uniform signature (data-parallel: no communication).
    proxy_axis_name: the mapped axis the proxies are sharded over by class (module
      docstring).

  Returns:
    [n] per-sample losses (0 for padding rows; this device's rows when sharded).

  >>> x = jnp.array([[1.0, 0.0]])
  >>> w = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  >>> # logits 64 cos(0.5) = 56.17 and 64 cos(pi/2) = 0
  >>> float(arcface_loss(x, jnp.array([0]), w)[0]) < 1e-20
  True

  References:
    Deng, Guo, Xue, Zafeiriou. ArcFace: Additive Angular Margin Loss for Deep Face
    Recognition. CVPR 2019.
  """
  _classes.check_scalar(scale, "scale")
  _classes.check_scalar(margin, "margin", positive=False)
  _checks.check_in_range(margin, "margin", 0.0, math.pi)
  s = _classes.setup(
    embeddings, labels, proxies, proxy_axis_name=proxy_axis_name, ranks=(2, 3)
  )
  cos = _classes.max_cosines(s.embeddings, s.proxies)
  target_cos = jnp.sum(jnp.where(s.target, cos, 0.0), axis=1, keepdims=True)
  phi = _arc_margin(target_cos, margin, fallback)
  logits = scale * jnp.where(s.target, phi, cos)
  return _classes.local_rows(
    _classes.cross_entropy(logits, s, proxy_axis_name), s, proxy_axis_name
  )


def subcenter_arcface_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  proxies: jax.Array,
  *,
  scale: float = 64.0,
  margin: float = 0.5,
  fallback: _Fallback = "linear",
  axis_name: str | None = None,
  proxy_axis_name: str | None = None,
) -> jax.Array:
  r"""Sub-center ArcFace: ArcFace on the nearest of K sub-centres per class.

  .. math::
    \cos\theta_{ij} = \max_k \frac{x_i \cdot w_{jk}}{\|x_i\| \|w_{jk}\|}, \qquad
    \ell_i = \text{ArcFace}(\cos\theta_{i\cdot}, y_i)

  (see ``arcface_loss`` for the margin, ``fallback`` and the sharding options). Noisy
  samples gather on non-dominant sub-centres instead of pulling on the class's main
  one. The paper uses K = 3: ``init_proxies(key, C, d, num_centers=3)``.

  Args:
    embeddings: [n, d] embeddings.
    labels: [n] class indices in [0, C), -1 for padding.
    proxies: [C, K, d] sub-centres.
    scale, margin, fallback, axis_name, proxy_axis_name: as in ``arcface_loss``.

  Returns:
    [n] per-sample losses (0 for padding rows).

  >>> w = jnp.array([[[0.0, 1.0], [1.0, 0.0]], [[-1.0, 0.0], [0.0, -1.0]]])
  >>> x = jnp.array([[1.0, 0.0]])  # on class 0's second sub-centre
  >>> float(subcenter_arcface_loss(x, jnp.array([0]), w)[0]) < 1e-20
  True

  References:
    Deng, Guo, Liu, Zafeiriou et al. Sub-center ArcFace: Boosting Face Recognition by
    Large-scale Noisy Web Faces. ECCV 2020.
  """
  p = jnp.asarray(proxies)
  if p.ndim != 3:
    raise ValueError(
      f"proxies must be [C, K, d] sub-centres for sub-center ArcFace, got shape "
      f"{tuple(p.shape)} (use arcface_loss for [C, d])."
    )
  return arcface_loss(
    embeddings,
    labels,
    proxies,
    scale=scale,
    margin=margin,
    fallback=fallback,
    axis_name=axis_name,
    proxy_axis_name=proxy_axis_name,
  )


def cosface_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  proxies: jax.Array,
  *,
  scale: float = 64.0,
  margin: float = 0.35,
  axis_name: str | None = None,
  proxy_axis_name: str | None = None,
) -> jax.Array:
  r"""CosFace (large margin cosine loss): an additive cosine margin on the target.

  .. math::
    \ell_i = -\log \frac{e^{s (\cos\theta_{i y_i} - m)}}
      {e^{s (\cos\theta_{i y_i} - m)} + \sum_{j \ne y_i} e^{s \cos\theta_{ij}}}

  with :math:`\cos\theta_{ij}` the cosine of :math:`x_i` and proxy :math:`w_j` (the
  largest over sub-centres when ``proxies`` is [C, K, d]).

  Args:
    embeddings: [n, d] embeddings (normalised inside).
    labels: [n] class indices in [0, C), -1 for padding.
    proxies: [C, d] class weights (normalised inside), or [C, K, d].
    scale: s > 0.
    margin: m >= 0.
    axis_name: accepted for a uniform signature (data-parallel: no communication).
    proxy_axis_name: the mapped axis the proxies are sharded over by class.

  Returns:
    [n] per-sample losses (0 for padding rows).

  >>> x = jnp.array([[1.0, 0.0]])
  >>> w = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  >>> # logits 64 (1 - 0.35) = 41.6 and 0: log(1 + e^-41.6)
  >>> float(cosface_loss(x, jnp.array([0]), w)[0]) < 1e-17
  True

  References:
    Wang, Wang, Zhou, Ji, Gong, Zhou, Li, Liu. CosFace: Large Margin Cosine Loss for
    Deep Face Recognition. CVPR 2018.
  """
  _classes.check_scalar(scale, "scale")
  _classes.check_scalar(margin, "margin", positive=False)
  s = _classes.setup(
    embeddings, labels, proxies, proxy_axis_name=proxy_axis_name, ranks=(2, 3)
  )
  cos = _classes.max_cosines(s.embeddings, s.proxies)
  logits = scale * jnp.where(s.target, cos - margin, cos)
  return _classes.local_rows(
    _classes.cross_entropy(logits, s, proxy_axis_name), s, proxy_axis_name
  )


def normalized_softmax_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  proxies: jax.Array,
  *,
  temperature: float = 0.05,
  axis_name: str | None = None,
  proxy_axis_name: str | None = None,
) -> jax.Array:
  r"""Normalized softmax (NormSoftmax): cross-entropy on temperature-scaled cosines.

  .. math::
    \ell_i = -\log \frac{e^{\cos\theta_{i y_i} / T}}{\sum_j e^{\cos\theta_{ij} / T}}

  Args:
    embeddings: [n, d] embeddings (normalised inside).
    labels: [n] class indices in [0, C), -1 for padding.
    proxies: [C, d] class weights (normalised inside), or [C, K, d] (nearest).
    temperature: T > 0 (the paper's 0.05 is a scale of 20).
    axis_name: accepted for a uniform signature (data-parallel: no communication).
    proxy_axis_name: the mapped axis the proxies are sharded over by class.

  Returns:
    [n] per-sample losses (0 for padding rows).

  >>> x = jnp.array([[1.0, 0.0]])
  >>> w = jnp.array([[0.0, 1.0], [0.0, -1.0]])  # both at 90 degrees: log 2
  >>> round(float(normalized_softmax_loss(x, jnp.array([1]), w)[0]), 4)
  0.6931

  References:
    Zhai, Wu. Classification is a Strong Baseline for Deep Metric Learning. BMVC 2019.
  """
  _classes.check_scalar(temperature, "temperature")
  s = _classes.setup(
    embeddings, labels, proxies, proxy_axis_name=proxy_axis_name, ranks=(2, 3)
  )
  logits = _classes.max_cosines(s.embeddings, s.proxies) / temperature
  return _classes.local_rows(
    _classes.cross_entropy(logits, s, proxy_axis_name), s, proxy_axis_name
  )


def softmax_cross_entropy_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  weights: jax.Array,
  bias: jax.Array | None = None,
  *,
  axis_name: str | None = None,
  proxy_axis_name: str | None = None,
) -> jax.Array:
  r"""Softmax cross-entropy on a linear head: the classification baseline.

  .. math::
    z_{ij} = x_i \cdot w_j + b_j, \qquad
    \ell_i = -\log \frac{e^{z_{i y_i}}}{\sum_j e^{z_{ij}}}

  Nothing is normalised. ``weights`` is laid out like proxies, ``[C, d]`` (one row per
  class, so it shards by class the same way); a Flax ``nn.Dense(C)`` kernel is
  ``[d, C]``: pass ``kernel.T``.

  Args:
    embeddings: [n, d] features.
    labels: [n] class indices in [0, C), -1 for padding.
    weights: [C, d] class weights.
    bias: optional [C] biases (this device's [C/W] when sharded).
    axis_name: accepted for a uniform signature (data-parallel: no communication).
    proxy_axis_name: the mapped axis the weights (and bias) are sharded over by class.

  Returns:
    [n] per-sample losses (0 for padding rows).

  >>> x = jnp.array([[1.0, 2.0]])
  >>> w = jnp.array([[1.0, 0.0], [0.0, 1.0]])  # logits 1 and 2: log(1 + e^-1)
  >>> round(float(softmax_cross_entropy_loss(x, jnp.array([1]), w)[0]), 4)
  0.3133
  """
  s = _classes.setup(
    embeddings, labels, weights, proxy_axis_name=proxy_axis_name, name="weights"
  )
  logits = distances.pairwise_dot(s.embeddings, s.proxies)
  if bias is not None:
    bias = _checks.as_float(bias, "bias")
    if bias.shape != (s.proxies.shape[0],):
      raise ValueError(
        f"bias must have shape ({s.proxies.shape[0]},) to match weights "
        f"{tuple(s.proxies.shape)}, got {tuple(bias.shape)}."
      )
    logits = logits + bias.astype(logits.dtype)[None, :]
  return _classes.local_rows(
    _classes.cross_entropy(logits, s, proxy_axis_name), s, proxy_axis_name
  )


# ----------------------------------------------------------------------------------
# Multiplicative angular margins: L-Softmax and SphereFace (A-Softmax).


def _integer_margin(margin) -> int:
  if isinstance(margin, bool) or not isinstance(margin, int | float):
    raise TypeError(f"margin must be a positive integer, got {margin!r}.")
  if margin != int(margin) or margin < 1:
    raise ValueError(f"margin must be a positive integer, got {margin!r}.")
  return int(margin)


def _chebyshev(c: jax.Array, m: int) -> jax.Array:
  r""":math:`\cos(m\theta) = T_m(\cos\theta)`, the Chebyshev polynomial of degree m
  (the recurrence :math:`T_{k+1} = 2 c T_k - T_{k-1}`: the multiple-angle sum of
  L-Softmax's eq. 7, evaluated stably, with no ``arccos``)."""
  previous, current = jnp.ones_like(c), c
  for _ in range(m - 1):
    previous, current = current, 2.0 * c * current - previous
  return current


def _psi(c: jax.Array, m: int) -> jax.Array:
  r""":math:`\psi(\theta) = (-1)^k \cos(m\theta) - 2k` for
  :math:`\theta \in [k\pi/m, (k+1)\pi/m]`, from :math:`c = \cos\theta`.

  ``k`` counts the thresholds :math:`\cos(j\pi/m)`, j = 1 .. m-1, that ``c`` lies at
  or below (piecewise constant: no gradient). :math:`\psi` is continuous and
  decreasing in :math:`\theta`, and a polynomial in ``c`` on each piece, so its
  gradient is finite everywhere, :math:`\theta = 0` and :math:`\pi` included.
  """
  k = jnp.zeros_like(c)
  for j in range(1, m):
    k = k + (c <= math.cos(j * math.pi / m)).astype(c.dtype)
  sign = 1.0 - 2.0 * jnp.mod(k, 2.0)
  return sign * _chebyshev(c, m) - 2.0 * k


def _norms(x: jax.Array) -> jax.Array:
  """Row norms, with a zero (not infinite) derivative at the zero vector."""
  return distances.safe_sqrt(jnp.sum(jnp.square(x), axis=-1))


def _inert(s: _classes.Setup) -> jax.Array:
  """The batch with the rows that take no part (padding) replaced by zeros, so that
  whatever they hold (NaN included) reaches no value and no gradient."""
  return jnp.where(s.valid[:, None], s.embeddings, jnp.zeros((), s.embeddings.dtype))


def _multiplicative_margin(
  embeddings, labels, weights, *, margin, scale, annealing, normalize, axis, name
) -> jax.Array:
  m = _integer_margin(margin)
  _classes.check_scalar(scale, "scale")
  s = _classes.setup(embeddings, labels, weights, proxy_axis_name=axis, name=name)
  lam = _checks.scalar(annealing, "annealing", s.embeddings.dtype, non_negative=True)
  x = _inert(s)
  cos = _classes.class_cosines(x, s.proxies)  # [N, C_local]
  target_cos = jnp.sum(jnp.where(s.target, cos, 0.0), axis=1, keepdims=True)
  target = (lam * target_cos + _psi(target_cos, m)) / (1.0 + lam)
  norms = _norms(x)[:, None]
  if not normalize:
    norms = norms * _norms(s.proxies)[None, :]
  logits = scale * norms * jnp.where(s.target, target, cos)
  return _classes.local_rows(_classes.cross_entropy(logits, s, axis), s, axis)


def large_margin_softmax_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  weights: jax.Array,
  *,
  margin: int = 4,
  scale: float = 1.0,
  annealing: float | jax.Array = 0.0,
  axis_name: str | None = None,
  proxy_axis_name: str | None = None,
) -> jax.Array:
  r"""L-Softmax: softmax cross-entropy with a multiplicative angular margin m.

  .. math::
    f_{ij} = \|w_j\| \|x_i\| \cos\theta_{ij} \;(j \ne y_i), \qquad
    f_{i y_i} = \|w_{y_i}\| \|x_i\|
      \frac{\lambda \cos\theta_{i y_i} + \psi(\theta_{i y_i})}{1 + \lambda},

  .. math::
    \psi(\theta) = (-1)^k \cos(m\theta) - 2k, \quad
    \theta \in \Big[\frac{k\pi}{m}, \frac{(k+1)\pi}{m}\Big], \qquad
    \ell_i = -\log \frac{e^{s f_{i y_i}}}{\sum_j e^{s f_{ij}}}

  with :math:`\theta_{ij}` the angle between :math:`x_i` and the class weight
  :math:`w_j` (nothing normalised: the non-target logits are the plain
  :math:`x_i \cdot w_j`), m = ``margin``, s = ``scale`` and :math:`\lambda` =
  ``annealing``. :math:`\cos(m\theta)` is the Chebyshev polynomial
  :math:`T_m(\cos\theta) = \sum_n (-1)^n \binom{m}{2n} \cos^{m-2n}\theta\,
  \sin^{2n}\theta` (the paper's eq. 7) and k is found by comparing
  :math:`\cos\theta` with :math:`\cos(j\pi/m)`: no ``arccos``, so the gradient is
  finite everywhere (at :math:`\theta = 0` and :math:`\pi` too). :math:`\psi` is
  monotonic, so the margin never rewards moving away from the class.

  The paper trains with the annealed target logit above, starting from a large
  :math:`\lambda` (the plain softmax) and decreasing it to a small value; pass the
  current :math:`\lambda` (a traced scalar is accepted, e.g. SphereFace's schedule
  ``max(5, 1000 / (1 + 0.12 t))`` at step t). ``annealing=0`` (the default) is the
  loss itself, as pytorch-metric-learning has it: its
  ``LargeMarginSoftmaxLoss(num_classes=C, embedding_size=d, margin=m, scale=s)`` is
  ``large_margin_softmax_loss(x, y, W.T, margin=m, scale=s).mean()`` with its weight
  ``W`` [d, C] (default margin 4, scale 1).

  Args:
    embeddings: [n, d] features x (not normalised).
    labels: [n] class indices in [0, C), -1 for padding.
    weights: [C, d] class weights w, one row per class (a Flax ``nn.Dense(C,
      use_bias=False)`` kernel is [d, C]: pass ``kernel.T``).
    margin: the integer m >= 1 (1: the plain softmax; the paper uses 2 to 4).
    scale: s > 0, multiplies every logit (1 in the paper).
    annealing: :math:`\lambda \ge 0`, a number or a scalar array (a traced value is
      not checked).
    axis_name: accepted for a uniform signature (data-parallel: no communication).
    proxy_axis_name: the mapped axis the weights are sharded over by class (module
      docstring).

  Returns:
    [n] per-sample losses (0 for padding rows; this device's rows when sharded).

  >>> x = jnp.array([[1.0, 1.0]])
  >>> w = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  >>> # theta = 45 degrees, m = 2: k = 0, psi = cos(90 degrees) = 0; logits
  >>> # |w||x| psi = 0 and x.w_1 = 1: -log(e^0 / (e^0 + e^1)) = log(1 + e)
  >>> round(float(large_margin_softmax_loss(x, jnp.array([0]), w, margin=2)[0]), 4)
  1.3133

  References:
    Liu, Wen, Yu, Yang. Large-Margin Softmax Loss for Convolutional Neural Networks.
    ICML 2016.
  """
  return _multiplicative_margin(
    embeddings,
    labels,
    weights,
    margin=margin,
    scale=scale,
    annealing=annealing,
    normalize=False,
    axis=proxy_axis_name,
    name="weights",
  )


def sphereface_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  proxies: jax.Array,
  *,
  margin: int = 4,
  scale: float = 1.0,
  annealing: float | jax.Array = 0.0,
  axis_name: str | None = None,
  proxy_axis_name: str | None = None,
) -> jax.Array:
  r"""SphereFace (A-Softmax): L-Softmax with unit class weights, an angular margin.

  .. math::
    f_{ij} = \|x_i\| \cos\theta_{ij} \;(j \ne y_i), \qquad
    f_{i y_i} = \|x_i\|
      \frac{\lambda \cos\theta_{i y_i} + \psi(\theta_{i y_i})}{1 + \lambda}, \qquad
    \ell_i = -\log \frac{e^{s f_{i y_i}}}{\sum_j e^{s f_{ij}}}

  with :math:`\psi(\theta) = (-1)^k \cos(m\theta) - 2k` on
  :math:`[k\pi/m, (k+1)\pi/m]` as in :func:`large_margin_softmax_loss`, and the
  class weights normalised (:math:`\|w_j\| = 1`, no bias): the decision depends on
  angles only. The embedding norm :math:`\|x_i\|` stays in the logits, as in the
  paper. The authors' code anneals :math:`\lambda` = ``annealing`` as
  ``max(5, 1000 / (1 + 0.12 t))`` at step t (pass it; a traced scalar is accepted);
  0, the default, is the bare A-Softmax, as pytorch-metric-learning has it: its
  ``SphereFaceLoss(num_classes=C, embedding_size=d, margin=m, scale=s)`` is
  ``sphereface_loss(x, y, W.T, margin=m, scale=s).mean()`` with its weight ``W``
  [d, C] (default margin 4, scale 1).

  Args:
    embeddings: [n, d] features x (not normalised).
    labels: [n] class indices in [0, C), -1 for padding.
    proxies: [C, d] class weights (normalised inside).
    margin: the integer m >= 1 (4 in the paper).
    scale: s > 0, multiplies every logit (1 in the paper).
    annealing: :math:`\lambda \ge 0`, a number or a scalar array (a traced value is
      not checked).
    axis_name: accepted for a uniform signature (data-parallel: no communication).
    proxy_axis_name: the mapped axis the proxies are sharded over by class.

  Returns:
    [n] per-sample losses (0 for padding rows).

  >>> x = jnp.array([[3.0, 4.0]])  # |x| = 5
  >>> w = jnp.array([[2.0, 0.0], [0.0, 0.5]])  # unit directions (1, 0) and (0, 1)
  >>> # class 0: cos = 0.6, theta = 53.1 degrees in [45, 90): k = 1;
  >>> # T_4(0.6) = 8 (0.6)^4 - 8 (0.6)^2 + 1 = -0.8432, psi = 0.8432 - 2 = -1.1568;
  >>> # logits 5 psi = -5.784 and 5 (0.8) = 4: log(1 + e^(4 + 5.784))
  >>> round(float(sphereface_loss(x, jnp.array([0]), w)[0]), 4)
  9.7841

  References:
    Liu, Wen, Yu, Li, Raj, Song. SphereFace: Deep Hypersphere Embedding for Face
    Recognition. CVPR 2017.
  """
  return _multiplicative_margin(
    embeddings,
    labels,
    proxies,
    margin=margin,
    scale=scale,
    annealing=annealing,
    normalize=True,
    axis=proxy_axis_name,
    name="proxies",
  )


# ----------------------------------------------------------------------------------
# P2SGrad: the cosine itself as the probability, a hyperparameter-free gradient.


def p2sgrad_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  proxies: jax.Array,
  *,
  axis_name: str | None = None,
  proxy_axis_name: str | None = None,
) -> jax.Array:
  r"""P2SGrad: the loss whose gradient is the paper's probability-to-similarity one.

  P2SGrad replaces the gradient of a margin-based softmax loss,
  :math:`\sum_j (P_{ij} - \mathbb{1}[j = y_i]) \nabla W_j^\top x_i`, by one with the
  cosine in place of the probability and of the logit (eq. 11 of the paper):

  .. math::
    \tilde\nabla_{x_i} = \sum_j \big(\cos\theta_{ij} - \mathbb{1}[j = y_i]\big)
      \nabla_{x_i} \cos\theta_{ij}, \qquad
    \tilde\nabla_{w_j} = \big(\cos\theta_{ij} - \mathbb{1}[j = y_i]\big)
      \nabla_{w_j} \cos\theta_{ij},

  with :math:`\nabla_x \cos\theta = (\hat w - \cos\theta\, \hat x) / \|x\|`. It is
  exactly the gradient of

  .. math::
    \ell_i = \frac{1}{2} \sum_j \big(\cos\theta_{ij} - \mathbb{1}[j = y_i]\big)^2,

  which this function returns: ordinary autodiff of it gives the paper's gradient
  for the embeddings and for the class weights, with no hyperparameter (no scale, no
  margin) to tune. pytorch-metric-learning's ``P2SGradLoss(descriptors_dim=d,
  num_classes=C)`` is the mean squared error over the [n, C] cosines,
  ``2 * losses.mean() / C`` here (its weight ``W`` [d, C] is ``proxies.T``).

  Args:
    embeddings: [n, d] embeddings x (normalised inside).
    labels: [n] class indices in [0, C), -1 for padding.
    proxies: [C, d] class weights w (normalised inside).
    axis_name: accepted for a uniform signature (data-parallel: no communication).
    proxy_axis_name: the mapped axis the proxies are sharded over by class.

  Returns:
    [n] per-sample losses (0 for padding rows).

  >>> x = jnp.array([[1.0, 1.0]])
  >>> w = jnp.array([[1.0, 0.0], [0.0, 1.0]])  # both cosines 1/sqrt(2)
  >>> # ((1/sqrt(2) - 1)^2 + (1/sqrt(2))^2) / 2 = (2 - sqrt(2)) / 2
  >>> round(float(p2sgrad_loss(x, jnp.array([0]), w)[0]), 4)
  0.2929

  References:
    Zhang, Zhao, Liu, Qiao, Li. P2SGrad: Refined Gradients for Optimizing Deep Face
    Models. CVPR 2019.
  """
  s = _classes.setup(embeddings, labels, proxies, proxy_axis_name=proxy_axis_name)
  cos = _classes.class_cosines(_inert(s), s.proxies)
  residual = cos - s.target.astype(cos.dtype)
  total = _classes.psum(jnp.sum(jnp.square(residual), axis=1), proxy_axis_name)
  loss = jnp.where(s.valid, 0.5 * total, 0.0)
  return _classes.local_rows(loss, s, proxy_axis_name)

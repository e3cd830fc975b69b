"""Proxy and classification losses: embeddings against learned class vectors (proxies).

Every loss is ``loss(embeddings [n, d], labels [n], proxies [C, d], *, ...)``. The
per-sample losses (ArcFace, CosFace, sub-center ArcFace, normalized softmax, ProxyNCA,
ProxyNCA++, SoftTriple, softmax cross-entropy) return ``[n]``, 0 for a padding row
(label -1); ProxyAnchor is a sum over classes and returns ``[C]`` per-class terms whose
**sum** is the paper's loss. Proxies (and a linear head's weights) are laid out
``[C, d]``, one row per class, or ``[C, K, d]`` with K sub-centres per class;
``init_proxies`` makes them and ``metriclearn.models.Proxies`` holds them as Flax
parameters, learned with the encoder.

**Data parallel** (proxies replicated, each device its own batch): a sample's loss
depends on no other sample, so the per-sample losses need no communication; their
``axis_name`` is accepted for a uniform signature and does nothing. ProxyAnchor's
per-class sums run over the batch, so its ``axis_name`` gathers every device's
embeddings and each device returns the same ``[C]``.

**Class-sharded proxies** (``proxy_axis_name``, every loss here): inside ``pmap`` or
``shard_map`` each device holds ``C / W`` proxies, device ``k`` those of classes
``k C/W ... (k+1) C/W - 1`` (labels stay global), and its own slice of the batch.
The batch is gathered from every device (``all_gather``, as Partial FC does), each
device computes logits against its proxies, and the softmax normaliser is reduced
across devices (``pmax`` shift, ``psum`` of the exponential sums). Each device returns
the losses of its own rows (ProxyAnchor: of its own classes), equal to the unsharded
ones, and gradients flow back through the collectives: the sum of every device's loss
has the unsharded gradient. Under ``pmap``, ``jax.grad`` of a device's loss gives its
proxy shard the gradient of the *sum* over devices; a step that averages per-device
losses therefore scales a sharded proxy gradient by ``1 / W`` instead of ``pmean``-ing
it (replicated parameters are ``pmean``-ed as usual).

Labels must lie in ``[-1, C)``: checked at trace time when they are concrete; under
``jit`` a row whose label has no proxy is treated as padding (loss 0).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metriclearn import _checks, distances

_Fallback = Literal["linear", "easy", "none"]

# SoftTriple's regulariser: sqrt(2 + eps - 2 w.w') as in the authors' code, so two
# coinciding centres have a finite gradient.
_SOFTTRIPLE_EPS = 1e-5


# ----------------------------------------------------------------------------------
# Shared plumbing: checks, gathering for class-sharded proxies, the sharded softmax.


class _Setup(NamedTuple):
  embeddings: jax.Array  # [N, d]: the whole batch (gathered when sharded)
  labels: jax.Array  # [N]
  proxies: jax.Array  # [C_local, d] or [C_local, K, d]
  target: jax.Array  # [N, C_local] bool: the local proxy of the row's class
  valid: jax.Array  # [N] bool: a real row whose class has a proxy on some device
  num_classes: int  # C over all devices
  n: int  # rows this device returns


def _psum(x: jax.Array, axis_name: str | None) -> jax.Array:
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _setup(
  embeddings: jax.Array,
  labels: jax.Array,
  proxies: jax.Array,
  *,
  proxy_axis_name: str | None,
  gather_axis: str | None = None,
  ranks: tuple[int, ...] = (2,),
  name: str = "proxies",
) -> _Setup:
  embeddings = _checks.as_float(embeddings, "embeddings")
  _checks.check_rank(embeddings, 2, "embeddings", "[n, d]")
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
  valid = _psum(jnp.sum(target, axis=1), proxy_axis_name) > 0
  return _Setup(embeddings, labels, proxies, target, valid, num_classes, n)


def _local_rows(x: jax.Array, setup: _Setup, axis_name: str | None) -> jax.Array:
  """The rows of ``x`` [N] that belong to this device (all of them unsharded)."""
  if axis_name is None:
    return x
  start = jax.lax.axis_index(axis_name) * setup.n
  return jax.lax.dynamic_slice_in_dim(x, start, setup.n)


def _class_cosines(embeddings: jax.Array, proxies: jax.Array) -> jax.Array:
  """[N, C] cosines; with sub-centres [C, K, d], the [N, C, K] cosines (no max)."""
  flat = proxies.reshape(-1, proxies.shape[-1])
  cos = distances.pairwise_cosine_similarity(embeddings, flat)
  return cos.reshape(embeddings.shape[0], *proxies.shape[:-1])


def _max_cosines(embeddings: jax.Array, proxies: jax.Array) -> jax.Array:
  """[N, C] cosine to each class: the nearest sub-centre when proxies are [C, K, d]."""
  cos = _class_cosines(embeddings, proxies)
  return jnp.max(cos, axis=-1) if proxies.ndim == 3 else cos


def _logsumexp(
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
  total = _psum(total, axis_name)
  any_ = _psum(jnp.sum(mask, axis=1), axis_name) > 0
  return jnp.log(jnp.where(any_, total, 1.0)) + peak, any_


def _cross_entropy(
  logits: jax.Array,
  setup: _Setup,
  axis_name: str | None,
  *,
  exclude_target: bool = False,
) -> jax.Array:
  """Per-row ``-log softmax(logits)[label]`` over every device's classes: [N]."""
  mask = ~setup.target if exclude_target else jnp.ones_like(setup.target)
  lse, any_ = _logsumexp(logits, mask, axis_name)
  target = _psum(jnp.sum(jnp.where(setup.target, logits, 0.0), axis=1), axis_name)
  return jnp.where(setup.valid & any_, lse - target, 0.0)


def _check_scalar(value, name: str, *, positive: bool = True) -> None:
  if np.ndim(value) != 0:
    raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}.")
  if positive:
    _checks.check_positive(value, name)
  else:
    _checks.check_non_negative(value, name)


# ----------------------------------------------------------------------------------
# Margin-based softmax losses on normalised embeddings and proxies.


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
  _check_scalar(scale, "scale")
  _check_scalar(margin, "margin", positive=False)
  _checks.check_in_range(margin, "margin", 0.0, math.pi)
  s = _setup(embeddings, labels, proxies, proxy_axis_name=proxy_axis_name, ranks=(2, 3))
  cos = _max_cosines(s.embeddings, s.proxies)
  target_cos = jnp.sum(jnp.where(s.target, cos, 0.0), axis=1, keepdims=True)
  phi = _arc_margin(target_cos, margin, fallback)
  logits = scale * jnp.where(s.target, phi, cos)
  return _local_rows(_cross_entropy(logits, s, proxy_axis_name), s, proxy_axis_name)


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
  _check_scalar(scale, "scale")
  _check_scalar(margin, "margin", positive=False)
  s = _setup(embeddings, labels, proxies, proxy_axis_name=proxy_axis_name, ranks=(2, 3))
  cos = _max_cosines(s.embeddings, s.proxies)
  logits = scale * jnp.where(s.target, cos - margin, cos)
  return _local_rows(_cross_entropy(logits, s, proxy_axis_name), s, proxy_axis_name)


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
  _check_scalar(temperature, "temperature")
  s = _setup(embeddings, labels, proxies, proxy_axis_name=proxy_axis_name, ranks=(2, 3))
  logits = _max_cosines(s.embeddings, s.proxies) / temperature
  return _local_rows(_cross_entropy(logits, s, proxy_axis_name), s, proxy_axis_name)


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
  s = _setup(
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
  return _local_rows(_cross_entropy(logits, s, proxy_axis_name), s, proxy_axis_name)


# ----------------------------------------------------------------------------------
# Distance-based proxy losses.


def _nca(
  embeddings, labels, proxies, *, temperature, normalize, exclude_target, axis
) -> jax.Array:
  _check_scalar(temperature, "temperature")
  s = _setup(embeddings, labels, proxies, proxy_axis_name=axis)
  if normalize:
    cos = distances.pairwise_cosine_similarity(s.embeddings, s.proxies)
    dist = jnp.maximum(2.0 - 2.0 * cos, 0.0)  # |x/|x| - w/|w||^2
  else:
    dist = distances.pairwise_squared_euclidean(s.embeddings, s.proxies)
  logits = -dist / temperature
  loss = _cross_entropy(logits, s, axis, exclude_target=exclude_target)
  return _local_rows(loss, s, axis)


def proxy_nca_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  proxies: jax.Array,
  *,
  temperature: float = 1.0,
  normalize: bool = True,
  axis_name: str | None = None,
  proxy_axis_name: str | None = None,
) -> jax.Array:
  r"""ProxyNCA: NCA against one proxy per class; the positive is not in the denominator.

  .. math::
    \ell_i = -\log \frac{e^{-d(x_i, p_{y_i}) / T}}
      {\sum_{z \ne y_i} e^{-d(x_i, p_z) / T}}
    = d(x_i, p_{y_i}) / T + \log \sum_{z \ne y_i} e^{-d(x_i, p_z) / T}

  with :math:`d` the squared Euclidean distance, between unit vectors
  :math:`\|\hat x - \hat p\|^2 = 2 - 2 \cos` when ``normalize`` (the paper's setting).
  As published the loss can be negative (the positive is left out of the
  denominator); ``proxy_nca_plus_plus_loss`` is the proper softmax. A single class
  (nothing in the denominator) gives 0.

  Args:
    embeddings: [n, d] embeddings.
    labels: [n] class indices in [0, C), -1 for padding.
    proxies: [C, d] proxies.
    temperature: T > 0 (1 in the paper).
    normalize: L2-normalise embeddings and proxies first.
    axis_name: accepted for a uniform signature (data-parallel: no communication).
    proxy_axis_name: the mapped axis the proxies are sharded over by class.

  Returns:
    [n] per-sample losses (0 for padding rows).

  >>> x = jnp.array([[1.0, 0.0]])
  >>> p = jnp.array([[1.0, 0.0], [-1.0, 0.0]])  # d = 0 and 4: 0 + log e^-4
  >>> float(proxy_nca_loss(x, jnp.array([0]), p)[0])
  -4.0

  References:
    Movshovitz-Attias, Toshev, Leung, Ioffe, Singh. No Fuss Distance Metric Learning
    using Proxies. ICCV 2017.
  """
  return _nca(
    embeddings,
    labels,
    proxies,
    temperature=temperature,
    normalize=normalize,
    exclude_target=True,
    axis=proxy_axis_name,
  )


def proxy_nca_plus_plus_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  proxies: jax.Array,
  *,
  temperature: float = 1.0 / 9.0,
  axis_name: str | None = None,
  proxy_axis_name: str | None = None,
) -> jax.Array:
  r"""ProxyNCA++: softmax over all proxies of low-temperature unit-vector distances.

  .. math::
    \ell_i = -\log \frac{e^{-\|\hat x_i - \hat p_{y_i}\|^2 / T}}
      {\sum_{z} e^{-\|\hat x_i - \hat p_z\|^2 / T}}

  with :math:`\hat{\cdot}` the L2-normalised vectors. The positive proxy is in the
  denominator (the proxy assignment probability), and T = 1/9 is the paper's scaling
  of both vectors by 3.

  Args:
    embeddings: [n, d] embeddings.
    labels: [n] class indices in [0, C), -1 for padding.
    proxies: [C, d] proxies.
    temperature: T > 0.
    axis_name: accepted for a uniform signature (data-parallel: no communication).
    proxy_axis_name: the mapped axis the proxies are sharded over by class.

  Returns:
    [n] per-sample losses (0 for padding rows).

  >>> x = jnp.array([[1.0, 0.0]])
  >>> p = jnp.array([[0.0, 1.0], [0.0, -1.0]])  # equal distances: log 2
  >>> round(float(proxy_nca_plus_plus_loss(x, jnp.array([0]), p)[0]), 4)
  0.6931

  References:
    Teh, DeVries, Taylor. ProxyNCA++: Revisiting and Revitalizing Proxy Neighborhood
    Component Analysis. ECCV 2020.
  """
  return _nca(
    embeddings,
    labels,
    proxies,
    temperature=temperature,
    normalize=True,
    exclude_target=False,
    axis=proxy_axis_name,
  )


def _log1p_sum_exp(z: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
  r""":math:`\log(1 + \sum_{mask} e^{z})` along ``axis``; 0 (zero gradient) if empty."""
  low = jnp.finfo(z.dtype).min
  safe = jnp.where(mask, z, low)
  peak = jax.lax.stop_gradient(jnp.maximum(jnp.max(safe, axis=axis), 0.0))
  total = jnp.sum(
    jnp.where(mask, jnp.exp(safe - jnp.expand_dims(peak, axis)), 0.0), axis=axis
  )
  return jnp.log(jnp.exp(-peak) + total) + peak


def proxy_anchor_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  proxies: jax.Array,
  *,
  alpha: float = 32.0,
  delta: float = 0.1,
  axis_name: str | None = None,
  proxy_axis_name: str | None = None,
) -> jax.Array:
  r"""Proxy-Anchor: each proxy is an anchor against every embedding of the batch.

  .. math::
    \ell = \frac{1}{|P^+|} \sum_{p \in P^+}
      \log\Big(1 + \sum_{x \in X_p^+} e^{-\alpha (s(x, p) - \delta)}\Big)
    + \frac{1}{|P|} \sum_{p \in P}
      \log\Big(1 + \sum_{x \in X_p^-} e^{\alpha (s(x, p) + \delta)}\Big)

  with :math:`s` the cosine similarity, :math:`P` all C proxies, :math:`P^+` the
  proxies of the classes present in the batch, :math:`X_p^\pm` the embeddings of
  (not of) class p. A class absent from the batch has no positive term and is not
  counted in :math:`|P^+|`; its negative term still counts.

  Returns the per-class terms
  :math:`\ell_p = [p \in P^+] \mathrm{pos}_p / |P^+| + \mathrm{neg}_p / |P|`, so that
  **the loss is their sum** (``jnp.sum``, not a mean). With ``axis_name``
  (data-parallel, replicated proxies) the batch is gathered from every device and each
  device returns the same [C]; with ``proxy_axis_name`` each device returns its own
  [C/W] classes' terms, which sum over devices to the loss.

  Args:
    embeddings: [n, d] embeddings (normalised inside).
    labels: [n] class indices in [0, C), -1 for padding.
    proxies: [C, d] proxies (normalised inside).
    alpha: the scale α > 0.
    delta: the margin δ >= 0.
    axis_name: gather the batch over this mapped axis (proxies replicated).
    proxy_axis_name: the mapped axis the proxies are sharded over by class (the batch
      is gathered over it too).

  Returns:
    [C] per-class terms (this device's classes when sharded); sum them.

  >>> x = jnp.array([[1.0, 0.0]])
  >>> p = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  >>> # class 0: log(1 + e^(-32 * 0.9)); class 1 (absent): log(1 + e^(32 * 0.1)) / 2
  >>> [round(float(v), 4) for v in proxy_anchor_loss(x, jnp.array([0]), p)]
  [0.0, 1.62]

  References:
    Kim, Kim, Cho, Kwak. Proxy Anchor Loss for Deep Metric Learning. CVPR 2020.
  """
  _check_scalar(alpha, "alpha")
  _check_scalar(delta, "delta", positive=False)
  if axis_name is not None and proxy_axis_name not in (None, axis_name):
    raise ValueError(
      f"give axis_name or proxy_axis_name, not both ({axis_name!r}, "
      f"{proxy_axis_name!r}): with sharded proxies the batch is gathered over "
      "proxy_axis_name."
    )
  s = _setup(
    embeddings,
    labels,
    proxies,
    proxy_axis_name=proxy_axis_name,
    gather_axis=axis_name,
  )
  sim = distances.pairwise_cosine_similarity(s.embeddings, s.proxies)
  real = (s.labels >= 0)[:, None]
  pos = s.target
  neg = ~s.target & real & s.valid[:, None]
  pos_term = _log1p_sum_exp(-alpha * (sim - delta), pos, axis=0)
  neg_term = _log1p_sum_exp(alpha * (sim + delta), neg, axis=0)
  present = jnp.any(pos, axis=0)
  num_present = _psum(jnp.sum(present), proxy_axis_name)
  num_present = jnp.maximum(num_present, 1).astype(pos_term.dtype)
  return jnp.where(present, pos_term / num_present, 0.0) + neg_term / s.num_classes


def soft_triple_regularizer(
  proxies: jax.Array, *, proxy_axis_name: str | None = None
) -> jax.Array:
  r"""SoftTriple's centre regulariser: mean distance between a class's sub-centres.

  .. math::
    R = \frac{1}{C K (K - 1)} \sum_{c} \sum_{t < k}
      \sqrt{2 + \epsilon - 2\, \hat w_c^t \cdot \hat w_c^k}

  (:math:`\|\hat w^t - \hat w^k\|` for unit vectors; :math:`\epsilon = 10^{-5}` as in
  the authors' code keeps the gradient finite when two centres coincide). 0 for K = 1.

  Args:
    proxies: [C, K, d] sub-centres (normalised inside), or [C, d].
    proxy_axis_name: the mapped axis the proxies are sharded over by class.

  Returns:
    A scalar.

  >>> w = jnp.array([[[1.0, 0.0], [-1.0, 0.0]]])  # sqrt(2 + 1e-5 + 2) / (1 * 2 * 1)
  >>> round(float(soft_triple_regularizer(w)), 4)
  1.0
  """
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
  dist = jnp.sqrt(jnp.maximum(2.0 + _SOFTTRIPLE_EPS - 2.0 * gram, _SOFTTRIPLE_EPS))
  total = _psum(jnp.sum(jnp.where(upper, dist, 0.0)), proxy_axis_name)
  if proxy_axis_name is not None:
    c = c * jax.lax.axis_size(proxy_axis_name)
  return total / (c * k * (k - 1))


def soft_triple_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  proxies: jax.Array,
  *,
  la: float = 20.0,
  gamma: float = 0.1,
  tau: float = 0.2,
  margin: float = 0.01,
  axis_name: str | None = None,
  proxy_axis_name: str | None = None,
) -> jax.Array:
  r"""SoftTriple: softmax over classes with K soft-assigned centres each.

  .. math::
    S_{ic} = \sum_k \frac{e^{\hat x_i \cdot \hat w_c^k / \gamma}}
      {\sum_{k'} e^{\hat x_i \cdot \hat w_c^{k'} / \gamma}}\, \hat x_i \cdot \hat w_c^k,
    \qquad
    \ell_i = -\log \frac{e^{\lambda (S_{i y_i} - \delta)}}
      {e^{\lambda (S_{i y_i} - \delta)} + \sum_{c \ne y_i} e^{\lambda S_{ic}}}
      + \tau R

  with :math:`R` = ``soft_triple_regularizer(proxies)``. The regulariser depends on the
  proxies only; it is added to every valid row, so the **mean over valid rows** is the
  paper's objective. For another reduction pass ``tau=0`` and add
  ``tau * soft_triple_regularizer(proxies)`` yourself.

  Args:
    embeddings: [n, d] embeddings (normalised inside).
    labels: [n] class indices in [0, C), -1 for padding.
    proxies: [C, K, d] centres (normalised inside); the paper uses K = 10.
    la: λ > 0, the softmax scale.
    gamma: γ > 0, the temperature of the soft assignment to centres.
    tau: τ >= 0, the weight of the centre regulariser.
    margin: δ >= 0, subtracted from the target class's similarity.
    axis_name: accepted for a uniform signature (data-parallel: no communication).
    proxy_axis_name: the mapped axis the proxies are sharded over by class.

  Returns:
    [n] per-sample losses (0 for padding rows).

  >>> x = jnp.array([[1.0, 0.0]])
  >>> w = jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # K = 1: S = 1 and 0
  >>> round(float(soft_triple_loss(x, jnp.array([1]), w)[0]), 4)  # 20.2 + softplus
  20.2

  References:
    Qian, Shang, Sun, Hu, Li, Jin. SoftTriple Loss: Deep Metric Learning Without
    Triplet Sampling. ICCV 2019.
  """
  _check_scalar(la, "la")
  _check_scalar(gamma, "gamma")
  _check_scalar(tau, "tau", positive=False)
  _check_scalar(margin, "margin", positive=False)
  s = _setup(embeddings, labels, proxies, proxy_axis_name=proxy_axis_name, ranks=(2, 3))
  p = s.proxies if s.proxies.ndim == 3 else s.proxies[:, None, :]
  sims = _class_cosines(s.embeddings, p)  # [N, C, K]
  assign = jax.nn.softmax(sims / gamma, axis=-1)
  relaxed = jnp.sum(assign * sims, axis=-1)
  logits = la * jnp.where(s.target, relaxed - margin, relaxed)
  loss = _cross_entropy(logits, s, proxy_axis_name)
  reg = soft_triple_regularizer(p, proxy_axis_name=proxy_axis_name)
  loss = jnp.where(s.valid, loss + tau * reg.astype(loss.dtype), 0.0)
  return _local_rows(loss, s, proxy_axis_name)

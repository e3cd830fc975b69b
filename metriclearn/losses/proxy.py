"""Proxy losses: embeddings against learned class vectors (proxies), by distance.

Every loss is ``loss(embeddings [n, d], labels [n], proxies [C, d], *, ...)``.
ProxyNCA, ProxyNCA++ and SoftTriple return ``[n]`` per-sample losses, 0 for a padding
row (label -1); ProxyAnchor is a sum over classes and returns ``[C]`` per-class terms
whose **sum** is the paper's loss. The layout of the proxies (``[C, d]`` or
``[C, K, d]``), the labels, and the class-sharded form (``proxy_axis_name``) are those
of :mod:`metriclearn.losses.classification` (the margin-based softmax losses: ArcFace,
CosFace, normalized softmax, L-Softmax, ...; still importable from here).

**Data parallel** (proxies replicated, each device its own batch): the per-sample
losses need no communication; their ``axis_name`` is accepted for a uniform signature
and does nothing. ProxyAnchor's per-class sums run over the batch, so its
``axis_name`` gathers every device's embeddings and each device returns the same
``[C]``; with ``proxy_axis_name`` each device returns the terms of its own classes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metriclearn import distances
from metriclearn.losses import _classes

# The margin-based softmax losses moved to ``classification``; existing code calls
# them as ``proxy.arcface_loss`` etc., so they stay importable from here.
from metriclearn.losses.classification import (  # noqa: F401
  arcface_loss,
  cosface_loss,
  normalized_softmax_loss,
  softmax_cross_entropy_loss,
  subcenter_arcface_loss,
)
from metriclearn.regularizers import sparse_centers_regularizer

__all__ = [
  "proxy_anchor_loss",
  "proxy_nca_loss",
  "proxy_nca_plus_plus_loss",
  "soft_triple_loss",
]


# ----------------------------------------------------------------------------------
# Distance-based proxy losses.


def _nca(
  embeddings, labels, proxies, *, temperature, normalize, exclude_target, axis
) -> jax.Array:
  _classes.check_scalar(temperature, "temperature")
  s = _classes.setup(embeddings, labels, proxies, proxy_axis_name=axis)
  if normalize:
    cos = distances.pairwise_cosine_similarity(s.embeddings, s.proxies)
    dist = jnp.maximum(2.0 - 2.0 * cos, 0.0)  # |x/|x| - w/|w||^2
  else:
    dist = distances.pairwise_squared_euclidean(s.embeddings, s.proxies)
  logits = -dist / temperature
  loss = _classes.cross_entropy(logits, s, axis, exclude_target=exclude_target)
  return _classes.local_rows(loss, s, axis)


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
  _classes.check_scalar(alpha, "alpha")
  _classes.check_scalar(delta, "delta", positive=False)
  if axis_name is not None and proxy_axis_name not in (None, axis_name):
    raise ValueError(
      f"give axis_name or proxy_axis_name, not both ({axis_name!r}, "
      f"{proxy_axis_name!r}): with sharded proxies the batch is gathered over "
      "proxy_axis_name."
    )
  s = _classes.setup(
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
  num_present = _classes.psum(jnp.sum(present), proxy_axis_name)
  num_present = jnp.maximum(num_present, 1).astype(pos_term.dtype)
  return jnp.where(present, pos_term / num_present, 0.0) + neg_term / s.num_classes


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

  with :math:`R` = ``regularizers.sparse_centers_regularizer(proxies)``. The
  regulariser depends on the proxies only; it is added to every valid row, so the
  **mean over valid rows** is the paper's objective. For another reduction pass
  ``tau=0`` and add ``tau * sparse_centers_regularizer(proxies)`` yourself.

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
  _classes.check_scalar(la, "la")
  _classes.check_scalar(gamma, "gamma")
  _classes.check_scalar(tau, "tau", positive=False)
  _classes.check_scalar(margin, "margin", positive=False)
  s = _classes.setup(
    embeddings, labels, proxies, proxy_axis_name=proxy_axis_name, ranks=(2, 3)
  )
  p = s.proxies if s.proxies.ndim == 3 else s.proxies[:, None, :]
  sims = _classes.class_cosines(s.embeddings, p)  # [N, C, K]
  assign = jax.nn.softmax(sims / gamma, axis=-1)
  relaxed = jnp.sum(assign * sims, axis=-1)
  logits = la * jnp.where(s.target, relaxed - margin, relaxed)
  loss = _classes.cross_entropy(logits, s, proxy_axis_name)
  reg = sparse_centers_regularizer(p, proxy_axis_name=proxy_axis_name)
  loss = jnp.where(s.valid, loss + tau * reg.astype(loss.dtype), 0.0)
  return _classes.local_rows(loss, s, proxy_axis_name)

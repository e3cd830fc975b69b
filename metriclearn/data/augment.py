"""Image augmentation on the accelerator: pure JAX functions of a key and a batch.

Every function takes one PRNG key per batch and images ``[n, h, w, c]``, draws
independent parameters for each image (``jax.vmap`` over split keys), and returns
images of the same shape and dtype (integer images are computed in float32 and rounded
back), so it runs under ``jax.jit`` and inside a training step. Parameters that do
nothing (zero ranges, probability 0) return the input exactly.

>>> key = jax.random.key(0)
>>> x = jnp.zeros((8, 28, 28, 1))
>>> augment = compose(partial(random_affine, **KOCH_AFFINE), random_flip)
>>> v1, v2 = two_views(key, x, augment)
>>> v1.shape, v1.dtype
((8, 28, 28, 1), dtype('float32'))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

__all__ = [
  "Augment",
  "KOCH_AFFINE",
  "to_float",
  "affine_transform",
  "random_affine",
  "random_crop",
  "random_flip",
  "compose",
  "two_views",
]

Augment = Callable[[jax.Array, jax.Array], jax.Array]

# Koch et al. 2015, section 4.3: theta in [-10, 10] degrees, shear rho_x, rho_y in
# [-0.3, 0.3], scale s_x, s_y in [0.8, 1.2], translation t_x, t_y in [-2, 2] pixels,
# each component included with probability 0.5.
KOCH_AFFINE = {
  "rotation": 10.0,
  "shear": 0.3,
  "scale": (0.8, 1.2),
  "translation": 2.0,
  "probability": 0.5,
}


def _check_images(images: jax.Array) -> jax.Array:
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be [n, h, w, c], got shape {tuple(images.shape)}.")
  return images


def _restore(out: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """Casts float results back to ``dtype`` (integers rounded and clipped)."""
  if jnp.issubdtype(dtype, jnp.integer):
    info = jnp.iinfo(dtype)
    out = jnp.clip(jnp.round(out), info.min, info.max)
  return out.astype(dtype)


def _interval(value: float | tuple[float, ...], name: str) -> tuple[float, float]:
  low, high = (-value, value) if isinstance(value, int | float) else value
  if low > high:
    raise ValueError(f"{name} must be a magnitude >= 0 or (low, high), got {value}.")
  return float(low), float(high)


def to_float(images: jax.Array, dtype: jnp.dtype = jnp.float32) -> jax.Array:
  """uint8 images to floats in [0, 1] (float images are only cast).

  >>> to_float(jnp.array([0, 255], jnp.uint8)).tolist()
  [0.0, 1.0]
  """
  images = jnp.asarray(images)
  if jnp.issubdtype(images.dtype, jnp.integer):
    return images.astype(dtype) / jnp.asarray(jnp.iinfo(images.dtype).max, dtype)
  return images.astype(dtype)


def affine_transform(
  images: jax.Array,
  matrix: jax.Array,
  translation: jax.Array,
  *,
  fill: float = 0.0,
  order: int = 1,
) -> jax.Array:
  r"""Warps each image by an affine map about its centre.

  An input pixel at ``p`` (``(x, y)`` = (column, row)) moves to

  .. math::
    p' = A (p - c) + c + t, \qquad c = ((w - 1) / 2, (h - 1) / 2),

  so output pixel ``p'`` samples the input at ``A^{-1}(p' - c - t) + c``, with bilinear
  (``order=1``) or nearest (``order=0``) interpolation and ``fill`` outside.

  Args:
    images: [n, h, w, c].
    matrix: [n, 2, 2] (or [2, 2] for all) ``A`` acting on ``(x, y)``.
    translation: [n, 2] (or [2]) ``t = (t_x, t_y)`` in pixels.
    fill: the value of pixels mapped from outside the image.
    order: 0 (nearest) or 1 (bilinear).

  Returns:
    [n, h, w, c], the dtype of ``images``.

  >>> x = jnp.arange(9.0).reshape(1, 3, 3, 1)
  >>> affine_transform(x, jnp.eye(2), jnp.array([1.0, 0.0]))[0, :, :, 0].tolist()
  [[0.0, 0.0, 1.0], [0.0, 3.0, 4.0], [0.0, 6.0, 7.0]]
  """
  images = _check_images(images)
  if order not in (0, 1):
    raise ValueError(f"order must be 0 or 1, got {order}.")
  return _affine(images, matrix, translation, fill, order=order)


@partial(jax.jit, static_argnames=("order",))
def _affine(images, matrix, translation, fill, *, order: int) -> jax.Array:
  n, h, w, _ = images.shape
  matrix = jnp.broadcast_to(jnp.asarray(matrix, jnp.float32), (n, 2, 2))
  translation = jnp.broadcast_to(jnp.asarray(translation, jnp.float32), (n, 2))
  rows, cols = jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32)
  ys, xs = jnp.meshgrid(rows, cols, indexing="ij")
  cx, cy = (w - 1) / 2.0, (h - 1) / 2.0

  (a11, a12), (a21, a22) = matrix[:, 0].T, matrix[:, 1].T
  det = a11 * a22 - a12 * a21
  # [n, h, w] source coordinates of every output pixel: A^{-1} (p' - c - t) + c.
  dx = xs - cx - translation[:, 0, None, None]
  dy = ys - cy - translation[:, 1, None, None]
  inv = lambda v: v[:, None, None]
  src_x = (inv(a22) * dx - inv(a12) * dy) / inv(det) + cx
  src_y = (-inv(a21) * dx + inv(a11) * dy) / inv(det) + cy
  flat = images.astype(jnp.float32).reshape(n, h * w, -1)

  def tap(y, x):  # [n, h, w, c] pixels at integer (y, x); fill outside the image
    inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
    index = (jnp.clip(y, 0, h - 1) * w + jnp.clip(x, 0, w - 1)).reshape(n, h * w, 1)
    pixels = jnp.take_along_axis(flat, index, axis=1).reshape(n, h, w, -1)
    return jnp.where(inside[..., None], pixels, jnp.asarray(fill, jnp.float32))

  if order == 0:
    out = tap(jnp.round(src_y).astype(jnp.int32), jnp.round(src_x).astype(jnp.int32))
  else:
    y0, x0 = jnp.floor(src_y), jnp.floor(src_x)
    wy, wx = (src_y - y0)[..., None], (src_x - x0)[..., None]
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    top = tap(y0, x0) * (1 - wx) + tap(y0, x0 + 1) * wx
    bottom = tap(y0 + 1, x0) * (1 - wx) + tap(y0 + 1, x0 + 1) * wx
    out = top * (1 - wy) + bottom * wy
  return _restore(out, images.dtype)


def random_affine(
  key: jax.Array,
  images: jax.Array,
  *,
  rotation: float | tuple[float, float] = 0.0,
  shear: float | tuple[float, float] = 0.0,
  scale: float | tuple[float, float] = (1.0, 1.0),
  translation: float | tuple[float, float] = 0.0,
  probability: float = 1.0,
  fill: float = 0.0,
  order: int = 1,
) -> jax.Array:
  r"""Random affine warps: rotation, shear, scale and translation per image.

  .. math::
    A = R(\theta) \begin{pmatrix} 1 & \rho_x \\ \rho_y & 1 \end{pmatrix}
      \begin{pmatrix} s_x & 0 \\ 0 & s_y \end{pmatrix}, \qquad t = (t_x, t_y),

  applied about the image centre (:func:`affine_transform`). Each parameter is uniform
  on its range, drawn independently per image and axis; each of the four components
  is used with probability ``probability`` (otherwise it is the identity).
  ``random_affine(key, x, **KOCH_AFFINE)`` gives Koch et al.'s augmentation.

  Args:
    key: one PRNG key for the batch.
    images: [n, h, w, c].
    rotation: degrees; a magnitude ``a`` means ``[-a, a]``, or ``(low, high)``. A
      positive angle turns the image clockwise as displayed (rows point down).
    shear: ``rho`` (magnitude or range).
    scale: ``(low, high)``, or a magnitude ``a`` meaning ``[1 - a, 1 + a]``.
    translation: pixels (magnitude or range).
    probability: the chance that each component is applied.
    fill: the value outside the image (0 = background for ink-on-zero images).
    order: 0 (nearest) or 1 (bilinear).

  Returns:
    [n, h, w, c], the dtype of ``images``.

  References:
    Koch, Zemel & Salakhutdinov, "Siamese Neural Networks for One-shot Image
    Recognition", ICML Deep Learning Workshop 2015.
  """
  images = _check_images(images)
  rot = tuple(math.radians(v) for v in _interval(rotation, "rotation"))
  shr = _interval(shear, "shear")
  scl = (1.0 - scale, 1.0 + scale) if isinstance(scale, int | float) else scale
  scl = _interval(tuple(scl), "scale")
  trn = _interval(translation, "translation")
  if not 0.0 <= probability <= 1.0:
    raise ValueError(f"probability must lie in [0, 1], got {probability}.")
  ranges = jnp.array([rot, shr, scl, trn], jnp.float32)  # [4, (low, high)]
  return _random_affine(
    key,
    images,
    ranges=ranges,
    probability=float(probability),
    fill=float(fill),
    order=order,
  )


@partial(jax.jit, static_argnames=("order",))
def _random_affine(key, images, ranges, probability, fill, *, order) -> jax.Array:
  # One draw of uniform numbers for everything (each random call costs compile time):
  # columns 0-6 are theta, rho_x, rho_y, s_x, s_y, t_x, t_y; 7-10 decide the use of
  # rotation, shear, scale and translation.
  u = jax.random.uniform(key, (images.shape[0], 11))
  low, high = jnp.repeat(
    ranges, jnp.array([1, 2, 2, 2]), axis=0, total_repeat_length=7
  ).T
  value = low + (high - low) * u[:, :7]
  identity = jnp.array([0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
  use = jnp.repeat(
    u[:, 7:] < probability, jnp.array([1, 2, 2, 2]), axis=1, total_repeat_length=7
  )
  value = jnp.where(use, value, identity)
  theta, rho, s, t = value[:, 0], value[:, 1:3], value[:, 3:5], value[:, 5:7]
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  rotate = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)
  one = jnp.ones_like(theta)
  shear_m = jnp.stack(
    [jnp.stack([one, rho[:, 0]], -1), jnp.stack([rho[:, 1], one], -1)], -2
  )
  matrix = rotate @ shear_m @ (s[:, :, None] * jnp.eye(2))
  return _affine(images, matrix, t, fill, order=order)


def random_crop(
  key: jax.Array,
  images: jax.Array,
  *,
  padding: int = 0,
  size: int | tuple[int, int] | None = None,
  fill: float = 0.0,
) -> jax.Array:
  """Pads each side by ``padding`` pixels (``fill``), then crops ``size`` at a random
  place per image.

  Args:
    key: one PRNG key for the batch.
    images: [n, h, w, c].
    padding: pixels added on each side before cropping.
    size: the crop ``(height, width)`` or a square side; default ``(h, w)``.
    fill: the padding value.

  Returns:
    [n, size_h, size_w, c], the dtype of ``images``.

  >>> x = jnp.arange(16).reshape(1, 4, 4, 1)
  >>> bool(jnp.all(random_crop(jax.random.key(0), x) == x))
  True
  """
  images = _check_images(images)
  n, h, w, c = images.shape
  ch, cw = (h, w) if size is None else (size, size) if isinstance(size, int) else size
  if padding < 0 or not (0 < ch <= h + 2 * padding and 0 < cw <= w + 2 * padding):
    raise ValueError(
      f"cannot crop {(ch, cw)} from images {(h, w)} padded by {padding} pixels."
    )
  return _crop(key, images, fill, padding=int(padding), size=(ch, cw))


@partial(jax.jit, static_argnames=("padding", "size"))
def _crop(key, images, fill, *, padding, size) -> jax.Array:
  n, h, w, c = images.shape
  ch, cw = size
  padded = jnp.pad(
    images,
    ((0, 0), (padding, padding), (padding, padding), (0, 0)),
    constant_values=jnp.asarray(fill).astype(images.dtype),
  )
  places = (h + 2 * padding - ch + 1, w + 2 * padding - cw + 1)
  u = jax.random.uniform(key, (n, 2)) * jnp.array(places, jnp.float32)
  offset = jnp.minimum(jnp.floor(u).astype(jnp.int32), jnp.array(places) - 1)
  oy, ox = offset.T
  crop = lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (ch, cw, c))
  return jax.vmap(crop)(padded, oy, ox)


def random_flip(
  key: jax.Array,
  images: jax.Array,
  *,
  horizontal: bool = True,
  vertical: bool = False,
  probability: float = 0.5,
) -> jax.Array:
  """Mirrors each image left-right (and/or upside-down) with ``probability``.

  Args:
    key: one PRNG key for the batch.
    images: [n, h, w, c].
    horizontal: flip the width axis.
    vertical: flip the height axis (drawn independently).
    probability: the chance of each flip.

  Returns:
    [n, h, w, c], the dtype of ``images``.
  """
  images = _check_images(images)
  if not 0.0 <= probability <= 1.0:
    raise ValueError(f"probability must lie in [0, 1], got {probability}.")
  return _flip(
    key,
    images,
    horizontal=bool(horizontal),
    vertical=bool(vertical),
    probability=float(probability),
  )


@partial(jax.jit, static_argnames=("horizontal", "vertical"))
def _flip(key, images, probability, *, horizontal, vertical) -> jax.Array:
  flip = jax.random.uniform(key, (images.shape[0], 2, 1, 1, 1)) < probability
  if horizontal:
    images = jnp.where(flip[:, 0], images[:, :, ::-1], images)
  if vertical:
    images = jnp.where(flip[:, 1], images[:, ::-1], images)
  return images


def compose(*augments: Augment) -> Augment:
  """Chains ``(key, images) -> images`` functions, each with its own split key."""

  def composed(key: jax.Array, images: jax.Array) -> jax.Array:
    for k, augment in zip(jax.random.split(key, len(augments)), augments, strict=True):
      images = augment(k, images)
    return images

  return composed


def two_views(
  key: jax.Array, images: jax.Array, augment: Augment
) -> tuple[jax.Array, jax.Array]:
  """Two independently augmented views of each image (SimCLR's positive pairs, for
  NT-Xent: row ``i`` of both views is a positive pair).

  Args:
    key: one PRNG key for the batch.
    images: [n, h, w, c].
    augment: ``(key, images) -> images``, e.g. from :func:`compose`.

  Returns:
    ``(view1, view2)``, each like ``augment``'s output.

  References:
    Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning
    of Visual Representations", ICML 2020.
  """
  k1, k2 = jax.random.split(key)
  return augment(k1, images), augment(k2, images)

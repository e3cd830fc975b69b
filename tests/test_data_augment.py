"""Augmentation on the device: identities, NumPy references, jit stability."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metriclearn import data

KEY = jax.random.key(0)
# One shape throughout, so that the jitted kernels compile once per dtype and are
# reused across tests (probabilities, ranges and fill values are traced, not static).
SHAPE = (4, 9, 9, 2)


def _images(dtype=np.float32, shape=SHAPE):
  x = np.random.default_rng(0).random(shape)
  if np.issubdtype(dtype, np.integer):
    x = np.rint(x * 255)
  return jnp.asarray(x.astype(np.float32)).astype(dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.uint8, jnp.bfloat16])
def test_identity_parameters_return_the_input(dtype):
  x = _images(dtype)
  same = lambda y: bool(jnp.array_equal(y, x)) and y.dtype == x.dtype
  assert same(data.random_affine(KEY, x))  # every range is zero by default
  assert same(data.random_affine(KEY, x, **{**data.KOCH_AFFINE, "probability": 0.0}))
  assert same(data.affine_transform(x, jnp.eye(2), jnp.zeros(2)))
  assert same(data.random_crop(KEY, x))
  assert same(data.random_flip(KEY, x, probability=0.0))
  if dtype == jnp.float32:
    assert same(data.affine_transform(x, jnp.eye(2), jnp.zeros(2), order=0))


def test_integer_translation_is_a_shift_with_fill():
  x = _images()
  # t = (t_x, t_y) = (2, -1): content moves 2 columns right and 1 row up.
  y = data.affine_transform(x, jnp.eye(2), jnp.array([2.0, -1.0]), fill=-1.0)
  ref = np.full(x.shape, -1.0, np.float32)  # the fill value where nothing maps
  ref[:, :-1, 2:] = np.asarray(x)[:, 1:, :-2]
  np.testing.assert_allclose(np.asarray(y), ref, atol=1e-6)


def test_rotation_by_90_degrees_is_rot90():
  x = _images()
  ref = np.rot90(np.asarray(x), k=-1, axes=(1, 2))
  # With rows pointing down, a positive angle turns the image clockwise.
  y = data.random_affine(KEY, x, rotation=(90.0, 90.0))
  np.testing.assert_allclose(np.asarray(y), ref, atol=1e-5)
  rotate = jnp.array([[0.0, -1.0], [1.0, 0.0]])  # R(90 degrees) on (x, y)
  np.testing.assert_array_equal(data.affine_transform(x, rotate, jnp.zeros(2)), ref)


def test_scale_and_shear_fix_the_centre():
  x = _images()
  for kwargs in ({"scale": (1.2, 1.2)}, {"shear": (0.3, 0.3)}):
    y = data.random_affine(KEY, x, **kwargs)
    np.testing.assert_allclose(y[:, 4, 4], x[:, 4, 4], atol=1e-6)
    assert not np.allclose(y, x)
  # Scale 2 about the centre: output (y, x) = input (4 + (y - 4) / 2, ...); at even
  # offsets from the centre the sample lands on an input pixel.
  y = data.random_affine(KEY, x, scale=(2.0, 2.0))
  np.testing.assert_allclose(y[:, 0, 8], x[:, 2, 6], atol=1e-6)
  np.testing.assert_allclose(y[:, 6, 2], x[:, 5, 3], atol=1e-6)


def test_parameters_differ_per_image():
  x = jnp.broadcast_to(_images()[:1], SHAPE)
  y = data.random_affine(KEY, x, **data.KOCH_AFFINE)
  assert len({np.asarray(im).tobytes() for im in y}) > 1
  flips = data.random_flip(KEY, x, probability=0.5)
  assert len({np.asarray(im).tobytes() for im in flips}) == 2  # flipped or not


def test_flips_match_numpy():
  x = _images()
  np.testing.assert_array_equal(
    data.random_flip(KEY, x, probability=1.0), np.asarray(x)[:, :, ::-1]
  )
  np.testing.assert_array_equal(
    data.random_flip(KEY, x, horizontal=True, vertical=True, probability=1.0),
    np.asarray(x)[:, ::-1, ::-1],
  )


def test_crop_is_a_window_of_the_padded_image():
  x = _images(jnp.uint8)
  y = data.random_crop(KEY, x, padding=2, size=(6, 5), fill=7)
  assert y.shape == (4, 6, 5, 2) and y.dtype == jnp.uint8
  padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=7)
  for image, out in zip(padded, np.asarray(y), strict=True):
    windows = [
      (i, j)
      for i in range(padded.shape[1] - 6 + 1)
      for j in range(padded.shape[2] - 5 + 1)
      if np.array_equal(image[i : i + 6, j : j + 5], out)
    ]
    assert windows


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.uint8, jnp.bfloat16])
def test_jit_keeps_shapes_and_dtypes_and_equals_eager(dtype):
  x = _images(dtype)
  augment = data.compose(
    partial(data.random_affine, **data.KOCH_AFFINE),
    partial(data.random_crop, padding=2),
    data.random_flip,
  )
  jitted = jax.jit(augment)
  for key in jax.random.split(KEY, 2):  # new keys, same compiled function
    y = jitted(key, x)
    assert y.shape == x.shape and y.dtype == x.dtype
    if dtype == jnp.float32:
      np.testing.assert_allclose(y, augment(key, x), atol=1e-5)
  assert jitted._cache_size() == 1


def test_two_views_are_independent():
  x = _images()
  augment = partial(data.random_affine, **data.KOCH_AFFINE)
  v1, v2 = jax.jit(partial(data.two_views, augment=augment))(KEY, x)
  k1, k2 = jax.random.split(KEY)
  np.testing.assert_allclose(v1, augment(k1, x), atol=1e-6)
  np.testing.assert_allclose(v2, augment(k2, x), atol=1e-6)
  assert not np.allclose(v1, v2)


def test_to_float():
  x = jnp.array([0, 51, 255], jnp.uint8)
  np.testing.assert_allclose(data.to_float(x), [0.0, 0.2, 1.0], rtol=1e-6)
  assert data.to_float(x, jnp.bfloat16).dtype == jnp.bfloat16


def test_errors_name_the_argument():
  x = _images()
  with pytest.raises(ValueError, match=r"images must be \[n, h, w, c\]"):
    data.random_affine(KEY, x[0])
  with pytest.raises(ValueError, match="order"):
    data.affine_transform(x, jnp.eye(2), jnp.zeros(2), order=3)
  with pytest.raises(ValueError, match="probability"):
    data.random_flip(KEY, x, probability=2.0)
  with pytest.raises(ValueError, match="rotation"):
    data.random_affine(KEY, x, rotation=(10.0, -10.0))
  with pytest.raises(ValueError, match="cannot crop"):
    data.random_crop(KEY, x, size=20)

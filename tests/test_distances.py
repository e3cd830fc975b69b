"""Distances: hand values, pairwise == pair form, zero-safe gradients, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from metriclearn import distances as D


def test_hand_values():
  a = jnp.array([0.0, 3.0])
  b = jnp.array([4.0, 0.0])
  # |a-b|^2 = 16 + 9 = 25, |a-b| = 5
  assert float(D.squared_euclidean(a, b)) == 25.0
  assert float(D.euclidean(a, b)) == 5.0
  # a.b = 0 -> cos = 0, cosine distance 1
  assert float(D.cosine_similarity(a, b)) == 0.0
  assert float(D.cosine_distance(a, b)) == 1.0
  # cos(a, 2a) = 1 -> distance 0; cos(a, -a) = -1 -> distance 2
  np.testing.assert_allclose(D.cosine_distance(a, 2 * a), 0.0, atol=1e-7)
  np.testing.assert_allclose(D.cosine_distance(a, -a), 2.0, atol=1e-7)
  assert float(D.dot(a, jnp.array([1.0, 2.0]))) == 6.0


def _numpy_pairwise(a, b, kind):
  out = np.zeros((len(a), len(b)))
  for i in range(len(a)):
    for j in range(len(b)):
      diff = a[i] - b[j]
      if kind == "squared_euclidean":
        out[i, j] = diff @ diff
      elif kind == "euclidean":
        out[i, j] = np.sqrt(diff @ diff)
      else:  # cosine distance
        out[i, j] = 1 - a[i] @ b[j] / np.linalg.norm(a[i]) / np.linalg.norm(b[j])
  return out


@pytest.mark.parametrize("kind", ["euclidean", "squared_euclidean", "cosine"])
def test_pairwise_matches_numpy_loop(kind):
  rng = np.random.default_rng(0)
  a = rng.normal(size=(5, 7))
  b = rng.normal(size=(4, 7))
  with jax.enable_x64(True):
    got = D.get_pairwise_distance(kind)(jnp.asarray(a), jnp.asarray(b))
    np.testing.assert_allclose(got, _numpy_pairwise(a, b, kind), rtol=1e-10, atol=1e-10)
    # the pair form agrees entry by entry
    pair = jax.vmap(jax.vmap(D.get_distance(kind), (None, 0)), (0, None))
    np.testing.assert_allclose(pair(jnp.asarray(a), jnp.asarray(b)), got, atol=1e-10)


def test_pairwise_default_is_self_and_nonnegative():
  x = jax.random.normal(jax.random.key(0), (6, 3)) * 100.0
  d2 = D.pairwise_squared_euclidean(x)
  assert d2.shape == (6, 6)
  assert bool(jnp.all(d2 >= 0))  # cancellation never makes it negative
  # each row against itself: exactly 0, although the expansion cancels badly at norm 100
  np.testing.assert_array_equal(jnp.diag(D.pairwise_euclidean(x)), 0.0)


def test_euclidean_gradient_finite_at_zero():
  x = jnp.array([1.0, -2.0, 0.5])
  g1, g2 = jax.grad(D.euclidean, argnums=(0, 1))(x, x)
  # a plain sqrt gives 0 * inf = NaN here; the safe form gives the zero subgradient
  np.testing.assert_array_equal(g1, 0.0)
  np.testing.assert_array_equal(g2, 0.0)
  gp = jax.grad(lambda a: D.pairwise_euclidean(a).sum())(jnp.stack([x, x, 2 * x]))
  assert bool(jnp.all(jnp.isfinite(gp)))
  gc = jax.grad(D.cosine_distance)(jnp.zeros(3), x)  # zero vector: finite
  assert bool(jnp.all(jnp.isfinite(gc)))


def test_gradients_numerically():
  with jax.enable_x64(True):
    a = jax.random.normal(jax.random.key(1), (4, 3), dtype=jnp.float64)
    b = jax.random.normal(jax.random.key(2), (5, 3), dtype=jnp.float64)
    for kind in ("euclidean", "squared_euclidean", "cosine"):
      check_grads(D.get_pairwise_distance(kind), (a, b), order=1, modes=["rev"])
      check_grads(D.get_distance(kind), (a[0], b[0]), order=1, modes=["rev"])


def test_low_precision_computed_in_float32():
  x = jax.random.normal(jax.random.key(3), (4, 8))
  y = jax.random.normal(jax.random.key(4), (4, 8))
  got = D.pairwise_euclidean(x.astype(jnp.bfloat16), y.astype(jnp.bfloat16))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, D.pairwise_euclidean(x, y), rtol=2e-2)


def test_errors_name_the_argument():
  with pytest.raises(ValueError, match="x1 and x2 must have the same shape"):
    D.euclidean(jnp.zeros(3), jnp.zeros(4))
  with pytest.raises(ValueError, match=r"a must be 2-D"):
    D.pairwise_euclidean(jnp.zeros(3))
  with pytest.raises(ValueError, match="same embedding size"):
    D.pairwise_dot(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="distance must be one of"):
    D.get_distance("manhattan")
  with pytest.raises(TypeError, match="x1 must hold real numbers"):
    D.euclidean(jnp.zeros(2, bool), jnp.zeros(2))

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


# ----------------------------------------------------------------------------------
# The signal-to-noise ratio distance (Yuan et al. 2019)


def _numpy_snr(a, b):
  return np.array([[np.var(v - u) / np.var(u) for v in b] for u in a])


def test_snr_hand_values_and_numpy_loop():
  # signal [0, 2]: Var = 1; noise [0, 3] - [0, 2] = [0, 1]: Var = 0.25 -> 0.25
  assert float(D.snr_distance(jnp.array([0.0, 2.0]), jnp.array([0.0, 3.0]))) == 0.25
  # the other way round: Var([0, 3]) = 2.25, noise Var 0.25 -> 1/9 (not symmetric)
  got = D.snr_distance(jnp.array([0.0, 3.0]), jnp.array([0.0, 2.0]))
  np.testing.assert_allclose(got, 1 / 9, rtol=1e-6)
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(5, 7)), rng.normal(size=(4, 7))
  with jax.enable_x64(True):
    got = D.pairwise_snr_distance(jnp.asarray(a), jnp.asarray(b))
    np.testing.assert_allclose(got, _numpy_snr(a, b), rtol=1e-10)
    pair = jax.vmap(jax.vmap(D.snr_distance, (None, 0)), (0, None))
    np.testing.assert_allclose(pair(jnp.asarray(a), jnp.asarray(b)), got, rtol=1e-10)
    # by name, where distances are looked up by name
    assert D.get_pairwise_distance("snr") is D.pairwise_snr_distance
    assert D.get_distance("snr") is D.snr_distance
    assert "snr" in D.DISTANCES
    # invariant to a common scale and to a shift of each row
    scaled = D.pairwise_snr_distance(jnp.asarray(3 * a + 1), jnp.asarray(3 * b - 2))
    np.testing.assert_allclose(scaled, got, rtol=1e-10)
    check_grads(D.pairwise_snr_distance, (jnp.asarray(a), jnp.asarray(b)), 1, ["rev"])


def test_snr_identical_rows_constant_signal_and_nan():
  x = jax.random.normal(jax.random.key(5), (3, 6))
  rows = jnp.stack([x[0], x[1], x[0] + 2.0])  # row 2: row 0 shifted, no noise
  d = D.pairwise_snr_distance(rows)
  np.testing.assert_array_equal(jnp.diag(d), 0.0)
  assert float(d[0, 2]) == 0.0 and float(d[2, 0]) == 0.0  # rounding taken as 0
  # a constant anchor has no signal: +inf, 0 against another constant; finite grads
  flat = jnp.stack([jnp.ones(6), x[0], 2 * jnp.ones(6)])
  d = D.pairwise_snr_distance(flat)
  assert float(d[0, 1]) == np.inf and float(d[0, 2]) == 0.0
  assert np.isfinite(float(d[1, 0]))
  g = jax.grad(
    lambda f: jnp.where(jnp.isfinite(d), D.pairwise_snr_distance(f), 0.0).sum()
  )
  assert bool(jnp.all(jnp.isfinite(g(flat))))
  # NaN stays NaN, even against a constant signal
  bad = flat.at[1, 0].set(jnp.nan)
  d = D.pairwise_snr_distance(bad)
  assert bool(jnp.isnan(d[0, 1])) and bool(jnp.isnan(d[1, 2]))
  assert bool(jnp.isnan(D.snr_distance(jnp.ones(3), jnp.array([1.0, jnp.nan, 2.0]))))
  got = D.pairwise_snr_distance(x.astype(jnp.bfloat16))
  assert got.dtype == jnp.float32
  with pytest.raises(ValueError, match="x1 and x2 must have the same shape"):
    D.snr_distance(jnp.zeros(3), jnp.zeros(4))


def test_nan_in_nan_out():
  # Issue 15: a NaN coordinate is never a plausible distance (euclidean was 0.0).
  nan, x = jnp.array([jnp.nan, 1.0]), jnp.array([1.0, 2.0])
  for fn in (D.euclidean, D.squared_euclidean, D.cosine_distance, D.dot):
    assert np.isnan(fn(nan, x)) and np.isnan(fn(x, nan))
  assert np.isnan(D.pairwise_euclidean(jnp.stack([nan, x]))[0]).all()

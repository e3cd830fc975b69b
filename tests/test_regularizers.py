"""Regularizers: NumPy float64 loop references from each paper's formula, gradient
checks, padding rows, NaN, class-sharded proxies on 8 devices, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from metriclearn import regularizers as reg

RNG = np.random.default_rng(0)
X = RNG.normal(size=(6, 4))
VALID = np.array([True, True, False, True, True, False])
W = RNG.normal(size=(5, 3))  # [C, d] class vectors
CENTERS = RNG.normal(size=(4, 3, 5))  # [C, K, d] sub-centres


def np_lp(x, valid=None, p=2.0, power=1.0):
  rows = [i for i in range(len(x)) if valid is None or valid[i]]
  if p == math.inf:
    norms = [max(abs(v) for v in x[i]) for i in rows]
  else:
    norms = [sum(abs(v) ** p for v in x[i]) ** (1 / p) for i in rows]
  return sum(n**power for n in norms) / len(rows) if rows else 0.0


def np_zero_mean(x, valid=None):
  rows = [i for i in range(len(x)) if valid is None or valid[i]]
  return sum(abs(sum(x[i])) for i in rows) / len(rows) if rows else 0.0


def np_center_invariant(w):
  # Wu et al. 2017: (|w_c|^2 - mean_k |w_k|^2)^2 / 4, averaged over the classes
  sq = [float(v @ v) for v in w]
  mean = sum(sq) / len(sq)
  return sum((s - mean) ** 2 / 4 for s in sq) / len(sq)


def np_regular_face(w):
  # Zhao et al. 2019: mean over classes of the largest cosine to another class
  cos = lambda u, v: float(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v))  # noqa: E731
  c = len(w)
  return sum(max(cos(w[i], w[j]) for j in range(c) if j != i) for i in range(c)) / c


def np_sparse_centers(w, eps=1e-5):
  # Qian et al. 2019: sum over t < k of sqrt(2 + eps - 2 w_t.w_k) / (C K (K - 1))
  c, k, _ = w.shape
  total = 0.0
  for i in range(c):
    unit = [v / np.linalg.norm(v) for v in w[i]]
    for t in range(k):
      for s in range(t + 1, k):
        total += math.sqrt(2 + eps - 2 * float(unit[t] @ unit[s]))
  return total / (c * k * (k - 1))


def _x64(fn, *args, **kwargs):
  with jax.enable_x64(True):
    return float(fn(*args, **kwargs))


@pytest.mark.parametrize("p, power", [(2, 1), (1, 1), (3, 2), (math.inf, 1), (2, 0.5)])
def test_lp_matches_numpy(p, power):
  for valid in (None, VALID):
    want = np_lp(X, valid, p, power)
    got = _x64(reg.lp_regularizer, X, valid, p=p, power=power)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_embedding_and_proxy_regularizers_match_numpy():
  for valid in (None, VALID):
    np.testing.assert_allclose(
      _x64(reg.zero_mean_regularizer, X, valid), np_zero_mean(X, valid), rtol=1e-5
    )
  np.testing.assert_allclose(
    _x64(reg.center_invariant_regularizer, W), np_center_invariant(W), rtol=1e-5
  )
  np.testing.assert_allclose(
    _x64(reg.regular_face_regularizer, W), np_regular_face(W), rtol=1e-5
  )
  for eps in (1e-5, 1e-2):
    np.testing.assert_allclose(
      _x64(reg.sparse_centers_regularizer, CENTERS, epsilon=eps),
      np_sparse_centers(CENTERS, eps),
      rtol=1e-5,
    )
  # hand values: squared norms 1 and 9, mean 5: (4^2 / 4 + 4^2 / 4) / 2 = 4
  assert float(reg.center_invariant_regularizer(jnp.array([[1.0, 0], [0, 3.0]]))) == 4
  # C = 1 and K = 1 have no other vector: 0
  assert float(reg.center_invariant_regularizer(W[:1])) == 0.0
  assert float(reg.regular_face_regularizer(W[:1])) == 0.0
  assert float(reg.sparse_centers_regularizer(CENTERS[:, :1])) == 0.0
  assert float(reg.sparse_centers_regularizer(W)) == 0.0  # [C, d]: one centre each


def test_gradients():
  with jax.enable_x64(True):
    x, w, centers = jnp.asarray(X), jnp.asarray(W), jnp.asarray(CENTERS)
    for p, power in ((2, 1), (1, 2), (3, 1), (2, 2)):
      check_grads(
        lambda e, p=p, power=power: reg.lp_regularizer(e, VALID, p=p, power=power),
        (x,),
        1,
      )
    check_grads(lambda e: reg.zero_mean_regularizer(e, VALID), (x,), 1)
    check_grads(reg.center_invariant_regularizer, (w,), 1)
    # the nearest other class is fixed under a small step (no near ties here)
    check_grads(reg.regular_face_regularizer, (w,), 1, eps=1e-4)
    check_grads(reg.sparse_centers_regularizer, (centers,), 1)
    # a zero row has a zero gradient, not NaN
    zero = x.at[0].set(0.0)
    for p, power in ((2, 1), (1, 1), (2, 0.5), (math.inf, 1)):
      g = jax.grad(lambda e, p=p, power=power: reg.lp_regularizer(e, p=p, power=power))(
        zero
      )
      assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[0] == 0), (p, power)
    # two coinciding centres: finite (epsilon)
    same = centers.at[0, 1].set(centers[0, 0])
    assert np.all(np.isfinite(jax.grad(reg.sparse_centers_regularizer)(same)))


def test_padding_rows_are_inert_and_nan_propagates():
  poisoned = X.copy()
  poisoned[~VALID] = np.nan
  for fn in (reg.lp_regularizer, reg.zero_mean_regularizer):
    want = fn(X, VALID)
    np.testing.assert_allclose(fn(poisoned, VALID), want, rtol=1e-6)
    g = jax.grad(lambda e, fn=fn: fn(e, VALID))(jnp.asarray(poisoned, jnp.float32))
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[~VALID] == 0)
    nan = X.copy()
    nan[1, 2] = np.nan  # a valid row
    assert math.isnan(float(fn(nan, VALID))), fn
    assert float(fn(X, np.zeros(6, bool))) == 0.0  # nothing valid
  nan_w = W.copy()
  nan_w[2, 0] = np.nan
  nan_c = CENTERS.copy()
  nan_c[1, 2, 3] = np.nan
  assert math.isnan(float(reg.center_invariant_regularizer(nan_w)))
  assert math.isnan(float(reg.regular_face_regularizer(nan_w)))
  assert math.isnan(float(reg.sparse_centers_regularizer(nan_c)))


def test_jit_and_class_sharded_centres_on_devices():
  centers = jnp.asarray(RNG.normal(size=(8, 3, 5)), jnp.float32)  # a class per device
  want = reg.sparse_centers_regularizer(centers)
  np.testing.assert_allclose(jax.jit(reg.sparse_centers_regularizer)(centers), want)
  mesh = Mesh(np.array(jax.devices()), ("c",))
  sharded = jax.shard_map(
    lambda w: reg.sparse_centers_regularizer(w, proxy_axis_name="c")[None],
    mesh=mesh,
    in_specs=P("c"),
    out_specs=P("c"),
  )
  got = jax.jit(sharded)(centers)  # each device: the same value
  np.testing.assert_allclose(got, np.full(8, want), rtol=1e-6)


def test_bad_input_raises_naming_the_argument():
  with pytest.raises(ValueError, match=r"embeddings must be 2-D.*\(4,\)"):
    reg.lp_regularizer(jnp.ones(4))
  with pytest.raises(ValueError, match=r"valid must have shape \(6,\)"):
    reg.zero_mean_regularizer(X, np.ones(5, bool))
  with pytest.raises(TypeError, match="embeddings must hold real numbers"):
    reg.zero_mean_regularizer(jnp.ones((2, 2), bool))
  with pytest.raises(ValueError, match="p must be a number >= 1"):
    reg.lp_regularizer(X, p=0.5)
  with pytest.raises(ValueError, match="power must be a number > 0"):
    reg.lp_regularizer(X, power=0)
  for fn in (reg.center_invariant_regularizer, reg.regular_face_regularizer):
    with pytest.raises(ValueError, match=r"proxies must be 2-D.*\(4, 3, 5\)"):
      fn(CENTERS)
  with pytest.raises(ValueError, match=r"proxies must be 3-D.*\[C, K, d\]"):
    reg.sparse_centers_regularizer(jnp.ones(3))
  with pytest.raises(ValueError, match="epsilon must be > 0"):
    reg.sparse_centers_regularizer(CENTERS, epsilon=0.0)

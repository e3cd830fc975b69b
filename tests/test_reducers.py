"""PML's other reducers (class-weighted mean, divisor, threshold): NumPy float64 loop
references, gradients, padding, NaN, empty selections, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from metriclearn import reduce

RNG = np.random.default_rng(0)
VALUES = RNG.normal(size=(7, 5))  # per pair [n, m]; the per-element rows: VALUES[:, 0]
LABELS = np.array([0, 2, 1, -1, 2, 0, 1])
WEIGHTS = np.array([0.5, 2.0, 1.5])
VALID = RNG.random((7, 5)) < 0.7


def np_class_weighted_mean(values, labels, weights, valid=None, normalize=False):
  total = count = weight_sum = 0.0
  for i in range(values.shape[0]):
    if labels[i] == -1:
      continue
    for j in np.ndindex(values.shape[1:]):
      if valid is not None and not valid[(i, *j)]:
        continue
      w = weights[labels[i]]
      total += w * values[(i, *j)]
      count += 1
      weight_sum += w
  divisor = weight_sum if normalize else count
  return total / divisor if divisor else 0.0


def np_threshold(values, valid=None, low=None, high=None):
  mask = np.ones(values.shape, bool) if valid is None else valid
  kept = [
    v
    for v, ok in zip(values.ravel(), mask.ravel(), strict=True)
    if ok and (low is None or v > low) and (high is None or v < high)
  ]
  return sum(kept) / len(kept) if kept else 0.0


def _x64(fn, *args, **kwargs):
  with jax.enable_x64(True):
    return float(fn(*args, **kwargs))


def test_class_weighted_mean_matches_numpy():
  for values, valid in (
    (VALUES[:, 0], None),
    (VALUES[:, 0], VALID[:, 0]),
    (VALUES, None),
    (VALUES, VALID),
  ):
    for normalize in (False, True):
      want = np_class_weighted_mean(values, LABELS, WEIGHTS, valid, normalize)
      got = _x64(
        reduce.class_weighted_mean,
        values,
        LABELS,
        WEIGHTS,
        valid,
        normalize=normalize,
      )
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)
  # hand value: weights 3 and 0.5 on 1 and 2, padding left out: (3 + 1) / 2
  got = reduce.class_weighted_mean(
    jnp.array([1.0, 2.0, 9.0]), jnp.array([0, 1, -1]), jnp.array([3.0, 0.5])
  )
  assert float(got) == 2.0


def test_divisor_reduce_matches_numpy():
  for valid in (None, VALID):
    for divisor in (3.0, 17, 0.25):
      mask = np.ones(VALUES.shape, bool) if valid is None else valid
      want = sum(v for v, ok in zip(VALUES.ravel(), mask.ravel(), strict=True) if ok)
      got = _x64(reduce.divisor_reduce, VALUES, divisor, valid)
      np.testing.assert_allclose(got, want / divisor, rtol=1e-5)
  assert float(reduce.divisor_reduce(jnp.ones(3), 0.0)) == 0.0  # PML: 0, not inf


@pytest.mark.parametrize("low, high", [(0.0, None), (None, 0.5), (-0.7, 1.1)])
def test_threshold_reduce_matches_numpy(low, high):
  for valid in (None, VALID):
    want = np_threshold(VALUES, valid, low, high)
    got = _x64(reduce.threshold_reduce, VALUES, valid, low=low, high=high)
    np.testing.assert_allclose(got, want, rtol=1e-5)
  # nothing between the bounds: 0
  assert float(reduce.threshold_reduce(jnp.ones(4), low=2.0)) == 0.0
  # hand value: (0.5 + 2) / 2 of 0, 0.5, 2, 9 between 0 and 5 (both excluded)
  v = jnp.array([0.0, 0.5, 2.0, 5.0, 9.0])
  assert float(reduce.threshold_reduce(v, low=0.0, high=5.0)) == 1.25


def test_gradients():
  with jax.enable_x64(True):
    values = jnp.asarray(VALUES)
    check_grads(
      lambda v: reduce.class_weighted_mean(v, LABELS, WEIGHTS, VALID), (values,), 1
    )
    check_grads(
      lambda v: reduce.class_weighted_mean(v, LABELS, WEIGHTS, normalize=True),
      (values,),
      1,
    )
    check_grads(lambda v: reduce.divisor_reduce(v, 4.0, VALID), (values,), 1)
    # (no value within 1e-3 of a bound: the selection does not move)
    check_grads(
      lambda v: reduce.threshold_reduce(v, VALID, low=-0.7, high=1.1), (values,), 1
    )
    # a padding entry and a zero divisor get a zero gradient
    g = jax.grad(lambda v: reduce.class_weighted_mean(v, LABELS, WEIGHTS))(values)
    assert np.all(np.asarray(g)[LABELS == -1] == 0)
    g = jax.grad(lambda v: reduce.divisor_reduce(v, 0.0))(values)
    np.testing.assert_array_equal(g, 0.0)


def test_nan_in_a_valid_entry_gives_nan_and_padding_is_inert():
  poisoned = VALUES.copy()
  poisoned[3] = np.nan  # the padding row (label -1)
  poisoned[~VALID] = np.inf  # excluded entries
  want = reduce.class_weighted_mean(VALUES, LABELS, WEIGHTS, VALID)
  got = reduce.class_weighted_mean(poisoned, LABELS, WEIGHTS, VALID)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  g = jax.grad(lambda v: reduce.class_weighted_mean(v, LABELS, WEIGHTS, VALID))(
    jnp.asarray(poisoned, jnp.float32)
  )
  assert np.all(np.isfinite(g))
  for fn in (
    lambda v: reduce.divisor_reduce(v, 3.0, VALID),
    lambda v: reduce.threshold_reduce(v, VALID, low=-0.7, high=1.1),
  ):
    assert np.isfinite(float(fn(np.where(VALID, VALUES, np.nan))))  # excluded: inert
  nan = VALUES.copy()
  nan[0, 0] = np.nan
  valid = VALID.copy()
  valid[0, 0] = True
  assert math.isnan(float(reduce.class_weighted_mean(nan, LABELS, WEIGHTS, valid)))
  assert math.isnan(float(reduce.divisor_reduce(nan, 2.0, valid)))
  # a NaN is not filtered out by the thresholds (PML's comparisons would drop it)
  assert math.isnan(float(reduce.threshold_reduce(nan, valid, low=0.0, high=1.0)))
  # nothing valid: 0
  none = np.zeros(VALUES.shape, bool)
  assert float(reduce.class_weighted_mean(VALUES, LABELS, WEIGHTS, none)) == 0.0
  assert float(reduce.divisor_reduce(VALUES, 2.0, none)) == 0.0
  assert float(reduce.threshold_reduce(VALUES, none, low=0.0)) == 0.0


def test_traced_label_out_of_range_gives_nan():
  f = jax.jit(lambda y: reduce.class_weighted_mean(VALUES[:, 0], y, WEIGHTS))
  assert math.isnan(float(f(jnp.array([0, 2, 1, -1, 3, 0, 1]))))
  assert math.isfinite(float(f(jnp.asarray(LABELS))))


def test_bad_input_raises_naming_the_argument():
  v = jnp.ones(4)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
    reduce.class_weighted_mean(v, jnp.array([0, 1, 3, 0]), WEIGHTS)
  with pytest.raises(ValueError, match=r"labels must be >= 0, or -1 for padding"):
    reduce.class_weighted_mean(v, jnp.array([0, 1, -2, 0]), WEIGHTS)
  with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
    reduce.class_weighted_mean(v, jnp.array([0, 1]), WEIGHTS)
  with pytest.raises(TypeError, match="labels must be integers"):
    reduce.class_weighted_mean(v, jnp.zeros(4), WEIGHTS)
  with pytest.raises(ValueError, match="class_weights must be 1-D"):
    reduce.class_weighted_mean(v, jnp.zeros(4, int), jnp.ones((3, 1)))
  with pytest.raises(ValueError, match="values must be"):
    reduce.class_weighted_mean(jnp.ones(()), jnp.zeros(1, int), WEIGHTS)
  with pytest.raises(ValueError, match="divisor must be >= 0"):
    reduce.divisor_reduce(v, -1.0)
  with pytest.raises(ValueError, match="divisor must be a scalar"):
    reduce.divisor_reduce(v, jnp.ones(2))
  with pytest.raises(ValueError, match="needs low, high or both"):
    reduce.threshold_reduce(v)
  with pytest.raises(ValueError, match=r"valid must be broadcastable to values"):
    reduce.threshold_reduce(v, jnp.ones(3, bool), low=0.0)
  with pytest.raises(ValueError, match=r"valid must be broadcastable to values"):
    reduce.divisor_reduce(v, 2.0, jnp.ones((2, 4), bool))
  with pytest.raises(ValueError, match="valid must be boolean or 0/1"):
    reduce.divisor_reduce(v, 2.0, jnp.full(4, 2))
  with pytest.raises(ValueError, match="low must be a scalar"):
    reduce.threshold_reduce(v, low=jnp.zeros(2))

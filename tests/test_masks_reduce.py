"""Masks from labels and reductions that never give NaN."""

import jax
import jax.numpy as jnp
import numpy as np

from metriclearn import masks, reduce


def test_pair_masks_hand_example():
  labels = jnp.array([0, 0, 1, -1])
  pos, neg = masks.pair_masks(labels)
  # row 0: self excluded, 1 same class, 2 other class, 3 padding
  np.testing.assert_array_equal(pos[0], [False, True, False, False])
  np.testing.assert_array_equal(neg[0], [False, False, True, False])
  # row 2 has no positive; the padding row takes part in nothing
  assert not bool(pos[2].any())
  assert not bool(pos[3].any() | neg[3].any() | pos[:, 3].any() | neg[:, 3].any())
  assert not bool(jnp.diag(pos).any() | jnp.diag(neg).any())


def test_reference_set_and_offset():
  labels = jnp.array([1, 2])
  ref = jnp.array([2, 1, 1, 2])
  pos, neg = masks.pair_masks(labels, ref, self_offset=None)
  np.testing.assert_array_equal(pos, [[0, 1, 1, 0], [1, 0, 0, 1]])
  np.testing.assert_array_equal(neg, ~pos)
  # anchors sit at positions 2, 3 of the candidates: those self-pairs are dropped
  pos, _ = masks.pair_masks(jnp.array([1, 2]), ref, self_offset=2)
  np.testing.assert_array_equal(pos, [[0, 1, 0, 0], [1, 0, 0, 0]])


def test_label_comparison_and_explicit_mask():
  multi_hot = jnp.array([[1, 0, 1], [0, 1, 1], [1, 0, 0]])
  share_a_tag = lambda a, b: (a @ b.T) > 0
  pos, neg = masks.pair_masks(multi_hot, label_comparison=share_a_tag)
  np.testing.assert_array_equal(pos, [[0, 1, 1], [1, 0, 0], [1, 0, 0]])
  np.testing.assert_array_equal(neg, [[0, 0, 0], [0, 0, 1], [0, 1, 0]])
  explicit = jnp.array([[1, 0, 0], [1, 1, 1], [0, 0, 1]], bool)
  pos, _ = masks.pair_masks(jnp.zeros(3, int), positive_mask=explicit)
  np.testing.assert_array_equal(pos, [[0, 0, 0], [1, 0, 1], [0, 0, 0]])  # no self


def test_triplet_mask():
  pos, neg = masks.pair_masks(jnp.array([0, 0, 1]))
  t = masks.triplet_mask(pos, neg)
  # the only valid triplets: (0, 1, 2) and (1, 0, 2)
  assert {tuple(i) for i in np.argwhere(np.asarray(t))} == {(0, 1, 2), (1, 0, 2)}


def test_reductions_hand_values():
  v = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  m = jnp.array([[True, False, True], [False, False, False]])
  # row 0: (1 + 3) / 2 = 2; row 1: nothing selected -> 0
  np.testing.assert_allclose(reduce.masked_mean(v, m, axis=1), [2.0, 0.0])
  assert float(reduce.mean_over_valid(v, m)) == 2.0
  # non-zero entries of [0, 2, 0, 4] -> (2 + 4) / 2 = 3
  assert float(reduce.mean_over_nonzero(jnp.array([0.0, 2.0, 0.0, 4.0]))) == 3.0
  np.testing.assert_allclose(reduce.masked_max(v, m, axis=1), [3.0, 0.0])
  np.testing.assert_allclose(reduce.masked_min(v, m, axis=1), [1.0, 0.0])
  # log(e^1 + e^3) = 3 + log(1 + e^-2) = 3.126928...
  np.testing.assert_allclose(reduce.masked_logsumexp(v, m, axis=1)[0], 3.1269280)


def test_empty_selection_is_zero_with_zero_gradient():
  v = jnp.array([1.0, jnp.inf, jnp.nan])
  none = jnp.zeros(3, bool)
  for fn in (reduce.mean_over_valid, reduce.mean_over_nonzero):
    assert float(fn(v, none)) == 0.0
    g = jax.grad(lambda x, fn=fn: fn(x, none))(v)
    np.testing.assert_array_equal(g, 0.0)
  # excluded infinities and NaNs do not leak into a non-empty selection either
  some = jnp.array([True, False, False])
  assert float(reduce.mean_over_valid(v, some)) == 1.0
  np.testing.assert_array_equal(jax.grad(reduce.mean_over_valid)(v, some), [1, 0, 0])
  g = jax.grad(lambda x: reduce.masked_logsumexp(x, none))(v)
  np.testing.assert_array_equal(g, 0.0)


def test_logsumexp_stable_for_large_inputs():
  x = jnp.array([1000.0, 1000.0, -1000.0])
  m = jnp.array([True, True, False])
  # log(2 e^1000) = 1000 + log 2
  np.testing.assert_allclose(
    reduce.masked_logsumexp(x, m), 1000.0 + np.log(2), rtol=1e-6
  )
  g = jax.grad(lambda x: reduce.masked_logsumexp(x, m))(x)
  np.testing.assert_allclose(g, [0.5, 0.5, 0.0])

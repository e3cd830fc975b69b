"""The contract of every batch-form loss (DESIGN.md), once for all of them.

For each loss: jit equals eager; ``block_size=`` (blocks that divide the batch and
blocks that do not) equals the dense form in values and gradients (float64, 1e-5);
``ring=True`` on eight simulated devices under ``shard_map`` equals the dense loss of
the whole batch; a batch without a valid pair gives 0 and a zero gradient; a padding
row is inert whatever it holds (NaN included); a NaN in a real row makes the loss
non-finite; bfloat16 inputs are computed in float32. The values themselves are checked
against NumPy loops from the papers' formulas in each family's test file.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from device_utils import assert_close, run_on_devices, value_and_grad

from metriclearn import losses

# (name, loss, options, needs a negative): every batch-form loss, with the options that
# change its code path.
CASES = [
  ("ntxent", losses.ntxent_loss, dict(temperature=0.5), True),
  ("supcon", losses.supcon_loss, dict(temperature=0.5), True),
  ("snn", losses.soft_nearest_neighbor_loss, {}, True),
  (
    "sigmoid",
    functools.partial(losses.sigmoid_pairwise_loss, scale=2.0, bias=-1.0),
    {},
    False,
  ),
  ("npair", losses.npair_loss, {}, True),
  ("ms", losses.multi_similarity_loss, dict(beta=10.0), True),
  (
    "ms_mining",
    losses.multi_similarity_loss,
    dict(beta=10.0, mining_epsilon=0.1),
    True,
  ),
  ("circle", losses.circle_loss, dict(gamma=8.0), True),
  ("circle_attached", losses.circle_loss, dict(gamma=8.0, detach_weights=False), True),
  ("contrastive", losses.batch_contrastive_loss, {}, False),
  ("lifted", losses.lifted_structure_loss, {}, True),
  ("lifted_song", losses.lifted_structure_loss, dict(form="song2016"), True),
  ("margin", losses.margin_loss, dict(nu=0.1), True),
  ("batch_hard", losses.batch_hard_triplet_loss, dict(margin=0.5), True),
  ("batch_all", losses.batch_all_triplet_loss, dict(margin=0.5), True),
  (
    "batch_all_k",
    losses.batch_all_triplet_loss,
    dict(margin=0.5, max_positives=6),
    True,
  ),
  (
    "batch_all_soft_k",
    losses.batch_all_triplet_loss,
    dict(soft=True, max_positives=6),
    True,
  ),
  ("semi_hard", losses.semi_hard_triplet_loss, dict(margin=0.5), True),
  ("semi_hard_k", losses.semi_hard_triplet_loss, dict(max_positives=6), True),
  (
    "batch_hard_swap",
    losses.batch_hard_triplet_loss,
    dict(margin=0.5, swap=True),
    True,
  ),
  (
    "batch_all_swap_k",
    losses.batch_all_triplet_loss,
    dict(margin=0.5, max_positives=6, swap=True),
    True,
  ),
  # the pair / triplet family (losses.pair_triplet)
  ("angular_k", losses.angular_loss, dict(alpha=45.0, max_positives=6), True),
  ("tuplet", losses.tuplet_margin_loss, dict(scale=8.0), True),
  ("intra_pair_variance", losses.intra_pair_variance_loss, {}, False),
  (
    "snr_contrastive",
    losses.snr_contrastive_loss,
    dict(neg_margin=2.0, regularizer_weight=0.1),
    False,
  ),
  ("centroid_triplet", losses.centroid_triplet_loss, dict(margin=0.5), True),
  (
    "tcm",
    losses.threshold_consistent_margin_loss,
    dict(margin_plus=0.5, margin_minus=0.1),
    False,
  ),
  (
    "dynamic_soft_margin_k",
    losses.dynamic_soft_margin_loss,
    dict(max_positives=6),
    True,
  ),
  # the ranking family (losses.ranking)
  ("fastap", losses.fastap_loss, dict(num_bins=5), True),
  ("smooth_ap", losses.smooth_ap_loss, dict(temperature=0.1), True),
  ("smooth_ap_k", losses.smooth_ap_loss, dict(temperature=0.1, max_positives=6), True),
  ("ranked_list", losses.ranked_list_loss, {}, True),
  (
    "ranked_list_attached",
    losses.ranked_list_loss,
    dict(pos_temperature=2.0, detach_weights=False),
    True,
  ),
  # the softmax family, continued
  ("instance", losses.instance_loss, dict(scale=4.0), True),
  ("dcl", losses.decoupled_contrastive_loss, dict(temperature=0.5), True),
  (
    "dclw",
    losses.decoupled_contrastive_loss,
    dict(temperature=0.5, weighting="dclw"),
    True,
  ),
  (
    "multi_supcon_sets",
    # label sets {y, y + 1 mod 5} (Jaccard 1/3 between neighbours), -1 rows padding
    lambda e, y, **kw: losses.multi_supcon_loss(
      e,
      jnp.where(
        (y >= 0)[:, None],
        (
          (jnp.arange(5, dtype=y.dtype) == y[:, None])
          | (jnp.arange(5, dtype=y.dtype) == (y[:, None] + 1) % 5)
        ).astype(jnp.int32),
        -1,
      ),
      **kw,
    ),
    dict(temperature=0.5, threshold=0.3),
    True,
  ),
]
IDS = [c[0] for c in CASES]
# The exact (unbounded) triplet forms compare a row with all its candidates at once:
# they have no ring form (a ring of them raises, see test_engine.py).
NO_RING = ("batch_all", "semi_hard", "smooth_ap")


def _case(name):
  return CASES[IDS.index(name)]


def _batch(n=12, d=4, classes=3, seed=0):
  """Normal embeddings with a duplicated row and a padding row (label -1)."""
  rng = np.random.default_rng(seed)
  e = rng.normal(size=(n, d)) * 0.6
  e[7] = e[2]
  labels = rng.integers(0, classes, size=n).astype(np.int32)
  labels[4] = -1
  return e, labels


@functools.cache
def _dense(name):
  """The dense loss and gradient on the shared float64 batch."""
  _, fn, options, _ = _case(name)
  with jax.enable_x64(True):
    e, labels = _batch()
    values, grads = value_and_grad(fn, jnp.asarray(e), labels, **options)
    return np.asarray(values), np.asarray(grads)


@pytest.mark.parametrize("name", IDS)
def test_blockwise_equals_dense_float64(name):
  _, fn, options, _ = _case(name)
  want, want_grad = _dense(name)
  assert np.any(want != 0), name
  with jax.enable_x64(True):
    e, labels = _batch()
    # 12 rows: square blocks of 4 divide them (the symmetric path: each block product
    # serves (I, J) and (J, I)); blocks of 5 x 3 do not (padding, the general path).
    for block in (4, (5, 3)):
      got, grad = value_and_grad(
        fn, jnp.asarray(e), labels, block_size=block, **options
      )
      assert_close(got, want, 1e-5, f"{name} block {block}")
      assert_close(grad, want_grad, 1e-5, f"{name} block {block}")


@pytest.mark.parametrize("name", IDS)
def test_jit_equals_eager_and_bfloat16_is_computed_in_float32(name):
  _, fn, options, _ = _case(name)
  e, labels = _batch()
  e32 = jnp.asarray(e, jnp.float32)
  eager = fn(e32, jnp.asarray(labels), **options)
  jitted = jax.jit(lambda x, y: fn(x, y, **options))(e32, jnp.asarray(labels))
  # XLA fuses and reorders float32 reductions under jit: eager and jitted agree to a
  # few ulps, not bit for bit (on an AMD EPYC 'instance' differed by 1.5e-6 relative,
  # 4 ulps at 0.327); 1e-5 is ~80 ulps, far below any change of formula
  np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-7, err_msg=name)
  low = e32.astype(jnp.bfloat16)
  got = fn(low, jnp.asarray(labels), **options)
  assert got.dtype == jnp.float32, name
  want = fn(low.astype(jnp.float32), jnp.asarray(labels), **options)
  np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("name", IDS)
def test_no_valid_pair_gives_zero_and_zero_gradient(name):
  """All padding, one real row, and (for losses that need a negative) one class:
  dense and blockwise, one compiled function vmapped over the batches."""
  _, fn, options, needs_negative = _case(name)
  e = jnp.asarray(np.random.default_rng(1).normal(size=(3, 6, 3)), jnp.float32)
  labels = [[-1] * 6, [-1, -1, 3, -1, -1, -1], [2] * 6]
  if not needs_negative:
    e, labels = e[:2], labels[:2]
  labels = jnp.asarray(labels, jnp.int32)
  for block in (None, 4):

    def one(x, lab, block=block):
      values, vjp = jax.vjp(lambda y: fn(y, lab, block_size=block, **options), x)
      return values, vjp(jnp.ones_like(values))[0]

    values, grads = jax.jit(jax.vmap(one))(e, labels)
    np.testing.assert_array_equal(values, 0.0, err_msg=f"{name} {block}")
    np.testing.assert_array_equal(grads, 0.0, err_msg=f"{name} {block}")


@pytest.mark.parametrize("name", IDS)
def test_padding_is_inert_and_nan_in_a_real_row_is_loud(name):
  """A padding row holding NaN: the real rows' losses and gradients equal those of the
  batch without it, its own are 0. A NaN in a real row: the loss is not finite."""
  _, fn, options, _ = _case(name)
  e, labels = _batch()
  e[4] = np.nan  # row 4 is padding
  keep = np.flatnonzero(labels >= 0)
  for block in (None, 5):
    kw = dict(block_size=block, **options)
    got, grad = value_and_grad(fn, jnp.asarray(e, jnp.float32), labels, **kw)
    want, want_grad = value_and_grad(
      fn, jnp.asarray(e[keep], jnp.float32), labels[keep], **kw
    )
    assert_close(got[keep], want, 1e-5, f"{name} {block}")
    assert_close(grad[keep], want_grad, 1e-5, f"{name} {block}")
    assert got[4] == 0 and np.all(grad[4] == 0), name
    bad = e.copy()
    bad[0, 1] = np.nan  # row 0 is real (and the first of its class)
    values = fn(jnp.asarray(bad, jnp.float32), jnp.asarray(labels), **kw)
    assert not np.all(np.isfinite(values)), f"{name} {block}"


@pytest.mark.parametrize("name", [i for i in IDS if i not in NO_RING])
def test_ring_on_eight_devices_equals_dense(name):
  """3 anchors per device in blocks of 2 (the last block padded), candidates passed
  around the ring: the single-device dense loss of the whole batch."""
  _, fn, options, _ = _case(name)
  e, labels = _batch(n=24, classes=4, seed=5)
  e = jnp.asarray(e, jnp.float32)
  want, want_grad = value_and_grad(fn, e, labels, **options)
  ring = functools.partial(fn, block_size=2, ring=True, **options)
  got, grad = run_on_devices(ring, e, labels, mode="shard_map")
  assert_close(got, want, 1e-4, name)
  assert_close(grad, want_grad, 1e-4, name)


# Issue 15: an empty batch (n = 0) raises one error naming `embeddings`, in every
# batch-form and class loss, dense and blockwise; a traced hyperparameter or traced
# labels are checked under pairs.checked (checkify).
CLASS_LOSSES = [
  losses.arcface_loss,
  losses.cosface_loss,
  losses.normalized_softmax_loss,
  losses.proxy_anchor_loss,
  losses.proxy_nca_loss,
  losses.softmax_cross_entropy_loss,
]


@pytest.mark.parametrize("name", IDS)
def test_an_empty_batch_raises_naming_embeddings(name):
  _, loss, options, _ = CASES[IDS.index(name)]
  empty, no_labels = jnp.zeros((0, 4)), jnp.zeros((0,), jnp.int32)
  for block in ({}, {"block_size": 2}):
    with pytest.raises(ValueError, match="embeddings must hold at least one row"):
      loss(empty, no_labels, **options, **block)


def test_an_empty_batch_raises_naming_embeddings_in_class_losses():
  proxies = jnp.eye(3, 4)
  for loss in CLASS_LOSSES:
    with pytest.raises(ValueError, match="embeddings must hold at least one row"):
      loss(jnp.zeros((0, 4)), jnp.zeros((0,), jnp.int32), proxies)


def test_traced_hyperparameters_and_labels_are_checked_under_checked():
  from metriclearn import pairs

  e = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
  y = jnp.array([0, 0, 1, 1, 2, 2])
  for loss in (losses.ntxent_loss, losses.supcon_loss):
    f = jax.jit(pairs.checked(lambda e, y, t, loss=loss: loss(e, y, temperature=t)))
    err, _ = f(e, y, 0.0)
    assert "temperature must be > 0 (got 0.0)" in err.get()
    err, _ = f(e, y.at[0].set(-2), 0.5)
    assert "labels must be >= 0, or -1 for padding (got -2)" in err.get()
    err, out = f(e, y, 0.5)
    assert err.get() is None
    np.testing.assert_array_equal(out, loss(e, y, temperature=0.5))
  f = jax.jit(
    pairs.checked(
      lambda e, y, t: losses.normalized_softmax_loss(e, y, jnp.eye(3), temperature=t)
    )
  )
  assert "temperature must be > 0" in f(e, y, 0.0)[0].get()


def test_pair_losses_name_a_non_numeric_argument():
  with pytest.raises(TypeError, match="x1 must hold real numbers, got str"):
    losses.contrastive_loss("a", jnp.ones(2), True)

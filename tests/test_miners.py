"""Miners: NumPy loop references, worked examples, sampling statistics, devices,
gradients stopped, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from references import CASES, grid_batch, normal_batch, np_distance, np_pairs

from metriclearn import miners
from metriclearn.losses.triplet import batch_all_triplet_loss

# ----------------------------------------------------------------------------------
# Plain NumPy references, one pair at a time.


def _relations(x, labels, ref_x, ref_labels, positive_mask=None, distance="euclidean"):
  cands = x if ref_x is None else ref_x
  pos, neg = np_pairs(labels, ref_labels, positive_mask)
  if distance == "cosine_similarity":
    dist = np.array([[1.0 - np_distance(a, c, "cosine") for c in cands] for a in x])
  else:
    dist = np.array([[np_distance(a, c, distance) for c in cands] for a in x])
  return dist, pos, neg


def np_batch_hard_miner(x, labels, ref_x=None, ref_labels=None, *, positive_mask=None):
  dist, pos, neg = _relations(x, labels, ref_x, ref_labels, positive_mask)
  out = np.zeros_like(pos)
  for a in range(len(x)):
    if not (pos[a].any() and neg[a].any()):
      continue
    hardest_p = hardest_n = None
    for j in range(dist.shape[1]):  # the first of equal candidates wins
      if pos[a, j] and (hardest_p is None or dist[a, j] > dist[a, hardest_p]):
        hardest_p = j
      if neg[a, j] and (hardest_n is None or dist[a, j] < dist[a, hardest_n]):
        hardest_n = j
    out[a, hardest_p] = out[a, hardest_n] = True
  return out


def np_semi_hard_miner(
  x, labels, ref_x=None, ref_labels=None, *, positive_mask=None, margin=0.2
):
  """FaceNet: pairs of the triplets with d_ap < d_an < d_ap + margin (squared)."""
  dist, pos, neg = _relations(x, labels, ref_x, ref_labels, positive_mask)
  dist = dist**2
  out = np.zeros_like(pos)
  for a in range(len(x)):
    for p in np.flatnonzero(pos[a]):
      for q in np.flatnonzero(neg[a]):
        if dist[a, p] < dist[a, q] < dist[a, p] + margin:
          out[a, p] = out[a, q] = True
  return out


def np_multi_similarity_miner(
  x, labels, ref_x=None, ref_labels=None, *, positive_mask=None, epsilon=0.1
):
  """Wang et al. 2019, eqs. 8-9, on cosine similarities."""
  sim, pos, neg = _relations(
    x, labels, ref_x, ref_labels, positive_mask, "cosine_similarity"
  )
  out = np.zeros_like(pos)
  for a in range(len(x)):
    for j in range(sim.shape[1]):
      if neg[a, j]:  # more similar than the least similar positive, minus epsilon
        out[a, j] = any(sim[a, j] + epsilon > sim[a, p] for p in np.flatnonzero(pos[a]))
      if pos[a, j]:  # less similar than the most similar negative, plus epsilon
        out[a, j] = any(sim[a, j] - epsilon < sim[a, q] for q in np.flatnonzero(neg[a]))
  return out


def np_pair_margin_miner(
  x,
  labels,
  ref_x=None,
  ref_labels=None,
  *,
  positive_mask=None,
  pos_margin=0.2,
  neg_margin=0.8,
):
  dist, pos, neg = _relations(x, labels, ref_x, ref_labels, positive_mask)
  out = np.zeros_like(pos)
  for a in range(len(x)):
    for j in range(dist.shape[1]):
      out[a, j] = (pos[a, j] and dist[a, j] > pos_margin) or (
        neg[a, j] and dist[a, j] < neg_margin
      )
  return out


def np_distance_weights(
  x,
  labels,
  ref_x=None,
  ref_labels=None,
  *,
  positive_mask=None,
  cutoff=0.5,
  nonzero_loss_cutoff=1.4,
):
  """Wu et al. 2017: w = 1 / q(max(D, cutoff)) for negatives with D < 1.4, on the
  unit sphere; uniform over the negatives if none is that close."""
  unit = lambda v: np.asarray(v, np.float64) / np.linalg.norm(v)  # noqa: E731
  x = np.array([unit(v) for v in x])
  ref_x = None if ref_x is None else np.array([unit(v) for v in ref_x])
  dist, pos, neg = _relations(x, labels, ref_x, ref_labels, positive_mask)
  d = x.shape[1]
  out = np.zeros(dist.shape)
  for a in range(len(x)):
    for j in np.flatnonzero(neg[a]):
      if dist[a, j] < nonzero_loss_cutoff:
        c = max(dist[a, j], cutoff)
        q = c ** (d - 2) * (1 - c * c / 4) ** ((d - 3) / 2)  # density of distances
        out[a, j] = 1 / q
    if neg[a].any() and out[a].sum() == 0:
      out[a, neg[a]] = 1.0
    if out[a].sum() > 0:
      out[a] /= out[a].sum()
  return out


MINERS = {
  # name: (miner, reference, options)
  "batch_hard": (miners.batch_hard_miner, np_batch_hard_miner, {}),
  "semi_hard": (miners.semi_hard_miner, np_semi_hard_miner, {"margin": 2.3}),
  "multi_similarity": (
    miners.multi_similarity_miner,
    np_multi_similarity_miner,
    {"epsilon": 0.3137},  # no cosine difference of grid points is exactly this
  ),
  "pair_margin": (
    miners.pair_margin_miner,
    np_pair_margin_miner,
    {"pos_margin": 1.1, "neg_margin": 2.3},
  ),
}


@pytest.mark.parametrize("name", sorted(MINERS))
def test_masks_match_numpy_reference(name):
  miner, reference, opts = MINERS[name]
  for case, (x, labels, ref_x, ref_labels, extra) in CASES.items():
    want = reference(x, labels, ref_x, ref_labels, **extra, **opts)
    for dtype in (jnp.float32, jnp.float64):
      with jax.enable_x64(dtype == jnp.float64):
        ref = None if ref_x is None else ref_x.astype(dtype)
        got = miner(
          x.astype(dtype),
          labels,
          ref_embeddings=ref,
          ref_labels=ref_labels,
          **extra,
          **opts,
        )
        assert got.dtype == jnp.bool_ and got.shape == want.shape
        np.testing.assert_array_equal(got, want, err_msg=f"{case} {dtype}")
    assert want.any() and not want.all(), case  # the cases do select something


def test_distance_weighted_probabilities_match_reference():
  for case, (x, labels, ref_x, ref_labels, extra) in CASES.items():
    for opts in ({}, {"cutoff": 0.8, "nonzero_loss_cutoff": 1.2}):
      want = np_distance_weights(x, labels, ref_x, ref_labels, **extra, **opts)
      for dtype, rtol in ((jnp.float32, 1e-4), (jnp.float64, 1e-5)):
        with jax.enable_x64(dtype == jnp.float64):
          ref = None if ref_x is None else ref_x.astype(dtype)
          got = miners.distance_weighted_probabilities(
            x.astype(dtype),
            labels,
            ref_embeddings=ref,
            ref_labels=ref_labels,
            **extra,
            **opts,
          )
          np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-7, err_msg=case)


# ----------------------------------------------------------------------------------
# Worked examples.

# 1-D points 0, 0.5, 0.4, 0.9, 0.3 with labels 0, 0, 1, 1, 0. From anchor 0:
#   positives 1 (0.5), 4 (0.3); negatives 2 (0.4), 3 (0.9)
TOY_X = jnp.array([[0.0], [0.5], [0.4], [0.9], [0.3]])
TOY_LABELS = jnp.array([0, 0, 1, 1, 0])


def test_worked_examples():
  # batch hard: hardest positive 1 (0.5 > 0.3), hardest negative 2 (0.4 < 0.9)
  got = miners.batch_hard_miner(TOY_X, TOY_LABELS)
  np.testing.assert_array_equal(got[0], [False, True, True, False, False])
  # semi-hard, squared, margin 0.2: positives at 0.25, 0.09; negatives at 0.16, 0.81.
  # 0.09 < 0.16 < 0.29: (4, 2) is semi-hard; 0.81 is beyond both; 0.16 < 0.25
  got = miners.semi_hard_miner(TOY_X, TOY_LABELS)
  np.testing.assert_array_equal(got[0], [False, False, True, False, True])
  # pair margin 0.2 / 0.8: positives 0.5, 0.3 > 0.2 kept; negative 0.4 < 0.8 kept,
  # 0.9 dropped
  got = miners.pair_margin_miner(TOY_X, TOY_LABELS)
  np.testing.assert_array_equal(got[0], [False, True, True, False, True])
  # multi-similarity on 2-D unit vectors at angles 0, 60, 30, 90, 45 degrees:
  # S from anchor 0: positives cos 60 = 0.5, cos 45 = 0.7071; negatives
  # cos 30 = 0.8660, cos 90 = 0. Positive kept if S - 0.1 < 0.8660: both. Negative
  # kept if S + 0.1 > 0.5: 0.8660 yes, 0 no
  angles = np.radians([0, 60, 30, 90, 45])
  x = jnp.asarray(np.stack([np.cos(angles), np.sin(angles)], axis=1), jnp.float32)
  got = miners.multi_similarity_miner(x, TOY_LABELS)
  np.testing.assert_array_equal(got[0], [False, True, True, False, True])
  # epsilon 0.45: negative 0 + 0.45 > 0.5 still no; epsilon 0.55: yes
  got = miners.multi_similarity_miner(x, TOY_LABELS, epsilon=0.55)
  np.testing.assert_array_equal(got[0], [False, True, True, True, True])


def test_distance_weighted_worked_example():
  # d = 3: w(D) = 1 / (D^(d-2) (1 - D^2/4)^0) = 1 / D for D in [0.5, 1.4)
  # anchor e1 against negatives at angles 60 and 30 degrees on the unit circle and
  # one at 180 (D = 2 >= 1.4, weight 0):
  #   D60 = 2 sin 30 = 1, D30 = 2 sin 15 = 0.517638; weights 1 and 1.931852
  #   probabilities 1 / 2.931852 = 0.341081 and 0.658919
  angles = np.radians([0, 60, 30, 180])
  x = np.stack([np.cos(angles), np.sin(angles), np.zeros(4)], axis=1)
  got = miners.distance_weighted_probabilities(x, jnp.array([0, 1, 2, 3]))
  np.testing.assert_allclose(got[0], [0, 0.341081, 0.658919, 0], rtol=1e-5, atol=1e-7)
  # cutoff 0.6: D30 counts as 0.6, weight 1 / 0.6: probabilities 0.375, 0.625
  got = miners.distance_weighted_probabilities(x, jnp.array([0, 1, 2, 3]), cutoff=0.6)
  np.testing.assert_allclose(got[0], [0, 0.375, 0.625, 0], rtol=1e-5, atol=1e-7)
  # every negative too far: uniform over the negatives (here 3 and the others)
  got = miners.distance_weighted_probabilities(
    x, jnp.array([0, 1, 2, 3]), nonzero_loss_cutoff=0.1
  )
  np.testing.assert_allclose(got[0], [0, 1 / 3, 1 / 3, 1 / 3], rtol=1e-6)


# ----------------------------------------------------------------------------------
# Distance-weighted sampling.


def test_distance_weighted_sampling_frequencies():
  x, labels = normal_batch(20, 12, 4, 3)
  probabilities = np.asarray(miners.distance_weighted_probabilities(x, labels))
  positive, _ = np_pairs(labels)
  draws = 2000
  keys = jax.random.split(jax.random.key(0), draws)
  sample = jax.jit(jax.vmap(lambda k: miners.distance_weighted_miner(x, labels, k)))(
    keys
  )  # [draws, n, m]
  sample = np.asarray(sample)
  assert np.all(sample[:, positive]), "every positive pair is kept"
  negatives = sample & ~positive
  np.testing.assert_array_equal(negatives.sum(axis=2), 1)  # one negative per anchor
  # frequencies within 5 standard errors (sqrt(p (1 - p) / 2000) <= 0.0112)
  frequencies = negatives.mean(axis=0)
  np.testing.assert_allclose(frequencies, probabilities, atol=0.056)
  assert not np.any(negatives[:, probabilities == 0]), "never outside the support"


def test_distance_weighted_several_negatives():
  x, labels = normal_batch(21, 12, 4, 3)
  labels[3] = -1
  support = np.asarray(miners.distance_weighted_probabilities(x, labels)) > 0
  positive, _ = np_pairs(labels)
  for k in (1, 3, 12):
    got = np.asarray(
      miners.distance_weighted_miner(x, labels, jax.random.key(k), num_negatives=k)
    )
    negatives = got & ~positive
    np.testing.assert_array_equal(got & positive, positive)
    assert not np.any(negatives & ~support)
    np.testing.assert_array_equal(
      negatives.sum(axis=1), np.minimum(k, support.sum(axis=1))
    )
  # a different key draws differently; the same key the same
  a = miners.distance_weighted_miner(x, labels, jax.random.key(1))
  b = miners.distance_weighted_miner(x, labels, jax.random.key(2))
  c = miners.distance_weighted_miner(x, labels, jax.random.key(1))
  assert np.any(a != b) and np.all(a == c)


# ----------------------------------------------------------------------------------
# Degenerate batches, gradients, jit, devices.

ALL = {
  name: functools.partial(miner, **opts) for name, (miner, _, opts) in MINERS.items()
}
ALL["distance_weighted"] = lambda e, labels, **kw: miners.distance_weighted_miner(
  e, labels, jax.random.key(3), **kw
)


def test_degenerate_batches():
  x = jax.random.normal(jax.random.key(0), (12, 4))
  for labels in ([3] * 12, list(range(12)), [-1] * 12):
    labels = jnp.array(labels)
    positive, negative = np_pairs(np.asarray(labels))
    for name, miner in ALL.items():
      got = np.asarray(miner(x, labels))
      assert not np.any(got & ~(positive | negative)), name  # real pairs only
      if name in ("batch_hard", "semi_hard", "multi_similarity"):
        assert not got.any(), name  # these need a positive and a negative


def test_jit_equals_eager_and_gradients_are_stopped():
  x, labels = grid_batch(30, 12, 4, 3, pad=1, duplicates=1)
  x = jnp.asarray(x, jnp.float32)
  for name, miner in ALL.items():
    np.testing.assert_array_equal(jax.jit(miner)(x, labels), miner(x, labels), name)
  # a loss given a miner's mask has the gradient of the loss with that mask fixed
  mask = miners.multi_similarity_miner(x, labels)

  def loss(e, mask):
    return batch_all_triplet_loss(e, labels, mask=mask).sum()

  mined = jax.jit(jax.grad(lambda e: loss(e, miners.multi_similarity_miner(e, labels))))
  np.testing.assert_array_equal(mined(x), jax.jit(jax.grad(loss))(x, mask))
  # the sampling weights carry no gradient
  weight = lambda e: miners.distance_weighted_probabilities(e, labels)[0, 1]  # noqa: E731
  np.testing.assert_array_equal(jax.jit(jax.grad(weight))(x), 0.0)


def _mask_on_devices(miner, x, labels, mode):
  k = jax.device_count()
  n = len(x)
  local = lambda e, lab: miner(e, lab, axis_name="i")  # noqa: E731
  if mode == "pmap":
    out = jax.pmap(local, "i")(x.reshape(k, n // k, -1), labels.reshape(k, -1))
    return out.reshape(n, -1)
  mesh = Mesh(np.array(jax.devices()), ("i",))
  sharded = jax.shard_map(local, mesh=mesh, in_specs=(P("i"), P("i")), out_specs=P("i"))
  return jax.jit(sharded)(x, labels)


@pytest.mark.parametrize("name", sorted(ALL))
def test_axis_name_rows_equal_single_device(name):
  x, labels = grid_batch(31, 16, 4, 4, pad=2, duplicates=2)
  x, labels = jnp.asarray(x, jnp.float32), jnp.asarray(labels)
  want = ALL[name](x, labels)
  assert want.any()
  for mode in ("pmap", "shard_map"):
    np.testing.assert_array_equal(_mask_on_devices(ALL[name], x, labels, mode), want)


# ----------------------------------------------------------------------------------
# Errors.


def test_bad_input_raises_at_trace_time():
  x, labels = jnp.zeros((4, 2)), jnp.array([0, 0, 1, 1])
  for miner in ALL.values():
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
      jax.jit(miner)(x, jnp.array([0, 1, 1]))
    with pytest.raises(TypeError, match="labels must be integers"):
      miner(x, jnp.array([0.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"embeddings must be 2-D.*\(4,\)"):
      miner(jnp.zeros(4), labels)
    with pytest.raises(ValueError, match=r"mask must have shape \(4, 4\)"):
      miner(x, labels, mask=jnp.ones((4, 5), bool))
    with pytest.raises(ValueError, match=r"ref_embeddings and ref_labels"):
      miner(x, labels, ref_embeddings=x)
  for miner, option in (
    (miners.semi_hard_miner, "margin"),
    (miners.multi_similarity_miner, "epsilon"),
    (miners.pair_margin_miner, "pos_margin"),
    (miners.pair_margin_miner, "neg_margin"),
  ):
    with pytest.raises(ValueError, match=f"{option} must be >= 0"):
      miner(x, labels, **{option: -0.1})
  for option in ("cutoff", "nonzero_loss_cutoff"):
    with pytest.raises(ValueError, match=f"{option} must be > 0"):
      miners.distance_weighted_probabilities(x, labels, **{option: 0.0})
  with pytest.raises(ValueError, match="num_negatives must be an int >= 1"):
    miners.distance_weighted_miner(x, labels, jax.random.key(0), num_negatives=0)
  with pytest.raises(ValueError, match="squared"):
    miners.semi_hard_miner(x, labels, distance="squared_euclidean")

"""Triplet losses: hand arithmetic, NumPy loop references from the papers' formulas,
gradients, degenerate batches, devices, errors, and miner masks fed to the losses."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from device_utils import assert_matches_single_device
from jax.test_util import check_grads
from references import CASES, grid_batch, np_distance, np_pairs

from metriclearn import miners
from metriclearn.losses.triplet import (
  batch_all_triplet_loss,
  batch_hard_triplet_loss,
  semi_hard_triplet_loss,
  triplet_margin_loss,
)

# ----------------------------------------------------------------------------------
# Plain NumPy references, written from the papers' formulas with loops.


def np_triplet(d_ap, d_an, margin, soft):
  x = margin + d_ap - d_an
  return math.log1p(math.exp(x)) if soft else max(x, 0.0)


def _setup(x, labels, ref_x, ref_labels, positive_mask, mask, distance, squared):
  cands = x if ref_x is None else ref_x
  pos, neg = np_pairs(labels, ref_labels, positive_mask, mask)
  dist = np.array([[np_distance(a, c, distance, squared) for c in cands] for a in x])
  return dist, pos, neg


def np_batch_all(
  x,
  labels,
  ref_x=None,
  ref_labels=None,
  *,
  positive_mask=None,
  mask=None,
  margin=None,
  distance="euclidean",
  squared=False,
  soft=False,
  average="anchor",
):
  """Hermans et al.'s batch all, averaged over the triplets with a positive loss."""
  margin = (0.0 if soft else 0.2) if margin is None else margin
  dist, pos, neg = _setup(
    x, labels, ref_x, ref_labels, positive_mask, mask, distance, squared
  )
  n, m = dist.shape
  total, active = np.zeros(n), np.zeros(n)
  for a in range(n):
    for p in range(m):
      for q in range(m):
        if pos[a, p] and neg[a, q]:
          loss = np_triplet(dist[a, p], dist[a, q], margin, soft)
          total[a] += loss
          active[a] += loss > 0
  if average == "anchor":
    return np.array([t / c if c else 0.0 for t, c in zip(total, active, strict=True)])
  return total * n / max(active.sum(), 1)  # mean over anchors = sum / #active


def np_batch_hard(
  x,
  labels,
  ref_x=None,
  ref_labels=None,
  *,
  positive_mask=None,
  mask=None,
  margin=None,
  distance="euclidean",
  squared=False,
  soft=False,
):
  """Hermans et al.'s batch hard: hardest positive, hardest negative per anchor."""
  margin = (0.0 if soft else 0.2) if margin is None else margin
  dist, pos, neg = _setup(
    x, labels, ref_x, ref_labels, positive_mask, mask, distance, squared
  )
  out = np.zeros(len(x))
  for a in range(len(x)):
    if pos[a].any() and neg[a].any():
      hardest_p = max(dist[a, p] for p in range(dist.shape[1]) if pos[a, p])
      hardest_n = min(dist[a, q] for q in range(dist.shape[1]) if neg[a, q])
      out[a] = np_triplet(hardest_p, hardest_n, margin, soft)
  return out


def np_semi_hard(
  x,
  labels,
  ref_x=None,
  ref_labels=None,
  *,
  positive_mask=None,
  mask=None,
  margin=None,
  distance="euclidean",
  squared=True,
  soft=False,
  average="anchor",
):
  """TF-addons' triplet_semihard_loss: per positive pair, the closest negative
  farther than the positive, else the farthest negative."""
  margin = (0.0 if soft else 0.2) if margin is None else margin
  dist, pos, neg = _setup(
    x, labels, ref_x, ref_labels, positive_mask, mask, distance, squared
  )
  n, m = dist.shape
  total, count = np.zeros(n), np.zeros(n)
  for a in range(n):
    negatives = [dist[a, q] for q in range(m) if neg[a, q]]
    if not negatives:
      continue
    for p in range(m):
      if not pos[a, p]:
        continue
      farther = [d for d in negatives if d > dist[a, p]]
      d_an = min(farther) if farther else max(negatives)
      total[a] += np_triplet(dist[a, p], d_an, margin, soft)
      count[a] += 1
  if average == "anchor":
    return np.array([t / c if c else 0.0 for t, c in zip(total, count, strict=True)])
  return total * n / max(count.sum(), 1)


# ----------------------------------------------------------------------------------

OPTIONS = {
  "batch_all": (
    batch_all_triplet_loss,
    np_batch_all,
    [
      {},
      {"average": "batch"},
      {"soft": True},
      {"squared": True, "margin": 0.7, "average": "batch"},
      {"distance": "cosine", "margin": 0.1},
    ],
  ),
  "batch_hard": (
    batch_hard_triplet_loss,
    np_batch_hard,
    [{}, {"soft": True}, {"squared": True, "margin": 0.3}, {"distance": "cosine"}],
  ),
  "semi_hard": (
    semi_hard_triplet_loss,
    np_semi_hard,
    [{}, {"average": "batch"}, {"squared": False, "soft": True, "margin": 0.1}],
  ),
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_matches_numpy_reference(name):
  loss_fn, reference, options = OPTIONS[name]
  # every case with the default options, every option on two of the cases
  names = list(CASES)
  runs = [(case, {}) for case in names]
  runs += [
    (names[(2 * i + k) % len(names)], opts)
    for i, opts in enumerate(options[1:])
    for k in (1, 2)
  ]
  for case, opts in runs:
    x, labels, ref_x, ref_labels, extra = CASES[case]
    want = reference(x, labels, ref_x, ref_labels, **extra, **opts)
    for dtype, rtol, atol in ((jnp.float32, 1e-4, 1e-6), (jnp.float64, 1e-5, 1e-9)):
      with jax.enable_x64(dtype == jnp.float64):
        ref = None if ref_x is None else ref_x.astype(dtype)
        got = loss_fn(
          x.astype(dtype),
          labels,
          ref_embeddings=ref,
          ref_labels=ref_labels,
          **extra,
          **opts,
        )
        assert got.dtype == dtype and got.shape == (len(x),)
        np.testing.assert_allclose(
          got, want, rtol=rtol, atol=atol, err_msg=f"{case} {opts} {dtype}"
        )


# ----------------------------------------------------------------------------------
# Worked examples.


def test_triplet_form_worked_examples():
  a, p, n = jnp.zeros(2), jnp.array([0.3, 0.4]), jnp.array([0.0, 0.6])
  # |a - p| = 0.5, |a - n| = 0.6
  # FaceNet (default): 0.5^2 - 0.6^2 + 0.2 = 0.25 - 0.36 + 0.2 = 0.09
  np.testing.assert_allclose(triplet_margin_loss(a, p, n), 0.09, rtol=1e-5)
  # not squared: 0.5 - 0.6 + 0.2 = 0.1
  np.testing.assert_allclose(
    triplet_margin_loss(a, p, n, squared=False), 0.1, rtol=1e-5
  )
  # Hermans' soft margin: log(1 + e^(0.5 - 0.6)) = log(1.9048374) = 0.6443967
  got = triplet_margin_loss(a, p, n, squared=False, soft=True)
  np.testing.assert_allclose(got, 0.6443967, rtol=1e-6)
  # pytorch-metric-learning's smooth_loss, margin 0.2: log(1 + e^0.1) = 0.7443967
  got = triplet_margin_loss(a, p, n, squared=False, soft=True, margin=0.2)
  np.testing.assert_allclose(got, 0.7443967, rtol=1e-6)
  # the negative far away: 0.25 - 1.0 + 0.2 < 0 -> 0
  assert float(triplet_margin_loss(a, p, jnp.array([0.6, 0.8]))) == 0.0
  # cosine: a = e1, p at cos 0.6 (D = 0.4), n = e2 (D = 1): 0.7 + 0.4 - 1 = 0.1
  e1, e2 = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
  got = triplet_margin_loss(
    e1, jnp.array([0.6, 0.8]), e2, distance="cosine", squared=False, margin=0.7
  )
  np.testing.assert_allclose(got, 0.1, rtol=1e-5)
  # squared cosine: 0.7 + 0.16 - 1 < 0 -> 0
  got = triplet_margin_loss(
    e1, jnp.array([0.6, 0.8]), e2, distance="cosine", margin=0.7
  )
  assert float(got) == 0.0


# 1-D points 0, 0.5, 0.4, 0.9 with labels 0, 0, 1, 1. Distances:
#   d01 = 0.5, d02 = 0.4, d03 = 0.9, d12 = 0.1, d13 = 0.4, d23 = 0.5
TOY_X = jnp.array([[0.0], [0.5], [0.4], [0.9]])
TOY_LABELS = jnp.array([0, 0, 1, 1])


def test_batch_all_worked_example():
  # margin 0.2, Euclidean. Triplet losses (anchor: positive; negatives):
  #   0: p1 0.5; n2 0.4 -> 0.3, n3 0.9 -> 0      sum 0.3, 1 active -> 0.3
  #   1: p0 0.5; n2 0.1 -> 0.6, n3 0.4 -> 0.3    sum 0.9, 2 active -> 0.45
  #   2: p3 0.5; n0 0.4 -> 0.3, n1 0.1 -> 0.6    sum 0.9, 2 active -> 0.45
  #   3: p2 0.5; n0 0.9 -> 0,   n1 0.4 -> 0.3    sum 0.3, 1 active -> 0.3
  got = batch_all_triplet_loss(TOY_X, TOY_LABELS)
  np.testing.assert_allclose(got, [0.3, 0.45, 0.45, 0.3], rtol=1e-5)
  # batch average over the 6 active triplets: 2.4 / 6 = 0.4; each anchor holds
  # 4 * sum / 6: 0.2, 0.6, 0.6, 0.2, whose mean is 0.4
  got = batch_all_triplet_loss(TOY_X, TOY_LABELS, average="batch")
  np.testing.assert_allclose(got, [0.2, 0.6, 0.6, 0.2], rtol=1e-5)
  np.testing.assert_allclose(got.mean(), 0.4, rtol=1e-5)


def test_batch_hard_worked_example():
  # hardest positive / hardest negative: 0: 0.5 / 0.4; 1: 0.5 / 0.1; 2: 0.5 / 0.1;
  # 3: 0.5 / 0.4
  got = batch_hard_triplet_loss(TOY_X, TOY_LABELS)  # 0.2 + 0.5 - 0.4, 0.2 + 0.5 - 0.1
  np.testing.assert_allclose(got, [0.3, 0.6, 0.6, 0.3], rtol=1e-5)
  # soft margin: log(1 + e^0.1) = 0.7443967, log(1 + e^0.4) = 0.9130153
  got = batch_hard_triplet_loss(TOY_X, TOY_LABELS, soft=True)
  np.testing.assert_allclose(got, [0.7443967, 0.9130153, 0.9130153, 0.7443967], 1e-6)


def test_semi_hard_worked_example():
  # squared (default): positives at 0.25. Negatives of 0: 0.16, 0.81 -> closest
  # farther 0.81: 0.2 + 0.25 - 0.81 < 0 -> 0. Of 1: 0.01, 0.16, none farther ->
  # farthest 0.16: 0.2 + 0.25 - 0.16 = 0.29. Of 2: 0.16, 0.01 -> 0.29. Of 3: 0.81,
  # 0.16 -> 0.81 -> 0
  got = semi_hard_triplet_loss(TOY_X, TOY_LABELS)
  np.testing.assert_allclose(got, [0.0, 0.29, 0.29, 0.0], rtol=1e-5, atol=1e-7)
  # not squared: 0: closest farther than 0.5 is 0.9 -> 0; 1: farthest 0.4 ->
  # 0.2 + 0.5 - 0.4 = 0.3; 2: farthest 0.4 -> 0.3; 3: 0.9 -> 0
  got = semi_hard_triplet_loss(TOY_X, TOY_LABELS, squared=False)
  np.testing.assert_allclose(got, [0.0, 0.3, 0.3, 0.0], rtol=1e-5, atol=1e-7)
  # anchor 0 with two positives: 0.5 (-> 0 as above) and 0.3 (negatives farther
  # than 0.3: 0.4, 0.9 -> 0.4: 0.2 + 0.3 - 0.4 = 0.1); mean (0 + 0.1) / 2 = 0.05
  x = jnp.array([[0.0], [0.5], [0.4], [0.9], [0.3]])
  got = semi_hard_triplet_loss(x, jnp.array([0, 0, 1, 1, 0]), squared=False)
  np.testing.assert_allclose(got[0], 0.05, rtol=1e-5)


# ----------------------------------------------------------------------------------
# Triplet form against batch form; miner masks.


def test_vmapped_triplet_form_equals_batch_all_on_triplet_list():
  x, labels = grid_batch(8, 10, 3, 3, pad=1, duplicates=1)
  pos, neg = np_pairs(labels)
  triplets = np.array(
    [
      (a, p, q)
      for a in range(10)
      for p in range(10)
      for q in range(10)
      if pos[a, p] and neg[a, q]
    ]
  )
  for opts in ({"squared": False}, {"squared": True, "soft": True}):
    per_triplet = jax.vmap(functools.partial(triplet_margin_loss, **opts))(
      x[triplets[:, 0]], x[triplets[:, 1]], x[triplets[:, 2]]
    )
    per_triplet = np.asarray(per_triplet)
    sums = np.bincount(triplets[:, 0], per_triplet, minlength=10)
    active = np.bincount(triplets[:, 0], per_triplet > 0, minlength=10)
    want = np.where(active > 0, sums / np.maximum(active, 1), 0.0)
    got = batch_all_triplet_loss(x, labels, **opts)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # the paper's batch average over the active triplets
    got = batch_all_triplet_loss(x, labels, average="batch", **opts).mean()
    np.testing.assert_allclose(got, per_triplet.sum() / (per_triplet > 0).sum(), 1e-5)


def test_miner_masks_change_the_loss_as_the_reference_says():
  x, labels = grid_batch(9, 12, 4, 3, pad=1, duplicates=1)
  mined = {
    "pair_margin": miners.pair_margin_miner(x, labels, pos_margin=1.0, neg_margin=2.0),
    "multi_similarity": miners.multi_similarity_miner(x, labels),
    "semi_hard": miners.semi_hard_miner(x, labels),
    "distance_weighted": miners.distance_weighted_miner(x, labels, jax.random.key(0)),
  }
  for miner_name, mask in mined.items():
    mask, changed = np.asarray(mask), []
    for loss_fn, reference, options in OPTIONS.values():
      want = reference(x, labels, mask=mask, **options[0])
      np.testing.assert_allclose(
        loss_fn(x, labels, mask=mask), want, rtol=1e-4, atol=1e-6, err_msg=miner_name
      )
      changed.append(not np.allclose(want, reference(x, labels, **options[0])))
    assert any(changed), miner_name


def test_batch_hard_miner_makes_batch_all_batch_hard():
  x, labels = grid_batch(10, 12, 4, 3, pad=2)
  mask = miners.batch_hard_miner(x, labels)
  for opts in ({}, {"soft": True}):
    np.testing.assert_allclose(
      batch_all_triplet_loss(x, labels, mask=mask, **opts),
      batch_hard_triplet_loss(x, labels, **opts),
      rtol=1e-5,
      atol=1e-7,
    )


# ----------------------------------------------------------------------------------
# Gradients, degenerate batches, magnitudes, dtypes.

LOSSES = {
  "batch_all": batch_all_triplet_loss,
  "batch_all_soft_batch": functools.partial(
    batch_all_triplet_loss, soft=True, average="batch"
  ),
  "batch_hard": batch_hard_triplet_loss,
  "batch_hard_soft": functools.partial(batch_hard_triplet_loss, soft=True),
  "semi_hard": semi_hard_triplet_loss,
  "semi_hard_cosine": functools.partial(
    semi_hard_triplet_loss, distance="cosine", squared=False, average="batch"
  ),
}


@functools.cache
def value_and_grad(name):
  """jit(value_and_grad) of the summed losses, compiled once per loss and shape."""
  loss_fn = LOSSES[name]
  return jax.jit(jax.value_and_grad(lambda e, labels: loss_fn(e, labels).sum()))


def test_check_grads():
  with jax.enable_x64(True):
    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.normal(size=(8, 3)))
    labels = jnp.array([0, 0, 1, 1, 2, 2, 0, -1])

    def every_loss(e):  # one compiled function for all the batch forms
      return jnp.stack([f(e, labels) for f in LOSSES.values()])

    check_grads(jax.jit(every_loss), (x,), order=1, modes=["rev"], eps=1e-6)

    def every_triplet_form(a, p, n):
      return jnp.stack(
        [
          triplet_margin_loss(a, p, n, margin=2.0, **opts)
          for opts in ({}, {"squared": False, "soft": True}, {"distance": "cosine"})
        ]
      )

    check_grads(
      jax.jit(every_triplet_form), (x[0], x[1], x[2]), 1, modes=["rev"], eps=1e-6
    )


@pytest.mark.parametrize(
  "labels",
  [[3] * 12, list(range(12)), [-1] * 12, [0, -1, 1, -1, 2, -1, 3, -1, 4, -1, 5, -1]],
  ids=["one class", "all distinct", "all padding", "singletons and padding"],
)
def test_no_valid_triplet_gives_zero_and_zero_gradient(labels):
  labels = jnp.array(labels)
  x = jax.random.normal(jax.random.key(0), (12, 4))
  x = x.at[1].set(x[0])  # identical points too
  for name in LOSSES:
    value, grad = value_and_grad(name)(x, labels)
    assert float(value) == 0.0, name
    np.testing.assert_array_equal(grad, 0.0, err_msg=name)


def test_identical_points_and_large_norms_are_finite():
  labels = jnp.array([0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 4, -1])
  collapsed = jnp.ones((12, 4))  # every distance 0 (a collapsed model)
  large = 1e3 * jax.random.normal(jax.random.key(1), (12, 4))
  for x in (collapsed, large):
    for name in LOSSES:
      value, grad = value_and_grad(name)(x, labels)
      assert np.isfinite(value) and np.all(np.isfinite(grad)), name
      np.testing.assert_array_equal(grad[-1], 0.0, err_msg=name)  # padding row
      if x is large:
        assert np.abs(np.asarray(grad)).sum() > 0, name
  # collapsed: every triplet costs exactly the margin 0.2 (soft: log 2)
  want = np.where(labels >= 0, 0.2, 0.0)
  np.testing.assert_allclose(batch_hard_triplet_loss(collapsed, labels), want)
  np.testing.assert_allclose(
    LOSSES["batch_hard_soft"](collapsed, labels), want / 0.2 * math.log(2)
  )
  # large: with margin 0.2 the loss is the distance gap itself, of order 1e3
  got = batch_hard_triplet_loss(large, labels)
  want = np_batch_hard(np.asarray(large, np.float64), np.asarray(labels))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-2)


def test_jit_equals_eager_and_bfloat16_is_computed_in_float32():
  x, labels = grid_batch(12, 12, 4, 3, pad=1, duplicates=1)
  x = jnp.asarray(x, jnp.float32)
  for name, loss_fn in LOSSES.items():
    eager = loss_fn(x, labels)
    np.testing.assert_allclose(
      jax.jit(loss_fn)(x, labels), eager, rtol=1e-6, err_msg=name
    )
    low = loss_fn(x.astype(jnp.bfloat16), labels)  # grid values are exact in bfloat16
    assert low.dtype == jnp.float32, name
    np.testing.assert_allclose(low, eager, rtol=1e-6, err_msg=name)
  # the triplet form under jit and vmap
  fn = jax.jit(jax.vmap(triplet_margin_loss))
  np.testing.assert_allclose(
    fn(x[:4], x[4:8], x[8:]),
    [float(triplet_margin_loss(x[i], x[4 + i], x[8 + i])) for i in range(4)],
    rtol=1e-6,
  )


# ----------------------------------------------------------------------------------
# Devices.


@pytest.mark.parametrize(
  "name", ["batch_all_soft_batch", "batch_hard", "semi_hard_cosine"]
)
def test_axis_name_matches_single_device(name):
  rng = np.random.default_rng(13)
  x = jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, size=16)).at[5].set(-1)
  loss_fn = jax.jit(LOSSES[name], static_argnames="axis_name")  # compiled, not eager
  assert_matches_single_device(loss_fn, x, labels, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------
# Errors.


def test_bad_input_raises_at_trace_time():
  x, labels = jnp.zeros((4, 2)), jnp.array([0, 0, 1, 1])
  for loss_fn in (
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    semi_hard_triplet_loss,
  ):
    jitted = jax.jit(loss_fn)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
      jitted(x, jnp.array([0, 1, 1]))
    with pytest.raises(TypeError, match="labels must be integers"):
      loss_fn(x, jnp.array([0.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"embeddings must be 2-D.*\(4,\)"):
      loss_fn(jnp.zeros(4), labels)
    with pytest.raises(ValueError, match=r"mask must have shape \(4, 4\)"):
      loss_fn(x, labels, mask=jnp.ones((4, 3), bool))
    with pytest.raises(ValueError, match="margin must be >= 0"):
      loss_fn(x, labels, margin=-0.1)
    with pytest.raises(ValueError, match="margin must be >= 0"):
      jax.jit(lambda e, f=loss_fn: f(e, labels, margin=-1.0))(x)
    with pytest.raises(ValueError, match="squared"):
      loss_fn(x, labels, distance="squared_euclidean", squared=True)
    with pytest.raises(ValueError, match="distance must be one of"):
      loss_fn(x, labels, distance="manhattan")
  for loss_fn in (batch_all_triplet_loss, semi_hard_triplet_loss):
    with pytest.raises(ValueError, match="average must be one of"):
      loss_fn(x, labels, average="mean")
  with pytest.raises(
    ValueError, match=r"anchor, positive and negative.*\(2,\), \(3,\)"
  ):
    triplet_margin_loss(jnp.zeros(2), jnp.zeros(3), jnp.zeros(2))
  with pytest.raises(ValueError, match="1-D embeddings"):
    triplet_margin_loss(x, x, x)
  with pytest.raises(ValueError, match="margin must be >= 0"):
    triplet_margin_loss(jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), margin=-0.5)


# ----------------------------------------------------------------------------------
# The distance swap (Balntas et al. 2016): min(D(a, n), D(p, n)) for D(a, n).


def np_batch_all_swap(x, labels, ref_x=None, ref_labels=None, *, margin=0.2, **kw):
  """Every triplet, the positive's distance to the negative when it is smaller."""
  mask = kw.get("mask")
  dist, pos, neg = _setup(x, labels, ref_x, ref_labels, None, mask, "euclidean", False)
  cands = x if ref_x is None else ref_x
  n, m = dist.shape
  total, active = np.zeros(n), np.zeros(n)
  for a in range(n):
    for p in range(m):
      for q in range(m):
        if pos[a, p] and neg[a, q]:
          d_an = min(dist[a, q], np_distance(cands[p], cands[q]))
          loss = max(0.0, margin + dist[a, p] - d_an)
          total[a] += loss
          active[a] += loss > 0
  return np.array([t / c if c else 0.0 for t, c in zip(total, active, strict=True)])


def np_batch_hard_swap(x, labels, *, margin=0.2):
  """The hardest positive p* (the first among ties), then the nearest negative to
  the anchor or to p*."""
  dist, pos, neg = _setup(x, labels, None, None, None, None, "euclidean", False)
  out = np.zeros(len(x))
  for a in range(len(x)):
    if pos[a].any() and neg[a].any():
      p_star = max(np.flatnonzero(pos[a]), key=lambda p: (dist[a, p], -p))
      d_an = min(
        min(dist[a, q], np_distance(x[p_star], x[q])) for q in np.flatnonzero(neg[a])
      )
      out[a] = max(0.0, margin + dist[a, p_star] - d_an)
  return out


def test_triplet_form_swap():
  a, p, n = jnp.zeros(2), jnp.array([0.3, 0.4]), jnp.array([0.0, 0.6])
  # |a - p|^2 = 0.25, |a - n|^2 = 0.36, |p - n|^2 = 0.09 + 0.04 = 0.13:
  # 0.25 - min(0.36, 0.13) + 0.2 = 0.32
  np.testing.assert_allclose(triplet_margin_loss(a, p, n, swap=True), 0.32, rtol=1e-5)
  # the anchor nearer the negative: no change (0.09 as without the swap)
  far = jnp.array([0.0, -0.6])  # |p - far|^2 = 0.09 + 1 = 1.09 > 0.36
  np.testing.assert_allclose(
    triplet_margin_loss(a, p, far, swap=True), triplet_margin_loss(a, p, far)
  )


def test_batch_swap_matches_numpy_reference():
  """Every form of batch-all (every triplet dense, blocks of anchors, k slots dense
  and blockwise, with the fallback) and batch-hard, against the loops."""
  names = list(CASES)
  with jax.enable_x64(True):
    for case in names[:3] + ["memory bank"]:
      x, labels, ref_x, ref_labels, extra = CASES[case]
      kw = dict(ref_embeddings=ref_x, ref_labels=ref_labels)
      want = np_batch_all_swap(x, labels, ref_x, ref_labels)
      assert np.count_nonzero(want) > 2, case
      for opts in ({}, {"block_size": 5}, {"max_positives": 3}):
        got = batch_all_triplet_loss(x, labels, swap=True, **kw, **opts)
        np.testing.assert_allclose(got, want, 1e-5, 1e-9, err_msg=f"{case} {opts}")
    x, labels = CASES["2 classes"][:2]
    got = batch_all_triplet_loss(x, labels, swap=True, max_positives=11, block_size=4)
    np.testing.assert_allclose(got, np_batch_all_swap(x, labels), 1e-5, 1e-9)
    mask = np.random.default_rng(0).random((12, 12)) < 0.7
    got = batch_all_triplet_loss(x, labels, swap=True, mask=mask)
    np.testing.assert_allclose(got, np_batch_all_swap(x, labels, mask=mask), 1e-5, 1e-9)
    for case in names[:3]:
      x, labels = CASES[case][:2]
      want = np_batch_hard_swap(x, labels)
      for block in (None, 5):
        got = batch_hard_triplet_loss(x, labels, swap=True, block_size=block)
        np.testing.assert_allclose(got, want, 1e-5, 1e-9, err_msg=f"{case} {block}")
      assert np.all(want >= np_batch_hard(x, labels) - 1e-12)  # the swap is harder


def test_swap_gradients_and_semi_hard_refuses():
  with jax.enable_x64(True):
    rng = np.random.default_rng(12)
    x = jnp.asarray(rng.normal(size=(8, 3)))
    labels = jnp.array([0, 0, 1, 1, 2, 2, 0, -1])

    def both(e):
      return jnp.stack(
        [
          batch_all_triplet_loss(e, labels, swap=True, margin=1.0),
          batch_all_triplet_loss(e, labels, swap=True, soft=True, max_positives=2),
          batch_hard_triplet_loss(e, labels, swap=True, margin=1.0),
        ]
      )

    check_grads(jax.jit(both), (x,), order=1, modes=["rev"], eps=1e-6)
    check_grads(
      lambda a, p, n: triplet_margin_loss(a, p, n, swap=True, margin=2.0),
      (x[0], x[1], x[2]),
      1,
      modes=["rev"],
    )
  with pytest.raises(ValueError, match="swap=True has no semi-hard form"):
    semi_hard_triplet_loss(jnp.zeros((4, 2)), jnp.array([0, 0, 1, 1]), swap=True)

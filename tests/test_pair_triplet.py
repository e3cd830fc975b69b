"""More pair and triplet losses: NumPy loops from the papers' formulas (float64),
worked examples, the slot and exact forms, values of pytorch-metric-learning, gradients,
the dynamic soft margin's histogram, errors. (The contract of every batch-form loss is
tests/test_contract.py.)"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from device_utils import assert_close, run_on_devices, value_and_grad
from jax.test_util import check_grads
from references import np_pairs

from metriclearn import distances, losses, miners

# ----------------------------------------------------------------------------------
# Independent references: loops over anchors, pairs and triplets.


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _average(total, count, average):
  if average == "anchor":
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)
  return total * len(total) / max(count.sum(), 1)


def _snr(a, b):
  return np.var(b - a) / np.var(a)


def ref_angular(A, B, pos, neg, labels, alpha=40.0, average="anchor"):
  A, B, t2 = _unit(A), _unit(B), math.tan(math.radians(alpha)) ** 2
  total, count = np.zeros(len(A)), np.zeros(len(A))
  for a in range(len(A)):
    for p in np.flatnonzero(pos[a]):
      count[a] += 1
      f = [
        4 * t2 * (A[a] + B[p]) @ B[q] - 2 * (1 + t2) * A[a] @ B[p]
        for q in np.flatnonzero(neg[a])
      ]
      total[a] += math.log(1 + sum(math.exp(v) for v in f))
  return _average(total, count, average)


def ref_tuplet(A, B, pos, neg, labels, margin=0.1, scale=64.0, average="anchor"):
  cos = _unit(A) @ _unit(B).T
  total, count = np.zeros(len(A)), np.zeros(len(A))
  for a in range(len(A)):
    for p in np.flatnonzero(pos[a]):
      count[a] += 1
      shifted = math.cos(math.acos(min(1.0, max(-1.0, cos[a, p]))) - margin)
      terms = [math.exp(scale * (cos[a, q] - shifted)) for q in np.flatnonzero(neg[a])]
      total[a] += math.log(1 + sum(terms)) if terms else 0.0
  return _average(total, count, average)


def ref_intra_pair_variance(
  A, B, pos, neg, labels, pos_eps=0.01, neg_eps=0.01, average="anchor"
):
  cos = _unit(A) @ _unit(B).T
  mu_pos, mu_neg = cos[pos].mean(), cos[neg].mean()
  out = 0.0
  for mask, fn in (
    (pos, lambda s: max(0.0, (1 - pos_eps) * mu_pos - s) ** 2),
    (neg, lambda s: max(0.0, s - (1 + neg_eps) * mu_neg) ** 2),
  ):
    total = np.array([sum(fn(s) for s in cos[a][mask[a]]) for a in range(len(A))])
    out = out + _average(total, mask.sum(1), average)
  return out


def ref_snr_contrastive(
  A,
  B,
  pos,
  neg,
  labels,
  pos_margin=0.0,
  neg_margin=1.0,
  regularizer_weight=0.0,
  average="anchor",
):
  out = 0.0
  for mask, fn in (
    (pos, lambda d: max(0.0, d - pos_margin)),
    (neg, lambda d: max(0.0, neg_margin - d)),
  ):
    per = [
      [fn(_snr(A[a], B[j])) for j in np.flatnonzero(mask[a])] for a in range(len(A))
    ]
    total = np.array([sum(v) for v in per])
    out = out + _average(total, np.array([sum(v > 0 for v in r) for r in per]), average)
  has_pair = (pos | neg).any(1)
  return out + regularizer_weight * np.where(has_pair, np.abs(A.sum(1)), 0.0)


def ref_tcm(
  A,
  B,
  pos,
  neg,
  labels,
  lambda_plus=1.0,
  lambda_minus=1.0,
  margin_plus=0.9,
  margin_minus=0.5,
  average="anchor",
):
  cos = _unit(A) @ _unit(B).T
  sel_pos, sel_neg = pos & (cos <= margin_plus), neg & (cos >= margin_minus)
  p = _average(np.where(sel_pos, margin_plus - cos, 0).sum(1), sel_pos.sum(1), average)
  n = _average(np.where(sel_neg, cos - margin_minus, 0).sum(1), sel_neg.sum(1), average)
  return lambda_plus * p + lambda_minus * n


def ref_centroid(A, labels, B=None, ref_labels=None, margin=0.05, average="anchor"):
  own = B is None
  B, ref_labels = (A, labels) if own else (B, ref_labels)
  total, count = np.zeros(len(A)), np.zeros(len(A))
  for a in range(len(A)):
    if labels[a] < 0:
      continue
    same = [
      j for j in range(len(B)) if ref_labels[j] == labels[a] and not (own and j == a)
    ]
    if not same:
      continue
    d_ap = ((A[a] - B[same].mean(0)) ** 2).sum()
    for k in set(ref_labels[ref_labels >= 0]) - {labels[a]}:
      d_an = ((A[a] - B[ref_labels == k].mean(0)) ** 2).sum()
      loss = max(0.0, d_ap - d_an + margin)
      total[a] += loss
      count[a] += loss > 0
  return _average(total, count, average)


def ref_dynamic_soft_margin(
  A,
  B,
  pos,
  neg,
  labels,
  histogram=None,
  min_val=-2.0,
  num_bins=10,
  momentum=0.01,
  average="anchor",
):
  """Every triplet's difference, the linearly split histogram, its CDF as weight."""
  A, B = _unit(A), _unit(B)
  dist = np.sqrt(((A[:, None] - B[None]) ** 2).sum(-1))
  width = 2 * abs(min_val) / num_bins
  deltas = [
    (a, dist[a, p] - dist[a, q])
    for a in range(len(A))
    for p in np.flatnonzero(pos[a])
    for q in np.flatnonzero(neg[a])
  ]
  counts = np.zeros(num_bins)
  for _, delta in deltas:
    t = (delta - min_val) / width
    low = math.floor(t)
    counts[min(max(low, 0), num_bins - 1)] += 1 - (t - low)
    counts[min(max(low + 1, 0), num_bins - 1)] += t - low
  old = np.zeros(num_bins) if histogram is None else np.asarray(histogram)
  new = counts / counts.sum()
  if old.sum() > 0:
    new = (1 - momentum) * old + momentum * new
  cdf = np.cumsum(new)
  total, count = np.zeros(len(A)), np.zeros(len(A))
  for a, delta in deltas:
    bin_ = min(max(math.floor((delta - min_val) / width), 0), num_bins - 1)
    total[a] += cdf[bin_] * delta
    count[a] += 1
  return _average(total, count, average), new


def ref_manifold(x, labels, proxies, lambda_c=1.0, alpha=0.8, margin=5e-4):
  real = labels >= 0
  e, own = x[real], labels[real]
  nodes = _unit(np.concatenate([e, proxies]))
  n, size = len(e), len(e) + len(proxies)
  S = np.exp(np.maximum(nodes @ nodes.T, 0) / 0.5) * (1 - np.eye(size))
  D = np.diag(S.sum(1) ** -0.5)
  F = (1 - alpha) * np.linalg.inv(np.eye(size) - alpha * D @ S @ D)

  def term(scores):
    out = []
    for i in range(n):
      t = [scores[i, k] - scores[i, own[i]] + margin for k in range(len(proxies))]
      t = [v for k, v in enumerate(t) if k != own[i] and v > 0]
      out.append(math.log(1 + sum(math.exp(v) for v in t)))
    return np.array(out)

  context = _unit(F[:n]) @ _unit(F[n:]).T
  values = np.zeros(len(x))
  values[real] = term(F[:n, n:]) + lambda_c * term(context)
  return values


# ----------------------------------------------------------------------------------
# The losses with their references and options

N = 12  # one batch size for every case: the compiled operations are shared

SPECS = {
  "angular": (losses.angular_loss, ref_angular, {"alpha": 45.0}),
  "angular_batch_k": (  # k covers every positive: the slot form throughout
    functools.partial(losses.angular_loss, max_positives=N - 1),
    ref_angular,
    {"average": "batch"},
  ),
  "tuplet": (losses.tuplet_margin_loss, ref_tuplet, {"scale": 8.0}),
  "tuplet_batch": (
    losses.tuplet_margin_loss,
    ref_tuplet,
    {"margin": 0.3, "scale": 4.0, "average": "batch"},
  ),
  "intra_pair_variance": (losses.intra_pair_variance_loss, ref_intra_pair_variance, {}),
  "intra_pair_variance_batch": (
    losses.intra_pair_variance_loss,
    ref_intra_pair_variance,
    {"pos_eps": 0.1, "neg_eps": 0.2, "average": "batch"},
  ),
  "snr_contrastive": (
    losses.snr_contrastive_loss,
    ref_snr_contrastive,
    {"neg_margin": 2.0, "regularizer_weight": 0.1},
  ),
  "snr_contrastive_batch": (
    losses.snr_contrastive_loss,
    ref_snr_contrastive,
    {"pos_margin": 0.5, "neg_margin": 1.5, "average": "batch"},
  ),
  "tcm": (
    losses.threshold_consistent_margin_loss,
    ref_tcm,
    {"margin_plus": 0.5, "margin_minus": 0.1},
  ),
  "tcm_batch": (
    losses.threshold_consistent_margin_loss,
    ref_tcm,
    {"lambda_plus": 0.5, "lambda_minus": 2.0, "average": "batch"},
  ),
  "dynamic_soft_margin": (
    losses.dynamic_soft_margin_loss,
    lambda *a, **kw: ref_dynamic_soft_margin(*a, **kw)[0],
    {},
  ),
  "dynamic_soft_margin_k": (
    functools.partial(losses.dynamic_soft_margin_loss, max_positives=N - 1),
    lambda *a, **kw: ref_dynamic_soft_margin(*a, **kw)[0],
    {"num_bins": 16, "average": "batch"},
  ),
}


def make_batch(seed, classes=3, pad=2):
  rng = np.random.default_rng(seed)
  e = 0.6 * rng.normal(size=(N, 4))
  y = rng.integers(0, classes, N).astype(np.int32)
  y[rng.choice(N, pad, replace=False)] = -1
  e[1] = e[0]  # a duplicated row
  return e, y


def _check(name, e, y, **extra):
  fn, ref, kw = SPECS[name]
  ref_e = extra.pop("ref_embeddings", None)
  pos, neg = np_pairs(
    y, extra.get("ref_labels"), extra.get("positive_mask"), extra.get("mask")
  )
  B = e if ref_e is None else ref_e
  want = ref(e, B, pos, neg, y, **kw)
  if ref_e is not None:
    extra["ref_embeddings"] = jnp.asarray(ref_e)
  got = fn(jnp.asarray(e), jnp.asarray(y), **extra, **kw)
  assert got.dtype == jnp.float64 and got.shape == (N,)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9, err_msg=name)
  return want


@pytest.mark.parametrize("name", SPECS)
def test_matches_numpy_reference(name):
  nonzero = 0
  with jax.enable_x64(True):
    for classes, seed in ((2, 0), (3, 1), (4, 2)):
      nonzero += np.count_nonzero(_check(name, *make_batch(seed, classes)))
  assert nonzero > 10  # the batches exercise the formula, not only its zeros


@pytest.mark.parametrize("name", ["angular", "tuplet", "snr_contrastive", "tcm"])
def test_reference_set_positive_mask_and_mask(name):
  rng = np.random.default_rng(3)
  e, y = make_batch(4)
  ref_e = 0.6 * rng.normal(size=(7, 4))
  ref_y = np.array([0, 1, 2, -1, 1, 0, 2], np.int32)
  with jax.enable_x64(True):
    for extra in (
      dict(ref_embeddings=ref_e, ref_labels=ref_y),
      dict(positive_mask=rng.random((N, N)) < 0.35),
      dict(mask=rng.random((N, N)) < 0.7),
    ):
      _check(name, e, y, **extra)


def test_centroid_triplet_matches_numpy_reference():
  rng = np.random.default_rng(5)
  with jax.enable_x64(True):
    for seed, kw in ((0, {}), (1, {"margin": 0.3, "average": "batch"})):
      e, y = make_batch(seed)
      got = losses.centroid_triplet_loss(jnp.asarray(e), jnp.asarray(y), **kw)
      want = ref_centroid(e, y, **kw)
      assert np.count_nonzero(want) > 3
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    ref_e = 0.6 * rng.normal(size=(7, 4))
    ref_y = np.array([0, 1, 2, -1, 1, 0, 2], np.int32)
    got = losses.centroid_triplet_loss(
      jnp.asarray(e), jnp.asarray(y), ref_embeddings=ref_e, ref_labels=ref_y, margin=1.0
    )
    want = ref_centroid(e, y, ref_e, ref_y, margin=1.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


def test_manifold_matches_numpy_reference():
  rng = np.random.default_rng(6)
  with jax.enable_x64(True):
    x, proxies = rng.normal(size=(N, 4)), rng.normal(size=(3, 4))
    labels = rng.integers(0, 3, N)
    labels[[2, 7]] = -1
    for kw in ({}, {"lambda_c": 0.5, "alpha": 0.6, "margin": 0.05}):
      got = losses.manifold_loss(jnp.asarray(x), jnp.asarray(labels), proxies, **kw)
      want = ref_manifold(x, labels, proxies, **kw)
      assert np.count_nonzero(want) > 3
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


def test_manifold_over_devices_is_the_whole_batch():
  """With axis_name the graph holds every device's embeddings (the loss of the whole
  batch, row by row, and its gradient)."""
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, 16)).at[5].set(-1)
  proxies = jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)

  def fn(e, y, **kw):
    return losses.manifold_loss(e, y, proxies, margin=0.1, **kw)

  want, want_grad = value_and_grad(fn, x, labels)
  got, grad = run_on_devices(fn, x, labels, mode="shard_map")
  assert_close(got, want, 1e-5)
  assert_close(grad, want_grad, 1e-4)
  assert np.count_nonzero(np.asarray(want)) > 5


# ----------------------------------------------------------------------------------
# The slot and exact forms; pytorch-metric-learning's values


def test_more_positives_than_slots_fall_back_to_every_triplet():
  """An anchor with more than max_positives positives: the exact value (dense, and
  the angular loss in blocks of anchors), or NaN (no exact blockwise form). The slot
  form itself is in SPECS (k = N - 1) and in the contract (blockwise, ring)."""
  with jax.enable_x64(True):
    e, y = make_batch(7, classes=2, pad=0)  # classes of about 6
    e, y = jnp.asarray(e), jnp.asarray(y)
    for fn, block in (
      (losses.angular_loss, None),
      (losses.angular_loss, 4),
      (losses.dynamic_soft_margin_loss, None),
    ):
      got = fn(e, y, max_positives=2, block_size=block)
      np.testing.assert_allclose(got, fn(e, y), rtol=1e-6, err_msg=f"{fn} {block}")
    got = losses.dynamic_soft_margin_loss(e, y, max_positives=2, block_size=4)
    assert np.all(np.isnan(np.asarray(got)))


# The values of pytorch-metric-learning 2.9.0 (float64) on this batch; how each call
# maps to it is in the losses' docstrings.
PML_2_9 = {
  "AngularLoss(alpha=45) on unit rows": 5.149813336724069,
  "TupletMarginLoss(margin=5.73, scale=8)": 5.190341564962491,
  "IntraPairVarianceLoss()": 0.30615287440238,
  "SignalToNoiseRatioContrastiveLoss(neg_margin=2)": 3.001627535601135,
  "... with ZeroMeanRegularizer, weight 0.1": 3.066393922533348,
  "ThresholdConsistentMarginLoss(margin_plus=.5, margin_minus=.1)": 1.2066061005019464,
  "DynamicSoftMarginLoss(), first call": 0.1885710435143142,
  "ManifoldLoss(l=4, K=3), indices_tuple=meta": 1.2938738107754624,
  "TripletMarginLoss(swap=True)": 0.7188845725492332,
  "TripletMarginLoss(swap=True), BatchHardMiner": 1.1633452172210805,
}


def test_values_of_pytorch_metric_learning():
  rng = np.random.default_rng(42)
  x = rng.normal(size=(12, 4)) * 0.6
  y = jnp.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
  proxies = rng.normal(size=(3, 4))
  meta = jnp.array([0, 1, 2, 1, 0, 2, 2, 1, 0, 0, 1, 2])
  batch = dict(average="batch")
  with jax.enable_x64(True):
    x, unit = jnp.asarray(x), jnp.asarray(_unit(x))
    got = [
      losses.angular_loss(unit, y, alpha=45.0, **batch),
      losses.tuplet_margin_loss(x, y, margin=math.radians(5.73), scale=8.0, **batch),
      losses.intra_pair_variance_loss(x, y, **batch),
      losses.snr_contrastive_loss(x, y, neg_margin=2.0, normalize=True, **batch),
      losses.snr_contrastive_loss(
        x, y, neg_margin=2.0, normalize=True, regularizer_weight=0.1, **batch
      ),
      losses.threshold_consistent_margin_loss(
        x, y, margin_plus=0.5, margin_minus=0.1, **batch
      ),
      losses.dynamic_soft_margin_loss(x, y, **batch),
      losses.manifold_loss(x, meta, proxies),
      losses.batch_all_triplet_loss(unit, y, swap=True, **batch),
      losses.batch_all_triplet_loss(
        unit, y, swap=True, mask=miners.batch_hard_miner(unit, y), **batch
      ),
    ]
    for (what, want), values in zip(PML_2_9.items(), got, strict=True):
      # (its manifold loss inverts in float32)
      tol = 1e-8 if what.startswith("Manifold") else 1e-12
      np.testing.assert_allclose(float(values.mean()), want, rtol=tol, err_msg=what)


# ----------------------------------------------------------------------------------
# The dynamic soft margin's histogram


def test_dynamic_soft_margin_histogram_is_the_running_state():
  with jax.enable_x64(True):
    e, y = make_batch(8)
    pos, neg = np_pairs(y)
    fn = functools.partial(losses.dynamic_soft_margin_loss, return_histogram=True)
    values, first = fn(jnp.asarray(e), jnp.asarray(y))
    want, want_hist = ref_dynamic_soft_margin(e, e, pos, neg, y)
    np.testing.assert_allclose(values, want, rtol=1e-6)
    np.testing.assert_allclose(first, want_hist, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(jnp.sum(first), 1.0, rtol=1e-12)
    e2, y2 = make_batch(9)
    pos, neg = np_pairs(y2)
    values, second = fn(jnp.asarray(e2), jnp.asarray(y2), first, momentum=0.3)
    want, want_hist = ref_dynamic_soft_margin(
      e2, e2, pos, neg, y2, histogram=first, momentum=0.3
    )
    np.testing.assert_allclose(values, want, rtol=1e-6)
    np.testing.assert_allclose(second, want_hist, rtol=1e-6, atol=1e-12)
    # no triplet: no loss, the histogram unchanged
    values, same = fn(jnp.asarray(e2), jnp.zeros(N, jnp.int32), second)
    np.testing.assert_array_equal(values, 0.0)
    np.testing.assert_array_equal(same, second)


# ----------------------------------------------------------------------------------
# Gradients


def test_check_grads():
  rng = np.random.default_rng(11)
  with jax.enable_x64(True):
    x, labels = make_batch(10, pad=1)
    x[1] += 0.1  # (no duplicate: finite differences across a tie are not gradients)
    x, labels = jnp.asarray(x), jnp.asarray(labels)
    proxies = jnp.asarray(rng.normal(size=(3, 4)))
    every = [
      functools.partial(losses.angular_loss, alpha=45.0),
      functools.partial(losses.angular_loss, max_positives=2),
      functools.partial(losses.tuplet_margin_loss, scale=4.0),
      losses.intra_pair_variance_loss,
      functools.partial(losses.snr_contrastive_loss, neg_margin=3.0),
      functools.partial(losses.centroid_triplet_loss, margin=1.0),
      functools.partial(
        losses.threshold_consistent_margin_loss, margin_plus=0.5, margin_minus=0.1
      ),
      lambda e, y: losses.manifold_loss(e, y, proxies, margin=0.1),
    ]

    for fn in every:  # (compiled: faster than eager here)
      loss = jax.jit(lambda e, fn=fn: fn(e, labels))
      check_grads(loss, (x,), order=1, modes=["rev"], eps=1e-6)
    # the dynamic soft margin's weight F(delta) is a constant: its gradient is that
    # of the loss with the histogram frozen (momentum 0) at this batch's own
    dsm = losses.dynamic_soft_margin_loss
    _, histogram = dsm(x, labels, return_histogram=True)

    def frozen(e):
      return dsm(e, labels, histogram, momentum=0.0)

    np.testing.assert_allclose(frozen(x), dsm(x, labels), rtol=1e-12)
    check_grads(jax.jit(frozen), (x,), order=1, modes=["rev"], eps=1e-6)
    np.testing.assert_allclose(
      jax.grad(lambda e: dsm(e, labels).sum())(x),
      jax.grad(lambda e: frozen(e).sum())(x),
      rtol=1e-10,
      atol=1e-12,
    )
    # the proxies of the manifold loss are learned
    check_grads(
      lambda p: losses.manifold_loss(x, labels, p, margin=0.1),
      (proxies,),
      order=1,
      modes=["rev"],
      eps=1e-6,
    )


# ----------------------------------------------------------------------------------
# Errors


def test_bad_input_raises_at_trace_time():
  x, y = jnp.zeros((4, 2)), jnp.array([0, 0, 1, 1])
  for fn in (
    losses.angular_loss,
    losses.tuplet_margin_loss,
    losses.intra_pair_variance_loss,
    losses.snr_contrastive_loss,
    losses.centroid_triplet_loss,
    losses.threshold_consistent_margin_loss,
    losses.dynamic_soft_margin_loss,
  ):
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
      jax.jit(fn)(x, jnp.array([0, 1, 1]))
    with pytest.raises(ValueError, match="average must be one of"):
      fn(x, y, average="mean")
  for fn, kw, match in (
    (losses.angular_loss, dict(alpha=90.0), r"alpha must lie in \(0.0, 90.0\)"),
    (losses.angular_loss, dict(max_positives=0), "max_positives"),
    (losses.tuplet_margin_loss, dict(margin=2.0), "margin must lie in"),
    (losses.tuplet_margin_loss, dict(scale=0.0), "scale must be > 0"),
    (losses.intra_pair_variance_loss, dict(pos_eps=1.5), "pos_eps must lie in"),
    (losses.intra_pair_variance_loss, dict(neg_eps=-0.1), "neg_eps must be >= 0"),
    (losses.snr_contrastive_loss, dict(neg_margin=-1.0), "neg_margin must be >= 0"),
    (losses.snr_contrastive_loss, dict(regularizer_weight=-1.0), "regularizer_weight"),
    (losses.centroid_triplet_loss, dict(margin=-1.0), "margin must be >= 0"),
    (
      losses.centroid_triplet_loss,
      dict(mask=jnp.ones((4, 4), bool)),
      "class labels only: not mask",
    ),
    (
      losses.threshold_consistent_margin_loss,
      dict(margin_plus=1.5),
      "margin_plus must lie in",
    ),
    (
      losses.threshold_consistent_margin_loss,
      dict(lambda_minus=-1.0),
      "lambda_minus must be >= 0",
    ),
    (losses.dynamic_soft_margin_loss, dict(min_val=1.0), "min_val must be < 0"),
    (losses.dynamic_soft_margin_loss, dict(momentum=2.0), "momentum must lie in"),
    (losses.dynamic_soft_margin_loss, dict(histogram=jnp.zeros((2, 2))), "histogram"),
    (losses.dynamic_soft_margin_loss, dict(block_size=2), "give max_positives"),
  ):
    with pytest.raises(ValueError, match=match):
      fn(x, y, **kw)
  proxies = jnp.zeros((2, 2))
  with pytest.raises(ValueError, match=r"labels are proxy indices and must be < 2"):
    losses.manifold_loss(x, jnp.array([0, 1, 2, 0]), proxies)
  with pytest.raises(ValueError, match=r"proxies must be \[K, 2\]"):
    losses.manifold_loss(x, y, jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match="not ref_embeddings"):
    losses.manifold_loss(x, y, proxies, ref_embeddings=x, ref_labels=y)
  with pytest.raises(ValueError, match=r"alpha must lie in \(0.0, 1.0\)"):
    losses.manifold_loss(x, y, proxies, alpha=1.0)


def test_snr_distance_is_looked_up_by_name():
  # the losses that take a distance name take 'snr'
  x = jnp.array([[0.0, 2.0], [0.0, 3.0], [2.0, 0.0]])
  got = losses.batch_contrastive_loss(x, jnp.array([0, 0, 1]), distance="snr")
  # a0: d(0,1) = 0.25, d(0,2) = 4: (0.25^2 + 0) / 2; a1: d = 1/9, 25/9: (1/81) / 2
  np.testing.assert_allclose(got[:2], [0.03125, 1 / 162], rtol=1e-5)
  assert distances.get_pairwise_distance("snr") is distances.pairwise_snr_distance

"""Ranking losses: FastAP, Smooth-AP, PNP, histogram loss, ranked list loss.

References are plain NumPy loops over anchors and pairs written from the papers'
formulas, with their own pair relations (``references.np_pairs``, never
metriclearn.masks), compared in float64. The contract of the per-anchor losses
(blockwise == dense, padding, NaN, ring) is in test_contract.py; the histogram loss,
a scalar for the whole batch, has its own here.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from device_utils import assert_close, value_and_grad
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads
from references import CASES, np_pairs

from metriclearn import losses, reduce
from metriclearn.losses import (
  fastap_loss,
  histogram_loss,
  pnp_loss,
  ranked_list_loss,
  smooth_ap_loss,
)

# ----------------------------------------------------------------------------------
# Independent references


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


def _cos(u, v):
  return float(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v))


def _indices(row):
  return [j for j in range(len(row)) if row[j]]


def ref_fastap(A, B, pos, neg, num_bins=10):
  """Cakir et al.: 1 - (1/N+) sum_l h+_l H+_l / H_l, squared distances of unit
  vectors binned on [0, 4]."""
  A, B = _unit(A), _unit(B)
  delta = 4.0 / num_bins
  nodes = [k * delta for k in range(num_bins + 1)]

  def hist(ds):
    return np.array([sum(max(0.0, 1 - abs(d - z) / delta) for d in ds) for z in nodes])

  out = np.zeros(len(A))
  for a in range(len(A)):
    d = [float(np.sum((A[a] - B[j]) ** 2)) for j in range(len(B))]
    P_, N_ = _indices(pos[a]), _indices(neg[a])
    if not P_:
      continue
    h_pos, h_neg = hist([d[j] for j in P_]), hist([d[j] for j in N_])
    H_pos, H = np.cumsum(h_pos), np.cumsum(h_pos + h_neg)
    ap = sum(h_pos[k] * H_pos[k] / H[k] for k in range(num_bins + 1) if H[k] > 0)
    out[a] = 1.0 - ap / len(P_)
  return out


def ref_smooth_ap(A, B, pos, neg, temperature=0.01):
  """Brown et al.: 1 - mean over positives i of R(i, P) / R(i, P u N)."""
  out = np.zeros(len(A))
  for a in range(len(A)):
    s = [_cos(A[a], B[j]) for j in range(len(B))]
    P_, N_ = _indices(pos[a]), _indices(neg[a])
    if not P_:
      continue

    def rank(i, among, s=s):
      return 1 + sum(_sigmoid((s[j] - s[i]) / temperature) for j in among if j != i)

    ap = sum(rank(i, P_) / rank(i, P_ + N_) for i in P_) / len(P_)
    out[a] = 1.0 - ap
  return out


def ref_pnp(A, B, pos, neg, variant="Dq", temperature=0.01, alpha=1.0, b=2.0):
  """Li et al.: f(R_i) averaged over positives, R_i the soft count of negatives
  above positive i (eqs. 5, 7, 9, 12, 13 of the paper)."""
  f = {
    "O": lambda r: r,
    "Iu": lambda r: (1 + r) * math.log(1 + r),
    "Ib": lambda r: (b * r - math.log(1 + b * r)) / b**2,
    "Ds": lambda r: math.log(1 + r),
    "Dq": lambda r: 1 / (1 + r) ** alpha,
  }[variant]
  out = np.zeros(len(A))
  for a in range(len(A)):
    s = [_cos(A[a], B[j]) for j in range(len(B))]
    P_, N_ = _indices(pos[a]), _indices(neg[a])
    if not P_:
      continue
    values = [f(sum(_sigmoid((s[j] - s[i]) / temperature) for j in N_)) for i in P_]
    mean = sum(values) / len(values)
    out[a] = 1 - mean if variant == "Dq" else mean
  return out


def ref_histogram(A, B, pos, neg, num_bins=100):
  """Ustinova & Lempitsky: sum_r p-_r Phi+_r over every positive / negative pair."""
  delta = 2.0 / num_bins
  nodes = [-1 + r * delta for r in range(num_bins + 1)]
  sims = {True: [], False: []}
  for a in range(len(A)):
    for j in range(len(B)):
      if pos[a, j] or neg[a, j]:
        sims[bool(pos[a, j])].append(min(1.0, max(-1.0, _cos(A[a], B[j]))))
  if not sims[True] or not sims[False]:
    return 0.0

  def density(values):
    h = [sum(max(0.0, 1 - abs(v - t) / delta) for v in values) for t in nodes]
    return np.array(h) / len(values)

  return float(np.sum(density(sims[False]) * np.cumsum(density(sims[True]))))


def ref_ranked_list(
  A,
  B,
  pos,
  neg,
  margin=0.4,
  alpha=1.2,
  imbalance=0.5,
  pos_temperature=0.0,
  neg_temperature=10.0,
  normalize=True,
):
  """Wang et al.: (1 - lambda) L_P + lambda L_N, weighted means over the violating
  positives (d > alpha - m) and negatives (d < alpha)."""
  if normalize:
    A, B = _unit(A), _unit(B)
  out = np.zeros(len(A))
  for a in range(len(A)):
    d = [float(np.linalg.norm(A[a] - B[j])) for j in range(len(B))]
    P_, N_ = _indices(pos[a]), _indices(neg[a])
    if not P_ or not N_:
      continue
    vp = [d[j] - (alpha - margin) for j in P_ if d[j] > alpha - margin]
    vn = [alpha - d[j] for j in N_ if d[j] < alpha]
    wp = [math.exp(pos_temperature * v) for v in vp]
    wn = [math.exp(neg_temperature * v) for v in vn]
    l_p = sum(w * v for w, v in zip(wp, vp, strict=True)) / sum(wp) if vp else 0.0
    l_n = sum(w * v for w, v in zip(wn, vn, strict=True)) / sum(wn) if vn else 0.0
    out[a] = (1 - imbalance) * l_p + imbalance * l_n
  return out


# ----------------------------------------------------------------------------------
# Every loss against its reference on the shared 12 x 4 batches (float64)

SPECS = {
  # name: (loss, reference, options for both, options of the loss only)
  "fastap": (fastap_loss, ref_fastap, {}, {}),
  "smooth_ap": (smooth_ap_loss, ref_smooth_ap, dict(temperature=0.1), {}),
  "smooth_ap_k": (
    smooth_ap_loss,
    ref_smooth_ap,
    dict(temperature=0.1),
    dict(max_positives=4),  # some anchors have more: the exact fallback
  ),
  # (the exact PNP form: test_pnp_variants_match_numpy_reference)
  "pnp_k": (pnp_loss, ref_pnp, dict(temperature=0.1), dict(max_positives=7)),
  "ranked_list": (ranked_list_loss, ref_ranked_list, {}, {}),
  "ranked_list_weighted": (
    ranked_list_loss,
    ref_ranked_list,
    dict(margin=0.3, alpha=1.0, imbalance=0.3, pos_temperature=3.0),
    {},
  ),
}


@functools.cache
def _compiled(name):
  fn, _, options, own = SPECS[name]
  return jax.jit(lambda x, labels, extra: fn(x, labels, **extra, **options, **own))


def _case_inputs(case):
  x, labels, ref_x, ref_labels, extra = CASES[case]
  extra = dict(extra)
  if ref_x is not None:
    extra.update(ref_embeddings=ref_x, ref_labels=ref_labels)
  pos, neg = np_pairs(labels, ref_labels, positive_mask=extra.get("positive_mask"))
  return x, labels, (x if ref_x is None else ref_x), pos, neg, extra


@pytest.mark.parametrize("name", SPECS)
def test_matches_numpy_reference(name):
  _, ref, options, _ = SPECS[name]
  with jax.enable_x64(True):
    for case in CASES:
      x, labels, ref_x, pos, neg, extra = _case_inputs(case)
      got = _compiled(name)(jnp.asarray(x), jnp.asarray(labels), extra)
      want = ref(x, ref_x, pos, neg, **options)
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=case)


def test_pnp_variants_match_numpy_reference():
  with jax.enable_x64(True):
    x, labels, ref_x, pos, neg, extra = _case_inputs("3 classes, padding, duplicates")
    for variant in losses.PNP_VARIANTS:
      options = dict(variant=variant, temperature=0.2, alpha=2.0, b=3.0)
      got = pnp_loss(jnp.asarray(x), jnp.asarray(labels), **extra, **options)
      want = ref_pnp(x, ref_x, pos, neg, **options)
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=variant)


@functools.cache
def _hist_of(bins):
  return jax.jit(lambda x, y, extra: histogram_loss(x, y, num_bins=bins, **extra))


def test_histogram_loss_matches_numpy_reference():
  with jax.enable_x64(True):
    for case, bins in [(case, 100) for case in CASES] + [("2 classes", 7)]:
      x, labels, ref_x, pos, neg, extra = _case_inputs(case)
      got = _hist_of(bins)(jnp.asarray(x), jnp.asarray(labels), extra)
      want = ref_histogram(x, ref_x, pos, neg, num_bins=bins)
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8, err_msg=case)


# ----------------------------------------------------------------------------------
# The conventions of the authors' code and pytorch-metric-learning (docstrings)


def _balanced(seed, classes=3, per_class=4, d=5):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(classes * per_class, d)), np.repeat(
    np.arange(classes), per_class
  )


def test_smooth_ap_and_pnp_with_the_query_among_its_positives():
  """The authors' Smooth-AP and PNP code rank every item of the batch, the query
  included, and count the query among its own positives: ``ref_embeddings=e``."""
  e, labels = _balanced(0)
  tau = 0.05
  s = _unit(e) @ _unit(e).T
  same = labels[:, None] == labels[None, :]
  smooth, pnp = np.zeros(len(e)), np.zeros(len(e))
  for q in range(len(e)):
    members = np.flatnonzero(same[q])  # the query's class, the query included
    others = np.flatnonzero(~same[q])
    ratios, negatives = [], []
    for i in members:
      above = [_sigmoid((s[q, j] - s[q, i]) / tau) for j in range(len(e)) if j != i]
      above_pos = [_sigmoid((s[q, j] - s[q, i]) / tau) for j in members if j != i]
      ratios.append((1 + sum(above_pos)) / (1 + sum(above)))
      negatives.append(sum(_sigmoid((s[q, j] - s[q, i]) / tau) for j in others))
    smooth[q] = 1 - np.mean(ratios)
    pnp[q] = np.mean(negatives)
  with jax.enable_x64(True):
    e_, y = jnp.asarray(e), jnp.asarray(labels)
    kw = dict(ref_embeddings=e_, ref_labels=y, temperature=tau)
    np.testing.assert_allclose(smooth_ap_loss(e_, y, **kw), smooth, rtol=1e-6)
    np.testing.assert_allclose(pnp_loss(e_, y, variant="O", **kw), pnp, rtol=1e-6)


def test_fastap_pml_reduction_averages_over_anchors_with_a_positive():
  x, labels = CASES["5 classes, padding, duplicate"][:2]
  pos, neg = np_pairs(labels)
  want = ref_fastap(x, x, pos, neg)
  with jax.enable_x64(True):
    y = jnp.asarray(labels)
    values = _compiled("fastap")(jnp.asarray(x), y, {})
    has_positive = jnp.sum((y[:, None] == y[None, :]) & (y[:, None] >= 0), 1) > 1
    got = reduce.masked_mean(values, has_positive)
  assert np.isclose(got, want[pos.any(1)].mean(), rtol=1e-6)
  assert (~pos.any(1) & (labels >= 0)).any()  # (the reduction matters)


def test_histogram_loss_pml_density():
  """pytorch-metric-learning's histogram: each unordered pair of the batch's triplets
  once, the weights of the two nodes around each similarity."""
  e, labels = _balanced(1)
  delta = 2.0 / 100
  s = _unit(e) @ _unit(e).T

  def density(values):
    out = np.zeros(101)
    for v in values:
      r = math.floor((v + 1) / delta)
      out[r + 1] += (v + 1 - r * delta) / delta
      out[r] += ((r + 1) * delta - 1 - v) / delta
    return out / len(values)

  n = len(e)
  upper = [(i, j) for i in range(n) for j in range(i + 1, n)]
  p_pos = density([s[i, j] for i, j in upper if labels[i] == labels[j]])
  p_neg = density([s[i, j] for i, j in upper if labels[i] != labels[j]])
  want = np.sum(p_neg * np.cumsum(p_pos))
  with jax.enable_x64(True):
    got = histogram_loss(jnp.asarray(e), jnp.asarray(labels))
  assert np.isclose(got, want, rtol=1e-6)


# ----------------------------------------------------------------------------------
# Gradients


def _small_batch(seed=3, n=6, d=3):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)), np.array([0, 0, 1, 1, 1, 2])


@pytest.mark.parametrize(
  "fn",
  [
    functools.partial(fastap_loss, num_bins=4),
    functools.partial(smooth_ap_loss, temperature=0.2),
    functools.partial(smooth_ap_loss, temperature=0.2, max_positives=2),
    functools.partial(pnp_loss, temperature=0.2, variant="Ib"),
    functools.partial(histogram_loss, num_bins=5),
    functools.partial(ranked_list_loss, pos_temperature=2.0, detach_weights=False),
  ],
  ids=["fastap", "smooth_ap", "smooth_ap_k", "pnp_ib", "hist", "rll"],
)
def test_check_grads(fn):
  e, labels = _small_batch()
  with jax.enable_x64(True):
    y = jnp.asarray(labels)
    f = jax.jit(lambda x: jnp.sum(fn(x, y)))
    check_grads(f, (jnp.asarray(e),), 1, modes=["rev"], eps=1e-6)


def test_ranked_list_gradient_weights_each_pair_by_its_constant_weight():
  """With the paper's constant weights, d(loss_i)/d(d_ij) is (1 - lambda) w_ij /
  sum w over the violating positives and -lambda w_ij / sum w over the violating
  negatives; 1-D points, d_ij = |x_i - x_j|."""
  x = np.array([0.0, 1.0, 0.5, 2.0, 0.9, 1.7])
  labels = np.array([0, 0, 1, 1, 0, 1])
  alpha, margin, lam, t_pos, t_neg = 1.2, 0.4, 0.3, 1.5, 4.0
  grad = np.zeros(len(x))
  for i in range(len(x)):
    rows = {True: [], False: []}
    for j in range(len(x)):
      d = abs(x[i] - x[j])
      if j == i:
        continue
      if labels[j] == labels[i] and d > alpha - margin:
        rows[True].append((j, math.exp(t_pos * (d - (alpha - margin)))))
      if labels[j] != labels[i] and d < alpha:
        rows[False].append((j, math.exp(t_neg * (alpha - d))))
    for positive, scale in ((True, 1 - lam), (False, -lam)):
      total = sum(w for _, w in rows[positive])
      for j, w in rows[positive]:
        g = scale * w / total * np.sign(x[i] - x[j])
        grad[i] += g
        grad[j] -= g
  kw = dict(
    margin=margin,
    alpha=alpha,
    imbalance=lam,
    pos_temperature=t_pos,
    neg_temperature=t_neg,
    normalize=False,
  )
  with jax.enable_x64(True):
    _, got = value_and_grad(ranked_list_loss, jnp.asarray(x[:, None]), labels, **kw)
  np.testing.assert_allclose(got[:, 0], grad, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------------
# The histogram loss's contract (a scalar, so not in test_contract.py's cases)


def _contract_batch(n=12, d=4, classes=3, seed=0):
  """Normal embeddings with a duplicated row and a padding row (label -1)."""
  rng = np.random.default_rng(seed)
  e = rng.normal(size=(n, d)) * 0.6
  e[7] = e[2]
  labels = rng.integers(0, classes, size=n).astype(np.int32)
  labels[4] = -1
  return e, labels


def _hist(x, y, **kw):
  return histogram_loss(x, y, num_bins=10, **kw)


# Compiled once per block size and shape, shared by the tests.
_hist_vg = jax.jit(jax.value_and_grad(_hist), static_argnames=("block_size",))
_hist_jit = jax.jit(_hist, static_argnames=("block_size",))


def test_histogram_blockwise_equals_dense_and_bfloat16_is_float32():
  e, labels = _contract_batch()
  with jax.enable_x64(True):
    want, want_grad = _hist_vg(jnp.asarray(e), labels)
    assert want > 0
    # blocks of 5 x 3 do not divide the 12 rows (padding, the general path); the
    # square blocks of the symmetric path run in the degenerate-batch test
    got, grad = _hist_vg(jnp.asarray(e), labels, block_size=(5, 3))
    assert_close(got, want, 1e-10)
    assert_close(grad, want_grad, 1e-10)
  e32, y = jnp.asarray(e, jnp.float32), jnp.asarray(labels)
  low = _hist_jit(e32.astype(jnp.bfloat16), y)
  assert low.dtype == jnp.float32
  assert low == _hist_jit(e32.astype(jnp.bfloat16).astype(jnp.float32), y)


def test_histogram_degenerate_batches_padding_and_nan():
  e = jnp.asarray(np.random.default_rng(1).normal(size=(3, 6, 3)), jnp.float32)
  # all padding, one real row, one class: no positive or no negative pair
  labels = jnp.asarray([[-1] * 6, [-1, -1, 3, -1, -1, -1], [2] * 6], jnp.int32)
  for block in (None, 4):
    one = functools.partial(_hist_vg, block_size=block)
    values, grads = jax.jit(jax.vmap(one))(e, labels)
    np.testing.assert_array_equal(values, 0.0)
    np.testing.assert_array_equal(grads, 0.0)
  x, labels = _contract_batch()
  x[4] = np.nan  # row 4 is padding
  keep = np.flatnonzero(labels >= 0)
  bad = x.copy()
  bad[0, 1] = np.nan  # a real row
  got, grad = _hist_vg(jnp.asarray(x, jnp.float32), labels, block_size=5)
  want, want_grad = _hist_vg(jnp.asarray(x[keep], jnp.float32), labels[keep])
  assert_close(got, want, 1e-6)
  assert_close(grad[keep], want_grad, 1e-5)
  assert np.all(grad[4] == 0)
  for block in (None, 5):
    assert np.isnan(_hist_jit(jnp.asarray(bad, jnp.float32), labels, block_size=block))


@pytest.mark.parametrize("ring", [False, True])
def test_histogram_on_eight_devices_is_the_global_batch_loss(ring):
  """Every device returns the loss of the global batch (the histograms are summed
  over the devices); its gradient is the single-device one."""
  e, labels = _contract_batch(n=24, classes=4, seed=5)
  e, labels = jnp.asarray(e, jnp.float32), jnp.asarray(labels)
  want, want_grad = jax.value_and_grad(_hist)(e, labels)
  kw = dict(block_size=2, ring=True) if ring else {}
  mesh = Mesh(np.array(jax.devices()), ("i",))
  sharded = jax.shard_map(
    lambda x, y: _hist(x, y, axis_name="i", **kw),
    mesh=mesh,
    in_specs=(P("i"), P("i")),
    out_specs=P(),
  )
  got, grad = jax.jit(jax.value_and_grad(sharded))(e, labels)
  assert_close(got, want, 1e-5)
  assert_close(grad, want_grad, 1e-4)


# ----------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
  "fn, options, match",
  [
    (fastap_loss, dict(num_bins=0), "num_bins"),
    (fastap_loss, dict(num_bins=2.5), "num_bins"),
    (fastap_loss, dict(num_bins=True), "num_bins"),
    (fastap_loss, dict(max_distance=-1.0), "max_distance"),
    (fastap_loss, dict(normalize=False), "max_distance"),
    (fastap_loss, dict(distance=lambda a, b: a @ b.T), "max_distance"),
    (fastap_loss, dict(distance="manhattan"), "distance"),
    (smooth_ap_loss, dict(temperature=0.0), "temperature"),
    (smooth_ap_loss, dict(max_positives=0), "max_positives"),
    (smooth_ap_loss, dict(similarity="euclidean"), "similarity"),
    (pnp_loss, dict(variant="D_q"), "variant"),
    (pnp_loss, dict(temperature=-0.1), "temperature"),
    (pnp_loss, dict(alpha=0.0), "alpha"),
    (pnp_loss, dict(b=-1.0), "b must"),
    (histogram_loss, dict(num_bins=-3), "num_bins"),
    (histogram_loss, dict(similarity="l1"), "similarity"),
    (ranked_list_loss, dict(margin=-0.1), "margin"),
    (ranked_list_loss, dict(alpha=0.0), "alpha"),
    (ranked_list_loss, dict(imbalance=1.5), "imbalance"),
    (ranked_list_loss, dict(pos_temperature=-1.0), "pos_temperature"),
    (ranked_list_loss, dict(neg_temperature=-1.0), "neg_temperature"),
  ],
)
def test_bad_options_raise(fn, options, match):
  e, labels = jnp.ones((4, 3)), jnp.array([0, 0, 1, 1])
  with pytest.raises(ValueError, match=match):
    fn(e, labels, **options)


@pytest.mark.parametrize(
  "fn", [fastap_loss, smooth_ap_loss, pnp_loss, histogram_loss, ranked_list_loss]
)
def test_bad_batch_arguments_raise(fn):
  e = jnp.ones((4, 3))
  with pytest.raises(ValueError, match="labels"):
    fn(e, jnp.array([0, 0, 1]))
  with pytest.raises(ValueError, match="labels"):
    fn(e, jnp.array([0, 0, -2, 1]))
  with pytest.raises(ValueError, match="ring"):
    fn(e, jnp.array([0, 0, 1, 1]), ring=True)


def test_exact_ranks_have_no_ring():
  def run(x, y):
    return smooth_ap_loss(x, y, axis_name="i", block_size=2, ring=True)

  mesh = Mesh(np.array(jax.devices()), ("i",))
  sharded = jax.shard_map(run, mesh=mesh, in_specs=(P("i"), P("i")), out_specs=P("i"))
  with pytest.raises(ValueError, match="max_positives"):
    sharded(jnp.ones((16, 3)), jnp.zeros(16, jnp.int32))

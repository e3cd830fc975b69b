"""Proxy and classification losses: NumPy references written from the papers' formulas,
angles near 0 and pi, gradients, padding, absent classes, errors, sharded proxies."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from metriclearn import losses, regularizers
from metriclearn.losses import proxy

# ----------------------------------------------------------------------------------
# Independent references: plain NumPy float64 loops over samples and classes.


def _unit(v):
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _logsumexp(z):
  z = np.asarray(z, np.float64)
  return z.max() + math.log(np.sum(np.exp(z - z.max())))


def _cosines(x, w):
  """cos of x to each class: the nearest of a class's sub-centres if w is [C, K, d]."""
  return np.array([max(_unit(x) @ _unit(wk) for wk in np.atleast_2d(wc)) for wc in w])


def ref_arcface(x, y, w, scale=64.0, margin=0.5, fallback="linear"):
  out = np.zeros(len(x))
  for i in range(len(x)):
    if y[i] < 0:
      continue
    cos = _cosines(x[i], w)
    theta = math.acos(min(max(cos[y[i]], -1.0), 1.0))
    if fallback == "none" or (fallback == "linear" and theta + margin < math.pi):
      target = math.cos(theta + margin)
    elif fallback == "linear":  # insightface: cos - sin(pi - m) m
      target = cos[y[i]] - math.sin(math.pi - margin) * margin
    else:  # easy margin: only where cos > 0
      target = math.cos(theta + margin) if theta < math.pi / 2 else cos[y[i]]
    logits = scale * cos
    logits[y[i]] = scale * target
    out[i] = _logsumexp(logits) - logits[y[i]]
  return out


def ref_cosface(x, y, w, scale=64.0, margin=0.35):
  out = np.zeros(len(x))
  for i in range(len(x)):
    if y[i] >= 0:
      logits = scale * _cosines(x[i], w)
      logits[y[i]] -= scale * margin
      out[i] = _logsumexp(logits) - logits[y[i]]
  return out


def ref_normalized_softmax(x, y, w, temperature=0.05):
  out = np.zeros(len(x))
  for i in range(len(x)):
    if y[i] >= 0:
      logits = _cosines(x[i], w) / temperature
      out[i] = _logsumexp(logits) - logits[y[i]]
  return out


def ref_softmax_ce(x, y, wb):
  w, b = wb[:, :-1], wb[:, -1]  # the bias rides in the last column (see _softmax_ce)
  out = np.zeros(len(x))
  for i in range(len(x)):
    if y[i] >= 0:
      logits = np.array([x[i] @ w[j] + b[j] for j in range(len(w))])
      out[i] = _logsumexp(logits) - logits[y[i]]
  return out


def ref_proxy_nca(x, y, p, temperature=1.0, plus_plus=False):
  # -log( exp(-d(x, p_y)/T) / sum_{z (!= y unless ++)} exp(-d(x, p_z)/T) )
  out = np.zeros(len(x))
  for i in range(len(x)):
    if y[i] < 0:
      continue
    neg_d = (
      np.array([-np.sum((_unit(x[i]) - _unit(pz)) ** 2) for pz in p]) / temperature
    )
    others = [z for z in range(len(p)) if plus_plus or z != y[i]]
    out[i] = _logsumexp(neg_d[others]) - neg_d[y[i]]
  return out


def ref_proxy_anchor(x, y, p, alpha=32.0, delta=0.1):
  # per-class terms: [p in P+] pos_p / |P+| + neg_p / |P|
  num = len(p)
  present = [c for c in range(num) if np.any(y == c)]
  out = np.zeros(num)
  for c in range(num):
    pos = sum(
      math.exp(-alpha * (_unit(x[i]) @ _unit(p[c]) - delta))
      for i in range(len(x))
      if y[i] == c
    )
    neg = sum(
      math.exp(alpha * (_unit(x[i]) @ _unit(p[c]) + delta))
      for i in range(len(x))
      if y[i] >= 0 and y[i] != c
    )
    if c in present:
      out[c] += math.log(1 + pos) / len(present)
    out[c] += math.log(1 + neg) / num
  return out


def ref_soft_triple_reg(w):
  c_, k_ = w.shape[:2]
  total = sum(
    math.sqrt(2 + 1e-5 - 2 * _unit(w[c, t]) @ _unit(w[c, s]))
    for c in range(c_)
    for t in range(k_)
    for s in range(t + 1, k_)
  )
  return total / (c_ * k_ * (k_ - 1)) if k_ > 1 else 0.0


def ref_soft_triple(x, y, w, la=20.0, gamma=0.1, tau=0.2, margin=0.01):
  reg = ref_soft_triple_reg(w)
  out = np.zeros(len(x))
  for i in range(len(x)):
    if y[i] < 0:
      continue
    relaxed = np.zeros(len(w))
    for c in range(len(w)):
      sims = np.array([_unit(x[i]) @ _unit(wk) for wk in w[c]])
      weights = np.exp(sims / gamma) / np.sum(np.exp(sims / gamma))
      relaxed[c] = np.sum(weights * sims)
    logits = la * relaxed
    logits[y[i]] = la * (relaxed[y[i]] - margin)
    out[i] = _logsumexp(logits) - logits[y[i]] + tau * reg
  return out


def _softmax_ce(e, y, wb, **kw):
  """Softmax CE with the bias packed as the last column, so it shards with the rows."""
  return proxy.softmax_cross_entropy_loss(e, y, wb[:, :-1], wb[:, -1], **kw)


# name: (loss, reference, options, proxy shape after C: () for [C, d], (K,) for K).
CASES = {
  "arcface": (proxy.arcface_loss, ref_arcface, {}, ()),
  "arcface_easy": (proxy.arcface_loss, ref_arcface, {"fallback": "easy"}, ()),
  "arcface_none": (proxy.arcface_loss, ref_arcface, {"fallback": "none"}, ()),
  "subcenter_arcface": (proxy.subcenter_arcface_loss, ref_arcface, {}, (3,)),
  "cosface": (proxy.cosface_loss, ref_cosface, {}, ()),
  "cosface_subcenter": (proxy.cosface_loss, ref_cosface, {"margin": 0.2}, (2,)),
  "normalized_softmax": (proxy.normalized_softmax_loss, ref_normalized_softmax, {}, ()),
  "softmax_ce": (_softmax_ce, ref_softmax_ce, {}, ("bias",)),
  "proxy_nca": (proxy.proxy_nca_loss, ref_proxy_nca, {}, ()),
  "proxy_nca_pp": (
    proxy.proxy_nca_plus_plus_loss,
    functools.partial(ref_proxy_nca, temperature=1 / 9, plus_plus=True),
    {},
    (),
  ),
  "proxy_anchor": (proxy.proxy_anchor_loss, ref_proxy_anchor, {}, ()),
  "soft_triple": (proxy.soft_triple_loss, ref_soft_triple, {}, (4,)),
}
PER_CLASS = {"proxy_anchor"}  # returns [C], not [n]


def _proxy_shape(extra, num_classes, dim):
  if extra == ("bias",):
    return (num_classes, dim + 1)
  return (num_classes, *extra, dim)


def make_inputs(name, *, n=12, num_classes=6, dim=5, seed=0):
  """Random float64 inputs; rows 0-3 lie at angles 1e-3, 0.03, pi - 0.03, pi - 1e-3
  from their class's (first) proxy; the last two rows are padding; the last class is
  absent."""
  rng = np.random.default_rng(seed)
  p = rng.normal(size=_proxy_shape(CASES[name][3], num_classes, dim))
  y = rng.integers(0, num_classes - 1, size=n)
  y[-2:] = -1
  x = rng.normal(size=(n, dim)) * rng.uniform(0.5, 2.0, size=(n, 1))
  if name != "softmax_ce":  # angles mean nothing to an unnormalised linear head
    for i, angle in enumerate([1e-3, 0.03, math.pi - 0.03, math.pi - 1e-3]):
      target = _unit(p[y[i]].reshape(-1, dim)[0])
      u = rng.normal(size=dim)
      u = _unit(u - (u @ target) * target)
      x[i] = 1.7 * (math.cos(angle) * target + math.sin(angle) * u)
  return x, y, p


def _call(name, x, y, p, **kw):
  fn, _, options, _ = CASES[name]
  return fn(x, y, p, **options, **kw)


def _ref(name, x, y, p):
  _, ref, options, _ = CASES[name]
  return ref(
    np.asarray(x, np.float64), np.asarray(y), np.asarray(p, np.float64), **options
  )


# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_matches_numpy_reference(name):
  x, y, p = make_inputs(name)
  want = _ref(name, x, y, p)
  with jax.enable_x64(True):
    got = _call(name, jnp.asarray(x), jnp.asarray(y), jnp.asarray(p))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
  x32, p32 = x.astype(np.float32), p.astype(np.float32)
  want32 = _ref(name, x32, y, p32)  # the float32 inputs, in float64
  eager = _call(name, jnp.asarray(x32), jnp.asarray(y), jnp.asarray(p32))
  jitted = jax.jit(functools.partial(_call, name))(x32, y, p32)
  assert eager.dtype == jnp.float32
  # logits reach 64 (float32 spacing 4e-6), hence the absolute floor
  np.testing.assert_allclose(eager, want32, rtol=1e-4, atol=1e-4)
  # near pi, float32 sin(theta) is ill-conditioned: jit may fuse differently
  np.testing.assert_allclose(jitted, eager, rtol=1e-4, atol=1e-4)
  if name not in PER_CLASS:
    assert np.all(np.asarray(eager)[-2:] == 0.0)  # padding rows


@pytest.mark.parametrize("fallback", ["linear", "easy", "none"])
def test_arcface_over_the_whole_angle_range(fallback):
  # Target angles 0 ... pi, across pi/2 (easy margin) and pi - m (the linear fallback).
  rng = np.random.default_rng(1)
  p = rng.normal(size=(4, 3))
  angles = np.linspace(0.0, math.pi, 24)  # k pi / 23: not on pi/2 or pi - m
  y = np.zeros(len(angles), np.int32)
  target = _unit(p[0])
  u = _unit(np.cross(target, rng.normal(size=3)))
  x = np.cos(angles)[:, None] * target + np.sin(angles)[:, None] * u
  want = ref_arcface(x, y, p, fallback=fallback)
  with jax.enable_x64(True):
    got = proxy.arcface_loss(jnp.asarray(x), jnp.asarray(y), p, fallback=fallback)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", CASES)
def test_check_grads(name):
  x, y, p = make_inputs(name, n=6, num_classes=4, dim=3, seed=2)
  y[5] = -1
  scale = {"scale": 2.0} if "face" in name else {}  # s = 64 saturates the softmax
  with jax.enable_x64(True):
    f = jax.jit(lambda x, p: _call(name, x, jnp.asarray(y), p, **scale))
    check_grads(f, (jnp.asarray(x), jnp.asarray(p)), 1, ["rev"], eps=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_bf16_degenerate_inputs_and_padding_have_finite_gradients(name):
  # exactly on the proxy (theta = 0), exactly opposite (pi), a zero embedding, padding
  x, y, p = make_inputs(name, n=6, num_classes=4, dim=3, seed=3)
  first = p.reshape(4, -1, p.shape[-1])[:, 0, :3]
  x[0], x[1], x[2] = first[y[0]], -first[y[1]], 0.0
  y[5] = -1
  x, p = jnp.asarray(x, jnp.bfloat16), jnp.asarray(p, jnp.bfloat16)

  def total(x, y, p):
    loss = _call(name, x, y, p)
    return loss.sum(), loss

  step = jax.jit(jax.value_and_grad(total, (0, 2), has_aux=True))
  (_, loss), (gx, gp) = step(x, y, p)
  assert loss.dtype == jnp.float32
  assert jnp.all(jnp.isfinite(loss))
  assert gx.dtype == jnp.bfloat16
  assert jnp.all(jnp.isfinite(gx)) and jnp.all(jnp.isfinite(gp))
  if name not in PER_CLASS:  # a padding row takes no part: zero loss and gradient
    assert float(loss[5]) == 0.0 and jnp.all(gx[5] == 0)
  # nothing but padding: a loss of 0 and zero gradients, not NaN
  (total_loss, _), (gx, gp) = step(x, -np.ones_like(y), p)
  assert float(total_loss) == 0.0 and jnp.all(gx == 0) and jnp.all(gp == 0)


def test_proxy_anchor_absent_classes():
  # Two samples of class 0, one of class 1; classes 2 and 3 absent.
  x = jnp.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
  y = jnp.array([0, 0, 1])
  p = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
  got = np.asarray(
    jax.jit(functools.partial(proxy.proxy_anchor_loss, alpha=2.0, delta=0.1))(x, y, p)
  )
  # |P+| = 2 (classes 0, 1), |P| = 4.
  # class 0: pos log(1 + e^{-2(1-.1)} + e^{-2(.6-.1)}) / 2; neg log(1 + e^{2(0+.1)}) / 4
  c0 = (
    math.log(1 + math.exp(-1.8) + math.exp(-1.0)) / 2 + math.log(1 + math.exp(0.2)) / 4
  )
  # class 1: pos log(1 + e^{-2(1-.1)}) / 2; neg log(1 + e^{2(0+.1)} + e^{2(.8+.1)}) / 4
  c1 = (
    math.log(1 + math.exp(-1.8)) / 2 + math.log(1 + math.exp(0.2) + math.exp(1.8)) / 4
  )
  # class 2 (absent): no positive term; neg: cosines -1, -.6, 0
  c2 = math.log(1 + math.exp(-1.8) + math.exp(-1.0) + math.exp(0.2)) / 4
  # class 3 (absent): cosines 0, -.8, -1
  c3 = math.log(1 + math.exp(0.2) + math.exp(-1.4) + math.exp(-1.8)) / 4
  np.testing.assert_allclose(got, [c0, c1, c2, c3], rtol=1e-6)
  # an absent class's proxy is only pushed away from the samples (no positive term)
  g = jax.jit(jax.grad(lambda p: proxy.proxy_anchor_loss(x, y, p).sum()))(p)
  assert jnp.all(jnp.isfinite(g))


def test_proxy_nca_hand_values():
  x, y = jnp.array([[1.0, 0.0]]), jnp.array([0])
  p = jnp.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
  # unnormalised: d = 0, 4, 1 + 4 = 5; -(-0) + log(e^-4 + e^-5)
  want = math.log(math.exp(-4) + math.exp(-5))
  got = proxy.proxy_nca_loss(x, y, p, normalize=False)
  np.testing.assert_allclose(got, [want], rtol=1e-6)
  # normalised: unit p = (1,0), (1,0), (0,1): d = 0, 0, 2 -> log(e^0 + e^-2)
  got = proxy.proxy_nca_loss(x, y, p)
  np.testing.assert_allclose(got, [math.log(1 + math.exp(-2))], rtol=1e-6)
  # ProxyNCA++ (T = 1/9), positive included: log(e^0 + e^0 + e^-18)
  got = proxy.proxy_nca_plus_plus_loss(x, y, p)
  np.testing.assert_allclose(got, [math.log(2 + math.exp(-18))], rtol=1e-6)


def test_sparse_centers_regularizer_and_reduction():
  rng = np.random.default_rng(4)
  w = rng.normal(size=(3, 4, 5))
  reg = regularizers.sparse_centers_regularizer
  np.testing.assert_allclose(reg(w), ref_soft_triple_reg(w))
  assert float(reg(w[:, :1])) == 0.0  # K = 1
  x, y = rng.normal(size=(4, 5)), np.array([0, 1, 2, -1])
  with_reg = proxy.soft_triple_loss(x, y, w)
  without = proxy.soft_triple_loss(x, y, w, tau=0.0)
  # the mean over the valid rows is the paper's objective L + tau R
  np.testing.assert_allclose(
    with_reg[:3].mean(), without[:3].mean() + 0.2 * ref_soft_triple_reg(w), rtol=1e-5
  )


def test_init_proxies():
  # an "rbg" key: threefry keys cost ~3 s of XLA compilation per shape on CPU
  key = jax.random.key(0, impl="rbg")
  p = losses.init_proxies(key, 100, 64)
  assert p.shape == (100, 64) and p.dtype == jnp.float32
  np.testing.assert_allclose(jnp.linalg.norm(p, axis=1).mean(), 1.0, atol=0.05)
  assert losses.init_proxies(key, 5, 8, num_centers=3).shape == (5, 3, 8)
  with pytest.raises(ValueError, match="num_centers"):
    losses.init_proxies(key, 5, 8, num_centers=0)


def test_errors_name_the_argument():
  x, y = jnp.ones((4, 3)), jnp.array([0, 1, 2, -1])
  p = jnp.ones((3, 3))
  with pytest.raises(ValueError, match=r"labels must lie in \[-1, 3\)"):
    proxy.arcface_loss(x, jnp.array([0, 1, 3, -1]), p)
  with pytest.raises(ValueError, match="labels"):
    proxy.cosface_loss(x, jnp.array([0, 1, -2, -1]), p)
  with pytest.raises(ValueError, match="labels must have shape"):
    proxy.cosface_loss(x, y[:3], p)
  with pytest.raises(TypeError, match="labels must be integers"):
    proxy.cosface_loss(x, y.astype(jnp.float32), p)
  with pytest.raises(ValueError, match="proxies must have the embedding size d=3"):
    proxy.normalized_softmax_loss(x, y, jnp.ones((3, 4)))
  with pytest.raises(ValueError, match="weights must have the embedding size"):
    proxy.softmax_cross_entropy_loss(x, y, jnp.ones((3, 4)))
  with pytest.raises(ValueError, match="bias must have shape"):
    proxy.softmax_cross_entropy_loss(x, y, p, jnp.zeros(4))
  with pytest.raises(ValueError, match="embeddings must be 2-D"):
    proxy.proxy_nca_loss(jnp.ones(3), y, p)
  with pytest.raises(ValueError, match=r"proxies must be \[C, d\], got shape"):
    proxy.proxy_anchor_loss(x, y, jnp.ones((3, 2, 3)))
  with pytest.raises(ValueError, match=r"proxies must be \[C, K, d\]"):
    proxy.subcenter_arcface_loss(x, y, p)
  for fn, option in [
    (proxy.arcface_loss, "scale"),
    (proxy.cosface_loss, "scale"),
    (proxy.normalized_softmax_loss, "temperature"),
    (proxy.proxy_nca_loss, "temperature"),
    (proxy.proxy_anchor_loss, "alpha"),
    (proxy.soft_triple_loss, "la"),
    (proxy.soft_triple_loss, "gamma"),
  ]:
    for bad in (0.0, -1.0):
      with pytest.raises(ValueError, match=f"{option} must be > 0"):
        fn(x, y, p, **{option: bad})
  with pytest.raises(ValueError, match="margin must be >= 0"):
    proxy.arcface_loss(x, y, p, margin=-0.1)
  with pytest.raises(ValueError, match="margin must lie in"):
    proxy.arcface_loss(x, y, p, margin=4.0)
  with pytest.raises(ValueError, match="fallback"):
    proxy.arcface_loss(x, y, p, fallback="clip")
  with pytest.raises(ValueError, match="scale must be a scalar"):
    proxy.arcface_loss(x, y, p, scale=jnp.ones(2))


def test_labels_without_a_proxy_under_jit_count_as_padding():
  x, y, p = make_inputs("cosface")
  bad = y.copy()
  bad[0] = 99  # cannot be checked once traced
  got = jax.jit(proxy.cosface_loss)(x, bad, p)
  want = proxy.cosface_loss(x, y, p)
  assert float(got[0]) == 0.0
  np.testing.assert_allclose(got[1:], want[1:], rtol=1e-6)


# ----------------------------------------------------------------------------------
# Proxies sharded by class over 8 devices: the same losses and gradients.


def _sharded(name, x, y, p, mode, **kw):
  """Losses and d(sum of losses)/d(x, p) with the batch and the classes split over the
  devices (device k: rows k n/W..., classes k C/W...)."""
  w = jax.device_count()
  fn = functools.partial(_call, name, proxy_axis_name="i", **kw)

  def total(x, y, p):
    losses = fn(x, y, p)
    return losses.sum(), losses

  if mode == "pmap":
    xs, ys, ps = (a.reshape(w, a.shape[0] // w, *a.shape[1:]) for a in (x, y, p))
    # pmap's grad of a device's loss is the gradient of the sum over all devices
    step = jax.pmap(jax.value_and_grad(total, (0, 2), has_aux=True), "i")
    (_, losses), (gx, gp) = step(xs, ys, ps)
    return losses.reshape(-1), gx.reshape(x.shape), gp.reshape(p.shape)
  mesh = Mesh(np.array(jax.devices()), ("i",))
  sharded = jax.shard_map(fn, mesh=mesh, in_specs=(P("i"),) * 3, out_specs=P("i"))

  def global_total(x, p):
    losses = sharded(x, y, p)
    return losses.sum(), losses

  step = jax.jit(jax.value_and_grad(global_total, (0, 1), has_aux=True))
  (_, losses), (gx, gp) = step(x, p)
  return losses, gx, gp


# ArcFace's fallbacks and CosFace's sub-centres change nothing in the sharding
SHARDED = [
  c for c in CASES if c not in ("arcface_easy", "arcface_none", "cosface_subcenter")
]


@pytest.mark.parametrize("name", SHARDED)
def test_sharded_proxies_match_unsharded(name):
  # float64, so that the comparison is tight (float32 differs in rounding only)
  x, y, p = make_inputs(name, n=16, num_classes=16, dim=4, seed=5)
  y[6] = 15  # a class whose proxy lives on the last device
  scale = {"scale": 8.0} if "face" in name else {}  # gradients worth comparing
  with jax.enable_x64(True):
    x, y, p = jnp.asarray(x), jnp.asarray(y), jnp.asarray(p)
    want = _call(name, x, y, p, **scale)
    want_gx, want_gp = jax.grad(
      lambda x, p: _call(name, x, y, p, **scale).sum(), (0, 1)
    )(x, p)
    for mode in ("pmap", "shard_map"):
      got, gx, gp = _sharded(name, x, y, p, mode, **scale)
      np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=mode)
      np.testing.assert_allclose(gx, want_gx, rtol=1e-9, atol=1e-12, err_msg=mode)
      np.testing.assert_allclose(gp, want_gp, rtol=1e-9, atol=1e-12, err_msg=mode)


def test_proxy_anchor_data_parallel_axis_name():
  # Proxies replicated, batch split: every device returns the whole [C] on the whole
  # batch. pmap's grad of a device's loss is the gradient of the sum of the W equal
  # copies, W times the gradient (a train step's pmean of parameter gradients undoes
  # exactly that).
  x, y, p = make_inputs("proxy_anchor", n=16, num_classes=6, dim=4, seed=6)
  x = x.astype(np.float32)
  w = jax.device_count()
  want = proxy.proxy_anchor_loss(x, y, p)
  want_g = jax.grad(lambda x: proxy.proxy_anchor_loss(x, y, p).sum())(x)

  def local(x, y):
    return proxy.proxy_anchor_loss(x, y, p, axis_name="i")

  xs, ys = x.reshape(w, -1, 4), y.reshape(w, -1)
  got = jax.pmap(local, "i")(xs, ys)
  g = jax.pmap(jax.grad(lambda x, y: local(x, y).sum()), "i")(xs, ys)
  for k in range(w):
    np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(g.reshape(x.shape) / w, want_g, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="axis_name or proxy_axis_name"):
    jax.pmap(
      lambda x, y: proxy.proxy_anchor_loss(x, y, p, axis_name="i", proxy_axis_name="j"),
      "i",
    )(xs, ys)

"""The margin-based softmax classification losses added to the family: L-Softmax,
SphereFace (A-Softmax) and P2SGrad, against NumPy loops written from the papers
(``arccos`` and ``floor`` where the library uses Chebyshev polynomials and threshold
counts), pytorch-metric-learning's formulas, the paper's P2SGrad gradient, angles at
0 and pi, annealing, sharded classes and errors. The other classification losses are
tested in test_proxy.py."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from metriclearn import losses
from metriclearn.losses.classification import (
  large_margin_softmax_loss,
  p2sgrad_loss,
  sphereface_loss,
)

# ----------------------------------------------------------------------------------
# Independent references: plain float64 loops over samples and classes.


def _logsumexp(z):
  return z.max() + math.log(np.sum(np.exp(z - z.max())))


def ref_psi(cos, m):
  # Liu et al.: psi(theta) = (-1)^k cos(m theta) - 2k, theta in [k pi/m, (k+1) pi/m]
  theta = math.acos(min(max(cos, -1.0), 1.0))
  k = min(math.floor(theta * m / math.pi), m - 1)
  return (-1) ** k * math.cos(m * theta) - 2 * k


def ref_margin_softmax(x, y, w, margin=4, scale=1.0, annealing=0.0, unit=False):
  # L-Softmax eq. 4 with the annealed target of section 5; SphereFace: |w| = 1
  out = np.zeros(len(x))
  for i in range(len(x)):
    if y[i] < 0:
      continue
    logits = np.zeros(len(w))
    for j in range(len(w)):
      wn = 1.0 if unit else np.linalg.norm(w[j])
      xn = np.linalg.norm(x[i])
      cos = x[i] @ w[j] / (np.linalg.norm(x[i]) * np.linalg.norm(w[j]))
      if j == y[i]:
        f = (annealing * cos + ref_psi(cos, margin)) / (1 + annealing)
      else:
        f = cos
      logits[j] = scale * wn * xn * f
    out[i] = _logsumexp(logits) - logits[y[i]]
  return out


def pml_margin_softmax(x, y, w, margin=4, scale=1.0, sphere=False):
  """pytorch-metric-learning's LargeMarginSoftmaxLoss / SphereFaceLoss, transcribed:
  eq. 7's binomial sum for cos(m theta), k = floor(acos / (pi / m)), logits times the
  norms and the scale, cross-entropy, mean."""
  cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (
    w / np.linalg.norm(w, axis=1, keepdims=True)
  ).T
  c = cos[np.arange(len(x)), y]
  n = np.arange(margin // 2 + 1)
  binom = np.array([math.comb(margin, 2 * k) for k in n])
  cos_m = np.sum(
    (-1.0) ** n * binom * c[:, None] ** (margin - 2 * n) * (1 - c[:, None] ** 2) ** n,
    axis=1,
  )
  k = np.floor(np.arccos(np.clip(c, -1, 1)) / (math.pi / margin))
  logits = cos.copy()
  logits[np.arange(len(x)), y] = (-1.0) ** k * cos_m - 2 * k
  norms = np.linalg.norm(x, axis=1)[:, None]
  if not sphere:
    norms = norms * np.linalg.norm(w, axis=1)[None, :]
  logits = logits * norms * scale
  lse = np.array([_logsumexp(r) for r in logits])
  return np.mean(lse - logits[np.arange(len(x)), y])


def ref_p2sgrad(x, y, w):
  # 1/2 sum_j (cos theta_ij - [j = y_i])^2, whose gradient is the paper's eq. 11
  out = np.zeros(len(x))
  for i in range(len(x)):
    if y[i] >= 0:
      for j in range(len(w)):
        cos = x[i] @ w[j] / (np.linalg.norm(x[i]) * np.linalg.norm(w[j]))
        out[i] += 0.5 * (cos - (j == y[i])) ** 2
  return out


CASES = {
  # name: (loss, reference, options)
  "lsoftmax": (large_margin_softmax_loss, ref_margin_softmax, {}),
  "lsoftmax_m2_annealed": (
    large_margin_softmax_loss,
    ref_margin_softmax,
    dict(margin=2, annealing=3.0, scale=2.0),
  ),
  "sphereface": (
    sphereface_loss,
    functools.partial(ref_margin_softmax, unit=True),
    {},
  ),
  "sphereface_m3": (
    sphereface_loss,
    functools.partial(ref_margin_softmax, unit=True),
    dict(margin=3, annealing=1.0),
  ),
  "p2sgrad": (p2sgrad_loss, ref_p2sgrad, {}),
}
# the target angles of the first rows: every piece [k pi/4, (k+1) pi/4], both ends
ANGLES = [1e-3, 0.3, 1.0, 1.7, 2.5, math.pi - 1e-3]


def make_inputs(n=12, num_classes=6, dim=5, seed=0):
  """Float64 rows at the ANGLES from their class's weight (norms 0.5 ... 2), then
  random rows; the last two rows are padding; weights of norms 0.5 ... 2."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(num_classes, dim))
  w *= rng.uniform(0.5, 2.0, size=(num_classes, 1)) / np.linalg.norm(w, axis=1)[:, None]
  y = rng.integers(0, num_classes, size=n)
  y[-2:] = -1
  x = rng.normal(size=(n, dim)) * rng.uniform(0.5, 2.0, size=(n, 1))
  for i, angle in enumerate(ANGLES[: n - 2]):
    target = w[y[i]] / np.linalg.norm(w[y[i]])
    u = rng.normal(size=dim)
    u -= (u @ target) * target
    u /= np.linalg.norm(u)
    x[i] = rng.uniform(0.5, 2.0) * (math.cos(angle) * target + math.sin(angle) * u)
  return x, y, w


def _call(name, x, y, w, **kw):
  fn, _, options = CASES[name]
  return fn(x, y, w, **options, **kw)


@functools.cache
def _jitted(name):
  return jax.jit(functools.partial(_call, name))


# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_matches_numpy_reference(name):
  _, ref, options = CASES[name]
  for seed in range(3):
    x, y, w = make_inputs(seed=seed)
    want = ref(x, y, w, **options)
    with jax.enable_x64(True):
      got = _jitted(name)(jnp.asarray(x), jnp.asarray(y), jnp.asarray(w))
      assert got.dtype == jnp.float64
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    got = _jitted(name)(jnp.asarray(x, jnp.float32), y, jnp.asarray(w, jnp.float32))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.all(np.asarray(got)[-2:] == 0)  # padding


@pytest.mark.parametrize("sphere", [False, True])
def test_pml_large_margin_softmax_and_sphereface(sphere):
  x, y, w = make_inputs(n=10, seed=4)
  x, y = x[:8], y[:8]  # no padding: PML has none
  fn = sphereface_loss if sphere else large_margin_softmax_loss
  fn = jax.jit(fn, static_argnames="margin")
  with jax.enable_x64(True):
    for margin, scale in ((4, 1.0), (3, 2.0), (1, 1.0)):
      want = pml_margin_softmax(x, y, w, margin=margin, scale=scale, sphere=sphere)
      got = fn(jnp.asarray(x), y, jnp.asarray(w), margin=margin, scale=scale).mean()
      np.testing.assert_allclose(got, want, rtol=1e-10)


def test_psi_is_continuous_monotonic_and_has_finite_gradients_everywhere():
  # x swept over the whole half circle from its class's weight, theta = 0 ... pi
  # included: the target logit |x| psi(theta) decreases continuously
  angles = np.linspace(0.0, math.pi, 181)
  x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
  w = np.array([[1.0, 0.0], [-0.6, 0.8]])
  y = np.zeros(len(x), np.int32)
  for m in range(1, 6):
    psi = np.array([ref_psi(math.cos(a), m) for a in angles])
    assert np.all(np.diff(psi) < 0), m
  with jax.enable_x64(True):
    for m in (2, 4):

      def total(x, m=m):
        return sphereface_loss(x, y, w, margin=m).sum()

      value, grad = jax.jit(jax.value_and_grad(total))(jnp.asarray(x))
      want = ref_margin_softmax(x, y, w, m, unit=True).sum()
      np.testing.assert_allclose(value, want, rtol=1e-9)
      assert np.all(np.isfinite(grad)), m


@pytest.mark.parametrize("name", CASES)
def test_check_grads(name):
  x, y, w = make_inputs(n=6, num_classes=4, dim=3, seed=2)
  with jax.enable_x64(True):
    f = jax.jit(lambda x, w: _call(name, x, jnp.asarray(y), w))
    check_grads(f, (jnp.asarray(x), jnp.asarray(w)), 1, ["rev"], eps=1e-6)


def test_annealing_is_a_learnable_or_traced_scalar_and_tends_to_softmax():
  x, y, w = make_inputs(seed=5)
  with jax.enable_x64(True):
    x, w = jnp.asarray(x), jnp.asarray(w)
    f = jax.jit(lambda lam: large_margin_softmax_loss(x, y, w, annealing=lam))
    # lambda -> infinity: the plain softmax on x . w
    plain = losses.softmax_cross_entropy_loss(x, y, w)
    np.testing.assert_allclose(f(1e9), plain, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(f(3.0), ref_margin_softmax(x, y, w, annealing=3.0), 1e-9)
    check_grads(f, (jnp.asarray(2.0),), 1, ["rev"], eps=1e-6)


def test_p2sgrad_gradient_is_the_papers():
  # Zhang et al. eq. 11, with r_ij = cos_ij - [j = y_i]:
  # d/dx_i = sum_j r_ij (w^_j - cos_ij x^_i) / |x_i|,
  # d/dw_j = sum_i r_ij (x^_i - cos_ij w^_j) / |w_j|
  x, y, w = make_inputs(seed=6)
  with jax.enable_x64(True):
    gx, gw = jax.grad(lambda x, w: p2sgrad_loss(x, y, w).sum(), (0, 1))(x, w)
  want_x, want_w = np.zeros_like(x), np.zeros_like(w)
  for i in range(len(x)):
    if y[i] < 0:
      continue
    xh = x[i] / np.linalg.norm(x[i])
    for j in range(len(w)):
      wh = w[j] / np.linalg.norm(w[j])
      cos = xh @ wh
      residual = cos - (j == y[i])
      want_x[i] += residual * (wh - cos * xh) / np.linalg.norm(x[i])
      want_w[j] += residual * (xh - cos * wh) / np.linalg.norm(w[j])
  np.testing.assert_allclose(gx, want_x, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(gw, want_w, rtol=1e-9, atol=1e-12)
  # pytorch-metric-learning's P2SGradLoss: the MSE over the [n, C] cosines
  cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (
    w / np.linalg.norm(w, axis=1, keepdims=True)
  ).T
  real = y >= 0
  mse = np.mean((cos[real] - np.eye(len(w))[y[real]]) ** 2)
  with jax.enable_x64(True):
    got = p2sgrad_loss(x[real], y[real], w)
    np.testing.assert_allclose(2 * got.mean() / len(w), mse, rtol=1e-10)


@pytest.mark.parametrize("name", ["lsoftmax", "sphereface", "p2sgrad"])
def test_degenerate_inputs_and_padding(name):
  # exactly on the weight (theta = 0), exactly opposite (pi), a zero embedding, a
  # padding row holding NaN: finite losses and gradients, bf16 computed in float32
  x, y, w = make_inputs(n=6, num_classes=4, dim=3, seed=3)
  x[0], x[1], x[2] = w[y[0]], -2 * w[y[1]], 0.0
  y[5] = -1
  x[5] = np.nan

  def total(x, y, w):
    loss = _call(name, x, y, w)
    return loss.sum(), loss

  step = jax.jit(jax.value_and_grad(total, (0, 2), has_aux=True))
  for dtype in (jnp.bfloat16, jnp.float32):
    (_, loss), (gx, gw) = step(jnp.asarray(x, dtype), y, jnp.asarray(w, dtype))
    assert loss.dtype == jnp.float32
    assert np.all(np.isfinite(loss)) and loss[5] == 0
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gw)) and np.all(gx[5] == 0)
  (value, _), (gx, gw) = step(jnp.asarray(x), -np.ones_like(y), jnp.asarray(w))
  assert value == 0 and np.all(gx == 0) and np.all(gw == 0)
  bad = x.copy()
  bad[3, 0] = np.nan  # a real row: its loss is NaN
  assert np.isnan(_call(name, bad, y, w)[3])


@pytest.mark.parametrize("name", ["lsoftmax_m2_annealed", "p2sgrad"])
def test_sharded_classes_match_unsharded(name):
  # the batch and the classes split over 8 devices (shard_map); float64
  x, y, w = make_inputs(n=16, num_classes=16, dim=4, seed=7)
  y[6] = 15  # a class on the last device
  mesh = Mesh(np.array(jax.devices()), ("i",))
  fn = functools.partial(_call, name, proxy_axis_name="i")
  sharded = jax.shard_map(
    lambda x, y, w: fn(x, y, w), mesh=mesh, in_specs=(P("i"),) * 3, out_specs=P("i")
  )
  with jax.enable_x64(True):
    x, y, w = jnp.asarray(x), jnp.asarray(y), jnp.asarray(w)
    want, want_g = jax.value_and_grad(lambda x, w: _call(name, x, y, w).sum(), (0, 1))(
      x, w
    )
    got, got_g = jax.jit(
      jax.value_and_grad(lambda x, w: sharded(x, y, w).sum(), (0, 1))
    )(x, w)
    np.testing.assert_allclose(got, want, rtol=1e-9)
    for a, b in zip(got_g, want_g, strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_errors_name_the_argument():
  x, y, w = jnp.ones((4, 3)), jnp.array([0, 1, 2, -1]), jnp.eye(3)
  for fn in (large_margin_softmax_loss, sphereface_loss):
    for bad in (0, -1, 2.5):
      with pytest.raises(ValueError, match="margin must be a positive integer"):
        fn(x, y, w, margin=bad)
    with pytest.raises(TypeError, match="margin"):
      fn(x, y, w, margin="4")
    with pytest.raises(ValueError, match="scale must be > 0"):
      fn(x, y, w, scale=0.0)
    with pytest.raises(ValueError, match="annealing must be >= 0"):
      fn(x, y, w, annealing=-1.0)
    with pytest.raises(ValueError, match="annealing must be a scalar"):
      fn(x, y, w, annealing=jnp.ones(2))
  for fn, arg in (
    (large_margin_softmax_loss, "weights"),
    (sphereface_loss, "proxies"),
    (p2sgrad_loss, "proxies"),
  ):
    with pytest.raises(ValueError, match=r"labels must lie in \[-1, 3\)"):
      fn(x, jnp.array([0, 1, 3, -1]), w)
    with pytest.raises(ValueError, match=f"{arg} must have the embedding size"):
      fn(x, y, jnp.ones((3, 4)))
    with pytest.raises(ValueError, match=rf"{arg} must be \[C, d\]"):
      fn(x, y, jnp.ones((3, 2, 3)))
    with pytest.raises(ValueError, match="embeddings must be 2-D"):
      fn(jnp.ones(3), y, w)


def test_exported_from_losses():
  assert losses.large_margin_softmax_loss is large_margin_softmax_loss
  assert losses.sphereface_loss is sphereface_loss
  assert losses.p2sgrad_loss is p2sgrad_loss

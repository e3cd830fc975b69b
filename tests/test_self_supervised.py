"""Self-supervised two-view losses: VICReg and Barlow Twins.

References are plain NumPy, written from the papers (VICReg: Eqs. 1-6 and Algorithm
1 of Bardes et al. 2022; Barlow Twins: Eq. 2 and Algorithm 1 of Zbontar et al. 2021,
and the authors' BatchNorm form), with pytorch-metric-learning's VICRegLoss
transcribed for the stated equivalence. The global-batch statistics are checked on 8
simulated devices under pmap and shard_map."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from metriclearn.losses import barlow_twins_loss, vicreg_loss

LOSSES = {"vicreg": vicreg_loss, "barlow_twins": barlow_twins_loss}
# Compiled once per shape: eager calls dispatch (and build) every operation anew.
JIT = {
  "vicreg": jax.jit(vicreg_loss),
  "barlow_twins": jax.jit(barlow_twins_loss, static_argnames="unbiased"),
}

# ----------------------------------------------------------------------------------
# Independent references (float64 NumPy, loops where the paper sums)


def ref_vicreg(z1, z2, lam=25.0, mu=25.0, nu=1.0, gamma=1.0, eps=1e-4):
  """Bardes et al., Eq. 6 with Algorithm 1's invariance (F.mse_loss) and unbiased
  variances and covariances (torch's var(dim=0), / (N - 1))."""
  n, d = z1.shape
  invariance = sum((z1[b, j] - z2[b, j]) ** 2 for b in range(n) for j in range(d))
  invariance /= n * d
  variance = covariance = 0.0
  for z in (z1, z2):
    mean = [sum(z[b, j] for b in range(n)) / n for j in range(d)]
    cov = np.zeros((d, d))
    for j in range(d):
      for k in range(d):
        cov[j, k] = sum((z[b, j] - mean[j]) * (z[b, k] - mean[k]) for b in range(n)) / (
          n - 1
        )
    variance += sum(max(0.0, gamma - np.sqrt(cov[j, j] + eps)) for j in range(d)) / d
    covariance += sum(cov[j, k] ** 2 for j in range(d) for k in range(d) if j != k) / d
  return lam * invariance + mu * variance + nu * covariance


def ref_pml_vicreg(emb, ref_emb, invariance_lambda=25, variance_mu=25, covariance_v=1):
  """pytorch-metric-learning 2.x VICRegLoss with its default MeanReducer: the sum of
  its four sub-losses, each element-wise one averaged."""
  eps = 1e-4
  invariance = invariance_lambda * np.mean(np.mean((emb - ref_emb) ** 2, axis=1))
  var1 = np.maximum(0, 1 - np.sqrt(emb.var(axis=0, ddof=1) + eps)) / 2
  var2 = np.maximum(0, 1 - np.sqrt(ref_emb.var(axis=0, ddof=1) + eps)) / 2
  n, d = emb.shape
  off = ~np.eye(d, dtype=bool)
  e, r = emb - emb.mean(0), ref_emb - ref_emb.mean(0)
  cov_e, cov_r = e.T @ e / (n - 1), r.T @ r / (n - 1)
  cov = (cov_e[off] ** 2).sum() / d + (cov_r[off] ** 2).sum() / d
  return (
    invariance
    + variance_mu * var1.mean()
    + variance_mu * var2.mean()
    + (covariance_v * cov)
  )


def ref_barlow_algorithm1(z_a, z_b, lam=5e-3):
  """Zbontar et al., Algorithm 1: z.std(0) (unbiased), c = z_a^T z_b / N."""
  n, d = z_a.shape
  za = (z_a - z_a.mean(0)) / z_a.std(0, ddof=1)
  zb = (z_b - z_b.mean(0)) / z_b.std(0, ddof=1)
  c = za.T @ zb / n
  c_diff = (c - np.eye(d)) ** 2
  c_diff[~np.eye(d, dtype=bool)] *= lam
  return c_diff.sum()


def ref_barlow_eq2(z_a, z_b, lam=5e-3):
  """Zbontar et al., Eq. 2: C_ij the correlation of dimension i of z_a and j of z_b."""
  n, d = z_a.shape
  a, b = z_a - z_a.mean(0), z_b - z_b.mean(0)
  loss = 0.0
  for i in range(d):
    for j in range(d):
      num = sum(a[k, i] * b[k, j] for k in range(n))
      c = num / (np.sqrt(sum(a[:, i] ** 2)) * np.sqrt(sum(b[:, j] ** 2)))
      loss += (1 - c) ** 2 if i == j else lam * c**2
  return loss


def ref_barlow_batchnorm(z_a, z_b, lam=5e-3, eps=1e-5, unbiased=False):
  """The authors' code: BatchNorm1d(affine=False) in training mode (biased variance,
  eps inside the square root), c = bn(z_a)^T bn(z_b) / N."""
  n, d = z_a.shape
  ddof = 1 if unbiased else 0
  za = (z_a - z_a.mean(0)) / np.sqrt(z_a.var(0, ddof=ddof) + eps)
  zb = (z_b - z_b.mean(0)) / np.sqrt(z_b.var(0, ddof=ddof) + eps)
  c = za.T @ zb / n
  off = ~np.eye(d, dtype=bool)
  return ((1 - np.diag(c)) ** 2).sum() + lam * (c[off] ** 2).sum()


def views(n=12, d=4, seed=0, scale=0.7):
  """Two correlated views (a shared part plus noise), float64."""
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(n, d)) * scale
  mix = np.eye(d) + 0.4 * rng.normal(size=(d, d))  # correlated dimensions
  z1 = (base + 0.3 * rng.normal(size=(n, d))) @ mix
  z2 = (base + 0.3 * rng.normal(size=(n, d))) @ mix
  return z1, z2


# ----------------------------------------------------------------------------------
# Values against the references


VICREG_OPTIONS = [
  {},
  {"invariance_weight": 1.0, "variance_weight": 3.0, "covariance_weight": 0.5},
  {"gamma": 0.5, "eps": 1e-2},
  {"gamma": 2.0, "invariance_weight": 0.0},
]


@pytest.mark.parametrize("options", VICREG_OPTIONS)
def test_vicreg_matches_the_paper(options):
  z1, z2 = views()
  names = {
    "invariance_weight": "lam",
    "variance_weight": "mu",
    "covariance_weight": "nu",
    "gamma": "gamma",
    "eps": "eps",
  }
  want = ref_vicreg(z1, z2, **{names[k]: v for k, v in options.items()})
  with jax.enable_x64(True):
    got = vicreg_loss(jnp.asarray(z1), jnp.asarray(z2), **options)
  assert got.shape == () and got.dtype == jnp.float64
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_vicreg_reproduces_pytorch_metric_learning_with_half_the_variance_weight():
  z1, z2 = views(seed=1)
  with jax.enable_x64(True):
    got = vicreg_loss(jnp.asarray(z1), jnp.asarray(z2), variance_weight=12.5)
    paper = vicreg_loss(jnp.asarray(z1), jnp.asarray(z2))
  np.testing.assert_allclose(float(got), ref_pml_vicreg(z1, z2), rtol=1e-5)
  assert float(paper) > float(got)  # the paper counts each view's variance in full


@pytest.mark.parametrize("lam", [5e-3, 0.5])
def test_barlow_twins_matches_the_paper(lam):
  z1, z2 = views(seed=2)
  with jax.enable_x64(True):
    a, b = jnp.asarray(z1), jnp.asarray(z2)
    eq2 = barlow_twins_loss(a, b, off_diagonal_weight=lam, eps=0.0)
    alg1 = barlow_twins_loss(a, b, off_diagonal_weight=lam, eps=0.0, unbiased=True)
    default = barlow_twins_loss(a, b, off_diagonal_weight=lam)
    unbiased = barlow_twins_loss(a, b, off_diagonal_weight=lam, unbiased=True)
  np.testing.assert_allclose(float(eq2), ref_barlow_eq2(z1, z2, lam), rtol=1e-5)
  np.testing.assert_allclose(float(alg1), ref_barlow_algorithm1(z1, z2, lam), rtol=1e-5)
  np.testing.assert_allclose(
    float(default), ref_barlow_batchnorm(z1, z2, lam), rtol=1e-5
  )
  np.testing.assert_allclose(
    float(unbiased), ref_barlow_batchnorm(z1, z2, lam, unbiased=True), rtol=1e-5
  )


def test_collapsed_embeddings_by_hand():
  z = jnp.full((4, 3), 0.5)
  # VICReg: no invariance, variances 0: std sqrt(1e-4) = 0.01, hinge 0.99 per
  # dimension and view: 25 * (0.99 + 0.99) = 49.5; covariances 0
  np.testing.assert_allclose(float(JIT["vicreg"](z, z)), 49.5, rtol=1e-6)
  # Barlow Twins: standardised views all 0, C = 0: (1 - 0)^2 per dimension = 3
  np.testing.assert_allclose(float(JIT["barlow_twins"](z, z)), 3.0, rtol=1e-6)


# ----------------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients(name):
  z1, z2 = views(n=6, d=3, seed=3)
  valid = np.array([True, True, False, True, True, True])
  with jax.enable_x64(True):
    a, b = jnp.asarray(z1), jnp.asarray(z2)
    check_grads(JIT[name], (a, b), order=1, modes=["rev"])
    masked = functools.partial(JIT[name], valid=jnp.asarray(valid))
    check_grads(masked, (a, b), order=1, modes=["rev"])
    if name == "barlow_twins":
      fn = functools.partial(JIT[name], unbiased=True, eps=0.0)
      check_grads(fn, (a, b), order=1, modes=["rev"])


# ----------------------------------------------------------------------------------
# The global batch on 8 devices


def _on_devices(fn, z1, z2, valid, mode):
  """The loss on every device and d(loss)/d(z1, z2), the batch split over 8 devices.

  'pmap' and 'shard_map_step' (check_vma=False, as the train step runs) take each
  device's gradient of its own copy: the gradient of the sum of the 8 equal copies,
  divided by 8 here. 'shard_map' (check_vma=True) differentiates from outside."""
  k = jax.device_count()
  n, d = z1.shape

  def local(a, b, v):
    return fn(a, b, valid=v, axis_name="i")

  if mode == "pmap":
    split = (z1.reshape(k, n // k, d), z2.reshape(k, n // k, d), valid.reshape(k, -1))
    values, (g1, g2) = jax.pmap(jax.value_and_grad(local, (0, 1)), "i")(*split)
    return values, g1.reshape(n, d) / k, g2.reshape(n, d) / k
  mesh = Mesh(np.array(jax.devices()), ("i",))
  if mode == "shard_map_step":
    inner = jax.shard_map(
      lambda a, b, v: jax.value_and_grad(local, (0, 1))(a, b, v)[1] + (local(a, b, v),),
      mesh=mesh,
      in_specs=(P("i"),) * 3,
      out_specs=(P("i"), P("i"), P()),
      check_vma=False,
    )
    g1, g2, value = jax.jit(inner)(z1, z2, valid)
    return jnp.full((k,), value), g1 / k, g2 / k
  outer = jax.shard_map(local, mesh=mesh, in_specs=(P("i"),) * 3, out_specs=P())
  value, (g1, g2) = jax.jit(jax.value_and_grad(outer, (0, 1)))(z1, z2, valid)
  return jnp.full((k,), value), g1, g2


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_global_batch_on_8_devices_matches_one_device(name):
  fn = LOSSES[name]
  z1, z2 = views(n=16, d=4, seed=4)
  valid = np.ones(16, bool)
  valid[[3, 6, 7]] = False  # device 3 holds only padding
  z1[6, 1] = np.nan  # padding is inert, wherever it lies
  with jax.enable_x64(True):
    a, b, v = jnp.asarray(z1), jnp.asarray(z2), jnp.asarray(valid)
    want = fn(a, b, valid=v)
    want1, want2 = jax.grad(lambda a, b: fn(a, b, valid=v), (0, 1))(a, b)
    assert np.isfinite(float(want))
    for mode in ("pmap", "shard_map", "shard_map_step"):
      values, g1, g2 = _on_devices(fn, a, b, v, mode)
      np.testing.assert_allclose(values, float(want), rtol=1e-10, err_msg=mode)
      np.testing.assert_allclose(g1, want1, rtol=1e-9, atol=1e-12, err_msg=mode)
      np.testing.assert_allclose(g2, want2, rtol=1e-9, atol=1e-12, err_msg=mode)


# ----------------------------------------------------------------------------------
# The contract: padding, too few rows, NaN, dtypes, transformations


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_padding_rows_are_inert(name):
  fn = JIT[name]
  z1, z2 = views(n=8, d=3, seed=5)
  valid = np.array([True, False, True, True, False, True, True, True])
  z1[1] = np.nan
  z2[4] = np.inf
  value, (g1, g2) = jax.value_and_grad(
    lambda a, b: fn(a, b, valid=jnp.asarray(valid)), (0, 1)
  )(jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32))
  real = jnp.asarray(z1[valid], jnp.float32), jnp.asarray(z2[valid], jnp.float32)
  want, (w1, w2) = jax.value_and_grad(fn, (0, 1))(*real)
  np.testing.assert_allclose(value, want, rtol=1e-5)
  np.testing.assert_allclose(g1[valid], w1, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(g2[valid], w2, rtol=1e-4, atol=1e-6)
  assert np.all(g1[~valid] == 0) and np.all(g2[~valid] == 0)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_fewer_than_two_real_rows_give_zero_and_zero_gradient(name):
  fn = JIT[name]
  z1, z2 = views(n=4, d=3, seed=6)
  cases = [
    ([False] * 4, {}),
    ([False, True, False, False], {}),
    ([True] + [False] * 3, {"eps": 0.0}),
  ]
  for valid, options in cases:
    value, grads = jax.value_and_grad(
      lambda a, b, v=valid, o=options: fn(a, b, valid=jnp.asarray(v), **o), (0, 1)
    )(jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32))
    assert float(value) == 0.0
    for g in grads:
      assert np.all(np.asarray(g) == 0)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_nan_in_a_real_row_gives_nan(name):
  fn = JIT[name]
  z1, z2 = views(n=6, d=1, seed=7)  # d = 1: no off-diagonal term to carry it
  for bad in (z1, z2):
    saved = bad[2, 0]
    bad[2, 0] = np.nan
    assert np.isnan(float(fn(jnp.asarray(z1), jnp.asarray(z2))))
    bad[2, 0] = saved
  z1, z2 = views(n=6, d=3, seed=7)
  z2[0, 2] = np.inf
  assert np.isnan(float(fn(jnp.asarray(z1), jnp.asarray(z2))))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bfloat16_is_computed_in_float32_and_jit_vmap_work(name):
  fn = LOSSES[name]
  z1, z2 = views(n=8, d=4, seed=8)
  low = jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16)
  got = fn(*low)
  assert got.dtype == jnp.float32
  want = fn(*(x.astype(jnp.float32) for x in low))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  a, b = jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32)
  np.testing.assert_allclose(jax.jit(fn)(a, b), fn(a, b), rtol=1e-6)
  batched = jax.vmap(fn)(jnp.stack([a, b]), jnp.stack([b, a]))
  np.testing.assert_allclose(batched, [fn(a, b), fn(b, a)], rtol=1e-6)


def test_traced_options_under_jit():
  z1, z2 = (jnp.asarray(x, jnp.float32) for x in views(seed=9))
  got = jax.jit(lambda w: vicreg_loss(z1, z2, variance_weight=w))(12.5)
  np.testing.assert_allclose(got, vicreg_loss(z1, z2, variance_weight=12.5), rtol=1e-6)
  got = jax.jit(lambda w: barlow_twins_loss(z1, z2, off_diagonal_weight=w))(0.1)
  want = barlow_twins_loss(z1, z2, off_diagonal_weight=0.1)
  np.testing.assert_allclose(got, want, rtol=1e-6)


# ----------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bad_input_raises_naming_the_argument(name):
  fn = LOSSES[name]
  z = jnp.ones((4, 3))
  with pytest.raises(ValueError, match=r"same shape .* \(4, 3\) and \(4, 2\)"):
    fn(z, jnp.ones((4, 2)))
  with pytest.raises(ValueError, match=r"same shape .* \(4, 3\) and \(5, 3\)"):
    fn(z, jnp.ones((5, 3)))
  with pytest.raises(ValueError, match="z1 must be 2-D"):
    fn(jnp.ones(3), jnp.ones(3))
  with pytest.raises(ValueError, match="z2 must be 2-D"):
    fn(z, jnp.ones((4, 3, 1)))
  with pytest.raises(ValueError, match="n >= 2"):
    fn(jnp.ones((1, 3)), jnp.ones((1, 3)))
  with pytest.raises(ValueError, match="d >= 1"):
    fn(jnp.ones((4, 0)), jnp.ones((4, 0)))
  with pytest.raises(ValueError, match=r"valid must have shape \(4,\)"):
    fn(z, z, valid=jnp.ones(3, bool))
  with pytest.raises(TypeError, match="z1 must hold real numbers"):
    fn(z.astype(jnp.complex64), z)
  with pytest.raises(ValueError, match="eps must be >= 0"):
    fn(z, z, eps=-1.0)


def test_bad_options_raise_naming_the_option():
  z = jnp.ones((4, 3))
  for option in ("invariance_weight", "variance_weight", "covariance_weight", "gamma"):
    with pytest.raises(ValueError, match=f"{option} must be >= 0"):
      vicreg_loss(z, z, **{option: -1.0})
  with pytest.raises(ValueError, match="off_diagonal_weight must be >= 0"):
    barlow_twins_loss(z, z, off_diagonal_weight=-0.1)
  with pytest.raises(TypeError, match="unbiased must be True or False"):
    barlow_twins_loss(z, z, unbiased="yes")
  with pytest.raises(ValueError, match="variance_weight must be a scalar"):
    vicreg_loss(z, z, variance_weight=jnp.ones(2))

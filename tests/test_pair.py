"""Pair losses: hand arithmetic, every published contrastive form, transformations,
properties and errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from jax.test_util import check_grads

from metriclearn.losses import pair
from metriclearn.losses.pair import (
  CONTRASTIVE_VARIANTS,
  contrastive_loss,
  sigmoid_pair_loss,
  weighted_l1_loss,
)

ORIGIN = jnp.zeros(2)
AT_05 = jnp.array([0.3, 0.4])  # |(0.3, 0.4)| = 0.5
AT_03 = jnp.array([0.18, 0.24])  # |(0.18, 0.24)| = 0.3
AT_15 = jnp.array([0.9, 1.2])  # |(0.9, 1.2)| = 1.5


def test_worked_examples_squared_without_half():
  # margin 1, D^2 for similar, max(0, 1 - D)^2 for dissimilar
  np.testing.assert_allclose(contrastive_loss(ORIGIN, AT_05, True), 0.25)  # 0.5^2
  np.testing.assert_allclose(contrastive_loss(ORIGIN, AT_03, False), 0.49)  # 0.7^2
  assert float(contrastive_loss(ORIGIN, AT_15, False)) == 0.0  # beyond the margin


@pytest.mark.parametrize(
  "variant, options, similar_05, dissimilar_03",
  [
    # Hadsell 2006: 1/2 D^2 = 0.125 ; 1/2 max(0, 1 - 0.3)^2 = 0.245
    ("hadsell2006", {}, 0.125, 0.245),
    ("squared", {}, 0.25, 0.49),
    # y D + (1 - y) max(0, m - D): 0.5 ; 0.7
    ("linear", {}, 0.5, 0.7),
    # 1/2 y D^2 + (1 - y) max(m - D, 0): 0.125 ; 0.7
    ("half_squared_pos", {}, 0.125, 0.7),
    # pml with pos_margin 0.2: max(0, 0.5 - 0.2) = 0.3 ; max(0, 1 - 0.3) = 0.7
    ("pml", {"pos_margin": 0.2}, 0.3, 0.7),
  ],
)
def test_published_variants(variant, options, similar_05, dissimilar_03):
  kw = CONTRASTIVE_VARIANTS[variant] | options
  np.testing.assert_allclose(contrastive_loss(ORIGIN, AT_05, True, **kw), similar_05)
  np.testing.assert_allclose(
    contrastive_loss(ORIGIN, AT_03, False, **kw), dissimilar_03, rtol=1e-6
  )


def test_other_distances_and_margins():
  e1, e2 = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
  # cosine distance of orthogonal vectors = 1: similar -> 1^2; margin 0.5 -> 0
  np.testing.assert_allclose(contrastive_loss(e1, e2, True, distance="cosine"), 1.0)
  assert float(contrastive_loss(e1, e2, False, distance="cosine", margin=0.5)) == 0
  # squared Euclidean distance 0.25: similar -> 0.25^2 = 0.0625
  got = contrastive_loss(ORIGIN, AT_05, True, distance="squared_euclidean")
  np.testing.assert_allclose(got, 0.0625)
  # margin 2: dissimilar at 1.5 -> (2 - 1.5)^2 = 0.25
  np.testing.assert_allclose(contrastive_loss(ORIGIN, AT_15, False, margin=2.0), 0.25)


def test_sigmoid_pair_loss_hand_values():
  # D = 0.5, scale 2, bias 1: logit 1 - 2 * 0.5 = 0 -> log 2 either way
  for similar in (True, False):
    got = sigmoid_pair_loss(ORIGIN, AT_05, similar, 2.0, 1.0)
    np.testing.assert_allclose(got, math.log(2), rtol=1e-6)
  # bias 3: logit 2; similar: log(1 + e^-2) = 0.126928;
  # dissimilar: log(1 + e^2) = 2.126928
  np.testing.assert_allclose(
    sigmoid_pair_loss(ORIGIN, AT_05, True, 2.0, 3.0), 0.126928, rtol=1e-5
  )
  np.testing.assert_allclose(
    sigmoid_pair_loss(ORIGIN, AT_05, False, 2.0, 3.0), 2.126928, rtol=1e-5
  )
  # the probability of "similar" at distance 0.5 is sigma(2) = 0.880797
  logit = pair.pair_logit(ORIGIN, AT_05, 2.0, 3.0)
  np.testing.assert_allclose(jax.nn.sigmoid(logit), 0.880797, rtol=1e-5)


def test_weighted_l1_hand_values():
  x2 = jnp.array([1.0, -2.0])
  alpha = jnp.array([0.5, -1.0])
  # logit = 0.5 * |0 - 1| + (-1) * |0 + 2| + 0.5 = -1
  # similar: -log sigma(-1) = log(1 + e) = 1.3132617;
  # dissimilar: log(1 + e^-1) = 0.3132617
  np.testing.assert_allclose(
    weighted_l1_loss(ORIGIN, x2, True, alpha, 0.5), 1.3132617, rtol=1e-6
  )
  np.testing.assert_allclose(
    weighted_l1_loss(ORIGIN, x2, False, alpha, 0.5), 0.3132617, rtol=1e-6
  )


# Every loss, as f(x1, x2, similar) with its learnable arrays fixed.
LOSSES = {
  "contrastive": lambda a, b, s: contrastive_loss(a, b, s),
  "hadsell": lambda a, b, s: contrastive_loss(
    a, b, s, **CONTRASTIVE_VARIANTS["hadsell2006"]
  ),
  "linear_pos_margin": lambda a, b, s: contrastive_loss(
    a, b, s, pos_margin=0.1, **CONTRASTIVE_VARIANTS["linear"]
  ),
  "cosine": lambda a, b, s: contrastive_loss(a, b, s, distance="cosine", margin=0.5),
  "sigmoid": lambda a, b, s: sigmoid_pair_loss(a, b, s, 1.5, 0.5),
  "weighted_l1": lambda a, b, s: weighted_l1_loss(
    a, b, s, jnp.linspace(-1, 0.5, 4), 0.2
  ),
}


def _batch():
  x1 = jax.random.normal(jax.random.key(0), (6, 4)) * 0.4
  x2 = jax.random.normal(jax.random.key(1), (6, 4)) * 0.4
  similar = jnp.array([True, False, True, False, False, True])
  return x1, x2, similar


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_jit_vmap_loop_agree(name):
  fn = LOSSES[name]
  x1, x2, similar = _batch()
  loop = np.array([float(fn(x1[i], x2[i], similar[i])) for i in range(6)])
  np.testing.assert_allclose(jax.vmap(fn)(x1, x2, similar), loop, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(jax.vmap(fn))(x1, x2, similar), loop, rtol=1e-6)
  assert float(jax.jit(fn)(x1[0], x2[0], similar[0])) == pytest.approx(
    loop[0], rel=1e-6
  )


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients(name):
  fn = LOSSES[name]
  with jax.enable_x64(True):
    x1, x2, similar = (jnp.asarray(np.asarray(a)) for a in _batch())
    x1, x2 = x1.astype(jnp.float64), x2.astype(jnp.float64)
    for i in range(3):  # similar and dissimilar pairs, away from the kinks
      check_grads(
        lambda a, b, i=i: fn(a, b, similar[i]),
        (x1[i], x2[i]),
        order=1,
        modes=["rev"],
        eps=1e-6,
      )
  # identical points: every gradient finite (a plain sqrt would give NaN here)
  x = jnp.array([0.3, -0.2, 0.1, 0.5])
  for s in (True, False):
    g1, g2 = jax.grad(fn, argnums=(0, 1))(x, x, s)
    assert bool(jnp.all(jnp.isfinite(g1)) & jnp.all(jnp.isfinite(g2))), (name, s)


def test_learnable_parameters_have_gradients():
  ds, db = jax.grad(sigmoid_pair_loss, argnums=(3, 4))(ORIGIN, AT_05, True, 2.0, 1.0)
  # l = softplus(z) - z with z = b - s D = 0: dl/dz = sigma(0) - 1 = -0.5
  # dl/ds = -0.5 * (-D) = 0.25; dl/db = -0.5
  np.testing.assert_allclose([ds, db], [0.25, -0.5])
  da = jax.grad(weighted_l1_loss, argnums=3)(
    ORIGIN, jnp.array([1.0, -2.0]), False, jnp.zeros(2), 0.0
  )
  # dissimilar: l = softplus(z), z = 0: dl/dz = 0.5; dz/d alpha = |x1 - x2| = (1, 2)
  np.testing.assert_allclose(da, [0.5, 1.0])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bfloat16_inputs_computed_in_float32(name):
  fn = LOSSES[name]
  x1, x2, similar = _batch()
  got = jax.vmap(fn)(x1.astype(jnp.bfloat16), x2.astype(jnp.bfloat16), similar)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, jax.vmap(fn)(x1, x2, similar), rtol=3e-2, atol=3e-3)


vectors = arrays(np.float32, 4, elements=st.floats(-3, 3, width=32))


@given(a=vectors, b=vectors, similar=st.booleans())
def test_properties_every_loss(a, b, similar):
  for name, fn in LOSSES.items():
    v = float(fn(a, b, similar))
    assert v >= 0.0, name
    # symmetric in x1 and x2
    assert v == pytest.approx(float(fn(b, a, similar)), rel=1e-5, abs=1e-6), name


@given(a=vectors, b=vectors, margin=st.floats(0.0, 4.0))
def test_properties_contrastive(a, b, margin):
  for variant in CONTRASTIVE_VARIANTS.values():
    # a similar pair of identical points costs nothing
    assert float(contrastive_loss(a, a, True, margin=margin, **variant)) == 0.0
    # a dissimilar pair beyond the margin costs nothing
    if np.linalg.norm(a.astype(np.float64) - b) > margin + 1e-4:
      assert float(contrastive_loss(a, b, False, margin=margin, **variant)) == 0.0


def test_similar_accepts_bool_and_01():
  for s_true in (True, 1, 1.0, jnp.array(True), jnp.array(1)):
    np.testing.assert_allclose(contrastive_loss(ORIGIN, AT_05, s_true), 0.25)
  for s_false in (False, 0, jnp.array(0.0)):
    np.testing.assert_allclose(contrastive_loss(ORIGIN, AT_03, s_false), 0.49)


def test_bad_input_raises_at_trace_time():
  jitted = jax.jit(contrastive_loss)
  with pytest.raises(
    ValueError, match=r"x1 and x2 must have the same shape.*\(3,\).*\(2,\)"
  ):
    jitted(jnp.zeros(3), jnp.zeros(2), True)
  with pytest.raises(ValueError, match="x1 and x2 must be 1-D"):
    contrastive_loss(jnp.zeros((4, 2)), jnp.zeros((4, 2)), True)
  with pytest.raises(ValueError, match=r"similar must be a scalar.*\(3,\)"):
    jitted(ORIGIN, AT_05, jnp.array([True, False, True]))
  with pytest.raises(ValueError, match="similar must be True/False or 0/1"):
    contrastive_loss(ORIGIN, AT_05, 2)
  with pytest.raises(TypeError, match="similar must be bool or 0/1"):
    contrastive_loss(ORIGIN, AT_05, jnp.array(1 + 1j))
  with pytest.raises(ValueError, match="margin must be >= 0"):
    contrastive_loss(ORIGIN, AT_05, True, margin=-0.1)
  with pytest.raises(ValueError, match="pos_margin must be >= 0"):
    contrastive_loss(ORIGIN, AT_05, True, pos_margin=-1.0)
  with pytest.raises(ValueError, match="pos_power must be >= 1"):
    contrastive_loss(ORIGIN, AT_05, True, pos_power=0.5)
  with pytest.raises(ValueError, match="scale must be > 0"):
    sigmoid_pair_loss(ORIGIN, AT_05, True, 0.0, 1.0)
  with pytest.raises(ValueError, match="scale must be > 0"):
    jax.jit(lambda a, b: sigmoid_pair_loss(a, b, True, -1.0, 0.0))(ORIGIN, AT_05)
  with pytest.raises(ValueError, match="scale must be a scalar"):
    sigmoid_pair_loss(ORIGIN, AT_05, True, jnp.ones(2), 1.0)
  with pytest.raises(ValueError, match=r"alpha must have the embedding's shape \(2,\)"):
    weighted_l1_loss(ORIGIN, AT_05, True, jnp.ones(3), 0.0)

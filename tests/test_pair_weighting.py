"""Pair-weighting batch losses: contrastive over all pairs, multi-similarity, circle,
lifted structure (generalized and Song et al.'s), margin loss.

References are plain NumPy loops over anchors and pairs written from the papers'
formulas, with their own pair relations (never metriclearn.masks)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from device_utils import assert_matches_single_device
from jax.test_util import check_grads
from references import np_pairs

from metriclearn import distances, reduce
from metriclearn.losses.pair import CONTRASTIVE_VARIANTS, contrastive_loss
from metriclearn.losses.pair_weighting import (
  batch_contrastive_loss,
  circle_loss,
  contrastive_pair_losses,
  lifted_structure_loss,
  margin_loss,
  multi_similarity_loss,
)

# ----------------------------------------------------------------------------------
# Independent references


def _dist(x, y):
  return math.sqrt(sum((float(u) - float(v)) ** 2 for u, v in zip(x, y, strict=True)))


def _cos(x, y):
  dot = sum(float(u) * float(v) for u, v in zip(x, y, strict=True))
  return dot / (_dist(x, 0 * x) * _dist(y, 0 * y))


def _rows(A, B, pos, neg, a, fn):
  P = [fn(A[a], B[j]) for j in range(len(B)) if pos[a, j]]
  N = [fn(A[a], B[j]) for j in range(len(B)) if neg[a, j]]
  return P, N


def ref_contrastive(
  A,
  B,
  pos,
  neg,
  labels,
  margin=1.0,
  pos_margin=0.0,
  pos_power=2,
  neg_power=2,
  pos_weight=1.0,
  neg_weight=1.0,
):
  out = np.zeros(len(A))
  for a in range(len(A)):
    P, N = _rows(A, B, pos, neg, a, _dist)
    vals = [pos_weight * max(0.0, d - pos_margin) ** pos_power for d in P]
    vals += [neg_weight * max(0.0, margin - d) ** neg_power for d in N]
    out[a] = sum(vals) / len(vals) if vals else 0.0
  return out


def ref_multi_similarity(A, B, pos, neg, labels, alpha=2.0, beta=50.0, base=0.5):
  out = np.zeros(len(A))
  for a in range(len(A)):
    P, N = _rows(A, B, pos, neg, a, _cos)
    if P and N:
      out[a] = math.log(1 + sum(math.exp(-alpha * (s - base)) for s in P)) / alpha
      out[a] += math.log(1 + sum(math.exp(beta * (s - base)) for s in N)) / beta
  return out


def ref_circle(A, B, pos, neg, labels, margin=0.4, gamma=80.0):
  m = margin
  out = np.zeros(len(A))
  for a in range(len(A)):
    P, N = _rows(A, B, pos, neg, a, _cos)
    if P and N:
      sum_n = sum(math.exp(gamma * max(0, s + m) * (s - m)) for s in N)
      sum_p = sum(math.exp(-gamma * max(0, 1 + m - s) * (s - (1 - m))) for s in P)
      out[a] = math.log(1 + sum_n * sum_p)
  return out


def ref_lifted(A, B, pos, neg, labels, margin=1.0):
  out = np.zeros(len(A))
  for a in range(len(A)):
    P, N = _rows(A, B, pos, neg, a, _dist)
    if P and N:
      z = math.log(sum(math.exp(d) for d in P))
      z += math.log(sum(math.exp(margin - d) for d in N))
      out[a] = max(0.0, z)
  return out


def ref_song(A, B, pos, neg, labels, margin=1.0):
  """Song et al. 2016: J_ij = log(sum_{N_i} e^{m-D} + sum_{N_j} e^{m-D}) + D_ij."""
  n = len(A)

  def neg_sum(i):
    return sum(math.exp(margin - _dist(A[i], B[k])) for k in range(n) if neg[i, k])

  out = np.zeros(n)
  for a in range(n):
    vals = []
    for j in range(n):
      if pos[a, j] and (neg[a].any() or neg[j].any()):
        J = math.log(neg_sum(a) + neg_sum(j)) + _dist(A[a], B[j])
        vals.append(0.5 * max(0.0, J) ** 2)
    out[a] = sum(vals) / len(vals) if vals else 0.0
  return out


def ref_margin(A, B, pos, neg, labels, beta=1.2, margin=0.2, nu=0.0, normalize=True):
  if normalize:
    A = A / np.sqrt((A * A).sum(1, keepdims=True))
    B = B / np.sqrt((B * B).sum(1, keepdims=True))
  beta = np.asarray(beta, np.float64)
  out = np.zeros(len(A))
  for a in range(len(A)):
    P, N = _rows(A, B, pos, neg, a, _dist)
    if P and N:
      b = float(beta) if beta.ndim == 0 else float(beta[labels[a]])
      vals = [max(0.0, margin + (d - b)) + nu * b for d in P]
      vals += [max(0.0, margin - (d - b)) + nu * b for d in N]
      out[a] = sum(vals) / len(vals)
  return out


# ----------------------------------------------------------------------------------
# The losses under test, each with its reference and options

BETA_C = np.array([0.9, 1.2, 1.0, 1.4, 0.8, 1.1])  # per-class margin-loss boundary


def _margin_per_class(e, y, **kw):
  return margin_loss(e, y, jnp.asarray(BETA_C, jnp.float32), **kw)


SPECS = {
  "contrastive": (batch_contrastive_loss, ref_contrastive, {}),
  "contrastive_options": (
    batch_contrastive_loss,
    ref_contrastive,
    dict(margin=1.5, pos_margin=0.2, pos_power=1, neg_power=1, pos_weight=0.5),
  ),
  "multi_similarity": (multi_similarity_loss, ref_multi_similarity, {}),
  "circle": (circle_loss, ref_circle, {}),
  "lifted": (lifted_structure_loss, ref_lifted, {}),
  "lifted_song": (
    functools.partial(lifted_structure_loss, form="song2016"),
    ref_song,
    {"margin": 0.8},
  ),
  "margin": (margin_loss, ref_margin, {}),
  "margin_per_class": (
    _margin_per_class,
    functools.partial(ref_margin, beta=BETA_C),
    {"nu": 0.1, "margin": 0.3},
  ),
}
# The song2016 form needs the candidates to be the anchors.
WITH_REF_SET = [k for k in SPECS if k != "lifted_song"]


N = 16  # one batch size (a multiple of the 8 devices) keeps the compile count low


def make_batch(seed, n=N, d=3, classes=3, pad=3, duplicates=True):
  rng = np.random.default_rng(seed)
  e = 0.6 * rng.normal(size=(n, d))
  y = rng.integers(0, classes, n)
  y[rng.choice(n, pad, replace=False)] = -1
  if duplicates:  # identical embeddings, with equal and with different labels
    e[1], e[7] = e[0], e[3]
    y[1] = y[0]
  return e, y.astype(np.int32)


def loss(name, **options):
  """The loss of SPECS[name] with its options (and ``options``). Tests run it eagerly:
  the compiled primitives are shared by all the losses, a compiled loss is not."""
  fn, _, kw = SPECS[name]
  return functools.partial(fn, **(kw | options))


def _check(name, e, y, dtype, rtol, atol, **extra):
  """Runs the loss at ``dtype`` and its reference on the same (rounded) inputs."""
  _, ref, kw = SPECS[name]
  e = np.asarray(e, dtype)
  ref_e = extra.pop("ref_embeddings", None)
  ref_y = extra.get("ref_labels")
  pos, neg = np_pairs(
    y, ref_y, positive_mask=extra.get("positive_mask"), mask=extra.get("mask")
  )
  B = e if ref_e is None else np.asarray(ref_e, dtype)
  want = ref(e.astype(np.float64), B.astype(np.float64), pos, neg, y, **kw)
  if ref_e is not None:
    extra["ref_embeddings"] = jnp.asarray(B)
  got = loss(name)(jnp.asarray(e), jnp.asarray(y), **extra)
  assert got.dtype == dtype and got.shape == (len(y),)
  np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
  return want


@pytest.mark.parametrize("name", SPECS)
def test_matches_numpy_reference(name):
  nonzero = 0
  for classes, seed in ((2, 0), (3, 1), (5, 2)):
    e, y = make_batch(seed, classes=classes)
    with jax.enable_x64(True):
      want = _check(name, e, y, np.float64, 1e-5, 1e-9)
    nonzero += int(np.count_nonzero(want))
    # float32: the Gram-matrix distance of duplicated rows is sqrt(rounding error),
    # ~5e-3 rather than 0: the absolute tolerance covers its square (~3e-5).
    _check(name, e, y, np.float32, 1e-4, 1e-4)
    e, y = make_batch(seed, classes=classes, duplicates=False)
    _check(name, e, y, np.float32, 1e-4, 1e-5)
  assert nonzero > 10  # the batches exercise the formula, not only its zeros


@pytest.mark.parametrize("name", WITH_REF_SET)
def test_reference_set_positive_mask_and_mask(name):
  rng = np.random.default_rng(3)
  e, y = make_batch(4, classes=3)
  ref_e = 0.6 * rng.normal(size=(7, 3))
  ref_y = np.array([0, 1, 2, -1, 1, 0, 2], np.int32)
  custom = rng.random((N, N)) < 0.35  # a multi-label style relation
  keep = rng.random((N, N)) < 0.7  # a miner's mask
  with jax.enable_x64(True):
    for extra in (
      dict(ref_embeddings=ref_e, ref_labels=ref_y),
      dict(ref_embeddings=ref_e, ref_labels=ref_y, mask=keep[:, :7]),
      dict(positive_mask=custom),
      dict(mask=keep),
    ):
      _check(name, e, y, np.float64, 1e-5, 1e-9, **extra)


def test_song_form_with_positive_mask_and_mask():
  name = "lifted_song"
  rng = np.random.default_rng(5)
  e, y = make_batch(6, classes=3)
  with jax.enable_x64(True):
    custom = rng.random((N, N)) < 0.35
    _check(name, e, y, np.float64, 1e-5, 1e-9, positive_mask=custom)
    keep = rng.random((N, N)) < 0.6
    _check(name, e, y, np.float64, 1e-5, 1e-9, mask=keep)


# ----------------------------------------------------------------------------------
# Worked examples by hand

LINE = jnp.array([[0.0, 0.0], [0.5, 0.0], [0.8, 0.0]])  # D01 .5, D02 .8, D12 .3
LINE_LABELS = jnp.array([0, 0, 1])
# cosines: S01 = 0.6, S02 = 0, S12 = 0.8
UNIT = jnp.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])


def test_worked_example_contrastive():
  # defaults: D^2 for positives, max(0, 1 - D)^2 for negatives, mean per anchor
  # a0: (0.5^2 + 0.2^2) / 2 = (0.25 + 0.04) / 2 = 0.145
  # a1: (0.5^2 + 0.7^2) / 2 = (0.25 + 0.49) / 2 = 0.37
  # a2: (0.2^2 + 0.7^2) / 2 = (0.04 + 0.49) / 2 = 0.265
  got = batch_contrastive_loss(LINE, LINE_LABELS)
  np.testing.assert_allclose(got, [0.145, 0.37, 0.265], rtol=1e-6)


def test_worked_example_multi_similarity():
  # alpha 2, beta 50, lambda 0.5
  # a0: 1/2 log(1 + e^{-2(0.6-0.5)}) + 1/50 log(1 + e^{50(0-0.5)})
  #   = 1/2 log(1.8187308) + 1/50 log(1 + e^-25) = 0.2990694 + 2.8e-13
  # a1: 0.2990694 + 1/50 log(1 + e^{50(0.8-0.5)}) = 0.2990694 + 0.3000000 = 0.5990694
  # a2: no positive -> 0
  got = multi_similarity_loss(UNIT, LINE_LABELS)
  np.testing.assert_allclose(got, [0.2990694, 0.5990694, 0.0], rtol=1e-6)


def test_worked_example_circle():
  # m 0.25, gamma 2: Delta_p 0.75, Delta_n 0.25
  # a0: s_p 0.6, alpha_p 1.25-0.6 = 0.65, logit_p = -2*0.65*(0.6-0.75) = 0.195
  #     s_n 0.0, alpha_n 0+0.25 = 0.25, logit_n = 2*0.25*(0-0.25) = -0.125
  #     log(1 + e^{0.07}) = log(2.0725082) = 0.7287596
  # a1: s_n 0.8, alpha_n 1.05, logit_n = 2*1.05*0.55 = 1.155; z = 1.35
  #     log(1 + e^{1.35}) = log(4.8574255) = 1.5805086
  got = circle_loss(UNIT, LINE_LABELS, margin=0.25, gamma=2.0)
  np.testing.assert_allclose(got, [0.7287596, 1.5805086, 0.0], rtol=1e-6)


def test_worked_example_lifted():
  # generalized, m 1: a0: log e^{0.5} + log e^{1-0.8} = 0.5 + 0.2 = 0.7
  #                   a1: 0.5 + (1 - 0.3) = 1.2 ; a2: no positive -> 0
  got = lifted_structure_loss(LINE, LINE_LABELS)
  np.testing.assert_allclose(got, [0.7, 1.2, 0.0], rtol=1e-6)
  # Song: the pair (0, 1) with N_0 = {2} (D .8) and N_1 = {2} (D .3):
  # J = log(e^{0.2} + e^{0.7}) + 0.5 = log(1.2214028 + 2.0137527) + 0.5 = 1.6740770
  # 1/2 J^2 = 1.4012669 for both anchors of the pair
  got = lifted_structure_loss(LINE, LINE_LABELS, form="song2016")
  np.testing.assert_allclose(got, [1.4012669, 1.4012669, 0.0], rtol=1e-6)


def test_worked_example_margin():
  # alpha 0.2, beta 0.4, raw distances: a0: pos (0.2+0.5-0.4)_+ = 0.3,
  # neg (0.2-0.8+0.4)_+ = 0 -> 0.15 ; a1: pos 0.3, neg (0.2-0.3+0.4) = 0.3 -> 0.3
  # a2: no positive -> 0
  got = margin_loss(LINE, LINE_LABELS, 0.4, normalize=False)
  np.testing.assert_allclose(got, [0.15, 0.3, 0.0], rtol=1e-6, atol=1e-7)
  # per class beta [0.4, 1.0], nu 0.1, points 0, .5, .8, 1 with labels 0, 0, 1, 1
  # a0 (b .4): pos .3; negs (.2-.8+.4)_+ = 0, (.2-1+.4)_+ = 0 -> .1 + .04 = .14
  # a1 (b .4): pos .3; negs (.2-.3+.4) = .3, (.2-.5+.4) = .1 -> .7/3 + .04
  # a2 (b 1): pos (.2+.2-1)_+ = 0; negs (.2-.8+1) = .4, (.2-.3+1) = .9 -> 1.3/3 + .1
  # a3 (b 1): pos 0; negs (.2-1+1) = .2, (.2-.5+1) = .7 -> .9/3 + .1 = .4
  e = jnp.array([[0.0, 0.0], [0.5, 0.0], [0.8, 0.0], [1.0, 0.0]])
  got = margin_loss(
    e, jnp.array([0, 0, 1, 1]), jnp.array([0.4, 1.0]), nu=0.1, normalize=False
  )
  np.testing.assert_allclose(got, [0.14, 0.7 / 3 + 0.04, 1.3 / 3 + 0.1, 0.4], 1e-6)


# ----------------------------------------------------------------------------------
# Pair form == batch form; pytorch-metric-learning's reduction


@pytest.mark.parametrize(
  "options",
  [
    {},
    CONTRASTIVE_VARIANTS["hadsell2006"],
    CONTRASTIVE_VARIANTS["pml"] | {"pos_margin": 0.1, "margin": 0.9},
    {"distance": "squared_euclidean", "margin": 0.7},
    {"distance": "cosine", "margin": 0.5, **CONTRASTIVE_VARIANTS["half_squared_pos"]},
  ],
)
def test_pair_form_agrees_with_batch_form(options):
  e, y = make_batch(7, classes=3, duplicates=False)
  pos, neg = np_pairs(y)
  a, j = np.nonzero(pos | neg)
  with jax.enable_x64(True):
    e = jnp.asarray(e)
    pair = jax.vmap(functools.partial(contrastive_loss, **options))(
      e[a], e[j], jnp.asarray(pos[a, j])
    )
    want = np.zeros(len(y))
    for anchor in range(len(y)):
      if (a == anchor).any():
        want[anchor] = np.mean(np.asarray(pair)[a == anchor])
    got = batch_contrastive_loss(e, jnp.asarray(y), **options)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)


def test_pml_avg_non_zero_reduction():
  # pytorch-metric-learning ContrastiveLoss: normalised embeddings, powers 1; mean of
  # the non-zero positive-pair losses + mean of the non-zero negative-pair losses.
  e, y = make_batch(8, classes=3, duplicates=False)
  e = e / np.linalg.norm(e, axis=1, keepdims=True)
  pos, neg = np_pairs(y)
  pos_losses, neg_losses = [], []
  for a in range(len(y)):
    for j in range(len(y)):
      d = _dist(e[a], e[j])
      if pos[a, j] and d - 0.3 > 0:
        pos_losses.append(d - 0.3)
      if neg[a, j] and 1.2 - d > 0:
        neg_losses.append(1.2 - d)
  want = np.mean(pos_losses) + np.mean(neg_losses)
  with jax.enable_x64(True):
    losses, p, n = contrastive_pair_losses(
      distances.l2_normalize(jnp.asarray(e)),
      jnp.asarray(y),
      **CONTRASTIVE_VARIANTS["pml"],
      pos_margin=0.3,
      margin=1.2,
    )
    got = reduce.mean_over_nonzero(losses, p) + reduce.mean_over_nonzero(losses, n)
    np.testing.assert_allclose(got, want, rtol=1e-6)


# ----------------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("name", SPECS)
def test_check_grads(name):
  # the circle loss's weights are constants in the paper: differentiate them here
  fn = loss(name, detach_weights=False) if name == "circle" else loss(name)
  e, y = make_batch(9, classes=3, pad=1, duplicates=False)
  with jax.enable_x64(True):
    y = jnp.asarray(y)
    check_grads(lambda e: fn(e, y).sum(), (jnp.asarray(e),), 1, modes=["rev"], eps=1e-6)


def test_margin_loss_beta_gradient():
  e, y = make_batch(10, classes=3, pad=1, duplicates=False)
  with jax.enable_x64(True):
    e, y = jnp.asarray(e), jnp.asarray(y)
    for beta in (jnp.array(1.1), jnp.array([0.9, 1.15, 1.3])):
      check_grads(
        lambda b: jnp.sum(margin_loss(e, y, b, nu=0.05)), (beta,), 1, modes=["rev"]
      )


def _random_similarity(seed, n=6, m=9):
  rng = np.random.default_rng(seed)
  sim = rng.uniform(-1, 1, (n, m))
  labels, ref_labels = rng.integers(0, 3, n), rng.integers(0, 3, m)
  return sim, labels, ref_labels


def _on_similarity(fn, sim, labels, ref_labels, **options):
  """The loss as a function of a given [n, m] similarity matrix: the candidates are a
  separate set (no self-pairs) and the similarity callable returns the matrix."""
  n, m = sim.shape
  return lambda s: fn(
    jnp.zeros((n, 1), s.dtype),
    jnp.asarray(labels),
    ref_embeddings=jnp.zeros((m, 1), s.dtype),
    ref_labels=jnp.asarray(ref_labels),
    similarity=lambda a, b: s,
    **options,
  )


def test_circle_gradient_is_the_papers_with_constant_weights():
  # With alpha fixed, dL/ds_n^j = sigmoid(z) softmax_n(j) gamma alpha_n^j and
  # dL/ds_p^i = -sigmoid(z) softmax_p(i) gamma alpha_p^i (Sun et al. 2020, Sec. 3).
  sim, labels, ref_labels = _random_similarity(11)
  pos = labels[:, None] == ref_labels[None, :]
  neg = ~pos
  gamma, m = 8.0, 0.25
  want = np.zeros_like(sim)
  for a in range(sim.shape[0]):
    if not (pos[a].any() and neg[a].any()):
      continue
    ln = np.array(
      [
        gamma * max(0, s + m) * (s - m) if neg[a, j] else -np.inf
        for j, s in enumerate(sim[a])
      ]
    )
    lp = np.array(
      [
        -gamma * max(0, 1 + m - s) * (s - 1 + m) if pos[a, j] else -np.inf
        for j, s in enumerate(sim[a])
      ]
    )
    sig = 1 / (1 + math.exp(-(np.log(np.exp(ln).sum()) + np.log(np.exp(lp).sum()))))
    for j, s in enumerate(sim[a]):
      if neg[a, j]:
        want[a, j] = sig * math.exp(ln[j]) / np.exp(ln).sum() * gamma * max(0, s + m)
      if pos[a, j]:
        want[a, j] = -sig * math.exp(lp[j]) / np.exp(lp).sum() * gamma * (1 + m - s)
  with jax.enable_x64(True):
    circle = _on_similarity(circle_loss, sim, labels, ref_labels, margin=m, gamma=gamma)
    got = jax.grad(lambda s: circle(s).sum())(jnp.asarray(sim))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def test_multi_similarity_gradient_is_the_papers_pair_weights():
  # Wang et al. 2019, eqs. for w+ and w-: dL/dS_ij = -w+_ij on positives and w-_ij
  # on negatives, w+ = 1 / (e^{a(S_ij - l)} + sum_{k in P} e^{a(S_ij - S_ik)}),
  # w- = 1 / (e^{b(l - S_ij)} + sum_{k in N} e^{b(S_ik - S_ij)}).
  sim, labels, ref_labels = _random_similarity(12)
  pos = labels[:, None] == ref_labels[None, :]
  neg = ~pos
  al, be, lam = 2.0, 10.0, 0.5
  want = np.zeros_like(sim)
  for a in range(sim.shape[0]):
    P, N = sim[a][pos[a]], sim[a][neg[a]]
    if len(P) == 0 or len(N) == 0:
      continue
    for j, s in enumerate(sim[a]):
      if pos[a, j]:
        want[a, j] = -1 / (math.exp(al * (s - lam)) + np.exp(al * (s - P)).sum())
      if neg[a, j]:
        want[a, j] = 1 / (math.exp(be * (lam - s)) + np.exp(be * (N - s)).sum())
  with jax.enable_x64(True):
    ms = _on_similarity(
      multi_similarity_loss, sim, labels, ref_labels, alpha=al, beta=be, base=lam
    )
    got = jax.grad(lambda s: ms(s).sum())(jnp.asarray(sim))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def loss_and_grad(name, e, y):
  """The sum of the losses and its gradient with respect to the embeddings."""
  return jax.value_and_grad(lambda e: loss(name)(e, y).sum())(e)


@pytest.mark.parametrize("name", SPECS)
def test_degenerate_batches_give_zero_and_zero_gradient(name):
  e, _ = make_batch(13)  # with duplicated rows: zero distances too
  e = jnp.asarray(e, jnp.float32)
  batches = {
    "all padding": -jnp.ones(N, jnp.int32),
    "one real row": jnp.full(N, -1, jnp.int32).at[2].set(1),
  }
  if not name.startswith("contrastive"):  # needs a positive and a negative
    batches["one class"] = jnp.zeros(N, jnp.int32)
    batches["all distinct"] = jnp.arange(N, dtype=jnp.int32) % 6  # 6 classes ...
    batches["all distinct"] = batches["all distinct"].at[6:].set(-1)  # ... 6 rows
  for what, y in batches.items():
    value, grad = loss_and_grad(name, e, y)
    assert float(value) == 0.0, what
    np.testing.assert_array_equal(grad, 0.0, err_msg=what)


@pytest.mark.parametrize("name", SPECS)
def test_padding_rows_get_no_loss_and_no_gradient(name):
  e, y = make_batch(14, classes=3)
  e, y = jnp.asarray(e, jnp.float32), jnp.asarray(y)
  losses = loss(name)(e, y)
  _, grad = loss_and_grad(name, e, y)
  assert jnp.all(jnp.isfinite(grad))
  pad = np.asarray(y) < 0
  np.testing.assert_array_equal(np.asarray(losses)[pad], 0.0)
  np.testing.assert_array_equal(np.asarray(grad)[pad], 0.0)
  assert np.abs(np.asarray(grad)[~pad]).sum() > 0


@pytest.mark.parametrize("name", SPECS)
def test_large_norms_are_finite(name):
  e, y = make_batch(15, classes=3)
  e = jnp.asarray(1e3 * e / np.linalg.norm(e, axis=1, keepdims=True), jnp.float32)
  value, grad = loss_and_grad(name, e, jnp.asarray(y))
  assert jnp.isfinite(value) and jnp.all(jnp.isfinite(grad))


def test_large_scales_are_finite():
  e, y = make_batch(16, classes=3)
  e, y = jnp.asarray(e, jnp.float32), jnp.asarray(y)
  for fn in (
    functools.partial(circle_loss, gamma=1e4, margin=0.25),
    functools.partial(multi_similarity_loss, alpha=1e3, beta=1e4, similarity="dot"),
  ):
    value, grad = jax.value_and_grad(lambda e, fn=fn: fn(e, y).sum())(100 * e)
    assert jnp.isfinite(value) and jnp.all(jnp.isfinite(grad))


# ----------------------------------------------------------------------------------
# Transformations, devices, dtypes


@pytest.mark.parametrize("name", SPECS)
def test_jit_matches_eager(name):
  fn, _, kw = SPECS[name]
  e, y = make_batch(17, classes=3)
  e, y = jnp.asarray(e, jnp.float32), jnp.asarray(y)
  jitted = jax.jit(loss(name))(e, y)
  np.testing.assert_allclose(jitted, fn(e, y, **kw), rtol=1e-6, atol=1e-7)


# contrastive_options and margin take the same code paths as contrastive and
# margin_per_class: leave them out to save compile time.
@pytest.mark.parametrize(
  "name", [k for k in SPECS if k not in ("contrastive_options", "margin")]
)
def test_devices_match_single_device(name):
  fn, _, kw = SPECS[name]
  e, y = make_batch(18, classes=4)
  assert_matches_single_device(
    fn, jnp.asarray(e, jnp.float32), jnp.asarray(y), rtol=1e-4, atol=1e-5, **kw
  )


def test_vmap_over_batches():
  (e1, y1), (e2, y2) = make_batch(20, classes=3), make_batch(21, classes=4)
  es, ys = jnp.asarray(np.stack([e1, e2]), jnp.float32), jnp.asarray(np.stack([y1, y2]))
  for name in ("contrastive", "circle", "lifted_song", "margin_per_class"):
    got = jax.vmap(loss(name))(es, ys)
    want = jnp.stack([loss(name)(es[0], ys[0]), loss(name)(es[1], ys[1])])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=name)


def test_low_precision_inputs_compute_in_float32():
  e, y = make_batch(19, classes=3, duplicates=False)
  e16 = jnp.asarray(e, jnp.bfloat16)
  for fn in (batch_contrastive_loss, circle_loss, margin_loss):
    got = fn(e16, jnp.asarray(y))
    assert got.dtype == jnp.float32
    want = fn(e16.astype(jnp.float32), jnp.asarray(y))
    np.testing.assert_allclose(got, want, rtol=1e-6)


# ----------------------------------------------------------------------------------
# Bad input raises at trace time


@pytest.mark.parametrize("name", SPECS)
def test_bad_batch_arguments_raise(name):
  fn, _, kw = SPECS[name]
  e, y = jnp.zeros((4, 3)), jnp.array([0, 0, 1, 1])
  with pytest.raises(ValueError, match="labels"):
    fn(e, jnp.array([0, 1, 1]), **kw)
  with pytest.raises(TypeError, match="labels"):
    fn(e, y.astype(jnp.float32), **kw)
  with pytest.raises(ValueError, match="embeddings"):
    fn(jnp.zeros(4), y, **kw)
  with pytest.raises(ValueError, match="mask"):
    fn(e, y, mask=jnp.ones((4, 3), bool), **kw)
  with pytest.raises(ValueError, match="positive_mask"):
    fn(e, y, positive_mask=jnp.ones((3, 4), bool), **kw)
  with pytest.raises(ValueError, match="labels"):  # raised while tracing under jit
    jax.jit(functools.partial(fn, **kw))(e, jnp.array([0, 1, 1]))


@pytest.mark.parametrize(
  "fn, options, match",
  [
    (batch_contrastive_loss, dict(margin=-1.0), "margin"),
    (batch_contrastive_loss, dict(pos_margin=-0.1), "pos_margin"),
    (batch_contrastive_loss, dict(neg_power=0.5), "neg_power"),
    (multi_similarity_loss, dict(alpha=0.0), "alpha"),
    (multi_similarity_loss, dict(beta=-50.0), "beta"),
    (circle_loss, dict(gamma=0.0), "gamma"),
    (circle_loss, dict(margin=-0.25), "margin"),
    (lifted_structure_loss, dict(margin=-1.0), "margin"),
    (lifted_structure_loss, dict(form="song"), "form"),
    (margin_loss, dict(margin=-0.2), "margin"),
    (margin_loss, dict(nu=-0.1), "nu"),
    (margin_loss, dict(beta=-1.0), "beta"),
    (margin_loss, dict(beta=jnp.ones((2, 2))), "beta"),
    (margin_loss, dict(beta=jnp.ones(1)), "beta"),  # label 1 >= one class
    (multi_similarity_loss, dict(similarity="euclid"), "similarity"),
    (lifted_structure_loss, dict(distance="cos"), "distance"),
  ],
)
def test_bad_options_raise(fn, options, match):
  e, y = jnp.zeros((4, 3)), jnp.array([0, 0, 1, 1])
  with pytest.raises(ValueError, match=match):
    fn(e, y, **options)


def test_song_form_rejects_a_reference_set():
  e, y = jnp.zeros((4, 3)), jnp.array([0, 0, 1, 1])
  with pytest.raises(ValueError, match="ref_embeddings"):
    lifted_structure_loss(e, y, ref_embeddings=e, ref_labels=y, form="song2016")


def test_per_class_beta_needs_integer_class_labels():
  e = jnp.zeros((4, 3))
  two_d = jnp.array([[0, 1], [1, 0], [0, 0], [1, 1]])
  with pytest.raises(ValueError, match="beta"):
    margin_loss(e, two_d, jnp.ones(3), label_comparison=lambda a, b: a @ b.T > 0)

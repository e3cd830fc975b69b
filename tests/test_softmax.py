"""Softmax-family batch losses (N-pair, NT-Xent, SupCon, soft nearest neighbour,
sigmoid pairwise) against plain-NumPy loops written from the papers' formulas."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from device_utils import assert_matches_single_device
from jax.test_util import check_grads
from references import np_pairs

from metriclearn.losses.softmax import (
  decoupled_contrastive_loss,
  infonce_loss,
  instance_loss,
  multi_supcon_loss,
  npair_loss,
  ntxent_loss,
  sigmoid_pairwise_loss,
  soft_nearest_neighbor_loss,
  supcon_loss,
)

# ----------------------------------------------------------------------------------
# Independent references: loops over anchors and pairs, float64, from the papers.


def ref_similarity(a, b, kind):
  out = np.zeros((len(a), len(b)))
  for i in range(len(a)):
    for j in range(len(b)):
      out[i, j] = np.dot(a[i], b[j])
      if kind == "cosine":
        out[i, j] /= np.linalg.norm(a[i]) * np.linalg.norm(b[j])
  return out


def ref_ntxent(s, pos, neg, *, tau):
  # SimCLR / NTXentLoss: each positive against the anchor's negatives, mean over P(i)
  out = np.zeros(len(s))
  for i in range(len(s)):
    ps, ns = np.flatnonzero(pos[i]), np.flatnonzero(neg[i])
    if len(ps) and len(ns):
      terms = []
      for p in ps:
        num = math.exp(s[i, p] / tau)
        terms.append(-math.log(num / (num + sum(math.exp(s[i, q] / tau) for q in ns))))
      out[i] = np.mean(terms)
  return out


def ref_supcon(s, pos, neg, *, tau):
  # Khosla et al. eq. 2 (L_out): denominator over A(i) = every other valid candidate
  out = np.zeros(len(s))
  for i in range(len(s)):
    ps, every = np.flatnonzero(pos[i]), np.flatnonzero(pos[i] | neg[i])
    if len(ps) and neg[i].any():
      den = sum(math.exp(s[i, a] / tau) for a in every)
      out[i] = -np.mean([math.log(math.exp(s[i, p] / tau) / den) for p in ps])
  return out


def ref_snn(dist, pos, neg, *, temp):
  # Frosst et al. eq. 1: -log(sum_same e^{-d/T} / sum_others e^{-d/T})
  out = np.zeros(len(dist))
  for i in range(len(dist)):
    if pos[i].any() and neg[i].any():
      num = sum(math.exp(-dist[i, j] / temp) for j in np.flatnonzero(pos[i]))
      den = sum(math.exp(-dist[i, j] / temp) for j in np.flatnonzero(pos[i] | neg[i]))
      out[i] = -math.log(num / den)
  return out


def ref_sigmoid(s, pos, neg, *, t, b):
  # SigLIP: -log sigma(z (t s + b)), z = +1 positive, -1 negative, summed per anchor
  out = np.zeros(len(s))
  for i in range(len(s)):
    for j in np.flatnonzero(pos[i] | neg[i]):
      z = 1.0 if pos[i, j] else -1.0
      out[i] -= math.log(1.0 / (1.0 + math.exp(-z * (t * s[i, j] + b))))
  return out


def ref_npair_pairs(labels, pos, key=None, related=None):
  """pytorch-metric-learning's selection: the positive pairs in row-major order, the
  first pair of each anchor label kept. ``related(i, j)`` replaces 'same label': an
  anchor is skipped if an earlier anchor that has a positive is related to it."""
  pairs = []
  for a in range(pos.shape[0]):
    ps = np.flatnonzero(pos[a])
    if not len(ps):
      continue
    if related is None:
      if any(key(labels[a]) == key(labels[b]) for b, _ in pairs):
        continue
    elif any(related(a, b) for b in range(a) if pos[b].any()):
      continue
    pairs.append((a, ps[0]))
  return pairs


def ref_npair(s, anchors, cands, pairs, neg, *, l2):
  # Sohn eq. 6: log(1 + sum_j exp(f_i.f_j+ - f_i.f_i+)); TF's 0.25 l2 (|a|^2 + |p|^2)
  out = np.zeros(len(s))
  picked = sorted({p for _, p in pairs})
  for a, p in pairs:
    others = [c for c in picked if neg[a, c]]
    if others:
      out[a] = math.log(1 + sum(math.exp(s[a, c] - s[a, p]) for c in others))
      out[a] += 0.25 * l2 * (np.sum(anchors[a] ** 2) + np.sum(cands[p] ** 2))
  return out


def reference(name, emb, labels, *, ref_emb=None, ref_labels=None, **masks):
  """The reference per-anchor losses of a LOSSES entry."""
  opts = LOSSES[name][1]
  a = np.asarray(emb, np.float64)
  c = a if ref_emb is None else np.asarray(ref_emb, np.float64)
  pos, neg = np_pairs(labels, ref_labels, **masks)
  if name == "snn":
    dist = np.array([[np.sum((x - y) ** 2) for y in c] for x in a])
    return ref_snn(dist, pos, neg, temp=opts["temperature"])
  s = ref_similarity(a, c, opts.get("similarity", "cosine"))
  if name.startswith("ntxent"):
    return ref_ntxent(s, pos, neg, tau=opts["temperature"])
  if name == "supcon":
    return ref_supcon(s, pos, neg, tau=opts["temperature"])
  if name == "sigmoid":
    return ref_sigmoid(s, pos, neg, t=SCALE, b=BIAS)
  if masks.get("positive_mask") is not None:
    pairs = ref_npair_pairs(
      labels,
      pos,
      related=lambda i, j: (
        pos[i, pairs_first(pos, j)] or (ref_emb is None and pairs_first(pos, j) == i)
      ),
    )
  else:
    cmp = masks.get("compare")
    related = None if cmp is None else (lambda i, j: cmp(labels[i], labels[j]))
    pairs = ref_npair_pairs(labels, pos, key=lambda x: x, related=related)
  return ref_npair(s, a, c, pairs, neg, l2=opts["l2_reg"])


def pairs_first(pos, j):
  return np.flatnonzero(pos[j])[0]


# ----------------------------------------------------------------------------------
# The losses under test, with the options the references get.

SCALE, BIAS = 10.0, -10.0  # SigLIP's initialisation: t = exp(log 10), b = -10


def _sigmoid(e, lab, **kw):
  return sigmoid_pairwise_loss(e, lab, SCALE, BIAS, **kw)


LOSSES = {
  "ntxent": (ntxent_loss, dict(temperature=0.1)),
  "ntxent_dot": (ntxent_loss, dict(temperature=2.0, similarity="dot")),
  "supcon": (supcon_loss, dict(temperature=0.1)),
  "snn": (soft_nearest_neighbor_loss, dict(temperature=2.0)),
  "sigmoid": (_sigmoid, {}),
  "npair": (npair_loss, dict(l2_reg=0.002, similarity="dot")),
}
NAMES = list(LOSSES)
# the five losses, each once, for checks that do not depend on the options
MAIN = ["ntxent", "supcon", "snn", "sigmoid", "npair"]


def loss_fn(name):
  fn, opts = LOSSES[name]
  return functools.partial(fn, **opts)


@functools.cache
def jitted(name, **kw):
  return jax.jit(functools.partial(loss_fn(name), **kw))


def make_batch(seed, *, n=12, d=5, classes=3, pad=2, dtype=np.float64):
  """Random batch with repeated labels, ``pad`` padding rows and duplicated rows."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, n).astype(np.int32)
  labels[rng.choice(n, pad, replace=False)] = -1
  emb = rng.normal(size=(n, d))
  emb[1] = emb[0]  # duplicated embeddings (zero distance), labels may differ
  emb[5] = emb[4]
  return emb.astype(dtype), labels


def batches():
  for classes in (1, 2, 3, 5):
    for seed in range(2):
      yield make_batch(10 * classes + seed, classes=classes)
  emb, _ = make_batch(99, pad=0)
  yield emb, np.tile(np.arange(6, dtype=np.int32), 2)  # SimCLR: two views per image
  yield emb, np.arange(12, dtype=np.int32)  # every label distinct


def assert_close(got, want, dtype):
  tol = (
    dict(rtol=1e-5, atol=1e-9) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-6)
  )
  np.testing.assert_allclose(np.asarray(got, np.float64), want, **tol)


# ----------------------------------------------------------------------------------
# Matches the references.


@pytest.mark.parametrize("name", NAMES)
def test_matches_reference_float64_and_float32(name):
  for emb, labels in batches():
    want = reference(name, emb, labels)
    with jax.enable_x64(True):
      got = jitted(name)(jnp.asarray(emb), jnp.asarray(labels))
      assert got.dtype == jnp.float64
      assert_close(got, want, np.float64)
    emb32 = emb.astype(np.float32)
    got = jitted(name)(jnp.asarray(emb32), jnp.asarray(labels))
    assert got.dtype == jnp.float32
    assert_close(got, reference(name, emb32, labels), np.float32)


def _share_any(a, b):
  return (a @ b.T) > 0


@pytest.mark.parametrize("name", NAMES)
def test_options_match_reference(name):
  rng = np.random.default_rng(7)
  emb, labels = make_batch(1, classes=3)
  with jax.enable_x64(True):
    # a memory bank / other view of 10 rows (one padding, one duplicate of an anchor)
    ref_emb, ref_labels = make_batch(2, n=10, classes=3, pad=1)
    ref_emb[3] = emb[2]
    got = jitted(name)(
      emb, labels, ref_embeddings=ref_emb, ref_labels=jnp.asarray(ref_labels)
    )
    want = reference(name, emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    assert_close(got, want, np.float64)
    # a miner's mask
    mask = rng.random((12, 12)) < 0.7
    got = jitted(name)(emb, labels, mask=mask)
    assert_close(got, reference(name, emb, labels, mask=mask), np.float64)
    # an explicit positive relation (not symmetric, not transitive)
    pmask = rng.random((12, 12)) < 0.3
    got = jitted(name)(emb, labels, positive_mask=pmask)
    assert_close(got, reference(name, emb, labels, positive_mask=pmask), np.float64)
    # multi-label: positives share at least one label; row 3 is padding
    multi = (rng.random((12, 4)) < 0.35).astype(np.int32)
    multi[3] = -1
    got = jitted(name, label_comparison=_share_any)(emb, multi)
    want = reference(name, emb, multi, compare=lambda x, y: np.dot(x, y) > 0)
    assert_close(got, want, np.float64)


def test_infonce_is_ntxent():
  assert infonce_loss is ntxent_loss


# ----------------------------------------------------------------------------------
# Worked examples by hand and the papers' own batch forms.


# jit-compiled once per shape: much faster than running op by op (options traced)
JIT = {
  f.__name__: jax.jit(f)
  for f in (
    ntxent_loss,
    supcon_loss,
    soft_nearest_neighbor_loss,
    sigmoid_pairwise_loss,
    npair_loss,
    _sigmoid,
  )
}


def test_worked_examples():
  # e0 = e1 = (1, 0), e2 = (0, 1), labels [0, 0, 1]: cos 1 for (0, 1), 0 otherwise
  e = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  lab = jnp.array([0, 0, 1])
  a = math.log(1 + math.exp(-1))  # -log(e / (e + e^0)) = 0.313262
  np.testing.assert_allclose(
    JIT["ntxent_loss"](e, lab, temperature=1.0), [a, a, 0], 1e-6
  )
  # tau = 0.5: -log(e^2 / (e^2 + 1)) = log(1 + e^-2) = 0.126928
  b = math.log(1 + math.exp(-2))
  np.testing.assert_allclose(
    JIT["ntxent_loss"](e, lab, temperature=0.5), [b, b, 0], 1e-6
  )
  np.testing.assert_allclose(
    JIT["supcon_loss"](e, lab, temperature=1.0), [a, a, 0], 1e-6
  )
  # squared distances 0 and 2: -log(e^0 / (e^0 + e^-2)) = log(1 + e^-2)
  np.testing.assert_allclose(JIT["soft_nearest_neighbor_loss"](e, lab), [b, b, 0], 1e-6)
  # t = 1, b = 0: anchor 0: softplus(-1) + softplus(0) = 0.313262 + 0.693147;
  # anchor 2: two negatives at cos 0: 2 log 2 = 1.386294
  got = JIT["sigmoid_pairwise_loss"](e, lab, 1.0, 0.0)
  np.testing.assert_allclose(got, [a + math.log(2), a + math.log(2), 2 * math.log(2)])

  # SupCon with two positives: f = [(1,0), (1,0), (0,1), (-1,0)], labels [0,0,0,1],
  # tau 1; anchor 0: A = {1: cos 1, 2: cos 0, 3: cos -1}, P = {1, 2}:
  # -1/2 [log(e/(e+1+1/e)) + log(1/(e+1+1/e))] = log(e+1+1/e) - 1/2 = 0.907606
  f = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  want0 = math.log(math.e + 1 + 1 / math.e) - 0.5
  got = JIT["supcon_loss"](f, jnp.array([0, 0, 0, 1]), temperature=1.0)
  np.testing.assert_allclose(got[0], want0, rtol=1e-6)
  # NT-Xent on the same anchor: each positive against the negative only:
  # 1/2 [log(1 + e^(-1-1)) + log(1 + e^(-1-0))] = (0.126928 + 0.313262) / 2
  got = JIT["ntxent_loss"](f, jnp.array([0, 0, 0, 1]), temperature=1.0)
  np.testing.assert_allclose(got[0], (a + b) / 2, rtol=1e-6)

  # N-pair, dot products: e0 = e1 = (1, 0), e2 = (0, 1), e3 = (0, 2), labels
  # [0, 0, 1, 1]: pairs (0, 1) and (2, 3); anchor 0: log(1 + e^(f0.f3 - f0.f1)) =
  # log(1 + e^-1); anchor 2: log(1 + e^(f2.f1 - f2.f3)) = log(1 + e^-2); penalty
  # 0.002/4 (|f0|^2 + |f1|^2) = 0.001 and 0.002/4 (|f2|^2 + |f3|^2) = 0.0025
  g = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
  got = JIT["npair_loss"](g, jnp.array([0, 0, 1, 1]))
  np.testing.assert_allclose(got, [a + 0.001, 0, b + 0.0025, 0], rtol=1e-6)


def _views(seed, n, d=5):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)), rng.normal(size=(n, d))


def test_paper_batch_forms():
  with jax.enable_x64(True):
    x, y = _views(3, 6)
    ids = np.arange(6, dtype=np.int32)
    # SimCLR (2N views, the other view the only positive), as matrices:
    # l(i, j) = -log(exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau)), mean over 2N
    z = np.concatenate([x, y]) / np.linalg.norm(np.concatenate([x, y]), axis=1)[:, None]
    logits = z @ z.T / 0.5
    np.fill_diagonal(logits, -np.inf)
    other = np.concatenate([ids + 6, ids])
    log_prob = logits[np.arange(12), other] - np.log(np.exp(logits).sum(1))
    got = JIT["ntxent_loss"](
      jnp.asarray(np.concatenate([x, y])), np.tile(ids, 2), temperature=0.5
    )
    np.testing.assert_allclose(got.mean(), -log_prob.mean(), rtol=1e-10)

    # SigLIP (images x, texts y): -1/n sum_ij log sigmoid(z_ij (t x_i.y_j + b))
    xn = x / np.linalg.norm(x, axis=1)[:, None]
    yn = y / np.linalg.norm(y, axis=1)[:, None]
    zz = 2 * np.eye(6) - 1
    want = np.sum(np.log1p(np.exp(-zz * (SCALE * xn @ yn.T + BIAS)))) / 6
    got = JIT["_sigmoid"](x, ids, ref_embeddings=y, ref_labels=ids)
    np.testing.assert_allclose(got.mean(), want, rtol=1e-10)

    # N-pair-mc (anchors x, positives y): 1/N sum_i log(1 + sum_{j != i}
    # exp(x_i.y_j - x_i.y_i)) + 0.25 * 0.002 * (mean |x|^2 + mean |y|^2)
    s = x @ y.T
    terms = np.log1p((np.exp(s - np.diag(s)[:, None]) * (1 - np.eye(6))).sum(1))
    reg = 0.25 * 0.002 * ((x**2).sum(1).mean() + (y**2).sum(1).mean())
    got = JIT["npair_loss"](x, ids, ref_embeddings=y, ref_labels=ids)
    np.testing.assert_allclose(got.mean(), terms.mean() + reg, rtol=1e-10)

    # SupCon, the reference code's masked-matrix form (contrast_mode 'all', two
    # views, temperature == base_temperature), labels with repeats
    cls = np.array([0, 1, 0, 2, 1, 2], np.int32)
    lab2 = np.tile(cls, 2)
    same = (lab2[:, None] == lab2[None, :]).astype(float)
    logits_mask = 1 - np.eye(12)
    same *= logits_mask
    logits = z @ z.T / 0.1
    logits -= logits.max(1, keepdims=True)
    log_prob = logits - np.log((np.exp(logits) * logits_mask).sum(1, keepdims=True))
    want = -((same * log_prob).sum(1) / same.sum(1)).mean()
    got = JIT["supcon_loss"](jnp.asarray(np.concatenate([x, y])), lab2)
    np.testing.assert_allclose(got.mean(), want, rtol=1e-10)


# ----------------------------------------------------------------------------------
# Gradients, degenerate batches, large inputs.


@pytest.mark.parametrize("name", NAMES)
def test_check_grads(name):
  emb, labels = make_batch(5, n=7, d=3, classes=2, pad=1)
  emb[[1, 5]] += 0.1  # check_grads needs a smooth point: no exactly repeated rows
  with jax.enable_x64(True):
    fn = jitted(name)
    check_grads(lambda e: fn(e, labels), (jnp.asarray(emb),), 1, ("rev",), eps=1e-6)


def test_check_grads_of_learnable_parameters():
  emb, labels = make_batch(6, n=7, d=3, classes=2, pad=1)
  emb[[1, 5]] += 0.1
  with jax.enable_x64(True):
    e = jnp.asarray(emb)
    for fn in (ntxent_loss, supcon_loss, soft_nearest_neighbor_loss):

      def f(e, t, fn=fn):
        return fn(e, labels, temperature=t)

      check_grads(jax.jit(f), (e, jnp.asarray(0.3)), 1, ("rev",), eps=1e-6)
    check_grads(
      jax.jit(lambda e, t, b: sigmoid_pairwise_loss(e, labels, t, b)),
      (e, jnp.asarray(3.0), jnp.asarray(-1.0)),
      1,
      ("rev",),
      eps=1e-6,
    )
    # the checks are at trace time only: a traced temperature is accepted
    g = jax.jit(jax.grad(lambda t: ntxent_loss(e, labels, temperature=t).sum()))(0.2)
    assert np.isfinite(g) and g != 0


@functools.cache
def _value_and_grad(name):
  return jax.jit(jax.value_and_grad(lambda e, lab: loss_fn(name)(e, lab).sum()))


@pytest.mark.parametrize("name", MAIN)
def test_no_valid_pair_gives_zero_and_zero_gradient(name):
  emb, _ = make_batch(8)
  emb = jnp.asarray(emb, jnp.float32)
  degenerate = {
    "one class": np.zeros(12, np.int32),
    "all distinct": np.arange(12, dtype=np.int32),
    "all padding": np.full(12, -1, np.int32),
  }
  for what, labels in degenerate.items():
    losses = jitted(name)(emb, labels)
    value, grad = _value_and_grad(name)(emb, labels)
    assert np.all(np.isfinite(grad)), what
    if name == "sigmoid" and what != "all padding":
      # every valid pair is a labelled example for the sigmoid loss (documented)
      assert np.all(losses > 0), what
      continue
    assert np.all(losses == 0), what
    assert value == 0 and np.all(grad == 0), what


@pytest.mark.parametrize("name", NAMES)
def test_large_norms_are_finite(name):
  emb, labels = make_batch(9)
  emb = 1e3 * emb / np.linalg.norm(emb, axis=1, keepdims=True)  # norms of 1e3
  emb[7] = emb[6] * (1 + 1e-7)  # nearly coincident pair
  emb = jnp.asarray(emb, jnp.float32)
  losses = jitted(name)(emb, labels)
  value, grad = _value_and_grad(name)(emb, labels)
  assert np.all(np.isfinite(losses)) and np.isfinite(value)
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("name", MAIN)
def test_duplicates_give_finite_gradients(name):
  emb, labels = make_batch(10, classes=2)
  emb[2:4] = emb[0]  # several identical rows, same and different labels
  _, grad = _value_and_grad(name)(jnp.asarray(emb, jnp.float32), labels)
  assert np.all(np.isfinite(grad))


# ----------------------------------------------------------------------------------
# Transformations: devices, jit, vmap, low precision.


@pytest.mark.parametrize("name", NAMES)
def test_multi_device_matches_single_device(name):
  emb, labels = make_batch(11, n=16, d=4, classes=3, pad=3, dtype=np.float32)
  assert_matches_single_device(loss_fn(name), jnp.asarray(emb), jnp.asarray(labels))


@pytest.mark.parametrize("name", MAIN)
def test_jit_matches_eager_and_vmap(name):
  emb, labels = make_batch(12, classes=3, dtype=np.float32)
  eager = loss_fn(name)(emb, labels)
  np.testing.assert_allclose(jitted(name)(emb, labels), eager, rtol=1e-6, atol=1e-7)
  embs = np.stack([emb, emb[::-1], 2 * emb])
  labs = np.stack([labels, labels[::-1], labels])
  got = jax.vmap(jitted(name))(embs, labs)
  for k in range(3):
    want = jitted(name)(embs[k], labs[k])
    np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-6)


def test_low_precision_inputs_compute_in_float32():
  emb, labels = make_batch(13, dtype=np.float32)
  for name in MAIN:
    got = jitted(name)(jnp.asarray(emb, jnp.bfloat16), labels)
    assert got.dtype == jnp.float32, name
    want = reference(
      name, np.asarray(jnp.asarray(emb, jnp.bfloat16), np.float64), labels
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)


# ----------------------------------------------------------------------------------
# Bad input raises at trace time.


@pytest.mark.parametrize("name", MAIN)
def test_bad_input_raises(name):
  fn = loss_fn(name)
  emb, labels = make_batch(14, dtype=np.float32)
  with pytest.raises(ValueError, match="labels"):
    fn(emb, labels[:-1])
  with pytest.raises(TypeError, match="labels"):
    fn(emb, labels.astype(np.float32))
  with pytest.raises(ValueError, match="embeddings"):
    fn(emb[0], labels[:1])
  with pytest.raises(ValueError, match="mask"):
    fn(emb, labels, mask=np.ones((12, 11), bool))
  with pytest.raises(ValueError, match="positive_mask"):
    fn(emb, labels, positive_mask=np.ones((11, 12), bool))
  with pytest.raises(ValueError, match="ref_labels"):
    fn(emb, labels, ref_embeddings=emb)
  with pytest.raises(ValueError, match="similarity|distance"):
    key = "distance" if name == "snn" else "similarity"
    fn(emb, labels, **{key: "manhattan"})
  # errors are raised while tracing, before anything runs
  with pytest.raises(ValueError, match="labels"):
    jax.jit(fn).lower(emb, labels[:-1])


def test_bad_parameters_raise():
  emb, labels = make_batch(15, dtype=np.float32)
  for fn in (ntxent_loss, supcon_loss, soft_nearest_neighbor_loss):
    for bad in (0.0, -0.5, jnp.asarray(-1.0)):
      with pytest.raises(ValueError, match="temperature"):
        fn(emb, labels, temperature=bad)
    with pytest.raises(ValueError, match="temperature"):
      fn(emb, labels, temperature=jnp.ones(2))
  with pytest.raises(ValueError, match="scale"):
    sigmoid_pairwise_loss(emb, labels, 0.0, -10.0)
  with pytest.raises(ValueError, match="bias"):
    sigmoid_pairwise_loss(emb, labels, 10.0, jnp.zeros(3))
  with pytest.raises(ValueError, match="l2_reg"):
    npair_loss(emb, labels, l2_reg=-0.1)


# ----------------------------------------------------------------------------------
# The instance loss, decoupled contrastive (DCL, DCLW) and multi-label SupCon.


def ref_instance(s, pos, neg, *, gamma, own):
  # every item its own class: numerator over {i} + P(i), denominator over {i} + A(i)
  # (own[i] = s_ii, or None when the candidates are another set)
  out = np.zeros(len(s))
  for i in range(len(s)):
    ps, every = np.flatnonzero(pos[i]), np.flatnonzero(pos[i] | neg[i])
    if not neg[i].any() or (own is None and not len(ps)):
      continue
    selfterm = [] if own is None else [math.exp(gamma * own[i])]
    num = sum(selfterm) + sum(math.exp(gamma * s[i, p]) for p in ps)
    den = sum(selfterm) + sum(math.exp(gamma * s[i, a]) for a in every)
    out[i] = -math.log(num / den)
  return out


def ref_dcl(s, pos, neg, *, tau, sigma=None):
  # Yeh et al.: -w s_ip / tau + log sum_{negatives} e^{s_iq / tau}, mean over P(i);
  # DCLW: w = 2 - e^{s_ip / sigma} / mean over every positive pair of e^{s / sigma}
  mean = 1.0
  if sigma is not None:
    every = [math.exp(s[i, p] / sigma) for i, p in zip(*np.nonzero(pos), strict=True)]
    mean = np.mean(every) if every else 1.0
  out = np.zeros(len(s))
  for i in range(len(s)):
    ps, ns = np.flatnonzero(pos[i]), np.flatnonzero(neg[i])
    if len(ps) and len(ns):
      neg_term = math.log(sum(math.exp(s[i, q] / tau) for q in ns))
      terms = []
      for p in ps:
        w = 1.0 if sigma is None else 2.0 - math.exp(s[i, p] / sigma) / mean
        terms.append(-w * s[i, p] / tau + neg_term)
      out[i] = np.mean(terms)
  return out


def ref_jaccard(a, b):
  if np.ndim(a) == 0:  # integer labels: one-label sets
    return float(a == b)
  a, b = set(np.flatnonzero(np.asarray(a) > 0)), set(np.flatnonzero(np.asarray(b) > 0))
  return 1.0 if not (a | b) else len(a & b) / len(a | b)


def ref_multi_supcon(s, pos, neg, weight, *, tau):
  # -1/|P(i)| sum_p J_ip log(e^{s_ip / tau} / sum_{a in A(i)} e^{s_ia / tau})
  out = np.zeros(len(s))
  for i in range(len(s)):
    ps, every = np.flatnonzero(pos[i]), np.flatnonzero(pos[i] | neg[i])
    if len(ps) and neg[i].any():
      den = sum(math.exp(s[i, a] / tau) for a in every)
      terms = [weight[i, p] * math.log(math.exp(s[i, p] / tau) / den) for p in ps]
      out[i] = -np.sum(terms) / len(ps)
  return out


def label_sets(seed, n, classes=4, pad=1, p=0.45):
  """Multi-hot label sets [n, classes]: some empty, some repeated; ``pad`` rows -1."""
  rng = np.random.default_rng(seed)
  y = (rng.random((n, classes)) < p).astype(np.int32)
  y[1] = y[0]
  y[2] = 0  # an empty set
  y[rng.choice(np.arange(3, n), pad, replace=False)] = -1
  return y


NEW = {
  "instance": (instance_loss, dict(scale=4.0)),
  "dcl": (decoupled_contrastive_loss, dict(temperature=0.5)),
  "dclw": (decoupled_contrastive_loss, dict(temperature=0.5, weighting="dclw")),
  "multi_supcon": (multi_supcon_loss, dict(temperature=0.5, threshold=0.3)),
}


@functools.cache
def new_jitted(name, **kw):
  fn, opts = NEW[name]
  return jax.jit(functools.partial(fn, **opts, **kw))


def new_reference(name, emb, labels, *, ref_emb=None, ref_labels=None, **masks):
  opts = NEW[name][1]
  a = np.asarray(emb, np.float64)
  c = a if ref_emb is None else np.asarray(ref_emb, np.float64)
  s = ref_similarity(a, c, "cosine")
  if name == "multi_supcon":
    refl = labels if ref_labels is None else ref_labels
    weight = np.array([[ref_jaccard(x, y) for y in refl] for x in labels])
    compare = masks.pop("compare", None) or (
      lambda x, y: ref_jaccard(x, y) >= opts["threshold"]
    )
    pos, neg = np_pairs(labels, ref_labels, compare=compare, **masks)
    return ref_multi_supcon(s, pos, neg, weight, tau=opts["temperature"])
  pos, neg = np_pairs(labels, ref_labels, **masks)
  if name == "instance":
    own = None if ref_emb is not None else np.ones(len(a))  # cos(x, x) = 1
    return ref_instance(s, pos, neg, gamma=opts["scale"], own=own)
  sigma = 0.5 if opts.get("weighting") == "dclw" else None
  return ref_dcl(s, pos, neg, tau=opts["temperature"], sigma=sigma)


def new_batches(name):
  if name != "multi_supcon":
    yield from batches()
    return
  for seed in range(4):
    emb, _ = make_batch(40 + seed)
    yield emb, label_sets(seed, 12)
  emb, labels = make_batch(50, classes=3)  # integer labels: one-label sets
  yield emb, labels


@pytest.mark.parametrize("name", NEW)
def test_new_losses_match_reference_float64(name):
  with jax.enable_x64(True):
    for emb, labels in new_batches(name):
      want = new_reference(name, emb, labels)
      got = new_jitted(name)(jnp.asarray(emb), jnp.asarray(labels))
      assert got.dtype == jnp.float64
      assert_close(got, want, np.float64)
    # blockwise (blocks that do not divide the batch), the same values
    got = new_jitted(name, block_size=(5, 3))(jnp.asarray(emb), jnp.asarray(labels))
    assert_close(got, want, np.float64)


@pytest.mark.parametrize("name", NEW)
def test_new_losses_options_match_reference(name):
  rng = np.random.default_rng(17)
  emb, labels = make_batch(3, classes=3)
  if name == "multi_supcon":
    labels = label_sets(4, 12)
  with jax.enable_x64(True):
    # a memory bank / another view of 10 rows (one padding, one duplicate)
    ref_emb, ref_labels = make_batch(5, n=10, classes=3, pad=1)
    ref_emb[3] = emb[2]
    if name == "multi_supcon":
      ref_labels = label_sets(6, 10)
    got = new_jitted(name)(emb, labels, ref_embeddings=ref_emb, ref_labels=ref_labels)
    want = new_reference(name, emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    assert_close(got, want, np.float64)
    mask = rng.random((12, 12)) < 0.7
    got = new_jitted(name)(emb, labels, mask=mask)
    assert_close(got, new_reference(name, emb, labels, mask=mask), np.float64)
    pmask = rng.random((12, 12)) < 0.3
    got = new_jitted(name)(emb, labels, positive_mask=pmask)
    want = new_reference(name, emb, labels, positive_mask=pmask)
    assert_close(got, want, np.float64)


def test_instance_loss_is_pml_instance_loss_with_distinct_labels():
  # pytorch-metric-learning's InstanceLoss (labels=None): cross-entropy of
  # gamma * normalized gram matrix with target arange(n), the row itself included
  emb, _ = make_batch(21, pad=0)
  with jax.enable_x64(True):
    z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    logits = 64.0 * z @ z.T
    peak = logits.max(1, keepdims=True)
    log_prob = logits - (np.log(np.exp(logits - peak).sum(1, keepdims=True)) + peak)
    want = -np.diag(log_prob)
    got = jax.jit(instance_loss)(jnp.asarray(emb), jnp.arange(12))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)


def test_dcl_and_dclw_are_the_authors_two_view_losses():
  # The authors' code on views z1, z2 [N, d]: positive -s(z1_i, z2_i)/tau (times the
  # DCLW weight 2 - N softmax_i(s(z1_i, z2_i) / sigma)), negatives every z1_k, z2_k
  # but k = i; the loss is DCL(z1, z2) + DCL(z2, z1), each a mean over N.
  x, y = _views(23, 6)
  ids = np.arange(6, dtype=np.int32)

  def authors(z1, z2, tau, sigma=None):
    z1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
    z2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
    cross = z1 @ z2.T
    positive = -np.diag(cross) / tau
    if sigma is not None:
      e = np.exp(np.diag(cross) / sigma)
      positive = positive * (2 - len(z1) * e / e.sum())
    similarity = np.concatenate([z1 @ z1.T, cross], axis=1) / tau
    similarity[np.tile(np.eye(len(z1), dtype=bool), (1, 2))] = -np.inf
    negative = np.log(np.exp(similarity).sum(1))
    return (positive + negative).mean()

  with jax.enable_x64(True):
    e = jnp.asarray(np.concatenate([x, y]))
    for sigma, weighting in ((None, None), (0.5, "dclw")):
      want = authors(x, y, 0.1, sigma) + authors(y, x, 0.1, sigma)
      got = jax.jit(functools.partial(decoupled_contrastive_loss, weighting=weighting))(
        e, np.tile(ids, 2)
      )
      np.testing.assert_allclose(2 * got.mean(), want, rtol=1e-10)


def test_multi_supcon_is_pml3_multisupcon_and_supcon_for_one_label_each():
  # pytorch-metric-learning 3's MultiSupConLoss as matrices: J the Jaccard index,
  # N(i) = {p != i: J >= c}, weights J, denominator over every other row
  emb, _ = make_batch(25, pad=0)
  sets = label_sets(26, 12, pad=0)
  with jax.enable_x64(True):
    z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    logits = z @ z.T / 0.1
    jac = np.array([[ref_jaccard(a, b) for b in sets] for a in sets])
    other = ~np.eye(12, dtype=bool)
    positive = (jac >= 0.5) & other
    log_prob = logits - np.log((np.exp(logits) * other).sum(1, keepdims=True))
    want = -(positive * jac * log_prob).sum(1) / np.maximum(positive.sum(1), 1)
    want = np.where(positive.any(1) & (other & ~positive).any(1), want, 0.0)
    got = jax.jit(multi_supcon_loss)(jnp.asarray(emb), sets)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    # integer labels are one-label sets: SupCon itself
    emb, labels = make_batch(27)
    got = jax.jit(multi_supcon_loss)(jnp.asarray(emb), labels)
    np.testing.assert_allclose(got, JIT["supcon_loss"](emb, labels), rtol=1e-12)
    # bool label sets are 0/1 sets
    got = jax.jit(multi_supcon_loss)(jnp.asarray(emb), sets.astype(bool))
    want = jax.jit(multi_supcon_loss)(jnp.asarray(emb), sets)
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("name", NEW)
def test_new_losses_check_grads(name):
  emb, labels = make_batch(5, n=7, d=3, classes=2, pad=1)
  emb[[1, 5]] += 0.1
  if name == "multi_supcon":
    labels = label_sets(7, 7)
  with jax.enable_x64(True):
    fn = new_jitted(name)
    check_grads(lambda e: fn(e, labels), (jnp.asarray(emb),), 1, ("rev",), eps=1e-6)


def test_dclw_gradients_of_learned_temperature_and_sigma():
  # (check_grads of the embeddings above includes the batch mean in the weights,
  # differentiated as in the authors' code)
  emb, labels = make_batch(8, n=7, d=3, classes=2, pad=1)
  emb[[1, 5]] += 0.1
  with jax.enable_x64(True):

    def f(e, t, s):
      return decoupled_contrastive_loss(
        e, labels, temperature=t, sigma=s, weighting="dclw"
      )

    args = (jnp.asarray(emb), jnp.asarray(0.3), jnp.asarray(0.5))
    check_grads(jax.jit(f), args, 1, ("rev",), eps=1e-6)


def test_new_losses_degenerate_batches_give_zero():
  # (the zero gradients, blockwise and on devices: tests/test_contract.py)
  emb, _ = make_batch(9)
  emb = jnp.asarray(emb, jnp.float32)
  for name in NEW:
    for labels in (np.zeros(12, np.int32), np.full(12, -1, np.int32)):
      assert np.all(new_jitted(name)(emb, labels) == 0), name
  # label sets all equal (every pair a positive) or all padding
  for labels in (np.ones((12, 3), np.int32), np.full((12, 3), -1, np.int32)):
    assert np.all(new_jitted("multi_supcon")(emb, labels) == 0)


def test_new_losses_bad_input_raises():
  emb, labels = make_batch(14, dtype=np.float32)
  for name in NEW:
    fn = functools.partial(NEW[name][0], **NEW[name][1])
    with pytest.raises(ValueError, match="labels"):
      fn(emb, labels[:-1])
    with pytest.raises(ValueError, match="embeddings"):
      fn(emb[0], labels[:1])
    with pytest.raises(ValueError, match="mask"):
      fn(emb, labels, mask=np.ones((12, 11), bool))
  for bad in (0.0, -1.0):
    with pytest.raises(ValueError, match="scale"):
      instance_loss(emb, labels, scale=bad)
    for fn in (decoupled_contrastive_loss, multi_supcon_loss):
      with pytest.raises(ValueError, match="temperature"):
        fn(emb, labels, temperature=bad)
    with pytest.raises(ValueError, match="sigma"):
      decoupled_contrastive_loss(emb, labels, sigma=bad, weighting="dclw")
  with pytest.raises(ValueError, match="weighting"):
    decoupled_contrastive_loss(emb, labels, weighting="dcl")
  sets = label_sets(1, 12)
  for bad in (0.0, 1.5, jnp.ones(2)):
    with pytest.raises(ValueError, match="threshold"):
      multi_supcon_loss(emb, sets, threshold=bad)
  with pytest.raises(ValueError, match="threshold"):
    jax.jit(lambda c: multi_supcon_loss(emb, sets, threshold=c))(0.5)
  with pytest.raises(ValueError, match="0/1 label sets"):
    multi_supcon_loss(emb, 2 * sets)
  with pytest.raises(TypeError, match="labels"):
    multi_supcon_loss(emb, sets.astype(np.float32))
  with pytest.raises(ValueError, match="labels"):
    multi_supcon_loss(emb, sets[:-1])
  with pytest.raises(ValueError, match="ref_labels must have the form"):
    multi_supcon_loss(emb, sets, ref_embeddings=emb, ref_labels=sets[:, :2])
  with pytest.raises(ValueError, match="labels must be >= 0"):
    multi_supcon_loss(emb, np.full(12, -2, np.int32))

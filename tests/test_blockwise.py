"""Blockwise losses equal the dense ones (values and gradients), on one device and in
the ring form on eight simulated devices, in O(n x block) memory.

The dense losses are the reference here: each is checked against an independent NumPy
loop in its own test file. Every comparison below covers block sizes that divide the
batch and that do not (padding rows), a padding label, repeated labels and, in
float64, duplicated embeddings.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from metriclearn import miners
from metriclearn.losses import blockwise as bw
from metriclearn.losses import pair_weighting as pw
from metriclearn.losses import softmax, triplet

# (name, dense, blockwise, options): every blockwise loss, with the options that change
# its code path.
CASES = [
  ("ntxent", softmax.ntxent_loss, bw.ntxent_loss, dict(temperature=0.5)),
  ("supcon", softmax.supcon_loss, bw.supcon_loss, dict(temperature=0.5)),
  ("snn", softmax.soft_nearest_neighbor_loss, bw.soft_nearest_neighbor_loss, {}),
  (
    "sigmoid",
    functools.partial(softmax.sigmoid_pairwise_loss, scale=2.0, bias=-1.0),
    functools.partial(bw.sigmoid_pairwise_loss, scale=2.0, bias=-1.0),
    {},
  ),
  ("npair", softmax.npair_loss, bw.npair_loss, {}),
  ("ms", pw.multi_similarity_loss, bw.multi_similarity_loss, dict(beta=10.0)),
  ("circle", pw.circle_loss, bw.circle_loss, dict(gamma=8.0)),
  (
    "circle_attached",
    pw.circle_loss,
    bw.circle_loss,
    dict(gamma=8.0, detach_weights=False),
  ),
  ("contrastive", pw.batch_contrastive_loss, bw.batch_contrastive_loss, {}),
  ("lifted", pw.lifted_structure_loss, bw.lifted_structure_loss, {}),
  (
    "lifted_song",
    pw.lifted_structure_loss,
    bw.lifted_structure_loss,
    dict(form="song2016"),
  ),
  ("margin", pw.margin_loss, bw.margin_loss, dict(nu=0.1)),
  (
    "batch_hard",
    triplet.batch_hard_triplet_loss,
    bw.batch_hard_triplet_loss,
    dict(margin=0.5),
  ),
]
# The batch-all sorted form has an anchor block only and no ring.
BATCH_ALL = [
  ("batch_all", dict(margin=0.5)),
  ("batch_all_sq_batch", dict(squared=True, average="batch")),
]
IDS = [c[0] for c in CASES]


def _batch(n=13, d=4, classes=3, seed=0, duplicate=True):
  rng = np.random.default_rng(seed)
  e = rng.normal(size=(n, d)) * 0.6
  if duplicate:
    e[7] = e[2]
  labels = rng.integers(0, classes, size=n)
  labels[4] = -1  # padding
  return e, labels.astype(np.int32)


def _value_and_grad(fn, e, labels, **kw):
  """Per-anchor losses and d(sum)/d(embeddings), one compiled function."""

  @jax.jit
  def both(x, lab):
    values, vjp = jax.vjp(lambda y: fn(y, lab, **kw), x)
    return values, vjp(jnp.ones_like(values))[0]

  return both(e, jnp.asarray(labels))


def _assert_close(got, want, rtol, msg=""):
  """Relative tolerance, and the same relative to the largest entry (gradients of
  small entries carry the rounding of large ones)."""
  want = np.asarray(want)
  atol = rtol * max(float(np.max(np.abs(want), initial=0.0)), 1e-3)
  np.testing.assert_allclose(np.asarray(got), want, rtol, atol, msg)


@functools.cache
def _dense_reference(name, x64):
  """The dense loss on the shared batches (float64: 13 rows with a duplicate; float32:
  the 24-row batch of the device tests)."""
  _, dense, _, options = CASES[IDS.index(name)]
  if x64:
    e, labels = _batch()
    return _value_and_grad(dense, jnp.asarray(e), labels, **options)
  e, labels = _batch(n=24, classes=4, seed=5, duplicate=False)
  return _value_and_grad(dense, jnp.asarray(e, jnp.float32), labels, **options)


@pytest.mark.parametrize("name,dense,blockwise,options", CASES, ids=IDS)
def test_matches_dense_float64(name, dense, blockwise, options):
  with jax.enable_x64(True):
    e, labels = _batch()
    want, want_grad = _dense_reference(name, True)
    assert want.dtype == jnp.float64 and jnp.any(want != 0), name
    # 13 rows in blocks of 4 (padded). Square blocks over the batch itself take the
    # symmetric path (each block product serves (I, J) and (J, I)); the general path
    # is the one of the ring and of the tests with other candidates.
    got, grad = _value_and_grad(
      blockwise, jnp.asarray(e), labels, block_size=4, **options
    )
    _assert_close(got, want, 1e-5, name)
    _assert_close(grad, want_grad, 1e-5, name)


def test_block_sizes_and_eager():
  """One block, blocks larger than the batch, unequal (non-symmetric) blocks; eager
  equals jit."""
  with jax.enable_x64(True):
    e, labels = _batch()
    e = jnp.asarray(e)
    for name in ("supcon", "ntxent"):
      _, _, blockwise, options = CASES[IDS.index(name)]
      want, want_grad = _dense_reference(name, True)
      for block in (13, 64, (4, 5)):
        got, grad = _value_and_grad(blockwise, e, labels, block_size=block, **options)
        _assert_close(got, want, 1e-5, f"{name} {block}")
        _assert_close(grad, want_grad, 1e-5, f"{name} {block}")
    eager = bw.ntxent_loss(e, labels, temperature=0.5, block_size=(3, 5))
    _assert_close(eager, _dense_reference("ntxent", True)[0], 1e-5)


@pytest.mark.parametrize("name,options", BATCH_ALL, ids=[b[0] for b in BATCH_ALL])
def test_batch_all_sorted_matches_dense(name, options):
  with jax.enable_x64(True):
    e, labels = _batch(n=17, classes=3)
    e = jnp.asarray(e)
    want, want_grad = _value_and_grad(
      triplet.batch_all_triplet_loss, e, labels, **options
    )
    got, grad = _value_and_grad(
      bw.batch_all_triplet_loss, e, labels, block_size=5, **options
    )
    _assert_close(got, want, 1e-5, name)
    _assert_close(grad, want_grad, 1e-5, name)
  e32 = jnp.asarray(_batch(n=17, seed=2, duplicate=False)[0], jnp.float32)
  want, want_grad = _value_and_grad(
    triplet.batch_all_triplet_loss, e32, labels, **options
  )
  got, grad = _value_and_grad(
    bw.batch_all_triplet_loss, e32, labels, block_size=40, **options
  )
  _assert_close(got, want, 1e-4, name)
  _assert_close(grad, want_grad, 1e-4, name)


def test_pair_options_match_dense():
  """ref_embeddings, positive_mask, mask and label_comparison, through the blocks, for
  one loss of each engine path: one sweep, two sweeps, per-anchor and per-candidate
  inputs, the N-pair selection."""
  with jax.enable_x64(True):
    e, labels = _batch(n=11)
    e = jnp.asarray(e)
    rng = np.random.default_rng(3)
    ref = jnp.asarray(rng.normal(size=(9, 4)))
    ref_labels = rng.integers(-1, 3, size=9).astype(np.int32)
    select = jnp.asarray(rng.random((11, 11)) < 0.7)
    relation = jnp.asarray(rng.random((11, 9)) < 0.4)
    variants = {
      "ref": dict(ref_embeddings=ref, ref_labels=ref_labels),
      "mask": dict(mask=select),
      "positive_mask": dict(
        positive_mask=relation, ref_embeddings=ref, ref_labels=ref_labels
      ),
    }
    checks = [
      ("ntxent", ("ref", "mask", "positive_mask")),
      ("npair", ("mask", "positive_mask")),
      ("margin", ("positive_mask",)),
      ("lifted_song", ("mask",)),
    ]
    for name, which in checks:
      _, dense, blockwise, options = CASES[IDS.index(name)]
      for variant in which:
        kw = {**options, **variants[variant]}
        want, want_grad = _value_and_grad(dense, e, labels, **kw)
        got, grad = _value_and_grad(blockwise, e, labels, block_size=(4, 3), **kw)
        _assert_close(got, want, 1e-5, f"{name} {variant}")
        _assert_close(grad, want_grad, 1e-5, f"{name} {variant}")

    multi = jnp.asarray(rng.random((11, 3)) < 0.5).astype(jnp.int32).at[4].set(-1)

    def overlap(a, b):  # multi-label: positive when two label sets intersect
      return jnp.any((a[:, None, :] > 0) & (b[None, :, :] > 0), axis=-1)

    want = softmax.supcon_loss(e, multi, label_comparison=overlap)
    got = bw.supcon_loss(e, multi, label_comparison=overlap, block_size=(4, 3))
    _assert_close(got, want, 1e-5, "label_comparison")


def test_learnable_parameters_get_dense_gradients():
  with jax.enable_x64(True):
    e, labels = _batch()
    e = jnp.asarray(e)

    def grads(fn, *params):
      return jax.jit(jax.grad(lambda *p: fn(*p).sum(), range(len(params))))(*params)

    want = grads(lambda t: softmax.ntxent_loss(e, labels, temperature=t), 0.3)
    got = grads(lambda t: bw.ntxent_loss(e, labels, temperature=t, block_size=4), 0.3)
    _assert_close(got, want, 1e-6)
    want = grads(lambda t, b: softmax.sigmoid_pairwise_loss(e, labels, t, b), 2.0, -1.0)
    got = grads(
      lambda t, b: bw.sigmoid_pairwise_loss(e, labels, t, b, block_size=5), 2.0, -1.0
    )
    _assert_close(jnp.stack(got), jnp.stack(want), 1e-6)
    beta = jnp.array([1.0, 1.1, 0.9])
    want = grads(lambda b: pw.margin_loss(e, labels, b, nu=0.1), beta)
    got = grads(lambda b: bw.margin_loss(e, labels, b, nu=0.1, block_size=5), beta)
    _assert_close(got, want, 1e-6)


def test_check_grads_two_sweeps():
  """The custom VJP against finite differences, for a two-sweep loss (NT-Xent: the
  second sweep depends on the first) with a learned temperature."""
  with jax.enable_x64(True):
    e, labels = _batch(n=9, duplicate=False)
    fn = jax.jit(
      lambda x, t: bw.ntxent_loss(x, labels, temperature=t, block_size=4).sum()
    )
    check_grads(fn, (jnp.asarray(e), 0.7), order=1, modes=["rev"], eps=1e-6)


def test_batch_hard_ties_share_the_gradient():
  """Exact ties for the hardest positive / negative: the gradient is split among them
  as jnp.max's is (points on a line at integer positions)."""
  with jax.enable_x64(True):
    e = jnp.asarray([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    e = jnp.concatenate([e, e + 3.0])
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 1, 1], np.int32)
    got, grad = _value_and_grad(
      bw.batch_hard_triplet_loss, e, labels, block_size=3, distance="squared_euclidean"
    )
    want, want_grad = _value_and_grad(
      triplet.batch_hard_triplet_loss, e, labels, distance="squared_euclidean"
    )
    _assert_close(got, want, 1e-6)
    _assert_close(grad, want_grad, 1e-6)


def test_multi_similarity_mining_matches_miner_mask():
  with jax.enable_x64(True):
    e, labels = _batch(n=16, classes=3, duplicate=False)

    def dense(x, lab):
      mined = miners.multi_similarity_miner(x, lab, epsilon=0.1)
      return pw.multi_similarity_loss(x, lab, mask=mined, beta=10.0)

    want, want_grad = _value_and_grad(dense, jnp.asarray(e), labels)
    got, grad = _value_and_grad(
      bw.multi_similarity_loss,
      jnp.asarray(e),
      labels,
      mining_epsilon=0.1,
      beta=10.0,
      block_size=(5, 6),
    )
    _assert_close(got, want, 1e-5)
    _assert_close(grad, want_grad, 1e-5)


@pytest.mark.parametrize("name,dense,blockwise,options", CASES, ids=IDS)
def test_degenerate_batches_and_large_norms(name, dense, blockwise, options):
  """No valid pair (all padding, one class, all labels distinct): 0 and a zero
  gradient; embeddings of norm ~1e3: finite. One compiled function, vmapped over the
  four batches."""
  rng = np.random.default_rng(0)
  e = rng.normal(size=(4, 6, 3)).astype(np.float32)
  e[3] *= 1e3
  labels = np.array([[-1] * 6, [2] * 6, list(range(6)), [0, 1, 0, 1, 2, 2]], np.int32)
  values, grads = jax.jit(
    jax.vmap(lambda x, lab: _per_batch(blockwise, x, lab, options))
  )(jnp.asarray(e), jnp.asarray(labels))
  values, grads = np.asarray(values), np.asarray(grads)
  assert np.all(np.isfinite(values)) and np.all(np.isfinite(grads)), name
  # (the sigmoid and contrastive losses have a value for a lone positive or negative)
  zero = [0] if name in ("sigmoid", "contrastive") else [0, 1, 2]
  np.testing.assert_array_equal(values[zero], 0.0, err_msg=name)
  np.testing.assert_array_equal(grads[zero], 0.0, err_msg=name)
  assert np.any(values[3] != 0), name


def _per_batch(blockwise, x, lab, options):
  values, vjp = jax.vjp(lambda y: blockwise(y, lab, block_size=4, **options), x)
  return values, vjp(jnp.ones_like(values))[0]


def _on_devices(fn, e, labels, mode):
  """Per-anchor losses and embedding gradients with the batch split over 8 devices,
  ``axis_name='i'``, forward and backward in one compiled function."""
  k = jax.device_count()
  n, d = e.shape

  def local(x, lab):
    values, vjp = jax.vjp(lambda y: fn(y, lab, axis_name="i"), x)
    return values, vjp(jnp.ones_like(values))[0]

  if mode == "pmap":
    values, grads = jax.pmap(local, "i")(e.reshape(k, n // k, d), labels.reshape(k, -1))
    return values.reshape(n), grads.reshape(n, d)
  mesh = Mesh(np.array(jax.devices()), ("i",))
  sharded = jax.shard_map(
    local, mesh=mesh, in_specs=(P("i"), P("i")), out_specs=(P("i"), P("i"))
  )
  return jax.jit(sharded)(e, labels)


@pytest.mark.parametrize("name,dense,blockwise,options", CASES, ids=IDS)
def test_ring_on_eight_devices_matches_dense(name, dense, blockwise, options):
  """The ring form on 8 devices equals the single-device dense loss on the whole batch
  (per-anchor losses and gradients): under shard_map for every loss; under pmap, and
  the gathered (all_gather) form, for one loss of each engine path."""
  e, labels = _batch(n=24, classes=4, seed=5, duplicate=False)
  e, labels = jnp.asarray(e, jnp.float32), jnp.asarray(labels)
  want, want_grad = _dense_reference(name, False)
  modes = [("shard_map", True)]
  if name in ("ntxent", "npair", "margin", "lifted_song"):
    modes += [("pmap", True), ("shard_map", False)]
  for mode, ring in modes:
    # 3 anchors per device in blocks of 2: the last block is padded.
    fn = functools.partial(blockwise, block_size=2, ring=ring, **options)
    got, grad = _on_devices(fn, e, labels, mode)
    _assert_close(got, want, 1e-4, f"{name} {mode} ring={ring}")
    _assert_close(grad, want_grad, 1e-4, f"{name} {mode} ring={ring}")


def test_batch_all_sorted_on_eight_devices():
  e, labels = _batch(n=24, classes=4, seed=5, duplicate=False)
  e, labels = jnp.asarray(e, jnp.float32), jnp.asarray(labels)
  want, want_grad = _value_and_grad(
    triplet.batch_all_triplet_loss, e, labels, average="batch"
  )
  fn = functools.partial(bw.batch_all_triplet_loss, block_size=2, average="batch")
  got, grad = _on_devices(fn, e, labels, "shard_map")
  _assert_close(got, want, 1e-4)
  _assert_close(grad, want_grad, 1e-4)


def _all_shapes(jaxpr):
  """Shapes of every value computed in a jaxpr, nested jaxprs included."""
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      yield tuple(getattr(v.aval, "shape", ()))
    stack = list(eqn.params.values())
    while stack:
      p = stack.pop()
      if isinstance(p, list | tuple):
        stack.extend(p)
      elif hasattr(p, "eqns"):
        yield from _all_shapes(p)
      elif hasattr(getattr(p, "jaxpr", None), "eqns"):
        yield from _all_shapes(p.jaxpr)


def test_ring_holds_no_global_candidate_set():
  """Forward and backward of the ring form: no value on a device has a dimension as
  large as the global batch (64 rows over 8 devices of 8)."""
  n, k = 64, 8

  def local(x, lab):
    return bw.supcon_loss(x, lab, axis_name="i", ring=True, block_size=4).sum()

  jaxpr = jax.make_jaxpr(jax.pmap(jax.grad(local), "i"))(
    jnp.zeros((k, n // k, 3)), jnp.zeros((k, n // k), jnp.int32)
  )
  (pmapped,) = [e for e in jaxpr.jaxpr.eqns if "jaxpr" in e.params]
  shapes = set(_all_shapes(pmapped.params["jaxpr"]))
  assert (n // k, 3) in shapes
  assert not [s for s in shapes if any(dim >= n for dim in s)], shapes


def test_memory_grows_with_blocks_not_n_squared():
  """The compiled forward + backward keeps no [n, n] buffer (XLA's own accounting)."""
  n = 2048
  e = jnp.zeros((n, 32), jnp.float32)
  labels = jnp.zeros((n,), jnp.int32)
  for fn in (bw.ntxent_loss, bw.multi_similarity_loss):
    step = jax.jit(jax.grad(lambda x, f=fn: f(x, labels, block_size=128).sum()))
    memory = step.lower(e).compile().memory_analysis()
    if memory is None:
      pytest.skip("this XLA backend reports no memory analysis")
    assert memory.temp_size_in_bytes < n * n * 4 // 8, fn.__name__


def test_bad_arguments_raise():
  e, labels = jnp.zeros((4, 2)), jnp.zeros((4,), jnp.int32)
  with pytest.raises(ValueError, match="axis_name"):
    bw.supcon_loss(e, labels, ring=True)
  with pytest.raises(ValueError, match="block_size"):
    bw.supcon_loss(e, labels, block_size=0)
  with pytest.raises(ValueError, match="block_size"):
    bw.supcon_loss(e, labels, block_size=(2, 2, 2))
  with pytest.raises(ValueError, match="labels"):
    bw.ntxent_loss(e, labels[:3])
  with pytest.raises(ValueError, match="temperature"):
    bw.ntxent_loss(e, labels, temperature=0.0)
  with pytest.raises(ValueError, match="mask"):
    bw.multi_similarity_loss(e, labels, mask=jnp.ones((4, 3), bool))
  with pytest.raises(ValueError, match="soft"):
    bw.batch_all_triplet_loss(e, labels, soft=True)
  with pytest.raises(ValueError, match="embeddings"):
    bw.circle_loss(jnp.zeros((4,)), labels)

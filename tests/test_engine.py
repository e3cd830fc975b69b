"""The executors of the losses' engine beyond the shared contract (test_contract.py):
relation options through the blocks, learned parameters, a two-pass custom VJP against
finite differences, ties, in-loss mining, the gathered and pmap forms on eight
devices, the bounded triplet forms' fallback, memory, and bad arguments."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from device_utils import assert_close, run_on_devices, value_and_grad
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from metriclearn import losses, miners, pairs


def _batch(n=13, d=4, classes=3, seed=0, duplicate=True):
  rng = np.random.default_rng(seed)
  e = rng.normal(size=(n, d)) * 0.6
  if duplicate:
    e[7] = e[2]
  labels = rng.integers(0, classes, size=n)
  labels[4] = -1  # padding
  return e, labels.astype(np.int32)


CASES = {
  "ntxent": (losses.ntxent_loss, dict(temperature=0.5)),
  "npair": (losses.npair_loss, {}),
  "margin": (losses.margin_loss, dict(nu=0.1)),
  "lifted_song": (losses.lifted_structure_loss, dict(form="song2016")),
}


def test_block_sizes_and_eager():
  """One block, blocks larger than the batch, unequal blocks; eager equals jit."""
  with jax.enable_x64(True):
    e, labels = _batch()
    e = jnp.asarray(e)
    for fn, options in (CASES["ntxent"], (losses.supcon_loss, {})):
      want, want_grad = value_and_grad(fn, e, labels, **options)
      for block in (13, 64, (4, 5)):
        got, grad = value_and_grad(fn, e, labels, block_size=block, **options)
        assert_close(got, want, 1e-5, f"{fn.__name__} {block}")
        assert_close(grad, want_grad, 1e-5, f"{fn.__name__} {block}")
    eager = losses.ntxent_loss(e, labels, temperature=0.5, block_size=(3, 5))
    assert_close(eager, losses.ntxent_loss(e, labels, temperature=0.5), 1e-5)


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
      fn, options = CASES[name]
      for variant in which:
        kw = {**options, **variants[variant]}
        want, want_grad = value_and_grad(fn, e, labels, **kw)
        got, grad = value_and_grad(fn, e, labels, block_size=(4, 3), **kw)
        assert_close(got, want, 1e-5, f"{name} {variant}")
        assert_close(grad, want_grad, 1e-5, f"{name} {variant}")

    multi = jnp.asarray(rng.random((11, 3)) < 0.5).astype(jnp.int32).at[4].set(-1)

    def overlap(a, b):  # multi-label: positive when two label sets intersect
      return jnp.any((a[:, None, :] > 0) & (b[None, :, :] > 0), axis=-1)

    want = losses.supcon_loss(e, multi, label_comparison=overlap)
    got = losses.supcon_loss(e, multi, label_comparison=overlap, block_size=(4, 3))
    assert_close(got, want, 1e-5, "label_comparison")


def test_learnable_parameters_get_dense_gradients():
  with jax.enable_x64(True):
    e, labels = _batch()
    e = jnp.asarray(e)

    def grads(fn, *params):
      return jax.jit(jax.grad(lambda *p: fn(*p).sum(), range(len(params))))(*params)

    want = grads(lambda t: losses.ntxent_loss(e, labels, temperature=t), 0.3)
    got = grads(
      lambda t: losses.ntxent_loss(e, labels, temperature=t, block_size=4), 0.3
    )
    assert_close(got, want, 1e-6)
    want = grads(lambda t, b: losses.sigmoid_pairwise_loss(e, labels, t, b), 2.0, -1.0)
    got = grads(
      lambda t, b: losses.sigmoid_pairwise_loss(e, labels, t, b, block_size=5),
      2.0,
      -1.0,
    )
    assert_close(jnp.stack(got), jnp.stack(want), 1e-6)
    beta = jnp.array([1.0, 1.1, 0.9])
    want = grads(lambda b: losses.margin_loss(e, labels, b, nu=0.1), beta)
    got = grads(lambda b: losses.margin_loss(e, labels, b, nu=0.1, block_size=5), beta)
    assert_close(got, want, 1e-6)


def test_check_grads_two_sweeps():
  """The custom VJP against finite differences, for a two-sweep loss (NT-Xent: the
  second sweep depends on the first) with a learned temperature."""
  with jax.enable_x64(True):
    e, labels = _batch(n=9, duplicate=False)
    fn = jax.jit(
      lambda x, t: losses.ntxent_loss(x, labels, temperature=t, block_size=4).sum()
    )
    check_grads(fn, (jnp.asarray(e), 0.7), order=1, modes=["rev"], eps=1e-6)


def test_batch_hard_ties_share_the_gradient():
  """Exact ties for the hardest positive / negative: the gradient is split among them
  as jnp.max's is (points on a line at integer positions)."""
  with jax.enable_x64(True):
    e = jnp.asarray([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    e = jnp.concatenate([e, e + 3.0])
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 1, 1], np.int32)
    got, grad = value_and_grad(
      losses.batch_hard_triplet_loss,
      e,
      labels,
      block_size=3,
      distance="squared_euclidean",
    )
    want, want_grad = value_and_grad(
      losses.batch_hard_triplet_loss, e, labels, distance="squared_euclidean"
    )
    assert_close(got, want, 1e-6)
    assert_close(grad, want_grad, 1e-6)


def test_multi_similarity_mining_matches_miner_mask():
  with jax.enable_x64(True):
    e, labels = _batch(n=16, classes=3, duplicate=False)

    def dense(x, lab):
      mined = miners.multi_similarity_miner(x, lab, epsilon=0.1)
      return losses.multi_similarity_loss(x, lab, mask=mined, beta=10.0)

    want, want_grad = value_and_grad(dense, jnp.asarray(e), labels)
    got, grad = value_and_grad(
      losses.multi_similarity_loss,
      jnp.asarray(e),
      labels,
      mining_epsilon=0.1,
      beta=10.0,
      block_size=(5, 6),
    )
    assert_close(got, want, 1e-5)
    assert_close(grad, want_grad, 1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_pmap_and_gathered_forms_on_eight_devices(name):
  """The ring under pmap, and the gathered (all_gather) dense and blockwise forms under
  shard_map, equal the single-device dense loss on the whole batch (one loss of each
  engine path; the ring under shard_map is in the contract)."""
  fn, options = CASES[name]
  e, labels = _batch(n=24, classes=4, seed=5, duplicate=False)
  e, labels = jnp.asarray(e, jnp.float32), jnp.asarray(labels)
  want, want_grad = value_and_grad(fn, e, labels, **options)
  for mode, ring, block in (
    ("pmap", True, 2),
    ("shard_map", False, 2),
    ("pmap", False, None),
  ):
    one = functools.partial(fn, block_size=block, ring=ring, **options)
    got, grad = run_on_devices(one, e, labels, mode=mode)
    assert_close(got, want, 1e-4, f"{name} {mode} ring={ring} block={block}")
    assert_close(grad, want_grad, 1e-4, f"{name} {mode} ring={ring} block={block}")


def test_triplet_batch_averages_on_eight_devices():
  """average='batch' divides by the count of the whole batch (a psum): the exact
  sorted form gathered, and the bounded form over the ring."""
  e, labels = _batch(n=24, classes=4, seed=5, duplicate=False)
  e, labels = jnp.asarray(e, jnp.float32), jnp.asarray(labels)
  for fn in (losses.batch_all_triplet_loss, losses.semi_hard_triplet_loss):
    want, want_grad = value_and_grad(fn, e, labels, average="batch")
    for kw in (dict(block_size=2), dict(block_size=2, ring=True, max_positives=8)):
      one = functools.partial(fn, average="batch", **kw)
      got, grad = run_on_devices(one, e, labels, mode="shard_map")
      assert_close(got, want, 1e-4, f"{fn.__name__} {kw}")
      assert_close(grad, want_grad, 1e-4, f"{fn.__name__} {kw}")


def test_bounded_triplets_fall_back_when_an_anchor_has_more_positives():
  """max_positives smaller than a batch's largest class: the exact value (a fallback
  inside the compiled function, dense or in blocks, the soft form too), or NaN for
  those anchors over a ring."""
  with jax.enable_x64(True):
    e, labels = _batch(n=13, classes=2)  # classes of about 6: more than 3 positives
    e = jnp.asarray(e)
    soft = functools.partial(losses.batch_all_triplet_loss, soft=True)
    soft.__name__ = "soft batch-all"  # (every triplet in rows of anchors)
    for fn in (losses.batch_all_triplet_loss, losses.semi_hard_triplet_loss, soft):
      want, want_grad = value_and_grad(fn, e, labels)
      for block in (None, 4):
        got, grad = value_and_grad(fn, e, labels, max_positives=3, block_size=block)
        assert_close(got, want, 1e-5, f"{fn.__name__} {block}")
        assert_close(grad, want_grad, 1e-5, f"{fn.__name__} {block}")
  e, labels = _batch(n=24, classes=2, seed=5, duplicate=False)
  ring = functools.partial(
    losses.semi_hard_triplet_loss, block_size=2, ring=True, max_positives=3
  )
  got, _ = run_on_devices(ring, jnp.asarray(e, jnp.float32), labels, mode="shard_map")
  counts = np.array([(labels == c).sum() - 1 for c in labels])
  over = (labels >= 0) & (counts > 3)
  assert over.any() and np.all(np.isnan(np.asarray(got)[over]))
  assert np.all(np.isfinite(np.asarray(got)[~over]))


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
    return losses.supcon_loss(x, lab, axis_name="i", ring=True, block_size=4).sum()

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
  for fn in (losses.ntxent_loss, losses.multi_similarity_loss):
    step = jax.jit(jax.grad(lambda x, f=fn: f(x, labels, block_size=128).sum()))
    memory = step.lower(e).compile().memory_analysis()
    if memory is None:
      pytest.skip("this XLA backend reports no memory analysis")
    assert memory.temp_size_in_bytes < n * n * 4 // 8, fn.__name__


def test_bad_arguments_raise():
  e, labels = jnp.zeros((4, 2)), jnp.zeros((4,), jnp.int32)
  with pytest.raises(ValueError, match="axis_name"):
    losses.supcon_loss(e, labels, ring=True)
  with pytest.raises(ValueError, match="block_size"):
    losses.supcon_loss(e, labels, block_size=0)
  with pytest.raises(ValueError, match="block_size"):
    losses.supcon_loss(e, labels, block_size=(2, 2, 2))
  with pytest.raises(ValueError, match="labels"):
    losses.ntxent_loss(e, labels[:3])
  with pytest.raises(ValueError, match="temperature"):
    losses.ntxent_loss(e, labels, temperature=0.0)
  with pytest.raises(ValueError, match="mask"):
    losses.multi_similarity_loss(e, labels, mask=jnp.ones((4, 3), bool))
  with pytest.raises(ValueError, match="soft"):
    losses.batch_all_triplet_loss(e, labels, soft=True, block_size=2)
  with pytest.raises(ValueError, match="max_positives"):
    losses.semi_hard_triplet_loss(e, labels, max_positives=0)
  with pytest.raises(ValueError, match="embeddings"):
    losses.circle_loss(jnp.zeros((4,)), labels)
  with pytest.raises(ValueError, match="-1 for padding"):
    losses.supcon_loss(e, jnp.array([0, 1, -2, 1]))
  with pytest.raises(TypeError, match="unexpected keyword"):
    losses.supcon_loss(e, labels, temprature=0.1)


def test_ring_without_max_positives_is_refused():
  def local(x, lab):
    return losses.batch_all_triplet_loss(x, lab, axis_name="i", ring=True)

  with pytest.raises(ValueError, match="max_positives"):
    jax.make_jaxpr(jax.pmap(local, "i"))(
      jnp.zeros((8, 2, 3)), jnp.zeros((8, 2), jnp.int32)
    )


def test_a_learned_temperature_gets_the_dense_gradient_on_eight_devices():
  """A parameter shared by every device (in_specs P()) under shard_map: its gradient
  is the single-device one, blockwise and over the ring alike (not summed twice)."""
  e, labels = _batch(n=24, classes=4, seed=5, duplicate=False)
  e, labels = jnp.asarray(e, jnp.float32), jnp.asarray(labels)
  mesh = Mesh(np.array(jax.devices()), ("i",))
  want = jax.grad(lambda t: losses.ntxent_loss(e, labels, temperature=t).sum())(0.5)
  for kw in ({}, {"block_size": 2}, {"block_size": 2, "ring": True}):

    def total(t, kw=kw):
      local = lambda x, y, t: losses.ntxent_loss(
        x, y, temperature=t, axis_name="i", **kw
      )
      f = jax.shard_map(
        local, mesh=mesh, in_specs=(P("i"), P("i"), P()), out_specs=P("i")
      )
      return f(e, labels, t).sum()

    got = jax.jit(jax.grad(total))(jnp.float32(0.5))
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=str(kw))


def test_sorted_slots_are_the_first_positives_of_each_anchor():
  """The slots found by one sort of the labels: each anchor's first k positives by
  position (a NumPy loop), the counts of positives and negatives; self-pairs
  excluded, padding rows in neither role, and against other candidates."""
  from metriclearn import pairs
  from metriclearn.losses import _slots

  rng = np.random.default_rng(3)
  labels = rng.integers(0, 4, size=17).astype(np.int32)
  labels[[2, 9]] = -1
  ref = rng.integers(0, 5, size=11).astype(np.int32)
  ref[0] = -1
  e, c = jnp.ones((17, 2)), jnp.ones((11, 2))
  for rel, cand in (
    (pairs.resolve(e, labels), labels),
    (pairs.resolve(e, labels, ref_embeddings=c, ref_labels=ref), ref),
  ):
    k = 3
    slot, n_pos, n_neg = (np.asarray(x) for x in _slots.sorted_slots(rel, k))
    for i, y in enumerate(labels):
      pos = [j for j, z in enumerate(cand) if y >= 0 and z == y]
      if rel.self_pairs:
        pos = [j for j in pos if j != i]
      neg = [j for j, z in enumerate(cand) if y >= 0 and z >= 0 and z != y]
      want = (pos + [np.inf] * k)[:k]
      np.testing.assert_array_equal(slot[i], want, f"anchor {i}")
      assert (n_pos[i], n_neg[i]) == (len(pos), len(neg)), i


def test_label_sorted_and_general_paths_agree():
  """The slot and N-pair losses on label equality take the sorted path (one sort of
  the labels, then the engine's last pass); the same relation written as a
  label_comparison takes the general one (passes that find the slots): the same
  values and gradients, dense and blockwise, with padding and other candidates."""
  same = lambda a, b: a[:, None] == b[None, :]  # noqa: E731
  cases = {
    "npair": (losses.npair_loss, {}),
    "batch_all": (losses.batch_all_triplet_loss, dict(max_positives=4)),
    "batch_all_soft": (losses.batch_all_triplet_loss, dict(max_positives=4, soft=True)),
    "batch_all_swap": (losses.batch_all_triplet_loss, dict(max_positives=4, swap=True)),
    "semi_hard": (losses.semi_hard_triplet_loss, dict(max_positives=4)),
    "smooth_ap": (losses.smooth_ap_loss, dict(max_positives=4)),
  }
  with jax.enable_x64(True):
    e, labels = _batch(n=13, classes=3)
    e = jnp.asarray(e)
    for name, (fn, kw) in cases.items():
      for block in (None, 4):
        got = value_and_grad(fn, e, labels, block_size=block, **kw)
        want = value_and_grad(
          fn, e, labels, block_size=block, label_comparison=same, **kw
        )
        for g, w in zip(got, want, strict=True):
          assert_close(g, w, 1e-5, f"{name} {block}")
    ref = jnp.asarray(np.random.default_rng(1).normal(size=(9, 4)))
    ref_labels = np.array([0, 1, 2, 0, -1, 1, 2, 2, 0], np.int32)
    for name in ("npair", "batch_all", "semi_hard"):
      fn, kw = cases[name]
      kw = dict(kw, ref_embeddings=ref, ref_labels=ref_labels)
      got = value_and_grad(fn, e, labels, **kw)
      want = value_and_grad(fn, e, labels, label_comparison=same, **kw)
      for g, w in zip(got, want, strict=True):
        assert_close(g, w, 1e-5, f"{name} with ref_embeddings")


def test_auto_block_size_follows_the_benchmarked_thresholds(monkeypatch):
  """CPU: dense up to n x M = 2048^2 pairs, then 512 blocks; an accelerator: dense
  while 8 [n, M] arrays fit a quarter of its memory, then 4096 blocks (thresholds of
  pairs.auto_block_size, from benchmarks/results.md and accelerator.md)."""
  from metriclearn import pairs

  auto = pairs.auto_block_size
  assert auto(2048, 2048, backend="cpu") is None
  assert auto(2048, 2049, backend="cpu") == (512, 512)
  gib = 2**30
  # 8 * 16384^2 * 4 bytes = 8 GiB: fits a quarter of 32 GiB, not of 31 GiB
  assert auto(16384, 16384, backend="gpu", memory_bytes=32 * gib) is None
  assert auto(16384, 16384, backend="gpu", memory_bytes=31 * gib) == (4096, 4096)
  assert auto(16384, 16384, 2, backend="tpu", memory_bytes=16 * gib) is None
  with jax.enable_x64(True):
    e, labels = _batch()
    e = jnp.asarray(e)
    for fn in (losses.supcon_loss, losses.batch_hard_triplet_loss):
      got = value_and_grad(fn, e, labels, block_size="auto")
      want = value_and_grad(fn, e, labels)
      for g, w in zip(got, want, strict=True):
        assert_close(g, w, 1e-12, fn.__name__)
    with pytest.raises(ValueError, match="'auto'"):
      losses.supcon_loss(e, labels, block_size="fast")
    # past the threshold: blocks, and the slot passes' own (128 anchors x all 13)
    assert pairs.auto_slot_block_size(13, backend="cpu") == (128, 13)
    monkeypatch.setattr(pairs, "AUTO_DENSE_PAIRS_CPU", 0)
    semi_hard = functools.partial(losses.semi_hard_triplet_loss, max_positives=5)
    semi_hard.__name__ = "semi-hard"
    for fn in (losses.supcon_loss, semi_hard):
      got = value_and_grad(fn, e, labels, block_size="auto")
      want = value_and_grad(fn, e, labels)
      for g, w in zip(got, want, strict=True):
        assert_close(g, w, 1e-5, fn.__name__)


def _np_arg_best(values, mask, largest):
  """The smallest candidate index attaining the masked min (max) of each row: a plain
  loop; +inf for an empty row, NaN where a masked value is NaN."""
  out = []
  for row, keep in zip(values, mask, strict=True):
    cand = [(v, c) for c, (v, k) in enumerate(zip(row, keep, strict=True)) if k]
    if not cand:
      out.append(np.inf)
    elif any(np.isnan(v) for v, _ in cand):
      out.append(np.nan)
    else:
      best = max(v for v, _ in cand) if largest else min(v for v, _ in cand)
      out.append(min(c for v, c in cand if v == best))
  return np.array(out)


def test_argmin_and_argmax_statistics_name_the_first_extreme():
  """'argmin' / 'argmax' over the negatives / positives of integer points (exact ties
  in the squared distances), dense and blockwise (symmetric square blocks, unequal
  blocks): the smallest index among ties, +inf for an anchor with none, NaN where a
  distance is NaN."""
  rng = np.random.default_rng(3)
  e = rng.integers(-2, 3, size=(14, 2)).astype(np.float32)
  labels = rng.integers(0, 3, size=14).astype(np.int32)
  labels[5] = 7  # a class of one: no positive
  labels[9] = -1  # padding: neither
  passes = (
    losses.Pass(lambda b: [(b.s, b.negative), (b.s, b.positive)], ("argmin", "argmax")),
  )
  sq = lambda a, c: jnp.sum((a[:, None] - c[None]) ** 2, -1)  # noqa: E731
  for x in (e, np.where(np.arange(14)[:, None] == 3, np.nan, e)):
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    same = labels[:, None] == labels[None]
    real = (labels[:, None] >= 0) & (labels[None] >= 0)
    off = ~np.eye(14, dtype=bool)
    want_neg = _np_arg_best(d, ~same & real, largest=False)
    want_pos = _np_arg_best(d, same & real & off, largest=True)
    masked = np.where(~same & real, d, np.inf)
    tied = (masked == masked.min(1, keepdims=True)) & np.isfinite(masked)
    assert (tied.sum(1) > 1).sum() >= 3  # the first index among ties is tested
    for block in (None, 5, (4, 7)):
      rel = pairs.resolve(jnp.asarray(x), jnp.asarray(labels), block_size=block)
      ((neg, pos),) = losses.pair_statistics(rel, passes, sq)
      np.testing.assert_array_equal(np.asarray(neg), want_neg, err_msg=f"{block}")
      np.testing.assert_array_equal(np.asarray(pos), want_pos, err_msg=f"{block}")
  assert np.isinf(want_neg[9]) and np.isinf(want_pos[5]) and np.isnan(want_neg[3])

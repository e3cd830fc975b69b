"""The PML-family miners (batch easy/hard, HDC, uniform histogram, angular, triplet
margin): NumPy float64 loop references written from each definition, sampling
statistics, padding, devices, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from references import CASES, grid_batch, np_distance, np_pairs

from metriclearn import miners


def _relations(x, labels, ref_x, ref_labels, positive_mask=None):
  cands = x if ref_x is None else ref_x
  pos, neg = np_pairs(labels, ref_labels, positive_mask)
  dist = np.array([[np_distance(a, c) for c in cands] for a in x])
  return dist, pos, neg


def _run(miner, x, labels, ref_x, ref_labels, extra, **opts):
  """The miner in float64 on a reference case."""
  with jax.enable_x64(True):
    ref = None if ref_x is None else jnp.asarray(ref_x, jnp.float64)
    got = miner(
      jnp.asarray(x, jnp.float64),
      labels,
      ref_embeddings=ref,
      ref_labels=ref_labels,
      **extra,
      **opts,
    )
    return np.asarray(got)


# ----------------------------------------------------------------------------------
# Batch easy / hard (Xuan et al. 2020).


def _first_best(cands, dist, better):
  """The first candidate j of ``cands`` that no later one beats (``better``)."""
  best = None
  for j in cands:
    if best is None or better(dist[j], dist[best]):
      best = j
  return best


def np_batch_easy_hard(
  x,
  labels,
  ref_x=None,
  ref_labels=None,
  *,
  positive_mask=None,
  pos_strategy="easy",
  neg_strategy="semihard",
  allowed_pos_range=None,
  allowed_neg_range=None,
):
  dist, pos, neg = _relations(x, labels, ref_x, ref_labels, positive_mask)
  inside = lambda d, r: r is None or r[0] <= d <= r[1]  # noqa: E731
  far, near = (lambda a, b: a > b), (lambda a, b: a < b)
  out = np.zeros_like(pos)
  for a in range(len(x)):
    ps = [j for j in np.flatnonzero(pos[a]) if inside(dist[a, j], allowed_pos_range)]
    ns = [j for j in np.flatnonzero(neg[a]) if inside(dist[a, j], allowed_neg_range)]
    # easy positive: closest; hard: farthest. Easy negative: farthest; hard: closest
    pos_better = near if pos_strategy == "easy" else far
    neg_better = far if neg_strategy == "easy" else near
    p = n = None
    if pos_strategy == "semihard":  # the farthest positive closer than n*
      n = _first_best(ns, dist[a], neg_better)
      if n is not None:
        p = _first_best([j for j in ps if dist[a, j] < dist[a, n]], dist[a], far)
    elif neg_strategy == "semihard":  # the closest negative beyond p*
      p = _first_best(ps, dist[a], pos_better)
      if p is not None:
        n = _first_best([j for j in ns if dist[a, j] > dist[a, p]], dist[a], near)
    else:
      if pos_strategy != "all":
        p = _first_best(ps, dist[a], pos_better)
      if neg_strategy != "all":
        n = _first_best(ns, dist[a], neg_better)
    if "all" not in (pos_strategy, neg_strategy):
      if p is not None and n is not None:
        out[a, p] = out[a, n] = True
      continue
    for j in ps if pos_strategy == "all" else ([] if p is None else [p]):
      out[a, j] = True
    for j in ns if neg_strategy == "all" else ([] if n is None else [n]):
      out[a, j] = True
  return out


EASY_HARD = [
  {},  # easy positive, semi-hard negative (EPSHN)
  {"pos_strategy": "hard", "neg_strategy": "hard"},
  {"pos_strategy": "easy", "neg_strategy": "easy"},
  {"pos_strategy": "hard", "neg_strategy": "easy"},
  {"pos_strategy": "semihard", "neg_strategy": "hard"},
  {"pos_strategy": "semihard", "neg_strategy": "easy"},
  {"pos_strategy": "hard", "neg_strategy": "semihard"},
  {"pos_strategy": "all", "neg_strategy": "hard"},
  {"pos_strategy": "easy", "neg_strategy": "all"},
  {"pos_strategy": "all", "neg_strategy": "all"},
  {"allowed_pos_range": (0.9, 3.1), "allowed_neg_range": (1.2, 2.9)},
  {"pos_strategy": "all", "neg_strategy": "easy", "allowed_pos_range": (0.0, 2.2)},
]


@pytest.mark.parametrize("opts", EASY_HARD, ids=str)
def test_batch_easy_hard_matches_numpy(opts):
  for case, (x, labels, ref_x, ref_labels, extra) in CASES.items():
    want = np_batch_easy_hard(x, labels, ref_x, ref_labels, **extra, **opts)
    got = _run(
      miners.batch_easy_hard_miner, x, labels, ref_x, ref_labels, extra, **opts
    )
    np.testing.assert_array_equal(got, want, err_msg=case)
  assert want.any()


def test_batch_easy_hard_hard_hard_is_batch_hard():
  x, labels = grid_batch(8, 16, 4, 4, pad=2, duplicates=2)
  np.testing.assert_array_equal(
    miners.batch_easy_hard_miner(x, labels, pos_strategy="hard", neg_strategy="hard"),
    miners.batch_hard_miner(x, labels),
  )


# ----------------------------------------------------------------------------------
# HDC (Yuan et al. 2017): the hardest share of the batch's pairs.


def np_hdc(x, labels, ref_x=None, ref_labels=None, *, positive_mask=None, f=0.5):
  dist, pos, neg = _relations(x, labels, ref_x, ref_labels, positive_mask)
  out = np.zeros_like(pos)
  m = dist.shape[1]
  for select, sign in ((pos, -1.0), (neg, 1.0)):  # positives: farthest first
    entries = [
      (sign * dist[a, j], a * m + j) for a, j in zip(*np.nonzero(select), strict=True)
    ]
    entries.sort()  # ties: the earlier pair in row-major order
    for _, flat in entries[: math.ceil(f * len(entries))]:
      out[flat // m, flat % m] = True
  return out


@pytest.mark.parametrize("f", [0.5, 0.25, 1.0, 0.0])
def test_hdc_matches_numpy(f):
  for case, (x, labels, ref_x, ref_labels, extra) in CASES.items():
    want = np_hdc(x, labels, ref_x, ref_labels, **extra, f=f)
    got = _run(
      miners.hdc_miner, x, labels, ref_x, ref_labels, extra, filter_percentage=f
    )
    np.testing.assert_array_equal(got, want, err_msg=f"{case} f={f}")


# ----------------------------------------------------------------------------------
# Uniform histogram: per_bin draws with replacement in each bin of equal width.


def np_histogram_probabilities(x, labels, *, num_bins, pos_per_bin, neg_per_bin):
  """P(pair selected) = 1 - (1 - 1/c)^k for a pair in a bin of c pairs."""
  dist, pos, neg = _relations(x, labels, None, None)
  out = np.zeros(dist.shape)
  for select, k in ((pos, pos_per_bin), (neg, neg_per_bin)):
    d = dist[select]
    low, high = d.min(), d.max()
    edges = [low + (high - low) * i / num_bins for i in range(num_bins + 1)]
    bins = np.zeros(dist.shape, int)
    for a, j in zip(*np.nonzero(select), strict=True):
      for i in range(num_bins):
        last = i == num_bins - 1
        if edges[i] <= dist[a, j] and (
          dist[a, j] < edges[i + 1] or (last and dist[a, j] <= edges[-1])
        ):
          bins[a, j] = i
          break
    for a, j in zip(*np.nonzero(select), strict=True):
      c = np.sum(select & (bins == bins[a, j]))
      out[a, j] = 1.0 - (1.0 - 1.0 / c) ** k
  return out


def test_uniform_histogram_frequencies_match_formula():
  x, labels = grid_batch(11, 12, 3, 3, pad=1)
  opts = {"num_bins": 4, "pos_per_bin": 2, "neg_per_bin": 3}
  want = np_histogram_probabilities(x, labels, **opts)
  draws = 600
  keys = jax.random.split(jax.random.key(0), draws)
  with jax.enable_x64(True):
    xs = jnp.asarray(x, jnp.float64)
    sample = jax.jit(
      jax.vmap(lambda k: miners.uniform_histogram_miner(xs, labels, k, **opts))
    )(keys)
    sample = np.asarray(sample)
  pos, neg = np_pairs(labels)
  assert not np.any(sample & ~(pos | neg)[None]), "real pairs only (padding inert)"
  # frequencies within 5 standard errors (sqrt(0.25 / 600) = 0.0204)
  np.testing.assert_allclose(sample.mean(axis=0), want, atol=0.102)
  # a draw holds at most per_bin pairs of each non-empty bin, at least one
  per_draw_pos, per_draw_neg = (sample & pos).sum((1, 2)), (sample & neg).sum((1, 2))
  assert per_draw_pos.max() <= 4 * 2 and per_draw_neg.max() <= 4 * 3
  assert per_draw_pos.min() >= 1 and per_draw_neg.min() >= 1


def test_uniform_histogram_one_bin_one_draw_and_keys():
  x, labels = grid_batch(12, 12, 3, 3, pad=2)
  pos, neg = np_pairs(labels)
  opts = {"num_bins": 1, "pos_per_bin": 1, "neg_per_bin": 1}
  miner = jax.jit(lambda e, k: miners.uniform_histogram_miner(e, labels, k, **opts))
  a = np.asarray(miner(x, jax.random.key(1)))
  assert (a & pos).sum() == 1 and (a & neg).sum() == 1
  np.testing.assert_array_equal(a, miner(x, jax.random.key(1)))  # same key, same
  # every pair at one distance: the last (closed) bin holds them all
  same = np.asarray(miner(0 * x, jax.random.key(2)))
  assert (same & pos).sum() == 1 and (same & neg).sum() == 1


# ----------------------------------------------------------------------------------
# Angular (Wang et al. 2017) and triplet margin: pairs of the selected triplets.


def _triplet_pairs(x, labels, ref_x, ref_labels, positive_mask, keep):
  cands = x if ref_x is None else ref_x
  dist, pos, neg = _relations(x, labels, ref_x, ref_labels, positive_mask)
  out = np.zeros_like(pos)
  for a in range(len(x)):
    for p in np.flatnonzero(pos[a]):
      for n in np.flatnonzero(neg[a]):
        if keep(x[a], cands[p], cands[n], dist[a, p], dist[a, n]):
          out[a, p] = out[a, n] = True
  return out


def np_angular(x, labels, ref_x=None, ref_labels=None, *, positive_mask=None, angle):
  def keep(xa, xp, xn, d_ap, _):
    d_nc = np_distance(xn, (np.asarray(xa) + np.asarray(xp)) / 2)
    if d_ap == 0:
      return False  # no angle (PML: atan(0 / 0) is NaN, not selected)
    theta = math.pi / 2 if d_nc == 0 else math.atan(d_ap / (2 * d_nc))
    return theta > math.radians(angle)

  return _triplet_pairs(x, labels, ref_x, ref_labels, positive_mask, keep)


@pytest.mark.parametrize("angle", [20.0, 37.3])
def test_angular_matches_numpy(angle):
  for case, (x, labels, ref_x, ref_labels, extra) in CASES.items():
    want = np_angular(x, labels, ref_x, ref_labels, **extra, angle=angle)
    got = _run(miners.angular_miner, x, labels, ref_x, ref_labels, extra, angle=angle)
    np.testing.assert_array_equal(got, want, err_msg=case)
    assert want.any(), case


def np_triplet_margin(
  x, labels, ref_x=None, ref_labels=None, *, positive_mask=None, margin, kind
):
  def keep(_, __, ___, d_ap, d_an):
    t = d_an - d_ap
    return {
      "all": t <= margin,
      "hard": t <= 0,
      "semihard": 0 < t <= margin,
      "easy": t > margin,
    }[kind]

  return _triplet_pairs(x, labels, ref_x, ref_labels, positive_mask, keep)


@pytest.mark.parametrize("kind", ["all", "hard", "semihard", "easy"])
def test_triplet_margin_matches_numpy(kind):
  margin = 0.7071  # no difference of two grid distances is this
  for case, (x, labels, ref_x, ref_labels, extra) in CASES.items():
    want = np_triplet_margin(
      x, labels, ref_x, ref_labels, **extra, margin=margin, kind=kind
    )
    got = _run(
      miners.triplet_margin_miner,
      x,
      labels,
      ref_x,
      ref_labels,
      extra,
      margin=margin,
      type_of_triplets=kind,
    )
    np.testing.assert_array_equal(got, want, err_msg=case)
    assert want.any(), case


# ----------------------------------------------------------------------------------
# Padding, jit, devices, errors.

ALL = {
  "batch_easy_hard": lambda e, y, **kw: miners.batch_easy_hard_miner(e, y, **kw),
  "hdc": lambda e, y, **kw: miners.hdc_miner(e, y, filter_percentage=0.3, **kw),
  "uniform_histogram": lambda e, y, **kw: miners.uniform_histogram_miner(
    e, y, jax.random.key(5), num_bins=5, pos_per_bin=3, neg_per_bin=4, **kw
  ),
  "angular": lambda e, y, **kw: miners.angular_miner(e, y, angle=25.0, **kw),
  "triplet_margin": lambda e, y, **kw: miners.triplet_margin_miner(
    e, y, margin=0.9, **kw
  ),
}


# one batch for both tests below, so that they share compiled functions
DEVICE_X, DEVICE_LABELS = grid_batch(31, 16, 4, 4, pad=2, duplicates=2)
JITTED = {name: jax.jit(miner) for name, miner in ALL.items()}


def test_padding_rows_are_inert():
  x, labels = jnp.asarray(DEVICE_X, jnp.float32), DEVICE_LABELS
  poisoned = jnp.where(jnp.asarray(labels == -1)[:, None], jnp.nan, x)
  pos, neg = np_pairs(labels)
  for name, miner in JITTED.items():
    want = np.asarray(miner(x, labels))
    assert want.any() and not np.any(want & ~(pos | neg)), name
    np.testing.assert_array_equal(miner(poisoned, labels), want, err_msg=name)


def test_axis_name_rows_equal_single_device_and_jit_equals_eager():
  # HDC and uniform histogram choose among every device's pairs; the others per row
  x, labels = jnp.asarray(DEVICE_X, jnp.float32), jnp.asarray(DEVICE_LABELS)
  mesh = Mesh(np.array(jax.devices()), ("i",))
  for name, miner in ALL.items():
    want = miner(x, labels)
    np.testing.assert_array_equal(JITTED[name](x, labels), want, err_msg=name)
    local = lambda e, y, miner=miner: miner(e, y, axis_name="i")  # noqa: E731
    sharded = jax.shard_map(
      local, mesh=mesh, in_specs=(P("i"), P("i")), out_specs=P("i")
    )
    np.testing.assert_array_equal(jax.jit(sharded)(x, labels), want, err_msg=name)


def test_bad_input_raises_at_trace_time():
  x, y = jnp.zeros((4, 2)), jnp.array([0, 0, 1, 1])
  for miner in ALL.values():
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
      jax.jit(miner)(x, jnp.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"embeddings must be 2-D"):
      miner(jnp.zeros(4), y)
    with pytest.raises(ValueError, match="labels must be >= 0, or -1"):
      miner(x, jnp.array([0, 0, -2, 1]))
  easy_hard = miners.batch_easy_hard_miner
  with pytest.raises(ValueError, match="pos_strategy must be one of"):
    easy_hard(x, y, pos_strategy="medium")
  with pytest.raises(ValueError, match="neg_strategy must be one of"):
    easy_hard(x, y, neg_strategy="semi-hard")
  with pytest.raises(ValueError, match="cannot both be 'semihard'"):
    easy_hard(x, y, pos_strategy="semihard", neg_strategy="semihard")
  with pytest.raises(ValueError, match="'semihard' cannot be combined with 'all'"):
    easy_hard(x, y, pos_strategy="all")
  with pytest.raises(ValueError, match="allowed_pos_range must have low <= high"):
    easy_hard(x, y, allowed_pos_range=(1.0, 0.5))
  with pytest.raises(ValueError, match="allowed_neg_range must be None or a pair"):
    easy_hard(x, y, allowed_neg_range=0.5)
  with pytest.raises(ValueError, match=r"filter_percentage must lie in \[0.0, 1.0\]"):
    miners.hdc_miner(x, y, filter_percentage=1.5)
  key = jax.random.key(0)
  for option in ("num_bins", "pos_per_bin", "neg_per_bin"):
    with pytest.raises(ValueError, match=f"{option} must be an int >= 1"):
      miners.uniform_histogram_miner(x, y, key, **{option: 0})
  with pytest.raises(ValueError, match=r"angle must lie in \[0.0, 90.0\]"):
    miners.angular_miner(x, y, angle=-1.0)
  with pytest.raises(ValueError, match="type_of_triplets must be one of"):
    miners.triplet_margin_miner(x, y, type_of_triplets="semi")
  with pytest.raises(ValueError, match="margin must be >= 0"):
    miners.triplet_margin_miner(x, y, margin=-0.1)

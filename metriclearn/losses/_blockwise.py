"""The blockwise executor of the losses' engine: running statistics over blocks of
anchors and candidates, a recomputing backward pass, and the ring across devices.

An outer ``lax.map`` over blocks of anchors, an inner ``lax.scan`` over blocks of
candidates, with running statistics (a running log-sum-exp keeps a running maximum);
the backward pass is a ``jax.custom_vjp`` that recomputes each block, as flash
attention does: memory grows with ``block_a x block_c`` and with ``(n + m) d``, never
with ``n m``. A pass that depends on an earlier one (``prev_grad``) carries the
per-anchor derivative, taken in the forward sweep, so the backward pass is one sweep.
When the candidates are the anchors on one device and ``s`` is symmetric, the sweeps
run over pairs of blocks ``I <= J`` (one product serves (I, J) and (J, I)); when the
positives are label equality and the labels are sorted, the passes over positives
skip the blocks that share no label. With ``ring``, the candidates travel around the
devices with ``lax.ppermute``, one shard a step, and so do their gradients. Gradients
are reverse-mode only (``jax.grad``, ``jax.vjp``).

:class:`Block` and :class:`Pass` (what a loss is written in) live here, below both
executors; :mod:`metriclearn.losses._engine` chooses the executor.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from metriclearn import masks, pairs

KINDS = ("sum", "lse", "max", "min", "smallest", "argmin", "argmax")
NO_GRADIENT = ("smallest", "argmin", "argmax")


class Block(NamedTuple):
  """What a term function sees: a block of anchors against a block of candidates.

  ``s`` is the similarity (or distance) of the block; ``positive`` / ``negative`` the
  pair masks (padding, self-pairs, ``mask`` and ``positive_mask`` applied); ``prev``
  the statistics of the earlier passes, flattened in order.
  """

  s: jax.Array  # [ba, bc]
  positive: jax.Array  # [ba, bc] bool
  negative: jax.Array  # [ba, bc] bool
  params: Any  # differentiable parameters (pytree)
  consts: Any  # non-differentiable options (pytree)
  a_aux: Any  # per-anchor arrays [ba, ...] (differentiable)
  c_aux: Any  # per-candidate arrays [bc, ...] (differentiable)
  prev: tuple[jax.Array, ...]  # [ba] or [ba, k] statistics of the earlier passes
  a_index: jax.Array  # [ba] position of each anchor in the global batch
  c_index: jax.Array  # [bc] position of each candidate among all candidates


TermFn = Callable[[Block], Sequence[tuple[jax.Array, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Pass:
  """One sweep over all candidates: per-anchor statistics of ``terms(block)``.

  ``terms`` returns one ``(values, mask)`` per statistic, ``[ba, bc]`` (a statistic
  ``[n]``) or ``[ba, k, bc]`` (a statistic ``[n, k]``); ``kinds`` says how each is
  reduced over the candidates in ``mask``: ``'sum'``, ``'lse'`` (0 where the mask is
  empty), ``'max'`` / ``'min'`` (-inf / +inf where empty), ``'smallest'`` (the ``slots``
  smallest of ``[ba, bc]`` values, ascending, +inf past the last) or ``'argmin'`` /
  ``'argmax'`` (the candidate index ``c_index`` of the smallest / largest value, the
  smallest index among ties, as a float; +inf where empty); the last three have no
  gradient (an argmin's distance is recomputed from the rows it names, so its gradient
  costs O(n k d), not a sweep). ``prev_grad``: the indices of the earlier statistics
  whose influence on this pass is differentiated ('sum' and 'lse' statistics only; a
  slot statistic may depend only on the same slot of an earlier one). ``positive_only``:
  every mask lies within ``block.positive`` (the blockwise executor then skips blocks
  that hold no positive pair, when it knows them).
  """

  terms: TermFn
  kinds: tuple[str, ...]
  prev_grad: tuple[int, ...] = ()
  positive_only: bool = False
  slots: int = 0

  def __post_init__(self):
    if any(k not in KINDS for k in self.kinds):
      raise ValueError(f"kinds must be among {KINDS}, got {self.kinds}.")
    if "smallest" in self.kinds and self.slots < 1:
      raise ValueError("a 'smallest' statistic needs slots >= 1.")


def index_dtype():
  return jax.dtypes.canonicalize_dtype(jnp.int64)


def smallest(x: jax.Array, k: int) -> jax.Array:
  """The ``k`` smallest entries of each row (last axis), ascending."""
  if x.shape[-1] < k:
    pad = jnp.full(x.shape[:-1] + (k - x.shape[-1],), jnp.inf, x.dtype)
    x = jnp.concatenate([x, pad], axis=-1)
  return -jax.lax.top_k(-x, k)[0]


# ----------------------------------------------------------------------------------
# Blockwise: running statistics over blocks, a recomputing backward pass.


@dataclasses.dataclass(frozen=True)
class _Config:
  passes: tuple[Pass, ...]
  sim_fn: Callable[[jax.Array, jax.Array], jax.Array]
  block_a: int
  block_c: int
  n: int  # real anchors (local)
  m: int  # real candidates (per shard in the ring, else all)
  self_pairs: bool
  label_comparison: Callable | None
  axis_name: str | None
  ring: bool
  symmetric: bool = False  # candidates = anchors, sim symmetric, square blocks
  sorted_labels: bool = False  # label-equality positives, labels sorted: skip blocks


def pad_rows(x: jax.Array, rows: int, value) -> jax.Array:
  if x.shape[0] == rows:
    return x
  fill = jnp.full((rows - x.shape[0],) + x.shape[1:], value).astype(x.dtype)
  return jnp.concatenate([x, fill], axis=0)


def _pad_tree(tree: Any, rows: int) -> Any:
  return jax.tree.map(lambda x: pad_rows(x, rows, 0), tree)


def _slice_rows(tree: Any, start, size: int) -> Any:
  return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, size, 0), tree)


def _varying_axes(x: jax.Array) -> set[str]:
  t = jax.typeof(x)
  manual = getattr(t, "manual_axis_type", None)
  if manual is not None:
    return set(manual.varying)
  return set(getattr(t, "vma", None) or ())


def _vary(tree: Any, *refs: jax.Array) -> Any:
  """Marks ``tree`` as varying over the mapped axes that ``refs`` vary over (inside
  ``shard_map`` loop carries are typed by those axes; elsewhere a no-op)."""
  axes = set().union(*(_varying_axes(r) for r in refs))

  def cast(x):
    missing = tuple(sorted(axes - _varying_axes(x)))
    return jax.lax.pcast(x, missing, to="varying") if missing else x

  return jax.tree.map(cast, tree) if axes else tree


def _like_primal(cts: Any, primals: Any) -> Any:
  """Sums cotangents over the mapped axes their primal does not vary over: a value
  shared by every device (e.g. a temperature in ``shard_map``) gets the total."""

  def fix(ct, x):
    extra = tuple(sorted(_varying_axes(ct) - _varying_axes(x)))
    return jax.lax.psum(ct, extra) if extra else ct

  return jax.tree.map(fix, cts, primals)


def round_up(x: int, b: int) -> int:
  return -(-x // b) * b


# Running statistics, each of shape [rows, ...]. State per statistic: 'sum' (acc,
# jac), 'lse' (max, sumexp, jac), 'max' / 'min' (value, ties), 'smallest' (values,),
# 'argmin' / 'argmax' (the value to minimise: v or -v, its index).
# ``jac`` [rows, ..., p]: the derivative w.r.t. the differentiated earlier statistics.


def _init_stat(kind: str, shape: tuple[int, ...], p: int, dtype) -> tuple:
  zeros = jnp.zeros(shape, dtype)
  jac = jnp.zeros(shape + (p,), dtype)
  if kind == "sum":
    return (zeros, jac)
  if kind == "lse":
    return (jnp.full(shape, jnp.finfo(dtype).min, dtype), zeros, jac)
  if kind == "max":
    return (jnp.full(shape, -jnp.inf, dtype), zeros)
  if kind == "min":
    return (jnp.full(shape, jnp.inf, dtype), zeros)
  if kind in ("argmin", "argmax"):
    return (jnp.full(shape, jnp.inf, dtype), jnp.full(shape, jnp.inf, dtype))
  return (jnp.full(shape, jnp.inf, dtype),)


def arg_best(kind: str, v, mask, c_index) -> tuple[jax.Array, jax.Array]:
  """(u, index): the smallest u = v ('argmin') or -v ('argmax') over the masked last
  axis, and the smallest candidate index that attains it (+inf where empty, NaN where
  a NaN value is in the mask)."""
  u = jnp.where(mask, v if kind == "argmin" else -v, jnp.inf)
  best = jnp.min(u, axis=-1)
  index = jnp.broadcast_to(c_index.astype(v.dtype), v.shape)
  hit = mask & (u == best[..., None])
  index = jnp.min(jnp.where(hit, index, jnp.inf), axis=-1)
  return best, jnp.where(jnp.isnan(best), jnp.nan, index)


def _update_stat(kind: str, state: tuple, v, mask, dvs, c_index) -> tuple:
  def jac_sum(weights):
    cols = [jnp.sum(jnp.where(mask, weights * dv, 0.0), axis=-1) for dv in dvs]
    return jnp.stack(cols, axis=-1) if cols else state[-1]

  if kind == "sum":
    acc, jac = state
    acc = acc + jnp.sum(jnp.where(mask, v, 0.0), axis=-1)
    return (acc, jac + jac_sum(1.0) if dvs else jac)
  if kind == "lse":
    mx, se, jac = state
    low = jnp.finfo(v.dtype).min
    new = jnp.maximum(mx, jnp.max(jnp.where(mask, v, low), axis=-1))
    scale = jnp.exp(mx - new)
    e = jnp.where(
      mask, jnp.exp(jnp.where(mask, v, new[..., None]) - new[..., None]), 0.0
    )
    se = se * scale + jnp.sum(e, axis=-1)
    if dvs:
      jac = jac * scale[..., None] + jac_sum(e)
    return (new, se, jac)
  if kind == "smallest":
    (old,) = state
    both = jnp.concatenate([old, jnp.where(mask, v, jnp.inf)], axis=-1)
    return (smallest(both, old.shape[-1]),)
  if kind in ("argmin", "argmax"):  # ties: the smallest index, whatever the order
    old, old_index = state
    best, index = arg_best(kind, v, mask, c_index)
    tie = jnp.where(best == old, jnp.minimum(index, old_index), old_index)
    new = jnp.minimum(old, best)  # NaN stays NaN, and so does its index
    return (new, jnp.where(jnp.isnan(new), jnp.nan, jnp.where(best < old, index, tie)))
  # max / min: the value and how many entries attain it (ties share the gradient).
  old, count = state
  sign = 1.0 if kind == "max" else -1.0
  best = sign * jnp.max(jnp.where(mask, sign * v, -jnp.inf), axis=-1)
  ties = jnp.sum(mask & (v == best[..., None]), axis=-1).astype(count.dtype)
  new = jnp.maximum(old, best) if kind == "max" else jnp.minimum(old, best)
  count = jnp.where(old == new, count, 0.0) + jnp.where(best == new, ties, 0.0)
  return (new, count)


def _final_stat(kind: str, state: tuple) -> tuple[jax.Array, Any]:
  """(value, extra): 'sum' / 'lse': the jacobian w.r.t. the differentiated earlier
  statistics; 'max' / 'min': the number of ties; 'smallest', 'arg*': None."""
  if kind == "sum":
    return state[0], state[1]
  if kind == "lse":
    mx, se, jac = state
    has = se != 0  # a non-empty sum is >= 1 (its maximum term is 1); NaN stays NaN
    safe = jnp.where(has, se, 1.0)
    return jnp.where(has, mx + jnp.log(safe), 0.0), jac / safe[..., None]
  if kind == "smallest":
    return jax.lax.stop_gradient(state[0]), None
  if kind in ("argmin", "argmax"):
    return jax.lax.stop_gradient(state[1]), None
  return state


class _Shard(NamedTuple):
  """The candidates one sweep runs over (all of them, or one device's in the ring)."""

  c: jax.Array  # [mc, d] padded
  labels: jax.Array  # [mc, ...] padded with -1
  aux: Any  # [mc, ...]
  positive_mask: jax.Array | None  # [na, mc] columns of this shard
  mask: jax.Array | None  # [na, mc]
  base: jax.Array  # global index of the shard's first candidate


class _Anchors(NamedTuple):
  a: jax.Array  # [na, d] padded
  labels: jax.Array
  aux: Any
  base: jax.Array  # global index of the first local anchor


def _block(cfg: _Config, anc: _Anchors, sh: _Shard, i0, j0, params, consts, prev):
  """The Block (``s`` unset) for anchor rows [i0, i0 + ba), candidates [j0, j0 + bc)."""
  ba, bc = cfg.block_a, cfg.block_c

  def cut(x):
    return None if x is None else jax.lax.dynamic_slice(x, (i0, j0), (ba, bc))

  offset = anc.base + i0 - sh.base - j0 if cfg.self_pairs else None
  pos, neg = masks.pair_masks(
    _slice_rows(anc.labels, i0, ba),
    _slice_rows(sh.labels, j0, bc),
    self_offset=offset,
    label_comparison=cfg.label_comparison,
    positive_mask=cut(sh.positive_mask),
  )
  local_i = i0 + jnp.arange(ba)
  local_j = j0 + jnp.arange(bc)
  valid = (local_i < cfg.n)[:, None] & (local_j < cfg.m)[None, :]
  extra = cut(sh.mask)
  if extra is not None:
    valid &= extra
  return Block(
    s=cast(jax.Array, None),  # unset: the callers _replace it
    positive=pos & valid,
    negative=neg & valid,
    params=params,
    consts=consts,
    a_aux=_slice_rows(anc.aux, i0, ba),
    c_aux=_slice_rows(sh.aux, j0, bc),
    prev=tuple(_slice_rows(p, i0, ba) for p in prev),
    a_index=anc.base + local_i,
    c_index=sh.base + local_j,
  )


def _update_block(ps: Pass, states: tuple, blk: Block) -> tuple:
  """The running statistics of the block's anchors, updated with the block."""
  if ps.prev_grad:  # also d(terms)/d(prev), for the backward pass

    def values(sub):
      full = list(blk.prev)
      for k, x in zip(ps.prev_grad, sub, strict=True):
        full[k] = x
      return [v for v, _ in ps.terms(blk._replace(prev=tuple(full)))]

    sub = tuple(blk.prev[k] for k in ps.prev_grad)
    basis = [
      tuple(
        jnp.ones_like(x) if c == k else jnp.zeros_like(x) for c, x in enumerate(sub)
      )
      for k in range(len(sub))
    ]
    outs = [jax.jvp(values, (sub,), (t,)) for t in basis]
    vals = outs[0][0]
    dvs = [[o[1][q] for o in outs] for q in range(len(vals))]
    term_masks = [msk for _, msk in ps.terms(blk)]
  else:
    terms = ps.terms(blk)
    vals = [v for v, _ in terms]
    term_masks = [msk for _, msk in terms]
    dvs = [[] for _ in vals]
  return tuple(
    _update_stat(kind, st, v, msk, dv, blk.c_index)
    for kind, st, v, msk, dv in zip(
      ps.kinds, states, vals, term_masks, dvs, strict=True
    )
  )


def _label_ranges(labels: jax.Array, rows: int, block: int) -> jax.Array:
  """[blocks, 2]: the smallest and largest real label of each block of sorted rows."""
  blocks = labels.shape[0] // block
  valid = (labels >= 0) & (jnp.arange(labels.shape[0]) < rows)
  big = jnp.iinfo(labels.dtype).max
  lo = jnp.where(valid, labels, big).reshape(blocks, block).min(axis=1)
  hi = jnp.where(valid, labels, -big).reshape(blocks, block).max(axis=1)
  return jnp.stack([lo, hi], axis=1)


def _may_share_label(ctx, i, j) -> jax.Array:
  """Whether anchor block i and candidate block j can hold a positive pair."""
  a, c = ctx["a_ranges"][i], ctx["c_ranges"][j]
  return (a[0] <= c[1]) & (c[0] <= a[1])


def _skippable(cfg, ps: Pass) -> bool:
  return cfg.sorted_labels and ps.positive_only


def _pass_over_shard(
  cfg, ps: Pass, states, anc: _Anchors, sh: _Shard, params, consts, prev, ctx
):
  """Updates the running statistics ``states`` of every anchor with one shard."""
  if cfg.symmetric:
    return _pass_symmetric(cfg, ps, states, anc, sh, params, consts, prev, ctx)
  ba, bc = cfg.block_a, cfg.block_c
  na, mc = anc.a.shape[0], sh.c.shape[0]

  def anchor_block(args):
    i, st = args
    i0 = i * ba
    a_blk = jax.lax.dynamic_slice_in_dim(anc.a, i0, ba, 0)

    def cand_block(st, j):
      j0 = j * bc

      def update(st):
        c_blk = jax.lax.dynamic_slice_in_dim(sh.c, j0, bc, 0)
        blk = _block(cfg, anc, sh, i0, j0, params, consts, prev)
        return _update_block(ps, st, blk._replace(s=cfg.sim_fn(a_blk, c_blk)))

      if _skippable(cfg, ps):
        return jax.lax.cond(_may_share_label(ctx, i, j), update, lambda x: x, st), None
      return update(st), None

    st, _ = jax.lax.scan(cand_block, st, jnp.arange(mc // bc))
    return st

  blocks = jax.tree.map(lambda x: x.reshape((na // ba, ba) + x.shape[1:]), states)
  blocks = jax.lax.map(anchor_block, (jnp.arange(na // ba), blocks))
  return jax.tree.map(lambda x: x.reshape((na,) + x.shape[2:]), blocks)


def _block_pairs(blocks: int) -> tuple[jax.Array, jax.Array]:
  """Block indices (I, J), I <= J: each unordered pair of blocks once."""
  i, j = np.triu_indices(blocks)
  return jnp.asarray(i, index_dtype()), jnp.asarray(j, index_dtype())


def _pass_symmetric(
  cfg, ps: Pass, states, anc: _Anchors, sh: _Shard, params, consts, prev, ctx
):
  """``_pass_over_shard`` when the candidates are the anchors and the similarity is
  symmetric: block (I, J) serves anchors I against candidates J and, transposed,
  anchors J against candidates I, so each product is computed once."""
  b = cfg.block_a

  def get(st, r0):
    return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, r0, b, 0), st)

  def put(st, part, r0):
    return jax.tree.map(
      lambda x, y: jax.lax.dynamic_update_slice_in_dim(x, y, r0, 0), st, part
    )

  def update(st, ij):
    i0, j0 = ij[0] * b, ij[1] * b
    s = cfg.sim_fn(
      jax.lax.dynamic_slice_in_dim(anc.a, i0, b, 0),
      jax.lax.dynamic_slice_in_dim(sh.c, j0, b, 0),
    )
    blk = _block(cfg, anc, sh, i0, j0, params, consts, prev)._replace(s=s)
    st = put(st, _update_block(ps, get(st, i0), blk), i0)
    blk = _block(cfg, anc, sh, j0, i0, params, consts, prev)._replace(s=s.T)
    old = get(st, j0)
    new = _update_block(ps, old, blk)
    new = jax.tree.map(lambda x, y: jnp.where(ij[0] == ij[1], x, y), old, new)
    return put(st, new, j0)

  def body(st, ij):
    if _skippable(cfg, ps):
      skip = ~_may_share_label(ctx, ij[0], ij[1])
      return jax.lax.cond(skip, lambda st, ij: st, update, st, ij), None
    return update(st, ij), None

  states, _ = jax.lax.scan(body, states, _block_pairs(anc.a.shape[0] // b))
  return states


def _ring_perm(size: int) -> list[tuple[int, int]]:
  return [(i, (i + 1) % size) for i in range(size)]


def _shard_at(cfg, ctx, c, c_labels, c_aux, src, m_pad):
  """The shard of device ``src`` (ring) or all candidates, with its mask columns."""

  def cols(x):
    if x is None:
      return None
    if cfg.ring:
      x = jax.lax.dynamic_slice_in_dim(x, src * cfg.m, cfg.m, 1)
    if x.shape[1] != m_pad:
      x = jnp.concatenate(
        [x, jnp.zeros((x.shape[0], m_pad - x.shape[1]), x.dtype)], axis=1
      )
    return x

  idx = index_dtype()
  base = src.astype(idx) * cfg.m if cfg.ring else jnp.zeros((), idx)
  return _Shard(c, c_labels, c_aux, cols(ctx["positive_mask"]), cols(ctx["mask"]), base)


def _stat_shapes(cfg, ps: Pass, anc, sh, params, consts, prev, rows, dtype):
  """The shape of each statistic of ``ps``: [rows] or [rows, k] (slot terms)."""
  blk = _block(cfg, anc, sh, 0, 0, params, consts, prev)
  s = jax.ShapeDtypeStruct((cfg.block_a, cfg.block_c), dtype)
  vals = jax.eval_shape(lambda s: [v for v, _ in ps.terms(blk._replace(s=s))], s)
  return [
    (rows, ps.slots) if kind == "smallest" else (rows,) + v.shape[1:-1]
    for kind, v in zip(ps.kinds, vals, strict=True)
  ]


def _forward(cfg: _Config, a, c, params, a_aux, c_aux, ctx):
  """All passes: (stats per pass, extras per pass); a, c etc. already padded."""
  dtype = a.dtype
  na, m_pad = a.shape[0], c.shape[0]
  anc = _Anchors(a, ctx["a_labels"], a_aux, ctx["a_base"])
  if cfg.ring:
    size = jax.lax.axis_size(cfg.axis_name)
    me = jax.lax.axis_index(cfg.axis_name).astype(index_dtype())
  consts = ctx["consts"]
  stats: list[Any]
  stats, extras = [], []
  for ps in cfg.passes:
    prev = tuple(s for per_pass in stats for s in per_pass)
    own = _shard_at(
      cfg, ctx, c, ctx["c_labels"], c_aux, me if cfg.ring else None, m_pad
    )
    shapes = _stat_shapes(cfg, ps, anc, own, params, consts, prev, na, dtype)
    states = tuple(
      _init_stat(k, shape, len(ps.prev_grad), dtype)
      for k, shape in zip(ps.kinds, shapes, strict=True)
    )
    states = _vary(states, a, c)
    states = _pass_over_shard(cfg, ps, states, anc, own, params, consts, prev, ctx)
    if cfg.ring:

      def step(carry, w, ps=ps, prev=prev):
        states, travel = carry
        travel = jax.lax.ppermute(travel, cfg.axis_name, _ring_perm(size))
        sh = _shard_at(cfg, ctx, *travel, (me - w) % size, m_pad)
        states = _pass_over_shard(cfg, ps, states, anc, sh, params, consts, prev, ctx)
        return (states, travel), None

      travel = (c, ctx["c_labels"], c_aux)
      (states, _), _ = jax.lax.scan(step, (states, travel), jnp.arange(1, size))
    finals = [_final_stat(k, s) for k, s in zip(ps.kinds, states, strict=True)]
    stats.append(tuple(v for v, _ in finals))
    extras.append(tuple(e for _, e in finals))
  return tuple(stats), tuple(extras)


def _block_grads(cfg, stats, extras, cts, blk: Block, s, params, i0, active=None):
  """d(objective)/d(s, params, a_aux, c_aux) for one block, where the objective is
  the sum of every statistic's terms weighted by its cotangent (times the softmax
  weight for a log-sum-exp): the chain rule through the reductions."""
  ba = s.shape[0]
  flat_stats = [x for per_pass in stats for x in per_pass]

  def objective(s, prm, a_aux, c_aux, which):
    total = jnp.zeros((), s.dtype)
    offset = 0
    for k, (ps, st, ex, ct) in enumerate(
      zip(cfg.passes, stats, extras, cts, strict=True)
    ):
      if k not in which:
        offset += len(ps.kinds)
        continue
      prev = tuple(_slice_rows(x, i0, ba) for x in flat_stats[:offset])
      b = blk._replace(s=s, params=prm, a_aux=a_aux, c_aux=c_aux, prev=prev)
      terms = zip(ps.terms(b), ps.kinds, st, ex, ct, strict=True)
      for (v, msk), kind, value, extra, g in terms:
        if kind in NO_GRADIENT:
          continue
        g = _slice_rows(g, i0, ba)[..., None]
        vs = jax.lax.stop_gradient(v)
        if kind == "lse":  # softmax weights
          value = _slice_rows(value, i0, ba)[..., None]
          g = g * jnp.where(msk, jnp.exp(jnp.where(msk, vs - value, 0.0)), 0.0)
        elif kind in ("max", "min"):  # shared by the entries that attain it
          value = _slice_rows(value, i0, ba)[..., None]
          ties = jnp.maximum(_slice_rows(extra, i0, ba), 1.0)[..., None]
          g = jnp.where(vs == value, g / ties, 0.0)
        total = total + jnp.sum(jnp.where(msk, g * v, 0.0))
      offset += len(ps.kinds)
    return total

  def grads(which):
    return jax.grad(objective, argnums=(0, 1, 2, 3))(
      s, params, blk.a_aux, blk.c_aux, which
    )

  passes = range(len(cfg.passes))
  if active is None:
    return grads(tuple(passes))
  always = tuple(k for k in passes if not _skippable(cfg, cfg.passes[k]))
  total = grads(always)
  zeros = jax.tree.map(jnp.zeros_like, total)
  for k in passes:
    if k not in always:  # only where the block may hold a positive pair
      part = jax.lax.cond(active, lambda k=k: grads((k,)), lambda: zeros)
      total = jax.tree.map(jnp.add, total, part)
  return total


def _grads_over_shard(
  cfg, anc: _Anchors, sh: _Shard, params, consts, stats, extras, cts, ctx
):
  """One backward sweep: d(a, a_aux, params) and d(shard c, shard c_aux)."""
  if cfg.symmetric:
    return _grads_symmetric(cfg, anc, sh, params, consts, stats, extras, cts, ctx)
  ba, bc = cfg.block_a, cfg.block_c
  na, mc = anc.a.shape[0], sh.c.shape[0]
  zeros = jax.tree.map(jnp.zeros_like, params)

  def anchor_block(carry, i):
    dc, dc_aux, dprm = carry
    i0 = i * ba
    a_blk = jax.lax.dynamic_slice_in_dim(anc.a, i0, ba, 0)
    a_aux_blk = _slice_rows(anc.aux, i0, ba)

    def cand_block(inner, j):
      da, da_aux, dprm = inner
      j0 = j * bc
      c_blk = jax.lax.dynamic_slice_in_dim(sh.c, j0, bc, 0)
      blk = _block(cfg, anc, sh, i0, j0, params, consts, ())
      s, sim_vjp = jax.vjp(cfg.sim_fn, a_blk, c_blk)
      active = _may_share_label(ctx, i, j) if cfg.sorted_labels else None
      ds, g_prm, g_a_aux, g_c_aux = _block_grads(
        cfg, stats, extras, cts, blk, s, params, i0, active
      )
      g_a, g_c = sim_vjp(ds)
      inner = (
        da + g_a,
        jax.tree.map(jnp.add, da_aux, g_a_aux),
        jax.tree.map(jnp.add, dprm, g_prm),
      )
      return inner, (g_c, g_c_aux)

    init = _vary(
      (jnp.zeros_like(a_blk), jax.tree.map(jnp.zeros_like, a_aux_blk), dprm),
      anc.a,
      sh.c,
    )
    (da, da_aux, dprm), (g_c, g_c_aux) = jax.lax.scan(
      cand_block, init, jnp.arange(mc // bc)
    )
    dc = dc + g_c.reshape(sh.c.shape)
    dc_aux = jax.tree.map(lambda acc, g: acc + g.reshape(acc.shape), dc_aux, g_c_aux)
    return (dc, dc_aux, dprm), (da, da_aux)

  init = _vary(
    (jnp.zeros_like(sh.c), jax.tree.map(jnp.zeros_like, sh.aux), zeros), anc.a, sh.c
  )
  (dc, dc_aux, dprm), (da, da_aux) = jax.lax.scan(
    anchor_block, init, jnp.arange(na // ba)
  )
  da = da.reshape(anc.a.shape)
  da_aux = jax.tree.map(lambda g, x: g.reshape(x.shape), da_aux, anc.aux)
  return da, da_aux, dprm, dc, dc_aux


def _grads_symmetric(
  cfg, anc: _Anchors, sh: _Shard, params, consts, stats, extras, cts, ctx
):
  """``_grads_over_shard`` for symmetric sweeps (see ``_pass_symmetric``): the
  gradient of block (I, J) and of its transpose go through one product pair. All of
  the embeddings' gradient is returned as the anchors'."""
  b = cfg.block_a

  def add(tree, part, r0):
    return jax.tree.map(
      lambda x, y: jax.lax.dynamic_update_slice_in_dim(
        x, jax.lax.dynamic_slice_in_dim(x, r0, b, 0) + y, r0, 0
      ),
      tree,
      part,
    )

  def body(carry, ij):
    de, da_aux, dc_aux, dprm = carry
    i0, j0 = ij[0] * b, ij[1] * b
    off_diagonal = (ij[0] != ij[1]).astype(anc.a.dtype)
    s, sim_vjp = jax.vjp(
      cfg.sim_fn,
      jax.lax.dynamic_slice_in_dim(anc.a, i0, b, 0),
      jax.lax.dynamic_slice_in_dim(sh.c, j0, b, 0),
    )
    active = _may_share_label(ctx, ij[0], ij[1]) if cfg.sorted_labels else None
    blk = _block(cfg, anc, sh, i0, j0, params, consts, ())
    ds, g_prm, g_a_aux, g_c_aux = _block_grads(
      cfg, stats, extras, cts, blk, s, params, i0, active
    )
    blk = _block(cfg, anc, sh, j0, i0, params, consts, ())
    ds_t, g_prm_t, g_a_aux_t, g_c_aux_t = _block_grads(
      cfg, stats, extras, cts, blk, s.T, params, j0, active
    )
    g_i, g_j = sim_vjp(ds + off_diagonal * ds_t.T)
    de = add(add(de, g_i, i0), g_j, j0)
    scale = functools.partial(jax.tree.map, lambda x: off_diagonal * x)
    da_aux = add(add(da_aux, g_a_aux, i0), scale(g_a_aux_t), j0)
    dc_aux = add(add(dc_aux, g_c_aux, j0), scale(g_c_aux_t), i0)
    dprm = jax.tree.map(jnp.add, dprm, g_prm)
    dprm = jax.tree.map(jnp.add, dprm, scale(g_prm_t))
    return (de, da_aux, dc_aux, dprm), None

  init = _vary(
    (
      jnp.zeros_like(anc.a),
      jax.tree.map(jnp.zeros_like, anc.aux),
      jax.tree.map(jnp.zeros_like, sh.aux),
      jax.tree.map(jnp.zeros_like, params),
    ),
    anc.a,
    sh.c,
  )
  (de, da_aux, dc_aux, dprm), _ = jax.lax.scan(
    body, init, _block_pairs(anc.a.shape[0] // b)
  )
  return de, da_aux, dprm, jnp.zeros_like(sh.c), dc_aux


def _backward(cfg: _Config, res, cts):
  a, c, params, a_aux, c_aux, ctx, stats, extras = res
  cts = [list(ct) for ct in cts]
  # Earlier passes feed later ones per anchor: push the cotangents back through the
  # jacobians taken in the forward sweep (last pass first).
  flat_stats = [x for per_pass in stats for x in per_pass]
  starts = np.cumsum([0] + [len(ps.kinds) for ps in cfg.passes])
  for k in range(len(cfg.passes) - 1, 0, -1):
    ps = cfg.passes[k]
    for q, jac in enumerate(extras[k] if ps.prev_grad else ()):
      if ps.kinds[q] not in ("sum", "lse"):
        continue
      for col, flat in enumerate(ps.prev_grad):
        owner = int(np.searchsorted(starts, flat, side="right") - 1)
        part = cts[k][q] * jac[..., col]
        while part.ndim > flat_stats[flat].ndim:  # a slot statistic of a per-anchor
          part = jnp.sum(part, axis=-1)
        cts[owner][flat - starts[owner]] = cts[owner][flat - starts[owner]] + part
  anc = _Anchors(a, ctx["a_labels"], a_aux, ctx["a_base"])
  m_pad = c.shape[0]
  consts = ctx["consts"]
  grads = functools.partial(
    _grads_over_shard,
    cfg,
    anc,
    params=params,
    consts=consts,
    stats=stats,
    extras=extras,
    cts=cts,
    ctx=ctx,
  )
  if not cfg.ring:
    da, da_aux, dprm, dc, dc_aux = grads(
      _shard_at(cfg, ctx, c, ctx["c_labels"], c_aux, None, m_pad)
    )
    return da, dc, dprm, da_aux, dc_aux, None
  size = jax.lax.axis_size(cfg.axis_name)
  me = jax.lax.axis_index(cfg.axis_name).astype(index_dtype())
  perm = _ring_perm(size)
  da, da_aux, dprm, dc, dc_aux = grads(
    _shard_at(cfg, ctx, c, ctx["c_labels"], c_aux, me, m_pad)
  )

  def step(carry, w):
    da, da_aux, dprm, travel, dtravel = carry
    travel, dtravel = jax.lax.ppermute((travel, dtravel), cfg.axis_name, perm)
    g = grads(_shard_at(cfg, ctx, *travel, (me - w) % size, m_pad))
    da = da + g[0]
    da_aux = jax.tree.map(jnp.add, da_aux, g[1])
    dprm = jax.tree.map(jnp.add, dprm, g[2])
    dtravel = (dtravel[0] + g[3], jax.tree.map(jnp.add, dtravel[1], g[4]))
    return (da, da_aux, dprm, travel, dtravel), None

  travel = (c, ctx["c_labels"], c_aux)
  (da, da_aux, dprm, _, dtravel), _ = jax.lax.scan(
    step, (da, da_aux, dprm, travel, (dc, dc_aux)), jnp.arange(1, size)
  )
  # One more hop brings every shard's gradient home.
  dc, dc_aux = jax.lax.ppermute(dtravel, cfg.axis_name, perm)
  return da, dc, dprm, da_aux, dc_aux, None


def _make_engine(cfg: _Config):
  @jax.custom_vjp
  def run(a, c, params, a_aux, c_aux, ctx):
    return _forward(cfg, a, c, params, a_aux, c_aux, ctx)[0]

  def fwd(a, c, params, a_aux, c_aux, ctx):
    stats, extras = _forward(cfg, a, c, params, a_aux, c_aux, ctx)
    return stats, (a, c, params, a_aux, c_aux, ctx, stats, extras)

  def bwd(res, cts):
    a, c, params, a_aux, c_aux = res[:5]
    grads = _backward(cfg, res, cts)
    return _like_primal(grads[:5], (a, c, params, a_aux, c_aux)) + (None,)

  run.defvjp(fwd, bwd)
  return run


def run(
  rel: pairs.Relation,
  passes,
  sim_fn,
  params,
  consts,
  anchor_aux,
  candidate_aux,
  symmetric: bool,
  labels_sorted: bool = False,
):
  anchors, candidates, labels, ref_labels = (
    rel.anchors,
    rel.candidates,
    rel.labels,
    rel.ref_labels,
  )
  axis_name, n = rel.axis_name, anchors.shape[0]
  idx = index_dtype()
  if axis_name is not None and not rel.ring:
    candidates = pairs.gather(candidates, axis_name)
    ref_labels = pairs.gather(ref_labels, axis_name)
    candidate_aux = jax.tree.map(lambda x: pairs.gather(x, axis_name), candidate_aux)
  a_base = (
    jnp.zeros((), idx)
    if axis_name is None
    else jax.lax.axis_index(axis_name).astype(idx) * n
  )
  m = candidates.shape[0]
  block_a, block_c = rel.block_size or (n, m)
  ba, bc = max(1, min(block_a, n)), max(1, min(block_c, m))
  na, mp = round_up(n, ba), round_up(m, bc)

  def rows(x):
    return None if x is None else pad_rows(x, na, False)

  ctx = dict(
    a_labels=pad_rows(labels, na, -1),
    c_labels=pad_rows(ref_labels, mp, -1),
    positive_mask=rows(rel.positive_mask),
    mask=rows(rel.mask),
    a_base=a_base,
    consts=consts,
  )
  if labels_sorted:
    ctx["a_ranges"] = _label_ranges(ctx["a_labels"], n, ba)
    ctx["c_ranges"] = _label_ranges(ctx["c_labels"], m, bc)
  cfg = _Config(
    tuple(passes),
    sim_fn,
    ba,
    bc,
    n,
    m,
    rel.self_pairs,
    rel.label_comparison,
    axis_name,
    rel.ring,
    symmetric=symmetric and rel.self_pairs and axis_name is None and ba == bc,
    sorted_labels=labels_sorted,
  )
  # A parameter shared by every device (a learned temperature inside shard_map) enters
  # as varying like the anchors: its per-device cotangent is then summed once, by the
  # transpose of that cast, not also by the custom VJP.
  params = _vary(params, anchors)
  stats = _make_engine(cfg)(
    pad_rows(anchors, na, 0),
    pad_rows(candidates, mp, 0),
    params,
    _pad_tree(anchor_aux, na),
    _pad_tree(candidate_aux, mp),
    ctx,
  )
  return jax.tree.map(lambda x: x[:n], stats)

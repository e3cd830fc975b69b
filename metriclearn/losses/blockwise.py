r"""Blockwise in-batch losses: the dense losses' values and gradients in O(n x block)
memory, on one device or passed around a ring of devices.

A dense in-batch loss builds [n, m] similarity matrices (a few of them, in the forward
and the backward pass): 17 GB each at n = m = 65536. The losses here are reductions
over candidates (sums, log-sum-exps, maxima), so they are computed over blocks: an
outer ``lax.map`` over blocks of anchors, an inner ``lax.scan`` over blocks of
candidates, with running statistics (a running log-sum-exp keeps a running maximum).
The backward pass is a ``jax.custom_vjp`` that recomputes each block's similarities,
as flash attention does: peak memory grows with ``block_a x block_c`` and with
``(n + m) d``, never with ``n m``. A loss that needs a per-anchor statistic before its
sum (NT-Xent's negative log-sum-exp, the multi-similarity mining thresholds) makes two
forward sweeps; the backward pass is always one sweep (the dependence of the second
sweep on the first is a per-anchor derivative taken in the forward sweep). When the
candidates are the anchors themselves on one device (the usual in-batch case) and the
similarity is a named, symmetric one, the sweeps run over pairs of blocks I <= J
instead: the product of blocks I and J serves both (I, J) and (J, I), which halves
the matrix products of the forward and the backward pass.

Every loss has the signature of its dense form in :mod:`metriclearn.losses.softmax`,
:mod:`~metriclearn.losses.pair_weighting` or :mod:`~metriclearn.losses.triplet`, the
same defaults and the same values, plus:

* ``block_size``: an int (anchor and candidate blocks) or ``(block_a, block_c)``.
  Blocks need not divide the batch: padding rows (label -1) fill the last block and
  take part in nothing.
* ``ring``: with ``axis_name``, pass the candidates around the devices with
  ``lax.ppermute`` (one shard per step, W steps) instead of gathering them: no device
  ever holds the global candidate set, and the backward pass sends each shard's
  gradient around the ring back to its owner. Without ``ring``, ``axis_name`` gathers
  the candidates with ``lax.all_gather`` exactly as the dense losses do.

Gradients are reverse-mode only (``jax.grad``, ``jax.vjp``); forward-mode (``jvp``)
is not defined through the custom VJP. Learnable arguments (``temperature``,
``scale``, ``bias``, ``beta``) get gradients; the other options (margins, scales
written as numbers) are constants.

:func:`blockwise_reduce` is the engine; a new loss is a few :class:`Pass` term
functions and a per-anchor formula on the statistics.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metriclearn import _checks, distances, masks
from metriclearn.losses import _batch, triplet
from metriclearn.losses import pair_weighting as _pw
from metriclearn.losses.pair import contrastive_from_distance

BlockSize = int | tuple[int, int]
DEFAULT_BLOCK_SIZE = 512

# ----------------------------------------------------------------------------------
# The engine.


class Block(NamedTuple):
  """What a term function sees: one block of anchors against one block of candidates.

  ``s`` is the similarity (or distance) of the block; ``positive`` / ``negative`` the
  pair masks (padding, self-pairs, ``mask`` and ``positive_mask`` already applied);
  ``prev`` the per-anchor statistics of the earlier passes, in order.
  """

  s: jax.Array  # [ba, bc]
  positive: jax.Array  # [ba, bc] bool
  negative: jax.Array  # [ba, bc] bool
  params: Any  # differentiable parameters (pytree of arrays)
  consts: Any  # non-differentiable options (pytree of arrays)
  a_aux: Any  # per-anchor arrays [ba, ...] (differentiable)
  c_aux: Any  # per-candidate arrays [bc, ...] (differentiable)
  prev: tuple[jax.Array, ...]  # [ba] statistics of the earlier passes
  a_index: jax.Array  # [ba] position of each anchor in the global batch
  c_index: jax.Array  # [bc] position of each candidate among all candidates


TermFn = Callable[[Block], Sequence[tuple[jax.Array, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Pass:
  """One sweep over all candidates: per-anchor statistics of ``terms(block)``.

  ``terms`` returns one ``(values [ba, bc], mask [ba, bc] bool)`` per statistic and
  ``kinds`` says how each is reduced over the candidates in ``mask``: ``'sum'``,
  ``'lse'`` (log-sum-exp, 0 where the mask is empty), ``'max'`` or ``'min'`` (-inf /
  +inf where empty; the gradient goes to the entries that attain it, shared equally
  among ties, as ``jnp.max``'s). ``prev_grad`` lists the indices of the earlier
  statistics (flattened over the earlier passes) whose influence on this pass is
  differentiated; 'sum' and 'lse' statistics only (a 'max' used as a threshold in a
  mask takes no gradient).
  ``positive_only``: every mask of ``terms`` lies within ``block.positive``, so a
  block without a positive pair adds nothing; the engine skips such blocks when it
  knows which blocks can hold one (labels sorted, see :func:`blockwise_reduce`).
  """

  terms: TermFn
  kinds: tuple[str, ...]
  prev_grad: tuple[int, ...] = ()
  positive_only: bool = False


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


def _pad_rows(x: jax.Array, rows: int, value) -> jax.Array:
  if x.shape[0] == rows:
    return x
  fill = jnp.full((rows - x.shape[0],) + x.shape[1:], value).astype(x.dtype)
  return jnp.concatenate([x, fill], axis=0)


def _pad_tree(tree: Any, rows: int) -> Any:
  return jax.tree.map(lambda x: _pad_rows(x, rows, 0), tree)


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


def _round_up(x: int, b: int) -> int:
  return -(-x // b) * b


# Running statistics. State per statistic: 'sum' (acc, jac), 'lse' (max, sumexp, jac),
# 'max' / 'min' (value,). ``jac`` [ba, p]: derivative w.r.t. the differentiated prev.


def _init_stat(kind: str, rows: int, p: int, dtype) -> tuple:
  zeros = jnp.zeros((rows,), dtype)
  jac = jnp.zeros((rows, p), dtype)
  if kind == "sum":
    return (zeros, jac)
  if kind == "lse":
    return (jnp.full((rows,), jnp.finfo(dtype).min, dtype), zeros, jac)
  if kind == "max":
    return (jnp.full((rows,), -jnp.inf, dtype), zeros)
  if kind == "min":
    return (jnp.full((rows,), jnp.inf, dtype), zeros)
  raise ValueError(f"kind must be one of 'sum', 'lse', 'max', 'min', got {kind!r}.")


def _update_stat(kind: str, state: tuple, v, mask, dvs) -> tuple:
  def jac_sum(weights):
    cols = [jnp.sum(jnp.where(mask, weights * dv, 0.0), axis=1) for dv in dvs]
    return jnp.stack(cols, axis=1) if cols else state[-1]

  if kind == "sum":
    acc, jac = state
    acc = acc + jnp.sum(jnp.where(mask, v, 0.0), axis=1)
    return (acc, jac + jac_sum(1.0) if dvs else jac)
  if kind == "lse":
    mx, se, jac = state
    low = jnp.finfo(v.dtype).min
    new = jnp.maximum(mx, jnp.max(jnp.where(mask, v, low), axis=1))
    scale = jnp.exp(mx - new)
    e = jnp.where(mask, jnp.exp(jnp.where(mask, v, new[:, None]) - new[:, None]), 0.0)
    se = se * scale + jnp.sum(e, axis=1)
    if dvs:
      jac = jac * scale[:, None] + jac_sum(e)
    return (new, se, jac)
  # max / min: the value and how many entries attain it (ties share the gradient).
  old, count = state
  sign = 1.0 if kind == "max" else -1.0
  best = sign * jnp.max(jnp.where(mask, sign * v, -jnp.inf), axis=1)
  ties = jnp.sum(mask & (v == best[:, None]), axis=1).astype(count.dtype)
  new = jnp.maximum(old, best) if kind == "max" else jnp.minimum(old, best)
  count = jnp.where(old == new, count, 0.0) + jnp.where(best == new, ties, 0.0)
  return (new, count)


def _final_stat(kind: str, state: tuple) -> tuple[jax.Array, jax.Array]:
  """(value [rows], extra): 'sum' / 'lse': the jacobian [rows, p] w.r.t. the
  differentiated earlier statistics; 'max' / 'min': the number of ties [rows]."""
  if kind == "sum":
    return state[0], state[1]
  if kind == "lse":
    mx, se, jac = state
    has = se > 0
    safe = jnp.where(has, se, 1.0)
    return jnp.where(has, mx + jnp.log(safe), 0.0), jac / safe[:, None]
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
  """The Block for anchor rows [i0, i0 + ba) and shard candidates [j0, j0 + bc)."""
  ba, bc = cfg.block_a, cfg.block_c
  a_labels = _slice_rows(anc.labels, i0, ba)
  c_labels = _slice_rows(sh.labels, j0, bc)

  def cut(x):
    return None if x is None else jax.lax.dynamic_slice(x, (i0, j0), (ba, bc))

  offset = anc.base + i0 - sh.base - j0 if cfg.self_pairs else None
  pos, neg = masks.pair_masks(
    a_labels,
    c_labels,
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
  a_index = anc.base + local_i
  c_index = sh.base + local_j
  return Block(
    s=None,
    positive=pos & valid,
    negative=neg & valid,
    params=params,
    consts=consts,
    a_aux=_slice_rows(anc.aux, i0, ba),
    c_aux=_slice_rows(sh.aux, j0, bc),
    prev=tuple(_slice_rows(p, i0, ba) for p in prev),
    a_index=a_index,
    c_index=c_index,
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
    _update_stat(kind, st, v, msk, dv)
    for kind, st, v, msk, dv in zip(
      ps.kinds, states, vals, term_masks, dvs, strict=True
    )
  )


def _pass_over_shard(
  cfg, ps: Pass, states, anc: _Anchors, sh: _Shard, params, consts, prev, ctx
):
  """Updates the running statistics ``states`` of every anchor with one shard."""
  ba, bc = cfg.block_a, cfg.block_c
  na, mc = anc.a.shape[0], sh.c.shape[0]
  if cfg.symmetric:
    return _pass_symmetric(cfg, ps, states, anc, sh, params, consts, prev, ctx)

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


def _block_pairs(blocks: int) -> tuple[jax.Array, jax.Array]:
  """Block indices (I, J), I <= J: each unordered pair of blocks once."""
  i, j = np.triu_indices(blocks)
  return jnp.asarray(i, _index_dtype()), jnp.asarray(j, _index_dtype())


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

  idx = _index_dtype()
  base = src.astype(idx) * cfg.m if cfg.ring else jnp.zeros((), idx)
  return _Shard(c, c_labels, c_aux, cols(ctx["positive_mask"]), cols(ctx["mask"]), base)


def _forward(cfg: _Config, a, c, params, a_aux, c_aux, ctx):
  """All passes: (stats per pass, jacobians per pass); a, c etc. already padded."""
  dtype = a.dtype
  na, m_pad = a.shape[0], c.shape[0]
  anc = _Anchors(a, ctx["a_labels"], a_aux, ctx["a_base"])
  if cfg.ring:
    size = jax.lax.axis_size(cfg.axis_name)
    me = jax.lax.axis_index(cfg.axis_name).astype(_index_dtype())
  stats, jacs = [], []
  for ps in cfg.passes:
    prev = tuple(s for per_pass in stats for s in per_pass)
    states = tuple(_init_stat(k, na, len(ps.prev_grad), dtype) for k in ps.kinds)
    states = _vary(states, a, c)
    consts = ctx["consts"]
    if not cfg.ring:
      sh = _shard_at(cfg, ctx, c, ctx["c_labels"], c_aux, None, m_pad)
      states = _pass_over_shard(cfg, ps, states, anc, sh, params, consts, prev, ctx)
    else:
      travel = (c, ctx["c_labels"], c_aux)
      sh = _shard_at(cfg, ctx, *travel, me, m_pad)
      states = _pass_over_shard(cfg, ps, states, anc, sh, params, consts, prev, ctx)

      def step(carry, w, ps=ps, prev=prev, consts=consts):
        states, travel = carry
        travel = jax.lax.ppermute(travel, cfg.axis_name, _ring_perm(size))
        sh = _shard_at(cfg, ctx, *travel, (me - w) % size, m_pad)
        states = _pass_over_shard(cfg, ps, states, anc, sh, params, consts, prev, ctx)
        return (states, travel), None

      (states, _), _ = jax.lax.scan(step, (states, travel), jnp.arange(1, size))
    finals = [_final_stat(k, s) for k, s in zip(ps.kinds, states, strict=True)]
    stats.append(tuple(v for v, _ in finals))
    jacs.append(tuple(j for _, j in finals))
  return tuple(stats), tuple(jacs)


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
        g = _slice_rows(g, i0, ba)[:, None]
        vs = jax.lax.stop_gradient(v)
        if kind == "lse":  # softmax weights
          value = _slice_rows(value, i0, ba)[:, None]
          g = g * jnp.where(msk, jnp.exp(jnp.where(msk, vs - value, 0.0)), 0.0)
        elif kind in ("max", "min"):  # shared by the entries that attain it
          value = _slice_rows(value, i0, ba)[:, None]
          ties = jnp.maximum(_slice_rows(extra, i0, ba), 1.0)[:, None]
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
  a, c, params, a_aux, c_aux, ctx, stats, jacs = res
  extras = jacs  # per statistic: jacobian ('sum', 'lse') or number of ties
  cts = [list(ct) for ct in cts]
  # Earlier passes feed later ones per anchor: push the cotangents back through the
  # jacobians taken in the forward sweep (last pass first).
  sizes = [len(ps.kinds) for ps in cfg.passes]
  starts = np.cumsum([0] + sizes)
  for k in range(len(cfg.passes) - 1, 0, -1):
    ps = cfg.passes[k]
    if not ps.prev_grad:
      continue
    for q, jac in enumerate(jacs[k]):
      if ps.kinds[q] not in ("sum", "lse"):
        continue
      for col, flat in enumerate(ps.prev_grad):
        owner = int(np.searchsorted(starts, flat, side="right") - 1)
        cts[owner][flat - starts[owner]] = (
          cts[owner][flat - starts[owner]] + cts[k][q] * jac[:, col]
        )
  anc = _Anchors(a, ctx["a_labels"], a_aux, ctx["a_base"])
  m_pad = c.shape[0]
  consts = ctx["consts"]
  if not cfg.ring:
    sh = _shard_at(cfg, ctx, c, ctx["c_labels"], c_aux, None, m_pad)
    da, da_aux, dprm, dc, dc_aux = _grads_over_shard(
      cfg, anc, sh, params, consts, stats, extras, cts, ctx
    )
  else:
    size = jax.lax.axis_size(cfg.axis_name)
    me = jax.lax.axis_index(cfg.axis_name).astype(_index_dtype())
    perm = _ring_perm(size)
    sh = _shard_at(cfg, ctx, c, ctx["c_labels"], c_aux, me, m_pad)
    da, da_aux, dprm, dc, dc_aux = _grads_over_shard(
      cfg, anc, sh, params, consts, stats, extras, cts, ctx
    )

    def step(carry, w):
      da, da_aux, dprm, travel, dtravel = carry
      travel, dtravel = jax.lax.ppermute((travel, dtravel), cfg.axis_name, perm)
      sh = _shard_at(cfg, ctx, *travel, (me - w) % size, m_pad)
      g = _grads_over_shard(cfg, anc, sh, params, consts, stats, extras, cts, ctx)
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
    stats, jacs = _forward(cfg, a, c, params, a_aux, c_aux, ctx)
    return stats, (a, c, params, a_aux, c_aux, ctx, stats, jacs)

  def bwd(res, cts):
    a, c, params, a_aux, c_aux = res[:5]
    grads = _backward(cfg, res, cts)
    return _like_primal(grads[:5], (a, c, params, a_aux, c_aux)) + (None,)

  run.defvjp(fwd, bwd)
  return run


def _index_dtype():
  return jax.dtypes.canonicalize_dtype(jnp.int64)


def _block_sizes(block_size: BlockSize) -> tuple[int, int]:
  sizes = (block_size, block_size) if isinstance(block_size, int) else block_size
  if len(tuple(sizes)) != 2 or not all(
    isinstance(b, int | np.integer) and b > 0 for b in sizes
  ):
    raise ValueError(
      f"block_size must be a positive int or a pair (block_a, block_c) of them, got "
      f"{block_size!r}."
    )
  return int(sizes[0]), int(sizes[1])


def blockwise_reduce(
  passes: Sequence[Pass],
  sim_fn: Callable[[jax.Array, jax.Array], jax.Array],
  anchors: jax.Array,
  candidates: jax.Array,
  labels: jax.Array,
  ref_labels: jax.Array,
  *,
  self_pairs: bool,
  params: Any = (),
  consts: Any = (),
  anchor_aux: Any = (),
  candidate_aux: Any = (),
  positive_mask: jax.Array | None = None,
  mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  axis_name: str | None = None,
  ring: bool = False,
  block_size: BlockSize = DEFAULT_BLOCK_SIZE,
  symmetric: bool = False,
  labels_sorted: bool = False,
) -> tuple[tuple[jax.Array, ...], ...]:
  """Per-anchor statistics of every pass, computed block by block.

  The engine behind every loss of this module: for each :class:`Pass`, in order, each
  anchor's statistics of ``pass.terms`` over all its candidates. Differentiable in
  ``anchors``, ``candidates``, ``params``, ``anchor_aux`` and ``candidate_aux``; the
  backward pass is one more sweep that recomputes the blocks.

  Args:
    passes: the sweeps, in order (a later pass sees the earlier statistics).
    sim_fn: ``(a [ba, d], c [bc, d]) -> [ba, bc]``, e.g. a pairwise distance.
    anchors: [n, d] (checked, float).
    candidates: [m, d] (this device's share with ``axis_name``).
    labels: [n, ...] anchor labels, -1 for padding.
    ref_labels: [m, ...] candidate labels.
    self_pairs: the candidates are the anchors (so self-pairs are excluded).
    params: differentiable pytree passed to every block.
    consts: non-differentiable pytree passed to every block.
    anchor_aux: pytree of [n, ...] per-anchor arrays.
    candidate_aux: pytree of [m, ...] per-candidate arrays.
    positive_mask: optional [n, M] relation replacing label equality (M: all
      candidates, over every device with ``axis_name``).
    mask: optional [n, M] bool: other pairs take no part.
    label_comparison: optional ``f(labels, ref_labels) -> bool`` for one block.
    axis_name: gather the candidates of every device (``ring=False``) or pass them
      around the ring (``ring=True``).
    ring: see ``axis_name``.
    block_size: int, or ``(block_a, block_c)``.
    symmetric: ``sim_fn(c, a) == sim_fn(a, c).T`` (true of every named similarity
      and distance). With ``self_pairs``, square blocks and no ``axis_name``, each
      product of blocks (I, J) then also serves (J, I): half the products.
    labels_sorted: ``labels`` and ``ref_labels`` are sorted [n] / [m] integers and
      positives are label equality (no ``positive_mask``, ``label_comparison`` or
      ``axis_name``): a pass with ``positive_only`` then skips the pairs of blocks
      that share no label.

  Returns:
    For every pass, a tuple of [n] statistics (in the order of ``kinds``).
  """
  block_a, block_c = _block_sizes(block_size)
  if ring and axis_name is None:
    raise ValueError("ring=True passes candidates between devices: give axis_name.")
  n = anchors.shape[0]
  idx = _index_dtype()
  if axis_name is not None and not ring:
    candidates = _batch.gather(candidates, axis_name)
    ref_labels = _batch.gather(ref_labels, axis_name)
    candidate_aux = jax.tree.map(lambda x: _batch.gather(x, axis_name), candidate_aux)
  a_base = (
    jnp.zeros((), idx)
    if axis_name is None
    else jax.lax.axis_index(axis_name).astype(idx) * n
  )
  m = candidates.shape[0]
  ba, bc = max(1, min(block_a, n)), max(1, min(block_c, m))
  na, mp = _round_up(n, ba), _round_up(m, bc)

  def rows(x):
    return None if x is None else _pad_rows(x, na, False)

  sorted_labels = bool(
    labels_sorted
    and positive_mask is None
    and label_comparison is None
    and axis_name is None
    and labels.ndim == 1
  )
  ctx = dict(
    a_labels=_pad_rows(labels, na, -1),
    c_labels=_pad_rows(ref_labels, mp, -1),
    positive_mask=rows(positive_mask),
    mask=rows(mask),
    a_base=a_base,
    consts=consts,
  )
  if sorted_labels:
    ctx["a_ranges"] = _label_ranges(ctx["a_labels"], n, ba)
    ctx["c_ranges"] = _label_ranges(ctx["c_labels"], m, bc)
  cfg = _Config(
    tuple(passes),
    sim_fn,
    ba,
    bc,
    n,
    m,
    self_pairs,
    label_comparison,
    axis_name,
    ring,
    symmetric=symmetric and self_pairs and axis_name is None and ba == bc,
    sorted_labels=sorted_labels,
  )
  stats = _make_engine(cfg)(
    _pad_rows(anchors, na, 0),
    _pad_rows(candidates, mp, 0),
    params,
    _pad_tree(anchor_aux, na),
    _pad_tree(candidate_aux, mp),
    ctx,
  )
  return jax.tree.map(lambda x: x[:n], stats)


# ----------------------------------------------------------------------------------
# Arguments (the checks of ``_batch.prepare``, without building [n, m] masks).


class _Inputs(NamedTuple):
  anchors: jax.Array
  candidates: jax.Array  # local
  labels: jax.Array
  ref_labels: jax.Array
  self_pairs: bool
  positive_mask: jax.Array | None
  mask: jax.Array | None


def _resolve(
  embeddings,
  labels,
  ref_embeddings,
  ref_labels,
  positive_mask,
  label_comparison,
  mask,
  axis_name,
  ring,
) -> _Inputs:
  embeddings, labels, candidates, ref_labels = _batch.check_inputs(
    embeddings, labels, ref_embeddings, ref_labels, label_comparison
  )
  if ring and axis_name is None:
    raise ValueError("ring=True passes candidates between devices: give axis_name.")
  n, self_pairs = embeddings.shape[0], ref_embeddings is None
  m = candidates.shape[0]
  if axis_name is not None:
    m *= jax.lax.axis_size(axis_name)
  if positive_mask is not None:
    positive_mask = _checks.check_mask(positive_mask, (n, m), "positive_mask")
  if mask is not None:
    mask = _checks.check_mask(mask, (n, m), "mask")
  return _Inputs(
    embeddings, candidates, labels, ref_labels, self_pairs, positive_mask, mask
  )


def _scalar(value: Any, name: str, dtype, *, positive: bool = False) -> jax.Array:
  """A scalar option (possibly learnable) as an array, checked while concrete."""
  if positive:
    _checks.check_positive(value, name)
  x = _checks.as_float(value, name)
  if x.shape != ():
    raise ValueError(f"{name} must be a scalar, got shape {tuple(x.shape)}.")
  return x.astype(dtype)


# Pairwise functions with f(c, a) == f(a, c).T.
_SYMMETRIC = (
  distances.pairwise_dot,
  distances.pairwise_cosine_similarity,
  distances.pairwise_cosine_distance,
  distances.pairwise_euclidean,
  distances.pairwise_squared_euclidean,
)


def _run(
  inp: _Inputs,
  passes,
  sim_fn,
  *,
  label_comparison,
  axis_name,
  ring,
  block_size,
  **kwargs,
):
  sortable = (
    any(ps.positive_only for ps in passes)
    and axis_name is None
    and label_comparison is None
    and inp.positive_mask is None
    and inp.mask is None
    and not kwargs.get("anchor_aux")
    and not kwargs.get("candidate_aux")
  )
  if sortable:
    # Sort both sides by label: the positives of a block of anchors then lie in a few
    # blocks of candidates, and passes over positives skip the other blocks.
    order = jnp.argsort(inp.labels, stable=True)
    c_order = order if inp.self_pairs else jnp.argsort(inp.ref_labels, stable=True)
    stats = blockwise_reduce(
      passes,
      sim_fn,
      inp.anchors[order],
      inp.candidates[c_order],
      inp.labels[order],
      inp.ref_labels[c_order],
      self_pairs=inp.self_pairs,
      block_size=block_size,
      symmetric=sim_fn in _SYMMETRIC,
      labels_sorted=True,
      **kwargs,
    )
    return jax.tree.map(lambda x: jnp.zeros_like(x).at[order].set(x), stats)
  return blockwise_reduce(
    passes,
    sim_fn,
    inp.anchors,
    inp.candidates,
    inp.labels,
    inp.ref_labels,
    self_pairs=inp.self_pairs,
    positive_mask=inp.positive_mask,
    mask=inp.mask,
    label_comparison=label_comparison,
    axis_name=axis_name,
    ring=ring,
    block_size=block_size,
    symmetric=sim_fn in _SYMMETRIC or sim_fn is _no_similarity,
    **kwargs,
  )


def _ones(b: Block) -> jax.Array:
  return jnp.ones_like(b.s)


def _active(*counts: jax.Array) -> jax.Array:
  out = counts[0] > 0
  for c in counts[1:]:
    out &= c > 0
  return out


def _mean(total: jax.Array, count: jax.Array) -> jax.Array:
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


# ----------------------------------------------------------------------------------
# Softmax losses (dense forms: metriclearn.losses.softmax).

_ARGS = """embeddings: [n, d] anchors.
    labels: [n] integer labels, -1 for padding.
    ref_embeddings: optional [m, d] candidates (a memory bank, another view).
    ref_labels: [m] integer labels of ``ref_embeddings``.
    positive_mask: optional [n, m] bool relation that replaces label equality (m: all
      candidates, over every device with ``axis_name``).
    label_comparison: optional ``f(labels, ref_labels) -> bool``, applied per block.
    mask: optional [n, m] bool (e.g. a miner's output): other pairs take no part.
    axis_name: inside ``pmap`` / ``shard_map``, compare against every device's
      candidates (gathered, or passed around the ring with ``ring=True``)."""

_BLOCK_ARGS = """block_size: int, or ``(block_a, block_c)``: anchors and candidates per
      block; memory grows with their product.
    ring: with ``axis_name``, pass the candidate shards around the devices instead
      of gathering them."""


def _doc(fn):
  fn.__doc__ = fn.__doc__.replace("{ARGS}", _ARGS).replace("{BLOCK}", _BLOCK_ARGS)
  return fn


def _ntxent_passes(similarity) -> tuple[Pass, ...]:
  def negatives(b: Block):
    logits = b.s / b.params
    return [(logits, b.negative), (_ones(b), b.negative)]

  def positives(b: Block):
    neg_lse, neg_count = b.prev
    pos = b.positive & (neg_count > 0)[:, None]
    x = neg_lse[:, None] - b.s / b.params
    # softplus(x), written so that its derivative reuses exp(-|x|) (faster here)
    per_pair = jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))
    return [(per_pair, pos), (_ones(b), pos)]

  return (
    Pass(negatives, ("lse", "sum")),
    Pass(positives, ("sum", "sum"), prev_grad=(0,), positive_only=True),
  )


@_doc
def ntxent_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
  temperature: float | jax.Array = 0.1,
  similarity: str | distances.DistanceFn = "cosine",
  block_size: BlockSize = DEFAULT_BLOCK_SIZE,
  ring: bool = False,
) -> jax.Array:
  r"""NT-Xent / InfoNCE, computed blockwise.

  The dense form, with the same values and gradients, is
  :func:`metriclearn.losses.softmax.ntxent_loss`.

  .. math::
    \ell_i = \frac{1}{|P_i|} \sum_{p \in P_i}
      \log\Big(1 + \sum_{q \in N_i} e^{(s_{iq} - s_{ip})/\tau}\Big)

  Two sweeps: the negatives' log-sum-exp of each anchor, then its positive pairs.

  Args:
    {ARGS}
    temperature: :math:`\tau > 0`, a number or a scalar array (may be learned).
    similarity: 'cosine' (default), 'dot', or a callable ``(a, b) -> [ba, bc]``.
    {BLOCK}

  Returns:
    [n] per-anchor losses, equal to the dense form's.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  >>> ntxent_loss(e, jnp.array([0, 0, 1]), temperature=1.0, block_size=2)
  Array([0.31326..., 0.31326..., 0.        ], dtype=float32)

  References:
    Chen, Kornblith, Norouzi, Hinton. A Simple Framework for Contrastive Learning of
    Visual Representations. ICML 2020.
  """
  inp = _resolve(
    embeddings,
    labels,
    ref_embeddings,
    ref_labels,
    positive_mask,
    label_comparison,
    mask,
    axis_name,
    ring,
  )
  tau = _scalar(temperature, "temperature", inp.anchors.dtype, positive=True)
  _, (total, count) = _run(
    inp,
    _ntxent_passes(similarity),
    distances.get_pairwise_similarity(similarity),
    params=tau,
    label_comparison=label_comparison,
    axis_name=axis_name,
    ring=ring,
    block_size=block_size,
  )
  return _mean(total, count)


infonce_loss = ntxent_loss


def _supcon_terms(b: Block):
  logits = b.s / b.params
  return [
    (logits, b.positive | b.negative),
    (logits, b.positive),
    (_ones(b), b.positive),
    (_ones(b), b.negative),
  ]


@_doc
def supcon_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
  temperature: float | jax.Array = 0.1,
  similarity: str | distances.DistanceFn = "cosine",
  block_size: BlockSize = DEFAULT_BLOCK_SIZE,
  ring: bool = False,
) -> jax.Array:
  r"""Supervised contrastive loss, computed blockwise.

  The dense form, with the same values and gradients, is
  :func:`metriclearn.losses.softmax.supcon_loss`.

  .. math::
    \ell_i = \log \sum_{a \in P_i \cup N_i} e^{s_{ia}/\tau}
      - \frac{1}{|P_i|} \sum_{p \in P_i} s_{ip}/\tau

  Args:
    {ARGS}
    temperature: :math:`\tau > 0`, a number or a scalar array (may be learned).
    similarity: 'cosine' (default), 'dot', or a callable.
    {BLOCK}

  Returns:
    [n] per-anchor losses (0 without a positive or without a negative).

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  >>> supcon_loss(e, jnp.array([0, 0, 1]), temperature=1.0, block_size=2)
  Array([0.31326..., 0.31326..., 0.        ], dtype=float32)

  References:
    Khosla et al. Supervised Contrastive Learning. NeurIPS 2020.
  """
  inp = _resolve(
    embeddings,
    labels,
    ref_embeddings,
    ref_labels,
    positive_mask,
    label_comparison,
    mask,
    axis_name,
    ring,
  )
  tau = _scalar(temperature, "temperature", inp.anchors.dtype, positive=True)
  ((lse, pos_sum, n_pos, n_neg),) = _run(
    inp,
    (Pass(_supcon_terms, ("lse", "sum", "sum", "sum")),),
    distances.get_pairwise_similarity(similarity),
    params=tau,
    label_comparison=label_comparison,
    axis_name=axis_name,
    ring=ring,
    block_size=block_size,
  )
  return jnp.where(_active(n_pos, n_neg), lse - _mean(pos_sum, n_pos), 0.0)


def _snn_terms(b: Block):
  logits = -b.s / b.params
  return [
    (logits, b.positive | b.negative),
    (logits, b.positive),
    (_ones(b), b.positive),
    (_ones(b), b.negative),
  ]


@_doc
def soft_nearest_neighbor_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
  temperature: float | jax.Array = 1.0,
  distance: str | distances.DistanceFn = "squared_euclidean",
  block_size: BlockSize = DEFAULT_BLOCK_SIZE,
  ring: bool = False,
) -> jax.Array:
  r"""Soft nearest neighbour loss, computed blockwise.

  The dense form, with the same values and gradients, is
  :func:`metriclearn.losses.softmax.soft_nearest_neighbor_loss`.

  .. math::
    \ell_i = -\log \frac{\sum_{p \in P_i} e^{-D_{ip}/T}}
      {\sum_{a \in P_i \cup N_i} e^{-D_{ia}/T}}

  Args:
    {ARGS}
    temperature: :math:`T > 0`, a number or a scalar array (may be learned).
    distance: 'squared_euclidean' (default), 'euclidean', 'cosine', or a callable.
    {BLOCK}

  Returns:
    [n] per-anchor losses (0 without a positive or without a negative).

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  >>> soft_nearest_neighbor_loss(e, jnp.array([0, 0, 1]), block_size=2)
  Array([0.12692..., 0.12692..., 0.        ], dtype=float32)

  References:
    Frosst, Papernot, Hinton. Analyzing and Improving Representations with the Soft
    Nearest Neighbor Loss. ICML 2019.
  """
  inp = _resolve(
    embeddings,
    labels,
    ref_embeddings,
    ref_labels,
    positive_mask,
    label_comparison,
    mask,
    axis_name,
    ring,
  )
  t = _scalar(temperature, "temperature", inp.anchors.dtype, positive=True)
  ((lse_all, lse_pos, n_pos, n_neg),) = _run(
    inp,
    (Pass(_snn_terms, ("lse", "lse", "sum", "sum")),),
    distances.get_pairwise_distance(distance),
    params=t,
    label_comparison=label_comparison,
    axis_name=axis_name,
    ring=ring,
    block_size=block_size,
  )
  return jnp.where(_active(n_pos, n_neg), lse_all - lse_pos, 0.0)


def _sigmoid_terms(b: Block):
  scale, bias = b.params
  logits = scale * b.s + bias
  per_pair = jax.nn.softplus(jnp.where(b.positive, -logits, logits))
  return [(per_pair, b.positive | b.negative)]


@_doc
def sigmoid_pairwise_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  scale: jax.Array,
  bias: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
  similarity: str | distances.DistanceFn = "cosine",
  block_size: BlockSize = DEFAULT_BLOCK_SIZE,
  ring: bool = False,
) -> jax.Array:
  r"""Sigmoid pairwise (SigLIP) loss, computed blockwise.

  The dense form, with the same values and gradients, is
  :func:`metriclearn.losses.softmax.sigmoid_pairwise_loss`.

  .. math::
    \ell_i = -\sum_{j \in P_i \cup N_i} \log \sigma\big(z_{ij} (t\, s_{ij} + b)\big)

  Args:
    {ARGS}
    scale: scalar :math:`t > 0` (learned).
    bias: scalar :math:`b` (learned).
    similarity: 'cosine' (default), 'dot', or a callable.
    {BLOCK}

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  >>> sigmoid_pairwise_loss(e, jnp.array([0, 0, 1]), 1.0, 0.0, block_size=2)
  Array([1.00640..., 1.00640..., 1.38629...], dtype=float32)

  References:
    Zhai, Mustafa, Kolesnikov, Beyer. Sigmoid Loss for Language Image Pre-Training.
    ICCV 2023.
  """
  inp = _resolve(
    embeddings,
    labels,
    ref_embeddings,
    ref_labels,
    positive_mask,
    label_comparison,
    mask,
    axis_name,
    ring,
  )
  dtype = inp.anchors.dtype
  params = (
    _scalar(scale, "scale", dtype, positive=True),
    _scalar(bias, "bias", dtype),
  )
  ((total,),) = _run(
    inp,
    (Pass(_sigmoid_terms, ("sum",)),),
    distances.get_pairwise_similarity(similarity),
    params=params,
    label_comparison=label_comparison,
    axis_name=axis_name,
    ring=ring,
    block_size=block_size,
  )
  return total


# ----------------------------------------------------------------------------------
# Pair-weighting losses (dense forms: metriclearn.losses.pair_weighting).


def _log1p_exp(lse: jax.Array, count: jax.Array) -> jax.Array:
  r""":math:`\log(1 + \sum e^x)` from the log-sum-exp; 0 where nothing was summed."""
  return jnp.where(count > 0, jax.nn.softplus(lse), 0.0)


def _ms_passes(mining: bool) -> tuple[Pass, ...]:
  def terms(b: Block):
    alpha, beta, base, epsilon = b.consts
    pos, neg = b.positive, b.negative
    if mining:  # Wang et al.'s eqs. 8-9 with the thresholds of the first sweep
      least_pos, most_neg = b.prev
      pos = pos & (b.s - epsilon < most_neg[:, None])
      neg = neg & (b.s + epsilon > least_pos[:, None])
    return [
      (-alpha * (b.s - base), pos),
      (beta * (b.s - base), neg),
      (_ones(b), pos),
      (_ones(b), neg),
    ]

  def thresholds(b: Block):
    return [(b.s, b.positive), (b.s, b.negative)]

  loss = Pass(terms, ("lse", "lse", "sum", "sum"))
  return (Pass(thresholds, ("min", "max")), loss) if mining else (loss,)


@_doc
def multi_similarity_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
  alpha: float = 2.0,
  beta: float = 50.0,
  base: float = 0.5,
  similarity: str | distances.DistanceFn = "cosine",
  mining_epsilon: float | None = None,
  block_size: BlockSize = DEFAULT_BLOCK_SIZE,
  ring: bool = False,
) -> jax.Array:
  r"""Multi-similarity loss, computed blockwise.

  The dense form, with the same values and gradients, is
  :func:`metriclearn.losses.pair_weighting.multi_similarity_loss`.

  .. math::
    \ell_a = \frac{1}{\alpha} \log\Big(1 + \sum_{p \in P_a} e^{-\alpha (S_{ap} -
    \lambda)}\Big) + \frac{1}{\beta} \log\Big(1 + \sum_{q \in N_a} e^{\beta (S_{aq}
    - \lambda)}\Big)

  With ``mining_epsilon`` the paper's pair mining is done inside, in a first sweep
  (each anchor's least similar positive and most similar negative): the result equals
  the dense loss with ``mask=miners.multi_similarity_miner(..., epsilon=...)``
  without the [n, m] mask.

  Args:
    {ARGS}
    alpha: scale of the positive term, > 0 (paper: 2).
    beta: scale of the negative term, > 0 (paper: 50).
    base: the similarity offset lambda (0.5).
    similarity: 'cosine' (default), 'dot' or a callable.
    mining_epsilon: None (no mining, as the dense loss) or the miner's epsilon >= 0
      (paper: 0.1).
    {BLOCK}

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])
  >>> losses = multi_similarity_loss(e, jnp.array([0, 0, 1, 1]), block_size=3)
  >>> [round(float(v), 4) for v in losses]
  [0.5991, 0.7591, 0.5991, 0.7591]

  References:
    Wang, Han, Huang, Dong, Scott. Multi-Similarity Loss with General Pair Weighting
    for Deep Metric Learning. CVPR 2019.
  """
  _checks.check_positive(alpha, "alpha")
  _checks.check_positive(beta, "beta")
  if mining_epsilon is not None:
    _checks.check_non_negative(mining_epsilon, "mining_epsilon")
  inp = _resolve(
    embeddings,
    labels,
    ref_embeddings,
    ref_labels,
    positive_mask,
    label_comparison,
    mask,
    axis_name,
    ring,
  )
  dtype = inp.anchors.dtype
  consts = tuple(
    jnp.asarray(v).astype(dtype)
    for v in (alpha, beta, base, 0.0 if mining_epsilon is None else mining_epsilon)
  )
  *_, (lse_p, lse_n, n_pos, n_neg) = _run(
    inp,
    _ms_passes(mining_epsilon is not None),
    distances.get_pairwise_similarity(similarity),
    consts=consts,
    label_comparison=label_comparison,
    axis_name=axis_name,
    ring=ring,
    block_size=block_size,
  )
  alpha, beta = consts[:2]
  loss = _log1p_exp(lse_p, n_pos) / alpha + _log1p_exp(lse_n, n_neg) / beta
  return jnp.where(_active(n_pos, n_neg), loss, 0.0)


def _circle_terms(detach: bool):
  def terms(b: Block):
    margin, gamma = b.consts
    alpha_p = jax.nn.relu(1.0 + margin - b.s)
    alpha_n = jax.nn.relu(b.s + margin)
    if detach:
      alpha_p = jax.lax.stop_gradient(alpha_p)
      alpha_n = jax.lax.stop_gradient(alpha_n)
    return [
      (-gamma * alpha_p * (b.s - (1.0 - margin)), b.positive),
      (gamma * alpha_n * (b.s - margin), b.negative),
      (_ones(b), b.positive),
      (_ones(b), b.negative),
    ]

  return terms


@_doc
def circle_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
  margin: float = 0.4,
  gamma: float = 80.0,
  similarity: str | distances.DistanceFn = "cosine",
  detach_weights: bool = True,
  block_size: BlockSize = DEFAULT_BLOCK_SIZE,
  ring: bool = False,
) -> jax.Array:
  r"""Circle loss, computed blockwise.

  The dense form, with the same values and gradients, is
  :func:`metriclearn.losses.pair_weighting.circle_loss`.

  .. math::
    \ell_a = \log\Big(1 + \sum_{q \in N_a} e^{\gamma \alpha_n^q (s_n^q - \Delta_n)}
    \sum_{p \in P_a} e^{-\gamma \alpha_p^p (s_p^p - \Delta_p)}\Big)

  Args:
    {ARGS}
    margin: the relaxation m >= 0.
    gamma: the scale factor > 0.
    similarity: 'cosine' (default), 'dot' or a callable.
    detach_weights: stop the gradient through alpha_p and alpha_n (paper).
    {BLOCK}

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
  >>> losses = circle_loss(e, jnp.array([0, 0, 1]), margin=0.25, gamma=2.0,
  ...                      block_size=2)
  >>> [round(float(v), 4) for v in losses]
  [0.7288, 1.5805, 0.0]

  References:
    Sun, Cheng, Zhang, Zhang, Zheng, Wang, Wei. Circle Loss: A Unified Perspective of
    Pair Similarity Optimization. CVPR 2020.
  """
  _checks.check_non_negative(margin, "margin")
  _checks.check_positive(gamma, "gamma")
  inp = _resolve(
    embeddings,
    labels,
    ref_embeddings,
    ref_labels,
    positive_mask,
    label_comparison,
    mask,
    axis_name,
    ring,
  )
  dtype = inp.anchors.dtype
  ((lse_p, lse_n, n_pos, n_neg),) = _run(
    inp,
    (Pass(_circle_terms(detach_weights), ("lse", "lse", "sum", "sum")),),
    distances.get_pairwise_similarity(similarity),
    consts=(jnp.asarray(margin).astype(dtype), jnp.asarray(gamma).astype(dtype)),
    label_comparison=label_comparison,
    axis_name=axis_name,
    ring=ring,
    block_size=block_size,
  )
  return jnp.where(_active(n_pos, n_neg), jax.nn.softplus(lse_p + lse_n), 0.0)


@_doc
def batch_contrastive_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
  margin: float = 1.0,
  pos_margin: float = 0.0,
  distance: str | distances.DistanceFn = "euclidean",
  pos_power: float = 2,
  neg_power: float = 2,
  pos_weight: float = 1.0,
  neg_weight: float = 1.0,
  block_size: BlockSize = DEFAULT_BLOCK_SIZE,
  ring: bool = False,
) -> jax.Array:
  r"""Contrastive loss over every pair, averaged per anchor, computed blockwise.

  The dense form, with the same values and gradients, is
  :func:`metriclearn.losses.pair_weighting.batch_contrastive_loss`.

  .. math::
    \ell_a = \frac{1}{|P_a| + |N_a|} \Big(
      \sum_{p \in P_a} w_+ \max(0, D_{ap} - m_+)^{p_+}
      + \sum_{q \in N_a} w_- \max(0, m - D_{aq})^{p_-} \Big)

  Args:
    {ARGS}
    margin: m >= 0, beyond which a negative pair costs nothing.
    pos_margin: m+ >= 0, within which a positive pair costs nothing.
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine' or a callable.
    pos_power, neg_power: the powers p+, p- (>= 1).
    pos_weight, neg_weight: the factors w+, w-.
    {BLOCK}

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[0.0, 0.0], [0.5, 0.0], [0.8, 0.0]])
  >>> losses = batch_contrastive_loss(e, jnp.array([0, 0, 1]), block_size=2)
  >>> [round(float(v), 4) for v in losses]
  [0.145, 0.37, 0.265]

  References:
    Hadsell, Chopra, LeCun. Dimensionality Reduction by Learning an Invariant Mapping.
    CVPR 2006.
  """
  # Check the options once, here, on their Python values.
  contrastive_from_distance(
    jnp.zeros(()),
    jnp.zeros((), bool),
    margin=margin,
    pos_margin=pos_margin,
    pos_power=pos_power,
    neg_power=neg_power,
  )
  inp = _resolve(
    embeddings,
    labels,
    ref_embeddings,
    ref_labels,
    positive_mask,
    label_comparison,
    mask,
    axis_name,
    ring,
  )
  dtype = inp.anchors.dtype

  def terms(b: Block):
    m, pm, pw, nw = b.consts
    per_pair = contrastive_from_distance(
      b.s,
      b.positive,
      margin=m,
      pos_margin=pm,
      pos_power=pos_power,
      neg_power=neg_power,
      pos_weight=pw,
      neg_weight=nw,
    )
    valid = b.positive | b.negative
    return [(per_pair, valid), (_ones(b), valid)]

  ((total, count),) = _run(
    inp,
    (Pass(terms, ("sum", "sum")),),
    distances.get_pairwise_distance(distance),
    consts=tuple(
      jnp.asarray(v).astype(dtype) for v in (margin, pos_margin, pos_weight, neg_weight)
    ),
    label_comparison=label_comparison,
    axis_name=axis_name,
    ring=ring,
    block_size=block_size,
  )
  return _mean(total, count)


def _lifted_terms(b: Block):
  margin = b.consts
  return [
    (b.s, b.positive),
    (margin - b.s, b.negative),
    (_ones(b), b.positive),
    (_ones(b), b.negative),
  ]


def _song_negative_terms(b: Block):
  return [(b.consts - b.s, b.negative), (_ones(b), b.negative)]


def _song_terms(b: Block):
  """Song et al.'s pair term, given each side's negative log-sum-exp (aux)."""
  low = jnp.finfo(b.s.dtype).min
  a_lse, a_has = b.a_aux
  c_lse, c_has = b.c_aux
  a = jnp.where(a_has > 0, a_lse, low)[:, None]
  c = jnp.where(c_has > 0, c_lse, low)[None, :]
  valid = b.positive & ((a_has > 0)[:, None] | (c_has > 0)[None, :])
  j = jnp.where(valid, jnp.logaddexp(a, c) + b.s, 0.0)
  return [(0.5 * jnp.square(jax.nn.relu(j)), valid), (_ones(b), valid)]


@_doc
def lifted_structure_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
  margin: float = 1.0,
  form: Literal["generalized", "song2016"] = "generalized",
  distance: str | distances.DistanceFn = "euclidean",
  block_size: BlockSize = DEFAULT_BLOCK_SIZE,
  ring: bool = False,
) -> jax.Array:
  r"""Lifted structure loss, computed blockwise.

  The dense form, with the same values and gradients, is
  :func:`metriclearn.losses.pair_weighting.lifted_structure_loss`.

  .. math::
    \ell_a = \Big[\log \sum_{p \in P_a} e^{D_{ap}} + \log \sum_{q \in N_a}
    e^{m - D_{aq}}\Big]_+

  (``form='generalized'``), or Song et al.'s per-pair form (``form='song2016'``),
  which takes two sweeps: each row's negative log-sum-exp, then the positive pairs
  (the positive's own term travels with it as a per-candidate statistic).

  Args:
    {ARGS}
    margin: m >= 0.
    form: 'generalized' (Hermans et al. 2017) or 'song2016'.
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine' or a callable.
    {BLOCK}

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[0.0, 0.0], [0.5, 0.0], [0.8, 0.0]])
  >>> losses = lifted_structure_loss(e, jnp.array([0, 0, 1]), block_size=2)
  >>> [round(float(v), 4) for v in losses]
  [0.7, 1.2, 0.0]

  References:
    Song, Xiang, Jegelka, Savarese. Deep Metric Learning via Lifted Structured Feature
    Embedding. CVPR 2016. Hermans, Beyer, Leibe. In Defense of the Triplet Loss for
    Person Re-Identification. arXiv:1703.07737, 2017.
  """
  _checks.check_non_negative(margin, "margin")
  if form not in ("generalized", "song2016"):
    raise ValueError(f"form must be 'generalized' or 'song2016', got {form!r}.")
  if form == "song2016" and ref_embeddings is not None:
    raise ValueError(
      "form='song2016' needs each positive's own negatives, so the candidates must "
      "be the anchors: ref_embeddings is not supported with it."
    )
  inp = _resolve(
    embeddings,
    labels,
    ref_embeddings,
    ref_labels,
    positive_mask,
    label_comparison,
    mask,
    axis_name,
    ring,
  )
  margin = jnp.asarray(margin).astype(inp.anchors.dtype)
  run = functools.partial(
    _run,
    inp,
    sim_fn=distances.get_pairwise_distance(distance),
    consts=margin,
    label_comparison=label_comparison,
    axis_name=axis_name,
    ring=ring,
    block_size=block_size,
  )
  if form == "generalized":
    ((lse_p, lse_n, n_pos, n_neg),) = run(
      (Pass(_lifted_terms, ("lse", "lse", "sum", "sum")),)
    )
    return jnp.where(_active(n_pos, n_neg), jax.nn.relu(lse_p + lse_n), 0.0)
  ((lse, has),) = run((Pass(_song_negative_terms, ("lse", "sum")),))
  side = (lse, (has > 0).astype(lse.dtype))
  ((total, count),) = run(
    (Pass(_song_terms, ("sum", "sum")),), anchor_aux=side, candidate_aux=side
  )
  return _mean(total, count)


def _margin_terms(b: Block):
  margin = b.consts
  beta = b.a_aux[:, None]
  per_pair = jnp.where(
    b.positive, jax.nn.relu(margin + b.s - beta), jax.nn.relu(margin - b.s + beta)
  )
  valid = b.positive | b.negative
  return [
    (per_pair, valid),
    (_ones(b), valid),
    (_ones(b), b.positive),
    (_ones(b), b.negative),
  ]


@_doc
def margin_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  beta: jax.Array | float = 1.2,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
  margin: float = 0.2,
  nu: float = 0.0,
  normalize: bool = True,
  distance: str | distances.DistanceFn = "euclidean",
  block_size: BlockSize = DEFAULT_BLOCK_SIZE,
  ring: bool = False,
) -> jax.Array:
  r"""Margin loss with a learnable boundary, computed blockwise.

  The dense form, with the same values and gradients, is
  :func:`metriclearn.losses.pair_weighting.margin_loss`.

  .. math::
    \ell_a = \frac{1}{|P_a| + |N_a|} \sum_{j \in P_a \cup N_a}
    \Big( \big[\alpha + y_{aj} (D_{aj} - \beta_{c(a)})\big]_+ + \nu\, \beta_{c(a)}
    \Big)

  Args:
    {ARGS}
    beta: scalar or [C] boundary, >= 0 (a learned parameter).
    margin: alpha >= 0, the half-width of the band around beta.
    nu: the regularisation weight on beta, >= 0.
    normalize: L2-normalise anchors and candidates first (paper).
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine' or a callable.
    {BLOCK}

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[0.0, 0.0], [0.5, 0.0], [0.8, 0.0]])
  >>> losses = margin_loss(e, jnp.array([0, 0, 1]), 0.4, normalize=False,
  ...                      block_size=2)
  >>> [round(float(v), 4) for v in losses]
  [0.15, 0.3, 0.0]

  References:
    Wu, Manmatha, Smola, Krähenbühl. Sampling Matters in Deep Embedding Learning.
    ICCV 2017.
  """
  _checks.check_non_negative(margin, "margin")
  _checks.check_non_negative(nu, "nu")
  beta = _checks.as_float(beta, "beta")
  if beta.ndim > 1:
    raise ValueError(
      f"beta must be a scalar or a [C] vector (one per class), got shape "
      f"{tuple(beta.shape)}."
    )
  _checks.check_non_negative(beta, "beta")
  inp = _resolve(
    embeddings,
    labels,
    ref_embeddings,
    ref_labels,
    positive_mask,
    label_comparison,
    mask,
    axis_name,
    ring,
  )
  if normalize:
    inp = inp._replace(
      anchors=distances.l2_normalize(inp.anchors),
      candidates=distances.l2_normalize(inp.candidates),
    )
  dtype = inp.anchors.dtype
  anchor_beta = _pw.anchor_beta(beta, inp.labels, inp.anchors.shape[0]).astype(dtype)
  ((total, count, n_pos, n_neg),) = _run(
    inp,
    (Pass(_margin_terms, ("sum", "sum", "sum", "sum")),),
    distances.get_pairwise_distance(distance),
    consts=jnp.asarray(margin).astype(dtype),
    anchor_aux=anchor_beta,
    label_comparison=label_comparison,
    axis_name=axis_name,
    ring=ring,
    block_size=block_size,
  )
  return jnp.where(_active(n_pos, n_neg), _mean(total, count) + nu * anchor_beta, 0.0)


# ----------------------------------------------------------------------------------
# N-pair (dense form: metriclearn.losses.softmax.npair_loss).


def _no_similarity(a: jax.Array, c: jax.Array) -> jax.Array:
  """For sweeps that only look at the masks: no matrix product."""
  return jnp.zeros((a.shape[0], c.shape[0]), a.dtype)


def _first_positive_terms(b: Block):
  return [(jnp.broadcast_to(b.c_index.astype(b.s.dtype), b.s.shape), b.positive)]


def _earlier_with_positive_terms(b: Block):
  earlier = (b.c_index[None, :] < b.a_index[:, None]) & (b.c_aux > 0)[None, :]
  return [(_ones(b), b.positive & earlier)]


def _npair_terms(b: Block):
  first, used = b.a_aux
  picked, c_sq = b.c_aux
  used = (used > 0)[:, None]
  pair_pos = (b.c_index.astype(b.s.dtype)[None, :] == first[:, None]) & used
  pair_neg = b.negative & (picked > 0)[None, :] & used
  return [
    (b.s, pair_pos),
    (b.s, pair_neg),
    (_ones(b), pair_neg),
    (jnp.broadcast_to(c_sq[None, :], b.s.shape), pair_pos),
    (_ones(b), pair_pos),
  ]


@_doc
def npair_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
  l2_reg: float = 0.002,
  similarity: str | distances.DistanceFn = "dot",
  block_size: BlockSize = DEFAULT_BLOCK_SIZE,
  ring: bool = False,
) -> jax.Array:
  r"""Multi-class N-pair loss, computed blockwise.

  The dense form, with the same values and gradients, is
  :func:`metriclearn.losses.softmax.npair_loss`, also for the selection of pairs.

  .. math::
    \ell_i = \log\Big(1 + \sum_{j \ne i} e^{s(x_i, x_{p_j}) - s(x_i, x_{p_i})}\Big)
      + \frac{\lambda}{4} \big(\|x_i\|^2 + \|x_{p_i}\|^2\big)

  The selection (each used anchor's first positive, the first anchor of each class)
  takes two sweeps over the masks only (no similarities); with labels it is
  blockwise too. With an explicit ``positive_mask`` the selection builds an
  [n, N] relation between the local and all anchors (as large as the mask itself).

  Args:
    {ARGS}
    l2_reg: :math:`\lambda \ge 0`, the L2 regularization weight.
    similarity: 'dot' (default), 'cosine', or a callable.
    {BLOCK}

  Returns:
    [n] per-anchor losses, nonzero only for the one used anchor of each class.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
  >>> npair_loss(e, jnp.array([0, 0, 1, 1]), l2_reg=0.0, block_size=3)
  Array([0.31326..., 0.        , 0.12692..., 0.        ], dtype=float32)

  References:
    Sohn. Improved Deep Metric Learning with Multi-class N-pair Loss Objective.
    NeurIPS 2016.
  """
  _checks.check_non_negative(l2_reg, "l2_reg")
  inp = _resolve(
    embeddings,
    labels,
    ref_embeddings,
    ref_labels,
    positive_mask,
    label_comparison,
    mask,
    axis_name,
    ring,
  )
  dtype = inp.anchors.dtype
  n, m = inp.anchors.shape[0], inp.candidates.shape[0]
  common = dict(
    label_comparison=label_comparison,
    axis_name=axis_name,
    ring=ring,
    block_size=block_size,
  )
  frozen = inp._replace(
    anchors=jax.lax.stop_gradient(inp.anchors),
    candidates=jax.lax.stop_gradient(inp.candidates),
  )
  ((first,),) = _run(
    frozen, (Pass(_first_positive_terms, ("min",)),), _no_similarity, **common
  )
  has_pos = first < jnp.inf
  first = jnp.where(has_pos, first, 0.0)
  idx = _index_dtype()
  me = 0 if axis_name is None else jax.lax.axis_index(axis_name).astype(idx)
  anchor_index = me * n + jnp.arange(n, dtype=idx)
  if positive_mask is None:  # the first anchor of each class (with a positive)
    ((earlier,),) = blockwise_reduce(
      (Pass(_earlier_with_positive_terms, ("max",)),),
      _no_similarity,
      frozen.anchors,
      frozen.anchors,
      inp.labels,
      inp.labels,
      self_pairs=True,
      candidate_aux=has_pos.astype(dtype),
      symmetric=True,
      **common,
    )
    used = has_pos & ~(earlier > 0)
  else:  # j is of i's class when j's pick is a positive of i (or i itself)
    ref_all = _batch.gather(inp.ref_labels, axis_name)
    pos, _ = masks.pair_masks(
      inp.labels,
      ref_all,
      self_offset=me * n if inp.self_pairs else None,
      label_comparison=label_comparison,
      positive_mask=inp.positive_mask,
    )
    if inp.mask is not None:
      pos &= inp.mask
    first_all = _batch.gather(first, axis_name).astype(idx)
    has_all = _batch.gather(has_pos, axis_name)
    same = jnp.take(pos, first_all, axis=1)
    if inp.self_pairs:
      same |= first_all[None, :] == anchor_index[:, None]
    rank = jnp.arange(first_all.shape[0], dtype=idx)
    earlier = rank[None, :] < anchor_index[:, None]
    used = has_pos & ~jnp.any(same & earlier & has_all[None, :], axis=1)
  # Candidates that are some used anchor's pick: the negatives of the other pairs.
  first_all = _batch.gather(first, axis_name).astype(idx)
  used_all = _batch.gather(used, axis_name)
  m_all = m * (1 if axis_name is None else jax.lax.axis_size(axis_name))
  picked = (
    jnp.zeros((m_all,), bool)
    .at[jnp.where(used_all, first_all, m_all)]
    .set(True, mode="drop")
  )
  if axis_name is not None:
    picked = jax.lax.dynamic_slice_in_dim(picked, me * m, m)
  c_sq = jnp.sum(jnp.square(inp.candidates), axis=1)
  ((pos_logit, neg_lse, n_neg, pick_sq, n_pair),) = _run(
    inp,
    (Pass(_npair_terms, ("sum", "lse", "sum", "sum", "sum")),),
    distances.get_pairwise_similarity(similarity),
    anchor_aux=(first, used.astype(dtype)),
    candidate_aux=(picked.astype(dtype), c_sq),
    **common,
  )
  loss = jax.nn.softplus(neg_lse - pos_logit)
  if l2_reg:
    a_sq = jnp.sum(jnp.square(inp.anchors), axis=1)
    loss = loss + 0.25 * l2_reg * (a_sq + pick_sq)
  return jnp.where(_active(n_pair, n_neg), loss, 0.0)


# ----------------------------------------------------------------------------------
# Triplet losses (dense forms: metriclearn.losses.triplet).


def _hardest_terms(b: Block):
  return [(b.s, b.positive), (b.s, b.negative)]


@_doc
def batch_hard_triplet_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
  margin: float | jax.Array | None = None,
  distance: str | distances.DistanceFn = "euclidean",
  squared: bool = False,
  soft: bool = False,
  block_size: BlockSize = DEFAULT_BLOCK_SIZE,
  ring: bool = False,
) -> jax.Array:
  r"""Batch-hard triplet loss, computed blockwise.

  The dense form, with the same values and gradients, is
  :func:`metriclearn.losses.triplet.batch_hard_triplet_loss`.

  .. math::
    \ell_a = \max\Big(0,\; m + \max_{p \in P_a} D_{ap} - \min_{n \in N_a} D_{an}\Big)

  One sweep with a running maximum and minimum; the gradient goes to the pairs that
  attain them (shared among ties, as in the dense form).

  Args:
    {ARGS}
    margin: m >= 0; ``None``: 0.2 for the hinge, 0 with ``soft=True``.
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine', or a callable.
    squared: square the distance (default False, as Hermans et al.).
    soft: soft-plus instead of the hinge.
    {BLOCK}

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[0.0], [0.5], [0.4], [0.9]])
  >>> losses = batch_hard_triplet_loss(x, jnp.array([0, 0, 1, 1]), block_size=3)
  >>> [round(v, 4) for v in losses.tolist()]
  [0.3, 0.6, 0.6, 0.3]

  References:
    Hermans, Beyer, Leibe. In Defense of the Triplet Loss for Person
    Re-Identification. arXiv:1703.07737, 2017.
  """
  margin = triplet.resolve_margin(margin, soft)
  inp = _resolve(
    embeddings,
    labels,
    ref_embeddings,
    ref_labels,
    positive_mask,
    label_comparison,
    mask,
    axis_name,
    ring,
  )
  ((hardest_pos, hardest_neg),) = _run(
    inp,
    (Pass(_hardest_terms, ("max", "min")),),
    triplet.distance_fn(distance, squared),
    label_comparison=label_comparison,
    axis_name=axis_name,
    ring=ring,
    block_size=block_size,
  )
  valid = jnp.isfinite(hardest_pos) & jnp.isfinite(hardest_neg)
  loss = triplet.triplet_formula(
    jnp.where(valid, hardest_pos, 0.0), jnp.where(valid, hardest_neg, 0.0), margin, soft
  )
  return jnp.where(valid, loss, 0.0)


@_doc
def batch_all_triplet_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
  margin: float | jax.Array | None = None,
  distance: str | distances.DistanceFn = "euclidean",
  squared: bool = False,
  soft: bool = False,
  average: Literal["anchor", "batch"] = "anchor",
  block_size: int = 256,
) -> jax.Array:
  r"""Batch-all triplet loss in O(n m log m) time and O(block x m) memory.

  The dense form, O(n m^2) in both, with the same values and gradients, is
  :func:`metriclearn.losses.triplet.batch_all_triplet_loss`.

  For each anchor the negative distances are sorted once; then for each positive
  :math:`p` the number :math:`k_p` of negatives with :math:`D_{an} < D_{ap} + m` (a
  binary search) and their sum (a prefix sum) give the whole row of triplets:

  .. math::
    S_a = \sum_{p \in P_a} \Big(k_p (D_{ap} + m) - \sum_{n:\, D_{an} < D_{ap} + m}
    D_{an}\Big), \qquad C_a = \sum_{p \in P_a} k_p

  exactly the dense form's sum and count of active triplets (hinge only:
  ``soft=True`` has no active set to count; use the dense form). Anchors are taken
  ``block_size`` at a time against all candidates (rows of ``m``), each block
  recomputed in the backward pass (``jax.checkpoint``). With ``axis_name`` the
  candidates are gathered; there is no ring form, a row needs all its candidates.

  Args:
    {ARGS}
    margin: m >= 0; ``None``: 0.2.
    distance: 'euclidean' (default), 'squared_euclidean', 'cosine', or a callable.
    squared: square the distance (default False, as Hermans et al.).
    soft: must be False (see above).
    average: 'anchor' (:math:`S_a / C_a`) or 'batch' (see the dense form).
    block_size: anchors per block (memory: ``block_size x m`` rows).

  Returns:
    [n] per-anchor losses.

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[0.0], [0.5], [0.4]])
  >>> losses = batch_all_triplet_loss(x, jnp.array([0, 0, 1]), block_size=2)
  >>> [round(v, 4) for v in losses.tolist()]
  [0.3, 0.6, 0.0]

  References:
    Hermans, Beyer, Leibe. In Defense of the Triplet Loss for Person
    Re-Identification. arXiv:1703.07737, 2017 (batch all, "BA≠0").
  """
  if soft:
    raise ValueError(
      "soft=True: every triplet is active and the soft-plus has no sorted form; use "
      "metriclearn.losses.triplet.batch_all_triplet_loss."
    )
  if average not in ("anchor", "batch"):
    raise ValueError(f"average must be one of ('anchor', 'batch'), got {average!r}.")
  block_a, _ = _block_sizes(block_size)
  margin = triplet.resolve_margin(margin, soft)
  inp = _resolve(
    embeddings,
    labels,
    ref_embeddings,
    ref_labels,
    positive_mask,
    label_comparison,
    mask,
    axis_name,
    False,
  )
  anchors, n = inp.anchors, inp.anchors.shape[0]
  candidates = _batch.gather(inp.candidates, axis_name)
  ref_all = _batch.gather(inp.ref_labels, axis_name)
  margin = jnp.asarray(margin).astype(anchors.dtype)
  dist_fn = triplet.distance_fn(distance, squared)
  idx = _index_dtype()
  base = 0 if axis_name is None else jax.lax.axis_index(axis_name).astype(idx) * n
  ba = max(1, min(block_a, n))
  na = _round_up(n, ba)
  a_pad = _pad_rows(anchors, na, 0)
  lab_pad = _pad_rows(inp.labels, na, -1)
  pm_pad = None if inp.positive_mask is None else _pad_rows(inp.positive_mask, na, 0)
  mk_pad = None if inp.mask is None else _pad_rows(inp.mask, na, 0)

  @jax.checkpoint
  def rows(a_blk, i0):
    d = dist_fn(a_blk, candidates)  # [ba, m]
    pos, neg = masks.pair_masks(
      _slice_rows(lab_pad, i0, ba),
      ref_all,
      self_offset=base + i0 if inp.self_pairs else None,
      label_comparison=label_comparison,
      positive_mask=None if pm_pad is None else _slice_rows(pm_pad, i0, ba),
    )
    valid = (i0 + jnp.arange(ba, dtype=idx) < n)[:, None]
    if mk_pad is not None:
      valid &= _slice_rows(mk_pad, i0, ba)
    pos, neg = pos & valid, neg & valid
    sorted_neg = triplet.sorted_where(neg, d)  # [ba, m], +inf past the negatives
    # Sums relative to the row's nearest negative (less cancellation below).
    ref = jax.lax.stop_gradient(
      jnp.where(jnp.isfinite(sorted_neg[:, :1]), sorted_neg[:, :1], 0.0)
    )
    shifted = jnp.where(jnp.isfinite(sorted_neg), sorted_neg - ref, 0.0)
    prefix = jnp.concatenate(
      [jnp.zeros_like(shifted[:, :1]), jnp.cumsum(shifted, axis=1)], axis=1
    )
    k = triplet.count_sorted(sorted_neg, d + margin, "left")  # D_an < D_ap + m
    below = jnp.take_along_axis(prefix, k, axis=1)
    per_positive = k.astype(d.dtype) * (d + margin - ref) - below
    total = jnp.sum(jnp.where(pos, per_positive, 0.0), axis=1)
    count = jnp.sum(jnp.where(pos, k, 0), axis=1)
    return total, count

  starts = jnp.arange(0, na, ba, dtype=idx)
  total, count = jax.lax.map(
    lambda args: rows(*args), (a_pad.reshape(na // ba, ba, -1), starts)
  )
  total, count = total.reshape(na)[:n], count.reshape(na)[:n]
  return triplet.average_terms(total, count, average, axis_name)

"""Anchors x candidates: the relation every in-batch loss and miner stands on.

A batch-form loss or miner takes ``(embeddings [n, d], labels [n], *, ref_embeddings,
ref_labels, positive_mask, label_comparison, mask, axis_name)``. :func:`resolve` checks
these arguments once and returns a :class:`Relation`, building no [n, m] array (the
blockwise executor never holds one); :func:`dense` turns a relation into the whole
problem at once: the candidates of every device and the [n, M] positive and negative
masks. :func:`batch_form` gives a function of a relation that public signature, so
the arguments, their checks and their documentation are written once.

Conventions (``DESIGN.md``): labels are integers and ``-1`` marks a padding row, which
is inert: its embedding is replaced by zeros here, so whatever it holds (NaN included)
reaches no value and no gradient, and it takes part in no pair. A self-pair (an anchor
against its own copy among the candidates) is neither positive nor negative. Inside
``shard_map`` / ``pmap`` with ``axis_name``, the candidates are those of every device:
gathered (``lax.all_gather(..., tiled=True)``, gradients flow back to the device that
owns each candidate), or passed around a ring of devices by the blockwise executor.
"""

from __future__ import annotations

import functools
import inspect
import textwrap
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metriclearn import _checks, masks

__all__ = [
  "RELATION_ARGS",
  "Pairs",
  "Relation",
  "auto_block_size",
  "auto_slot_block_size",
  "batch_form",
  "checked",
  "dense",
  "gather",
  "resolve",
]

BlockSize = tuple[int, int] | None


class Relation(NamedTuple):
  """The checked batch-form arguments: anchors, this device's candidates, relations.

  ``anchors`` and ``candidates`` are floating (bfloat16 / float16 become float32), with
  padding rows replaced by zeros; ``candidates`` is ``anchors`` itself when
  ``self_pairs``. ``positive_mask`` and ``mask`` are [n, M] bool over the candidates of
  every device (M = m x devices with ``axis_name``).
  """

  anchors: jax.Array  # [n, d]
  candidates: jax.Array  # [m, d], this device's
  labels: jax.Array  # [n] (any [n, ...] with label_comparison)
  ref_labels: jax.Array  # [m]
  self_pairs: bool  # the candidates are the anchors (self-pairs excluded)
  positive_mask: jax.Array | None  # [n, M] bool
  mask: jax.Array | None  # [n, M] bool
  label_comparison: masks.LabelComparison | None
  axis_name: str | None
  block_size: BlockSize = None  # None: dense; else (block_a, block_c)
  ring: bool = False
  auto: bool = False  # block_size chosen by block_size="auto"


class Pairs(NamedTuple):
  """A relation made dense: the candidates of every device and the [n, M] masks."""

  anchors: jax.Array  # [n, d]
  candidates: jax.Array  # [M, d]
  positive: jax.Array  # [n, M] bool
  negative: jax.Array  # [n, M] bool
  anchor_labels: jax.Array  # [n] (or [n, ...])
  candidate_labels: jax.Array  # [M]
  self_offset: jax.Array | int | None  # where anchor 0 sits among the candidates


def gather(x: jax.Array, axis_name: str | None) -> jax.Array:
  """Concatenates ``x`` over the devices of ``axis_name`` along axis 0 (None: as is)."""
  if axis_name is None:
    return x
  return jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


def _inert(x: jax.Array, labels: jax.Array) -> jax.Array:
  """``x`` with its padding rows replaced by zeros (no value, no gradient)."""
  return jnp.where(masks.valid_rows(labels)[:, None], x, jnp.zeros((), x.dtype))


# block_size="auto": the thresholds, from benchmarks/results.md (CPU, 2 cores) and
# benchmarks/accelerator.md (H100).
AUTO_DENSE_PAIRS_CPU = 2048 * 2048  # CPU: dense up to n x M = 2048^2 pairs
AUTO_BLOCK_CPU = 512
AUTO_MEMORY_SHARE = 0.25  # accelerators: dense while 8 [n, M] arrays fit 1/4 of memory
AUTO_BLOCK_ACCELERATOR = 4096


def auto_block_size(
  n: int,
  m: int,
  itemsize: int = 4,
  backend: str | None = None,
  memory_bytes: float | None = None,
) -> BlockSize:
  """What ``block_size="auto"`` picks for n anchors against M candidates of
  ``itemsize`` bytes: None (dense) or a block size. ``backend`` defaults to JAX's,
  ``memory_bytes`` to the first device's ``bytes_limit`` (16 GiB if unknown).

  * CPU: dense up to ``n * M = 2048^2`` pairs, then blocks of 512. On the 2-core CPU
    of ``benchmarks/results.md`` dense was as fast or faster at n = 1024 for most
    losses and blockwise faster for every loss at n = 4096 and 16384 (0.17-0.96 of the
    dense time), with memory n x 512 instead of n x n.
  * GPU / TPU: dense while eight [n, M] arrays (the matrices of the forward and the
    backward pass, with room) fit a quarter of the device's memory, then blocks of
    4096. On an H100 (``benchmarks/accelerator.md``) blockwise with 512 blocks was 4-5x
    slower than dense wherever dense fitted; 4096 blocks are larger to keep the device
    busy (not measured).

  >>> auto_block_size(1024, 1024, backend="cpu")  # None: dense
  >>> auto_block_size(4096, 4096, backend="cpu")
  (512, 512)
  """
  backend = backend or jax.default_backend()
  if backend == "cpu":
    return None if n * m <= AUTO_DENSE_PAIRS_CPU else (AUTO_BLOCK_CPU, AUTO_BLOCK_CPU)
  if memory_bytes is None:
    stats = jax.local_devices(backend=backend)[0].memory_stats() or {}
    memory_bytes = stats.get("bytes_limit", 16 * 2**30)
  if 8 * n * m * itemsize <= AUTO_MEMORY_SHARE * memory_bytes:
    return None
  return AUTO_BLOCK_ACCELERATOR, AUTO_BLOCK_ACCELERATOR


def auto_slot_block_size(m: int, backend: str | None = None) -> tuple[int, int]:
  """The blocks ``block_size="auto"`` gives a slot pass (``max_positives=k``: terms of
  [block_a, k, block_c]) once it is blockwise: rows of anchors against many candidates,
  (128, min(M, 4096)) on the CPU, where semi-hard at n = 4096 took 0.73x and batch-all
  0.89x the time of (512, 512) blocks (``benchmarks/slot_blocks.md``); (512,
  min(M, 4096)) on an accelerator (not measured)."""
  rows = 128 if (backend or jax.default_backend()) == "cpu" else 512
  return rows, max(1, min(m, 4096))


def _block_size(block_size: Any, n: int, m: int, itemsize: int) -> BlockSize:
  if block_size is None:
    return None
  if isinstance(block_size, str) and block_size == "auto":
    return auto_block_size(n, m, itemsize)
  sizes = (block_size, block_size) if np.ndim(block_size) == 0 else block_size
  sizes = tuple(sizes) if isinstance(sizes, tuple | list) else (sizes,)
  if len(sizes) != 2 or not all(
    isinstance(b, int | np.integer) and not isinstance(b, bool) and b > 0 for b in sizes
  ):
    raise ValueError(
      "block_size must be None (dense), 'auto', a positive int or a pair (block_a, "
      f"block_c) of them, got {block_size!r}."
    )
  return int(sizes[0]), int(sizes[1])


def resolve(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  ref_embeddings: jax.Array | None = None,
  ref_labels: jax.Array | None = None,
  positive_mask: jax.Array | None = None,
  label_comparison: masks.LabelComparison | None = None,
  mask: jax.Array | None = None,
  axis_name: str | None = None,
  block_size: Any = None,
  ring: bool = False,
) -> Relation:
  """Checks the batch-form arguments (see :data:`RELATION_ARGS`) into a Relation.

  Raises at trace time, naming the argument and the shapes, for: embeddings that are
  not [n, d] real numbers or have no row (n = 0), labels of the wrong shape or dtype,
  labels below -1 (when their values are known), ``ref_embeddings`` without
  ``ref_labels`` (or the reverse) or of another size d, masks of the wrong shape,
  ``ring`` without ``axis_name``.

  >>> rel = resolve(jnp.ones((3, 2)), jnp.array([0, 0, -1]))
  >>> rel.anchors.tolist(), rel.self_pairs  # the padding row is zeroed
  ([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]], True)
  """
  embeddings = _checks.check_embeddings(embeddings, "embeddings")
  n, d = embeddings.shape
  labels = jnp.asarray(labels)
  if label_comparison is None:
    labels = _checks.check_labels(labels, n, "labels")
  elif labels.shape[:1] != (n,):
    raise ValueError(
      f"labels must have leading dimension {n} to match embeddings, got "
      f"{tuple(labels.shape)}."
    )
  if (ref_embeddings is None) != (ref_labels is None):
    raise ValueError("ref_embeddings and ref_labels must be given together.")
  if ring and axis_name is None:
    raise ValueError("ring=True passes candidates between devices: give axis_name.")
  self_pairs = ref_embeddings is None
  if self_pairs:
    anchors = _inert(embeddings, labels)
    candidates, cand_labels = anchors, labels
  else:
    candidates = _checks.as_float(ref_embeddings, "ref_embeddings")
    _checks.check_rank(candidates, 2, "ref_embeddings", "[m, d]")
    if candidates.shape[1] != d:
      raise ValueError(
        f"ref_embeddings must have embedding size {d} like embeddings, got "
        f"{tuple(candidates.shape)}."
      )
    cand_labels = jnp.asarray(ref_labels)
    if label_comparison is None:
      cand_labels = _checks.check_labels(cand_labels, candidates.shape[0], "ref_labels")
    elif cand_labels.shape[:1] != candidates.shape[:1]:
      raise ValueError(
        f"ref_labels must have leading dimension {candidates.shape[0]} to match "
        f"ref_embeddings, got {tuple(cand_labels.shape)}."
      )
    embeddings, candidates = _checks.common_float(embeddings, candidates)
    anchors = _inert(embeddings, labels)
    candidates = _inert(candidates, cand_labels)
  m = candidates.shape[0]
  if axis_name is not None:
    m *= jax.lax.axis_size(axis_name)
  if positive_mask is not None:
    positive_mask = _checks.check_mask(positive_mask, (n, m), "positive_mask")
  if mask is not None:
    mask = _checks.check_mask(mask, (n, m), "mask")
  return Relation(
    anchors,
    candidates,
    labels,
    cand_labels,
    self_pairs,
    positive_mask,
    mask,
    label_comparison,
    axis_name,
    _block_size(block_size, n, m, anchors.dtype.itemsize),
    bool(ring),
    isinstance(block_size, str),
  )


def dense(rel: Relation, rows: tuple[Any, int] | None = None) -> Pairs:
  """The relation as whole arrays: every device's candidates and [n, M] masks.

  A pair is positive if both rows are real, it is not a self-pair, it lies inside
  ``mask`` and the labels compare equal (``label_comparison``, or ``positive_mask``
  when given); negative likewise but for the comparison. ``rows=(start, size)``
  keeps the anchors ``start .. start + size`` only (``start`` may be traced).
  """
  n = rel.anchors.shape[0]
  start, size = (0, n) if rows is None else rows
  cut: Callable[[Any], Any] = (
    (lambda x: x)
    if rows is None
    else (
      lambda x: None if x is None else jax.lax.dynamic_slice_in_dim(x, start, size, 0)
    )
  )
  candidates = gather(rel.candidates, rel.axis_name)
  cand_labels = gather(rel.ref_labels, rel.axis_name)
  self_offset = None
  if rel.self_pairs:  # (the candidates are the unpadded local anchors)
    self_offset = start
    if rel.axis_name is not None:
      local = rel.candidates.shape[0]
      self_offset = self_offset + jax.lax.axis_index(rel.axis_name) * local
  labels, select = cut(rel.labels), cut(rel.mask)
  pos, neg = masks.pair_masks(
    labels,
    cand_labels,
    self_offset=self_offset,
    label_comparison=rel.label_comparison,
    positive_mask=cut(rel.positive_mask),
  )
  if select is not None:
    pos, neg = pos & select, neg & select
  return Pairs(cut(rel.anchors), candidates, pos, neg, labels, cand_labels, self_offset)


# ----------------------------------------------------------------------------------
# The public batch-form signature, declared once.

_RELATION = (
  (
    "embeddings",
    "[n, d] anchors, n >= 1 (and the candidates when ``ref_embeddings`` is None).",
  ),
  (
    "labels",
    "[n] integer labels, -1 for padding (any [n, ...] with ``label_comparison``); "
    "below -1 raises when known. Traced labels and hyperparameters (inside ``jit``, "
    "or learned) are checked only under :func:`metriclearn.pairs.checked`.",
  ),
  (
    "ref_embeddings",
    "optional [m, d] candidates (a memory bank, another view); "
    "default: the embeddings themselves, without self-pairs.",
  ),
  ("ref_labels", "[m] labels of ``ref_embeddings``; required with it."),
  (
    "positive_mask",
    "optional [n, M] bool relation that replaces label equality "
    "(padding rows and self-pairs are still excluded; M counts the candidates of "
    "every device with ``axis_name``).",
  ),
  (
    "label_comparison",
    "optional ``f(labels, ref_labels) -> [n, m] bool`` (e.g. multi-label overlap).",
  ),
  ("mask", "optional [n, M] bool, e.g. a miner's output: other pairs take no part."),
  (
    "axis_name",
    "inside ``shard_map`` / ``pmap``: compare the local anchors with the "
    "candidates of every device of this axis.",
  ),
)
_EXECUTOR = (
  (
    "block_size",
    "None (default): dense, the whole [n, M] matrix with ordinary "
    "autodiff; an int or ``(block_a, block_c)``: blockwise, the same values and "
    "gradients with memory n x block (a recomputing backward pass; reverse mode "
    "only); 'auto': dense or blocks by the size and the backend "
    "(:func:`metriclearn.pairs.auto_block_size`).",
  ),
  (
    "ring",
    "with ``axis_name`` (blockwise): pass the candidates around the devices "
    "(``lax.ppermute``) instead of gathering them; no device holds them all.",
  ),
)


def _doc_lines(entries) -> str:
  out = []
  for name, text in entries:
    lines = textwrap.wrap(f"{name}: {text}", 84, subsequent_indent="  ")
    out.extend(lines)
  return "\n    ".join(out)


RELATION_ARGS = _doc_lines(_RELATION)
"""The Args entries of the relation arguments (``{relation}`` in a docstring)."""


_ANNOTATIONS = {
  "ref_embeddings": "jax.Array | None",
  "ref_labels": "jax.Array | None",
  "positive_mask": "jax.Array | None",
  "label_comparison": "masks.LabelComparison | None",
  "mask": "jax.Array | None",
  "axis_name": "str | None",
  "block_size": "int | tuple[int, int] | str | None",
  "ring": "bool",
}


def _parameter(name: str, kind, default=inspect.Parameter.empty):
  annotation = _ANNOTATIONS.get(name, "jax.Array")
  return inspect.Parameter(name, kind, default=default, annotation=annotation)


def checked(fn: Callable) -> Callable:
  """``fn`` (any metriclearn loss, or a function calling losses) with the checks of
  traced values staged in: ``err, out = checked(loss)(...)``; ``err.throw()`` raises
  the first failure (``jax.experimental.checkify`` with its user checks).

  A hyperparameter that arrives traced (a ``temperature``, ``margin`` or ``scale``
  passed into ``jit``, or learned) and labels inside ``jit`` cannot be checked at
  trace time; under ``checked`` a temperature of 0 or a label of -2 is an error
  instead of a NaN or a silent padding row. Composes with ``jit``:
  ``jax.jit(checked(loss))``.

  >>> from metriclearn import losses
  >>> f = jax.jit(checked(lambda e, y, t: losses.ntxent_loss(e, y, temperature=t)))
  >>> err, _ = f(jnp.eye(2), jnp.array([0, 0]), 0.0)
  >>> "temperature must be > 0" in err.get()
  True
  """
  from jax.experimental import checkify

  @functools.wraps(fn)
  def staged(*args, **kwargs):
    token = _checks.STAGED.set(True)
    try:
      return fn(*args, **kwargs)
    finally:
      _checks.STAGED.reset(token)

  return checkify.checkify(staged, errors=checkify.user_checks)


def batch_form(fn: Callable | None = None, *, executor: bool = False) -> Callable:
  """Gives ``fn(rel: Relation, *args, **options)`` the public batch-form signature.

  The result is ``f(embeddings, labels, *args, ref_embeddings=None, ref_labels=None,
  positive_mask=None, label_comparison=None, mask=None, axis_name=None, **options)``
  (with ``executor``: also ``block_size=None, ring=False``), which checks its
  arguments with :func:`resolve` and calls ``fn``. ``{relation}`` in ``fn``'s
  docstring becomes the Args entries of those arguments.
  """
  if fn is None:
    return functools.partial(batch_form, executor=executor)
  keyword = inspect.Parameter.KEYWORD_ONLY
  positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
  own = list(inspect.signature(fn).parameters.values())[1:]
  names = [name for name, _ in _RELATION[2:]]
  shared = [_parameter(name, keyword, None) for name in names]
  entries: tuple[tuple[str, str], ...] = _RELATION
  if executor:
    shared += [
      _parameter("block_size", keyword, None),
      _parameter("ring", keyword, False),
    ]
    entries += _EXECUTOR
  signature = inspect.Signature(
    [_parameter("embeddings", positional), _parameter("labels", positional)]
    + [p for p in own if p.kind != keyword]
    + shared
    + [p for p in own if p.kind == keyword],
    return_annotation=inspect.signature(fn).return_annotation,
  )

  @functools.wraps(fn)
  def loss(embeddings, labels, *args, **kwargs):
    relation = {k: kwargs.pop(k) for k in names if k in kwargs}
    if executor:
      relation.update({k: kwargs.pop(k) for k in ("block_size", "ring") if k in kwargs})
    rel = resolve(embeddings, labels, **relation)
    return fn(rel, *args, **kwargs)

  loss.__signature__ = signature  # type: ignore[attr-defined]  # read by inspect
  del loss.__wrapped__  # the signature above is the public one
  if fn.__doc__:
    loss.__doc__ = fn.__doc__.replace("{relation}", _doc_lines(entries))
  return loss

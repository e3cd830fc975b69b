"""Training: a train state, one pure train step for any metriclearn loss, Orbax
checkpoints, a cross-batch memory and a ``fit`` loop that keeps the device busy::

  state = create_train_state(key, model, optax.adam(1e-3), images[:2])
  step = make_train_step(model, ntxent_loss)                 # kind="batch"
  state, metrics = jax.jit(step)(state, {"image": x, "label": y})
  # or: fit(step, state, batches, num_steps=10_000, checkpoint_dir="ckpt")

On several devices (or hosts) the same step runs ``jax.jit``-ed over a mesh
(``fit(..., parallel="jit")``, :func:`metriclearn.parallel.jit_step`): it is written
for the global batch and XLA shards it. A step built with an ``axis_name`` (and the
encoder's BatchNorm with the same ``axis_name``) has per-device semantics with explicit
collectives and runs under ``shard_map`` or ``pmap`` (``parallel="shard_map"`` /
``"pmap"``). Given the same global batch every form gives the same parameters as one
device: each device computes its share of the global sum of per-example losses over
the global count, gradients are averaged, BatchNorm statistics are those of the global
batch, and batch-form losses compare the local anchors with every device's embeddings.
Device placement lives in :mod:`metriclearn.parallel`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import json
import math
import os
import signal
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from metriclearn import checkpoints, models, pairs, parallel, reduce, summaries
from metriclearn.checkpoints import (  # re-exported: training.<name> keeps working
  CheckpointError,
  CheckpointWarning,
  NonFiniteLossError,
  checkpoint_manager,
  non_finite_paths,
  restore_checkpoint,
  save_checkpoint,
)
from metriclearn.parallel import Prefetcher

__all__ = [
  "INPUT_KEYS",
  "KINDS",
  "PARALLEL",
  "REDUCTIONS",
  "TARGET_KEYS",
  "CheckpointError",
  "CheckpointWarning",
  "Memory",
  "NonFiniteLossError",
  "Preempted",
  "Regularizer",
  "TrainState",
  "apply_gradients",
  "loss_share",
  "checkpoint_manager",
  "create_train_state",
  "embed",
  "fit",
  "make_eval_step",
  "make_train_step",
  "non_finite_paths",
  "restore_checkpoint",
  "save_checkpoint",
  "views_loss",
]

Batch = Mapping[str, Any]
KINDS = ("batch", "pair", "triplet", "proxy", "two_view")
REDUCTIONS = ("mean", "nonzero", "sum", "total")
# The batch keys each kind of step reads (the names metriclearn.data's samplers emit).
INPUT_KEYS = {
  "batch": ("image",),
  "proxy": ("image",),
  "pair": ("x1", "x2"),
  "triplet": ("anchor", "positive", "negative"),
  "two_view": ("view1", "view2"),
}
TARGET_KEYS = {"batch": ("label",), "proxy": ("label",), "pair": ("similar",)}


@dataclasses.dataclass(frozen=True)
class Regularizer:
  """A term ``weight * fn(x)`` added to the step's objective.

  ``on="embeddings"``: ``fn(embeddings [n, d]) -> scalar`` of the batch (e.g.
  ``metriclearn.regularizers.lp_regularizer``); a ``fn`` that takes a ``valid``
  keyword gets ``valid=labels != -1`` in a labelled batch, so padding rows take no
  part; with an ``axis_name`` each device takes its own rows and the gradients are
  averaged (exact for a mean over rows).
  ``on=<name>``: ``fn`` of the loss parameter of that name (e.g. ``"proxies"``:
  ``regularizers.regular_face_regularizer``).
  """

  fn: Callable[[jax.Array], jax.Array]
  weight: float = 1.0
  on: str = "embeddings"


def _takes_valid(fn: Callable) -> bool:
  try:
    return "valid" in inspect.signature(fn).parameters
  except (TypeError, ValueError):  # a builtin or a C function: no signature
    return False


def views_loss(loss: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """A batch-form loss for ``kind="two_view"``: the two views of item i are each
  other's positive (labels: the item's global index), the other items' views its
  negatives; ``(z1, z2, **options) -> [n]``, each item's mean over its two views (e.g.
  SimCLR's NT-Xent: ``views_loss(ntxent_loss)``)."""

  def two_view(z1, z2, *, axis_name=None, **options):
    n = z1.shape[0]
    first = 0 if axis_name is None else jax.lax.axis_index(axis_name) * n
    items = jnp.arange(n, dtype=jnp.int32) + jnp.asarray(first, jnp.int32)
    both = jnp.concatenate([z1, z2])
    kw = {} if axis_name is None else {"axis_name": axis_name}
    values = loss(both, jnp.concatenate([items, items]), **kw, **options)
    return 0.5 * (values[:n] + values[n:])

  return two_view


class Memory(struct.PyTreeNode):
  """Cross-batch memory (XBM): a ring buffer of past embeddings and their labels.

  Entries are written in order and overwrite the oldest; an empty slot has label -1,
  so it takes part in no pair.

  >>> memory = Memory.create(3, 2).enqueue(jnp.ones((2, 2)), jnp.array([4, 7]))
  >>> memory.labels.tolist(), int(memory.pointer)
  ([4, 7, -1], 2)

  References:
    Wang, Zhang, Huang, Scott. Cross-Batch Memory for Embedding Learning. CVPR 2020.
  """

  embeddings: jax.Array  # [M, d]
  labels: jax.Array  # [M] int32, -1 for an empty slot
  pointer: jax.Array  # scalar int32: the next slot to write

  @classmethod
  def create(cls, size: int, dim: int, dtype: Any = jnp.float32) -> Memory:
    """An empty memory of ``size`` slots for ``dim``-dimensional embeddings."""
    if size < 1:
      raise ValueError(f"memory size must be >= 1, got {size}.")
    return cls(
      jnp.zeros((size, dim), dtype),
      jnp.full((size,), -1, jnp.int32),
      jnp.zeros((), jnp.int32),
    )

  @property
  def size(self) -> int:
    return self.labels.shape[-1]

  def enqueue(self, embeddings: jax.Array, labels: jax.Array) -> Memory:
    """Writes a batch ([n, d], [n]; n <= size) over the oldest entries."""
    n = embeddings.shape[0]
    slots = (self.pointer + jnp.arange(n)) % self.size
    return self.replace(
      embeddings=self.embeddings.at[slots].set(
        jax.lax.stop_gradient(embeddings).astype(self.embeddings.dtype)
      ),
      labels=self.labels.at[slots].set(labels.astype(jnp.int32)),
      pointer=(self.pointer + n) % self.size,
    )


class TrainState(struct.PyTreeNode):
  """Everything a step changes: the encoder's ``params`` and ``batch_stats``, the
  loss's learnable ``loss_params`` (a dict of arrays passed to the loss by keyword,
  e.g. ``{"proxies": ...}``, trained by the same optimizer), the optimizer state, a
  base PRNG key (the key of step ``s`` is ``fold_in(rng, s)``), the step count and an
  optional cross-batch ``memory``."""

  step: jax.Array
  params: Any
  batch_stats: Any
  loss_params: dict[str, Any]
  opt_state: optax.OptState
  rng: jax.Array
  memory: Memory | None
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  @property
  def trainable(self) -> dict[str, Any]:
    """The tree the optimizer updates: encoder and loss parameters together."""
    return {"params": self.params, "loss_params": self.loss_params}


def create_train_state(
  rng: jax.Array,
  model: nn.Module | nnx.Module,
  tx: optax.GradientTransformation,
  example_input: jax.Array,
  *,
  loss_params: Mapping[str, Any] | None = None,
  memory_size: int | None = None,
) -> TrainState:
  """Initialises the encoder on ``example_input`` (a batch of inputs) and the optimizer.

  Args:
    rng: a PRNG key (``jax.random.PRNGKey(seed)`` or ``jax.random.key(seed)``); the
      run is a function of it.
    model: a Flax Linen module called as ``model.apply(variables, x, train=bool)``
      that returns [n, d] embeddings, or a ``flax.nnx.Module`` called as ``model(x)``
      (through ``metriclearn.models.as_linen``: its ``nnx.Param`` and
      ``nnx.BatchStat`` values become ``params`` and ``batch_stats``, as nested
      dicts; it is initialised already, so ``rng`` seeds only the steps, e.g. its
      dropout). ``models.with_variables(model, state)`` gives the trained NNX module.
    tx: an Optax optimizer; it updates the encoder and ``loss_params`` together.
    example_input: [n, ...] inputs of the shape the step will see (any n).
    loss_params: the loss's learnable arrays by keyword name, e.g. ``{"proxies":
      init_proxies(key, c, d)}`` or ``{"scale": 1.0, "bias": 0.0}``.
    memory_size: slots of a cross-batch memory (batch-form losses only); None for none.
  """
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):  # a typed key (jax.random.key):
    rng = jax.random.key_data(rng)  # keep its raw bits, which checkpoints can hold
  init_rng, rng = jax.random.split(rng)
  linen = models.as_linen(model)  # an NNX module through the Linen convention
  init: Callable[..., Any]
  try:
    hash(linen)
    init = functools.partial(_init_variables, model=linen)  # compiled once per model
  except TypeError:  # e.g. a module with a list attribute: compile for this call
    raw = _init_variables.__wrapped__  # type: ignore[attr-defined]  # set by jax.jit
    init = jax.jit(functools.partial(raw, model=linen))
  if isinstance(linen, models.NNXAdapter):  # made with its variables: copy, no jit
    init = linen.init
  variables = init(init_rng, example_input)
  params = variables["params"]
  loss_params = {
    k: v if isinstance(v, jax.Array) else jnp.asarray(np.asarray(v))  # not weak
    for k, v in dict(loss_params or {}).items()
  }
  memory = None
  if memory_size is not None:
    dim = jax.eval_shape(lambda: linen.apply(variables, example_input)).shape[-1]
    memory = Memory.create(memory_size, dim)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    loss_params=loss_params,
    opt_state=tx.init({"params": params, "loss_params": loss_params}),
    rng=rng,
    memory=memory,
    tx=tx,
  )


@functools.partial(jax.jit, static_argnames="model")
def _init_variables(rng, example_input, *, model):
  return model.init({"params": rng, "dropout": rng}, example_input)


def _batch_inputs(batch: Batch, kind: str) -> tuple[list[jax.Array], list[jax.Array]]:
  want = INPUT_KEYS[kind] + TARGET_KEYS.get(kind, ())
  missing = [k for k in want if k not in batch]
  if missing:
    raise KeyError(
      f"a {kind!r} batch needs keys {list(want)}; missing {missing} (got "
      f"{sorted(batch)})."
    )
  inputs = [jnp.asarray(batch[k]) for k in INPUT_KEYS[kind]]
  n = inputs[0].shape[0]
  shapes = {k: tuple(jnp.shape(batch[k])) for k in want}
  if (
    any(s[:1] != (n,) for s in shapes.values())
    or len({tuple(x.shape) for x in inputs}) > 1
  ):
    raise ValueError(f"the batch's arrays must share a leading size; got {shapes}.")
  return inputs, [jnp.asarray(batch[k]) for k in TARGET_KEYS.get(kind, ())]


def _reduce(values, valid, reduction, axis_name):
  """Local numerator, global denominator and the global loss (a scalar metric)."""
  if reduction == "total":  # terms of one loss that every device computes in full
    total = jnp.sum(values)
    return total, jnp.ones((), values.dtype), total
  num, den, mean = reduce.global_mean(
    values, valid, axis_name=axis_name, nonzero=reduction == "nonzero"
  )
  if reduction == "sum":
    total = num if axis_name is None else jax.lax.psum(num, axis_name)
    return num, jnp.ones((), values.dtype), total
  return num, den, mean


def loss_share(
  values: jax.Array,
  valid: jax.Array,
  *,
  reduction: str = "mean",
  axis_name: str | None = None,
  whole: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """(this device's share of the global loss, the global loss) for per-example
  ``values``: the share is ``devices * num / den``, so that the ``pmean`` of the
  gradients is the gradient of the global loss; a ``whole`` loss (one that every
  device computes in full) is its own share."""
  num, den, mean = _reduce(values, valid, "total" if whole else reduction, axis_name)
  devices = 1 if whole or axis_name is None else jax.lax.axis_size(axis_name)
  return devices * num / den, mean


def make_train_step(
  model: nn.Module | nnx.Module,
  loss: Callable[..., jax.Array],
  *,
  kind: str = "batch",
  reduction: str = "mean",
  axis_name: str | None = None,
  regularizers: Sequence[Regularizer] = (),
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
  r"""A pure ``step(state, batch) -> (state, metrics)``: encode, loss, reduce, update.

  .. math::
    \theta \leftarrow \mathrm{tx}\Big(\nabla_\theta \tfrac{1}{|V|}
    \sum_{i \in V} \ell_i\Big)

  over the valid examples :math:`V` of the global batch. The encoder runs once, in
  training mode, on all inputs of the batch concatenated (the siamese twins are one
  encoder, and BatchNorm sees both members of every pair).

  ==========  ==============================  ==========================================
  kind        batch keys                      loss call (``**loss_params`` by keyword)
  ==========  ==============================  ==========================================
  batch       image [n,...], label [n]        ``loss(emb, label, axis_name=..)`` -> [n]
  proxy       image, label                    ``loss(emb, label, axis_name=..,
                                              proxies=..)`` -> [n]
  pair        x1, x2, similar [n]             ``vmap(loss)(e1, e2, similar)`` -> [n]
  triplet     anchor, positive, negative      ``vmap(loss)(ea, ep, en)`` -> [n]
  two_view    view1, view2 (two augmented     ``loss(z1, z2, axis_name=..)`` -> a
              views of the same n items)      scalar (VICReg, Barlow Twins: the whole
                                              loss, from global statistics), or [n]
                                              (``views_loss(ntxent_loss)``)
  ==========  ==============================  ==========================================

  Bind a loss's options with ``functools.partial``. With a memory in the state
  (batch kind), the loss compares the batch with the global batch plus the memory
  (``ref_embeddings``, ``ref_labels``, self-pairs masked out, memory entries without
  gradient), and the global batch is enqueued afterwards.

  Args:
    model: the encoder, ``model.apply(variables, x, train=True)`` -> [n, d], or a
      ``flax.nnx.Module`` (run in ``train()`` mode; its RNG streams re-keyed from the
      step's key, see ``metriclearn.models.NNXAdapter``). For exact multi-device
      BatchNorm give its BatchNorm layers the same ``axis_name``.
    loss: any metriclearn loss of the given kind.
    kind: 'batch', 'proxy', 'pair', 'triplet' or 'two_view' (see the table).
    reduction: 'mean' over valid examples (label != -1), 'nonzero' (mean over the
      examples with a positive loss), 'sum', or 'total': the loss returns the terms
      of one global loss, the same on every device (e.g. ``proxy_anchor_loss``'s [C]
      per-class terms, computed on the global batch through ``axis_name``), summed.
    axis_name: the mapped axis when run under ``pmap``/``shard_map`` (None: one
      device). Gradients and BatchNorm statistics are averaged over it and batch-form
      losses draw candidates from every device.
    regularizers: :class:`Regularizer` terms added to the objective (their weighted
      sum is the ``regularization`` metric).

  Returns:
    ``step(state, batch)``; metrics hold the global mean ``loss`` and ``grad_norm``
    (and ``regularization`` with regularizers).

  >>> import optax
  >>> from metriclearn import models
  >>> from metriclearn.losses import pair
  >>> model = models.Encoder(models.MLPEncoder((8,)), models.EmbeddingHead(2))
  >>> x = jnp.ones((4, 3))
  >>> state = create_train_state(jax.random.PRNGKey(0), model, optax.sgd(0.1), x)
  >>> step = jax.jit(make_train_step(model, pair.contrastive_loss, kind="pair"))
  >>> batch = {"x1": x, "x2": -x, "similar": jnp.array([True, False, True, False])}
  >>> state, metrics = step(state, batch)
  >>> int(state.step), sorted(metrics)
  (1, ['grad_norm', 'loss'])
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
  if reduction not in REDUCTIONS:
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
  model = models.as_linen(model)  # an NNX module through the Linen convention
  regularizers = tuple(regularizers)
  for r in regularizers:
    if not isinstance(r, Regularizer):
      raise TypeError(f"regularizers must be training.Regularizer, got {r!r}.")
  extra = {} if axis_name is None else {"axis_name": axis_name}

  def per_example(emb, targets, loss_params, memory):
    n = emb.shape[0] // len(INPUT_KEYS[kind])
    if kind in ("pair", "triplet", "two_view"):
      # (interleaved: row i of every input sits together, see the step)
      k = len(INPUT_KEYS[kind])
      args = list(jnp.moveaxis(emb.reshape(n, k, -1), 1, 0)) + targets
      if kind == "two_view":
        values = loss(*args, **extra, **loss_params)
      else:
        values = jax.vmap(lambda *a: loss(*a, **loss_params))(*args)
      return values, jnp.ones((n,), bool), memory
    (labels,) = targets
    valid = labels >= 0
    if kind == "proxy":
      proxies = loss_params.get("proxies")
      if proxies is not None and jnp.shape(proxies)[-1] != emb.shape[-1]:
        raise ValueError(
          f"the encoder's output dimension {emb.shape[-1]} does not match the loss's "
          f"proxies of shape {tuple(jnp.shape(proxies))} (expected [classes, "
          f"{emb.shape[-1]}])."
        )
      return loss(emb, labels, **extra, **loss_params), valid, memory
    if memory is None:
      return loss(emb, labels, **extra, **loss_params), valid, memory
    # Cross-batch memory: candidates are the global batch (with gradient) and the
    # memory (without); the anchor's own copy among them is masked out.
    everyone = pairs.gather(emb, axis_name)
    everyone_labels = pairs.gather(labels, axis_name)
    if memory.size < everyone.shape[0]:
      raise ValueError(
        f"the memory ({memory.size} slots) is smaller than the global batch "
        f"({everyone.shape[0]} examples); use a memory of at least the batch size."
      )
    if memory.embeddings.shape[-1] != emb.shape[-1]:
      raise ValueError(
        f"the memory holds {memory.embeddings.shape[-1]}-dimensional embeddings but "
        f"the encoder outputs {emb.shape[-1]}."
      )
    ref = jnp.concatenate([everyone, jax.lax.stop_gradient(memory.embeddings)])
    ref_labels = jnp.concatenate([everyone_labels, memory.labels])
    offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * n
    not_self = (jnp.arange(n)[:, None] + offset) != jnp.arange(ref.shape[0])
    values = loss(
      emb,
      labels,
      ref_embeddings=ref,
      ref_labels=ref_labels,
      mask=not_self,
      **loss_params,
    )
    return values, valid, memory.enqueue(everyone, everyone_labels)

  def step(state: TrainState, batch: Batch):
    if state.memory is not None and kind != "batch":
      raise ValueError(f"a cross-batch memory needs kind='batch', got {kind!r}.")
    inputs, targets = _batch_inputs(batch, kind)
    n = inputs[0].shape[0]
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

    def objective(trainable):
      variables = {"params": trainable["params"], "batch_stats": state.batch_stats}
      emb, updates = model.apply(
        variables,
        # Interleaved rows (x1_0, x2_0, x1_1, ...): one forward pass (BatchNorm sees
        # every input), and a pair stays on one device when the batch is sharded.
        jnp.stack(inputs, axis=1).reshape((-1, *inputs[0].shape[1:])),
        train=True,
        rngs={"dropout": rng},
        mutable=["batch_stats"],
      )
      if emb.ndim != 2:
        raise ValueError(f"the encoder must return [n, d] embeddings, got {emb.shape}.")
      values, valid, memory = per_example(
        emb, targets, trainable["loss_params"], state.memory
      )
      whole = reduction == "total" or (kind == "two_view" and values.ndim == 0)
      if values.shape != (n,) and not whole:
        raise ValueError(
          f"a {kind!r} loss must give one value per example, shape ({n},); got "
          f"{tuple(values.shape)} (pass an unreduced loss)."
        )
      # A 'total' loss is already the whole loss on every device (the gathers carry
      # the gradients).
      share, mean = loss_share(
        values, valid, reduction=reduction, axis_name=axis_name, whole=whole
      )
      penalty = jnp.zeros((), share.dtype)
      for r in regularizers:
        if r.on != "embeddings":
          penalty = penalty + r.weight * r.fn(trainable["loss_params"][r.on])
        elif kind in ("batch", "proxy") and _takes_valid(r.fn):
          penalty = penalty + r.weight * r.fn(emb, valid=targets[0] >= 0)
        else:
          penalty = penalty + r.weight * r.fn(emb)
      aux = (mean, updates.get("batch_stats", {}), memory, penalty)
      return share + penalty, aux

    grad_fn = jax.value_and_grad(objective, has_aux=True)
    (_, (mean, batch_stats, memory, penalty)), grads = grad_fn(state.trainable)
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
      batch_stats = jax.lax.pmean(batch_stats, axis_name)
    new_state = apply_gradients(state, grads, batch_stats=batch_stats, memory=memory)
    metrics = {"loss": mean, "grad_norm": optax.tree.norm(grads)}
    if regularizers:
      metrics["regularization"] = (
        penalty if axis_name is None else jax.lax.pmean(penalty, axis_name)
      )
    return new_state, metrics

  # read by pmap_step, shard_map_step and fit
  step.axis_name = axis_name  # type: ignore[attr-defined]  # a function attribute
  return step


def apply_gradients(state: TrainState, grads: Any, **changes: Any) -> TrainState:
  """One optimizer update of ``state.trainable`` by ``grads`` (a tree like it), the
  step count advanced and ``changes`` (e.g. ``batch_stats=``) applied."""
  # Optax mixes Python floats and int32 counts (Adam's bias correction): let it,
  # even when the user runs JAX with strict dtype promotion.
  with jax.numpy_dtype_promotion("standard"):
    updates, opt_state = state.tx.update(grads, state.opt_state, state.trainable)
  trainable = optax.apply_updates(state.trainable, updates)
  return state.replace(
    step=state.step + 1,
    params=trainable["params"],
    loss_params=trainable["loss_params"],
    opt_state=opt_state,
    **changes,
  )


def make_eval_step(
  model: nn.Module | nnx.Module,
) -> Callable[[TrainState, jax.Array], jax.Array]:
  """A jitted ``eval_step(state, x) -> [n, d]`` embeddings in evaluation mode (an NNX
  module in ``eval()`` mode)."""
  linen = models.as_linen(model)

  @jax.jit
  def eval_step(state: TrainState, x: jax.Array) -> jax.Array:
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return linen.apply(variables, x, train=False)

  return eval_step


def embed(
  eval_step: Callable[[TrainState, jax.Array], jax.Array],
  state: TrainState,
  x: Any,
  *,
  batch_size: int = 256,
) -> np.ndarray:
  """Embeds a whole array [N, ...] in batches (the last one padded: one compile)."""
  x = np.asarray(x)
  out = []
  for start in range(0, len(x), batch_size):
    chunk = x[start : start + batch_size]
    pad = batch_size - len(chunk) if len(x) > batch_size else 0
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    out.append(np.asarray(eval_step(state, chunk))[: len(chunk) - pad])
  return np.concatenate(out)


# ---------------------------------------------------------------- fit


class Preempted(SystemExit):
  """SIGTERM (a preempted job): a checkpoint was saved; a rerun resumes from it.

  Exits with status 143 (128 + SIGTERM) unless caught. Attributes: ``step``,
  ``directory``.
  """

  def __init__(self, step: int, directory: str):
    self.step, self.directory = step, directory
    super().__init__(143)

  def __str__(self) -> str:
    return (
      f"SIGTERM at step {self.step}: checkpoint {self.directory}/{self.step} saved; "
      "run again to resume from it."
    )


PARALLEL = (None, "jit", "pmap", "shard_map")


def _placement(step: Callable, state: TrainState, mode: str | None):
  """(compiled step, host batch -> device batch, device state -> host state, the
  state on the devices) for a ``fit`` mode."""
  if mode not in PARALLEL:
    raise ValueError(f"parallel must be one of {PARALLEL}, got {mode!r}.")
  axis_name = getattr(step, "axis_name", None)
  if mode in (None, "jit") and axis_name is not None:
    raise ValueError(
      f"this step was built with axis_name={axis_name!r} (per-device semantics): "
      "run it with parallel='shard_map' or 'pmap', or build it without an axis_name "
      "for parallel='jit' (or None: one device)."
    )
  copy = jax.tree.map(np.array, state)  # the caller's state stays valid (donation)
  if mode is None:
    run: Callable[..., Any] = jax.jit(step, donate_argnums=0)
    return run, jax.device_put, (lambda s: s), jax.device_put(copy)
  if mode == "pmap":
    run = parallel.pmap_step(step, donate=True)
    return run, parallel.shard_batch, parallel.unreplicate, parallel.replicate(copy)
  mesh = parallel.make_mesh(axis_name or parallel.DATA_AXIS)
  run = (parallel.jit_step if mode == "jit" else parallel.shard_map_step)(
    step, mesh, donate=True
  )
  place = functools.partial(parallel.shard_batch, mesh=mesh)
  return run, place, (lambda s: s), parallel.replicate(copy, mesh=mesh)


def _host_batches(batches, start: int, num_steps: int) -> Iterable[Batch]:
  """The host batches of steps ``start .. num_steps - 1``: ``batches(s)``, or the
  items of an iterable from its first step (those a resumed run has seen skipped)."""
  if callable(batches):
    return (batches(s) for s in range(start, num_steps))
  iterator = iter(batches)
  for _ in range(start):
    next(iterator)
  return itertools.islice(iterator, num_steps - start)


def _cut_log(path: str | os.PathLike, step: int) -> None:
  """Drops the JSON lines of ``path`` after ``step`` (those of a run that is resumed
  from an earlier checkpoint would otherwise appear twice)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()

  def kept(line: str) -> bool:
    try:
      return json.loads(line).get("step", 0) <= step
    except ValueError:  # a line cut short by a kill
      return False

  keep = [line for line in lines if kept(line)]
  if len(keep) != len(lines):
    with open(path, "w") as f:
      f.writelines(keep)


def fit(
  step: Callable,
  state: TrainState,
  batches: Callable[[int], Batch] | Iterable[Batch],
  *,
  num_steps: int,
  parallel: str | None = None,
  checkpoint_dir: str | os.PathLike | None = None,
  save_every: int = 1000,
  keep: int | None = 3,
  eval_fn: Callable[[TrainState, int], Mapping[str, float]] | None = None,
  eval_every: int = 1000,
  log_path: str | os.PathLike | None = None,
  log_every: int = 10,
  tensorboard_dir: str | os.PathLike | None = None,
  progress: bool = True,
  prefetch: int = 2,
  resume_step: int | None = None,
  handle_sigterm: bool = True,
) -> TrainState:
  """Trains to ``num_steps``, resuming from the latest checkpoint in ``checkpoint_dir``.

  The loop never waits on the host between its sync points: a background thread
  draws the next ``prefetch`` batches and puts them on the devices while a step runs,
  and the metrics stay on the device until the next log (copied while the step after
  it runs, then read), checkpoint or evaluation (read at once); the steps since the
  last sync are checked then: a NaN stops the run, naming the first bad step, before
  anything after it is saved.

  Args:
    step: from ``make_train_step`` (with an ``axis_name`` for 'pmap' / 'shard_map').
    state: the initial single-device state (``create_train_state``); replaced by the
      latest checkpoint if there is one.
    batches: ``batches(s)`` -> the host batch of step ``s`` (a global batch; with
      several processes, this process's part of it), or an iterable of the run's
      batches from its first step (e.g. a seeded ``metriclearn.data`` sampler): a
      resumed run skips the batches already seen, so both resume exactly.
    num_steps: the step count to reach.
    parallel: None (one device), 'jit' (``jax.jit`` over a mesh of every device, the
      batch sharded: the multi-device default), 'shard_map' or 'pmap'.
    checkpoint_dir: where Orbax checkpoints go (None: none). Saved every
      ``save_every`` steps and at the end; the last ``keep`` are kept.
    eval_fn: ``eval_fn(state, step) -> {name: value}`` every ``eval_every`` steps (and
      at the end), with a single-device state (valid during the call only: the next
      step reuses its buffers); results are logged.
    log_path: a JSON-lines file: one line every ``log_every`` steps, with the mean
      loss and gradient norm over those steps, and one line per evaluation.
    tensorboard_dir: the same records as TensorBoard scalars, in a new event file
      there (:class:`metriclearn.summaries.SummaryWriter`; TensorBoard is not needed
      to write it). A resumed run's file starts at the restored step.
    progress: show a tqdm progress bar with the loss of the last log.
    prefetch: device batches kept ready (>= 1).
    resume_step: resume from this checkpoint instead of the latest (the later ones
      are deleted), e.g. the one a :class:`NonFiniteLossError` names.
    handle_sigterm: with a ``checkpoint_dir``, a SIGTERM (a preempted job) saves a
      checkpoint after the current step and raises :class:`Preempted` (exit status
      143); a rerun resumes from it.

  A restored checkpoint is verified (:func:`restore_checkpoint`): a damaged one is
  named in a :class:`CheckpointWarning`, set aside and the previous one used. On
  resume the lines of ``log_path`` after the restored step are dropped.

  Returns:
    The final single-device state.

  Raises:
    NonFiniteLossError: the loss, the gradient, the parameters or the optimizer state
      became NaN/inf; no state from that step on is saved, the earlier checkpoints
      are kept (the error names the one to resume from).
    CheckpointError: every checkpoint in ``checkpoint_dir`` is damaged.
    Preempted: SIGTERM; the checkpoint of the step reached is saved.
  """
  from tqdm import tqdm

  run, place, host, device_state = _placement(step, state, parallel)
  manager = None
  if checkpoint_dir is not None:
    manager = checkpoint_manager(checkpoint_dir, save_every=save_every, keep=keep)
    if resume_step is not None:
      restored = restore_checkpoint(manager, state, resume_step)
      for later in [s for s in manager.all_steps() if s > resume_step]:
        manager.delete(later)
      _, _, _, device_state = _placement(step, restored, parallel)
    elif manager.latest_step() is not None:
      restored = restore_checkpoint(manager, state, set_aside=True)
      _, _, _, device_state = _placement(step, restored, parallel)
  elif resume_step is not None:
    raise ValueError("resume_step needs a checkpoint_dir.")
  start = int(np.asarray(host(device_state).step))
  source = _host_batches(batches, start, num_steps)
  if log_path is not None:
    _cut_log(log_path, start)
  log = open(log_path, "a") if log_path is not None else None  # noqa: SIM115
  board = None
  if tensorboard_dir is not None:
    board = summaries.SummaryWriter(tensorboard_dir, start_step=start or None)
  bar = tqdm(total=num_steps, initial=start, disable=not progress, desc="train")
  pending: list[Any] = []  # device metrics of the steps after `synced`
  window: list[dict[str, float]] = []  # host metrics since the last log line
  synced = start
  deferred = None  # a log step, read once the step after it is queued

  def write(record):
    if log is not None:
      log.write(json.dumps(record) + "\n")
      log.flush()
    if board is not None:
      board.scalars(record["step"], {k: v for k, v in record.items() if k != "step"})

  def sync(upto: int) -> None:
    """Brings the metrics of the steps up to ``upto`` to the host and stops at the
    first bad one."""
    nonlocal synced
    count = upto - synced
    for k, metrics in enumerate(jax.device_get(pending[:count])):
      metrics = {key: float(np.ravel(v)[0]) for key, v in metrics.items()}
      if not all(math.isfinite(v) for v in metrics.values()):
        last = checkpoints.latest_step(manager) if manager else None
        where = manager.directory if manager else None
        raise NonFiniteLossError(
          synced + 1 + k,
          metrics,
          last,
          directory=where,
          largest=checkpoints.largest_parameter(manager, last),
        )
      window.append(metrics)
    del pending[:count]
    synced = upto

  def log_line(step: int) -> None:
    mean = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
    write({"step": step, **mean})
    bar.set_postfix(loss=f"{mean['loss']:.4f}")
    window.clear()

  stop = []  # a SIGTERM arrived
  previous = None
  if (
    handle_sigterm
    and manager is not None
    and threading.current_thread() is threading.main_thread()
  ):
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.append(True))

  try:
    with Prefetcher(source, prefetch, place) as device_batches:
      for done in range(start + 1, num_steps + 1):
        device_state, metrics = run(device_state, next(device_batches))
        pending.append(metrics)
        bar.update(1)
        if deferred is not None:  # step `done` is queued: the device stays busy
          sync(deferred)
          log_line(deferred)
          deferred = None
        logs = done % log_every == 0 or done == num_steps
        saves = manager is not None and (done % save_every == 0 or done == num_steps)
        evals = eval_fn is not None and (done % eval_every == 0 or done == num_steps)
        if stop:
          assert manager is not None  # the SIGTERM handler needs a manager
          sync(done)
          if checkpoints.latest_step(manager) != done:
            save_checkpoint(manager, host(device_state), force=True)
          manager.wait_until_finished()
          raise Preempted(done, str(manager.directory))
        if not (logs or saves or evals):
          continue
        if not (saves or evals or done == num_steps):  # a log: start the copies,
          for m in pending:  # read them after the next step is dispatched
            jax.tree.map(lambda a: a.copy_to_host_async(), m)
          deferred = done
          continue
        sync(done)
        if logs:
          log_line(done)
        if saves:
          save_checkpoint(manager, host(device_state), force=True)
        if evals:
          assert eval_fn is not None  # evals needs it
          results = eval_fn(host(device_state), done) or {}
          results = {k: float(v) for k, v in results.items()}
          if results:
            write({"step": done, **{f"eval/{k}": v for k, v in results.items()}})
            bar.write(
              f"step {done}: " + ", ".join(f"{k}={v:.4g}" for k, v in results.items())
            )
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
    bar.close()
    if log is not None:
      log.close()
    if board is not None:
      board.close()
    if manager is not None:
      manager.wait_until_finished()
      manager.close()
  return host(device_state)

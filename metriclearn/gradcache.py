r"""Batches beyond activation memory: an exact large-batch step for in-batch losses.

GradCache (Gao, Zhang, Han, Callan 2021) splits the gradient of an in-batch loss at
the embeddings. With :math:`e = f_\theta(x)` for the whole batch,

.. math::
  \nabla_\theta L(f_\theta(x)) = \sum_c J_{f_\theta}(x_c)^\top
    \big(\nabla_e L\big)_c

so the step (1) embeds the batch chunk by chunk **without** keeping activations,
(2) takes the loss and its gradient with respect to all the embeddings at once (a
blockwise loss, ``block_size=``, keeps that O(n x block) too), (3) re-runs each chunk
with its vector-Jacobian product and sums the parameter gradients. Memory: one
chunk's activations plus the [n, d] embeddings and their gradient; compute: one extra
forward pass. The result is the plain step's (:func:`metriclearn.training.
make_train_step`) for any encoder whose output for an item does not depend on the
rest of its batch: with BatchNorm in training mode each chunk is normalised with its
own statistics (as in GradCache), and the running statistics become the mean of the
chunks' updates.

::

  step = gradcache.make_gradcache_step(
    model, functools.partial(losses.supcon_loss, block_size=1024), chunk_size=512
  )
  state, metrics = jax.jit(step)(state, {"image": x, "label": y})   # n = 65,536

The chunks run in one program (``loop='scan'``, for accelerators) or in a Python loop
of compiled calls (``loop='python'``: on the CPU, where a convolution's gradient inside
a loop body is slow; the step is then called as it is, not under ``jax.jit``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from metriclearn import models, training

__all__ = ["make_gradcache_step"]

Batch = Mapping[str, jax.Array]


def make_gradcache_step(
  model: nn.Module,
  loss: Callable[..., jax.Array],
  *,
  chunk_size: int,
  kind: str = "batch",
  reduction: str = "mean",
  axis_name: str | None = None,
  loop: str = "scan",
) -> Callable[[training.TrainState, Batch], tuple[training.TrainState, dict]]:
  """A ``step(state, batch) -> (state, metrics)`` equal to
  ``training.make_train_step(model, loss, kind=kind, reduction=reduction)`` whose
  activation memory is that of one chunk of ``chunk_size`` inputs.

  Args:
    model: the encoder (a Linen module or a ``flax.nnx.Module``), as for
      ``make_train_step``.
    loss: a batch-form loss ``loss(emb [n, d], labels [n], **loss_params) -> [n]``
      (kind 'batch'), or a proxy loss (kind 'proxy', ``proxies`` in the state's
      ``loss_params``). Give it ``block_size=`` when the n x n matrices do not fit.
    chunk_size: inputs embedded at once; must divide the (per-device) batch size.
    kind: 'batch' or 'proxy' (batch keys ``image`` [n, ...], ``label`` [n]).
    reduction: 'mean' over the valid examples (label != -1) or 'nonzero'.
    axis_name: the mapped axis under ``shard_map`` / ``pmap`` (the loss draws its
      candidates from every device; gradients are averaged over it); 'scan' only.
    loop: 'scan': one pure program (``lax.map`` / ``lax.scan`` over the chunks) to
      ``jax.jit`` or map over devices yourself, the form for accelerators.
      'python': a Python loop over the chunks, each chunk its own compiled call (the
      step compiles its parts itself and must not be traced); XLA:CPU runs a
      convolution's weight gradient inside a loop body far slower than outside one
      (jax-ml/jax#12868; a Conv-4 step 46x slower, ``benchmarks/gradcache.md``), so
      this is the form for convolutional encoders on the CPU. Its update donates
      the state it is given (as ``jax.jit(step, donate_argnums=0)`` does for
      'scan'): keep the returned state, not the one passed in.

  Returns:
    ``step(state, batch)``; metrics hold the global mean ``loss`` and ``grad_norm``.

  References:
    Gao, Zhang, Han, Callan. Scaling Deep Contrastive Learning Batch Size under
    Memory Limited Setup. RepL4NLP 2021.
  """
  if kind not in ("batch", "proxy"):
    raise ValueError(f"kind must be 'batch' or 'proxy', got {kind!r}.")
  if reduction not in ("mean", "nonzero"):
    raise ValueError(f"reduction must be 'mean' or 'nonzero', got {reduction!r}.")
  if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
    raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}.")
  if loop not in ("scan", "python"):
    raise ValueError(f"loop must be 'scan' or 'python', got {loop!r}.")
  if loop == "python" and axis_name is not None:
    raise ValueError(
      "axis_name needs loop='scan' (a Python loop cannot run under shard_map / pmap)."
    )
  model = models.as_linen(model)
  extra = {} if axis_name is None else {"axis_name": axis_name}

  def embed(params, batch_stats, rng, xc, i):
    """One chunk's embeddings and its BatchNorm statistics."""
    emb, updates = model.apply(
      {"params": params, "batch_stats": batch_stats},
      xc,
      train=True,
      rngs={"dropout": jax.random.fold_in(rng, i)},
      mutable=["batch_stats"],
    )
    return emb, updates.get("batch_stats", {})

  def loss_grad(emb, labels, loss_params):
    """The global loss and its gradient at the embeddings and the loss's parameters."""
    n = labels.shape[0]

    def objective(e, lp):
      values = loss(e, labels, **extra, **lp)
      if values.shape != (n,):
        raise ValueError(
          f"the loss must give one value per example, shape ({n},); got "
          f"{tuple(values.shape)} (pass an unreduced loss)."
        )
      return training.loss_share(
        values, labels >= 0, reduction=reduction, axis_name=axis_name
      )

    grad_fn = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)
    (_, mean), (emb_grad, loss_params_grad) = grad_fn(emb, loss_params)
    return mean, emb_grad, loss_params_grad

  def add_chunk_grad(total, params, batch_stats, rng, xc, g, i):
    """``total`` + this chunk's vector-Jacobian product with ``g`` = dL/d(its emb)."""
    _, vjp = jax.vjp(lambda p: embed(p, batch_stats, rng, xc, i)[0], params)
    return jax.tree.map(jnp.add, total, vjp(g)[0])

  def update(state, params_grad, loss_params_grad, batch_stats, mean):
    grads = {"params": params_grad, "loss_params": loss_params_grad}
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
      batch_stats = jax.lax.pmean(batch_stats, axis_name)
    new_state = training.apply_gradients(state, grads, batch_stats=batch_stats)
    return new_state, {"loss": mean, "grad_norm": optax.tree.norm(grads)}

  def inputs(state, batch):
    if state.memory is not None:
      raise ValueError("make_gradcache_step does not take a cross-batch memory.")
    missing = [k for k in ("image", "label") if k not in batch]
    if missing:
      raise KeyError(f"the batch needs keys ['image', 'label']; missing {missing}.")
    x, labels = batch["image"], jnp.asarray(batch["label"])
    n = x.shape[0]
    if labels.shape != (n,):
      raise ValueError(f"label must have shape ({n},), got {tuple(labels.shape)}.")
    if n % chunk_size:
      raise ValueError(f"chunk_size {chunk_size} must divide the batch size {n}.")
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    return x, labels, n // chunk_size, rng

  def scan_step(state: training.TrainState, batch: Batch):
    x, labels, k, rng = inputs(state, batch)
    chunks = jnp.asarray(x).reshape((k, chunk_size, *x.shape[1:]))
    index = jnp.arange(k)
    # (1) every chunk's embeddings, no activations kept
    emb, stats = jax.lax.map(
      lambda a: embed(state.params, state.batch_stats, rng, *a), (chunks, index)
    )
    emb = jax.lax.stop_gradient(emb.reshape((k * chunk_size, -1)))
    batch_stats = jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)
    # (2) the loss's gradient at the embeddings, (3) each chunk's VJP with it
    mean, emb_grad, loss_params_grad = loss_grad(emb, labels, state.loss_params)

    def accumulate(total, a):
      xc, g, i = a
      return add_chunk_grad(total, state.params, state.batch_stats, rng, xc, g, i), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    chunk_grads = emb_grad.reshape((k, chunk_size, -1))
    params_grad, _ = jax.lax.scan(accumulate, zeros, (chunks, chunk_grads, index))
    return update(state, params_grad, loss_params_grad, batch_stats, mean)

  embed_c, loss_grad_c = jax.jit(embed), jax.jit(loss_grad)
  add_c = jax.jit(add_chunk_grad, donate_argnums=0)
  update_c = jax.jit(update, donate_argnums=0)

  def python_step(state: training.TrainState, batch: Batch):
    if any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves((state, batch))):
      raise TypeError(
        "a loop='python' step compiles its parts itself: call it without jax.jit "
        "(or use loop='scan' for one traceable program)."
      )
    x, labels, k, rng = inputs(state, batch)
    parts = [slice(i * chunk_size, (i + 1) * chunk_size) for i in range(k)]
    # (1) every chunk's embeddings, each chunk's activations freed after its call
    out = [
      embed_c(state.params, state.batch_stats, rng, x[s], i)
      for i, s in enumerate(parts)
    ]
    emb = jnp.concatenate([e for e, _ in out])
    batch_stats = jax.tree.map(lambda *s: sum(s) / k, *(s for _, s in out))
    del out
    # (2) the loss's gradient at the embeddings, (3) each chunk's VJP with it
    mean, emb_grad, loss_params_grad = loss_grad_c(emb, labels, state.loss_params)
    params_grad = jax.tree.map(jnp.zeros_like, state.params)
    for i, s in enumerate(parts):
      params_grad = add_c(
        params_grad, state.params, state.batch_stats, rng, x[s], emb_grad[s], i
      )
    return update_c(state, params_grad, loss_params_grad, batch_stats, mean)

  step = scan_step if loop == "scan" else python_step
  # read by parallel's step wrappers and training.fit
  step.axis_name = axis_name  # type: ignore[attr-defined]  # a function attribute
  return step

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
) -> Callable[[training.TrainState, Batch], tuple[training.TrainState, dict]]:
  """A pure ``step(state, batch) -> (state, metrics)`` equal to
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
      candidates from every device; gradients are averaged over it).

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
  model = models.as_linen(model)
  extra = {} if axis_name is None else {"axis_name": axis_name}

  def step(state: training.TrainState, batch: Batch):
    if state.memory is not None:
      raise ValueError("make_gradcache_step does not take a cross-batch memory.")
    missing = [k for k in ("image", "label") if k not in batch]
    if missing:
      raise KeyError(f"the batch needs keys ['image', 'label']; missing {missing}.")
    x, labels = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
    n = x.shape[0]
    if labels.shape != (n,):
      raise ValueError(f"label must have shape ({n},), got {tuple(labels.shape)}.")
    if n % chunk_size:
      raise ValueError(f"chunk_size {chunk_size} must divide the batch size {n}.")
    chunks = x.reshape((n // chunk_size, chunk_size, *x.shape[1:]))
    index = jnp.arange(n // chunk_size)
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

    def forward(params, xc, i):
      variables = {"params": params, "batch_stats": state.batch_stats}
      emb, updates = model.apply(
        variables,
        xc,
        train=True,
        rngs={"dropout": jax.random.fold_in(rng, i)},
        mutable=["batch_stats"],
      )
      return emb, updates.get("batch_stats", {})

    # (1) every chunk's embeddings, no activations kept
    emb, stats = jax.lax.map(lambda a: forward(state.params, *a), (chunks, index))
    emb = jax.lax.stop_gradient(emb.reshape((n, -1)))
    batch_stats = jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)

    # (2) the loss and its gradient at the embeddings (and the loss's parameters)
    def objective(e, loss_params):
      values = loss(e, labels, **extra, **loss_params)
      if values.shape != (n,):
        raise ValueError(
          f"the loss must give one value per example, shape ({n},); got "
          f"{tuple(values.shape)} (pass an unreduced loss)."
        )
      return training.loss_share(
        values, labels >= 0, reduction=reduction, axis_name=axis_name
      )

    grad_fn = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)
    (_, mean), (emb_grad, loss_params_grad) = grad_fn(emb, state.loss_params)

    # (3) each chunk again, with its vector-Jacobian product
    def accumulate(total, a):
      xc, g, i = a
      _, vjp = jax.vjp(lambda p: forward(p, xc, i)[0], state.params)
      return jax.tree.map(jnp.add, total, vjp(g)[0]), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    chunk_grads = emb_grad.reshape((n // chunk_size, chunk_size, -1))
    params_grad, _ = jax.lax.scan(accumulate, zeros, (chunks, chunk_grads, index))
    grads = {"params": params_grad, "loss_params": loss_params_grad}
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
      batch_stats = jax.lax.pmean(batch_stats, axis_name)
    new_state = training.apply_gradients(state, grads, batch_stats=batch_stats)
    return new_state, {"loss": mean, "grad_norm": optax.tree.norm(grads)}

  # read by parallel's step wrappers and training.fit
  step.axis_name = axis_name  # type: ignore[attr-defined]  # a function attribute
  return step

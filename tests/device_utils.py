"""Shared test helper: a batch-form loss with ``axis_name`` on 8 simulated devices must
give the single-device per-anchor losses and embedding gradients on the whole batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P


def run_on_devices(loss_fn, embeddings, labels, *, mode: str, **kwargs):
  """Per-anchor losses [n] and d(sum of losses)/d(embeddings) [n, d], computed with the
  batch split over all devices, ``axis_name`` set (``mode``: 'pmap' or 'shard_map')."""
  k = jax.device_count()
  n, d = embeddings.shape
  assert n % k == 0, f"batch {n} must split over {k} devices"

  def local_sum(e, lab):
    return loss_fn(e, lab, axis_name="i", **kwargs).sum()

  if mode == "pmap":
    e = embeddings.reshape(k, n // k, d)
    lab = labels.reshape(k, n // k)
    losses = jax.pmap(lambda e, lab: loss_fn(e, lab, axis_name="i", **kwargs), "i")(
      e, lab
    )
    grads = jax.pmap(jax.grad(local_sum), "i")(e, lab)
    return losses.reshape(n), grads.reshape(n, d)
  if mode == "shard_map":
    mesh = Mesh(np.array(jax.devices()), ("i",))
    sharded = jax.shard_map(
      lambda e, lab: loss_fn(e, lab, axis_name="i", **kwargs),
      mesh=mesh,
      in_specs=(P("i"), P("i")),
      out_specs=P("i"),
    )
    losses = jax.jit(sharded)(embeddings, labels)
    grads = jax.jit(jax.grad(lambda e: sharded(e, labels).sum()))(embeddings)
    return losses, grads
  raise ValueError(f"mode must be 'pmap' or 'shard_map', got {mode!r}")


def assert_matches_single_device(
  loss_fn, embeddings, labels, *, rtol=1e-5, atol=1e-6, **kwargs
):
  """Checks both 'pmap' and 'shard_map' against the single-device call."""
  want = loss_fn(embeddings, labels, **kwargs)
  want_grad = jax.grad(lambda e: loss_fn(e, labels, **kwargs).sum())(embeddings)
  for mode in ("pmap", "shard_map"):
    got, got_grad = run_on_devices(loss_fn, embeddings, labels, mode=mode, **kwargs)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=mode)
    np.testing.assert_allclose(got_grad, want_grad, rtol=rtol, atol=atol, err_msg=mode)
    assert jnp.all(jnp.isfinite(got_grad)), mode

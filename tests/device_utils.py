"""Shared test helpers for batch-form losses: per-anchor values with their embedding
gradients in one compiled function, a tolerance check, and the same on 8 simulated
devices (a loss with ``axis_name`` must give the single-device per-anchor losses and
embedding gradients of the whole batch)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P


def value_and_grad(loss_fn, embeddings, labels, **kwargs):
  """Per-anchor losses and d(sum)/d(embeddings), one compiled function."""

  @jax.jit
  def both(x, lab):
    values, vjp = jax.vjp(lambda y: loss_fn(y, lab, **kwargs), x)
    return values, vjp(jnp.ones_like(values))[0]

  return both(embeddings, jnp.asarray(labels))


def assert_close(got, want, rtol, msg=""):
  """Relative tolerance, and the same relative to the largest entry (gradients of
  small entries carry the rounding of large ones)."""
  want = np.asarray(want)
  atol = rtol * max(float(np.max(np.abs(want), initial=0.0)), 1e-3)
  np.testing.assert_allclose(np.asarray(got), want, rtol, atol, msg)


def run_on_devices(loss_fn, embeddings, labels, *, mode: str, **kwargs):
  """Per-anchor losses [n] and d(sum of losses)/d(embeddings) [n, d], computed with the
  batch split over all devices, ``axis_name='i'`` (``mode``: 'pmap' or 'shard_map'),
  forward and backward in one compiled function."""
  k = jax.device_count()
  n, d = embeddings.shape
  assert n % k == 0, f"batch {n} must split over {k} devices"
  labels = jnp.asarray(labels)

  def local(e, lab):
    values, vjp = jax.vjp(lambda y: loss_fn(y, lab, axis_name="i", **kwargs), e)
    return values, vjp(jnp.ones_like(values))[0]

  if mode == "pmap":
    values, grads = jax.pmap(local, "i")(
      embeddings.reshape(k, n // k, d), labels.reshape(k, n // k)
    )
    return values.reshape(n), grads.reshape(n, d)
  if mode == "shard_map":
    mesh = Mesh(np.array(jax.devices()), ("i",))
    sharded = jax.shard_map(
      local, mesh=mesh, in_specs=(P("i"), P("i")), out_specs=(P("i"), P("i"))
    )
    return jax.jit(sharded)(embeddings, labels)
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

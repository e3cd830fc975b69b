"""GradCache: the chunked large-batch step equals the plain step (float32 1e-5) for an
encoder without BatchNorm, on one device and on eight simulated devices, in both loop
forms; the two forms agree with a BatchNorm Conv encoder; bad arguments are named."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metriclearn import gradcache, models, parallel, training
from metriclearn.losses import softmax

MODEL = models.Encoder(
  models.MLPEncoder(hidden=(16,), batch_norm=False), models.EmbeddingHead(8)
)


def assert_close(got, want, atol):
  jax.tree.map(
    lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=atol), got, want
  )


def batch(n=32, d=6, seed=0):
  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % 8).astype(np.int32)
  labels[-1] = -1  # padding: no part in the loss
  return {"image": rng.normal(size=(n, d)).astype(np.float32), "label": labels}


def state_for(b, loss_params=None):
  return training.create_train_state(
    jax.random.key(0),
    MODEL,
    optax.adam(1e-2),
    b["image"][:2],
    loss_params=loss_params,
  )


def two_steps(step, state, b, jit=True):
  step = jax.jit(step) if jit else step  # a loop='python' step compiles its parts
  state, m1 = step(state, b)
  state, m2 = step(state, b)
  return state, (m1, m2)


@pytest.mark.parametrize("loop", ["scan", "python"])
@pytest.mark.parametrize("chunk_size", [4, 32])
def test_equals_the_plain_step(chunk_size, loop):
  b = batch()
  loss = functools.partial(softmax.supcon_loss, temperature=0.1)
  want, want_m = two_steps(training.make_train_step(MODEL, loss), state_for(b), b)
  step = gradcache.make_gradcache_step(MODEL, loss, chunk_size=chunk_size, loop=loop)
  got, got_m = two_steps(step, state_for(b), b, jit=loop == "scan")
  assert_close(got.params, want.params, atol=1e-5)
  for g, w in zip(got_m, want_m, strict=True):
    np.testing.assert_allclose(g["loss"], w["loss"], rtol=1e-5)
    np.testing.assert_allclose(g["grad_norm"], w["grad_norm"], rtol=1e-5)
  assert int(got.step) == 2


def test_blockwise_loss_and_a_learned_temperature():
  b = batch()
  params = {"temperature": jnp.asarray(0.2)}  # a loss parameter the optimizer trains
  loss = functools.partial(softmax.ntxent_loss, block_size=8)
  want, _ = two_steps(training.make_train_step(MODEL, loss), state_for(b, params), b)
  got, _ = two_steps(
    gradcache.make_gradcache_step(MODEL, loss, chunk_size=8), state_for(b, params), b
  )
  assert_close(got.params, want.params, atol=1e-5)
  assert_close(got.loss_params, want.loss_params, atol=1e-5)
  assert float(got.loss_params["temperature"]) != 0.2


def test_eight_devices_equal_one():
  b = batch(n=64)
  loss = functools.partial(softmax.supcon_loss, temperature=0.1)
  want, _ = two_steps(
    gradcache.make_gradcache_step(MODEL, loss, chunk_size=8), state_for(b), b
  )

  mesh = parallel.make_mesh("data")
  step = gradcache.make_gradcache_step(MODEL, loss, chunk_size=4, axis_name="data")
  run = parallel.shard_map_step(step, mesh)
  state = parallel.replicate(state_for(b), mesh=mesh)
  for _ in range(2):
    state, _ = run(state, parallel.shard_batch(b, mesh=mesh))
  assert_close(state.params, want.params, atol=1e-5)


def test_python_loop_equals_scan_with_batchnorm_convs():
  # Each chunk is normalised with its own statistics in both forms and the running
  # statistics are the mean of the chunks' updates: the two forms must agree.
  model = models.Encoder(
    models.ConvEncoder(filters=4, num_blocks=2), models.EmbeddingHead(8)
  )
  rng = np.random.default_rng(1)
  b = {
    "image": rng.random((16, 8, 8, 1), dtype=np.float32),
    "label": (np.arange(16) // 4).astype(np.int32),
  }
  loss = functools.partial(softmax.supcon_loss, temperature=0.1)

  def run(loop):
    # SGD, not Adam: a conv bias before BatchNorm has a zero gradient, whose rounding
    # noise Adam would scale up to a full step of either sign
    state = training.create_train_state(
      jax.random.key(0), model, optax.sgd(0.1), b["image"][:2]
    )
    step = gradcache.make_gradcache_step(model, loss, chunk_size=4, loop=loop)
    return two_steps(step, state, b, jit=loop == "scan")

  (want, want_m), (got, got_m) = run("scan"), run("python")
  assert_close(got.params, want.params, atol=1e-5)
  assert_close(got.batch_stats, want.batch_stats, atol=1e-5)
  np.testing.assert_allclose(got_m[1]["loss"], want_m[1]["loss"], rtol=1e-5)
  # the statistics moved from their initial values (mean 0, var 1)
  mean = jax.tree.leaves(got.batch_stats)[0]
  assert float(jnp.abs(mean).max()) > 1e-3


def test_bad_arguments_are_named():
  loss = softmax.supcon_loss
  with pytest.raises(ValueError, match="chunk_size"):
    gradcache.make_gradcache_step(MODEL, loss, chunk_size=0)
  with pytest.raises(ValueError, match="kind"):
    gradcache.make_gradcache_step(MODEL, loss, chunk_size=4, kind="pair")
  b = batch(n=30)
  step = gradcache.make_gradcache_step(MODEL, loss, chunk_size=4)
  with pytest.raises(ValueError, match="chunk_size 4 must divide the batch size 30"):
    step(state_for(b), b)
  with pytest.raises(KeyError, match="label"):
    step(state_for(b), {"image": b["image"]})
  with pytest.raises(ValueError, match="loop must be 'scan' or 'python'"):
    gradcache.make_gradcache_step(MODEL, loss, chunk_size=4, loop="unroll")
  with pytest.raises(ValueError, match="axis_name needs loop='scan'"):
    gradcache.make_gradcache_step(
      MODEL, loss, chunk_size=4, loop="python", axis_name="data"
    )
  b = batch()
  python = gradcache.make_gradcache_step(MODEL, loss, chunk_size=4, loop="python")
  with pytest.raises(TypeError, match="call it without jax.jit"):
    jax.jit(python)(state_for(b), b)

"""The same step on 1 device and on 8 simulated devices (``jax.jit`` over a mesh, the
default; ``shard_map`` and ``pmap`` for a step with an ``axis_name``): same global
batch, same parameters after three steps.

Tolerance: float32 throughout (no x64, default matmul precision, which on CPU is full
float32), ``rtol=1e-5`` with ``atol=1e-6`` for entries near zero: the 8-device sums
(cross-device means of gradients and BatchNorm statistics, gathered candidates) add
the same numbers in another order, so parameters differ by a few float32 ulps.
"""

import functools

import jax
import numpy as np
import optax
import pytest

from metriclearn import models, parallel, training
from metriclearn.losses import pair, proxy, softmax

AXIS = "batch"
N = 16  # the global batch: 2 examples per device
TX = optax.adam(1e-2)


def encoder(axis_name=None):
  # BatchNorm with axis_name: statistics over the global batch, as on one device. The
  # head has no bias: a pair loss of distances does not depend on it, its gradient is
  # 0 up to rounding, and Adam would turn that rounding (which the order of the
  # devices' sums decides) into full-size steps, a difference of no meaning.
  return models.Encoder(
    models.MLPEncoder(hidden=(8,), batch_norm=True, axis_name=axis_name),
    models.EmbeddingHead(4, normalize=False, use_bias=False),
  )


def pair_batches(s):
  rng = np.random.default_rng([0, s])
  x = lambda: rng.normal(size=(N, 5)).astype(np.float32)
  return {"x1": x(), "x2": x(), "similar": rng.integers(0, 2, N).astype(bool)}


def labelled_batches(s):
  rng = np.random.default_rng([1, s])
  labels = rng.integers(0, 4, N).astype(np.int32)
  labels[-1] = -1  # padding on the last device only: its share of anchors differs
  return {"image": rng.normal(size=(N, 5)).astype(np.float32), "label": labels}


PROXIES = np.random.default_rng(2).normal(size=(4, 4)).astype(np.float32)
CASES = {
  # kind, loss, batches, learned loss parameters, memory size
  "pair": (
    "pair",
    pair.sigmoid_pair_loss,
    pair_batches,
    {"scale": 1.0, "bias": 0.0},
    None,
  ),
  "ntxent": (
    "batch",
    functools.partial(softmax.ntxent_loss, temperature=0.5),
    labelled_batches,
    {},
    None,
  ),
  "proxy": (
    "proxy",
    functools.partial(proxy.arcface_loss, scale=8.0, margin=0.2),
    labelled_batches,
    {"proxies": PROXIES},
    None,
  ),
  "ntxent_memory": (
    "batch",
    functools.partial(softmax.ntxent_loss, temperature=0.5),
    labelled_batches,
    {},
    40,  # wraps around during the three steps
  ),
}


def initial_state(case):
  kind, _, batches, loss_params, memory_size = CASES[case]
  example = batches(0)[training.INPUT_KEYS[kind][0]][:2]  # one init compile for all
  return training.create_train_state(
    jax.random.PRNGKey(0),
    encoder(),
    TX,
    example,
    loss_params=loss_params,
    memory_size=memory_size,
  )


@functools.cache
def global_step(case):
  """The step written for the global batch (no axis_name): one device, or jit."""
  kind, loss, _, _, _ = CASES[case]
  return training.make_train_step(encoder(), loss, kind=kind)


@functools.cache
def single_device(case):
  batches = CASES[case][2]
  step = jax.jit(global_step(case))
  state, losses = initial_state(case), []
  for s in range(3):
    state, metrics = step(state, batches(s))
    losses.append(float(metrics["loss"]))
  return state, losses


@functools.cache
def multi_device_step(case):
  """One step function per case, so that its pmap / shard_map compiles are reused."""
  kind, loss, _, _, _ = CASES[case]
  return training.make_train_step(encoder(AXIS), loss, kind=kind, axis_name=AXIS)


def on_devices(case, mode):
  step, batches = multi_device_step(case), CASES[case][2]
  state, losses = initial_state(case), []
  if mode == "jit":  # the same global step, jitted over a mesh of the 8 devices
    mesh = parallel.make_mesh()
    run = parallel.jit_step(global_step(case), mesh, donate=True)
    state = parallel.replicate(state, mesh=mesh)
    place = functools.partial(parallel.shard_batch, mesh=mesh)
  elif mode == "pmap":
    run, state = parallel.pmap_step(step, donate=True), parallel.replicate(state)
    place = parallel.shard_batch
  else:
    mesh = parallel.make_mesh(AXIS)
    run = parallel.shard_map_step(step, mesh, donate=True)
    state = parallel.replicate(state, mesh=mesh)
    place = functools.partial(parallel.shard_batch, mesh=mesh)
  for s in range(3):
    state, metrics = run(state, place(batches(s)))
    losses.append(np.asarray(metrics["loss"]))
  return state, losses


def assert_states_close(got, want):
  fields = lambda s: (s.params, s.batch_stats, s.loss_params, s.opt_state, s.memory)
  assert jax.tree.structure(fields(got)) == jax.tree.structure(fields(want))
  paths = jax.tree_util.tree_leaves_with_path(fields(want))
  for (path, b), a in zip(paths, jax.tree.leaves(fields(got)), strict=True):
    np.testing.assert_allclose(
      np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=str(path)
    )
  assert int(got.step) == int(want.step) == 3


@pytest.mark.parametrize("mode", ["jit", "pmap", "shard_map"])
@pytest.mark.parametrize("case", CASES)
def test_three_steps_on_eight_devices_equal_one_device(case, mode):
  want, want_losses = single_device(case)
  got, losses = on_devices(case, mode)
  if mode == "pmap":  # every device holds the same state
    for leaf in jax.tree.leaves(got):
      np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[:1], leaf.shape))
    got = parallel.unreplicate(got)
    losses = [x[0] for x in losses]
  assert_states_close(got, want)
  np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
  if got.memory is not None:  # the gathered global batches were enqueued
    assert int(got.memory.pointer) == 3 * N % 40


@pytest.mark.parametrize("mode", ["jit", "pmap", "shard_map"])
def test_fit_on_eight_devices_checkpoints_a_single_device_state(mode, tmp_path):
  step = global_step("ntxent") if mode == "jit" else multi_device_step("ntxent")
  final = training.fit(  # the compiled step of the test above is reused
    step,
    initial_state("ntxent"),
    CASES["ntxent"][2],
    num_steps=3,
    parallel=mode,
    checkpoint_dir=tmp_path,
    save_every=2,
    progress=False,
  )
  want, _ = single_device("ntxent")
  assert_states_close(final, want)
  manager = training.checkpoint_manager(tmp_path)
  assert sorted(manager.all_steps()) == [2, 3]
  assert_states_close(
    training.restore_checkpoint(manager, initial_state("ntxent")), want
  )
  manager.close()

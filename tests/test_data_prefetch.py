"""Host-to-device prefetch and sharding over the 8 simulated CPU devices."""

import itertools
import threading
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from metriclearn import data, parallel


def _batches(n, size=16):
  for i in range(n):
    yield {"image": np.full((size, 3, 3, 1), i, np.float32), "label": np.arange(size)}


def test_prefetch_yields_every_batch_in_order_on_device():
  with data.prefetch_to_device(_batches(5), size=2) as it:
    out = list(it)
  assert [int(b["image"][0, 0, 0, 0]) for b in out] == [0, 1, 2, 3, 4]
  assert all(isinstance(b["image"], jax.Array) for b in out)
  np.testing.assert_array_equal(out[0]["label"], np.arange(16))


def test_prefetch_sharded_for_pmap_and_shard_map():
  mesh = Mesh(np.asarray(jax.devices()), ("batch",))
  with data.prefetch_to_device(_batches(2), put=parallel.shard_batch) as it:
    batch = next(it)
  assert batch["image"].shape == (8, 2, 3, 3, 1)
  sums = jax.pmap(lambda x: jnp.sum(x["label"]))(batch)
  np.testing.assert_array_equal(sums, np.arange(16).reshape(8, 2).sum(1))
  put = partial(parallel.shard_batch, mesh=mesh)
  with data.prefetch_to_device(_batches(2), put=put) as it:
    batch = next(it)
  assert batch["image"].shape == (16, 3, 3, 1)
  assert batch["label"].sharding == NamedSharding(mesh, P("batch"))
  assert len(batch["label"].addressable_shards) == 8
  total_of = lambda y: jax.lax.psum(jnp.sum(y), "batch")
  sharded = jax.shard_map(total_of, mesh=mesh, in_specs=P("batch"), out_specs=P())
  total = sharded(batch["label"])
  assert int(total) == sum(range(16))


def test_shard_batch_on_a_two_axis_mesh():
  mesh = Mesh(np.asarray(jax.devices()).reshape(4, 2), ("data", "model"))
  out = parallel.shard_batch({"x": np.ones((8, 2))}, mesh=mesh, axis_name="data")
  assert out["x"].sharding == NamedSharding(mesh, P("data"))
  with pytest.raises(ValueError, match="'nope'"):
    parallel.shard_batch({"x": np.ones((8, 2))}, mesh=mesh, axis_name="nope")


def test_indivisible_batch_names_the_key_and_shape():
  with pytest.raises(ValueError, match=r"batch\['label'\] of shape \(12,\).*8"):
    parallel.shard_batch({"image": np.ones((16, 2)), "label": np.ones(12)})
  mesh = Mesh(np.asarray(jax.devices()[:4]), ("batch",))
  with pytest.raises(ValueError, match=r"batch\['x'\] of shape \(6, 2\).*4"):
    parallel.shard_batch({"x": np.ones((6, 2))}, mesh=mesh)


def test_errors_in_the_source_reach_the_consumer():
  def failing():
    yield from _batches(1)
    raise OSError("disk gone")

  it = data.prefetch_to_device(failing())
  next(it)
  with pytest.raises(OSError, match="disk gone"):
    next(it)
  with pytest.raises(StopIteration):
    next(it)
  with pytest.raises(ValueError, match="size"):
    data.prefetch_to_device(_batches(1), size=0)


def test_close_stops_the_thread_of_an_endless_sampler():
  ds = data.ImageDataset(np.zeros((8, 2, 2, 1), np.uint8), np.arange(8) % 4)
  before = threading.active_count()
  it = data.prefetch_to_device(data.balanced_batches(ds, 2, 2, seed=0), size=2)
  batches = list(itertools.islice(it, 3))
  assert [b["image"].shape for b in batches] == [(4, 2, 2, 1)] * 3
  it.close()
  assert not it._thread.is_alive()
  assert threading.active_count() == before
  with pytest.raises(StopIteration):
    next(it)

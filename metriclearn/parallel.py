"""Devices and hosts: meshes, placement, and the train step on one device or many.

The primary multi-device path is ``jax.jit`` over a :class:`~jax.sharding.Mesh` with
named shardings (what JAX recommends): the step is written for the global batch, the
parameters are replicated and the batch is sharded over the mesh's data axis, and XLA
partitions the work (an in-batch loss sees every device's embeddings as negatives, a
BatchNorm averages over the global batch):

>>> mesh = make_mesh()                      # all devices, one axis "batch"
>>> step = jit_step(train_step, mesh)       # doctest: +SKIP
>>> state = replicate(state, mesh=mesh)     # doctest: +SKIP
>>> state, metrics = step(state, shard_batch(batch, mesh=mesh))  # doctest: +SKIP

A loss that needs explicit collectives (the blockwise ring, ``ring=True``) runs inside
the jitted step under ``shard_map``: :func:`shard_loss` wraps it with the global-batch
signature. A step built with an ``axis_name`` (per-device semantics, explicit ``pmean``)
runs under :func:`shard_map_step` or :func:`pmap_step` (``jax.pmap`` is in maintenance
mode; it stays supported as a thin wrapper over the same step).

Several hosts: :func:`initialize` starts ``jax.distributed`` (one process per host,
each with its local devices; the mesh spans all of them); :func:`shard_batch` then takes
each process's *local* part of the global batch and assembles the global array with
``jax.make_array_from_process_local_data``. ``examples/multihost.py`` runs two processes
on 127.0.0.1.

Input: :func:`prefetch_to_device` (a :class:`Prefetcher`) draws the next batches in a
background thread and places them (``put``: :func:`shard_batch` or ``device_put``) while
a step runs; :func:`metriclearn.training.fit` uses it.

>>> import numpy as np
>>> batches = iter([{"image": np.ones((8, 2)), "label": np.arange(8)}] * 3)
>>> with prefetch_to_device(batches) as it:
...   [type(b["image"]).__name__ for b in it]
['ArrayImpl', 'ArrayImpl', 'ArrayImpl']
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
  "DATA_AXIS",
  "Prefetcher",
  "initialize",
  "jit_step",
  "make_mesh",
  "pmap_step",
  "prefetch_to_device",
  "replicate",
  "shard_batch",
  "shard_loss",
  "shard_map_step",
  "unreplicate",
]

DATA_AXIS = "batch"
Batch = Mapping[str, Any]


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  local_device_count: int | None = None,
) -> None:
  """Starts ``jax.distributed`` for this process (call it first, before any JAX work).

  Without arguments ``jax.distributed.initialize`` reads the cluster's environment
  (SLURM, Open MPI, a Cloud TPU pod). On CPU (tests, a laptop) it selects the gloo
  collectives, without which CPU devices of different processes cannot talk, and
  ``local_device_count`` simulated devices; on GPU and TPU the defaults are right (one
  process per host with its local accelerators).

  Args:
    coordinator_address: ``host:port`` of process 0, the same on every process.
    num_processes: the number of processes.
    process_id: this process, ``0 <= process_id < num_processes``.
    local_device_count: CPU only: simulated devices in this process.
  """
  if process_id is not None and num_processes is not None:
    if not 0 <= process_id < num_processes:
      raise ValueError(
        f"process_id must be in [0, {num_processes}), got {process_id} "
        f"(num_processes {num_processes})."
      )
  # (only the CPU backend reads these two; GPUs and TPUs have their own collectives)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if local_device_count is not None:
    jax.config.update("jax_num_cpu_devices", int(local_device_count))
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def make_mesh(axis_name: str = DATA_AXIS, devices: Any = None) -> Mesh:
  """A one-axis ``Mesh`` over ``devices`` (default: every device of every process)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (axis_name,))


def replicate(tree: Any, *, mesh: Mesh | None = None) -> Any:
  """Copies a state to every device: replicated on ``mesh`` (every process passes the
  same values), or stacked over the local devices for ``pmap`` (``mesh=None``)."""
  if mesh is not None:  # a copy: a donating step must not free the caller's arrays
    copy = jax.tree.map(lambda x: np.array(x, copy=True), tree)
    return jax.device_put(copy, NamedSharding(mesh, P()))
  devices = jax.local_devices()
  sharding = NamedSharding(make_mesh("_replicas", devices), P("_replicas"))
  stack = lambda x: jnp.broadcast_to(jnp.asarray(x), (len(devices), *jnp.shape(x)))
  return jax.device_put(jax.tree.map(stack, tree), sharding)


def unreplicate(tree: Any) -> Any:
  """The first device's copy of a ``pmap``-replicated tree."""
  return jax.tree.map(lambda x: x[0], tree)


def _check_divisible(batch: Batch, k: int, where: str) -> None:
  for key, x in batch.items():
    shape = np.shape(x)
    if not shape or shape[0] % k:
      raise ValueError(
        f"batch[{key!r}] of shape {shape} does not split over {k} {where}: the "
        f"leading (batch) size must be a multiple of {k}."
      )


def shard_batch(
  batch: Batch, *, mesh: Mesh | None = None, axis_name: str | None = None
) -> dict[str, jax.Array]:
  """Puts a host batch on the devices, split along its leading (batch) axis.

  - ``mesh=None`` (for ``jax.pmap``): every array ``[n, ...]`` becomes
    ``[devices, n / devices, ...]`` over the local devices, one slice per device.
  - ``mesh`` (for ``jax.jit`` / ``jax.shard_map``): global arrays with a
    ``NamedSharding`` that splits the batch axis over ``mesh``'s ``axis_name``
    (default: its first axis). With several processes, ``batch`` is this process's
    part of the global batch (the processes' parts, in process order, make it up).

  Raises:
    ValueError: the size is not a multiple of the (local) devices of the axis, naming
      the key and shape.
  """
  if mesh is None:
    devices = jax.local_devices()
    _check_divisible(batch, len(devices), "local devices")
    sharding = NamedSharding(Mesh(np.asarray(devices), ("devices",)), P("devices"))
    k = len(devices)
    host = {key: np.reshape(x, (k, -1, *np.shape(x)[1:])) for key, x in batch.items()}
    return jax.device_put(host, sharding)
  axis_name = mesh.axis_names[0] if axis_name is None else axis_name
  if axis_name not in mesh.axis_names:
    raise ValueError(f"axis_name {axis_name!r} is not an axis of {mesh.axis_names}.")
  sharding = NamedSharding(mesh, P(axis_name))
  if jax.process_count() == 1:
    _check_divisible(batch, mesh.shape[axis_name], f"devices of axis {axis_name!r}")
    return jax.device_put(dict(batch), sharding)
  local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  _check_divisible(batch, local, f"local devices of axis {axis_name!r}")
  return {
    key: jax.make_array_from_process_local_data(sharding, np.asarray(x))
    for key, x in batch.items()
  }


def _axis_name_of(step: Callable) -> str:
  axis_name = getattr(step, "axis_name", None)
  if axis_name is None:
    raise ValueError(
      "this step was built without an axis_name; build it with "
      "make_train_step(..., axis_name='batch') to run it under pmap or shard_map "
      "(or run it as it is with jit_step over a mesh)."
    )
  return axis_name


@functools.cache  # one compiled function per (step, mesh, donate)
def jit_step(step: Callable, mesh: Mesh, *, donate: bool = False) -> Callable:
  """``step`` (built without an ``axis_name``: global-batch semantics) under
  ``jax.jit`` on ``mesh``: the state replicated, the batch sharded along the mesh's
  first axis, the metrics replicated."""
  axis_name = getattr(step, "axis_name", None)
  if axis_name is not None:
    raise ValueError(
      f"this step was built with axis_name={axis_name!r} (per-device semantics): "
      "run it with shard_map_step or pmap_step, or build it without an axis_name."
    )
  replicated = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P(mesh.axis_names[0]))
  return jax.jit(
    step,
    in_shardings=(replicated, data),
    out_shardings=(replicated, replicated),
    donate_argnums=(0,) * donate,
  )


def pmap_step(step: Callable, *, donate: bool = False) -> Callable:
  """``step`` (built with an ``axis_name``) under ``jax.pmap``: takes a
  ``replicate``-d state and a ``shard_batch``-ed batch (``mesh=None``)."""
  return jax.pmap(step, axis_name=_axis_name_of(step), donate_argnums=(0,) * donate)


@functools.cache  # one compiled function per (step, mesh, donate), as jax.pmap does
def shard_map_step(step: Callable, mesh: Mesh, *, donate: bool = False) -> Callable:
  """``step`` (built with an ``axis_name``) under ``jax.jit(jax.shard_map(...))``
  over ``mesh``: a state replicated on the mesh, a batch sharded along its axis."""
  axis_name = _axis_name_of(step)
  if mesh.axis_names != (axis_name,):
    raise ValueError(f"mesh axes {mesh.axis_names} must be ({axis_name!r},).")
  # check_vma=False: gradients of the replicated parameters stay per-device (as under
  # pmap) and the step's own pmean averages them.
  mapped = jax.shard_map(
    step,
    mesh=mesh,
    in_specs=(P(), P(axis_name)),
    out_specs=(P(), P()),
    check_vma=False,
  )
  return jax.jit(mapped, donate_argnums=(0,) * donate)


def shard_loss(loss: Callable, mesh: Mesh, **options: Any) -> Callable:
  """A batch-form loss with the global-batch signature, run per device under
  ``shard_map`` with ``axis_name`` set: for losses that need explicit collectives
  inside a step jitted over ``mesh`` (e.g. ``ring=True``), whose other devices'
  candidates come by ``ppermute``. ``loss(embeddings, labels, **kwargs) -> [n]``.

  >>> import metriclearn
  >>> mesh = make_mesh()
  >>> ring = shard_loss(metriclearn.losses.supcon_loss, mesh, ring=True, block_size=2)
  >>> e = jnp.asarray(np.random.default_rng(0).normal(size=(16, 4)), jnp.float32)
  >>> y = jnp.arange(16) % 4
  >>> bool(jnp.allclose(ring(e, y), metriclearn.losses.supcon_loss(e, y), atol=1e-5))
  True
  """
  axis_name = mesh.axis_names[0]

  def per_device(embeddings, labels, **kwargs):
    return loss(embeddings, labels, axis_name=axis_name, **options, **kwargs)

  def global_loss(embeddings, labels, **kwargs):
    mapped = jax.shard_map(
      functools.partial(per_device, **kwargs),
      mesh=mesh,
      in_specs=(P(axis_name), P(axis_name)),
      out_specs=P(axis_name),
    )
    return mapped(embeddings, labels)

  return global_loss


# ------------------------------------------------------------------ input prefetch


class _Failure:
  def __init__(self, error: BaseException):
    self.error = error


_END = object()


def _produce(source, put, out: queue.Queue, stop: threading.Event) -> None:
  def offer(item) -> bool:
    while not stop.is_set():
      try:
        out.put(item, timeout=0.05)
        return True
      except queue.Full:
        continue
    return False

  try:
    for batch in source:
      if stop.is_set() or not offer(put(batch)):
        return
    offer(_END)
  except BaseException as e:  # noqa: BLE001 - handed to the consumer
    offer(_Failure(e))


class Prefetcher(Iterator[Any]):
  """An iterator over device batches, filled by a background thread.

  Use as a context manager (or call :meth:`close`) to stop the thread of an endless
  source; an error in the source or in ``put`` is raised by ``next``.
  """

  def __init__(self, batches: Iterable[Batch], size: int, put: Callable[[Batch], Any]):
    if int(size) != size or size < 1:
      raise ValueError(f"size must be a positive integer, got {size!r}.")
    self._queue: queue.Queue = queue.Queue(maxsize=int(size))
    self._stop = threading.Event()
    self._done = False
    self._thread = threading.Thread(
      target=_produce,
      args=(iter(batches), put, self._queue, self._stop),
      name="metriclearn-prefetch",
      daemon=True,
    )
    self._thread.start()

  def __next__(self) -> Any:
    if self._done:
      raise StopIteration
    item = self._queue.get()
    if item is _END or isinstance(item, _Failure):
      self._done = True
      self.close()
      if isinstance(item, _Failure):
        raise item.error
      raise StopIteration
    return item

  def close(self) -> None:
    """Stops the background thread and drops the batches it holds."""
    self._done = True
    self._stop.set()
    while True:
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    if self._thread is not threading.current_thread():
      self._thread.join(timeout=10)

  def __enter__(self) -> Prefetcher:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()

  def __del__(self) -> None:
    stop = getattr(self, "_stop", None)
    if stop is not None:
      stop.set()


def prefetch_to_device(
  batches: Iterable[Batch],
  size: int = 2,
  *,
  put: Callable[[Batch], Any] | None = None,
) -> Prefetcher:
  """Keeps the next ``size`` batches on their way to the device while a step runs.

  A background thread draws host batches (running the sampler), transfers them with
  ``put`` and queues up to ``size`` device batches.

  Args:
    batches: an iterable of host batches (e.g. a sampler from
      :mod:`metriclearn.data.samplers`).
    size: device batches kept ready (2 overlaps one transfer with one step).
    put: host batch -> device batch; default ``jax.device_put`` (the default device).
      Use ``metriclearn.parallel.shard_batch`` (pmap layout) or
      ``partial(parallel.shard_batch, mesh=mesh)``.

  Returns:
    A :class:`Prefetcher`: an iterator, and a context manager that stops the thread.
  """
  return Prefetcher(batches, size, jax.device_put if put is None else put)

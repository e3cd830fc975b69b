"""Background prefetch: the next batches drawn and put on the devices while a step runs
(the placement itself, e.g. a batch sharded over a mesh, is
:func:`metriclearn.parallel.shard_batch`).

>>> import numpy as np
>>> batches = iter([{"image": np.ones((8, 2)), "label": np.arange(8)}] * 3)
>>> with prefetch_to_device(batches) as it:
...   [type(b["image"]).__name__ for b in it]
['ArrayImpl', 'ArrayImpl', 'ArrayImpl']
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax

__all__ = [
  "Prefetcher",
  "prefetch_to_device",
]

Batch = Mapping[str, Any]


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

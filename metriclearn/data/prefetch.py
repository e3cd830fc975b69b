"""Background prefetch, re-exported from :mod:`metriclearn.parallel` (where device
placement lives): :class:`~metriclearn.parallel.Prefetcher` and
:func:`~metriclearn.parallel.prefetch_to_device` draw the next batches and put them on
the devices while a step runs.
"""

from metriclearn.parallel import Prefetcher, prefetch_to_device

__all__ = [
  "Prefetcher",
  "prefetch_to_device",
]

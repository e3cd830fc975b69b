"""Scalars for TensorBoard: event files written with the standard library only.

An event file is a TFRecord file of ``Event`` protocol buffers (TensorBoard's
``event.proto``); each record is framed as ``uint64 length, uint32 masked CRC-32C of
the length, data, uint32 masked CRC-32C of the data``. :class:`SummaryWriter` encodes
the few messages a scalar needs by hand, so writing needs neither TensorFlow nor the
``tensorboard`` package; reading them is TensorBoard's job
(``tensorboard --logdir DIR``). :func:`metriclearn.training.fit` writes its log lines
here too when given a ``tensorboard_dir``.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d, SummaryWriter(d) as w:
...   w.scalars(10, {"loss": 0.5})
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Mapping

__all__ = ["SummaryWriter", "crc32c"]


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), the checksum of TFRecord framing: crc32c(b"123456789")
  is 0xE3069283."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
  return _varint(number << 3 | wire) + payload


def _bytes(number: int, data: bytes) -> bytes:  # length-delimited (strings, messages)
  return _field(number, 2, _varint(len(data)) + data)


def _event(wall_time: float, step: int, **fields: bytes) -> bytes:
  """Event: wall_time = 1 (double), step = 2 (int64), file_version = 3,
  summary = 5, session_log = 6."""
  out = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
  for number, name in ((3, "file_version"), (5, "summary"), (6, "session_log")):
    if name in fields:
      out += _bytes(number, fields[name])
  return out


class SummaryWriter:
  """Appends scalars to a new event file in ``logdir`` (created if missing).

  Args:
    logdir: the run's TensorBoard folder.
    start_step: a run resumed at this step: the file begins with a SessionLog START
      at it, so that TensorBoard drops the points an earlier run wrote after it.
  """

  def __init__(self, logdir: str | os.PathLike, start_step: int | None = None):
    os.makedirs(logdir, exist_ok=True)
    now = time.time()
    name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.0"
    self.path = os.path.join(os.fspath(logdir), name)
    self._file = open(self.path, "ab")  # noqa: SIM115 (closed by close())
    self._write(_event(now, 0, file_version=b"brain.Event:2"))
    if start_step is not None:
      self._write(_event(now, int(start_step), session_log=_field(1, 0, _varint(1))))
    self.flush()

  def _write(self, data: bytes) -> None:
    length = struct.pack("<Q", len(data))
    self._file.write(length + struct.pack("<I", _masked(crc32c(length))))
    self._file.write(data + struct.pack("<I", _masked(crc32c(data))))

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    """One event at ``step`` with a ``simple_value`` per tag."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}.")
    summary = b"".join(
      _bytes(1, _bytes(1, tag.encode()) + _field(2, 5, struct.pack("<f", value)))
      for tag, value in values.items()
    )
    self._write(_event(time.time(), int(step), summary=summary))
    self.flush()

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()

  def __enter__(self) -> SummaryWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

"""TensorBoard event files: read back by a decoder written here from the formats'
specifications (TFRecord framing with a bitwise CRC-32C, the protobuf wire format of
TensorBoard's event.proto / summary.proto), not by the writer's own code."""

import struct

import numpy as np
import pytest

from metriclearn import summaries


def crc32c_bitwise(data: bytes) -> int:
  """CRC-32C bit by bit (reflected polynomial 0x82F63B78), no table."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
  return crc ^ 0xFFFFFFFF


def masked(crc):  # TFRecord: rotate right by 15, add a constant
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records(path):
  """TFRecord: [uint64 length][uint32 masked crc(length)][data][uint32 masked crc]."""
  blob, out, at = open(path, "rb").read(), [], 0
  while at < len(blob):
    head = blob[at : at + 8]
    (n,) = struct.unpack("<Q", head)
    assert struct.unpack("<I", blob[at + 8 : at + 12])[0] == masked(
      crc32c_bitwise(head)
    )
    data = blob[at + 12 : at + 12 + n]
    (crc,) = struct.unpack("<I", blob[at + 12 + n : at + 16 + n])
    assert crc == masked(crc32c_bitwise(data))
    out.append(data)
    at += 16 + n
  return out


def fields(msg):
  """Protobuf wire format -> {field number: [values]} (varint, 64-bit, bytes,
  32-bit; fixed-width values left as bytes)."""
  out, at = {}, 0

  def varint():
    nonlocal at
    value, shift = 0, 0
    while True:
      byte = msg[at]
      at += 1
      value |= (byte & 0x7F) << shift
      shift += 7
      if not byte & 0x80:
        return value

  while at < len(msg):
    key = varint()
    number, wire = key >> 3, key & 7
    if wire == 0:
      value = varint()
    elif wire == 1:
      value, at = msg[at : at + 8], at + 8
    elif wire == 2:
      n = varint()
      value, at = msg[at : at + n], at + n
    elif wire == 5:
      value, at = msg[at : at + 4], at + 4
    else:
      raise AssertionError(f"wire type {wire}")
    out.setdefault(number, []).append(value)
  return out


def scalars(path):
  """[(step, {tag: value})] of the Summary events; and the SessionLog steps."""
  points, starts = [], []
  for data in records(path):
    event = fields(data)
    step = event.get(2, [0])[0]  # Event.step = 2
    if 6 in event:  # Event.session_log = 6, SessionLog.status = 1 (START = 1)
      assert fields(event[6][0])[1] == [1]
      starts.append(step)
    if 5 in event:  # Event.summary = 5 -> Summary.value = 1 (repeated)
      values = {}
      for value in map(fields, fields(event[5][0])[1]):
        tag = value[1][0].decode()  # Value.tag = 1
        (values[tag],) = struct.unpack("<f", value[2][0])  # Value.simple_value = 2
      points.append((step, values))
  return points, starts


def test_crc32c_matches_the_published_check_values():
  # RFC 3720 (iSCSI) B.4 and the CRC catalogue's check value for "123456789".
  assert summaries.crc32c(b"123456789") == 0xE3069283
  assert summaries.crc32c(bytes(32)) == 0x8A9136AA
  assert summaries.crc32c(b"\xff" * 32) == 0x62A8AB43
  data = bytes(range(256)) * 3
  assert summaries.crc32c(data) == crc32c_bitwise(data)


def test_scalars_read_back_with_their_steps_and_the_file_version(tmp_path):
  with summaries.SummaryWriter(tmp_path, start_step=40) as w:
    w.scalars(50, {"loss": 0.25, "eval/map_at_r": 0.5})
    w.scalars(60, {"loss": 1e-3})
  (path,) = tmp_path.iterdir()
  assert path.name.startswith("events.out.tfevents.")
  first = fields(records(path)[0])
  assert first[3] == [b"brain.Event:2"]  # Event.file_version = 3
  points, starts = scalars(path)
  assert starts == [40]  # TensorBoard drops an earlier run's points after step 40
  assert [s for s, _ in points] == [50, 60]
  assert points[0][1] == {"loss": 0.25, "eval/map_at_r": 0.5}
  np.testing.assert_allclose(points[1][1]["loss"], 1e-3, rtol=1e-7)  # float32
  with pytest.raises(ValueError, match="step must be >= 0"):
    with summaries.SummaryWriter(tmp_path / "bad") as w:
      w.scalars(-1, {"loss": 1.0})

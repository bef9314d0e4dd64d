"""A TensorBoard event file, written by hand: TFRecord framing around `Event` protobuf
messages, so a job's curves open in TensorBoard without TensorFlow on the server.

TFRecord: each record is its length (uint64, little-endian), the masked CRC-32C of those
8 bytes (uint32), the data, and the masked CRC-32C of the data. The messages, from
tensorflow/core/util/event.proto and framework/summary.proto, field numbers as there:
  Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
            Summary summary = 5; }
  Summary { repeated Value value = 1; }
  Value   { string tag = 1; float simple_value = 2; }
TensorBoard reads `simple_value` as a scalar (its data_compat layer), as it reads
tensorboardX's files.
"""

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass

FILE_VERSION = b"brain.Event:2"


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
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return b"".join((length, struct.pack("<I", masked_crc32c(length)), data,
                     struct.pack("<I", masked_crc32c(data))))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _bytes_field(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def _value(tag: str, value: float) -> bytes:
    return _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value)


def event(wall_time: float, step: int | None = None, *, file_version: bytes | None = None,
          scalars: dict[str, float] | None = None) -> bytes:
    """One serialized Event message."""
    out = _key(1, 1) + struct.pack("<d", wall_time)
    if step is not None:
        out += _key(2, 0) + _varint(step)
    if file_version is not None:
        out += _bytes_field(3, file_version)
    if scalars:
        summary = b"".join(_bytes_field(1, _value(tag, v)) for tag, v in scalars.items())
        out += _bytes_field(5, summary)
    return out


@dataclass(frozen=True)
class Scalars:
    step: int
    wall_time: float  # seconds since the epoch
    values: dict[str, float]  # tag -> value; non-finite values are left out


def event_file(points: Iterable[Scalars], created: float) -> bytes:
    """The whole file: the file-version event first, then one event per step."""
    out = [record(event(created, file_version=FILE_VERSION))]
    for point in points:
        values = {t: v for t, v in point.values.items() if math.isfinite(v)}
        if values:
            out.append(record(event(point.wall_time, point.step, scalars=values)))
    return b"".join(out)

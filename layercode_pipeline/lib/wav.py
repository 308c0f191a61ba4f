"""WAV (RIFF/WAVE, PCM) headers: write them for the simulator, check them for downloads."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


class InvalidWav(ValueError):
    pass


@dataclass(frozen=True)
class WavInfo:
    sample_rate: int
    channels: int
    bits_per_sample: int
    data_bytes: int
    file_bytes: int

    @property
    def duration_s(self) -> float:
        frame = self.channels * self.bits_per_sample // 8
        return self.data_bytes / frame / self.sample_rate if frame and self.sample_rate else 0.0


def wav_header(data_bytes: int, sample_rate: int = 8000, channels: int = 1, bits: int = 16) -> bytes:
    block_align = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block_align,
                                    block_align, bits)
            + b"data" + struct.pack("<I", data_bytes))


def read_wav_info(fh: BinaryIO, file_bytes: int) -> WavInfo:
    """Check that the RIFF header, the chunk sizes and the file size agree."""
    head = fh.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise InvalidWav("not a RIFF/WAVE file")
    riff_size = struct.unpack("<I", head[4:8])[0]
    if riff_size + 8 != file_bytes:
        raise InvalidWav(f"RIFF header says {riff_size + 8} bytes, file has {file_bytes} (truncated?)")
    fmt: tuple[int, ...] | None = None
    pos = 12
    while pos + 8 <= file_bytes:
        fh.seek(pos)
        chunk_id, chunk_size = struct.unpack("<4sI", fh.read(8))
        if chunk_id == b"fmt ":
            if chunk_size < 16:
                raise InvalidWav("fmt chunk too short")
            fmt = struct.unpack("<HHIIHH", fh.read(16))
        elif chunk_id == b"data":
            if fmt is None:
                raise InvalidWav("data chunk before fmt chunk")
            if pos + 8 + chunk_size > file_bytes:
                raise InvalidWav(f"data chunk claims {chunk_size} bytes, only {file_bytes - pos - 8} present")
            _, channels, sample_rate, _, _, bits = fmt
            if channels < 1 or sample_rate < 1 or bits not in (8, 16, 24, 32):
                raise InvalidWav(f"unsupported format: {channels} ch, {sample_rate} Hz, {bits} bit")
            return WavInfo(sample_rate, channels, bits, chunk_size, file_bytes)
        pos += 8 + chunk_size + (chunk_size & 1)
    raise InvalidWav("no data chunk")


def inspect_wav(path: Path) -> WavInfo:
    with path.open("rb") as fh:
        return read_wav_info(fh, path.stat().st_size)

"""WAV (RIFF/WAVE) headers: write them for the simulator, check them for downloads.

Layercode does not document its recording format (contract section 5): expect 16-bit PCM at
8 kHz (telephony) or 16 kHz (web), possibly 8-bit mu-law, and a streamed file whose RIFF or
data size is a placeholder (0 or 0xFFFFFFFF) because the writer did not know the length when
it sent the header. What can be checked is checked: the chunk layout, the format, and the
declared sizes against the bytes received when they are real sizes. A placeholder data size
means "runs to the end of the file", which is complete by construction (the download itself
checks the transfer's own length).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

PCM = 1
MU_LAW = 7
A_LAW = 6
EXTENSIBLE = 0xFFFE
PLACEHOLDER_SIZES = (0, 0xFFFFFFFF)
FORMAT_NAMES = {PCM: "pcm", MU_LAW: "mulaw", A_LAW: "alaw", EXTENSIBLE: "extensible"}


class InvalidWav(ValueError):
    pass


# What a recording's header may declare: telephony's 8 kHz up to studio rates, a few channels,
# and a handful of chunks before the samples. Anything else is refused as invalid before a
# byte is decoded: a header of 4,294,967,295 Hz made each block of the audio checks the whole
# file (13 times its size in memory), one of 1 Hz made every sample its own window (minutes of
# CPU), and a file of millions of 8-byte chunks made the chunk walk minutes long.
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 8
MAX_CHUNKS = 64


@dataclass(frozen=True)
class WavInfo:
    sample_rate: int
    channels: int
    bits_per_sample: int
    data_bytes: int
    file_bytes: int
    format_tag: int = PCM
    size_placeholder: bool = False  # the header carried 0 / 0xFFFFFFFF for a length it did not know
    data_offset: int = 44  # where the samples start in the file

    @property
    def frames(self) -> int:
        frame = self.channels * self.bits_per_sample // 8
        return self.data_bytes // frame if frame else 0

    @property
    def encoding(self) -> str:
        return FORMAT_NAMES.get(self.format_tag, f"format-{self.format_tag}")

    @property
    def duration_s(self) -> float:
        frame = self.channels * self.bits_per_sample // 8
        return self.data_bytes / frame / self.sample_rate if frame and self.sample_rate else 0.0


def wav_header(
    data_bytes: int,
    sample_rate: int = 8000,
    channels: int = 1,
    bits: int = 16,
    *,
    format_tag: int = PCM,
    placeholder: int | None = None,
) -> bytes:
    """A canonical 44-byte header; `placeholder` (0 or 0xFFFFFFFF) replaces both sizes, as a
    streaming writer that does not know the length yet would."""
    block_align = channels * bits // 8
    riff_size = 36 + data_bytes if placeholder is None else placeholder
    data_size = data_bytes if placeholder is None else placeholder
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, format_tag, channels, sample_rate, sample_rate * block_align, block_align, bits)
        + b"data"
        + struct.pack("<I", data_size)
    )


def read_wav_info(fh: BinaryIO, file_bytes: int) -> WavInfo:
    """Check the RIFF layout, the format, and the declared sizes against the file's size."""
    head = fh.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise InvalidWav("not a RIFF/WAVE file")
    riff_size = struct.unpack("<I", head[4:8])[0]
    riff_placeholder = riff_size in PLACEHOLDER_SIZES
    if not riff_placeholder and riff_size + 8 != file_bytes:
        raise InvalidWav(f"RIFF header says {riff_size + 8} bytes, file has {file_bytes} (truncated?)")
    fmt: tuple[int, ...] | None = None
    pos = 12
    chunks = 0
    while pos + 8 <= file_bytes:
        chunks += 1
        if chunks > MAX_CHUNKS:
            raise InvalidWav(f"more than {MAX_CHUNKS} chunks before the data chunk")
        fh.seek(pos)
        chunk_id, chunk_size = struct.unpack("<4sI", fh.read(8))
        if chunk_id == b"fmt ":
            if chunk_size < 16:
                raise InvalidWav("fmt chunk too short")
            fmt = struct.unpack("<HHIIHH", fh.read(16))
        elif chunk_id == b"data":
            if fmt is None:
                raise InvalidWav("data chunk before fmt chunk")
            available = file_bytes - pos - 8
            data_placeholder = chunk_size in PLACEHOLDER_SIZES
            if data_placeholder:
                chunk_size = available  # "runs to the end of the file"
            elif chunk_size > available:
                raise InvalidWav(f"data chunk claims {chunk_size} bytes, only {available} present")
            format_tag, channels, sample_rate, _, block_align, bits = fmt
            if format_tag not in FORMAT_NAMES:
                raise InvalidWav(f"unsupported encoding (format tag {format_tag})")
            if not (
                1 <= channels <= MAX_CHANNELS and MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE
            ) or bits not in (
                8,
                16,
                24,
                32,
            ):
                raise InvalidWav(f"unsupported format: {channels} ch, {sample_rate} Hz, {bits} bit")
            if format_tag in (MU_LAW, A_LAW) and bits != 8:
                raise InvalidWav(f"{FORMAT_NAMES[format_tag]} must be 8 bit, header says {bits}")
            if block_align and chunk_size % block_align and not data_placeholder:
                raise InvalidWav(f"data size {chunk_size} is not a whole number of {block_align}-byte frames")
            return WavInfo(
                sample_rate,
                channels,
                bits,
                chunk_size,
                file_bytes,
                format_tag,
                riff_placeholder or data_placeholder,
                data_offset=pos + 8,
            )
        if chunk_size in PLACEHOLDER_SIZES and chunk_id != b"data":
            raise InvalidWav(f"chunk {chunk_id!r} has a placeholder size before the data chunk")
        pos += 8 + chunk_size + (chunk_size & 1)
    raise InvalidWav("no data chunk")


def inspect_wav(path: Path) -> WavInfo:
    with path.open("rb") as fh:
        return read_wav_info(fh, path.stat().st_size)

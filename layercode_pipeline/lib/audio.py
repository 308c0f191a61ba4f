"""What a recording's samples say, without a model: its real length, how much of it is
silence, the longest silence, how much is clipped, and how loud it is.

The samples are decoded by libsndfile (`soundfile`) as raw audio from the data chunk that
`wav.read_wav_info` located, with the encoding that header declared. Decoding from the
header's own numbers (not libsndfile's WAV parser) keeps streamed files whose header sizes
are placeholders readable: libsndfile reads a data size of 0 as "no samples".

The file is read in blocks, so memory stays bounded whatever the recording's length. Levels
are in dBFS: 0 is the loudest a sample can be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from layercode_pipeline.lib.wav import A_LAW, EXTENSIBLE, MU_LAW, PCM, InvalidWav, WavInfo

WINDOW_S = 0.02  # silence is judged per 20 ms window, the usual speech-analysis frame
SILENCE_DBFS = -50.0  # a window quieter than this is silence (line noise sits well below speech)
CLIPPED_LEVEL = 0.999  # a sample at (or within 0.1% of) full scale is clipped
FLOOR_DBFS = -120.0  # the level reported for digital silence, where the logarithm has no value
BLOCK_WINDOWS = 500  # windows decoded at a time (10 s of audio)
# a block is never more frames than this, whatever the header's rate and channels: a block's
# arrays (float32 samples, their float64 squares, |x|) cost about 13 times its bytes on disk
MAX_BLOCK_FRAMES = 1 << 17
MEASURE_DEADLINE_S = 60.0  # a recording whose samples take longer than this is left unmeasured

# What the warning checks call a problem. The marts' flags use the same figures, as dbt vars
# in dbt_project.yml (tests/test_recording_store.py holds the two equal).
SILENT_SHARE = 0.98  # a recording this much silence is silent
CLIPPED_SHARE = 0.001  # a recording with more than 0.1% of its samples at full scale is clipped
LENGTH_TOLERANCE_S = 3.0  # the file's length may differ from Layercode's recording_duration by this much

_SUBTYPES = {(PCM, 8): "PCM_U8", (PCM, 16): "PCM_16", (PCM, 24): "PCM_24", (PCM, 32): "PCM_32"}
# the largest magnitude each companded code decodes to (G.711: 8031/8192 for mu-law, 4032/4096
# for A-law): "full scale" for clipping, where linear PCM's is 1.0
_FULL_SCALE = {"ULAW": 32124 / 32768, "ALAW": 32256 / 32768}


@dataclass(frozen=True)
class AudioStats:
    duration_s: float
    silence_share: float  # share of 20 ms windows below SILENCE_DBFS
    longest_silence_s: float
    clipped_share: float  # share of samples at full scale
    loudness_dbfs: float  # RMS level of the whole recording
    peak_dbfs: float


def _subtype(info: WavInfo) -> str:
    if info.format_tag == MU_LAW:
        return "ULAW"
    if info.format_tag == A_LAW:
        return "ALAW"
    tag = PCM if info.format_tag == EXTENSIBLE else info.format_tag  # extensible: integer PCM by far most often
    try:
        return _SUBTYPES[(tag, info.bits_per_sample)]
    except KeyError:
        raise InvalidWav(f"cannot decode {info.encoding} at {info.bits_per_sample} bit") from None


def _dbfs(level: float) -> float:
    return round(max(FLOOR_DBFS, 20 * math.log10(level)) if level > 0 else FLOOR_DBFS, 2)


class MeasureTimeout(TimeoutError):
    pass


def _longest_run(quiet, carried: int) -> tuple[int, int]:
    """The longest run of True in `quiet` (a numpy bool array) counting a run of `carried`
    before it, and the run still open at its end: vectorised (a Python loop per window cost
    minutes on a long file)."""
    import numpy as np

    if not len(quiet):
        return carried, carried
    padded = np.concatenate(([False], quiet, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    starts, ends = edges[0::2], edges[1::2]
    lengths = ends - starts
    if len(starts) and starts[0] == 0:
        lengths[0] += carried
    longest = int(lengths.max()) if len(lengths) else 0
    open_run = int(lengths[-1]) if len(ends) and ends[-1] == len(quiet) else 0
    return max(longest, carried if not quiet[0] else 0), open_run


def analyse_wav(path: Path, info: WavInfo, deadline_s: float = MEASURE_DEADLINE_S) -> AudioStats:
    """The recording's figures, decoded block by block from `info.data_offset` (each block at
    most MAX_BLOCK_FRAMES: memory bounded whatever the header says), within `deadline_s`
    (MeasureTimeout past it)."""
    import time

    import numpy as np
    import soundfile

    give_up_at = time.monotonic() + deadline_s
    subtype = _subtype(info)
    clip_at = CLIPPED_LEVEL * _FULL_SCALE.get(subtype, 1.0)
    window = max(1, round(info.sample_rate * WINDOW_S))
    silence_power = 10 ** (SILENCE_DBFS / 10)
    windows = silent = run = longest = clipped = 0
    total_power = 0.0
    peak = 0.0
    with path.open("rb") as fh:
        fh.seek(info.data_offset)
        with soundfile.SoundFile(
            fh,
            mode="r",
            format="RAW",
            subtype=subtype,
            samplerate=info.sample_rate,
            channels=info.channels,
            endian="LITTLE",
        ) as sound:
            blocksize = min(window * BLOCK_WINDOWS, max(window, MAX_BLOCK_FRAMES // window * window))
            for block in sound.blocks(blocksize=blocksize, dtype="float32", always_2d=True, frames=info.frames):
                if not len(block):
                    break
                if time.monotonic() > give_up_at:
                    raise MeasureTimeout(f"the samples took over {deadline_s:g} s to measure")
                squares = np.square(block, dtype=np.float64)
                total_power += float(squares.sum())
                peak = max(peak, float(np.abs(block).max()))
                clipped += int(np.count_nonzero(np.abs(block) >= clip_at))
                per_frame = squares.mean(axis=1)
                whole = len(per_frame) // window * window
                powers = per_frame[:whole].reshape(-1, window).mean(axis=1)
                if whole < len(per_frame):  # the recording's last, partial window
                    powers = np.append(powers, per_frame[whole:].mean())
                quiet = powers < silence_power
                windows += len(quiet)
                silent += int(quiet.sum())
                # the longest run of quiet windows, carried across blocks
                block_longest, run = _longest_run(quiet, run)
                longest = max(longest, block_longest)
    samples = info.frames * info.channels
    return AudioStats(
        duration_s=round(info.frames / info.sample_rate, 3),
        silence_share=round(silent / windows, 4) if windows else 1.0,
        longest_silence_s=round(min(longest * window, info.frames) / info.sample_rate, 3),
        clipped_share=round(clipped / samples, 6) if samples else 0.0,
        loudness_dbfs=_dbfs(math.sqrt(total_power / samples)) if samples else FLOOR_DBFS,
        peak_dbfs=_dbfs(peak),
    )

"""The audio of a simulated recording: a tone where each turn is spoken, line noise in the
gaps, so the pipeline's audio checks have something real to measure.

The assistant speaks at 220 Hz, the caller at 330 Hz, each with a 4 Hz syllable envelope, for
as long as its words take (2.6 words a second) or until the next turn starts. A session's
`audio_defect` makes it clipped (speech driven past full scale), silent (line noise only) or
cut short (`SimSession.recording_samples` already stops it at 60% of the call).
"""

from __future__ import annotations

import hashlib
from functools import cache

import numpy as np

from .generate import SimSession

WORDS_PER_S = 2.6
NOISE_LEVEL = 0.0003  # about -70 dBFS: a quiet line, well under the silence threshold
SPEECH_LEVEL = 0.35
CLIPPED_GAIN = 4.0
VOICES = {"assistant": 220.0, "user": 330.0}


def mu_law(sample: int) -> int:
    """One 16-bit linear sample as G.711 mu-law (what telephony recordings may use)."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 132
    exponent = max(0, magnitude.bit_length() - 8)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


@cache
def _mu_law_table() -> np.ndarray:
    return np.array([mu_law(v) for v in range(-32768, 32768)], dtype=np.uint8)


def session_audio(session: SimSession, samples: int | None = None) -> np.ndarray:
    """The recording's samples as floats in [-1, 1], `samples` long (default: the whole file)."""
    rate = session.sample_rate
    total = session.recording_samples if samples is None else samples
    seed = int(hashlib.sha256(f"noise:{session.session_id}".encode()).hexdigest()[:8], 16)
    audio = np.random.default_rng(seed).normal(0.0, NOISE_LEVEL, total)
    if session.audio_defect == "silent":
        return audio
    gain = CLIPPED_GAIN if session.audio_defect == "clipped" else 1.0
    starts = [t.offset_ms * rate // 1000 for t in session.turns]
    for i, turn in enumerate(session.turns):
        start = starts[i]
        spoken = int(len(turn.text.split()) / WORDS_PER_S * rate)
        end = min(start + spoken, starts[i + 1] if i + 1 < len(starts) else total, total)
        if end <= start:
            continue
        t = np.arange(end - start) / rate
        envelope = 0.6 + 0.4 * np.abs(np.sin(2 * np.pi * 2.0 * t))  # |sin| at 2 Hz: 4 syllables a second
        audio[start:end] += SPEECH_LEVEL * gain * envelope * np.sin(2 * np.pi * VOICES.get(turn.role, 275.0) * t)
    return np.clip(audio, -1.0, 1.0)


def encoded_audio(session: SimSession, samples: int | None = None) -> bytes:
    """The samples as the WAV's data chunk: 16-bit little-endian PCM, or 8-bit mu-law."""
    linear = np.round(session_audio(session, samples) * 32767).astype(np.int16)
    if session.wav_format == "mulaw":
        return _mu_law_table()[linear.astype(np.int32) + 32768].tobytes()
    return linear.astype("<i2").tobytes()

"""PCM16 helpers: resampling to 24 kHz, stream-safe chunking and WAV headers.

Everything here works on headerless little-endian signed 16-bit PCM, the only audio format
the engines and the wire protocol exchange.
"""

from __future__ import annotations

import struct

import av
import numpy as np
import numpy.typing as npt

from omniserve.events import PCM_RATE, PCM_SAMPLE_BYTES

# Chunks are a multiple of 6 bytes: whole 2-byte samples that base64-encode without "=" padding,
# so a client can concatenate the base64 of every chunk and decode it in one go.
CHUNK_ALIGN = 6

_WAV_PCM = 1
_WAV_EXTENSIBLE = 0xFFFE


class PcmResampler:
    """Mono PCM16 in pieces at any rate, as mono PCM16 at ``dst_rate`` with FFmpeg's resampler,
    seamless across pieces: the resampler keeps the filter's state from one piece to the next.
    A piece at another rate starts a new resampler (what the old one held back is dropped: a
    source that changes rate midway is cut there anyway)."""

    def __init__(self, dst_rate: int = PCM_RATE) -> None:
        if dst_rate <= 0:
            raise ValueError(f"sample rates must be positive, not {dst_rate}")
        self.dst_rate = dst_rate
        self._resampler: av.AudioResampler | None = None
        self._source_rate: int | None = None

    def feed(self, samples: npt.NDArray[np.int16], rate: int) -> bytes:
        """The resampled PCM16 of ``samples`` (what the filter can give so far)."""
        if rate <= 0:
            raise ValueError(f"sample rates must be positive, not {rate}")
        if rate == self.dst_rate and self._resampler is None:
            return bytes(samples.astype("<i2").tobytes())
        if self._resampler is None or rate != self._source_rate:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.dst_rate)
            self._source_rate = rate
        if not len(samples):
            return b""
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        return _pcm(self._resampler.resample(frame))

    def flush(self) -> bytes:
        """What the filter still holds; the next piece starts afresh."""
        if self._resampler is None:
            return b""
        out = _pcm(self._resampler.resample(None))
        self._resampler = self._source_rate = None
        return out


def _pcm(frames: list[av.AudioFrame]) -> bytes:
    return b"".join(f.to_ndarray().astype("<i2", copy=False).tobytes() for f in frames)


def resample_pcm16(pcm: bytes, src_rate: int, dst_rate: int = PCM_RATE) -> bytes:
    """Mono PCM16 at ``src_rate`` as mono PCM16 at ``dst_rate``, with FFmpeg's resampler."""
    if src_rate <= 0 or dst_rate <= 0:
        raise ValueError(f"sample rates must be positive, not {src_rate} and {dst_rate}")
    if len(pcm) % PCM_SAMPLE_BYTES:
        raise ValueError(f"PCM16 needs an even number of bytes, not {len(pcm)}")
    if not pcm or src_rate == dst_rate:
        return bytes(pcm)
    resampler = PcmResampler(dst_rate)
    return resampler.feed(np.frombuffer(pcm, dtype="<i2"), src_rate) + resampler.flush()


def chunk_bytes_for(ms: int, rate: int = PCM_RATE) -> int:
    """Bytes of ``ms`` milliseconds of mono PCM16, rounded to a multiple of 6 (at least 6)."""
    if ms <= 0 or rate <= 0:
        raise ValueError(f"duration and rate must be positive, not {ms} ms at {rate} Hz")
    exact = ms * rate * PCM_SAMPLE_BYTES / 1000
    return max(CHUNK_ALIGN, round(exact / CHUNK_ALIGN) * CHUNK_ALIGN)


def chunk_pcm(pcm: bytes, chunk_bytes: int) -> list[bytes]:
    """``pcm`` cut into ``chunk_bytes`` pieces; only the last may be shorter or unaligned."""
    if chunk_bytes <= 0 or chunk_bytes % CHUNK_ALIGN:
        raise ValueError(f"chunk size must be a positive multiple of 6, not {chunk_bytes}")
    return [pcm[i : i + chunk_bytes] for i in range(0, len(pcm), chunk_bytes)]


def wav_bytes(pcm: bytes, rate: int = PCM_RATE, channels: int = 1) -> bytes:
    """``pcm`` (PCM16, interleaved) with a canonical 44-byte RIFF/WAVE header."""
    block_align = channels * PCM_SAMPLE_BYTES
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(pcm),
        b"WAVE",
        b"fmt ",
        16,
        _WAV_PCM,
        channels,
        rate,
        rate * block_align,
        block_align,
        PCM_SAMPLE_BYTES * 8,
        b"data",
        len(pcm),
    )
    return header + pcm


def parse_wav(data: bytes) -> tuple[bytes, int, int]:
    """``(pcm, rate, channels)`` of a PCM16 WAV file.

    Streamed WAVs (``espeak-ng --stdout``) carry placeholder lengths, so a ``data`` size that
    runs past the end means "everything that follows".
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    fmt: tuple[int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = pos + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise ValueError("WAV fmt chunk is truncated")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            if tag not in (_WAV_PCM, _WAV_EXTENSIBLE) or bits != 16:
                raise ValueError(f"WAV is not PCM16 (format {tag}, {bits} bits)")
            if channels < 1 or rate < 1:
                raise ValueError("WAV fmt chunk has no channels or no sample rate")
            fmt = (tag, channels, rate)
        elif chunk_id == b"data":
            if fmt is None:
                raise ValueError("WAV data chunk comes before its fmt chunk")
            _, channels, rate = fmt
            end = body + size if body + size <= len(data) else len(data)
            pcm = data[body:end]
            frame = channels * PCM_SAMPLE_BYTES
            return pcm[: len(pcm) - len(pcm) % frame], rate, channels
        pos = body + size + (size & 1)
    raise ValueError("WAV has no data chunk")


def duration_seconds(pcm: bytes, rate: int = PCM_RATE) -> float:
    """Playing time of mono PCM16."""
    return len(pcm) / (PCM_SAMPLE_BYTES * rate)

"""Speech encoded as it streams: mp3, opus (in Ogg), aac (ADTS) or flac, from PCM16 24 kHz.

OpenAI's clients ask for these formats; the vendor's stream is raw PCM whatever ``audio.format``
says. ``StreamEncoder`` turns each PCM chunk into the bytes of the format that it completes (an
encoder holds some samples back, so a chunk may give nothing) and ``finish`` gives the rest.
Concatenated, the pieces are one valid file of the format: the container writes as it goes,
never seeking back. Every piece but the last is a multiple of 3 bytes, so its base64 has no
padding and clients may join the pieces' strings before decoding. The work is PyAV's (FFmpeg's
encoders) and blocking: callers run it on a worker thread.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from omniserve.events import PCM_RATE

# audio.format -> (container, codec); each takes 24 kHz mono as it is.
FORMATS: dict[str, tuple[str, str]] = {
    "mp3": ("mp3", "libmp3lame"),
    "opus": ("ogg", "libopus"),
    "aac": ("adts", "aac"),
    "flac": ("flac", "flac"),
}


class _Sink:
    """A write-only, unseekable file: the muxer streams into it."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def seekable(self) -> bool:
        return False

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


class StreamEncoder:
    def __init__(self, fmt: str) -> None:
        import av

        container, codec = FORMATS[fmt]
        self._sink = _Sink()
        self._out = av.open(self._sink, "w", format=container)
        self._stream: Any = self._out.add_stream(codec, rate=PCM_RATE, layout="mono")
        self._pts = 0
        self._done = False
        self._rest = b""  # bytes past the last multiple of 3, sent with the next piece

    def encode(self, pcm: bytes) -> bytes:
        """The encoded bytes that ``pcm`` (PCM16 mono 24 kHz, whole samples) completes."""
        import av

        samples = np.frombuffer(pcm, dtype="<i2")
        if samples.size:
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = PCM_RATE
            frame.pts = self._pts
            self._pts += samples.size
            for packet in self._stream.encode(frame):
                self._out.mux(packet)
        return self._whole(self._rest + self._sink.take())

    def _whole(self, data: bytes) -> bytes:
        """``data`` up to a multiple of 3 bytes (the rest waits): every piece is then whole
        base64, and clients that join the strings before decoding get a valid one."""
        cut = len(data) - len(data) % 3
        self._rest = data[cut:]
        return data[:cut]

    def finish(self) -> bytes:
        """What the encoder held back, and the container's end."""
        if not self._done:
            self._done = True
            for packet in self._stream.encode(None):
                self._out.mux(packet)
            self._out.close()
        data, self._rest = self._rest + self._sink.take(), b""
        return data

    def close(self) -> None:
        """Releases the encoder without finishing the file (a stream that ended early)."""
        if not self._done:
            self._done = True
            with contextlib.suppress(Exception):  # an unfinished file: nothing to keep
                self._out.close()

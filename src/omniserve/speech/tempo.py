"""Speech made faster or slower without changing its pitch: FFmpeg's ``atempo`` through PyAV.

For a voice that cannot pace itself (a model's talker), ``paced`` stretches its PCM16 mono
24 kHz audio events as they stream, each piece on a worker thread.
"""

from __future__ import annotations

import fractions
from collections.abc import AsyncGenerator

import anyio
import anyio.to_thread
import av
import av.filter
import numpy as np

from omniserve.events import PCM_RATE, AudioDelta, EngineEvent, Finished

# One atempo filter takes 0.5 to 100; slower speeds chain two.
_LOWEST_STEP = 0.5


def _steps(speed: float) -> list[float]:
    steps: list[float] = []
    while speed < _LOWEST_STEP:
        steps.append(_LOWEST_STEP)
        speed /= _LOWEST_STEP
    return [*steps, speed]


class Tempo:
    """PCM16 mono at ``rate`` played ``speed`` times as fast, piece by piece."""

    def __init__(self, speed: float, rate: int = PCM_RATE) -> None:
        if not 0.25 <= speed <= 4.0:
            raise ValueError(f"speed must be from 0.25 to 4, not {speed}")
        self.rate = rate
        self.pts = 0
        self.graph = av.filter.Graph()
        source = self.graph.add_abuffer(
            format="s16", sample_rate=rate, layout="mono", time_base=fractions.Fraction(1, rate)
        )
        last = source
        for step in _steps(speed):
            node = self.graph.add("atempo", f"{step:.6f}")
            last.link_to(node)
            last = node
        sink = self.graph.add("abuffersink")
        last.link_to(sink)
        self.graph.configure()

    def feed(self, pcm: bytes) -> bytes:
        """The stretched audio ready so far (the filter holds a little back)."""
        samples = np.frombuffer(pcm, dtype="<i2")
        if not samples.size:
            return b""
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self.pts
        self.pts += samples.size
        self.graph.push(frame)
        return self._pull()

    def finish(self) -> bytes:
        """What the filter still holds."""
        self.graph.push(None)
        return self._pull()

    def _pull(self) -> bytes:
        out: list[bytes] = []
        while True:
            try:
                frame = self.graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                break
            out.append(np.asarray(frame.to_ndarray(), dtype="<i2").tobytes())
        return b"".join(out)


async def paced(
    events: AsyncGenerator[EngineEvent, None], speed: float
) -> AsyncGenerator[EngineEvent, None]:
    """``events`` with their audio ``speed`` times as fast; the rest as it comes."""
    if speed == 1.0:
        async for event in events:
            yield event
        return
    tempo = Tempo(speed)
    try:
        async for event in events:
            if isinstance(event, AudioDelta):
                pcm = await anyio.to_thread.run_sync(tempo.feed, event.pcm)
                if pcm:
                    yield AudioDelta(pcm)
                continue
            if isinstance(event, Finished):
                tail = await anyio.to_thread.run_sync(tempo.finish)
                if tail:
                    yield AudioDelta(tail)
            yield event
    finally:
        await events.aclose()

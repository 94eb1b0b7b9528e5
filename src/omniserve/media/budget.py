"""How much memory decoding may take: per decode, per request, and for the whole server.

A few kilobytes of PNG can describe 64 million transparent palette pixels, and what decoding
them costs depends on the mode the header declares, not on the file's size. Every decode is
therefore priced from its header, before a pixel is decoded, in the bytes its decode really
peaks at (measured per mode, ``bench/media_memory.py``), and the price is checked three times:

- one decode may cost at most ``PER_DECODE`` (the bound docs/media.md states);
- one request's items together may cost at most ``media.request_decode_mb`` (a frame list of
  a hundred bombs is refused once the request's budget is spent, not after decoding them);
- every decode in the server at once (images, frames, audio, video) draws from one budget of
  ``media.decode_memory_mb``: a decode waits until its price is free.

When decoding stops after large decodes, the C allocator is asked to give the freed memory
back to the system: decodes on several threads fill several heap arenas, which glibc keeps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from omniserve.allocator import give_back_memory
from omniserve.errors import InvalidMedia

MB = 1024 * 1024
# The most one decode may cost (docs/media.md states it; tests/media/test_memory.py keeps it).
PER_DECODE = 400 * MB
# Peak bytes per source pixel of the image path by mode (decode, conversion, resize), measured
# on 64 MP PNGs and rounded up by about 15 %.
BYTES_PER_PIXEL = {
    "1": 6.6,
    "L": 1.6,
    "LA": 14.6,
    "La": 14.6,
    "P": 6.6,
    "PA": 14.6,
    "RGB": 5.4,
    "RGBA": 10.0,
    "RGBa": 10.0,
    "RGBX": 5.4,
    "CMYK": 9.0,
    "YCbCr": 9.0,
    "LAB": 9.0,
    "HSV": 9.0,
    "I": 9.0,
    "F": 9.0,
}
# Modes with transparency go through RGBA whatever they store.
TRANSPARENT_BYTES_PER_PIXEL = 11.2
# 16-bit greys ("I;16", "I;16B", ...) and anything not listed.
OTHER_BYTES_PER_PIXEL = 9.0
# Audio and video decodes are priced at their bounds (20 minutes of audio; 128 frames).
AUDIO_COST = 230 * MB
VIDEO_COST = 230 * MB


def image_cost(width: int, height: int, mode: str, *, transparent: bool) -> int:
    """Peak bytes of decoding a ``width`` x ``height`` image stored in ``mode``."""
    if mode in ("LA", "La", "PA"):
        per_pixel = BYTES_PER_PIXEL[mode]
    elif transparent:
        per_pixel = max(TRANSPARENT_BYTES_PER_PIXEL, BYTES_PER_PIXEL.get(mode, 0.0))
    elif mode.startswith("I;16"):
        per_pixel = 6.6
    else:
        per_pixel = BYTES_PER_PIXEL.get(mode, OTHER_BYTES_PER_PIXEL)
    return int(width * height * per_pixel)


def check_decode(cost: int, what: str) -> None:
    """Refuse one decode that would cost more than any decode may."""
    if cost > PER_DECODE:
        raise InvalidMedia(
            f"Decoding {what} would take {cost / MB:.0f} MB of memory, more than the "
            f"{PER_DECODE / MB:.0f} MB one decode may use on this server; send it smaller."
        )


class RequestBudget:
    """What one request's decodes may cost in all (thread-safe)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.spent = 0
        self._lock = threading.Lock()

    def spend(self, cost: int, what: str) -> None:
        with self._lock:
            if self.spent + cost > self.total:
                raise InvalidMedia(
                    f"Decoding {what} would take the request's media past "
                    f"{self.total / MB:.0f} MB of decoding memory; send fewer or smaller media."
                )
            self.spent += cost


class DecodeBudget:
    """Decoding memory for the whole server: every decode holds its price while it runs.

    Decodes run on worker threads, so this blocks the thread (never the event loop) until the
    price is free; a decode that costs more than the whole budget is refused at once."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self._cond = threading.Condition()
        self.waiting = 0
        self._since_trim = 0  # bytes decoded since the heap was last trimmed
        self._trimmer: threading.Thread | None = None

    @contextmanager
    def hold(self, cost: int, what: str) -> Iterator[None]:
        if cost > self.total:
            raise InvalidMedia(
                f"Decoding {what} would take {cost / MB:.0f} MB of memory, more than this "
                f"server decodes at once ({self.total / MB:.0f} MB)."
            )
        with self._cond:
            self.waiting += 1
            try:
                self._cond.wait_for(lambda: self.free >= cost)
            finally:
                self.waiting -= 1
            self.free -= cost
            if self._trimmer is None:
                self._trimmer = threading.Thread(
                    target=self._trim_when_idle, name="omniserve-trim", daemon=True
                )
                self._trimmer.start()
        try:
            yield
        finally:
            with self._cond:
                self.free += cost
                self._since_trim += cost
                self._cond.notify_all()

    def trim_if_idle(self) -> bool:
        """Give the heap back when nothing decodes and enough was decoded since the last time
        (decoded media live on in their requests; what they left behind is free)."""
        with self._cond:
            if self.free != self.total or self._since_trim < TRIM_AFTER:
                return False
            self._since_trim = 0
        give_back_memory()
        return True

    def _trim_when_idle(self) -> None:
        while True:
            time.sleep(TRIM_EVERY_S)
            self.trim_if_idle()


# Once this much was decoded, the C heap is trimmed when no decode is running (checked every
# few seconds, so that the requests' own leftovers are freed by then too).
TRIM_AFTER = 64 * MB
TRIM_EVERY_S = 5.0

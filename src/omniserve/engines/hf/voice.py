"""Speech codes -> 24 kHz audio while the talker is still producing them.

Neither model streams its vocoder in transformers; ``generate`` returns one whole clip. These
voices turn codes into audio chunk by chunk (through ``render.py``) with the context each vocoder
needs, so the first audio leaves after a few codes instead of after the whole utterance.

Chunks start small (the first audio fast) and grow (each chunk re-renders its context, so larger
chunks waste less), but never faster than the audio already sent lasts: a chunk is only as large
as the listener's lead allows, so a talker running near real time still never leaves a gap.

- Qwen3-Omni's code2wav is causal: a chunk decoded with enough left context equals the same span
  of the whole-clip decode, so the chunks join into exactly the whole clip.
- Qwen2.5-Omni's token2wav is a diffusion model over windows of codes: each chunk is decoded with
  look-back and look-ahead codes from one noise sequence for the whole utterance, and consecutive
  chunks are cross-faded over a short overlap, as the model's sliding-window design intends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from omniserve.engines.hf.render import CodecRenderer, DitRenderer
from omniserve.events import PCM_RATE


class ChunkPlan:
    """How many new codes the next chunk holds: the next of ``sizes``, but no more than the
    talker can make (at the speed it has shown) before the audio already sent runs out.

    ``rate`` is codes per second of audio; ``ahead`` codes past a chunk are needed to render it.
    """

    def __init__(
        self,
        sizes: tuple[int, ...],
        rate: float,
        *,
        ahead: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sizes, self.rate, self.ahead, self.clock = sizes, rate, ahead, clock
        self.index = 0
        self.first_code: float | None = None  # when the first code arrived
        self.last_code = 0.0
        self.codes = 0
        self.started: float | None = None  # when the first audio left
        self.sent_seconds = 0.0

    def arrived(self) -> None:
        """One more code from the talker."""
        now = self.clock()
        if self.first_code is None:
            self.first_code = now
        self.last_code = now
        self.codes += 1

    def speed(self) -> float:
        """Seconds of speech the talker has made per second, between 1 and 8 (1 until known)."""
        if self.first_code is None or self.codes < 2:
            return 1.0
        elapsed = self.last_code - self.first_code
        if elapsed <= 0:
            return 8.0
        return min(8.0, max(1.0, (self.codes - 1) / self.rate / elapsed))

    def due(self) -> int:
        want = self.sizes[min(self.index, len(self.sizes) - 1)]
        if self.started is None:
            return want
        lead = self.sent_seconds - (self.clock() - self.started)
        # The chunk's codes (and its look-ahead) must be made before the lead runs out.
        affordable = int(lead * self.rate * self.speed() * 0.8) - self.ahead
        fitting = [s for s in self.sizes if s <= max(affordable, self.sizes[0])]
        return min(want, max(fitting))

    def sent(self, samples: int) -> None:
        if samples <= 0:
            return
        if self.started is None:
            self.started = self.clock()
        self.sent_seconds += samples / PCM_RATE
        self.index += 1


class Qwen3Voice:
    """Frames of codes -> audio, through code2wav with left context.

    code2wav's causal transposed convolutions leave the last samples of a decode unfinished (they
    need the next codes), so each decode sends only what it completed; the next decode, which
    starts ``left_context`` codes earlier, renders the rest.
    """

    def __init__(
        self,
        renderer: CodecRenderer,
        *,
        sizes: tuple[int, ...] = (4, 8, 16, 32, 64, 96),
        left_context: int = 25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.renderer = renderer
        self.left_context = left_context
        self.upsample = renderer.upsample
        self.plan = ChunkPlan(sizes, PCM_RATE / self.upsample, clock=clock)
        self.frames: list[Any] = []  # [groups] CPU tensors
        self.decoded = 0  # codes covered by the last decode
        self.sent = 0  # samples sent

    @property
    def codes(self) -> int:
        return len(self.frames)

    def add(self, frame: Any) -> np.ndarray | None:
        """One frame: its codes, one per group (a list or a tensor)."""
        import torch

        self.frames.append(torch.as_tensor(frame).reshape(-1).cpu())
        self.plan.arrived()
        if len(self.frames) - self.decoded >= self.plan.due():
            return self._decode()
        return None

    def finish(self) -> np.ndarray | None:
        if len(self.frames) > self.decoded:
            return self._decode()
        return None

    def _decode(self) -> np.ndarray:
        import torch

        end = len(self.frames)
        start = max(0, min(self.sent // self.upsample, self.decoded) - self.left_context)
        codes = torch.stack(self.frames[start:end], dim=1)  # [groups, n]
        wav = self.renderer.render(codes)
        first = start * self.upsample
        out: np.ndarray = wav[self.sent - first :]
        self.decoded = end
        self.sent = first + len(wav)
        self.plan.sent(len(out))
        return out


class Qwen25Voice:
    """Codec ids -> audio through token2wav in overlapping windows, cross-faded."""

    def __init__(
        self,
        renderer: DitRenderer,
        speaker: dict[str, Any],
        *,
        sizes: tuple[int, ...] = (24, 48, 96, 192),
        look_back: int = 24,
        look_ahead: int = 12,
        overlap: int = 4,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import torch

        self.renderer = renderer
        self.speaker = speaker
        self.look_back, self.look_ahead, self.overlap = look_back, look_ahead, overlap
        codes_per_second = PCM_RATE / renderer.samples_per_code
        self.plan = ChunkPlan(sizes, codes_per_second, ahead=look_ahead, clock=clock)
        self.generator = torch.Generator(device=renderer.device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        self.noise: Any = None  # [frames, mel] for the utterance so far
        self.ids: list[int] = []
        self.done = 0  # codes whose audio has left (apart from the held tail)
        self.tail: np.ndarray | None = None  # audio of the last ``overlap`` codes, not yet sent

    @property
    def codes(self) -> int:
        return len(self.ids)

    def add(self, code: int) -> np.ndarray | None:
        self.ids.append(int(code))
        self.plan.arrived()
        due = self.plan.due()
        if len(self.ids) - self.done >= due + self.look_ahead:
            return self._decode(self.done + due, final=False)
        return None

    def finish(self) -> np.ndarray | None:
        if len(self.ids) > self.done or self.tail is not None:
            return self._decode(len(self.ids), final=True)
        return None

    def _noise(self, start: int, codes: int) -> Any:
        """The utterance's noise for a window of ``codes`` codes from ``start``."""
        import torch

        frames = self.renderer.frames
        need = frames(start + self.renderer.size(codes))
        have = 0 if self.noise is None else int(self.noise.shape[0])
        if need > have:
            more = torch.randn(
                max(need - have, frames(96)),
                self.renderer.mel_dim,
                generator=self.generator,
                device=self.renderer.device,
            )
            self.noise = more if self.noise is None else torch.cat([self.noise, more])
        return self.noise[frames(start) :]

    def _decode(self, end: int, *, final: bool) -> np.ndarray:
        if end <= self.done:  # nothing new: only the held tail is left
            out, self.tail = self.tail, None
            return out if out is not None else np.zeros(0, np.float32)
        start = max(0, self.done - self.look_back)
        stop = len(self.ids) if final else min(len(self.ids), end + self.look_ahead)
        window = self.ids[start:stop]
        wav = self.renderer.render(window, self._noise(start, len(window)), self.speaker)
        per_code = wav.shape[0] / (stop - start)
        lo = round((self.done - start) * per_code)
        hi = round((end - start) * per_code)
        piece: np.ndarray = wav[lo:hi]
        if self.tail is not None and len(self.tail):
            n = min(len(self.tail), len(piece))
            # The new window re-renders the held tail's span: fade from the old to the new.
            head = wav[max(0, lo - len(self.tail)) : lo]
            if len(head) == len(self.tail):
                fade = np.linspace(0.0, 1.0, len(head), dtype=np.float32)
                joined = self.tail * (1 - fade) + head * fade
            else:
                joined = self.tail
            piece = np.concatenate([joined, piece]) if n else np.asarray(joined)
        self.done = end
        if final:
            self.tail = None
            self.plan.sent(len(piece))
            return piece
        hold = round(self.overlap * per_code)
        self.tail = piece[len(piece) - hold :] if hold else None
        sent: np.ndarray = piece[: len(piece) - hold] if hold else piece
        self.plan.sent(len(sent))
        return sent

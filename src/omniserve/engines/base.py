"""The engine interface: an engine turns one validated ``GenerationJob`` into a stream of events.

It never sees HTTP, and the API never sees engine internals. The job and the events are in
``omniserve.job`` and ``omniserve.events``. ``Engine`` declares everything the server asks of
an engine; each member but ``generate`` has a default that suits an engine which serves the
catalog's names, counts media as the vendor bills them and speaks through ``omniserve.speech``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from omniserve.catalog import Catalog, ModelSpec
from omniserve.events import EngineEvent
from omniserve.job import BILLING, GenerationJob, MediaAccounting

if TYPE_CHECKING:
    from omniserve.audio_tasks import SpeechTask, Transcriber
    from omniserve.speech.recognizer import Recognizer


class Engine(ABC):
    """Generates one job's events."""

    name: str = "engine"
    # Whether it yields audio of its own; an engine that does not gets speech from
    # ``omniserve.speech`` (``speaks_for`` may decide per job).
    speaks: bool = False
    # Whether it wants each medium's fetched bytes besides the decoded input (it hands media on
    # to another server as they came).
    forwards_media: bool = False
    # Whether its models hear audio input: then a transcription can be a chat turn with one
    # (``omniserve.audio_tasks.transcribe_by_chat``).
    hears: bool = False

    @abstractmethod
    def generate(self, job: GenerationJob) -> AsyncGenerator[EngineEvent, None]:
        """The job's events, ending with ``Finished``; raises ``ApiError`` for refusals. The
        caller closes the iterator when it stops early (the client left, a timeout)."""

    async def start(self) -> None:  # noqa: B027 (a default: nothing to load)
        """Load what serving needs (weights, connections); the port opens after it."""

    async def close(self) -> None:  # noqa: B027 (a default: nothing to release)
        """Release what ``start`` took."""

    def catalog(self) -> Catalog | None:
        """The names this engine serves, when they are its own (open weights, an upstream's
        list); None: the built-in catalog."""
        return None

    def speaks_for(self, job: GenerationJob) -> bool:
        """Whether this job's audio comes from the engine itself."""
        return self.speaks

    def media_accounting(self, model: ModelSpec) -> MediaAccounting:
        """How media are sized and counted for ``model``."""
        return BILLING

    def queue_depth(self) -> int:
        """Requests waiting for the engine (not the running ones)."""
        return 0

    def use_recognizer(self, recognizer: Recognizer) -> None:  # noqa: B027 (a default)
        """The server's offline speech recognizer, for an engine that has a use for it."""

    def read_aloud(self, task: SpeechTask) -> AsyncGenerator[EngineEvent, None] | None:
        """``POST /v1/audio/speech`` read by the engine's own voice: audio events (PCM16 mono
        24 kHz) ending with ``Finished``, or None where the server's built-in voice reads.
        Raises ``ApiError`` for a request it refuses (a voice it does not have)."""
        return None

    def transcriber(self, model: str) -> Transcriber | None:
        """What answers ``POST /v1/audio/transcriptions`` with a speech-to-text model of the
        engine's own (an upstream's transcription endpoint); None: a chat model that hears, or
        the server's recognizer."""
        return None

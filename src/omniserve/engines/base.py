"""The engine protocol: what every engine receives and what it yields.

An engine turns one validated ``GenerationJob`` into a stream of events. It never sees HTTP,
and the API never sees engine internals. Audio is always headerless PCM16 mono at 24 kHz.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, runtime_checkable

from omniserve.catalog import ModelSpec, Voice
from omniserve.engines.inputs import AudioInput, DecodedMedia, ImageInput, VideoInput

Role = Literal["system", "user", "assistant"]
Modality = Literal["image", "audio", "video"]
FinishReason = Literal["stop", "length"]

AUDIO_SAMPLE_RATE = 24_000


@dataclass(frozen=True)
class MediaItem:
    """One media input of a user message, as the engine receives it.

    ``source`` is where it came from (URL, data URL or base64), kept for engines that forward it;
    ``frames`` counts the images of a frame list. ``decoded`` is filled by the media pipeline.
    """

    modality: Modality
    kind: str  # "image_url" | "input_audio" | "video_url" | "video"
    source: str | tuple[str, ...]
    frames: int = 0
    decoded: DecodedMedia | None = field(default=None, compare=False, repr=False)
    # The fetched bytes (one per frame of a frame list), kept only for engines that forward
    # media (``Engine.wants_media_bytes``), so an upstream never fetches a URL itself.
    raw: tuple[bytes, ...] = field(default=(), compare=False, repr=False)

    def prompt_tokens(self) -> PromptTokens:
        """What this item bills: a video file's soundtrack counts as audio."""
        d = self.decoded
        if isinstance(d, ImageInput):
            return PromptTokens(image=d.tokens)
        if isinstance(d, AudioInput):
            return PromptTokens(audio=d.tokens)
        if isinstance(d, VideoInput):
            return PromptTokens(video=d.tokens, audio=d.audio.tokens if d.audio else 0)
        return PromptTokens()


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    text: str
    media: tuple[MediaItem, ...] = ()


@dataclass(frozen=True)
class SamplingParams:
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float | None = None
    repetition_penalty: float | None = None


@dataclass(frozen=True)
class PromptTokens:
    """Input tokens by modality, as the request will be billed."""

    text: int = 0
    image: int = 0
    audio: int = 0
    video: int = 0

    @property
    def total(self) -> int:
        return self.text + self.image + self.audio + self.video

    def __add__(self, other: PromptTokens) -> PromptTokens:
        return PromptTokens(
            self.text + other.text,
            self.image + other.image,
            self.audio + other.audio,
            self.video + other.video,
        )


@dataclass(frozen=True)
class CompletionTokens:
    text: int = 0
    audio: int = 0
    reasoning: int = 0

    @property
    def total(self) -> int:
        return self.text + self.audio + self.reasoning


@dataclass(frozen=True)
class Usage:
    prompt: PromptTokens = field(default_factory=PromptTokens)
    completion: CompletionTokens = field(default_factory=CompletionTokens)

    def with_audio_tokens(self, audio_tokens: int) -> Usage:
        return replace(self, completion=replace(self.completion, audio=audio_tokens))


@dataclass(frozen=True)
class GenerationJob:
    """A request that passed every rule: what to generate, for which model, how."""

    request_id: str  # the UUID shared by the completion id and the audio id
    model_name: str  # the name the client asked for, echoed in every chunk
    model: ModelSpec
    messages: tuple[ChatMessage, ...]
    prompt_tokens: PromptTokens
    voice: Voice | None = None  # set when audio output is requested
    thinking: bool = False
    max_tokens: int | None = None
    thinking_budget: int | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)

    @property
    def audio_output(self) -> bool:
        return self.voice is not None


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


@runtime_checkable
class Engine(Protocol):
    """Generates one job's events. ``speaks`` says whether it yields audio of its own;
    an engine that does not gets speech from ``omniserve.speech``."""

    name: str
    speaks: bool

    def generate(self, job: GenerationJob) -> AsyncIterator[EngineEvent]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

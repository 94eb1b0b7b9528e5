"""What a request asks of an engine: the job, its messages, their media and the usage to bill.

The shared vocabulary of every layer (protocol builds jobs, media fills in decoded inputs,
engines read them, accounts bill their usage), so it lives below all of them. Decoded inputs
are produced by ``omniserve.media`` once per request; engines read pixels and samples from
here and never fetch or decode again.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from omniserve.catalog import ModelSpec, Voice

if TYPE_CHECKING:
    from omniserve.scenarios import Script

Pixels = npt.NDArray[np.uint8]  # H x W x 3 RGB, or N x H x W x 3 for video frames
Samples = npt.NDArray[np.float32]  # mono, 16 kHz, in [-1, 1]

AUDIO_INPUT_RATE = 16_000


def new_request_id() -> str:
    """A request's id: a UUID, shared by its completion id, its audio id and its log line."""
    return str(uuid.uuid4())


@dataclass(frozen=True, eq=False)
class ImageInput:
    pixels: Pixels  # resized to (height, width)
    width: int
    height: int
    source_width: int
    source_height: int
    format: str  # as Pillow names it: "JPEG", "PNG", …
    tokens: int


@dataclass(frozen=True, eq=False)
class AudioInput:
    samples: Samples
    seconds: float
    format: str  # the container or codec PyAV found: "mp3", "wav", …
    tokens: int


@dataclass(frozen=True, eq=False)
class VideoInput:
    frames: Pixels  # N x height x width x 3, N even
    fps: float  # frames per second of video time the frames were sampled at
    seconds: float  # duration of the source (frame lists: frames / fps)
    width: int
    height: int
    source_width: int
    source_height: int
    format: str  # container name, or "frames" for a frame list
    tokens: int  # vision tokens only; the soundtrack counts as audio
    audio: AudioInput | None = None  # the soundtrack of a video file, when it has one

    @property
    def frame_count(self) -> int:
        return int(self.frames.shape[0])


DecodedMedia = ImageInput | AudioInput | VideoInput


Role = Literal["system", "user", "assistant"]
Modality = Literal["image", "audio", "video"]


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
    # media (``Engine.forwards_media``), so an upstream never fetches a URL itself.
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


TokenKind = Literal[
    "prompt_text",
    "prompt_image",
    "prompt_audio",
    "prompt_video",
    "completion_text",
    "completion_audio",
    "completion_reasoning",
]
TOKEN_KINDS: tuple[TokenKind, ...] = (
    "prompt_text",
    "prompt_image",
    "prompt_audio",
    "prompt_video",
    "completion_text",
    "completion_audio",
    "completion_reasoning",
)
"""Every kind of token a request is billed for, in one order: the ledger's columns, the
metrics' ``kind`` label, the request log's ``tokens`` and the price list all use these names."""


@dataclass(frozen=True)
class Usage:
    prompt: PromptTokens = field(default_factory=PromptTokens)
    completion: CompletionTokens = field(default_factory=CompletionTokens)

    @property
    def total(self) -> int:
        return self.prompt.total + self.completion.total

    def with_audio_tokens(self, audio_tokens: int) -> Usage:
        return replace(self, completion=replace(self.completion, audio=audio_tokens))

    def by_kind(self) -> dict[str, int]:
        """The tokens of each kind (all seven, zeros included), in ``TOKEN_KINDS`` order."""
        p, c = self.prompt, self.completion
        return {
            "prompt_text": p.text,
            "prompt_image": p.image,
            "prompt_audio": p.audio,
            "prompt_video": p.video,
            "completion_text": c.text,
            "completion_audio": c.audio,
            "completion_reasoning": c.reasoning,
        }

    @classmethod
    def from_kinds(cls, tokens: Mapping[str, int]) -> Usage:
        """The usage whose ``by_kind()`` is ``tokens`` (kinds not named are zero)."""
        n = {kind: int(tokens.get(kind) or 0) for kind in TOKEN_KINDS}
        return cls(
            PromptTokens(n["prompt_text"], n["prompt_image"], n["prompt_audio"], n["prompt_video"]),
            CompletionTokens(
                n["completion_text"], n["completion_audio"], n["completion_reasoning"]
            ),
        )


@dataclass(frozen=True)
class MediaAccounting:
    """How an engine counts media: the vendor's billing formulas (``billing``), or an open
    model's processor (``open``, for ``family``), with the image pixel range of the checkpoint's
    own processor where it sets one. The media layer turns it into sizes and token counts."""

    kind: Literal["billing", "open"] = "billing"
    family: Literal["qwen2.5-omni", "qwen3-omni"] | None = None
    image_min_pixels: int | None = None
    image_max_pixels: int | None = None


BILLING = MediaAccounting()


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
    # A scripted reply or an injected fault (the emulator as a test double, scenarios.py).
    script: Script | None = None
    # What audio.format asked for: wav and pcm16 are the same raw PCM; mp3, opus, aac and flac
    # (with OpenAI-style audio deltas only) are encoded as they stream.
    audio_format: str = "wav"

    @property
    def audio_output(self) -> bool:
        return self.voice is not None

    @property
    def input_audio_seconds(self) -> float:
        """Seconds of decoded input audio: audio clips and the soundtracks of videos."""
        seconds = 0.0
        for message in self.messages:
            for item in message.media:
                d = item.decoded
                if isinstance(d, AudioInput):
                    seconds += d.seconds
                elif isinstance(d, VideoInput) and d.audio is not None:
                    seconds += d.audio.seconds
        return seconds

"""Every rule of the spec, applied to a parsed request with the model's catalog entry.

The result is a ``GenerationJob`` an engine can run, or an ``ApiError`` with the vendor's status,
code and message. Limits come from the catalog only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from omniserve.catalog import Catalog, ModelSpec, Voice
from omniserve.errors import InvalidMedia, InvalidParameter, MediaNotEnabled, StreamRequired
from omniserve.job import (
    ChatMessage,
    GenerationJob,
    MediaItem,
    Modality,
    PromptTokens,
    Role,
    SamplingParams,
    new_request_id,
)
from omniserve.media.sources import BARE_BASE64, DATA_URL, INVALID_URL
from omniserve.protocol.request import ChatRequest, ContentPart, Message
from omniserve.tokens import QwenTokenizer

PART_TYPES = ("text", "image_url", "input_audio", "video_url", "video")
_PART_MODALITY: dict[str, Modality] = {
    "image_url": "image",
    "input_audio": "audio",
    "video_url": "video",
    "video": "video",
}
AUDIO_FORMATS = ("wav", "pcm16")
# Encoded as OpenAI's clients ask, with OpenAI-style audio deltas only (speech/codecs.py).
ENCODED_FORMATS = ("mp3", "opus", "aac", "flac")
_SEED_MAX = 2**31 - 1


@dataclass(frozen=True)
class ValidatedRequest:
    job: GenerationJob
    include_usage: bool


def quote_list(values: tuple[str, ...] | list[str]) -> str:
    """``'a', 'b' or 'c'`` as the vendor's messages list allowed values."""
    quoted = [f"'{v}'" for v in values]
    if len(quoted) == 1:
        return quoted[0]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


class RequestValidator:
    """Applies the spec's rules; ``media_enabled`` is off until the media pipeline accepts it."""

    def __init__(
        self, catalog: Catalog, tokenizer: QwenTokenizer, *, media_enabled: bool = False
    ) -> None:
        self.catalog = catalog
        self.tokenizer = tokenizer
        self.media_enabled = media_enabled

    def validate(
        self,
        req: ChatRequest,
        request_id: str | None = None,
        *,
        conversation: bool = False,
        audio_history: Callable[[list[str]], dict[str, str]] | None = None,
        encoded_audio: bool = False,
    ) -> ValidatedRequest:
        """``conversation``: a realtime session's conversation, whose every user turn may
        carry its own audio (the per-request media counts do not apply to it).
        ``audio_history``: the transcripts of earlier answers' audio ids (blocking; none
        known without it). ``encoded_audio``: the stream has OpenAI-style audio deltas, which
        may carry mp3, opus, aac or flac as well."""
        model = self.catalog.get(req.model)
        modalities = self._modalities(req)
        audio_out = "audio" in modalities
        if req.stream is not True:
            raise StreamRequired(audio_requested=audio_out)
        if req.n not in (None, 1):
            raise InvalidParameter("Range of n should be [1, 1]", param="n")
        if req.tools:
            raise InvalidParameter(
                f"The model {req.model} does not support tools (function calling).", param="tools"
            )
        if audio_out and not model.audio_output:
            raise InvalidParameter(
                f"The model {req.model} does not support audio output on this server; "
                "modalities must be ['text'].",
                param="modalities",
            )
        thinking = self._thinking(req, model, audio_out)
        formats = AUDIO_FORMATS + ENCODED_FORMATS if encoded_audio else AUDIO_FORMATS
        voice = self._voice(req, model, audio_out, formats)
        heard = self._audio_history(req, audio_history)
        messages = tuple(self._message(i, m, model, heard) for i, m in enumerate(req.messages))
        if not messages:
            raise InvalidParameter(
                "Range of messages length should be [1, inf): input.messages", param="messages"
            )
        if not any(m.role == "user" for m in messages):
            raise InvalidParameter("At least one user message is required.", param="messages")
        if not conversation:
            self._media_counts(messages, model)
        if not model.video_input and any(i.modality == "video" for m in messages for i in m.media):
            raise InvalidParameter(
                f"The model {req.model} does not accept video input on this server.",
                param="messages",
            )
        if model.audio_input_required and not _last_user_sends_audio(messages):
            raise InvalidParameter(
                f"The model {req.model} captions audio: send one input_audio part in the "
                "last user message.",
                param="messages",
            )
        if not self.media_enabled and any(m.media for m in messages):
            raise MediaNotEnabled(
                "Media input (image, audio and video) is disabled on this server; "
                "send text-only messages."
            )
        limits = model.mode_limits(thinking)
        max_tokens = req.max_tokens if req.max_tokens is not None else req.max_completion_tokens
        if max_tokens is not None and not 1 <= max_tokens <= limits.max_output:
            raise InvalidParameter(
                f"Range of max_tokens should be [1, {limits.max_output}]", param="max_tokens"
            )
        budget = self._thinking_budget(req, model, thinking)
        sampling = self._sampling(req)
        # Text that cannot fit whatever its tokens is refused before it is tokenized.
        characters = sum(len(m.text) for m in messages)
        if self.tokenizer.fewest_tokens(characters) > limits.max_input:
            self._check_input_length(PromptTokens(text=limits.max_input + 1), limits.max_input)
        prompt = self._prompt_tokens(messages, model, audio_out)
        # Text alone: a request whose text cannot fit is refused before its media are fetched;
        # with media the whole input is checked once they are counted (``count_media``).
        self._check_input_length(prompt, limits.max_input)
        job = GenerationJob(
            request_id=request_id or new_request_id(),
            model_name=req.model,
            model=model,
            messages=messages,
            prompt_tokens=prompt,
            voice=voice,
            thinking=thinking,
            max_tokens=max_tokens,
            thinking_budget=budget,
            sampling=sampling,
            audio_format=req.audio.format if req.audio and req.audio.format else "wav",
        )
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return ValidatedRequest(job=job, include_usage=include_usage)

    # -- output options ------------------------------------------------------------------

    @staticmethod
    def _modalities(req: ChatRequest) -> set[str]:
        if req.modalities is None:
            return {"text"}
        given = req.modalities
        if sorted(given) not in (["text"], ["audio", "text"]):
            raise InvalidParameter(
                f"Invalid modalities: {given!r}. Supported combinations are: "
                "['text'] and ['audio', 'text'].",
                param="modalities",
            )
        return set(given)

    @staticmethod
    def _thinking(req: ChatRequest, model: ModelSpec, audio_out: bool) -> bool:
        if not req.enable_thinking:
            return False
        if not model.supports_thinking:
            raise InvalidParameter(
                f"The model {req.model} does not support enable_thinking.",
                param="enable_thinking",
            )
        if audio_out or req.audio is not None:
            raise InvalidParameter(
                "Audio output is not supported in thinking mode; modalities must be ['text'].",
                param="modalities" if audio_out else "audio",
            )
        return True

    @staticmethod
    def _voice(
        req: ChatRequest, model: ModelSpec, audio_out: bool, formats: tuple[str, ...]
    ) -> Voice | None:
        audio = req.audio
        if audio is not None and audio.format is not None and audio.format not in formats:
            raise InvalidParameter(
                f"Input should be {quote_list(formats)}: parameters.audio.format",
                param="audio.format",
            )
        name = audio.voice if audio is not None and audio.voice is not None else None
        if name is None:
            return model.voice(model.default_voice) if audio_out else None
        voice = model.voice(name)
        if voice is None:
            raise InvalidParameter(
                f"Input should be {quote_list(model.voice_names)}: parameters.audio.voice",
                param="audio.voice",
            )
        return voice if audio_out else None

    @staticmethod
    def _thinking_budget(req: ChatRequest, model: ModelSpec, thinking: bool) -> int | None:
        if req.thinking_budget is None:
            return None
        ceiling = model.mode_limits(True).max_reasoning or model.mode_limits(True).max_output
        if not 1 <= req.thinking_budget <= ceiling:
            raise InvalidParameter(
                f"Range of thinking_budget should be [1, {ceiling}]", param="thinking_budget"
            )
        return req.thinking_budget if thinking else None

    @staticmethod
    def _sampling(req: ChatRequest) -> SamplingParams:
        def bad(name: str, rng: str) -> InvalidParameter:
            return InvalidParameter(f"Range of {name} should be {rng}", param=name)

        # Every bound is written so that NaN fails it too (every comparison with NaN is false).
        if req.temperature is not None and not 0 <= req.temperature < 2:
            raise bad("temperature", "[0.0, 2.0)")
        if req.top_p is not None and not 0 < req.top_p <= 1:
            raise bad("top_p", "(0.0, 1.0]")
        if req.top_k is not None and not 0 <= req.top_k <= _SEED_MAX:
            raise bad("top_k", f"[0, {_SEED_MAX}]")
        if req.seed is not None and not 0 <= req.seed <= _SEED_MAX:
            raise bad("seed", f"[0, {_SEED_MAX}]")
        if req.presence_penalty is not None and not -2 <= req.presence_penalty <= 2:
            raise bad("presence_penalty", "[-2.0, 2.0]")
        if req.repetition_penalty is not None and not 0 < req.repetition_penalty <= 2:
            raise bad("repetition_penalty", "(0.0, 2.0]")
        stop: tuple[str, ...] = ()
        if isinstance(req.stop, str):
            stop = (req.stop,) if req.stop else ()
        elif req.stop is not None:
            stop = tuple(s for s in req.stop if s)
        return SamplingParams(
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            seed=req.seed,
            stop=stop,
            presence_penalty=req.presence_penalty,
            repetition_penalty=req.repetition_penalty,
        )

    # -- messages ------------------------------------------------------------------------

    @staticmethod
    def _audio_history(
        req: ChatRequest, lookup: Callable[[list[str]], dict[str, str]] | None
    ) -> dict[str, str]:
        """The transcripts of the audio ids in ``req``'s assistant messages; an id that is not
        known (never this server's, expired, another key's) is a 400."""
        ids = [(i, m.audio.id) for i, m in enumerate(req.messages) if m.audio is not None]
        if not ids:
            return {}
        for i, _ in ids:
            if req.messages[i].role != "assistant":
                raise InvalidParameter(
                    "Only assistant messages may refer to an earlier answer's audio.",
                    param=f"messages[{i}].audio",
                )
        found = lookup(sorted({audio_id for _, audio_id in ids})) if lookup else {}
        for i, audio_id in ids:
            if audio_id not in found:
                raise InvalidParameter(
                    f"The audio {audio_id!r} is unknown or has expired: send that answer's "
                    "text as the assistant message's content instead.",
                    param=f"messages[{i}].audio.id",
                )
        return found

    def _message(
        self, index: int, msg: Message, model: ModelSpec, heard: dict[str, str]
    ) -> ChatMessage:
        where = f"input.messages.{index}"
        if msg.role not in ("system", "user", "assistant"):
            raise InvalidParameter(
                f"Input should be 'system', 'user' or 'assistant': {where}.role",
                param=f"messages[{index}].role",
            )
        role: Role = msg.role  # type: ignore[assignment]
        content = msg.content
        if msg.audio is not None and not content:
            # The answer's audio by id, with no text beside it: its transcript is the text.
            return ChatMessage(role=role, text=heard[msg.audio.id])
        if role == "user" and not content:
            raise InvalidParameter(
                f"User messages must have content: {where}.content",
                param=f"messages[{index}].content",
            )
        if content is None or isinstance(content, str):
            return ChatMessage(role=role, text=content or "")
        texts: list[str] = []
        media: list[MediaItem] = []
        for j, part in enumerate(content):
            item = self._part(
                part, f"{where}.content.{j}", f"messages[{index}].content[{j}]", model
            )
            if item is None:
                texts.append(part.text or "")
            else:
                media.append(item)
        if media and role == "assistant":
            raise InvalidParameter(
                "Assistant messages may only contain text.", param=f"messages[{index}].content"
            )
        if media and role == "system":
            raise InvalidParameter(
                "System messages may only contain text.", param=f"messages[{index}].content"
            )
        if len({m.modality for m in media}) > 1:
            raise InvalidParameter(
                "A user message may contain text and at most one of image, audio or video.",
                param=f"messages[{index}].content",
            )
        for item in media:
            if item.kind == "video":
                self._check_frames(item, model)
        return ChatMessage(role=role, text="".join(texts), media=tuple(media))

    def _part(
        self, part: ContentPart, where: str, param: str, model: ModelSpec
    ) -> MediaItem | None:
        cap = model.media.data_uri_max_bytes
        kind = part.type
        if kind not in PART_TYPES:
            raise InvalidParameter(
                f"Invalid value: {kind}. Supported values are: "
                "'text','image_url','input_audio','video_url' and 'video'.",
                param=f"{param}.type",
            )
        if kind == "text":
            if part.text is None:
                raise InvalidParameter(f"Field required: {where}.text", param=f"{param}.text")
            return None
        source: str | tuple[str, ...]
        if kind == "image_url" or kind == "video_url":
            value = part.image_url if kind == "image_url" else part.video_url
            if value is None:
                raise InvalidParameter(f"Field required: {where}.{kind}", param=f"{param}.{kind}")
            source = value if isinstance(value, str) else value.url
            self._check_source(source, cap, bare_base64=False)
        elif kind == "input_audio":
            if part.input_audio is None:
                raise InvalidParameter(f"Field required: {where}.{kind}", param=f"{param}.{kind}")
            source = part.input_audio.data
            self._check_source(source, cap, bare_base64=True)
        else:
            if part.video is None:
                raise InvalidParameter(f"Field required: {where}.video", param=f"{param}.video")
            for frame in part.video:
                self._check_source(frame, cap, bare_base64=False)
            source = tuple(part.video)
        frames = len(source) if isinstance(source, tuple) else 0
        return MediaItem(modality=_PART_MODALITY[kind], kind=kind, source=source, frames=frames)

    @staticmethod
    def _check_source(source: str, cap: int, *, bare_base64: bool) -> None:
        """A URL must be http(s) or a base64 data URL; ``input_audio`` may also be bare base64."""
        s = source.strip()
        if s[:8].lower().startswith(("http://", "https://")):
            try:
                parts = urlsplit(s)
            except ValueError:
                raise InvalidMedia(INVALID_URL) from None
            if parts.hostname:
                return
            raise InvalidMedia(INVALID_URL)
        match = DATA_URL.match(s)
        if not match and not (bare_base64 and s and BARE_BASE64.match(s[:4096])):
            raise InvalidMedia(INVALID_URL)
        # The vendor caps the data URI itself, base64 and all (a raw file under about 7 MB).
        if len(s) > cap:
            raise InvalidMedia(f"Exceeded limit on max bytes per data-uri item : {cap}'.")

    @staticmethod
    def _check_frames(item: MediaItem, model: ModelSpec) -> None:
        lo, hi = model.media.frames_min, model.media.frames_max
        if not lo <= item.frames <= hi:
            raise InvalidMedia(
                "The video modality input does not meet the requirements because: "
                f"the range of sequence images shoule be ({lo}, {hi})."
            )

    @staticmethod
    def _media_counts(messages: tuple[ChatMessage, ...], model: ModelSpec) -> None:
        audio = sum(1 for m in messages for i in m.media if i.kind == "input_audio")
        videos = sum(1 for m in messages for i in m.media if i.kind == "video_url")
        if audio > model.media.audio_per_request:
            raise InvalidMedia(
                "The audio modality input does not meet the requirements because: "
                f"at most {model.media.audio_per_request} audio file is allowed per request."
            )
        if videos > model.media.video_per_request:
            raise InvalidMedia(
                "The video modality input does not meet the requirements because: "
                f"at most {model.media.video_per_request} video file is allowed per request."
            )

    def count_media(self, job: GenerationJob) -> GenerationJob:
        """The job with its decoded media counted (its text was counted by ``validate``),
        checked against the input limit with them: the one check of the whole input."""
        prompt = PromptTokens(text=job.prompt_tokens.text)
        for message in job.messages:
            for item in message.media:
                prompt = prompt + item.prompt_tokens()
        self._check_input_length(prompt, job.model.mode_limits(job.thinking).max_input)
        return replace(job, prompt_tokens=prompt)

    @staticmethod
    def _check_input_length(prompt: PromptTokens, max_input: int) -> None:
        if not 1 <= prompt.total <= max_input:
            raise InvalidParameter(
                f"Range of input length should be [1, {max_input}]", param="messages"
            )

    def _prompt_tokens(
        self, messages: tuple[ChatMessage, ...], model: ModelSpec, audio_out: bool
    ) -> PromptTokens:
        text = self.tokenizer.count_chat((m.role, m.text) for m in messages)
        if audio_out:
            text += model.tokens.audio_output_prompt_tokens
        total = PromptTokens(text=text)
        for message in messages:
            for item in message.media:
                total = total + item.prompt_tokens()
        return total


def _last_user_sends_audio(messages: tuple[ChatMessage, ...]) -> bool:
    last = next(m for m in reversed(messages) if m.role == "user")
    return any(item.kind == "input_audio" for item in last.media)

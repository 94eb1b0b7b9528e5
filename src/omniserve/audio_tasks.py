"""What OpenAI's two audio endpoints ask of whoever answers them, and the answers every engine
can give.

``POST /v1/audio/speech`` reads a text aloud; ``POST /v1/audio/transcriptions`` writes down what a
recording says. Each is answered by the model in use where it can: the transformers engine's
own talker reads the text (``Engine.read_aloud``), an upstream's speech or transcription model
answers through its own endpoint (``Engine.transcriber``), and any model that hears audio can
transcribe in a chat turn (``transcribe_by_chat``). Otherwise the server's built-in voice reads
and its offline recognizer hears (``transcribe_by_recognizer``). docs/audio-endpoints.md says
which answers what.
"""

from __future__ import annotations

import io
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import numpy as np
import soundfile as sf

from omniserve.catalog import ModelSpec
from omniserve.events import EngineEvent, Finished, ReasoningDelta, TextDelta
from omniserve.job import (
    AUDIO_INPUT_RATE,
    AudioInput,
    ChatMessage,
    CompletionTokens,
    GenerationJob,
    MediaItem,
    PromptTokens,
    SamplingParams,
    Usage,
)
from omniserve.speech.recognizer import Segment, Transcript
from omniserve.tokens import QwenTokenizer

if TYPE_CHECKING:
    from omniserve.engines.base import Engine
    from omniserve.speech.recognizer import Recognizer


# OpenAI's voices, each read by a catalog voice of a like character.
OPENAI_VOICES = {
    "alloy": "Cherry",
    "ash": "Ethan",
    "ballad": "Ryan",
    "coral": "Serena",
    "echo": "Elias",
    "fable": "Roy",
    "nova": "Jennifer",
    "onyx": "Marcus",
    "sage": "Katerina",
    "shimmer": "Vivian",
    "verse": "Aiden",
}


# Whisper's languages by code, named as OpenAI's verbose_json names them.
WHISPER_LANGUAGES = {
    "af": "afrikaans", "am": "amharic", "ar": "arabic", "as": "assamese",
    "az": "azerbaijani", "ba": "bashkir", "be": "belarusian", "bg": "bulgarian",
    "bn": "bengali", "bo": "tibetan", "br": "breton", "bs": "bosnian", "ca": "catalan",
    "cs": "czech", "cy": "welsh", "da": "danish", "de": "german", "el": "greek",
    "en": "english", "es": "spanish", "et": "estonian", "eu": "basque", "fa": "persian",
    "fi": "finnish", "fo": "faroese", "fr": "french", "gl": "galician", "gu": "gujarati",
    "ha": "hausa", "haw": "hawaiian", "he": "hebrew", "hi": "hindi", "hr": "croatian",
    "ht": "haitian creole", "hu": "hungarian", "hy": "armenian", "id": "indonesian",
    "is": "icelandic", "it": "italian", "ja": "japanese", "jw": "javanese",
    "ka": "georgian", "kk": "kazakh", "km": "khmer", "kn": "kannada", "ko": "korean",
    "la": "latin", "lb": "luxembourgish", "ln": "lingala", "lo": "lao", "lt": "lithuanian",
    "lv": "latvian", "mg": "malagasy", "mi": "maori", "mk": "macedonian",
    "ml": "malayalam", "mn": "mongolian", "mr": "marathi", "ms": "malay", "mt": "maltese",
    "my": "myanmar", "ne": "nepali", "nl": "dutch", "nn": "nynorsk", "no": "norwegian",
    "oc": "occitan", "pa": "punjabi", "pl": "polish", "ps": "pashto", "pt": "portuguese",
    "ro": "romanian", "ru": "russian", "sa": "sanskrit", "sd": "sindhi", "si": "sinhala",
    "sk": "slovak", "sl": "slovenian", "sn": "shona", "so": "somali", "sq": "albanian",
    "sr": "serbian", "su": "sundanese", "sv": "swedish", "sw": "swahili", "ta": "tamil",
    "te": "telugu", "tg": "tajik", "th": "thai", "tk": "turkmen", "tl": "tagalog",
    "tr": "turkish", "tt": "tatar", "uk": "ukrainian", "ur": "urdu", "uz": "uzbek",
    "vi": "vietnamese", "yi": "yiddish", "yo": "yoruba", "yue": "cantonese", "zh": "chinese",
}  # fmt: skip


@dataclass(frozen=True)
class SpeechTask:
    """A text to read aloud, as the client asked for it."""

    request_id: str
    model: str  # the name the client sent: a served model, or "tts-1", "gpt-4o-mini-tts"…
    text: str
    voice: str  # as the client named it
    speed: float = 1.0  # 0.25 to 4
    instructions: str | None = None


@dataclass(frozen=True)
class TranscriptionTask:
    """A recording to write down, decoded (16 kHz mono), with the client's hints."""

    request_id: str
    model: str  # the name the client sent: a served model, or "whisper-1"…
    audio: AudioInput
    language: str | None = None  # ISO-639-1 ("en", "zh"), or None to detect
    prompt: str | None = None  # words the speech may contain (names, spelling)


@dataclass(frozen=True)
class Heard:
    """A transcription, what it used, and who heard it (for the log and the ledger)."""

    transcript: Transcript
    usage: Usage
    by: str


Transcriber = Callable[[TranscriptionTask], Awaitable[Heard]]


def wav_bytes(audio: AudioInput) -> bytes:
    """The decoded recording as a 16 kHz mono PCM16 WAV file: what is handed on to another
    model is what the server checked, never the uploaded container."""
    out = io.BytesIO()
    pcm = (np.clip(audio.samples, -1.0, 1.0) * 32767.0).astype("<i2")
    sf.write(out, pcm, AUDIO_INPUT_RATE, format="WAV", subtype="PCM_16")
    return out.getvalue()


def pcm16(audio: AudioInput) -> bytes:
    return (np.clip(audio.samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def transcription_prompt(language: str | None, prompt: str | None) -> str:
    """What a chat model is asked: the words only, in the language they were spoken."""
    ask = "Transcribe the audio into text. Reply with the spoken words only, exactly as said"
    ask += f", in the language with ISO-639-1 code {language!r}." if language else "."
    if prompt:
        ask += f" The recording may contain these words or names: {prompt}"
    return ask


def _cleaned(text: str) -> str:
    """The transcript without what chat models put around one: blank edges, a pair of quotes."""
    text = text.strip()
    for left, right in (('"', '"'), ("“", "”"), ("「", "」")):
        if len(text) >= 2 and text.startswith(left) and text.endswith(right):
            inner = text[1:-1]
            if left not in inner and right not in inner:
                return inner.strip()
    return text


async def transcribe_by_chat(
    engine: Engine, model: ModelSpec, task: TranscriptionTask, tokenizer: QwenTokenizer
) -> Heard:
    """``task`` heard by ``model`` in one greedy chat turn with the recording and an instruction
    (any engine whose models hear audio: the weights in process, an upstream's chat model)."""
    ask = transcription_prompt(task.language, task.prompt)
    audio = task.audio
    raw: tuple[bytes, ...] = ()
    if engine.forwards_media:
        raw = (await anyio.to_thread.run_sync(wav_bytes, audio),)
        audio = replace(audio, format="wav")
    item = MediaItem("audio", "input_audio", "upload", decoded=audio, raw=raw)
    # Room for fast speech: about 8 tokens a second, and never less than a short answer.
    most = max(64, int(audio.seconds * 8) + 32)
    most = min(most, model.mode_limits(False).max_output or most)
    job = GenerationJob(
        request_id=task.request_id,
        model_name=model.name,
        model=model,
        messages=(ChatMessage("user", ask, media=(item,)),),
        prompt_tokens=PromptTokens(text=tokenizer.count(ask), audio=audio.tokens),
        max_tokens=most,
        sampling=SamplingParams(temperature=0.0, seed=0),
    )
    pieces: list[str] = []
    usage = Usage()
    events: AsyncGenerator[EngineEvent, None] = engine.generate(job)
    try:
        async for event in events:
            if isinstance(event, TextDelta):
                pieces.append(event.text)
            elif isinstance(event, ReasoningDelta):
                continue
            elif isinstance(event, Finished):
                usage = event.usage
    finally:
        await events.aclose()
    text = _cleaned("".join(pieces))
    seconds = task.audio.seconds
    segments = (Segment(0.0, round(seconds, 3), text),) if text else ()
    transcript = Transcript(text, task.language, seconds, segments)
    if usage.total == 0:
        usage = Usage(job.prompt_tokens, CompletionTokens(text=tokenizer.count(text)))
    return Heard(transcript, usage, by=model.name)


async def transcribe_by_recognizer(
    recognizer: Recognizer, task: TranscriptionTask, tokenizer: QwenTokenizer
) -> Heard:
    """``task`` heard by the server's offline recognizer (Whisper). Raises ``ValueError`` for a
    language it does not know."""
    pcm = await anyio.to_thread.run_sync(pcm16, task.audio)
    transcript = await recognizer.transcribe_async(
        pcm, AUDIO_INPUT_RATE, task.language, task.prompt
    )
    usage = Usage(
        PromptTokens(audio=task.audio.tokens),
        CompletionTokens(text=tokenizer.count(transcript.text)),
    )
    return Heard(transcript, usage, by="recognizer")

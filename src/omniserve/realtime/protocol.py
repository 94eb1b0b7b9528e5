"""The realtime API's wire: ids, the session's configuration and its validation, error events.

Faithful to Model Studio's Qwen-Omni-Realtime events (docs/realtime.md): every server event
carries an ``event_id`` of ``event_`` and 21 letters or digits, sessions, items, responses and
conversations have ``sess_``/``item_``/``resp_``/``conv_`` ids of the same shape, and a bad
``session.update`` is answered with an ``error`` event naming the field, as the vendor's is.
Both layouts of the audio formats are accepted: the flat ``input_audio_format`` /
``output_audio_format`` and the newer ``audio.input.format`` / ``audio.output.format``.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass, field, replace
from typing import Any

from omniserve.catalog import ModelSpec, RealtimeModel

_ALPHABET = string.ascii_letters + string.digits
INPUT_RATE = 16_000  # PCM16 mono in
INPUT_FORMATS = ("pcm16", "pcm")
OUTPUT_FORMATS = ("pcm24", "pcm16", "pcm")


def new_id(prefix: str) -> str:
    """``prefix`` + "_" + 21 random letters and digits, as the vendor's ids."""
    return f"{prefix}_" + "".join(secrets.choice(_ALPHABET) for _ in range(21))


class RealtimeError(Exception):
    """An error the session answers with an ``error`` event (and goes on)."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid_value",
        param: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message, self.code, self.param, self.type = message, code, param, type

    def event(self) -> dict[str, Any]:
        return {
            "event_id": new_id("event"),
            "type": "error",
            "error": {
                "type": self.type,
                "code": self.code,
                "message": self.message,
                "param": self.param,
            },
        }


def parse_event(text: str) -> dict[str, Any]:
    """A client event's JSON, or the ``RealtimeError`` that answers a malformed one."""
    try:
        event = json.loads(text)
    except ValueError:
        raise RealtimeError("The event is not valid JSON.", code="invalid_json") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise RealtimeError(
            "An event is a JSON object with a string 'type'.", code="invalid_event", param="type"
        )
    return event


@dataclass(frozen=True)
class TurnDetection:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 800
    create_response: bool = True
    interrupt_response: bool = True

    def wire(self) -> dict[str, Any]:
        return {
            "type": "server_vad",
            "threshold": self.threshold,
            "prefix_padding_ms": self.prefix_padding_ms,
            "silence_duration_ms": self.silence_duration_ms,
            "create_response": self.create_response,
            "interrupt_response": self.interrupt_response,
        }


@dataclass(frozen=True)
class SessionConfig:
    """What a session is set to; ``turn_detection`` None is manual mode."""

    model: str
    modalities: tuple[str, ...] = ("text", "audio")
    voice: str = "Cherry"
    instructions: str = ""
    input_audio_format: str = "pcm16"
    output_audio_format: str = "pcm24"
    transcription_model: str | None = None
    transcription_language: str | None = None
    transcription_prompt: str | None = None
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int = -1
    smooth_output: bool | None = None

    @property
    def audio_output(self) -> bool:
        return "audio" in self.modalities

    def wire(self, session_id: str, *, full: bool) -> dict[str, Any]:
        """The session as ``session.created`` (``full`` False) or ``session.updated`` show it."""
        out: dict[str, Any] = {
            "object": "realtime.session",
            "model": self.model,
            "modalities": list(self.modalities),
            "voice": self.voice,
            "input_audio_format": self.input_audio_format,
            "output_audio_format": self.output_audio_format,
            "input_audio_transcription": (
                {"model": self.transcription_model} if self.transcription_model else None
            ),
            "turn_detection": self.turn_detection.wire() if self.turn_detection else None,
            "tools": [],
            "tool_choice": "auto",
            "temperature": self.temperature if self.temperature is not None else 0.8,
            "id": session_id,
        }
        if full:
            out.update(
                instructions=self.instructions,
                max_response_output_token="inf",
                max_tokens=self.max_tokens,
                repetition_penalty=self.repetition_penalty,
                presence_penalty=self.presence_penalty,
                top_k=self.top_k,
                top_p=self.top_p,
                seed=self.seed,
            )
        return out


def initial_config(model: RealtimeModel) -> SessionConfig:
    return SessionConfig(
        model=model.name,
        voice=model.default_voice,
        output_audio_format=model.output_audio_format,
    )


def _number(
    fields: dict[str, Any],
    key: str,
    low: float,
    high: float,
    *,
    high_open: bool = False,
    where: str = "session",
) -> float | None:
    value = fields.get(key)
    if value is None:
        return None
    name = f"{where}.{key}".removeprefix("session.")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RealtimeError(f"Invalid {name}: it must be a number.", param=f"{where}.{key}")
    if not low <= value <= high or (high_open and value >= high):
        closing = ")" if high_open else "]"
        raise RealtimeError(
            f"Invalid {name}: {value}. It must be in [{low:g}, {high:g}{closing}.",
            param=f"{where}.{key}",
        )
    return float(value)


def _integer(
    fields: dict[str, Any], key: str, low: int, high: int, *, where: str = "session"
) -> int | None:
    value = fields.get(key)
    if value is None:
        return None
    name = f"{where}.{key}".removeprefix("session.")
    if isinstance(value, bool) or not isinstance(value, int):
        raise RealtimeError(f"Invalid {name}: it must be an integer.", param=f"{where}.{key}")
    if not low <= value <= high:
        raise RealtimeError(
            f"Invalid {name}: {value}. It must be in [{low}, {high}].", param=f"{where}.{key}"
        )
    return value


def _format(layout: Any, where: str, rate: int) -> str:
    """The new layout's ``{type, sample_rate}``: PCM at ``rate`` only."""
    if not isinstance(layout, dict):
        raise RealtimeError(f"Invalid {where}: it must be an object.", param=f"session.{where}")
    kind = layout.get("type", "pcm")
    if kind != "pcm":
        raise RealtimeError(
            f"Invalid {where}.type: {kind!r}. Supported: 'pcm'.", param=f"session.{where}.type"
        )
    sample_rate = layout.get("sample_rate", rate)
    if sample_rate != rate:
        raise RealtimeError(
            f"Invalid {where}.sample_rate: {sample_rate}. Only {rate} Hz is supported.",
            param=f"session.{where}.sample_rate",
        )
    return "pcm"


def apply_update(config: SessionConfig, session: Any, spec: ModelSpec) -> SessionConfig:
    """``config`` with ``session.update``'s fields applied, or the vendor's error for the first
    bad one (the config is then unchanged)."""
    if not isinstance(session, dict):
        raise RealtimeError("Invalid session: it must be an object.", param="session")
    changes: dict[str, Any] = {}
    if "modalities" in session:
        modalities = session["modalities"]
        if not isinstance(modalities, list) or sorted(modalities) not in (
            ["text"],
            ["audio", "text"],
        ):
            raise RealtimeError(
                f"Invalid modalities: {modalities!r}. Supported combinations are: ['text'] and "
                "['audio', 'text'].",
                param="session.modalities",
            )
        changes["modalities"] = ("text", "audio") if len(modalities) == 2 else ("text",)
    if session.get("voice") is not None:
        voice = session["voice"]
        if not isinstance(voice, str) or spec.voice(voice) is None:
            raise RealtimeError(
                f"Invalid voice: {voice!r}. Supported voices: {', '.join(spec.voice_names)}.",
                param="session.voice",
            )
        changes["voice"] = voice
    if "instructions" in session:
        instructions = session["instructions"]
        if instructions is not None and not isinstance(instructions, str):
            raise RealtimeError(
                "Invalid instructions: it must be a string.", param="session.instructions"
            )
        changes["instructions"] = instructions or ""
    changes.update(_formats(session))
    if "input_audio_transcription" in session:
        asked = session["input_audio_transcription"]
        if asked is not None and not isinstance(asked, dict):
            raise RealtimeError(
                "Invalid input_audio_transcription: it must be an object or null.",
                param="session.input_audio_transcription",
            )
        changes["transcription_model"] = (
            (asked.get("model") or "gummy-realtime-v1") if asked else None
        )
        for key in ("language", "prompt"):
            value = asked.get(key) if asked else None
            if value is not None and not isinstance(value, str):
                raise RealtimeError(
                    f"Invalid input_audio_transcription.{key}: it must be a string.",
                    param=f"session.input_audio_transcription.{key}",
                )
            changes[f"transcription_{key}"] = value or None
    if "turn_detection" in session:
        changes["turn_detection"] = _turn_detection(session["turn_detection"], config)
    for key, low, high, open_high in (
        ("temperature", 0.0, 2.0, True),
        ("top_p", 0.0, 1.0, False),
        ("presence_penalty", -2.0, 2.0, False),
        ("repetition_penalty", 0.0, 10.0, False),
    ):
        value = _number(session, key, low, high, high_open=open_high)
        if value is not None:
            changes[key] = value
    top_k = _integer(session, "top_k", 0, 2**31 - 1)
    if top_k is not None:
        changes["top_k"] = top_k
    max_tokens = _integer(session, "max_tokens", 1, spec.limits.max_output)
    if max_tokens is not None:
        changes["max_tokens"] = max_tokens
    seed = _integer(session, "seed", -1, 2**31 - 1)
    if seed is not None:
        changes["seed"] = seed
    if "smooth_output" in session:
        smooth = session["smooth_output"]
        if smooth is not None and not isinstance(smooth, bool):
            raise RealtimeError(
                "Invalid smooth_output: it must be a boolean or null.",
                param="session.smooth_output",
            )
        changes["smooth_output"] = smooth
    return replace(config, **changes)


def _formats(session: dict[str, Any]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if "input_audio_format" in session:
        fmt = session["input_audio_format"]
        if fmt not in INPUT_FORMATS:
            raise RealtimeError(
                f"Invalid input_audio_format: {fmt!r}. Input audio is PCM16 at 16 kHz: "
                "'pcm16' or 'pcm'.",
                param="session.input_audio_format",
            )
        changes["input_audio_format"] = fmt
    if "output_audio_format" in session:
        fmt = session["output_audio_format"]
        if fmt not in OUTPUT_FORMATS:
            raise RealtimeError(
                f"Invalid output_audio_format: {fmt!r}. Output audio is PCM16 at 24 kHz: "
                "'pcm24', 'pcm16' or 'pcm'.",
                param="session.output_audio_format",
            )
        changes["output_audio_format"] = fmt
    audio = session.get("audio")
    if audio is not None:
        if not isinstance(audio, dict):
            raise RealtimeError("Invalid audio: it must be an object.", param="session.audio")
        for side, key, rate in (
            ("input", "input_audio_format", 16_000),
            ("output", "output_audio_format", 24_000),
        ):
            part = audio.get(side)
            if isinstance(part, dict) and "format" in part:
                changes[key] = _format(part["format"], f"audio.{side}.format", rate)
    return changes


def _turn_detection(value: Any, config: SessionConfig) -> TurnDetection | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RealtimeError(
            "Invalid turn_detection: it must be an object or null.", param="session.turn_detection"
        )
    kind = value.get("type", "server_vad")
    if kind != "server_vad":
        raise RealtimeError(
            f"Invalid turn_detection.type: {kind!r}. Supported: 'server_vad', or null for manual "
            "mode.",
            param="session.turn_detection.type",
        )
    base = config.turn_detection or TurnDetection()
    changes: dict[str, Any] = {}
    where = "session.turn_detection"
    threshold = _number(value, "threshold", -1.0, 1.0, where=where)
    if threshold is not None:
        changes["threshold"] = threshold
    for key, low, high in (("silence_duration_ms", 200, 6000), ("prefix_padding_ms", 0, 10_000)):
        number = _integer(value, key, low, high, where=where)
        if number is not None:
            changes[key] = number
    for key in ("create_response", "interrupt_response"):
        if key in value:
            if not isinstance(value[key], bool):
                raise RealtimeError(
                    f"Invalid turn_detection.{key}: it must be a boolean.",
                    param=f"session.turn_detection.{key}",
                )
            changes[key] = value[key]
    try:
        return replace(base, **changes)
    except TypeError as exc:  # pragma: no cover - the keys are fixed above
        raise RealtimeError(str(exc), param="session.turn_detection") from None

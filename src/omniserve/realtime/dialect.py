"""The wire dialects of a realtime session: the vendor's, and OpenAI's Realtime (GA and beta).

The session speaks the vendor's events (``protocol``); a dialect translates what a client
sends into them (``inbound``) and what the session sends into the client's (``outbound``, one
event may become several). The vendor's dialect is the identity. OpenAI's Realtime API
(``/v1/realtime``) differs in names and shapes, not in meaning:

- GA (the default): ``session.type: "realtime"``, ``output_modalities`` (``["audio"]`` is
  speech with its transcript), the nested ``audio.input.{format, transcription,
  turn_detection}`` and ``audio.output.{format, voice}``; ``conversation.item.added`` and
  ``.done`` instead of ``.created``; ``response.output_audio.delta``,
  ``response.output_audio_transcript.delta``, ``response.output_text.delta``; assistant content
  ``output_audio`` / ``output_text``.
- beta (the ``OpenAI-Beta: realtime=v1`` header): the vendor's flat session and event names,
  with OpenAI's formats and fields (``max_response_output_tokens``).
- Both: input audio PCM16 at 24 kHz (16 kHz may be asked for), resampled to the session's
  16 kHz; the turn detector's threshold in [0, 1] (a speech probability; the vendor's is in
  [-1, 1]); usage as ``input_token_details`` / ``output_token_details``; a cancelled
  response's ``status_details.reason``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from omniserve.realtime.protocol import (
    INPUT_RATE,
    RealtimeError,
    SessionConfig,
    TurnDetection,
    new_id,
)
from omniserve.speech.pcm import PcmResampler

OPENAI_RATE = 24_000  # OpenAI's PCM16, in and out


@dataclass
class SessionView:
    """What a dialect may read of its session."""

    id: str
    model: str
    config: Callable[[], SessionConfig]
    expires_at: int  # unix seconds
    cancel_reason: Callable[[], str | None]  # "turn_detected" | "client_cancelled"


class Dialect(Protocol):
    def bind(self, view: SessionView) -> None: ...

    def inbound(self, event: dict[str, Any]) -> dict[str, Any]:
        """A client event as the session's (vendor's) event; raises ``RealtimeError``."""
        ...

    def outbound(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """A session event as the client's events."""
        ...


class VendorDialect:
    """Model Studio's own events: nothing to translate."""

    def bind(self, view: SessionView) -> None:
        pass

    def inbound(self, event: dict[str, Any]) -> dict[str, Any]:
        return event

    def outbound(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        return [event]


# The session's events whose names differ in OpenAI's GA dialect.
_GA_NAMES = {
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
}


class OpenAIDialect:
    """OpenAI's Realtime events, GA or (``beta``) the ``realtime=v1`` beta."""

    def __init__(self, *, beta: bool = False) -> None:
        self.beta = beta
        self.input_rate = OPENAI_RATE
        self._resampler = PcmResampler(INPUT_RATE)
        self._view: SessionView | None = None
        self._items: dict[str, dict[str, Any]] = {}  # assistant items in progress (GA)

    def bind(self, view: SessionView) -> None:
        self._view = view

    @property
    def view(self) -> SessionView:
        assert self._view is not None, "bind() was not called"
        return self._view

    # -- client → session ------------------------------------------------------------------

    def inbound(self, event: dict[str, Any]) -> dict[str, Any]:
        kind = event["type"]
        if kind == "session.update":
            session = event.get("session")
            if not isinstance(session, dict):
                raise RealtimeError("Invalid session: it must be an object.", param="session")
            update = self._flat_update(session) if self.beta else self._ga_update(session)
            return {**event, "session": update}
        if kind == "input_audio_buffer.append":
            return {**event, "audio": self._audio(event.get("audio"), "audio")}
        if kind == "conversation.item.create":
            item = event.get("item")
            if isinstance(item, dict) and isinstance(item.get("content"), list):
                item = {**item, "content": [self._content_in(p) for p in item["content"]]}
            return {**event, "item": item}
        if kind == "response.create":
            options = event.get("response")
            if isinstance(options, dict) and "output_modalities" in options:
                modalities = self._modalities(options["output_modalities"], "response")
                options = {**options, "modalities": modalities}
            return {**event, "response": options}
        if kind == "output_audio_buffer.clear":
            # WebRTC only at OpenAI: over a WebSocket the client owns its playback.
            raise RealtimeError(
                "output_audio_buffer.clear is for WebRTC connections; over a WebSocket, stop "
                "playing on the client and send response.cancel.",
                param="type",
            )
        return event

    def _audio(self, value: Any, param: str) -> Any:
        """Base64 PCM16 at the client's rate, as base64 PCM16 at 16 kHz (bad input is left for
        the session to refuse with its own error)."""
        if self.input_rate == INPUT_RATE or not isinstance(value, str) or not value:
            return value
        try:
            pcm = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return value
        if len(pcm) % 2:
            return value
        samples = np.frombuffer(pcm, dtype="<i2")
        return base64.b64encode(self._resampler.feed(samples, self.input_rate)).decode("ascii")

    def _content_in(self, part: Any) -> Any:
        if not isinstance(part, dict):
            return part
        kind = part.get("type")
        if kind == "input_audio" and "audio" in part:
            # Whole clips: a resampler of their own, so no piece of the stream leaks in.
            if self.input_rate == INPUT_RATE:
                return part
            clip = OpenAIDialect(beta=self.beta)
            return {**part, "audio": clip._audio(part["audio"], "item.content.audio")}
        if kind in ("output_text", "output_audio"):
            text = part.get("text") if kind == "output_text" else part.get("transcript")
            return {"type": "text", "text": text}
        if kind == "audio" and "transcript" in part:  # beta assistant content
            return {"type": "text", "text": part.get("transcript")}
        return part

    def _modalities(self, value: Any, where: str) -> list[str]:
        name = "output_modalities" if not self.beta else "modalities"
        if isinstance(value, list) and value and set(value) <= {"text", "audio"}:
            return ["text", "audio"] if "audio" in value else ["text"]
        raise RealtimeError(
            f"Invalid {name}: {value!r}. Supported: ['audio'] (speech with its transcript) or "
            "['text'].",
            param=f"{where}.{name}",
        )

    def _ga_update(self, s: dict[str, Any]) -> dict[str, Any]:
        if s.get("type", "realtime") != "realtime":
            raise RealtimeError(
                f"Invalid session.type: {s.get('type')!r}. This endpoint serves 'realtime' "
                "sessions.",
                param="session.type",
            )
        out: dict[str, Any] = {}
        if "output_modalities" in s:
            out["modalities"] = self._modalities(s["output_modalities"], "session")
        if "instructions" in s:
            out["instructions"] = s["instructions"]
        if "max_output_tokens" in s:
            out.update(_max_tokens(s["max_output_tokens"], "session.max_output_tokens"))
        _no_tools(s)
        audio = s.get("audio")
        if audio is not None and not isinstance(audio, dict):
            raise RealtimeError("Invalid audio: it must be an object.", param="session.audio")
        inputs = (audio or {}).get("input")
        if isinstance(inputs, dict):
            if inputs.get("format") is not None:
                self.input_rate = _format(inputs["format"], "session.audio.input.format", True)
            if "turn_detection" in inputs:
                out["turn_detection"] = _turn_detection_in(
                    inputs["turn_detection"], "session.audio.input.turn_detection"
                )
            if "transcription" in inputs:
                out["input_audio_transcription"] = inputs["transcription"]
        outputs = (audio or {}).get("output")
        if isinstance(outputs, dict):
            if outputs.get("format") is not None:
                _format(outputs["format"], "session.audio.output.format", False)
            voice = outputs.get("voice")
            if isinstance(voice, dict):
                voice = voice.get("id")
            if voice is not None:
                out["voice"] = voice
        return out

    def _flat_update(self, s: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("voice", "instructions", "input_audio_transcription", "temperature"):
            if key in s:
                out[key] = s[key]
        if "modalities" in s:
            out["modalities"] = self._modalities(s["modalities"], "session")
        if "max_response_output_tokens" in s:
            out.update(
                _max_tokens(s["max_response_output_tokens"], "session.max_response_output_tokens")
            )
        if "turn_detection" in s:
            out["turn_detection"] = _turn_detection_in(
                s["turn_detection"], "session.turn_detection"
            )
        for key in ("input_audio_format", "output_audio_format"):
            if key in s and s[key] != "pcm16":
                raise RealtimeError(
                    f"Invalid {key}: {s[key]!r}. Supported: 'pcm16' (24 kHz).",
                    param=f"session.{key}",
                )
        if s.get("input_audio_format") == "pcm16":
            self.input_rate = OPENAI_RATE
        _no_tools(s)
        return out

    # -- session → client ------------------------------------------------------------------

    def outbound(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event["type"]
        if kind in ("session.created", "session.updated"):
            return [{**event, "session": self._session()}]
        if kind in ("response.created", "response.done"):
            return [{**event, "response": self._response(event["response"])}]
        if kind in ("response.content_part.added", "response.content_part.done"):
            part = event["part"]
            if part.get("type") == "audio":
                part = {"type": "audio", "transcript": part.get("text", "")}
            return [{**event, "part": part}]
        if kind in ("response.output_item.added", "response.output_item.done"):
            item = self._item(event["item"])
            out = [{**event, "item": item}]
            if kind == "response.output_item.done" and not self.beta:
                previous = self._items.pop(item["id"], {}).get("previous_item_id")
                out.append(_event("conversation.item.done", previous_item_id=previous, item=item))
            return out
        if kind == "conversation.item.created":
            item = self._item(event["item"])
            if self.beta:
                return [{**event, "item": item}]
            added = {**event, "type": "conversation.item.added", "item": item}
            if item.get("status") == "in_progress":  # an answer: done with its output item
                self._items[item["id"]] = {"previous_item_id": event.get("previous_item_id")}
                return [added]
            done = _event(
                "conversation.item.done", previous_item_id=event.get("previous_item_id"), item=item
            )
            return [added, done]
        if not self.beta and kind in _GA_NAMES:
            return [{**event, "type": _GA_NAMES[kind]}]
        return [event]

    def _session(self) -> dict[str, Any]:
        view = self.view
        c = view.config()
        audio_out = c.audio_output
        transcription = {"model": c.transcription_model} if c.transcription_model else None
        turns = _turn_detection_out(c.turn_detection)
        max_tokens: int | str = c.max_tokens if c.max_tokens is not None else "inf"
        if self.beta:
            return {
                "id": view.id,
                "object": "realtime.session",
                "model": view.model,
                "expires_at": view.expires_at,
                "modalities": list(c.modalities),
                "instructions": c.instructions,
                "voice": c.voice,
                "input_audio_format": "pcm16",
                "output_audio_format": "pcm16",
                "input_audio_transcription": transcription,
                "turn_detection": turns,
                "tools": [],
                "tool_choice": "auto",
                "temperature": c.temperature if c.temperature is not None else 0.8,
                "max_response_output_tokens": max_tokens,
            }
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": view.id,
            "model": view.model,
            "expires_at": view.expires_at,
            "output_modalities": ["audio"] if audio_out else ["text"],
            "instructions": c.instructions,
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": max_tokens,
            "tracing": None,
            "truncation": "auto",
            "prompt": None,
            "include": None,
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": self.input_rate},
                    "transcription": transcription,
                    "noise_reduction": None,
                    "turn_detection": turns,
                },
                "output": {
                    "format": {"type": "audio/pcm", "rate": OPENAI_RATE},
                    "voice": c.voice,
                    "speed": 1.0,
                },
            },
        }

    def _response(self, r: dict[str, Any]) -> dict[str, Any]:
        status = r["status"]
        details: dict[str, Any] | None = None
        if status == "cancelled":
            details = {"type": "cancelled", "reason": self.view.cancel_reason()}
        elif status == "failed":
            details = {"type": "failed", "error": None}
        elif status == "completed" and r.get("usage") is not None:
            details = {"type": "completed"}
        c = self.view.config()
        audio_out = "audio" in r["modalities"]
        out: dict[str, Any] = {
            "id": r["id"],
            "object": "realtime.response",
            "conversation_id": r["conversation_id"],
            "status": status,
            "status_details": details,
            "output": [self._item(i) for i in r.get("output", [])],
            "max_output_tokens": c.max_tokens if c.max_tokens is not None else "inf",
            "metadata": None,
            "usage": _usage(r.get("usage")),
        }
        if self.beta:
            out.update(modalities=r["modalities"], voice=r["voice"], output_audio_format="pcm16")
        else:
            out["output_modalities"] = ["audio"] if audio_out else ["text"]
            out["audio"] = {
                "output": {
                    "format": {"type": "audio/pcm", "rate": OPENAI_RATE},
                    "voice": r["voice"],
                }
            }
        return out

    def _item(self, item: dict[str, Any]) -> dict[str, Any]:
        if item.get("role") != "assistant":
            return item
        content = []
        for part in item.get("content", []):
            kind = part.get("type")
            if kind == "audio":
                name = "audio" if self.beta else "output_audio"
                content.append({"type": name, "transcript": part.get("transcript", "")})
            elif kind == "text":
                name = "text" if self.beta else "output_text"
                content.append({"type": name, "text": part.get("text", "")})
            else:
                content.append(part)
        return {**item, "content": content}


def _event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": new_id("event"), "type": kind, **fields}


def _format(value: Any, where: str, is_input: bool) -> int:
    """OpenAI's ``{type, rate}``: PCM at 24 kHz (16 kHz too for input); the rate."""
    if not isinstance(value, dict):
        raise RealtimeError(f"Invalid {where}: it must be an object.", param=where)
    kind = value.get("type", "audio/pcm")
    if kind != "audio/pcm":
        raise RealtimeError(
            f"Invalid {where}.type: {kind!r}. Supported: 'audio/pcm' (PCM16 mono).",
            param=f"{where}.type",
        )
    rate = value.get("rate", OPENAI_RATE)
    rates = (OPENAI_RATE, INPUT_RATE) if is_input else (OPENAI_RATE,)
    if rate not in rates:
        raise RealtimeError(
            f"Invalid {where}.rate: {rate!r}. Supported: {' or '.join(map(str, rates))}.",
            param=f"{where}.rate",
        )
    return int(rate)


def _turn_detection_in(value: Any, where: str) -> Any:
    """OpenAI's turn detection as the vendor's: the threshold from [0, 1] to [-1, 1]."""
    if not isinstance(value, dict):
        return value  # null: manual mode; anything else: the session's own error
    kind = value.get("type", "server_vad")
    if kind != "server_vad":
        raise RealtimeError(
            f"Invalid {where.removeprefix('session.')}.type: {kind!r}. Supported: 'server_vad', "
            "or null for manual turns.",
            param=f"{where}.type",
        )
    out = {k: v for k, v in value.items() if k not in ("idle_timeout_ms", "eagerness")}
    threshold = value.get("threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise RealtimeError(
                f"Invalid {where.removeprefix('session.')}.threshold: it must be a number.",
                param=f"{where}.threshold",
            )
        if not 0.0 <= threshold <= 1.0:
            raise RealtimeError(
                f"Invalid {where.removeprefix('session.')}.threshold: {threshold}. It must be in "
                "[0, 1].",
                param=f"{where}.threshold",
            )
        out["threshold"] = threshold * 2.0 - 1.0
    return out


def _turn_detection_out(t: TurnDetection | None) -> dict[str, Any] | None:
    if t is None:
        return None
    wire = t.wire()
    wire["threshold"] = round((t.threshold + 1.0) / 2.0, 6)
    wire["idle_timeout_ms"] = None
    return wire


def _max_tokens(value: Any, where: str) -> dict[str, Any]:
    if value == "inf" or value is None:
        return {}
    return {"max_tokens": value}


def _no_tools(s: dict[str, Any]) -> None:
    if s.get("tools"):
        raise RealtimeError(
            "Tools are not supported in realtime sessions: the models answer in speech and "
            "text only.",
            param="session.tools",
        )


def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    i, o = usage["input_tokens_details"], usage["output_tokens_details"]
    return {
        "total_tokens": usage["total_tokens"],
        "input_tokens": usage["input_tokens"],
        "output_tokens": usage["output_tokens"],
        "input_token_details": {
            "text_tokens": i["text_tokens"],
            "audio_tokens": i["audio_tokens"],
            "image_tokens": i.get("image_tokens", 0),
            "cached_tokens": 0,
        },
        "output_token_details": {
            "text_tokens": o["text_tokens"],
            "audio_tokens": o["audio_tokens"],
        },
    }

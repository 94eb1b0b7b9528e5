"""Fake upstream servers: real HTTP on 127.0.0.1 speaking each upstream's streaming dialect.

``FakeUpstream(kind, behaviour)`` runs uvicorn on an ephemeral port in a thread (the way
``helpers.live_server`` does) around a small raw-ASGI app with three routes:

- ``POST {base}/chat/completions``: streaming only (``"stream"`` not ``true`` -> 400);
- ``GET {base}/models``: the model ids seen in requests, then ``"fake-model"``;
- ``GET /health``: vLLM's health route, 200 or 503 after ``Behaviour.healthy`` (empty body).

``{base}`` is ``/compatible-mode/v1`` for ``dashscope`` and ``/v1`` otherwise. Every event is
``data: <json>\\n\\n`` and a stream ends with ``data: [DONE]\\n\\n``; one ``id``
(``chatcmpl-<hex>``) and ``created`` per response; ``model`` echoes the request's.

What a stream holds, in order: a role chunk; reasoning pieces (only when the request asks for
thinking); then text pieces and audio pieces interleaved ``t0, a0, t1, a1, ...`` (the longer
list's tail last), or every text piece then one audio piece when ``audio_at_end``; then the
kind's finish; then, when ``stream_options.include_usage`` is true and ``Behaviour.usage``, a
usage chunk with ``choices: []``.

Audio is a 440 Hz sine at amplitude 0.3, ``round(audio_seconds * rate)`` PCM16 mono samples,
split into ``audio_chunks`` pieces of whole samples (``numpy.array_split``). It is produced only
when the request's ``modalities`` contains ``"audio"`` and ``audio_seconds > 0``.

Token counts are made up but consistent: one token per text piece and per reasoning piece,
``ceil(12.5 * seconds)`` audio tokens, and the prompt at one token per 4 characters of the
messages' text (at least 1).

Kinds
-----
``dashscope`` (Model Studio compatible mode, omniserve's own format):
    role ``{"content": "", "role": "assistant"}``; text ``{"content": piece}``; reasoning
    ``{"content": null, "reasoning_content": piece}`` (asked by ``enable_thinking: true``); audio
    ``{"audio": {"data", "expires_at": created, "id": "audio_<hex>"}}``, headerless PCM16 at
    24 kHz whatever ``audio_rate`` says; finish ``{"content": ""}`` with ``finish_reason:
    "stop"``; usage with ``prompt_tokens_details.text_tokens`` and
    ``completion_tokens_details.text_tokens`` (+ ``audio_tokens`` when usage_audio_tokens,
    + ``reasoning_tokens`` when reasoning was streamed). Errors:
    ``{"error": {"code", "message", "type", "param": null}, "id": "chatcmpl-..",
    "request_id": ".."}`` with these defaults (code / type):

    ====  ========================  =====================
    400   invalid_parameter_error   invalid_request_error
    401   invalid_api_key           invalid_request_error
    403   AccessDenied              invalid_request_error
    404   model_not_found           invalid_request_error
    429   limit_requests            limit_requests
    500   InternalError             internal_error
    503   ServiceUnavailable        service_unavailable
    ====  ========================  =====================

    (other 4xx as 400, other 5xx as 500). Mid-stream: ``{"error": {"message", "type":
    "internal_error", "param": null, "code": "InternalError"}}``.

``vllm-omni`` (vLLM's ChatCompletionStreamResponse plus a top-level ``modality``):
    chunks ``{"id", "object", "created", "model", "choices": [{"index": 0, "delta",
    "logprobs": null, "finish_reason"}], "modality"}``; role ``{"role": "assistant",
    "content": ""}`` (modality text); text ``{"content": piece}`` (text); reasoning
    ``{"reasoning_content": piece}`` (text; asked by ``chat_template_kwargs.enable_thinking``);
    audio ``{"content": base64}`` (audio) at ``audio_rate``: a whole WAV file per chunk when
    ``audio.format`` is ``"wav"`` or absent (or any value but ``"pcm16"``/``"pcm"``) and
    ``wav_per_chunk``, headerless PCM16 otherwise. ``finish_reason: "stop"`` only on the very last
    content chunk (no finish chunk of its own). The usage chunk has no ``modality`` and counts
    text (+ reasoning) only unless usage_audio_tokens (then ``completion_tokens_details``
    ``{"text_tokens", "audio_tokens"}`` too). A top-level ``voice`` other than ethan / chelsie /
    aiden (case-insensitively) is a 400. Errors: ``{"object": "error", "message", "type",
    "param": null, "code": <status>}`` with type BadRequestError (400, other 4xx),
    AuthenticationError 401, NotFoundError 404, RateLimitError 429, InternalServerError (500,
    other 5xx), ServiceUnavailableError 503. Mid-stream: ``{"error": {"object": "error",
    "message", "type": "InternalServerError", "code": 500}}``.

``openai`` (a plain OpenAI-compatible server: vLLM text-only, gpt-4o-audio-preview):
    chunks ``{"id", "object", "created", "model", "choices": [...]}``. Without audio: role
    ``{"role": "assistant", "content": ""}``, text ``{"content": piece}``, finish ``{}`` with
    ``"stop"``. With audio: role ``{"role": "assistant", "content": null}``; each step is
    ``{"content": null, "audio": {"id", "transcript": text piece, "data": base64 PCM16 at
    audio_rate}}`` (a key left out when that step has no such piece); the last delta is
    ``{"content": null, "audio": {"id", "expires_at"}}`` and carries ``finish_reason: "stop"``.
    Reasoning, as vLLM sends it, ``{"reasoning_content": piece}`` when
    ``chat_template_kwargs.enable_thinking`` is true. Usage: prompt / completion / total (+
    ``completion_tokens_details`` as for vllm-omni when usage_audio_tokens). Errors:
    ``{"error": {"message", "type", "param": null, "code"}}``: type invalid_request_error with
    code null (400), invalid_api_key (401), model_not_found (404); 429 type requests, code
    rate_limit_exceeded; 5xx type server_error, code null. Mid-stream: the 500 one.

Failure knobs (``Behaviour``): ``status`` != 200 answers ``error_body`` (default the kind's
envelope) with that status; ``error_after_chunks=N`` sends N chunks, one error event
(``error_body`` when given, else the kind's mid-stream error) and ``[DONE]`` (counted in
``finished``); ``die_after_chunks=N`` sends N chunks and closes the connection without
``[DONE]`` or the chunked terminator (counted in neither ``finished`` nor ``disconnected``);
``hang`` holds the request without answering until the client goes away. "Chunks" counts every
``data:`` event (role and usage chunks included, ``[DONE]`` not). ``first_byte_delay_s`` delays
every chat response's headers (validation errors included); ``chunk_delay_s`` is slept before
each event but the first (``[DONE]`` included).

OpenAI's audio endpoints (every kind)
-------------------------------------
``POST {base}/audio/speech`` (JSON): ``audio_seconds`` of the sine at ``audio_rate`` as raw
PCM16 (``response_format`` ``pcm``) or one WAV file (anything else), sent in ``audio_chunks``
pieces; the ``speed`` field divides the length. ``input`` missing or empty is a 400, and for
``vllm-omni`` a ``voice`` other than ethan / chelsie / aiden is a 400 naming the speakers, as
for chat. ``status`` != 200 answers as chat does.

``POST {base}/audio/transcriptions`` (multipart): ``transcript`` as ``json`` (``{"text"}``),
``text`` or ``verbose_json`` (``task``, ``language`` "english", ``duration`` from the WAV,
two segments splitting the text at its middle space); a ``response_format`` not in
``transcription_formats`` is a 400 whose message names it (as a json-only model answers). The
upload must be a readable WAV (else 400). Requests are recorded in ``requests`` as chat's are,
a transcription's body being its form fields plus ``file_bytes`` (the file's bytes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import numpy as np
import soundfile as sf
import uvicorn

Kind = Literal["vllm-omni", "dashscope", "openai"]
KINDS: tuple[Kind, ...] = ("vllm-omni", "dashscope", "openai")
VLLM_OMNI_VOICES = frozenset({"ethan", "chelsie", "aiden"})
DASHSCOPE_RATE = 24_000
AUDIO_TOKENS_PER_SECOND = 12.5

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass
class Behaviour:
    """How a fake answers; see the module docstring for every field's wire effect."""

    text: str = "Hello from upstream. How are you today?"
    piece_chars: int = 6
    reasoning: str = ""
    audio_seconds: float = 1.0
    audio_rate: int = 24000
    audio_chunks: int = 4
    audio_at_end: bool = False
    wav_per_chunk: bool = True
    chunk_delay_s: float = 0.0
    first_byte_delay_s: float = 0.0
    status: int = 200
    error_body: dict[str, Any] | None = None
    error_after_chunks: int | None = None
    die_after_chunks: int | None = None
    hang: bool = False
    usage: bool = True
    usage_audio_tokens: bool | None = None
    healthy: bool = True
    transcript: str = "Hello from the upstream recognizer."
    transcription_formats: tuple[str, ...] = ("json", "text", "verbose_json")


class _Severed(Exception):
    """Raised inside a stream to make uvicorn drop the connection mid-body."""


class _QuietSevered(logging.Filter):
    """Keeps uvicorn from logging the deliberate ``_Severed`` as an application error."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _Severed)


_QUIET = _QuietSevered()


def sine_pcm(seconds: float, rate: int) -> np.ndarray:
    """The fakes' audio: a 440 Hz sine at amplitude 0.3, as int16 samples."""
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` (e.g. a counter of a fake, updated on the server thread)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def _pieces(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _wav(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _prompt_tokens(body: dict[str, Any]) -> int:
    chars = 0
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
    return max(1, chars // 4)


def _thinking(kind: Kind, body: dict[str, Any]) -> bool:
    if kind == "dashscope":
        return body.get("enable_thinking") is True
    kwargs = body.get("chat_template_kwargs")
    return isinstance(kwargs, dict) and kwargs.get("enable_thinking") is True


def _dashscope_codes(status: int) -> tuple[str, str]:
    codes = {
        400: ("invalid_parameter_error", "invalid_request_error"),
        401: ("invalid_api_key", "invalid_request_error"),
        403: ("AccessDenied", "invalid_request_error"),
        404: ("model_not_found", "invalid_request_error"),
        429: ("limit_requests", "limit_requests"),
        500: ("InternalError", "internal_error"),
        503: ("ServiceUnavailable", "service_unavailable"),
    }
    return codes.get(status, codes[500] if status >= 500 else codes[400])


def _vllm_type(status: int) -> str:
    types = {
        401: "AuthenticationError",
        404: "NotFoundError",
        429: "RateLimitError",
        503: "ServiceUnavailableError",
    }
    return types.get(status, "InternalServerError" if status >= 500 else "BadRequestError")


def _openai_codes(status: int) -> tuple[str, str | None]:
    codes: dict[int, tuple[str, str | None]] = {
        401: ("invalid_request_error", "invalid_api_key"),
        404: ("invalid_request_error", "model_not_found"),
        429: ("requests", "rate_limit_exceeded"),
    }
    return codes.get(
        status, ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    )


def error_envelope(
    kind: Kind, status: int, message: str, param: str | None = None
) -> dict[str, Any]:
    """The body a ``kind`` of upstream answers an HTTP error with."""
    if kind == "dashscope":
        code, type_ = _dashscope_codes(status)
        request_id = str(uuid.uuid4())
        return {
            "error": {"code": code, "message": message, "type": type_, "param": param},
            "id": f"chatcmpl-{request_id}",
            "request_id": request_id,
        }
    if kind == "vllm-omni":
        return {
            "object": "error",
            "message": message,
            "type": _vllm_type(status),
            "param": param,
            "code": status,
        }
    openai_type, openai_code = _openai_codes(status)
    return {"error": {"message": message, "type": openai_type, "param": param, "code": openai_code}}


def stream_error(kind: Kind, message: str = "fake upstream failed mid-stream") -> dict[str, Any]:
    """The ``data: {"error": ...}`` event a ``kind`` of upstream sends mid-stream."""
    if kind == "dashscope":
        return {
            "error": {
                "message": message,
                "type": "internal_error",
                "param": None,
                "code": "InternalError",
            }
        }
    if kind == "vllm-omni":
        return {
            "error": {
                "object": "error",
                "message": message,
                "type": "InternalServerError",
                "code": 500,
            }
        }
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


class _StreamState:
    def __init__(self) -> None:
        self.complete = False  # [DONE] is being (or was) sent


class _Response:
    """One streamed completion's chunks, in a kind's dialect."""

    def __init__(self, kind: Kind, body: dict[str, Any], b: Behaviour) -> None:
        self.kind = kind
        self.body = body
        self.b = b
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.audio_id = f"audio_{uuid.uuid4().hex}"
        self.created = int(time.time())
        model = body.get("model")
        self.model = model if isinstance(model, str) else "fake-model"

        self.reasoning = _pieces(b.reasoning, b.piece_chars) if _thinking(kind, body) else []
        self.text = _pieces(b.text, b.piece_chars)
        modalities = body.get("modalities")
        wants_audio = isinstance(modalities, list) and "audio" in modalities
        self.rate = DASHSCOPE_RATE if kind == "dashscope" else b.audio_rate
        samples = sine_pcm(b.audio_seconds, self.rate) if wants_audio else sine_pcm(0, self.rate)
        self.audio_seconds = len(samples) / self.rate
        parts = 1 if b.audio_at_end else max(1, b.audio_chunks)
        self.audio = [a for a in np.array_split(samples, parts) if len(a)] if len(samples) else []
        self.wants_audio = wants_audio

        audio_opts = body.get("audio")
        fmt = audio_opts.get("format") if isinstance(audio_opts, dict) else None
        self.wav = kind == "vllm-omni" and b.wav_per_chunk and fmt not in ("pcm16", "pcm")

    # -- shared

    def steps(self) -> list[tuple[str | None, np.ndarray | None]]:
        """(text piece, audio piece) pairs in stream order."""
        if self.b.audio_at_end:
            steps: list[tuple[str | None, np.ndarray | None]] = [(t, None) for t in self.text]
            return steps + [(None, a) for a in self.audio]
        n = max(len(self.text), len(self.audio))
        return [
            (
                self.text[i] if i < len(self.text) else None,
                self.audio[i] if i < len(self.audio) else None,
            )
            for i in range(n)
        ]

    def audio_tokens(self) -> int:
        return math.ceil(AUDIO_TOKENS_PER_SECOND * self.audio_seconds - 1e-9)

    def counts_audio(self) -> bool:
        flag = self.b.usage_audio_tokens
        return (self.kind == "dashscope") if flag is None else flag

    def include_usage(self) -> bool:
        options = self.body.get("stream_options")
        return self.b.usage and isinstance(options, dict) and options.get("include_usage") is True

    def chunks(self) -> list[dict[str, Any]]:
        if self.kind == "dashscope":
            out = self._dashscope()
        elif self.kind == "vllm-omni":
            out = self._vllm_omni()
        else:
            out = self._openai()
        if self.include_usage():
            out.append(self._usage_chunk())
        return out

    def _usage_chunk(self) -> dict[str, Any]:
        prompt = _prompt_tokens(self.body)
        text, reasoning = len(self.text), len(self.reasoning)
        audio = self.audio_tokens() if self.counts_audio() else 0
        completion = text + reasoning + audio
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if self.kind == "dashscope":
            details: dict[str, Any] = {"text_tokens": text}
            if self.counts_audio():
                details["audio_tokens"] = audio
            if reasoning:
                details["reasoning_tokens"] = reasoning
            usage["prompt_tokens_details"] = {"text_tokens": prompt}
            usage["completion_tokens_details"] = details
            return self._dashscope_chunk([], usage)
        if self.counts_audio():
            usage["completion_tokens_details"] = {
                "text_tokens": text + reasoning,
                "audio_tokens": audio,
            }
        return {**self._head(), "choices": [], "usage": usage}

    def _head(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }

    @staticmethod
    def _choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    # -- dashscope

    def _dashscope_chunk(
        self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return {
            "choices": choices,
            "object": "chat.completion.chunk",
            "usage": usage,
            "created": self.created,
            "system_fingerprint": None,
            "model": self.model,
            "id": self.id,
        }

    def _dashscope(self) -> list[dict[str, Any]]:
        def delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return self._dashscope_chunk([self._choice(d, finish)])

        out = [delta({"content": "", "role": "assistant"})]
        out += [delta({"content": None, "reasoning_content": r}) for r in self.reasoning]
        for text, audio in self.steps():
            if text is not None:
                out.append(delta({"content": text}))
            if audio is not None:
                data = {
                    "data": _b64(audio.tobytes()),
                    "expires_at": self.created,
                    "id": self.audio_id,
                }
                out.append(delta({"audio": data}))
        out.append(delta({"content": ""}, "stop"))
        return out

    # -- vllm-omni

    def _vllm_omni(self) -> list[dict[str, Any]]:
        def chunk(d: dict[str, Any], modality: str) -> dict[str, Any]:
            return {**self._head(), "choices": [self._choice(d)], "modality": modality}

        out = [chunk({"role": "assistant", "content": ""}, "text")]
        content: list[dict[str, Any]] = [
            chunk({"reasoning_content": r}, "text") for r in self.reasoning
        ]
        for text, audio in self.steps():
            if text is not None:
                content.append(chunk({"content": text}, "text"))
            if audio is not None:
                data = _wav(audio, self.rate) if self.wav else audio.tobytes()
                content.append(chunk({"content": _b64(data)}, "audio"))
        if not content:
            content.append(chunk({"content": ""}, "text"))
        content[-1]["choices"][0]["finish_reason"] = "stop"
        return out + content

    # -- openai

    def _openai(self) -> list[dict[str, Any]]:
        def chunk(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**self._head(), "choices": [self._choice(d, finish)]}

        if not self.wants_audio:
            out = [chunk({"role": "assistant", "content": ""})]
            out += [chunk({"reasoning_content": r}) for r in self.reasoning]
            out += [chunk({"content": t}) for t in self.text]
            return [*out, chunk({}, "stop")]
        out = [chunk({"role": "assistant", "content": None})]
        out += [chunk({"reasoning_content": r}) for r in self.reasoning]
        for text, audio in self.steps():
            piece: dict[str, Any] = {"id": self.audio_id}
            if text is not None:
                piece["transcript"] = text
            if audio is not None:
                piece["data"] = _b64(audio.tobytes())
            out.append(chunk({"content": None, "audio": piece}))
        end = {"id": self.audio_id, "expires_at": self.created + 3600}
        return [*out, chunk({"content": None, "audio": end}, "stop")]


class FakeUpstream:
    """A fake upstream server of one ``kind``; a context manager that serves while entered."""

    def __init__(self, kind: Kind, behaviour: Behaviour | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        self.kind: Kind = kind
        self.behaviour: Behaviour = behaviour or Behaviour()
        self.requests: list[dict[str, Any]] = []
        self.started = 0
        self.finished = 0
        self.disconnected = 0
        self.root = ""
        self.base_url = ""
        self.base_path = "/compatible-mode/v1" if kind == "dashscope" else "/v1"
        self._models: list[str] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._closing = False

    # -- lifecycle

    def __enter__(self) -> FakeUpstream:
        config = uvicorn.Config(
            self._app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="off",
            interface="asgi3",
            timeout_graceful_shutdown=5,
        )
        logger = logging.getLogger("uvicorn.error")
        if _QUIET not in logger.filters:
            logger.addFilter(_QUIET)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True, name=f"fake-{self.kind}")
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        self._server, self._thread = server, thread
        self.root = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.root}{self.base_path}"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True  # in-flight streams and hangs drop their connections
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)

    def stop_serving(self) -> None:
        """Close the listening socket (new connections are refused) and idle keep-alive ones.

        Streams in flight run to their end, on connections that then close.
        """
        server = self._server
        if server is None:
            raise RuntimeError("not serving")

        async def close() -> None:
            for listener in server.servers:
                listener.close()
            for connection in list(server.server_state.connections):
                connection.shutdown()
            await asyncio.sleep(0.02)  # let the closes reach the wire

        loop = server.servers[0].get_loop()
        asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=5)

    # -- ASGI

    async def _app(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if path == "/health":
            if method != "GET":
                await self._json(send, 405, error_envelope(self.kind, 405, "Method Not Allowed"))
                return
            status = 200 if self.behaviour.healthy else 503
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        elif path == f"{self.base_path}/models" and method == "GET":
            ids = [*self._models, *(["fake-model"] if "fake-model" not in self._models else [])]
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in ids]
            await self._json(send, 200, {"object": "list", "data": data})
        elif path == f"{self.base_path}/chat/completions" and method == "POST":
            await self._chat(scope, receive, send)
        elif path == f"{self.base_path}/audio/speech" and method == "POST":
            await self._speech(scope, receive, send)
        elif path == f"{self.base_path}/audio/transcriptions" and method == "POST":
            await self._transcription(scope, receive, send)
        else:
            await self._json(send, 404, error_envelope(self.kind, 404, f"Not Found: {path}"))

    @staticmethod
    async def _json(send: Send, status: int, obj: Any) -> None:
        payload = json.dumps(obj).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _pause(self, seconds: float) -> None:
        """Sleep, dropping the connection if the fake is shutting down meanwhile."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while True:
            if self._closing:
                raise _Severed("fake upstream shutting down")
            left = end - loop.time()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.05))

    async def _chat(self, scope: Message, receive: Receive, send: Send) -> None:
        raw = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.requests.append({"body": body, "headers": headers})
        b = self.behaviour

        problem = self._invalid(body)
        if problem is not None:
            await self._pause(b.first_byte_delay_s)
            await self._json(send, 400, error_envelope(self.kind, 400, *problem))
            return
        assert isinstance(body, dict)
        if isinstance(body.get("model"), str) and body["model"] not in self._models:
            self._models.append(body["model"])
        if b.status != 200:
            await self._pause(b.first_byte_delay_s)
            message_text = f"fake upstream answers HTTP {b.status}"
            error = b.error_body or error_envelope(self.kind, b.status, message_text)
            await self._json(send, b.status, error)
            return

        self.started += 1
        state = _StreamState()
        streaming = asyncio.create_task(self._stream(send, _Response(self.kind, body, b), b, state))
        watching = asyncio.create_task(_wait_disconnect(receive))
        done, _ = await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
        if streaming in done:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            streaming.result()  # a _Severed goes on to uvicorn, which drops the connection
        elif state.complete:
            await streaming  # the disconnect was [DONE] completing the response
        else:
            streaming.cancel()
            with contextlib.suppress(asyncio.CancelledError, _Severed):
                await streaming
            self.disconnected += 1

    async def _refused(self, send: Send) -> bool:
        """Answers the behaviour's error status, if it has one."""
        b = self.behaviour
        if b.status == 200:
            return False
        await self._pause(b.first_byte_delay_s)
        message_text = f"fake upstream answers HTTP {b.status}"
        await self._json(
            send, b.status, b.error_body or error_envelope(self.kind, b.status, message_text)
        )
        return True

    async def _speech(self, scope: Message, receive: Receive, send: Send) -> None:
        raw = await _body(receive)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        self.requests.append({"body": body, "headers": headers, "path": "speech"})
        if await self._refused(send):
            return
        if not isinstance(body, dict) or not body.get("input"):
            await self._json(
                send, 400, error_envelope(self.kind, 400, "input is required", "input")
            )
            return
        voice = body.get("voice")
        if self.kind == "vllm-omni" and str(voice).lower() not in VLLM_OMNI_VOICES:
            message = f"Invalid speaker {voice!r}. Supported speakers: {sorted(VLLM_OMNI_VOICES)}"
            await self._json(send, 400, error_envelope(self.kind, 400, message, "voice"))
            return
        b = self.behaviour
        speed = float(body.get("speed") or 1.0)
        samples = sine_pcm(b.audio_seconds / speed, b.audio_rate)
        raw_pcm = body.get("response_format") == "pcm"
        data = samples.tobytes() if raw_pcm else _wav(samples, b.audio_rate)
        kind = b"audio/pcm" if raw_pcm else b"audio/wav"
        await self._pause(b.first_byte_delay_s)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", kind)]})  # fmt: skip
        size = -(-len(data) // max(1, b.audio_chunks))
        size += size % 2
        for at in range(0, len(data), size):
            if at:
                await self._pause(b.chunk_delay_s)
            await send(
                {"type": "http.response.body", "body": data[at : at + size], "more_body": True}
            )
        await send({"type": "http.response.body", "body": b""})

    async def _transcription(self, scope: Message, receive: Receive, send: Send) -> None:
        from starlette.datastructures import UploadFile
        from starlette.requests import Request

        raw = await _body(receive)

        async def replay() -> Message:
            return {"type": "http.request", "body": bytes(raw), "more_body": False}

        fields: dict[str, Any] = {}
        file_bytes = b""
        async with Request(scope, replay).form() as form:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    file_bytes = await value.read()
                    fields[key] = value.filename
                else:
                    fields[key] = value
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.requests.append(
            {
                "body": {**fields, "file_bytes": file_bytes},
                "headers": headers,
                "path": "transcriptions",
            }
        )
        if await self._refused(send):
            return
        b = self.behaviour
        fmt = fields.get("response_format", "json")
        if fmt not in b.transcription_formats:
            message = f"response_format {fmt!r} is not supported by this model"
            await self._json(send, 400, error_envelope(self.kind, 400, message, "response_format"))
            return
        try:
            audio, rate = sf.read(io.BytesIO(file_bytes))
        except Exception:
            await self._json(send, 400, error_envelope(self.kind, 400, "unreadable audio", "file"))
            return
        duration = len(audio) / rate
        if fmt == "text":
            payload = (b.transcript + "\n").encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain")]})  # fmt: skip
            await send({"type": "http.response.body", "body": payload})
            return
        answer: dict[str, Any] = {"text": b.transcript}
        if fmt == "verbose_json":
            cut = b.transcript.find(" ", len(b.transcript) // 2)
            halves = [b.transcript[:cut], b.transcript[cut + 1 :]] if cut > 0 else [b.transcript]
            step = duration / len(halves)
            answer = {
                "task": "transcribe", "language": "english", "duration": duration,
                "text": b.transcript,
                "segments": [
                    {"id": i, "start": i * step, "end": (i + 1) * step, "text": " " + half}
                    for i, half in enumerate(halves)
                ],
            }  # fmt: skip
        await self._json(send, 200, answer)

    def _invalid(self, body: Any) -> tuple[str, str | None] | None:
        """(message, param) of a 400, or None."""
        if not isinstance(body, dict):
            return "The request body is not a JSON object.", None
        if body.get("stream") is not True:
            if self.kind == "dashscope":
                message = (
                    "This model only support stream mode, please enable the stream parameter "
                    "to access the model. "
                )
            else:
                message = "This fake upstream only streams: set stream to true."
            return message, "stream"
        if self.kind == "vllm-omni" and "voice" in body:
            voice = body["voice"]
            if not isinstance(voice, str) or voice.lower() not in VLLM_OMNI_VOICES:
                supported = sorted(VLLM_OMNI_VOICES)
                return f"Invalid speaker {voice!r}. Supported speakers: {supported}", "voice"
        return None

    async def _stream(
        self, send: Send, response: _Response, b: Behaviour, state: _StreamState
    ) -> None:
        await self._pause(b.first_byte_delay_s)
        if b.hang:
            await self._pause(math.inf)
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        sent = 0

        async def event(payload: str, *, last: bool = False) -> None:
            nonlocal sent
            if sent:
                await self._pause(b.chunk_delay_s)
            if last:
                state.complete = True
                self.finished += 1
            data = f"data: {payload}\n\n".encode()
            await send({"type": "http.response.body", "body": data, "more_body": not last})
            sent += 1

        for chunk in response.chunks():
            if b.die_after_chunks is not None and sent >= b.die_after_chunks:
                raise _Severed("die_after_chunks")
            if b.error_after_chunks is not None and sent >= b.error_after_chunks:
                await event(json.dumps(b.error_body or stream_error(self.kind)))
                break
            await event(json.dumps(chunk))
        else:
            if b.die_after_chunks is not None and sent >= b.die_after_chunks:
                raise _Severed("die_after_chunks")
            if b.error_after_chunks is not None and sent >= b.error_after_chunks:
                await event(json.dumps(b.error_body or stream_error(self.kind)))
        await event("[DONE]", last=True)


async def _body(receive: Receive) -> bytearray:
    raw = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return raw
        raw += message.get("body", b"")
        if not message.get("more_body", False):
            return raw


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass

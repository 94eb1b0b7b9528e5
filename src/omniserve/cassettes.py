"""Cassettes: chat completions recorded to files, and answered from them byte for byte.

Recording (``cassettes.record``, any engine; meant for the upstream engine) writes every
exchange the chat-completions route answers, after its response ends however it ends, as one
pretty-printed JSON file in the directory::

    {"omniserve_cassette": 1, "recorded_at": "2025-01-01T12:00:00.000+00:00",
     "request": {"method": "POST", "path": "/compatible-mode/v1/chat/completions",
                 "headers": {...}, "body": <the request's JSON>},
     "response": {"status": 200, "headers": {"content-type": ..., "x-request-id": ...},
                  "chunks": [{"at_ms": 12.5, "data": "data: {...}\\n\\n"}, ...]}}

A chunk is one body piece exactly as it was sent (the ASGI ``send`` messages), ``at_ms`` after
the request arrived; a piece that is not UTF-8 on its own (a trickle fault may cut a
character) is ``data_base64`` instead of ``data``. An error answered before streaming is one
chunk, its JSON body. Response headers kept: content-type, retry-after, x-request-id. Files are
``NNNN-<slug of the last user message>.json``, numbered on from the highest number in the
directory, written on a worker thread to a temporary file and renamed into place; a response
ends for its client only once its cassette is written (a dropped or abandoned one: just after).
A body that is not JSON is not recorded: replay answers it as the server does (a 400).

Secrets never reach a file. Request headers that carry credentials (authorization, cookies, any
name with key, token, secret, auth, signature or password) are left out, and so are host,
content-length, connection, accept-encoding and the other hop-by-hop headers. In the body,
every string that is an http(s) URL has the values of its credential query parameters (names
with signature, token, key, secret, credential or password; ``expires``, ``x-amz-date``,
``sig``) replaced by ``REDACTED``; data URLs are content and stay. Should a response echo
such a URL or a secret value of eight characters or more, it is replaced there too (the only
time a recorded chunk differs from what was sent).

Replay (``cassettes.replay``) loads every ``*.json`` of the directory when the app is created;
a missing directory or a file that is not a cassette stops the server from starting
(``StartupError``). A request matches a cassette when its path (without ``/compatible-mode/v1``
or ``/v1``) and its body, redacted the same way (so a re-signed URL still matches), are equal,
as canonical JSON (sorted keys, no spaces). Cassettes with the same request are used in
file-name order, then from the first again. The answer is the recorded status, headers and
chunks, each at its recorded offset (``replay_pace = "recorded"``) or all at once
(``"fast"``). A request no cassette matches is a 400 that names the closest cassette (the
fewest differing JSON leaves) and where it differs. Authentication still applies; rate limits,
quotas and the ledger do not (no engine runs, nothing is admitted or billed).
"""

from __future__ import annotations

import base64
import binascii
import functools
import itertools
import json
import logging
import os
import re
import threading
import time
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote_plus

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from omniserve.config import CassetteSettings
from omniserve.errors import InvalidParameter, StartupError
from omniserve.protocol import bigjson
from omniserve.protocol.request import parse_chat_request

log = logging.getLogger("omniserve.cassettes")

VERSION = 1
REDACTED = "REDACTED"
ROUTE_PREFIXES = ("/compatible-mode/v1", "/v1")
RESPONSE_HEADERS = ("content-type", "retry-after", "x-request-id")
# Hop-by-hop and per-connection headers: they describe a transport, not the request.
_DROPPED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "accept-encoding",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "proxy-connection",
    }
)
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
_SECRET_HEADER_PARTS = ("key", "token", "secret", "auth", "cookie", "signature", "password")
_SECRET_PARAM_PARTS = ("signature", "token", "key", "secret", "credential", "password")
_SECRET_PARAMS = frozenset({"expires", "x-amz-date", "sig"})
# Secret values shorter than this are not searched for in responses: "1" would be everywhere.
_MIN_ECHOED_SECRET = 8
_SHOWN_DIFFERENCES = 5
_NUMBERED = re.compile(r"(\d+)-")
Pace = Literal["recorded", "fast"]


# -- redaction ----------------------------------------------------------------------------


def route_path(path: str) -> str:
    """``/compatible-mode/v1/chat/completions`` and ``/v1/chat/completions`` alike."""
    for prefix in ROUTE_PREFIXES:
        if path.startswith(prefix + "/"):
            return path[len(prefix) :]
    return path


def _secret_param(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SECRET_PARAMS or any(part in lowered for part in _SECRET_PARAM_PARTS)


def redact_url(url: str) -> tuple[str, list[str]]:
    """``url`` with the values of its credential query parameters replaced, and those values.
    Everything else of the URL stays as it was written (order, encoding, fragment)."""
    head, hash_sign, fragment = url.partition("#")
    base, question, query = head.partition("?")
    if not question:
        return url, []
    secrets: list[str] = []
    pieces: list[str] = []
    for piece in query.split("&"):
        name, equals, value = piece.partition("=")
        if equals and value != REDACTED and _secret_param(unquote_plus(name)):
            secrets.extend({value, unquote_plus(value)})
            piece = f"{name}={REDACTED}"
        pieces.append(piece)
    return f"{base}?{'&'.join(pieces)}{hash_sign}{fragment}", secrets


def _is_url(text: str) -> bool:
    return text[:8].lower().startswith(("http://", "https://"))


def redact_body(value: Any, secrets: list[str] | None = None) -> Any:
    """``value`` (parsed JSON) with every http(s) URL string redacted (``redact_url``); the
    values taken out are added to ``secrets``. Containers are copied, other values shared."""
    if isinstance(value, str):
        if not _is_url(value):
            return value
        redacted, found = redact_url(value)
        if secrets is not None:
            secrets.extend(found)
            if found:
                secrets.append(value)
        return redacted
    if isinstance(value, dict):
        return {k: redact_body(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_body(v, secrets) for v in value]
    return value


def _secret_header(name: str) -> bool:
    return name in _SECRET_HEADERS or any(part in name for part in _SECRET_HEADER_PARTS)


def recorded_headers(raw: Iterable[tuple[bytes, bytes]]) -> tuple[dict[str, str], list[str]]:
    """A request's headers as a cassette keeps them, and the credentials left out."""
    kept: dict[str, str] = {}
    secrets: list[str] = []
    for raw_name, raw_value in raw:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if _secret_header(name):
            scheme, _, credential = value.partition(" ")
            secrets.append(credential if scheme.lower() in ("bearer", "basic") else value)
        elif name not in _DROPPED_HEADERS:
            kept[name] = f"{kept[name]}, {value}" if name in kept else value
    return kept, secrets


def canonical(body: Any) -> str:
    """The form two bodies are compared in."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class _NotJson(ValueError):
    """``NaN`` or ``Infinity``, which Python reads and JSON has not."""


def _not_json(constant: str) -> Any:
    raise _NotJson(constant)


def load_body(body: bytes | bytearray) -> Any:
    """The JSON of a request body; ``ValueError`` (or ``RecursionError``) when it is none."""
    return bigjson.loads(body, parse_constant=_not_json)


# -- recording ----------------------------------------------------------------------------


def slug(body: Any) -> str:
    """Up to 40 characters of ``[a-z0-9-]`` from the last user message's text."""
    text = ""
    messages = body.get("messages") if isinstance(body, dict) else None
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            text = _text_of(message.get("content"))
            break
    ascii_text = unicodedata.normalize("NFKD", text[:400]).encode("ascii", "ignore").decode()
    words = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return words[:40].rstrip("-") or "request"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


@dataclass
class Exchange:
    """One request and what was sent back for it, as the route saw them."""

    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    body: bytes | bytearray
    arrived: float  # time.monotonic() when the request arrived
    recorded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    status: int | None = None
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[tuple[float, bytes]] = field(default_factory=list)


def _chunk(at_ms: float, data: bytes, secrets: list[str]) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return {"at_ms": at_ms, "data_base64": base64.b64encode(data).decode("ascii")}
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return {"at_ms": at_ms, "data": text}


def cassette_document(exchange: Exchange, body: Any) -> dict[str, Any]:
    """What a cassette file holds for ``exchange`` (``body``: its parsed JSON), redacted."""
    secrets: list[str] = []
    redacted = redact_body(body, secrets)
    headers, header_secrets = recorded_headers(exchange.headers)
    secrets.extend(header_secrets)
    # Longest first, so that a whole URL goes before a value inside it.
    echoed = sorted({s for s in secrets if len(s) >= _MIN_ECHOED_SECRET}, key=len, reverse=True)
    response_headers = {}
    for raw_name, raw_value in exchange.response_headers:
        name = raw_name.decode("latin-1").lower()
        if name in RESPONSE_HEADERS:
            response_headers[name] = raw_value.decode("latin-1")
    return {
        "omniserve_cassette": VERSION,
        "recorded_at": exchange.recorded_at.isoformat(timespec="milliseconds"),
        "request": {
            "method": exchange.method,
            "path": exchange.path,
            "headers": headers,
            "body": redacted,
        },
        "response": {
            "status": exchange.status,
            "headers": response_headers,
            "chunks": [_chunk(at, data, echoed) for at, data in exchange.chunks],
        },
    }


class Recorder:
    """Writes each exchange into ``directory`` as the next numbered cassette."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.expanduser()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(
                f"The cassette directory {self.directory} cannot be created: {exc}"
            ) from None
        self._lock = threading.Lock()

    def wrap(
        self, response: Response, request: Request, body: bytearray, arrived: float
    ) -> Response:
        """``response``, recorded as it is sent."""
        exchange = Exchange(
            method=request.method,
            path=request.url.path,
            headers=list(request.headers.raw),
            body=body,
            arrived=arrived,
        )
        return RecordingResponse(response, exchange, self)

    def write(self, exchange: Exchange) -> Path | None:
        """Writes ``exchange`` (on a worker thread: its work grows with the body); None when
        its body is not JSON or nothing was sent."""
        if exchange.status is None:
            return None
        try:
            body = load_body(exchange.body)
        except (ValueError, RecursionError):
            log.info("not recorded: a body that is not JSON (%s)", exchange.path)
            return None
        document = cassette_document(exchange, body)
        text = json.dumps(document, indent=1, ensure_ascii=False) + "\n"
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            name = f"{self._next_number():04d}-{slug(body)}.json"
            target = self.directory / name
            temporary = self.directory / f".{name}.{os.getpid()}.tmp"
            try:
                temporary.write_text(text, encoding="utf-8")
                os.replace(temporary, target)
            finally:
                temporary.unlink(missing_ok=True)
        log.debug("recorded %s", target)
        return target

    def _next_number(self) -> int:
        highest = 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.endswith(".json") and (found := _NUMBERED.match(entry.name)):
                    highest = max(highest, int(found.group(1)))
        return highest + 1


class RecordingResponse(Response):
    """Sends ``inner`` and keeps every ``send`` message's body with its time; the cassette is
    written before the body's end goes out, or after ``inner`` stops without one (a dropped
    connection, a client that left), and what stopped it goes on up."""

    def __init__(self, inner: Response, exchange: Exchange, recorder: Recorder) -> None:
        self.inner = inner
        self.exchange = exchange
        self.recorder = recorder
        self.status_code = inner.status_code
        self.raw_headers = inner.raw_headers
        self.background = None
        self._written = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = self.exchange

        async def recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = int(message["status"])
                exchange.response_headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                data = message.get("body", b"")
                if data:
                    at_ms = round((time.monotonic() - exchange.arrived) * 1000, 3)
                    exchange.chunks.append((at_ms, bytes(data)))
                if not message.get("more_body", False):
                    await self._write()
            await send(message)

        try:
            await self.inner(scope, receive, recording)
        finally:
            await self._write()
        if self.background is not None:
            await self.background()

    async def _write(self) -> None:
        if self._written:
            return
        self._written = True
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(self.recorder.write, self.exchange)
            except Exception:
                log.exception("the cassette of %s could not be written", self.exchange.path)


# -- replay -------------------------------------------------------------------------------


class _Chunk(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    at_ms: float = Field(ge=0)
    data: str | None = None
    data_base64: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> _Chunk:
        if (self.data is None) == (self.data_base64 is None):
            raise ValueError("a chunk has either data or data_base64")
        return self

    def payload(self) -> bytes:
        if self.data is not None:
            return self.data.encode("utf-8")
        assert self.data_base64 is not None
        return base64.b64decode(self.data_base64, validate=True)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    method: str = "POST"
    path: str
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    status: int = Field(ge=100, le=599)
    headers: dict[str, str] = Field(default_factory=dict)
    chunks: list[_Chunk]


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    omniserve_cassette: Literal[1]
    recorded_at: str | None = None
    request: _Request
    response: _Response


@dataclass(frozen=True, eq=False)
class Cassette:
    """One loaded cassette: what it answers, and the request it answers."""

    name: str
    path: str  # the route, without its prefix
    body: Any  # redacted
    leaves: dict[str, Any]
    status: int
    headers: list[tuple[bytes, bytes]]
    chunks: list[tuple[float, bytes]]


def load_cassette(path: Path) -> Cassette:
    """``path`` as a ``Cassette``; ``StartupError`` says what is wrong with it."""

    def refuse(problem: str) -> StartupError:
        return StartupError(f"The cassette {path} cannot be replayed: {problem}")

    try:
        raw = path.read_bytes()
        data = json.loads(raw.decode("utf-8"), parse_constant=_not_json)
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from None
    except UnicodeDecodeError:
        raise refuse("it is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise refuse(f"it is not JSON: {exc.msg} (line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError):
        raise refuse("it is not JSON") from None
    try:
        document = _File.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "the file"
        raise refuse(f"{where}: {error['msg']}") from None
    try:
        chunks = [(c.at_ms, c.payload()) for c in document.response.chunks]
        headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in document.response.headers.items()
        ]
    except binascii.Error:
        raise refuse("a chunk's data_base64 is not base64") from None
    except UnicodeEncodeError:
        raise refuse("a response header is not Latin-1 text") from None
    body = redact_body(document.request.body)
    return Cassette(
        name=path.name,
        path=route_path(document.request.path),
        body=body,
        leaves=leaves(body),
        status=document.response.status,
        headers=headers,
        chunks=chunks,
    )


def _key(path: str, body: Any) -> str:
    return f"{path} {canonical(body)}"


def _member(prefix: str, key: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{prefix}.{key}" if prefix else key
    return f"{prefix}[{json.dumps(key, ensure_ascii=False)}]"


def leaves(value: Any, prefix: str = "", into: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every leaf of ``value`` by its path (``messages[0].content``); an empty object or list
    is a leaf of its own."""
    out = {} if into is None else into
    if isinstance(value, dict) and value:
        for key, item in value.items():
            leaves(item, _member(prefix, str(key)), out)
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            leaves(item, f"{prefix}[{index}]", out)
    else:
        out[prefix or "(the body)"] = value
    return out


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def differences(request: dict[str, Any], cassette: dict[str, Any]) -> list[str]:
    """The leaf paths where two bodies differ: the request's order, then the cassette's."""
    missing = object()
    found = [p for p, v in request.items() if not _same(v, cassette.get(p, missing))]
    return found + [p for p in cassette if p not in request]


class Replayer:
    """Answers requests from the cassettes of one directory."""

    def __init__(self, directory: Path, cassettes: list[Cassette], pace: Pace) -> None:
        self.directory = directory
        self.cassettes = cassettes
        self.pace = pace
        by_key: dict[str, list[Cassette]] = {}
        for cassette in cassettes:
            by_key.setdefault(_key(cassette.path, cassette.body), []).append(cassette)
        self._turns: dict[str, Iterator[Cassette]] = {
            key: itertools.cycle(found) for key, found in by_key.items()
        }

    @classmethod
    def load(cls, directory: Path, pace: Pace = "recorded") -> Replayer:
        """Every ``*.json`` of ``directory``, in file-name order; ``StartupError`` when the
        directory or any file cannot be replayed."""
        directory = directory.expanduser()
        if not directory.is_dir():
            raise StartupError(f"The cassette directory {directory} does not exist.")
        cassettes = [load_cassette(path) for path in sorted(directory.glob("*.json"))]
        if not cassettes:
            log.warning("the cassette directory %s holds no cassettes", directory)
        return cls(directory, cassettes, pace)

    async def answer(
        self,
        path: str,
        body: bytes | bytearray,
        arrived: float,
        *,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> Response:
        """The recorded answer to this request; raises ``InvalidParameter`` when its body is
        not JSON or no cassette matches."""
        key = await anyio.to_thread.run_sync(
            functools.partial(self.match, path, body), limiter=limiter
        )
        cassette = next(self._turns[key])  # on the event loop: turns are taken one at a time
        return ReplayResponse(cassette, fast=self.pace == "fast", arrived=arrived)

    def match(self, path: str, body: bytes | bytearray) -> str:
        """The key of the cassettes that answer this request (on a worker thread)."""
        try:
            data = load_body(body)
        except (ValueError, RecursionError):
            parse_chat_request(body)  # raises the server's own 400 for this body
            raise InvalidParameter("Request body is not valid JSON.") from None
        redacted = redact_body(data)
        path = route_path(path)
        key = _key(path, redacted)
        if key in self._turns:
            return key
        raise InvalidParameter(self._unmatched(path, redacted))

    def _unmatched(self, path: str, body: Any) -> str:
        if not self.cassettes:
            return f"No cassette matches this request; {self.directory.name} holds none."
        mine = leaves(body)
        ranked = (
            (differences(mine, c.leaves) + ([] if c.path == path else ["path"]), c)
            for c in self.cassettes
        )
        found, closest = min(ranked, key=lambda pair: len(pair[0]))
        shown = ", ".join(found[:_SHOWN_DIFFERENCES])
        more = len(found) - _SHOWN_DIFFERENCES
        if more > 0:
            shown += f" and {more} more"
        return (
            f"No cassette matches this request; the closest is {closest.name}, "
            f"which differs at {shown}."
        )


class ReplayResponse(Response):
    """A cassette's status, headers and chunks, paced as recorded (from ``arrived``) or all at
    once; stops when the client goes away."""

    def __init__(self, cassette: Cassette, *, fast: bool, arrived: float) -> None:
        self.cassette = cassette
        self.fast = fast
        self.arrived = arrived
        self.status_code = cassette.status
        self.raw_headers = list(cassette.headers)
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            await self._play(send)
            tg.cancel_scope.cancel()
        if self.background is not None:
            await self.background()

    async def _play(self, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        for at_ms, data in self.cassette.chunks:
            if not self.fast:
                await anyio.sleep(max(0.0, self.arrived + at_ms / 1000 - time.monotonic()))
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def from_settings(settings: CassetteSettings) -> tuple[Recorder | None, Replayer | None]:
    """The recorder or the replayer ``settings`` ask for (at most one)."""
    recorder = Recorder(settings.record) if settings.record is not None else None
    replayer = (
        Replayer.load(settings.replay, settings.replay_pace)
        if settings.replay is not None
        else None
    )
    return recorder, replayer

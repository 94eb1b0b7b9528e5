"""What must never reach the API, refused before any of the request is read.

One ASGI layer in front of every route, whatever HTTP parser the server runs:

- a request with both ``Content-Length`` and ``Transfer-Encoding`` (or two different lengths)
  is answered 400 and its connection closed: where its body ends is ambiguous, and bytes after
  it could otherwise run as a second, hidden request (RFC 9112 §6.1);
- a body-carrying request must say ``Content-Type: application/json`` (415 otherwise): the
  types a cross-site form or ``fetch`` may send without a CORS preflight never reach the API.
  The one exception is ``multipart/form-data`` on the upload routes (OpenAI's audio
  transcriptions): a cross-site form cannot send the key a server with keys asks for, and on a
  server without keys it can only start a transcription whose answer the page cannot read;
- a server without API keys answers only to names nobody else can point at it: loopback names,
  IP addresses and ``http.allowed_hosts`` (403 otherwise), which stops DNS rebinding;
- a body that arrives slower than ``http.body_min_rate`` after ``http.body_grace_s`` is
  answered 408, its connection closed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omniserve.api.errors import error_response
from omniserve.config import HttpSettings
from omniserve.errors import ApiError, BadFraming, BodyTooSlow, HostNotAllowed, NotJson

_BODY_METHODS = {"POST", "PUT", "PATCH"}
# Routes that take OpenAI's multipart uploads (a file and its form fields).
UPLOAD_PATHS = frozenset({"/v1/audio/transcriptions", "/compatible-mode/v1/audio/transcriptions"})
_LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost"}


def host_name(header: str) -> str:
    """The name of a Host header without its port (IPv6 literals keep no brackets)."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value[1:]
    name, _, port = value.rpartition(":")
    return name if name and port.isdigit() else value


def answers_to(host: str, allowed: list[str]) -> bool:
    """Whether a keyless server answers to ``host`` (a Host header value)."""
    name = host_name(host)
    if "*" in allowed or name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
        return True  # a literal address: the page came from this very address
    except ValueError:
        pass
    return any(name == a.lower() or (a.startswith(".") and name.endswith(a.lower()))
               for a in allowed)  # fmt: skip


def is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def is_upload(path: str, content_type: str | None) -> bool:
    """A multipart form sent to an upload route."""
    if content_type is None or path not in UPLOAD_PATHS:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "multipart/form-data"


class HttpGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: HttpSettings,
        keys_required: Callable[[], Awaitable[bool]],
    ) -> None:
        self.app = app
        self.settings = settings
        self.keys_required = keys_required

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lengths: set[bytes] = set()
        chunked = False
        host = content_type = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                lengths.add(value.strip())
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"host":
                host = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value.decode("latin-1")
        if (lengths and chunked) or len(lengths) > 1:
            await self._refuse(BadFraming(), scope, receive, send)
            return
        has_body = chunked or bool(lengths - {b"0"})
        if (
            scope["method"] in _BODY_METHODS
            and has_body
            and not is_json(content_type)
            and not is_upload(scope["path"], content_type)
        ):
            await self._refuse(NotJson(content_type), scope, receive, send)
            return
        if (
            host is not None
            and not answers_to(host, self.settings.allowed_hosts)
            and not await self.keys_required()
        ):
            await self._refuse(HostNotAllowed(host_name(host)), scope, receive, send)
            return
        if not has_body or self.settings.body_min_rate <= 0:
            await self.app(scope, receive, send)
            return
        await self._with_body_deadline(scope, receive, send)

    async def _refuse(
        self, error: ApiError, scope: Scope, receive: Receive, send: Send, *, close: bool = True
    ) -> None:
        response = error_response(error)
        if close:
            response.headers["connection"] = "close"
        await response(scope, receive, send)

    async def _with_body_deadline(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app runs as usual; while its body is incomplete each read must come in time.
        When one does not, the client gets 408 (unless the app has answered already) and the
        app sees the client leave."""
        rate, grace = self.settings.body_min_rate, self.settings.body_grace_s
        began = time.monotonic()
        received = 0
        complete = False
        app_started = refused = False

        async def timed_receive() -> Message:
            nonlocal received, complete, refused
            if complete or refused:
                return await receive()
            # The bytes so far, and one more, are due by this time at the minimum rate.
            due = began + max(grace, (received + 1) / rate)
            try:
                message = await asyncio.wait_for(receive(), max(0.0, due - time.monotonic()))
            except TimeoutError:
                if not app_started:
                    refused = True
                    await self._refuse(BodyTooSlow(rate, grace), scope, receive, send)
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal app_started
            if refused:
                return  # the 408 went out instead
            if message["type"] == "http.response.start":
                app_started = True
            await send(message)

        await self.app(scope, timed_receive, guarded_send)

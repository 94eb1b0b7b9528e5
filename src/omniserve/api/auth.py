"""Every route declares who may call it: ``public``, ``key`` (any valid API key) or ``admin``.

``guard(level)`` is the FastAPI dependency that enforces it; ``auth_level`` reads it back, so a
test can walk every route and check that none is left undeclared or open by mistake.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute

from omniserve.accounts.auth import AuthLevel, Caller
from omniserve.accounts.service import Accounts

Guard = Callable[[HTTPConnection], Awaitable[Caller]]
_GUARDS: dict[AuthLevel, Guard] = {}


def guard(level: AuthLevel) -> Guard:
    """The dependency that authenticates a request for ``level`` (one per level)."""
    if level in _GUARDS:
        return _GUARDS[level]

    async def authenticate(request: HTTPConnection) -> Caller:
        accounts: Accounts = request.app.state.accounts
        caller = await accounts.authenticate(credentials(request), level)
        request.state.caller = caller
        return caller

    authenticate.__name__ = f"auth_{level}"
    _GUARDS[level] = authenticate
    return authenticate


# Browsers cannot set headers on a WebSocket: they offer the key as a subprotocol instead
# (OpenAI's convention for its realtime API in the browser), never echoed back.
KEY_PROTOCOL = "openai-insecure-api-key."


def subprotocols(connection: HTTPConnection) -> list[str]:
    """The subprotocols a WebSocket client offered, in its order (the ASGI scope has them;
    some servers take the header out of the scope's headers)."""
    if connection.scope.get("subprotocols"):
        return [str(p) for p in connection.scope["subprotocols"]]
    offered = connection.headers.get("sec-websocket-protocol", "")
    return [p.strip() for p in offered.split(",") if p.strip()]


def credentials(connection: HTTPConnection) -> str | None:
    """The ``Authorization`` header, or on a WebSocket without one, the key its client offered
    as a subprotocol, in the header's form."""
    header = connection.headers.get("authorization")
    if header is None and connection.scope["type"] == "websocket":
        for protocol in subprotocols(connection):
            if protocol.startswith(KEY_PROTOCOL):
                return "Bearer " + protocol[len(KEY_PROTOCOL) :]
    return header


def all_routes(routes: list[BaseRoute]) -> list[BaseRoute]:
    """Every route, with included routers expanded (FastAPI may keep them as one entry)."""
    out: list[BaseRoute] = []
    for route in routes:
        inner: Any = getattr(route, "original_router", None)
        if inner is not None:
            out.extend(all_routes(list(inner.routes)))
        else:
            out.append(route)
    return out


def auth_level(route: BaseRoute) -> AuthLevel | None:
    """The level a route declared through ``guard``, or None when it declared none."""
    dependant: Any = getattr(route, "dependant", None)
    if dependant is None:
        return None
    for dep in dependant.dependencies:
        for level, fn in _GUARDS.items():
            if dep.call is fn:
                return level
    return None

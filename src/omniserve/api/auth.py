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
        caller = await accounts.authenticate(request.headers.get("authorization"), level)
        request.state.caller = caller
        return caller

    authenticate.__name__ = f"auth_{level}"
    _GUARDS[level] = authenticate
    return authenticate


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

"""Every route declares its auth level, and behaves by it: walked route by route."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from starlette.routing import Route, WebSocketRoute

from helpers import LiveServer, fast_settings, live_server
from omniserve.api.app import create_app
from omniserve.api.auth import all_routes, auth_level

PUBLIC = {"/healthz", "/readyz", "/openapi.json", "/docs"}
# The playground's page and files; the page then calls the API with the user's key.
PUBLIC |= {"/", "/playground", "/playground/config.json", "/playground/{name}"}


def routes() -> list[tuple[str, str, str | None]]:
    """(method, path, level) for every route of the app."""
    app = create_app(fast_settings())
    out = []
    for route in all_routes(app.routes):
        if isinstance(route, WebSocketRoute):
            out.append(("WEBSOCKET", route.path, auth_level(route)))
            continue
        assert isinstance(route, Route), route
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                out.append((method, route.path, auth_level(route)))
    return out


def expected(path: str) -> str:
    if path in PUBLIC:
        return "public"
    if path.startswith("/admin/") or path == "/metrics":
        return "admin"
    return "key"


def test_every_route_declares_the_expected_level() -> None:
    table = routes()
    assert len(table) >= 10
    for method, path, level in table:
        assert level is not None, f"{method} {path} declares no auth level"
        assert level == expected(path), f"{method} {path} is {level}, expected {expected(path)}"


@pytest.fixture(scope="module")
def keyed() -> Iterator[tuple[LiveServer, str, str]]:
    with live_server(fast_settings()) as server:
        assert server.accounts.store is not None
        _, user = server.accounts.store.create("user")
        _, admin = server.accounts.store.create("admin", admin=True)
        yield server, user, admin


def call(server: LiveServer, method: str, path: str, secret: str | None) -> httpx.Response:
    url = server.base_url + re.sub(r"\{[^}]+\}", "key_missing", path)
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    if method == "WEBSOCKET":  # the upgrade: refused with an HTTP answer, or 101
        headers |= {
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        }
        return httpx.get(url + "?model=qwen3-omni-flash-realtime", headers=headers, timeout=30)
    return httpx.request(method, url, headers=headers, json={}, timeout=30)


@pytest.mark.parametrize(("method", "path", "level"), routes())
def test_route_refuses_whom_it_should(
    keyed: tuple[LiveServer, str, str], method: str, path: str, level: str
) -> None:
    server, user, admin = keyed
    anonymous = call(server, method, path, None)
    as_user = call(server, method, path, user)
    as_admin = call(server, method, path, admin)
    if level == "public":
        # A made-up path parameter may name nothing: found or not, but never refused.
        missing = "{" in path and anonymous.status_code == 404
        assert anonymous.status_code < 400 or missing, anonymous.text
        return
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "invalid_api_key"
    if level == "admin":
        assert as_user.status_code == 403
        assert as_user.json()["error"]["code"] == "AccessDenied"
    else:
        assert as_user.status_code not in (401, 403), as_user.text
    assert as_admin.status_code not in (401, 403), as_admin.text

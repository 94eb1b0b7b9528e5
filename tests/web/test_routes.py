"""``/``, ``/playground`` and its files over real HTTP: types, caching, headers, no way out."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

import omniserve.web
from helpers import LiveServer, fast_settings, live_server
from omniserve.web.routes import ASSETS

STATIC = Path(omniserve.web.__file__).parent / "static"


@pytest.mark.parametrize("path", ["/", "/playground"])
def test_the_page_at_both_paths(server: LiveServer, path: str) -> None:
    r = httpx.get(server.base_url + path)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.content == (STATIC / "index.html").read_bytes()
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"


def test_every_file_the_page_names_is_served(server: LiveServer) -> None:
    """Each relative URL in the page and each module import resolves, with its type."""
    page = (STATIC / "index.html").read_text()
    names = set(re.findall(r'(?:src|href)="playground/([\w.-]+)"', page))
    for script in STATIC.glob("*.js"):
        names |= set(re.findall(r'from "\./([\w.-]+)"', script.read_text()))
    assert {"app.js", "app.css", "icon.svg", "api.js", "audio.js", "media.js"} <= names
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for name in names:
        r = httpx.get(f"{server.base_url}/playground/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"].startswith(types[Path(name).suffix]), name
        assert r.content == (STATIC / name).read_bytes()


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
def test_files_are_revalidated_by_content_hash(server: LiveServer, encoding: str) -> None:
    url = f"{server.base_url}/playground/app.js"
    r = httpx.get(url, headers={"Accept-Encoding": encoding})
    etag = r.headers["etag"]
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["vary"] == "accept-encoding"
    suffix = "-gzip" if encoding == "gzip" else ""
    assert re.fullmatch(rf'"[0-9a-f]{{32}}{suffix}"', etag)
    again = httpx.get(url, headers={"If-None-Match": etag, "Accept-Encoding": encoding})
    assert again.status_code == 304 and again.content == b""
    stale = httpx.get(url, headers={"If-None-Match": '"x"', "Accept-Encoding": encoding})
    assert stale.status_code == 200 and stale.content == r.content


def test_files_go_gzipped_to_browsers_that_take_it(server: LiveServer) -> None:
    url = f"{server.base_url}/playground/app.js"
    packed = httpx.get(url, headers={"Accept-Encoding": "gzip, deflate, br"})
    assert packed.headers["content-encoding"] == "gzip"
    assert int(packed.headers["content-length"]) < len(packed.content) / 2
    assert packed.content == (STATIC / "app.js").read_bytes()  # httpx has unpacked it
    for refused in ("identity", "br", "gzip;q=0", ""):
        plain = httpx.get(url, headers={"Accept-Encoding": refused})
        assert "content-encoding" not in plain.headers, refused
        assert int(plain.headers["content-length"]) == len(plain.content)


@pytest.mark.parametrize(
    "path",
    [
        "/playground/nothing.js",
        "/playground/index.html",
        "/playground/..%2F__init__.py",
        "/playground/%2e%2e%2froutes.py",
        "/playground/../api/app.py",
        "/playground/static",
        "/playground/routes.py",
    ],
)
def test_nothing_else_is_served(server: LiveServer, path: str) -> None:
    r = httpx.get(server.base_url + path)
    assert r.status_code == 404
    body = r.json()
    assert body["error"]["code"] == "NotFound" and body["request_id"]


def test_only_the_files_shipped_are_known() -> None:
    shipped = {p.name for p in STATIC.iterdir() if p.suffix in {".html", ".js", ".css", ".svg"}}
    assert set(ASSETS) == shipped


def test_config_says_whether_a_key_is_needed() -> None:
    with live_server(fast_settings()) as s:
        config = httpx.get(f"{s.base_url}/playground/config.json")
        assert config.headers["cache-control"] == "no-store"
        assert config.json()["api_key_required"] is False
        assert s.accounts.store is not None
        s.accounts.store.create("someone")
        # Public even now: the page must learn that it has to ask for a key.
        config = httpx.get(f"{s.base_url}/playground/config.json")
        assert config.json()["api_key_required"] is True
        assert httpx.get(f"{s.base_url}/").status_code == 200
        assert httpx.get(f"{s.api}/models").status_code == 401


def test_the_playground_can_be_turned_off() -> None:
    with live_server(fast_settings(playground=False)) as s:
        for path in ("/", "/playground", "/playground/app.js", "/playground/config.json"):
            r = httpx.get(s.base_url + path)
            assert r.status_code == 404, path
            assert r.json()["error"]["code"] == "NotFound"
        assert httpx.get(f"{s.api}/models").status_code == 200


def test_models_describe_voices_and_media_limits(server: LiveServer) -> None:
    """What the playground's pickers show comes from the models list."""
    models = {m["id"]: m for m in httpx.get(f"{server.api}/models").json()["data"]}
    flash = models["qwen3-omni-flash"]
    cherry = next(v for v in flash["voice_details"] if v["name"] == "Cherry")
    assert cherry["description"] and cherry["gender"] == "female"
    assert "zh" in cherry["languages"] and "en" in cherry["languages"]
    assert [v["name"] for v in flash["voice_details"]] == flash["voices"]
    dialects = [v for v in flash["voice_details"] if v["dialect"]]
    assert dialects, "the flash voices include dialect voices"
    turbo = models["qwen-omni-turbo"]["media_limits"]
    assert turbo["data_uri_max_bytes"] == 10_485_760
    assert turbo["frames_min"] == 4 and turbo["frames_max"] == 80
    assert turbo["audio_per_request"] == 1

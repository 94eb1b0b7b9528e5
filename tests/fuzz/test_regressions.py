"""What the fuzzers found, each as the smallest request that showed it, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from fuzz.wire import check_error_response
from helpers import LiveServer, chat_body, fast_settings, live_server
from omniserve.media.resolve import StaticResolver


@pytest.fixture(scope="module")
def admin() -> Iterator[tuple[LiveServer, dict[str, str]]]:
    with live_server(fast_settings(), resolver=StaticResolver({})) as server:
        assert server.accounts.store is not None
        _, secret = server.accounts.store.create("admin", admin=True)
        yield server, {"Authorization": f"Bearer {secret}"}


def refused(r: httpx.Response) -> str:
    """The refusal's message; fails on a 5xx or anything but the envelope."""
    check_error_response(r.status_code, r.headers, r.content)
    message: str = r.json()["error"]["message"]
    return message


JSON = {"content-type": "application/json"}


# -- chat bodies (fixed in protocol/request.py) ----------------------------------------------


def test_lone_surrogate_in_a_message_is_a_400(server: LiveServer) -> None:
    # Was a 500: the emulator could not encode the text to hash it.
    raw = b'{"model": "qwen-omni-turbo", "messages": [{"role": "user", "content": "\\udfff"}],'
    raw += b' "stream": true}'
    r = httpx.post(f"{server.api}/chat/completions", content=raw, headers=JSON, timeout=30)
    assert r.status_code == 400
    assert refused(r) == (
        "Request body holds a string with an unpaired surrogate: input.messages.0.content"
    )
    assert r.json()["error"]["param"] == "messages[0].content"


def test_lone_surrogate_in_a_model_name_is_a_400(server: LiveServer) -> None:
    # Would have been a 404 whose envelope could not be encoded.
    raw = b'{"model": "\\ud800", "messages": [{"role": "user", "content": "a"}], "stream": true}'
    r = httpx.post(f"{server.api}/chat/completions", content=raw, headers=JSON, timeout=30)
    assert r.status_code == 400
    assert refused(r).endswith(": model")


def test_integer_longer_than_python_parses_is_a_400(server: LiveServer) -> None:
    # Was a 500: json.loads raises a plain ValueError past 4300 digits.
    raw = b'{"model": "qwen3-omni-flash", "messages": [{"role": "user", "content": "a"}],'
    raw += b' "stream": true, "max_tokens": ' + b"9" * 4301 + b"}"
    r = httpx.post(f"{server.api}/chat/completions", content=raw, headers=JSON, timeout=30)
    assert r.status_code == 400
    assert refused(r) == "Request body is not valid JSON: a number is too long."


# -- media refusals and keep-alive -------------------------------------------------------------


def test_the_connection_survives_a_refused_media_part() -> None:
    """A media part refused inside the stream (corrupt data, a failed download) is answered
    with a 400, and the same keep-alive connection then serves the next request."""
    bad = chat_body(
        messages=[
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "data:;base64,AAAA"}}],
            }
        ]
    )
    with (
        live_server(fast_settings(), resolver=StaticResolver({})) as server,
        httpx.Client(timeout=30) as client,
    ):
        for _ in range(5):
            r = client.post(f"{server.api}/chat/completions", json=bad)
            assert r.status_code == 400
            refused(r)
            r = client.post(f"{server.api}/chat/completions", json=chat_body(max_tokens=1))
            assert r.status_code == 200
            assert r.text.endswith("data: [DONE]\n\n")


# -- admin routes -------------------------------------------------------------------------------


@pytest.mark.parametrize("quota", [2**63, 10**30])
def test_key_quota_past_64_bits_is_a_4xx(
    admin: tuple[LiveServer, dict[str, str]], quota: int
) -> None:
    server, auth = admin
    r = httpx.post(
        f"{server.base_url}/admin/keys",
        json={"name": "big", "quota_tokens": quota},
        headers=auth,
        timeout=30,
    )
    refused(r)


def test_key_quota_change_past_64_bits_is_a_4xx(admin: tuple[LiveServer, dict[str, str]]) -> None:
    server, auth = admin
    r = httpx.post(f"{server.base_url}/admin/keys", json={"name": "k"}, headers=auth, timeout=30)
    assert r.status_code == 201, r.text
    key_id = r.json()["id"]
    r = httpx.patch(
        f"{server.base_url}/admin/keys/{key_id}",
        json={"quota_tokens": 2**63},
        headers=auth,
        timeout=30,
    )
    refused(r)


@pytest.mark.parametrize("since_ms", [2**63, -(2**63) - 1])
def test_usage_since_past_64_bits_is_a_4xx(
    admin: tuple[LiveServer, dict[str, str]], since_ms: int
) -> None:
    server, auth = admin
    r = httpx.get(
        f"{server.base_url}/admin/usage",
        params={"by": "day", "since_ms": since_ms},
        headers=auth,
        timeout=30,
    )
    refused(r)


def test_key_model_with_a_lone_surrogate_is_a_4xx(
    admin: tuple[LiveServer, dict[str, str]],
) -> None:
    server, auth = admin
    r = httpx.post(
        f"{server.base_url}/admin/keys",
        content=b'{"name": "a", "models": ["\\udfff"]}',
        headers={**auth, "content-type": "application/json"},
        timeout=30,
    )
    refused(r)

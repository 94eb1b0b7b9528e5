"""Keys, limits, quotas and the ledger through a real server, as clients meet them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from openai import OpenAI

from helpers import LiveServer, burst, chat_body, fast_settings, live_server, read_sse
from omniserve.accounts.keys import KeyStore
from omniserve.accounts.schema import ledger

APIKEY_DOC = "https://help.aliyun.com/zh/model-studio/error-code#apikey-error"


@pytest.fixture
def keyed() -> Iterator[LiveServer]:
    """A server that has keys, so every request must bring one."""
    with live_server(fast_settings()) as s:
        yield s


def store(server: LiveServer) -> KeyStore:
    assert server.accounts.store is not None
    return server.accounts.store


def post(
    server: LiveServer, body: dict[str, Any], secret: str | None, **headers: str
) -> httpx.Response:
    if secret is not None:
        headers["Authorization"] = f"Bearer {secret}"
    return httpx.post(f"{server.api}/chat/completions", json=body, headers=headers, timeout=30)


def error_of(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert body["request_id"] and body["id"] == f"chatcmpl-{body['request_id']}"
    return body["error"]  # type: ignore[no-any-return]


def ledger_rows(server: LiveServer) -> list[dict[str, Any]]:
    assert server.accounts.writer is not None
    assert server.accounts.writer.flush()
    with store(server).engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(ledger))]


# -- authentication -------------------------------------------------------------------------


def test_without_keys_the_loopback_server_is_open(server: LiveServer) -> None:
    assert post(server, chat_body(), None).status_code == 200


def test_a_valid_key_streams(keyed: LiveServer) -> None:
    _, secret = store(keyed).create("app")
    with OpenAI(api_key=secret, base_url=keyed.api, max_retries=0) as client:
        chunks = list(
            client.chat.completions.create(
                model="qwen3-omni-flash",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
            )
        )
    assert chunks and chunks[-1].choices[0].finish_reason == "stop"


def test_missing_header(keyed: LiveServer) -> None:
    store(keyed).create("app")
    resp = post(keyed, chat_body(), None)
    assert resp.status_code == 401
    err = error_of(resp)
    assert err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error"
    assert err["message"] == (
        "No API key provided. Send it as 'Authorization: Bearer sk-...'. "
        f"For details, see: {APIKEY_DOC}"
    )


@pytest.mark.parametrize(
    "header", ["sk-abc", "Basic c2stYWJj", "Bearer", "Bearer sk-a sk-b", "Token sk-a"]
)
def test_malformed_header(keyed: LiveServer, header: str) -> None:
    store(keyed).create("app")
    resp = post(keyed, chat_body(), None, Authorization=header)
    assert resp.status_code == 401
    err = error_of(resp)
    assert err["code"] == "invalid_api_key"
    assert err["message"] == (
        f"Malformed Authorization header: expected 'Bearer sk-...'. For details, see: {APIKEY_DOC}"
    )


def test_wrong_key(keyed: LiveServer) -> None:
    _, secret = store(keyed).create("app")
    for wrong in ("sk-" + "0" * 64, secret[:-1], secret + "0", secret.upper(), "sk-ünïcode"):
        resp = httpx.post(
            f"{keyed.api}/chat/completions",
            json=chat_body(),
            headers={"Authorization": f"Bearer {wrong}".encode()},
        )
        assert resp.status_code == 401, wrong
        err = error_of(resp)
        assert err["code"] == "invalid_api_key"
        assert err["message"] == f"Incorrect API key provided. For details, see: {APIKEY_DOC}"


def test_bearer_scheme_is_case_insensitive(keyed: LiveServer) -> None:
    _, secret = store(keyed).create("app")
    assert post(keyed, chat_body(), None, Authorization=f"bearer {secret}").status_code == 200


def test_revoked_key_stops_at_the_next_request(keyed: LiveServer) -> None:
    key, secret = store(keyed).create("app")
    assert post(keyed, chat_body(), secret).status_code == 200
    # Revoked through another connection to the database, as `omniserve keys revoke` does.
    KeyStore(sa.create_engine(str(store(keyed).engine.url))).revoke(key.id)
    resp = post(keyed, chat_body(), secret)
    assert resp.status_code == 401
    assert error_of(resp)["message"].startswith("Incorrect API key provided.")


def test_revoking_the_last_key_does_not_open_the_server(keyed: LiveServer) -> None:
    key, _ = store(keyed).create("only")
    store(keyed).revoke(key.id)
    assert post(keyed, chat_body(), None).status_code == 401


def test_a_key_limited_to_models(keyed: LiveServer) -> None:
    _, secret = store(keyed).create("turbo only", models=("qwen-omni-turbo",))
    resp = post(keyed, chat_body(), secret)
    assert resp.status_code == 404
    assert error_of(resp)["message"] == (
        "The model qwen3-omni-flash does not exist or you do not have access to it."
    )
    assert post(keyed, chat_body(model="qwen-omni-turbo"), secret).status_code == 200
    listed = httpx.get(f"{keyed.api}/models", headers={"Authorization": f"Bearer {secret}"})
    assert [m["id"] for m in listed.json()["data"]] == ["qwen-omni-turbo"]
    one = httpx.get(
        f"{keyed.api}/models/qwen3-omni-flash", headers={"Authorization": f"Bearer {secret}"}
    )
    assert one.status_code == 404


# -- limits ---------------------------------------------------------------------------------


def test_requests_per_minute(keyed: LiveServer) -> None:
    _, secret = store(keyed).create("slow", rpm=2)
    assert [post(keyed, chat_body(), secret).status_code for _ in range(2)] == [200, 200]
    resp = post(keyed, chat_body(), secret)
    assert resp.status_code == 429
    err = error_of(resp)
    assert (err["code"], err["type"]) == ("limit_requests", "limit_requests")
    assert err["message"].startswith("You have exceeded your current request limit.")
    assert 1 <= int(resp.headers["retry-after"]) <= 30  # one request back every 30 s


def estimate(server: LiveServer, body: dict[str, Any]) -> int:
    """What admission reserves for ``body``: its prompt plus max_tokens."""
    job = server.service.prepare(json.dumps(body).encode(), "estimate").job
    return job.prompt_tokens.total + int(body["max_tokens"])


def test_tokens_per_minute_refusal(keyed: LiveServer) -> None:
    body = chat_body(max_tokens=50)
    _, secret = store(keyed).create("tpm", tpm=estimate(keyed, body))
    assert post(keyed, body, secret).status_code == 200
    resp = post(keyed, body, secret)
    assert resp.status_code == 429
    err = error_of(resp)
    assert (err["code"], err["type"]) == ("insufficient_quota", "insufficient_quota")
    assert err["message"] == "Allocated quota exceeded, please increase your quota limit."
    assert int(resp.headers["retry-after"]) >= 1


def test_twenty_concurrent_streams_admit_exactly_what_the_tpm_allows() -> None:
    # Slow streams: every admitted one is still running while the others are decided.
    settings = fast_settings(emulator={"tokens_per_second": 20})
    with live_server(settings) as server:
        body = chat_body(max_tokens=40)
        each = estimate(server, body)
        allowed = 6
        _, secret = store(server).create("burst", tpm=allowed * each + each // 2)
        statuses = asyncio.run(burst([server.api], secret, body, 20))
        assert sorted(statuses) == [200] * allowed + [429] * (20 - allowed)


def test_concurrent_streams_limit() -> None:
    settings = fast_settings(emulator={"tokens_per_second": 20})
    with live_server(settings) as server:
        _, secret = store(server).create("one at a time", concurrency=2)
        statuses = asyncio.run(burst([server.api], secret, chat_body(max_tokens=20), 5))
        assert sorted(statuses) == [200, 200, 429, 429, 429]
        # Slots come back when the streams end.
        assert post(server, chat_body(max_tokens=5), secret).status_code == 200


def test_quota_used_up_is_403(keyed: LiveServer) -> None:
    body = chat_body(max_tokens=30)
    key, secret = store(keyed).create("trial", quota_tokens=estimate(keyed, body))
    assert post(keyed, body, secret).status_code == 200
    resp = post(keyed, body, secret)
    assert resp.status_code == 403
    err = error_of(resp)
    assert err["code"] == "AllocationQuota.FreeTierOnly"
    assert err["message"].startswith("The free tier of the model has been exhausted.")
    ledger_rows(keyed)
    assert 0 < store(keyed).get(key.id).used_tokens <= estimate(keyed, body)


def test_media_counted_after_download_can_still_be_refused(keyed: LiveServer) -> None:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1280, 720), (200, 30, 30)).save(buf, "PNG")
    image = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    body = chat_body(
        max_tokens=10,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image}},
                    {"type": "text", "text": "what is this?"},
                ],
            }
        ],
    )
    before_media = estimate(keyed, body)
    _, secret = store(keyed).create("small", tpm=before_media + 50)
    resp = post(keyed, body, secret)
    assert resp.status_code == 429, resp.text
    assert error_of(resp)["code"] == "insufficient_quota"
    rows = ledger_rows(keyed)
    assert [(r["status"], r["error_code"]) for r in rows] == [("error", "insufficient_quota")]


# -- ledger ---------------------------------------------------------------------------------


def test_ledger_row_matches_the_usage_chunk(keyed: LiveServer) -> None:
    key, secret = store(keyed).create("books")
    body = chat_body(modalities=["text", "audio"], audio={"voice": "Cherry", "format": "wav"})
    resp = post(keyed, body, secret)
    events = read_sse(iter(resp.text.split("\n")))
    usage = next(e["usage"] for e in events if isinstance(e, dict) and e.get("usage"))
    (row,) = ledger_rows(keyed)
    assert row["key_id"] == key.id and row["status"] == "ok" and row["finish_reason"] == "stop"
    assert row["request_id"] == resp.headers["x-request-id"]
    assert row["prompt_text"] == usage["prompt_tokens_details"]["text_tokens"]
    assert row["completion_audio"] == usage["completion_tokens_details"]["audio_tokens"]
    assert row["completion_text"] == usage["completion_tokens_details"]["text_tokens"]
    assert row["audio_seconds"] > 0 and row["ttft_ms"] is not None and row["ttfa_ms"] is not None
    assert row["duration_ms"] >= row["ttfa_ms"] and row["cost"] > 0
    assert store(keyed).get(key.id).used_tokens == usage["total_tokens"]


def test_a_disconnect_is_on_the_books_once() -> None:
    settings = fast_settings(emulator={"tokens_per_second": 20})
    with live_server(settings) as server:
        with httpx.stream(
            "POST", f"{server.api}/chat/completions", json=chat_body(), timeout=30
        ) as resp:
            lines = resp.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any("content" in line for line in got)
        deadline = time.monotonic() + 10
        while True:
            rows = ledger_rows(server)
            if rows and rows[0]["status"] != "running":
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (row,) = rows
        assert row["status"] == "disconnected" and row["key_id"] is None
        assert row["completion_text"] > 0 and row["prompt_text"] > 0


def test_refused_media_is_an_error_row_that_costs_nothing(keyed: LiveServer) -> None:
    _, secret = store(keyed).create("media")
    body = chat_body(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "text", "text": "?"},
                ],
            }
        ]
    )
    resp = post(keyed, body, secret)
    assert resp.status_code == 400
    (row,) = ledger_rows(keyed)
    assert row["status"] == "error" and row["error_code"] == "invalid_parameter_error"
    assert row["prompt_text"] == 0 and row["cost"] == 0


def test_rejected_requests_are_not_on_the_books(keyed: LiveServer) -> None:
    _, secret = store(keyed).create("x", rpm=1)
    post(keyed, chat_body(), secret)
    post(keyed, chat_body(), secret)  # 429
    post(keyed, chat_body(), "sk-wrong")  # 401
    post(keyed, chat_body(voice="nobody", modalities=["text", "audio"]), secret)  # 400 / 429
    assert len(ledger_rows(keyed)) == 1


def test_the_admin_api_sets_a_keys_realtime_session_limit(keyed: LiveServer) -> None:
    _, admin = store(keyed).create("ops", admin=True)
    auth = {"Authorization": f"Bearer {admin}"}
    created = httpx.post(
        f"{keyed.base_url}/admin/keys", json={"name": "voice app", "sessions": 4}, headers=auth
    )
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["sessions"] == 4
    changed = httpx.patch(
        f"{keyed.base_url}/admin/keys/{key['id']}", json={"sessions": 0}, headers=auth
    )
    assert changed.status_code == 200 and changed.json()["sessions"] == 0  # no limit
    bad = httpx.patch(
        f"{keyed.base_url}/admin/keys/{key['id']}", json={"sessions": -1}, headers=auth
    )
    assert bad.status_code == 400


# -- OpenAI's audio endpoints are booked as chat requests are ---------------------------------


def test_speech_and_transcriptions_count_against_limits_and_are_on_the_books(
    keyed: LiveServer,
) -> None:
    _, secret = store(keyed).create("voice app", rpm=1)
    auth = {"Authorization": f"Bearer {secret}"}
    body = {"model": "tts-1", "voice": "alloy", "input": "Hello there, on the books."}
    url = f"{keyed.api}/audio/speech"
    first = httpx.post(url, json=body, headers=auth, timeout=60)
    assert first.status_code == 200 and first.content
    second = httpx.post(url, json=body, headers=auth, timeout=60)
    assert second.status_code == 429 and float(second.headers["retry-after"]) > 0
    assert httpx.post(url, json=body, timeout=60).status_code == 401
    (row,) = ledger_rows(keyed)
    assert row["model"] == "tts-1" and row["status"] == "ok" and row["finish_reason"] == "stop"
    assert row["prompt_text"] > 0 and row["completion_audio"] > 0
    assert row["audio_seconds"] > 0.5 and row["ttfa_ms"] is not None
    # A key limited to some models may call only those by name.
    _, narrow = store(keyed).create("chat only", models=("qwen3-omni-flash",))
    refused = httpx.post(url, json=body, headers={"Authorization": f"Bearer {narrow}"})
    assert refused.status_code == 404

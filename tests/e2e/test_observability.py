"""What an operator sees: /metrics, the request log line, /readyz with the database."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from helpers import (
    LiveServer,
    chat_body,
    fast_settings,
    live_server,
    scrape,
    serving,
    value,
)
from omniserve.logs import JsonFormatter, TextFormatter


def stream(server: LiveServer, body: dict[str, Any], secret: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.post(f"{server.api}/chat/completions", json=body, headers=headers, timeout=60)


def png_url() -> str:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


@pytest.fixture
def server() -> Iterator[LiveServer]:
    with live_server() as s:
        yield s


def test_a_stream_with_speech_is_counted_and_timed(server: LiveServer) -> None:
    resp = stream(server, chat_body(modalities=["text", "audio"], audio={"voice": "Cherry"}))
    assert resp.status_code == 200 and resp.text.endswith("data: [DONE]\n\n")
    m = scrape(server)
    model = "qwen3-omni-flash"
    assert value(m, "omniserve_requests_total", model=model, status="ok") == 1
    assert value(m, "omniserve_active_streams") == 0
    for name in ("time_to_first_token", "time_to_first_audio", "request_duration"):
        assert value(m, f"omniserve_{name}_seconds_count", model=model) == 1
        assert value(m, f"omniserve_{name}_seconds_sum", model=model) > 0
    assert value(m, "omniserve_inter_chunk_gap_seconds_count", model=model) > 5
    assert value(m, "omniserve_tokens_total", model=model, kind="prompt_text") > 0
    assert value(m, "omniserve_tokens_total", model=model, kind="completion_audio") > 0
    assert value(m, "omniserve_audio_output_seconds_total", model=model) > 0.5
    route = "/compatible-mode/v1/chat/completions"
    assert value(m, "omniserve_http_responses_total", route=route, status="200") == 1
    # The process itself: memory, file descriptors, the event loop's tasks.
    assert value(m, "process_resident_memory_bytes") > 10_000_000
    assert value(m, "process_open_fds") > 0
    assert value(m, "omniserve_event_loop_tasks") >= 1
    assert value(m, "omniserve_engine_queue_depth") == 0


def test_refusals_and_errors_are_counted_by_code(server: LiveServer) -> None:
    assert (
        stream(
            server, chat_body(audio={"voice": "Nobody"}, modalities=["text", "audio"])
        ).status_code
        == 400
    )
    nope = httpx.post(
        f"{server.api}/chat/completions",
        content=b"{nope",
        headers={"content-type": "application/json"},
    )
    assert nope.status_code == 400
    m = scrape(server)
    assert value(m, "omniserve_requests_total", model="qwen3-omni-flash", status="refused") == 1
    assert value(m, "omniserve_requests_total", model="other", status="refused") == 1
    errors = {
        dict(labels)["code"]: v
        for (name, labels), v in m.items()
        if name == "omniserve_errors_total"
    }
    assert sum(errors.values()) == 2 and set(errors) <= {
        "invalid_parameter_error",
        "InvalidParameter",
    }


def test_labels_stay_bounded_whatever_clients_send(server: LiveServer) -> None:
    for i in range(5):
        stream(server, chat_body(model=f"made-up-{i}"))
        httpx.get(f"{server.base_url}/no/such/path/{i}")
    m = scrape(server)
    text = json.dumps([sorted(labels) for _, labels in m])
    assert "made-up" not in text and "/no/such" not in text
    assert value(m, "omniserve_requests_total", model="other", status="refused") == 5
    assert value(m, "omniserve_http_responses_total", route="other", status="404") == 5


def test_media_fetch_and_decode_are_timed(server: LiveServer) -> None:
    content = [
        {"type": "image_url", "image_url": {"url": png_url()}},
        {"type": "text", "text": "What colour is this?"},
    ]
    body = chat_body(messages=[{"role": "user", "content": content}])
    assert stream(server, body).status_code == 200
    m = scrape(server)
    for stage in ("fetch", "decode"):
        assert value(m, "omniserve_media_seconds_count", stage=stage, kind="image_url") == 1
    assert value(m, "omniserve_tokens_total", model="qwen3-omni-flash", kind="prompt_image") > 0


def test_metrics_need_an_admin_key_once_keys_exist(server: LiveServer) -> None:
    assert server.accounts.store is not None
    _, user = server.accounts.store.create("app", rpm=1)
    _, admin = server.accounts.store.create("ops", admin=True)
    assert httpx.get(f"{server.base_url}/metrics").status_code == 401
    assert (
        httpx.get(
            f"{server.base_url}/metrics", headers={"Authorization": f"Bearer {user}"}
        ).status_code
        == 403
    )
    assert stream(server, chat_body(), user).status_code == 200
    assert stream(server, chat_body(), user).status_code == 429
    m = scrape(server, admin)
    assert value(m, "omniserve_rate_limit_refusals_total", limit="rpm") == 1
    assert user not in json.dumps(list(map(sorted, (labels for _, labels in m))))


def test_each_request_logs_one_line_with_its_numbers(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="omniserve.request"):
        resp = stream(server, chat_body(modalities=["text", "audio"], audio={"voice": "Ethan"}))
    rid = resp.headers["x-request-id"]
    records = [r for r in caplog.records if r.name == "omniserve.request"]
    assert len(records) == 1
    fields = records[0].fields  # type: ignore[attr-defined]
    assert fields["request_id"] == rid and fields["status"] == "ok"
    assert fields["model"] == "qwen3-omni-flash" and fields["key_id"] is None
    assert fields["tokens"]["completion_audio"] > 0 and fields["ttfa_ms"] is not None
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["logger"] == "omniserve.request" and line["request_id"] == rid
    assert line["ts"].endswith("Z") and line["level"] == "info"
    text = TextFormatter().format(records[0])
    assert f"request_id={rid}" in text and "status=ok" in text


def test_serve_logs_json_lines(tmp_path: Any) -> None:
    with serving("--log-format", "json", "--data-dir", str(tmp_path)) as served:
        resp = httpx.post(f"{served.base}/v1/chat/completions", json=chat_body(), timeout=60)
        rid = resp.headers["x-request-id"]
    lines = [json.loads(x) for x in served.output.splitlines() if x.startswith("{")]
    assert lines and all({"ts", "level", "logger", "message"} <= set(x) for x in lines)
    ours = [x for x in lines if x.get("request_id") == rid]
    assert len(ours) == 1 and ours[0]["status"] == "ok" and ours[0]["duration_ms"] >= 0
    access = [x for x in lines if x["logger"] == "uvicorn.access"]
    assert any(x.get("path") == "/v1/chat/completions" and x.get("status") == 200 for x in access)


def test_readyz_says_when_the_database_is_gone(fresh_postgres_url: str) -> None:
    import dbservers

    with live_server(fast_settings(accounts={"database_url": fresh_postgres_url})) as s:
        assert httpx.get(f"{s.base_url}/readyz").status_code == 200
        server_url = fresh_postgres_url.rsplit("/", 1)[0] + "/postgres"
        dbservers.drop_database(server_url, fresh_postgres_url)
        resp = httpx.get(f"{s.base_url}/readyz")
        assert resp.status_code == 503
        message = resp.json()["error"]["message"]
        assert message.startswith("The accounts database is unavailable: ")
        assert "Traceback" not in message

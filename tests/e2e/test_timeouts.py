"""An engine that goes silent ends its stream with RequestTimeOut; the server carries on."""

from __future__ import annotations

import asyncio
import json

import httpx

from helpers import chat_body, fast_settings, live_server
from omniserve.errors import RequestTimedOut
from omniserve.watchdog import Watchdog


def test_no_first_event_in_time_is_a_timeout_error() -> None:
    settings = fast_settings(
        emulator={"first_token_ms": 3000}, timeouts={"first_event_s": 0.3, "idle_s": 10}
    )
    with live_server(settings) as s:
        resp = httpx.post(f"{s.api}/chat/completions", json=chat_body(), timeout=30)
        assert resp.status_code == 500
        error = resp.json()["error"]
        assert error["code"] == "RequestTimeOut"
        assert error["message"] == "The model did not start answering within 0.3 seconds."
        assert resp.elapsed.total_seconds() < 2.5  # not the engine's 3 s
        assert httpx.get(f"{s.base_url}/healthz").status_code == 200
        assert s.accounts.writer is not None and s.accounts.writer.flush()


def test_an_engine_going_quiet_mid_stream_ends_it_with_an_error_event() -> None:
    settings = fast_settings(
        emulator={"tokens_per_second": 2}, timeouts={"first_event_s": 10, "idle_s": 0.2}
    )
    with live_server(settings) as s:
        resp = httpx.post(f"{s.api}/chat/completions", json=chat_body(), timeout=30)
        assert resp.status_code == 200
        events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "RequestTimeOut"
        assert error["message"] == "The model stopped answering for 0.2 seconds."
        # Other streams are unaffected: a request that asks for little finishes in time.
        short = httpx.post(f"{s.api}/chat/completions", json=chat_body(max_tokens=1), timeout=30)
        assert short.status_code == 200 and '"finish_reason":"length"' in short.text


def test_time_spent_outside_the_engine_does_not_count() -> None:
    async def run() -> bool:
        dog = Watchdog(first_s=0.1, idle_s=0.1)
        try:
            for _ in range(3):
                dog.waiting()
                await asyncio.sleep(0.02)  # the engine answers quickly
                dog.got()
                await asyncio.sleep(0.25)  # a slow client holds the stream back
            return True
        finally:
            dog.close()

    assert asyncio.run(run())


def test_a_silent_wait_is_cancelled_and_reported() -> None:
    async def run() -> str:
        dog = Watchdog(first_s=0.1, idle_s=0.1)
        dog.waiting()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            assert dog.expired()
            return dog.error().message
        finally:
            dog.close()
        return "never"

    assert asyncio.run(run()) == "The model did not start answering within 0.1 seconds."
    assert RequestTimedOut("x").status == 500

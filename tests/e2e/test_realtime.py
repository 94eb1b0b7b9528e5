"""The realtime API on a real server: the vendor's own SDK, raw WebSocket clients, bad input.

Speech comes from espeak-ng recordings the tests make (16 kHz PCM16), with silence around it
for the server's turn detection; the engine is the emulator.
"""

from __future__ import annotations

import base64
import gc
import json
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
import websocket
from dashscope.audio.qwen_omni import MultiModality, OmniRealtimeCallback, OmniRealtimeConversation

from helpers import LiveServer, fast_settings, live_server, scrape, value
from omniserve.accounts.schema import ledger
from omniserve.speech.pcm import parse_wav, resample_pcm16

MODEL = "qwen3-omni-flash-realtime"


def speech(text: str) -> bytes:
    """``text`` spoken by espeak-ng, as 16 kHz PCM16."""
    wav = subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, check=True).stdout
    pcm, rate, _ = parse_wav(wav)
    return resample_pcm16(pcm, rate, 16_000)


QUESTION = speech("What is the capital of France?")
QUESTION_MS = len(QUESTION) // 32


def silence(ms: int) -> bytes:
    return bytes(ms * 32)


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server(fast_settings()) as s:
        yield s


def url(server: LiveServer, model: str = MODEL) -> str:
    return server.base_url.replace("http://", "ws://") + f"/api-ws/v1/realtime?model={model}"


class Client:
    """A raw WebSocket client that reads the server's events in order."""

    def __init__(self, server: LiveServer, **kw: Any) -> None:
        self.ws = websocket.create_connection(url(server), timeout=30, **kw)
        self.created = self.next()
        assert self.created["type"] == "session.created"

    def send(self, type_: str, **fields: Any) -> None:
        self.ws.send(json.dumps({"type": type_, **fields}))

    def next(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.ws.recv())
        return event

    def until(self, type_: str) -> list[dict[str, Any]]:
        events = []
        while True:
            events.append(self.next())
            if events[-1]["type"] == type_:
                return events

    def manual(self, **session: Any) -> dict[str, Any]:
        self.send("session.update", session={"turn_detection": None, **session})
        return self.next()

    def say(self, pcm: bytes, chunk: int = 3200) -> None:
        for i in range(0, len(pcm), chunk):
            self.send(
                "input_audio_buffer.append", audio=base64.b64encode(pcm[i : i + chunk]).decode()
            )

    def close(self) -> None:
        try:
            self.ws.close(timeout=1)
        finally:
            self.ws.shutdown()  # the socket too, when the server closed first


# -- the vendor's SDK ------------------------------------------------------------------------


class Recorder(OmniRealtimeCallback):
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.done = threading.Event()

    def on_event(self, message: Any) -> None:
        self.events.append(message)
        if message.get("type") == "response.done":
            self.done.set()


def test_the_vendor_sdk_manual_flow(server: LiveServer) -> None:
    recorder = Recorder()
    conversation = OmniRealtimeConversation(
        model=MODEL, callback=recorder, url=url(server).split("?")[0], api_key="unused"
    )
    conversation.connect()
    conversation.update_session(
        output_modalities=[MultiModality.AUDIO, MultiModality.TEXT],
        voice="Cherry",
        enable_turn_detection=False,
        enable_input_audio_transcription=False,
    )
    for i in range(0, len(QUESTION), 3200):
        conversation.append_audio(base64.b64encode(QUESTION[i : i + 3200]).decode())
    conversation.commit()
    conversation.create_response()
    assert recorder.done.wait(60), [e["type"] for e in recorder.events]
    conversation.end_session()
    conversation.close()
    conversation.thread.join(5)
    with warnings.catch_warnings():
        # The SDK leaves its socket to the garbage collector once the server has closed it.
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    types = [e["type"] for e in recorder.events]
    assert types[:2] == ["session.created", "session.updated"]
    assert recorder.events[1]["session"]["turn_detection"] is None
    turn = [t for t in types[2:] if not t.endswith(".delta")]
    assert turn == [
        "input_audio_buffer.committed",
        "conversation.item.created",
        "response.created",
        "response.output_item.added",
        "conversation.item.created",
        "response.content_part.added",
        "response.audio_transcript.done",
        "response.audio.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
        "session.finished",
    ]
    deltas = [e["delta"] for e in recorder.events if e["type"] == "response.audio_transcript.delta"]
    done = next(e for e in recorder.events if e["type"] == "response.audio_transcript.done")
    assert "".join(deltas) == done["transcript"] and done["transcript"]
    pcm = b"".join(
        base64.b64decode(e["delta"]) for e in recorder.events if e["type"] == "response.audio.delta"
    )
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    assert len(samples) / 24_000 > 1.0  # seconds of 24 kHz speech
    assert np.sqrt(np.mean(samples**2)) > 300  # not silence
    final = recorder.events[-2]["response"]
    assert final["status"] == "completed"
    usage = final["usage"]
    assert usage["input_tokens_details"]["audio_tokens"] > 0
    assert usage["output_tokens_details"]["audio_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert conversation.get_last_first_audio_delay() is not None


# -- raw clients -----------------------------------------------------------------------------


def test_ids_and_the_session_as_created(server: LiveServer) -> None:
    client = Client(server)
    created = client.created
    assert created["event_id"].startswith("event_") and len(created["event_id"]) == 27
    session = created["session"]
    assert session["id"].startswith("sess_") and len(session["id"]) == 26
    assert session["model"] == MODEL and session["voice"] == "Cherry"
    assert session["modalities"] == ["text", "audio"]
    assert session["turn_detection"]["type"] == "server_vad"
    assert session["turn_detection"]["silence_duration_ms"] == 800
    client.close()
    turbo = websocket.create_connection(url(server, "qwen-omni-turbo-realtime"), timeout=30)
    first = json.loads(turbo.recv())["session"]
    assert first["voice"] == "Chelsie" and first["output_audio_format"] == "pcm16"
    turbo.close()


def test_a_text_turn_in_a_text_only_session_and_its_ledger_row(server: LiveServer) -> None:
    client = Client(server)
    updated = client.manual(modalities=["text"], instructions="Answer briefly.")
    assert updated["session"]["modalities"] == ["text"]
    assert updated["session"]["instructions"] == "Answer briefly."
    client.send(
        "conversation.item.create",
        item={
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Hi!"}],
        },
    )
    item = client.next()
    assert item["type"] == "conversation.item.created" and item["item"]["role"] == "user"
    client.send("response.create")
    events = client.until("response.done")
    types = [e["type"] for e in events]
    assert "response.audio.delta" not in types and "response.text.delta" in types
    text = "".join(e["delta"] for e in events if e["type"] == "response.text.delta")
    assert next(e for e in events if e["type"] == "response.text.done")["text"] == text
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"] == [{"type": "text", "text": text}]
    assert done["usage"]["output_tokens_details"]["audio_tokens"] == 0
    # The answer is in the conversation: a second turn sees a longer prompt.
    client.send(
        "conversation.item.create",
        item={
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Hi!"}],
        },
    )
    client.next()
    client.send("response.create")
    second = client.until("response.done")[-1]["response"]
    assert second["usage"]["input_tokens"] > done["usage"]["input_tokens"]
    client.close()
    assert server.accounts.writer is not None and server.accounts.writer.flush()


def test_a_conversation_longer_than_the_models_input_leaves_out_its_oldest_turns(
    server: LiveServer,
) -> None:
    ws = websocket.create_connection(url(server, "qwen-omni-turbo-realtime"), timeout=30)
    assert json.loads(ws.recv())["type"] == "session.created"
    ws.send(json.dumps({"type": "session.update", "session": {"modalities": ["text"]}}))
    json.loads(ws.recv())
    for n in range(8):  # about 6,000 tokens each: 48,000 in all, over turbo's 30,720
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": f"turn {n} " + "hello " * 6000}],
        }
        ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        assert json.loads(ws.recv())["type"] == "conversation.item.created"
    ws.send(json.dumps({"type": "response.create"}))
    while (event := json.loads(ws.recv()))["type"] != "response.done":
        assert event["type"] != "error", event
    response = event["response"]
    assert response["status"] == "completed"
    assert 20_000 < response["usage"]["input_tokens"] <= 30_720
    ws.close()


def test_cancelling_an_answer_keeps_what_was_sent(server: LiveServer) -> None:
    with live_server(fast_settings(emulator={"tokens_per_second": 20})) as slow:
        client = Client(slow)
        client.manual(modalities=["text"])
        client.send(
            "conversation.item.create",
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Tell me a story."}],
            },
        )
        client.next()
        client.send("response.create")
        events = client.until("response.text.delta")
        client.send("response.create")  # one response at a time
        events += client.until("error")
        assert events[-1]["error"]["code"] == "conversation_already_has_active_response"
        client.send("response.cancel")
        events += client.until("response.done")
        done = events[-1]["response"]
        assert done["status"] == "cancelled"
        sent = "".join(e["delta"] for e in events if e["type"] == "response.text.delta")
        assert done["output"][0]["content"][0]["text"] == sent
        assert done["output"][0]["status"] == "incomplete"
        client.send("response.cancel")
        assert client.next()["error"]["code"] == "response_cancel_not_active"
        client.close()


# -- session.update ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("session", "param", "message"),
    [
        (
            {"modalities": ["audio"]},
            "session.modalities",
            "Invalid modalities: ['audio']. Supported combinations are: ['text'] and "
            "['audio', 'text'].",
        ),
        ({"voice": "Nobody"}, "session.voice", None),
        ({"turn_detection": {"threshold": 1.5}}, "session.turn_detection.threshold", None),
        (
            {"turn_detection": {"silence_duration_ms": 100}},
            "session.turn_detection.silence_duration_ms",
            None,
        ),
        ({"input_audio_format": "mp3"}, "session.input_audio_format", None),
        (
            {"audio": {"input": {"format": {"type": "pcm", "sample_rate": 8000}}}},
            "session.audio.input.format.sample_rate",
            None,
        ),
        (
            {"audio": {"output": {"format": {"type": "pcm", "sample_rate": 48000}}}},
            "session.audio.output.format.sample_rate",
            None,
        ),
        ({"temperature": 2.0}, "session.temperature", None),
    ],
)
def test_bad_session_fields_are_refused_by_name(
    server: LiveServer, session: dict[str, Any], param: str, message: str | None
) -> None:
    client = Client(server)
    client.send("session.update", session=session)
    error = client.next()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["code"] == "invalid_value"
    assert error["error"]["param"] == param
    if message is not None:
        assert error["error"]["message"] == message
    # The session is unchanged and goes on.
    client.send("session.update", session={"voice": "Ethan"})
    assert client.next()["session"]["voice"] == "Ethan"
    client.close()


def test_both_format_layouts_are_accepted(server: LiveServer) -> None:
    client = Client(server)
    flat = client.manual(input_audio_format="pcm16", output_audio_format="pcm24")
    assert flat["session"]["input_audio_format"] == "pcm16"
    nested = client.manual(
        audio={
            "input": {"format": {"type": "pcm", "sample_rate": 16000}},
            "output": {"format": {"type": "pcm", "sample_rate": 24000}},
        }
    )
    assert nested["session"]["input_audio_format"] == "pcm"
    assert nested["session"]["output_audio_format"] == "pcm"
    client.close()


# -- bad input --------------------------------------------------------------------------------


def test_bad_events_get_error_events_and_the_session_goes_on(server: LiveServer) -> None:
    client = Client(server)
    client.manual()
    client.ws.send_binary(b"\x00\x01")
    assert client.next()["error"]["code"] == "invalid_event"
    client.ws.send("{not json")
    assert client.next()["error"]["code"] == "invalid_json"
    client.send("input_audio_buffer.teleport")
    assert client.next()["error"]["message"].startswith("Unknown event type")
    client.send("input_audio_buffer.append", audio="***")
    assert client.next()["error"]["param"] == "audio"
    client.send("input_audio_buffer.append", audio=base64.b64encode(b"abc").decode())
    assert "odd number" in client.next()["error"]["message"]
    client.send("input_image_buffer.append", image=base64.b64encode(b"\xff\xd8\xff").decode())
    assert "before images" in client.next()["error"]["message"]
    client.send("input_audio_buffer.commit")
    assert client.next()["error"]["code"] == "input_audio_buffer_commit_empty"
    client.send("response.create")
    assert client.next()["error"]["code"] == "conversation_empty"
    client.ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (2 << 20)}))
    assert client.next()["error"]["code"] == "event_too_large"
    # After all that, a turn still works.
    client.say(QUESTION[:32000])
    client.send("input_audio_buffer.clear")
    assert client.next()["type"] == "input_audio_buffer.cleared"
    client.send("input_audio_buffer.commit")
    assert client.next()["error"]["code"] == "input_audio_buffer_commit_empty"
    client.say(QUESTION)
    client.send("input_audio_buffer.commit")
    assert client.next()["type"] == "input_audio_buffer.committed"
    client.next()
    client.send("response.create")
    assert client.until("response.done")[-1]["response"]["status"] == "completed"
    client.close()


# -- access and lifetime ----------------------------------------------------------------------


def test_a_key_is_checked_on_the_upgrade() -> None:
    with live_server(fast_settings()) as keyed:
        assert keyed.accounts.store is not None
        _, secret = keyed.accounts.store.create("user")
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            websocket.create_connection(url(keyed), timeout=10)
        assert info.value.status_code == 401
        assert json.loads(info.value.resp_body)["error"]["code"] == "invalid_api_key"
        with pytest.raises(websocket.WebSocketBadStatusException) as unknown:
            websocket.create_connection(
                url(keyed, "qwen9-omni-realtime"),
                header=[f"Authorization: Bearer {secret}"],
                timeout=10,
            )
        assert unknown.value.status_code == 404
        ws = websocket.create_connection(
            url(keyed), header=[f"Authorization: Bearer {secret}"], timeout=10
        )
        assert json.loads(ws.recv())["type"] == "session.created"
        ws.close()
        # A browser offers the key as a subprotocol; the other one it offered is chosen.
        browser = websocket.create_connection(
            url(keyed),
            subprotocols=["realtime", f"openai-insecure-api-key.{secret}"],
            timeout=10,
        )
        assert browser.getsubprotocol() == "realtime"
        assert json.loads(browser.recv())["type"] == "session.created"
        browser.close()
        with pytest.raises(websocket.WebSocketBadStatusException) as wrong:
            websocket.create_connection(
                url(keyed), subprotocols=["realtime", "openai-insecure-api-key.sk-wrong"]
            )
        assert wrong.value.status_code == 401


def test_sessions_at_once_are_limited_per_key() -> None:
    with live_server(fast_settings(realtime={"sessions_per_key": 2})) as keyed:
        assert keyed.accounts.store is not None
        _, one = keyed.accounts.store.create("one session", sessions=1)
        _, default = keyed.accounts.store.create("the server's default")

        def connect(secret: str) -> websocket.WebSocket:
            ws = websocket.create_connection(
                url(keyed), header=[f"Authorization: Bearer {secret}"], timeout=10
            )
            assert json.loads(ws.recv())["type"] == "session.created"
            return ws

        def refused(secret: str) -> websocket.WebSocketBadStatusException:
            with pytest.raises(websocket.WebSocketBadStatusException) as info:
                connect(secret)
            return info.value

        first = connect(one)
        too_many = refused(one)
        assert too_many.status_code == 429
        assert too_many.resp_headers["retry-after"] == "5"
        error = json.loads(too_many.resp_body)["error"]
        assert error["code"] == "limit_requests"
        assert "1 realtime session open at once" in error["message"]
        held = [connect(default), connect(default)]  # another key: its own count
        assert refused(default).status_code == 429
        first.close()
        deadline = time.monotonic() + 10
        while keyed.accounts.sessions.get(keyed.accounts.store.all()[0].id):
            assert time.monotonic() < deadline, "the closed session still holds its slot"
            time.sleep(0.02)
        connect(one).close()  # the slot came back
        for ws in held:
            ws.close()


def test_audio_faster_than_real_time_is_refused_beyond_the_lead() -> None:
    with live_server(fast_settings(realtime={"max_audio_lead_s": 1.0})) as strict:
        client = Client(strict)
        client.manual()
        client.say(silence(900))  # a burst within the lead: accepted
        client.say(silence(1000), chunk=32_000)  # beyond it, in one append
        error = client.next()
        assert error["type"] == "error"
        assert error["error"]["code"] == "input_audio_too_fast"
        client.say(silence(100))  # within the lead again: the refused append was not kept
        client.send("input_audio_buffer.commit")
        committed = client.next()
        assert committed["type"] == "input_audio_buffer.committed"
        client.close()


def test_a_page_of_another_site_is_refused_by_a_keyless_server(server: LiveServer) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(url(server), origin="https://evil.example", timeout=10)
    assert info.value.status_code == 403


def test_an_idle_session_is_closed_with_an_error_event() -> None:
    with live_server(fast_settings(realtime={"idle_s": 0.5})) as quick:
        client = Client(quick)
        began = time.monotonic()
        error = client.next()
        assert error["type"] == "error" and error["error"]["code"] == "session_idle"
        try:
            rest = client.ws.recv()  # the close frame
        except websocket.WebSocketConnectionClosedException:
            rest = ""
        assert rest == ""
        assert time.monotonic() - began < 5
        client.close()


def test_a_session_outlives_the_deadline_for_request_headers() -> None:
    """The deadline for a request's headers ends with the upgrade: a session is not a request."""
    with live_server(fast_settings(http={"header_timeout_s": 0.5})) as quick:
        client = Client(quick)
        time.sleep(1.5)
        client.send("input_audio_buffer.clear")
        assert client.next()["type"] == "input_audio_buffer.cleared"
        client.close()


# -- server turn detection -------------------------------------------------------------------


def test_the_server_hears_a_turn_and_answers_it(server: LiveServer) -> None:
    client = Client(server)  # the default session: server VAD
    client.say(silence(500) + QUESTION + silence(1200))
    events = client.until("response.done")
    types = [e["type"] for e in events if not e["type"].endswith(".delta")]
    assert types[:9] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.created",
        "response.created",
        "response.output_item.added",
        "conversation.item.created",
        "response.content_part.added",
        "response.audio_transcript.done",
    ]
    started, stopped, committed = events[0], events[1], events[2]
    assert started["item_id"] == stopped["item_id"] == committed["item_id"]
    assert 450 <= started["audio_start_ms"] <= 650
    assert abs(stopped["audio_end_ms"] - (500 + QUESTION_MS)) <= 250
    done = events[-1]["response"]
    assert done["status"] == "completed"
    # The turn's audio: the speech with 300 ms before it, billed at 12.5 tokens a second.
    seconds = (stopped["audio_end_ms"] - started["audio_start_ms"] + 300) / 1000
    audio_tokens = done["usage"]["input_tokens_details"]["audio_tokens"]
    assert abs(audio_tokens - seconds * 12.5) <= 3
    client.close()
    samples = scrape(server)
    assert value(samples, "omniserve_realtime_turn_latency_seconds_count") >= 1
    assert value(samples, "omniserve_realtime_vad_seconds_total") > 0


def test_every_spoken_turn_of_a_conversation_is_answered(server: LiveServer) -> None:
    """A chat request carries at most one audio file; a session's conversation carries one per
    turn, and each turn sees the ones before it."""
    client = Client(server)
    dones = []
    for _ in range(3):
        client.say(silence(300) + QUESTION + silence(1000))
        events = client.until("response.done")
        assert [e for e in events if e["type"] == "error"] == []
        dones.append(events[-1]["response"])
    assert [d["status"] for d in dones] == ["completed"] * 3
    prompts = [d["usage"]["input_tokens"] for d in dones]
    assert prompts[0] < prompts[1] < prompts[2]
    audio = [d["usage"]["input_tokens_details"]["audio_tokens"] for d in dones]
    assert audio[0] < audio[1] < audio[2]  # every earlier turn's audio is in the prompt
    client.close()
    # One ledger row per response, with the seconds of audio it heard and spoke.
    assert server.accounts.writer is not None and server.accounts.writer.flush()
    assert server.accounts.store is not None
    with server.accounts.store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(ledger.c.input_audio_seconds, ledger.c.audio_seconds, ledger.c.status)
            .order_by(ledger.c.started_ms.desc())
            .limit(3)
        ).all()
    heard = [row.input_audio_seconds for row in reversed(rows)]
    turn_s = heard[0]
    assert 1.5 < turn_s < 3.5  # the question and the padding before it
    assert heard == pytest.approx([turn_s, 2 * turn_s, 3 * turn_s], rel=0.1)
    assert all(row.audio_seconds > 0 and row.status == "ok" for row in rows)


def test_speaking_over_the_answer_stops_it() -> None:
    with live_server(fast_settings(emulator={"tokens_per_second": 10})) as slow:
        client = Client(slow)
        client.say(silence(300) + QUESTION + silence(1000))
        events = client.until("response.audio_transcript.delta")
        client.say(QUESTION[: 16_000 * 2])  # the user talks again: one second of speech
        events += client.until("response.done")
        cut = [e["type"] for e in events].index("input_audio_buffer.speech_started", 1)
        assert events[-1]["response"]["status"] == "cancelled"
        assert cut < len(events) - 1  # the answer stopped after the user started again
        sent = "".join(e["delta"] for e in events if e["type"] == "response.audio_transcript.delta")
        assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == sent
        client.say(silence(1000))  # the user stops: the new turn is answered
        later = client.until("response.done")
        assert "input_audio_buffer.speech_stopped" in [e["type"] for e in later]
        client.close()


def test_the_vendor_sdk_voice_flow(server: LiveServer) -> None:
    recorder = Recorder()
    conversation = OmniRealtimeConversation(
        model=MODEL, callback=recorder, url=url(server).split("?")[0], api_key="unused"
    )
    conversation.connect()
    conversation.update_session(
        output_modalities=[MultiModality.AUDIO, MultiModality.TEXT],
        voice="Ethan",
        enable_input_audio_transcription=False,
    )  # server VAD with the SDK's defaults (threshold 0.2, 800 ms of silence)
    audio = silence(300) + QUESTION + silence(1000)
    for i in range(0, len(audio), 3200):
        conversation.append_audio(base64.b64encode(audio[i : i + 3200]).decode())
    assert recorder.done.wait(60), [e["type"] for e in recorder.events]
    conversation.end_session()
    conversation.close()
    conversation.thread.join(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    types = [e["type"] for e in recorder.events]
    assert types[2:4] == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"]
    assert recorder.events[1]["session"]["turn_detection"]["threshold"] == 0.2
    assert recorder.events[-2]["response"]["status"] == "completed"


# -- the user's transcript -------------------------------------------------------------------


def events_until_both(client: Client, *kinds: str) -> list[dict[str, Any]]:
    """Events until one of each of ``kinds`` has come (in any order)."""
    events: list[dict[str, Any]] = []
    while not all(any(e["type"] == k for e in events) for k in kinds):
        events.append(client.next())
    return events


def test_the_users_words_come_from_the_servers_recognizer() -> None:
    with live_server(fast_settings(recognizer={"enabled": True})) as hearing:
        client = Client(hearing)
        client.send(
            "session.update",
            session={"input_audio_transcription": {"model": "gummy-realtime-v1", "language": "en"}},
        )
        assert client.next()["session"]["input_audio_transcription"] == {
            "model": "gummy-realtime-v1"
        }
        client.say(silence(300) + QUESTION + silence(1000))
        done = "conversation.item.input_audio_transcription.completed"
        events = events_until_both(client, "response.done", done)
        committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
        heard = next(e for e in events if e["type"] == done)
        assert heard["item_id"] == committed["item_id"] and heard["content_index"] == 0
        words = heard["transcript"].lower()
        assert "capital" in words and "france" in words, words
        # The emulator says what it heard too, in the language it heard.
        answer = next(e for e in events if e["type"] == "response.audio_transcript.done")
        assert "In it I heard: " in answer["transcript"]
        assert "capital" in answer["transcript"].lower()
        client.close()


def test_a_transcript_asked_of_a_server_without_a_recognizer_fails_clearly(
    server: LiveServer,
) -> None:
    client = Client(server)
    client.send("session.update", session={"input_audio_transcription": {"model": None}})
    client.next()
    client.say(silence(300) + QUESTION + silence(1000))
    failed = "conversation.item.input_audio_transcription.failed"
    events = events_until_both(client, "response.done", failed)
    error = next(e for e in events if e["type"] == failed)["error"]
    assert error["code"] == "transcription_unavailable" and "recognizer" in error["message"]
    assert events[-1]["type"] in ("response.done", failed)
    client.close()

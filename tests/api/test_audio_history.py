"""History the OpenAI way: an earlier answer sent back as its audio id stands for its text."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from sqlalchemy import create_engine

from helpers import LiveServer, fast_settings, live_server
from omniserve.accounts.database import migrate
from omniserve.accounts.transcripts import TranscriptStore, now_ms

QUESTION = {"role": "user", "content": "What is omniserve?"}
FOLLOW_UP = {"role": "user", "content": "Say that again, shorter."}
SPOKEN = {"modalities": ["text", "audio"], "audio": {"voice": "Cherry", "format": "wav"}}


def ask(server: LiveServer, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Text, audio id and usage of one streamed answer (openai SDK)."""
    out: dict[str, Any] = {"text": "", "audio_id": None, "usage": None}
    with OpenAI(api_key="sk-test", base_url=server.api, max_retries=0) as client:
        stream = client.chat.completions.create(  # type: ignore[call-overload]
            model="qwen3-omni-flash",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            **extra,
        )
        for chunk in stream:
            if chunk.usage is not None:
                out["usage"] = chunk.usage
            if chunk.choices:
                delta = chunk.choices[0].delta
                out["text"] += delta.content or ""
                audio = getattr(delta, "audio", None)
                if audio:
                    out["audio_id"] = audio["id"]
    return out


def refused(server: LiveServer, messages: list[dict[str, Any]]) -> dict[str, Any]:
    response = httpx.post(
        f"{server.api}/chat/completions",
        json={"model": "qwen3-omni-flash", "messages": messages, "stream": True},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def test_an_audio_id_brings_its_answer_back(tmp_path: Path) -> None:
    with live_server(fast_settings(accounts={"data_dir": str(tmp_path)})) as server:
        first = ask(server, [QUESTION], **SPOKEN)
        assert first["audio_id"].startswith("audio_") and first["text"]
        by_id = ask(
            server,
            [QUESTION, {"role": "assistant", "audio": {"id": first["audio_id"]}}, FOLLOW_UP],
        )
        by_text = ask(
            server, [QUESTION, {"role": "assistant", "content": first["text"]}, FOLLOW_UP]
        )
        empty = ask(server, [QUESTION, {"role": "assistant", "content": ""}, FOLLOW_UP])
    assert by_id["usage"].prompt_tokens == by_text["usage"].prompt_tokens
    assert by_id["usage"].prompt_tokens > empty["usage"].prompt_tokens + 10
    assert by_id["text"] == by_text["text"]  # the emulator answers what it received

    # Written to the database: a new server on the same data finds it.
    with live_server(fast_settings(accounts={"data_dir": str(tmp_path)})) as again:
        later = ask(
            again, [QUESTION, {"role": "assistant", "audio": {"id": first["audio_id"]}}, FOLLOW_UP]
        )
    assert later["usage"].prompt_tokens == by_text["usage"].prompt_tokens


def test_a_made_up_id_is_a_400(server: LiveServer) -> None:
    made_up = {"role": "assistant", "audio": {"id": "audio_0d7f1a52-0000-4000-8000-000000000000"}}
    error = refused(server, [QUESTION, made_up, FOLLOW_UP])
    assert error["param"] == "messages[1].audio.id"
    assert error["code"] == "invalid_parameter_error"
    assert "unknown or has expired" in error["message"]
    with (
        OpenAI(api_key="sk-test", base_url=server.api, max_retries=0) as client,
        pytest.raises(openai.BadRequestError, match="unknown or has expired"),
    ):
        client.chat.completions.create(
            model="qwen3-omni-flash",
            messages=[QUESTION, made_up, FOLLOW_UP],
            stream=True,  # type: ignore[list-item]
        )


def test_an_audio_id_on_a_user_message_is_a_400(server: LiveServer) -> None:
    error = refused(server, [{"role": "user", "content": "hi", "audio": {"id": "audio_x"}}])
    assert error["param"] == "messages[0].audio"


def test_an_id_expires() -> None:
    with live_server(fast_settings(accounts={"audio_history_s": 0.3})) as server:
        first = ask(server, [QUESTION], **SPOKEN)
        history = [QUESTION, {"role": "assistant", "audio": {"id": first["audio_id"]}}, FOLLOW_UP]
        assert ask(server, history)["usage"] is not None
        time.sleep(0.4)
        assert "expired" in refused(server, history)["message"]


def test_history_off_forgets_every_id() -> None:
    with live_server(fast_settings(accounts={"audio_history_s": 0})) as server:
        first = ask(server, [QUESTION], **SPOKEN)
        history = [QUESTION, {"role": "assistant", "audio": {"id": first["audio_id"]}}, FOLLOW_UP]
        refused(server, history)


def test_a_text_answer_leaves_no_id(server: LiveServer) -> None:
    first = ask(server, [QUESTION])
    assert first["audio_id"] is None


def test_store_keeps_ids_to_their_key(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    store = TranscriptStore(engine)
    later = now_ms() + 60_000
    store.write("audio_a", "key_1", "Hello from a.", later)
    store.write("audio_b", None, "Hello from b.", later)
    store.write("audio_old", "key_1", "Gone.", now_ms() - 1)
    store.write("audio_a", "key_1", "A second write is ignored.", later)
    ids = ["audio_a", "audio_b", "audio_old", "audio_none"]
    assert store.find(ids, "key_1") == {"audio_a": "Hello from a.", "audio_b": "Hello from b."}
    assert store.find(ids, "key_2") == {"audio_b": "Hello from b."}
    store.keep("audio_mem", "key_2", "Only in memory.", later)
    assert store.find(["audio_mem"], "key_2") == {"audio_mem": "Only in memory."}
    assert store.find(["audio_mem"], "key_1") == {}
    assert store.sweep() == 1
    engine.dispose()

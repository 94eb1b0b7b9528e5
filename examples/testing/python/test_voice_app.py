"""Tests of voice_app.py against omniserve: with omniserve, openai and pytest installed, run
`pytest` here. The `omniserve` fixture comes with the omniserve package."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI
from voice_app import AnswerInterrupted, ask

from omniserve.testing import OmniServer


@pytest.fixture
def client(omniserve: OmniServer) -> OpenAI:
    return OpenAI(api_key=omniserve.api_key, base_url=omniserve.base_url, max_retries=0)


def test_the_answer_is_spoken(omniserve: OmniServer, client: OpenAI) -> None:
    omniserve.set_rules(
        [{"match": {"message": "weather"}, "reply": {"text": "It is sunny. Take a hat."}}]
    )
    answer = ask(client, "What is the weather like?")
    assert answer.text == "It is sunny. Take a hat."
    assert answer.audio_chunks > 1
    assert len(answer.pcm) > 24_000 * 2 // 2  # more than half a second of speech
    assert answer.finish_reason == "stop"
    assert answer.usage["completion_tokens"] > 0


def test_a_rate_limit_says_when_to_retry(omniserve: OmniServer, client: OpenAI) -> None:
    omniserve.set_rules([{"fault": {"error": "limit_requests", "retry_after": 2}}])
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client, "Hello")
    assert caught.value.response.headers["retry-after"] == "2"
    assert caught.value.code == "limit_requests"


def test_an_error_midway_keeps_what_arrived(omniserve: OmniServer, client: OpenAI) -> None:
    omniserve.set_rules(
        [
            {
                "reply": {"text": "First sentence. Second sentence. Third sentence."},
                "fault": {"error": "data_inspection_failed", "after_chunks": 4},
            }
        ]
    )
    with pytest.raises(AnswerInterrupted) as caught:
        ask(client, "Tell me a story")
    assert caught.value.partial.text.startswith("First")
    assert "inappropriate" in str(caught.value)


def test_a_dropped_connection_is_an_interruption(omniserve: OmniServer, client: OpenAI) -> None:
    omniserve.set_rules([{"fault": {"drop_after_chunks": 3}}])
    with pytest.raises(AnswerInterrupted):
        ask(client, "Hello")

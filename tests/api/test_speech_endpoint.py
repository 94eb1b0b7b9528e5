"""POST /v1/audio/speech: OpenAI's text-to-speech, read by the built-in voice."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
from openai import OpenAI

from helpers import LiveServer
from omniserve.config import RecognizerSettings
from omniserve.speech.recognizer import Recognizer

SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory: pytest.TempPathFactory) -> Recognizer:
    return Recognizer.load(RecognizerSettings(threads=2), tmp_path_factory.mktemp("recognizer"))


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Mono float samples and their rate, whatever the container."""
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(audio=0))
    samples = np.concatenate([f.to_ndarray().reshape(-1).astype(np.float32) for f in frames])
    if frames[0].format.name.startswith("s16"):
        samples /= 32768
    return samples, frames[0].sample_rate


def as_pcm16_24k(samples: np.ndarray, rate: int) -> bytes:
    positions = np.arange(0, len(samples), rate / 24_000)
    resampled = np.interp(positions, np.arange(len(samples)), samples)
    return (np.clip(resampled, -1, 1) * 32767).astype("<i2").tobytes()


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def speak(server: LiveServer, **body: Any) -> httpx.Response:
    request = {"model": "tts-1", "voice": "alloy", "input": SENTENCE, **body}
    return httpx.post(f"{server.api}/audio/speech", json=request, timeout=60)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav"])
def test_every_format_is_heard(server: LiveServer, recognizer: Recognizer, fmt: str) -> None:
    with OpenAI(api_key="sk-test", base_url=server.api, max_retries=0) as client:
        response = client.audio.speech.create(
            model="tts-1", voice="alloy", input=SENTENCE, response_format=fmt
        )
        data = response.content
    samples, rate = decode(data)
    assert 1.5 < len(samples) / rate < 6
    heard = recognizer.transcribe(as_pcm16_24k(samples, rate), 24_000, language="en").text
    # espeak-ng through a lossy codec: most words, not all ("jumps" is heard as "dumps").
    assert len(words(SENTENCE) & words(heard)) >= 5, heard


def test_pcm_is_raw_24k(server: LiveServer) -> None:
    response = speak(server, response_format="pcm")
    assert response.headers["content-type"] == "audio/pcm"
    assert len(response.content) % 2 == 0 and len(response.content) > 48_000
    wav = speak(server, response_format="wav").content
    assert wav[:4] == b"RIFF" and wav[44:] == response.content  # the same speech


def test_it_streams_as_it_is_made(server: LiveServer) -> None:
    long = " ".join(f"This is sentence number {i}." for i in range(12))
    pieces = 0
    with httpx.stream(
        "POST",
        f"{server.api}/audio/speech",
        json={"model": "tts-1", "voice": "Ethan", "input": long, "response_format": "pcm"},
        timeout=60,
    ) as response:
        for _ in response.iter_raw():
            pieces += 1
    assert pieces > 5


def test_speed_changes_the_length(server: LiveServer) -> None:
    normal = len(speak(server, response_format="pcm").content)
    fast = len(speak(server, response_format="pcm", speed=2.0).content)
    slow = len(speak(server, response_format="pcm", speed=0.5).content)
    assert fast < 0.75 * normal < normal < 0.75 * slow


def test_sse_events(server: LiveServer) -> None:
    response = speak(server, stream_format="sse", response_format="mp3")
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(e[6:]) for e in response.text.split("\n\n") if e.startswith("data: ")]
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"}
    done = events[-1]
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert usage["input_tokens"] == 10 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    mp3 = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    samples, rate = decode(mp3)
    assert len(samples) / rate > 1.5


def test_catalog_voices_and_chinese(server: LiveServer) -> None:
    chinese = speak(server, voice="cherry", input="今天天气很好，我们一起去公园散步吧。")
    english = speak(server, voice="Cherry", input="Today the weather is fine.")
    assert chinese.status_code == english.status_code == 200
    samples, rate = decode(chinese.content)
    assert len(samples) / rate > 1.5 and float(np.sqrt(np.mean(samples**2))) > 0.02
    # Read as Mandarin (espeak-ng's cmn), not spelled out as English: about a syllable per
    # character, far shorter than reading the characters' names.
    assert len(samples) / rate < 8


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"voice": "nobody"}, "voice", "Unknown voice 'nobody'"),
        ({"input": "   "}, "input", "input must not be empty"),
        ({"input": "a" * 4097}, "input", "the limit is 4096"),
        ({"response_format": "ogg"}, "response_format", "Input should be 'mp3'"),
        ({"speed": 5}, "speed", "less than or equal to 4"),
        ({"speed": "fast"}, "speed", "valid number"),
        ({"input": 3}, "input", "valid string"),
        ({"model": ""}, "model", "at least 1 character"),
    ],
)
def test_bad_requests_are_400s(
    server: LiveServer, body: dict[str, Any], param: str, says: str
) -> None:
    response = speak(server, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"], error


def test_malformed_json_is_a_400(server: LiveServer) -> None:
    response = httpx.post(
        f"{server.api}/audio/speech",
        content=b'{"input": ',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Request body is not valid JSON."


def test_a_huge_body_is_a_413(server: LiveServer) -> None:
    response = httpx.post(
        f"{server.api}/audio/speech",
        content=b'{"input": "' + b"a" * 400_000 + b'"}',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413


def test_the_sdk_streams_to_a_file(server: LiveServer, tmp_path: Path) -> None:
    target = tmp_path / "speech.mp3"
    with (
        OpenAI(api_key="sk-test", base_url=server.api, max_retries=0) as client,
        client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="nova", input=SENTENCE, response_format="mp3"
        ) as response,
    ):
        response.stream_to_file(target)
    samples, rate = decode(target.read_bytes())
    assert len(samples) / rate > 1.5

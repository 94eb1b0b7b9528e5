"""OpenAI's audio endpoints on the upstream engine: forwarded to an upstream's own speech and
transcription models, or answered by its chat model and the built-in voice where it has none;
real HTTP on 127.0.0.1 both ways, driven with the openai SDK."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import av
import httpx
import numpy as np
import pytest
import soundfile as sf
from openai import OpenAI

from engines.upstream.fakes import Behaviour, FakeUpstream, sine_pcm
from helpers import LiveServer, dominant_frequency, fast_settings, live_server

MODEL = "qwen3-omni-flash"
TTS = "Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice"
ASR = "openai/whisper-large-v3"


@contextmanager
def relay(*fakes: FakeUpstream, **spec: Any) -> Iterator[LiveServer]:
    upstream = {
        "name": "up",
        "kind": fakes[0].kind,
        "base_urls": [f.base_url for f in fakes],
        "models": {MODEL: "fake-model"},
        "health_path": "",
        **spec,
    }
    with live_server(fast_settings(engine="upstream", upstream={"upstreams": [upstream]})) as s:
        yield s


def client(server: LiveServer) -> OpenAI:
    return OpenAI(api_key="sk-test", base_url=server.api, max_retries=0)


def decoded(data: bytes) -> tuple[np.ndarray, int]:
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(audio=0))
    samples = np.concatenate([f.to_ndarray().reshape(-1).astype(np.float32) for f in frames])
    return samples, frames[0].sample_rate


def wav(seconds: float) -> bytes:
    out = io.BytesIO()
    sf.write(out, sine_pcm(seconds, 16_000), 16_000, format="WAV", subtype="PCM_16")
    return out.getvalue()


def of(fake: FakeUpstream, path: str) -> list[dict[str, Any]]:
    return [r["body"] for r in fake.requests if r.get("path") == path]


# -- /v1/audio/speech ------------------------------------------------------------------------


def test_speech_is_read_by_the_upstreams_speech_model() -> None:
    behaviour = Behaviour(audio_rate=16_000, audio_seconds=1.0)
    with (
        FakeUpstream("vllm-omni", behaviour) as fake,
        relay(fake, speech_model=TTS, voices={"Cherry": "chelsie"}, audio_rate=16_000) as server,
        client(server) as openai,
    ):
        mp3 = openai.audio.speech.create(
            model="tts-1", voice="cherry", input="Hello from the speech model."
        ).read()
        pcm = openai.audio.speech.create(
            model="tts-1", voice="aiden", input="Faster.", response_format="pcm", speed=2.0
        ).read()
        sent = of(fake, "speech")
    assert sent[0] == {
        "model": TTS,
        "input": "Hello from the speech model.",
        "voice": "chelsie",  # mapped
        "response_format": "pcm",
    }
    assert sent[1]["voice"] == "aiden" and sent[1]["speed"] == 2.0  # as sent
    samples, rate = decoded(mp3)
    assert rate == 24_000 and abs(len(samples) / rate - 1.0) < 0.1
    # 16 kHz from the upstream, 24 kHz out, the same tone.
    assert abs(len(pcm) / 2 / 24_000 - 0.5) < 0.01
    assert abs(dominant_frequency(pcm) - 440) < 5


def test_speech_events_and_usage() -> None:
    with (
        FakeUpstream("openai", Behaviour(audio_seconds=2.0)) as fake,
        relay(fake, speech_model="gpt-4o-mini-tts") as server,
        httpx.Client(timeout=30) as http,
        http.stream(
            "POST",
            f"{server.api}/audio/speech",
            json={"model": "tts-1", "voice": "alloy", "input": "Two seconds.",
                  "stream_format": "sse", "instructions": "Cheerfully.", "response_format": "pcm"},
        ) as response,
    ):  # fmt: skip
        events = [json.loads(line[6:]) for line in response.iter_lines() if line]
        sent = of(fake, "speech")[0]
    assert sent["instructions"] == "Cheerfully." and sent["model"] == "gpt-4o-mini-tts"
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"}
    assert abs(len(audio) / 2 / 24_000 - 2.0) < 0.01
    done = events[-1]
    assert done["type"] == "speech.audio.done"
    assert done["usage"]["output_tokens"] == 25  # 2 s at 12.5 audio tokens a second
    assert done["usage"]["input_tokens"] > 0


def test_the_upstreams_refusal_reaches_the_client() -> None:
    with (
        FakeUpstream("vllm-omni") as fake,
        relay(fake, speech_model=TTS) as server,
        client(server) as openai,
        pytest.raises(Exception) as refused,
    ):
        openai.audio.speech.create(model="tts-1", voice="Nobody", input="Hi.")
    error = refused.value
    assert getattr(error, "status_code", None) == 400
    assert "Invalid speaker 'Nobody'" in str(error)


def test_a_failing_replica_gives_way_to_the_next() -> None:
    with (
        FakeUpstream("vllm-omni", Behaviour(status=503)) as down,
        FakeUpstream("vllm-omni", Behaviour(audio_seconds=0.5)) as up,
        relay(down, up, speech_model=TTS) as server,
        client(server) as openai,
    ):
        pcm = openai.audio.speech.create(
            model="tts-1", voice="ethan", input="Hi.", response_format="pcm"
        ).read()
        tried = len(of(down, "speech")) + len(of(up, "speech"))
    assert abs(len(pcm) / 2 / 24_000 - 0.5) < 0.01
    assert tried in (1, 2)  # the least busy replica first, the failing one at most once


def test_without_a_speech_model_the_built_in_voice_reads() -> None:
    with (
        FakeUpstream("vllm-omni") as fake,
        relay(fake) as server,
        client(server) as openai,
    ):
        pcm = openai.audio.speech.create(
            model="tts-1", voice="Cherry", input="Read by espeak.", response_format="pcm"
        ).read()
        assert not of(fake, "speech") and not fake.requests
    assert len(pcm) / 2 / 24_000 > 0.5


# -- /v1/audio/transcriptions ----------------------------------------------------------------


def test_a_recording_is_heard_by_the_upstreams_transcription_model() -> None:
    behaviour = Behaviour(transcript="Hello from the upstream recognizer today.")
    with (
        FakeUpstream("vllm-omni", behaviour) as fake,
        relay(fake, transcription_model=ASR) as server,
        client(server) as openai,
    ):
        verbose = openai.audio.transcriptions.create(
            model="whisper-1",
            file=("clip.wav", wav(2.0)),
            response_format="verbose_json",
            language="en",
            prompt="upstream",
        )
        srt = openai.audio.transcriptions.create(
            model="whisper-1", file=("clip.wav", wav(2.0)), response_format="srt"
        )
        sent = of(fake, "transcriptions")
    assert verbose.text == behaviour.transcript
    assert verbose.language == "english" and abs(verbose.duration - 2.0) < 0.01
    segments = [(s.start, s.end, s.text) for s in verbose.segments or []]
    assert segments == [
        (0.0, 1.0, "Hello from the upstream"),
        (1.0, 2.0, "recognizer today."),
    ]
    assert "00:00:01,000 --> 00:00:02,000\nrecognizer today." in str(srt)
    first = sent[0]
    assert first["model"] == ASR and first["response_format"] == "verbose_json"
    assert first["language"] == "en" and first["prompt"] == "upstream"
    forwarded, rate = sf.read(io.BytesIO(first["file_bytes"]))
    assert rate == 16_000 and abs(len(forwarded) / rate - 2.0) < 0.01


def test_a_json_only_model_is_asked_again_for_json() -> None:
    behaviour = Behaviour(transcription_formats=("json", "text"))
    with (
        FakeUpstream("openai", behaviour) as fake,
        relay(fake, transcription_model="gpt-4o-transcribe") as server,
        client(server) as openai,
    ):
        verbose = openai.audio.transcriptions.create(
            model="gpt-4o-transcribe", file=("clip.wav", wav(1.5)), response_format="verbose_json"
        )
        asked = [b["response_format"] for b in of(fake, "transcriptions")]
    assert asked == ["verbose_json", "json"]
    assert verbose.text == behaviour.transcript
    assert [(s.start, s.end) for s in verbose.segments or []] == [(0.0, 1.5)]


def test_corrupt_uploads_never_reach_the_upstream() -> None:
    with (
        FakeUpstream("vllm-omni") as fake,
        relay(fake, transcription_model=ASR) as server,
    ):
        r = httpx.post(
            f"{server.api}/audio/transcriptions",
            data={"model": "whisper-1"},
            files={"file": ("clip.wav", b"RIFF" + bytes(100), "audio/wav")},
            timeout=30,
        )
        assert not fake.requests
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"


def test_without_a_transcription_model_the_chat_model_transcribes() -> None:
    behaviour = Behaviour(text='"Words the chat model heard."', audio_seconds=0)
    with (
        FakeUpstream("vllm-omni", behaviour) as fake,
        relay(fake) as server,
        client(server) as openai,
    ):
        result = openai.audio.transcriptions.create(
            model="whisper-1", file=("clip.wav", wav(1.0)), language="fr"
        )
        (chat,) = [r["body"] for r in fake.requests if r.get("path") is None]
    assert result.text == "Words the chat model heard."  # without the quotes around it
    (message,) = chat["messages"]
    parts = {p["type"]: p for p in message["content"]}
    assert "Transcribe the audio" in parts["text"]["text"] and "'fr'" in parts["text"]["text"]
    audio = parts["input_audio"]["input_audio"]
    assert audio["format"] == "wav"
    assert chat["modalities"] == ["text"] and chat.get("temperature") in (0, 0.0, None)


# -- settings ---------------------------------------------------------------------------------


def test_an_upstream_that_serves_nothing_or_no_chat_model_is_refused_at_start() -> None:
    from pydantic import ValidationError

    from omniserve.engines.upstream.engine import UpstreamConfigError
    from omniserve.service import ChatService

    def spec(**fields: Any) -> dict[str, Any]:
        return {"name": "u", "kind": "vllm-omni", "base_urls": ["http://127.0.0.1:9/v1"], **fields}

    with pytest.raises(ValidationError, match="serves nothing"):
        fast_settings(engine="upstream", upstream={"upstreams": [spec()]})
    only_speech = fast_settings(engine="upstream", upstream={"upstreams": [spec(speech_model=TTS)]})
    with pytest.raises(UpstreamConfigError, match="no upstream serves a chat model"):
        ChatService(only_speech)
    # A speech-only upstream beside a chat one is what it is for.
    both = fast_settings(
        engine="upstream",
        upstream={"upstreams": [spec(name="tts", speech_model=TTS),
                                spec(name="chat", models={MODEL: "m"})]},
    )  # fmt: skip
    engine: Any = ChatService(both).engine
    assert engine.speech.name == "tts" and engine.transcription is None

"""The transformers engine end to end: tiny Qwen2.5-Omni and Qwen3-Omni checkpoints built here,
loaded through from_pretrained, served by a real uvicorn, driven with the openai SDK."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websocket
from openai import OpenAI
from PIL import Image

from helpers import LiveServer, fast_settings, live_server
from omniserve.catalog import Catalog
from omniserve.engines.hf.checkpoint import CheckpointError
from omniserve.engines.hf.engine import TransformersEngine
from tiny_omni import QWEN3, QWEN25, build_qwen3_thinking, build_tiny

NAMES = {QWEN25: "qwen2.5-omni-7b", QWEN3: "qwen3-omni-flash"}
VOICES = {QWEN25: "Ethan", QWEN3: "Cherry"}
# Samples of 24 kHz audio per speech code: Qwen2.5 token2wav 2 mel frames x 240, Qwen3 code2wav.
SAMPLES_PER_CODE = {QWEN25: 480, QWEN3: 1920}
# Random weights stop at random; these make the talker say something every time.
GENERATE = {
    QWEN25: {"talker_eos_token_id": [62], "talker_min_new_tokens": 80},
    QWEN3: {"talker_min_new_tokens": 20},
}
THINKING_ONLY = "qwen3-omni-thinking-local"


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-hf")
    return {
        QWEN25: build_tiny(root / "Qwen2.5-Omni-Tiny", QWEN25),
        QWEN3: build_tiny(root / "Qwen3-Omni-Tiny-Instruct", QWEN3),
        "thinking": build_qwen3_thinking(root / "Qwen3-Omni-Tiny-Thinking"),
    }


def _settings(models: list[dict[str, Any]], **transformers: Any) -> Any:
    return fast_settings(engine="transformers", transformers={"models": models, **transformers})


@pytest.fixture(scope="module", params=[QWEN25, QWEN3])
def served(
    request: pytest.FixtureRequest, tiny_dirs: dict[str, Path]
) -> Iterator[tuple[str, LiveServer]]:
    family: str = request.param
    models = [{"name": NAMES[family], "checkpoint": str(tiny_dirs[family])}]
    if family == QWEN3:
        thinking = str(tiny_dirs["thinking"])
        models += [
            {"name": NAMES[family], "checkpoint": thinking},
            {"name": THINKING_ONLY, "checkpoint": thinking},
        ]
    with live_server(_settings(models, generate_kwargs=GENERATE[family])) as server:
        yield family, server


def _client(server: LiveServer) -> OpenAI:
    return OpenAI(api_key="sk-test", base_url=server.api, max_retries=0)


def _stream(server: LiveServer, **kwargs: Any) -> dict[str, Any]:
    """Content, reasoning, audio chunks, finish reason and usage of one streamed reply."""
    with _client(server) as client:
        return _collect(
            client.chat.completions.create(
                stream=True, stream_options={"include_usage": True}, **kwargs
            )
        )


def _collect(stream: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "content": [],
        "reasoning": [],
        "audio": [],
        "finish": None,
        "usage": None,
    }
    for chunk in stream:
        if chunk.usage is not None:
            out["usage"] = chunk.usage.model_dump()
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if delta.content:
            out["content"].append(delta.content)
        reasoning = getattr(delta, "reasoning_content", None)
        if reasoning:
            out["reasoning"].append(reasoning)
        audio = getattr(delta, "audio", None)
        if audio and audio.get("data"):
            out["audio"].append(base64.b64decode(audio["data"]))
        if chunk.choices[0].finish_reason:
            out["finish"] = chunk.choices[0].finish_reason
    return out


def _user(content: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


def _png(seed: int = 0, size: int = 64) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _wav_b64(seconds: float = 1.0) -> str:
    t = np.arange(int(16000 * seconds)) / 16000
    pcm = (0.3 * np.sin(2 * np.pi * 330 * t) * 32767).astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="session")
def mp4_with_sound() -> str:
    args = [
        *("ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=s=64x48:r=10:d=2"),
        *("-f", "lavfi", "-i", "sine=f=440:d=2", "-c:v", "libx264", "-pix_fmt", "yuv420p"),
        *("-c:a", "aac", "-shortest", "-movflags", "frag_keyframe+empty_moov", "-f", "mp4", "-"),
    ]
    data = subprocess.run(args, capture_output=True, check=True).stdout
    return "data:video/mp4;base64," + base64.b64encode(data).decode()


# -- what is served ----------------------------------------------------------------------


def test_models_lists_only_what_is_served(served: tuple[str, LiveServer]) -> None:
    family, server = served
    body = httpx.get(f"{server.api}/models").json()
    names = sorted(m["id"] for m in body["data"])
    expected = sorted([NAMES[family]] + ([THINKING_ONLY] if family == QWEN3 else []))
    assert names == expected
    main = next(m for m in body["data"] if m["id"] == NAMES[family])
    assert main["audio_output"] is True
    assert VOICES[family] in main["voices"]
    assert main["context_length"] == 4096  # capped at the tiny thinker's positions
    assert main["thinking"] is (family == QWEN3)
    if family == QWEN3:
        text_only = next(m for m in body["data"] if m["id"] == THINKING_ONLY)
        assert text_only["audio_output"] is False and text_only["voices"] == []


# -- text and speech ---------------------------------------------------------------------


def test_text_streams_token_by_token(served: tuple[str, LiveServer]) -> None:
    family, server = served
    reply = _stream(
        server, model=NAMES[family], messages=_user("Hello there!"), max_tokens=8, seed=3
    )
    usage = reply["usage"]
    assert len(reply["content"]) >= 2  # deltas, not one block at the end
    assert reply["finish"] in ("stop", "length")
    assert reply["audio"] == []
    assert usage["prompt_tokens"] == usage["prompt_tokens_details"]["text_tokens"]
    assert 1 <= usage["completion_tokens_details"]["text_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_speech_streams_in_chunks_as_codes_arrive(served: tuple[str, LiveServer]) -> None:
    family, server = served
    reply = _stream(
        server,
        model=NAMES[family],
        messages=[{"role": "system", "content": "Be brief."}, *_user("Say something.")],
        modalities=["text", "audio"],
        audio={"voice": VOICES[family], "format": "wav"},
        max_tokens=8,
        seed=5,
    )
    pcm = b"".join(reply["audio"])
    codes = reply["usage"]["completion_tokens_details"]["audio_tokens"]
    assert codes >= GENERATE[family]["talker_min_new_tokens"]
    assert len(reply["audio"]) >= 3
    assert all(len(c) % 2 == 0 for c in reply["audio"])
    samples = len(pcm) // 2
    expected = codes * SAMPLES_PER_CODE[family]
    assert abs(samples - expected) <= SAMPLES_PER_CODE[family], (samples, expected)
    # Random tiny vocoders render ~1e-8, silence in PCM16; the samples themselves are compared
    # with the whole-clip decode in tests/engines/hf/test_voice.py.
    assert reply["content"]  # the text that was spoken is streamed too


def test_same_seed_same_reply_and_stop_sequences(served: tuple[str, LiveServer]) -> None:
    family, server = served
    kwargs: dict[str, Any] = dict(
        model=NAMES[family], messages=_user("Count!"), max_tokens=12, seed=11
    )
    first = "".join(_stream(server, **kwargs)["content"])
    assert first == "".join(_stream(server, **kwargs)["content"])
    stop = first[len(first) // 2 : len(first) // 2 + 2]
    assert stop.strip()
    cut = _stream(server, **kwargs, stop=[stop])
    assert "".join(cut["content"]) == first[: first.index(stop)]
    assert cut["finish"] == "stop"


def test_max_tokens_ends_with_length(served: tuple[str, LiveServer]) -> None:
    family, server = served
    reply = _stream(server, model=NAMES[family], messages=_user("Go on."), max_tokens=3, seed=1)
    assert reply["usage"]["completion_tokens_details"]["text_tokens"] == 3
    assert reply["finish"] == "length"


# -- media ---------------------------------------------------------------------------------


def test_image_input_with_speech(served: tuple[str, LiveServer]) -> None:
    family, server = served
    reply = _stream(
        server,
        model=NAMES[family],
        messages=_user(
            [
                {"type": "image_url", "image_url": {"url": _png()}},
                {"type": "text", "text": "What is this?"},
            ]
        ),
        modalities=["text", "audio"],
        audio={"voice": VOICES[family], "format": "wav"},
        max_tokens=6,
        seed=2,
    )
    details = reply["usage"]["prompt_tokens_details"]
    assert details["image_tokens"] >= 3  # placeholders + the two vision boundary tokens
    assert reply["audio"]


def test_audio_input(served: tuple[str, LiveServer]) -> None:
    family, server = served
    audio = {"type": "input_audio", "input_audio": {"data": _wav_b64(2.0), "format": "wav"}}
    reply = _stream(
        server,
        model=NAMES[family],
        messages=_user([audio]),
        modalities=["text", "audio"],
        audio={"voice": VOICES[family], "format": "wav"},
        max_tokens=6,
        seed=2,
    )
    assert reply["audio"] and reply["content"]
    tokens = reply["usage"]["prompt_tokens_details"]["audio_tokens"]
    per_second = 25 if family == QWEN25 else 13
    assert abs(tokens - 2 - 2 * per_second) <= 2, tokens


# -- OpenAI's audio endpoints, answered by the model ---------------------------------------


def _speech_sse(server: LiveServer, **body: Any) -> tuple[bytes, dict[str, int]]:
    """The PCM and the usage of one /v1/audio/speech request with SSE events."""
    request = {"response_format": "pcm", "stream_format": "sse", **body}
    audio, usage = bytearray(), {}
    with (
        httpx.Client(timeout=120) as client,
        client.stream("POST", f"{server.api}/audio/speech", json=request) as response,
    ):
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "speech.audio.delta":
                audio += base64.b64decode(event["audio"])
            else:
                assert event["type"] == "speech.audio.done"
                usage = event["usage"]
    return bytes(audio), usage


def test_audio_speech_is_read_by_the_models_own_talker(served: tuple[str, LiveServer]) -> None:
    family, server = served
    scheduler = _scheduler(server) if len(server.service.engine.schedulers) == 1 else None
    steps = scheduler.steps if scheduler is not None else 0
    text = "Hello there, this is the model reading."
    pcm, usage = _speech_sse(server, model=NAMES[family], voice=VOICES[family], input=text)
    assert pcm and len(pcm) % 2 == 0
    engine: Any = server.service.engine
    tokenizer = next(iter(engine.loaded.values())).processor.tokenizer
    written = len(tokenizer.encode(text, add_special_tokens=False))
    # The thinker wrote the text (its tokens are counted) and the talker spoke it.
    assert usage["output_tokens"] > written
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    if scheduler is not None:
        assert scheduler.steps > steps
    # OpenAI's voice names stand for the model's voices; speed is kept by stretching.
    fast, _ = _speech_sse(server, model="tts-1", voice="alloy", input=text, speed=2.0)
    assert abs(len(fast) / len(pcm) - 0.5) < 0.1, (len(fast), len(pcm))
    with httpx.Client(timeout=60) as client:
        r = client.post(
            f"{server.api}/audio/speech",
            json={"model": NAMES[family], "voice": "Nobody", "input": text},
        )
    assert r.status_code == 400 and r.json()["error"]["param"] == "voice"
    with _client(server) as openai, openai.audio.speech.with_streaming_response.create(
        model=NAMES[family], voice=VOICES[family], input=text, response_format="mp3"
    ) as response:
        mp3 = response.read()
    import av

    with av.open(io.BytesIO(mp3)) as container:
        seconds = sum(f.samples for f in container.decode(audio=0)) / 24_000
    assert abs(seconds - len(pcm) / 48_000) < 0.15


def test_audio_transcriptions_are_heard_by_the_model(served: tuple[str, LiveServer]) -> None:
    """No recognizer on this server: the served model writes the words down in a chat turn."""
    family, server = served
    assert server.service.recognizer is None
    wav = base64.b64decode(_wav_b64(2.0))
    with _client(server) as client:
        verbose = client.audio.transcriptions.create(
            model="whisper-1", file=("clip.wav", wav), response_format="verbose_json"
        )
        again = client.audio.transcriptions.create(model=NAMES[family], file=("clip.wav", wav))
    assert verbose.text and verbose.text == again.text  # greedy: the same words each time
    assert abs(verbose.duration - 2.0) < 0.01
    assert [(s.start, s.end, s.text) for s in verbose.segments or []] == [
        (0.0, 2.0, verbose.text)
    ]


def test_a_realtime_session_on_open_weights(served: tuple[str, LiveServer]) -> None:
    """A realtime model is answered by the engine's own name for its family: the turn's audio
    goes to the model natively, and the next turn sees the conversation so far."""
    family, server = served
    url = server.base_url.replace("http://", "ws://") + "/api-ws/v1/realtime?model="
    if family == QWEN25:  # no realtime model is answered by Qwen2.5-Omni
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            websocket.create_connection(url + "qwen3-omni-flash-realtime", timeout=10)
        assert info.value.status_code == 404
        return
    ws = websocket.create_connection(url + "qwen3-omni-flash-realtime", timeout=60)
    assert json.loads(ws.recv())["type"] == "session.created"
    ws.send(
        json.dumps(
            {
                "type": "session.update",
                "session": {"turn_detection": None, "max_tokens": 6, "seed": 2},
            }
        )
    )
    assert json.loads(ws.recv())["type"] == "session.updated"
    pcm = base64.b64decode(_wav_b64(2.0))[44:]
    item = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_audio", "audio": base64.b64encode(pcm).decode()}],
    }
    dones = []
    for _ in range(2):
        ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        assert json.loads(ws.recv())["type"] == "conversation.item.created"
        ws.send(json.dumps({"type": "response.create"}))
        events = []
        while not events or events[-1]["type"] != "response.done":
            events.append(json.loads(ws.recv()))
            assert events[-1]["type"] != "error", events[-1]
        assert any(e["type"] == "response.audio.delta" for e in events)
        dones.append(events[-1]["response"])
    ws.close()
    first, second = (d["usage"] for d in dones)
    assert dones[0]["status"] == "completed"
    assert abs(first["input_tokens_details"]["audio_tokens"] - 2 - 2 * 13) <= 2
    # The second answer heard both turns and the first answer.
    assert (
        second["input_tokens_details"]["audio_tokens"]
        > first["input_tokens_details"]["audio_tokens"]
    )
    assert (
        second["input_tokens"]
        > first["input_tokens"] + first["output_tokens_details"]["text_tokens"]
    )


def test_video_file_with_its_soundtrack(
    served: tuple[str, LiveServer], mp4_with_sound: str
) -> None:
    family, server = served
    video = {"type": "video_url", "video_url": {"url": mp4_with_sound}}
    reply = _stream(
        server,
        model=NAMES[family],
        messages=_user([video, {"type": "text", "text": "What happens?"}]),
        modalities=["text", "audio"],
        audio={"voice": VOICES[family], "format": "wav"},
        max_tokens=6,
        seed=4,
    )
    details = reply["usage"]["prompt_tokens_details"]
    assert details["video_tokens"] > 2 and details["audio_tokens"] > 2  # interleaved in one prompt
    assert reply["audio"]


def test_frame_list_video(served: tuple[str, LiveServer]) -> None:
    family, server = served
    frames = {"type": "video", "video": [_png(i) for i in range(4)]}
    reply = _stream(
        server,
        model=NAMES[family],
        messages=_user([frames]),
        modalities=["text", "audio"],
        audio={"voice": VOICES[family], "format": "wav"},
        max_tokens=4,
        seed=4,
    )
    assert reply["audio"]
    details = reply["usage"]["prompt_tokens_details"]
    assert details["video_tokens"] > 2
    assert not details.get("audio_tokens")


# -- thinking --------------------------------------------------------------------------------


@pytest.mark.parametrize("served", [QWEN3], indirect=True)
def test_thinking_streams_reasoning_from_the_thinking_checkpoint(
    served: tuple[str, LiveServer],
) -> None:
    family, server = served
    reply = _stream(
        server,
        model=NAMES[family],
        messages=_user("Why?"),
        max_tokens=6,
        seed=9,
        extra_body={"enable_thinking": True, "thinking_budget": 6},
    )
    details = reply["usage"]["completion_tokens_details"]
    # The budget ends the reasoning with </think>; the model then answers.
    assert reply["reasoning"] and details["reasoning_tokens"] == 6
    assert reply["content"] and 1 <= details["text_tokens"] <= 6
    assert "</think>" not in "".join(reply["reasoning"] + reply["content"])


def test_audio_is_refused_where_the_weights_cannot_speak(served: tuple[str, LiveServer]) -> None:
    family, server = served
    name = THINKING_ONLY if family == QWEN3 else NAMES[family]
    audio = {"voice": VOICES[family], "format": "wav"}
    body = {"model": name, "messages": _user("Hi"), "stream": True, "modalities": ["text", "audio"]}
    r = httpx.post(f"{server.api}/chat/completions", json={**body, "audio": audio})
    if family == QWEN3:
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "modalities"
    body["model"] = NAMES[family]
    bad = httpx.post(f"{server.api}/chat/completions", json={**body, "audio": {"voice": "Nobody"}})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "audio.voice"


# -- slots, queue, and what goes wrong ------------------------------------------------------


@pytest.fixture(scope="module")
def endless(tiny_dirs: dict[str, Path]) -> Iterator[LiveServer]:
    """Qwen3 text only, no end of text until max_tokens, one slot and no queue beyond it."""
    models = [{"name": NAMES[QWEN3], "checkpoint": str(tiny_dirs[QWEN3])}]
    settings = _settings(
        models,
        audio_output="off",
        max_batch=1,
        queue_size=0,
        generate_kwargs={"thinker_min_new_tokens": 3000},
    )
    with live_server(settings) as server:
        yield server


def _scheduler(server: LiveServer) -> Any:
    engine: Any = server.service.engine
    (scheduler,) = engine.schedulers.values()
    return scheduler


def test_disconnect_stops_generation_within_a_step(endless: LiveServer) -> None:
    scheduler = _scheduler(endless)
    body = {"model": NAMES[QWEN3], "messages": _user("Talk."), "stream": True, "max_tokens": 3000}
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", f"{endless.api}/chat/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            for _ in range(4):
                next(lines)
            assert scheduler.running == 1
        left = time.monotonic()
        while scheduler.running and time.monotonic() - left < 5:
            time.sleep(0.01)
        assert scheduler.running == 0, "generation went on after the client left"
        steps = scheduler.steps
        time.sleep(0.2)
        assert scheduler.steps == steps, "the model kept stepping with no request"
        # The model is free again: the next request is served.
        with client.stream("POST", f"{endless.api}/chat/completions", json=body) as again:
            assert again.status_code == 200
            assert next(again.iter_lines()).startswith("data: ")


def test_full_queue_is_refused_with_429(endless: LiveServer) -> None:
    body = {"model": NAMES[QWEN3], "messages": _user("Talk."), "stream": True, "max_tokens": 3000}
    url = f"{endless.api}/chat/completions"
    started = threading.Event()
    stop = threading.Event()

    def hold_the_slot() -> None:
        # A reader that keeps reading: the slot stays taken until it stops.
        with httpx.Client(timeout=30) as client, client.stream("POST", url, json=body) as r:
            for _ in r.iter_lines():
                started.set()
                if stop.is_set():
                    return

    reader = threading.Thread(target=hold_the_slot)
    reader.start()
    try:
        assert started.wait(30)
        refused = httpx.post(url, json=body, timeout=30)
    finally:
        stop.set()
        reader.join(30)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "limit_requests"
    assert float(refused.headers["retry-after"]) > 0


def test_an_unknown_generate_option_is_refused_at_start(tiny_dirs: dict[str, Path]) -> None:
    models = [{"name": NAMES[QWEN3], "checkpoint": str(tiny_dirs[QWEN3])}]
    settings = _settings(models, generate_kwargs={"thinker_no_such_option": 1})
    with pytest.raises(CheckpointError, match="thinker_no_such_option"):
        TransformersEngine(settings.transformers, Catalog.default(), chunk_bytes=4800)


# -- several requests at once, speech with the text ----------------------------------------

LONG_TEXT = {QWEN25: 200, QWEN3: 120}


@pytest.fixture(scope="module", params=[QWEN25, QWEN3])
def talkative(
    request: pytest.FixtureRequest, tiny_dirs: dict[str, Path]
) -> Iterator[tuple[str, LiveServer]]:
    """Long pinned replies with speech, four slots."""
    family: str = request.param
    models = [{"name": NAMES[family], "checkpoint": str(tiny_dirs[family])}]
    kwargs = {
        **GENERATE[family],
        "thinker_min_new_tokens": LONG_TEXT[family],
        "talker_max_new_tokens": 400,
    }
    with live_server(_settings(models, generate_kwargs=kwargs, max_batch=4)) as server:
        yield family, server


def _audio_stream(server: LiveServer, body: dict[str, Any]) -> dict[str, int]:
    """Text and audio chunks of one stream, and whether it ended with [DONE]."""
    out = {"text": 0, "audio": 0, "done": 0}
    with httpx.stream("POST", f"{server.api}/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line == "data: [DONE]":
                out["done"] = 1
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            delta = chunk["choices"][0]["delta"] if chunk.get("choices") else {}
            out["text"] += bool(delta.get("content"))
            out["audio"] += bool((delta.get("audio") or {}).get("data"))
    return out


def test_requests_are_decoded_together_over_http(
    talkative: tuple[str, LiveServer],
) -> None:
    family, server = talkative
    scheduler = _scheduler(server)
    body = {
        "model": NAMES[family],
        "messages": _user("Tell me a story."),
        "stream": True,
        "modalities": ["text", "audio"],
        "audio": {"voice": VOICES[family], "format": "wav"},
        "max_tokens": LONG_TEXT[family],
    }
    most = 0
    results: list[dict[str, int]] = []
    threads = [
        threading.Thread(target=lambda: results.append(_audio_stream(server, body)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        most = max(most, scheduler.running)
        time.sleep(0.002)
    assert len(results) == 3
    assert most >= 2, "the requests were not decoded together"
    for result in results:
        assert result["done"] and result["text"] > 10 and result["audio"] > 0

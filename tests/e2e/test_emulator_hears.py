"""With the server's speech recognizer, the emulator says what it heard in audio input and in a
video's soundtrack: a client developer can check that their audio arrives intact."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import LiveServer, fast_settings, live_server

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server(fast_settings(recognizer={"enabled": True})) as s:
        yield s


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hears") / "question.wav"
    subprocess.run(["espeak-ng", "-w", str(path), QUESTION], check=True)
    return path


def answer(server: LiveServer, part: dict[str, Any]) -> str:
    body = {
        "model": "qwen3-omni-flash",
        "messages": [{"role": "user", "content": [part]}],
        "stream": True,
    }
    text = []
    with httpx.stream("POST", f"{server.api}/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices", []):
                    text.append(choice["delta"].get("content") or "")
    return "".join(text)


def test_the_emulator_quotes_what_it_heard_in_audio(server: LiveServer, spoken: Path) -> None:
    data = "data:audio/wav;base64," + base64.b64encode(spoken.read_bytes()).decode()
    reply = answer(server, {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
    assert "In it I heard: " in reply, reply
    heard = reply.split("In it I heard: ", 1)[1].lower()
    assert "capital" in heard and "france" in heard, reply


def test_and_in_a_videos_soundtrack(server: LiveServer, spoken: Path, tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    args = [
        *("ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=s=64x48:r=10:d=3"),
        *("-i", str(spoken), "-shortest", "-c:v", "libx264", "-pix_fmt", "yuv420p"),
        *("-c:a", "aac", str(video)),
    ]
    subprocess.run(args, check=True)
    url = "data:video/mp4;base64," + base64.b64encode(video.read_bytes()).decode()
    reply = answer(server, {"type": "video_url", "video_url": {"url": url}})
    assert "In it I heard: " in reply, reply
    assert "france" in reply.split("In it I heard: ", 1)[1].lower(), reply

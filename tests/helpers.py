"""Test helpers: a real uvicorn on 127.0.0.1 around a real service, and an SSE reader."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import uvicorn

from omniserve.accounts.service import Accounts
from omniserve.api.app import create_app
from omniserve.api.server import server_config
from omniserve.config import Settings, load_settings
from omniserve.engines.base import Engine
from omniserve.media.resolve import Resolver
from omniserve.service import ChatService


@dataclass
class LiveServer:
    base_url: str  # http://127.0.0.1:PORT
    service: ChatService
    accounts: Accounts

    @property
    def api(self) -> str:
        return f"{self.base_url}/compatible-mode/v1"


def fast_settings(**overrides: Any) -> Settings:
    """Zero emulator pacing: tests never wait on a simulated clock. Each server gets its own
    empty data directory (its own keys and ledger)."""
    emulator = {"tokens_per_second": 0, "first_token_ms": 0, **overrides.pop("emulator", {})}
    accounts = {
        "data_dir": tempfile.mkdtemp(prefix="omniserve-test-"),
        **overrides.pop("accounts", {}),
    }
    return load_settings(None, emulator=emulator, accounts=accounts, **overrides)


@contextmanager
def live_server(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    resolver: Resolver | None = None,
) -> Iterator[LiveServer]:
    """Run the app on an ephemeral port in a thread; stop it on exit."""
    service = ChatService(settings or fast_settings(), engine=engine, resolver=resolver)
    app = create_app(service=service)
    # The server omniserve runs, on a free port.
    config = server_config(
        app, service.settings, host="127.0.0.1", port=0, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield LiveServer(
            base_url=f"http://127.0.0.1:{port}", service=service, accounts=app.state.accounts
        )
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def read_sse(lines: Iterator[str]) -> list[Any]:
    """The JSON objects of an SSE body (``[DONE]`` as the string), checking the framing."""
    import json

    events: list[Any] = []
    for line in lines:
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def chat_body(**overrides: Any) -> dict[str, Any]:
    """The spec's first sample as a request body."""
    body: dict[str, Any] = {
        "model": "qwen3-omni-flash",
        "messages": [{"role": "user", "content": "你是谁？"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples**2))) if len(samples) else 0.0


def dominant_frequency(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / 24_000)[int(np.argmax(spectrum))])


def median_pitch(pcm: bytes) -> float:
    """Median fundamental frequency of the louder 40 ms frames, by autocorrelation."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    size, low, high = 960, 24_000 // 500, 24_000 // 60
    loud = float(np.sqrt(np.mean(samples**2)))
    pitches = []
    for start in range(0, len(samples) - size, size):
        frame = samples[start : start + size]
        if np.sqrt(np.mean(frame**2)) < loud:
            continue
        frame = frame - frame.mean()
        corr = np.correlate(frame, frame, "full")[size - 1 :]
        lag = low + int(np.argmax(corr[low:high]))
        if corr[lag] > 0.3 * corr[0]:
            pitches.append(24_000 / lag)
    return float(np.median(pitches))


def stream_reply(server: LiveServer, **kwargs: Any) -> dict[str, Any]:
    """One streamed completion through the openai SDK, gathered: text, reasoning, audio bytes,
    the number of audio chunks, the finish reason and usage (without the SDK's None fields)."""
    import base64

    from openai import OpenAI

    out: dict[str, Any] = {"text": "", "reasoning": "", "audio": b"", "chunks": 0}
    out.update(usage=None, finish=None)
    with OpenAI(api_key="sk-test", base_url=server.api, max_retries=0) as client:
        stream = client.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **kwargs
        )
        for chunk in stream:
            if chunk.usage is not None:
                out["usage"] = chunk.usage.model_dump(exclude_none=True)
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            out["text"] += delta.content or ""
            out["reasoning"] += getattr(delta, "reasoning_content", None) or ""
            audio = getattr(delta, "audio", None)
            if audio and audio.get("data"):
                out["audio"] += base64.b64decode(audio["data"])
                out["chunks"] += 1
            out["finish"] = chunk.choices[0].finish_reason or out["finish"]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    base: str
    proc: subprocess.Popen[bytes]
    output: str = ""  # everything the server printed, once it has stopped

    def kill(self) -> None:
        """Ends the server as ``kill -9`` does: nothing of it runs after this."""
        self.proc.kill()
        self.proc.wait(10)


@contextmanager
def serving(*args: str, env: dict[str, str] | None = None, ready_s: float = 30) -> Iterator[Served]:
    """`python -m omniserve serve ARGS` on a free port, ready; stopped with SIGTERM on exit,
    checked to stop cleanly and print no traceback."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OMNISERVE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "omniserve", "serve", "--port", str(port), *args],
        env={**clean, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    served = Served(f"http://127.0.0.1:{port}", proc)
    try:
        deadline = time.monotonic() + ready_s
        while True:
            try:
                if httpx.get(f"{served.base}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            # uvicorn shuts down cleanly, then re-raises the signal it caught.
            assert proc.wait(30) in (0, -signal.SIGTERM)
        else:
            assert proc.returncode == -signal.SIGKILL  # killed by the test
        if proc.stdout is not None:
            served.output = proc.stdout.read().decode()
            proc.stdout.close()
            assert "Traceback" not in served.output, served.output


async def burst(apis: list[str], secret: str, body: dict[str, Any], n: int) -> list[int]:
    """``n`` streams at once, spread over ``apis``; every status is read before any stream is
    drained, so each admitted stream still holds its reservation when the last is decided."""
    import asyncio

    async with httpx.AsyncClient(timeout=60) as client:
        gate = asyncio.Event()
        statuses: list[int] = []

        async def one(api: str) -> None:
            async with client.stream(
                "POST",
                f"{api}/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {secret}"},
            ) as resp:
                statuses.append(resp.status_code)
                if len(statuses) == n:
                    gate.set()
                await gate.wait()
                await resp.aread()

        await asyncio.gather(*(one(apis[i % len(apis)]) for i in range(n)))
        return statuses


# -- /metrics -----------------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: LiveServer | str, secret: str | None = None) -> Samples:
    """Every sample /metrics serves, by name and labels."""
    from prometheus_client.parser import text_string_to_metric_families

    base = server if isinstance(server, str) else server.base_url
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    resp = httpx.get(f"{base}/metrics", headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)

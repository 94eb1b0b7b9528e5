"""Realtime sessions: turn latency, playback stalls and VAD cost, at several sessions at once.

Each session streams a spoken question the way a microphone does (100 ms appends, paced in
real time, silence before and after, silence again while the answer plays) into a server the
script starts (the emulator, paced like a model by default), with the server's turn detection
(silence_duration_ms 800, the vendor's default) deciding when the user stopped. Per level:

- **turn latency**: from the moment the input's silence after the speech reached
  ``silence_duration_ms`` (the earliest the server may say the turn ended) to the answer's first
  ``response.audio.delta``, p50/p99 over every turn;
- **stalls**: an audio chunk arriving after everything received before it had finished playing
  (playback starting at the first chunk), and the longest such wait;
- **VAD CPU**: the server's ``omniserve_realtime_vad_seconds_total`` over the level, per second
  of audio the sessions sent (the share of one core a session's turn detection costs).

The baseline, measured in the same run: one chat completion (``POST …/chat/completions``) with
the same question as WAV audio, its time to first audio (TTFA0); turn latency is also given as
a multiple of it.

    python bench/realtime.py                       # 1, 8 and 32 sessions, 3 turns each
    python bench/realtime.py --sessions 1,8,32,64 --turns 2
    python bench/realtime.py --tokens-per-second 0 --first-token-ms 0   # unpaced emulator
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from dataclasses import dataclass, field

import httpx
import numpy as np
import websocket

sys.path.insert(0, os.path.dirname(__file__))
from omniserve.speech.pcm import parse_wav, resample_pcm16
from stream import free_port, raise_fd_limit, spawn_server

CHUNK_MS = 100
SILENCE_MS = 800  # the vendor's default silence_duration_ms
BYTES_PER_MS = 32  # 16 kHz PCM16
QUESTIONS = ("What is the capital of France?", "Tell me something about the weather today.")


def speech(text: str) -> bytes:
    """``text`` spoken by espeak-ng as 16 kHz PCM16, without the silence espeak-ng puts around
    it (about 300 ms after the last word), so that the silence the script sends is all there
    is."""
    wav = subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, check=True).stdout
    pcm, rate, _ = parse_wav(wav)
    samples = np.frombuffer(resample_pcm16(pcm, rate, 16_000), dtype="<i2")
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 300)
    return samples[loud[0] : loud[-1] + 1].tobytes()


@dataclass
class Session:
    """One client: its turns' latencies and stalls."""

    url: str
    turns: int
    questions: list[bytes]
    latencies: list[float] = field(default_factory=list)
    stalls: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    audio_sent_s: float = 0.0

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # reported per level, with an example
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _run(self) -> None:
        ws = websocket.create_connection(self.url, timeout=60)
        try:
            assert json.loads(ws.recv())["type"] == "session.created"
            ws.send(json.dumps({"type": "session.update", "session": {"max_tokens": 40}}))
            assert json.loads(ws.recv())["type"] == "session.updated"
            reader = Reader(ws)
            reader.start()
            for turn in range(self.turns):
                question = self.questions[turn % len(self.questions)]
                audio = bytes(300 * BYTES_PER_MS) + question + bytes(SILENCE_MS * BYTES_PER_MS)
                began = time.monotonic()
                reader.expect()
                self._send(ws, audio, began)
                heard = began + len(audio) / BYTES_PER_MS / 1000  # 800 ms of silence sent
                # The microphone stays open while the answer plays: silence until it is done.
                while not reader.done.wait(0):
                    self._send(ws, bytes(CHUNK_MS * BYTES_PER_MS), time.monotonic())
                if reader.error:
                    self.errors.append(reader.error)
                    continue
                assert reader.first_audio is not None, "an answer without audio"
                self.latencies.append(reader.first_audio - heard)
                self.stalls.extend(reader.stalls)
            ws.send(json.dumps({"type": "session.finish"}))
            reader.join(10)
        finally:
            ws.close()

    def _send(self, ws: websocket.WebSocket, audio: bytes, began: float) -> None:
        step = CHUNK_MS * BYTES_PER_MS
        for i in range(0, len(audio), step):
            chunk = audio[i : i + step]
            # As a microphone: a chunk leaves once all of it has been recorded.
            due = began + (i + len(chunk)) / BYTES_PER_MS / 1000
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ws.send(
                json.dumps(
                    {"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}
                )
            )
            self.audio_sent_s += len(chunk) / BYTES_PER_MS / 1000


class Reader(threading.Thread):
    """Reads a session's events: the answer's first audio, stalls, its end."""

    def __init__(self, ws: websocket.WebSocket) -> None:
        super().__init__(daemon=True)
        self.ws = ws
        self.done = threading.Event()
        self.first_audio: float | None = None
        self.stalls: list[float] = []
        self.error: str | None = None
        self._played_until = 0.0

    def expect(self) -> None:
        self.done.clear()
        self.first_audio, self.stalls, self.error = None, [], None

    def run(self) -> None:
        while True:
            try:
                event = json.loads(self.ws.recv())
            except Exception:
                self.done.set()
                return
            kind = event.get("type")
            now = time.monotonic()
            if kind == "response.audio.delta":
                seconds = len(base64.b64decode(event["delta"])) / 48_000
                if self.first_audio is None:
                    self.first_audio, self._played_until = now, now
                elif now > self._played_until:
                    self.stalls.append(now - self._played_until)
                    self._played_until = now
                self._played_until += seconds
            elif kind == "error":
                self.error = event["error"]["message"]
            elif kind == "response.done":
                self.done.set()
            elif kind == "session.finished":
                return


def baseline_ttfa(base: str, question: bytes) -> float:
    """Time to first audio of one chat completion with the question as audio (median of 5)."""
    wav = io.BytesIO()
    with wave.open(wav, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(question)
    data = "data:audio/wav;base64," + base64.b64encode(wav.getvalue()).decode()
    body = {
        "model": "qwen3-omni-flash-2025-12-01",
        "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}]}],
        "stream": True,
        "modalities": ["text", "audio"],
        "audio": {"voice": "Cherry", "format": "wav"},
        "max_tokens": 40,
    }  # fmt: skip
    times = []
    for _ in range(5):
        began = time.monotonic()
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if '"audio"' in line and '"data"' in line:
                    times.append(time.monotonic() - began)
                    break
    return statistics.median(times)


def vad_seconds(base: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    for line in text.splitlines():
        if line.startswith("omniserve_realtime_vad_seconds_total "):
            return float(line.split()[1])
    return 0.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sessions", default="1,8,32", type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument("--turns", type=int, default=3, help="turns per session")
    parser.add_argument("--tokens-per-second", type=float, default=40)
    parser.add_argument("--first-token-ms", type=float, default=150)
    parser.add_argument("--json", default=None, help="write every figure to this file")
    args = parser.parse_args()
    raise_fd_limit(max(args.sessions))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    questions = [speech(q) for q in QUESTIONS]
    with tempfile.TemporaryDirectory() as data_dir, tempfile.TemporaryFile() as log:
        proc = spawn_server(port, args.tokens_per_second, args.first_token_ms, data_dir, log)
        try:
            ttfa0 = baseline_ttfa(base, questions[0])
            pace = f"{args.tokens_per_second:g} tokens/s, first token {args.first_token_ms:g} ms"
            print(f"machine: {os.cpu_count()} cores, client on the same one; emulator {pace}")
            print(f"baseline: chat completion with the question as audio, TTFA0 p50 "
                  f"{ttfa0 * 1000:.0f} ms")  # fmt: skip
            print("sessions  turns  errors  latency p50    p99  (× TTFA0)  stalls  longest  "
                  "VAD CPU per session")  # fmt: skip
            results = []
            for n in args.sessions:
                before = vad_seconds(base)
                url = (
                    base.replace("http", "ws")
                    + "/api-ws/v1/realtime?model=qwen3-omni-flash-realtime"
                )
                sessions = [Session(url, args.turns, questions) for _ in range(n)]
                threads = [threading.Thread(target=s.run) for s in sessions]
                for i, t in enumerate(threads):
                    t.start()
                    time.sleep(0.7 / max(1, n) * (i % 2))  # not all in the same 100 ms
                for t in threads:
                    t.join(600)
                vad = vad_seconds(base) - before
                latencies = [x for s in sessions for x in s.latencies]
                stalls = [x for s in sessions for x in s.stalls]
                errors = [e for s in sessions for e in s.errors]
                sent = sum(s.audio_sent_s for s in sessions)
                row = {
                    "sessions": n,
                    "turns": len(latencies),
                    "errors": len(errors),
                    "latency_p50_ms": pct(latencies, 0.5) * 1000 if latencies else None,
                    "latency_p99_ms": pct(latencies, 0.99) * 1000 if latencies else None,
                    "stalls": len(stalls),
                    "longest_stall_ms": max(stalls, default=0.0) * 1000,
                    "vad_cpu_per_session": vad / sent if sent else 0.0,
                    "ttfa0_ms": ttfa0 * 1000,
                }
                results.append(row)
                p50, p99 = row["latency_p50_ms"] or 0, row["latency_p99_ms"] or 0
                longest, vad = row["longest_stall_ms"], row["vad_cpu_per_session"] * 100
                print(f"{n:8d}  {len(latencies):5d}  {len(errors):6d}  {p50:8.0f} ms {p99:6.0f}  "
                      f"{p50 / 1000 / ttfa0:8.2f}  {len(stalls):6d}  {longest:5.0f} ms  "
                      f"{vad:.2f} % of a core")  # fmt: skip
                if errors:
                    print(f"          e.g. {errors[0]}")
            if args.json:
                with open(args.json, "w") as out:
                    json.dump(results, out, indent=2)
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()

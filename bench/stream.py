"""Streaming benchmark: time to first token and first audio, gaps, throughput, underruns.

Runs text+audio streams against a server at several concurrency levels, bounded in requests and
seconds per level. Baselines measured in the same run: a ``/healthz`` round trip (the HTTP floor)
and a text-only stream's time to first token; TTFA is reported against them.

    python bench/stream.py                        # spawn a zero-pacing server on a free port
    python bench/stream.py --tokens-per-second 40 --first-token-ms 150   # paced like a model
    python bench/stream.py --url http://127.0.0.1:8000 --concurrency 1,8,32

Definitions (as ``vllm bench serve``): TTFT = send → first non-empty ``delta.content``;
TTFA = send → first ``delta.audio.data``; gap = time between consecutive content or audio chunks;
underrun = an audio chunk arriving after everything received so far has finished playing, with
playback starting at the first audio chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

PROMPTS = [
    "你是谁？",
    "Who are you? Tell me a little about yourself.",
    "请用两句话介绍一下你自己。",
    "What can you do for me today?",
]


@dataclass
class Result:
    ok: bool
    ttft: float | None = None
    ttfa: float | None = None
    total: float = 0.0
    gaps: list[float] = field(default_factory=list)
    audio_seconds: float = 0.0
    underruns: int = 0
    tokens: int = 0
    error: str = ""


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def one_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Result:
    start = time.perf_counter()
    res = Result(ok=False)
    last_chunk: float | None = None
    play_start: float | None = None
    buffered = 0.0  # seconds of audio received
    try:
        async with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                res.error = f"HTTP {r.status_code}"
                await r.aread()
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                now = time.perf_counter()
                if data == "[DONE]":
                    res.ok = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    res.error = chunk["error"]["message"]
                    break
                if chunk.get("usage"):
                    res.tokens = chunk["usage"]["completion_tokens"]
                if not chunk["choices"]:
                    continue
                delta = chunk["choices"][0]["delta"]
                got = False
                if delta.get("content"):
                    got = True
                    if res.ttft is None:
                        res.ttft = now - start
                audio = delta.get("audio")
                if audio and audio.get("data"):
                    got = True
                    seconds = len(base64.b64decode(audio["data"])) / 2 / 24_000
                    if play_start is None:
                        play_start = now
                        res.ttfa = now - start
                    elif now > play_start + buffered:
                        res.underruns += 1
                        play_start = now - buffered  # playback resumes from here
                    buffered += seconds
                if got:
                    if last_chunk is not None:
                        res.gaps.append(now - last_chunk)
                    last_chunk = now
    except httpx.HTTPError as exc:
        res.error = repr(exc)
    res.total = time.perf_counter() - start
    res.audio_seconds = buffered
    return res


async def run_level(
    base: str, concurrency: int, requests: int, max_seconds: float, audio: bool
) -> tuple[list[Result], float]:
    url = f"{base}/compatible-mode/v1/chat/completions"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    results: list[Result] = []
    deadline = time.perf_counter() + max_seconds
    counter = 0

    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal counter
            while counter < requests and time.perf_counter() < deadline:
                i = counter
                counter += 1
                body: dict[str, Any] = {
                    "model": "qwen3-omni-flash",
                    "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    "seed": i,
                }
                if audio:
                    body["modalities"] = ["text", "audio"]
                    body["audio"] = {"voice": "Cherry", "format": "wav"}
                results.append(await one_stream(client, url, body))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return results, elapsed


async def healthz_rtt(base: str, n: int = 50) -> float:
    async with httpx.AsyncClient() as client:
        await client.get(f"{base}/healthz")
        times = []
        for _ in range(n):
            t = time.perf_counter()
            await client.get(f"{base}/healthz")
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def ms(x: float) -> str:
    return "-" if x != x else f"{x * 1000:.0f}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_server(
    port: int, tokens_per_second: float, first_token_ms: float
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "omniserve", "serve", "--port", str(port),
           "--tokens-per-second", str(tokens_per_second),
           "--first-token-ms", str(first_token_ms), "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


async def main_async(args: argparse.Namespace) -> None:
    base = args.url.rstrip("/")
    rtt = await healthz_rtt(base)
    text_results, _ = await run_level(base, 1, 20, 30, audio=False)
    text_ttft = statistics.median([r.ttft for r in text_results if r.ttft is not None])
    print(f"server: {base}   machine: {os.cpu_count()} cores   client in the same machine")
    print(f"baseline: /healthz round trip p50 {ms(rtt)} ms; text-only TTFT p50 {ms(text_ttft)} ms")
    header = (
        f"{'conc':>4} {'reqs':>5} {'err':>4} {'TTFT p50':>9} {'p99':>6} {'TTFA p50':>9} "
        f"{'p99':>6} {'gap p50':>8} {'p99':>6} {'max':>6} {'underrun':>8} "
        f"{'streams/s':>9} {'audio x RT':>10} {'TTFA/TTFT0':>10}"
    )
    print(header)
    for conc in args.concurrency:
        requests = max(args.requests, conc * 2)
        results, elapsed = await run_level(base, conc, requests, args.max_seconds, audio=True)
        ok = [r for r in results if r.ok]
        ttft = [r.ttft for r in ok if r.ttft is not None]
        ttfa = [r.ttfa for r in ok if r.ttfa is not None]
        gaps = [g for r in ok for g in r.gaps]
        audio_total = sum(r.audio_seconds for r in ok)
        underruns = sum(r.underruns for r in ok)
        print(
            f"{conc:>4} {len(results):>5} {len(results) - len(ok):>4} "
            f"{ms(percentile(ttft, 50)):>9} {ms(percentile(ttft, 99)):>6} "
            f"{ms(percentile(ttfa, 50)):>9} {ms(percentile(ttfa, 99)):>6} "
            f"{ms(percentile(gaps, 50)):>8} {ms(percentile(gaps, 99)):>6} "
            f"{ms(max(gaps, default=float('nan'))):>6} {underruns:>8} "
            f"{len(ok) / elapsed:>9.1f} {audio_total / elapsed:>10.1f} "
            f"{percentile(ttfa, 50) / text_ttft:>10.1f}"
        )
        errors = {r.error for r in results if not r.ok}
        if errors:
            print(f"     errors: {sorted(errors)[:3]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default=None, help="a running server's base URL (default: spawn one)"
    )
    parser.add_argument(
        "--tokens-per-second",
        type=float,
        default=0,
        help="emulator pacing of the spawned server (0: unpaced)",
    )
    parser.add_argument(
        "--first-token-ms",
        type=float,
        default=0,
        help="emulator first-token delay of the spawned server",
    )
    parser.add_argument(
        "--concurrency", default="1,8,32", type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument("--requests", type=int, default=40, help="streams per level (min)")
    parser.add_argument("--max-seconds", type=float, default=60, help="time cap per level")
    args = parser.parse_args()
    proc = None
    if args.url is None:
        port = free_port()
        proc = spawn_server(port, args.tokens_per_second, args.first_token_ms)
        args.url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(main_async(args))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()

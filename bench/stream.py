"""Streaming benchmark: time to first token and first audio, gaps, errors, underruns under load.

Runs text+audio streams against a server at a ladder of concurrency levels (default 1 to 256),
bounded in requests and seconds per level, and reports the highest concurrency that keeps audio
real time. Baselines measured in the same run: a ``/healthz`` round trip (the HTTP floor) and a
text-only stream's time to first token; TTFA is reported against them.

    python bench/stream.py                        # spawn a zero-pacing server on a free port
    python bench/stream.py --tokens-per-second 40 --first-token-ms 150   # paced like a model
    python bench/stream.py --url http://127.0.0.1:8000 --concurrency 1,8,32
    python bench/stream.py --find-real-time       # then bisect between the last real-time
                                                  # level and the first that is not
    python bench/stream.py --ramp 5               # start each level's streams over 5 s

Definitions (as ``vllm bench serve``): TTFT = send → first non-empty ``delta.content``;
TTFA = send → first ``delta.audio.data``; gap = time between consecutive content or audio chunks;
underrun = an audio chunk arriving after everything received so far has finished playing, with
playback starting at the first audio chunk. An error is a stream that did not end in
``data: [DONE]``: a non-200 status, an error event in the stream, a transport error, a timeout or
a stream cut short. A level is real time when no stream underran and no stream failed.

Each level starts ``concurrency`` streams at once (or spread over ``--ramp`` seconds) and keeps
that many running until it has run ``max(--requests, 2 × concurrency)`` streams or
``--max-seconds`` have passed; streams already running then finish (each within
``--stream-timeout``), so every level runs at least as many streams as its concurrency (a ramp
longer than ``--max-seconds`` would cut that short; the level says so).

Under each level: CPU in percent of one core over the level (this client, the server's Python
process, its espeak-ng children, and everything else the machine ran meanwhile; the last three
only for a server the script started), ``/healthz`` round trips under load (the server's event
loop), this client's own event-loop lag, the spawned server's resident memory, how long
playback stalled when it underran, and each kind of error with an example.
``--quiet-retries`` reruns levels that other work disturbed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

PROMPTS = [
    "你是谁？",
    "Who are you? Tell me a little about yourself.",
    "请用两句话介绍一下你自己。",
    "What can you do for me today?",
]
DEFAULT_LADDER = "1,8,32,64,128,256"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DISTURBED = 20  # percent of one core used by other work during a level


@dataclass
class Result:
    ok: bool
    ttft: float | None = None
    ttfa: float | None = None
    total: float = 0.0
    gaps: list[float] = field(default_factory=list)
    audio_seconds: float = 0.0
    underruns: int = 0
    stalls: list[float] = field(default_factory=list)  # seconds playback waited, per underrun
    tokens: int = 0
    error: str = ""  # the error's kind, for the breakdown ("HTTP 503", "timeout", ...)
    detail: str = ""  # its message


@dataclass
class Level:
    concurrency: int
    streams: int
    errors: int
    error_kinds: dict[str, int]
    error_examples: dict[str, str]
    ttft_p50: float
    ttft_p99: float
    ttfa_p50: float
    ttfa_p99: float
    gap_p50: float
    gap_p99: float
    gap_max: float
    underruns: int
    streams_underrun: int
    stall_p50: float
    stall_max: float
    streams_per_s: float
    audio_x_real_time: float
    ttfa_over_ttft0: float
    seconds: float
    in_flight: float  # streams running at once, averaged over the level
    cpu: dict[str, float]  # percent of one core: client, server, espeak, other
    server_rss_mb: float  # the server's resident memory after the level
    healthz_p50: float
    healthz_p99: float
    client_lag_p99: float
    client_lag_max: float
    # Sentences by (engine, why) during the level, from the server's metrics (a neural voice).
    sentences: dict[str, int] = field(default_factory=dict)
    bisect: bool = False

    @property
    def error_rate(self) -> float:
        return self.errors / self.streams if self.streams else float("nan")

    @property
    def real_time(self) -> bool:
        return self.streams >= self.concurrency and self.errors == 0 and self.underruns == 0


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def b64_bytes(data: str) -> int:
    """Decoded length of a base64 string, without decoding it."""
    return len(data) * 3 // 4 - (len(data) - len(data.rstrip("=")))


async def one_stream(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], limit_s: float
) -> Result:
    start = time.perf_counter()
    res = Result(ok=False)
    last_chunk: float | None = None
    play_start: float | None = None
    buffered = 0.0  # seconds of audio received
    try:
        async with asyncio.timeout(limit_s), client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                res.error = f"HTTP {r.status_code}"
                res.detail = (await r.aread())[:200].decode(errors="replace")
                res.total = time.perf_counter() - start
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
                    err = chunk["error"]
                    res.error = f"in-stream error {err.get('code') or err.get('type')}"
                    res.detail = str(err.get("message"))[:200]
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
                    seconds = b64_bytes(audio["data"]) / 2 / 24_000
                    if play_start is None:
                        play_start = now
                        res.ttfa = now - start
                    elif now > play_start + buffered:
                        res.underruns += 1
                        res.stalls.append(now - play_start - buffered)
                        play_start = now - buffered  # playback resumes from here
                    buffered += seconds
                if got:
                    if last_chunk is not None:
                        res.gaps.append(now - last_chunk)
                    last_chunk = now
            if not res.ok and not res.error:
                res.error = "stream ended without [DONE]"
    except TimeoutError:
        res.error = f"timeout ({limit_s:g} s per stream)"
    except httpx.TimeoutException as exc:
        res.error = f"timeout ({type(exc).__name__})"
        res.detail = str(exc)[:200]
    except httpx.HTTPError as exc:
        res.error = f"transport ({type(exc).__name__})"
        res.detail = str(exc)[:200]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        res.error = f"malformed chunk ({type(exc).__name__})"
        res.detail = str(exc)[:200]
    except OSError as exc:  # e.g. too many open files on the client side
        res.error = f"client ({type(exc).__name__})"
        res.detail = str(exc)[:200]
    if res.error:
        res.ok = False
    res.total = time.perf_counter() - start
    res.audio_seconds = buffered
    return res


class CpuMeter:
    """CPU seconds of this client, the server process and its reaped children, and the rest."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid

    def sample(self) -> tuple[float, float, float, float, float]:
        wall = time.perf_counter()
        client = time.process_time()
        server = children = float("nan")
        if self.server_pid is not None:
            try:
                text = Path(f"/proc/{self.server_pid}/stat").read_text()
                fields = text.rsplit(")", 1)[1].split()
                # utime stime cutime cstime are fields 14-17 (1-based); fields[0] is field 3.
                utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
                server = (utime + stime) / CLOCK_TICKS
                children = (cutime + cstime) / CLOCK_TICKS
            except (OSError, ValueError, IndexError):
                pass
        machine = float("nan")
        with contextlib.suppress(OSError, ValueError):
            cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            # user nice system idle iowait irq softirq: busy is all but idle and iowait
            values = [int(x) for x in cpu[:7]]
            machine = (sum(values) - values[3] - values[4]) / CLOCK_TICKS
        return wall, client, server, children, machine

    def rss_mb(self) -> float:
        if self.server_pid is None:
            return float("nan")
        try:
            status = Path(f"/proc/{self.server_pid}/status").read_text()
        except OSError:
            return float("nan")
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    @staticmethod
    def percent(
        a: tuple[float, float, float, float, float], b: tuple[float, float, float, float, float]
    ) -> dict[str, float]:
        wall = b[0] - a[0]
        client, server, espeak, machine = (b[i] - a[i] for i in range(1, 5))
        # Unknown (nan) when the server is not ours to measure: it would count as other work.
        other = machine - client - server - espeak
        return {
            "client": 100 * client / wall,
            "server": 100 * server / wall,
            "espeak": 100 * espeak / wall,
            "other": other if math.isnan(other) else 100 * max(0.0, other) / wall,
        }


async def probe(base: str, stop: asyncio.Event, healthz: list[float], lag: list[float]) -> None:
    """/healthz every 200 ms (the server's responsiveness under load) and this client's own
    event-loop lag (how late a 50 ms sleep wakes up)."""

    async def ticker() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.05)
            lag.append(time.perf_counter() - t - 0.05)

    async def pinger(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            t = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                await client.get(f"{base}/healthz")
                healthz.append(time.perf_counter() - t)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(ticker(), pinger(client))


async def run_level(
    base: str,
    concurrency: int,
    requests: int,
    max_seconds: float,
    audio: bool,
    stream_timeout: float = 120,
    ramp: float = 0,
) -> tuple[list[Result], float]:
    url = f"{base}/compatible-mode/v1/chat/completions"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(stream_timeout, connect=30)
    results: list[Result] = []
    deadline = time.perf_counter() + max_seconds
    counter = 0

    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

        async def worker(k: int) -> None:
            nonlocal counter
            if ramp:
                await asyncio.sleep(ramp * k / concurrency)
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
                results.append(await one_stream(client, url, body, stream_timeout))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return results, elapsed


async def measure_level(
    args: argparse.Namespace, meter: CpuMeter, conc: int, text_ttft: float
) -> Level:
    requests = max(args.requests, conc * 2)
    stop = asyncio.Event()
    healthz: list[float] = []
    lag: list[float] = []
    prober = asyncio.create_task(probe(args.url, stop, healthz, lag))
    spoken = await speech_sentences(args.url)
    before = meter.sample()
    try:
        results, elapsed = await run_level(
            args.url, conc, requests, args.max_seconds, True, args.stream_timeout, args.ramp
        )
    finally:
        after = meter.sample()
        stop.set()
        await prober
    spoken = {k: n - spoken.get(k, 0) for k, n in (await speech_sentences(args.url)).items()}
    ok = [r for r in results if r.ok]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    ttfa = [r.ttfa for r in ok if r.ttfa is not None]
    gaps = [g for r in ok for g in r.gaps]
    stalls = [g for r in ok for g in r.stalls]
    failed = [r for r in results if not r.ok]
    kinds = collections.Counter(r.error for r in failed)
    examples: dict[str, str] = {}
    for r in failed:
        examples.setdefault(r.error, r.detail)
    return Level(
        concurrency=conc,
        streams=len(results),
        errors=len(failed),
        error_kinds=dict(kinds.most_common()),
        error_examples=examples,
        ttft_p50=percentile(ttft, 50),
        ttft_p99=percentile(ttft, 99),
        ttfa_p50=percentile(ttfa, 50),
        ttfa_p99=percentile(ttfa, 99),
        gap_p50=percentile(gaps, 50),
        gap_p99=percentile(gaps, 99),
        gap_max=max(gaps, default=float("nan")),
        underruns=sum(r.underruns for r in ok),
        streams_underrun=sum(1 for r in ok if r.underruns),
        stall_p50=percentile(stalls, 50),
        stall_max=max(stalls, default=float("nan")),
        streams_per_s=len(ok) / elapsed,
        audio_x_real_time=sum(r.audio_seconds for r in ok) / elapsed,
        ttfa_over_ttft0=percentile(ttfa, 50) / text_ttft,
        seconds=elapsed,
        in_flight=sum(r.total for r in results) / elapsed,
        cpu=CpuMeter.percent(before, after),
        server_rss_mb=meter.rss_mb(),
        healthz_p50=percentile(healthz, 50),
        healthz_p99=percentile(healthz, 99),
        client_lag_p99=percentile(lag, 99),
        client_lag_max=max(lag, default=float("nan")),
        sentences={k: n for k, n in spoken.items() if n},
    )


async def speech_sentences(base: str) -> dict[str, int]:
    """``omniserve_speech_sentences_total`` by "engine reason" (empty: not a neural voice, or
    the metrics need a key)."""
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            reply = await client.get(f"{base}/metrics")
    except httpx.HTTPError:
        return {}
    if reply.status_code != 200:
        return {}
    found = {}
    for line in reply.text.splitlines():
        if line.startswith("omniserve_speech_sentences_total{"):
            labels, _, value = line.rpartition(" ")
            pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            found[f"{pairs['engine']} {pairs['reason']}"] = int(float(value))
    return found


async def wait_quiet(meter: CpuMeter, limit_s: float) -> float:
    """Waits (at most ``limit_s``) until the machine is nearly idle; the last busy share."""
    busy = float("nan")
    deadline = time.perf_counter() + limit_s
    while time.perf_counter() < deadline:
        a = meter.sample()
        await asyncio.sleep(5)
        busy = CpuMeter.percent(a, meter.sample())["other"]
        if busy <= DISTURBED:
            break
    return busy


async def quiet_level(
    args: argparse.Namespace, meter: CpuMeter, conc: int, text_ttft: float
) -> Level:
    """One level; rerun (up to --quiet-retries times) while other work disturbed it, keeping
    the run with the least other work."""
    best = last = await measure_level(args, meter, conc, text_ttft)
    for _ in range(args.quiet_retries):
        if not last.cpu["other"] > DISTURBED:  # quiet, or unknown (a server given by --url)
            break
        print_level(last)
        busy = await wait_quiet(meter, 60)
        print(f"      rerunning concurrency {conc} (other work now {pct(busy)} % of a core)")
        last = await measure_level(args, meter, conc, text_ttft)
        if last.cpu["other"] < best.cpu["other"]:
            best = last
    if best is not last:
        print("      keeping the earlier run, which other work disturbed less:")
    return best


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


def pct(x: float) -> str:
    return "-" if x != x else f"{x:.0f}"


HEADER = (
    f"{'conc':>5} {'reqs':>5} {'err':>4} {'err %':>5} {'TTFT p50':>9} {'p99':>6} "
    f"{'TTFA p50':>9} {'p99':>6} {'gap p50':>8} {'p99':>6} {'max':>6} {'underrun':>8} "
    f"{'(streams)':>9} {'streams/s':>9} {'audio x RT':>10} {'TTFA/TTFT0':>10}"
)


def print_level(lv: Level) -> None:
    mark = "b" if lv.bisect else " "
    print(
        f"{mark}{lv.concurrency:>4} {lv.streams:>5} {lv.errors:>4} {100 * lv.error_rate:>5.1f} "
        f"{ms(lv.ttft_p50):>9} {ms(lv.ttft_p99):>6} "
        f"{ms(lv.ttfa_p50):>9} {ms(lv.ttfa_p99):>6} "
        f"{ms(lv.gap_p50):>8} {ms(lv.gap_p99):>6} {ms(lv.gap_max):>6} {lv.underruns:>8} "
        f"{lv.streams_underrun:>9} {lv.streams_per_s:>9.1f} {lv.audio_x_real_time:>10.1f} "
        f"{lv.ttfa_over_ttft0:>10.1f}"
    )
    cpu = lv.cpu
    print(
        f"      {lv.seconds:.0f} s, {lv.in_flight:.0f} streams in flight on average; "
        f"CPU % of a core: client {pct(cpu['client'])}, "
        f"server {pct(cpu['server'])}, espeak-ng {pct(cpu['espeak'])}, "
        f"other {pct(cpu['other'])}; /healthz under load p50 {ms(lv.healthz_p50)} "
        f"p99 {ms(lv.healthz_p99)} ms; client loop lag p99 {ms(lv.client_lag_p99)} "
        f"max {ms(lv.client_lag_max)} ms; server memory {pct(lv.server_rss_mb)} MB"
    )
    if cpu["other"] > DISTURBED:
        print(
            f"      disturbed: other work took {pct(cpu['other'])} % of a core meanwhile; "
            "rerun this level when the machine is quiet"
        )
    if lv.sentences:
        total = sum(lv.sentences.values())
        parts = ", ".join(f"{k} {n}" for k, n in sorted(lv.sentences.items()))
        print(f"      sentences read ({total}): {parts}")
    if lv.underruns:
        print(f"      playback stalled p50 {ms(lv.stall_p50)} ms, longest {ms(lv.stall_max)} ms")
    if lv.streams < lv.concurrency:
        print(f"      only {lv.streams} streams for concurrency {lv.concurrency}")
    for kind, n in lv.error_kinds.items():
        print(f"      error: {kind} ×{n}: {lv.error_examples.get(kind, '')!r}")


def summarize(levels: list[Level]) -> str:
    ordered = sorted(levels, key=lambda lv: lv.concurrency)
    passing = [lv.concurrency for lv in ordered if lv.real_time]
    failing = [lv for lv in ordered if not lv.real_time]
    if not passing:
        return "highest real-time concurrency: none of the levels run is real time"
    best = max(passing)
    above = [lv for lv in failing if lv.concurrency > best]
    line = f"highest real-time concurrency: {best}"
    if above:
        lv = above[0]
        line += (
            f" (next level {lv.concurrency}: {lv.streams_underrun} of {lv.streams} streams "
            f"underran, {lv.errors} errors)"
        )
    else:
        line += " (every level above it that was run is real time: the highest level run)"
    below = [lv.concurrency for lv in failing if lv.concurrency < best]
    if below:
        line += f"; but not real time at {', '.join(map(str, below))}"
    return line


async def bisect(
    args: argparse.Namespace, meter: CpuMeter, levels: list[Level], text_ttft: float
) -> None:
    """Narrows the boundary between the highest real-time level and the next one, a bounded
    number of steps (each one level: at most --max-seconds plus --stream-timeout)."""
    for _ in range(args.bisect_steps):
        passing = [lv.concurrency for lv in levels if lv.real_time]
        if not passing:
            return
        lo = max(passing)
        above = [lv.concurrency for lv in levels if not lv.real_time and lv.concurrency > lo]
        if not above:
            return
        hi = min(above)
        if hi - lo <= max(1, lo // 16):
            return
        lv = await quiet_level(args, meter, (lo + hi) // 2, text_ttft)
        lv.bisect = True
        levels.append(lv)
        print_level(lv)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    base = args.url
    meter = CpuMeter(args.server_pid)
    rtt = await healthz_rtt(base)
    text_results, _ = await run_level(base, 1, 20, 30, audio=False)
    text_ttft = statistics.median([r.ttft for r in text_results if r.ttft is not None])
    where = "spawned by this script" if args.server_pid else "given by --url"
    print(f"server: {base} ({where})   machine: {os.cpu_count()} cores, client on the same one")
    print(f"baseline: /healthz round trip p50 {ms(rtt)} ms; text-only TTFT p50 {ms(text_ttft)} ms")
    print(HEADER)
    levels: list[Level] = []
    for conc in args.concurrency:
        lv = await quiet_level(args, meter, conc, text_ttft)
        levels.append(lv)
        print_level(lv)
    if args.find_real_time:
        await bisect(args, meter, levels, text_ttft)
    print(summarize(levels))
    return {
        "url": base,
        "baseline": {"healthz_s": rtt, "text_ttft_s": text_ttft},
        "args": {k: v for k, v in vars(args).items() if k != "server_pid"},
        "levels": [{**asdict(lv), "real_time": lv.real_time} for lv in levels],
        "summary": summarize(levels),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_fd_limit(concurrency: int) -> None:
    """Two sockets per stream on this machine (client and server ends, in two processes), plus
    pipes to espeak-ng: raise the soft limit, which the spawned server inherits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * concurrency + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            print(f"warning: open files limited to {new} (hard limit); {want} wanted")


def spawn_server(
    port: int, tokens_per_second: float, first_token_ms: float, data_dir: str, log: Any
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "omniserve", "serve", "--port", str(port),
           "--tokens-per-second", str(tokens_per_second),
           "--first-token-ms", str(first_token_ms), "--log-level", "warning",
           "--data-dir", data_dir]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


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
        "--concurrency",
        default=DEFAULT_LADDER,
        type=lambda s: [int(x) for x in s.split(",")],
        help=f"comma-separated levels (default {DEFAULT_LADDER})",
    )
    parser.add_argument(
        "--requests", type=int, default=40, help="streams per level (at least 2 × concurrency)"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=30, help="no new stream starts after this per level"
    )
    parser.add_argument(
        "--stream-timeout", type=float, default=120, help="seconds before a stream is an error"
    )
    parser.add_argument(
        "--ramp",
        type=float,
        default=0,
        help="spread each level's first streams evenly over this many seconds (0: all at once)",
    )
    parser.add_argument(
        "--find-real-time",
        action="store_true",
        help="bisect between the highest real-time level and the next level",
    )
    parser.add_argument("--bisect-steps", type=int, default=3, help="levels bisection may add")
    parser.add_argument(
        "--quiet-retries",
        type=int,
        default=0,
        help="rerun a level disturbed by other work on the machine up to this many times",
    )
    parser.add_argument("--json", default=None, help="also write every figure to this file")
    args = parser.parse_args()
    raise_fd_limit(max(args.concurrency))
    proc = None
    args.server_pid = None
    with tempfile.TemporaryDirectory(prefix="omniserve-bench-") as tmp:
        log_path = Path(tmp) / "server.log"
        if args.url is None:
            port = free_port()
            with log_path.open("wb") as log:
                proc = spawn_server(port, args.tokens_per_second, args.first_token_ms, tmp, log)
            args.url = f"http://127.0.0.1:{port}"
            args.server_pid = proc.pid
        args.url = args.url.rstrip("/")
        try:
            payload = asyncio.run(main_async(args))
            if args.json:
                Path(args.json).write_text(json.dumps(payload, indent=1, default=str))
        finally:
            if proc is not None:
                if proc.poll() is not None:
                    print(f"the server exited during the run (status {proc.returncode})")
                # What the server logged (warnings and errors) while it served, before the
                # shutdown adds its own lines.
                logged = log_path.read_text(errors="replace").strip()
                proc.terminate()
                proc.wait(10)
                if logged:
                    lines = logged.splitlines()
                    print(f"server log during the run ({len(lines)} lines), last 20:")
                    print("\n".join(lines[-20:]))
                else:
                    print("server log during the run: empty (no warnings or errors)")


if __name__ == "__main__":
    main()

"""Gateway overhead: omniserve's upstream engine beside the LiteLLM proxy, in front of one upstream.

A gateway's own cost is what it adds to a stream that the model behind it would give at once.
So the upstream here is a tiny OpenAI-compatible server (raw asyncio, its own process) that
answers every ``POST /v1/chat/completions`` with the same short SSE stream and no delay: a role
chunk, 11 text chunks, a finish chunk, a usage chunk when asked, ``data: [DONE]``. In front of
it, each in its own process: omniserve (``engine = "upstream"``, kind ``openai``) and the LiteLLM
proxy (installed by this script into ``bench/.venv-litellm``, no master key, no database, no
callbacks, telemetry off). The same request goes to all three, the upstream itself being the
baseline measured in the same run:

    python bench/gateway.py                         # everything, about 5 minutes
    python bench/gateway.py --skip-litellm          # omniserve and the baseline only (offline)
    python bench/gateway.py --requests 400 --concurrency 1,8,32 --duration 10

Two measurements, from an async httpx client in this process:

- **Time to first byte** (send -> the first ``data:`` line) over ``--requests`` streams at each
  closed-loop ``--concurrency``, targets interleaved in blocks of 50 so that a busy moment of the
  machine falls on all of them; added TTFB = the gateway's percentile - the upstream's. Every
  stream is checked: the whole text, a usage chunk, ``[DONE]``.
- **Maximum sustained streams per second**, open loop: streams are started at a fixed rate
  (``--rates``, about ``--duration`` seconds each, doubling until one fails, then ``--refine``
  bisection steps between the last rate that passed and the first that failed). A rate passes
  when at least 99 % of its streams complete (``[DONE]``) and their p99 latency, from the moment
  each was due to start to its ``[DONE]`` (so a client falling behind counts against it), is
  under ``--p99-bound`` seconds. The figure is the highest rate that passed. After each level
  the script waits until the target serves 8 concurrent streams again (up to 30 s, reported
  when it takes longer than 2 s) and restarts the target's process after a failed level, so
  every level measures capacity, not what an earlier overload left behind. A level's streams
  are spread over several httpx clients: one client's connection pool costs time quadratic in
  the streams in flight, and would otherwise be the first thing to saturate.

The client, the upstream and the gateways share the machine's cores; pin nothing, and read the
upstream's own ceiling (the "direct" row) as the ceiling of the whole setup, client included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx

ROOT = Path(__file__).resolve().parent.parent
LITELLM_VENV = ROOT / "bench" / ".venv-litellm"
# The newest release that installs from the registry this project reaches: 1.103.8 and later
# require certifi>=2026.10.19, which it does not have yet.
LITELLM_VERSION = "1.103.7"
MODEL = "qwen3-omni-flash"
UPSTREAM_MODEL = "fake-model"
TEXT = ["Hello", "!", " I", " am", " a", " fast", " fake", " upstream", ",", " good", "bye."]
EXPECTED = "".join(TEXT)
BODY: dict[str, Any] = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Who are you?"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}
BLOCK = 50  # TTFB streams per target before moving to the next target
SHARDS = 64  # httpx clients that share an open-loop level's streams


# -- the upstream -------------------------------------------------------------------------------


def _sse(obj: dict[str, Any]) -> bytes:
    data = b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)  # one HTTP chunk per event


def _stream(model: str, usage: bool) -> bytes:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    parts = [chunk({"role": "assistant", "content": ""})]
    parts += [chunk({"content": t}) for t in TEXT]
    parts.append(chunk({}, "stop"))
    if usage:
        counts = {"prompt_tokens": 12, "completion_tokens": len(TEXT), "total_tokens": 23}
        parts.append(_sse({**base, "choices": [], "usage": counts}))
    data = b"data: [DONE]\n\n"
    parts.append(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )
    return head + b"".join(parts)


def _plain(status: str, obj: dict[str, Any]) -> bytes:
    body = json.dumps(obj).encode()
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


class UpstreamProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, Content-Length bodies only; every answer in one write."""

    streams: ClassVar[dict[tuple[str, bool], bytes]] = {}
    models = _plain(
        "200 OK",
        {"object": "list", "data": [{"id": UPSTREAM_MODEL, "object": "model", "owned_by": "b"}]},
    )
    health = _plain("200 OK", {"status": "ok"})

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            lines = self.buf[:end].decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", ""):
                self.transport.write(_plain("411 Length Required", {"error": "length"}))
                self.transport.close()
                return
            length = int(headers.get("content-length") or 0)
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            self.transport.write(self.answer(method, path.split("?")[0], body))
            if headers.get("connection", "").lower() == "close":
                self.transport.close()
                return

    def answer(self, method: str, path: str, body: bytes) -> bytes:
        if method == "POST" and path == "/v1/chat/completions":
            try:
                req = json.loads(body)
            except ValueError:
                return _plain("400 Bad Request", {"error": {"message": "not JSON"}})
            usage = bool((req.get("stream_options") or {}).get("include_usage"))
            key = (str(req.get("model")), usage)
            if key not in self.streams:
                self.streams[key] = _stream(*key)
            return self.streams[key]
        if method == "GET" and path == "/v1/models":
            return self.models
        if method == "GET" and path == "/health":
            return self.health
        return _plain("404 Not Found", {"error": {"message": f"no route {method} {path}"}})


async def serve_upstream(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


# -- processes ----------------------------------------------------------------------------------


class Children:
    """Child processes, each in its own session; all of them ended on exit, whatever happens."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.specs: dict[str, tuple[list[str], dict[str, str] | None, str, float]] = {}

    def start(
        self,
        name: str,
        cmd: list[str],
        *,
        ready: str,
        timeout: float,
        env: dict[str, str] | None = None,
    ) -> None:
        """Start ``cmd`` and wait until GET ``ready`` answers 200."""
        self.specs[name] = (cmd, env, ready, timeout)
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (the child owns it)
        self.procs[name] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=ROOT
        )
        self._wait_ready(name, ready, timeout)

    def restart(self, name: str) -> None:
        self._stop(self.procs.pop(name))
        cmd, env, ready, timeout = self.specs[name]
        self.start(name, cmd, ready=ready, timeout=timeout, env=env)

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self, name: str, url: str, timeout: float) -> None:
        proc = self.procs[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited ({proc.returncode}):\n{self.tail(name)}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{name} not ready at {url} after {timeout:.0f} s:\n{self.tail(name)}")

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs.values()):
            self._stop(proc)
        self.procs.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def omniserve_config(path: Path, upstream_port: int) -> None:
    path.write_text(
        'engine = "upstream"\n'
        'log_level = "warning"\n\n'
        "[[upstream.upstreams]]\n"
        'name = "fast"\n'
        'kind = "openai"\n'
        f'base_urls = ["http://127.0.0.1:{upstream_port}/v1"]\n'
        f'models = {{ "{MODEL}" = "{UPSTREAM_MODEL}" }}\n'
        'health_path = ""\n'
    )


def litellm_config(path: Path, upstream_port: int) -> None:
    # YAML is a superset of JSON: no yaml module needed here.
    config = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{UPSTREAM_MODEL}",
                    "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                    "api_key": "sk-bench-dummy",
                },
            }
        ],
        "litellm_settings": {
            "telemetry": False,
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
            "turn_off_message_logging": True,
            "set_verbose": False,
            "request_timeout": 30,
        },
        "general_settings": {"disable_spend_logs": True, "disable_error_logs": True},
    }
    path.write_text(json.dumps(config, indent=2))


def ensure_litellm(version: str) -> Path:
    """``bench/.venv-litellm`` with ``litellm[proxy]``, created on first use and then reused."""
    exe = LITELLM_VENV / "bin" / "litellm"
    python = LITELLM_VENV / "bin" / "python"
    if exe.exists() and venv_version(python, "litellm") == version:
        return exe
    if not python.exists():
        print(f"creating {LITELLM_VENV.relative_to(ROOT)} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    print(f"installing litellm[proxy]=={version} (about a minute) ...", flush=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={version}"], check=True
    )
    return exe


def venv_version(python: Path, package: str) -> str:
    if not python.exists():
        return ""
    out = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def server_stack(python: str) -> str:
    """What uvicorn picks in that interpreter: its event loop and HTTP parser."""
    code = (
        "import importlib.util as u, importlib.metadata as m; "
        "print('uvicorn', m.version('uvicorn') + ',', "
        "'uvloop' if u.find_spec('uvloop') else 'asyncio loop', '+', "
        "'httptools' if u.find_spec('httptools') else 'h11')"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or "?"


# -- the client ---------------------------------------------------------------------------------


@dataclass
class Stream:
    ok: bool = False
    ttfb: float | None = None
    total: float = 0.0
    error: str = ""


def check_stream(raw: bytes) -> str:
    """What is wrong with a stream: nothing ("") when it holds the whole text, a usage chunk
    and [DONE]."""
    text, usage, done = [], False, False
    for line in raw.decode("utf-8", "replace").splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            continue
        chunk = json.loads(data)
        if "error" in chunk:
            return f"error event: {chunk['error']}"[:200]
        if chunk.get("usage"):
            usage = True
        for choice in chunk.get("choices") or []:
            text.append((choice.get("delta") or {}).get("content") or "")
    if not done:
        return "no [DONE]"
    if "".join(text) != EXPECTED:
        return f"text {''.join(text)!r}"
    return "" if usage else "no usage chunk"


async def one(client: httpx.AsyncClient, url: str, start: float, check: bool) -> Stream:
    """One stream; times from ``start`` (when it was due) to the first data line and to the end."""
    res = Stream()
    seen: list[bytes] = []
    try:
        async with client.stream("POST", url, json=BODY) as r:
            if r.status_code != 200:
                res.error = f"HTTP {r.status_code}"
                await r.aread()
                return res
            async for piece in r.aiter_bytes():
                seen.append(piece)
                if (
                    res.ttfb is None
                    and b"data:" in (seen[-2][-4:] if len(seen) > 1 else b"") + piece
                ):
                    res.ttfb = time.perf_counter() - start
        res.total = time.perf_counter() - start
        raw = b"".join(seen)
        if check:
            res.error = check_stream(raw)
        elif b"data: [DONE]" not in raw[-32:] or b'"error"' in raw:
            res.error = "incomplete or error event"
        res.ok = not res.error
    except (httpx.HTTPError, ValueError) as exc:
        res.error = type(exc).__name__
    return res


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def new_client(connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(timeout=httpx.Timeout(30, pool=30), limits=limits)


async def closed_loop(
    client: httpx.AsyncClient, url: str, concurrency: int, requests: int
) -> tuple[list[Stream], float]:
    results: list[Stream] = []
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            results.append(await one(client, url, time.perf_counter(), check=True))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, time.perf_counter() - t0


@dataclass
class Level:
    rate: float
    started: int = 0
    ok: int = 0
    p50: float = float("nan")
    p99: float = float("nan")
    passed: bool = False
    errors: set[str] = field(default_factory=set)


async def open_loop(url: str, rate: float, duration: float, bound: float) -> Level:
    """Streams started every 1/rate s for ``duration`` s; latency counted from when each was due;
    streams still running ``bound`` + 5 s after the last start count as failed."""
    n = max(1, round(rate * duration))
    level = Level(rate=rate, started=n)
    async with contextlib.AsyncExitStack() as stack:
        # Streams go round-robin over SHARDS clients: httpcore's pool scans all its connections
        # for every request it places, so one client with hundreds of streams in flight becomes
        # the bottleneck of an overloaded run (quadratic), and the figure would be the client's.
        clients = [await stack.enter_async_context(new_client(1024)) for _ in range(SHARDS)]
        tasks: list[asyncio.Task[Stream]] = []
        t0 = time.perf_counter() + 0.05
        for i in range(n):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            client = clients[i % SHARDS]
            tasks.append(asyncio.create_task(one(client, url, due, check=False)))
        _, pending = await asyncio.wait(tasks, timeout=bound + 5)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    finished = [t.result() for t in tasks if t not in pending]
    good = [s for s in finished if s.ok]
    level.ok = len(good)
    level.errors = {s.error for s in finished if not s.ok}
    if pending:
        level.errors.add(f"{len(pending)} unfinished")
    # Unfinished and failed streams count as infinitely slow in the percentiles.
    latencies = [s.total for s in good] + [float("inf")] * (n - len(good))
    level.p50, level.p99 = percentile(latencies, 50), percentile(latencies, 99)
    level.passed = level.ok >= 0.99 * n and level.p99 <= bound
    return level


async def settle(url: str, bound: float, limit: float) -> float | None:
    """Seconds after a level until the target again completes 8 concurrent streams, each within
    ``bound`` (None: not within ``limit`` seconds)."""
    t0 = time.perf_counter()
    await asyncio.sleep(1)
    async with new_client(8) as client:
        while time.perf_counter() - t0 < limit:
            try:
                async with asyncio.timeout(bound * 2):
                    probe = [one(client, url, time.perf_counter(), check=False) for _ in range(8)]
                    results = await asyncio.gather(*probe)
                if all(r.ok and r.total <= bound for r in results):
                    return time.perf_counter() - t0
            except TimeoutError:
                pass
            await asyncio.sleep(0.5)
    return None


async def ramp(
    t: Target, rates: list[float], duration: float, bound: float, refine: int
) -> tuple[Level | None, list[Level]]:
    """Offered rates until one fails, then bisection. After a failed level (or one after which
    the target does not serve 8 concurrent streams within 30 s) its process is restarted, so
    each level measures capacity rather than what an earlier overload left behind."""
    levels: list[Level] = []

    async def run(rate: float) -> Level:
        level = await open_loop(t.url, rate, duration, bound)
        levels.append(level)
        errors = f"  {sorted(level.errors)[:3]}" if level.errors else ""
        recovery = await settle(t.url, bound, 30)
        note = ""
        if recovery is None:
            note = "  (not serving again 30 s later)"
        elif recovery > 2:
            note = f"  (serving again after {recovery:.0f} s)"
        if recovery is None or not level.passed:
            await asyncio.to_thread(t.restart)
            note += "  restarted"
        print(
            f"  {t.name:<10} {rate:>7.0f}/s  ok {level.ok:>5}/{level.started:<5} "
            f"p50 {ms(level.p50):>6}  p99 {ms(level.p99):>6} ms  "
            f"{'pass' if level.passed else 'FAIL'}{errors}{note}",
            flush=True,
        )
        return level

    best: Level | None = None
    fail: Level | None = None
    for rate in rates:
        level = await run(rate)
        if not level.passed:
            fail = level
            break
        best = level
    for _ in range(refine):
        if fail is None:
            break
        lo = best.rate if best is not None else fail.rate / 2
        mid = round((lo * fail.rate) ** 0.5)
        if mid <= lo or mid >= fail.rate:
            break
        level = await run(mid)
        if level.passed:
            best = level
        else:
            fail = level
    return best, levels


def ms(x: float) -> str:
    if x != x:
        return "-"
    if x == float("inf"):
        return "inf"
    return f"{x * 1000:.1f}" if x < 0.01 else f"{x * 1000:.0f}"


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    url: str
    restart: Callable[[], None]  # a fresh process, after an overload
    ttfb: dict[int, list[Stream]] = field(default_factory=dict)
    rate: dict[int, float] = field(default_factory=dict)  # closed-loop streams/s per level
    best: Level | None = None
    ceiling: bool = False  # the highest rate tried passed: the real maximum is higher


async def measure(targets: list[Target], args: argparse.Namespace) -> None:
    print("warm-up: 40 streams each ...", flush=True)
    for t in targets:
        async with new_client(8) as client:
            results, _ = await closed_loop(client, t.url, 4, 40)
        bad = [r.error for r in results if not r.ok]
        if bad:
            raise SystemExit(f"{t.name} fails its warm-up streams: {sorted(set(bad))[:3]}")

    for conc in args.concurrency:
        print(f"TTFB: {args.requests} streams each at concurrency {conc} ...", flush=True)
        elapsed = {t.name: 0.0 for t in targets}
        for t in targets:
            t.ttfb[conc] = []
        clients = {t.name: new_client(conc) for t in targets}
        try:
            done = 0
            while done < args.requests:
                block = min(BLOCK, args.requests - done)
                for t in targets:
                    results, seconds = await closed_loop(clients[t.name], t.url, conc, block)
                    t.ttfb[conc] += results
                    elapsed[t.name] += seconds
                done += block
        finally:
            for c in clients.values():
                await c.aclose()
        for t in targets:
            t.rate[conc] = sum(r.ok for r in t.ttfb[conc]) / elapsed[t.name]

    print(
        f"throughput: open loop, {args.duration:g} s per rate, pass = 99 % complete "
        f"and p99 <= {args.p99_bound * 1000:.0f} ms",
        flush=True,
    )
    for t in targets:
        t.best, levels = await ramp(t, args.rates, args.duration, args.p99_bound, args.refine)
        t.ceiling = all(level.passed for level in levels)


def ttfb_stats(t: Target, conc: int) -> tuple[float, float, int]:
    ok = [r.ttfb for r in t.ttfb[conc] if r.ok and r.ttfb is not None]
    return percentile(ok, 50), percentile(ok, 99), len(t.ttfb[conc]) - len(ok)


def report(targets: list[Target], args: argparse.Namespace) -> None:
    direct = targets[0]
    print()
    header = "| target | " + " | ".join(
        f"c={c} TTFB p50 / p99 ms | added p50 / p99 ms | streams/s" for c in args.concurrency
    )
    header += " | errors | max sustained streams/s (p99 latency ms) |"
    print(header)
    print("|" + "---|" * (2 + 3 * len(args.concurrency) + 1))
    for t in targets:
        cells = []
        errors = 0
        for c in args.concurrency:
            p50, p99, err = ttfb_stats(t, c)
            d50, d99, _ = ttfb_stats(direct, c)
            errors += err
            added = "-" if t is direct else f"{ms(p50 - d50)} / {ms(p99 - d99)}"
            cells += [f"{ms(p50)} / {ms(p99)}", added, f"{t.rate[c]:.0f}"]
        best = "none passed" if t.best is None else f"{t.best.rate:.0f} ({ms(t.best.p99)})"
        if t.ceiling:
            best = "≥ " + best
        print(f"| {t.name} | " + " | ".join(cells) + f" | {errors} | {best} |")
        bad = {r.error for c in args.concurrency for r in t.ttfb[c] if not r.ok}
        if bad:
            print(f"|   errors: {sorted(bad)[:3]}")

    names = {t.name: t for t in targets}
    if "omniserve" not in names or "litellm" not in names:
        return
    omni, lite = names["omniserve"], names["litellm"]
    print()
    for c in args.concurrency:
        d50, d99, _ = ttfb_stats(direct, c)
        o50, o99, _ = ttfb_stats(omni, c)
        l50, l99, _ = ttfb_stats(lite, c)
        r50 = (o50 - d50) / (l50 - d50)
        r99 = (o99 - d99) / (l99 - d99)
        print(
            f"c={c}: omniserve added TTFB / LiteLLM added TTFB: p50 {r50:.2f}, p99 {r99:.2f} "
            f"(target < 0.33: {'met' if max(r50, r99) < 1 / 3 else 'not met'})"
        )
    if omni.best is not None and lite.best is not None:
        ratio = omni.best.rate / lite.best.rate
        more = " (at least: omniserve passed every rate tried)" if omni.ceiling else ""
        print(
            f"omniserve / LiteLLM max sustained streams/s: {ratio:.1f}{more} "
            f"(target >= 3: {'met' if ratio >= 3 else 'not met'})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=400, help="TTFB streams per level")
    parser.add_argument(
        "--concurrency",
        default="1,8",
        type=lambda s: [int(x) for x in s.split(",")],
        help="closed-loop levels for TTFB",
    )
    parser.add_argument("--duration", type=float, default=5, help="seconds per offered rate")
    parser.add_argument(
        "--rates",
        default="20,40,80,160,320,640,1280",
        type=lambda s: [float(x) for x in s.split(",")],
        help="offered streams/s, tried in order until one fails",
    )
    parser.add_argument("--refine", type=int, default=2, help="bisection steps after a failure")
    parser.add_argument("--p99-bound", type=float, default=1.0, help="seconds, for a rate to pass")
    parser.add_argument(
        "--ports",
        default=None,
        type=lambda s: [int(x) for x in s.split(",")],
        help="UPSTREAM,OMNISERVE,LITELLM (default: free ports)",
    )
    parser.add_argument("--skip-litellm", action="store_true", help="no LiteLLM (no network)")
    parser.add_argument("--litellm-version", default=LITELLM_VERSION)
    parser.add_argument(
        "--logs", type=Path, default=None, help="keep the servers' logs here (default: discard)"
    )
    args = parser.parse_args()

    if args.serve_upstream is not None:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_upstream(args.serve_upstream))
        return

    ports = args.ports or [free_port(), free_port(), free_port()]
    up, om, ll = ports
    litellm = None if args.skip_litellm else ensure_litellm(args.litellm_version)

    # Ctrl-C (even where a shell started us with SIGINT ignored) and SIGTERM end the run through
    # the finally below, which ends the servers.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        if args.logs is not None:
            args.logs.mkdir(parents=True, exist_ok=True)
        children = Children(args.logs or Path(tmp))
        try:
            upstream = [sys.executable, __file__, "--serve-upstream", str(up)]
            children.start("upstream", upstream, ready=f"http://127.0.0.1:{up}/health", timeout=30)

            def restart(name: str) -> Callable[[], None]:
                return lambda: children.restart(name)

            targets = [
                Target("direct", f"http://127.0.0.1:{up}/v1/chat/completions", restart("upstream"))
            ]

            omniserve_config(Path(tmp) / "omniserve.toml", up)
            omni = [sys.executable, "-m", "omniserve", "serve", "--port", str(om)]
            omni += ["--config", str(Path(tmp) / "omniserve.toml")]
            children.start("omniserve", omni, ready=f"http://127.0.0.1:{om}/readyz", timeout=60)
            targets.append(
                Target(
                    "omniserve", f"http://127.0.0.1:{om}/v1/chat/completions", restart("omniserve")
                )
            )

            if litellm is not None:
                litellm_config(Path(tmp) / "litellm.yaml", up)
                env = {
                    **os.environ,
                    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list
                    "LITELLM_LOG": "WARNING",  # and so no access log either
                    "LITELLM_TELEMETRY": "False",
                    "DISABLE_ADMIN_UI": "True",
                }
                for var in ("DATABASE_URL", "LITELLM_MASTER_KEY", "REDIS_HOST", "REDIS_URL"):
                    env.pop(var, None)
                cmd = [str(litellm), "--config", str(Path(tmp) / "litellm.yaml")]
                cmd += ["--port", str(ll), "--host", "127.0.0.1", "--telemetry", "False"]
                ready = f"http://127.0.0.1:{ll}/health/readiness"
                children.start("litellm", cmd, ready=ready, timeout=180, env=env)
                targets.append(
                    Target(
                        "litellm", f"http://127.0.0.1:{ll}/v1/chat/completions", restart("litellm")
                    )
                )

            import omniserve

            print(
                f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; the client, "
                "the upstream and the gateways share it, nothing pinned"
            )
            print(f"omniserve {omniserve.__version__} ({server_stack(sys.executable)})")
            if litellm is not None:
                python = str(LITELLM_VENV / "bin" / "python")
                print(f"litellm {venv_version(Path(python), 'litellm')} ({server_stack(python)})")
            print(f"client: httpx {importlib.metadata.version('httpx')}, this process")
            asyncio.run(measure(targets, args))
            report(targets, args)
        finally:
            children.stop_all()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; the servers are stopped")

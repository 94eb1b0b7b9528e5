"""Hostile requests against one server with its default settings: what do they cost everyone else?

Starts ``omniserve serve`` (emulator, no keys, loopback) and, while a probe thread asks
``/healthz`` every 10 ms, sends one hostile request at a time. For each it reports how long the
refusal took, the slowest ``/healthz`` answer during it against the slowest of an idle baseline
measured the same way in the same run, and the server's resident memory (peak above the idle
server, and after). Then it opens silent and trickling connections and counts how many the
server still holds after its header deadline.

    python bench/hostile.py
    python bench/hostile.py --json out.json

The figures are recorded in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from dbservers import free_port  # noqa: E402

MODEL = "qwen3-omni-flash"


def status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(key)


def open_sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


PROBE = r"""
import sys, threading, time, httpx
base, slowest, count, stop = sys.argv[1], 0.0, 0, threading.Event()
def run():
    global slowest, count
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            began = time.perf_counter()
            client.get(base + "/healthz")
            slowest = max(slowest, time.perf_counter() - began)
            count += 1
            time.sleep(0.01)
thread = threading.Thread(target=run, daemon=True)
thread.start()
print("ready", flush=True)
sys.stdin.readline()
stop.set()
thread.join()
print(slowest, count, flush=True)
"""


class Probe:
    """/healthz every 10 ms from a process of its own (so that the hostile client's work in
    this one never delays it): the slowest answer and how many there were."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.slowest = 0.0
        self.count = 0

    def __enter__(self) -> Probe:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", PROBE, self.base],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        assert self._proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        out, _ = self._proc.communicate("stop\n", timeout=120)
        slowest, count = out.split()
        self.slowest, self.count = float(slowest), int(count)


class PeakRss:
    """The server's resident memory, sampled every 20 ms from a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, status_mb(self.pid, "VmRSS"))
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def lag_buckets(base: str) -> dict[float, float]:
    """The server's event-loop lag histogram: samples at or under each bound."""
    out = {}
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith("omniserve_event_loop_lag_seconds_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            out[float(bound)] = float(line.rsplit(" ", 1)[1])
    return out


def worst_lag(before: dict[float, float], after: dict[float, float]) -> tuple[str, int]:
    """The bucket of the largest lag between two readings ("0.01-0.02 s"), and how many
    samples were late by more than 50 ms."""
    bounds = sorted(after)
    delta = {b: after[b] - before.get(b, 0.0) for b in bounds}
    total = delta[bounds[-1]]
    worst = next((b for b in bounds if delta[b] >= total), bounds[-1])
    previous = [b for b in bounds if b < worst]
    low = f"{previous[-1]:g}" if previous else "0"
    return f"{low}-{worst:g} s", int(total - delta[0.05])


def chat(messages: str) -> bytes:
    return (
        b'{"model": "' + MODEL.encode() + b'", "stream": true, "messages": ' + messages.encode()
    ) + b"}"


def png_url(mode: str, side: int, *, transparent: bool = False) -> str:
    out = io.BytesIO()
    if mode == "P":
        img = Image.new("P", (side, side), 0)
        img.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
        img.save(out, "PNG", **({"transparency": 0} if transparent else {}))
    else:
        Image.new(mode, (side, side)).save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def frames(url: str, count: int) -> bytes:
    content = [{"type": "video", "video": [url] * count}, {"type": "text", "text": "what?"}]
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": content}]}
    return json.dumps(body).encode()


def hostile_bodies() -> dict[str, Callable[[], bytes]]:
    return {
        "60 MB one-word message": lambda: chat(
            '[{"role": "user", "content": "' + "a" * 60_000_000 + '"}]'
        ),
        "7 MB one-word message": lambda: chat(
            '[{"role": "user", "content": "' + "a" * 7_000_000 + '"}]'
        ),
        "45 MB video as a data URL (not a video: refused when decoded)": lambda: chat(
            '[{"role": "user", "content": [{"type": "video_url", "video_url": {"url": '
            '"data:video/mp4;base64,' + base64.b64encode(os.urandom(33_000_000)).decode() + '"}}, '
            '{"type": "text", "text": "what happens?"}]}]'
        ),
        "400,000 tiny messages": lambda: chat(
            "[" + ", ".join(['{"role": "user", "content": "hi"}'] * 400_000) + "]"
        ),
        "500,000 invalid content parts": lambda: chat(
            '[{"role": "user", "content": [' + ", ".join(["{}"] * 500_000) + "]}]"
        ),
        "128 x 8000^2 transparent palette PNG frames": lambda: frames(
            png_url("P", 8000, transparent=True), 128
        ),
        "64 x 4000^2 RGBA PNG frames (each within the bound)": lambda: frames(
            png_url("RGBA", 4000), 64
        ),
    }


def measure_requests(base: str, pid: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lag_before = lag_buckets(base)
    with Probe(base) as idle:
        time.sleep(3)
    lag, _ = worst_lag(lag_before, lag_buckets(base))
    baseline = {"healthz_slowest_ms": idle.slowest * 1000, "probes": idle.count, "loop_lag": lag}
    rows = []
    for name, make in hostile_bodies().items():
        body = make()
        before = status_mb(pid, "VmRSS")
        lag_before = lag_buckets(base)
        with PeakRss(pid) as rss, Probe(base) as probe:
            time.sleep(0.2)
            began = time.perf_counter()
            r = httpx.post(
                f"{base}/v1/chat/completions",
                content=body,
                headers={"content-type": "application/json"},
                timeout=300,
            )
            took = time.perf_counter() - began
            time.sleep(0.2)
        lag, late = worst_lag(lag_before, lag_buckets(base))
        time.sleep(6)  # the decode trimmer runs every 5 s once decoding stops
        message = r.json().get("error", {}).get("message", "") if r.status_code >= 400 else ""
        rows.append(
            {
                "request": name,
                "body_mb": len(body) / 1e6,
                "status": r.status_code,
                "message": message[:90],
                "seconds": took,
                "healthz_slowest_ms": probe.slowest * 1000,
                "stall_ratio": probe.slowest / idle.slowest if idle.slowest else 0.0,
                "loop_lag": lag,
                "loop_late_over_50ms": late,
                "rss_before_mb": before,
                "rss_peak_above_mb": rss.peak - before,
                "rss_after_mb": status_mb(pid, "VmRSS"),
            }
        )
        del body
        print(json.dumps(rows[-1]), flush=True)
    return baseline, rows


def measure_connections(host: str, port: int, pid: int, header_timeout_s: float) -> dict[str, Any]:
    idle = open_sockets(pid)
    silent = [socket.create_connection((host, port)) for _ in range(1500)]
    trickling = [socket.create_connection((host, port)) for _ in range(500)]
    for s in trickling:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
    time.sleep(1)
    held_at_first = open_sockets(pid) - idle
    stop = time.monotonic() + header_timeout_s + 3
    while time.monotonic() < stop:  # one header byte a second, forever
        for s in trickling:
            with contextlib.suppress(OSError):
                s.sendall(b"X")
        time.sleep(1)
    held_after = open_sockets(pid) - idle
    r = httpx.get(f"http://{host}:{port}/healthz", timeout=10)
    for s in silent + trickling:
        s.close()
    return {
        "opened": len(silent) + len(trickling),
        "held_after_1s": held_at_first,
        "held_after_deadline": held_after,
        "seconds_waited": header_timeout_s + 4,
        "healthz_after": r.status_code,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    port = free_port()
    data = tempfile.mkdtemp(prefix="omniserve-hostile-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNISERVE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "omniserve", "serve", "--port", str(port), "--data-dir", data],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        idle_rss = status_mb(proc.pid, "VmRSS")
        baseline, rows = measure_requests(base, proc.pid)
        connections = measure_connections("127.0.0.1", port, proc.pid, 10.0)
        print(json.dumps(connections))
    finally:
        proc.terminate()
        proc.wait(30)
    result = {
        "machine": f"{os.cpu_count()} CPUs",
        "idle_rss_mb": idle_rss,
        "baseline": baseline,
        "requests": rows,
        "connections": connections,
    }
    print()
    print(
        f"idle server: {idle_rss:.0f} MiB; idle /healthz slowest "
        f"{baseline['healthz_slowest_ms']:.1f} ms over {baseline['probes']} probes; "
        f"largest event-loop lag {baseline['loop_lag']}"
    )
    print(
        "| request | body | answer | took | largest event-loop lag (samples late > 50 ms) | "
        "slowest /healthz (x idle) | RSS peak above before | RSS after |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['request']} | {r['body_mb']:.1f} MB | {r['status']} | {r['seconds']:.2f} s | "
            f"{r['loop_lag']} ({r['loop_late_over_50ms']}) | "
            f"{r['healthz_slowest_ms']:.1f} ms ({r['stall_ratio']:.1f}x) | "
            f"{r['rss_peak_above_mb']:.0f} MiB | {r['rss_after_mb']:.0f} MiB |"
        )
    c = connections
    print(
        f"\nconnections: {c['opened']} opened (1500 silent, 500 trickling headers); held after "
        f"1 s: {c['held_after_1s']}; held after {c['seconds_waited']:.0f} s: "
        f"{c['held_after_deadline']}; /healthz then: {c['healthz_after']}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

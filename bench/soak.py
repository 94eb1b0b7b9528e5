"""Soak: minutes of steady mixed traffic against one server; does anything grow or break?

Starts ``omniserve serve`` (emulator paced like a model, keys and the SQLite ledger on) and sends
requests at a steady rate, open loop, from a weighted mix: text, text+speech, media input (an
image, a WAV clip, a frame list, as data URLs), thinking, clients that leave mid-stream, and bad
requests (malformed JSON, an unknown voice, a wrong type, a corrupt image). Every 10 s it reads
/metrics. After a warm-up, the process's resident memory, open file descriptors and event-loop
tasks are compared with the end of the run, each sampled when the server is idle (no stream
running), so that growth means a leak, not load.

    python bench/soak.py                      # 10 minutes at 4 requests/s
    python bench/soak.py --minutes 2 --rate 8

Pass: no 5xx, no unexpected status, RSS growth under 10 % after warm-up, tasks and file
descriptors back to their warm-up level, no error or traceback in the server's log. Exit status
1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from dbservers import free_port  # noqa: E402
from omniserve.accounts.database import open_database  # noqa: E402
from omniserve.accounts.keys import KeyStore  # noqa: E402

MODEL = "qwen3-omni-flash"


def png(size: tuple[int, int], colour: tuple[int, int, int]) -> str:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def jpeg(i: int) -> str:
    out = io.BytesIO()
    Image.new("RGB", (320, 240), (30 * i, 80, 200 - 30 * i)).save(out, "JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def wav() -> str:
    t = np.arange(16000) / 16000
    out = io.BytesIO()
    sf.write(out, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, format="WAV")
    return "data:;base64," + base64.b64encode(out.getvalue()).decode()


IMAGE, CLIP, FRAMES = png((640, 480), (200, 40, 40)), wav(), [jpeg(i) for i in range(4)]
PROMPTS = ["你是谁？", "Tell me about yourself in two sentences.", "今天天气怎么样？"]


def user(*parts: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(parts)}]


def text(s: str) -> dict[str, Any]:
    return {"type": "text", "text": s}


def body(kind: str, rng: random.Random) -> dict[str, Any] | bytes:
    base: dict[str, Any] = {
        "model": MODEL,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
    }
    if kind in ("speech", "leave"):
        base |= {"modalities": ["text", "audio"], "audio": {"voice": "Cherry", "format": "wav"}}
    elif kind == "image":
        base["messages"] = user({"type": "image_url", "image_url": {"url": IMAGE}}, text("?"))
    elif kind == "audio_in":
        clip = {"type": "input_audio", "input_audio": {"data": CLIP, "format": "wav"}}
        base["messages"] = user(clip, text("这段音频在说什么"))
    elif kind == "frames":
        base["messages"] = user({"type": "video", "video": FRAMES}, text("描述这个视频"))
    elif kind == "thinking":
        base |= {"model": "qwen3-omni-flash", "enable_thinking": True}
    elif kind == "bad_json":
        return b'{"model": "qwen3-omni-flash", "messages": [}'
    elif kind == "bad_voice":
        base |= {"modalities": ["text", "audio"], "audio": {"voice": "Nobody", "format": "wav"}}
    elif kind == "bad_type":
        base["max_tokens"] = "many"
    elif kind == "bad_image":
        corrupt = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nnot").decode()
        base["messages"] = user({"type": "image_url", "image_url": {"url": corrupt}}, text("?"))
    return base


# kind: (weight, acceptable statuses)
MIX: dict[str, tuple[int, set[int]]] = {
    "text": (25, {200}),
    "speech": (20, {200}),
    "image": (8, {200}),
    "audio_in": (6, {200}),
    "frames": (6, {200}),
    "thinking": (10, {200}),
    "leave": (10, {200}),
    "bad_json": (4, {400}),
    "bad_voice": (4, {400}),
    "bad_type": (4, {400}),
    "bad_image": (3, {400}),
}


class Tally:
    def __init__(self) -> None:
        self.by_kind: collections.Counter[tuple[str, int | str]] = collections.Counter()
        self.unexpected: list[str] = []
        self.server_errors = 0


async def one(
    client: httpx.AsyncClient, url: str, kind: str, rng: random.Random, tally: Tally
) -> None:
    payload = body(kind, rng)
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    try:
        async with client.stream(
            "POST", url, content=content, headers={"Content-Type": "application/json"}
        ) as resp:
            status = resp.status_code
            if kind == "leave":
                async for line in resp.aiter_lines():
                    if '"audio"' in line:
                        break  # leave once speech has started
            else:
                done = False
                async for line in resp.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith('data: {"error"'):
                        tally.unexpected.append(f"{kind}: error event {line[:200]}")
                if status == 200 and not done:
                    tally.unexpected.append(f"{kind}: stream without [DONE]")
    except httpx.HTTPError as exc:
        tally.by_kind[(kind, type(exc).__name__)] += 1
        tally.unexpected.append(f"{kind}: {type(exc).__name__} {exc}")
        return
    tally.by_kind[(kind, status)] += 1
    if status >= 500:
        tally.server_errors += 1
    if status not in MIX[kind][1]:
        tally.unexpected.append(f"{kind}: status {status}")


async def scrape(client: httpx.AsyncClient, base: str, admin: str) -> dict[str, float]:
    resp = await client.get(f"{base}/metrics", headers={"Authorization": f"Bearer {admin}"})
    out: dict[str, float] = {}
    for line in resp.text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


async def idle_sample(client: httpx.AsyncClient, base: str, admin: str) -> dict[str, float]:
    """Metrics once no stream runs (waits up to 30 s), after a moment for cleanup."""
    deadline = time.monotonic() + 30
    while True:
        m = await scrape(client, base, admin)
        if m.get("omniserve_active_streams", 1) == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    return await scrape(client, base, admin)


async def soak(base: str, user_key: str, admin: str, args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    kinds = list(MIX)
    weights = [MIX[k][0] for k in kinds]
    tally = Tally()
    samples: list[tuple[float, dict[str, float]]] = []
    url = f"{base}/v1/chat/completions"
    # No keep-alive: idle samples then count no client connections among the open fds.
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=0)
    headers = {"Authorization": f"Bearer {user_key}"}
    async with (
        httpx.AsyncClient(timeout=120, limits=limits, headers=headers) as client,
        httpx.AsyncClient(timeout=30) as probe,
    ):
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        end = start + args.minutes * 60
        warm_end = start + args.warmup * 60
        warm: dict[str, float] | None = None
        next_sample = start
        sent = 0
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                samples.append((now - start, await scrape(probe, base, admin)))
                next_sample += 10
            if warm is None and now >= warm_end:
                # Warm-up over: let the traffic pause, sample idle, go on.
                await asyncio.gather(*tasks)
                warm = await idle_sample(probe, base, admin)
            kind = rng.choices(kinds, weights)[0]
            task = asyncio.create_task(one(client, url, kind, rng, tally))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
            await asyncio.sleep(max(0.0, start + sent / args.rate - time.monotonic()))
        await asyncio.gather(*tasks)
        final = await idle_sample(probe, base, admin)
    assert warm is not None
    return report(tally, samples, warm, final, sent, args)


def report(
    tally: Tally,
    samples: list[tuple[float, dict[str, float]]],
    warm: dict[str, float],
    final: dict[str, float],
    sent: int,
    args: argparse.Namespace,
) -> int:
    print(f"{sent} requests in {args.minutes:g} min at {args.rate:g}/s, seed {args.seed}")
    print("\nby kind and status:")
    for (kind, status), n in sorted(tally.by_kind.items(), key=lambda x: (x[0][0], str(x[0][1]))):
        print(f"  {kind:<10} {status!s:<16} {n}")
    print("\nserver over time (t s, RSS MiB, fds, loop tasks, active streams):")
    for t, m in samples[:: max(1, len(samples) // 12)]:
        print(
            f"  {t:6.0f} {m.get('process_resident_memory_bytes', 0) / 2**20:8.1f} "
            f"{m.get('process_open_fds', 0):5.0f} {m.get('omniserve_event_loop_tasks', 0):5.0f} "
            f"{m.get('omniserve_active_streams', 0):4.0f}"
        )
    rss0, rss1 = warm["process_resident_memory_bytes"], final["process_resident_memory_bytes"]
    growth = (rss1 - rss0) / rss0 * 100
    fds0, fds1 = warm["process_open_fds"], final["process_open_fds"]
    tasks0, tasks1 = warm["omniserve_event_loop_tasks"], final["omniserve_event_loop_tasks"]
    print("\nidle after warm-up -> idle at the end:")
    print(f"  RSS   {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB ({growth:+.1f} %)")
    print(f"  fds   {fds0:.0f} -> {fds1:.0f}")
    print(f"  tasks {tasks0:.0f} -> {tasks1:.0f}")
    print(f"  5xx   {tally.server_errors}")
    print(f"  unexpected outcomes: {len(tally.unexpected)}")
    for line in tally.unexpected[:20]:
        print(f"    {line}")
    ok = (
        tally.server_errors == 0
        and not tally.unexpected
        and growth < 10
        and fds1 <= fds0
        and tasks1 <= tasks0
    )
    print("\nPASS" if ok else "\nFAIL")
    return 0 if ok else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=1.0, help="minutes before the baseline")
    ap.add_argument("--rate", type=float, default=4.0, help="requests per second")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--tokens-per-second", default="40")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_database(f"sqlite:///{tmp}/omniserve.db")
        store = KeyStore(engine)
        _, admin = store.create("soak-admin", admin=True)
        _, user_key = store.create("soak", rpm=100_000, tpm=100_000_000)
        engine.dispose()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMNISERVE_")}
        log_path = Path(tmp) / "server.log"
        log_file = log_path.open("wb")
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "omniserve", "serve", "--port", str(port)),
                *("--data-dir", tmp, "--log-level", "warning"),
                *("--tokens-per-second", args.tokens_per_second, "--first-token-ms", "150"),
            ],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/readyz").status_code == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            code = asyncio.run(soak(base, user_key, admin, args))
        finally:
            proc.terminate()
            proc.wait(60)
            log_file.close()
        log = log_path.read_text(errors="replace")
        errors = [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]
        print(f"  server log: {len(errors)} errors or tracebacks")
        for line in errors[:10]:
            print(f"    {line}")
        if errors:
            print("FAIL: errors in the server's log")
            code = 1
    raise SystemExit(code)


if __name__ == "__main__":
    main()

"""Playground benchmark: what the browser page adds to time to first token and first audio.

One server, one request, measured two ways in the same run, alternating run by run:

- **baseline**: an httpx client reading the stream (TTFT: send → first non-empty
  ``delta.content``; TTFA: send → first ``delta.audio.data``);
- **page**: the playground in headless Chromium, the same message typed and sent through the
  page; its own instrumentation (``window.omniserveTrace``) gives send → first text on the page,
  send → first audio chunk decoded, and send → playback start on the audio clock.

It also loads the page from cold several times: navigation → models listed, and the bytes on
the wire.

    python bench/playground.py                          # 20 runs, paced like a model
    python bench/playground.py --runs 50 --tokens-per-second 0 --first-token-ms 0

Needs Chromium (``chromium`` on PATH, or ``OMNISERVE_CHROMIUM``) and the dev extra (playwright).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browser import CHROMIUM_FLAGS  # noqa: E402
from dbservers import free_port  # noqa: E402
from stream import spawn_server  # noqa: E402

PROMPT = "Who are you? Tell me a little about yourself."


def baseline(client: httpx.Client, api: str) -> dict[str, float]:
    body = {
        "model": "qwen3-omni-flash",
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "modalities": ["text", "audio"],
        "audio": {"voice": "Cherry", "format": "wav"},
    }
    out: dict[str, float] = {}
    start = time.perf_counter()
    with client.stream("POST", f"{api}/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if not chunk["choices"]:
                continue
            delta = chunk["choices"][0]["delta"]
            now = (time.perf_counter() - start) * 1000
            if delta.get("content") and "ttft" not in out:
                out["ttft"] = now
            if (delta.get("audio") or {}).get("data") and "ttfa" not in out:
                out["ttfa"] = now
    out["total"] = (time.perf_counter() - start) * 1000
    return out


def through_page(page: Page) -> dict[str, float]:
    page.click("#clear")
    page.fill("#prompt", PROMPT)
    page.press("#prompt", "Enter")
    page.wait_for_selector(".msg.assistant[data-state=done]", timeout=120_000)
    events: dict[str, dict[str, Any]] = {}
    for event in page.evaluate("window.omniserveTrace"):
        events.setdefault(event["event"], event)
    send = events["send"]["t"]
    done = events["done"]
    scheduled = events["audio-scheduled"]
    # Playback starts when the audio clock reaches the first chunk's start time.
    playback = scheduled["t"] + (scheduled["at"] - scheduled["clock"]) * 1000
    return {
        "ttft": events["first-text"]["t"] - send,
        "ttfa": events["first-audio"]["t"] - send,
        "playback": playback - send,
        "total": done["t"] - send,
        "underruns": float(done["underruns"]),
    }


def cold_load(browser: Any, url: str) -> dict[str, float]:
    context = browser.new_context()
    page = context.new_page()
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("#model:not([disabled])")
    ready = (time.perf_counter() - start) * 1000
    wire = page.evaluate(
        """() => performance.getEntriesByType('navigation').concat(
               performance.getEntriesByType('resource'))
             .reduce((n, e) => n + (e.transferSize || 0), 0)"""
    )
    body = page.evaluate(
        """() => performance.getEntriesByType('navigation').concat(
               performance.getEntriesByType('resource'))
             .reduce((n, e) => n + (e.decodedBodySize || 0), 0)"""
    )
    context.close()
    return {"ready": ready, "wire": float(wire), "body": float(body)}


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered):8.1f} {p90:8.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--loads", type=int, default=10, help="cold page loads")
    parser.add_argument("--tokens-per-second", type=float, default=40)
    parser.add_argument("--first-token-ms", type=float, default=150)
    args = parser.parse_args()
    chromium = os.environ.get("OMNISERVE_CHROMIUM") or shutil.which("chromium")
    if not chromium:
        raise SystemExit("needs Chromium: apt-get install chromium, or set OMNISERVE_CHROMIUM")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data_dir:
        proc = spawn_server(port, args.tokens_per_second, args.first_token_ms, data_dir, None)
        try:
            with sync_playwright() as p, httpx.Client(timeout=120) as client:
                browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
                loads = [cold_load(browser, f"{base}/") for _ in range(args.loads)]
                page = browser.new_context().new_page()
                page.goto(f"{base}/")
                page.wait_for_selector("#model:not([disabled])")
                baseline(client, f"{base}/compatible-mode/v1")  # warm both paths once
                through_page(page)
                base_runs, page_runs = [], []
                for _ in range(args.runs):
                    base_runs.append(baseline(client, f"{base}/compatible-mode/v1"))
                    page_runs.append(through_page(page))
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    print(f"# {platform.node()} · {os.cpu_count()} cores · {platform.python_version()}")
    print(f"# emulator {args.tokens_per_second} tokens/s, first token {args.first_token_ms} ms;")
    print(f"# {args.runs} runs of each, alternating; times in ms (median, p90), ratio of medians\n")
    print(f"{'':28} {'median':>8} {'p90':>8}")
    for key, label in (("ttft", "first token"), ("ttfa", "first audio"), ("total", "whole")):
        b = [r[key] for r in base_runs]
        w = [r[key] for r in page_runs]
        extra = [w_ - b_ for w_, b_ in zip(w, b, strict=True)]
        print(f"{label + ' · httpx':28} {summary(b)}")
        print(f"{label + ' · page':28} {summary(w)}")
        print(f"{label + ' · page − httpx':28} {summary(extra)}")
        ratio = statistics.median(w) / statistics.median(b)
        print(f"{label + ' · page / httpx':28} {ratio:8.3f}")
    print(f"{'playback starts · page':28} {summary([r['playback'] for r in page_runs])}")
    underruns = sum(int(r["underruns"]) for r in page_runs)
    print(f"{'underruns · page':28} {underruns:8d}")
    print()
    print(f"{'cold load → models listed':28} {summary([x['ready'] for x in loads])}")
    wire, body = loads[0]["wire"], loads[0]["body"]
    print(f"{'bytes on the wire / decoded':28} {wire:8.0f} {body:8.0f}")


if __name__ == "__main__":
    main()

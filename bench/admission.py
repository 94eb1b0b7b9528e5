"""Admission and ledger cost: the same server with keys, limits and the ledger on, against itself
with auth and the ledger off, in one run.

Three server processes (emulator engine, no pacing) are started side by side:

- ``off``: no keys, ``ledger = false`` (the baseline);
- ``sqlite``: a key with RPM and TPM limits (in-process limiter), ledger in SQLite (WAL);
- ``postgres``: the same with keys and ledger in a private PostgreSQL started by this script
  (or ``--postgres-url``), and with ``--redis`` the limits in a private Redis too.

Each request is a short streamed completion (``max_tokens`` 8) read to ``[DONE]``; latency is
send -> ``[DONE]``. ``--requests`` per target at closed-loop ``--concurrency`` (32), targets
interleaved in blocks of 64 so that a busy moment of the machine falls on all of them. Added
latency = the target's percentile - the baseline's. Each server's CPU time per request (from
/proc, user + system, all its threads) is reported too: at a fixed concurrency on a busy
machine the added latency is mostly added CPU waiting in the queue, and CPU time is the
steadier figure. So is the CPU time of the PostgreSQL server's processes, which share the
machine here. ``--aa`` adds a second baseline whose difference from the first is the noise:

    python bench/admission.py
    python bench/admission.py --requests 4096 --aa
    python bench/admission.py --requests 4000 --redis
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from dbservers import free_port, postgres_server, redis_server  # noqa: E402
from omniserve.accounts.database import open_database  # noqa: E402
from omniserve.accounts.keys import KeyStore  # noqa: E402

BODY = {
    "model": "qwen3-omni-flash",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
    "max_tokens": 8,
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU time of every PostgreSQL process on this machine (the private server's backends)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                if (proc / "comm").read_text().strip() == "postgres":
                    total += cpu_seconds(int(proc.name))
    return total


@contextlib.contextmanager
def server(args: list[str], env: dict[str, str]) -> object:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OMNISERVE_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "omniserve",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--tokens-per-second",
            "0",
            "--first-token-ms",
            "0",
            *args,
        ],
        env={**clean, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server {args} did not start")
            time.sleep(0.1)
        yield base, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


async def block(url: str, secret: str | None, n: int, conc: int) -> list[float]:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    out: list[float] = []
    queue = list(range(n))
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker() -> None:
            while queue:
                queue.pop()
                start = time.perf_counter()
                resp = await client.post(f"{url}/v1/chat/completions", json=BODY, headers=headers)
                assert resp.status_code == 200 and resp.text.endswith("data: [DONE]\n\n"), resp.text
                out.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(conc)))
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def keyed(url: str) -> str:
    engine = open_database(url)
    _, secret = KeyStore(engine).create("bench", rpm=2 * 10**9, tpm=2 * 10**9)
    engine.dispose()
    return secret


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2048)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--postgres-url")
    ap.add_argument("--redis", action="store_true", help="limits in Redis for the postgres row")
    ap.add_argument(
        "--aa",
        action="store_true",
        help="add a second baseline server (off2): its difference from off is the noise floor",
    )
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        pg = args.postgres_url or stack.enter_context(postgres_server())
        targets: dict[str, tuple[tuple[str, int], str | None]] = {}
        targets["off"] = (
            stack.enter_context(
                server(["--data-dir", str(tmp / "off")], {"OMNISERVE_ACCOUNTS__LEDGER": "false"})
            ),
            None,
        )
        if args.aa:
            targets["off2"] = (
                stack.enter_context(
                    server(
                        ["--data-dir", str(tmp / "off2")], {"OMNISERVE_ACCOUNTS__LEDGER": "false"}
                    )
                ),
                None,
            )
        sqlite_secret = keyed(f"sqlite:///{tmp / 'sqlite' / 'omniserve.db'}")
        targets["sqlite"] = (
            stack.enter_context(server(["--data-dir", str(tmp / "sqlite")], {})),
            sqlite_secret,
        )
        pg_args = ["--database-url", pg]
        name = "postgres"
        if args.redis:
            pg_args += ["--redis-url", stack.enter_context(redis_server())]
            name = "postgres+redis"
        pg_secret = keyed(pg)
        targets[name] = (stack.enter_context(server(pg_args, {})), pg_secret)

        results: dict[str, list[float]] = {k: [] for k in targets}
        cpu: dict[str, float] = {k: 0.0 for k in targets}
        db_cpu: dict[str, float] = {k: 0.0 for k in targets}
        for (url, _), secret in targets.values():  # warm-up
            asyncio.run(block(url, secret, 128, args.concurrency))
        done = 0
        while done < args.requests:
            n = min(64, args.requests - done)
            for key, ((url, pid), secret) in targets.items():
                before, db_before = cpu_seconds(pid), postgres_cpu_seconds()
                results[key] += asyncio.run(block(url, secret, n, args.concurrency))
                # The ledger writes its last rows within 20 ms of the block's end.
                time.sleep(0.05)
                cpu[key] += cpu_seconds(pid) - before
                db_cpu[key] += postgres_cpu_seconds() - db_before
            done += n
    base50, base99 = pct(results["off"], 50), pct(results["off"], 99)
    print(
        f"{args.requests} requests per target, concurrency {args.concurrency}, "
        f"{os.cpu_count()} cores"
    )
    print(
        f"{'target':<16}{'p50 ms':>9}{'p99 ms':>9}{'added p50':>11}{'added p99':>11}"
        f"{'ratio p50':>11}{'CPU us/req':>12}{'added':>8}{'DB CPU us/req':>15}"
    )
    base_cpu = cpu["off"] / args.requests
    for key, values in results.items():
        p50, p99 = pct(values, 50), pct(values, 99)
        per = cpu[key] / args.requests
        print(
            f"{key:<16}{p50 * 1000:>9.2f}{p99 * 1000:>9.2f}{(p50 - base50) * 1000:>11.2f}"
            f"{(p99 - base99) * 1000:>11.2f}{p50 / base50:>11.3f}"
            f"{per * 1e6:>12.0f}{(per - base_cpu) * 1e6:>8.0f}"
            f"{db_cpu[key] / args.requests * 1e6:>15.0f}"
        )


if __name__ == "__main__":
    main()

"""Accounts across processes: replicas sharing PostgreSQL and Redis, and a server killed -9."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

from helpers import burst, chat_body, fast_settings, free_port, serving
from omniserve.accounts.database import database_url, open_database
from omniserve.accounts.keys import KeyStore
from omniserve.accounts.schema import ledger
from omniserve.service import ChatService

SLOW = ("--tokens-per-second", "20", "--first-token-ms", "0")


def estimate(body: dict[str, object]) -> int:
    job = ChatService(fast_settings()).prepare(json.dumps(body).encode(), "estimate").job
    return job.prompt_tokens.total + int(body["max_tokens"])  # type: ignore[call-overload]


def test_two_replicas_sharing_redis_admit_exactly_the_tpm(
    fresh_postgres_url: str, redis_url: str
) -> None:
    body = chat_body(max_tokens=40)
    each = estimate(body)
    allowed = 5
    engine = open_database(fresh_postgres_url)
    _, secret = KeyStore(engine).create("shared", tpm=allowed * each + each // 2)
    shared = ("--database-url", fresh_postgres_url, "--redis-url", redis_url, *SLOW)
    with serving(*shared) as one, serving(*shared) as two:
        apis = [f"{one.base}/v1", f"{two.base}/v1"]
        statuses = asyncio.run(burst(apis, secret, body, 20))
        assert sorted(statuses) == [200] * allowed + [429] * (20 - allowed)
        # Both replicas wrote to the one ledger; every admitted request is on it once.
        deadline = time.monotonic() + 10
        while True:
            with engine.connect() as conn:
                done = conn.execute(
                    sa.select(sa.func.count()).where(ledger.c.status == "ok")
                ).scalar_one()
            if done == allowed or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert done == allowed
    engine.dispose()


def test_a_revocation_reaches_every_replica_on_postgresql(fresh_postgres_url: str) -> None:
    engine = open_database(fresh_postgres_url)
    key, secret = KeyStore(engine).create("leaving")
    shared = ("--database-url", fresh_postgres_url)
    with serving(*shared) as one, serving(*shared) as two:
        headers = {"Authorization": f"Bearer {secret}"}
        urls = [f"{s.base}/v1/models" for s in (one, two)]
        assert [httpx.get(u, headers=headers).status_code for u in urls] == [200, 200]
        KeyStore(engine).revoke(key.id)  # as `omniserve keys revoke` does, from outside
        revoked = time.monotonic()
        # Pushed to both by NOTIFY: no replica reads the keys per request on PostgreSQL.
        for url in urls:
            while httpx.get(url, headers=headers).status_code != 401:
                assert time.monotonic() - revoked < 2, f"{url} still accepts a revoked key"
                time.sleep(0.005)
    engine.dispose()


def running(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        query = sa.select(sa.func.count()).where(ledger.c.status == "running")
        return int(conn.execute(query).scalar_one())


def _stream_forever(url: str, secret: str, started: threading.Event) -> None:
    try:
        with httpx.stream(
            "POST", url, json=chat_body(), headers={"Authorization": f"Bearer {secret}"}
        ) as resp:
            for i, _ in enumerate(resp.iter_lines()):
                if i == 5:
                    started.set()
    except httpx.HTTPError:
        pass  # the server was killed under it


def test_kill_9_mid_stream_leaves_a_readable_ledger_without_duplicates(tmp_path: Path) -> None:
    url = database_url(None, tmp_path)
    engine = open_database(url)
    key, secret = KeyStore(engine).create("victim")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNISERVE_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "omniserve",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path),
            # Slow enough that the streams outlive the ledger's hold on their starts.
            "--tokens-per-second",
            "4",
            "--first-token-ms",
            "0",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {secret}"}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        for _ in range(3):
            assert httpx.post(base, json=chat_body(max_tokens=3), headers=auth).status_code == 200
        flags = [threading.Event() for _ in range(3)]
        threads = [
            threading.Thread(target=_stream_forever, args=(base, secret, f), daemon=True)
            for f in flags
        ]
        for t in threads:
            t.start()
        assert all(f.wait(20) for f in flags)
        # The ledger writes a start as running once it has run a second.
        deadline = time.monotonic() + 10
        while running(engine) < 3:
            assert time.monotonic() < deadline, "the streams never showed as running"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    for t in threads:
        t.join(10)

    with engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA integrity_check")).scalar_one() == "ok"
        rows = conn.execute(sa.select(ledger.c.request_id, ledger.c.status)).all()
    statuses = sorted(status for _, status in rows)
    assert statuses == ["ok"] * 3 + ["running"] * 3
    assert len({rid for rid, _ in rows}) == len(rows)
    assert KeyStore(engine).get(key.id).used_tokens > 0

    # The next start sees their server is gone and closes them before it serves, once (not
    # an hour later, when they would be old enough for the sweep).
    with serving("--data-dir", str(tmp_path)), engine.connect() as conn:
        rows = conn.execute(sa.select(ledger.c.request_id, ledger.c.status)).all()
    assert sorted(s for _, s in rows) == ["interrupted"] * 3 + ["ok"] * 3
    engine.dispose()

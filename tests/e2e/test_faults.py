"""The database or Redis going away while serving: a clear 503 by default, or service carried on
with ``fail_open``; never a 500, and the ledger catches up when the database is back."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import httpx
import psycopg
import pytest
import redis
import sqlalchemy as sa

import dbservers
from helpers import LiveServer, chat_body, fast_settings, live_server
from omniserve.accounts.schema import ledger
from omniserve.accounts.watch import ListenWatch


def post(server: LiveServer, secret: str) -> httpx.Response:
    return httpx.post(
        f"{server.api}/chat/completions",
        json=chat_body(max_tokens=5),
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )


def wait_for(condition: Callable[[], bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)


@contextlib.contextmanager
def database_down(url: str) -> Iterator[None]:
    """No connection to ``url``'s database is possible, and those open are cut, until exit."""
    name = sa.make_url(url).database
    admin = dbservers.libpq_url(dbservers.with_database(url, "postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
    try:
        yield
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def ledger_count(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(ledger)).scalar_one())
    finally:
        engine.dispose()


def keyed(server: LiveServer) -> str:
    assert server.accounts.store is not None
    return server.accounts.store.create("app")[1]


def listening(server: LiveServer) -> bool:
    watch = server.accounts.watch
    assert isinstance(watch, ListenWatch)
    return watch.live


def test_database_lost_answers_503_then_recovers(fresh_postgres_url: str) -> None:
    settings = fast_settings(accounts={"database_url": fresh_postgres_url})
    with live_server(settings) as s:
        secret = keyed(s)
        assert post(s, secret).status_code == 200
        with database_down(fresh_postgres_url):
            wait_for(lambda: not listening(s))
            resp = post(s, secret)
            assert resp.status_code == 503
            error = resp.json()["error"]
            assert error["code"] == "ServiceUnavailable"
            assert error["message"].startswith("The server cannot check API keys right now")
            assert httpx.get(f"{s.base_url}/readyz").status_code == 503
        # Back: the listener reconnects and requests pass again, without a restart.
        wait_for(lambda: post(s, secret).status_code == 200)
        wait_for(lambda: listening(s))
        assert httpx.get(f"{s.base_url}/readyz").status_code == 200
        assert s.accounts.writer is not None and s.accounts.writer.flush(20)
    assert ledger_count(fresh_postgres_url) >= 2


def test_database_lost_with_fail_open_keeps_serving_and_books_it_later(
    fresh_postgres_url: str,
) -> None:
    settings = fast_settings(accounts={"database_url": fresh_postgres_url, "fail_open": True})
    with live_server(settings) as s:
        secret = keyed(s)
        assert post(s, secret).status_code == 200
        with database_down(fresh_postgres_url):
            wait_for(lambda: not listening(s))
            statuses = [post(s, secret).status_code for _ in range(4)]
            assert statuses == [200] * 4
            # The keys as last read still apply: a wrong key is refused.
            assert post(s, "sk-" + "0" * 64).status_code == 401
        assert s.accounts.writer is not None
        # The rows written during the outage wait in memory and land once it is back.
        wait_for(lambda: s.accounts.writer is not None and s.accounts.writer.flush(1), 30)
    assert ledger_count(fresh_postgres_url) == 5


@pytest.mark.parametrize("fail_open", [False, True])
def test_redis_lost(fail_open: bool) -> None:
    with dbservers.redis_server() as url:
        settings = fast_settings(accounts={"redis_url": url, "fail_open": fail_open})
        with live_server(settings) as s:
            secret = keyed(s)
            assert post(s, secret).status_code == 200
            with redis.Redis.from_url(url) as client, contextlib.suppress(redis.ConnectionError):
                client.shutdown(nosave=True)
            resp = post(s, secret)
            ready = httpx.get(f"{s.base_url}/readyz")
            assert ready.status_code == 503
            assert ready.json()["error"]["message"].startswith("The rate limiter is unavailable")
            if fail_open:
                assert resp.status_code == 200
            else:
                assert resp.status_code == 503
                message = resp.json()["error"]["message"]
                assert message.startswith("The server cannot check rate limits right now")

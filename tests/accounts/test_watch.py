"""How a server learns of key changes made elsewhere: per request on SQLite, by LISTEN/NOTIFY
on PostgreSQL, with a per-request fallback while the listener is down."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from omniserve.accounts.database import open_database
from omniserve.accounts.keys import KeyRing, KeyStore
from omniserve.accounts.watch import ListenWatch, LocalWatch, watch_for

pytestmark = pytest.mark.anyio
T = TypeVar("T")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def elsewhere(engine: Engine, change: Callable[[KeyStore], T]) -> T:
    """A change made through a connection of its own, as the CLI or a replica makes it."""
    other = sa.create_engine(engine.url)
    try:
        return change(KeyStore(other))
    finally:
        other.dispose()


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Waits until ``condition()`` holds; fails after ``within`` seconds."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - polls state set by another task
            await anyio.sleep(0.002)


async def test_each_backend_gets_its_watch(engine: Engine) -> None:
    watch = watch_for(KeyRing(KeyStore(engine)))
    kind = ListenWatch if engine.dialect.name == "postgresql" else LocalWatch
    assert isinstance(watch, kind)


async def test_a_change_elsewhere_counts_from_the_next_request(engine: Engine) -> None:
    ring = KeyRing(KeyStore(engine))
    watch = watch_for(ring)
    await watch.start()
    try:
        assert not (await watch.current()).required
        key, secret = elsewhere(engine, lambda s: s.create("app"))
        if isinstance(watch, ListenWatch):
            # Pushed: no read per request; the notification arrives within milliseconds.
            assert watch.live
            await until(lambda: ring.find(secret) is not None)
        assert (await watch.current()).find(secret) is not None
        elsewhere(engine, lambda s: s.revoke(key.id))
        if isinstance(watch, ListenWatch):
            await until(lambda: ring.find(secret) is None)
        ring = await watch.current()
        assert ring.find(secret) is None and ring.required
    finally:
        await watch.close()


async def test_sqlite_reads_the_counter_without_the_pool(tmp_path: object) -> None:
    engine = open_database(f"sqlite:///{tmp_path}/k.db")
    ring = KeyRing(KeyStore(engine))
    watch = LocalWatch(ring)
    await watch.start()
    try:
        _, secret = elsewhere(engine, lambda s: s.create("app"))
        # No refresh happened in between: the next request sees the key.
        assert (await watch.current()).find(secret) is not None
    finally:
        await watch.close()
        engine.dispose()


async def test_a_lost_listener_falls_back_to_reading_per_request_and_comes_back(
    fresh_postgres_url: str,
) -> None:
    engine = open_database(fresh_postgres_url)
    ring = KeyRing(KeyStore(engine))
    watch = ListenWatch(ring, heartbeat_s=0.5)
    await watch.start()
    try:
        assert watch.live
        key, secret = elsewhere(engine, lambda s: s.create("app"))
        await until(lambda: ring.find(secret) is not None)
        # The listener's connection dies (a restart, a network cut, an administrator).
        with engine.connect() as conn:
            killed = conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN%' OR query LIKE 'SELECT version FROM key_state%'"
                )
            ).all()
        assert killed
        await until(lambda: not watch.live)
        # While it is down, a revocation still counts from the next request: read per request.
        elsewhere(engine, lambda s: s.revoke(key.id))
        assert (await watch.current()).find(secret) is None
        # And it comes back on its own.
        await until(lambda: watch.live, within=10)
        _, other = elsewhere(engine, lambda s: s.create("other"))
        await until(lambda: ring.find(other) is not None)
    finally:
        await watch.close()
        engine.dispose()


async def test_the_heartbeat_catches_a_change_without_a_notification(
    fresh_postgres_url: str,
) -> None:
    engine = open_database(fresh_postgres_url)
    ring = KeyRing(KeyStore(engine))
    watch = ListenWatch(ring, heartbeat_s=0.2)
    await watch.start()
    try:
        _, secret = KeyStore(engine).create("app")
        # A change that bypasses KeyStore (a hand-made SQL fix) notifies no one; the counter
        # still moves when it is done properly, and the heartbeat reads it.
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE api_keys SET revoked_ms = 1"))
            conn.execute(sa.text("UPDATE key_state SET version = version + 1"))
        await until(lambda: ring.find(secret) is None, within=3)
    finally:
        await watch.close()
        engine.dispose()

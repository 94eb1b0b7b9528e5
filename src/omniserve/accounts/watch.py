"""How a server learns that keys changed, without paying for it on every request.

Every change to a key bumps the counter in ``key_state`` (``KeyStore``), whoever makes it: this
server's admin routes, another replica, or ``omniserve keys`` on the command line.

- SQLite (``LocalWatch``): the database is a local file, so the counter is read before every
  request on a connection of its own, with the ``sqlite3`` module directly (a few microseconds,
  no thread hop). A change counts from the next request, exactly.
- PostgreSQL (``ListenWatch``): a reader per request would cost a network round trip and a
  thread hop each. Instead one connection ``LISTEN``s on ``omniserve_keys``, which every change
  notifies when it commits; the server re-reads the keys on a notification and, as a
  heartbeat, checks the counter every few seconds on the same connection (a notification lost
  with a dead connection is caught there). While that connection is down the server falls back
  to reading the counter before every request, until it is back. A change therefore counts on
  every replica as soon as its notification arrives: a millisecond on a local network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from typing import Any, Protocol

from anyio.to_thread import run_sync
from sqlalchemy.engine import Engine

from omniserve.accounts.keys import CHANNEL, KeyRing

log = logging.getLogger("omniserve.accounts")

HEARTBEAT_S = 5.0
RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)


class KeyWatch(Protocol):
    ring: KeyRing

    async def start(self) -> None: ...

    async def current(self) -> KeyRing:
        """The ring, up to date with every change committed before this call (see above)."""
        ...

    async def close(self) -> None: ...


def watch_for(ring: KeyRing) -> KeyWatch:
    engine = ring.store.engine
    if engine.dialect.name == "postgresql":
        return ListenWatch(ring)
    return LocalWatch(ring)


class LocalWatch:
    """Reads the counter of a SQLite database before every request (see the module doc)."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring
        self._path = _sqlite_path(ring.store.engine)
        self._conn: sqlite3.Connection | None = None

    async def start(self) -> None:
        await run_sync(self.ring.refresh)

    async def current(self) -> KeyRing:
        version = self._read()
        if version is None:
            self.ring.check()
        elif version != self.ring.version:
            self.ring.refresh()  # rare: a key changed; a local read
        return self.ring

    def _read(self) -> int | None:
        if self._path is None:
            return None
        try:
            if self._conn is None:
                # Autocommit, read-only: every SELECT sees the newest committed counter.
                self._conn = sqlite3.connect(
                    f"file:{self._path}?mode=ro",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=10,
                )
            row = self._conn.execute("SELECT version FROM key_state").fetchone()
            return int(row[0])
        except sqlite3.Error:
            self._reset()
            return None

    def _reset(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    async def close(self) -> None:
        self._reset()


def _sqlite_path(engine: Engine) -> str | None:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


class ListenWatch:
    """Keeps the ring current from PostgreSQL notifications (see the module doc)."""

    def __init__(self, ring: KeyRing, *, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.ring = ring
        self.heartbeat_s = heartbeat_s
        url = ring.store.engine.url.set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self.live = False  # listening: no per-request read needed

    async def start(self) -> None:
        await run_sync(self.ring.refresh)
        self._task = asyncio.create_task(self._listen_forever(), name="omniserve-key-watch")
        # Usually up at once; a server whose database listens slowly still starts, reading
        # the counter per request until the listener is up.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), 5.0)

    async def current(self) -> KeyRing:
        if not self.live:
            await run_sync(self.ring.check)
        return self.ring

    async def _listen_forever(self) -> None:
        failures = 0
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.live or failures == 0:
                    log.warning(
                        "key change listener lost (%s); reading keys per request until back",
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc),
                    )
                self.live = False
                await asyncio.sleep(RETRY_S[min(failures, len(RETRY_S) - 1)])
                failures += 1
            else:  # pragma: no cover - _listen only returns by raising
                failures = 0

    async def _listen(self) -> None:
        import psycopg

        conn: Any = await asyncio.wait_for(
            psycopg.AsyncConnection.connect(
                self._conninfo,
                autocommit=True,
                # A peer gone without a word is noticed by the heartbeat's timeout; these make
                # the socket fail too instead of waiting forever.
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
            ),
            10.0,
        )
        async with conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            # Changes made before LISTEN took effect are not notified: read them now.
            await self._sync(conn)
            self.live = True
            self._connected.set()
            log.debug("listening for key changes")
            while True:
                async for note in conn.notifies(timeout=self.heartbeat_s):
                    if not note.payload.isdigit() or int(note.payload) != self.ring.version:
                        await run_sync(self.ring.refresh)
                # Heartbeat: the connection is alive and no change went unseen.
                await asyncio.wait_for(self._sync(conn), self.heartbeat_s)

    async def _sync(self, conn: Any) -> None:
        cur = await conn.execute("SELECT version FROM key_state")
        row = await cur.fetchone()
        if row is None or int(row[0]) != self.ring.version:
            await run_sync(self.ring.refresh)

    async def close(self) -> None:
        self.live = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

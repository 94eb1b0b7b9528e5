"""The accounts of one server: its keys, its rate limiter and its usage ledger, from start to close.

``Accounts`` opens the database, watches the keys, keeps the ledger's writer and sweeps old
rows; it authenticates callers (``auth.py``) and admits their requests (``admission.py``).
When the database or a shared limiter fails while serving, ``unavailable`` decides: 503, or
with ``fail_open`` carry on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Literal

import anyio
from anyio.to_thread import run_sync

from omniserve.accounts.admission import Ticket, admit
from omniserve.accounts.auth import ANONYMOUS, AuthLevel, Caller, authenticate
from omniserve.accounts.database import database_url, open_database
from omniserve.accounts.keys import KeyRing, KeyStore
from omniserve.accounts.ledger import LedgerWriter, close_running, running_owners, sweep
from omniserve.accounts.limits import InProcessLimiter, Limiter
from omniserve.accounts.owners import Presence, new_owner
from omniserve.accounts.transcripts import TranscriptStore, now_ms
from omniserve.accounts.watch import KeyWatch, watch_for
from omniserve.config import AccountsSettings
from omniserve.errors import ServiceUnavailable, TooManySessions
from omniserve.job import GenerationJob
from omniserve.metrics import Metrics
from omniserve.tokens import QwenTokenizer

log = logging.getLogger("omniserve.accounts")

SWEEP_EVERY_S = 3600.0
# How often a server looks for running rows of servers that died (it also does at start-up).
REAP_EVERY_S = 60.0


def make_limiter(settings: AccountsSettings) -> Limiter:
    if settings.redis_url:
        from omniserve.accounts.redis_limits import RedisLimiter

        return RedisLimiter.from_url(settings.redis_url)
    return InProcessLimiter()


class Accounts:
    """Keys, limits and the ledger of one server."""

    def __init__(
        self,
        settings: AccountsSettings,
        tokenizer: QwenTokenizer,
        *,
        limiter: Limiter | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.tokenizer = tokenizer
        self.url = database_url(settings.database_url, settings.data_dir.expanduser())
        self._limiter = limiter
        self.limiter: Limiter = limiter or InProcessLimiter()
        self.store: KeyStore | None = None
        self.ring: KeyRing | None = None
        self.watch: KeyWatch | None = None
        self.writer: LedgerWriter | None = None
        self.transcripts: TranscriptStore | None = None
        self.presence: Presence | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._warned: dict[str, float] = {}
        self.pending: set[asyncio.Task[None]] = set()
        self.sessions: dict[str, int] = {}  # realtime sessions open per key id

    async def start(self) -> None:
        engine = await run_sync(open_database, self.url)
        self.store = KeyStore(engine)
        self.transcripts = TranscriptStore(engine)
        self.ring = KeyRing(self.store)
        self.watch = watch_for(self.ring)
        await self.watch.start()
        if self._limiter is None:
            self.limiter = make_limiter(self.settings)
        if self.settings.ledger:
            self.presence = Presence(engine, new_owner())
            try:
                held = await run_sync(self.presence.hold)
            except OSError as exc:
                log.warning("ledger: cannot mark this server as running (%s)", exc)
                held = False
            self.writer = LedgerWriter(engine, owner=self.presence.owner if held else None)
            if self.metrics is not None:
                self.writer.on_drop = self.metrics.ledger_dropped.inc
            # Before serving: close what a server that died left running.
            with contextlib.suppress(Exception):
                await self.reap()
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.watch is not None:
            await self.watch.close()
        if self.writer is not None:
            await run_sync(self.writer.close)
        if self.presence is not None:
            self.presence.release()
        await self.limiter.close()
        if self.store is not None:
            self.store.engine.dispose()

    async def reap(self) -> int:
        """Closes as interrupted the running rows of server processes that are gone, with the
        usage they had reached; returns how many."""
        presence, store = self.presence, self.store
        if presence is None or store is None or not presence.tells:
            return 0

        def reap() -> int:
            presence.hold()  # taken again if its database session was lost
            dead = presence.gone(running_owners(store.engine))
            if not dead:
                return 0
            closed = close_running(store.engine, owners=dead)
            for owner in dead:
                presence.forget(owner)
            return closed

        try:
            closed = await run_sync(reap)
        except Exception:
            log.exception("ledger: looking for requests of stopped servers failed")
            raise
        if closed:
            log.warning(
                "ledger: %d requests of a server that stopped without ending them are closed "
                "as interrupted, with the usage they had reached",
                closed,
            )
        return closed

    def remember_audio(self, audio_id: str, key_id: str | None, transcript: str) -> None:
        """What an answer's audio said, for history that sends its id back: kept in memory at
        once, written to the database in the background (a failure is logged, never the
        request's)."""
        store, ttl = self.transcripts, self.settings.audio_history_s
        if store is None or ttl <= 0:
            return
        expires = now_ms() + int(ttl * 1000)
        store.keep(audio_id, key_id, transcript, expires)

        async def write() -> None:
            try:
                await run_sync(store.write, audio_id, key_id, transcript, expires)
            except Exception as exc:  # memory still has it, for this server
                log.warning("audio history: %s not written (%s)", audio_id, exc)

        task = asyncio.create_task(write())
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    def recall_audio(self, ids: list[str], key_id: str | None) -> dict[str, str]:
        """The transcripts of these audio ids that ``key_id`` may use (blocking: call it on a
        worker thread); a database that does not answer finds only what memory holds."""
        store = self.transcripts
        if store is None or self.settings.audio_history_s <= 0:
            return {}
        try:
            return store.find(ids, key_id)
        except Exception as exc:
            log.warning("audio history: the database did not answer (%s)", exc)
            return {}

    async def _sweep_forever(self) -> None:
        assert self.store is not None
        swept = -SWEEP_EVERY_S
        while True:
            if time.monotonic() - swept >= SWEEP_EVERY_S:
                swept = time.monotonic()
                try:
                    interrupted, deleted = await run_sync(
                        lambda: sweep(
                            self.store.engine,  # type: ignore[union-attr]
                            retention_days=self.settings.retention_days,
                            stale_after_s=self.settings.stale_after_s,
                        )
                    )
                    if interrupted or deleted:
                        log.info("ledger: %d rows interrupted, %d expired", interrupted, deleted)
                except Exception:
                    log.exception("ledger sweep failed")
                if self.transcripts is not None:
                    try:
                        await run_sync(self.transcripts.sweep)
                    except Exception:
                        log.exception("audio history sweep failed")
            await asyncio.sleep(REAP_EVERY_S)
            with contextlib.suppress(Exception):  # logged by reap
                await self.reap()

    async def _current_keys(self) -> KeyRing:
        assert self.watch is not None, "Accounts.start() was not awaited"
        try:
            return await self.watch.current()
        except Exception as exc:  # the database's driver errors, OSError, timeouts
            self.unavailable("database", exc)
            assert self.ring is not None
            return self.ring  # fail open: the keys as last read

    def unavailable(self, what: Literal["database", "limits"], exc: BaseException) -> None:
        """A dependency failed while serving: raises the API's 503, or with ``fail_open``
        logs it (at most every 10 s) and returns so that the caller carries on without it."""
        now = time.monotonic()
        if now - self._warned.get(what, -60.0) >= 10.0:
            self._warned[what] = now
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning(
                "%s unavailable (%s): %s",
                "the accounts database" if what == "database" else "the rate limiter",
                reason,
                "serving anyway (fail_open)" if self.settings.fail_open else "answering 503",
            )
        if self.metrics is not None:
            self.metrics.degraded.labels(what).inc()
        if not self.settings.fail_open:
            if what == "database":
                raise ServiceUnavailable(
                    "The server cannot check API keys right now: its database is unavailable. "
                    "Try again shortly."
                ) from None
            raise ServiceUnavailable(
                "The server cannot check rate limits right now: its limiter is unavailable. "
                "Try again shortly."
            ) from None

    async def check_database(self, timeout_s: float = 2.0) -> str | None:
        """None when the database answers a trivial query in time, else what is wrong."""
        store = self.store
        if store is None:
            return "not opened"

        def ping() -> None:
            with store.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")

        try:
            with anyio.fail_after(timeout_s):
                await run_sync(ping, abandon_on_cancel=True)
        except TimeoutError:
            return f"no answer within {timeout_s:g} s"
        except Exception as exc:  # the driver's errors vary; one line of what it said
            text = str(getattr(exc, "orig", None) or exc).strip()
            return text.splitlines()[0] if text else type(exc).__name__
        return None

    async def check_limiter(self, timeout_s: float = 2.0) -> str | None:
        """None when the shared limiter (Redis) answers in time, or there is none."""
        try:
            with anyio.fail_after(timeout_s):
                await self.limiter.ping()
        except TimeoutError:
            return f"no answer within {timeout_s:g} s"
        except Exception as exc:
            text = str(exc).strip()
            return text.splitlines()[0] if text else type(exc).__name__
        return None

    async def keys_required(self) -> bool:
        return (await self._current_keys()).required

    async def authenticate(self, authorization: str | None, level: AuthLevel) -> Caller:
        """The caller of a route at ``level``; raises the 401/403 errors of the API."""
        if level == "public":
            return ANONYMOUS
        return authenticate(await self._current_keys(), authorization, level)

    def open_session(self, caller: Caller, default: int | None) -> SessionSlot:
        """Counts one realtime session of the caller's key, or raises the vendor's 429 when the
        key already holds as many as it may: its own ``sessions`` limit, else ``default``
        (0 or None: no limit). Counted per server process; a caller without a key is not."""
        key = caller.key
        if key is None:
            return SessionSlot(self.sessions, None)
        limit = key.sessions if key.sessions is not None else default
        held = self.sessions.get(key.id, 0)
        if limit and held >= limit:
            raise TooManySessions(limit)
        self.sessions[key.id] = held + 1
        return SessionSlot(self.sessions, key.id)

    async def admit(self, caller: Caller, job: GenerationJob) -> Ticket:
        """Reserves the request's estimated tokens and opens its ledger row, or raises the
        vendor's 403/404/429."""
        return await admit(self, caller, job)


class SessionSlot:
    """One open realtime session of a key; ``release`` gives the slot back (once)."""

    def __init__(self, counts: dict[str, int], key_id: str | None) -> None:
        self._counts = counts
        self._key_id = key_id

    def release(self) -> None:
        key_id, self._key_id = self._key_id, None
        if key_id is not None:
            left = self._counts.get(key_id, 1) - 1
            if left > 0:
                self._counts[key_id] = left
            else:
                self._counts.pop(key_id, None)

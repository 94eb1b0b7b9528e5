"""The usage ledger: one row per admitted request, on the books once, however it ends.

A row is inserted as ``running`` once the request has run a moment, brought up to date with
the usage so far every few seconds while it runs, and completed when its stream ends (finished,
failed or abandoned by the client). A server killed mid-stream leaves its in-flight requests on
the books with what they had used: the next server to start (or a live replica, within a
minute) sees that the row's owner is gone (``owners.py``) and closes them as ``interrupted``,
counting that usage to their keys; ``sweep`` closes rows no owner can be told for once they are
older than any stream lives. The request id is the primary key and a completion only touches a
``running`` row, so nothing is written twice.

Writes leave the request path: a writer thread batches them, one transaction (on PostgreSQL
one statement) per batch; a request that ends within a second of its start is written once,
complete, with no ``running`` row first (see ``LedgerWriter``).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from omniserve.accounts.keys import now_ms
from omniserve.accounts.schema import ledger
from omniserve.job import TOKEN_KINDS, Usage

log = logging.getLogger("omniserve.ledger")


@dataclass(frozen=True)
class Started:
    request_id: str
    key_id: str | None
    model: str
    started_ms: int


@dataclass(frozen=True)
class Outcome:
    """How a request ended and what it used."""

    request_id: str
    key_id: str | None
    status: str  # ok | error | disconnected | running
    error_code: str | None = None
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    audio_seconds: float = 0.0  # speech sent
    input_audio_seconds: float = 0.0  # audio heard: input clips and videos' soundtracks
    ttft_ms: int | None = None
    ttfa_ms: int | None = None
    duration_ms: int | None = None
    cost: float = 0.0

    @property
    def tokens(self) -> int:
        return self.usage.total

    def columns(self) -> dict[str, Any]:
        """The row's columns but the request and key ids, in ``OUTCOME_COLUMNS`` order."""
        return {
            "status": self.status,
            "error_code": self.error_code,
            "finish_reason": self.finish_reason,
            **self.usage.by_kind(),
            "audio_seconds": self.audio_seconds,
            "input_audio_seconds": self.input_audio_seconds,
            "ttft_ms": self.ttft_ms,
            "ttfa_ms": self.ttfa_ms,
            "duration_ms": self.duration_ms,
            "cost": self.cost,
        }


_OUTCOME_FIELDS = tuple(Outcome("", None, "").columns())
_TOKEN_FIELDS: tuple[str, ...] = TOKEN_KINDS


RUNNING = "running"  # an Outcome with this status is the usage so far of a running request


class _Stop:
    pass


def _row(start: Started, outcome: Outcome, owner: str | None) -> dict[str, Any]:
    return {
        "request_id": start.request_id,
        "key_id": start.key_id,
        "model": start.model,
        "started_ms": start.started_ms,
        **outcome.columns(),
        "owner": owner,
    }


class LedgerWriter:
    """Batches ledger writes on one thread; ``close`` writes everything still queued.

    Queuing costs the request path one ``deque.append``: the thread is woken only when it is
    idle (not once per entry), then sleeps ``interval_s`` to gather a batch, so a busy server
    pays one wake-up and one transaction per batch, not per request.

    A start is held ``hold_s`` before its ``running`` row is written: a request that ends
    within that time (most do) is written once, complete, instead of inserted and then
    updated. A longer one is on the books as ``running`` from then on, and ``progress`` keeps
    its usage so far up to date. ``flush`` and ``close`` write held starts at once.

    ``owner`` names this process on every row it writes (see ``owners.py``).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        owner: str | None = None,
        interval_s: float = 0.05,
        hold_s: float = 1.0,
        max_batch: int = 1000,
        max_pending: int = 200_000,
    ) -> None:
        self.engine = engine
        self.owner = owner
        self.max_pending = max_pending
        self.on_drop: Callable[[int], None] | None = None  # told of rows given up
        self._closing = False
        self.interval_s = interval_s
        self.hold_s = hold_s
        self.max_batch = max_batch
        self._items: collections.deque[object] = collections.deque()
        self._wake = threading.Event()
        self._idle = False
        self._conn: sa.Connection | None = None
        # Starts not written yet, oldest first: request id -> (monotonic time, start, the
        # usage so far when some was told).
        self._held: dict[str, tuple[float, Started, Outcome | None]] = {}
        self._thread = threading.Thread(target=self._run, name="omniserve-ledger", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> None:
        if len(self._items) >= self.max_pending and isinstance(item, Started | Outcome):
            # The database has been away for long: keep memory bounded.
            self._dropped(1)
            return
        self._items.append(item)
        if self._idle:
            self._wake.set()

    def started(self, entry: Started) -> None:
        self._put(entry)

    def finished(self, outcome: Outcome) -> None:
        self._put(outcome)

    def progress(self, so_far: Outcome) -> None:
        """A running request's usage so far (``status`` ``running``); a later one replaces it,
        its completion overrides it."""
        assert so_far.status == RUNNING
        self._put(so_far)

    def depth(self) -> int:
        """Entries not written yet (queued, and starts held)."""
        return len(self._items) + len(self._held)

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until everything queued so far is written, held starts included."""
        if not self._thread.is_alive():
            return not self._items
        marker = threading.Event()
        self._put(marker)
        return marker.wait(timeout)

    def close(self) -> None:
        self._closing = True
        self._put(_Stop())
        self._thread.join(timeout=30)

    def _run(self) -> None:
        stop = False
        while not stop:
            self._idle = True
            if not self._items:  # checked after raising the flag: a put sees it or is seen
                timeout = None
                if self._held:
                    oldest = next(iter(self._held.values()))[0]
                    timeout = max(0.0, oldest + self.hold_s - time.monotonic())
                self._wake.wait(timeout)
            self._idle = False
            self._wake.clear()
            if self._items:
                time.sleep(self.interval_s)  # gather a batch
            while True:
                batch: list[object] = []
                markers: list[threading.Event] = []
                while self._items and len(batch) < self.max_batch:
                    item = self._items.popleft()
                    if isinstance(item, threading.Event):
                        markers.append(item)
                        break  # write what came before the marker, then signal it
                    if isinstance(item, _Stop):
                        stop = True
                        continue
                    batch.append(item)
                try:
                    self._write(batch, everything=bool(markers) or stop)
                except Exception:  # a bug must not stop the books for good
                    log.exception("ledger: %d entries could not be written", len(batch))
                for marker in markers:
                    marker.set()
                if not self._items:
                    break
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()

    def _connection(self) -> sa.Connection:
        """The writer's own connection, held between batches (no pool checkout, no ping, per
        batch), in autocommit: each batch is one statement and so one transaction."""
        if self._conn is None:
            self._conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.invalidate()
                self._conn.close()
            self._conn = None

    def _write(self, batch: list[object], *, everything: bool = False) -> None:
        """Takes a batch in: finished requests whose start is held become one complete row,
        other completions update their ``running`` row, and starts held ``hold_s`` (all of
        them with ``everything``) are written as ``running``."""
        now = time.monotonic()
        finished: dict[str, Outcome] = {}
        so_far: dict[str, Outcome] = {}
        for item in batch:
            if isinstance(item, Started):
                self._held.setdefault(item.request_id, (now, item, None))
            elif isinstance(item, Outcome):
                if item.status == RUNNING:
                    so_far[item.request_id] = item  # the latest counts
                else:
                    # The first completion of a request counts; any later one never.
                    finished.setdefault(item.request_id, item)
        inserts: list[dict[str, Any]] = []
        updates: list[Outcome] = []
        for rid, outcome in finished.items():
            held = self._held.pop(rid, None)
            if held is None:
                updates.append(outcome)
            else:
                inserts.append(_row(held[1], outcome, self.owner))
        for rid, outcome in so_far.items():
            if rid in finished:
                continue
            if rid in self._held:
                at, start, _ = self._held[rid]
                self._held[rid] = (at, start, outcome)
            else:
                updates.append(outcome)
        while self._held:
            rid, (at, start, known) = next(iter(self._held.items()))
            if not everything and at + self.hold_s > now:
                break
            del self._held[rid]
            inserts.append(_row(start, known or Outcome(rid, start.key_id, RUNNING), self.owner))
        if not inserts and not updates:
            return
        # Safe to repeat after an error whose outcome is unknown: a start already on the
        # books is not inserted again, a row completed already is not completed again, and
        # only rows that land count toward a key's used tokens. While the database is down
        # the batch is retried, backing off to every 5 s; new entries wait in the queue,
        # up to ``max_pending``.
        attempt = 0
        while True:
            try:
                if self.engine.dialect.name == "postgresql":
                    _store_postgres(self._connection(), inserts, updates)
                else:
                    with self.engine.begin() as conn:
                        _store_sqlite(conn, inserts, updates)
                if attempt:
                    log.warning("ledger: written again after %d failed attempts", attempt)
                return
            except SQLAlchemyError as exc:
                attempt += 1
                self._drop_connection()
                if attempt == 1 or attempt % 12 == 0:
                    reason = str(getattr(exc, "orig", None) or exc).strip()
                    log.warning(
                        "ledger write failed (attempt %d, %d rows waiting): %s",
                        attempt,
                        len(inserts) + len(updates) + self.depth(),
                        reason.splitlines()[0] if reason else type(exc).__name__,
                    )
                if self._closing and attempt >= 3:
                    self._dropped(len(inserts) + len(updates))
                    return
                time.sleep(min(5.0, 0.1 * 2 ** (attempt - 1)))

    def _dropped(self, n: int) -> None:
        log.error("ledger: %d rows could not be written and are lost", n)
        if self.on_drop is not None:
            self.on_drop(n)


# SQLite: plain executemany of fixed statements (the rows are bound by the sqlite3 module
# directly; compiling and binding through SQLAlchemy costs ~40 us a row).
_SQLITE_INSERT = (
    f"INSERT OR IGNORE INTO ledger ({', '.join(c.name for c in ledger.c)}) "
    f"VALUES ({', '.join('?' for _ in ledger.c)})"
)
_SQLITE_COMPLETE = (
    f"UPDATE ledger SET {', '.join(f'{n} = ?' for n in _OUTCOME_FIELDS)} "
    "WHERE request_id = ? AND status = 'running'"
)


def _store_sqlite(
    conn: sa.Connection, inserts: list[dict[str, Any]], updates: list[Outcome]
) -> tuple[int, int]:
    """Writes a batch in the caller's transaction; returns (rows inserted, rows completed)."""
    landed: list[dict[str, Any]] = []  # rows that reached a final status in this batch
    inserted = 0
    if inserts:
        columns = [c.name for c in ledger.c]
        inserted = conn.exec_driver_sql(
            _SQLITE_INSERT, [tuple(r[n] for n in columns) for r in inserts]
        ).rowcount
        finished = [r for r in inserts if r["status"] != RUNNING]
        if inserted == len(inserts):
            landed += finished
        elif finished:  # some ids were already on the books: which of these are new?
            query = sa.select(ledger.c.request_id, ledger.c.started_ms).where(
                ledger.c.request_id.in_([r["request_id"] for r in finished])
            )
            stored = dict(conn.execute(query).tuples().all())
            landed += [r for r in finished if stored.get(r["request_id"]) == r["started_ms"]]
    completing: list[Outcome] = []
    if updates:
        running: set[str] = set()
        ids = [o.request_id for o in updates]
        for start in range(0, len(ids), 500):
            query = (
                sa.select(ledger.c.request_id)
                .where(ledger.c.request_id.in_(ids[start : start + 500]))
                .where(ledger.c.status == "running")
            )
            running.update(conn.execute(query).scalars())
        completing = [o for o in updates if o.request_id in running]
        if completing:
            conn.exec_driver_sql(
                _SQLITE_COMPLETE,
                [(*o.columns().values(), o.request_id) for o in completing],
            )
    _count_used(
        conn,
        [(r["key_id"], _row_tokens(r)) for r in landed]
        + [(o.key_id, o.tokens) for o in completing if o.status != RUNNING],
    )
    return inserted, len(completing)


def _count_used(conn: sa.Connection, landed: list[tuple[str | None, int]]) -> None:
    """Adds the tokens of rows that reached a final status to their keys' used tokens."""
    usage: dict[str, int] = {}
    for key_id, tokens in landed:
        if key_id is not None and tokens:
            usage[key_id] = usage.get(key_id, 0) + tokens
    if usage:
        conn.execute(
            sa.text("UPDATE api_keys SET used_tokens = used_tokens + :t WHERE id = :k"),
            [{"t": t, "k": k} for k, t in usage.items()],
        )


def _row_tokens(row: dict[str, Any]) -> int:
    return sum(row[n] for n in _TOKEN_FIELDS)


_PG_TYPES = {sa.String: "text", sa.BigInteger: "bigint", sa.Integer: "integer", sa.Float: "float8"}


def _pg_array(column: sa.Column[Any], prefix: str) -> str:
    for kind, name in _PG_TYPES.items():
        if isinstance(column.type, kind):
            return f"%({prefix}{column.name})s::{name}[]"
    raise TypeError(f"no array type for {column.name}")  # pragma: no cover - schema is fixed


_TOKENS = " + ".join(_TOKEN_FIELDS)

# PostgreSQL: a whole batch is one statement (its own transaction) and one round trip, however
# many rows: the rows travel as arrays; the new rows, the completions and the keys' used tokens
# are written by data-modifying CTEs that see one snapshot. (Statement per row: a round trip
# and ~0.3 ms of client CPU each.)
_PG_BATCH = f"""
WITH ins AS (
    INSERT INTO ledger ({", ".join(c.name for c in ledger.c)})
    SELECT * FROM unnest({", ".join(_pg_array(c, "i_") for c in ledger.c)})
    ON CONFLICT (request_id) DO NOTHING
    RETURNING key_id, status, {_TOKENS} AS tokens
), upd AS (
    UPDATE ledger AS l SET {", ".join(f"{n} = d.{n}" for n in _OUTCOME_FIELDS)}
    FROM unnest({", ".join(_pg_array(ledger.c[n], "u_") for n in ("request_id", *_OUTCOME_FIELDS))})
        AS d(request_id, {", ".join(_OUTCOME_FIELDS)})
    WHERE l.request_id = d.request_id AND l.status = 'running'
    RETURNING l.key_id, l.status, {", ".join(f"l.{n}" for n in _TOKENS.split(" + "))}
), used AS (
    SELECT key_id, sum(tokens) AS tokens
    FROM (SELECT * FROM ins UNION ALL SELECT key_id, status, {_TOKENS} FROM upd) AS landed
    WHERE key_id IS NOT NULL AND status <> 'running'
    GROUP BY key_id
), bumped AS (
    UPDATE api_keys AS k SET used_tokens = k.used_tokens + used.tokens
    FROM used WHERE k.id = used.key_id
    RETURNING k.id
)
SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM upd), (SELECT count(*) FROM bumped)
"""


def _store_postgres(
    conn: sa.Connection, inserts: list[dict[str, Any]], updates: list[Outcome]
) -> tuple[int, int]:
    """Writes a batch in one statement; returns (rows inserted, rows completed)."""
    params = {f"i_{c.name}": [r[c.name] for r in inserts] for c in ledger.c}
    params["u_request_id"] = [o.request_id for o in updates]
    rows = [o.columns() for o in updates]
    for n in _OUTCOME_FIELDS:
        params[f"u_{n}"] = [r[n] for r in rows]
    inserted, completed, _ = conn.exec_driver_sql(_PG_BATCH, params).one()
    return int(inserted), int(completed)


def close_running(
    engine: Engine, *, owners: list[str] | None = None, before_ms: int | None = None
) -> int:
    """Closes ``running`` rows as ``interrupted``, keeping the usage they had reached and
    counting it to their keys: those of ``owners``, or those started before ``before_ms``.
    Returns how many were closed."""
    c = ledger.c
    query = sa.update(ledger).where(c.status == RUNNING)
    if owners is not None:
        query = query.where(c.owner.in_(owners))
    if before_ms is not None:
        query = query.where(c.started_ms < before_ms)
    query = query.values(status="interrupted").returning(c.key_id, *(c[n] for n in _TOKEN_FIELDS))
    with engine.begin() as conn:
        closed = conn.execute(query).all()
        _count_used(conn, [(r[0], sum(r[1:])) for r in closed])
    return len(closed)


def running_owners(engine: Engine) -> list[str]:
    """The owners that have rows ``running``."""
    query = (
        sa.select(ledger.c.owner)
        .where(ledger.c.status == RUNNING)
        .where(ledger.c.owner.is_not(None))
        .distinct()
    )
    with engine.connect() as conn:
        return [str(o) for o in conn.execute(query).scalars()]


def sweep(engine: Engine, *, retention_days: int, stale_after_s: float) -> tuple[int, int]:
    """Closes rows left ``running`` longer than any stream lives as ``interrupted`` and deletes
    rows older than the retention (0: keep forever). Returns (interrupted, deleted)."""
    now = now_ms()
    interrupted = close_running(engine, before_ms=now - int(stale_after_s * 1000))
    deleted = 0
    if retention_days > 0:
        with engine.begin() as conn:
            deleted = conn.execute(
                sa.delete(ledger).where(ledger.c.started_ms < now - retention_days * 86_400_000)
            ).rowcount
    if deleted and engine.dialect.name == "postgresql":
        # Deleted rows leave dead tuples until vacuumed; keep the table and its index compact.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE ledger"))
    return interrupted, deleted

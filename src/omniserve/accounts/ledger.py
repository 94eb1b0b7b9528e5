"""The usage ledger: one row per admitted request, on the books once, however it ends.

A row is inserted as ``running`` when the request is admitted and completed when its stream
ends (finished, failed or abandoned by the client), so a server killed mid-stream leaves its
in-flight requests visible rather than lost; ``sweep`` later marks them ``interrupted``. The
request id is the primary key and a completion only touches a ``running`` row, so nothing is
written twice.

Writes leave the request path: a writer thread batches them into one transaction every few
milliseconds (a start and finish in the same batch become one insert).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from omniserve.accounts.keys import now_ms
from omniserve.accounts.schema import api_keys, ledger

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
    status: str  # ok | error | disconnected
    error_code: str | None = None
    finish_reason: str | None = None
    prompt_text: int = 0
    prompt_image: int = 0
    prompt_audio: int = 0
    prompt_video: int = 0
    completion_text: int = 0
    completion_audio: int = 0
    completion_reasoning: int = 0
    audio_seconds: float = 0.0
    ttft_ms: int | None = None
    ttfa_ms: int | None = None
    duration_ms: int | None = None
    cost: float = 0.0

    @property
    def tokens(self) -> int:
        return (
            self.prompt_text
            + self.prompt_image
            + self.prompt_audio
            + self.prompt_video
            + self.completion_text
            + self.completion_audio
            + self.completion_reasoning
        )

    def columns(self) -> dict[str, Any]:
        values = asdict(self)
        del values["request_id"], values["key_id"]
        return values


_STOP = object()


class LedgerWriter:
    """Batches ledger writes on one thread; ``close`` writes everything still queued."""

    def __init__(self, engine: Engine, *, interval_s: float = 0.02, max_batch: int = 1000) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="omniserve-ledger", daemon=True)
        self._pending = 0
        self._done = threading.Condition()
        self._thread.start()

    def _put(self, item: object) -> None:
        with self._done:
            self._pending += 1
        self._queue.put(item)

    def started(self, entry: Started) -> None:
        self._put(entry)

    def finished(self, outcome: Outcome) -> None:
        self._put(outcome)

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until everything queued so far is written (tests, shutdown)."""
        with self._done:
            return self._done.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            batch = [first]
            # Gather what arrives within the interval, so a burst costs one transaction.
            deadline = time.monotonic() + self.interval_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    if remaining > 0:
                        item = self._queue.get(timeout=remaining)
                    else:
                        item = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(item)
            if any(item is _STOP for item in batch):
                stopping = True
                batch = [item for item in batch if item is not _STOP]
                while True:  # whatever was queued before the stop is written too
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not _STOP:
                        batch.append(item)
            if batch:
                self._write(batch)
            with self._done:
                self._pending -= len(batch)
                self._done.notify_all()

    def _write(self, batch: list[object]) -> None:
        starts: dict[str, Started] = {}
        outcomes: list[Outcome] = []
        for item in batch:
            if isinstance(item, Started):
                starts[item.request_id] = item
            elif isinstance(item, Outcome):
                outcomes.append(item)
        inserts: list[dict[str, Any]] = []
        merged: set[str] = set()
        finished = {o.request_id: o for o in outcomes}
        for rid, start in starts.items():
            row: dict[str, Any] = {
                "request_id": rid,
                "key_id": start.key_id,
                "model": start.model,
                "started_ms": start.started_ms,
                **Outcome(rid, start.key_id, "running").columns(),
            }
            done = finished.get(rid)
            if done is not None:
                row.update(done.columns())
                merged.add(rid)
            inserts.append(row)
        updates = [o for o in outcomes if o.request_id not in merged]
        for attempt in range(5):
            try:
                with self.engine.begin() as conn:
                    # Only completions that land count toward a key's used tokens.
                    usage: dict[str, int] = {}
                    counted = [finished[rid] for rid in merged]
                    if inserts:
                        conn.execute(sa.insert(ledger), inserts)
                    for o in updates:
                        result = conn.execute(
                            sa.update(ledger)
                            .where(ledger.c.request_id == o.request_id)
                            .where(ledger.c.status == "running")
                            .values(**o.columns())
                        )
                        if result.rowcount == 1:
                            counted.append(o)
                    for o in counted:
                        if o.key_id is not None and o.tokens:
                            usage[o.key_id] = usage.get(o.key_id, 0) + o.tokens
                    for key_id, tokens in usage.items():
                        conn.execute(
                            sa.update(api_keys)
                            .where(api_keys.c.id == key_id)
                            .values(used_tokens=api_keys.c.used_tokens + tokens)
                        )
                return
            except SQLAlchemyError as exc:
                log.warning("ledger write failed (attempt %d): %s", attempt + 1, exc)
                time.sleep(0.1 * 2**attempt)
        log.error("ledger: %d entries could not be written", len(batch))


def sweep(engine: Engine, *, retention_days: int, stale_after_s: float) -> tuple[int, int]:
    """Marks rows left ``running`` longer than any stream lives as ``interrupted`` and deletes
    rows older than the retention (0: keep forever). Returns (interrupted, deleted)."""
    now = now_ms()
    with engine.begin() as conn:
        interrupted = conn.execute(
            sa.update(ledger)
            .where(ledger.c.status == "running")
            .where(ledger.c.started_ms < now - int(stale_after_s * 1000))
            .values(status="interrupted")
        ).rowcount
        deleted = 0
        if retention_days > 0:
            deleted = conn.execute(
                sa.delete(ledger).where(ledger.c.started_ms < now - retention_days * 86_400_000)
            ).rowcount
    if deleted and engine.dialect.name == "postgresql":
        # Deleted rows leave dead tuples until vacuumed; keep the table and its index compact.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE ledger"))
    return interrupted, deleted

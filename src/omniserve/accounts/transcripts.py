"""What each streamed answer's audio said, by its audio id (``audio_<request id>``).

A client that keeps history the OpenAI way sends the previous answer back as
``{"role": "assistant", "audio": {"id": "audio_…"}}``; the id's transcript takes its place in
the prompt. Transcripts live in the accounts database, so they outlast a restart and every
replica sees them, for ``accounts.audio_history_s`` after the answer; the most recent are also
kept in memory, so the next turn finds its answer even before the row is written. An id is
found only for the key that made it (or, on a server without keys, for any caller).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from omniserve.accounts.schema import audio_transcripts as table

RECENT = 10_000  # transcripts kept in memory too


def now_ms() -> int:
    return int(time.time() * 1000)


class TranscriptStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._recent: OrderedDict[str, tuple[str | None, str, int]] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, audio_id: str, key_id: str | None, transcript: str, expires_ms: int) -> None:
        """In memory, at once (the next turn may come before the row is written)."""
        with self._lock:
            self._recent[audio_id] = (key_id, transcript, expires_ms)
            self._recent.move_to_end(audio_id)
            while len(self._recent) > RECENT:
                self._recent.popitem(last=False)

    def write(self, audio_id: str, key_id: str | None, transcript: str, expires_ms: int) -> None:
        """In the database (blocking)."""
        row = {
            "audio_id": audio_id,
            "key_id": key_id,
            "transcript": transcript,
            "expires_ms": expires_ms,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(table).values(**row))
        except IntegrityError:  # the same answer twice (a replayed id): the first one stays
            pass

    def find(self, ids: Iterable[str], key_id: str | None) -> dict[str, str]:
        """The transcripts of ``ids`` that ``key_id`` may use and that have not expired
        (blocking: memory first, then the database)."""
        wanted = set(ids)
        now = now_ms()
        found: dict[str, str] = {}
        with self._lock:
            for audio_id in wanted:
                hit = self._recent.get(audio_id)
                if hit is not None and hit[2] > now and _may_use(hit[0], key_id):
                    found[audio_id] = hit[1]
        missing = wanted - found.keys()
        if missing:
            query = select(table.c.audio_id, table.c.key_id, table.c.transcript).where(
                table.c.audio_id.in_(sorted(missing)), table.c.expires_ms > now
            )
            with self.engine.connect() as conn:
                for audio_id, owner, transcript in conn.execute(query):
                    if _may_use(owner, key_id):
                        found[audio_id] = transcript
        return found

    def sweep(self) -> int:
        """Deletes expired transcripts; returns how many rows."""
        now = now_ms()
        with self._lock:
            for audio_id in [a for a, (_, _, e) in self._recent.items() if e <= now]:
                del self._recent[audio_id]
        with self.engine.begin() as conn:
            return conn.execute(delete(table).where(table.c.expires_ms <= now)).rowcount or 0


def _may_use(owner: str | None, key_id: str | None) -> bool:
    return owner is None or owner == key_id

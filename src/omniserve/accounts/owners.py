"""Which server processes are alive: each holds a lock that is let go of when it dies.

Every ledger row names the process that wrote it (its *owner*). A process killed mid-stream
(``kill -9``, the OOM killer, a power cut) cannot complete its ``running`` rows, so another
process closes them as ``interrupted`` once it can tell the owner is gone. It tells by a lock
the owner holds for as long as it lives and that nothing but its death lets go of:

- SQLite (one machine): an exclusive ``flock`` on ``<database>.owners/<owner>.lock``; the
  kernel drops it when the process ends, however it ends, also across containers that share
  the volume.
- PostgreSQL (any number of machines): a session advisory lock held on a connection of its
  own; the server drops it when that session ends (the process died, or its connection did).

Where neither can tell (an in-memory database, a platform without ``flock``), rows are left to
the age-based sweep (``accounts.stale_after_s``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import socket
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("omniserve.ledger")


def new_owner() -> str:
    """A name for this process, unique across machines and restarts: host, pid, random."""
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in ".-")[:32]
    return f"{host or 'host'}:{os.getpid()}:{secrets.token_hex(6)}"


def _digest(owner: str) -> bytes:
    return hashlib.sha256(owner.encode()).digest()


class Presence:
    """This process's lock, held from ``hold`` to ``release``; ``gone`` tells of others."""

    def __init__(self, engine: Engine, owner: str) -> None:
        self.engine = engine
        self.owner = owner
        self._file: int | None = None
        self._conn: sa.Connection | None = None
        self._dir: Path | None = None
        self.kind = "none"
        if engine.dialect.name == "postgresql":
            self.kind = "postgresql"
        elif engine.dialect.name == "sqlite" and fcntl is not None:
            database = engine.url.database
            if database and database != ":memory:":
                path = Path(database).expanduser()
                self._dir = path.with_name(path.name + ".owners")
                self.kind = "flock"

    @property
    def tells(self) -> bool:
        """Whether this database can tell a dead owner from a live one."""
        return self.kind != "none"

    def hold(self) -> bool:
        """Takes (or re-takes, after a lost connection) this process's lock; True if held."""
        if self.kind == "flock":
            if self._file is None:
                assert self._dir is not None
                self._dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(self._path(self.owner), os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    raise
                self._file = fd
            return True
        if self.kind == "postgresql":
            if self._conn is not None:
                try:
                    self._conn.exec_driver_sql("SELECT 1")
                    return True
                except SQLAlchemyError:  # the session (and so the lock) is gone: take it again
                    self._close_conn()
            try:
                conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": self._key(self.owner)})
            except SQLAlchemyError as exc:
                log.warning("ledger: could not take this server's owner lock: %s", exc)
                return False
            self._conn = conn
            return True
        return False

    def gone(self, owners: list[str]) -> list[str]:
        """Those of ``owners`` whose process has certainly ended (never this one)."""
        others = [o for o in owners if o != self.owner]
        if not others or not self.tells:
            return []
        if self.kind == "flock":
            return [o for o in others if self._file_free(o)]
        dead: list[str] = []
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for owner in others:
                key = self._key(owner)
                if conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    dead.append(owner)
        return dead

    def forget(self, owner: str) -> None:
        """Removes a dead owner's lock file once its rows are closed."""
        if self.kind == "flock" and owner != self.owner:
            with contextlib.suppress(OSError):
                self._path(owner).unlink()

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._path(self.owner).unlink()
            os.close(self._file)
            self._file = None
        self._close_conn()

    def _close_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()
            self._conn = None

    def _path(self, owner: str) -> Path:
        assert self._dir is not None
        return self._dir / f"{_digest(owner).hex()[:32]}.lock"

    def _file_free(self, owner: str) -> bool:
        """Whether nobody holds ``owner``'s lock file (a missing file: nobody does)."""
        try:
            fd = os.open(self._path(owner), os.O_RDWR)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # held: the owner lives
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return True
        finally:
            os.close(fd)

    @staticmethod
    def _key(owner: str) -> int:
        """The advisory lock's 64-bit key (signed, as PostgreSQL takes it)."""
        return int.from_bytes(_digest(owner)[:8], "big", signed=True)

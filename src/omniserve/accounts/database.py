"""The accounts database: SQLite (WAL) in the data directory by default, PostgreSQL by URL.

Every server and CLI command opens it through ``open_database``, which brings the schema up to
date with the packaged Alembic migrations first.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from omniserve.errors import StartupError

log = logging.getLogger("omniserve.accounts")

SQLITE_FILE = "omniserve.db"


class DatabaseError(StartupError):
    """The accounts database cannot be used; the message says why in one line."""


def database_url(url: str | None, data_dir: Path) -> str:
    """``url``, or the SQLite file in ``data_dir``."""
    if url:
        return url
    return f"sqlite:///{data_dir / SQLITE_FILE}"


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers never wait for the ledger writer; NORMAL sync is durable at checkpoints
    # and never corrupts, which is what a usage ledger needs.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def create_engine(url: str) -> Engine:
    """An engine for ``url``; the SQLite file's directory is created when missing."""
    try:
        parsed = sa.make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(f"invalid database URL {url!r}") from exc
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        if backend == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(
                parsed, connect_args={"check_same_thread": False, "timeout": 10}
            )
            event.listen(engine, "connect", _sqlite_pragmas)
        elif backend == "postgresql":
            engine = sa.create_engine(
                parsed, pool_size=8, max_overflow=8, pool_pre_ping=True, pool_recycle=1800
            )
        else:
            raise DatabaseError(f"unsupported database {backend!r}: use sqlite or postgresql")
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise DatabaseError(
            f"the driver for {redact(url)} is not installed: pip install 'omniserve[postgres]'"
        ) from exc
    return engine


def migrate(engine: Engine) -> None:
    """Brings the schema to the newest revision (idempotent; safe with several replicas)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "omniserve.accounts:migrations")
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_database(url: str) -> Engine:
    """A migrated engine, or ``DatabaseError`` saying what is wrong."""
    engine = create_engine(url)
    try:
        migrate(engine)
    except OperationalError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseError(f"cannot open the database {redact(url)}: {reason}") from exc
    return engine

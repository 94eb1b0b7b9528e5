"""Telling a dead server process from a live one, by the lock it holds while it lives: on
SQLite and on PostgreSQL, with real processes killed as ``kill -9`` kills them."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from omniserve.accounts.database import open_database
from omniserve.accounts.owners import Presence, new_owner

HOLDER = """
import sys, time
from omniserve.accounts.database import open_database
from omniserve.accounts.owners import Presence
presence = Presence(open_database(sys.argv[1]), sys.argv[2])
assert presence.hold()
print("held", flush=True)
time.sleep(120)
"""


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


@contextmanager
def holder(engine: Engine, owner: str) -> Iterator[subprocess.Popen[bytes]]:
    """Another process that holds ``owner``'s lock until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, _url(engine), owner], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"held"
        yield proc
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _gone_within(presence: Presence, owner: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if presence.gone([owner]) == [owner]:
            return True
        time.sleep(0.05)
    return False


def test_a_live_owner_is_alive_and_a_killed_one_is_gone(engine: Engine) -> None:
    me = Presence(engine, new_owner())
    assert me.tells and me.hold()
    other = new_owner()
    try:
        with holder(engine, other) as proc:
            assert me.gone([other]) == []
            proc.kill()  # SIGKILL: nothing of it runs to let go of anything
            proc.wait(10)
            assert _gone_within(me, other, 10)
        # Never itself, even when asked.
        assert me.gone([me.owner]) == []
    finally:
        me.release()


def test_owner_names_are_unique_and_fit_the_column() -> None:
    names = {new_owner() for _ in range(100)}
    assert len(names) == 100
    assert all(len(n) <= 64 for n in names)


def test_sqlite_owner_without_a_lock_file_is_gone(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'accounts.db'}")
    me = Presence(engine, "me")
    assert me.hold()
    assert me.gone(["never-started", "me"]) == ["never-started"]
    assert (tmp_path / "accounts.db.owners").is_dir()
    me.release()
    assert list((tmp_path / "accounts.db.owners").iterdir()) == []  # a clean stop leaves none
    engine.dispose()


def test_a_database_in_memory_tells_nothing() -> None:
    engine = sa.create_engine("sqlite://")
    presence = Presence(engine, "me")
    assert not presence.tells
    assert not presence.hold()
    assert presence.gone(["someone"]) == []


def test_postgres_lock_is_taken_again_after_its_session_is_lost(fresh_postgres_url: str) -> None:
    engine = open_database(fresh_postgres_url)
    me = Presence(engine, "me")
    checker = Presence(engine, "checker")
    try:
        for _ in range(2):
            assert me.hold()
            assert checker.gone(["me"]) == []
            # The server ends the session that holds the lock (a restart, a network cut).
            with engine.connect() as conn:
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_locks "
                        "WHERE locktype = 'advisory' AND pid <> pg_backend_pid()"
                    )
                )
            assert _gone_within(checker, "me", 10)
    finally:
        me.release()
        engine.dispose()

"""The migrations build exactly the schema the code uses, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from omniserve.accounts.database import (
    DatabaseError,
    database_url,
    open_database,
    redact,
)
from omniserve.accounts.schema import metadata


def _diff(url: str) -> list[object]:
    engine = open_database(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, metadata))
    finally:
        engine.dispose()


def test_sqlite_migration_matches_the_schema(tmp_path: Path) -> None:
    assert _diff(database_url(None, tmp_path)) == []


def test_postgres_migration_matches_the_schema(fresh_postgres_url: str) -> None:
    assert _diff(fresh_postgres_url) == []


def test_migrating_twice_is_harmless(tmp_path: Path) -> None:
    url = database_url(None, tmp_path / "nested" / "dir")
    for _ in range(2):
        engine = open_database(url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version FROM key_state")).scalar_one() == 0
            assert conn.execute(sa.text("PRAGMA journal_mode")).scalar_one() == "wal"
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_ledger_from_the_first_revision_keeps_its_rows(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A database made by an earlier release upgrades in place; its rows have no owner."""
    from alembic import command
    from alembic.config import Config

    from omniserve.accounts.database import create_engine

    if backend == "sqlite":
        url = database_url(None, tmp_path)
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    engine = create_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", "omniserve.accounts:migrations")
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    zeros = ", ".join(["0"] * 8)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO ledger (request_id, key_id, started_ms, model, status, prompt_text, "
                "prompt_image, prompt_audio, prompt_video, completion_text, completion_audio, "
                f"completion_reasoning, audio_seconds, cost) VALUES ('old', NULL, 1, 'm', "
                f"'running', {zeros}, 0)"
            )
        )
    engine.dispose()
    engine = open_database(url)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT status, owner FROM ledger")).one()
    assert tuple(row) == ("running", None)
    engine.dispose()
    assert _diff(url) == []


def test_default_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    assert database_url(None, tmp_path) == f"sqlite:///{tmp_path}/omniserve.db"
    assert database_url("postgresql://x/y", tmp_path) == "postgresql://x/y"


def test_unreachable_postgres_is_one_clear_error() -> None:
    url = "postgresql://omni:secret@127.0.0.1:1/none"
    with pytest.raises(DatabaseError) as info:
        open_database(url)
    message = str(info.value)
    assert "cannot open the database" in message
    assert "secret" not in message and "***" in message


def test_unsupported_and_invalid_urls() -> None:
    with pytest.raises(DatabaseError, match="unsupported database 'mysql'"):
        open_database("mysql://u@h/db")
    with pytest.raises(DatabaseError, match="invalid database URL"):
        open_database("not a url")
    assert redact("not a url") == "<invalid URL>"

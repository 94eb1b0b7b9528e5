"""The accounts database, once on SQLite and once on PostgreSQL, for every test that asks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from omniserve.accounts.database import database_url, open_database


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = database_url(None, tmp_path)
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    e = open_database(url)
    yield e
    e.dispose()

"""Shared fixtures: one real server, PostgreSQL and Redis for the whole session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest

import dbservers
from helpers import LiveServer, live_server

# Servers and CLI runs that are not given a data directory keep their database here, never in
# the user's own data directory.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="omniserve-data-")


@pytest.fixture(scope="session")
def server() -> Iterator[LiveServer]:
    with live_server() as s:
        yield s


def _started(server: Callable[[], AbstractContextManager[str]]) -> Iterator[str]:
    try:
        with server() as url:
            yield url
    except dbservers.ServerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database URL (postgresql+psycopg://…), private unless the environment
    names one."""
    if url := os.environ.get(dbservers.POSTGRES_ENV):
        yield url
    else:
        yield from _started(dbservers.postgres_server)


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A new, empty database on the session's PostgreSQL, dropped after the test."""
    url = dbservers.create_database(postgres_url)
    yield url
    dbservers.drop_database(postgres_url, url)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis URL (redis://…), private unless the environment names one."""
    if url := os.environ.get(dbservers.REDIS_ENV):
        yield url
    else:
        yield from _started(dbservers.redis_server)


@pytest.fixture
def fresh_redis_url(redis_url: str) -> str:
    """An emptied database on the session's Redis, other than ``redis_url``'s own."""
    return dbservers.fresh_redis_db(redis_url)

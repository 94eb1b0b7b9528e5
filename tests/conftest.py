"""Shared fixtures: one real server for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers import LiveServer, live_server


@pytest.fixture(scope="session")
def server() -> Iterator[LiveServer]:
    with live_server() as s:
        yield s

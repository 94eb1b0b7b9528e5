"""pytest fixtures for apps built on the Qwen-Omni API (docs/testing.md).

``omniserve_server``: one server for the whole test session (the emulator, no pacing).
``omniserve``: the same server for one test, its rules cleared when the test ends, so each
test sets the rules it needs with ``omniserve.set_rules([...])``.

The plugin loads with the package (entry point ``pytest11``) and imports the server only when
a test asks for a fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from omniserve.testing import OmniServer


@pytest.fixture(scope="session")
def omniserve_server() -> Iterator[OmniServer]:
    """A server for the session, on a free loopback port."""
    from omniserve.testing import serve

    with serve() as server:
        yield server


@pytest.fixture
def omniserve(omniserve_server: OmniServer) -> Iterator[OmniServer]:
    """The session's server for one test; the rules it sets are cleared afterwards."""
    omniserve_server.set_rules(None)
    try:
        yield omniserve_server
    finally:
        omniserve_server.set_rules(None)

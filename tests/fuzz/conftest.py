"""Fuzzing tests count the requests they send; the counts are printed after the run."""

from __future__ import annotations

from collections import Counter

import pytest

TALLY = pytest.StashKey[Counter[str]]()


@pytest.fixture(scope="session")
def tally(request: pytest.FixtureRequest) -> Counter[str]:
    """Counts per fuzz target, ``<target>: <what>``; every target counts ``<target>: requests``
    (each request sent) besides what it likes (statuses, operations)."""
    return request.config.stash.setdefault(TALLY, Counter())


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    counts = config.stash.get(TALLY, None)
    if not counts:
        return
    terminalreporter.write_sep("-", "fuzz requests sent")
    for name, n in sorted(counts.items()):
        terminalreporter.write_line(f"{name}: {n}")
    sent = sum(n for name, n in counts.items() if name.endswith(": requests"))
    terminalreporter.write_line(f"requests sent in all: {sent}")

"""Decode prices from headers, and the budgets they are checked against."""

from __future__ import annotations

import threading
import time

import pytest

from omniserve.errors import InvalidMedia
from omniserve.media.budget import (
    MB,
    PER_DECODE,
    DecodeBudget,
    RequestBudget,
    check_decode,
    give_back_memory,
    image_cost,
)


def test_an_image_costs_what_its_mode_expands_to() -> None:
    side = 8000
    assert image_cost(side, side, "L", transparent=False) < image_cost(
        side, side, "RGB", transparent=False
    )
    # Transparency goes through RGBA whatever the stored mode: a palette PNG of a few KB
    # costs as much as a true-colour one with alpha.
    assert image_cost(side, side, "P", transparent=True) == image_cost(
        side, side, "RGBA", transparent=True
    )
    assert image_cost(side, side, "LA", transparent=True) > image_cost(
        side, side, "RGBA", transparent=True
    )
    assert image_cost(side, side, "I;16", transparent=False) > image_cost(
        side, side, "L", transparent=False
    )


def test_one_decode_over_the_bound_is_refused() -> None:
    check_decode(PER_DECODE, "this")
    with pytest.raises(InvalidMedia, match="more than the 400 MB one decode may use"):
        check_decode(PER_DECODE + 1, "this image")


def test_a_requests_budget_is_spent_then_refuses() -> None:
    budget = RequestBudget(100 * MB)
    budget.spend(60 * MB, "a")
    budget.spend(40 * MB, "b")
    with pytest.raises(InvalidMedia, match="past 100 MB of decoding memory"):
        budget.spend(1, "c")


def test_decodes_wait_for_the_servers_budget() -> None:
    budget = DecodeBudget(100 * MB)
    order: list[str] = []
    first_in = threading.Event()

    def first() -> None:
        with budget.hold(70 * MB, "first"):
            first_in.set()
            time.sleep(0.2)
            order.append("first done")

    def second() -> None:
        first_in.wait()
        with budget.hold(70 * MB, "second"):  # does not fit beside the first
            order.append("second started")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert order == ["first done", "second started"]
    assert budget.free == budget.total


def test_a_decode_larger_than_the_whole_budget_is_refused_at_once() -> None:
    budget = DecodeBudget(100 * MB)
    with (
        pytest.raises(InvalidMedia, match="more than this server decodes at once"),
        budget.hold(101 * MB, "this"),
    ):
        pass


def test_memory_can_be_given_back() -> None:
    give_back_memory()  # glibc's malloc_trim here; a no-op where there is none

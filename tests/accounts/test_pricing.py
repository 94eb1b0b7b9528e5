"""Cost at the catalog's list prices, by the vendor's billing rules."""

from __future__ import annotations

import pytest

from omniserve.accounts.pricing import cost
from omniserve.catalog import Catalog
from omniserve.job import CompletionTokens, PromptTokens, Usage

FLASH = Catalog.default().get("qwen3-omni-flash")


def test_text_in_text_out() -> None:
    usage = Usage(PromptTokens(text=1_000_000), CompletionTokens(text=1_000_000))
    assert cost(FLASH, usage, "cn-beijing") == pytest.approx(1.8 + 6.9)


def test_media_in_makes_text_out_dearer_and_audio_out_makes_text_free() -> None:
    media = Usage(
        PromptTokens(text=1_000_000, image=1_000_000, audio=1_000_000),
        CompletionTokens(text=1_000_000),
    )
    assert cost(FLASH, media, "cn-beijing") == pytest.approx(1.8 + 3.3 + 15.8 + 12.7)
    spoken = Usage(PromptTokens(text=1_000_000), CompletionTokens(text=500_000, audio=1_000_000))
    assert cost(FLASH, spoken, "cn-beijing") == pytest.approx(1.8 + 62.6)


def test_reasoning_costs_what_text_out_costs_and_regions_differ() -> None:
    usage = Usage(PromptTokens(text=0), CompletionTokens(text=0, reasoning=1_000_000))
    assert cost(FLASH, usage, "cn-beijing") == pytest.approx(6.9)
    assert cost(FLASH, usage, "ap-southeast-1") == pytest.approx(1.66)


def test_no_price_no_cost() -> None:
    open_model = Catalog.default().get("qwen2.5-omni-7b")
    usage = Usage(PromptTokens(text=10), CompletionTokens(text=10))
    assert cost(open_model, usage, "cn-beijing") == 0.0
    assert cost(FLASH, usage, "nowhere") == 0.0

"""Engines: one protocol (``base.Engine``), several implementations."""

from __future__ import annotations

from omniserve.config import Settings
from omniserve.engines.base import Engine
from omniserve.protocol.tokens import QwenTokenizer


def make_engine(settings: Settings, tokenizer: QwenTokenizer) -> Engine:
    """The engine the settings name."""
    if settings.engine == "emulator":
        from omniserve.engines.emulator import EmulatorEngine

        return EmulatorEngine(settings.emulator, tokenizer)
    raise ValueError(f"unknown engine {settings.engine!r}")

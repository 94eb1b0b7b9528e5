"""Engines: one protocol (``base.Engine``), several implementations."""

from __future__ import annotations

from omniserve.catalog import Catalog
from omniserve.config import Settings
from omniserve.engines.base import Engine
from omniserve.speech.pcm import chunk_bytes_for
from omniserve.tokens import QwenTokenizer


def make_engine(settings: Settings, tokenizer: QwenTokenizer, catalog: Catalog) -> Engine:
    """The engine the settings name. ``catalog`` is what the deployment may serve."""
    if settings.engine == "emulator":
        from omniserve.engines.emulator import EmulatorEngine

        return EmulatorEngine(settings.emulator, tokenizer)
    if settings.engine == "transformers":
        from omniserve.engines.hf import TransformersEngine

        return TransformersEngine(
            settings.transformers, catalog, chunk_bytes=chunk_bytes_for(settings.speech.chunk_ms)
        )
    if settings.engine == "upstream":
        from omniserve.engines.upstream import UpstreamEngine

        return UpstreamEngine(
            settings.upstream,
            catalog,
            tokenizer,
            chunk_bytes=chunk_bytes_for(settings.speech.chunk_ms),
        )
    raise ValueError(f"unknown engine {settings.engine!r}")

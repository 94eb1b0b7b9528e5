"""Shared fixtures for the transformers engine: tiny checkpoints, built once per session.

Each checkpoint (and each loaded model or processor) is made the first time a test asks for it,
so running one module builds only what that module needs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tiny_omni import build_qwen3_thinking, build_tiny, load_tiny

THINKING = "qwen3-omni-thinking"  # a Qwen3-Omni without a talker, in a "...-Thinking" directory


class _Lazy:
    """name -> value, made on first use by ``make`` and kept."""

    def __init__(self, make: Callable[[str], Any]) -> None:
        self.make = make
        self.values: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self.values:
            self.values[name] = self.make(name)
        return self.values[name]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> _Lazy:
    """family (or THINKING) -> checkpoint directory."""
    root = tmp_path_factory.mktemp("hf-tiny")

    def make(name: str) -> Path:
        if name == THINKING:
            return build_qwen3_thinking(root / "tiny-qwen3-omni-Thinking")
        return build_tiny(root / name, name)

    return _Lazy(make)


@pytest.fixture(scope="session")
def processors(tiny: _Lazy) -> _Lazy:
    """family -> the processor, as the engine's loader builds it."""
    from omniserve.engines.hf.loader import build_processor

    return _Lazy(lambda family: build_processor(tiny[family], family))


@pytest.fixture(scope="session")
def models(tiny: _Lazy) -> _Lazy:
    """family -> the tiny model (float32, CPU, eval), loaded with from_pretrained."""
    return _Lazy(lambda family: load_tiny(tiny[family], family)[0])


@pytest.fixture(scope="session")
def thinking_dir(tiny: _Lazy) -> Path:
    """A tiny Qwen3-Omni without a talker, in a directory named like a Thinking checkpoint."""
    path: Path = tiny[THINKING]
    return path

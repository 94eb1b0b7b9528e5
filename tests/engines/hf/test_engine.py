"""The engine's error mapping: what a client is told when the model fails."""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
import torch
from rich.console import Console

from omniserve.catalog import Catalog
from omniserve.engines.hf.engine import _as_api_error
from omniserve.errors import InternalError, InvalidParameter, ServiceUnavailable
from omniserve.job import GenerationJob, PromptTokens
from tiny_omni import QWEN3

FLASH = Catalog.default().get("qwen3-omni-flash")
JOB = GenerationJob(
    request_id="a68eca3b-c67e-4666-a72f-73c0b4919860",
    model_name=FLASH.name,
    model=FLASH,
    messages=(),
    prompt_tokens=PromptTokens(),
)


# -- _as_api_error ---------------------------------------------------------------------------


def test_out_of_gpu_memory_is_a_503_that_says_so() -> None:
    error = _as_api_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"), JOB)
    assert isinstance(error, ServiceUnavailable)
    assert error.status == 503
    assert "GPU memory" in error.message
    assert "Tried to allocate" not in error.message


def test_any_other_failure_is_a_500_that_hides_the_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="omniserve.transformers"):
        error = _as_api_error(RuntimeError("shape mismatch in layer 7 at /secret/path"), JOB)
    assert isinstance(error, InternalError)
    assert error.status == 500
    assert error.code == "InternalError"
    assert "shape mismatch" not in error.message
    assert "/secret/path" not in error.message
    # The details go to the log, with the request id.
    assert JOB.request_id in caplog.text
    assert any(r.exc_info and "shape mismatch" in str(r.exc_info[1]) for r in caplog.records)


def test_api_errors_pass_through_unchanged() -> None:
    original = InvalidParameter("bad voice", param="audio.voice")
    assert _as_api_error(original, JOB) is original


def test_a_cache_that_cannot_fit_is_refused_with_what_to_change(tiny: Any) -> None:
    from omniserve.config import ServedCheckpoint, TransformersSettings
    from omniserve.engines.hf.checkpoint import CheckpointError, inspect_checkpoint
    from omniserve.engines.hf.engine import TransformersEngine
    from omniserve.engines.hf.loader import load

    settings = TransformersSettings(models=[ServedCheckpoint(checkpoint=str(tiny[QWEN3]))])
    engine = TransformersEngine(settings, Catalog.default(), chunk_bytes=4800)
    loaded = load(
        inspect_checkpoint(settings.models[0]), settings, console=Console(file=io.StringIO())
    )
    engine._check_cache_memory(loaded, 4096, 8192)  # a few MB: fits
    engine.settings = settings.model_copy(update={"memory_headroom": 1e9})
    with pytest.raises(CheckpointError, match=r"max_batch or transformers\.max_seq_len"):
        engine._check_cache_memory(loaded, 4096, 8192)

"""The engine's error mapping: what a client is told when the model fails."""

from __future__ import annotations

import logging

import pytest
import torch

from omniserve.catalog import Catalog
from omniserve.engines.base import GenerationJob, PromptTokens
from omniserve.engines.hf.engine import _as_api_error
from omniserve.errors import InternalError, InvalidParameter, ServiceUnavailable

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

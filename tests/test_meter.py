"""The request meter on its own: what it counts, the times it keeps, its log line."""

from __future__ import annotations

import json
import logging
import time

import pytest

from omniserve.catalog import Catalog
from omniserve.errors import InvalidParameter
from omniserve.events import PCM_BYTES_PER_SECOND, AudioDelta, Finished, ReasoningDelta, TextDelta
from omniserve.job import CompletionTokens, GenerationJob, PromptTokens, Usage
from omniserve.meter import RequestMeter, model_named
from omniserve.metrics import Metrics
from omniserve.tokens import get_tokenizer

MODEL = "qwen3-omni-flash"
TOKENIZER = get_tokenizer()


def job() -> GenerationJob:
    return GenerationJob(
        request_id="r-1",
        model_name=MODEL,
        model=Catalog.default().get(MODEL),
        messages=(),
        prompt_tokens=PromptTokens(text=11, image=7),
    )


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_the_model_a_body_names_even_an_invalid_one() -> None:
    assert model_named(b'{"model": "qwen3-omni-flash", "messages": [') == MODEL
    assert model_named(b"not json") == ""


def test_refusals_and_clients_that_left_are_counted_by_the_model_they_named() -> None:
    metrics = Metrics([MODEL])
    meter = RequestMeter(metrics, TOKENIZER)
    meter.refused(b'{"model":"qwen3-omni-flash"}', InvalidParameter("no"))
    meter.left(b'{"model":"qwen3-omni-flash"')
    meter.refused(b'{"model":"made-up"}', InvalidParameter("no"))
    assert sample(metrics, "omniserve_requests_total", model=MODEL, status="refused") == 1
    assert sample(metrics, "omniserve_requests_total", model=MODEL, status="disconnected") == 1
    assert sample(metrics, "omniserve_requests_total", model="other", status="refused") == 1
    assert sample(metrics, "omniserve_errors_total", code="invalid_parameter_error") == 2


def test_a_stream_is_timed_from_its_admission_and_counted_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics([MODEL])
    meter = RequestMeter(metrics, TOKENIZER)
    began = time.monotonic()
    meter.admitted(job(), "key-1", started=began)
    assert sample(metrics, "omniserve_active_streams") == 1
    meter.observe(TextDelta(""))  # nothing the client sees: no first-token time
    assert meter.ttft is None
    meter.observe(ReasoningDelta("hmm"))
    meter.observe(TextDelta("Hello"))
    meter.observe(AudioDelta(b"\0\0" * 2400))
    meter.observe(Finished("stop", Usage()))
    assert meter.ttft is not None and meter.ttfa is not None
    assert began <= meter.ttft <= meter.ttfa
    assert meter.audio_seconds == pytest.approx(4800 / PCM_BYTES_PER_SECOND)
    usage = Usage(PromptTokens(text=11, image=7), CompletionTokens(text=2, audio=3, reasoning=1))
    with caplog.at_level(logging.INFO, logger="omniserve.request"):
        meter.end("ok", None, usage, "stop")
        meter.end("error", "InternalError", usage, None)  # a second end is not counted
    assert sample(metrics, "omniserve_active_streams") == 0
    assert sample(metrics, "omniserve_requests_total", model=MODEL, status="ok") == 1
    assert sample(metrics, "omniserve_requests_total", model=MODEL, status="error") == 0
    for kind, n in usage.by_kind().items():
        assert sample(metrics, "omniserve_tokens_total", model=MODEL, kind=kind) == n
    # Three chunks the client saw: two gaps between them.
    assert sample(metrics, "omniserve_inter_chunk_gap_seconds_count", model=MODEL) == 2
    assert sample(metrics, "omniserve_time_to_first_token_seconds_count", model=MODEL) == 1
    [record] = [r for r in caplog.records if r.name == "omniserve.request"]
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["request_id"] == "r-1" and fields["key_id"] == "key-1"
    assert fields["status"] == "ok" and fields["finish_reason"] == "stop"
    assert fields["tokens"] == {k: v for k, v in usage.by_kind().items() if v}
    assert json.dumps(fields)  # one JSON line


def test_what_was_delivered_is_counted_from_the_text_and_audio() -> None:
    meter = RequestMeter(None, TOKENIZER)
    meter.admitted(job(), None, started=time.monotonic())
    text = ["The quick ", "brown fox ", "jumps over the lazy dog."]
    for piece in text[:2]:
        meter.observe(TextDelta(piece))
    meter.observe(ReasoningDelta("Let me think."))
    so_far = meter.delivered(job())
    assert so_far.prompt == job().prompt_tokens
    assert so_far.completion.text == TOKENIZER.count("The quick brown fox ")
    assert so_far.completion.reasoning == TOKENIZER.count("Let me think.")
    meter.observe(TextDelta(text[2]))
    meter.observe(AudioDelta(b"\0" * PCM_BYTES_PER_SECOND * 2))  # two seconds
    later = meter.delivered(job())
    assert later.completion.text >= so_far.completion.text
    final = meter.delivered(job(), final=True)
    assert final.completion.text == TOKENIZER.count("".join(text))
    rate = job().model.tokens.output_audio_tokens_per_second
    assert final.completion.audio == round(2 * rate)


def test_without_metrics_it_still_logs(caplog: pytest.LogCaptureFixture) -> None:
    meter = RequestMeter(None, TOKENIZER)
    meter.admitted(job(), None, started=time.monotonic())
    with caplog.at_level(logging.INFO, logger="omniserve.request"):
        meter.end("disconnected", None, Usage(), None)
    assert [r.fields["status"] for r in caplog.records if r.name == "omniserve.request"] == [  # type: ignore[attr-defined]
        "disconnected"
    ]

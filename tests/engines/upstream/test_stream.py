"""Upstream stream dialects -> omniserve's events."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from omniserve.catalog import Catalog
from omniserve.config import UpstreamSpec
from omniserve.engines.upstream.errors import UpstreamBroken, UpstreamError
from omniserve.engines.upstream.stream import AudioNormalizer, StreamTranslator
from omniserve.events import AudioDelta, EngineEvent, Finished, ReasoningDelta, TextDelta
from omniserve.job import GenerationJob, PromptTokens
from omniserve.speech.pcm import wav_bytes
from omniserve.tokens import get_tokenizer

FLASH = Catalog.default().get("qwen3-omni-flash")
TOK = get_tokenizer()
CHUNK = 4800  # 100 ms


def _spec(kind: str, rate: int = 24_000) -> UpstreamSpec:
    return UpstreamSpec(
        name="u", kind=kind, base_urls=["http://x/v1"], models={FLASH.name: "m"}, audio_rate=rate
    )


def _job() -> GenerationJob:
    return GenerationJob(
        request_id="r",
        model_name=FLASH.name,
        model=FLASH,
        messages=(),
        prompt_tokens=PromptTokens(text=5),
    )


def _sine(seconds: float, rate: int) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2").tobytes()


def _run(kind: str, chunks: list[dict[str, Any]], rate: int = 24_000) -> list[EngineEvent]:
    translator = StreamTranslator(_spec(kind, rate), _job(), CHUNK, TOK)
    events: list[EngineEvent] = []
    for chunk in chunks:
        events += translator.feed(json.dumps(chunk))
    events += translator.feed("[DONE]")
    assert translator.done
    return events + translator.close()


def _choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _pcm(events: list[EngineEvent]) -> bytes:
    return b"".join(e.pcm for e in events if isinstance(e, AudioDelta))


def _text(events: list[EngineEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def test_vllm_omni_wav_per_chunk_becomes_headerless_pcm_in_whole_chunks() -> None:
    pcm = _sine(1.0, 24_000)
    pieces = [pcm[:10_000], pcm[10_000:30_002], pcm[30_002:]]
    chunks = [{**_choice({"content": "Hi "}), "modality": "text"}]
    for piece in pieces:
        data = base64.b64encode(wav_bytes(piece)).decode()
        chunks.append({**_choice({"content": data}), "modality": "audio"})
    chunks.append({**_choice({"content": ""}, "stop"), "modality": "audio"})
    events = _run("vllm-omni", chunks)
    assert _text(events) == "Hi "
    assert _pcm(events) == pcm  # headers gone, nothing lost or added
    audio = [e for e in events if isinstance(e, AudioDelta)]
    assert all(len(a.pcm) == CHUNK for a in audio[:-1])
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason == "stop"


def test_sixteen_khz_audio_is_resampled_without_seams() -> None:
    pcm = _sine(1.0, 16_000)
    chunks = []
    for i in range(0, len(pcm), 3_202):  # odd byte counts across chunks too
        chunks.append({**_choice({"content": base64.b64encode(pcm[i : i + 3_202]).decode()}),
                       "modality": "audio"})  # fmt: skip
    out = np.frombuffer(_pcm(_run("vllm-omni", chunks, rate=16_000)), "<i2").astype(float)
    assert abs(len(out) - 24_000) <= 48
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 24_000 / len(out) - 440) < 3
    # No clicks: the largest sample-to-sample step stays that of a 440 Hz sine.
    assert np.abs(np.diff(out[100:-100])).max() < 0.3 * 32767 * 2 * np.pi * 440 / 24_000 * 1.3


def test_a_single_late_audio_delta_is_cut_into_chunks() -> None:
    pcm = _sine(2.0, 24_000)
    chunks = [
        {**_choice({"content": "All the text first."}), "modality": "text"},
        {**_choice({"content": base64.b64encode(pcm).decode()}, "stop"), "modality": "audio"},
    ]
    events = _run("vllm-omni", chunks)
    audio = [e for e in events if isinstance(e, AudioDelta)]
    assert len(audio) == 20 and _pcm(events) == pcm  # 2 s in 100 ms chunks


def test_dashscope_passes_reasoning_text_audio_and_usage() -> None:
    pcm = _sine(0.5, 24_000)
    usage = {
        "prompt_tokens": 30,
        "completion_tokens": 20,
        "total_tokens": 50,
        "prompt_tokens_details": {"text_tokens": 10, "image_tokens": 20},
        "completion_tokens_details": {"text_tokens": 4, "audio_tokens": 7, "reasoning_tokens": 9},
    }
    chunks = [
        _choice({"content": "", "role": "assistant"}),
        _choice({"content": None, "reasoning_content": "Hmm."}),
        _choice({"content": "Yes."}),
        _choice({"audio": {"data": base64.b64encode(pcm).decode(), "id": "a", "expires_at": 1}}),
        _choice({"content": ""}, "length"),
        {"choices": [], "usage": usage},
    ]
    events = _run("dashscope", chunks)
    assert [type(e) for e in events[:2]] == [ReasoningDelta, TextDelta]
    assert _pcm(events) == pcm
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason == "length"
    assert finished.usage.prompt == PromptTokens(text=10, image=20)
    c = finished.usage.completion
    assert (c.text, c.audio, c.reasoning) == (4, 7, 9)


def test_text_only_usage_gets_audio_tokens_from_the_duration() -> None:
    pcm = _sine(2.0, 24_000)
    usage = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    chunks = [
        {**_choice({"content": "Hello"}), "modality": "text"},
        {**_choice({"content": base64.b64encode(pcm).decode()}, "stop"), "modality": "audio"},
        {"choices": [], "usage": usage},
    ]
    finished = _run("vllm-omni", chunks)[-1]
    assert isinstance(finished, Finished)
    assert finished.usage.prompt.text == 12
    assert finished.usage.completion.text == 5
    assert finished.usage.completion.audio == 25  # 2 s at 12.5 tokens a second


def test_openai_transcripts_become_content() -> None:
    pcm = _sine(0.2, 24_000)
    chunks = [
        _choice(
            {
                "content": None,
                "audio": {
                    "id": "a",
                    "data": base64.b64encode(pcm).decode(),
                    "transcript": "Hello ",
                },
            }
        ),
        _choice({"content": None, "audio": {"id": "a", "transcript": "world"}}),
        _choice({"content": None, "audio": {"id": "a", "expires_at": 1}}, "stop"),
    ]
    events = _run("openai", chunks)
    assert _text(events) == "Hello world"
    assert _pcm(events) == pcm
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.usage.completion.text == TOK.count("Hello world")
    assert finished.usage.prompt == PromptTokens(text=5)  # no usage: the job's own count


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (
            '{"error": {"message": "boom", "type": "InternalServerError", "code": 500}}',
            UpstreamError,
        ),
        ("not json", UpstreamBroken),
        ('{"choices": [{"delta": {"content": "!!!"}}], "modality": "audio"}', UpstreamBroken),
    ],
)
def test_broken_or_failing_chunks_raise(payload: str, kind: type[Exception]) -> None:
    translator = StreamTranslator(_spec("vllm-omni"), _job(), CHUNK, TOK)
    with pytest.raises(kind):
        translator.feed(payload)


def test_stereo_wav_is_mixed_down() -> None:
    left = np.frombuffer(_sine(0.1, 24_000), "<i2")
    stereo = np.stack([left, left], axis=1).reshape(-1).astype("<i2").tobytes()
    out = AudioNormalizer(24_000).feed(wav_bytes(stereo, channels=2))
    assert out == left.tobytes()

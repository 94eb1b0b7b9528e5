"""A validated job -> each kind of upstream's request body."""

from __future__ import annotations

import base64
import dataclasses

import numpy as np
import pytest

from omniserve.catalog import Catalog
from omniserve.config import UpstreamSettings, UpstreamSpec
from omniserve.engines.upstream.engine import UpstreamEngine
from omniserve.engines.upstream.request import request_body
from omniserve.job import (
    AudioInput,
    ChatMessage,
    GenerationJob,
    ImageInput,
    MediaItem,
    PromptTokens,
    SamplingParams,
    VideoInput,
)
from omniserve.tokens import get_tokenizer

CATALOG = Catalog.default("qwen3-omni-flash-2025-12-01")
FLASH = CATALOG.get("qwen3-omni-flash")


def _spec(kind: str, **kw: object) -> UpstreamSpec:
    return UpstreamSpec(name="u", kind=kind, base_urls=["http://x/v1"], models={"m": "m"}, **kw)


def _job(*messages: ChatMessage, voice: str | None = None, **kw: object) -> GenerationJob:
    return GenerationJob(
        request_id="r",
        model_name=FLASH.name,
        model=FLASH,
        messages=messages or (ChatMessage("user", "hi"),),
        prompt_tokens=PromptTokens(text=3),
        voice=FLASH.voice(voice) if voice else None,
        **kw,  # type: ignore[arg-type]
    )


def _image() -> MediaItem:
    decoded = ImageInput(np.zeros((28, 28, 3), np.uint8), 28, 28, 30, 30, "PNG", 4)
    return MediaItem("image", "image_url", "https://x/y.png", decoded=decoded, raw=(b"PNGDATA",))


def _video(sound: bool) -> MediaItem:
    audio = AudioInput(np.zeros(16000, np.float32), 1.0, "aac", 13) if sound else None
    decoded = VideoInput(np.zeros((2, 28, 28, 3), np.uint8), 2.0, 1.0, 28, 28, 28, 28,
                         "mov,mp4,m4a,3gp,3g2,mj2", 4, audio)  # fmt: skip
    return MediaItem("video", "video_url", "https://x/v.mp4", decoded=decoded, raw=(b"MP4",))


def test_vllm_omni_gets_its_own_fields() -> None:
    job = _job(
        ChatMessage("user", "What happens?", (_video(sound=True),)),
        voice="Dylan",
        thinking=False,
        max_tokens=50,
        sampling=SamplingParams(temperature=0.5, top_k=20, seed=1, stop=("x",)),
    )
    body = request_body(_spec("vllm-omni"), job, "Qwen/Qwen3-Omni")
    assert body["model"] == "Qwen/Qwen3-Omni"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["modalities"] == ["text", "audio"]
    assert body["voice"] == "ethan"  # a male voice, by gender
    assert body["audio"] == {"format": "pcm16"}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["mm_processor_kwargs"] == {"use_audio_in_video": True}
    assert (body["temperature"], body["top_k"], body["seed"], body["stop"]) == (0.5, 20, 1, ["x"])
    assert body["max_tokens"] == 50
    [part, text] = body["messages"][0]["content"]
    assert part == {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,TVA0"}}
    assert text == {"type": "text", "text": "What happens?"}


def test_vllm_omni_speakers_named_like_voices_and_overrides() -> None:
    assert request_body(_spec("vllm-omni"), _job(voice="Aiden"), "m")["voice"] == "aiden"
    assert request_body(_spec("vllm-omni"), _job(voice="Cherry"), "m")["voice"] == "chelsie"
    spec = _spec("vllm-omni", voices={"Cherry": "aiden"})
    assert request_body(spec, _job(voice="Cherry"), "m")["voice"] == "aiden"


def test_dashscope_gets_the_request_as_omniserve_got_it() -> None:
    job = _job(ChatMessage("user", "", (_image(),)), thinking=True, thinking_budget=100)
    body = request_body(_spec("dashscope"), job, "qwen3-omni-flash")
    assert body["modalities"] == ["text"]
    assert body["enable_thinking"] is True and body["thinking_budget"] == 100
    assert "voice" not in body and "audio" not in body
    url = "data:image/png;base64," + base64.b64encode(b"PNGDATA").decode()
    assert body["messages"][0]["content"] == [{"type": "image_url", "image_url": {"url": url}}]
    spoken = request_body(_spec("dashscope"), _job(voice="Cherry"), "m")
    assert spoken["audio"] == {"voice": "Cherry", "format": "wav"}


def test_openai_gets_openai_forms_and_no_unknown_fields() -> None:
    audio = MediaItem(
        "audio", "input_audio", "b64",
        decoded=AudioInput(np.zeros(16000, np.float32), 1.0, "mp3", 13), raw=(b"ID3",),
    )  # fmt: skip
    job = _job(
        ChatMessage("user", "Transcribe.", (audio,)),
        voice="Cherry",
        sampling=SamplingParams(top_k=5, repetition_penalty=1.1),
    )
    body = request_body(_spec("openai", voices={"Cherry": "coral"}), job, "gpt-4o-audio-preview")
    assert body["audio"] == {"voice": "coral", "format": "pcm16"}
    assert "top_k" not in body and "repetition_penalty" not in body
    part = body["messages"][0]["content"][0]
    assert part == {"type": "input_audio", "input_audio": {"data": "SUQz", "format": "mp3"}}


def test_a_name_served_by_an_openai_upstream_takes_no_video() -> None:
    """Its catalog says so, and the validator refuses video before anything is fetched."""
    routes = {
        "openai": {"qwen3-omni-flash": "gpt-4o-audio-preview"},
        "vllm-omni": {"qwen-omni-turbo": "Qwen/Qwen2.5-Omni-7B"},
    }
    settings = UpstreamSettings(
        upstreams=[
            UpstreamSpec(name=kind, kind=kind, base_urls=["http://x/v1"], models=models)
            for kind, models in routes.items()
        ]
    )
    engine = UpstreamEngine(settings, Catalog.default(), get_tokenizer(), chunk_bytes=4800)
    served = engine.catalog()
    assert not served.get("qwen3-omni-flash").video_input
    assert served.get("qwen-omni-turbo").video_input


def test_a_silent_upstream_is_asked_for_text_only() -> None:
    body = request_body(_spec("openai", audio_output=False), _job(voice="Cherry"), "m")
    assert body["modalities"] == ["text"] and "audio" not in body


def test_media_without_bytes_is_an_error_not_a_fetch() -> None:
    item = dataclasses.replace(_image(), raw=())
    with pytest.raises(AssertionError, match="forwards media"):
        request_body(_spec("dashscope"), _job(ChatMessage("user", "", (item,))), "m")

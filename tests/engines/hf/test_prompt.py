"""A job's conversation -> chat-template messages and the processor's inputs, counted honestly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from omniserve.catalog import Catalog
from omniserve.engines.hf.prompt import (
    QWEN3_DEFAULT_PERSONA,
    QWEN3_SPEECH_RULES,
    QWEN25_SPEECH_PROMPT,
    SYSTEM_ACKNOWLEDGED,
    build_inputs,
    conversation,
    count_prompt,
)
from omniserve.job import (
    AUDIO_INPUT_RATE,
    AudioInput,
    ChatMessage,
    GenerationJob,
    ImageInput,
    MediaItem,
    PromptTokens,
    VideoInput,
)
from omniserve.media.policy import open_policy
from tiny_omni import FAMILIES, QWEN3, QWEN25, TOKENS

FLASH = Catalog.default().get("qwen3-omni-flash")
FACTOR = {QWEN25: 28, QWEN3: 32}  # patch x merge
RNG = np.random.default_rng(0)


def make_job(*messages: ChatMessage) -> GenerationJob:
    return GenerationJob(
        request_id="00000000-0000-0000-0000-000000000000",
        model_name=FLASH.name,
        model=FLASH,
        messages=messages,
        prompt_tokens=PromptTokens(),
    )


def image(h: int, w: int) -> MediaItem:
    pixels = RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    decoded = ImageInput(pixels, w, h, w, h, "PNG", tokens=0)
    return MediaItem("image", "image_url", "data:image/png;base64,", decoded=decoded)


def clip(seconds: float) -> AudioInput:
    samples = (0.1 * RNG.standard_normal(int(seconds * AUDIO_INPUT_RATE))).astype(np.float32)
    return AudioInput(samples, seconds, "wav", tokens=0)


def audio(seconds: float) -> MediaItem:
    return MediaItem("audio", "input_audio", "data:;base64,", decoded=clip(seconds))


def video(frames: int, h: int, w: int, fps: float, soundtrack: float | None) -> MediaItem:
    pixels = RNG.integers(0, 256, size=(frames, h, w, 3), dtype=np.uint8)
    sound = clip(soundtrack) if soundtrack is not None else None
    decoded = VideoInput(pixels, fps, frames / fps, w, h, w, h, "mp4", tokens=0, audio=sound)
    return MediaItem("video", "video_url", "https://example.com/v.mp4", decoded=decoded)


def text_of(message: dict[str, Any]) -> str:
    parts = message["content"]
    assert [p["type"] for p in parts] == ["text"]
    return str(parts[0]["text"])


# -- conversation ------------------------------------------------------------------------


def test_qwen25_speech_keeps_its_system_prompt_and_moves_the_clients_into_an_exchange() -> None:
    job = make_job(
        ChatMessage("system", "Answer like a pirate."),
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Hi"),
    )
    out = conversation(job, QWEN25, speaks=True)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert text_of(out[0]) == QWEN25_SPEECH_PROMPT
    assert text_of(out[1]) == "Answer like a pirate.\nBe brief."
    assert text_of(out[2]) == SYSTEM_ACKNOWLEDGED
    assert text_of(out[3]) == "Hi"


def test_qwen25_speech_without_a_client_system_message_adds_no_exchange() -> None:
    out = conversation(make_job(ChatMessage("user", "Hi")), QWEN25, speaks=True)
    assert [m["role"] for m in out] == ["system", "user"]
    assert text_of(out[0]) == QWEN25_SPEECH_PROMPT


def test_qwen3_speech_replaces_the_persona_with_the_clients_system_text() -> None:
    job = make_job(ChatMessage("system", "You are Captain Hook."), ChatMessage("user", "Hi"))
    out = conversation(job, QWEN3, speaks=True)
    assert [m["role"] for m in out] == ["system", "user"]
    system = text_of(out[0])
    assert system == "You are Captain Hook." + QWEN3_SPEECH_RULES
    assert QWEN3_DEFAULT_PERSONA not in system


def test_qwen3_speech_without_a_client_system_message_uses_the_default_persona() -> None:
    out = conversation(make_job(ChatMessage("user", "Hi")), QWEN3, speaks=True)
    assert text_of(out[0]) == QWEN3_DEFAULT_PERSONA + QWEN3_SPEECH_RULES


@pytest.mark.parametrize("family", FAMILIES)
def test_text_only_keeps_the_clients_system_message_as_is(family: str) -> None:
    job = make_job(
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", "Hello."),
        ChatMessage("user", "Again"),
    )
    out = conversation(job, family, speaks=False)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert [text_of(m) for m in out] == ["Be brief.", "Hi", "Hello.", "Again"]


@pytest.mark.parametrize("family", FAMILIES)
def test_text_only_without_system_text_has_no_system_message(family: str) -> None:
    job = make_job(ChatMessage("system", "  \n"), ChatMessage("user", "Hi"))
    out = conversation(job, family, speaks=False)
    assert [m["role"] for m in out] == ["user"]


def test_media_parts_come_before_the_text_in_their_order() -> None:
    message = ChatMessage(
        "user",
        "What is this?",
        (audio(1.0), image(28, 28), video(2, 28, 28, 2.0, None), image(28, 28)),
    )
    out = conversation(make_job(message), QWEN3, speaks=False)
    assert out == [
        {
            "role": "user",
            "content": [
                {"type": "audio"},
                {"type": "image"},
                {"type": "video"},
                {"type": "image"},
                {"type": "text", "text": "What is this?"},
            ],
        }
    ]


def test_a_media_only_message_has_no_text_part_and_an_empty_one_keeps_one() -> None:
    job = make_job(ChatMessage("user", "", (image(28, 28),)), ChatMessage("user", ""))
    out = conversation(job, QWEN25, speaks=False)
    assert out[0]["content"] == [{"type": "image"}]
    assert out[1]["content"] == [{"type": "text", "text": ""}]


# -- count_prompt --------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_count_prompt_adds_two_boundary_tokens_per_item(processors: Any, family: str) -> None:
    processor = processors[family]
    t = TOKENS
    ids = (
        [t["im_start"], t["user"], 200]
        + [t["vision_start"]] + [t["image"]] * 4 + [t["vision_end"]]
        + [t["vision_start"]] + [t["image"]] * 1 + [t["vision_end"]]
        + [t["audio_start"]] + [t["audio"]] * 3 + [t["audio_end"]]
        + [t["vision_start"]] + [t["video"]] * 8 + [t["vision_end"]]
        + [201, t["im_end"]]
    )  # fmt: skip
    counts = count_prompt(ids, processor, images=2, audio=1, videos=1)
    assert counts == PromptTokens(text=5, image=5 + 4, audio=3 + 2, video=8 + 2)
    assert counts.total == len(ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_count_prompt_without_media_is_all_text(processors: Any, family: str) -> None:
    ids = [TOKENS["im_start"], TOKENS["user"], 200, 201, TOKENS["im_end"]]
    counts = count_prompt(ids, processors[family], images=0, audio=0, videos=0)
    assert counts == PromptTokens(text=5)


# -- build_inputs --------------------------------------------------------------------------


def _ids(inputs: Any) -> list[int]:
    ids: list[int] = inputs.tensors["input_ids"][0].tolist()
    return ids


@pytest.mark.parametrize("family", FAMILIES)
def test_build_inputs_with_an_image(processors: Any, family: str) -> None:
    f = FACTOR[family]
    job = make_job(ChatMessage("user", "What is this?", (image(2 * f, 2 * f),)))
    inputs = build_inputs(job, processors[family], family, speaks=False, native_video=False)
    ids = _ids(inputs)
    tokens = open_policy(family).image_tokens(2 * f, 2 * f)  # 4 (2 x 2 merged patches)
    assert ids.count(TOKENS["image"]) == tokens == 4
    assert inputs.prompt.image == tokens + 2
    assert inputs.prompt.total == len(ids)
    assert inputs.tensors["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert not inputs.use_audio_in_video
    assert all(isinstance(v, torch.Tensor) for v in inputs.tensors.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_build_inputs_does_not_truncate_audio_at_30_seconds(processors: Any, family: str) -> None:
    job = make_job(ChatMessage("user", "Transcribe.", (audio(40.0),)))
    inputs = build_inputs(job, processors[family], family, speaks=False, native_video=False)
    ids = _ids(inputs)
    tokens = open_policy(family).audio_tokens(40.0)
    assert ids.count(TOKENS["audio"]) == tokens
    assert inputs.prompt.audio == tokens + 2
    assert inputs.prompt.total == len(ids)
    assert int(inputs.tensors["feature_attention_mask"].sum()) == 4000  # 10 ms mel frames


@pytest.mark.parametrize("family", FAMILIES)
def test_build_inputs_with_a_video_and_its_soundtrack(processors: Any, family: str) -> None:
    f = FACTOR[family]
    fps = 4.0
    job = make_job(ChatMessage("user", "What happens?", (video(4, f, 2 * f, fps, 1.0),)))
    inputs = build_inputs(job, processors[family], family, speaks=False, native_video=False)
    ids = _ids(inputs)
    policy = open_policy(family)
    assert inputs.use_audio_in_video
    assert ids.count(TOKENS["video"]) == policy.video_tokens(4, f, 2 * f) == 4
    assert ids.count(TOKENS["audio"]) == policy.audio_tokens(1.0) > 0
    assert inputs.prompt.video == 4 + 2
    assert inputs.prompt.audio == policy.audio_tokens(1.0) + 2
    assert inputs.prompt.total == len(ids)
    assert inputs.tensors["video_grid_thw"].tolist() == [[2, 2, 4]]
    # Two frames per grid step, sampled at the frames' own fps (not the processor's default 2).
    assert inputs.tensors["video_second_per_grid"].tolist() == [pytest.approx(2 / fps)]


@pytest.mark.parametrize("family", FAMILIES)
def test_build_inputs_times_each_video_at_its_own_fps(processors: Any, family: str) -> None:
    """The media pipeline samples each video at frames / seconds, which differs per video."""
    f = FACTOR[family]
    media = (video(4, f, f, 4.0, None), video(4, f, f, 1.0, None))
    job = make_job(ChatMessage("user", "Which is longer?", media))
    inputs = build_inputs(job, processors[family], family, speaks=False, native_video=False)
    assert inputs.prompt.video == 2 * (2 + 2)
    assert inputs.tensors["video_second_per_grid"].tolist() == [
        pytest.approx(2 / 4.0),
        pytest.approx(2 / 1.0),
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_build_inputs_with_a_long_clip_and_a_video_soundtrack(processors: Any, family: str) -> None:
    """Two audio streams of different lengths, one past the feature extractor's chunk."""
    f = FACTOR[family]
    media = (audio(40.0), video(4, f, f, 2.0, 2.0))
    job = make_job(ChatMessage("user", "Compare.", media))
    inputs = build_inputs(job, processors[family], family, speaks=False, native_video=False)
    ids = _ids(inputs)
    policy = open_policy(family)
    assert ids.count(TOKENS["audio"]) == policy.audio_tokens(40.0) + policy.audio_tokens(2.0)
    assert inputs.prompt.audio == policy.audio_tokens(40.0) + policy.audio_tokens(2.0) + 4
    assert inputs.prompt.video == policy.video_tokens(4, f, f) + 2
    assert inputs.prompt.total == len(ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_build_inputs_for_speech_renders_the_speech_system_prompt(
    processors: Any, family: str
) -> None:
    job = make_job(ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"))
    inputs = build_inputs(job, processors[family], family, speaks=True, native_video=False)
    expected = QWEN25_SPEECH_PROMPT if family == QWEN25 else "Be brief." + QWEN3_SPEECH_RULES
    assert inputs.text.startswith(f"<|im_start|>system\n{expected}<|im_end|>\n")
    assert inputs.text.endswith("<|im_start|>assistant\n")
    assert inputs.prompt == PromptTokens(text=len(_ids(inputs)))

"""RequestValidator directly: the GenerationJob it builds, and media parts as MediaItems."""

from __future__ import annotations

import json
from typing import Any

import pytest

from omniserve.catalog import Catalog
from omniserve.errors import ApiError, InvalidMedia, InvalidParameter, MediaNotEnabled
from omniserve.job import GenerationJob, MediaItem, PromptTokens, SamplingParams
from omniserve.protocol.request import parse_chat_request
from omniserve.protocol.validate import (
    INVALID_URL,
    RequestValidator,
    ValidatedRequest,
    quote_list,
)
from omniserve.tokens import get_tokenizer

CATALOG = Catalog.default()
TOK = get_tokenizer()
VALIDATOR = RequestValidator(CATALOG, TOK)
MEDIA = RequestValidator(CATALOG, TOK, media_enabled=True)
AUDIO = ["text", "audio"]


def validate(validator: RequestValidator = VALIDATOR, **fields: Any) -> ValidatedRequest:
    body: dict[str, Any] = {
        "model": "qwen3-omni-flash",
        "messages": [{"role": "user", "content": "你是谁？"}],
        "stream": True,
        **fields,
    }
    return validator.validate(parse_chat_request(json.dumps(body).encode()))


def job(**fields: Any) -> GenerationJob:
    return validate(**fields).job


def refused(validator: RequestValidator = VALIDATOR, **fields: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        validate(validator, **fields)
    return info.value


def user(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, *parts]}]


# -- the job -------------------------------------------------------------------------------


def test_plain_job() -> None:
    result = validate()
    j = result.job
    assert j.model_name == "qwen3-omni-flash"
    assert j.model is CATALOG.get("qwen3-omni-flash")
    assert j.voice is None
    assert not j.audio_output
    assert j.thinking is False
    assert j.max_tokens is None
    assert j.thinking_budget is None
    assert j.sampling == SamplingParams()
    assert j.prompt_tokens == PromptTokens(text=11)
    assert [(m.role, m.text, m.media) for m in j.messages] == [("user", "你是谁？", ())]
    assert result.include_usage is False


def test_request_id() -> None:
    r = VALIDATOR.validate(
        parse_chat_request(
            json.dumps(
                {
                    "model": "qwen3-omni-flash",
                    "messages": [{"role": "user", "content": "x"}],
                    "stream": True,
                }
            ).encode()
        ),
        "0b7c7d2e-1111-4222-8333-444455556666",
    )
    assert r.job.request_id == "0b7c7d2e-1111-4222-8333-444455556666"
    a, b = job(), job()
    assert a.request_id != b.request_id
    assert len(a.request_id) == 36


def test_model_name_is_echoed_as_asked() -> None:
    j = job(model="qwen-omni-turbo-latest")
    assert j.model_name == "qwen-omni-turbo-latest"
    assert j.model.name == "qwen-omni-turbo-latest"


@pytest.mark.parametrize(
    ("model", "voice"),
    [
        ("qwen3-omni-flash", "Cherry"),
        ("qwen3-omni-flash-2025-12-01", "Cherry"),
        ("qwen-omni-turbo", "Cherry"),
        ("qwen2.5-omni-7b", "Chelsie"),
    ],
)
def test_default_voice_with_audio_output(model: str, voice: str) -> None:
    j = job(model=model, modalities=AUDIO)
    assert j.voice is not None
    assert j.voice.name == voice
    assert j.audio_output


def test_default_voice_when_audio_param_has_no_voice() -> None:
    j = job(modalities=AUDIO, audio={"format": "wav"})
    assert j.voice is not None and j.voice.name == "Cherry"


@pytest.mark.parametrize("modalities", [["audio", "text"], ["text", "audio"]])
def test_chosen_voice(modalities: list[str]) -> None:
    j = job(modalities=modalities, audio={"voice": "Rocky", "format": "pcm16"})
    assert j.voice is not None
    assert j.voice.name == "Rocky"
    assert j.voice.dialect == "Cantonese"


@pytest.mark.parametrize("modalities", [None, ["text"]])
def test_text_only_has_no_voice_even_with_an_audio_param(modalities: list[str] | None) -> None:
    j = job(modalities=modalities, audio={"voice": "Ethan", "format": "wav"})
    assert j.voice is None
    assert not j.audio_output


def test_voice_is_still_checked_when_text_only() -> None:
    err = refused(audio={"voice": "Serena"})
    assert err.message.endswith(": parameters.audio.voice")


def test_thinking() -> None:
    j = job(enable_thinking=True)
    assert j.thinking is True
    assert j.voice is None
    assert job(enable_thinking=False).thinking is False


def test_max_completion_tokens_when_max_tokens_absent() -> None:
    assert job(max_completion_tokens=42).max_tokens == 42
    assert job(max_tokens=7, max_completion_tokens=42).max_tokens == 7


def test_max_tokens_range_per_mode() -> None:
    assert job(max_tokens=16_384).max_tokens == 16_384
    assert job(model="qwen-omni-turbo", max_tokens=2_048).max_tokens == 2_048
    err = refused(model="qwen-omni-turbo", max_completion_tokens=2_049)
    assert err.message == "Range of max_tokens should be [1, 2048]"
    assert refused(max_tokens=0).message == "Range of max_tokens should be [1, 16384]"


def test_thinking_budget_only_in_thinking_mode() -> None:
    assert job(enable_thinking=True, thinking_budget=100).thinking_budget == 100
    assert job(thinking_budget=100).thinking_budget is None
    assert job(enable_thinking=True, thinking_budget=32_768).thinking_budget == 32_768
    err = refused(enable_thinking=True, thinking_budget=32_769)
    assert err.message == "Range of thinking_budget should be [1, 32768]"


def test_sampling_params() -> None:
    j = job(
        temperature=0.3,
        top_p=0.9,
        top_k=0,
        seed=2**31 - 1,
        presence_penalty=-2,
        repetition_penalty=1.1,
    )
    assert j.sampling == SamplingParams(
        temperature=0.3,
        top_p=0.9,
        top_k=0,
        seed=2**31 - 1,
        presence_penalty=-2,
        repetition_penalty=1.1,
    )


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        (None, ()),
        ("", ()),
        ("END", ("END",)),
        ([], ()),
        (["a", "", "b"], ("a", "b")),
        (["\n\n"], ("\n\n",)),
    ],
)
def test_stop_normalization(stop: str | list[str] | None, expected: tuple[str, ...]) -> None:
    assert job(stop=stop).sampling.stop == expected


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", 2.0, "Range of temperature should be [0.0, 2.0)"),
        ("temperature", -0.1, "Range of temperature should be [0.0, 2.0)"),
        ("top_p", 0.0, "Range of top_p should be (0.0, 1.0]"),
        ("top_p", 1.01, "Range of top_p should be (0.0, 1.0]"),
        ("top_k", -1, "Range of top_k should be [0, 2147483647]"),
        ("top_k", 2**31, "Range of top_k should be [0, 2147483647]"),
        ("seed", -1, "Range of seed should be [0, 2147483647]"),
        ("seed", 2**31, "Range of seed should be [0, 2147483647]"),
        ("presence_penalty", 2.5, "Range of presence_penalty should be [-2.0, 2.0]"),
        ("repetition_penalty", 0.0, "Range of repetition_penalty should be (0.0, 2.0]"),
        ("repetition_penalty", 2.5, "Range of repetition_penalty should be (0.0, 2.0]"),
    ],
)
def test_sampling_ranges(field: str, value: float, message: str) -> None:
    err = refused(**{field: value})
    assert isinstance(err, InvalidParameter)
    assert err.message == message
    assert err.param == field


@pytest.mark.parametrize(
    "field", ["temperature", "top_p", "presence_penalty", "repetition_penalty"]
)
@pytest.mark.parametrize("number", ["1e309", "-1e309"])
def test_numbers_beyond_a_float_are_out_of_range(field: str, number: str) -> None:
    """JSON's 1e309 reads as infinity: every float field refuses it (a NaN as well: its
    bounds are written so that every comparison with NaN fails)."""
    body = (
        '{"model": "qwen3-omni-flash", "stream": true, '
        f'"messages": [{{"role": "user", "content": "hi"}}], "{field}": {number}}}'
    )
    with pytest.raises(InvalidParameter, match=f"Range of {field}"):
        VALIDATOR.validate(parse_chat_request(body.encode()))
    nan = parse_chat_request(b'{"model": "m", "messages": []}').model_copy(
        update={field: float("nan")}
    )
    with pytest.raises(InvalidParameter, match=f"Range of {field}"):
        VALIDATOR._sampling(nan)


def test_prompt_tokens_with_audio_output() -> None:
    assert job().prompt_tokens == PromptTokens(text=11)
    assert job(modalities=AUDIO).prompt_tokens == PromptTokens(text=11 + 196)
    assert job(model="qwen-omni-turbo", modalities=AUDIO).prompt_tokens.total == 207


def test_prompt_tokens_count_every_turn() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "你是谁？"},
    ]
    expected = TOK.count_chat([(m["role"], m["content"]) for m in messages])
    assert job(messages=messages).prompt_tokens == PromptTokens(text=expected)


def test_input_length_limit_per_mode() -> None:
    long_text = "hello " * 16_400  # over the thinking limit, under the normal one
    assert job(messages=[{"role": "user", "content": long_text}]).prompt_tokens.total > 16_384
    err = refused(enable_thinking=True, messages=[{"role": "user", "content": long_text}])
    assert err.message == "Range of input length should be [1, 16384]"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (None, False),
        ({}, False),
        ({"include_usage": False}, False),
        ({"include_usage": True}, True),
    ],
)
def test_include_usage(options: dict[str, bool] | None, expected: bool) -> None:
    assert validate(stream_options=options).include_usage is expected


def test_assistant_and_system_string_content() -> None:
    j = job(
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "assistant", "content": None},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "Again"},
        ]
    )
    assert [(m.role, m.text) for m in j.messages] == [
        ("system", "You are terse."),
        ("user", "Hi"),
        ("assistant", "Hello."),
        ("assistant", ""),
        ("assistant", ""),
        ("user", "Again"),
    ]


def test_text_parts_are_joined() -> None:
    j = job(
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "one "}, {"type": "text", "text": "two"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        ]
    )
    assert [m.text for m in j.messages] == ["one two", "ok"]


def test_quote_list() -> None:
    assert quote_list(("wav",)) == "'wav'"
    assert quote_list(("wav", "pcm16")) == "'wav' or 'pcm16'"
    assert quote_list(["a", "b", "c"]) == "'a', 'b' or 'c'"


# -- media ---------------------------------------------------------------------------------

IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
IMAGE_DATA = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
IMAGE_STRING = {"type": "image_url", "image_url": "https://example.com/b.jpg"}
AUDIO_URL = {
    "type": "input_audio",
    "input_audio": {"data": "https://example.com/a.mp3", "format": "mp3"},
}
AUDIO_DATA = {
    "type": "input_audio",
    "input_audio": {"data": "data:;base64,SUQzBAAAAA==", "format": "mp3"},
}
AUDIO_BARE = {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"}}
VIDEO_URL = {"type": "video_url", "video_url": {"url": "https://example.com/a.mp4"}}
VIDEO_DATA = {"type": "video_url", "video_url": {"url": "data:;base64,AAAAIGZ0eXBpc29t"}}


def frames(n: int) -> dict[str, Any]:
    sources = [f"https://example.com/{i}.jpg" for i in range(n - 1)]
    return {"type": "video", "video": [*sources, "data:image/jpeg;base64,/9j/4AAQ"][:n]}


def media_of(*parts: dict[str, Any], model: str = "qwen3-omni-flash") -> tuple[MediaItem, ...]:
    j = validate(MEDIA, model=model, messages=user(*parts)).job
    (message,) = j.messages
    assert message.text == "What is this?"
    return message.media


def test_images() -> None:
    items = media_of(IMAGE, IMAGE_DATA, IMAGE_STRING)
    assert items == (
        MediaItem(modality="image", kind="image_url", source="https://example.com/a.png"),
        MediaItem(modality="image", kind="image_url", source="data:image/png;base64,iVBORw0KGgo="),
        MediaItem(modality="image", kind="image_url", source="https://example.com/b.jpg"),
    )


def test_one_audio_file_per_request_but_one_per_turn_in_a_conversation() -> None:
    turns = [
        {"role": "user", "content": [AUDIO_URL]},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": [AUDIO_DATA]},
    ]
    assert refused(MEDIA, messages=turns).message == (
        "The audio modality input does not meet the requirements because: "
        "at most 1 audio file is allowed per request."
    )
    body = {"model": "qwen3-omni-flash", "messages": turns, "stream": True}
    request = parse_chat_request(json.dumps(body).encode())
    job = MEDIA.validate(request, conversation=True).job
    assert [i.kind for m in job.messages for i in m.media] == ["input_audio", "input_audio"]


@pytest.mark.parametrize("part", [AUDIO_URL, AUDIO_DATA, AUDIO_BARE])
def test_audio(part: dict[str, Any]) -> None:
    (item,) = media_of(part)
    assert (item.modality, item.kind, item.frames) == ("audio", "input_audio", 0)
    assert item.source == part["input_audio"]["data"]


@pytest.mark.parametrize("part", [VIDEO_URL, VIDEO_DATA])
def test_video_file(part: dict[str, Any]) -> None:
    (item,) = media_of(part)
    assert (item.modality, item.kind, item.frames) == ("video", "video_url", 0)
    assert item.source == part["video_url"]["url"]


def test_video_url_as_a_string() -> None:
    (item,) = media_of({"type": "video_url", "video_url": "https://example.com/v.mp4"})
    assert item.source == "https://example.com/v.mp4"


def test_frame_list() -> None:
    (item,) = media_of(frames(6))
    assert (item.modality, item.kind, item.frames) == ("video", "video", 6)
    assert isinstance(item.source, tuple)
    assert len(item.source) == 6
    assert item.source[-1] == "data:image/jpeg;base64,/9j/4AAQ"


@pytest.mark.parametrize(
    ("model", "lo", "hi"),
    [("qwen3-omni-flash", 2, 128), ("qwen-omni-turbo", 4, 80), ("qwen2.5-omni-7b", 4, 80)],
)
def test_frame_count_bounds(model: str, lo: int, hi: int) -> None:
    assert media_of(frames(lo), model=model)[0].frames == lo
    assert media_of(frames(hi), model=model)[0].frames == hi
    for n in (lo - 1, hi + 1):
        err = refused(MEDIA, model=model, messages=user(frames(n)))
        assert isinstance(err, InvalidMedia)
        assert err.message == (
            "The video modality input does not meet the requirements because: "
            f"the range of sequence images shoule be ({lo}, {hi})."
        )


def test_media_in_several_user_messages() -> None:
    messages = [
        {"role": "user", "content": [IMAGE]},
        {"role": "assistant", "content": "An image."},
        {"role": "user", "content": [AUDIO_BARE, {"type": "text", "text": "And this?"}]},
    ]
    j = validate(MEDIA, messages=messages).job
    assert [len(m.media) for m in j.messages] == [1, 0, 1]
    assert j.messages[0].text == ""
    assert j.messages[2].text == "And this?"
    assert j.messages[2].media[0].modality == "audio"


def test_media_is_refused_when_not_enabled() -> None:
    err = refused(messages=user(IMAGE))
    assert isinstance(err, MediaNotEnabled)
    assert err.status == 400
    assert "disabled" in err.message


def test_media_is_checked_before_being_refused_as_not_enabled() -> None:
    bad = {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}
    err = refused(messages=user(bad))
    assert isinstance(err, InvalidMedia)
    assert err.message == INVALID_URL


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "UklGRiQAAABXQVZF"}},
        {"type": "video_url", "video_url": {"url": "AAAAIGZ0eXBpc29t"}},
        {"type": "video", "video": ["https://example.com/0.jpg", "/9j/4AAQSkZJRg=="]},
        {"type": "image_url", "image_url": {"url": "data:image/png,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://"}},
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}},
        {"type": "input_audio", "input_audio": {"data": "not base64 at all!", "format": "mp3"}},
        {"type": "input_audio", "input_audio": {"data": "", "format": "mp3"}},
    ],
)
def test_bad_sources(part: dict[str, Any]) -> None:
    """Bare base64 is accepted in ``input_audio.data`` only."""
    err = refused(MEDIA, messages=user(part))
    assert isinstance(err, InvalidMedia)
    assert err.message == INVALID_URL


def test_data_uri_size_limit() -> None:
    cap = CATALOG.get("qwen3-omni-flash").media.data_uri_max_bytes
    assert cap == 10_485_760
    prefix = "data:image/png;base64,"
    at_cap = prefix + "A" * (cap - len(prefix))
    (item,) = media_of({"type": "image_url", "image_url": {"url": at_cap}})
    assert len(item.source) == cap
    over = at_cap + "AAAA"
    err = refused(MEDIA, messages=user({"type": "image_url", "image_url": {"url": over}}))
    assert isinstance(err, InvalidMedia)
    assert err.message == "Exceeded limit on max bytes per data-uri item : 10485760'."
    bare = {"type": "input_audio", "input_audio": {"data": "A" * (cap + 4), "format": "wav"}}
    assert refused(MEDIA, messages=user(bare)).message == err.message


def test_a_long_url_is_not_a_data_uri() -> None:
    url = "https://example.com/" + "a" * 11_000_000
    assert media_of({"type": "image_url", "image_url": {"url": url}})[0].source == url


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        (
            [IMAGE, AUDIO_URL],
            "A user message may contain text and at most one of image, audio or video.",
        ),
        (
            [frames(4), AUDIO_BARE],
            "A user message may contain text and at most one of image, audio or video.",
        ),
    ],
)
def test_one_non_text_modality_per_message(parts: list[dict[str, Any]], message: str) -> None:
    err = refused(MEDIA, messages=user(*parts))
    assert err.message == message


def test_one_audio_and_one_video_per_request() -> None:
    two_audio = [
        {"role": "user", "content": [AUDIO_URL]},
        {"role": "user", "content": [AUDIO_BARE]},
    ]
    err = refused(MEDIA, messages=two_audio)
    assert isinstance(err, InvalidMedia)
    assert "at most 1 audio file" in err.message
    two_video = [
        {"role": "user", "content": [VIDEO_URL]},
        {"role": "user", "content": [VIDEO_DATA]},
    ]
    assert "at most 1 video file" in refused(MEDIA, messages=two_video).message


def test_system_message_with_media_is_refused() -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "x"}, IMAGE]},
        {"role": "user", "content": "hi"},
    ]
    err = refused(MEDIA, messages=messages)
    assert err.message == "System messages may only contain text."
    assert err.param == "messages[0].content"


def test_assistant_message_with_media_is_refused() -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [AUDIO_URL]},
    ]
    err = refused(MEDIA, messages=messages)
    assert err.message == "Assistant messages may only contain text."
    assert err.param == "messages[1].content"


@pytest.mark.parametrize(
    ("part", "message", "param"),
    [
        (
            {"type": "audio_url", "audio_url": {"url": "https://e.com/a.mp3"}},
            "Invalid value: audio_url. Supported values are: "
            "'text','image_url','input_audio','video_url' and 'video'.",
            "messages[0].content[1].type",
        ),
        (
            {"type": "image_url"},
            "Field required: input.messages.0.content.1.image_url",
            "messages[0].content[1].image_url",
        ),
        (
            {"type": "input_audio"},
            "Field required: input.messages.0.content.1.input_audio",
            "messages[0].content[1].input_audio",
        ),
        (
            {"type": "video"},
            "Field required: input.messages.0.content.1.video",
            "messages[0].content[1].video",
        ),
    ],
)
def test_malformed_parts(part: dict[str, Any], message: str, param: str) -> None:
    err = refused(MEDIA, messages=user(part))
    assert err.message == message
    assert err.param == param


def test_text_too_long_to_fit_is_refused_before_it_is_tokenized() -> None:
    class Counting(type(TOK)):  # type: ignore[misc]
        counted = 0

        def count(self, text: str) -> int:
            Counting.counted += len(text)
            return super().count(text)

    counting = Counting.__new__(Counting)
    counting.__dict__.update(TOK.__dict__)
    validator = RequestValidator(CATALOG, counting)
    limit = CATALOG.get("qwen3-omni-flash").limits.max_input
    text = "a" * (limit * TOK.longest_token + 1)
    with pytest.raises(InvalidParameter, match=rf"Range of input length should be \[1, {limit}\]"):
        validate(validator, messages=[{"role": "user", "content": text}])
    assert Counting.counted == 0  # refused on its length alone


# -- a model that only captions audio ----------------------------------------------------


def test_a_captioner_needs_audio_in_the_last_user_message() -> None:
    from dataclasses import replace

    captioner = replace(CATALOG.get("qwen3-omni-flash"), audio_input_required=True)
    validator = RequestValidator(Catalog([captioner]), TOK, media_enabled=True)
    with pytest.raises(InvalidParameter, match="captions audio") as info:
        validate(validator)
    assert info.value.param == "messages"
    audio = {"type": "input_audio", "input_audio": {"data": "https://example.com/a.wav"}}
    earlier = [{"role": "user", "content": [audio]}, {"role": "assistant", "content": "ok"}]
    with pytest.raises(InvalidParameter, match="captions audio"):
        validate(validator, messages=[*earlier, {"role": "user", "content": "again"}])
    job = validate(validator, messages=[{"role": "user", "content": [audio]}]).job
    assert [item.kind for item in job.messages[-1].media] == ["input_audio"]


def test_a_model_served_without_video_refuses_it_before_any_fetch() -> None:
    from dataclasses import replace

    no_video = replace(CATALOG.get("qwen3-omni-flash"), video_input=False)
    validator = RequestValidator(Catalog([no_video]), TOK, media_enabled=True)
    video = {"type": "video_url", "video_url": {"url": "https://example.com/a.mp4"}}
    with pytest.raises(InvalidParameter, match="does not accept video input") as info:
        validate(validator, messages=[{"role": "user", "content": [video]}])
    assert info.value.param == "messages"
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    assert validate(validator, messages=[{"role": "user", "content": [image]}]).job

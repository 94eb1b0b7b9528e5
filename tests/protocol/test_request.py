"""parse_chat_request: malformed bodies, strict types, field paths as DashScope prints them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from omniserve.errors import InvalidParameter
from omniserve.protocol.request import ChatRequest, ContentPart, field_path, parse_chat_request

BASE: dict[str, Any] = {
    "model": "qwen3-omni-flash",
    "messages": [{"role": "user", "content": "你是谁？"}],
    "stream": True,
}


def body(**overrides: Any) -> bytes:
    return json.dumps({**BASE, **overrides}).encode()


def refusal(raw: bytes) -> InvalidParameter:
    with pytest.raises(InvalidParameter) as info:
        parse_chat_request(raw)
    err = info.value
    assert (err.status, err.code, err.type) == (
        400,
        "invalid_parameter_error",
        "invalid_request_error",
    )
    return err


def test_minimal_request() -> None:
    req = parse_chat_request(body())
    assert isinstance(req, ChatRequest)
    assert req.model == "qwen3-omni-flash"
    assert req.stream is True
    assert len(req.messages) == 1
    assert req.messages[0].role == "user"
    assert req.messages[0].content == "你是谁？"
    assert req.modalities is None
    assert req.audio is None
    assert req.max_tokens is None


def test_full_request() -> None:
    req = parse_chat_request(
        body(
            stream_options={"include_usage": True},
            modalities=["text", "audio"],
            audio={"voice": "Cherry", "format": "wav"},
            enable_thinking=False,
            thinking_budget=100,
            max_tokens=50,
            max_completion_tokens=60,
            temperature=0.7,
            top_p=0.8,
            top_k=20,
            seed=42,
            stop=["\n"],
            n=1,
            presence_penalty=0.5,
            repetition_penalty=1.05,
            messages=[
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this"},
                        {"type": "image_url", "image_url": {"url": "https://e.com/a.png"}},
                    ],
                },
            ],
        )
    )
    assert req.stream_options is not None and req.stream_options.include_usage is True
    assert req.modalities == ["text", "audio"]
    assert req.audio is not None and (req.audio.voice, req.audio.format) == ("Cherry", "wav")
    assert (req.thinking_budget, req.max_tokens, req.max_completion_tokens) == (100, 50, 60)
    assert (req.temperature, req.top_p, req.top_k, req.seed) == (0.7, 0.8, 20, 42)
    assert req.stop == ["\n"]
    content = req.messages[1].content
    assert isinstance(content, list)
    assert [p.type for p in content] == ["text", "image_url"]
    image = content[1].image_url
    assert image is not None and not isinstance(image, str)
    assert image.url == "https://e.com/a.png"


def test_part_shapes() -> None:
    req = parse_chat_request(
        body(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": "https://e.com/a.png"},
                        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "mp3"}},
                        {"type": "video_url", "video_url": {"url": "https://e.com/v.mp4"}},
                        {"type": "video", "video": ["https://e.com/1.jpg"]},
                        {"type": "audio_url", "audio_url": {"url": "x"}},
                    ],
                }
            ]
        )
    )
    content = req.messages[0].content
    assert isinstance(content, list)
    assert content[0].image_url == "https://e.com/a.png"
    assert content[1].input_audio is not None and content[1].input_audio.format == "mp3"
    video_url = content[2].video_url
    assert video_url is not None and not isinstance(video_url, str)
    assert video_url.url == "https://e.com/v.mp4"
    assert content[3].video == ["https://e.com/1.jpg"]
    # An unknown part type parses; the validator names it with the vendor's message.
    assert isinstance(content[4], ContentPart) and content[4].type == "audio_url"


# -- malformed bodies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            b"{",
            "Request body is not valid JSON: Expecting property name enclosed in double quotes "
            "(line 1 column 2).",
        ),
        (b"", "Request body is not valid JSON: Expecting value (line 1 column 1)."),
        (
            b'{"model": "m",\n "stream": tru}',
            "Request body is not valid JSON: Expecting value (line 2 column 12).",
        ),
        (b"\xff\xfe{}", "Request body is not valid JSON: not UTF-8."),
        (b'{"model": "\xe4\xbd"}', "Request body is not valid JSON: not UTF-8."),
        # Past Python's limit on integer digits (a ValueError, not a JSONDecodeError).
        (
            b'{"max_tokens": ' + b"9" * 4301 + b"}",
            "Request body is not valid JSON: a number is too long.",
        ),
    ],
)
def test_malformed_json(raw: bytes, message: str) -> None:
    err = refusal(raw)
    assert err.message == message
    assert err.param is None


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_number_constants_are_refused(constant: str) -> None:
    raw = f'{{"model": "m", "messages": [], "repetition_penalty": {constant}}}'.encode()
    with pytest.raises(InvalidParameter, match=f"{constant} is not a JSON value"):
        parse_chat_request(raw)


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"42", b"null", b"true"])
def test_body_must_be_an_object(raw: bytes) -> None:
    assert refusal(raw).message == "Request body must be a JSON object."


@pytest.mark.parametrize(
    ("raw", "path", "param"),
    [
        (
            body(messages=[{"role": "user", "content": "a\udfffb"}]),
            "input.messages.0.content",
            "messages[0].content",
        ),
        (body(stop=["x", "\ud800"]), "parameters.stop.1", "stop[1]"),
        (body(model="\udc00"), "model", "model"),
        (body(extra_body={"user": "\ud800"}), "parameters.extra_body.user", "extra_body.user"),
        (body(**{"\ud800": 1}), "body", None),
    ],
)
def test_lone_surrogates_are_refused(raw: bytes, path: str, param: str | None) -> None:
    # json.dumps escapes them (\\ud800); the engines, the ledger and the error envelope could
    # not encode them, so they are refused up front, naming the field.
    assert b"\\ud" in raw
    err = refusal(raw)
    assert err.message == f"Request body holds a string with an unpaired surrogate: {path}"
    assert err.param == param


def test_escaped_surrogate_pairs_are_characters() -> None:
    req = parse_chat_request(body(messages=[{"role": "user", "content": "\U0001f600"}]))
    assert req.messages[0].content == "\U0001f600"
    # A backslash followed by "ud800" is text, not an escape.
    req = parse_chat_request(body(messages=[{"role": "user", "content": "\\ud800"}]))
    assert req.messages[0].content == "\\ud800"


def test_deep_nesting_is_a_400_not_a_crash() -> None:
    raw = b'{"model": "m", "tools": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert refusal(raw).message == "Request body is not valid JSON: nested too deeply."


def test_moderate_nesting_in_an_ignored_field_is_fine() -> None:
    nested: Any = 1
    for _ in range(200):
        nested = [nested]
    req = parse_chat_request(body(logit_bias={"deep": nested}))
    assert req.model == "qwen3-omni-flash"


# -- wrong types and field paths -----------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message", "param"),
    [
        ({"stream": "true"}, "Input should be a valid boolean: parameters.stream", "stream"),
        ({"max_tokens": "5"}, "Input should be a valid integer: parameters.max_tokens", None),
        ({"max_tokens": 1.5}, "Input should be a valid integer: parameters.max_tokens", None),
        ({"temperature": "hot"}, "Input should be a valid number: parameters.temperature", None),
        ({"seed": True}, "Input should be a valid integer: parameters.seed", None),
        (
            {"enable_thinking": 1},
            "Input should be a valid boolean: parameters.enable_thinking",
            None,
        ),
        ({"modalities": "audio"}, "Input should be a valid list: parameters.modalities", None),
        (
            {"modalities": ["text", 1]},
            "Input should be a valid string: parameters.modalities.1",
            "modalities[1]",
        ),
        (
            {"stream_options": {"include_usage": "yes"}},
            "Input should be a valid boolean: parameters.stream_options.include_usage",
            "stream_options.include_usage",
        ),
        (
            {"audio": {"voice": 3}},
            "Input should be a valid string: parameters.audio.voice",
            "audio.voice",
        ),
        ({"stop": [1]}, "Input should be a valid string: parameters.stop.0", "stop[0]"),
        ({"model": 5}, "Input should be a valid string: model", "model"),
        ({"messages": "hello"}, "Input should be a valid list: input.messages", "messages"),
        (
            {"messages": [{"role": 1, "content": "x"}]},
            "Input should be a valid string: input.messages.0.role",
            "messages[0].role",
        ),
        (
            {"messages": [{"content": "x"}]},
            "Field required: input.messages.0.role",
            "messages[0].role",
        ),
        (
            {"messages": [{"role": "user", "content": 5}]},
            "Input should be a valid string: input.messages.0.content",
            "messages[0].content",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}, "hi"]},
            "Input should be a valid dictionary or instance of Message: input.messages.1",
            "messages[1]",
        ),
    ],
)
def test_wrong_types_name_the_field(
    overrides: dict[str, Any], message: str, param: str | None
) -> None:
    err = refusal(body(**overrides))
    assert err.message == message
    field = next(iter(overrides))
    assert err.param == (param or field)


def test_missing_model() -> None:
    raw = json.dumps({"messages": BASE["messages"], "stream": True}).encode()
    err = refusal(raw)
    assert err.message == "Field required: model"
    assert err.param == "model"


def test_missing_messages() -> None:
    err = refusal(json.dumps({"model": "m"}).encode())
    assert err.message == "Field required: input.messages"
    assert err.param == "messages"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([{"text": "x"}], "Field required: input.messages.0.content.0.type"),
        (
            [{"type": "text", "text": "a"}, {"text": "x"}],
            "Field required: input.messages.0.content.1.type",
        ),
        (
            [{"type": 3, "text": "x"}],
            "Input should be a valid string: input.messages.0.content.0.type",
        ),
        (
            [{"type": "image_url", "image_url": {"url": 5}}],
            "Input should be a valid string: input.messages.0.content.0.image_url.url",
        ),
        (
            [{"type": "image_url", "image_url": {"detail": "high"}}],
            "Field required: input.messages.0.content.0.image_url.url",
        ),
        (
            [{"type": "input_audio", "input_audio": {"format": "mp3"}}],
            "Field required: input.messages.0.content.0.input_audio.data",
        ),
        (
            [{"type": "video", "video": ["https://e.com/1.jpg", 2]}],
            "Input should be a valid string: input.messages.0.content.0.video.1",
        ),
    ],
)
def test_union_errors_report_the_deep_field(content: list[Any], message: str) -> None:
    """A list content is clearly not meant as a string: report what is wrong inside it."""
    err = refusal(body(messages=[{"role": "user", "content": content}]))
    assert err.message == message
    assert err.message != "Input should be a valid string: input.messages.0.content"


def test_field_path() -> None:
    assert field_path(("max_tokens",)) == ("parameters.max_tokens", "max_tokens")
    assert field_path(("model",)) == ("model", "model")
    assert field_path(("messages", 0, "content", "list[ContentPart]", 2, "type")) == (
        "input.messages.0.content.2.type",
        "messages[0].content[2].type",
    )
    assert field_path(("messages", 1, "content", "str")) == (
        "input.messages.1.content",
        "messages[1].content",
    )
    assert field_path(("audio", "AudioParam", "voice")) == (
        "parameters.audio.voice",
        "audio.voice",
    )
    assert field_path(()) == ("body", "")


# -- extra_body and unknown fields ---------------------------------------------------------


def test_extra_body_keys_apply() -> None:
    req = parse_chat_request(
        body(extra_body={"enable_thinking": True, "thinking_budget": 50, "top_k": 20})
    )
    assert req.enable_thinking is True
    assert req.thinking_budget == 50
    assert req.top_k == 20


def test_explicit_top_level_keys_win_over_extra_body() -> None:
    req = parse_chat_request(
        body(
            enable_thinking=False,
            extra_body={"enable_thinking": True, "model": "qwen-omni-turbo", "seed": 7},
        )
    )
    assert req.enable_thinking is False
    assert req.model == "qwen3-omni-flash"
    assert req.seed == 7


def test_extra_body_values_are_validated_like_top_level_ones() -> None:
    err = refusal(body(extra_body={"enable_thinking": "yes"}))
    assert err.message == "Input should be a valid boolean: parameters.enable_thinking"


@pytest.mark.parametrize("extra", ["x", None, [1, 2], 3])
def test_extra_body_that_is_not_an_object_is_ignored(extra: Any) -> None:
    req = parse_chat_request(body(extra_body=extra))
    assert req.model == "qwen3-omni-flash"
    assert req.enable_thinking is None


def test_unknown_fields_are_ignored() -> None:
    req = parse_chat_request(
        body(
            frequency_penalty=0.5,
            user="me",
            logit_bias={},
            response_format={"type": "text"},
            stream_options={"include_usage": True, "continuous_usage_stats": True},
            audio={"voice": "Cherry", "format": "wav", "speed": 1.2},
            messages=[{"role": "user", "content": "hi", "cache_control": {"type": "x"}}],
        )
    )
    assert req.model == "qwen3-omni-flash"
    assert not hasattr(req, "frequency_penalty")
    assert req.audio is not None and req.audio.voice == "Cherry"
    assert req.messages[0].content == "hi"


def test_input_is_not_mutated_between_parses() -> None:
    raw = body(extra_body={"seed": 1})
    assert parse_chat_request(raw).seed == 1
    assert parse_chat_request(raw).seed == 1


def test_a_large_body_of_many_values_is_refused_before_parsing() -> None:
    messages = ", ".join(['{"role": "user", "content": "hi"}'] * 100_000)
    raw = f'{{"model": "m", "messages": [{messages}]}}'.encode()
    assert len(raw) > 1024 * 1024
    with pytest.raises(InvalidParameter, match="more than 200000 JSON values"):
        parse_chat_request(raw)


def test_a_large_body_of_long_strings_is_parsed() -> None:
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"a" * 3_000_000
    raw += b'"}]}'
    assert len(parse_chat_request(raw).messages[0].content or "") == 3_000_000


@pytest.mark.parametrize(("messages", "parts"), [(5, 0), (2, 4)])
def test_messages_and_parts_are_capped(messages: int, parts: int) -> None:
    content = [{"type": "text", "text": "a"}] * parts if parts else "a"
    body = {"model": "m", "messages": [{"role": "user", "content": content}] * messages}
    raw = json.dumps(body).encode()
    with pytest.raises(InvalidParameter) as refused:
        parse_chat_request(raw, max_messages=4, max_parts=7)
    assert refused.value.param == "messages"
    parse_chat_request(raw, max_messages=5, max_parts=8)

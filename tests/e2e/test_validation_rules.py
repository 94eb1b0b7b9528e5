"""Every rule of the spec over real HTTP: status, code, type and message of each refusal."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from helpers import LiveServer, chat_body

BAD_PARAM = ("invalid_parameter_error", "invalid_request_error")
FLASH_VOICES = (
    "'Cherry', 'Ethan', 'Nofish', 'Jennifer', 'Ryan', 'Katerina', 'Elias', 'Jada', 'Dylan', "
    "'Sunny', 'Li', 'Marcus', 'Roy', 'Peter', 'Rocky', 'Kiki' or 'Eric'"
)
INVALID_URL = (
    "<400> InternalError.Algo.InvalidParameter: The provided URL does not appear to be valid. "
    "Ensure it is correctly formatted."
)


def user(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(parts)}]


TEXT = {"type": "text", "text": "What is this?"}
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
AUDIO = {
    "type": "input_audio",
    "input_audio": {"data": "https://example.com/a.mp3", "format": "mp3"},
}
VIDEO = {"type": "video_url", "video_url": {"url": "https://example.com/a.mp4"}}


def frames(n: int) -> dict[str, Any]:
    return {"type": "video", "video": [f"https://example.com/{i}.jpg" for i in range(n)]}


CASES: list[tuple[str, dict[str, Any], int, tuple[str, str], str]] = [
    (
        "stream missing",
        chat_body(stream=None),
        400,
        BAD_PARAM,
        "This model only support stream mode, please enable the stream parameter to access the "
        "model. ",
    ),
    (
        "stream false",
        chat_body(stream=False),
        400,
        BAD_PARAM,
        "This model only support stream mode, please enable the stream parameter to access the "
        "model. ",
    ),
    (
        "stream false with audio",
        chat_body(stream=False, modalities=["text", "audio"]),
        400,
        BAD_PARAM,
        "'audio' output only support with stream=true",
    ),
    (
        "unknown model",
        chat_body(model="qwen-max-omni"),
        404,
        ("model_not_found", "invalid_request_error"),
        "The model qwen-max-omni does not exist or you do not have access to it.",
    ),
    (
        "modalities audio only",
        chat_body(modalities=["audio"]),
        400,
        BAD_PARAM,
        "Invalid modalities: ['audio']. Supported combinations are: ['text'] and "
        "['audio', 'text'].",
    ),
    (
        "modalities empty",
        chat_body(modalities=[]),
        400,
        BAD_PARAM,
        "Invalid modalities: []. Supported combinations are: ['text'] and ['audio', 'text'].",
    ),
    (
        "modalities image",
        chat_body(modalities=["text", "image"]),
        400,
        BAD_PARAM,
        "Invalid modalities: ['text', 'image']. Supported combinations are: ['text'] and "
        "['audio', 'text'].",
    ),
    (
        "audio format mp3",
        chat_body(modalities=["text", "audio"], audio={"voice": "Cherry", "format": "mp3"}),
        400,
        BAD_PARAM,
        "Input should be 'wav' or 'pcm16': parameters.audio.format",
    ),
    (
        "unknown voice flash",
        chat_body(modalities=["text", "audio"], audio={"voice": "Alloy", "format": "wav"}),
        400,
        BAD_PARAM,
        f"Input should be {FLASH_VOICES}: parameters.audio.voice",
    ),
    (
        "flash voice on turbo",
        chat_body(
            model="qwen-omni-turbo",
            modalities=["text", "audio"],
            audio={"voice": "Rocky", "format": "wav"},
        ),
        400,
        BAD_PARAM,
        "Input should be 'Cherry', 'Serena', 'Ethan' or 'Chelsie': parameters.audio.voice",
    ),
    (
        "turbo voice on qwen2.5",
        chat_body(
            model="qwen2.5-omni-7b",
            modalities=["text", "audio"],
            audio={"voice": "Cherry", "format": "wav"},
        ),
        400,
        BAD_PARAM,
        "Input should be 'Ethan' or 'Chelsie': parameters.audio.voice",
    ),
    (
        "thinking on turbo",
        chat_body(model="qwen-omni-turbo", enable_thinking=True),
        400,
        BAD_PARAM,
        "The model qwen-omni-turbo does not support enable_thinking.",
    ),
    (
        "thinking on qwen2.5",
        chat_body(model="qwen2.5-omni-7b", enable_thinking=True),
        400,
        BAD_PARAM,
        "The model qwen2.5-omni-7b does not support enable_thinking.",
    ),
    (
        "thinking with audio output",
        chat_body(enable_thinking=True, modalities=["text", "audio"]),
        400,
        BAD_PARAM,
        "Audio output is not supported in thinking mode; modalities must be ['text'].",
    ),
    (
        "thinking with audio parameter",
        chat_body(
            enable_thinking=True, modalities=["text"], audio={"voice": "Cherry", "format": "wav"}
        ),
        400,
        BAD_PARAM,
        "Audio output is not supported in thinking mode; modalities must be ['text'].",
    ),
    (
        "assistant with image",
        chat_body(
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [IMAGE, TEXT]},
                {"role": "user", "content": "and?"},
            ]
        ),
        400,
        BAD_PARAM,
        "Assistant messages may only contain text.",
    ),
    (
        "image and audio in one message",
        chat_body(messages=user(IMAGE, AUDIO, TEXT)),
        400,
        BAD_PARAM,
        "A user message may contain text and at most one of image, audio or video.",
    ),
    (
        "image and video file in one message",
        chat_body(messages=user(IMAGE, VIDEO, TEXT)),
        400,
        BAD_PARAM,
        "A user message may contain text and at most one of image, audio or video.",
    ),
    (
        "bad part type",
        chat_body(messages=user({"type": "audio_url", "audio_url": {"url": "x"}})),
        400,
        BAD_PARAM,
        "Invalid value: audio_url. Supported values are: 'text','image_url','input_audio',"
        "'video_url' and 'video'.",
    ),
    (
        "ftp image url",
        chat_body(
            messages=user(
                {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}, TEXT
            )
        ),
        400,
        BAD_PARAM,
        INVALID_URL,
    ),
    (
        "file image url",
        chat_body(
            messages=user({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}, TEXT)
        ),
        400,
        BAD_PARAM,
        INVALID_URL,
    ),
    (
        "data uri without base64",
        chat_body(
            messages=user({"type": "image_url", "image_url": {"url": "data:image/png,abcd"}}, TEXT)
        ),
        400,
        BAD_PARAM,
        INVALID_URL,
    ),
    (
        "data uri over 10 MiB",
        chat_body(
            messages=user(
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64," + "A" * 14_000_000},
                },
                TEXT,
            )
        ),
        400,
        BAD_PARAM,
        "Exceeded limit on max bytes per data-uri item : 10485760'.",
    ),
    (
        "frame list too short for flash",
        chat_body(messages=user(frames(1), TEXT)),
        400,
        BAD_PARAM,
        "The video modality input does not meet the requirements because: the range of sequence "
        "images shoule be (2, 128).",
    ),
    (
        "frame list too long for flash",
        chat_body(messages=user(frames(129), TEXT)),
        400,
        BAD_PARAM,
        "The video modality input does not meet the requirements because: the range of sequence "
        "images shoule be (2, 128).",
    ),
    (
        "frame list too short for turbo",
        chat_body(model="qwen-omni-turbo", messages=user(frames(3), TEXT)),
        400,
        BAD_PARAM,
        "The video modality input does not meet the requirements because: the range of sequence "
        "images shoule be (4, 80).",
    ),
    (
        "two audio files",
        chat_body(
            messages=[
                {"role": "user", "content": [AUDIO, TEXT]},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [AUDIO, TEXT]},
            ]
        ),
        400,
        BAD_PARAM,
        "The audio modality input does not meet the requirements because: at most 1 audio file "
        "is allowed per request.",
    ),
    (
        "max_tokens over flash limit",
        chat_body(max_tokens=16385),
        400,
        BAD_PARAM,
        "Range of max_tokens should be [1, 16384]",
    ),
    (
        "max_tokens zero",
        chat_body(max_tokens=0),
        400,
        BAD_PARAM,
        "Range of max_tokens should be [1, 16384]",
    ),
    (
        "max_tokens over turbo limit",
        chat_body(model="qwen-omni-turbo", max_tokens=2049),
        400,
        BAD_PARAM,
        "Range of max_tokens should be [1, 2048]",
    ),
    (
        "max_completion_tokens too",
        chat_body(max_completion_tokens=20000),
        400,
        BAD_PARAM,
        "Range of max_tokens should be [1, 16384]",
    ),
    (
        "input too long for turbo",
        chat_body(model="qwen-omni-turbo", messages=[{"role": "user", "content": "你好" * 31000}]),
        400,
        BAD_PARAM,
        "Range of input length should be [1, 30720]",
    ),
    (
        "input too long in thinking mode",
        chat_body(enable_thinking=True, messages=[{"role": "user", "content": "你好" * 17000}]),
        400,
        BAD_PARAM,
        "Range of input length should be [1, 16384]",
    ),
    (
        "thinking budget over",
        chat_body(enable_thinking=True, thinking_budget=40000),
        400,
        BAD_PARAM,
        "Range of thinking_budget should be [1, 32768]",
    ),
    (
        "temperature 2",
        chat_body(temperature=2.0),
        400,
        BAD_PARAM,
        "Range of temperature should be [0.0, 2.0)",
    ),
    ("top_p 0", chat_body(top_p=0), 400, BAD_PARAM, "Range of top_p should be (0.0, 1.0]"),
    (
        "negative seed",
        chat_body(seed=-1),
        400,
        BAD_PARAM,
        "Range of seed should be [0, 2147483647]",
    ),
    ("n 2", chat_body(n=2), 400, BAD_PARAM, "Range of n should be [1, 1]"),
    (
        "unknown role",
        chat_body(messages=[{"role": "tool", "content": "x"}]),
        400,
        BAD_PARAM,
        "Input should be 'system', 'user' or 'assistant': input.messages.0.role",
    ),
    (
        "no messages",
        chat_body(messages=[]),
        400,
        BAD_PARAM,
        "Range of messages length should be [1, inf): input.messages",
    ),
    (
        "only a system message",
        chat_body(messages=[{"role": "system", "content": "be brief"}]),
        400,
        BAD_PARAM,
        "At least one user message is required.",
    ),
    (
        "empty user content",
        chat_body(messages=[{"role": "user", "content": ""}]),
        400,
        BAD_PARAM,
        "User messages must have content: input.messages.0.content",
    ),
    (
        "empty user content list",
        chat_body(messages=[{"role": "user", "content": []}]),
        400,
        BAD_PARAM,
        "User messages must have content: input.messages.0.content",
    ),
    (
        "http url without a host",
        chat_body(messages=user({"type": "image_url", "image_url": {"url": "http://"}}, TEXT)),
        400,
        BAD_PARAM,
        INVALID_URL,
    ),
    (
        "stream as string",
        chat_body(stream="true"),
        400,
        BAD_PARAM,
        "Input should be a valid boolean: parameters.stream",
    ),
    (
        "max_tokens as string",
        chat_body(max_tokens="100"),
        400,
        BAD_PARAM,
        "Input should be a valid integer: parameters.max_tokens",
    ),
    (
        "messages not a list",
        chat_body(messages="hello"),
        400,
        BAD_PARAM,
        "Input should be a valid list: input.messages",
    ),
    (
        "content a number",
        chat_body(messages=[{"role": "user", "content": 5}]),
        400,
        BAD_PARAM,
        "Input should be a valid string: input.messages.0.content",
    ),
    (
        "part without type",
        chat_body(messages=[{"role": "user", "content": [{"text": "x"}]}]),
        400,
        BAD_PARAM,
        "Field required: input.messages.0.content.0.type",
    ),
    (
        "text part without text",
        chat_body(messages=user({"type": "text"})),
        400,
        BAD_PARAM,
        "Field required: input.messages.0.content.0.text",
    ),
    (
        "model missing",
        {"messages": [{"role": "user", "content": "x"}], "stream": True},
        400,
        BAD_PARAM,
        "Field required: model",
    ),
    (
        "voice as number",
        chat_body(modalities=["text", "audio"], audio={"voice": 3}),
        400,
        BAD_PARAM,
        "Input should be a valid string: parameters.audio.voice",
    ),
    (
        "tools",
        chat_body(tools=[{"type": "function", "function": {"name": "f"}}]),
        400,
        BAD_PARAM,
        "The model qwen3-omni-flash does not support tools (function calling).",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "kind", "message"),
    [pytest.param(b, s, k, m, id=name) for name, b, s, k, m in CASES],
)
def test_rule(
    server: LiveServer, body: dict[str, Any], status: int, kind: tuple[str, str], message: str
) -> None:
    r = httpx.post(f"{server.api}/chat/completions", json=body, timeout=30)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    payload = r.json()
    err = payload["error"]
    assert (err["code"], err["type"]) == kind
    assert err["message"] == message
    assert payload["request_id"] == r.headers["x-request-id"]
    assert payload["id"] == f"chatcmpl-{payload['request_id']}"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            b"{",
            "Request body is not valid JSON: Expecting property name enclosed in double "
            "quotes (line 1 column 2).",
        ),
        (b"", "Request body is not valid JSON: Expecting value (line 1 column 1)."),
        (b"[1, 2]", "Request body must be a JSON object."),
        (b"\xff\xfe", "Request body is not valid JSON: not UTF-8."),
        (b"[" * 100_000 + b"]" * 100_000, "Request body is not valid JSON: nested too deeply."),
    ],
)
def test_malformed_body(server: LiveServer, raw: bytes, message: str) -> None:
    r = httpx.post(
        f"{server.api}/chat/completions",
        content=raw,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"] == message
    assert r.json()["error"]["code"] == "invalid_parameter_error"


def test_oversize_body_is_a_413(server: LiveServer) -> None:
    limit = server.service.settings.max_request_bytes
    r = httpx.post(
        f"{server.api}/chat/completions",
        content=b" " * (limit + 1),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 413
    assert r.json()["error"]["message"] == (
        f"Request body is larger than the server's limit of {limit} bytes."
    )


def test_unknown_path_and_method_use_the_envelope(server: LiveServer) -> None:
    r = httpx.get(f"{server.api}/completions")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "NotFound"
    r = httpx.get(f"{server.api}/chat/completions")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "MethodNotAllowed"


def test_unknown_fields_are_ignored(server: LiveServer) -> None:
    body = chat_body(frequency_penalty=0.5, user="me", logit_bias={})
    with httpx.stream("POST", f"{server.api}/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.read().endswith(b"data: [DONE]\n\n")


def test_valid_request_after_errors_still_works(server: LiveServer) -> None:
    assert json.loads(httpx.post(f"{server.api}/chat/completions", json={}).text)["error"]
    with httpx.stream("POST", f"{server.api}/chat/completions", json=chat_body()) as r:
        assert r.status_code == 200

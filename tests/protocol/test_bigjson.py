"""Large bodies parsed a piece at a time give exactly what ``json.loads`` gives, errors included.

The thresholds are lowered so that small bodies take the large-body path and strings cross the
slice boundaries; one test runs at the real sizes.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from omniserve.protocol import bigjson


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bigjson, "SMALL_BODY", 64)
    monkeypatch.setattr(bigjson, "LONG_STRING", 40)
    monkeypatch.setattr(bigjson, "_SLICE", 7)
    monkeypatch.setattr(bigjson, "MAX_TEXT", 10_000)
    monkeypatch.setattr(bigjson, "MAX_ESCAPED", 5_000)


def reject(constant: str) -> Any:
    raise ValueError(constant)


def loads(body: bytes) -> Any:
    return bigjson.loads(body, parse_constant=reject)


PIECES = ["a", "é", "字", "😀", "\\n", "\\\\", '\\"', "\\/", "\\u00e9", "\\ud83d\\ude00", "/", " "]


def text(rng: random.Random, length: int) -> str:
    """The inside of a JSON string literal: characters, multi-byte ones and escapes."""
    return "".join(rng.choice(PIECES) for _ in range(length))


def value(rng: random.Random, depth: int = 0) -> str:
    kind = rng.randrange(6 if depth < 3 else 3)
    if kind == 0:
        return f'"{text(rng, rng.choice([0, 3, 30, 80]))}"'
    if kind == 1:
        return rng.choice(["1", "-2.5e3", "true", "false", "null"])
    if kind == 2:
        return f'"{"x" * rng.choice([10, 39, 40, 41, 200])}"'
    if kind == 3:
        return "[" + ", ".join(value(rng, depth + 1) for _ in range(rng.randrange(4))) + "]"
    items = [f'"{text(rng, rng.choice([1, 50]))}": {value(rng, depth + 1)}' for _ in range(3)]
    return "{" + ", ".join(items) + "}"


@pytest.mark.usefixtures("small")
@pytest.mark.parametrize("seed", range(200))
def test_random_bodies_parse_as_json_loads_parses_them(seed: int) -> None:
    rng = random.Random(seed)
    body = ("{" + f'"messages": {value(rng)}, "more": [{value(rng)}, {value(rng)}]' + "}").encode()
    assert loads(body) == json.loads(body)


@pytest.mark.usefixtures("small")
def test_long_keys_top_level_strings_and_lookalike_placeholders() -> None:
    key = "k" * 100
    body = json.dumps({key: {"v": "é" * 90}, "lifted": "\x00lifted:0:0"}).encode()
    assert loads(body) == json.loads(body)
    top = json.dumps("😀" * 50).encode()
    assert loads(top) == json.loads(top)


@pytest.mark.usefixtures("small")
def test_only_escaped_slashes_are_taken_apart_across_slices() -> None:
    url = "data:image/png;base64," + "ab/+" * 40
    body = json.dumps({"url": url}).replace("/", "\\/").encode()
    assert loads(body) == {"url": url}


@pytest.mark.usefixtures("small")
@pytest.mark.parametrize(
    "body",
    [
        b'{"a": "' + b"x" * 100 + b'", "b": tru}',  # syntax after a long string
        b'{"a": "' + b"x" * 100 + b'"\n, , }',
        b'{"a": "' + b"x" * 50 + b"\x01" + b"x" * 50 + b'"}',  # a control character inside
        b'{"a": "' + b"x" * 100 + b'\\q"}',  # a bad escape inside
        b'{"a": "' + b"x" * 100,  # unterminated
        b'{"a": "' + b"x" * 100 + b'"} extra',
    ],
)
def test_invalid_bodies_fail_where_json_loads_fails(body: bytes) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(body.decode())
    with pytest.raises(json.JSONDecodeError) as got:
        loads(body)
    assert (got.value.msg, got.value.lineno, got.value.colno) == (
        expected.value.msg,
        expected.value.lineno,
        expected.value.colno,
    )


@pytest.mark.usefixtures("small")
@pytest.mark.parametrize(
    "body",
    [
        b'{"a": "' + b"x" * 100 + b'\xff"}',  # inside a long string
        b'{"a": "' + b"x" * 100 + b'", "b": "\xc3"}',  # in the remainder
        b'{"a": "' + b"x" * 99 + b'\xe5\xad"}',  # a character cut short at the end
    ],
)
def test_invalid_utf8_fails_as_decoding_fails(body: bytes) -> None:
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")
    with pytest.raises(UnicodeDecodeError):
        loads(body)


@pytest.mark.usefixtures("small")
def test_nan_and_infinity_are_refused_in_the_remainder() -> None:
    with pytest.raises(ValueError, match="NaN"):
        loads(b'{"a": "' + b"x" * 100 + b'", "b": NaN}')


@pytest.mark.usefixtures("small")
def test_what_cannot_be_a_request_is_refused_before_parsing() -> None:
    many_short = ("[" + ", ".join(['"' + "y" * 30 + '"'] * 400) + "]").encode()
    with pytest.raises(bigjson.TooMuchOutsideMedia):
        loads(many_short)
    escaped = ('{"url": "' + "\\n" * 3000 + '"}').encode()
    with pytest.raises(bigjson.LongEscapedString):
        loads(escaped)
    # A long string that is not media is refused before it is decoded; as media it is read.
    for key, refused in (("text", True), ("url", False), ("data", False)):
        body = json.dumps({"content": [{key: "é" * 6000}]}, ensure_ascii=False).encode()
        if refused:
            with pytest.raises(bigjson.TooMuchOutsideMedia):
                loads(body)
        else:
            assert loads(body) == json.loads(body)
    frames = json.dumps({"video": ["x" * 12_000, "y" * 12_000]}).encode()
    assert loads(frames) == json.loads(frames)
    with pytest.raises(bigjson.TooMuchOutsideMedia):
        loads(json.dumps({"other": ["x" * 12_000]}).encode())


def test_real_sizes_a_video_data_url_and_its_text() -> None:
    url = "data:video/mp4;base64," + "QUJD" * (5 * 1024 * 1024)  # 20 MB
    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": url}},
        {"type": "text", "text": "what happens? " * 1000 + "é😀\n"},
    ]}]}  # fmt: skip
    raw = json.dumps(body).encode()
    assert len(raw) > bigjson.SMALL_BODY
    assert loads(raw) == body
    assert loads(json.dumps(body, ensure_ascii=False).replace("/", "\\/").encode()) == body

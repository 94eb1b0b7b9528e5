"""Pydantic models of the chat request as clients send it, and parsing with clear 400s.

Types are strict (``"stream": "true"`` is a string, not a boolean) and unknown top-level fields
are ignored, as the vendor ignores them. Rules that need the catalog live in ``validate.py``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from omniserve.errors import InvalidParameter
from omniserve.protocol import bigjson


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool | None = None


class AudioParam(_Strict):
    voice: str | None = None
    format: str | None = None


class ImageURL(_Strict):
    url: str
    detail: str | None = None


class InputAudio(_Strict):
    data: str
    format: str | None = None


class VideoURL(_Strict):
    url: str


class ContentPart(BaseModel):
    """One element of a message's ``content`` list; which fields apply depends on ``type``."""

    model_config = ConfigDict(strict=True, extra="allow")

    type: str
    text: str | None = None
    image_url: ImageURL | str | None = None
    input_audio: InputAudio | None = None
    video_url: VideoURL | str | None = None
    video: list[str] | None = None


class AudioRef(_Strict):
    """An earlier answer's audio, by id, in an assistant message (the OpenAI way of keeping
    history): it stands for that answer's transcript."""

    id: str


class Message(_Strict):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    audio: AudioRef | None = None


class ChatRequest(_Strict):
    model: str
    messages: list[Message]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    modalities: list[str] | None = None
    audio: AudioParam | None = None
    enable_thinking: bool | None = None
    thinking_budget: int | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    tools: list[Any] | None = None


# Top-level request fields that DashScope names as ``parameters.<field>``; ``messages`` is
# ``input.messages`` and ``model`` is itself, as in the vendor's own messages.
_INPUT_FIELDS = {"messages"}
_TOP_FIELDS = {"model"}


def field_path(loc: tuple[int | str, ...]) -> tuple[str, str]:
    """(dotted path as DashScope prints it, OpenAI-style ``param``) for a validation location."""
    parts = [str(p) for p in loc if _is_field_part(p)]
    if not parts:
        return "body", ""
    param = parts[0] + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in parts[1:])
    if parts[0] in _INPUT_FIELDS:
        prefix = "input."
    elif parts[0] in _TOP_FIELDS:
        prefix = ""
    else:
        prefix = "parameters."
    return prefix + ".".join(parts), param


def _is_field_part(part: int | str) -> bool:
    # Pydantic adds union member tags such as "str" or "list[ContentPart]" to locations.
    if isinstance(part, int):
        return True
    return (
        part.isidentifier()
        and part not in {"str", "int", "float", "bool", "list", "dict"}
        and (not part[:1].isupper())
    )


# A ``\uD800``-``\uDFFF`` escape: the only way a surrogate gets into a UTF-8 body's strings.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class _NotJson(ValueError):
    """``NaN``, ``Infinity`` or ``-Infinity``: Python's json reads them, JSON has none."""


def _not_json(constant: str) -> Any:
    raise _NotJson(constant)


# Bodies past this size are checked for how many JSON values they hold before parsing: a big
# legitimate body is a few long strings (media), never hundreds of thousands of values.
LARGE_BODY = 1024 * 1024
MAX_JSON_VALUES = 200_000
_SLICE = 4 * 1024 * 1024


def _json_values(body: bytes | bytearray) -> int:
    """At least how many JSON values ``body`` holds, counted a slice at a time (a long scan in
    one call would hold the interpreter lock, and so every other thread, until it ends), and
    only until past the limit."""
    values = 0
    for start in range(0, len(body), _SLICE):
        end = start + _SLICE
        values += sum(body.count(c, start, end) for c in (b"{", b"[", b","))
        if values > MAX_JSON_VALUES:
            break
    return values


def parse_chat_request(
    body: bytes | bytearray, *, max_messages: int = 1024, max_parts: int = 1024
) -> ChatRequest:
    """Parse a request body or raise a 400 that names what is wrong and where.

    What a request may hold is bounded before anything costs more than a glance at its bytes:
    the JSON values of a large body, then its messages and content parts, so that parsing,
    validation and the errors collected stay small whatever arrives."""
    if len(body) > LARGE_BODY and _json_values(body) > MAX_JSON_VALUES:
        raise InvalidParameter(
            f"Request body holds more than {MAX_JSON_VALUES} JSON values; a request is a "
            "few messages and media."
        )
    try:
        data = bigjson.loads(body, parse_constant=_not_json)
    except bigjson.TooMuchOutsideMedia:
        raise InvalidParameter(
            f"Request body holds more than {bigjson.MAX_TEXT} bytes of text besides media; "
            "no text that long fits a model's input."
        ) from None
    except bigjson.LongEscapedString:
        raise InvalidParameter(
            f"Request body holds a string of more than {bigjson.MAX_ESCAPED} bytes with "
            "escape sequences; media are base64, text that long fits no model's input."
        ) from None
    except _NotJson as exc:
        raise InvalidParameter(
            f"Request body is not valid JSON: {exc} is not a JSON value."
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        where = (
            f" (line {exc.lineno} column {exc.colno})"
            if isinstance(exc, json.JSONDecodeError)
            else ""
        )
        raise InvalidParameter(f"Request body is not valid JSON: {detail}{where}.") from None
    except RecursionError:
        raise InvalidParameter("Request body is not valid JSON: nested too deeply.") from None
    except ValueError:
        # Python refuses to convert integers of more than 4300 digits (int_max_str_digits).
        raise InvalidParameter("Request body is not valid JSON: a number is too long.") from None
    if not isinstance(data, dict):
        raise InvalidParameter("Request body must be a JSON object.")
    if bigjson.search(_SURROGATE_ESCAPE, body, 0, len(body)) >= 0:
        # Escaped surrogate pairs decode to one character; a lone one stays a surrogate, which
        # no text encoding can carry (the engines, the ledger and the error envelope all fail).
        loc = _lone_surrogate(data)
        if loc is not None:
            path, param = field_path(loc)
            raise InvalidParameter(
                f"Request body holds a string with an unpaired surrogate: {path}",
                param=param or None,
            )
    extra = data.pop("extra_body", None)
    if isinstance(extra, dict):
        # The vendor's Node samples pass Python's ``extra_body`` literally; its keys apply.
        for key, value in extra.items():
            data.setdefault(key, value)
    _check_counts(data.get("messages"), max_messages, max_parts)
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc) from None


def _check_counts(messages: Any, max_messages: int, max_parts: int) -> None:
    if not isinstance(messages, list):
        return
    if len(messages) > max_messages:
        raise InvalidParameter(
            f"Range of messages length should be [1, {max_messages}]: input.messages",
            param="messages",
        )
    parts = sum(
        len(m["content"])
        for m in messages
        if isinstance(m, dict) and isinstance(m.get("content"), list)
    )
    if parts > max_parts:
        raise InvalidParameter(
            f"A request holds at most {max_parts} content parts in all; this one has {parts}: "
            "input.messages",
            param="messages",
        )


def _lone_surrogate(data: Any) -> tuple[int | str, ...] | None:
    """Where the first string (or object key) holding a lone surrogate is, if any; iterative,
    so that any nesting ``json`` accepted is walked."""
    pending: list[tuple[Any, tuple[int | str, ...]]] = [(data, ())]
    while pending:
        value, loc = pending.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return loc
        elif isinstance(value, dict):
            if any(_SURROGATE.search(key) for key in value):
                return loc
            pending.extend((item, (*loc, key)) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            pending.extend((item, (*loc, i)) for i, item in reversed(list(enumerate(value))))
    return None


def _first_error(exc: ValidationError) -> InvalidParameter:
    errors = exc.errors(include_url=False)
    # Of a union's alternatives, the one that got deepest into the input matched its shape.
    errors.sort(key=lambda e: -len(e["loc"]))
    err = errors[0]
    path, param = field_path(tuple(err["loc"]))
    msg = err["msg"]
    if err["type"] == "missing":
        msg = "Field required"
    return InvalidParameter(f"{msg}: {path}", param=param or None)

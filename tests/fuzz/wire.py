"""What every answer of the API must look like, whatever was sent: the checks of the fuzzers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

ERROR_FIELDS = {"message", "type", "param", "code"}


def check_error_object(err: Any) -> None:
    """The inner ``error`` object: exactly the four fields, with their types."""
    assert isinstance(err, dict), err
    assert set(err) == ERROR_FIELDS, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    assert isinstance(err["code"], str) and err["code"], err
    assert err["param"] is None or isinstance(err["param"], str), err


def check_error_response(status: int, headers: Mapping[str, str], content: bytes) -> str:
    """A refusal in the API's envelope; returns its code."""
    assert 400 <= status < 500, (status, content[:2000])
    assert headers.get("content-type", "").startswith("application/json"), headers
    body = json.loads(content)
    assert isinstance(body, dict), body
    check_error_object(body.get("error"))
    request_id = body.get("request_id")
    assert isinstance(request_id, str) and request_id, body
    assert body.get("id") == f"chatcmpl-{request_id}", body
    assert headers.get("x-request-id") == request_id, (headers, body)
    code: str = body["error"]["code"]
    return code


def check_event_stream(headers: Mapping[str, str], content: bytes) -> str | None:
    """A complete SSE body: chunks, at most one error event right before ``[DONE]``, and
    ``[DONE]`` last. Returns the in-stream error's code, if there was one."""
    assert headers.get("content-type") == "text/event-stream;charset=UTF-8", headers
    text = content.decode("utf-8")
    assert text.endswith("data: [DONE]\n\n"), text[-2000:]
    blocks = text.split("\n\n")[:-1]
    assert blocks, text
    for block in blocks:
        assert block.startswith("data: "), block[:2000]
        assert "\n" not in block, block[:2000]
    assert blocks[-1] == "data: [DONE]"
    events = [json.loads(b[len("data: ") :]) for b in blocks[:-1]]
    assert events, "a stream with nothing before [DONE]"
    error_code: str | None = None
    for i, event in enumerate(events):
        assert isinstance(event, dict), event
        if "error" in event:
            assert i == len(events) - 1, "an error event must be the last before [DONE]"
            assert set(event) == {"error"}, event
            check_error_object(event["error"])
            error_code = event["error"]["code"]
            # A fault of ours hidden behind an in-stream error is a crash all the same.
            assert error_code != "InternalError", event
        else:
            assert event.get("object") == "chat.completion.chunk", event
            assert isinstance(event.get("choices"), list), event
    assert len({e["id"] for e in events if "id" in e}) == 1, "one completion id per stream"
    return error_code

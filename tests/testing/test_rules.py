"""The rules file: parsing, matching, reloading, and the fault header (no server)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from omniserve.catalog import Catalog
from omniserve.errors import InvalidParameter, StartupError
from omniserve.job import GenerationJob
from omniserve.protocol.request import parse_chat_request
from omniserve.protocol.validate import RequestValidator
from omniserve.scenarios import (
    ERRORS,
    Fault,
    RuleBook,
    RuleSet,
    parse_fault_header,
    parse_rules,
    script_for,
)
from omniserve.testing import write_rules
from omniserve.tokens import get_tokenizer

TINY_PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAIAAAD9b0jDAAAAKUlEQVR4nO3NMQEAAAzCsOFf9"
    "GQQegRA0lRSUlJSUlJSUlJSUlJSUlJSUlLSDw3rAAH3e0L3AAAAAElFTkSuQmCC"
)


def job_of(**body: object) -> GenerationJob:
    request = {
        "model": "qwen3-omni-flash",
        "messages": [{"role": "user", "content": "Hello there"}],
        "stream": True,
        **body,
    }
    validator = RequestValidator(Catalog.default(), get_tokenizer(), media_enabled=True)
    parsed = parse_chat_request(json.dumps(request).encode())
    return validator.validate(parsed, "r-1").job


def rules(*raw: dict[str, object]) -> RuleSet:
    return parse_rules(json.dumps({"rules": list(raw)}).encode(), "rules.json")


def test_first_fitting_rule_wins_in_file_order() -> None:
    book = rules(
        {"name": "a", "match": {"message": "nothing like it"}, "reply": {"text": "A"}},
        {"name": "b", "match": {"message": "Hello"}, "reply": {"text": "B"}},
        {"name": "c", "reply": {"text": "C"}},
    )
    script = book.find(job_of(), None)
    assert script is not None and script.rule == "b" and script.reply is not None
    assert script.reply.text == "B"


@pytest.mark.parametrize(
    ("match", "body", "fits"),
    [
        ({"message": "there"}, {}, True),
        ({"message": "THERE"}, {}, False),  # a substring, case and all
        ({"message_regex": r"^Hel+o\b"}, {}, True),
        ({"message_regex": r"bye"}, {}, False),
        ({"model": "qwen3-omni-flash"}, {}, True),
        ({"model": ["qwen-omni-turbo", "qwen3-omni-flash"]}, {}, True),
        ({"model": "qwen-omni-turbo"}, {}, False),
        ({"input": "text"}, {}, True),
        ({"input": "image"}, {}, False),
        ({"voice": "none"}, {}, True),
        ({"voice": "Ethan"}, {"modalities": ["text", "audio"], "audio": {"voice": "Ethan"}}, True),
        (
            {"voice": "Cherry"},
            {"modalities": ["text", "audio"], "audio": {"voice": "Ethan"}},
            False,
        ),
        ({"thinking": False}, {}, True),
        ({"thinking": True}, {}, False),
        ({"thinking": True}, {"enable_thinking": True}, True),
    ],
)
def test_each_match_field(match: dict[str, object], body: dict[str, object], fits: bool) -> None:
    book = rules({"match": match, "reply": {"text": "yes"}})
    assert (book.find(job_of(**body), None) is not None) is fits


def test_input_is_the_last_user_messages_medium() -> None:
    content = [{"type": "image_url", "image_url": {"url": TINY_PNG}}, {"type": "text", "text": "?"}]
    job = job_of(messages=[{"role": "user", "content": content}])
    assert rules({"match": {"input": "image"}}).find(job, None) is not None
    assert rules({"match": {"input": "text"}}).find(job, None) is None


def test_scenario_rules_need_their_header() -> None:
    book = rules(
        {"name": "slow", "match": {"scenario": "slow"}, "reply": {"first_token_ms": 10}},
        {"name": "any"},
    )
    assert book.find(job_of(), None).rule == "any"  # type: ignore[union-attr]
    assert book.find(job_of(), "slow").rule == "slow"  # type: ignore[union-attr]
    assert book.find(job_of(), "other").rule == "any"  # type: ignore[union-attr]


def test_unnamed_rules_are_named_by_number() -> None:
    assert rules({"match": {"message": "x"}}, {}).find(job_of(), None).rule == "#2"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"rules": [{"match": {"mesage": "x"}}]}, "rules.0.match.mesage"),
        ({"rules": [{"match": {"message_regex": "("}}]}, "message_regex"),
        ({"rules": [{"reply": {"usage": {"prompt_tokens": 3}}}]}, "prompt_tokens"),
        ({"rules": [{"reply": {"finish_reason": "tool_calls"}}]}, "finish_reason"),
        ({"rules": [{"fault": {"error": "Teapot"}}]}, "Teapot"),
        ({"rules": [{"fault": {}}]}, "a fault is one of"),
        ({"rules": [{"fault": {"truncate": True, "stall_s": 1}}]}, "a fault is one of"),
        ({"rules": [{"fault": {"stall_s": -1}}]}, "stall_s"),
        ({"rules": [{"fault": {"error": "InternalError", "status": 200}}]}, "status"),
    ],
)
def test_mistakes_are_named(raw: dict[str, object], says: str) -> None:
    with pytest.raises(ValueError, match=says.replace(".", r"\.").replace("(", r"\(")):
        parse_rules(json.dumps(raw).encode(), "rules.json")


def test_toml_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        '[[rules]]\nname = "weather"\nmatch.message = "weather"\nreply.text = "Sunny."\n'
        '[[rules]]\nmatch.scenario = "busy"\n'
        'fault = { error = "limit_requests", retry_after = 3 }\n'
    )
    book = RuleBook(path).current()
    assert [r.name for r in book.rules] == ["weather", None]
    assert book.rules[1].fault == Fault(error="limit_requests", retry_after=3)


def test_rules_are_read_again_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    write_rules(path, [{"name": "one"}])
    book = RuleBook(path)
    assert book.current().find(job_of(), None).rule == "one"  # type: ignore[union-attr]
    write_rules(path, [{"name": "two"}])
    assert book.current().find(job_of(), None).rule == "two"  # type: ignore[union-attr]


def test_a_broken_change_keeps_the_rules_before_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "rules.json"
    write_rules(path, [{"name": "good"}])
    book = RuleBook(path)
    path.write_text('{"rules": [{"match": ')
    os.utime(path, ns=(1, 1))
    assert book.current().find(job_of(), None).rule == "good"  # type: ignore[union-attr]
    assert book.error is not None and "rules.json cannot be read" in book.error
    assert "the rules before it stay" in caplog.text
    write_rules(path, [{"name": "fixed"}])
    assert book.current().find(job_of(), None).rule == "fixed"  # type: ignore[union-attr]
    assert book.error is None


def test_a_bad_file_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[[rules]]\nmatch.colour = 'red'\n")
    with pytest.raises(StartupError, match=r"emulator.rules: rules.toml: rules.0.match.colour"):
        RuleBook(path)
    with pytest.raises(StartupError, match=r"emulator\.rules"):
        RuleBook(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("header", "fault"),
    [
        ("error=limit_requests; retry_after=2", Fault(error="limit_requests", retry_after=2)),
        ("error=InternalError, after_chunks=4", Fault(error="InternalError", after_chunks=4)),
        ("stall_s=1.5", Fault(stall_s=1.5)),
        ("drop_after_chunks=3", Fault(drop_after_chunks=3)),
        ("truncate", Fault(truncate=True)),
        ("trickle_bytes=8;trickle_ms=5", Fault(trickle_bytes=8, trickle_ms=5)),
    ],
)
def test_fault_header(header: str, fault: Fault) -> None:
    assert parse_fault_header(header) == fault


@pytest.mark.parametrize(
    "header", ["", "boom=1", "error=Teapot", "stall_s=soon", "truncate; stall_s=1"]
)
def test_bad_fault_header_is_a_400(header: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        parse_fault_header(header)
    assert caught.value.param == "X-Omniserve-Fault"
    assert caught.value.message.startswith("X-Omniserve-Fault cannot be used: ")


def test_the_header_fault_wins_over_the_rules() -> None:
    book = rules({"name": "r", "reply": {"text": "T"}, "fault": {"stall_s": 1}})
    script = script_for(book, job_of(), None, "drop_after_chunks=1")
    assert script is not None and script.rule == "r" and script.reply is not None
    assert script.fault == Fault(drop_after_chunks=1)
    alone = script_for(None, job_of(), None, "truncate")
    assert alone is not None and alone.rule == "X-Omniserve-Fault" and alone.reply is None


def test_every_error_has_the_vendors_status() -> None:
    for code, (status, _, message) in ERRORS.items():
        error = Fault(error=code).api_error(mid_stream=False)
        assert (error.status, error.code, error.message) == (status, code, message)
        assert ("Retry-After" in error.headers()) is (status == 429)
    assert Fault(error="limit_requests", retry_after=7).api_error(mid_stream=False).headers() == {
        "Retry-After": "7"
    }
    moderated = Fault(error="data_inspection_failed").api_error(mid_stream=True)
    assert moderated.message == "Output data may contain inappropriate content."


def test_file_order_holds_across_every_kind_of_rule() -> None:
    """Rules are indexed by kind (substring, short substring, regex alone or apart, none);
    whichever fits first in the file still wins."""
    kinds: list[dict[str, object]] = [
        {"message": "Hello"},
        {"message": "He"},  # shorter than the index's three characters
        {"message_regex": r"l+o\s"},  # joins the combined regex
        {"message_regex": r"(th)ere"},  # a group: checked on its own
        {"message_regex": r"(?i)HELLO"},  # a global flag: checked on its own
        {"input": "text"},
    ]
    for first in range(len(kinds)):
        order = kinds[first:] + kinds[:first]
        book = rules(
            {"name": "never", "match": {"message": "absent"}},
            *({"name": str(i), "match": m} for i, m in enumerate(order)),
        )
        assert book.find(job_of(), None).rule == "0", order  # type: ignore[union-attr]


def test_rules_that_cannot_fit_are_not_found() -> None:
    book = rules(
        {"match": {"message": "Goodbye"}},
        {"match": {"message": "Hx"}},
        {"match": {"message_regex": r"^there"}},
        {"match": {"message_regex": r"(x)\1"}},
        {"match": {"message": "Hello", "thinking": True}},
        {"match": {"message_regex": "Hello", "voice": "Ethan"}},
    )
    assert book.find(job_of(), None) is None


def test_a_scenario_no_rule_names_is_like_none() -> None:
    book = rules({"name": "plain"}, {"name": "named", "match": {"scenario": "s"}})
    for scenario in (None, "unknown", "другой"):
        assert book.find(job_of(), scenario).rule == "plain"  # type: ignore[union-attr]


def test_rules_on_an_engine_that_answers_for_itself_stop_the_start(tmp_path: Path) -> None:
    from collections.abc import AsyncGenerator

    from helpers import fast_settings
    from omniserve.engines.base import Engine
    from omniserve.events import EngineEvent
    from omniserve.service import ChatService

    class Remote(Engine):
        name = "upstream"

        async def generate(self, job: GenerationJob) -> AsyncGenerator[EngineEvent, None]:
            raise NotImplementedError
            yield

    path = tmp_path / "rules.json"
    write_rules(path, [{"reply": {"text": "never"}}])
    with pytest.raises(StartupError, match="the upstream engine answers for itself"):
        ChatService(fast_settings(emulator={"rules": str(path)}), engine=Remote())
    assert ChatService(fast_settings(), engine=Remote()).rules is None

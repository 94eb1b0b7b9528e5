"""Every operation of the server's own OpenAPI schema, fuzzed over real HTTP with schemathesis.

The schema is read from the live server's ``/openapi.json``. For each operation, schemathesis'
strategies generate requests that fit the schema and requests that break it (wrong types, values
out of range, missing fields), a bounded number of each, derandomized so that every run sends the
same requests. No answer may be a 5xx, and every refusal must be the API's error envelope. Once
on a server without keys (every route is open on loopback), once on a server with an admin key,
sent with every request.

Schemathesis' conformance checks are not run: the schema documents FastAPI's 422 for a malformed
query or body, while the API answers those with its 400 envelope, on purpose. The chat route
reads its body itself, so the schema says nothing of it; ``test_body_fuzz.py`` covers it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core import NOT_SET
from schemathesis.core.result import Ok

from fuzz.wire import check_error_response
from helpers import LiveServer, chat_body, fast_settings, live_server
from omniserve.media.resolve import StaticResolver

# Requests generated per operation and generation mode (fewer where the operation's inputs
# run out first, as for an operation without parameters).
EXAMPLES = 50

SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

ALL_OPERATIONS = {
    "POST /v1/chat/completions",
    "POST /v1/audio/speech",
    "POST /v1/audio/transcriptions",
    "GET /v1/models",
    "GET /v1/models/{model_id}",
    "GET /admin/keys",
    "POST /admin/keys",
    "PATCH /admin/keys/{key_id}",
    "POST /admin/keys/{key_id}/revoke",
    "GET /admin/usage",
}
# Operations with no input that can be made invalid: none at all, or only a string path
# parameter, which takes any string. Their negative strategy finds nothing to send.
NOTHING_TO_BREAK = {
    "POST /v1/chat/completions",
    "GET /v1/models",
    "GET /v1/models/{model_id}",
    "POST /admin/keys/{key_id}/revoke",
}


@pytest.fixture(scope="module")
def open_server() -> Iterator[LiveServer]:
    # An empty resolver table: no media host name is ever looked up in DNS.
    with live_server(fast_settings(), resolver=StaticResolver({})) as server:
        yield server


@pytest.fixture(scope="module")
def admin_server() -> Iterator[tuple[LiveServer, str]]:
    with live_server(fast_settings(), resolver=StaticResolver({})) as server:
        assert server.accounts.store is not None
        _, secret = server.accounts.store.create("fuzz-admin", admin=True)
        yield server, secret


def load_schema(server: LiveServer) -> Any:
    config = schemathesis.Config.from_dict(
        {"generation": {"deterministic": True, "database": "none"}, "base-url": server.base_url}
    )
    return schemathesis.openapi.from_url(
        f"{server.base_url}/openapi.json", config=config, timeout=30
    )


def operations(schema: Any) -> list[Any]:
    found = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        found.append(result.ok())
    return found


def describe(case: schemathesis.Case) -> str:
    """The request, exactly enough to send it again."""
    if case.body is NOT_SET:
        body = ""
    elif isinstance(case.body, bytes):  # a body of another media type than JSON
        body = f" body={case.body!r} ({case.media_type})"
    else:
        body = f" body={json.dumps(case.body, ensure_ascii=True, default=repr)}"
    return f"{case.method} {case.formatted_path} query={case.query} headers={case.headers}{body}"


def fuzz_operation(
    operation: Any, mode: GenerationMode, label: str, tally: Counter[str], headers: dict[str, str]
) -> list[str]:
    """Up to ``EXAMPLES`` requests for one operation in one generation mode. Returns the
    problems found (a 5xx, a malformed refusal), each with the request that caused it; they are
    gathered rather than raised, so that one run shows all of them."""
    problems: list[str] = []

    @SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def one(case: schemathesis.Case) -> None:
        response = case.call(headers=headers, timeout=30)
        status = response.status_code
        tally[f"{label}: requests"] += 1
        tally[f"{label}: {operation.label} ({mode.value})"] += 1
        tally[f"{label}: status {status // 100}xx"] += 1
        try:
            assert status < 500, f"status {status}: {response.content[:500]!r}"
            if status >= 400:
                flat = {k: v[0] for k, v in response.headers.items()}
                check_error_response(status, flat, response.content)
        except AssertionError as exc:
            problems.append(f"{describe(case)}\n  -> {exc}")

    try:
        one()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE, operation.label
        assert operation.label in NOTHING_TO_BREAK, operation.label
    return problems


def fuzz(
    schema: Any, label: str, tally: Counter[str], headers: dict[str, str], skip: set[str]
) -> list[str]:
    """Every operation of ``schema`` but ``skip``, in both generation modes."""
    problems: list[str] = []
    for operation in operations(schema):
        if operation.label not in skip:
            for mode in GenerationMode:
                problems += fuzz_operation(operation, mode, label, tally, headers)
    return problems


def assert_serves(server: LiveServer, headers: dict[str, str]) -> None:
    """The server still answers and streams after the fuzzing."""
    assert httpx.get(f"{server.base_url}/readyz", timeout=10).status_code == 200
    r = httpx.get(f"{server.api}/models", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    with httpx.stream(
        "POST", f"{server.api}/chat/completions", json=chat_body(), headers=headers, timeout=30
    ) as r:
        assert r.status_code == 200
        assert r.read().endswith(b"data: [DONE]\n\n")


def test_schema_without_keys(open_server: LiveServer, tally: Counter[str]) -> None:
    schema = load_schema(open_server)
    assert {op.label for op in operations(schema)} == ALL_OPERATIONS
    # Creating a key here would turn authentication on for the rest of the run; key creation
    # is fuzzed on the admin server.
    problems = fuzz(schema, "schema, no keys", tally, {}, skip={"POST /admin/keys"})
    assert not problems, "\n".join(problems)
    assert_serves(open_server, {})


def test_schema_with_admin_key(admin_server: tuple[LiveServer, str], tally: Counter[str]) -> None:
    server, secret = admin_server
    auth = {"Authorization": f"Bearer {secret}"}
    schema = load_schema(server)
    assert {op.label for op in operations(schema)} == ALL_OPERATIONS
    problems = fuzz(schema, "schema, admin key", tally, auth, skip=set())
    assert not problems, "\n".join(problems)
    assert_serves(server, auth)

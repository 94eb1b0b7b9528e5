"""The chat service as the owner of a request's life, without HTTP: open, read, end.

Real parts throughout: the emulator engine, espeak-ng speech where asked, the accounts on a
fresh SQLite database, the metrics registry. Each test reads the ledger row and the metrics a
request left, which the HTTP tests see only from outside.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image

from helpers import chat_body, fast_settings
from omniserve.accounts.auth import ANONYMOUS
from omniserve.accounts.schema import ledger
from omniserve.accounts.service import Accounts
from omniserve.engines.base import Engine
from omniserve.errors import ApiError, InvalidParameter, RequestTimedOut, ServiceUnavailable
from omniserve.events import EngineEvent, Finished, TextDelta
from omniserve.job import CompletionTokens, GenerationJob, Usage
from omniserve.metrics import Metrics
from omniserve.service import ChatService, Completion

MODEL = "qwen3-omni-flash"


class Scripted(Engine):
    """Yields the given events, then waits ``then_wait`` seconds or raises ``then_raise``."""

    name = "scripted"

    def __init__(
        self,
        events: list[EngineEvent],
        *,
        then_wait: float = 0.0,
        then_raise: BaseException | None = None,
    ) -> None:
        self.events, self.then_wait, self.then_raise = events, then_wait, then_raise
        self.closed = 0

    async def generate(self, job: GenerationJob) -> AsyncGenerator[EngineEvent, None]:
        try:
            for event in self.events:
                yield event
            if self.then_wait:
                await asyncio.sleep(self.then_wait)
            if self.then_raise is not None:
                raise self.then_raise
        finally:
            self.closed += 1


Run = Callable[[ChatService, Accounts, Metrics], Awaitable[None]]


def serve(run: Run, *, engine: Engine | None = None, **settings: Any) -> None:
    """Runs ``run`` against a started service with its accounts and metrics attached."""

    async def main() -> None:
        service = ChatService(fast_settings(**settings), engine=engine)
        metrics = Metrics(m.name for m in service.models())
        accounts = Accounts(service.settings.accounts, service.tokenizer, metrics=metrics)
        service.attach(accounts, metrics)
        await accounts.start()
        await service.start()
        try:
            await run(service, accounts, metrics)
        finally:
            await service.close()
            await accounts.close()

    asyncio.run(main())


def body(**overrides: Any) -> bytes:
    return json.dumps(chat_body(**overrides)).encode()


def rows(accounts: Accounts) -> list[dict[str, Any]]:
    assert accounts.writer is not None and accounts.store is not None
    assert accounts.writer.flush()
    with accounts.store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(ledger))]


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def read_all(completion: Completion) -> list[EngineEvent]:
    return [event async for event in completion.events()]


def test_a_request_runs_to_its_end_and_is_settled_once() -> None:
    async def run(service: ChatService, accounts: Accounts, metrics: Metrics) -> None:
        completion = await service.open(ANONYMOUS, body(), "r-ok")
        assert sample(metrics, "omniserve_active_streams") == 1
        events = await read_all(completion)
        finished = events[-1]
        assert isinstance(finished, Finished)
        assert "".join(e.text for e in events if isinstance(e, TextDelta))
        await completion.aclose()  # after the end: nothing more to settle
        [row] = rows(accounts)
        assert row["request_id"] == "r-ok" and row["status"] == "ok"
        assert row["finish_reason"] == finished.reason
        assert {k: row[k] for k in finished.usage.by_kind()} == finished.usage.by_kind()
        assert sample(metrics, "omniserve_active_streams") == 0
        assert sample(metrics, "omniserve_requests_total", model=MODEL, status="ok") == 1

    serve(run)


def test_a_refused_request_raises_and_leaves_no_row() -> None:
    async def run(service: ChatService, accounts: Accounts, metrics: Metrics) -> None:
        with pytest.raises(InvalidParameter):
            await service.open(ANONYMOUS, body(stream=False), "r-bad")
        assert rows(accounts) == []
        assert sample(metrics, "omniserve_requests_total", model=MODEL, status="refused") == 1
        assert sample(metrics, "omniserve_active_streams") == 0

    serve(run)


def test_a_completion_closed_before_it_ran_is_settled_as_disconnected() -> None:
    async def run(service: ChatService, accounts: Accounts, metrics: Metrics) -> None:
        completion = await service.open(ANONYMOUS, body(), "r-gone")
        await completion.aclose()
        await completion.aclose()  # twice: still one row, one count
        [row] = rows(accounts)
        assert row["status"] == "disconnected"
        assert row["completion_text"] == 0
        assert sample(metrics, "omniserve_requests_total", model=MODEL, status="disconnected") == 1
        assert sample(metrics, "omniserve_active_streams") == 0

    serve(run)


def test_a_completion_closed_midway_stops_its_engine_and_bills_what_was_delivered() -> None:
    engine = Scripted([TextDelta("One two three. "), TextDelta("Four five.")], then_wait=3600)

    async def run(service: ChatService, accounts: Accounts, metrics: Metrics) -> None:
        completion = await service.open(ANONYMOUS, body(), "r-mid")
        events = completion.events()
        await anext(events)
        await anext(events)
        await completion.aclose()
        assert engine.closed == 1
        [row] = rows(accounts)
        assert row["status"] == "disconnected"
        assert row["completion_text"] == service.tokenizer.count("One two three. Four five.")
        assert row["prompt_text"] == completion.job.prompt_tokens.text > 0

    serve(run, engine=engine)


def test_an_interrupted_completion_is_settled_with_the_reason() -> None:
    engine = Scripted([TextDelta("Hello. ")], then_wait=3600)

    async def run(service: ChatService, accounts: Accounts, metrics: Metrics) -> None:
        completion = await service.open(ANONYMOUS, body(), "r-int")
        events = completion.events()
        await anext(events)
        completion.interrupt(ServiceUnavailable("shutting down"))
        await completion.aclose()
        [row] = rows(accounts)
        assert row["status"] == "error" and row["error_code"] == ServiceUnavailable.code

    serve(run, engine=engine)


@pytest.mark.parametrize(
    ("failure", "code"),
    [(InvalidParameter("bad output"), "invalid_parameter_error"), (RuntimeError("x"), None)],
)
def test_a_failing_engine_ends_the_stream_with_its_error(
    failure: BaseException, code: str | None
) -> None:
    engine = Scripted([TextDelta("Partial. ")], then_raise=failure)

    async def run(service: ChatService, accounts: Accounts, metrics: Metrics) -> None:
        completion = await service.open(ANONYMOUS, body(), "r-fail")
        with pytest.raises(type(failure)):
            await read_all(completion)
        [row] = rows(accounts)
        assert row["status"] == "error"
        assert row["error_code"] == (code or "InternalError")
        assert row["completion_text"] == service.tokenizer.count("Partial. ")

    serve(run, engine=engine)


def test_a_silent_engine_times_out() -> None:
    engine = Scripted([], then_wait=3600)

    async def run(service: ChatService, accounts: Accounts, metrics: Metrics) -> None:
        completion = await service.open(ANONYMOUS, body(), "r-slow")
        with pytest.raises(RequestTimedOut, match=r"did not start answering within 0\.2"):
            await read_all(completion)
        assert engine.closed == 1
        [row] = rows(accounts)
        assert row["status"] == "error" and row["error_code"] == RequestTimedOut.code

    serve(run, engine=engine, timeouts={"first_event_s": 0.2, "idle_s": 0.2})


def test_media_are_counted_before_the_engine_starts() -> None:
    seen: list[GenerationJob] = []

    class Watching(Engine):
        async def generate(self, job: GenerationJob) -> AsyncGenerator[EngineEvent, None]:
            seen.append(job)
            yield Finished("stop", Usage(job.prompt_tokens, CompletionTokens(text=1)))

    picture = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(picture, "PNG")
    png = "data:image/png;base64," + base64.b64encode(picture.getvalue()).decode()
    content = [{"type": "image_url", "image_url": {"url": png}}, {"type": "text", "text": "?"}]

    async def run(service: ChatService, accounts: Accounts, metrics: Metrics) -> None:
        completion = await service.open(
            ANONYMOUS, body(messages=[{"role": "user", "content": content}]), "r-img"
        )
        before = completion.job.prompt_tokens
        assert before.image == 0  # validated: text counted, media not yet
        await read_all(completion)
        [job] = seen
        assert job.prompt_tokens.image > 0
        assert job.prompt_tokens.text == before.text  # the text was not counted again
        [row] = rows(accounts)
        assert row["prompt_image"] == job.prompt_tokens.image

    serve(run, engine=Watching())


def test_refused_media_end_the_stream_before_its_first_event() -> None:
    content = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]

    async def run(service: ChatService, accounts: Accounts, metrics: Metrics) -> None:
        completion = await service.open(
            ANONYMOUS, body(messages=[{"role": "user", "content": content}]), "r-media"
        )
        with pytest.raises(ApiError) as info:
            await anext(completion.events())
        assert info.value.status == 400
        [row] = rows(accounts)
        assert row["status"] == "error" and row["error_code"] == info.value.code

    serve(run)

"""Usage reports from the ledger: totals grouped by model, key or day."""

from __future__ import annotations

import datetime as dt
import functools
import operator
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from omniserve.accounts.schema import ledger
from omniserve.job import TOKEN_KINDS

GroupBy = Literal["model", "key", "day"]
DAY_MS = 86_400_000


def _added(columns: Any) -> Any:
    """The SQL sum of ``columns`` (a + b + …)."""
    return functools.reduce(operator.add, columns)


@dataclass(frozen=True)
class UsageLine:
    group: str
    requests: int
    failed: int  # error, disconnected or interrupted
    prompt_tokens: int
    completion_tokens: int
    audio_seconds: float  # speech out
    cost: float
    input_audio_seconds: float = 0.0  # audio in

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_report(
    engine: Engine,
    *,
    by: GroupBy = "model",
    key_id: str | None = None,
    since_ms: int | None = None,
) -> list[UsageLine]:
    """One line per group, ordered by group name (days ascending)."""
    c = ledger.c
    if by == "model":
        group: sa.ColumnElement[Any] = c.model
    elif by == "key":
        group = sa.func.coalesce(c.key_id, "-")
    else:
        # Integer division truncates alike on SQLite and PostgreSQL.
        group = c.started_ms / sa.literal(DAY_MS, sa.BigInteger)
    prompt = _added(c[k] for k in TOKEN_KINDS if k.startswith("prompt_"))
    completion = _added(c[k] for k in TOKEN_KINDS if k.startswith("completion_"))
    query = (
        sa.select(
            group.label("grp"),
            sa.func.count().label("requests"),
            sa.func.sum(sa.case((c.status == "ok", 0), else_=1)).label("failed"),
            sa.func.sum(prompt).label("prompt"),
            sa.func.sum(completion).label("completion"),
            sa.func.sum(c.audio_seconds).label("audio"),
            sa.func.sum(c.input_audio_seconds).label("audio_in"),
            sa.func.sum(c.cost).label("cost"),
        )
        .where(c.status != "running")
        .group_by(group)
        .order_by(group)
    )
    if key_id is not None:
        query = query.where(c.key_id == key_id)
    if since_ms is not None:
        query = query.where(c.started_ms >= since_ms)
    lines = []
    with engine.connect() as conn:
        for row in conn.execute(query):
            name = row.grp
            if by == "day":
                name = dt.datetime.fromtimestamp(int(name) * 86_400, dt.UTC).date().isoformat()
            lines.append(
                UsageLine(
                    group=str(name),
                    requests=int(row.requests),
                    failed=int(row.failed or 0),
                    prompt_tokens=int(row.prompt or 0),
                    completion_tokens=int(row.completion or 0),
                    audio_seconds=float(row.audio or 0.0),
                    cost=float(row.cost or 0.0),
                    input_audio_seconds=float(row.audio_in or 0.0),
                )
            )
    return lines


def totals(lines: list[UsageLine]) -> UsageLine:
    return UsageLine(
        group="total",
        requests=sum(x.requests for x in lines),
        failed=sum(x.failed for x in lines),
        prompt_tokens=sum(x.prompt_tokens for x in lines),
        completion_tokens=sum(x.completion_tokens for x in lines),
        audio_seconds=sum(x.audio_seconds for x in lines),
        cost=sum(x.cost for x in lines),
        input_audio_seconds=sum(x.input_audio_seconds for x in lines),
    )

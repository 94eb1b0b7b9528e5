"""The ledger: a row per request, once; usage totals; retention and interrupted rows."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from omniserve.accounts.keys import KeyStore, now_ms
from omniserve.accounts.ledger import (
    RUNNING,
    LedgerWriter,
    Outcome,
    Started,
    close_running,
    running_owners,
    sweep,
)
from omniserve.accounts.schema import ledger
from omniserve.accounts.usage import totals, usage_report
from omniserve.job import Usage


def rows(engine: Engine) -> dict[str, dict[str, object]]:
    with engine.connect() as conn:
        return {r.request_id: dict(r._mapping) for r in conn.execute(sa.select(ledger))}


def test_start_then_finish_in_one_batch_is_one_insert(engine: Engine) -> None:
    writer = LedgerWriter(engine, interval_s=0.2)
    writer.started(Started("r1", None, "qwen-omni-turbo", now_ms()))
    writer.finished(
        Outcome(
            "r1",
            None,
            "ok",
            usage=Usage.from_kinds({"prompt_text": 5}),
            finish_reason="stop",
            cost=0.5,
        )
    )
    assert writer.flush()
    writer.close()
    row = rows(engine)["r1"]
    assert row["status"] == "ok" and row["prompt_text"] == 5 and row["cost"] == 0.5


def test_a_start_is_held_a_moment_then_written_as_running(engine: Engine) -> None:
    writer = LedgerWriter(engine, interval_s=0.001, hold_s=0.4)
    writer.started(Started("long", None, "m", now_ms()))
    writer.started(Started("short", None, "m", now_ms()))
    writer.finished(Outcome("short", None, "ok", usage=Usage.from_kinds({"completion_text": 3})))
    time.sleep(0.2)
    # The short request is on the books, complete; the long one not yet.
    assert {rid: row["status"] for rid, row in rows(engine).items()} == {"short": "ok"}
    deadline = time.monotonic() + 5
    while "long" not in rows(engine):  # no flush: the writer wakes for it on its own
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert rows(engine)["long"]["status"] == "running"
    writer.finished(Outcome("long", None, "ok", usage=Usage.from_kinds({"completion_text": 9})))
    writer.close()
    assert rows(engine)["long"]["status"] == "ok" and rows(engine)["long"]["completion_text"] == 9


def test_a_running_row_is_written_before_the_request_ends(engine: Engine) -> None:
    key, _ = KeyStore(engine).create("k")
    writer = LedgerWriter(engine, interval_s=0.001)
    writer.started(Started("r2", key.id, "qwen3-omni-flash", now_ms()))
    assert writer.flush()
    assert rows(engine)["r2"]["status"] == "running"
    writer.finished(
        Outcome(
            "r2",
            key.id,
            "disconnected",
            usage=Usage.from_kinds({"prompt_text": 10, "completion_audio": 25}),
            audio_seconds=2,
        )
    )
    # A second completion (a retry, a bug) never overwrites the first or counts twice.
    writer.finished(Outcome("r2", key.id, "ok", usage=Usage.from_kinds({"prompt_text": 999})))
    writer.close()
    row = rows(engine)["r2"]
    assert (row["status"], row["prompt_text"], row["completion_audio"]) == ("disconnected", 10, 25)
    assert KeyStore(engine).get(key.id).used_tokens == 35


def test_a_duplicate_start_never_makes_a_second_row(engine: Engine) -> None:
    writer = LedgerWriter(engine, interval_s=0.001)
    writer.started(Started("r3", None, "m", now_ms()))
    assert writer.flush()
    writer.started(Started("r3", None, "m", now_ms()))  # refused by the primary key
    writer.finished(Outcome("r3", None, "ok"))
    writer.close()
    assert len(rows(engine)) == 1


def test_many_requests_from_many_threads(engine: Engine) -> None:
    import threading

    writer = LedgerWriter(engine)

    def one(i: int) -> None:
        writer.started(Started(f"t{i}", None, "m", now_ms()))
        time.sleep(0.001)
        writer.finished(
            Outcome(f"t{i}", None, "ok", usage=Usage.from_kinds({"completion_text": i}))
        )

    threads = [threading.Thread(target=one, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    got = rows(engine)
    assert len(got) == 200 and all(r["status"] == "ok" for r in got.values())
    assert sum(int(r["completion_text"]) for r in got.values()) == sum(range(200))  # type: ignore[call-overload]


def test_sweep_marks_stale_running_rows_and_deletes_old_ones(engine: Engine) -> None:
    day = 86_400_000
    with engine.begin() as conn:
        for rid, age, status in (
            ("old", 100 * day, "ok"),
            ("stale", 2 * day, "running"),
            ("fresh", 0, "running"),
            ("done", day, "ok"),
        ):
            conn.execute(
                sa.insert(ledger).values(
                    request_id=rid,
                    key_id=None,
                    started_ms=now_ms() - age,
                    model="m",
                    status=status,
                    prompt_text=0,
                    prompt_image=0,
                    prompt_audio=0,
                    prompt_video=0,
                    completion_text=0,
                    completion_audio=0,
                    completion_reasoning=0,
                    audio_seconds=0,
                    cost=0,
                )
            )
    assert sweep(engine, retention_days=90, stale_after_s=3600) == (1, 1)
    got = rows(engine)
    assert set(got) == {"stale", "fresh", "done"}
    assert got["stale"]["status"] == "interrupted" and got["fresh"]["status"] == "running"
    assert sweep(engine, retention_days=0, stale_after_s=3600) == (0, 0)


def test_stale_rows_closed_by_the_sweep_count_their_usage_so_far(engine: Engine) -> None:
    key, _ = KeyStore(engine).create("k")
    writer = LedgerWriter(engine, interval_s=0.001, hold_s=0)
    writer.started(Started("s", key.id, "m", now_ms() - 2 * 86_400_000))
    writer.progress(
        Outcome(
            "s", key.id, RUNNING, usage=Usage.from_kinds({"prompt_text": 10, "completion_text": 5})
        )
    )
    writer.close()
    assert sweep(engine, retention_days=90, stale_after_s=3600) == (1, 0)
    row = rows(engine)["s"]
    assert (row["status"], row["prompt_text"], row["completion_text"]) == ("interrupted", 10, 5)
    assert KeyStore(engine).get(key.id).used_tokens == 15


def test_the_usage_so_far_of_a_running_request_is_written(engine: Engine) -> None:
    key, _ = KeyStore(engine).create("k")
    writer = LedgerWriter(engine, owner="here", interval_s=0.001, hold_s=0.2)
    writer.started(Started("r", key.id, "m", now_ms()))
    # Told while the start is still held: the running row is inserted with it.
    writer.progress(
        Outcome(
            "r", key.id, RUNNING, usage=Usage.from_kinds({"prompt_text": 10, "completion_text": 3})
        )
    )
    assert writer.flush()
    row = rows(engine)["r"]
    assert (row["status"], row["completion_text"], row["owner"]) == (RUNNING, 3, "here")
    # Told again: the row follows; the key's used tokens wait for the end.
    writer.progress(
        Outcome(
            "r", key.id, RUNNING, usage=Usage.from_kinds({"prompt_text": 10, "completion_text": 7})
        )
    )
    writer.progress(
        Outcome(
            "r", key.id, RUNNING, usage=Usage.from_kinds({"prompt_text": 10, "completion_text": 9})
        )
    )
    assert writer.flush()
    assert rows(engine)["r"]["completion_text"] == 9
    assert KeyStore(engine).get(key.id).used_tokens == 0
    # The completion wins over any usage so far, before it or after it.
    writer.progress(
        Outcome(
            "r", key.id, RUNNING, usage=Usage.from_kinds({"prompt_text": 10, "completion_text": 11})
        )
    )
    writer.finished(
        Outcome(
            "r", key.id, "ok", usage=Usage.from_kinds({"prompt_text": 10, "completion_text": 12})
        )
    )
    writer.progress(
        Outcome(
            "r", key.id, RUNNING, usage=Usage.from_kinds({"prompt_text": 10, "completion_text": 13})
        )
    )
    writer.close()
    row = rows(engine)["r"]
    assert (row["status"], row["completion_text"]) == ("ok", 12)
    assert KeyStore(engine).get(key.id).used_tokens == 22


def test_running_rows_of_gone_owners_are_closed_with_their_usage(engine: Engine) -> None:
    key, _ = KeyStore(engine).create("k")
    for owner, rid in (("dead", "d1"), ("dead", "d2"), ("alive", "a1")):
        writer = LedgerWriter(engine, owner=owner, interval_s=0.001, hold_s=0)
        writer.started(Started(rid, key.id, "m", now_ms()))
        writer.progress(
            Outcome(
                rid,
                key.id,
                RUNNING,
                usage=Usage.from_kinds({"prompt_text": 4, "completion_audio": 6}),
            )
        )
        writer.close()
    finished = LedgerWriter(engine, owner="dead", interval_s=0.001)
    finished.started(Started("done", key.id, "m", now_ms()))
    finished.finished(Outcome("done", key.id, "ok", usage=Usage.from_kinds({"prompt_text": 1})))
    finished.close()
    assert sorted(running_owners(engine)) == ["alive", "dead"]
    assert KeyStore(engine).get(key.id).used_tokens == 1

    assert close_running(engine, owners=["dead"]) == 2
    assert close_running(engine, owners=["dead"]) == 0  # closing is once
    got = rows(engine)
    assert {rid: got[rid]["status"] for rid in ("d1", "d2", "a1", "done")} == {
        "d1": "interrupted",
        "d2": "interrupted",
        "a1": RUNNING,
        "done": "ok",
    }
    assert got["d1"]["completion_audio"] == 6
    assert KeyStore(engine).get(key.id).used_tokens == 1 + 2 * 10
    assert running_owners(engine) == ["alive"]
    # The ledger's report counts them, with what they used.
    assert totals(usage_report(engine)).prompt_tokens == 4 + 4 + 1


def test_usage_report_groups_and_totals(engine: Engine) -> None:
    writer = LedgerWriter(engine)
    base = now_ms()
    entries = [
        ("a", "key_1", "qwen3-omni-flash", "ok", 10, 5, 0.1),
        ("b", "key_1", "qwen-omni-turbo", "error", 3, 0, 0.0),
        ("c", "key_2", "qwen3-omni-flash", "ok", 20, 7, 0.2),
    ]
    for rid, key, model, status, p, c, money in entries:
        writer.started(Started(rid, key, model, base))
        writer.finished(
            Outcome(
                rid,
                key,
                status,
                usage=Usage.from_kinds({"prompt_text": p, "completion_text": c}),
                cost=money,
            )
        )
    writer.started(Started("d", "key_1", "qwen3-omni-flash", base))  # still running: not counted
    writer.close()
    by_model = {x.group: x for x in usage_report(engine, by="model")}
    assert by_model["qwen3-omni-flash"].requests == 2
    assert by_model["qwen3-omni-flash"].total_tokens == 42
    assert by_model["qwen-omni-turbo"].failed == 1
    by_key = {x.group: x for x in usage_report(engine, by="key")}
    assert by_key["key_1"].requests == 2 and by_key["key_2"].cost == pytest.approx(0.2)
    only = usage_report(engine, by="model", key_id="key_2")
    assert [x.group for x in only] == ["qwen3-omni-flash"]
    by_day = usage_report(engine, by="day")
    assert len(by_day) == 1 and by_day[0].group == time.strftime(
        "%Y-%m-%d", time.gmtime(base / 1000)
    )
    assert totals(by_day).prompt_tokens == 33
    assert usage_report(engine, since_ms=base + 1) == []

"""Replica choice, circuit breakers and health checks."""

from __future__ import annotations

import asyncio
import socket
import time

from helpers import fast_settings, live_server
from omniserve.config import UpstreamSpec
from omniserve.engines.upstream.pool import ReplicaSet


def _set(urls: list[str], **kw: object) -> ReplicaSet:
    spec = UpstreamSpec(name="u", kind="dashscope", base_urls=urls, models={"m": "m"}, **kw)  # type: ignore[arg-type]
    return ReplicaSet(spec)


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there any more


def test_the_least_busy_replica_is_chosen() -> None:
    replicas = _set(["http://a/v1", "http://b/v1", "http://c/v1"])
    first = replicas.begin(replicas.pick(set()) or 0)
    second_index = replicas.pick(set())
    assert second_index is not None and replicas.replicas[second_index] is not first
    second = replicas.begin(second_index)
    third = replicas.pick(set())
    assert third is not None and replicas.replicas[third] not in (first, second)
    replicas.end(first, ok=True)
    assert replicas.pick(set()) == third  # idle and never used beats idle and used once
    replicas.begin(third)
    assert replicas.replicas[replicas.pick(set()) or 0] is first  # idle again
    assert replicas.pick({0, 1, 2}) is None


def test_failures_open_the_circuit_then_one_trial_decides() -> None:
    replicas = _set(["http://a/v1", "http://b/v1"], failure_threshold=2, cooldown_s=0.2)
    a = replicas.replicas[0]
    for _ in range(2):
        replicas.end(replicas.begin(0), ok=False)
    assert replicas.pick(set()) == 1 and replicas.pick({1}) is None  # a is open
    time.sleep(0.25)
    assert replicas.pick({1}) == 0  # half-open: one trial
    trial = replicas.begin(0)
    assert replicas.pick({1}) is None  # no second trial while the first runs
    replicas.end(trial, ok=True)
    assert a.failures == 0 and replicas.pick({1}) == 0
    replicas.end(replicas.begin(0), ok=None)  # a client that left says nothing
    assert a.failures == 0


def test_health_checks_mark_replicas_down_and_up() -> None:
    with live_server(fast_settings()) as server:
        alive = f"{server.base_url}/compatible-mode/v1"
        replicas = _set([alive, _dead_url()], health_path="/healthz")

        async def check() -> None:
            await replicas.check()
            await replicas.close()

        asyncio.run(check())
    assert [r.healthy for r in replicas.replicas] == [True, False]
    assert replicas.pick(set()) == 0 and replicas.pick({0}) is None

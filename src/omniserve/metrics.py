"""Prometheus metrics, served at ``/metrics`` (admin level; see docs/operations.md).

One ``Metrics`` per application, on a registry of its own (so several apps in one process, as
in the tests, never share counters). Every label has a bounded set of values: model names from
the served catalog (anything else is ``other``), statuses, token kinds, media kinds, limit
kinds, error codes of the API and route templates. No key, request id or secret is ever a
label.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from omniserve import __version__
from omniserve.errors import ApiError

OTHER = "other"
# Seconds: from a cached loopback answer (ms) to a slow model's first token (s).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Event-loop lag: a healthy loop stays under a few milliseconds.
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
GAP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
MEDIA_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
CONTENT_TYPE = CONTENT_TYPE_LATEST


def _known_codes() -> frozenset[str]:
    """The error codes the API itself defines (an upstream may relay any string: ``other``)."""
    global _CODES
    if _CODES is None:
        seen: set[str] = set()
        todo: list[type[ApiError]] = [ApiError]
        while todo:
            cls = todo.pop()
            seen.add(cls.code)
            todo.extend(cls.__subclasses__())
        seen.update(("InvalidParameter", "DataInspectionFailed"))
        _CODES = frozenset(seen)
    return _CODES


_CODES: frozenset[str] | None = None


class Metrics:
    def __init__(self, models: Iterable[str] = ()) -> None:
        self.registry = registry = CollectorRegistry()
        self.models = frozenset(models)
        ProcessCollector(registry=registry)  # RSS, CPU, open file descriptors
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        info = Gauge(
            "omniserve_build_info", "Version of the running server.", ["version"], registry=registry
        )
        info.labels(__version__).set(1)
        self.requests = Counter(
            "omniserve_requests",
            "Chat completions by model and how they ended "
            "(ok, error, disconnected; refused: answered with an error before streaming).",
            ["model", "status"],
            registry=registry,
        )
        self.errors = Counter(
            "omniserve_errors",
            "Errors of the API answered or sent in a stream, by error code.",
            ["code"],
            registry=registry,
        )
        self.http = Counter(
            "omniserve_http_responses",
            "HTTP responses by route template and status code.",
            ["route", "status"],
            registry=registry,
        )
        self.active = Gauge(
            "omniserve_active_streams", "Chat completions streaming now.", registry=registry
        )
        self.realtime_sessions = Gauge(
            "omniserve_realtime_sessions", "Realtime sessions open now.", registry=registry
        )
        self.turn_latency = Histogram(
            "omniserve_realtime_turn_latency_seconds",
            "Realtime turns: the end of the user's speech (detected by the server) to the "
            "answer's first audio (its first text in a text-only session).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.vad_seconds = Counter(
            "omniserve_realtime_vad_seconds",
            "CPU time spent detecting speech in realtime sessions' audio (on worker threads).",
            registry=registry,
        )
        self.ttft = Histogram(
            "omniserve_time_to_first_token_seconds",
            "Admission to the first text or reasoning token.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttfa = Histogram(
            "omniserve_time_to_first_audio_seconds",
            "Admission to the first audio chunk.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.gap = Histogram(
            "omniserve_inter_chunk_gap_seconds",
            "Time between consecutive text, reasoning or audio chunks of a stream.",
            ["model"],
            buckets=GAP_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "omniserve_request_duration_seconds",
            "Admission to the end of the stream.",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "omniserve_tokens",
            "Tokens used, by model and kind (prompt_* by modality, completion_*).",
            ["model", "kind"],
            registry=registry,
        )
        self.audio_seconds = Counter(
            "omniserve_audio_output_seconds",
            "Seconds of speech streamed.",
            ["model"],
            registry=registry,
        )
        self.media = Histogram(
            "omniserve_media_seconds",
            "Media work per item: stage fetch (download or data URL) or decode.",
            ["stage", "kind"],
            buckets=MEDIA_BUCKETS,
            registry=registry,
        )
        self.refusals = Counter(
            "omniserve_rate_limit_refusals",
            "Requests refused by a key's limits, by limit (rpm, tpm, concurrency, quota).",
            ["limit"],
            registry=registry,
        )
        self.degraded = Counter(
            "omniserve_dependency_failures",
            "Requests that met an unavailable dependency (database, limits): answered 503, or "
            "served anyway with fail_open.",
            ["dependency"],
            registry=registry,
        )
        self.injected_faults = Counter(
            "omniserve_injected_faults",
            "Faults injected on purpose by the emulator's rules or the X-Omniserve-Fault "
            "header, by kind (error, error_mid_stream, stall, drop, truncate, trickle).",
            ["kind"],
            registry=registry,
        )
        self.ledger_dropped = Counter(
            "omniserve_ledger_dropped_rows",
            "Ledger rows given up because the database stayed unavailable past the buffer.",
            registry=registry,
        )
        self.engine_queue = Gauge(
            "omniserve_engine_queue_depth",
            "Requests waiting for the engine (0 for engines without a queue).",
            registry=registry,
        )
        self.ledger_queue = Gauge(
            "omniserve_ledger_queue_depth",
            "Ledger entries waiting to be written.",
            registry=registry,
        )
        self.tasks = Gauge(
            "omniserve_event_loop_tasks", "Tasks alive on the event loop.", registry=registry
        )
        self.loop_lag = Histogram(
            "omniserve_event_loop_lag_seconds",
            "How late the event loop ran a timer, sampled 20 times a second: how long something "
            "held it (every request and stream waits that long).",
            buckets=LAG_BUCKETS,
            registry=registry,
        )

    def error(self, code: str) -> None:
        self.errors.labels(code if code in _known_codes() else OTHER).inc()

    def model(self, name: str) -> str:
        """The model label: a served name, or ``other`` (a bounded set whatever clients send)."""
        return name if name in self.models else OTHER

    def watch_engine(self, depth: Callable[[], int]) -> None:
        self.engine_queue.set_function(lambda: float(depth()))

    def watch_ledger(self, depth: Callable[[], int]) -> None:
        self.ledger_queue.set_function(lambda: float(depth()))

    def watch_speech(self, counts: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        """Sentences spoken so far by (engine, why), as ``counts`` reports them at each scrape
        (the neural voice's choices between itself and espeak-ng)."""
        self.registry.register(_SpeechCollector(counts))

    def watch_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self.tasks.set_function(lambda: float(len(asyncio.all_tasks(loop))))

    async def watch_lag(self, every_s: float = 0.05) -> None:
        """Runs until cancelled: how late each timer ``every_s`` ahead fires, into ``loop_lag``."""
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            await asyncio.sleep(every_s)
            self.loop_lag.observe(max(0.0, loop.time() - began - every_s))

    def observe_media(self, stage: str, kind: str, seconds: float) -> None:
        self.media.labels(stage, kind).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _SpeechCollector(Collector):
    def __init__(self, counts: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "omniserve_speech_sentences",
            "Sentences of speech by the engine that read them (kokoro, espeak) and why: neural, "
            "language (not one the neural voice speaks), unreadable, late (it would not have "
            "finished in time), rescued (espeak-ng started on a sentence the neural voice was "
            "late with).",
            labels=["engine", "reason"],
        )
        for (engine, reason), value in sorted(self._counts().items()):
            family.add_metric([engine, reason], value)
        yield family

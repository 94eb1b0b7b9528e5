"""A request's media, fetched and decoded once, concurrently, off the event loop.

Every media part of a validated job is fetched through the one safe fetcher (bounded per request
and server-wide), decoded and preprocessed in a worker pool sized to the machine, and attached
to the job as engine-ready input with its token count. The first failure refuses the request
and cancels the rest.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TypeVar

import anyio

from omniserve.catalog import MediaLimits
from omniserve.config import MediaSettings
from omniserve.errors import ApiError
from omniserve.job import ChatMessage, DecodedMedia, GenerationJob, MediaItem
from omniserve.media.audio import decode_audio
from omniserve.media.budget import AUDIO_COST, MB, VIDEO_COST, DecodeBudget, RequestBudget
from omniserve.media.fetch import MediaFetcher
from omniserve.media.frames import decode_frames
from omniserve.media.image import decode_image
from omniserve.media.policy import MediaPolicy
from omniserve.media.resolve import Resolver
from omniserve.media.video import decode_video

T = TypeVar("T")


def _first_api_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The client's error among a task group's failures (the others were cancelled for it)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            exc = _first_api_error(exc)
        if isinstance(exc, ApiError):
            return exc
    return group


@dataclass(frozen=True)
class _Fetch:
    """How one request fetches: its own slots, and who it is fetching for."""

    slots: asyncio.Semaphore
    caller: str | None


class MediaProcessor:
    def __init__(self, settings: MediaSettings, *, resolver: Resolver | None = None) -> None:
        self.settings = settings
        self.fetcher = MediaFetcher(settings, resolver=resolver)
        # Told each item's fetch and decode seconds: observe(stage, kind, seconds).
        self.observe: Callable[[str, str, float], None] | None = None
        self._pool = ThreadPoolExecutor(
            max_workers=settings.workers, thread_name_prefix="omniserve-media"
        )
        # Every decode in the server holds its price from this while it runs.
        self.budget = DecodeBudget(settings.decode_memory_mb * MB)

    async def close(self) -> None:
        await self.fetcher.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def process(
        self,
        job: GenerationJob,
        policy: MediaPolicy,
        *,
        keep_bytes: bool = False,
        caller: str | None = None,
    ) -> GenerationJob:
        """``job`` with every media item decoded; raises ``InvalidMedia`` on the first failure.

        ``keep_bytes`` also keeps each item's fetched bytes, for engines that forward media;
        ``caller`` names who asks, whose downloads at once are capped together."""
        items = [(i, j) for i, m in enumerate(job.messages) for j in range(len(m.media))]
        if not items:
            return job
        gate = asyncio.Semaphore(self.settings.request_concurrency)
        limits = job.model.media
        results: dict[tuple[int, int], tuple[DecodedMedia, tuple[bytes, ...]]] = {}
        spend = RequestBudget(self.settings.request_decode_mb * MB)

        async def one(i: int, j: int) -> None:
            item = job.messages[i].media[j]
            results[(i, j)] = await self._item(
                item, policy, limits, _Fetch(gate, caller), keep_bytes, spend
            )

        # anyio's task group, not asyncio.TaskGroup: on Python 3.11 the latter leaves the
        # request's task cancelled after a child fails, which then escapes the response's own
        # task group (a 400 followed by a dropped keep-alive connection).
        try:
            async with anyio.create_task_group() as group:
                for i, j in items:
                    group.start_soon(one, i, j)
        except BaseExceptionGroup as group_error:
            raise _first_api_error(group_error) from None
        messages = list(job.messages)
        for i, message in enumerate(job.messages):
            if message.media:
                media = tuple(
                    replace(item, decoded=results[(i, j)][0], raw=results[(i, j)][1])
                    for j, item in enumerate(message.media)
                )
                messages[i] = ChatMessage(role=message.role, text=message.text, media=media)
        return replace(job, messages=tuple(messages))

    async def _item(
        self,
        item: MediaItem,
        policy: MediaPolicy,
        limits: MediaLimits,
        gate: _Fetch,
        keep_bytes: bool,
        spend: RequestBudget,
    ) -> tuple[DecodedMedia, tuple[bytes, ...]]:
        kind = item.kind
        started = time.monotonic()
        if kind == "video":  # a list of frames
            assert isinstance(item.source, tuple)
            frames = await asyncio.gather(
                *(self._fetch(url, limits.image_max_bytes, gate) for url in item.source)
            )
            fetched = time.monotonic()
            decoded: DecodedMedia = await self._run(
                decode_frames, frames, policy, limits, budget=self.budget, request=spend
            )
            self._observe(kind, started, fetched)
            return decoded, tuple(frames) if keep_bytes else ()
        assert isinstance(item.source, str)
        if kind == "image_url":
            data = await self._fetch(item.source, limits.image_max_bytes, gate)
            fetched = time.monotonic()
            decoded = await self._run(
                decode_image, data, policy, limits, budget=self.budget, request=spend
            )
        elif kind == "input_audio":
            data = await self._fetch(item.source, limits.audio_max_bytes, gate, bare_base64=True)
            fetched = time.monotonic()
            decoded = await self._run(
                self._held, AUDIO_COST, "this audio", spend, decode_audio, data, policy, limits
            )
        else:
            data = await self._fetch(item.source, limits.video_max_bytes, gate)
            fetched = time.monotonic()
            decoded = await self._run(
                self._held, VIDEO_COST, "this video", spend, decode_video, data, policy, limits
            )
        self._observe(kind, started, fetched)
        return decoded, (data,) if keep_bytes else ()

    def _observe(self, kind: str, started: float, fetched: float) -> None:
        if self.observe is not None:
            self.observe("fetch", kind, fetched - started)
            self.observe("decode", kind, time.monotonic() - fetched)

    async def _fetch(
        self, source: str, max_bytes: int, gate: _Fetch, *, bare_base64: bool = False
    ) -> bytes:
        async with gate.slots:
            return await self.fetcher.fetch(
                source, max_bytes=max_bytes, bare_base64=bare_base64, caller=gate.caller
            )

    async def _run(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def _held(
        self, cost: int, what: str, spend: RequestBudget, fn: Callable[..., T], *args: object
    ) -> T:
        """``fn(*args)`` (a decode priced at ``cost``) within the request's and the server's
        budgets; on a worker thread."""
        spend.spend(cost, what)
        with self.budget.hold(cost, what):
            return fn(*args)

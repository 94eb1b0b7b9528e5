"""The transformers engine: open Qwen2.5-Omni / Qwen3-Omni weights, in this process.

Requests run one at a time on one worker thread (a model on a GPU gains nothing from two Python
threads calling ``generate``), in arrival order; up to ``queue_size`` wait, and more are refused
with a 429 and ``Retry-After``. A request that fails (GPU out of memory included) fails alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import anyio

from omniserve.catalog import Catalog, ModelSpec
from omniserve.config import ServedCheckpoint, TransformersSettings
from omniserve.engines.base import EngineEvent, Finished, GenerationJob
from omniserve.engines.hf.checkpoint import (
    FAMILY_BASE,
    CheckpointError,
    CheckpointInfo,
    inspect_checkpoint,
    served_spec,
    voice_map,
)
from omniserve.engines.hf.loader import LoadedModel, load
from omniserve.engines.hf.runner import Cancelled, RequestRun, RunOptions
from omniserve.engines.inputs import AudioInput
from omniserve.errors import (
    ApiError,
    EngineBusy,
    InternalError,
    InvalidParameter,
    ServiceUnavailable,
)
from omniserve.media.policy import MediaPolicy, open_policy

log = logging.getLogger("omniserve.transformers")


class EngineOutOfMemory(ServiceUnavailable):
    def __init__(self) -> None:
        super().__init__(
            "The model ran out of GPU memory on this request; retry with shorter input, "
            "fewer or smaller media, or a lower max_tokens."
        )


@dataclass
class ServedName:
    """One served name: which weights answer it, with or without thinking, and its voices."""

    spec: ModelSpec
    answer: str | None  # checkpoint key for requests without thinking
    thinker: str | None  # checkpoint key for requests with thinking
    voices: dict[str, str]  # catalog voice -> model speaker
    family: str


def _key(served: ServedCheckpoint) -> str:
    return f"{served.checkpoint}@{served.revision or ''}"


# Events of one stream waiting for the client; past this the model waits for the client.
BACKLOG = 256


class FifoQueue:
    """One request at a time, the rest in arrival order, at most ``size`` waiting."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.waiting = 0
        self.lock = asyncio.Lock()  # asyncio's lock wakes waiters in FIFO order

    async def acquire(self) -> None:
        if self.lock.locked() and self.waiting >= self.size:
            raise EngineBusy(retry_after=2.0)
        self.waiting += 1
        try:
            await self.lock.acquire()
        finally:
            self.waiting -= 1

    def release(self) -> None:
        self.lock.release()


class TransformersEngine:
    name = "transformers"
    speaks = True  # when asked for audio, the model itself speaks

    def __init__(
        self, settings: TransformersSettings, catalog: Catalog, *, chunk_bytes: int
    ) -> None:
        if not settings.models:
            raise CheckpointError(
                "the transformers engine needs a model: --model Qwen/Qwen2.5-Omni-7B "
                "(a Hub id or a local directory), or [[transformers.models]] in the config file"
            )
        self.settings = settings
        self.chunk_bytes = chunk_bytes
        self.checkpoints: dict[str, ServedCheckpoint] = {}
        self.infos: dict[str, CheckpointInfo] = {}
        for served in settings.models:
            key = _key(served)
            if key not in self.infos:
                self.checkpoints[key] = served
                self.infos[key] = inspect_checkpoint(served)
        self.served = self._served_names(catalog)
        self.loaded: dict[str, LoadedModel] = {}
        self.queue = FifoQueue(settings.queue_size)
        self._executor: ThreadPoolExecutor | None = None
        self._policies: dict[str, MediaPolicy] = {}

    def _speaks(self, info: CheckpointInfo) -> bool:
        return info.has_talker and self.settings.audio_output != "off"

    def _served_names(self, catalog: Catalog) -> dict[str, ServedName]:
        by_name: dict[str, list[ServedCheckpoint]] = {}
        for served in self.settings.models:
            name = served.name or FAMILY_BASE[self.infos[_key(served)].family]
            by_name.setdefault(name, []).append(served)
        out: dict[str, ServedName] = {}
        for name, entries in by_name.items():
            infos = {_key(e): self.infos[_key(e)] for e in entries}
            families = {i.family for i in infos.values()}
            if len(families) > 1:
                raise CheckpointError(f"{name}: its checkpoints are of different families")
            family = families.pop()
            answer = [k for k, i in infos.items() if i.kind != "thinking"]
            thinker = [k for k, i in infos.items() if i.kind == "thinking"]
            if len(answer) > 1 or len(thinker) > 1:
                raise CheckpointError(
                    f"{name}: at most one checkpoint without thinking and one with thinking"
                )
            base = catalog.get(name) if name in catalog else catalog.get(FAMILY_BASE[family])
            a = infos[answer[0]] if answer else None
            t = infos[thinker[0]] if thinker else None
            speaking = a if a is not None and self._speaks(a) else None
            voices: dict[str, str] = {}
            if speaking is not None:
                overrides = next(e.voices for e in entries if _key(e) == answer[0])
                voices = voice_map(base, speaking, overrides)
            spec = served_spec(name, base, answer=a, thinker=t, speaks=speaking is not None)
            out[name] = ServedName(
                spec=spec,
                answer=answer[0] if answer else None,
                thinker=thinker[0] if thinker else None,
                voices=voices,
                family=family,
            )
        return out

    def catalog(self) -> Catalog:
        """The names this engine serves, with what the weights can really do."""
        return Catalog(s.spec for s in self.served.values())

    # -- lifetime --------------------------------------------------------------------------

    def queue_depth(self) -> int:
        """Requests waiting for the model (the one running is not counted)."""
        return self.queue.waiting

    async def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omniserve-model")
        for key, info in self.infos.items():
            if key not in self.loaded:
                self.loaded[key] = await asyncio.get_running_loop().run_in_executor(
                    self._executor, load, info, self.settings
                )

    async def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self.loaded.clear()

    # -- media -----------------------------------------------------------------------------

    def media_policy(self, model: ModelSpec) -> MediaPolicy:
        """The open processor's counting, with the image limits of the checkpoint's processor."""
        served = self.served[model.name]
        key = served.answer or served.thinker
        assert key is not None
        policy = self._policies.get(key)
        if policy is None:
            policy = open_policy(
                "qwen2.5-omni" if served.family == "qwen2.5-omni" else "qwen3-omni"
            )
            loaded = self.loaded.get(key)
            if loaded is not None:
                policy = _with_processor_limits(policy, loaded.processor)
                self._policies[key] = policy
        return policy

    # -- generation ------------------------------------------------------------------------

    async def generate(self, job: GenerationJob) -> AsyncIterator[EngineEvent]:
        served = self.served[job.model.name]
        key = served.thinker if job.thinking and served.thinker else served.answer or served.thinker
        assert key is not None
        loaded = self.loaded.get(key)
        if loaded is None or self._executor is None:
            raise ServiceUnavailable("The model is still loading; retry in a moment.")
        speaker = None
        if job.voice is not None:
            speaker = served.voices.get(job.voice.name)
            if speaker is None or not loaded.speaks:
                raise InvalidParameter(
                    f"Voice {job.voice.name} is not available on this server.", param="audio.voice"
                )
        if loaded.info.kind == "captioner" and not _last_user_has_audio(job):
            raise InvalidParameter(
                f"The model {job.model_name} captions audio: send one input_audio part in the "
                "last user message.",
                param="messages",
            )
        limits = job.model.mode_limits(job.thinking)
        thinks = loaded.info.kind == "thinking"
        budget = (
            (job.thinking_budget or job.model.mode_limits(True).max_reasoning) if thinks else None
        )
        # The answer's own max_tokens comes after the reasoning and its closing tag.
        max_new = (job.max_tokens or limits.max_output) + (budget + 1 if budget else 0)
        options = RunOptions(
            speaker=speaker,
            reasoning_visible=job.thinking,
            thinks=thinks,
            max_new_tokens=max_new,
            reasoning_budget=budget,
            max_answer_tokens=job.max_tokens if thinks else None,
            chunk_bytes=self.chunk_bytes,
            generate_kwargs=dict(self.settings.generate_kwargs),
        )
        await self.queue.acquire()
        try:
            async for event in self._run(loaded, job, options):
                yield event
        finally:
            self.queue.release()

    async def _run(
        self, loaded: LoadedModel, job: GenerationJob, options: RunOptions
    ) -> AsyncIterator[EngineEvent]:
        loop = asyncio.get_running_loop()
        # Bounded: a client that reads slowly makes the model wait rather than this process
        # buffer its whole answer (at most BACKLOG events per stream).
        events: asyncio.Queue[EngineEvent | BaseException | None] = asyncio.Queue(BACKLOG)
        cancel = threading.Event()

        def emit(item: EngineEvent | BaseException | None) -> None:
            put = asyncio.run_coroutine_threadsafe(events.put(item), loop)
            while True:
                try:
                    put.result(timeout=0.1)
                    return
                except concurrent.futures.TimeoutError:
                    if cancel.is_set():  # the request is gone: nobody will read this
                        put.cancel()
                        return

        def work() -> None:
            try:
                RequestRun(loaded, job, options, emit, cancel).run()
            except Cancelled:
                pass
            except BaseException as exc:  # reported to the request, never to the process
                emit(exc)
            finally:
                emit(None)

        assert self._executor is not None
        future = loop.run_in_executor(self._executor, work)
        try:
            while True:
                item = await events.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise _as_api_error(item, job)
                yield item
                if isinstance(item, Finished):
                    break
        finally:
            cancel.set()
            # Keep the model to this request until generate() has really returned.
            with anyio.CancelScope(shield=True):
                await future


def _last_user_has_audio(job: GenerationJob) -> bool:
    for message in reversed(job.messages):
        if message.role == "user":
            return any(isinstance(item.decoded, AudioInput) for item in message.media)
    return False


def _as_api_error(exc: BaseException, job: GenerationJob) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("request %s ran out of GPU memory", job.request_id)
            return EngineOutOfMemory()
    except ImportError:  # pragma: no cover
        pass
    log.error("request %s failed in the model", job.request_id, exc_info=exc)
    return InternalError("The model failed on this request.")


def _with_processor_limits(policy: MediaPolicy, processor: Any) -> MediaPolicy:
    from dataclasses import replace

    image = getattr(processor, "image_processor", None)
    size = getattr(image, "size", None) or {}
    f2 = policy.factor * policy.factor
    lo, hi = size.get("shortest_edge"), size.get("longest_edge")
    if not lo or not hi:
        return policy
    return replace(
        policy, image_min_tokens=max(1, int(lo) // f2), image_max_tokens=max(1, int(hi) // f2)
    )

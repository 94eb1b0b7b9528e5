"""The transformers engine: open Qwen2.5-Omni / Qwen3-Omni weights, in this process.

Each loaded checkpoint has one scheduler (``scheduler.py``): a thread that decodes every running
request together, up to ``max_batch`` at once, the talker fed by the thinker as it writes.
Requests beyond the free slots wait in arrival order, up to ``queue_size``; more are refused with
a 429 and ``Retry-After``. Before the server opens its port every stage has run once (and, on a
GPU, every decode step has been captured as CUDA graphs), so the first request is as fast as the
rest. A request that fails (GPU out of memory included) fails alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal

from rich.console import Console

from omniserve.audio_tasks import OPENAI_VOICES, SpeechTask
from omniserve.catalog import Catalog, ModelSpec, Voice
from omniserve.config import ServedCheckpoint, TransformersSettings
from omniserve.engines.base import Engine
from omniserve.engines.hf.checkpoint import (
    FAMILY_BASE,
    CheckpointError,
    CheckpointInfo,
    inspect_checkpoint,
    served_spec,
    voice_map,
)
from omniserve.engines.hf.kvcache import cache_bytes
from omniserve.engines.hf.loader import LoadedModel, free_memory, has_native_video, load
from omniserve.engines.hf.options import (
    from_generation_config,
    split_generate_kwargs,
    talker_sampling,
    thinker_sampling,
)
from omniserve.engines.hf.prompt import ModelInputs, build_inputs
from omniserve.engines.hf.request import Plan, Request
from omniserve.engines.hf.scheduler import Scheduler
from omniserve.engines.hf.warmup import capture_graphs, warm_up
from omniserve.errors import (
    ApiError,
    EngineBusy,
    InternalError,
    InvalidParameter,
    ServiceUnavailable,
)
from omniserve.events import EngineEvent, Finished
from omniserve.job import (
    ChatMessage,
    GenerationJob,
    MediaAccounting,
    PromptTokens,
    SamplingParams,
)
from omniserve.speech.tempo import paced

log = logging.getLogger("omniserve.transformers")

# Longest context a slot holds unless max_seq_len says otherwise (memory grows with it).
DEFAULT_MAX_SEQ_LEN = 32768
# What the model is told before a text it reads aloud (its answer is then made that text).
READ_ALOUD = "Read the following text aloud, word for word:\n\n"
# Positions the talker's slot holds beyond the thinker's (its speech codes).
TALKER_EXTRA = 16


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


class TransformersEngine(Engine):
    name = "transformers"
    speaks = True  # when asked for audio, the model itself speaks
    hears = True

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
                info = inspect_checkpoint(served)
                limit = settings.max_seq_len or DEFAULT_MAX_SEQ_LEN
                self.infos[key] = replace(info, context=min(info.context, limit))
        self.stage_kwargs = split_generate_kwargs(settings.generate_kwargs)
        self.served = self._served_names(catalog)
        self.loaded: dict[str, LoadedModel] = {}
        self.schedulers: dict[str, Scheduler] = {}
        self._active: dict[str, int] = {}  # requests accepted per checkpoint, not yet ended
        self._executor: ThreadPoolExecutor | None = None
        self._prepare: ThreadPoolExecutor | None = None
        self._accounting: dict[str, MediaAccounting] = {}
        self.console = Console(stderr=True)

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
        """Requests waiting for a free slot (the running ones are not counted)."""
        return sum(s.queued for s in self.schedulers.values())

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omniserve-load")
            self._prepare = ThreadPoolExecutor(max_workers=2, thread_name_prefix="omniserve-inputs")
        for key, info in self.infos.items():
            if key not in self.loaded:
                self.loaded[key] = await loop.run_in_executor(
                    self._executor, load, info, self.settings
                )
            if key not in self.schedulers:
                scheduler = await loop.run_in_executor(
                    self._executor, self._scheduler, self.loaded[key]
                )
                self.schedulers[key] = scheduler
                scheduler.start()
                await warm_up(self, key, console=self.console)

    def _scheduler(self, loaded: LoadedModel) -> Scheduler:
        import torch

        capacity = loaded.info.context
        talker_codes = int(self.stage_kwargs["talker"].get("max_new_tokens", 4096))
        self._check_cache_memory(loaded, capacity, capacity + talker_codes + TALKER_EXTRA)
        with torch.inference_mode():
            scheduler = Scheduler(
                loaded,
                slots=self.settings.max_batch,
                capacity=capacity,
                talker_capacity=capacity + talker_codes + TALKER_EXTRA,
                vocoder=dict(self.stage_kwargs["token2wav"]),
            )
            if self.settings.cuda_graphs and str(loaded.device).startswith("cuda"):
                began = time.perf_counter()
                capture_graphs(scheduler, self.console)
                log.info("CUDA graphs captured in %.1f s", time.perf_counter() - began)
        return scheduler

    def _check_cache_memory(self, loaded: LoadedModel, capacity: int, talker: int) -> None:
        """Refuse to start, with what to change, when the slot caches cannot fit."""
        config = loaded.model.config
        size = loaded.model.thinker.get_input_embeddings().weight.element_size()
        slots = self.settings.max_batch
        text = config.thinker_config.text_config
        needed = cache_bytes(text, slots=slots, positions=capacity, element_size=size)
        if loaded.speaks:
            speech = config.talker_config
            speech = getattr(speech, "text_config", None) or speech
            needed += cache_bytes(speech, slots=slots, positions=talker, element_size=size)
        free = free_memory(str(loaded.device))
        if free is not None and needed * self.settings.memory_headroom > free:
            raise CheckpointError(
                f"the key/value cache of {slots} slots x {capacity} positions needs "
                f"{needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB is free on {loaded.device}; "
                "lower transformers.max_batch or transformers.max_seq_len"
            )
        log.info("key/value cache: %.2f GiB for %d slots", needed / 2**30, slots)

    async def close(self) -> None:
        for scheduler in self.schedulers.values():
            await asyncio.get_running_loop().run_in_executor(None, scheduler.stop)
        self.schedulers.clear()
        for pool in (self._executor, self._prepare):
            if pool is not None:
                pool.shutdown(wait=True)
        self._executor = self._prepare = None
        self.loaded.clear()

    # -- media -----------------------------------------------------------------------------

    def media_accounting(self, model: ModelSpec) -> MediaAccounting:
        """The open processor's counting, with the image limits of the checkpoint's processor."""
        served = self.served[model.name]
        key = served.answer or served.thinker
        assert key is not None
        known = self._accounting.get(key)
        if known is not None:
            return known
        family: Literal["qwen2.5-omni", "qwen3-omni"] = (
            "qwen2.5-omni" if served.family == "qwen2.5-omni" else "qwen3-omni"
        )
        accounting = MediaAccounting(kind="open", family=family)
        loaded = self.loaded.get(key)
        if loaded is not None:
            accounting = _with_processor_limits(accounting, loaded.processor)
            self._accounting[key] = accounting
        return accounting

    # -- generation ------------------------------------------------------------------------

    def _checkpoint(self, job: GenerationJob) -> tuple[ServedName, str]:
        served = self.served[job.model.name]
        key = served.thinker if job.thinking and served.thinker else served.answer or served.thinker
        assert key is not None
        return served, key

    def plan(self, job: GenerationJob, read: str | None = None) -> Plan:
        """How this request will run: sampling per stage, speaker, reasoning, lengths;
        ``read``: the text the thinker is made to write (read aloud by the talker)."""
        served, key = self._checkpoint(job)
        loaded = self.loaded.get(key)
        if loaded is None:
            raise ServiceUnavailable("The model is still loading; retry in a moment.")
        # The validator admitted only this name's voices, and audio only where it speaks.
        speaker = served.voices[job.voice.name] if job.voice is not None else None
        assert speaker is None or loaded.speaks
        limits = job.model.mode_limits(job.thinking)
        thinks = loaded.info.kind == "thinking"
        budget = (
            (job.thinking_budget or job.model.mode_limits(True).max_reasoning) if thinks else None
        )
        # The answer's own max_tokens comes after the reasoning and its closing tag.
        max_new = (job.max_tokens or limits.max_output) + (budget + 1 if budget else 0)
        model = loaded.model
        thinker = thinker_sampling(
            job,
            from_generation_config(model.thinker.generation_config),
            eos=self._text_eos(loaded),
            max_new_tokens=max_new,
            overrides=self.stage_kwargs["thinker"],
        )
        talker = None
        if speaker is not None:
            talker = talker_sampling(
                loaded.info.family,
                eos=self._speech_eos(loaded),
                banned=self._speech_banned(loaded),
                seed=job.sampling.seed,
                overrides=self.stage_kwargs["talker"],
            )
        script = None
        if read is not None:
            tokenizer = loaded.processor.tokenizer
            end = tokenizer.convert_tokens_to_ids("<|im_end|>")
            if not isinstance(end, int) or end not in thinker.eos:
                end = min(thinker.eos)
            script = (*tokenizer.encode(read, add_special_tokens=False), end)
            thinker = replace(thinker, max_new_tokens=len(script))
        return Plan(
            thinker=thinker,
            talker=talker,
            speaker=speaker,
            thinks=thinks,
            reasoning_visible=job.thinking,
            reasoning_budget=budget,
            max_answer_tokens=job.max_tokens if thinks else None,
            chunk_bytes=self.chunk_bytes,
            read=script,
        )

    @staticmethod
    def _text_eos(loaded: LoadedModel) -> frozenset[int]:
        tokenizer = loaded.processor.tokenizer
        ids = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
        known = frozenset(i for i in ids if isinstance(i, int) and i >= 0)
        if loaded.info.family == "qwen3-omni":
            return known
        # Qwen2.5: what its thinker's generation config ends on, as generate() does.
        configured = from_generation_config(loaded.model.thinker.generation_config).eos
        return configured or known

    @staticmethod
    def _speech_eos(loaded: LoadedModel) -> frozenset[int]:
        config = loaded.model.config.talker_config
        if loaded.info.family == "qwen3-omni":
            return frozenset({int(config.codec_eos_token_id)})
        vocab = int(config.vocab_size)
        defaults = [i for i in (8292, 8294) if i < vocab]
        return frozenset(defaults or [int(config.tts_codec_end_token_id)])

    def _speech_banned(self, loaded: LoadedModel) -> frozenset[int]:
        talker = loaded.model.talker
        if loaded.info.family == "qwen3-omni":
            vocab = int(loaded.model.config.talker_config.text_config.vocab_size)
            eos = int(loaded.model.config.talker_config.codec_eos_token_id)
            return frozenset(i for i in range(vocab - 1024, vocab) if i != eos)
        # As generate(): never the codec start. And never an id token2wav has no embedding for
        # (the codec's special ids; a trained talker does not say them, a random one would).
        vocab = int(loaded.model.config.talker_config.vocab_size)
        embedded = int(loaded.model.config.token2wav_config.dit_config.num_embeds) + 1
        ends = self._speech_eos(loaded)
        specials = {i for i in range(embedded, vocab) if i not in ends}
        return frozenset({int(talker.codec_bos_token), *specials})

    def generate(self, job: GenerationJob) -> AsyncGenerator[EngineEvent, None]:
        return self._generate(job)

    def read_aloud(self, task: SpeechTask) -> AsyncGenerator[EngineEvent, None] | None:
        """The text read by the talker of the served name ``task.model`` (or the first that
        speaks): the thinker is made to write the text token by token, and the talker speaks
        it as it would an answer of its own. ``speed`` is applied to the audio afterwards."""
        speaking = [s for s in self.served.values() if s.voices]
        if not speaking:
            return None
        served = self.served.get(task.model)
        if served is None or not served.voices:
            served = speaking[0]
        spec = served.spec
        voice = _voice_for(spec, task.voice)
        ask = READ_ALOUD + task.text
        job = GenerationJob(
            request_id=task.request_id,
            model_name=spec.name,
            model=spec,
            messages=(ChatMessage(role="user", text=ask),),
            prompt_tokens=PromptTokens(),
            voice=voice,
            sampling=SamplingParams(seed=0),
        )
        return paced(self._generate(job, read=task.text), task.speed)

    async def _generate(
        self, job: GenerationJob, read: str | None = None
    ) -> AsyncGenerator[EngineEvent, None]:
        _, key = self._checkpoint(job)
        scheduler = self.schedulers.get(key)
        if scheduler is None or self._prepare is None:
            raise ServiceUnavailable("The model is still loading; retry in a moment.")
        plan = self.plan(job, read)
        if self._active.get(key, 0) >= self.settings.max_batch + self.settings.queue_size:
            raise EngineBusy(retry_after=2.0)
        self._active[key] = self._active.get(key, 0) + 1
        request: Request | None = None
        try:
            loop = asyncio.get_running_loop()
            loaded = self.loaded[key]
            inputs = await loop.run_in_executor(self._prepare, self._inputs, loaded, job, plan)
            capacity = scheduler.thinker.capacity
            length = int(inputs.tensors["input_ids"].shape[1])
            if length >= capacity - 1:
                raise InvalidParameter(
                    f"The input is {length} tokens as the model reads it; this server holds "
                    f"at most {capacity - 2} per request (max_seq_len).",
                    param="messages",
                )
            request = Request(job, plan, inputs, loop)
            scheduler.submit(request)
            while True:
                item = await request.events.get()
                request.consumed()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise _as_api_error(item, job)
                yield item
                if isinstance(item, Finished):
                    break
        finally:
            self._active[key] -= 1
            if request is not None:
                request.cancel.set()
                scheduler.poke()

    def _inputs(self, loaded: LoadedModel, job: GenerationJob, plan: Plan) -> ModelInputs:
        return build_inputs(
            job,
            loaded.processor,
            loaded.info.family,
            speaks=plan.speaks,
            native_video=has_native_video(loaded.processor),
        )

    def warmup_job(self, key: str) -> GenerationJob:
        """A short request that runs every stage of one checkpoint once."""
        name = next(n for n, s in self.served.items() if key in (s.answer, s.thinker))
        served = self.served[name]
        spec = served.spec
        voice = spec.voices[0] if spec.voices and key == served.answer else None
        return GenerationJob(
            request_id="warm-up",
            model_name=name,
            model=spec,
            messages=(ChatMessage(role="user", text="Hello."),),
            prompt_tokens=PromptTokens(),
            voice=voice,
            thinking=key == served.thinker and key != served.answer,
            max_tokens=8,
            sampling=SamplingParams(seed=0),
        )


def _voice_for(spec: ModelSpec, name: str) -> Voice:
    """The served name's voice called ``name`` (any case); OpenAI's voice names stand for the
    catalog voice they are mapped to, or the model's first voice where it lacks that one."""
    by_name = {v.name.lower(): v for v in spec.voices}
    wanted = name.lower()
    if wanted in by_name:
        return by_name[wanted]
    alias = OPENAI_VOICES.get(wanted)
    if alias is not None:
        return by_name.get(alias.lower(), spec.voices[0])
    known = ", ".join(v.name for v in spec.voices)
    raise InvalidParameter(
        f"{spec.name} has no voice {name!r}; its voices are {known} (or one of OpenAI's names).",
        param="voice",
    )


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


def _with_processor_limits(accounting: MediaAccounting, processor: Any) -> MediaAccounting:
    """The image pixel range the checkpoint's own processor sets, where it sets one."""
    image = getattr(processor, "image_processor", None)
    size = getattr(image, "size", None) or {}
    lo, hi = size.get("shortest_edge"), size.get("longest_edge")
    if not lo or not hi:
        return accounting
    return replace(accounting, image_min_pixels=int(lo), image_max_pixels=int(hi))

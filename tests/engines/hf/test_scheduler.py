"""The batched decode loop against transformers' own generate(), on the tiny checkpoints.

With greedy decoding every request must come out exactly as ``generate()`` makes it, alone or
batched with requests of other lengths arriving at other times: the same text tokens and the same
speech codes. Qwen2.5-Omni's codes are compared with the talker's own forward fed as generate()
feeds it, but with its attention mask (transformers 5's generate() drops an all-ones mask, which
is also how the talker's forward recognises its first step; see ``talker25.py``).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from rich.console import Console

from omniserve.catalog import Catalog
from omniserve.config import ServedCheckpoint, TransformersSettings
from omniserve.engines.hf.checkpoint import inspect_checkpoint
from omniserve.engines.hf.engine import TransformersEngine
from omniserve.engines.hf.graphs import HostSyncError, no_host_sync
from omniserve.engines.hf.loader import LoadedModel, load
from omniserve.engines.hf.prompt import ModelInputs
from omniserve.engines.hf.request import Plan, Request
from omniserve.engines.hf.sampling import Sampling
from omniserve.engines.hf.scheduler import Scheduler
from omniserve.engines.hf.talker3 import Qwen3Talker
from omniserve.events import AudioDelta, EngineEvent, Finished, ReasoningDelta, TextDelta
from omniserve.job import GenerationJob, PromptTokens, SamplingParams
from tiny_omni import FAMILIES, QWEN3, QWEN25, QWEN25_TALKER_EOS, TOKENS

EOS = frozenset({TOKENS["im_end"]})
_MEDIA = {
    QWEN25: "<|vision_bos|><|IMAGE|><|vision_eos|>",
    QWEN3: "<|vision_start|><|image_pad|><|vision_end|>",
}
PROMPTS = ["hello there", "the quick brown fox jumps over the lazy dog", "a b c", "why?"]
SPEAKER = {QWEN25: "Ethan", QWEN3: "ethan"}
JOB = GenerationJob(
    request_id="00000000-0000-0000-0000-000000000000",
    model_name="qwen3-omni-flash",
    model=Catalog.default().get("qwen3-omni-flash"),
    messages=(),
    prompt_tokens=PromptTokens(),
)


@pytest.fixture(scope="module")
def loaded(tiny: Any) -> Any:
    settings = TransformersSettings(device="cpu", dtype="float32")
    cache: dict[str, LoadedModel] = {}

    def get(family: str) -> LoadedModel:
        if family not in cache:
            info = inspect_checkpoint(ServedCheckpoint(checkpoint=str(tiny[family])))
            cache[family] = load(info, settings, console=Console(file=io.StringIO()))
        return cache[family]

    return get


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def scheduler(loaded: Any, family: str) -> Iterator[Scheduler]:
    with torch.inference_mode():
        scheduler = Scheduler(loaded(family), slots=4, capacity=512, talker_capacity=1024)
    scheduler.start()
    yield scheduler
    scheduler.stop()


def inputs(loaded: LoadedModel, text: str, **media: Any) -> ModelInputs:
    prompt = f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    tensors = dict(loaded.processor(text=prompt, return_tensors="pt", **media))
    n = int(tensors["input_ids"].shape[1])
    return ModelInputs(prompt, tensors, PromptTokens(text=n), use_audio_in_video=False)


def speech(loaded: LoadedModel, codes: int) -> Sampling:
    talker = loaded.model.talker
    if loaded.info.family == QWEN25:
        eos, banned = frozenset({QWEN25_TALKER_EOS}), frozenset({int(talker.codec_bos_token)})
    else:
        eos = frozenset({int(loaded.model.config.talker_config.codec_eos_token_id)})
        vocab = int(loaded.model.config.talker_config.text_config.vocab_size)
        banned = frozenset(i for i in range(vocab - 1024, vocab) if i not in eos)
    return Sampling(
        repetition_penalty=1.05,
        max_new_tokens=codes,
        min_new_tokens=codes // 2,
        eos=eos,
        banned=banned,
    )


def plan(
    loaded: LoadedModel,
    *,
    tokens: int,
    codes: int | None = None,
    min_tokens: int = 0,
    thinks: bool = False,
    budget: int | None = None,
    answer_cap: int | None = None,
    **sampling: Any,
) -> Plan:
    return Plan(
        thinker=Sampling(max_new_tokens=tokens, min_new_tokens=min_tokens, eos=EOS, **sampling),
        talker=speech(loaded, codes) if codes else None,
        speaker=SPEAKER[loaded.info.family] if codes else None,
        thinks=thinks,
        reasoning_visible=thinks,
        reasoning_budget=budget,
        max_answer_tokens=answer_cap,
        chunk_bytes=4800,
    )


Result = tuple[Request, list[EngineEvent | BaseException]]


async def until(condition: Any, seconds: float = 10.0) -> bool:
    """Poll ``condition`` (state the scheduler thread changes) until it holds."""
    for _ in range(int(seconds / 0.002)):
        if condition():
            return True
        await asyncio.sleep(0.002)
    return bool(condition())


def serve(
    scheduler: Scheduler, work: list[tuple[Plan, ModelInputs]], *, stagger: int = 0,
    job: GenerationJob = JOB,
) -> list[Result]:  # fmt: skip
    """Submit every request (each ``stagger`` decode steps after the one before) and read all
    their events to the end."""

    async def scenario() -> list[Result]:
        loop = asyncio.get_running_loop()
        requests = [Request(job, p, i, loop) for p, i in work]

        async def read(request: Request) -> list[EngineEvent | BaseException]:
            events: list[EngineEvent | BaseException] = []
            while True:
                item = await asyncio.wait_for(request.events.get(), 60)
                request.consumed()
                assert item is not None
                events.append(item)
                if isinstance(item, Finished | BaseException):
                    return events

        readers = []
        for request in requests:
            if stagger and readers:
                target = scheduler.steps + stagger
                await until(lambda t=target: scheduler.steps >= t or not scheduler.running)
            scheduler.submit(request)
            readers.append(asyncio.create_task(read(request)))
        results = await asyncio.gather(*readers)
        return list(zip(requests, results, strict=True))

    return asyncio.run(scenario())


# -- references: transformers' own generate() -------------------------------------------------


def reference_text(
    loaded: LoadedModel, work: ModelInputs, tokens: int, min_tokens: int = 0
) -> list[int]:
    with torch.inference_mode():
        out = loaded.model.thinker.generate(
            **work.tensors, max_new_tokens=tokens, min_new_tokens=min_tokens, do_sample=False,
            eos_token_id=sorted(EOS),
        )  # fmt: skip
    return [int(t) for t in out[0, work.tensors["input_ids"].shape[1] :]]


def reference_qwen3(
    loaded: LoadedModel, work: ModelInputs, tokens: int, codes: int
) -> tuple[list[int], list[list[int]]]:
    """Text ids and speech frames of Qwen3-Omni's generate() (greedy)."""
    model = loaded.model
    frames: list[list[int]] = []

    def grab(module: Any, args: Any, output: Any) -> None:
        residual = output.hidden_states[-1]
        if residual is not None:
            frames.append([int(c) for c in residual[0]])

    hook = model.talker.register_forward_hook(grab)
    try:
        with torch.inference_mode():
            sequences, _ = model.generate(
                **work.tensors, speaker="Ethan", thinker_max_new_tokens=tokens,
                thinker_eos_token_id=sorted(EOS), thinker_do_sample=False,
                talker_do_sample=False, talker_max_new_tokens=codes,
                talker_min_new_tokens=codes // 2,
            )  # fmt: skip
    finally:
        hook.remove()
    text = [int(t) for t in sequences[0, work.tensors["input_ids"].shape[1] :]]
    return text, frames


def reference_qwen25(
    loaded: LoadedModel, work: ModelInputs, tokens: int, codes: int
) -> tuple[list[int], list[int]]:
    """Text ids of generate(), and the codes of the talker's own forward fed as generate()
    feeds it, with the attention mask it is meant to see (greedy, its logits processors)."""
    from transformers import (
        DynamicCache,
        LogitsProcessorList,
        MinNewTokensLengthLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        SuppressTokensLogitsProcessor,
    )

    model = loaded.model
    thinker, talker = model.thinker, model.talker
    embed = thinker.get_input_embeddings()
    ids = work.tensors["input_ids"]
    with torch.inference_mode():
        result = thinker.generate(
            **work.tensors, max_new_tokens=tokens, do_sample=False, eos_token_id=sorted(EOS),
            output_hidden_states=True, return_dict_in_generate=True,
        )  # fmt: skip
        generated = result.sequences[:, ids.shape[1] :]
        states = result.hidden_states
        parts = torch.cat([s[-1] + s[0] for s in states[1:]], dim=1)
        bos = torch.tensor([[model.speaker_map["Ethan"]["bos_token"]]])
        prompt = torch.cat([states[0][-1] + states[0][0], embed(bos), parts[:, :1]], dim=1)
        end = embed(torch.tensor([[talker.text_eos_token, talker.text_pad_token]]))
        parts = torch.cat([parts[:, 1:], end], dim=1)
        talker_ids = torch.cat(
            [torch.full_like(ids, talker.codec_mask_token),
             torch.tensor([[talker.codec_pad_token, talker.codec_bos_token]])], dim=1,
        )  # fmt: skip
        eos = [QWEN25_TALKER_EOS]
        processors = LogitsProcessorList([
            RepetitionPenaltyLogitsProcessor(1.05),
            MinNewTokensLengthLogitsProcessor(talker_ids.shape[1], codes // 2, eos),
            SuppressTokensLogitsProcessor([talker.codec_bos_token]),
        ])  # fmt: skip
        cache = DynamicCache(config=talker.config)
        talker.rope_deltas = None
        out = talker(
            input_ids=talker_ids, input_text_ids=torch.cat([ids, bos, generated[:, :1]], dim=1),
            inputs_embeds=prompt, attention_mask=torch.ones_like(talker_ids),
            thinker_reply_part=parts, cache=cache, use_cache=True,
        )  # fmt: skip
        sequence, out_codes = talker_ids, []
        while True:
            code = int(processors(sequence, out.logits[:, -1].float()).argmax(-1))
            sequence = torch.cat([sequence, torch.tensor([[code]])], dim=1)
            if code in eos:
                break
            out_codes.append(code)
            if len(sequence[0]) - talker_ids.shape[1] >= codes:
                break
            out = talker(
                input_ids=torch.tensor([[code]]), attention_mask=torch.ones_like(sequence),
                thinker_reply_part=out.thinker_reply_part, cache=cache, use_cache=True,
            )  # fmt: skip
    return [int(t) for t in generated[0]], out_codes


def text_of(events: list[EngineEvent | BaseException]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def finished(events: list[EngineEvent | BaseException]) -> Finished:
    last = events[-1]
    assert isinstance(last, Finished), last
    return last


# -- the same tokens as generate() ---------------------------------------------------------


def test_text_alone_and_batched_equals_generate(
    scheduler: Scheduler, loaded: Any, family: str
) -> None:
    model = loaded(family)
    lengths = [24, 9, 17, 3]
    work = [
        (plan(model, tokens=n), inputs(model, p)) for n, p in zip(lengths, PROMPTS, strict=True)
    ]
    expected = [reference_text(model, w, n) for (_, w), n in zip(work, lengths, strict=True)]
    alone = [serve(scheduler, [w])[0] for w in work]
    together = serve(scheduler, work)
    staggered = serve(scheduler, work, stagger=3)
    for results in (alone, together, staggered):
        assert [r.tokens for r, _ in results] == expected
        for (_, events), want in zip(results, expected, strict=True):
            done = finished(events)
            assert done.usage.completion.text == len([t for t in want if t not in EOS])
            assert done.reason == ("stop" if want[-1] in EOS else "length")
            tokenizer = model.processor.tokenizer
            # A character cut by the length limit is never sent half.
            whole = tokenizer.decode(want, skip_special_tokens=True).rstrip("\ufffd")
            assert text_of(events) == whole


def test_speech_alone_and_batched_equals_generate(
    scheduler: Scheduler, loaded: Any, family: str
) -> None:
    model = loaded(family)
    codes = 60 if family == QWEN25 else 16
    lengths = [12, 3, 20]
    work = [
        (plan(model, tokens=n, codes=codes), inputs(model, p))
        for n, p in zip(lengths, PROMPTS, strict=False)
    ]  # fmt: skip
    reference = reference_qwen25 if family == QWEN25 else reference_qwen3
    expected = [reference(model, w, n, codes) for (_, w), n in zip(work, lengths, strict=True)]
    for results in (serve(scheduler, work), serve(scheduler, work, stagger=5)):
        for (request, events), (text, want) in zip(results, expected, strict=True):
            assert request.tokens == text
            assert request.codes == want
            done = finished(events)
            assert done.usage.completion.audio == len(want) > 0
            # The talker starts on the first answer token, not after the last.
            assert request.tokens_before_speech is not None
            assert request.tokens_before_speech <= 3 < len(text) or len(text) <= 3
            audio = b"".join(e.pcm for e in events if isinstance(e, AudioDelta))
            assert len(audio) > 0 and len(audio) % 2 == 0
            assert not any(isinstance(e, BaseException) for e in events)


def test_a_text_read_aloud_is_written_token_by_token_and_spoken(
    scheduler: Scheduler, loaded: Any, family: str
) -> None:
    """A script (POST /v1/audio/speech): the thinker writes exactly its tokens, whatever its
    weights prefer, the talker speaks them, and a request decoded beside it is untouched."""
    from dataclasses import replace

    model = loaded(family)
    tokenizer = model.processor.tokenizer
    text = "Read me: the quick brown fox, twice."
    script = (*tokenizer.encode(text, add_special_tokens=False), TOKENS["im_end"])
    codes = 60 if family == QWEN25 else 16
    reading = replace(plan(model, tokens=len(script), codes=codes), read=script)
    other = plan(model, tokens=12)
    work = [(reading, inputs(model, "Read aloud.")), (other, inputs(model, PROMPTS[1]))]
    expected_other = reference_text(model, work[1][1], 12)
    for results in (serve(scheduler, work[:1]), serve(scheduler, work, stagger=2)):
        request, events = results[0]
        assert tuple(request.tokens) == script
        assert text_of(events) == text
        done = finished(events)
        assert done.reason == "stop"
        assert done.usage.completion.text == len(script) - 1
        assert done.usage.completion.audio == len(request.codes) > 0
        audio = b"".join(e.pcm for e in events if isinstance(e, AudioDelta))
        assert len(audio) > 0
        if len(results) > 1:
            assert results[1][0].tokens == expected_other
    assert scheduler.wait_idle(5)


def test_qwen3_image_prompt_with_speech_equals_generate(loaded: Any) -> None:
    import numpy as np

    model = loaded(QWEN3)
    image = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    prompt = _MEDIA[QWEN3] + "what is this"
    work = inputs(model, prompt, images=[image])
    text, frames = reference_qwen3(model, work, 10, 12)
    with torch.inference_mode():
        sched = Scheduler(model, slots=2, capacity=512, talker_capacity=1024)
    sched.start()
    try:
        ((request, events),) = serve(sched, [(plan(model, tokens=10, codes=12), work)])
    finally:
        sched.stop()
    assert request.tokens == text
    assert request.codes == frames
    finished(events)


# -- what a serving loop must get right ------------------------------------------------------


def test_cancelling_frees_the_slot_at_once(scheduler: Scheduler, loaded: Any, family: str) -> None:
    model = loaded(family)
    long = plan(model, tokens=400, min_tokens=400, codes=None)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        requests = [Request(JOB, long, inputs(model, p), loop) for p in PROMPTS]
        for request in requests:
            scheduler.submit(request)
        assert await until(lambda: scheduler.running == 4)
        extra = Request(JOB, long, inputs(model, "late"), loop)
        scheduler.submit(extra)
        await asyncio.sleep(0.05)
        assert scheduler.queued == 1  # every slot is taken
        requests[1].cancel.set()
        scheduler.poke()
        assert await until(lambda: scheduler.queued == 0, 1.0), "the slot was not given on"
        assert scheduler.rows[1] is not None and scheduler.rows[1].request is extra
        for request in (*requests, extra):
            request.cancel.set()
        scheduler.poke()
        assert await until(lambda: scheduler.running == 0, 1.0)

    asyncio.run(scenario())


def test_a_failing_request_fails_alone(scheduler: Scheduler, loaded: Any, family: str) -> None:
    """One image token too many for its image: the model's own forward refuses this prompt."""
    import numpy as np

    model = loaded(family)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    tokens = _MEDIA[family]
    broken = inputs(model, f"{tokens}look", images=[image])
    ids = broken.tensors["input_ids"]
    at = int((ids[0] == TOKENS["image"]).nonzero()[0])
    broken.tensors["input_ids"] = torch.cat([ids[:, : at + 1], ids[:, at:]], dim=1)
    broken.tensors.pop("attention_mask", None)
    good = [
        (plan(model, tokens=n), inputs(model, p)) for n, p in ((14, PROMPTS[0]), (6, PROMPTS[1]))
    ]
    expected = [reference_text(model, w, n) for (_, w), n in zip(good, (14, 6), strict=True)]
    results = serve(scheduler, [good[0], (plan(model, tokens=8), broken), good[1]])
    assert isinstance(results[1][1][-1], BaseException)
    assert [results[0][0].tokens, results[2][0].tokens] == expected
    finished(results[0][1])
    finished(results[2][1])
    assert scheduler.wait_idle(5)


def test_a_request_whose_speech_fails_fails_alone(
    scheduler: Scheduler, loaded: Any, family: str
) -> None:
    """A speaker whose settings the model cannot use: its talker (Qwen2.5) or vocoder fails."""
    model = loaded(family)
    if family == QWEN25:
        model.model.speaker_map["Broken"] = {"bos_token": 10**6, "cond": None, "ref_mel": None}
        bad = Plan(**{**plan(model, tokens=8, codes=40).__dict__, "speaker": "Broken"})
    else:
        bad = Plan(**{**plan(model, tokens=8, codes=12).__dict__, "speaker": "nobody"})
    try:
        good = plan(model, tokens=10, codes=40 if family == QWEN25 else 12)
        results = serve(
            scheduler, [(good, inputs(model, PROMPTS[0])), (bad, inputs(model, PROMPTS[1]))]
        )
    finally:
        model.model.speaker_map.pop("Broken", None) if family == QWEN25 else None
    assert isinstance(results[1][1][-1], BaseException)
    done = finished(results[0][1])
    assert done.usage.completion.audio > 0


def test_same_seed_same_sampled_reply_alone_or_batched(
    scheduler: Scheduler, loaded: Any, family: str
) -> None:
    model = loaded(family)
    sampled = plan(model, tokens=16, do_sample=True, temperature=1.3, top_p=0.95, top_k=40, seed=11)
    other = plan(model, tokens=16, do_sample=True, temperature=1.3, seed=12)
    work = inputs(model, PROMPTS[2])
    (alone,) = serve(scheduler, [(sampled, work)])
    batched = serve(
        scheduler, [(other, inputs(model, PROMPTS[0])), (sampled, inputs(model, PROMPTS[2]))]
    )
    assert alone[0].tokens == batched[1][0].tokens
    (again,) = serve(
        scheduler,
        [
            (
                plan(
                    model, tokens=16, do_sample=True, temperature=1.3, top_p=0.95, top_k=40, seed=12
                ),
                work,
            )
        ],
    )
    assert again[0].tokens != alone[0].tokens  # another seed, another reply


def test_stop_sequence_and_thinking_budget(scheduler: Scheduler, loaded: Any, family: str) -> None:
    model = loaded(family)
    work = inputs(model, PROMPTS[0])
    ((_, events),) = serve(scheduler, [(plan(model, tokens=24), work)])
    text = text_of(events)
    assert len(text) >= 6, text
    stop = text[3:5]
    job = GenerationJob(**{**JOB.__dict__, "sampling": SamplingParams(stop=(stop,))})
    ((_, stopped),) = serve(
        scheduler, [(plan(model, tokens=24), inputs(model, PROMPTS[0]))], job=job
    )
    assert text_of(stopped) == text[: text.find(stop)]
    assert finished(stopped).reason == "stop"
    thinking = plan(model, tokens=3 + 1 + 5, thinks=True, budget=3, answer_cap=5)
    ((_, events),) = serve(scheduler, [(thinking, inputs(model, PROMPTS[1]))])
    done = finished(events)
    assert done.usage.completion.reasoning == 3
    assert 1 <= done.usage.completion.text <= 5
    assert any(isinstance(e, ReasoningDelta) for e in events)
    assert "</think>" not in text_of(events)


# -- what CUDA graphs will record ----------------------------------------------------------


def test_every_decode_step_is_free_of_host_syncs(loaded: Any, family: str) -> None:
    """What a CUDA graph cannot record (values read back, shapes from values) raises here, on
    the CPU, in the very step functions the GPU captures, with the GPU's expert kernels."""
    model = loaded(family)
    with torch.inference_mode():
        sched = Scheduler(model, slots=4, capacity=512, talker_capacity=1024)
        steps = [(sched.thinker.runner, sched.thinker.example, 256)]
        talker = sched.talker
        assert talker is not None
        steps.append((talker.runner, talker.example, 256))
        if isinstance(talker, Qwen3Talker):
            steps.append((talker.predictor_runner, talker.predictor_example, 0))
        for runner, example, span in steps:
            assert runner.kernels is not None
            with runner.kernels.using("batched_mm")(), no_host_sync():
                out = runner.fn(span=span, **example(4))
            assert all(torch.isfinite(v.float()).all() for v in out.values())
        with pytest.raises(HostSyncError), no_host_sync():
            torch.ones(2).sum().item()
        repeats, mask = torch.tensor([1, 2]), torch.ones(3) > 0
        with pytest.raises(HostSyncError, match="repeat_interleave"), no_host_sync():
            torch.ones(2).repeat_interleave(repeats)
        with pytest.raises(HostSyncError, match="boolean mask"), no_host_sync():
            torch.ones(3)[mask]


def test_warm_up_and_requests_through_the_engine(tiny: Any, family: str) -> None:
    """The engine's own plan: the warm-up runs every stage before the first request."""
    settings = TransformersSettings(
        models=[ServedCheckpoint(checkpoint=str(tiny[family]))], max_batch=2,
        generate_kwargs={"talker_eos_token_id": [QWEN25_TALKER_EOS]} if family == QWEN25 else {},
    )  # fmt: skip
    engine = TransformersEngine(settings, Catalog.default(), chunk_bytes=4800)
    console = io.StringIO()
    engine.console = Console(file=console, width=400)

    async def scenario() -> None:
        await engine.start()
        try:
            (scheduler,) = engine.schedulers.values()
            assert scheduler.idle()
            assert "every stage ran once" in console.getvalue()
        finally:
            await engine.close()

    asyncio.run(scenario())

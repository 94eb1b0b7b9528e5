"""The decode loop: every running request of one model advances together, one step at a time.

One thread owns the model. Each turn of its loop it drops the requests that are gone, takes new
ones into free slots (each prompt in one forward pass), then runs one batched thinker step for
every request still writing text and one batched talker step (Qwen3-Omni: with the code
predictor's frame before it) for every request whose speech can advance. Speech codes go to the
vocoder thread; text goes out as it is decoded. A request that is cancelled leaves its slot at
the next turn; one whose reader is slow waits out steps without holding the others back; one that
fails (its prompt, its text, its speech) fails alone.

The talker starts as soon as the thinker has fed it the first answer token and then trails the
thinker by a step, so speech starts with the answer instead of after it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from omniserve.engines.hf.graphs import StepRunner
from omniserve.engines.hf.loader import LoadedModel
from omniserve.engines.hf.render import CodecRenderer, DitRenderer, DitSettings
from omniserve.engines.hf.reply import ReplyText
from omniserve.engines.hf.request import Request
from omniserve.engines.hf.sampling import RowSampler, Sampling
from omniserve.engines.hf.talker3 import Qwen3Talker
from omniserve.engines.hf.talker25 import Qwen25Talker
from omniserve.engines.hf.thinker import ThinkerPrefill, ThinkerStage
from omniserve.engines.hf.vocoder import VocoderWorker
from omniserve.engines.hf.voice import Qwen3Voice, Qwen25Voice

log = logging.getLogger("omniserve.transformers")

# Events a request may have waiting for its reader before its row sits out steps.
BACKLOG = 256


@dataclass
class TextFeed:
    """The answer as a talker reads it: one entry per step, then the text end, then padding."""

    end: Any
    pad: Any
    parts: list[Any] = field(default_factory=list)
    ended: bool = False  # the thinker is done: nothing more will be added
    end_sent: bool = False

    def ready(self) -> bool:
        return bool(self.parts) or self.ended

    def next(self) -> Any:
        if self.parts:
            return self.parts.pop(0)
        if not self.end_sent:
            self.end_sent = True
            return self.end
        return self.pad


@dataclass
class Row:
    """One admitted request in its slot."""

    request: Request
    slot: int
    reply: ReplyText
    last_token: int = 0
    text_done: bool = False
    prefill: ThinkerPrefill | None = None  # kept until the talker has its prompt
    # speech
    talker_started: bool = False
    talker_done: bool = True
    first_token: int | None = None
    answer: list[int] = field(default_factory=list)  # answer tokens known not to be the last
    fed: int = 0  # of ``answer``, how many the Qwen3 talker has been given
    first_part: Any = None  # the first answer token as the Qwen2.5 talker reads it
    pending: Any = None  # the talker's next input: last code (2.5) / (code, hidden) (3)
    feed: TextFeed | None = None
    voice: Any = None
    codes: int = 0

    @property
    def finished(self) -> bool:
        return self.text_done and self.talker_done


class Scheduler:
    """Slots, stages and the loop thread of one loaded model."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        slots: int,
        capacity: int,
        talker_capacity: int,
        vocoder: dict[str, Any] | None = None,
    ):
        model = loaded.model
        self.loaded = loaded
        self.family = loaded.info.family
        self.slots = slots
        self.thinker = ThinkerStage(model.thinker, slots=slots, capacity=capacity)
        self.text_sampler = RowSampler(slots, self.thinker.vocab, self.thinker.device)
        self.talker: Qwen25Talker | Qwen3Talker | None = None
        self.speech_sampler: RowSampler | None = None
        self.predictor_sampler: RowSampler | None = None
        self.renderer: CodecRenderer | DitRenderer | None = None
        if loaded.speaks:
            if self.family == "qwen2.5-omni":
                self.talker = Qwen25Talker(model, slots=slots, capacity=talker_capacity)
                references = [int(p["ref_mel"].shape[-2]) for p in model.speaker_map.values()]
                self.renderer = DitRenderer(
                    model.token2wav,
                    settings=DitSettings(**(vocoder or {})),
                    reference_lengths=references,
                )
            else:
                self.renderer = CodecRenderer(model.code2wav)
                self.talker = Qwen3Talker(model, slots=slots, capacity=talker_capacity)
                self.predictor_sampler = RowSampler(
                    slots, self.talker.predictor_vocab, self.talker.device
                )
            self.speech_sampler = RowSampler(slots, self.talker.vocab, self.talker.device)
        self.vocoder = VocoderWorker(self.thinker.device)
        self.rows: list[Row | None] = [None] * slots
        self.waiting: deque[Request] = deque()
        self.wake = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="omniserve-model", daemon=True)
        self.steps = 0  # decode steps run (thinker and talker), for tests and metrics

    # -- lifetime ------------------------------------------------------------------------

    def start(self) -> None:
        self.vocoder.start()
        self.thread.start()

    def stop(self) -> None:
        with self.wake:
            self.stopping = True
            self.wake.notify_all()
        self.thread.join(timeout=60)
        self.vocoder.stop()

    def submit(self, request: Request) -> None:
        with self.wake:
            self.waiting.append(request)
            self.wake.notify_all()

    def poke(self) -> None:
        """Something changed for a request (it was cancelled, its reader caught up)."""
        with self.wake:
            self.wake.notify_all()

    @property
    def queued(self) -> int:
        with self.wake:
            return len(self.waiting)

    @property
    def running(self) -> int:
        return sum(1 for r in self.rows if r is not None)

    # -- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self.wake:
                    if self.stopping:
                        break
                    if not self.waiting and self.running == 0:
                        self.wake.wait(timeout=1.0)
                        continue
                progressed = self.turn()
                if not progressed:
                    with self.wake:
                        if not self.stopping:
                            self.wake.wait(timeout=0.005)
        for row in self.rows:
            if row is not None:
                self._release(row)
        while self.waiting:
            self.waiting.popleft().cancel.set()

    def turn(self) -> bool:
        """One turn of the loop; whether anything advanced."""
        self._drop_gone()
        admitted = self._admit()
        stepped = self._thinker_step()
        if self.talker is not None:
            stepped = self._talker_prefills() or stepped
            stepped = self._talker_step() or stepped
        for row in list(self.rows):
            if row is not None and row.finished:
                self._release(row)
        return admitted or stepped

    def _drop_gone(self) -> None:
        for row in self.rows:
            if row is not None and row.request.gone:
                self._release(row)
        with self.wake:
            if any(r.gone for r in self.waiting):
                self.waiting = deque(r for r in self.waiting if not r.gone)

    def _release(self, row: Row) -> None:
        slot = row.slot
        self.rows[slot] = None
        self.thinker.free(slot)
        self.text_sampler.release(slot)
        if self.talker is not None:
            self.talker.free(slot)
        for sampler in (self.speech_sampler, self.predictor_sampler):
            if sampler is not None:
                sampler.release(slot)

    def _paused(self, row: Row) -> bool:
        return row.request.backlog > BACKLOG

    # -- admission -----------------------------------------------------------------------

    def _admit(self) -> bool:
        admitted = False
        while True:
            free = next((i for i, r in enumerate(self.rows) if r is None), None)
            if free is None:
                return admitted
            with self.wake:
                if not self.waiting:
                    return admitted
                request = self.waiting.popleft()
            if request.gone:
                continue
            try:
                self._prefill(request, free)
            except Exception as exc:  # this request's prompt failed; the others go on
                log.debug("prefill failed", exc_info=exc)
                row = self.rows[free]
                if row is not None:
                    self._release(row)
                request.fail(exc)
            admitted = True

    def _prefill(self, request: Request, slot: int) -> None:
        plan, inputs = request.plan, request.inputs
        tokenizer = self.loaded.processor.tokenizer
        row = Row(
            request=request,
            slot=slot,
            reply=ReplyText(
                tokenizer,
                request.emit,
                thinks=plan.thinks,
                reasoning_visible=plan.reasoning_visible,
                stops=request.job.sampling.stop,
                max_answer_tokens=plan.max_answer_tokens,
                reasoning_budget=plan.reasoning_budget,
                eos=plan.thinker.eos,
                script=plan.read,
            ),
            talker_done=not plan.speaks,
        )
        self.rows[slot] = row
        tensors = {k: _to(v, self.thinker.device) for k, v in inputs.tensors.items()}
        for key in ("pixel_values", "pixel_values_videos", "input_features"):
            if key in tensors and tensors[key].is_floating_point():
                tensors[key] = tensors[key].to(self.thinker.dtype)
        if tensors.get("attention_mask") is not None and bool(tensors["attention_mask"].all()):
            # As generate() does: an all-ones mask is dropped (plain causal attention).
            tensors.pop("attention_mask")
        request.inputs.tensors.update(tensors)
        want_hidden = plan.speaks and self.family == "qwen3-omni" and _has_media(tensors)
        prefill = self.thinker.prefill(
            slot,
            tensors,
            use_audio_in_video=inputs.use_audio_in_video,
            hidden_states=want_hidden,
        )
        row.prefill = prefill
        prompt_ids = tensors["input_ids"][0].tolist()
        self.text_sampler.assign(slot, plan.thinker, prompt_ids)
        self._forced(row)
        token = self.text_sampler.pick_one(slot, prefill.logits)
        self._text_token(row, token)
        if plan.speaks:
            row.talker_done = False
            self._start_voice(row)

    # -- text ----------------------------------------------------------------------------

    def _forced(self, row: Row) -> None:
        self.text_sampler.force(row.slot, row.reply.forced_token())

    def _text_token(self, row: Row, token: int) -> None:
        """A new token from the thinker: stream it, and decide whether the text goes on."""
        reply = row.reply
        row.request.tokens.append(token)
        reply.add(token)
        if row.first_token is None:
            row.first_token = token
        sampling = row.request.plan.thinker
        length = self.thinker.lengths[row.slot] + 1
        over = reply.generated >= sampling.max_new_tokens or length >= self.thinker.capacity - 1
        if reply.done or over:
            row.text_done = True
            request = row.request
            request.finish_reason = reply.stopped_by or ("stop" if reply.eos_seen else "length")
            reply.finish()
            request.completion = _replace(
                request.completion, text=reply.text_tokens, reasoning=reply.reasoning_tokens
            )
            request.done("text")
            self._text_ended(row)
            return
        row.last_token = token
        if row.request.plan.speaks and self.family == "qwen3-omni":
            row.answer.append(token)
            self._feed_qwen3(row)

    def _thinker_step(self) -> bool:
        rows = [
            r for r in self.rows
            if r is not None and not r.text_done and not r.request.gone and not self._paused(r)
        ]  # fmt: skip
        if not rows:
            return False
        tokens = {r.slot: r.last_token for r in rows}
        try:
            logits, hidden, embeds = self.thinker.step(tokens)
        except Exception as exc:  # the step itself failed: every request in it fails
            self._fail_all(rows, exc)
            return True
        self.steps += 1
        if self.family == "qwen2.5-omni":
            for row in rows:
                if row.request.plan.speaks:
                    part = (hidden[row.slot] + embeds[row.slot]).clone()
                    if row.first_part is None:
                        row.first_part = part
                    elif row.feed is not None:
                        row.feed.parts.append(part)
        for row in rows:
            self._forced(row)
        for row, token in zip(
            rows, self.text_sampler.pick(logits, [r.slot for r in rows]), strict=True
        ):
            try:
                self._text_token(row, token)
            except Exception as exc:
                row.request.fail(exc)
        return True

    def _text_ended(self, row: Row) -> None:
        self.text_sampler.release(row.slot)
        talker = self.talker
        if talker is None or not row.request.plan.speaks:
            return
        if row.feed is not None:
            row.feed.ended = True
        if not row.talker_started and not self._can_start_talker(row):
            # Only one token of text: nothing for the talker to say (generate() cannot either).
            self._end_speech(row)

    # -- speech --------------------------------------------------------------------------

    def _start_voice(self, row: Row) -> None:
        model = self.loaded.model
        plan = row.request.plan
        if isinstance(self.renderer, DitRenderer):
            # The speaker's tensors stay where they are: the vocoder thread moves them, on its
            # own stream.
            speaker = model.speaker_map[plan.speaker]
            seed = plan.talker.seed if plan.talker is not None else None
            row.voice = Qwen25Voice(self.renderer, speaker, seed=seed)
        else:
            assert isinstance(self.renderer, CodecRenderer)
            row.voice = Qwen3Voice(self.renderer)
        assert self.talker is not None
        row.feed = TextFeed(end=self.talker.text_end, pad=self.talker.text_pad)
        row.feed.ended = row.text_done

    def _can_start_talker(self, row: Row) -> bool:
        if self.family == "qwen2.5-omni":
            return row.first_part is not None
        return bool(row.answer)

    def _feed_qwen3(self, row: Row) -> None:
        """Answer tokens the Qwen3 talker has not been given yet go to its text feed."""
        talker = self.talker
        if not isinstance(talker, Qwen3Talker) or not row.talker_started:
            return
        if len(row.answer) > row.fed and row.feed is not None:
            row.feed.parts.extend(talker.project(row.answer[row.fed :]))
            row.fed = len(row.answer)

    def _talker_prefills(self) -> bool:
        started = False
        for row in self.rows:
            if (
                row is None or row.talker_started or row.talker_done or row.request.gone
                or not self._can_start_talker(row)
            ):  # fmt: skip
                continue
            try:
                self._talker_prefill(row)
            except Exception as exc:
                row.request.fail(exc)
            started = True
        return started

    def _talker_prefill(self, row: Row) -> None:
        plan, request = row.request.plan, row.request
        assert plan.talker is not None and self.speech_sampler is not None
        assert row.prefill is not None
        tensors = request.inputs.tensors
        sampler = self.speech_sampler
        row.talker_started = True
        if isinstance(self.talker, Qwen25Talker):
            logits = self.talker.prefill(
                row.slot,
                tensors=tensors,
                use_audio_in_video=request.inputs.use_audio_in_video,
                prompt_hidden=row.prefill.last_hidden,
                first_token=row.first_token if row.first_token is not None else 0,
                first_part=row.first_part,
                speaker_bos=int(self.loaded.model.speaker_map[plan.speaker]["bos_token"]),
            )
            sampler.assign(row.slot, plan.talker, self.talker.prompt_ids(row.prefill.length))
            row.prefill = None
            self._qwen25_code(row, sampler.pick_one(row.slot, logits))
            return
        assert isinstance(self.talker, Qwen3Talker) and self.predictor_sampler is not None
        embeds = row.prefill.hidden_states
        prompt_embeds = (
            embeds[0] if embeds is not None else self.thinker.embed(tensors["input_ids"])[0]
        )
        accept = int(self.loaded.model.config.talker_config.accept_hidden_layer)
        prompt_hidden = embeds[accept] if embeds is not None else None
        assert plan.speaker is not None
        speaker_id = self.loaded.model.config.talker_config.speaker_id[plan.speaker.lower()]
        logits, hidden, rest = self.talker.prefill(
            row.slot,
            tensors=tensors,
            prompt_embeds=prompt_embeds,
            prompt_hidden=prompt_hidden,
            answer=row.answer[:1],
            speaker_id=int(speaker_id),
        )
        row.prefill = None
        row.fed = 1
        assert row.feed is not None
        if rest:
            row.feed.parts.extend(self.talker.project(rest))
        self._feed_qwen3(row)
        sampler.assign(row.slot, plan.talker)
        seed = plan.talker.seed
        predictor = _replace(
            plan.talker,
            repetition_penalty=1.0,
            banned=frozenset(),
            eos=frozenset(),
            min_new_tokens=0,
            seed=None if seed is None else seed + 1,
        )
        self.predictor_sampler.assign(row.slot, predictor)
        self._qwen3_code(row, sampler.pick_one(row.slot, logits), hidden)

    def _qwen25_code(self, row: Row, code: int) -> None:
        sampling = row.request.plan.talker
        assert sampling is not None and self.speech_sampler is not None
        if code in sampling.eos:
            self._end_speech(row)
            return
        self._first_code(row)
        row.codes += 1
        row.request.codes.append(code)
        self.vocoder.add(row.request, row.voice, [code])
        if self.speech_sampler.generated(row.slot) >= sampling.max_new_tokens:
            self._end_speech(row)
            return
        row.pending = code

    @staticmethod
    def _first_code(row: Row) -> None:
        if row.request.tokens_before_speech is None:
            row.request.tokens_before_speech = len(row.request.tokens)

    def _qwen3_code(self, row: Row, code: int, hidden: Any) -> None:
        sampling = row.request.plan.talker
        assert sampling is not None and self.speech_sampler is not None
        if (
            code in sampling.eos
            or self.speech_sampler.generated(row.slot) >= sampling.max_new_tokens
        ):
            # generate() drops the frame of a last code it never fed back.
            self._end_speech(row)
            return
        self._first_code(row)
        row.pending = (code, hidden.clone())

    def _end_speech(self, row: Row) -> None:
        row.talker_done = True
        request = row.request
        request.completion = _replace(request.completion, audio=row.codes)
        if row.voice is not None:
            self.vocoder.add(request, row.voice, [], final=True)
        else:
            request.done("speech")

    def _talker_step(self) -> bool:
        talker = self.talker
        assert talker is not None and self.speech_sampler is not None
        rows = [
            r for r in self.rows
            if r is not None and r.talker_started and not r.talker_done and not r.request.gone
            and r.pending is not None and r.feed is not None and r.feed.ready()
            and not self._paused(r)
        ]  # fmt: skip
        if not rows:
            return False
        slots = [r.slot for r in rows]
        try:
            if isinstance(talker, Qwen25Talker):
                logits = talker.step({r.slot: (r.pending, _next(r)) for r in rows})
                codes = self.speech_sampler.pick(logits, slots)
                self.steps += 1
                for row, code in zip(rows, codes, strict=True):
                    self._qwen25_code(row, code)
                return True
            frames, sums = talker.predict(
                {r.slot: r.pending for r in rows}, *self._predictor_noise(rows)
            )
            for row, frame in zip(
                rows, frames.index_select(0, _index(slots, frames)).tolist(), strict=True
            ):
                row.codes += 1
                row.request.codes.append(frame)
                # Plain ints: the vocoder thread reads them on its own CUDA stream.
                self.vocoder.add(row.request, row.voice, [frame])
            logits, hidden = talker.step({r.slot: sums[r.slot] + _next(r) for r in rows})
            self.steps += 1
            for row, code in zip(rows, self.speech_sampler.pick(logits, slots), strict=True):
                self._qwen3_code(row, code, hidden[row.slot])
        except Exception as exc:
            self._fail_all(rows, exc)
        return True

    def _predictor_noise(self, rows: list[Row]) -> tuple[Any, Any]:
        import torch

        talker = self.talker
        assert isinstance(talker, Qwen3Talker) and self.predictor_sampler is not None
        batch, _ = talker.predictor_runner.shape(max(r.slot for r in rows) + 1)
        shape = (talker.groups - 1, talker.predictor_vocab)
        noise = torch.ones(batch, *shape, device=talker.device)
        sample = torch.zeros(batch, dtype=torch.bool, device=talker.device)
        for row in rows:
            if not self.predictor_sampler.sampling(row.slot).greedy():
                noise[row.slot] = self.predictor_sampler.noise(row.slot, shape)
                sample[row.slot] = True
        return noise, sample

    def _fail_all(self, rows: list[Row], exc: BaseException) -> None:
        log.error("a batched step failed for %d requests", len(rows), exc_info=exc)
        for row in rows:
            row.request.fail(exc)

    # -- start-up ------------------------------------------------------------------------

    def runners(self) -> list[tuple[StepRunner, Any]]:
        """Every captured step with its example inputs: decode steps, then vocoder windows."""
        runners: list[tuple[StepRunner, Any]] = [(self.thinker.runner, self.thinker.example)]
        if self.talker is not None:
            runners.append((self.talker.runner, self.talker.example))
        if isinstance(self.talker, Qwen3Talker):
            runners.append((self.talker.predictor_runner, self.talker.predictor_example))
        if self.renderer is not None:
            runners.append((self.renderer.runner, self.renderer.example))
        return runners

    def idle(self) -> bool:
        return self.running == 0 and not self.waiting and self.vocoder.pending == 0

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.idle():
                return True
            time.sleep(0.005)
        return self.idle()


def _next(row: Row) -> Any:
    assert row.feed is not None
    return row.feed.next()


def _index(slots: list[int], like: Any) -> Any:
    import torch

    return torch.tensor(slots, device=like.device)


def _to(value: Any, device: Any) -> Any:
    return value.to(device) if hasattr(value, "to") else value


def _has_media(tensors: dict[str, Any]) -> bool:
    return any(
        tensors.get(k) is not None
        for k in ("pixel_values", "pixel_values_videos", "input_features")
    )


def _replace(obj: Any, **changes: Any) -> Any:
    from dataclasses import replace

    return replace(obj, **changes)


__all__ = ["Row", "Sampling", "Scheduler"]

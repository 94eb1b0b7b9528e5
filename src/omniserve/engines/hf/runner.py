"""One request through ``model.generate`` on a worker thread, streamed as engine events.

``generate`` is called once, as a user would call it, with streamers: the thinker's streamer
receives each new token (text leaves as it is decoded), the talker's each new code (speech is
vocoded chunk by chunk, see ``voice.py``). When the talker ends, its streamer stops ``generate``
before the whole-clip vocoding that the chunks already did. A cancelled request raises from the
next streamer call, so generation stops within one decoding step.
"""

from __future__ import annotations

import functools
import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omniserve.engines.base import (
    AudioDelta,
    CompletionTokens,
    EngineEvent,
    Finished,
    FinishReason,
    GenerationJob,
    ReasoningDelta,
    TextDelta,
    Usage,
)
from omniserve.engines.hf.loader import LoadedModel, has_native_video
from omniserve.engines.hf.prompt import build_inputs
from omniserve.engines.hf.voice import Qwen3Voice, Qwen25Voice

log = logging.getLogger("omniserve.transformers")

# Qwen3-Omni's generate() feeds its talker inputs_embeds, and transformers warns on every request
# that repetition_penalty then skips the prompt, which is how the model is meant to run.
warnings.filterwarnings(
    "ignore", message="Passing `repetition_penalty` with `inputs_embeds`", category=UserWarning
)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class Cancelled(Exception):
    """The client went away; raised inside ``generate`` to stop it."""


class _SpeechComplete(Exception):
    """Raised when the talker ends: every code is vocoded already, skip the whole-clip decode."""


@dataclass
class RunOptions:
    speaker: str | None  # the model's speaker, or None for text only
    reasoning_visible: bool  # stream reasoning (thinking was asked for)
    thinks: bool  # the weights write a <think> section first
    max_new_tokens: int
    reasoning_budget: int | None
    chunk_bytes: int
    max_answer_tokens: int | None = None  # the answer's own cap (max_tokens), after reasoning
    generate_kwargs: dict[str, Any] = field(default_factory=dict)


class Detokenizer:
    """Token ids -> text deltas that never split a character."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def add(self, ids: list[int]) -> str:
        self.ids.extend(ids)

        def decode(ids: list[int], *, skip_special_tokens: bool) -> str:
            return str(self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))

        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""


class ThinkSplitter:
    """Splits streamed text into reasoning (inside <think>…</think>) and answer.

    The newlines that follow each tag belong to neither; they may arrive as pieces of their own.
    """

    def __init__(self, thinks: bool) -> None:
        self.reasoning = thinks
        self.buffer = ""
        self.started = False
        self.skip_newlines = False  # a tag just ended: drop the newlines that follow it

    def feed(self, text: str) -> list[tuple[bool, str]]:
        if self.skip_newlines:
            text = text.lstrip("\n")
            if not text:
                return []
            self.skip_newlines = False
        if not self.reasoning:
            return [(False, text)] if text else []
        self.buffer += text
        out: list[tuple[bool, str]] = []
        if not self.started:
            stripped = self.buffer.lstrip()
            if THINK_OPEN.startswith(stripped) and len(stripped) < len(THINK_OPEN):
                return out  # maybe the opening tag, still arriving
            self.started = True
            if stripped.startswith(THINK_OPEN):
                self.buffer = ""
                return self.feed_after_tag(stripped[len(THINK_OPEN) :], out)
        end = self.buffer.find(THINK_CLOSE)
        if end >= 0:
            if end:
                out.append((True, self.buffer[:end]))
            rest = self.buffer[end + len(THINK_CLOSE) :]
            self.reasoning, self.buffer = False, ""
            return self.feed_after_tag(rest, out)
        keep = _partial_suffix(self.buffer, THINK_CLOSE)
        cut = len(self.buffer) - keep
        ready, self.buffer = self.buffer[:cut], self.buffer[cut:]
        if ready:
            out.append((True, ready))
        return out

    def feed_after_tag(self, rest: str, out: list[tuple[bool, str]]) -> list[tuple[bool, str]]:
        self.skip_newlines = True
        return out + self.feed(rest) if rest else out

    def flush(self) -> list[tuple[bool, str]]:
        text, self.buffer = self.buffer, ""
        return [(self.reasoning, text)] if text else []


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that begins ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class _Streamer:
    """The streamer interface ``generate`` calls: ``put`` per step, ``end`` once."""

    def __init__(
        self, cancel: threading.Event, on_put: Callable[[Any], None], on_end: Callable[[], None]
    ) -> None:
        self.cancel = cancel
        self.on_put, self.on_end = on_put, on_end
        self.first = True

    def put(self, value: Any) -> None:
        if self.cancel.is_set():
            raise Cancelled
        if self.first:  # the prompt (thinker, Qwen2.5 talker) or nothing (Qwen3 talker)
            self.first = False
            return
        self.on_put(value)

    def end(self) -> None:
        self.on_end()


class _EndThinkingOnBudget:
    """A logits processor: once the reasoning has used its budget, the next token is </think>,
    and the model goes on to answer (as thinking_budget does on Model Studio)."""

    def __init__(self, run: RequestRun, token: int) -> None:
        self.run, self.token = run, token

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.run.over_budget():
            forced = scores.new_full(scores.shape, float("-inf"))
            forced[:, self.token] = 0.0
            return forced
        return scores


class _StopWhenSet:
    """A stopping criterion: end the thinker's generation after this step."""

    def __init__(self, flag: threading.Event) -> None:
        self.flag = flag

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full(
            (input_ids.shape[0],), self.flag.is_set(), dtype=torch.bool, device=input_ids.device
        )


def pcm16(samples: np.ndarray) -> bytes:
    return bytes((np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())


class RequestRun:
    """Runs one job on the calling thread, sending events through ``emit``."""

    def __init__(
        self,
        loaded: LoadedModel,
        job: GenerationJob,
        options: RunOptions,
        emit: Callable[[EngineEvent], None],
        cancel: threading.Event,
    ) -> None:
        self.loaded, self.job, self.options = loaded, job, options
        self.emit, self.cancel = emit, cancel
        self.stop = threading.Event()
        self.tokenizer = loaded.processor.tokenizer
        self.detok = Detokenizer(self.tokenizer)
        self.splitter = ThinkSplitter(options.thinks)
        self.answer = ""
        self.held = ""  # answer text that may begin a stop sequence
        self.text_tokens = 0
        self.reasoning_tokens = 0
        self.generated = 0
        self.eos_seen = False
        self.stopped_by: FinishReason | None = None
        self.voice: Qwen3Voice | Qwen25Voice | None = None
        self.eos_ids = self._eos_ids()
        self.think_end = self._token_id(THINK_CLOSE)

    def _token_id(self, token: str) -> int | None:
        found = self.tokenizer.convert_tokens_to_ids(token)
        unknown = self.tokenizer.unk_token_id
        return found if isinstance(found, int) and found >= 0 and found != unknown else None

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
        return {i for i in ids if isinstance(i, int) and i >= 0}

    # -- thinker ---------------------------------------------------------------------------

    def on_token(self, value: Any) -> None:
        ids = [int(i) for i in value.reshape(-1).tolist()]
        for token in ids:
            self.generated += 1
            if token in self.eos_ids:
                self.eos_seen = True
                continue
            if token == self.think_end:
                continue  # the tag between reasoning and answer is neither
            if self.splitter.reasoning:
                self.reasoning_tokens += 1
            else:
                self.text_tokens += 1
        text = self.detok.add([i for i in ids if i not in self.eos_ids])
        for reasoning, piece in self.splitter.feed(text):
            self._text(reasoning, piece)
        cap = self.options.max_answer_tokens
        if cap is not None and self.text_tokens >= cap:
            self.stopped_by = "length"
            self.stop.set()
        if self.over_budget() and self.think_end is None:
            # No </think> token to end the reasoning with: end the reply here.
            self.stopped_by = "length"
            self.stop.set()

    def over_budget(self) -> bool:
        budget = self.options.reasoning_budget
        return budget is not None and self.splitter.reasoning and self.reasoning_tokens >= budget

    def _text(self, reasoning: bool, piece: str) -> None:
        if not piece or self.stop.is_set():
            return
        if reasoning:
            if self.options.reasoning_visible:
                self.emit(ReasoningDelta(piece))
            return
        stops = self.job.sampling.stop
        if not stops:
            self._answer(piece)
            return
        # Text that may be the start of a stop sequence waits until the next piece decides.
        text = self.held + piece
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            self.held = ""
            self._answer(text[:cut])
            self.stopped_by = "stop"
            self.stop.set()
            return
        keep = max(_partial_suffix(text, s) for s in stops)
        self.held = text[len(text) - keep :] if keep else ""
        self._answer(text[: len(text) - keep])

    def _answer(self, piece: str) -> None:
        if piece:
            self.answer += piece
            self.emit(TextDelta(piece))

    def on_thinker_end(self) -> None:
        if not self.stop.is_set():
            for reasoning, piece in self.splitter.flush():
                self._text(reasoning, piece)
        if not self.stop.is_set():
            held, self.held = self.held, ""
            self._answer(held)

    # -- talker ----------------------------------------------------------------------------

    def on_code(self, value: Any) -> None:
        voice = self.voice
        if isinstance(voice, Qwen25Voice):
            for code in value.reshape(-1).tolist():
                if code in self._talker_eos:
                    continue
                self._audio(voice.add(code))

    def on_talker_forward(self, module: Any, args: Any, output: Any) -> None:
        codes = output.hidden_states[-1] if output.hidden_states is not None else None
        if codes is not None and isinstance(self.voice, Qwen3Voice):
            self._audio(self.voice.add(codes[0]))

    def on_talker_end(self) -> None:
        if self.voice is not None:
            self._audio(self.voice.finish())
        raise _SpeechComplete

    def _audio(self, samples: np.ndarray | None) -> None:
        if samples is None or not len(samples):
            return
        data = pcm16(samples)
        step = self.options.chunk_bytes
        for i in range(0, len(data), step):
            self.emit(AudioDelta(data[i : i + step]))

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> None:
        import torch

        loaded, job, opts = self.loaded, self.job, self.options
        model = loaded.model
        speaks = opts.speaker is not None
        inputs = build_inputs(
            job,
            loaded.processor,
            loaded.info.family,
            speaks=speaks,
            native_video=has_native_video(loaded.processor),
        )
        tensors = {
            k: (v.to(loaded.device) if hasattr(v, "to") else v) for k, v in inputs.tensors.items()
        }
        for key in ("pixel_values", "pixel_values_videos"):
            if key in tensors and tensors[key].is_floating_point():
                tensors[key] = tensors[key].to(model.thinker.dtype)
        if "input_features" in tensors:
            tensors["input_features"] = tensors["input_features"].to(model.thinker.dtype)
        kwargs = self._generate_kwargs(tensors, inputs.use_audio_in_video)
        if job.sampling.seed is not None:
            torch.manual_seed(job.sampling.seed)
        hook = None
        if speaks and loaded.info.family == "qwen3-omni":
            self.voice = Qwen3Voice(model.code2wav)
            hook = model.talker.register_forward_hook(self.on_talker_forward)
        elif speaks:
            self.voice = Qwen25Voice(model.token2wav, self._speaker_params())
        try:
            with torch.inference_mode():
                if speaks:
                    model.generate(**kwargs)
                else:
                    # Text only: the thinker is the whole model (no speaker checks, no talker).
                    model.thinker.generate(**_thinker_only(kwargs))
        except _SpeechComplete:
            pass
        finally:
            if hook is not None:
                hook.remove()
        reason: FinishReason = self.stopped_by or (
            "stop" if self.eos_seen or self.generated < opts.max_new_tokens else "length"
        )
        usage = Usage(
            prompt=inputs.prompt,
            completion=CompletionTokens(
                text=self.text_tokens,
                reasoning=self.reasoning_tokens,
                audio=self.voice.codes if self.voice is not None else 0,
            ),
        )
        self.emit(Finished(reason=reason, usage=usage))

    def _speaker_params(self) -> dict[str, Any]:
        params = self.loaded.model.speaker_map[self.options.speaker]
        device = next(self.loaded.model.token2wav.parameters()).device
        return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in params.items()}

    @functools.cached_property
    def _talker_eos(self) -> set[int]:
        eos = self.options.generate_kwargs.get("talker_eos_token_id") or self._default_talker_eos()
        return {int(i) for i in (eos if isinstance(eos, list) else [eos])}

    def _default_talker_eos(self) -> list[int]:
        cfg = self.loaded.model.config.talker_config
        vocab = int(cfg.vocab_size)
        defaults = [i for i in (8292, 8294) if i < vocab]
        return defaults or [int(cfg.tts_codec_end_token_id)]

    def _generate_kwargs(self, tensors: dict[str, Any], use_audio_in_video: bool) -> dict[str, Any]:
        from transformers import LogitsProcessorList, StoppingCriteriaList

        job, opts, family = self.job, self.options, self.loaded.info.family
        speaks = opts.speaker is not None
        s = job.sampling
        thinker_streamer = _Streamer(self.cancel, self.on_token, self.on_thinker_end)
        kwargs: dict[str, Any] = dict(tensors)
        if speaks and family == "qwen2.5-omni":
            # generate forwards un-prefixed pixel inputs to the talker too, which rejects them.
            for key in ("pixel_values", "pixel_values_videos"):
                if key in kwargs:
                    kwargs[f"thinker_{key}"] = kwargs.pop(key)
        kwargs.update(
            use_audio_in_video=use_audio_in_video,
            thinker_max_new_tokens=opts.max_new_tokens,
            thinker_streamer=thinker_streamer,
            thinker_stopping_criteria=StoppingCriteriaList([_StopWhenSet(self.stop)]),
        )
        if opts.reasoning_budget is not None and self.think_end is not None:
            kwargs["thinker_logits_processor"] = LogitsProcessorList(
                [_EndThinkingOnBudget(self, self.think_end)]
            )
        if family == "qwen3-omni":
            kwargs["thinker_eos_token_id"] = sorted(self.eos_ids)
        if s.temperature is not None:
            if s.temperature <= 0:
                kwargs["thinker_do_sample"] = False
            else:
                kwargs.update(thinker_do_sample=True, thinker_temperature=s.temperature)
        if s.top_p is not None:
            kwargs["thinker_top_p"] = s.top_p
        if s.top_k is not None:
            kwargs["thinker_top_k"] = s.top_k
        if s.repetition_penalty is not None:
            kwargs["thinker_repetition_penalty"] = s.repetition_penalty
        if speaks:
            kwargs["speaker"] = opts.speaker
            kwargs["talker_streamer"] = _Streamer(self.cancel, self.on_code, self.on_talker_end)
            if family == "qwen2.5-omni":
                kwargs["talker_eos_token_id"] = sorted(self._talker_eos)
        kwargs.update(opts.generate_kwargs)
        return kwargs


def _thinker_only(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Top-level generate() arguments as the thinker's own generate() takes them."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key.startswith(("talker_", "token2wav_")) or key in ("speaker", "generation_mode"):
            continue
        out[key.removeprefix("thinker_")] = value
    return out

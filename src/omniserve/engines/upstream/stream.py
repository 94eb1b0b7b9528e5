"""An upstream's stream -> engine events, whatever its dialect.

- DashScope: the format omniserve speaks; audio in ``delta.audio.data``, PCM16 at 24 kHz.
- vLLM-Omni: a top-level ``modality``; audio as base64 in ``delta.content`` (a whole WAV file
  per chunk, or headerless PCM16 when ``pcm16`` was asked for), often one late delta;
  ``finish_reason`` only on the last modality; usage counts text only.
- OpenAI-compatible: text in ``delta.content``, or in ``delta.audio.transcript`` when audio is on.

Audio leaves as headerless PCM16 mono 24 kHz in whole-sample chunks: WAV headers stripped,
stereo mixed down, other rates resampled with one resampler per stream (no seams).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

import numpy as np

from omniserve.config import UpstreamSpec
from omniserve.engines.upstream.errors import UpstreamBroken, upstream_error
from omniserve.events import (
    PCM_RATE,
    AudioDelta,
    EngineEvent,
    Finished,
    FinishReason,
    ReasoningDelta,
    TextDelta,
)
from omniserve.job import CompletionTokens, GenerationJob, PromptTokens, Usage
from omniserve.speech.pcm import PcmResampler, parse_wav
from omniserve.tokens import QwenTokenizer


class AudioNormalizer:
    """Upstream audio bytes (WAV or headerless) -> PCM16 mono 24 kHz, seamless across chunks."""

    def __init__(self, default_rate: int) -> None:
        self.default_rate = default_rate
        self.resampler = PcmResampler(PCM_RATE)
        self.carry = b""  # an odd trailing byte of headerless PCM
        self.samples_out = 0

    def feed(self, data: bytes) -> bytes:
        channels = 1
        if data[:4] == b"RIFF":
            try:
                pcm, rate, channels = parse_wav(data)
            except ValueError as exc:
                raise UpstreamBroken(f"the upstream sent an unreadable WAV chunk ({exc})") from None
        else:
            pcm, rate = self.carry + data, self.default_rate
            cut = len(pcm) - len(pcm) % 2
            pcm, self.carry = pcm[:cut], pcm[cut:]
        samples = np.frombuffer(pcm, dtype="<i2")
        if channels > 1:
            frames = samples[: len(samples) - len(samples) % channels].reshape(-1, channels)
            samples = frames.mean(axis=1).astype("<i2")
        out = self.resampler.feed(samples, rate)
        self.samples_out += len(out) // 2
        return out

    def flush(self) -> bytes:
        out = self.resampler.flush()
        self.samples_out += len(out) // 2
        return out


class StreamTranslator:
    """Feeds on an upstream's SSE ``data`` payloads; yields omniserve's engine events."""

    def __init__(
        self, spec: UpstreamSpec, job: GenerationJob, chunk_bytes: int, tokenizer: QwenTokenizer
    ) -> None:
        self.spec, self.job = spec, job
        self.chunk_bytes = chunk_bytes
        self.tokenizer = tokenizer
        # Model Studio's audio is PCM16 at 24 kHz by definition, whatever the config says.
        self.audio = AudioNormalizer(PCM_RATE if spec.kind == "dashscope" else spec.audio_rate)
        self.pending = b""  # audio not yet sent: chunks leave whole
        self.finish: FinishReason | None = None
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.text = ""
        self.reasoning = ""

    def feed(self, data: str) -> list[EngineEvent]:
        if data.strip() == "[DONE]":
            self.done = True
            return []
        try:
            obj = json.loads(data)
        except json.JSONDecodeError:
            raise UpstreamBroken("the upstream sent a chunk that is not JSON") from None
        if not isinstance(obj, dict):
            raise UpstreamBroken("the upstream sent a chunk that is not a JSON object")
        if "error" in obj or obj.get("object") == "error":
            raise upstream_error(None, obj, dashscope=self.spec.kind == "dashscope")
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        events: list[EngineEvent] = []
        for choice in obj.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            reason = choice.get("finish_reason")
            if reason:
                self.finish = "length" if reason == "length" else "stop"
            events += self._delta(delta, obj.get("modality"))
        return events

    def _delta(self, delta: dict[str, Any], modality: Any) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        reasoning = delta.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            self.reasoning += reasoning
            events.append(ReasoningDelta(reasoning))
        content = delta.get("content")
        if isinstance(content, str) and content:
            if self.spec.kind == "vllm-omni" and modality == "audio":
                events += self._audio(content)
            else:
                self.text += content
                events.append(TextDelta(content))
        audio = delta.get("audio")
        if isinstance(audio, dict):
            transcript = audio.get("transcript")
            if isinstance(transcript, str) and transcript and not content:
                self.text += transcript
                events.append(TextDelta(transcript))  # OpenAI: the text rides with the audio
            data = audio.get("data")
            if isinstance(data, str) and data:
                events += self._audio(data)
        return events

    def _audio(self, b64: str) -> list[EngineEvent]:
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise UpstreamBroken("the upstream sent audio that is not base64") from None
        self.pending += self.audio.feed(raw)
        return self._chunks(final=False)

    def _chunks(self, *, final: bool) -> list[EngineEvent]:
        out: list[EngineEvent] = []
        step = self.chunk_bytes
        while len(self.pending) >= step:
            out.append(AudioDelta(self.pending[:step]))
            self.pending = self.pending[step:]
        if final and self.pending:
            out.append(AudioDelta(self.pending))
            self.pending = b""
        return out

    def close(self) -> list[EngineEvent]:
        """The audio still held, then ``Finished`` with usage completed where it was partial."""
        self.pending += self.audio.flush()
        events = self._chunks(final=True)
        events.append(Finished(reason=self.finish or "stop", usage=self._usage()))
        return events

    def _usage(self) -> Usage:
        seconds = self.audio.samples_out / PCM_RATE
        rate = self.job.model.tokens.output_audio_tokens_per_second
        local_audio = math.ceil(seconds * rate) if seconds else 0
        u = self.usage or {}
        p = u.get("prompt_tokens_details") or {}
        c = u.get("completion_tokens_details") or {}
        if isinstance(u.get("prompt_tokens"), int):
            media = sum(
                int(p.get(k) or 0) for k in ("image_tokens", "audio_tokens", "video_tokens")
            )
            prompt = PromptTokens(
                text=int(p.get("text_tokens") or (u["prompt_tokens"] - media)),
                image=int(p.get("image_tokens") or 0),
                audio=int(p.get("audio_tokens") or 0),
                video=int(p.get("video_tokens") or 0),
            )
        else:
            prompt = self.job.prompt_tokens
        reasoning = int(c.get("reasoning_tokens") or 0) or (
            self.tokenizer.count(self.reasoning) if self.reasoning and not u else 0
        )
        if isinstance(u.get("completion_tokens"), int):
            audio = int(c.get("audio_tokens") or 0) or local_audio
            text = int(c.get("text_tokens") or 0) or max(
                0, u["completion_tokens"] - int(c.get("audio_tokens") or 0) - reasoning
            )
        else:
            audio, text = local_audio, self.tokenizer.count(self.text)
        return Usage(
            prompt=prompt, completion=CompletionTokens(text=text, audio=audio, reasoning=reasoning)
        )

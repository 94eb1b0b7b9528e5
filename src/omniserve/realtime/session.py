"""One realtime session: its configuration, its input buffers, its conversation and the answer
being spoken.

Each response is one chat completion of the chat service (``ChatService.open``): the
conversation so far becomes a chat request (the session's instructions as the system message,
each user turn's audio as a WAV ``input_audio`` part and its images before it, each earlier
answer as the assistant's text), which is validated, admitted against the key's limits, metered
and put on the ledger like any request, and its events are sent as the vendor's realtime
events. Cancelling a response closes its completion: the engine and speech stop, the ledger
row says so, and what was sent of the answer stays in the conversation.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import logging
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from omniserve.accounts.auth import Caller
from omniserve.catalog import ModelSpec, RealtimeModel
from omniserve.config import RealtimeSettings
from omniserve.errors import ApiError
from omniserve.events import AudioDelta, EngineEvent, Finished, TextDelta
from omniserve.job import Usage, new_request_id
from omniserve.media.policy import MediaPolicy, policy_for
from omniserve.realtime.dialect import Dialect, SessionView, VendorDialect
from omniserve.realtime.protocol import (
    INPUT_RATE,
    RealtimeError,
    SessionConfig,
    apply_update,
    initial_config,
    new_id,
    parse_event,
)
from omniserve.realtime.vad import SpeechStarted, SpeechStopped, TurnDetector, TurnEvent
from omniserve.service import ChatService, Completion

log = logging.getLogger("omniserve.realtime")

Send = Callable[[dict[str, Any]], Awaitable[None]]
MAX_IMAGE_BYTES = 500 * 1024  # one image append, before base64
MAX_IMAGES_PER_TURN = 64
OUTPUT_RATE = 24_000  # PCM16 mono out


@dataclass
class Turn:
    """One item of the conversation."""

    item_id: str
    role: str  # user | assistant | system
    text: str = ""
    audio: bytes = b""  # user speech, PCM16 16 kHz
    images: list[bytes] = field(default_factory=list)  # JPEG (or PNG), shown with the turn
    audio_ms: int = 0  # an answer's speech sent, in milliseconds
    transcript: str | None = None  # a spoken turn's words, when the session transcribes


class Answer(Protocol):
    """What answers one response: its events, then ``close`` once, however it ended."""

    def events(self) -> AsyncIterator[EngineEvent]: ...

    async def close(self, status: str, code: str | None, usage: Usage | None) -> Usage | None:
        """Stops what is left and settles it (``status``: completed, cancelled or failed);
        the usage the response reports."""
        ...


class ChatAnswer:
    """A response answered by a chat completion of the conversation."""

    def __init__(self, completion: Completion) -> None:
        self.completion = completion

    def events(self) -> AsyncIterator[EngineEvent]:
        return self.completion.events()

    async def close(self, status: str, code: str | None, usage: Usage | None) -> Usage | None:
        await self.completion.aclose()  # settled by the completion itself
        return usage


class RealtimeSession:
    def __init__(
        self,
        service: ChatService,
        caller: Caller,
        model: RealtimeModel,
        settings: RealtimeSettings,
        send: Send,
        *,
        fetching_for: str | None = None,
        dialect: Dialect | None = None,
    ) -> None:
        self.service = service
        self.caller = caller
        self.model = model
        self.spec: ModelSpec = service.catalog.get(model.chat)
        self.settings = settings
        self._send = send
        self.fetching_for = fetching_for
        self.id = new_id("sess")
        self.conversation_id = new_id("conv")
        self.config: SessionConfig = initial_config(model)
        self.audio = bytearray()
        self.audio_start = 0  # the audio clock (samples appended so far) at self.audio[0]
        self.clock = 0
        self.opened_at = time.monotonic()
        self.images: list[bytes] = []
        self.detector: TurnDetector | None = None
        self.heard_at: float | None = None  # when the server heard the last turn end
        self.speech_item: str | None = None  # the user item a detected turn will become
        self.turns: list[Turn] = []
        self.response: asyncio.Task[None] | None = None
        self.cancel_reason: str | None = None  # why the last response was cancelled
        self.transcribing: set[asyncio.Task[None]] = set()
        self.finished = False
        self.dialect: Dialect = dialect or VendorDialect()
        self.dialect.bind(
            SessionView(
                id=self.id,
                model=model.name,
                config=lambda: self.config,
                expires_at=int(time.time() + settings.max_session_s),
                cancel_reason=lambda: self.cancel_reason,
            )
        )

    # -- sending ---------------------------------------------------------------------------

    async def send(self, type_: str, **fields: Any) -> None:
        for event in self.dialect.outbound({"event_id": new_id("event"), "type": type_, **fields}):
            await self._send(event)

    async def error(self, error: RealtimeError) -> None:
        await self._send(error.event())

    # -- the client's events ---------------------------------------------------------------

    async def open(self) -> None:
        self._detect()
        await self.send("session.created", session=self.config.wire(self.id, full=False))

    def _detect(self) -> None:
        """The turn detector the session's settings ask for (a new one after a change)."""
        t = self.config.turn_detection
        self.detector = (
            None
            if t is None
            else TurnDetector(t.threshold, t.prefix_padding_ms, t.silence_duration_ms)
        )
        self.speech_item = None

    async def receive(self, text: str) -> None:
        """One client event; a bad one is answered with an ``error`` event."""
        try:
            event = self.dialect.inbound(parse_event(text))
        except RealtimeError as exc:
            await self.error(exc)
            return
        handler = self._handlers().get(event["type"])
        if handler is None:
            await self.error(
                RealtimeError(
                    f"Unknown event type {event['type'][:100]!r}.",
                    code="invalid_event",
                    param="type",
                )
            )
            return
        try:
            await handler(event)
        except RealtimeError as exc:
            await self.error(exc)

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[None]]]:
        return {
            "session.update": self._update,
            "input_audio_buffer.append": self._append_audio,
            "input_image_buffer.append": self._append_image,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "conversation.item.create": self._create_item,
            "conversation.item.delete": self._delete_item,
            "conversation.item.truncate": self._truncate_item,
            "response.create": self._create_response,
            "response.cancel": self._cancel_response,
            "session.finish": self._finish,
        }

    async def _update(self, event: dict[str, Any]) -> None:
        before = self.config.turn_detection
        self.config = apply_update(self.config, event.get("session"), self.spec)
        if self.config.turn_detection != before:
            self._detect()
        await self.send("session.updated", session=self.config.wire(self.id, full=True))

    async def _append_audio(self, event: dict[str, Any]) -> None:
        pcm = _base64(event.get("audio"), "audio")
        if len(pcm) % 2:
            raise RealtimeError(
                "The audio is not whole PCM16 samples (an odd number of bytes).", param="audio"
            )
        lead = (self.clock + len(pcm) // 2) / INPUT_RATE - (time.monotonic() - self.opened_at)
        if lead > self.settings.max_audio_lead_s:
            raise RealtimeError(
                "Audio is arriving faster than real time: at most "
                f"{self.settings.max_audio_lead_s:g} seconds ahead of the session's clock are "
                "accepted. Send it as it is recorded.",
                code="input_audio_too_fast",
                param="audio",
            )
        limit = int(self.settings.max_buffer_s * INPUT_RATE * 2)
        if len(self.audio) + len(pcm) > limit:
            raise RealtimeError(
                f"The input audio buffer holds at most {self.settings.max_buffer_s:g} seconds; "
                "commit or clear it.",
                code="input_audio_buffer_full",
                param="audio",
            )
        self.audio += pcm
        self.clock += len(pcm) // 2
        if self.detector is not None:
            turn_events, cpu = await asyncio.to_thread(self._listen, pcm)
            if self.service.metrics is not None:
                self.service.metrics.vad_seconds.inc(cpu)
            for turn_event in turn_events:
                if isinstance(turn_event, SpeechStarted):
                    await self._speech_started(turn_event)
                else:
                    await self._speech_stopped(turn_event)
            if not self.detector.speaking:
                # Silence: keep only what may become the next turn's prefix padding.
                t = self.config.turn_detection
                keep = (t.prefix_padding_ms if t else 0) * INPUT_RATE // 1000
                self._drop_before(self.clock - keep)

    def _drop_before(self, sample: int) -> None:
        """Drops the buffered audio before the audio clock's ``sample``."""
        cut = max(0, min(sample, self.clock) - self.audio_start)
        if cut:
            del self.audio[: cut * 2]
            self.audio_start += cut

    def _listen(self, pcm: bytes) -> tuple[list[TurnEvent], float]:
        """The detector's events for ``pcm`` and the CPU time it took (on a worker thread:
        its own CPU clock, not the wall clock, which waits for the others)."""
        assert self.detector is not None
        began = time.thread_time()
        events = self.detector.feed(pcm)
        return events, time.thread_time() - began

    async def _speech_started(self, event: SpeechStarted) -> None:
        self._drop_before(event.sample)
        self.speech_item = new_id("item")
        await self.send(
            "input_audio_buffer.speech_started",
            audio_start_ms=event.audio_start_ms,
            item_id=self.speech_item,
        )
        t = self.config.turn_detection
        if t is not None and t.interrupt_response and self._responding():
            # Barge-in: the user talks over the answer, which stops at once.
            await self._stop_response("turn_detected")

    async def _speech_stopped(self, event: SpeechStopped) -> None:
        item_id = self.speech_item or new_id("item")
        self.speech_item = None
        await self.send(
            "input_audio_buffer.speech_stopped", audio_end_ms=event.audio_end_ms, item_id=item_id
        )
        self.heard_at = time.monotonic()
        cut = max(0, event.sample - self.audio_start)
        turn_audio = bytes(self.audio[: cut * 2])
        del self.audio[: cut * 2]
        self.audio_start += cut
        if not turn_audio:
            return
        await self._add_user_audio(item_id, turn_audio)
        t = self.config.turn_detection
        if t is not None and t.create_response and not self._responding():
            self._start_response(self.config.modalities, self.config.instructions)

    async def _append_image(self, event: dict[str, Any]) -> None:
        if not self.clock:
            raise RealtimeError(
                "Append audio before images: an image goes with the audio of its turn.",
                param="image",
            )
        image = _base64(event.get("image"), "image")
        if len(image) > MAX_IMAGE_BYTES:
            raise RealtimeError(
                f"The image is {len(image)} bytes; at most {MAX_IMAGE_BYTES} are allowed.",
                param="image",
            )
        if not image.startswith(b"\xff\xd8"):
            raise RealtimeError("The image must be a JPEG.", param="image")
        if len(self.images) >= MAX_IMAGES_PER_TURN:
            raise RealtimeError(
                f"At most {MAX_IMAGES_PER_TURN} images go with one turn.", param="image"
            )
        self.images.append(image)

    async def _commit(self, event: dict[str, Any]) -> None:
        if not self.audio:
            raise RealtimeError(
                "Error committing input audio buffer: the buffer is empty.",
                code="input_audio_buffer_commit_empty",
                param=None,
            )
        audio = bytes(self.audio)
        self.audio, self.audio_start = bytearray(), self.clock
        if self.detector is not None:
            self.detector.reset()
        await self._add_user_audio(self.speech_item or new_id("item"), audio)
        self.speech_item = None

    async def _add_user_audio(self, item_id: str, audio: bytes) -> None:
        """A committed user turn: its audio and the images appended with it."""
        turn = Turn(item_id, "user", audio=audio, images=self.images)
        self.images = []
        previous = self.turns[-1].item_id if self.turns else None
        self.turns.append(turn)
        await self.send(
            "input_audio_buffer.committed", previous_item_id=previous, item_id=turn.item_id
        )
        await self.send(
            "conversation.item.created",
            previous_item_id=previous,
            item={
                "id": turn.item_id,
                "object": "realtime.item",
                "type": "message",
                "status": "completed",
                "role": "user",
                "content": [{"type": "input_audio", "transcript": None}],
            },
        )
        if self.config.transcription_model:
            task = asyncio.create_task(self._transcribe(turn))
            self.transcribing.add(task)
            task.add_done_callback(self.transcribing.discard)

    async def _transcribe(self, turn: Turn) -> None:
        """The user's words of a spoken turn, from the server's speech recognizer (a model of
        its own: they may differ from what the answering model understood)."""
        ids = {"item_id": turn.item_id, "content_index": 0}
        recognizer = self.service.recognizer
        if recognizer is None:
            await self.send(
                "conversation.item.input_audio_transcription.failed",
                **ids,
                error={
                    "type": "server_error",
                    "code": "transcription_unavailable",
                    "message": "This server has no speech recognizer: start it with "
                    "[recognizer] enabled = true (pip install 'omniserve[asr]').",
                    "param": None,
                },
            )
            return
        c = self.config
        try:
            heard = await recognizer.transcribe_async(
                turn.audio, INPUT_RATE, c.transcription_language, c.transcription_prompt
            )
        except ValueError as exc:  # a language the recognizer does not know
            await self.send(
                "conversation.item.input_audio_transcription.failed",
                **ids,
                error={
                    "type": "invalid_request_error",
                    "code": "invalid_value",
                    "message": str(exc),
                    "param": "session.input_audio_transcription.language",
                },
            )
            return
        turn.transcript = heard.text
        if heard.text:
            await self.send(
                "conversation.item.input_audio_transcription.delta", **ids, delta=heard.text
            )
        await self.send(
            "conversation.item.input_audio_transcription.completed", **ids, transcript=heard.text
        )

    async def _clear(self, event: dict[str, Any]) -> None:
        self.audio, self.audio_start, self.images = bytearray(), self.clock, []
        if self.detector is not None:
            self.detector.reset()
        self.speech_item = None
        await self.send("input_audio_buffer.cleared")

    async def _create_item(self, event: dict[str, Any]) -> None:
        item = event.get("item")
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            raise RealtimeError(
                "Only message items can be created: {'type': 'message', 'role': …, 'content': "
                "[{'type': 'input_text', 'text': …}]}.",
                param="item",
            )
        role = item.get("role")
        if role not in ("user", "assistant", "system"):
            raise RealtimeError(f"Invalid item.role: {role!r}.", param="item.role")
        content = item.get("content")
        if not isinstance(content, list) or not content:
            raise RealtimeError("item.content must be a non-empty list.", param="item.content")
        texts, audio, images = [], b"", []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("input_text", "text"):
                text = part.get("text")
                if not isinstance(text, str):
                    raise RealtimeError("A text part needs a string 'text'.", param="item.content")
                texts.append(text)
            elif kind == "input_audio" and role == "user" and not audio:
                audio = _base64(part.get("audio"), "item.content.audio")
                if len(audio) % 2 or len(audio) > self.settings.max_buffer_s * INPUT_RATE * 2:
                    raise RealtimeError(
                        "An audio part is whole PCM16 samples, at most "
                        f"{self.settings.max_buffer_s:g} seconds.",
                        param="item.content.audio",
                    )
            elif kind == "input_image" and role == "user":
                images.append(_image_url(part.get("image_url")))
            else:
                raise RealtimeError(
                    "Message items carry text parts ({'type': 'input_text', 'text': …}); user "
                    "items may also carry one 'input_audio' part and 'input_image' parts.",
                    param="item.content",
                )
        item_id = item.get("id") if isinstance(item.get("id"), str) else None
        turn = Turn(item_id or new_id("item"), role, text="".join(texts), audio=audio)
        turn.images = images[:MAX_IMAGES_PER_TURN]
        previous = self.turns[-1].item_id if self.turns else None
        self.turns.append(turn)
        await self.send(
            "conversation.item.created",
            previous_item_id=previous,
            item={
                "id": turn.item_id,
                "object": "realtime.item",
                "type": "message",
                "status": "completed",
                "role": role,
                "content": _content(turn),
            },
        )

    def _find(self, item_id: Any) -> Turn:
        for turn in self.turns:
            if turn.item_id == item_id:
                return turn
        raise RealtimeError(
            f"Item with item_id not found: {str(item_id)[:100]}.",
            code="item_not_found",
            param="item_id",
        )

    async def _delete_item(self, event: dict[str, Any]) -> None:
        turn = self._find(event.get("item_id"))
        self.turns.remove(turn)
        await self.send("conversation.item.deleted", item_id=turn.item_id)

    async def _truncate_item(self, event: dict[str, Any]) -> None:
        """The client played only ``audio_end_ms`` of an answer: the conversation keeps the
        part of its text that goes with that much speech (in proportion)."""
        turn = self._find(event.get("item_id"))
        end = event.get("audio_end_ms")
        if turn.role != "assistant" or not turn.audio_ms:
            raise RealtimeError("Only an answer with speech can be truncated.", param="item_id")
        if isinstance(end, bool) or not isinstance(end, int) or not 0 <= end <= turn.audio_ms:
            raise RealtimeError(
                f"Invalid audio_end_ms: {end!r}. It must be in [0, {turn.audio_ms}].",
                param="audio_end_ms",
            )
        turn.text = turn.text[: len(turn.text) * end // turn.audio_ms]
        turn.audio_ms = end
        await self.send(
            "conversation.item.truncated",
            item_id=turn.item_id,
            content_index=event.get("content_index", 0),
            audio_end_ms=end,
        )

    async def _create_response(self, event: dict[str, Any]) -> None:
        if self._responding():
            raise RealtimeError(
                "Conversation already has an active response.",
                code="conversation_already_has_active_response",
                param=None,
            )
        options = event.get("response") or {}
        if not isinstance(options, dict):
            raise RealtimeError("Invalid response: it must be an object.", param="response")
        modalities = self.config.modalities
        if options.get("modalities") is not None:
            asked = options["modalities"]
            if not isinstance(asked, list) or sorted(asked) not in (["text"], ["audio", "text"]):
                raise RealtimeError(
                    f"Invalid modalities: {asked!r}. Supported combinations are: ['text'] and "
                    "['audio', 'text'].",
                    param="response.modalities",
                )
            modalities = ("text", "audio") if len(asked) == 2 else ("text",)
        instructions = options.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise RealtimeError("Invalid response.instructions.", param="response.instructions")
        if not any(t.role == "user" for t in self.turns):
            raise RealtimeError(
                "There is nothing to answer yet: commit audio or create a user item first.",
                code="conversation_empty",
                param=None,
            )
        self._start_response(modalities, instructions or self.config.instructions)

    def _responding(self) -> bool:
        return self.response is not None and not self.response.done()

    def _start_response(self, modalities: tuple[str, ...], instructions: str) -> None:
        self.response = asyncio.create_task(self._respond(modalities, instructions))

    async def _stop_response(self, reason: str = "client_cancelled") -> None:
        """Cancels the response in progress and waits until it has said ``response.done``."""
        if self.response is not None and not self.response.done():
            self.cancel_reason = reason
            self.response.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.response

    async def _cancel_response(self, event: dict[str, Any]) -> None:
        if not self._responding():
            raise RealtimeError(
                "Cancellation failed: no active response found.",
                code="response_cancel_not_active",
                param=None,
            )
        await self._stop_response("client_cancelled")

    async def _finish(self, event: dict[str, Any]) -> None:
        await self.close()
        await self.send("session.finished")
        self.finished = True

    async def close(self) -> None:
        """Stops the response in progress (its request is settled) and the transcriptions
        (a transcription already on a worker thread ends there; nothing more is sent)."""
        for task in list(self.transcribing):
            task.cancel()
        await self._stop_response()

    # -- a response ------------------------------------------------------------------------

    def _chat_body(
        self, turns: tuple[Turn, ...], modalities: tuple[str, ...], instructions: str
    ) -> bytes:
        """The conversation so far as a chat request for the chat service (its work grows
        with the conversation: it runs on a worker thread)."""
        messages: list[dict[str, Any]] = []
        if instructions:
            messages.append({"role": "system", "content": instructions})
        for turn in self._in_context(turns, instructions, modalities):
            if turn.role != "user" or not (turn.audio or turn.images):
                messages.append({"role": turn.role, "content": turn.text})
                continue
            # One non-text modality per user message: the images, then the audio.
            text = [{"type": "text", "text": turn.text}] if turn.text else []
            if turn.images:
                urls = [_data_url(_image_type(image), image) for image in turn.images]
                if len(urls) == 1:
                    part: dict[str, Any] = {"type": "image_url", "image_url": {"url": urls[0]}}
                else:
                    part = {"type": "video", "video": urls}
                messages.append({"role": "user", "content": [part, *([] if turn.audio else text)]})
            if turn.audio:
                audio = {"data": _data_url("audio/wav", _wav(turn.audio)), "format": "wav"}
                messages.append(
                    {
                        "role": "user",
                        "content": [*text, {"type": "input_audio", "input_audio": audio}],
                    }
                )
        body: dict[str, Any] = {
            "model": self.model.chat,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "modalities": list(modalities),
        }
        if "audio" in modalities:
            body["audio"] = {"voice": self.config.voice, "format": "wav"}
        c = self.config
        for key, value in (
            ("temperature", c.temperature),
            ("top_p", c.top_p),
            ("top_k", c.top_k),
            ("max_tokens", c.max_tokens),
            ("repetition_penalty", c.repetition_penalty),
            ("presence_penalty", c.presence_penalty),
            ("seed", c.seed if c.seed >= 0 else None),
        ):
            if value is not None:
                body[key] = value
        return json.dumps(body).encode()

    def _in_context(
        self, turns: tuple[Turn, ...], instructions: str, modalities: tuple[str, ...]
    ) -> tuple[Turn, ...]:
        """The latest turns that fit the model's input limit: in a long session the oldest
        are left out of the prompt (they stay in the conversation), as OpenAI's automatic
        truncation does; the last turn always goes (if it alone is too long, the answer is
        refused as any request would be)."""
        tokenizer = self.service.tokenizer
        policy = policy_for(self.spec, self.service.engine.media_accounting(self.spec))
        budget = self.spec.mode_limits(False).max_input * 95 // 100 - tokenizer.count(instructions)
        if "audio" in modalities:
            budget -= self.spec.tokens.audio_output_prompt_tokens
        kept: list[Turn] = []
        used = 0
        for turn in reversed(turns):
            cost = 8 + tokenizer.count(turn.text)  # the message's own tokens, and its text
            if turn.audio and turn.role == "user":
                cost += policy.audio_tokens(len(turn.audio) / 2 / INPUT_RATE)
            for image in turn.images if turn.role == "user" else ():
                cost += _image_tokens(image, policy)
            if kept and used + cost > budget:
                break
            kept.append(turn)
            used += cost
        return tuple(reversed(kept))

    async def _open_answer(self, modalities: tuple[str, ...], instructions: str) -> Answer:
        """The answer to the conversation so far: one chat completion (validated and admitted
        like a request); raises the ``ApiError`` that refuses it."""
        body = await asyncio.to_thread(self._chat_body, tuple(self.turns), modalities, instructions)
        completion = await self.service.open(
            self.caller,
            body,
            new_request_id(),
            fetching_for=self.fetching_for,
            conversation=True,
        )
        return ChatAnswer(completion)

    def _reports(self, error: ApiError) -> bool:
        """Whether a response that failed with ``error`` sends it as an ``error`` event."""
        return True

    async def _responded(self) -> None:
        """After each response's last event."""

    async def _respond(self, modalities: tuple[str, ...], instructions: str) -> None:
        """One response, in the vendor's order of events, whatever answers it
        (``_open_answer``); what was sent stays in the conversation, cut where it stopped."""
        audio_out = "audio" in modalities
        heard_at, self.heard_at = self.heard_at, None
        response_id, item_id = new_id("resp"), new_id("item")
        base = {
            "id": response_id,
            "object": "realtime.response",
            "conversation_id": self.conversation_id,
            "modalities": list(modalities),
            "voice": self.config.voice,
            "output_audio_format": self.config.output_audio_format,
        }
        await self.send(
            "response.created", response={**base, "status": "in_progress", "output": []}
        )
        kind = "audio" if audio_out else "text"
        ids = {"response_id": response_id, "item_id": item_id, "output_index": 0}
        text: list[str] = []
        audio_samples = 0
        usage: Usage | None = None
        status, code = "failed", "InternalError"
        started = False
        answer: Answer | None = None
        try:
            answer = await self._open_answer(modalities, instructions)
            item = {
                "id": item_id,
                "object": "realtime.item",
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            previous = self.turns[-1].item_id if self.turns else None
            await self.send(
                "response.output_item.added", response_id=response_id, output_index=0, item=item
            )
            await self.send("conversation.item.created", previous_item_id=previous, item=item)
            await self.send(
                "response.content_part.added",
                **ids,
                content_index=0,
                part={"type": kind, "text": ""},
            )
            started = True
            async for event in answer.events():
                if heard_at is not None and (
                    (audio_out and isinstance(event, AudioDelta) and event.pcm)
                    or (not audio_out and isinstance(event, TextDelta) and event.text)
                ):
                    if self.service.metrics is not None:
                        self.service.metrics.turn_latency.observe(time.monotonic() - heard_at)
                    heard_at = None
                if isinstance(event, TextDelta) and event.text:
                    text.append(event.text)
                    name = "response.audio_transcript.delta" if audio_out else "response.text.delta"
                    await self.send(name, **ids, content_index=0, delta=event.text)
                elif isinstance(event, AudioDelta) and event.pcm:
                    audio_samples += len(event.pcm) // 2
                    await self.send(
                        "response.audio.delta",
                        **ids,
                        content_index=0,
                        delta=base64.b64encode(event.pcm).decode("ascii"),
                    )
                elif isinstance(event, Finished):
                    usage = event.usage
            status = "completed"
        except asyncio.CancelledError:
            status = "cancelled"
        except ApiError as exc:
            code = exc.code
            if self._reports(exc):
                await self._send(
                    RealtimeError(
                        exc.message, code=exc.code, param=exc.param, type=exc.type
                    ).event()
                )
        except Exception:
            log.exception("realtime response %s failed", response_id)
            await self._send(
                RealtimeError(
                    "An internal error has occured, try again later or contact service support.",
                    code="InternalError",
                    type="internal_error",
                ).event()
            )
        finally:
            if answer is not None:
                usage = await answer.close(status, code, usage)
        text_sent = "".join(text)
        # What was sent stays in the conversation as the assistant's turn, cut where it stopped.
        sent_ms = audio_samples * 1000 // OUTPUT_RATE
        self.turns.append(Turn(item_id, "assistant", text=text_sent, audio_ms=sent_ms))
        await self._close_response(base, ids, kind, text_sent, status, usage, started)
        await self._responded()

    async def _close_response(
        self,
        base: dict[str, Any],
        ids: dict[str, Any],
        kind: str,
        answer: str,
        status: str,
        usage: Usage | None,
        started: bool,
    ) -> None:
        content = {"type": kind, ("transcript" if kind == "audio" else "text"): answer}
        output: list[dict[str, Any]] = []
        if started:
            if kind == "audio":
                await self.send(
                    "response.audio_transcript.done", **ids, content_index=0, transcript=answer
                )
                await self.send("response.audio.done", **ids, content_index=0)
            else:
                await self.send("response.text.done", **ids, content_index=0, text=answer)
            await self.send(
                "response.content_part.done",
                **ids,
                content_index=0,
                part={"type": kind, "text": answer},
            )
            item = {
                "id": ids["item_id"],
                "object": "realtime.item",
                "type": "message",
                "status": "completed" if status == "completed" else "incomplete",
                "role": "assistant",
                "content": [content],
            }
            output.append(item)
            await self.send(
                "response.output_item.done",
                response_id=ids["response_id"],
                output_index=0,
                item=item,
            )
        await self.send(
            "response.done",
            response={**base, "status": status, "output": output, "usage": _usage(usage)},
        )


def _usage(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    p, c = usage.prompt, usage.completion
    return {
        "total_tokens": usage.total,
        "input_tokens": p.total,
        "output_tokens": c.total,
        "input_tokens_details": {
            "text_tokens": p.text,
            "audio_tokens": p.audio,
            "image_tokens": p.image + p.video,
        },
        "output_tokens_details": {"text_tokens": c.text + c.reasoning, "audio_tokens": c.audio},
    }


def _base64(value: Any, param: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise RealtimeError(f"'{param}' must be a non-empty base64 string.", param=param)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RealtimeError(f"'{param}' is not valid base64.", param=param) from None


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _wav(pcm: bytes) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(INPUT_RATE)
        w.writeframes(pcm)
    return out.getvalue()


def _content(turn: Turn) -> list[dict[str, Any]]:
    """A created item's content as the server shows it (no media bytes)."""
    parts: list[dict[str, Any]] = [{"type": "input_image"} for _ in turn.images]
    if turn.audio:
        parts.append({"type": "input_audio", "transcript": None})
    if turn.text or not parts:
        parts.append({"type": "input_text", "text": turn.text})
    return parts


def _image_type(image: bytes) -> str:
    return "image/png" if image.startswith(b"\x89PNG") else "image/jpeg"


def _image_url(value: Any) -> bytes:
    """An ``input_image`` part's data URL: a JPEG or PNG of at most 500 KB."""
    if not isinstance(value, str) or not value.startswith("data:"):
        raise RealtimeError(
            "An input_image part needs 'image_url' as a data URL (data:image/jpeg;base64,…).",
            param="item.content.image_url",
        )
    _, _, data = value.partition(",")
    image = _base64(data, "item.content.image_url")
    if len(image) > MAX_IMAGE_BYTES:
        raise RealtimeError(
            f"The image is {len(image)} bytes; at most {MAX_IMAGE_BYTES} are allowed.",
            param="item.content.image_url",
        )
    if not (image.startswith(b"\xff\xd8") or image.startswith(b"\x89PNG")):
        raise RealtimeError("The image must be a JPEG or PNG.", param="item.content.image_url")
    return image


def _image_tokens(image: bytes, policy: MediaPolicy) -> int:
    """An image's tokens from its header (no pixels decoded); the most a model takes when the
    header cannot be read."""
    try:
        with Image.open(io.BytesIO(image)) as img:
            width, height = img.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return policy.image_max_tokens + policy.image_extra_tokens
    return policy.image_tokens(*policy.image_size(height, width))

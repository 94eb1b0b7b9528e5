"""A small app built on the Qwen-Omni API: it asks a question and keeps the spoken answer.

This is the code under test; test_voice_app.py tests it against omniserve.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from openai import OpenAI


@dataclass
class Answer:
    text: str = ""
    pcm: bytes = b""  # PCM16 mono, 24 kHz
    audio_chunks: int = 0
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)


class AnswerInterrupted(Exception):
    """The stream failed midway; ``partial`` is what arrived before."""

    def __init__(self, partial: Answer, cause: Exception) -> None:
        super().__init__(f"the answer was interrupted: {cause}")
        self.partial = partial


def ask(client: OpenAI, question: str, voice: str = "Cherry") -> Answer:
    answer = Answer()
    stream = client.chat.completions.create(
        model="qwen3-omni-flash",
        messages=[{"role": "user", "content": question}],
        modalities=["text", "audio"],
        audio={"voice": voice, "format": "wav"},
        stream=True,
        stream_options={"include_usage": True},
    )
    try:
        for chunk in stream:
            if chunk.usage is not None:
                answer.usage = {
                    "prompt_tokens": chunk.usage.prompt_tokens,
                    "completion_tokens": chunk.usage.completion_tokens,
                }
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            answer.text += delta.content or ""
            audio = getattr(delta, "audio", None)
            if audio and audio.get("data"):
                answer.pcm += base64.b64decode(audio["data"])
                answer.audio_chunks += 1
            answer.finish_reason = chunk.choices[0].finish_reason or answer.finish_reason
    except Exception as exc:  # an error event, or a connection cut midway
        raise AnswerInterrupted(answer, exc) from exc
    return answer

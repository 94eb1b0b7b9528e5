"""A validated job -> the upstream's request body, per kind of upstream.

Media go as data URLs (or bare base64 where the wire wants it) of the bytes omniserve already
fetched and validated, so an upstream never fetches a URL that omniserve's fetcher refused.
"""

from __future__ import annotations

import base64
from typing import Any

from omniserve.config import UpstreamSpec
from omniserve.job import AudioInput, GenerationJob, ImageInput, MediaItem, VideoInput

# vLLM-Omni validates speakers against the model's own (lower-cased).
VLLM_SPEAKERS = {"female": "chelsie", "male": "ethan"}
_SPEAKER_NAMES = {"chelsie", "ethan", "aiden"}

_IMAGE_MIME = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "HEIF": "image/heic",
    "MPO": "image/jpeg",
}
# PyAV's container names -> the audio "format" the wire formats name.
_AUDIO_FORMATS = {
    "mov,mp4,m4a,3gp,3g2,mj2": "m4a",
    "matroska,webm": "webm",
    "ogg": "ogg",
}


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _audio_format(decoded: AudioInput) -> str:
    return _AUDIO_FORMATS.get(decoded.format, decoded.format.split(",")[0] or "wav")


def _video_mime(decoded: VideoInput) -> str:
    fmt = decoded.format
    if "mp4" in fmt or "mov" in fmt:
        return "video/mp4"
    if "webm" in fmt or "matroska" in fmt:
        return "video/webm"
    if "avi" in fmt:
        return "video/x-msvideo"
    return "video/mp4"


def voice_for(spec: UpstreamSpec, job: GenerationJob) -> str | None:
    """The upstream's name for the job's voice."""
    voice = job.voice
    if voice is None:
        return None
    if voice.name in spec.voices:
        return spec.voices[voice.name]
    if spec.kind == "vllm-omni":
        own = voice.name.lower()
        return own if own in _SPEAKER_NAMES else VLLM_SPEAKERS[voice.gender]
    return voice.name


def _media_parts(spec: UpstreamSpec, item: MediaItem) -> list[dict[str, Any]]:
    d, raw = item.decoded, item.raw
    assert raw, "the upstream engine forwards media: their bytes are kept"
    if isinstance(d, ImageInput):
        url = data_url(_IMAGE_MIME.get(d.format, "image/png"), raw[0])
        return [{"type": "image_url", "image_url": {"url": url}}]
    if isinstance(d, AudioInput):
        fmt = _audio_format(d)
        if spec.kind == "dashscope":
            payload = {"data": data_url(f"audio/{fmt}", raw[0]), "format": fmt}
        else:  # OpenAI's form: bare base64 and a format
            payload = {"data": base64.b64encode(raw[0]).decode(), "format": fmt}
        return [{"type": "input_audio", "input_audio": payload}]
    if isinstance(d, VideoInput) and d.format == "frames":
        urls = [data_url("image/jpeg", frame) for frame in raw]
        if spec.kind == "dashscope":
            return [{"type": "video", "video": urls}]
        return [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    if isinstance(d, VideoInput):
        return [{"type": "video_url", "video_url": {"url": data_url(_video_mime(d), raw[0])}}]
    raise TypeError(f"no upstream form for media decoded as {type(d).__name__}")


def messages_for(spec: UpstreamSpec, job: GenerationJob) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in job.messages:
        if not message.media:
            out.append({"role": message.role, "content": message.text})
            continue
        parts: list[dict[str, Any]] = []
        for item in message.media:
            parts += _media_parts(spec, item)
        if message.text:
            parts.append({"type": "text", "text": message.text})
        out.append({"role": message.role, "content": parts})
    return out


def has_video_with_sound(job: GenerationJob) -> bool:
    return any(
        isinstance(i.decoded, VideoInput) and i.decoded.audio is not None
        for m in job.messages
        for i in m.media
    )


def request_body(spec: UpstreamSpec, job: GenerationJob, upstream_model: str) -> dict[str, Any]:
    """The upstream's request for ``job``: always streamed, with usage, modalities explicit."""
    speaks = job.voice is not None and spec.audio_output
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": messages_for(spec, job),
        "stream": True,
        "stream_options": {"include_usage": True},
        "modalities": ["text", "audio"] if speaks else ["text"],
    }
    s = job.sampling
    sampling = {
        "temperature": s.temperature,
        "top_p": s.top_p,
        "seed": s.seed,
        "presence_penalty": s.presence_penalty,
    }
    body.update({k: v for k, v in sampling.items() if v is not None})
    if s.stop:
        body["stop"] = list(s.stop)
    if job.max_tokens is not None:
        body["max_tokens"] = job.max_tokens
    extra = {"top_k": s.top_k, "repetition_penalty": s.repetition_penalty}
    if spec.kind != "openai":  # OpenAI itself refuses fields it does not know
        body.update({k: v for k, v in extra.items() if v is not None})
    voice = voice_for(spec, job) if speaks else None
    if spec.kind == "dashscope":
        if voice is not None:
            body["audio"] = {"voice": voice, "format": "wav"}
        if job.thinking:
            body["enable_thinking"] = True
            if job.thinking_budget is not None:
                body["thinking_budget"] = job.thinking_budget
    elif spec.kind == "vllm-omni":
        if voice is not None:
            body["voice"] = voice
            body["audio"] = {"format": "pcm16"}
        body["chat_template_kwargs"] = {"enable_thinking": job.thinking}
        if has_video_with_sound(job):
            body["mm_processor_kwargs"] = {"use_audio_in_video": True}
    else:
        if voice is not None:
            body["audio"] = {"voice": voice, "format": "pcm16"}
    return body

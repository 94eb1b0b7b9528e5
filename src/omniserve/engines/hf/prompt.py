"""A job's conversation -> the processor's inputs, and the tokens the model will really read.

Media arrive decoded and sized by omniserve's media pipeline (with the open processors' policy),
so nothing is fetched or decoded twice. The processor is called with the flags that keep counts
honest: no 30 s audio truncation, the fps the frames were sampled at, no frame re-sampling, and
the soundtrack of a video interleaved with its frames (``use_audio_in_video``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from omniserve.job import (
    AudioInput,
    ChatMessage,
    GenerationJob,
    ImageInput,
    PromptTokens,
    VideoInput,
)

# Qwen2.5-Omni speaks only under this system prompt, verbatim (its model card and processor warn:
# "System prompt modified, audio output may not work as expected").
QWEN25_SPEECH_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
    "perceiving auditory and visual inputs, as well as generating text and speech."
)

# Qwen3-Omni's recommended voice-mode system prompt (QwenLM/Qwen3-Omni README). Its first
# sentence is the customizable part: a client's own system message takes its place.
QWEN3_DEFAULT_PERSONA = "You are Qwen-Omni, a smart voice assistant created by Alibaba Qwen."
QWEN3_SPEECH_RULES = (
    " You are a virtual voice assistant with no gender or age.\n"
    "You are communicating with the user.\n"
    "In user messages, \u201cI/me/my/we/our\u201d refer to the user and \u201cyou/your\u201d "
    "refer to the assistant. In your replies, address the user as \u201cyou/your\u201d and "
    "yourself as \u201cI/me/my\u201d; never mirror the user\u2019s pronouns\u2014always shift "
    "perspective. Keep original pronouns only in direct quotes; if a reference is unclear, ask "
    "a brief clarifying question.\n"
    "Interact with users using short(no more than 50 words), brief, straightforward language, "
    "maintaining a natural tone.\n"
    "Never use formal phrasing, mechanical expressions, bullet points, overly structured "
    "language. \n"
    "Your output must consist only of the spoken content you want the user to hear. \n"
    "Do not include any descriptions of actions, emotions, sounds, or voice changes. \n"
    "Do not use asterisks, brackets, parentheses, or any other symbols to indicate tone or "
    "actions. \n"
    "You must answer users' audio or text questions, do not directly describe the video "
    "content. \n"
    "You should communicate in the same language strictly as the user unless they request "
    "otherwise.\n"
    "When you are uncertain (e.g., you can't see/hear clearly, don't understand, or the user "
    "makes a comment rather than asking a question), use appropriate questions to guide the "
    "user to continue the conversation.\n"
    "Keep replies concise and conversational, as if talking face-to-face."
)
# Qwen2.5 keeps a client's system message as a first exchange, answered with this.
SYSTEM_ACKNOWLEDGED = "OK."


@dataclass
class ModelInputs:
    """What ``generate`` receives, and the prompt's tokens by modality as the model reads them."""

    text: str
    tensors: dict[str, Any]
    prompt: PromptTokens
    use_audio_in_video: bool


def _system_text(messages: tuple[ChatMessage, ...]) -> str | None:
    parts = [m.text for m in messages if m.role == "system" and m.text.strip()]
    return "\n".join(parts) if parts else None


def conversation(job: GenerationJob, family: str, speaks: bool) -> list[dict[str, Any]]:
    """Chat-template messages, with the system prompt the model needs to speak."""
    system = _system_text(job.messages)
    out: list[dict[str, Any]] = []
    if speaks and family == "qwen2.5-omni":
        out.append(_text("system", QWEN25_SPEECH_PROMPT))
        if system is not None:
            out += [_text("user", system), _text("assistant", SYSTEM_ACKNOWLEDGED)]
    elif speaks:
        persona = system if system is not None else QWEN3_DEFAULT_PERSONA
        out.append(_text("system", persona + QWEN3_SPEECH_RULES))
    elif system is not None:
        out.append(_text("system", system))
    for message in job.messages:
        if message.role == "system":
            continue
        content: list[dict[str, Any]] = []
        for item in message.media:
            d = item.decoded
            if isinstance(d, ImageInput):
                content.append({"type": "image"})
            elif isinstance(d, AudioInput):
                content.append({"type": "audio"})
            elif isinstance(d, VideoInput):
                content.append({"type": "video"})
        if message.text or not content:
            content.append({"type": "text", "text": message.text})
        out.append({"role": message.role, "content": content})
    return out


def _text(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": [{"type": "text", "text": text}]}


def build_inputs(
    job: GenerationJob,
    processor: Any,
    family: str,
    *,
    speaks: bool,
    native_video: bool,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> ModelInputs:
    messages = conversation(job, family, speaks)
    text = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, **(chat_template_kwargs or {})
    )
    images: list[Any] = []
    audio: list[Any] = []
    audio_from_video: list[int | None] = []
    videos: list[Any] = []
    video_fps: list[float] = []
    for message in job.messages:
        for item in message.media:
            d = item.decoded
            if isinstance(d, ImageInput):
                images.append(d.pixels)
            elif isinstance(d, AudioInput):
                audio.append(d.samples)
                audio_from_video.append(None)
            elif isinstance(d, VideoInput):
                if d.audio is not None:
                    audio.append(d.audio.samples)
                    audio_from_video.append(len(videos))
                videos.append(d.frames)
                video_fps.append(d.fps)
    with_soundtrack = any(i is not None for i in audio_from_video)
    # numpy throughout the processor (its audio-in-video interleaving calls np.arange on the
    # counts, which numpy 2 warns about for torch tensors); tensors are made at the end.
    audio_kwargs: dict[str, Any] = {"truncation": False}
    longest = max((len(a) for a in audio), default=0)
    extractor = getattr(processor, "feature_extractor", None)
    if longest > getattr(extractor, "n_samples", longest):
        # Qwen2.5's processor pads every clip to max_length: make that the longest clip.
        audio_kwargs["max_length"] = longest
    kwargs: dict[str, Any] = {"audio_kwargs": audio_kwargs}
    if videos:
        videos_kwargs: dict[str, Any] = {"fps": video_fps[0]}
        if native_video:
            # Frames are already sampled and sized by the media pipeline.
            videos_kwargs.update(do_sample_frames=False, do_resize=False)
        kwargs["videos_kwargs"] = videos_kwargs
        if with_soundtrack:
            kwargs["load_audio_from_video"] = True
            kwargs["audio_from_video_indices"] = audio_from_video
    processed = processor(
        text=text,
        images=images or None,
        audio=audio or None,
        videos=videos or None,
        **kwargs,
    )
    tensors = {key: _tensor(value) for key, value in processed.items()}
    if len(set(video_fps)) > 1:
        # The processors time every video at one fps; give each its own in the positions.
        step = float(getattr(processor.video_processor, "temporal_patch_size", 2))
        tensors["video_second_per_grid"] = _tensor([step / f for f in video_fps])
    prompt = count_prompt(
        tensors["input_ids"][0].tolist(),
        processor,
        images=len(images),
        audio=len(audio),
        videos=len(videos),
    )
    return ModelInputs(
        text=text,
        tensors=tensors,
        prompt=prompt,
        use_audio_in_video=with_soundtrack,
    )


def _tensor(value: Any) -> Any:
    import torch

    return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))


def count_prompt(
    ids: list[int], processor: Any, *, images: int, audio: int, videos: int
) -> PromptTokens:
    """Placeholders per modality plus each item's two boundary tokens; the rest is text."""
    image = ids.count(processor.image_token_id) + 2 * images if images else 0
    video = ids.count(processor.video_token_id) + 2 * videos if videos else 0
    sound = ids.count(processor.audio_token_id) + 2 * audio if audio else 0
    return PromptTokens(
        text=len(ids) - image - video - sound, image=image, audio=sound, video=video
    )

"""How media are sized and counted: the vendor's billing formulas and the open models' processor.

Two policies share one interface. ``billing_policy`` follows Model Studio's documented token
formulas (used for the catalog's hosted names); ``open_policy`` follows the open models'
processors (qwen-omni-utils and the transformers processors), which engines running the open
weights must match so counts stay honest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from omniserve.catalog import ModelSpec
from omniserve.errors import InvalidMedia
from omniserve.job import MediaAccounting

MAX_ASPECT = 200
ASPECT_MESSAGE = "The image length and width do not meet the model restrictions."


def round_by(x: float, f: int) -> int:
    return round(x / f) * f  # Python's round: half to even, as the reference code does


def floor_by(x: float, f: int) -> int:
    return math.floor(x / f) * f


def ceil_by(x: float, f: int) -> int:
    return math.ceil(x / f) * f


def smart_resize(h: int, w: int, f: int, min_px: float, max_px: float) -> tuple[int, int]:
    """Sides that are multiples of ``f``, close to the original aspect, within the pixel range."""
    if min(h, w) <= 0 or max(h, w) / min(h, w) > MAX_ASPECT:
        raise InvalidMedia(ASPECT_MESSAGE)
    hb, wb = max(f, round_by(h, f)), max(f, round_by(w, f))
    if hb * wb > max_px:
        beta = math.sqrt(h * w / max_px)
        hb, wb = max(f, floor_by(h / beta, f)), max(f, floor_by(w / beta, f))
    elif hb * wb < min_px:
        beta = math.sqrt(min_px / (h * w))
        hb, wb = ceil_by(h * beta, f), ceil_by(w * beta, f)
    return hb, wb


@dataclass(frozen=True)
class MediaPolicy:
    """Sizes and token counts for one model under one accounting."""

    kind: Literal["billing", "open"]
    factor: int  # pixels per token side
    image_min_tokens: int
    image_max_tokens: int
    image_extra_tokens: int  # billing adds the vision start/end tokens to each image
    frame_min_tokens: int = 128
    frame_max_tokens: int = 768
    video_total_tokens: int = 16_384  # billing's budget for all frames of one video
    video_fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 128
    audio_tokens_per_second: float = 12.5
    audio_encoder: Literal["rate", "qwen2.5", "qwen3"] = "rate"

    # -- images ----------------------------------------------------------------------------

    def image_size(self, h: int, w: int) -> tuple[int, int]:
        f2 = self.factor * self.factor
        return smart_resize(
            h, w, self.factor, self.image_min_tokens * f2, self.image_max_tokens * f2
        )

    def image_tokens(self, h: int, w: int) -> int:
        """Tokens of an image already resized to ``h`` x ``w``."""
        return (h // self.factor) * (w // self.factor) + self.image_extra_tokens

    # -- video -----------------------------------------------------------------------------

    def frame_count(self, seconds: float, total_frames: int | None = None) -> int:
        """Frames to sample from a video of ``seconds`` (even, within the policy's range)."""
        n = max(seconds * self.video_fps, self.min_frames)
        n = min(n, self.max_frames)
        if total_frames is not None and total_frames >= 2:
            n = min(n, total_frames)
        return max(2, floor_by(n, 2))

    def frame_size(self, h: int, w: int, frames: int) -> tuple[int, int]:
        """Per-frame size for a video of ``frames`` frames (the pixel budget shrinks with more)."""
        f2 = self.factor * self.factor
        min_px = self.frame_min_tokens * f2
        budget = self.video_total_tokens * f2 * 2 / max(frames, 1)
        max_px = max(min(self.frame_max_tokens * f2, budget), 1.05 * min_px)
        return smart_resize(h, w, self.factor, min_px, max_px)

    def video_tokens(self, frames: int, h: int, w: int) -> int:
        """Two frames share one grid of tokens; billing adds the vision start/end tokens."""
        per_pair = (h // self.factor) * (w // self.factor)
        return math.ceil(frames / 2) * per_pair + self.image_extra_tokens

    # -- audio -----------------------------------------------------------------------------

    def audio_tokens(self, seconds: float) -> int:
        if self.audio_encoder == "rate":
            return math.ceil(max(seconds, 1.0) * self.audio_tokens_per_second)
        mel = max(1, round(seconds * 100))  # 10 ms mel frames
        if self.audio_encoder == "qwen2.5":
            l1 = (mel - 1) // 2 + 1
            return (l1 - 2) // 2 + 1
        leave = mel % 100
        feat = (leave - 1) // 2 + 1
        tail = ((feat - 1) // 2 + 1 - 1) // 2 + 1 if leave else 0
        return tail + (mel // 100) * 13


def billing_policy(model: ModelSpec) -> MediaPolicy:
    """Model Studio's published formulas for ``model``."""
    t = model.tokens
    return MediaPolicy(
        kind="billing",
        factor=t.image_factor,
        image_min_tokens=t.image_min_tokens,
        image_max_tokens=t.image_max_tokens,
        image_extra_tokens=2,
        video_fps=t.video_fps,
        min_frames=4,
        max_frames=model.media.frames_max,
        audio_tokens_per_second=t.audio_tokens_per_second,
    )


# The open processors' video budget: MODEL_SEQ_LEN (128,000) x 0.9 tokens for all frames.
_OPEN_VIDEO_TOTAL = int(128_000 * 0.9)


def open_policy(family: Literal["qwen2.5-omni", "qwen3-omni"]) -> MediaPolicy:
    """The open models' processors (qwen-omni-utils defaults)."""
    if family == "qwen2.5-omni":
        return MediaPolicy(
            kind="open", factor=28, image_min_tokens=4, image_max_tokens=16_384,
            image_extra_tokens=0, video_total_tokens=_OPEN_VIDEO_TOTAL, min_frames=4,
            max_frames=768, audio_encoder="qwen2.5",
        )  # fmt: skip
    return MediaPolicy(
        kind="open", factor=32, image_min_tokens=4, image_max_tokens=12_544,
        image_extra_tokens=0, video_total_tokens=_OPEN_VIDEO_TOTAL, min_frames=4,
        max_frames=768, audio_encoder="qwen3",
    )  # fmt: skip


def policy_for(model: ModelSpec, accounting: MediaAccounting) -> MediaPolicy:
    """The policy an engine's accounting names for ``model``."""
    if accounting.kind == "billing" or accounting.family is None:
        return billing_policy(model)
    policy = open_policy(accounting.family)
    lo, hi = accounting.image_min_pixels, accounting.image_max_pixels
    if lo and hi:
        f2 = policy.factor * policy.factor
        policy = replace(
            policy, image_min_tokens=max(1, lo // f2), image_max_tokens=max(1, hi // f2)
        )
    return policy

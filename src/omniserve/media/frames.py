"""A ``video`` given as a list of frames: images decoded to one shared size, billed as video.

The open models take frames in pairs, so an odd list is padded by repeating its last frame; the
vendor bills frame lists like video, from the padded count.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from omniserve.catalog import MediaLimits
from omniserve.errors import InvalidMedia
from omniserve.job import VideoInput
from omniserve.media.budget import DecodeBudget, RequestBudget
from omniserve.media.image import decode_image
from omniserve.media.policy import MediaPolicy

_FRAMES = ThreadPoolExecutor(
    max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="omniserve-frames"
)


def decode_frames(
    frames: Sequence[bytes],
    policy: MediaPolicy,
    limits: MediaLimits,
    *,
    budget: DecodeBudget | None = None,
    request: RequestBudget | None = None,
) -> VideoInput:
    """Decode every frame to the size the first one sets; raises ``InvalidMedia``.

    Each frame is priced, spent from the ``request``'s budget and held from the server's
    ``budget`` like any image. Synchronous and CPU-bound: run it in a worker thread.
    """
    lo, hi = limits.frames_min, limits.frames_max
    if not lo <= len(frames) <= hi:
        raise InvalidMedia(
            "The video modality input does not meet the requirements because: "
            f"the range of sequence images shoule be ({lo}, {hi})."
        )
    count = len(frames) + len(frames) % 2

    # The first frame's displayed size sets the frame size for the whole list.
    first = decode_image(
        frames[0],
        policy,
        limits,
        size=lambda h, w: policy.frame_size(h, w, count),
        budget=budget,
        request=request,
    )
    height, width = first.height, first.width
    out = np.empty((count, height, width, 3), dtype=np.uint8)
    out[0] = first.pixels

    def decode_into(i: int) -> None:
        out[i] = decode_image(
            frames[i], policy, limits, size=(height, width), budget=budget, request=request
        ).pixels

    # Frames are independent and Pillow releases the GIL while decoding and resizing, so the
    # rest decode on all cores; the first failure (in list order) is the one reported.
    list(_FRAMES.map(decode_into, range(1, len(frames))))
    if count > len(frames):
        out[-1] = out[len(frames) - 1]
    return VideoInput(
        frames=out,
        fps=policy.video_fps,
        seconds=count / policy.video_fps,
        width=width,
        height=height,
        source_width=first.source_width,
        source_height=first.source_height,
        format="frames",
        tokens=policy.video_tokens(count, height, width),
    )

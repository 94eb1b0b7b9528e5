"""Frame lists: count limits, even padding, one shared size from the first frame, video billing."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from omniserve.catalog import Catalog, ModelSpec
from omniserve.errors import InvalidMedia
from omniserve.media.frames import decode_frames
from omniserve.media.image import DECODE_MESSAGE
from omniserve.media.policy import billing_policy, open_policy

CATALOG = Catalog.default()
FLASH_MODEL, TURBO_MODEL = CATALOG.get("qwen3-omni-flash"), CATALOG.get("qwen-omni-turbo")
FLASH, TURBO = billing_policy(FLASH_MODEL), billing_policy(TURBO_MODEL)


def frame(w: int, h: int, colour: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    buf = BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, fmt)
    return buf.getvalue()


SMALL = frame(64, 48, (10, 20, 30))


def range_message(lo: int, hi: int) -> str:
    return (
        "The video modality input does not meet the requirements because: "
        f"the range of sequence images shoule be ({lo}, {hi})."
    )


@pytest.mark.parametrize(
    ("model", "count", "lo", "hi"),
    [
        (FLASH_MODEL, 0, 2, 128),
        (FLASH_MODEL, 1, 2, 128),
        (FLASH_MODEL, 129, 2, 128),
        (TURBO_MODEL, 3, 4, 80),
        (TURBO_MODEL, 81, 4, 80),
    ],
)
def test_frame_count_limits(model: ModelSpec, count: int, lo: int, hi: int) -> None:
    with pytest.raises(InvalidMedia) as info:
        decode_frames([SMALL] * count, billing_policy(model), model.media)
    assert info.value.message == range_message(lo, hi)


@pytest.mark.parametrize(
    ("model", "count"), [(FLASH_MODEL, 2), (FLASH_MODEL, 128), (TURBO_MODEL, 4)]
)
def test_counts_at_the_limits_are_accepted(model: ModelSpec, count: int) -> None:
    out = decode_frames([SMALL] * count, billing_policy(model), model.media)
    assert out.frame_count == count


def test_odd_count_is_padded_with_the_last_frame() -> None:
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200)]
    out = decode_frames([frame(64, 48, c) for c in colours], FLASH, FLASH_MODEL.media)
    assert out.frame_count == 4
    assert out.frames.shape == (4, out.height, out.width, 3)
    assert out.frames.dtype == np.uint8 and out.frames.flags.c_contiguous
    for i, colour in enumerate([*colours, colours[-1]]):
        assert tuple(out.frames[i, 5, 5]) == colour
    assert out.fps == 2.0 and out.seconds == 2.0
    assert out.format == "frames"
    assert out.tokens == FLASH.video_tokens(4, out.height, out.width)


@pytest.mark.parametrize(
    ("model", "target"), [(FLASH_MODEL, (1152, 640)), (TURBO_MODEL, (1008, 560))]
)
def test_ten_seconds_of_720p_frames_bill_like_the_reference_video(
    model: ModelSpec, target: tuple[int, int]
) -> None:
    """The vendor's worked example: 20 frames of 720p → 7202 tokens on both models."""
    data = frame(1280, 720, (90, 120, 150), "JPEG")
    out = decode_frames([data] * 20, billing_policy(model), model.media)
    assert (out.width, out.height) == target
    assert (out.source_width, out.source_height) == (1280, 720)
    assert out.frames.shape == (20, target[1], target[0], 3)
    assert out.seconds == 10.0
    assert out.tokens == 7202


def test_every_frame_takes_the_first_frames_size() -> None:
    frames = [
        frame(1280, 720, (200, 0, 0)),
        frame(640, 480, (0, 200, 0)),
        frame(300, 1000, (0, 0, 200), "JPEG"),
        frame(2000, 2000, (90, 90, 90), "WEBP"),
    ]
    out = decode_frames(frames, FLASH, FLASH_MODEL.media)
    assert (out.width, out.height) == (1152, 640)  # FLASH.frame_size(720, 1280, 4)
    assert out.frames.shape == (4, 640, 1152, 3)
    assert tuple(out.frames[1, 320, 576]) == (0, 200, 0)
    assert out.tokens == 2 * (640 // 32) * (1152 // 32) + 2


def test_frame_size_shrinks_with_more_frames() -> None:
    data = frame(800, 450, (0, 0, 0), "JPEG")
    few = decode_frames([data] * 4, FLASH, FLASH_MODEL.media)
    many = decode_frames([data] * 128, FLASH, FLASH_MODEL.media)
    assert (few.height, few.width) == (448, 800)
    assert (many.height, many.width) == FLASH.frame_size(450, 800, 128) == (384, 672)
    assert many.tokens == 64 * (384 // 32) * (672 // 32) + 2


def test_open_policy_frames() -> None:
    policy = open_policy("qwen2.5-omni")
    out = decode_frames([frame(1280, 720, (1, 2, 3))] * 4, policy, TURBO_MODEL.media)
    assert (out.height, out.width) == policy.frame_size(720, 1280, 4)
    assert out.tokens == 2 * (out.height // 28) * (out.width // 28)


def test_a_corrupt_frame_refuses_the_list() -> None:
    good = frame(64, 48, (1, 2, 3))
    with pytest.raises(InvalidMedia) as info:
        decode_frames([good, good[: len(good) // 2], good], FLASH, FLASH_MODEL.media)
    assert info.value.message == DECODE_MESSAGE
    with pytest.raises(InvalidMedia) as info:
        decode_frames([b"<html></html>", good], FLASH, FLASH_MODEL.media)
    assert info.value.message == DECODE_MESSAGE

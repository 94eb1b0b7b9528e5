"""FramesVideoProcessor: the Qwen2-VL patch layout of pre-sized frames, with numpy alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import transformers

from omniserve.engines.hf.frames import FramesVideoProcessor
from tiny_omni import FAMILIES, QWEN3, QWEN25

PATCH = {QWEN25: 14, QWEN3: 16}


def _patch(family: str) -> int:
    return PATCH[family]


def _image_processor(tiny: Any, family: str) -> transformers.Qwen2VLImageProcessorPil:
    return transformers.Qwen2VLImageProcessorPil.from_pretrained(tiny[family])


def _frame(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("family", FAMILIES)
def test_two_identical_frames_match_the_image_processor(tiny: Any, family: str) -> None:
    image_processor = _image_processor(tiny, family)
    factor = _patch(family) * 2
    image = _frame(np.random.default_rng(0), 2 * factor, 3 * factor)  # not square: 2 x 3 blocks

    expected = image_processor(images=[image], do_resize=False, return_tensors="np")
    patches, grid = FramesVideoProcessor(image_processor).patchify(np.stack([image, image]))

    assert grid == tuple(int(x) for x in expected["image_grid_thw"][0])
    assert grid == (1, 4, 6)
    assert patches.shape == expected["pixel_values"].shape
    assert patches.dtype == np.float32
    np.testing.assert_allclose(patches, expected["pixel_values"], atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_odd_frame_count_repeats_the_last_frame(tiny: Any, family: str) -> None:
    frames_processor = FramesVideoProcessor(_image_processor(tiny, family))
    factor = _patch(family) * 2
    rng = np.random.default_rng(1)
    a, b, c = (_frame(rng, factor, 2 * factor) for _ in range(3))

    odd, odd_grid = frames_processor.patchify(np.stack([a, b, c]))
    padded, padded_grid = frames_processor.patchify(np.stack([a, b, c, c]))
    last, _ = frames_processor.patchify(np.stack([c, c]))

    assert odd_grid == padded_grid == (2, 2, 4)
    np.testing.assert_array_equal(odd, padded)
    np.testing.assert_array_equal(odd[len(odd) // 2 :], last)


@pytest.mark.parametrize("family", FAMILIES)
def test_call_concatenates_videos_and_lists_their_grids(tiny: Any, family: str) -> None:
    frames_processor = FramesVideoProcessor(_image_processor(tiny, family))
    factor = _patch(family) * 2
    rng = np.random.default_rng(2)
    first = np.stack([_frame(rng, factor, factor) for _ in range(2)])
    second = np.stack([_frame(rng, 2 * factor, factor) for _ in range(4)])

    out = frames_processor([first, second])

    assert out["video_grid_thw"].tolist() == [[1, 2, 2], [2, 4, 2]]
    assert out["video_grid_thw"].dtype == np.int64
    assert out["pixel_values_videos"].shape[0] == 1 * 2 * 2 + 2 * 4 * 2
    np.testing.assert_array_equal(
        out["pixel_values_videos"][:4], frames_processor.patchify(first)[0]
    )


@pytest.mark.parametrize(("dh", "dw"), [(1, 0), (0, 1)])
def test_size_not_a_multiple_of_patch_times_merge_is_refused(tiny: Any, dh: int, dw: int) -> None:
    frames_processor = FramesVideoProcessor(_image_processor(tiny, QWEN25))
    factor = 28
    frames = np.zeros((2, factor + 14 * dh, factor + 14 * dw, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="not a multiple of 28"):
        frames_processor.patchify(frames)

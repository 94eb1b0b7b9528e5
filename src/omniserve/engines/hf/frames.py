"""Video frames -> the vision encoder's patches, with numpy alone.

transformers' Qwen video processors need torchvision. Frames from omniserve's media pipeline are
already sampled (at the policy's fps) and resized (to multiples of patch x merge), so what is left
is the Qwen2-VL patch layout: rescale, normalize, group ``temporal_patch_size`` frames, cut into
``patch_size`` squares ordered by ``merge_size`` blocks. This is used only when the processor has
no video processor of its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class FramesVideoProcessor:
    """A stand-in for the Qwen-VL video processor over pre-sampled, pre-sized frames."""

    def __init__(self, image_processor: Any) -> None:
        self.patch_size = int(image_processor.patch_size)
        self.temporal_patch_size = int(image_processor.temporal_patch_size)
        self.merge_size = int(image_processor.merge_size)
        self.rescale_factor = float(getattr(image_processor, "rescale_factor", 1 / 255))
        self.image_mean = np.asarray(image_processor.image_mean, dtype=np.float32)
        self.image_std = np.asarray(image_processor.image_std, dtype=np.float32)

    def __call__(self, videos: Any, **_ignored: Any) -> dict[str, Any]:
        patches, grids = [], []
        for video in videos if isinstance(videos, list) else [videos]:
            flat, grid = self.patchify(np.asarray(video))
            patches.append(flat)
            grids.append(grid)
        return {
            "pixel_values_videos": np.concatenate(patches, axis=0),
            "video_grid_thw": np.asarray(grids, dtype=np.int64),
        }

    def patchify(self, frames: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
        """``frames`` T x H x W x 3 uint8 -> (patches, (grid_t, grid_h, grid_w))."""
        t, h, w, c = frames.shape
        ps, tps, ms = self.patch_size, self.temporal_patch_size, self.merge_size
        if h % (ps * ms) or w % (ps * ms):
            raise ValueError(f"frame size {w}x{h} is not a multiple of {ps * ms}")
        x = frames.astype(np.float32) * self.rescale_factor
        x = (x - self.image_mean) / self.image_std
        x = x.transpose(0, 3, 1, 2)  # T C H W
        if t % tps:
            x = np.concatenate([x, np.repeat(x[-1:], tps - t % tps, axis=0)], axis=0)
        gt, gh, gw = x.shape[0] // tps, h // ps, w // ps
        x = x.reshape(gt, tps, c, gh // ms, ms, ps, gw // ms, ms, ps)
        x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return x.reshape(gt * gh * gw, c * tps * ps * ps), (gt, gh, gw)

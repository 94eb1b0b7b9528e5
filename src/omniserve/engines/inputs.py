"""Decoded, preprocessed media as an engine receives them, each with its token count.

Produced by ``omniserve.media`` once per request; engines read pixels and samples from here and
never fetch or decode again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Pixels = npt.NDArray[np.uint8]  # H x W x 3 RGB, or N x H x W x 3 for video frames
Samples = npt.NDArray[np.float32]  # mono, 16 kHz, in [-1, 1]

AUDIO_INPUT_RATE = 16_000


@dataclass(frozen=True, eq=False)
class ImageInput:
    pixels: Pixels  # resized to (height, width)
    width: int
    height: int
    source_width: int
    source_height: int
    format: str  # as Pillow names it: "JPEG", "PNG", …
    tokens: int


@dataclass(frozen=True, eq=False)
class AudioInput:
    samples: Samples
    seconds: float
    format: str  # the container or codec PyAV found: "mp3", "wav", …
    tokens: int


@dataclass(frozen=True, eq=False)
class VideoInput:
    frames: Pixels  # N x height x width x 3, N even
    fps: float  # frames per second of video time the frames were sampled at
    seconds: float  # duration of the source (frame lists: frames / fps)
    width: int
    height: int
    source_width: int
    source_height: int
    format: str  # container name, or "frames" for a frame list
    tokens: int  # vision tokens only; the soundtrack counts as audio
    audio: AudioInput | None = None  # the soundtrack of a video file, when it has one

    @property
    def frame_count(self) -> int:
        return int(self.frames.shape[0])


DecodedMedia = ImageInput | AudioInput | VideoInput

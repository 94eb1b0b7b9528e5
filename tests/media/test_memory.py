"""Decoding the largest inputs the catalog allows stays within the bounds docs/media.md states.

Each decode runs in a fresh interpreter, with bench/media_memory.py's own measuring code: the
peak resident memory above the baseline (after imports and reading the file), from /proc.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.media_memory import CHILD

# Documented per-decode bounds (docs/media.md), about 1.4x what was measured.
BOUNDS_MB = {"image": 400, "audio": 230, "video": 230}


def ffmpeg(out: Path, *args: str) -> Path:
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", *args, str(out)], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    return out


def peak_mb(kind: str, path: Path) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(path)], check=True,
                         capture_output=True, text=True, timeout=300).stdout  # fmt: skip
    return float(json.loads(out)["decode_mb"])


@pytest.mark.timeout(300)
def test_largest_image_png_stays_bounded(tmp_path: Path) -> None:
    side = 8000  # 64 MP, the most the image decoder accepts; PNG cannot be decoded at scale
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (side, 1)), np.tile(ramp, (side, 1)).T,
                       np.full((side, side), 128, np.uint8)], axis=-1)  # fmt: skip
    png = tmp_path / "huge.png"
    Image.fromarray(pixels).save(png)
    assert peak_mb("image", png) < BOUNDS_MB["image"]


@pytest.mark.timeout(300)
def test_twenty_minutes_of_audio_stays_bounded(tmp_path: Path) -> None:
    mp3 = ffmpeg(tmp_path / "long.mp3", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono",
                 "-t", "1200", "-b:a", "32k")  # fmt: skip
    assert peak_mb("audio", mp3) < BOUNDS_MB["audio"]


@pytest.mark.timeout(300)
def test_longest_1080p_video_stays_bounded(tmp_path: Path) -> None:
    mp4 = ffmpeg(tmp_path / "long.mp4", "-f", "lavfi", "-i",
                 "testsrc2=size=1920x1080:rate=5:duration=150", "-f", "lavfi", "-i",
                 "sine=frequency=300:duration=150", "-c:v", "libx264", "-preset", "ultrafast",
                 "-c:a", "aac", "-shortest")  # fmt: skip
    assert peak_mb("video", mp4) < BOUNDS_MB["video"]

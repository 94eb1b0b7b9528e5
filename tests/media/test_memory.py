"""Decoding the largest inputs the catalog allows stays within the bounds docs/media.md states.

Each decode runs in a fresh interpreter, with bench/media_memory.py's own measuring code: the
peak resident memory above the baseline (after imports and reading the file), from /proc.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.media_memory import CHILD
from omniserve.catalog import Catalog
from omniserve.errors import InvalidMedia
from omniserve.media.budget import PER_DECODE, image_cost
from omniserve.media.image import decode_image
from omniserve.media.policy import billing_policy

# Documented per-decode bounds (docs/media.md).
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


def _image(path: Path, mode: str, side: int, *, transparent: bool = False) -> Path:
    if mode == "P":
        img = Image.new("P", (side, side), 0)
        img.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
        if transparent:
            img.save(path, transparency=0)
        else:
            img.save(path)
    elif mode == "I;16":
        Image.fromarray(np.zeros((side, side), dtype=np.uint16)).save(path)
    else:
        Image.new(mode, (side, side)).save(path)
    return path


def _largest_side(mode: str, transparent: bool) -> int:
    """The side of the largest square image of ``mode`` a decode accepts."""
    per_pixel = image_cost(1000, 1000, mode, transparent=transparent) / 1e6
    return min(8000, int(math.sqrt(PER_DECODE / per_pixel)) - 8)


MODES = [("P", True), ("P", False), ("RGBA", False), ("LA", False), ("I;16", False), ("1", False)]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("mode", "transparent"), MODES)
def test_the_largest_image_a_decode_accepts_stays_within_the_bound(
    tmp_path: Path, mode: str, transparent: bool
) -> None:
    """The price from the header is what decoding really takes: at the largest size the price
    lets through, every mode peaks under the bound (palette with transparency, 16-bit grey and
    grey with alpha expand the most)."""
    side = _largest_side(mode, transparent or mode in ("RGBA", "LA"))
    path = _image(tmp_path / "big.png", mode, side, transparent=transparent)
    assert peak_mb("image", path) < BOUNDS_MB["image"]


@pytest.mark.parametrize(("mode", "transparent"), [("P", True), ("RGBA", False), ("I;16", False)])
def test_a_decode_bomb_is_refused_from_its_header(
    tmp_path: Path, mode: str, transparent: bool
) -> None:
    """An 8000x8000 transparent palette PNG is 60 KB on the wire and would take 590 MB."""
    import time

    path = _image(tmp_path / "bomb.png", mode, 8000, transparent=transparent)
    model = Catalog.default().get("qwen3-omni-flash")
    began = time.perf_counter()
    with pytest.raises(InvalidMedia, match="one decode may use"):
        decode_image(path.read_bytes(), billing_policy(model), model.media)
    assert time.perf_counter() - began < 0.5  # refused unread


RETURN = r"""
import io, json, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from PIL import Image
from omniserve.catalog import Catalog
from omniserve.media.budget import DecodeBudget
from omniserve.media.frames import decode_frames
from omniserve.media.policy import billing_policy

def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
def png(i):
    out = io.BytesIO()
    Image.new("RGBA", (2200, 2200), (i, 2, 3, 100)).save(out, "PNG")
    return out.getvalue()
model = Catalog.default().get("qwen3-omni-flash")
policy, limits = billing_policy(model), model.media
frames = [png(i) for i in range(8)]
budget = DecodeBudget(1536 * 2**20)
decode_frames(frames[:4], policy, limits, budget=budget)  # imports, first-use allocations
base = rss_mb()
with ThreadPoolExecutor(4) as pool:  # frame lists on several threads fill several arenas
    list(pool.map(lambda _: decode_frames(frames, policy, limits, budget=budget), range(8)))
peak = rss_mb()
for _ in range(60):  # the trimmer looks every few seconds
    if rss_mb() - base < 100:
        break
    time.sleep(0.25)
print(json.dumps({"base": base, "peak": peak, "after": rss_mb()}))
"""


@pytest.mark.timeout(300)
def test_memory_returns_after_large_decodes() -> None:
    """After frame lists decoded on several threads at once, resident memory comes back to
    where it was within seconds: the heap is trimmed once decoding stops."""
    out = subprocess.run([sys.executable, "-c", RETURN], check=True,
                         capture_output=True, text=True, timeout=300).stdout  # fmt: skip
    rss = json.loads(out)
    assert rss["after"] - rss["base"] < 100, rss

"""Media preprocessing, side by side with qwen-omni-utils' ``process_mm_info``.

Both run the open-model policy (Qwen2.5-Omni: factor 28, 2 fps, the processors' pixel budgets)
on the same inputs, each in a fresh process: a 4000x3000 JPEG, a 1280x720 PNG, a 60 s MP3, a
60 s 720p30 MP4 with sound (its soundtrack extracted too), and a 20-frame list. The table shows
median wall time over the runs, peak resident memory above the process's baseline, and the
output shapes, which must agree.

    python bench/media.py                       # sets up bench/.venv-qwen-omni-utils once
    python bench/media.py --qwen-python /path/to/python   # an interpreter that has it already

The reference environment is torch and torchvision (the CPU wheels pip finds), qwen-omni-utils,
librosa and decord (torchvision 0.24 and later no longer read video).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-qwen-omni-utils"
REFERENCE_PACKAGES = ["torch==2.14.1", "torchvision==0.29.1", "qwen-omni-utils==0.0.9",
                      "librosa", "decord"]  # fmt: skip

PRELUDE = r"""
import json, statistics, sys, time
from pathlib import Path

def status_mb(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

def measure(run, runs):
    Path("/proc/self/clear_refs").write_text("5")
    base = status_mb("VmRSS")
    times, shape = [], None
    for _ in range(runs):
        t = time.perf_counter()
        shape = run()
        times.append(time.perf_counter() - t)
    print(json.dumps({"seconds": statistics.median(times), "peak_mb": status_mb("VmHWM") - base,
                      "shape": shape}))
"""

OURS = (
    PRELUDE
    + r"""
from omniserve.catalog import Catalog
from omniserve.media.audio import decode_audio
from omniserve.media.frames import decode_frames
from omniserve.media.image import decode_image
from omniserve.media.policy import open_policy
from omniserve.media.video import decode_video

kind, runs, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
policy = open_policy("qwen2.5-omni")
limits = Catalog.default().get("qwen2.5-omni-7b").media
from dataclasses import replace
limits = replace(limits, audio_max_seconds=3600, video_max_seconds=3600,
                 video_max_bytes=2**31, audio_max_bytes=2**31, frames_max=768)

def run():
    if kind == "image":
        out = decode_image(Path(paths[0]).read_bytes(), policy, limits)
        return [out.height, out.width]
    if kind == "audio":
        return [int(decode_audio(Path(paths[0]).read_bytes(), policy, limits).samples.size)]
    if kind == "video":
        out = decode_video(Path(paths[0]).read_bytes(), policy, limits)
        return [out.frame_count, out.height, out.width, int(out.audio.samples.size)]
    out = decode_frames([Path(p).read_bytes() for p in paths], policy, limits)
    return [out.frame_count, out.height, out.width]

measure(run, runs)
"""
)

THEIRS = (
    PRELUDE
    + r"""
import os
os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")
import warnings
warnings.filterwarnings("ignore")
from qwen_omni_utils import process_mm_info

kind, runs, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

def run():
    if kind == "image":
        content = [{"type": "image", "image": paths[0]}]
    elif kind == "audio":
        content = [{"type": "audio", "audio": paths[0]}]
    elif kind == "video":
        content = [{"type": "video", "video": paths[0]}]
    else:
        content = [{"type": "video", "video": ["file://" + p for p in paths]}]
    audios, images, videos = process_mm_info([{"role": "user", "content": content}],
                                             use_audio_in_video=kind == "video")
    if kind == "image":
        return [images[0].size[1], images[0].size[0]]
    if kind == "audio":
        return [int(audios[0].shape[0])]
    frames, _, height, width = videos[0].shape
    if kind == "video":
        return [int(frames), int(height), int(width), int(audios[0].shape[0])]
    return [int(frames), int(height), int(width)]

measure(run, runs)
"""
)


def ensure_reference() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"setting up {VENV} (torch, torchvision, qwen-omni-utils, librosa, decord)…")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *REFERENCE_PACKAGES],
                       check=True)  # fmt: skip
    return python


def make_inputs(folder: Path) -> dict[str, list[Path]]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)

    def photo(w: int, h: int) -> Image.Image:
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) * 255 // (w + h))], -1)
        noise = rng.integers(0, 40, (h, w, 3))
        return Image.fromarray((base + noise).clip(0, 255).astype(np.uint8))

    jpeg, png = folder / "photo.jpg", folder / "screen.png"
    photo(4000, 3000).save(jpeg, quality=90)
    photo(1280, 720).save(png)
    frames = []
    for i in range(20):
        path = folder / f"frame{i:02d}.jpg"
        photo(1280, 720).save(path, quality=85)
        frames.append(path)
    ff = ["ffmpeg", "-y", "-loglevel", "error"]
    mp3, mp4 = folder / "speech.mp3", folder / "clip.mp4"
    subprocess.run([*ff, "-f", "lavfi", "-i", "sine=frequency=220:duration=60",
                    "-ar", "44100", "-ac", "2", str(mp3)], check=True)  # fmt: skip
    subprocess.run([*ff, "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30:duration=60",
                    "-f", "lavfi", "-i", "sine=frequency=300:duration=60", "-c:v", "libx264",
                    "-preset", "veryfast", "-c:a", "aac", "-shortest", str(mp4)],
                   check=True)  # fmt: skip
    return {"image": [jpeg], "png": [png], "audio": [mp3], "video": [mp4], "frames": frames}


def measure(python: str, code: str, kind: str, runs: int, paths: list[Path]) -> dict[str, object]:
    kind_arg = "image" if kind == "png" else kind
    out = subprocess.run([python, "-c", code, kind_arg, str(runs), *map(str, paths)],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qwen-python", help="an interpreter with qwen-omni-utils installed")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    reference = args.qwen_python or str(ensure_reference())
    names = {
        "image": "4000x3000 JPEG",
        "png": "1280x720 PNG",
        "audio": "60 s MP3",
        "video": "60 s 720p30 MP4 + sound",
        "frames": "20-frame list (720p JPEG)",
    }
    with tempfile.TemporaryDirectory() as tmp:
        inputs = make_inputs(Path(tmp))
        print(
            f"{'input':<26} {'omniserve s':>11} {'qwen-omni-utils s':>17} {'speed-up':>8} "
            f"{'peak MB (ours / theirs)':>24}  output (ours | theirs)"
        )
        ratios = []
        for kind, paths in inputs.items():
            ours = measure(sys.executable, OURS, kind, args.runs, paths)
            theirs = measure(reference, THEIRS, kind, args.runs, paths)
            ratio = float(theirs["seconds"]) / float(ours["seconds"])  # type: ignore[arg-type]
            ratios.append(ratio)
            print(
                f"{names[kind]:<26} {ours['seconds']:>11.3f} {theirs['seconds']:>17.3f} "
                f"{ratio:>7.1f}x {ours['peak_mb']:>11.0f} / {theirs['peak_mb']:<11.0f} "
                f" {ours['shape']} | {theirs['shape']}"
            )
        print(f"geometric mean speed-up: {statistics.geometric_mean(ratios):.1f}x")


if __name__ == "__main__":
    main()

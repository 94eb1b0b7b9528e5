"""Peak memory of decoding the largest inputs the catalog allows, each in a fresh process.

    python bench/media_memory.py            # makes the inputs in a temporary folder

Inputs at the limits of qwen3-omni-flash: 8000x8000 JPEG and PNG (64 MP, the pixel cap), a 20-minute
MP3, and a 150 s 1080p30 MP4 with sound. Reports the peak RSS of the decode above the process's
RSS after imports and reading the file (the baseline, measured in the same process just
before; the peak is reset there through /proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path
from omniserve.catalog import Catalog
from omniserve.media.audio import decode_audio
from omniserve.media.image import decode_image
from omniserve.media.policy import billing_policy
from omniserve.media.video import decode_video

def status_mb(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
kind, path = sys.argv[1], sys.argv[2]
model = Catalog.default().get("qwen3-omni-flash")
policy, limits = billing_policy(model), model.media
data = Path(path).read_bytes()
Path("/proc/self/clear_refs").write_text("5")  # restart the peak (VmHWM) from here
base = status_mb("VmRSS")
t = time.perf_counter()
fn = {"image": decode_image, "png": decode_image, "audio": decode_audio,
      "video": decode_video}[kind]
out = fn(data, policy, limits)
took = time.perf_counter() - t
peak = status_mb("VmHWM")
print(json.dumps({"input_mb": len(data) / 2**20, "baseline_mb": base, "peak_mb": peak,
                  "decode_mb": peak - base, "seconds": took, "tokens": out.tokens}))
"""


def make_inputs(folder: Path) -> dict[str, Path]:
    import numpy as np
    from PIL import Image

    jpeg = folder / "huge.jpg"
    side = 8000
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (side, 1)), np.tile(ramp, (side, 1)).T,
                       np.full((side, side), 128, np.uint8)], axis=-1)  # fmt: skip
    Image.fromarray(pixels).save(jpeg, quality=80)
    png = folder / "huge.png"
    Image.fromarray(pixels).save(png, optimize=False)
    mp3, mp4 = folder / "long.mp3", folder / "long.mp4"
    run = ["ffmpeg", "-y", "-loglevel", "error"]
    subprocess.run([*run, "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "1200",
                    "-b:a", "32k", str(mp3)], check=True)  # fmt: skip
    subprocess.run([*run, "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30:duration=150",
                    "-f", "lavfi", "-i", "sine=frequency=300:duration=150", "-c:v", "libx264",
                    "-preset", "ultrafast", "-crf", "35", "-c:a", "aac", "-shortest",
                    str(mp4)], check=True)  # fmt: skip
    return {"image": jpeg, "png": png, "audio": mp3, "video": mp4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = make_inputs(Path(tmp))
        print(f"{'input':<34} {'size MB':>8} {'decode peak MB':>15} {'seconds':>8} {'tokens':>7}")
        names = {
            "image": "8000x8000 JPEG (64 MP)",
            "png": "8000x8000 PNG (64 MP)",
            "audio": "20 min MP3",
            "video": "150 s 1080p30 MP4 with sound",
        }
        for kind, path in inputs.items():
            out = subprocess.run([sys.executable, "-c", CHILD, kind, str(path)], check=True,
                                 capture_output=True, text=True).stdout  # fmt: skip
            r = json.loads(out)
            print(
                f"{names[kind]:<34} {r['input_mb']:>8.1f} {r['decode_mb']:>15.0f} "
                f"{r['seconds']:>8.2f} {r['tokens']:>7}"
            )


if __name__ == "__main__":
    main()

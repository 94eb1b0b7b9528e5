"""Real media files for the decoder tests, made with the ffmpeg CLI, espeak-ng and PyAV.

Each file is generated once per session into a temporary folder and read back as bytes; long
files are tiny (low rate, small frames, silence) so generating them stays fast.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest

FFMPEG = shutil.which("ffmpeg")
ESPEAK = shutil.which("espeak-ng")
SPEECH = "Hello, this is a test of the omni server audio decoder. One two three four five."

# (extension, ffmpeg output arguments) for each audio format the API accepts.
AUDIO_FORMATS: dict[str, tuple[str, ...]] = {
    "wav": ("-c:a", "pcm_s16le", "-f", "wav"),
    "mp3": ("-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3"),
    "aac": ("-c:a", "aac", "-b:a", "64k", "-f", "adts"),
    "3gp": ("-c:a", "aac", "-b:a", "32k", "-f", "3gp"),
    "flac": ("-c:a", "flac", "-f", "flac"),
    "m4a": ("-c:a", "aac", "-b:a", "64k", "-f", "ipod"),
    "ogg": ("-c:a", "libvorbis", "-b:a", "64k", "-f", "ogg"),
    "opus": ("-c:a", "libopus", "-b:a", "32k", "-f", "ogg"),
}

# (video codec arguments, audio codec arguments, muxer) for each video container.
# Video codec arguments with B-frames: frames shown before ones decoded earlier, which shift
# timestamps (AVI, FLV) and which no other frame refers to.
BFRAMES: dict[str, tuple[str, ...]] = {
    "mp4": ("-c:v", "libx264", "-preset", "veryfast", "-bf", "3"),
    "avi": ("-c:v", "mpeg4", "-bf", "2", "-q:v", "3"),
    "flv": ("-c:v", "libx264", "-preset", "veryfast", "-bf", "3"),
}
VIDEO_FORMATS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "mp4": (("-c:v", "libx264", "-preset", "ultrafast"), ("-c:a", "aac"), "mp4"),
    "avi": (("-c:v", "mpeg4", "-q:v", "5"), ("-c:a", "libmp3lame"), "avi"),
    "mkv": (("-c:v", "libx264", "-preset", "ultrafast"), ("-c:a", "libvorbis"), "matroska"),
    "mov": (("-c:v", "libx264", "-preset", "ultrafast"), ("-c:a", "aac"), "mov"),
    "flv": (("-c:v", "flv", "-q:v", "5"), ("-c:a", "libmp3lame", "-ar", "44100"), "flv"),
    "wmv": (("-c:v", "wmv2", "-q:v", "5"), ("-c:a", "wmav2"), "asf"),
}


def has_pyav_encoder(name: str) -> bool:
    try:
        av.Codec(name, "w")
    except Exception:
        return False
    return True


class MediaFiles:
    """Generated files under ``root``, each made on first use and cached for the session."""

    def __init__(self, root: Path) -> None:
        if FFMPEG is None:
            pytest.fail("the ffmpeg CLI is missing: run scripts/bootstrap --dev")
        self.root = root

    def make(self, name: str, build: Callable[[Path], None]) -> bytes:
        path = self.root / name
        if not path.exists():
            build(path)
        return path.read_bytes()

    def ffmpeg(self, name: str, *args: str) -> bytes:
        """``ffmpeg <args> <root/name>``, cached by ``name``."""

        def build(path: Path) -> None:
            cmd = [str(FFMPEG), "-hide_banner", "-loglevel", "error", "-y", *args, str(path)]
            subprocess.run(cmd, check=True, timeout=60)

        return self.make(name, build)

    def piped(self, name: str, *args: str) -> bytes:
        """``ffmpeg <args> pipe:1``: muxers that cannot seek back leave durations out."""

        def build(path: Path) -> None:
            cmd = [str(FFMPEG), "-hide_banner", "-loglevel", "error", *args, "pipe:1"]
            path.write_bytes(subprocess.run(cmd, check=True, capture_output=True).stdout)

        return self.make(name, build)

    def speech_wav(self, seconds: float) -> Path:
        """espeak-ng speech, padded or cut to exactly ``seconds``, 48 kHz stereo WAV."""
        if ESPEAK is None:
            pytest.fail("espeak-ng is missing: run scripts/bootstrap --dev")
        raw = self.root / "espeak.wav"
        if not raw.exists():
            subprocess.run([ESPEAK, "-w", str(raw), SPEECH], check=True, timeout=60)
        name = f"speech-{seconds}.wav"
        self.ffmpeg(
            name, "-i", str(raw), "-af", f"apad,atrim=0:{seconds}", "-ar", "48000", "-ac", "2"
        )
        return self.root / name

    def audio(self, fmt: str, seconds: float = 10.0) -> bytes:
        """Speech of ``seconds`` in one of ``AUDIO_FORMATS``."""
        source = self.speech_wav(seconds)
        return self.ffmpeg(f"speech-{seconds}.{fmt}", "-i", str(source), *AUDIO_FORMATS[fmt])

    def amr(self, container: str = "amr", seconds: float = 10.0) -> bytes:
        """Speech as AMR-NB (8 kHz mono) through PyAV's libopencore encoder."""
        if not has_pyav_encoder("libopencore_amrnb"):
            pytest.skip("no AMR-NB encoder in this PyAV build")
        source = self.speech_wav(seconds)

        def build(path: Path) -> None:
            with av.open(str(source)) as src, av.open(str(path), "w", format=container) as out:
                stream = out.add_stream("libopencore_amrnb", rate=8000, layout="mono")
                resampler = av.AudioResampler("s16", "mono", 8000, frame_size=160)
                for frame in [*src.decode(audio=0), None]:
                    for chunk in resampler.resample(frame):
                        chunk.pts = None
                        out.mux(stream.encode(chunk))
                out.mux(stream.encode(None))

        return self.make(f"speech-{seconds}-amr.{container}", build)

    def silence(self, name: str, seconds: float, *codec: str, rate: int = 8000) -> bytes:
        """Cheap long audio: digital silence, ``seconds`` long, encoded with ``codec`` args."""
        source = f"anullsrc=r={rate}:cl=mono"
        return self.ffmpeg(name, "-f", "lavfi", "-i", source, "-t", str(seconds), *codec)

    def video(
        self,
        fmt: str,
        *,
        seconds: float = 10,
        size: str = "320x240",
        rate: int = 10,
        gop: int = 20,
        source: str = "testsrc",
        audio: str | None = "sine",
        codec: tuple[str, ...] | None = None,
    ) -> bytes:
        """A moving test pattern in one of ``VIDEO_FORMATS``, with a sine soundtrack by default;
        ``codec`` replaces the format's video codec arguments."""
        vcodec, acodec, muxer = VIDEO_FORMATS[fmt]
        vcodec = codec or vcodec
        tag = "".join(vcodec).replace(":", "").replace("-", "")
        name = f"{source}-{seconds}-{size}-{rate}-{gop}-{audio}-{tag}.{fmt}"
        args = ["-f", "lavfi", "-i", f"{source}=s={size}:r={rate}:d={seconds}"]
        if source == "ramp":  # left: brighter with time; right: a sawtooth over frame numbers
            lum = f"if(lt(X,W/2),16+T*{216 / seconds:.4f},16+mod(N,20)*10)"
            args[-1] = f"color=c=black:s={size}:r={rate}:d={seconds},geq=lum='{lum}':cb=128:cr=128"
        if audio == "sine":
            args += ["-f", "lavfi", "-i", f"sine=f=440:d={seconds}"]
        elif audio == "silence":
            args += ["-f", "lavfi", "-i", f"aevalsrc=0:d={seconds}:s=16000"]
        args += [*vcodec, "-g", str(gop), "-pix_fmt", "yuv420p"]
        if audio is not None:
            args += acodec
        return self.ffmpeg(name, *args, "-f", muxer)

    def rotated_mp4(self) -> bytes:
        """A 64x32 H.264 clip whose display matrix turns it a quarter counter-clockwise;
        its left half is white, so upright it shows a white bottom half."""

        def build(path: Path) -> None:
            with av.open(str(path), "w", format="mp4") as out:
                stream = out.add_stream("libx264", rate=10)
                stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
                stream.set_display_rotation(90)
                picture = np.zeros((32, 64, 3), np.uint8)
                picture[:, :32] = 255
                for _ in range(20):
                    out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
                out.mux(stream.encode(None))

        return self.make("rotated.mp4", build)


def mutated(data: bytes, seed: int) -> bytes:
    """``data`` with up to 50 random bytes overwritten, and every fourth one also cut short."""
    rng = np.random.default_rng(seed)
    body = bytearray(data)
    for at in rng.integers(0, len(body), int(rng.integers(1, 50))):
        body[at] = int(rng.integers(0, 256))
    if seed % 4 == 3:
        del body[int(rng.integers(1, len(body))) :]
    return bytes(body)


def wav_header(rate: int, data_size: int, riff_size: int) -> bytes:
    """A 16-bit mono PCM WAV header that claims ``data_size`` bytes of samples."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
        + b"data" + struct.pack("<I", data_size)
    )  # fmt: skip


def flac_claiming(data: bytes, total_samples: int) -> bytes:
    """``data`` (a FLAC file) with its STREAMINFO claiming ``total_samples`` samples."""
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO is the first block
    body = bytearray(data)
    packed = int.from_bytes(body[18:26], "big")
    mask = (1 << 36) - 1
    body[18:26] = ((packed & ~mask) | total_samples).to_bytes(8, "big")
    return bytes(body)

"""Video decoding: containers, frame sampling by seeking, sizes and tokens, soundtrack, limits."""

from __future__ import annotations

import dataclasses
import io

import av
import numpy as np
import pytest

from media.mediafiles import BFRAMES, VIDEO_FORMATS, MediaFiles, mutated
from omniserve.catalog import Catalog, MediaLimits
from omniserve.errors import InvalidMedia
from omniserve.job import AUDIO_INPUT_RATE, VideoInput
from omniserve.media.policy import MediaPolicy, billing_policy
from omniserve.media.video import NO_FRAMES, TOO_LARGE, TOO_LONG, UNDECODABLE, decode_video

CATALOG = Catalog.default()
FLASH = CATALOG.get("qwen3-omni-flash")
TURBO = CATALOG.get("qwen-omni-turbo")
FLASH_POLICY, TURBO_POLICY = billing_policy(FLASH), billing_policy(TURBO)
FORMATS = list(VIDEO_FORMATS)


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> MediaFiles:
    return MediaFiles(tmp_path_factory.mktemp("video"))


def decode(
    data: bytes,
    policy: MediaPolicy = FLASH_POLICY,
    limits: MediaLimits = FLASH.media,
    *,
    with_audio: bool = True,
    stats: dict[str, int] | None = None,
) -> VideoInput:
    return decode_video(data, policy, limits, with_audio=with_audio, stats=stats)


def refused(
    data: bytes, policy: MediaPolicy = FLASH_POLICY, limits: MediaLimits = FLASH.media
) -> str:
    with pytest.raises(InvalidMedia) as info:
        decode_video(data, policy, limits)
    assert info.value.status == 400
    return info.value.message


def all_frames(data: bytes, h: int, w: int) -> list[np.ndarray]:
    """Every frame, decoded in order and scaled like the sampler scales them: the reference."""
    with av.open(io.BytesIO(data), "r") as container:
        return [
            f.reformat(width=w, height=h, format="rgb24", interpolation="BICUBIC").to_ndarray()
            for f in container.decode(video=0)
        ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_containers(files: MediaFiles, fmt: str) -> None:
    stats: dict[str, int] = {}
    video = decode(files.video(fmt), stats=stats)
    n = FLASH_POLICY.frame_count(10, 100)
    h, w = FLASH_POLICY.frame_size(240, 320, n)
    assert video.frames.shape == (n, h, w, 3) and video.frames.dtype == np.uint8
    assert (video.source_width, video.source_height, video.width, video.height) == (320, 240, w, h)
    assert video.format == fmt
    assert video.seconds == pytest.approx(10, abs=0.11)
    assert video.fps == pytest.approx(n / video.seconds)
    assert video.tokens == FLASH_POLICY.video_tokens(n, h, w)
    assert stats["sampled_frames"] == n and stats["decoded_frames"] <= 101
    moving = [
        np.abs(a.astype(int) - b).mean()
        for a, b in zip(video.frames[:-1], video.frames[1:], strict=True)
    ]
    assert min(moving) > 1  # testsrc moves: no two samples are the same frame
    assert video.audio is not None
    assert video.audio.format == fmt
    assert video.audio.seconds == pytest.approx(10, abs=0.05)
    assert video.audio.samples.size == round(video.audio.seconds * AUDIO_INPUT_RATE)
    assert float(np.abs(video.audio.samples).max()) > 0.05  # the sine
    assert video.audio.tokens == FLASH_POLICY.audio_tokens(video.audio.seconds)


SAMPLED = [*FORMATS, *(f"{fmt}-bframes" for fmt in BFRAMES)]


def ramp(files: MediaFiles, fmt: str, seconds: float) -> bytes:
    """Brightness grows with time, a sawtooth tells neighbours apart; ``*-bframes`` reorder."""
    container = fmt.split("-")[0]
    codec = BFRAMES[container] if fmt.endswith("-bframes") else None
    return files.video(
        container, seconds=seconds, size="64x48", source="ramp", audio=None, codec=codec
    )


def assert_qwen_frames(data: bytes, video: VideoInput) -> None:
    """The samples are exactly the frames at ``linspace(0, total - 1, n).round()``."""
    reference = all_frames(data, video.height, video.width)
    picks = np.linspace(0, len(reference) - 1, video.frame_count).round().astype(int)
    for got, index in zip(video.frames, picks, strict=True):
        assert np.array_equal(got, reference[index])


@pytest.mark.parametrize("fmt", SAMPLED)
def test_samples_are_the_frames_qwen_would_pick(files: MediaFiles, fmt: str) -> None:
    """At 2 fps, samples are exactly the frames qwen-omni-utils picks, and get brighter at an
    even pace."""
    data = ramp(files, fmt, 12)
    video = decode(data)
    assert_qwen_frames(data, video)
    left = video.frames[:, :, : video.width // 2]
    steps = np.diff(left.reshape(video.frame_count, -1).mean(axis=1))
    assert (steps > 0).all()
    assert steps.max() < 1.5 * steps.mean()


@pytest.mark.parametrize("fmt", SAMPLED)
def test_sparse_samples_seek_and_stay_exact(files: MediaFiles, fmt: str) -> None:
    """60 s at 10 fps, a keyframe every 2 s, 8 samples: every container seeks (indexed or
    not), decodes a fraction of the 600 frames and still finds the exact frames."""
    data = ramp(files, fmt, 60)
    stats: dict[str, int] = {}
    video = decode(data, dataclasses.replace(FLASH_POLICY, max_frames=8), stats=stats)
    assert stats["seeks"] >= 6
    assert stats["decoded_frames"] < 600 / (2 if fmt == "wmv" else 4)  # ASF seeks land earlier
    assert_qwen_frames(data, video)


def test_reference_sizes_and_tokens(files: MediaFiles) -> None:
    """The vendor's worked example: a 10 s 720p video is 20 frames, 1152x640 (flash) or
    1008x560 (turbo)."""
    data = files.video("mp4", size="1280x720", rate=4, gop=8)
    flash = decode(data)
    assert (flash.frame_count, flash.width, flash.height, flash.tokens) == (20, 1152, 640, 7202)
    assert flash.audio is not None and flash.audio.tokens == 125
    turbo = decode(data, TURBO_POLICY, TURBO.media)
    assert (turbo.frame_count, turbo.width, turbo.height, turbo.tokens) == (20, 1008, 560, 7202)
    assert turbo.audio is not None and turbo.audio.tokens == 250


def test_seeking_skips_most_frames(files: MediaFiles) -> None:
    """60 s at 10 fps, a keyframe every 2 s: eight samples need a fraction of the 600 frames;
    at 2 fps (every 0.5 s) seeking cannot skip, but never decodes a frame twice."""
    data = files.video("mp4", seconds=60, rate=10, gop=20, audio=None)
    sparse = dataclasses.replace(FLASH_POLICY, max_frames=8)
    stats: dict[str, int] = {}
    assert decode(data, sparse, stats=stats).frame_count == 8
    assert stats["seeks"] >= 6 and stats["decoded_frames"] < 600 / 4
    dense: dict[str, int] = {}
    assert decode(data, stats=dense).frame_count == 120
    assert dense["decoded_frames"] <= 600


def test_display_rotation_is_applied(files: MediaFiles) -> None:
    video = decode(files.rotated_mp4())
    assert (video.source_width, video.source_height) == (32, 64)
    assert video.height > video.width
    top, bottom = np.split(video.frames[0], 2, axis=0)
    assert top.mean() < 30 and bottom.mean() > 225


# -- soundtrack ---------------------------------------------------------------------------------


def test_without_audio(files: MediaFiles) -> None:
    assert decode(files.video("mp4"), with_audio=False).audio is None
    assert decode(files.video("mp4", audio=None)).audio is None


def test_silent_soundtrack_is_still_audio(files: MediaFiles) -> None:
    video = decode(files.video("mkv", audio="silence"), TURBO_POLICY, TURBO.media)
    assert video.audio is not None
    assert float(np.abs(video.audio.samples).max()) == 0.0
    assert video.audio.seconds == pytest.approx(10, abs=0.02)  # Vorbis in MKV keeps its padding
    assert video.audio.tokens == TURBO_POLICY.audio_tokens(video.audio.seconds) >= 250


# -- limits -------------------------------------------------------------------------------------


def test_too_long_before_decoding(files: MediaFiles) -> None:
    data = files.video("mp4", seconds=41, size="32x32", rate=1, gop=10, audio=None)
    stats: dict[str, int] = {}
    with pytest.raises(InvalidMedia) as info:
        decode_video(data, TURBO_POLICY, TURBO.media, stats=stats)
    assert info.value.message == TOO_LONG
    assert stats == {}  # refused from the header: no frame was decoded
    assert decode(data).frame_count == FLASH_POLICY.frame_count(41, 41)  # flash allows 150 s


def test_duration_from_packets_when_headers_have_none(files: MediaFiles) -> None:
    """Matroska written to a pipe has no duration anywhere: the packets' timestamps tell."""
    source = "testsrc=s=32x32:r=2:d=41"
    data = files.piped(
        "piped.mkv", "-f", "lavfi", "-i", source, "-c:v", "libx264", "-f", "matroska"
    )
    assert refused(data, TURBO_POLICY, TURBO.media) == TOO_LONG
    assert decode(data).seconds == pytest.approx(41)


def test_too_large_before_decoding(files: MediaFiles) -> None:
    data = files.video("mp4")
    assert refused(data, limits=dataclasses.replace(FLASH.media, video_max_bytes=1000)) == TOO_LARGE
    junk = b"\0" * (TURBO.media.video_max_bytes + 1)
    assert refused(junk, TURBO_POLICY, TURBO.media) == TOO_LARGE


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"<!DOCTYPE html><html><body>Not found</body></html>",
        np.random.default_rng(3).bytes(50_000),
    ],
    ids=["empty", "html", "random"],
)
def test_garbage_cannot_be_decoded(data: bytes) -> None:
    assert refused(data) == UNDECODABLE


def test_audio_only_has_no_frames(files: MediaFiles) -> None:
    data = files.ffmpeg("tone.mp4", "-f", "lavfi", "-i", "sine=d=2", "-c:a", "aac")
    assert refused(data) == NO_FRAMES


def test_other_formats_cannot_be_decoded(files: MediaFiles) -> None:
    wav = files.ffmpeg("tone.wav", "-f", "lavfi", "-i", "sine=d=2")
    png = files.ffmpeg("still.png", "-f", "lavfi", "-i", "testsrc=s=64x64", "-frames:v", "1")
    assert refused(wav) == UNDECODABLE
    assert refused(png) == UNDECODABLE


@pytest.mark.parametrize("fmt", FORMATS)
def test_corrupt_payload(files: MediaFiles, fmt: str) -> None:
    """A valid header followed by noise: a clean 400, never another exception."""
    data = files.video(fmt)
    noise = np.random.default_rng(5).bytes(len(data) - 4000)
    assert refused(data[:4000] + noise) in (UNDECODABLE, NO_FRAMES)


def test_truncated_mp4_without_index(files: MediaFiles) -> None:
    data = files.video("mp4")  # moov (the index) is written last
    assert refused(data[: len(data) // 2]) == UNDECODABLE


@pytest.mark.parametrize("fmt", FORMATS)
def test_damaged_files_never_raise_anything_else(files: MediaFiles, fmt: str) -> None:
    """Random bytes overwritten (and some files cut): a video or ``InvalidMedia``, nothing else."""
    data = files.video(fmt)
    for seed in range(8):
        try:
            decode(mutated(data, seed))
        except InvalidMedia as exc:
            assert exc.message in (UNDECODABLE, NO_FRAMES)

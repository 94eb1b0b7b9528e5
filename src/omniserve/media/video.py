"""Video input: evenly spaced frames, sized by the policy, plus the soundtrack at 16 kHz.

Frames are the ones qwen-omni-utils picks (``linspace(0, total_frames - 1, n).round()``), found
by seeking where a keyframe lies between one sample and the next, so sparse samples of a long
clip skip most of its frames; samples closer than keyframes are reached by decoding on. Each
sampled frame goes straight from the decoder to RGB at its final size through swscale. The
soundtrack is decoded from a second container over the same bytes, so seeking never disturbs it.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

import av
import av.error
import numpy as np
from av.container import InputContainer
from av.stream import Discard, Disposition
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

from omniserve.catalog import MediaLimits
from omniserve.errors import InvalidMedia
from omniserve.job import AUDIO_INPUT_RATE, AudioInput, Pixels, VideoInput
from omniserve.media.audio import _decode_stream_to_16k, short_format_name
from omniserve.media.policy import MediaPolicy

_WHY = "The video modality input does not meet the requirements because: "
TOO_LARGE = _WHY + "The video file is too large."
TOO_LONG = _WHY + "The video file is too long."
UNDECODABLE = _WHY + "The video file cannot be decoded."
NO_FRAMES = _WHY + "The video has no frames."

# FFmpeg's demuxer names of the allowed containers and the short names we report.
_FORMATS = {
    "mov,mp4,m4a,3gp,3g2,mj2": "mp4",
    "avi": "avi",
    "matroska,webm": "mkv",
    "flv": "flv",
    "asf": "wmv",
}
# Without an index, seek only for targets at least this far ahead (grows with the keyframe
# spacing seen while decoding), so a seek rarely lands behind where decoding already is.
_MIN_SEEK_SECONDS = 1.0
# Index timestamps are decode times, which run up to the reorder depth ahead of presentation:
# only a keyframe this many frames before a target surely shows no later than the target.
_REORDER_FRAMES = 8


def decode_video(
    data: bytes,
    policy: MediaPolicy,
    limits: MediaLimits,
    *,
    with_audio: bool = True,
    stats: dict[str, int] | None = None,
) -> VideoInput:
    """Sampled frames and soundtrack of ``data``; ``InvalidMedia`` for any fault.

    ``stats``, when given, receives counters (decoded frames, seeks) for tests and benchmarks.
    """
    if len(data) > limits.video_max_bytes:
        raise InvalidMedia(TOO_LARGE)
    # The soundtrack decodes on its own thread while frames are sampled (PyAV releases the GIL).
    soundtrack = _SOUNDTRACKS.submit(_soundtrack, data, policy, limits) if with_audio else None
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            video = _sample(container, data, policy, limits, stats)
        if soundtrack is not None:
            audio = soundtrack.result()
            if audio is not None:
                video = dataclasses.replace(
                    video, audio=dataclasses.replace(audio, format=video.format)
                )
    except InvalidMedia:
        raise
    except av.error.FFmpegError as exc:  # its MemoryError too: FFmpeg's ENOMEM means bad sizes
        raise InvalidMedia(UNDECODABLE) from exc
    except MemoryError:
        raise  # ours, not the file's: a server fault
    except Exception as exc:  # PyAV also raises OSError, ValueError, TypeError, ...
        raise InvalidMedia(UNDECODABLE) from exc
    return video


def _sample(
    container: InputContainer,
    data: bytes,
    policy: MediaPolicy,
    limits: MediaLimits,
    stats: dict[str, int] | None,
) -> VideoInput:
    fmt = container.format.name
    if fmt not in _FORMATS:
        raise InvalidMedia(UNDECODABLE)
    stream = next(
        (s for s in container.streams.video if not s.disposition & Disposition.attached_pic), None
    )
    if stream is None or stream.time_base is None:
        raise InvalidMedia(NO_FRAMES)
    seconds, whole = _durations(container, stream, data)
    if max(seconds, whole) > limits.video_max_seconds:  # a longer soundtrack counts too
        raise InvalidMedia(TOO_LONG)
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    total = stream.frames or (round(seconds * rate) if rate else 0)
    n = policy.frame_count(seconds, total if total >= 2 else None)
    offsets = _offsets(stream, seconds, n, total, rate)
    frame_pts = 1 / (rate or Fraction(30)) / stream.time_base  # one frame, in the time base
    stream.codec_context.thread_type = "AUTO"
    for other in container.streams:
        if other is not stream:
            other.discard = Discard.all  # the demuxer drops their packets unread: less copying
    reader = _Reader(container, stream, frame=max(1, round(frame_pts)))
    frames: Pixels | None = None
    geometry: _Geometry | None = None
    got = 0
    for offset in offsets:
        frame = reader.frame_at(offset)
        if frame is None:
            break
        if geometry is None:
            geometry = _Geometry.of(frame, policy, n)
            frames = np.empty((n, geometry.height, geometry.width, 3), dtype=np.uint8)
        assert frames is not None
        frames[got] = geometry.rgb(frame)
        got += 1
    if stats is not None:
        stats.update(decoded_frames=reader.decoded, seeks=reader.seeks, sampled_frames=got)
    if frames is None or geometry is None:
        raise InvalidMedia(UNDECODABLE if reader.bad else NO_FRAMES)
    if got * 2 < n:  # the headers promised far more than the stream holds: corrupt or cut
        raise InvalidMedia(UNDECODABLE)
    frames[got:] = frames[got - 1]  # a stream a little shorter than its header: repeat the last
    return VideoInput(
        frames=frames,
        fps=n / seconds if seconds > 0 else policy.video_fps,
        seconds=seconds,
        width=geometry.width,
        height=geometry.height,
        source_width=geometry.source_width,
        source_height=geometry.source_height,
        format=short_format_name(container, _FORMATS[fmt]),
        tokens=policy.video_tokens(n, geometry.height, geometry.width),
    )


def _durations(container: InputContainer, stream: VideoStream, data: bytes) -> tuple[float, float]:
    """Seconds of video, and of the whole file: the headers' claims, else the last packet's time."""
    assert stream.time_base is not None
    whole = container.duration / 1_000_000 if container.duration else 0.0  # AV_TIME_BASE
    if stream.duration:
        return float(stream.duration * stream.time_base), whole
    tagged = _tag_seconds(stream.metadata.get("DURATION", ""))  # Matroska's per-track tag
    if tagged:
        return tagged, whole
    if whole:
        # FLV's onMetaData duration counts from zero; B-frames delay the first picture.
        flv = container.format.name == "flv"
        late = float((stream.start_time or 0) * stream.time_base) if flv else 0.0
        return max(whole - late, 0.0), whole
    start = end = stream.start_time or 0
    with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as scan:
        for packet in scan.demux(scan.streams[stream.index]):
            if packet.pts is not None:  # demuxing reads packets without decoding them
                end = max(end, packet.pts + (packet.duration or 0))
    seconds = float((end - start) * stream.time_base)
    return seconds, seconds


def _tag_seconds(tag: str) -> float:
    """``HH:MM:SS.fraction`` as seconds; 0 when absent or malformed."""
    try:
        h, m, sec = tag.split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return 0.0


def _offsets(
    stream: VideoStream, seconds: float, n: int, total: int, rate: Fraction | None
) -> list[int]:
    """When the ``n`` frames to sample show, after the first frame, in the stream's time base."""
    assert stream.time_base is not None
    if total >= 2 and rate:
        times = np.linspace(0, total - 1, n).round() / float(rate)  # qwen-omni-utils' indices
    else:
        times = np.linspace(0, max(seconds, 0.0), n, endpoint=False)
    return [round(t / stream.time_base) for t in times.tolist()]


@dataclass(frozen=True)
class _Geometry:
    """Output size, and the source's as displayed (rotation applied)."""

    height: int
    width: int
    source_height: int
    source_width: int
    turns: int  # counter-clockwise quarter turns asked for by the display matrix (phones)

    @classmethod
    def of(cls, frame: VideoFrame, policy: MediaPolicy, n: int) -> _Geometry:
        try:
            turns = round(frame.rotation / 90) % 4
        except (AttributeError, TypeError, ValueError):  # no or odd display matrix: as coded
            turns = 0
        src_h, src_w = (frame.width, frame.height) if turns % 2 else (frame.height, frame.width)
        h, w = policy.frame_size(src_h, src_w, n)
        return cls(h, w, src_h, src_w, turns)

    def rgb(self, frame: VideoFrame) -> Pixels:
        """``frame`` scaled by swscale straight to RGB at the output size, then turned upright."""
        h, w = (self.width, self.height) if self.turns % 2 else (self.height, self.width)
        out = frame.reformat(width=w, height=h, format="rgb24", interpolation="BICUBIC")
        pixels = np.asarray(out.to_ndarray(), dtype=np.uint8)  # rgb24 is uint8: no copy
        return np.rot90(pixels, self.turns) if self.turns else pixels


class _Reader:
    """Decodes one stream forward, seeking ahead when that skips decoding work."""

    def __init__(self, container: InputContainer, stream: VideoStream, frame: int) -> None:
        self.container = container
        self.stream = stream
        self.frame = frame  # one frame's duration in the time base
        self.tolerance = frame // 2  # a target matches the frame nearest it
        self._reorder = frame * _REORDER_FRAMES
        self._goal: int | None = None  # the target being looked for, less the tolerance
        self._origin: int | None = None  # the first frame's timestamp
        self._skipping = False
        self.decoded = self.seeks = self.bad = 0
        self.last: VideoFrame | None = None
        self._last_pts: int | None = None
        self._seekable = True
        assert stream.time_base is not None
        self._min_jump = round(_MIN_SEEK_SECONDS / stream.time_base)
        self._last_key: int | None = None
        self._frames = self._decode()

    def frame_at(self, offset: int) -> VideoFrame | None:
        """The first frame showing ``offset`` or later after the first one; ``None`` at the end."""
        if self._origin is None:
            # Count from the first frame, not the stream's start time: B-frames in AVI and
            # edit lists in MP4 shift the first picture's timestamp.
            first = next(self._frames, None)
            if first is None or self._last_pts is None:
                return None
            self._origin = self._last_pts
            self._frames = itertools.chain((first,), self._frames)
        target = self._origin + offset - self.tolerance
        self._goal = target
        if self.last is not None and self._last_pts is not None and self._last_pts >= target:
            return self.last
        if self._should_seek(target):
            self._seek(target)
        for frame in self._frames:
            self.last = frame
            if self._last_pts is not None and self._last_pts >= target:
                return frame
        return None

    def _should_seek(self, target: int) -> bool:
        here = self._last_pts
        if here is None or not self._seekable:
            return False
        # The index holds keyframes' decode times; one a reorder depth before the target
        # surely shows no later than it. Seek when such a keyframe lies ahead of here.
        entries = self.stream.index_entries
        early = target - self._reorder
        count = len(entries)
        if count and entries[count - 1].timestamp >= early:  # the index covers the way there
            found = entries.search_timestamp(early, backward=True)
            # Seeking flushes the decoder: worth it only to skip more than a few frames.
            return found >= 0 and entries[found].timestamp > here + self._reorder
        # Indexes that demuxers build while reading (FLV, ASF) stop short: guess from spacing.
        return target - here > self._min_jump

    def _seek(self, target: int) -> None:
        here = self._last_pts
        # MP4 and MKV land on the last keyframe showing at or before ``target``; AVI compares
        # decode times, so it can land on one showing after: then go a reorder depth earlier.
        first = None
        for goal in (target, target - self._reorder):
            first = self._seek_to(goal)
            if first is None or self._last_pts is None or self._last_pts <= target:
                break
        if first is None:
            # The seek failed or found nothing (FLV past its partial index): go back to where
            # decoding was and carry on without seeking.
            self._seekable = False
            first = self._seek_to(here or 0)
            if first is None:
                return
        self.last = first
        if here is not None and self._last_pts is not None and self._last_pts <= here:
            # Landed behind where decoding already was: keyframes are sparser than assumed.
            self._min_jump = max(2 * self._min_jump, target - here)
        self._frames = itertools.chain((first,), self._frames)

    def _seek_to(self, goal: int) -> VideoFrame | None:
        """Seek to the keyframe before ``goal``; the first frame decoded there, if any."""
        try:
            self.container.seek(goal, stream=self.stream, backward=True)
        except av.error.FFmpegError:
            return None
        self.seeks += 1
        self._last_key = None  # keyframe spacing is measured between consecutive keyframes
        self._frames = self._decode()
        return next(self._frames, None)

    def _decode(self) -> Iterator[VideoFrame]:
        context = self.stream.codec_context
        for packet in self.container.demux(self.stream):
            # Frames no other frame refers to (most B-frames) are not decoded at all when they
            # show before the target: none of them can be the frame sampled.
            skip = packet.pts is not None and self._goal is not None and packet.pts < self._goal
            if skip != self._skipping:
                context.skip_frame = "NONREF" if skip else "DEFAULT"
                self._skipping = skip
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                self.bad += 1
                if self.bad > 32 and self.bad > self.decoded:
                    raise
                continue
            for frame in frames:
                self.decoded += 1
                self._note(frame)
                yield frame

    def _note(self, frame: VideoFrame) -> None:
        """Track the frame's timestamp (guessed when missing) and the keyframe spacing."""
        pts = frame.pts
        if pts is None:
            pts = (self._last_pts or 0) + self.frame
        self._last_pts = pts
        if frame.key_frame:
            if self._last_key is not None and pts > self._last_key:
                self._min_jump = max(self._min_jump, pts - self._last_key)
            self._last_key = pts


def _soundtrack(data: bytes, policy: MediaPolicy, limits: MediaLimits) -> AudioInput | None:
    """The first audio stream at 16 kHz mono (silence still counts), or ``None``."""
    with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        samples = _decode_stream_to_16k(
            container, stream, limits.video_max_seconds, too_long=TOO_LONG, illegal=UNDECODABLE
        )
    if samples.size == 0:
        return None
    seconds = samples.size / AUDIO_INPUT_RATE
    return AudioInput(samples, seconds, "", tokens=policy.audio_tokens(seconds))


_SOUNDTRACKS = ThreadPoolExecutor(
    max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="omniserve-soundtrack"
)

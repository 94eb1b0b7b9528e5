"""Audio input: any allowed container decoded to 16 kHz mono float32, within the model's limits.

Both the open models' feature extractors and the vendor's per-second billing start from 16 kHz
mono samples, so audio is decoded once, straight to that, and counted from what was decoded.
The soundtrack of a video goes through the same code (``_decode_stream_to_16k``).
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import av
import av.error
import numpy as np
import numpy.typing as npt
from av.audio.stream import AudioStream
from av.container import InputContainer
from av.stream import Discard, Stream

from omniserve.catalog import MediaLimits
from omniserve.errors import InvalidMedia
from omniserve.job import AUDIO_INPUT_RATE, AudioInput, Samples
from omniserve.media.policy import MediaPolicy

_WHY = "The audio modality input does not meet the requirements because: "
TOO_LARGE = _WHY + "The audio file is too large."
TOO_LONG = _WHY + "The audio file is too long."
ILLEGAL = "The audio format is illegal and cannot be opened."  # vendor's text
EMPTY = "The audio is empty"  # vendor's text, without a period

# FFmpeg's demuxer names of the allowed formats and the short names we report. MP4-family
# files (m4a, 3gp, mp4) share one demuxer; their brand tells them apart.
_FORMATS = {
    "wav": "wav",
    "mp3": "mp3",
    "aac": "aac",
    "amr": "amr",
    "amrnb": "amr",
    "amrwb": "amr",
    "flac": "flac",
    "ogg": "ogg",
    "mov,mp4,m4a,3gp,3g2,mj2": "m4a",
}
# Demuxers whose duration is only a guess from the first frames' bitrate (ADTS AAC files often
# report half their length), so only decoding can measure them.
_GUESSED_DURATION = frozenset({"aac"})
# Codec priming and padding can make decoded audio a few frames longer than its header says;
# decoding stops this far past the limit rather than refusing a file the header check passed.
_DECODE_SLACK_SECONDS = 0.5


# What browsers record (MediaRecorder): taken by the transcription endpoint, as OpenAI's is,
# though not by chat input, whose formats are the vendor's.
WEBM = {"matroska,webm": "webm"}


def decode_audio(
    data: bytes,
    policy: MediaPolicy,
    limits: MediaLimits,
    extra_formats: Mapping[str, str] | None = None,
) -> AudioInput:
    """``data`` as 16 kHz mono samples with its token count; ``InvalidMedia`` for any fault.
    ``extra_formats``: more demuxers to allow (FFmpeg's name -> the name reported)."""
    formats = {**_FORMATS, **extra_formats} if extra_formats else _FORMATS
    if len(data) > limits.audio_max_bytes:
        raise InvalidMedia(TOO_LARGE)
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            fmt = container.format.name
            if fmt not in formats or not container.streams.audio:
                raise InvalidMedia(ILLEGAL)
            stream = container.streams.audio[0]
            header = _trusted_seconds(container, stream)
            if header is not None and header > limits.audio_max_seconds:
                raise InvalidMedia(TOO_LONG)
            samples = _decode_stream_to_16k(
                container, stream, limits.audio_max_seconds, too_long=TOO_LONG, illegal=ILLEGAL
            )
            name = short_format_name(container, formats[fmt])
    except InvalidMedia:
        raise
    except av.error.FFmpegError as exc:  # its MemoryError too: FFmpeg's ENOMEM means bad sizes
        raise InvalidMedia(ILLEGAL) from exc
    except MemoryError:
        raise  # ours, not the file's: a server fault
    except Exception as exc:  # PyAV also raises OSError, ValueError, TypeError, ...
        raise InvalidMedia(ILLEGAL) from exc
    if samples.size == 0:
        raise InvalidMedia(EMPTY)
    seconds = samples.size / AUDIO_INPUT_RATE
    return AudioInput(samples, seconds, name, tokens=policy.audio_tokens(seconds))


def header_seconds(container: InputContainer, stream: Stream) -> float | None:
    """The duration the headers claim (stream first, then container), or ``None`` if unknown."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return float(container.duration) / 1_000_000  # AV_TIME_BASE
    return None


def _trusted_seconds(container: InputContainer, stream: Stream) -> float | None:
    """``header_seconds`` where the demuxer reads it rather than guesses it from the bitrate."""
    if container.format.name in _GUESSED_DURATION:
        return None
    return header_seconds(container, stream)


def short_format_name(container: InputContainer, default: str) -> str:
    """A short name for the container: MP4-family files by brand ("3gp", "m4a", "mov", "mp4")."""
    if not container.format.name.startswith("mov,"):
        return default
    brand = str(container.metadata.get("major_brand", "")).strip().lower()
    if brand.startswith(("3gp", "3g2")):
        return "3gp"
    if brand in ("m4a", "m4b"):
        return "m4a"
    if brand == "qt":
        return "mov"
    return default


class _Mono16k:
    """Resamples decoded frames to 16 kHz mono float32 and keeps them, up to a limit."""

    def __init__(self, max_samples: int, too_long: str) -> None:
        self.max_samples = max_samples
        self.too_long = too_long
        self.count = 0
        self._chunks: list[npt.NDArray[np.float32]] = []
        self._resampler: av.AudioResampler | None = None
        self._source: tuple[str, str, int] | None = None

    def push(self, frame: av.AudioFrame) -> None:
        # A resampler is bound to its first frame's layout and rate; some streams change them
        # midway (concatenated MP3s), so start a new one when they do.
        source = (frame.format.name, frame.layout.name, frame.sample_rate)
        if source != self._source:
            self._drain()
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_INPUT_RATE)
            self._source = source
        assert self._resampler is not None
        self._keep(self._resampler.resample(frame))

    def samples(self) -> Samples:
        self._drain()
        if not self._chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self._chunks)  # one copy at the end, never a growing array

    def _drain(self) -> None:
        if self._resampler is not None:
            self._keep(self._resampler.resample(None))
            self._resampler = None

    def _keep(self, frames: list[av.AudioFrame]) -> None:
        for out in frames:
            chunk = np.asarray(out.to_ndarray(), dtype=np.float32).reshape(-1)
            self._chunks.append(chunk)
            self.count += chunk.size
            if self.count > self.max_samples:
                raise InvalidMedia(self.too_long)


def _decode_stream_to_16k(
    container: InputContainer,
    stream: AudioStream,
    max_seconds: float,
    *,
    too_long: str,
    illegal: str,
) -> Samples:
    """Every sample of ``stream`` at 16 kHz mono, refusing with ``too_long`` past the limit.

    Broken packets are skipped, as FFmpeg does; a file of mostly broken packets is ``illegal``.
    A read error after good packets ends the stream: truncated uploads keep what they hold.
    """
    for other in container.streams:
        if other is not stream:
            other.discard = Discard.all  # the demuxer drops their packets unread: less copying
    collector = _Mono16k(int((max_seconds + _DECODE_SLACK_SECONDS) * AUDIO_INPUT_RATE), too_long)
    good = bad = 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError:
            if good == 0:
                raise
            break
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            bad += 1
            continue
        good += 1 if packet.size else 0  # the final flush packet is empty
        for frame in frames:
            collector.push(frame)
    if bad > good or (bad and collector.count == 0):
        raise InvalidMedia(illegal)
    samples = collector.samples()
    # Trim codec padding (AAC, AMR) that overshoots a trustworthy header by a few frames, so a
    # 10 s file counts as 10 s.
    header = _trusted_seconds(container, stream)
    if header is not None:
        expected = round(header * AUDIO_INPUT_RATE)
        if expected < samples.size <= expected + _DECODE_SLACK_SECONDS * AUDIO_INPUT_RATE:
            samples = samples[:expected]
    return samples

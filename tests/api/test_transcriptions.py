"""POST /v1/audio/transcriptions: OpenAI's speech-to-text, heard by the server's recognizer, on
a real server, with the openai SDK and with raw multipart bodies."""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import subprocess
import wave
from collections.abc import Iterator
from typing import Any

import av
import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from helpers import LiveServer, fast_settings, live_server, read_sse
from omniserve.api.transcriptions import NO_RECOGNIZER, deltas, file_limit, timestamp
from omniserve.catalog import Language, build_models
from omniserve.config import SpeechSettings
from omniserve.media.audio import EMPTY, ILLEGAL, TOO_LONG
from omniserve.speech.kokoro import KokoroModel, KokoroSynthesizer
from omniserve.speech.recognizer import Segment, Transcript
from omniserve.speech.voices import voice_settings

SENTENCE = "The quick brown fox jumps over the lazy dog."
TWO_SENTENCES = (
    "The quick brown fox jumps over the lazy dog. "
    "Then it runs far away into the green forest, and nobody ever sees it again."
)
CHINESE = "今天天气很好，我们去公园散步吧。"
# The most a file may be on the test server (its max_request_bytes: below OpenAI's 25 MiB).
LIMIT = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def hearing() -> Iterator[LiveServer]:
    settings = fast_settings(recognizer={"enabled": True, "threads": 2}, max_request_bytes=LIMIT)
    with live_server(settings) as s:
        yield s


@pytest.fixture(scope="module")
def client(hearing: LiveServer) -> Iterator[OpenAI]:
    with OpenAI(api_key="sk-test", base_url=f"{hearing.base_url}/v1", max_retries=0) as c:
        yield c


def espeak(text: str) -> bytes:
    """A WAV of ``text`` read by espeak-ng (American English, a little slower than usual)."""
    args = ["espeak-ng", "-v", "en-us", "-s", "140", "--stdout", text]
    return subprocess.run(args, check=True, capture_output=True).stdout


def transcode(wav: bytes, fmt: str, codec: str, rate: int = 22_050) -> bytes:
    """``wav`` in another container and codec (mono, at ``rate``; espeak-ng's 22.05 kHz)."""
    out = io.BytesIO()
    with av.open(io.BytesIO(wav)) as src, av.open(out, "w", format=fmt) as dst:
        stream = dst.add_stream(codec, rate=rate, layout="mono")
        for frame in src.decode(audio=0):
            frame.pts = None
            for packet in stream.encode(frame):
                dst.mux(packet)
        for packet in stream.encode(None):
            dst.mux(packet)
    return out.getvalue()


def wav_of(pcm: bytes, rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()


def silent_flac(seconds: float, rate: int = 8_000) -> bytes:
    """``seconds`` of silence as FLAC: a long recording in a few kilobytes."""
    out = io.BytesIO()
    with av.open(out, "w", format="flac") as dst:
        stream = dst.add_stream("flac", rate=rate, layout="mono")
        block = np.zeros((1, rate), dtype=np.int16)
        for _ in range(math.ceil(seconds)):
            frame = av.AudioFrame.from_ndarray(block, format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                dst.mux(packet)
        for packet in stream.encode(None):
            dst.mux(packet)
    return out.getvalue()


@pytest.fixture(scope="module")
def english() -> bytes:
    return espeak(SENTENCE)


@pytest.fixture(scope="module")
def two_sentences() -> bytes:
    return espeak(TWO_SENTENCES)


@pytest.fixture(scope="module")
def chinese() -> bytes:
    """Mandarin read by the server's neural voice (Kokoro), as a WAV."""
    settings = SpeechSettings(backend="kokoro", kokoro_threads=2)
    voice = {v.name: v for v in build_models()[0].voices}["Cherry"]

    async def main() -> bytes:
        synth = KokoroSynthesizer(settings, model=KokoroModel.load(settings))
        try:
            return await synth.synthesize(CHINESE, voice_settings(voice, Language.ZH))
        finally:
            await synth.close()

    return wav_of(asyncio.run(main()), 24_000)


def words_heard(text: str, said: str = SENTENCE) -> float:
    """The share of ``said``'s words in ``text``, whatever the case and punctuation."""
    heard = set(re.findall(r"[a-z]+", text.lower()))
    wanted = re.findall(r"[a-z]+", said.lower())
    return sum(w in heard for w in wanted) / len(wanted)


def duration_of(audio: bytes) -> float:
    """Seconds of audio, counted by decoding (espeak-ng's WAV header gives no length)."""
    with av.open(io.BytesIO(audio)) as container:
        frames = list(container.decode(audio=0))
    return sum(f.samples for f in frames) / frames[0].sample_rate


def post(
    server: LiveServer,
    files: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    *,
    path: str = "/v1/audio/transcriptions",
    **kwargs: Any,
) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", files=files, data=data, timeout=60, **kwargs)


def refused(response: httpx.Response, param: str, says: str, status: int = 400) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    error = body["error"]
    assert error["param"] == param and says in error["message"], error
    assert body["request_id"] == response.headers["x-request-id"]


# -- the formats -----------------------------------------------------------------------------


def test_json_with_the_sdk(client: OpenAI, english: bytes) -> None:
    result = client.audio.transcriptions.create(file=("speech.wav", english), model="whisper-1")
    assert words_heard(result.text) >= 0.7, result.text
    usage = result.model_dump()["usage"]
    assert usage == {"type": "duration", "seconds": math.ceil(duration_of(english))}


def test_text_with_the_sdk(client: OpenAI, english: bytes) -> None:
    text = client.audio.transcriptions.create(
        file=("speech.wav", english), model="gpt-4o-transcribe", response_format="text"
    )
    assert isinstance(text, str) and text.endswith("\n")
    assert words_heard(text) >= 0.7, text


def test_verbose_json_with_the_sdk(client: OpenAI, english: bytes) -> None:
    result = client.audio.transcriptions.create(
        file=("speech.wav", english),
        model="whisper-1",
        response_format="verbose_json",
        timestamp_granularities=["segment"],
    )
    assert result.language == "english"
    assert result.duration == pytest.approx(duration_of(english), abs=0.01)
    assert words_heard(result.text) >= 0.7, result.text
    assert result.segments
    first, last = result.segments[0], result.segments[-1]
    assert first.id == 0 and 0 <= first.start < first.end <= last.end <= result.duration
    assert " ".join(s.text for s in result.segments) == result.text
    extra = result.model_dump()
    assert extra["task"] == "transcribe"
    assert extra["usage"] == {"type": "duration", "seconds": math.ceil(result.duration)}


CUE = r"(\d\d:\d\d:\d\d{sep}\d\d\d) --> (\d\d:\d\d:\d\d{sep}\d\d\d)\n(.+)\n\n"


def test_srt_with_the_sdk(client: OpenAI, two_sentences: bytes) -> None:
    srt = client.audio.transcriptions.create(
        file=("speech.wav", two_sentences), model="whisper-1", response_format="srt"
    )
    cue = r"(\d+)\n" + CUE.format(sep=",")
    cues = re.findall(cue, srt)
    assert len(cues) >= 2 and re.fullmatch(f"(?:{cue})+", srt), srt
    assert [int(c[0]) for c in cues] == list(range(1, len(cues) + 1))
    assert cues[0][1].startswith("00:00:0")
    assert words_heard(" ".join(c[3] for c in cues), TWO_SENTENCES) >= 0.7, srt


def test_vtt_with_raw_multipart(hearing: LiveServer, two_sentences: bytes) -> None:
    response = post(
        hearing,
        files={"file": ("speech.wav", two_sentences, "audio/wav")},
        data={"model": "whisper-1", "response_format": "vtt"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/vtt")
    vtt = response.text
    assert vtt.startswith("WEBVTT\n\n")
    cue = CUE.format(sep=r"\.")
    cues = re.findall(cue, vtt)
    assert len(cues) >= 2 and re.fullmatch(f"WEBVTT\n\n(?:{cue})+", vtt), vtt
    assert words_heard(" ".join(c[2] for c in cues), TWO_SENTENCES) >= 0.7, vtt


@pytest.mark.parametrize(("fmt", "codec"), [("mp3", "libmp3lame"), ("flac", "flac")])
def test_other_containers(hearing: LiveServer, english: bytes, fmt: str, codec: str) -> None:
    encoded = transcode(english, fmt, codec)
    response = post(
        hearing,
        files={"file": (f"speech.{fmt}", encoded, f"audio/{fmt}")},
        data={"model": "whisper-1", "response_format": "json"},
    )
    assert response.status_code == 200, response.text
    assert words_heard(response.json()["text"]) >= 0.7, response.text


def test_webm_as_browsers_record_it(hearing: LiveServer, english: bytes) -> None:
    """Chrome's and Firefox's MediaRecorder make WebM with Opus: taken here, as OpenAI takes it
    (chat input keeps the vendor's formats)."""
    encoded = transcode(english, "webm", "libopus", rate=48_000)
    response = post(
        hearing,
        files={"file": ("recording.webm", encoded, "audio/webm")},
        data={"model": "whisper-1", "response_format": "json"},
    )
    assert response.status_code == 200, response.text
    assert words_heard(response.json()["text"]) >= 0.7, response.text


def test_chinese_told_its_language(hearing: LiveServer, chinese: bytes) -> None:
    response = post(
        hearing,
        files={"file": ("speech.wav", chinese, "audio/wav")},
        data={"model": "whisper-1", "language": "zh", "response_format": "verbose_json"},
        path="/compatible-mode/v1/audio/transcriptions",
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["language"] == "chinese"
    text = result["text"]
    assert "今天" in text and "我们" in text, text


def test_the_prompt_and_temperature_are_taken(hearing: LiveServer, english: bytes) -> None:
    response = post(
        hearing,
        files={"file": ("speech.wav", english, "audio/wav")},
        data={"model": "whisper-1", "prompt": "A pangram.", "temperature": "0.2", "language": ""},
    )
    assert response.status_code == 200, response.text
    assert words_heard(response.json()["text"]) >= 0.7, response.text


# -- streaming -------------------------------------------------------------------------------


def test_streaming_with_the_sdk(client: OpenAI, two_sentences: bytes) -> None:
    stream = client.audio.transcriptions.create(
        file=("speech.wav", two_sentences), model="gpt-4o-transcribe", stream=True
    )
    events = list(stream)
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1)
    assert len(events) >= 3, events
    done = events[-1]
    assert done.type == "transcript.text.done"
    assert "".join(e.delta for e in events[:-1]) == done.text
    assert all(e.delta.startswith(" ") for e in events[1:-1])
    assert words_heard(done.text, TWO_SENTENCES) >= 0.7, done.text


def test_streaming_text_as_raw_events(hearing: LiveServer, english: bytes) -> None:
    body = {"model": "whisper-1", "stream": "true", "response_format": "text"}
    files = {"file": ("speech.wav", english, "audio/wav")}
    url = f"{hearing.base_url}/v1/audio/transcriptions"
    with httpx.stream("POST", url, files=files, data=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_sse(response.iter_lines())
    *pieces, done = events
    assert done == {
        "type": "transcript.text.done",
        "text": "".join(p["delta"] for p in pieces),
        "usage": {"type": "duration", "seconds": math.ceil(duration_of(english))},
    }


def test_streaming_false_is_a_plain_answer(hearing: LiveServer) -> None:
    response = post(
        hearing,
        files={"file": ("quiet.flac", silent_flac(1), "audio/flac")},
        data={"model": "whisper-1", "stream": "false"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"text": "", "usage": {"type": "duration", "seconds": 1}}


# -- what is refused -------------------------------------------------------------------------


def test_an_empty_file(hearing: LiveServer) -> None:
    response = post(hearing, files={"file": ("speech.wav", b"")}, data={"model": "whisper-1"})
    refused(response, "file", EMPTY)


def test_a_text_file_named_wav(hearing: LiveServer) -> None:
    text = b"This is not audio, whatever its name says.\n" * 20
    response = post(hearing, files={"file": ("speech.wav", text)}, data={"model": "whisper-1"})
    refused(response, "file", ILLEGAL)


def test_corrupt_audio(hearing: LiveServer, english: bytes) -> None:
    noise = np.random.default_rng(7).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    mp3 = transcode(english, "mp3", "libmp3lame")
    broken = (
        english[:30],  # a header cut short
        english[:44],  # a header and no samples
        b"RIFF" + noise,  # a WAV's magic, then noise
        mp3[:4] + noise,  # an MP3 frame header, then noise
        bytes(4000),
    )
    for data in broken:
        response = post(hearing, files={"file": ("x.wav", data)}, data={"model": "whisper-1"})
        assert response.status_code == 400, (data[:50], response.text)
        error = response.json()["error"]
        assert error["param"] == "file" and error["message"] in (ILLEGAL, EMPTY), error


def test_a_truncated_file_keeps_what_it_holds(hearing: LiveServer, english: bytes) -> None:
    response = post(
        hearing, files={"file": ("x.wav", english[: len(english) // 2])}, data={"model": "m"}
    )
    assert response.status_code == 200, response.text
    assert "quick" in response.json()["text"].lower(), response.text


def test_a_file_over_the_size_limit(hearing: LiveServer) -> None:
    assert file_limit(hearing.service) == LIMIT
    just_over = bytes(LIMIT + 1)  # read, then refused
    response = post(hearing, files={"file": ("x.wav", just_over)}, data={"model": "whisper-1"})
    refused(response, "file", f"limit of {LIMIT} bytes", status=413)
    far_over = bytes(LIMIT + 1024 * 1024)  # refused from its Content-Length
    response = post(hearing, files={"file": ("x.wav", far_over)}, data={"model": "whisper-1"})
    refused(response, "file", f"limit of {LIMIT} bytes", status=413)


def test_a_body_without_a_length_is_cut_off_at_the_limit(hearing: LiveServer) -> None:
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(LIMIT // 65_536 + 32):
            yield bytes(65_536)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = httpx.post(
        f"{hearing.base_url}/v1/audio/transcriptions",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        timeout=60,
    )
    refused(response, "file", f"limit of {LIMIT} bytes", status=413)


def test_audio_over_the_duration_limit(hearing: LiveServer) -> None:
    model = hearing.service.models()[0]
    long = silent_flac(model.media.audio_max_seconds + 5)
    assert len(long) < LIMIT
    response = post(hearing, files={"file": ("long.flac", long)}, data={"model": "whisper-1"})
    refused(response, "file", TOO_LONG)


def test_silence_is_an_empty_text(hearing: LiveServer) -> None:
    response = post(
        hearing,
        files={"file": ("quiet.flac", silent_flac(2))},
        data={"model": "whisper-1", "response_format": "verbose_json", "language": "en"},
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["text"] == "" and result["segments"] == [] and result["language"] == "english"


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({}, "model", "Missing 'model'"),
        ({"model": "  "}, "model", "Missing 'model'"),
        ({"model": "whisper-1", "response_format": "xml"}, "response_format", "json, text, srt"),
        (
            {"model": "whisper-1", "timestamp_granularities[]": "word"},
            "timestamp_granularities[]",
            "Word timestamps are not available",
        ),
        (
            {"model": "whisper-1", "timestamp_granularities[]": "sentence"},
            "timestamp_granularities[]",
            "'segment'",
        ),
        ({"model": "whisper-1", "stream": "true", "response_format": "srt"}, "stream", "'srt'"),
        (
            {"model": "whisper-1", "stream": "true", "response_format": "verbose_json"},
            "stream",
            "json or text",
        ),
        ({"model": "whisper-1", "stream": "maybe"}, "stream", "true or false"),
        ({"model": "whisper-1", "temperature": "hot"}, "temperature", "from 0 to 1"),
        ({"model": "whisper-1", "temperature": "1.5"}, "temperature", "from 0 to 1"),
        ({"model": "whisper-1", "language": "xx"}, "language", "ISO-639-1"),
    ],
)
def test_bad_fields(
    hearing: LiveServer, english: bytes, fields: dict[str, str], param: str, says: str
) -> None:
    response = post(hearing, files={"file": ("speech.wav", english)}, data=fields)
    refused(response, param, says)


def test_a_bad_language_through_the_sdk(client: OpenAI, english: bytes) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(
            file=("speech.wav", english), model="whisper-1", language="klingon"
        )
    assert caught.value.status_code == 400
    assert "language" in caught.value.message


def test_a_missing_file(hearing: LiveServer) -> None:
    response = post(hearing, files={"other": ("x.txt", b"x")}, data={"model": "whisper-1"})
    refused(response, "file", "send it as the 'file' field")
    response = post(hearing, files={"x": ("", b"")}, data={"model": "whisper-1", "file": "a"})
    refused(response, "file", "must be an uploaded file")


def test_two_files(hearing: LiveServer, english: bytes) -> None:
    files = [("file", ("a.wav", english)), ("file", ("b.wav", english))]
    response = httpx.post(
        f"{hearing.base_url}/v1/audio/transcriptions",
        files=files,
        data={"model": "whisper-1"},
        timeout=60,
    )
    refused(response, "file", "Too many files")


def test_a_body_that_is_not_multipart(hearing: LiveServer) -> None:
    response = post(hearing, json={"model": "whisper-1", "file": "speech.wav"})
    refused(response, "file", "multipart/form-data")
    response = post(
        hearing,
        content=b"--x\r\n",
        headers={"content-type": "multipart/form-data"},  # no boundary
    )
    refused(response, "file", "cannot be read")
    response = post(
        hearing,
        content=b"not a form at all",
        headers={"content-type": "multipart/form-data; boundary=zz"},
    )
    refused(response, "file", "cannot be read")
    response = post(
        hearing,
        content=b"--zz--\r\n",  # a form with no parts
        headers={"content-type": "multipart/form-data; boundary=zz"},
    )
    refused(response, "file", "Missing the audio")


def test_a_server_without_the_recognizer(server: LiveServer, english: bytes) -> None:
    assert server.service.recognizer is None
    assert file_limit(server.service) == 25 * 1024 * 1024
    response = post(server, files={"file": ("speech.wav", english)}, data={"model": "whisper-1"})
    refused(response, "model", "[recognizer] enabled = true")
    assert response.json()["error"]["message"] == NO_RECOGNIZER
    assert response.json()["error"]["code"] == "invalid_parameter_error"


# -- the pieces ------------------------------------------------------------------------------


def test_timestamps() -> None:
    assert timestamp(0, ",") == "00:00:00,000"
    assert timestamp(3725.5, ",") == "01:02:05,500"
    assert timestamp(59.9996, ".") == "00:01:00.000"


def test_deltas_add_up_to_the_text() -> None:
    spaced = Transcript(
        "Hello there. How are you?",
        "en",
        3.0,
        (Segment(0, 1, "Hello there."), Segment(1, 3, "How are you?")),
    )
    assert deltas(spaced) == ["Hello there.", " How are you?"]
    joined = Transcript(
        "你好。再见。", "zh", 2.0, (Segment(0, 1, "你好。"), Segment(1, 2, "再见。"))
    )
    assert deltas(joined) == ["你好。", "再见。"]
    assert deltas(Transcript("", None, 1.0)) == []
    assert json.dumps(deltas(joined), ensure_ascii=False) == '["你好。", "再见。"]'


def test_a_transcription_is_on_the_books(hearing: LiveServer, english: bytes) -> None:
    import sqlalchemy as sa

    from omniserve.accounts.schema import ledger

    before = hearing.accounts.writer
    assert before is not None and hearing.accounts.store is not None
    files = {"file": ("clip.wav", english, "audio/wav")}
    r = httpx.post(
        f"{hearing.api}/audio/transcriptions",
        data={"model": "whisper-ledger-check"},
        files=files,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert before.flush()
    with hearing.accounts.store.engine.connect() as conn:
        query = sa.select(ledger).where(ledger.c.model == "whisper-ledger-check")
        (row,) = [dict(x._mapping) for x in conn.execute(query)]
    assert row["status"] == "ok" and row["finish_reason"] == "stop"
    assert row["prompt_audio"] > 0 and row["completion_text"] > 0
    assert abs(row["input_audio_seconds"] - duration_of(english)) < 0.05
    long_name = httpx.post(
        f"{hearing.api}/audio/transcriptions", data={"model": "w" * 101}, files=files, timeout=60
    )
    assert long_name.status_code == 400 and long_name.json()["error"]["param"] == "model"

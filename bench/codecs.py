"""What encoding the speech stream costs: mp3, opus, aac and flac beside raw PCM.

OpenAI-style clients may ask for ``audio.format`` mp3, opus, aac or flac (and ``response_format``
on ``/v1/audio/speech``); omniserve then encodes each PCM chunk as it streams
(``omniserve.speech.codecs.StreamEncoder``). This script speaks a paragraph with the built-in
voice (espeak-ng, real speech), cuts it into the server's chunks and, for each format, measures:

* **encode, x real time**: seconds of speech encoded per second of one core's time;
* **share of synthesis**: encoding time over the time espeak-ng took to speak the same audio,
  measured in the same run (the baseline): what a format adds to the speech work;
* **first bytes**: how much audio the encoder takes before it gives its first bytes (raw PCM
  gives the first chunk at once): the extra wait before a client can play anything;
* **kbit/s** of the stream, and the **duration** PyAV decodes back from the joined pieces.

    python bench/codecs.py
    python bench/codecs.py --chunk-ms 100 --repeat 5 --json codecs.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import time

import av

from omniserve.config import SpeechSettings
from omniserve.events import PCM_RATE
from omniserve.speech.codecs import FORMATS, StreamEncoder
from omniserve.speech.synth import EspeakSynthesizer
from omniserve.speech.voices import EspeakVoice

TEXT = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. "
    "He trimmed the wick, polished the great lens, and watched the ships pass far out at sea. "
    "On stormy nights the beam swept across the waves, and sailors counted its flashes to "
    "know where they were. In the morning he wrote the weather in a thick leather book, "
    "made tea, and slept until the afternoon light came through the window."
)


def synthesize(repeat: int) -> tuple[bytes, float]:
    """The paragraph's PCM and the median seconds espeak-ng took to speak it."""

    async def main() -> tuple[bytes, list[float]]:
        synth = EspeakSynthesizer(SpeechSettings())
        try:
            times, pcm = [], b""
            for _ in range(repeat):
                start = time.perf_counter()
                pcm = await synth.synthesize(TEXT, EspeakVoice("en-us", "m1"))
                times.append(time.perf_counter() - start)
            return pcm, times
        finally:
            await synth.close()

    pcm, times = asyncio.run(main())
    return pcm, statistics.median(times)


def decoded_seconds(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        samples = sum(frame.samples for frame in container.decode(audio=0))
        rate = container.streams.audio[0].rate
    return samples / rate


def encode_once(fmt: str, chunks: list[bytes]) -> tuple[float, float, bytes]:
    """CPU seconds, audio taken before the first bytes (seconds), and the joined stream."""
    encoder = StreamEncoder(fmt)
    pieces: list[bytes] = []
    fed = 0.0
    first: float | None = None
    start = time.process_time()
    try:
        for chunk in chunks:
            fed += len(chunk) / 2 / PCM_RATE
            data = encoder.encode(chunk)
            if data:
                pieces.append(data)
                if first is None:
                    first = fed
        pieces.append(encoder.finish())
    finally:
        encoder.close()
    cpu = time.process_time() - start
    return cpu, first if first is not None else fed, b"".join(pieces)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunk-ms", type=int, default=SpeechSettings().chunk_ms)
    parser.add_argument("--repeat", type=int, default=5, help="runs per format (median)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()

    pcm, synth_s = synthesize(args.repeat)
    seconds = len(pcm) / 2 / PCM_RATE
    step = PCM_RATE * 2 * args.chunk_ms // 1000
    chunks = [pcm[i : i + step] for i in range(0, len(pcm), step)]
    print(
        f"speech: {seconds:.1f} s in {len(chunks)} chunks of {args.chunk_ms} ms; "
        f"espeak-ng spoke it in {synth_s * 1000:.0f} ms ({seconds / synth_s:.0f}x real time)"
    )
    rows = [
        {
            "format": "pcm16 (raw, baseline)",
            "encode_x_real_time": None,
            "share_of_synthesis": 0.0,
            "first_bytes_after_ms": args.chunk_ms,
            "kbit_s": PCM_RATE * 16 / 1000,
            "decoded_s": seconds,
        }
    ]
    for fmt in FORMATS:
        runs = [encode_once(fmt, chunks) for _ in range(args.repeat)]
        cpu = statistics.median(run[0] for run in runs)
        _, first, data = runs[0]
        rows.append(
            {
                "format": fmt,
                "encode_x_real_time": seconds / cpu,
                "share_of_synthesis": cpu / synth_s,
                "first_bytes_after_ms": first * 1000,
                "kbit_s": len(data) * 8 / seconds / 1000,
                "decoded_s": decoded_seconds(data),
            }
        )
    print(
        f"{'format':<22} {'encode x RT':>12} {'/ synthesis':>12} {'1st bytes':>10} "
        f"{'kbit/s':>8} {'decoded':>8}"
    )
    for row in rows:
        speed = row["encode_x_real_time"]
        print(
            f"{row['format']:<22} {'-' if speed is None else f'{speed:.0f}x':>12} "
            f"{row['share_of_synthesis']:>11.0%} {row['first_bytes_after_ms']:>8.0f}ms "
            f"{row['kbit_s']:>8.0f} {row['decoded_s']:>7.2f}s"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"speech_s": seconds, "synthesis_s": synth_s, "rows": rows}, out, indent=2)


if __name__ == "__main__":
    main()

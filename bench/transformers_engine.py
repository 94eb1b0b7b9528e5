"""Transformers engine: streamed text and speech against one whole-utterance ``generate()``.

The transformers engine (``omniserve.engines.hf``) calls ``model.generate`` once per request
with streamers: text leaves as the thinker produces tokens, speech leaves in chunks as the talker
produces codes (each chunk vocoded with left context). The point of that machinery is latency:
a caller of plain ``model.generate()`` gets nothing until the whole utterance, waveform included,
is done. This script measures what streaming buys and what it costs, in one run:

- **streaming**: requests through the real HTTP API on 127.0.0.1 (``live_server``), text in,
  ``modalities: ["text", "audio"]``, read with httpx as the SSE lines arrive;
- **generate**: the same loaded model (the engine's own ``LoadedModel``, so a real checkpoint
  is in memory once), the same inputs (``prompt.build_inputs`` on the same job), the same seed and
  the same fixed lengths, ``model.generate(...)`` called directly, returning text ids and one
  waveform.

Lengths are pinned with ``*_min_new_tokens`` = ``*_max_new_tokens`` (random weights would stop
at random). At concurrency C, C requests arrive together; the engine serves them one at a time
in arrival order, and the baseline calls ``generate()`` C times in a row (one model), each
request's latencies counted from the common start.

Definitions: TTFT = start → first non-empty ``delta.content``; TTFA = start → first
``delta.audio.data`` (for ``generate()`` both are the time its call returns); tokens/s = text
tokens ÷ the time from the first to the last text delta (streaming) or ÷ the call's own
duration (``generate()``, which hands them over all at once); audio RTF = wall time of the level
(start → last request done) ÷ seconds of audio produced by all its requests (below 1: faster than
real time).

    python bench/transformers_engine.py                    # tiny random checkpoints, built here
    python bench/transformers_engine.py --family qwen3-omni --concurrency 1
    python bench/transformers_engine.py --threads 2     # torch on every core (default: all but one)
    python bench/transformers_engine.py --checkpoint /models/Qwen2.5-Omni-7B   # real figures

Tiny random checkpoints show the pipeline's overhead and chunking, not a real model's speed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from helpers import LiveServer, fast_settings, live_server  # noqa: E402
from omniserve.config import Settings  # noqa: E402
from omniserve.engines.base import (  # noqa: E402
    ChatMessage,
    GenerationJob,
    PromptTokens,
    SamplingParams,
)
from omniserve.engines.hf.checkpoint import MODEL_TYPES  # noqa: E402
from omniserve.engines.hf.engine import TransformersEngine  # noqa: E402
from omniserve.engines.hf.loader import LoadedModel, has_native_video  # noqa: E402
from omniserve.engines.hf.prompt import build_inputs  # noqa: E402
from tiny_omni import QWEN3, QWEN25, QWEN25_TALKER_EOS, build_tiny  # noqa: E402

SERVED_NAME = {QWEN25: "qwen2.5-omni-7b", QWEN3: "qwen3-omni-flash"}
DEFAULT_CODES = {QWEN25: 200, QWEN3: 60}  # about 4 s of speech: 50 and 12.5 codes/s
SAMPLE_RATE = 24_000
PROMPT = "Who are you? Tell me a little about yourself."
SEED = 7


@dataclass
class Sample:
    """One request's latencies (seconds from the level's common start) and output."""

    ttft: float
    ttfa: float
    done: float
    text_tokens: int
    tokens_per_second: float
    audio_seconds: float


@dataclass
class Level:
    path: str  # "streaming" | "generate"
    concurrency: int
    samples: list[Sample]
    wall: float  # start -> last request done, summed over repeats


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# -- streaming: the HTTP API -----------------------------------------------------------------


def request_body(name: str, voice: str, text_tokens: int, seed: int) -> dict[str, Any]:
    return {
        "model": name,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "modalities": ["text", "audio"],
        "audio": {"voice": voice, "format": "wav"},
        "max_tokens": text_tokens,
        "seed": seed,
    }


async def one_stream(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], start: float
) -> Sample:
    first_text = last_text = first_audio = None
    pcm_bytes = 0
    text_tokens = 0
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise SystemExit(f"HTTP {response.status_code}: {response.text[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            now = time.perf_counter() - start
            data = line[len("data: ") :]
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise SystemExit(f"stream failed: {chunk['error']}")
            usage = chunk.get("usage")
            if usage:
                details = usage.get("completion_tokens_details") or {}
                text_tokens = int(details.get("text_tokens", usage["completion_tokens"]))
            if not chunk["choices"]:
                continue
            delta = chunk["choices"][0]["delta"]
            if delta.get("content"):
                first_text = now if first_text is None else first_text
                last_text = now
            audio = delta.get("audio") or {}
            if audio.get("data"):
                first_audio = now if first_audio is None else first_audio
                pcm_bytes += len(base64.b64decode(audio["data"]))
    done = time.perf_counter() - start
    if first_text is None or last_text is None or first_audio is None:
        raise SystemExit("a stream ended without text or without audio")
    span = last_text - first_text
    rate = (text_tokens - 1) / span if text_tokens > 1 and span > 0 else float("nan")
    return Sample(
        ttft=first_text,
        ttfa=first_audio,
        done=done,
        text_tokens=text_tokens,
        tokens_per_second=rate,
        audio_seconds=pcm_bytes / 2 / SAMPLE_RATE,
    )


async def streaming_level(
    server: LiveServer, bodies: list[dict[str, Any]]
) -> tuple[list[Sample], float]:
    url = f"{server.base_url}/v1/chat/completions"
    n = len(bodies)
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        samples = await asyncio.gather(*(one_stream(client, url, b, start) for b in bodies))
        wall = time.perf_counter() - start
    return list(samples), wall


# -- baseline: model.generate() ----------------------------------------------------------------


class Baseline:
    """Plain ``model.generate()`` on the engine's loaded model, inputs as the engine builds them."""

    def __init__(
        self,
        engine: TransformersEngine,
        name: str,
        voice: str,
        text_tokens: int,
        generate_kwargs: dict[str, Any],
    ) -> None:
        served = engine.served[name]
        key = served.answer
        assert key is not None, "the served name needs a checkpoint without thinking"
        self.loaded: LoadedModel = engine.loaded[key]
        self.spec = served.spec
        self.voice = next(v for v in served.spec.voices if v.name == voice)
        self.speaker = served.voices[voice]
        self.text_tokens = text_tokens
        self.generate_kwargs = generate_kwargs

    def inputs(self, seed: int) -> dict[str, Any]:
        """The tensors and arguments the engine would pass, without its streamers."""
        loaded = self.loaded
        job = GenerationJob(
            request_id="bench",
            model_name=self.spec.name,
            model=self.spec,
            messages=(ChatMessage(role="user", text=PROMPT),),
            prompt_tokens=PromptTokens(),
            voice=self.voice,
            max_tokens=self.text_tokens,
            sampling=SamplingParams(seed=seed),
        )
        built = build_inputs(
            job,
            loaded.processor,
            loaded.info.family,
            speaks=True,
            native_video=has_native_video(loaded.processor),
        )
        kwargs: dict[str, Any] = {
            k: (v.to(loaded.device) if hasattr(v, "to") else v) for k, v in built.tensors.items()
        }
        kwargs.update(
            use_audio_in_video=False,
            speaker=self.speaker,
            thinker_max_new_tokens=self.text_tokens,
        )
        if loaded.info.family == QWEN3:
            tokenizer = loaded.processor.tokenizer
            eos = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
            kwargs["thinker_eos_token_id"] = sorted(i for i in eos if isinstance(i, int) and i >= 0)
        kwargs.update(self.generate_kwargs)
        return kwargs

    def call(self, seed: int, start: float) -> Sample:
        import torch

        kwargs = self.inputs(seed)
        prompt_length = int(kwargs["input_ids"].shape[1])
        began = time.perf_counter()
        torch.manual_seed(seed)
        with torch.inference_mode():
            sequences, waveform = self.loaded.model.generate(**kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        text_tokens = int(sequences.shape[1]) - prompt_length
        return Sample(
            ttft=now - start,
            ttfa=now - start,
            done=now - start,
            text_tokens=text_tokens,
            tokens_per_second=text_tokens / (now - began),
            audio_seconds=int(waveform.numel()) / SAMPLE_RATE,
        )

    def level(self, seeds: list[int]) -> tuple[list[Sample], float]:
        start = time.perf_counter()
        samples = [self.call(seed, start) for seed in seeds]
        return samples, time.perf_counter() - start


# -- one family --------------------------------------------------------------------------------


def settings_for(
    family: str, checkpoint: Path, text_tokens: int, codes: int, tiny: bool, threads: int | None
) -> tuple[Settings, dict[str, Any]]:
    generate_kwargs: dict[str, Any] = {
        "thinker_min_new_tokens": text_tokens,
        "talker_min_new_tokens": codes,
        "talker_max_new_tokens": codes,
    }
    if tiny and family == QWEN25:
        generate_kwargs["talker_eos_token_id"] = [QWEN25_TALKER_EOS]  # its vocabulary is tiny
    settings = fast_settings(
        engine="transformers",
        transformers={
            "models": [{"name": SERVED_NAME[family], "checkpoint": str(checkpoint)}],
            "generate_kwargs": generate_kwargs,
            "cpu_threads": threads,
        },
    )
    return settings, generate_kwargs


def run_family(family: str, checkpoint: Path, args: argparse.Namespace, tiny: bool) -> list[Level]:
    codes = args.audio_codes if args.audio_codes is not None else DEFAULT_CODES[family]
    settings, generate_kwargs = settings_for(
        family, checkpoint, args.text_tokens, codes, tiny, args.threads
    )
    name = SERVED_NAME[family]
    with live_server(settings) as server:
        engine = server.service.engine
        assert isinstance(engine, TransformersEngine)
        voice = engine.served[name].spec.voices[0].name
        baseline = Baseline(engine, name, voice, args.text_tokens, generate_kwargs)
        print(
            f"\n{family}: {checkpoint.name}, voice {voice}, {args.text_tokens} text tokens, "
            f"{codes} speech codes per request",
            flush=True,
        )

        def bodies(n: int, first_seed: int) -> list[dict[str, Any]]:
            return [request_body(name, voice, args.text_tokens, first_seed + i) for i in range(n)]

        # Warm-up, not measured: first calls pay for kernel selection and allocation.
        asyncio.run(streaming_level(server, bodies(1, SEED)))
        baseline.level([SEED])

        results: dict[tuple[str, int], Level] = {}
        for repeat in range(args.repeats):
            for conc in args.concurrency:
                seed = SEED + 100 * repeat
                for path in ("streaming", "generate"):
                    if path == "streaming":
                        samples, wall = asyncio.run(streaming_level(server, bodies(conc, seed)))
                    else:
                        samples, wall = baseline.level([seed + i for i in range(conc)])
                    level = results.setdefault((path, conc), Level(path, conc, [], 0.0))
                    level.samples += samples
                    level.wall += wall
                    print(f"  {path} c={conc} repeat {repeat + 1}: {wall:.2f} s", flush=True)
    return [results[(p, c)] for p in ("streaming", "generate") for c in args.concurrency]


def ms(x: float) -> str:
    return "-" if x != x else f"{x * 1000:,.0f}"


def print_table(family: str, levels: list[Level]) -> None:
    print(f"\n### {family}\n")
    print(
        "| path | conc | requests | TTFT p50 ms | TTFA p50 ms | TTFA max ms | tokens/s p50 "
        "| audio s / request | audio RTF |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for lv in levels:
        s = lv.samples
        audio = sum(x.audio_seconds for x in s)
        print(
            f"| {lv.path} | {lv.concurrency} | {len(s)} "
            f"| {ms(percentile([x.ttft for x in s], 50))} "
            f"| {ms(percentile([x.ttfa for x in s], 50))} "
            f"| {ms(max(x.ttfa for x in s))} "
            f"| {percentile([x.tokens_per_second for x in s], 50):,.0f} "
            f"| {audio / len(s):.2f} "
            f"| {lv.wall / audio if audio else float('nan'):.2f} |"
        )
    by = {(lv.path, lv.concurrency): lv for lv in levels}
    print()
    # The comparison holds only if both paths did the same work.
    outputs = {(x.text_tokens, round(x.audio_seconds, 2)) for lv in levels for x in lv.samples}
    if len(outputs) == 1:
        tokens, seconds = outputs.pop()
        print(f"every request, both paths: {tokens} text tokens, {seconds:.2f} s of audio")
    else:
        print(f"WARNING: the paths produced different lengths: {sorted(outputs)}")
    for conc in sorted({lv.concurrency for lv in levels}):
        stream = percentile([x.ttfa for x in by["streaming", conc].samples], 50)
        whole = percentile([x.ttfa for x in by["generate", conc].samples], 50)
        print(f"TTFA streaming / generate at c={conc}: {stream / whole:.2f}")


def header() -> None:
    import torch
    import transformers

    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    print(
        f"device: {device}   torch {torch.__version__}   transformers {transformers.__version__}"
        f"   CPU cores: {os.cpu_count()}"
    )


def family_of(checkpoint: Path) -> str:
    from transformers import AutoConfig

    model_type = getattr(AutoConfig.from_pretrained(checkpoint), "model_type", "")
    family = MODEL_TYPES.get(model_type)
    if family is None:
        raise SystemExit(f"{checkpoint}: a {model_type!r} model, not Qwen2.5-Omni or Qwen3-Omni")
    return family


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--family", choices=[QWEN25, QWEN3, "both"], default="both")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="a real checkpoint directory (its family is read from its config); "
        "default: tiny random checkpoints built in a temporary directory",
    )
    parser.add_argument("--text-tokens", type=int, default=64, help="thinker tokens per request")
    parser.add_argument(
        "--audio-codes",
        type=int,
        default=None,
        help="talker codes per request (default 200 for qwen2.5-omni, 60 for qwen3-omni)",
    )
    parser.add_argument(
        "--concurrency",
        default=[1, 4],
        type=lambda s: [int(x) for x in s.split(",")],
        help="comma-separated levels: requests sent together (default 1,4)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of every level")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads on the CPU (default: the engine's, every core but one)",
    )
    args = parser.parse_args()
    if args.threads is not None:
        # Before torch is imported, so that every thread's OpenMP pool has this size.
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)

    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    header()
    started = time.perf_counter()
    tables: list[tuple[str, list[Level]]] = []
    if args.checkpoint is not None:
        family = family_of(args.checkpoint)
        if args.family not in ("both", family):
            raise SystemExit(f"{args.checkpoint} is a {family} checkpoint, not {args.family}")
        tables.append((family, run_family(family, args.checkpoint, args, tiny=False)))
    else:
        families = [QWEN25, QWEN3] if args.family == "both" else [args.family]
        with tempfile.TemporaryDirectory(prefix="omniserve-bench-") as tmp:
            for family in families:
                directory = build_tiny(Path(tmp) / f"{family}-tiny", family)
                tables.append((family, run_family(family, directory, args, tiny=True)))
    for family, levels in tables:
        print_table(family, levels)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

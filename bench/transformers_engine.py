"""Transformers engine: streamed speech from the batched decode loop against plain generate().

What a user of the transformers engine hears, measured over the real HTTP API on 127.0.0.1
(``live_server``, text in, ``modalities: ["text", "audio"]``, read with httpx as the SSE lines
arrive), against the same loaded model called the Hugging Face way, ``model.generate()``, with the
same inputs, seeds and pinned lengths, in the same run:

- **streaming** at each concurrency (default 1 and 8): TTFT, TTFA, text tokens/s, speech rate
  (seconds of audio per second once the first audio arrived; above 1 keeps ahead of playback),
  playback stall (how long a player that starts at the first chunk would wait), and the most
  requests the scheduler decoded in one step;
- **generate**: ``generate()`` once per request, one after the other (one model);
- **first request** after the server started (warm-up and graph capture happen before the port
  opens), against the warm median;
- **vocoder**: compute time to vocode one utterance's codes as the engine streams them (chunks
  with their context, a talker at 3x real time) against one whole-clip decode of the same codes
  by the model's own vocoder;
- **memory**: peak GPU memory with the model, graphs and caches loaded, the key/value cache one
  more concurrent request takes, and the peak during each level.

Lengths are pinned (``*_min_new_tokens`` = max), since random weights stop at random. Goals of the
engine on one H200 are printed next to the figures they apply to.

    python bench/transformers_engine.py                     # tiny random checkpoints, built here
    python bench/transformers_engine.py --family qwen3-omni --concurrency 1,4
    python bench/transformers_engine.py --checkpoint /models/Qwen2.5-Omni-7B     # real weights
    python bench/transformers_engine.py --checkpoint DIR --dummy-weights   # random weights
    python bench/transformers_engine.py --json out.json     # every figure, machine-readable

Tiny random checkpoints show the pipeline's overhead and scheduling, not a real model's speed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT)]  # runs uninstalled too

from helpers import LiveServer, fast_settings, live_server  # noqa: E402
from omniserve.config import Settings  # noqa: E402
from omniserve.engines.hf.checkpoint import MODEL_TYPES  # noqa: E402
from omniserve.engines.hf.engine import TransformersEngine  # noqa: E402
from omniserve.engines.hf.loader import LoadedModel, has_native_video  # noqa: E402
from omniserve.engines.hf.prompt import build_inputs  # noqa: E402
from omniserve.events import PCM_RATE  # noqa: E402
from omniserve.job import (  # noqa: E402
    ChatMessage,
    GenerationJob,
    PromptTokens,
    SamplingParams,
)
from tiny_omni import QWEN3, QWEN25, QWEN25_TALKER_EOS, build_tiny  # noqa: E402

SERVED_NAME = {QWEN25: "qwen2.5-omni-7b", QWEN3: "qwen3-omni-flash"}
DEFAULT_CODES = {QWEN25: 200, QWEN3: 50}  # about 4 s of speech: 50 and 12.5 codes/s
CODE_RATE = {QWEN25: 50.0, QWEN3: 12.5}
PROMPT = (
    "I am planning a three-day trip to Hangzhou in early spring with my parents. Which places "
    "around West Lake would you suggest, and what local dishes should we try?"
)
SEED = 7
# What the engine is built to reach on one H200 (the goals it is measured against).
GOALS = {
    "ttfa_c1_ms": 300.0,
    "ttfa_c8_ms": 1000.0,
    "speech_rate_c1": 3.0,
    "speech_rate_c8": 1.0,
    "text_tokens_per_s_c1": 100.0,
    "vocoder_ratio": 1.3,
}


@dataclass
class Sample:
    """One request's latencies (seconds from its level's common start) and output."""

    ttft: float
    ttfa: float
    done: float
    text_tokens: int
    tokens_per_second: float
    audio_seconds: float
    speech_rate: float = float("nan")  # audio seconds per second after the first audio
    stall: float = 0.0  # playback waiting, with playback starting at the first chunk


@dataclass
class Level:
    path: str  # "streaming" | "generate"
    concurrency: int
    samples: list[Sample] = field(default_factory=list)
    wall: float = 0.0  # start -> last request done, summed over repeats
    batched: int = 0  # most requests decoded in one step (streaming)
    peak_gib: float | None = None  # GPU memory at the level's peak


def percentile(values: list[float], p: float) -> float:
    values = [v for v in values if v == v]
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
    first_text = last_text = first_audio = last_audio = None
    played_until = 0.0
    stall = 0.0
    pcm_bytes = text_tokens = 0
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
                n = len(base64.b64decode(audio["data"]))
                if first_audio is None:
                    first_audio = played_until = now
                elif now > played_until:
                    stall += now - played_until
                    played_until = now
                played_until += n / 2 / PCM_RATE
                last_audio = now
                pcm_bytes += n
    done = time.perf_counter() - start
    if first_text is None or last_text is None or first_audio is None or last_audio is None:
        raise SystemExit("a stream ended without text or without audio")
    span = last_text - first_text
    audio_seconds = pcm_bytes / 2 / PCM_RATE
    speaking = last_audio - first_audio
    return Sample(
        ttft=first_text,
        ttfa=first_audio,
        done=done,
        text_tokens=text_tokens,
        tokens_per_second=(text_tokens - 1) / span
        if text_tokens > 1 and span > 0
        else float("nan"),
        audio_seconds=audio_seconds,
        speech_rate=audio_seconds / speaking if speaking > 0 else float("nan"),
        stall=stall,
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


class BatchWatch:
    """The most requests the scheduler holds at once while a level runs."""

    def __init__(self, engine: TransformersEngine) -> None:
        self.schedulers = list(engine.schedulers.values())
        self.most = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.stop.wait(0.002):
            self.most = max(self.most, *(s.running for s in self.schedulers))

    def __enter__(self) -> BatchWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


# -- baseline: model.generate() ----------------------------------------------------------------


class Baseline:
    """Plain ``model.generate()`` on the engine's loaded model, inputs as the engine builds them."""

    def __init__(
        self, engine: TransformersEngine, name: str, voice: str, text_tokens: int,
        generate_kwargs: dict[str, Any],
    ) -> None:  # fmt: skip
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
        """The tensors and arguments the engine's prompt has, as generate() takes them."""
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
            job, loaded.processor, loaded.info.family, speaks=True,
            native_video=has_native_video(loaded.processor),
        )  # fmt: skip
        kwargs: dict[str, Any] = {
            k: (v.to(loaded.device) if hasattr(v, "to") else v) for k, v in built.tensors.items()
        }
        kwargs.update(
            use_audio_in_video=False, speaker=self.speaker, thinker_max_new_tokens=self.text_tokens
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
            ttft=now - start, ttfa=now - start, done=now - start, text_tokens=text_tokens,
            tokens_per_second=text_tokens / (now - began),
            audio_seconds=int(waveform.numel()) / PCM_RATE,
        )  # fmt: skip

    def level(self, seeds: list[int]) -> tuple[list[Sample], float]:
        start = time.perf_counter()
        samples = [self.call(seed, start) for seed in seeds]
        return samples, time.perf_counter() - start


# -- vocoder: streamed chunks against one whole-clip decode ------------------------------------


def vocoder_cost(engine: TransformersEngine, family: str, codes: int) -> dict[str, float]:
    """Compute seconds to vocode ``codes`` random codes streamed (as the engine does, a talker at
    3x real time) and in one whole-clip decode by the model's own vocoder; best of three."""
    import torch

    from omniserve.engines.hf.voice import Qwen3Voice, Qwen25Voice

    (scheduler,) = engine.schedulers.values()
    renderer = scheduler.renderer
    model = scheduler.loaded.model
    gen = torch.Generator().manual_seed(SEED)
    rate = CODE_RATE[family]
    cuda = torch.cuda.is_available()

    def timed(fn: Any) -> float:
        best = float("inf")
        for _ in range(3):
            if cuda:
                torch.cuda.synchronize()
            began = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - began)
        return best

    if family == QWEN3:
        config = model.code2wav.config
        frames = torch.randint(
            0, config.codebook_size, (codes, config.num_quantizers), generator=gen
        )

        def whole() -> None:
            with torch.inference_mode():
                model.code2wav.chunked_decode(frames.T.unsqueeze(0).to(renderer.device), 300, 25)

        def streamed() -> None:
            clock = [0.0]
            voice = Qwen3Voice(renderer, clock=lambda: clock[0])
            for i, frame in enumerate(frames, start=1):
                clock[0] = i / (rate * 3)
                voice.add(frame)
            voice.finish()
    else:
        ids = [int(c) for c in torch.randint(0, 8192, (codes,), generator=gen)]
        vocab = int(model.token2wav.config.dit_config.num_embeds)
        ids = [i % vocab for i in ids]
        speaker = next(iter(model.speaker_map.values()))
        params = {k: (v.to(renderer.device) if hasattr(v, "to") else v) for k, v in speaker.items()}

        def whole() -> None:
            with torch.inference_mode():
                model.token2wav(
                    torch.tensor([ids], device=renderer.device),
                    conditioning=params["cond"].float(), reference_mel=params["ref_mel"].float(),
                )  # fmt: skip

        def streamed() -> None:
            clock = [0.0]
            voice = Qwen25Voice(renderer, params, seed=SEED, clock=lambda: clock[0])
            for i, code in enumerate(ids, start=1):
                clock[0] = i / (rate * 3)
                voice.add(code)
            voice.finish()

    whole_s, streamed_s = timed(whole), timed(streamed)
    audio = codes / rate
    return {
        "audio_s": audio,
        "whole_s": whole_s,
        "streamed_s": streamed_s,
        "ratio": streamed_s / whole_s,
    }


# -- one family --------------------------------------------------------------------------------


def settings_for(
    family: str, checkpoint: Path, args: argparse.Namespace, codes: int, tiny: bool
) -> tuple[Settings, dict[str, Any]]:
    generate_kwargs: dict[str, Any] = {
        "thinker_min_new_tokens": args.text_tokens,
        "talker_min_new_tokens": codes,
        "talker_max_new_tokens": codes,
    }
    if tiny and family == QWEN25:
        generate_kwargs["talker_eos_token_id"] = [QWEN25_TALKER_EOS]  # its vocabulary is tiny
    elif family == QWEN25:
        # generate() would let random weights say codec ids token2wav has no embedding for
        # (the engine never does); keep the baseline to the same codes.
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(checkpoint)
        embedded = int(config.token2wav_config.dit_config.num_embeds) + 1
        eos = {8292, 8294}
        vocab = int(config.talker_config.vocab_size)
        generate_kwargs["talker_bad_words_ids"] = [
            [i] for i in range(embedded, vocab) if i not in eos
        ]
    transformers: dict[str, Any] = {
        "models": [{"name": SERVED_NAME[family], "checkpoint": str(checkpoint)}],
        "generate_kwargs": generate_kwargs,
        "cpu_threads": args.threads,
        "max_batch": args.max_batch or max(args.concurrency),
        "queue_size": max(args.concurrency),
    }
    if args.dummy_weights:
        transformers["load_format"] = "dummy"
    extra: dict[str, Any] = {}
    if args.tokenizer_file:
        extra["tokenizer_file"] = str(args.tokenizer_file)
    if args.max_seq_len:
        transformers["max_seq_len"] = args.max_seq_len
    settings = fast_settings(engine="transformers", transformers=transformers, **extra)
    return settings, generate_kwargs


def gib(n: float) -> float:
    return round(n / 2**30, 2)


def run_family(
    family: str, checkpoint: Path, args: argparse.Namespace, tiny: bool
) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    codes = args.audio_codes if args.audio_codes is not None else DEFAULT_CODES[family]
    settings, generate_kwargs = settings_for(family, checkpoint, args, codes, tiny)
    name = SERVED_NAME[family]
    out: dict[str, Any] = {"family": family, "checkpoint": str(checkpoint), "codes": codes}
    began = time.perf_counter()
    with live_server(settings) as server:
        out["start_s"] = round(time.perf_counter() - began, 1)
        engine = server.service.engine
        assert isinstance(engine, TransformersEngine)
        (scheduler,) = engine.schedulers.values()
        voice = engine.served[name].spec.voices[0].name
        baseline = Baseline(engine, name, voice, args.text_tokens, generate_kwargs)
        per_slot = scheduler.thinker.cache.bytes_per_slot
        if scheduler.talker is not None:
            per_slot += scheduler.talker.cache.bytes_per_slot
        out["kv_per_request_gib"] = gib(per_slot)
        out["graphs"] = sum(len(r.graphs) for r, _ in scheduler.runners())
        if cuda:
            out["memory_after_start_gib"] = gib(torch.cuda.max_memory_allocated())
        print(
            f"\n{family}: {checkpoint.name}, voice {voice}, {args.text_tokens} text tokens, "
            f"{codes} speech codes per request; ready in {out['start_s']} s, "
            f"{out['graphs']} CUDA graphs",
            flush=True,
        )

        def bodies(n: int, first_seed: int) -> list[dict[str, Any]]:
            return [request_body(name, voice, args.text_tokens, first_seed + i) for i in range(n)]

        first, _ = asyncio.run(streaming_level(server, bodies(1, SEED)))
        out["first_request"] = asdict(first[0])
        baseline.level([SEED])  # generate()'s own first call pays its warm-up, not measured
        levels: dict[tuple[str, int], Level] = {}
        for repeat in range(args.repeats):
            for conc in args.concurrency:
                seed = SEED + 100 * (repeat + 1)
                paths = ["streaming"] + (["generate"] if conc in args.generate_at else [])
                for path in paths:
                    level = levels.setdefault((path, conc), Level(path, conc))
                    if cuda:
                        torch.cuda.reset_peak_memory_stats()
                    if path == "streaming":
                        with BatchWatch(engine) as watch:
                            samples, wall = asyncio.run(streaming_level(server, bodies(conc, seed)))
                        level.batched = max(level.batched, watch.most)
                    else:
                        samples, wall = baseline.level([seed + i for i in range(conc)])
                    if cuda:
                        level.peak_gib = gib(torch.cuda.max_memory_allocated())
                    level.samples += samples
                    level.wall += wall
                    print(f"  {path} c={conc} repeat {repeat + 1}: {wall:.2f} s", flush=True)
        out["vocoder"] = vocoder_cost(engine, family, codes)
    out["levels"] = [summarize(lv) for lv in levels.values()]
    return out


def summarize(lv: Level) -> dict[str, Any]:
    s = lv.samples
    audio = sum(x.audio_seconds for x in s)
    return {
        "path": lv.path,
        "concurrency": lv.concurrency,
        "requests": len(s),
        "ttft_p50_ms": round(percentile([x.ttft for x in s], 50) * 1000, 1),
        "ttfa_p50_ms": round(percentile([x.ttfa for x in s], 50) * 1000, 1),
        "ttfa_max_ms": round(max(x.ttfa for x in s) * 1000, 1),
        "text_tokens_per_s_p50": round(percentile([x.tokens_per_second for x in s], 50), 1),
        "speech_rate_min": round(min((x.speech_rate for x in s), default=float("nan")), 2),
        "stall_max_s": round(max(x.stall for x in s), 3),
        "audio_s_per_request": round(audio / len(s), 2),
        "level_realtime_x": round(audio / lv.wall, 2) if lv.wall else None,
        "batched": lv.batched,
        "peak_gib": lv.peak_gib,
        "text_tokens": sorted({x.text_tokens for x in s}),
    }


# -- report ------------------------------------------------------------------------------------


def ms(x: float) -> str:
    return "-" if x != x else f"{x:,.0f}"


def check(value: float, goal: float, *, at_most: bool) -> str:
    if value != value:
        return ""
    ok = value <= goal if at_most else value >= goal
    return f" ({'meets' if ok else 'misses'} the H200 goal {'≤' if at_most else '≥'} {goal:g})"


def print_family(result: dict[str, Any]) -> None:
    print(f"\n### {result['family']} ({Path(result['checkpoint']).name})\n")
    print(
        "| path | conc | requests | TTFT p50 ms | TTFA p50 ms | TTFA max ms | text tok/s p50 "
        "| speech rate (min) | stall max s | audio × real time (level) | batched |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for lv in result["levels"]:
        rate = "-" if lv["path"] == "generate" else f"{lv['speech_rate_min']:.2f}"
        stall = "-" if lv["path"] == "generate" else f"{lv['stall_max_s']:.3f}"
        print(
            f"| {lv['path']} | {lv['concurrency']} | {lv['requests']} | {ms(lv['ttft_p50_ms'])} "
            f"| {ms(lv['ttfa_p50_ms'])} | {ms(lv['ttfa_max_ms'])} "
            f"| {lv['text_tokens_per_s_p50']:,.0f} | {rate} | {stall} "
            f"| {lv['level_realtime_x']} | {lv['batched'] or '-'} |"
        )
    by = {(lv["path"], lv["concurrency"]): lv for lv in result["levels"]}
    print()
    for conc in sorted({c for _, c in by}):
        stream = by["streaming", conc]
        goal = GOALS.get(f"ttfa_c{conc}_ms")
        note = check(stream["ttfa_p50_ms"], goal, at_most=True) if goal else ""
        whole = by.get(("generate", conc))
        ratio = (
            f"TTFA streaming / generate() {stream['ttfa_p50_ms'] / whole['ttfa_p50_ms']:.3f}; "
            if whole
            else ""
        )
        print(f"c={conc}: {ratio}TTFA p50 {stream['ttfa_p50_ms']:.0f} ms{note}")
        goal = GOALS.get(f"speech_rate_c{conc}")
        if goal:
            print(f"c={conc}: slowest stream's speech rate {stream['speech_rate_min']:.2f}x"
                  f"{check(stream['speech_rate_min'], goal, at_most=False)}, "
                  f"longest stall {stream['stall_max_s']:.3f} s")  # fmt: skip
        if conc == 1:
            tps = stream["text_tokens_per_s_p50"]
            print(f"c=1: text {tps:.0f} tokens/s"
                  f"{check(tps, GOALS['text_tokens_per_s_c1'], at_most=False)}")  # fmt: skip
        print(f"c={conc}: most requests in one decode step: {stream['batched']}")
    first = result["first_request"]["ttfa"] * 1000
    warm = by["streaming", min(c for _, c in by)]["ttfa_p50_ms"]
    print(f"first request after start: TTFA {first:.0f} ms, {first / warm:.2f}x the warm p50")
    v = result["vocoder"]
    goal = check(v["ratio"], GOALS["vocoder_ratio"], at_most=True)
    streamed, whole = v["streamed_s"] * 1000, v["whole_s"] * 1000
    print(f"vocoder: {v['audio_s']:.1f} s of speech streamed in {streamed:.0f} ms of compute, "
          f"whole clip {whole:.0f} ms: {v['ratio']:.2f}x{goal}")  # fmt: skip
    memory = [f"key/value cache per extra request {result['kv_per_request_gib']} GiB"]
    if "memory_after_start_gib" in result:
        memory.insert(0, f"peak after start {result['memory_after_start_gib']} GiB")
        for lv in result["levels"]:
            if lv["path"] == "streaming":
                memory.append(f"peak at c={lv['concurrency']} {lv['peak_gib']} GiB")
    print("memory: " + ", ".join(memory))


def header() -> dict[str, Any]:
    import torch
    import transformers

    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    meta = {
        "device": device, "torch": torch.__version__, "transformers": transformers.__version__,
        "cpu_cores": os.cpu_count(),
    }  # fmt: skip
    print("   ".join(f"{k}: {v}" for k, v in meta.items()))
    return meta


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
        "--checkpoint", type=Path, default=None,
        help="a checkpoint directory (its family is read from its config); "
        "default: tiny random checkpoints built in a temporary directory",
    )  # fmt: skip
    parser.add_argument(
        "--dummy-weights", action="store_true",
        help="random weights of the checkpoint's architecture (load_format = dummy)",
    )  # fmt: skip
    parser.add_argument("--text-tokens", type=int, default=64, help="thinker tokens per request")
    parser.add_argument(
        "--audio-codes", type=int, default=None,
        help="talker codes per request (default 200 for qwen2.5-omni, 50 for qwen3-omni)",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", default=[1, 8], type=lambda s: [int(x) for x in s.split(",")],
        help="comma-separated levels: requests sent together (default 1,8)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=2, help="runs of every level")
    parser.add_argument(
        "--generate-at", default=None, type=lambda s: [int(x) for x in s.split(",")],
        help="levels at which to measure generate() too (default: every level)",
    )  # fmt: skip
    parser.add_argument(
        "--tokenizer-file", type=Path, default=None,
        help="the Qwen BPE ranks for omniserve's token counts (default: the dashscope package's)",
    )  # fmt: skip
    parser.add_argument("--max-batch", type=int, default=None, help="default: the top level")
    parser.add_argument("--max-seq-len", type=int, default=None, help="positions per slot")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args()
    if args.generate_at is None:
        args.generate_at = args.concurrency
    if args.threads is not None:
        # Before torch is imported, so that every thread's OpenMP pool has this size.
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    report: dict[str, Any] = {"meta": header(), "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
    }, "families": []}  # fmt: skip
    started = time.perf_counter()
    if args.checkpoint is not None:
        family = family_of(args.checkpoint)
        if args.family not in ("both", family):
            raise SystemExit(f"{args.checkpoint} is a {family} checkpoint, not {args.family}")
        report["families"].append(run_family(family, args.checkpoint, args, tiny=False))
    else:
        families = [QWEN25, QWEN3] if args.family == "both" else [args.family]
        with tempfile.TemporaryDirectory(prefix="omniserve-bench-") as tmp:
            for family in families:
                directory = build_tiny(Path(tmp) / f"{family}-tiny", family)
                report["families"].append(run_family(family, directory, args, tiny=True))
    for result in report["families"]:
        print_family(result)
    report["total_s"] = round(time.perf_counter() - started, 1)
    print(f"\ntotal {report['total_s']:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

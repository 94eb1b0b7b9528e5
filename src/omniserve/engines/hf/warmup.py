"""What happens to a checkpoint before the server opens its port.

The first pass through a model pays for kernel selection, library handles and allocator growth;
a user should not. On a GPU every decode step and vocoder window is captured as CUDA graphs
(with a progress bar), then one short request runs the prompt, text steps, the talker (and code
predictor) and the vocoder once, with its lengths pinned, and the server prints how long it took.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from omniserve.engines.hf.request import Request
from omniserve.events import AudioDelta, Finished

if TYPE_CHECKING:
    from omniserve.engines.hf.engine import TransformersEngine
    from omniserve.engines.hf.scheduler import Scheduler

# Speech codes that reach the vocoder's first chunk (Qwen2.5: 24 + 12 look-ahead at 50 Hz;
# Qwen3: 4 frames at 12.5 Hz), and a few text tokens.
WARMUP_CODES = {"qwen2.5-omni": 40, "qwen3-omni": 8}
WARMUP_TOKENS = 4
WARMUP_TIMEOUT_S = 600.0


async def warm_up(engine: TransformersEngine, key: str, *, console: Any) -> float:
    """Run the warm-up request for checkpoint ``key``; its duration in seconds."""
    loaded = engine.loaded[key]
    scheduler = engine.schedulers[key]
    job = engine.warmup_job(key)
    plan = engine.plan(job)
    plan = replace(
        plan,
        thinker=replace(
            plan.thinker, do_sample=False, min_new_tokens=WARMUP_TOKENS,
            max_new_tokens=WARMUP_TOKENS,
        ),
    )  # fmt: skip
    if plan.talker is not None:
        codes = WARMUP_CODES[loaded.info.family]
        talker = replace(plan.talker, min_new_tokens=codes, max_new_tokens=codes + 1)
        plan = replace(plan, talker=talker)
    loop = asyncio.get_running_loop()
    began = time.perf_counter()
    inputs = await loop.run_in_executor(None, engine._inputs, loaded, job, plan)
    request = Request(job, plan, inputs, loop)
    scheduler.submit(request)
    audio = 0
    try:
        async with asyncio.timeout(WARMUP_TIMEOUT_S):
            while True:
                item = await request.events.get()
                request.consumed()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, AudioDelta):
                    audio += len(item.pcm)
                if item is None or isinstance(item, Finished):
                    break
    finally:
        request.cancel.set()
        scheduler.poke()
    await loop.run_in_executor(None, scheduler.wait_idle, 30.0)
    took = time.perf_counter() - began
    spoke = f", {audio / 48000:.2f} s of speech" if plan.talker is not None else ""
    console.print(f"warmed up {loaded.info.source}: every stage ran once in {took:.1f} s{spoke}")
    return took


def capture_graphs(scheduler: Scheduler, console: Any) -> None:
    """Capture every step of ``scheduler`` as CUDA graphs (before any request is admitted).

    The decode steps run one after the other on one stream and share one memory pool; the
    vocoder replays on a stream of its own, so its windows keep a pool of their own.
    """
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    runners = scheduler.runners()
    vocoder = scheduler.renderer.runner if scheduler.renderer is not None else None
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    source = scheduler.loaded.info.source
    steps, speech = torch.cuda.graph_pool_handle(), torch.cuda.graph_pool_handle()
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(
            f"{source}: capturing CUDA graphs", total=sum(r.shapes for r, _ in runners)
        )
        for runner, example in runners:
            pool = speech if runner is vocoder else steps
            runner.capture(example, pool, on_done=lambda: progress.advance(task))
    torch.cuda.synchronize()

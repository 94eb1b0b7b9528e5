"""Speech codes -> PCM chunks on a thread of their own, beside the decode loop.

The decode loop hands each request's new codes over and goes on with the next step; this thread
turns them into audio (``voice.py``) and sends it. On a GPU it works on a CUDA stream of its own,
so vocoding overlaps the thinker's and talker's steps instead of taking turns with them. A
request whose vocoding fails fails alone.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from omniserve.engines.hf.request import Request
from omniserve.events import AudioDelta

log = logging.getLogger("omniserve.transformers")


def pcm16(samples: np.ndarray) -> bytes:
    return bytes((np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())


@dataclass
class _Job:
    request: Request
    voice: Any
    codes: list[Any]
    final: bool


class VocoderWorker:
    """One thread that vocodes for every request of one model."""

    def __init__(self, device: Any, name: str = "omniserve-vocoder") -> None:
        self.device = device
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.stream: Any = None
        self.pending = 0  # jobs handed over and not done (read by the scheduler)
        self._lock = threading.Lock()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def add(self, request: Request, voice: Any, codes: list[Any], *, final: bool = False) -> None:
        with self._lock:
            self.pending += 1
        self.jobs.put(_Job(request, voice, codes, final))

    def _run(self) -> None:
        import torch

        if str(self.device).startswith("cuda"):
            self.stream = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
        with torch.inference_mode():
            while True:
                job = self.jobs.get()
                if job is None:
                    return
                try:
                    if self.stream is not None:
                        with torch.cuda.stream(self.stream):
                            self._work(job)
                    else:
                        self._work(job)
                except Exception as exc:  # the request fails, not the thread
                    log.error("vocoding failed for %s", job.request.job.request_id, exc_info=exc)
                    job.request.fail(exc)
                finally:
                    with self._lock:
                        self.pending -= 1

    def _work(self, job: _Job) -> None:
        request = job.request
        if request.gone:
            return
        for code in job.codes:
            self._send(request, job.voice.add(code))
        if job.final:
            self._send(request, job.voice.finish())
            request.done("speech")

    @staticmethod
    def _send(request: Request, samples: np.ndarray | None) -> None:
        if samples is None or not len(samples) or request.gone:
            return
        data = pcm16(samples)
        step = request.plan.chunk_bytes
        for i in range(0, len(data), step):
            request.emit(AudioDelta(data[i : i + step]))

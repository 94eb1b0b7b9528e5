"""One decode step, run eagerly or replayed from CUDA graphs captured per shape.

A decode step of a 7B model is a few thousand small kernels; launched one by one from Python
the GPU idles most of the time. A CUDA graph records the whole step once and replays it with one
launch. Graphs need fixed shapes and fixed memory, so a step is captured for a few batch sizes
(the rows in use, rounded up) and, for steps that attend over a cache, a few cache spans (the
longest row, rounded up); its inputs are copied into the graph's own tensors before each replay.

Everything here also runs without CUDA: the same step function is then simply called, which is
how the CPU serves and how the tests check what the GPU replays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("omniserve.transformers")

StepFn = Callable[..., dict[str, Any]]


class DecodeKernels:
    """The attention and mixture-of-experts kernels a decode step runs with.

    Decode steps pass their own 4-D masks, which FlashAttention 2 cannot take: they attend with
    SDPA. On a GPU, experts run as one batched matmul over the chosen experts, which has fixed
    shapes (graph capture) and reads only the experts in use; a long prompt keeps the model's own
    choice (its grouped kernels suit many tokens).
    """

    def __init__(self, modules: list[Any], *, experts: str | None) -> None:
        configs: dict[int, Any] = {}
        for module in modules:
            for sub in module.modules():
                config = getattr(sub, "config", None)
                if config is not None and hasattr(config, "_attn_implementation_internal"):
                    configs[id(config)] = config
        self.configs = list(configs.values())
        self.experts = experts

    def using(self, experts: str | None) -> DecodeKernels:
        """The same modules with another experts kernel."""
        other = DecodeKernels([], experts=experts)
        other.configs = self.configs
        return other

    @contextmanager
    def __call__(self) -> Iterator[None]:
        saved = []
        for config in self.configs:
            attn = config._attn_implementation_internal
            moe = getattr(config, "_experts_implementation_internal", None)
            saved.append((config, attn, moe))
            if attn not in (None, "sdpa", "eager"):
                config._attn_implementation_internal = "sdpa"
            if self.experts is not None and moe is not None:
                config._experts_implementation_internal = self.experts
        try:
            yield
        finally:
            for config, attn, moe in saved:
                config._attn_implementation_internal = attn
                if moe is not None:
                    config._experts_implementation_internal = moe


def buckets(limit: int, *, smallest: int = 1) -> list[int]:
    """Powers of two from ``smallest`` up to ``limit`` (and ``limit`` itself)."""
    out, size = [], max(1, smallest)
    while size < limit:
        out.append(size)
        size *= 2
    out.append(limit)
    return out


def round_up(value: int, sizes: list[int]) -> int:
    for size in sizes:
        if size >= value:
            return size
    raise ValueError(f"{value} is beyond the largest size {sizes[-1]}")


def decode_kernels(modules: list[Any], device: Any) -> DecodeKernels:
    """The kernels decode steps on ``device`` use (batched experts on a GPU)."""
    return DecodeKernels(modules, experts="batched_mm" if str(device).startswith("cuda") else None)


@dataclass
class _Graph:
    graph: Any
    inputs: dict[str, Any]
    outputs: dict[str, Any]


@dataclass
class StepRunner:
    """Runs ``fn(span=..., **inputs)`` for a batch of ``batch`` rows.

    ``spans`` are the cache spans the step is captured for (``[0]`` for a step without a
    cache). Without graphs, ``fn`` runs as called.
    """

    name: str
    fn: StepFn
    batches: list[int]
    spans: list[int] = field(default_factory=lambda: [0])
    kernels: DecodeKernels | None = None
    graphs: dict[tuple[int, int], _Graph] = field(default_factory=dict)

    def shape(self, rows: int, span: int = 0) -> tuple[int, int]:
        """The captured (batch, span) a step over ``rows`` rows and ``span`` positions uses."""
        return round_up(rows, self.batches), round_up(span, self.spans) if span else self.spans[0]

    def __call__(self, batch: int, span: int, **inputs: Any) -> dict[str, Any]:
        captured = self.graphs.get((batch, span))
        if captured is None:
            if self.kernels is None:
                return self.fn(span=span, **inputs)
            with self.kernels():
                return self.fn(span=span, **inputs)
        for key, value in inputs.items():
            captured.inputs[key].copy_(value)
        captured.graph.replay()
        return captured.outputs

    def capture(
        self,
        example: Callable[[int, int], dict[str, Any]],
        pool: Any,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        """Capture every (batch, span), largest first so smaller ones reuse its memory.

        ``example(batch, span)`` gives inputs of the right shapes whose writes land where no
        live request is (capture happens before any request is admitted).
        """
        with self.kernels() if self.kernels is not None else _nothing():
            for batch in sorted(self.batches, reverse=True):
                for span in sorted(self.spans, reverse=True):
                    self._capture_one(batch, span, example(batch, span), pool)
                    if on_done is not None:
                        on_done()

    def _capture_one(self, batch: int, span: int, inputs: dict[str, Any], pool: Any) -> None:
        import torch

        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # allocator and library warm-up outside the capture
                self.fn(span=span, **inputs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            outputs = self.fn(span=span, **inputs)
        self.graphs[batch, span] = _Graph(graph, inputs, outputs)

    @property
    def shapes(self) -> int:
        return len(self.batches) * len(self.spans)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


class HostSyncError(RuntimeError):
    """A step did something a CUDA graph cannot record (read a value back to the host, or make a
    tensor whose shape depends on values)."""


@contextmanager
def no_host_sync() -> Iterator[None]:
    """Raise on anything in a step that would wait for the device or size a tensor by its
    values: what fails CUDA graph capture. Lets the CPU check the steps the GPU will capture."""
    import torch
    from torch.overrides import TorchFunctionMode

    forbidden = {
        torch.Tensor.item,
        torch.Tensor.tolist,
        torch.Tensor.__bool__,
        torch.Tensor.__int__,
        torch.Tensor.__float__,
        torch.Tensor.__index__,
        torch.Tensor.nonzero,
        torch.Tensor.numpy,
        torch.Tensor.cpu,
        torch.Tensor.masked_select,
        torch.Tensor.unique,
        torch.nonzero,
        torch.masked_select,
        torch.unique,
        torch.tensor,
    }

    class _Guard(TorchFunctionMode):
        def __torch_function__(
            self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
        ) -> Any:
            if func in forbidden:
                raise HostSyncError(f"{getattr(func, '__name__', func)} in a captured step")
            if func in (torch.repeat_interleave, torch.Tensor.repeat_interleave):
                repeats = args[1] if len(args) > 1 else (kwargs or {}).get("repeats")
                if isinstance(repeats, torch.Tensor):
                    raise HostSyncError("repeat_interleave by a tensor in a captured step")
            if func is torch.Tensor.__getitem__ or func is torch.Tensor.__setitem__:
                index = args[1] if len(args) > 1 else None
                for part in index if isinstance(index, tuple) else (index,):
                    if isinstance(part, torch.Tensor) and part.dtype == torch.bool:
                        raise HostSyncError("indexing with a boolean mask in a captured step")
            return func(*args, **(kwargs or {}))

    # transformers skips its own value checks while a CUDA stream is capturing; let it see a
    # capture here too, so the check runs the very branches a capture runs.
    from transformers.utils import import_utils

    capturing = import_utils.is_cuda_stream_capturing
    import_utils.is_cuda_stream_capturing = lambda: True
    try:
        with _Guard():
            yield
    finally:
        import_utils.is_cuda_stream_capturing = capturing

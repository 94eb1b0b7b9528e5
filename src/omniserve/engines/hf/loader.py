"""Loading open Qwen-Omni weights and their processor, with progress and clear failures.

Weights come through ``from_pretrained`` from a local directory or the Hugging Face cache (a Hub
id downloads once, when the machine is online). bfloat16 on a GPU, float32 on the CPU; a
``device_map`` spreads one model over several GPUs. A deployment that serves text only never
builds the talker, which saves its memory (about 2 GB for Qwen2.5-Omni-7B, 10 GB for Qwen3-Omni).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from omniserve.config import TransformersSettings
from omniserve.engines.hf.checkpoint import CheckpointError, CheckpointInfo
from omniserve.engines.hf.frames import FramesVideoProcessor

log = logging.getLogger("omniserve.transformers")

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_SNAPSHOT_FILES = ["*.json", "*.safetensors", "*.pt", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


@dataclass
class LoadedModel:
    info: CheckpointInfo
    model: Any
    processor: Any
    device: Any  # torch.device of the inputs
    speaks: bool


def resolve_device(setting: str) -> str:
    import torch

    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def resolve_dtype(setting: str, device: str) -> str:
    if setting != "auto":
        return setting
    return "float32" if device == "cpu" else "bfloat16"


def local_directory(info: CheckpointInfo) -> Path:
    """The checkpoint on disk: the directory itself, or the Hub snapshot (downloaded if needed)."""
    path = Path(info.source).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(info.source, revision=info.revision, allow_patterns=_SNAPSHOT_FILES)
        )
    except Exception as exc:  # the hub raises many kinds; all mean "not available here"
        raise CheckpointError(
            f"weights of {info.source!r} are not on this machine and cannot be downloaded: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc


def weight_bytes(directory: Path) -> int:
    files = list(directory.glob("*.safetensors")) or list(directory.glob("*.bin"))
    if not files:
        raise CheckpointError(
            f"no weights in {directory} (expected *.safetensors files next to config.json)"
        )
    return sum(f.stat().st_size for f in files)


def free_memory(device: str) -> int | None:
    """Bytes free where the weights will live; None when unknown."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        if ":" in device:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        return sum(int(torch.cuda.mem_get_info(i)[0]) for i in range(torch.cuda.device_count()))
    if device == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_memory(
    directory: Path, stored_dtype: str, dtype: str, device: str, headroom: float
) -> None:
    needed = weight_bytes(directory) * _DTYPE_BYTES[dtype] / _DTYPE_BYTES.get(stored_dtype, 2)
    _check_free(needed * headroom, dtype, device)


def _check_free(needed: float, dtype: str, device: str) -> None:
    free = free_memory(device)
    if free is not None and needed > free:
        raise CheckpointError(
            f"not enough memory on {device}: the weights need about {needed / 2**30:.1f} GiB "
            f"in {dtype}, {free / 2**30:.1f} GiB is free. Use a GPU with more memory, "
            "device_map to spread the model over several GPUs, audio_output = 'off' to skip "
            "the talker, or a smaller checkpoint."
        )


class _ProcessorWithFrames:
    """Marks processors built around ``FramesVideoProcessor``."""


def build_processor(directory: Path, family: str) -> Any:
    """The checkpoint's processor; without torchvision, its parts with a numpy video path."""
    import transformers

    try:
        return transformers.AutoProcessor.from_pretrained(directory)  # type: ignore[no-untyped-call]
    except (ImportError, ValueError, TypeError, OSError, AttributeError) as exc:
        log.info(
            "processor falls back to its parts (%s)", str(exc).splitlines()[0] if str(exc) else exc
        )
    cls = (
        transformers.Qwen2_5OmniProcessor
        if family == "qwen2.5-omni"
        else transformers.Qwen3OmniMoeProcessor
    )

    class FramesProcessor(cls, _ProcessorWithFrames):  # type: ignore[misc,valid-type]
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor":
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    FramesProcessor.__name__ = FramesProcessor.__qualname__ = cls.__name__
    image_processor = transformers.Qwen2VLImageProcessorPil.from_pretrained(directory)
    template_file = directory / "chat_template.jinja"
    return FramesProcessor(
        image_processor=image_processor,
        video_processor=FramesVideoProcessor(image_processor),
        feature_extractor=transformers.WhisperFeatureExtractor.from_pretrained(directory),
        tokenizer=transformers.AutoTokenizer.from_pretrained(directory),
        chat_template=template_file.read_text() if template_file.is_file() else None,
    )


def has_native_video(processor: Any) -> bool:
    return not isinstance(processor, _ProcessorWithFrames)


def _model_class(family: str) -> Any:
    import transformers

    if family == "qwen2.5-omni":
        return transformers.Qwen2_5OmniForConditionalGeneration
    return transformers.Qwen3OmniMoeForConditionalGeneration


def load(
    info: CheckpointInfo,
    settings: TransformersSettings,
    *,
    console: Console | None = None,
) -> LoadedModel:
    """Weights, speakers and processor of one checkpoint, ready to generate."""
    import torch
    import transformers

    speaks = info.has_talker and settings.audio_output != "off"
    if settings.audio_output == "on" and not info.has_talker:
        raise CheckpointError(
            f"{info.source!r} has no talker (it cannot speak), but audio_output is 'on'; "
            "serve an Instruct checkpoint, or set audio_output = 'auto'"
        )
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    if device == "cpu" and settings.device_map is None:
        torch.set_num_threads(settings.cpu_threads or max(1, (os.cpu_count() or 2) - 1))
    console = console or Console(stderr=True)
    started = time.monotonic()
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        step = progress.add_task(f"{info.source}: locating weights", total=4)
        directory = local_directory(info)
        config = transformers.AutoConfig.from_pretrained(directory)
        what = _check_room(info, settings, directory, config, dtype, device)
        progress.update(
            step,
            advance=1,
            description=f"{info.source}: loading {what} as {dtype} on "
            f"{settings.device_map or device}",
        )
        if not speaks:
            config.enable_audio_output = False
        device_map = settings.device_map or (device if device != "cpu" else None)
        model = _weights(info, settings, directory, config, dtype, device, device_map)
        if device_map is None and device != "cpu":
            model = model.to(device)
        if speaks:
            progress.update(step, advance=1, description=f"{info.source}: speakers")
            _prepare_talker(model, info, directory)
        elif getattr(model, "has_talker", False):
            model.disable_talker()
        model.eval()
        progress.update(step, completed=3, description=f"{info.source}: processor")
        processor = build_processor(directory, info.family)
        progress.update(step, completed=4, description=f"{info.source}: ready")
    input_device = model.thinker.get_input_embeddings().weight.device
    console.print(
        f"loaded {info.source}: {info.family} {info.kind}, "
        f"{'speaks as ' + ', '.join(info.speakers) if speaks else 'text only'}, "
        f"{dtype} on {settings.device_map or input_device}, "
        f"{time.monotonic() - started:.1f} s",
        soft_wrap=True,
    )
    return LoadedModel(
        info=info, model=model, processor=processor, device=input_device, speaks=speaks
    )


def _check_room(
    info: CheckpointInfo,
    settings: TransformersSettings,
    directory: Path,
    config: Any,
    dtype: str,
    device: str,
) -> str:
    """Refuses, with what to change, weights that cannot fit on ``device``; says what will
    load."""
    if settings.load_format == "dummy":
        size = dummy_bytes(info.family, config, dtype)
        _check_free(size * settings.memory_headroom, dtype, device)
        return f"random weights ({size / 2**30:.2f} GiB)"
    stored = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", "bfloat16"))
    check_memory(directory, stored.replace("torch.", ""), dtype, device, settings.memory_headroom)
    return f"{weight_bytes(directory) / 2**30:.2f} GiB of weights"


def _weights(
    info: CheckpointInfo,
    settings: TransformersSettings,
    directory: Path,
    config: Any,
    dtype: str,
    device: str,
    device_map: str | None,
) -> Any:
    """The model with its weights (random ones with ``load_format = "dummy"``)."""
    import torch

    kwargs: dict[str, Any] = {"config": config, "dtype": getattr(torch, dtype)}
    if settings.attn_implementation:
        kwargs["attn_implementation"] = settings.attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map
    cls = _model_class(info.family)
    try:
        if settings.load_format == "dummy":
            return random_model(info.family, config, getattr(torch, dtype), device)
        # Qwen2.5's from_pretrained always reads spk_dict.pt; speakers are loaded below.
        return super(cls, cls).from_pretrained(directory, **kwargs)
    except torch.OutOfMemoryError as exc:
        raise CheckpointError(f"out of memory loading {info.source!r} on {device}: {exc}") from exc
    except (OSError, ValueError, ImportError) as exc:
        raise CheckpointError(f"cannot load {info.source!r}: {exc}") from exc


def dummy_bytes(family: str, config: Any, dtype: str) -> int:
    """Bytes of the model's parameters in ``dtype``, counted without allocating them."""
    import torch

    with torch.device("meta"):
        model = _model_class(family)._from_config(config)
    return int(sum(p.numel() for p in model.parameters())) * _DTYPE_BYTES[dtype]


def random_model(family: str, config: Any, dtype: Any, device: str) -> Any:
    """The architecture with random weights, built where it will run (``load_format = "dummy"``,
    for load tests and benchmarks without the weights). Every matrix is drawn from N(0, 0.02)
    with a fixed seed, so no parameter is left uninitialized or all zero (routers included)."""
    import torch

    with torch.device(device):
        model = _model_class(family)._from_config(config, dtype=dtype)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.02, generator=generator)
    return model


def _prepare_talker(model: Any, info: CheckpointInfo, directory: Path) -> None:
    if info.family == "qwen2.5-omni":
        speakers = directory / "spk_dict.pt"
        if not speakers.is_file():
            raise CheckpointError(f"{info.source!r} has a talker but no spk_dict.pt")
        model.load_speakers(str(speakers))
        # token2wav runs in float32 (generate() converts it the same way).
        model.token2wav.float()
    else:
        # The talker's get_rope_index reads talker.config.audio_config, which its config lacks;
        # without it, audio input with audio output fails.
        model.talker.config.audio_config = model.config.thinker_config.audio_config

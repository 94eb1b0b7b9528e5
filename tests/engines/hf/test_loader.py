"""Loading tiny checkpoints through the engine's loader, and its refusals."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from omniserve.config import ServedCheckpoint, TransformersSettings
from omniserve.engines.hf.checkpoint import CheckpointError, CheckpointInfo, inspect_checkpoint
from omniserve.engines.hf.loader import (
    LoadedModel,
    load,
    resolve_device,
    resolve_dtype,
    weight_bytes,
)
from tiny_omni import FAMILIES, QWEN3, QWEN25, TOKENS


def inspect(path: Path) -> CheckpointInfo:
    return inspect_checkpoint(ServedCheckpoint(checkpoint=str(path)))


def load_cpu(path: Path, **settings: Any) -> tuple[LoadedModel, str]:
    """Load on the CPU in float32; also return what the progress display showed."""
    out = io.StringIO()
    loaded = load(
        inspect(path),
        TransformersSettings(device="cpu", dtype="float32", **settings),
        console=Console(file=out, width=200),
    )
    return loaded, out.getvalue()


@pytest.mark.parametrize("family", FAMILIES)
def test_load_speaks_and_has_a_processor(tiny: Any, family: str) -> None:
    loaded, shown = load_cpu(tiny[family])
    assert loaded.speaks
    assert loaded.info.family == family
    assert loaded.device == torch.device("cpu")
    model = loaded.model
    assert model.has_talker
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    processor = loaded.processor
    assert processor.image_token_id == TOKENS["image"]
    assert processor.audio_token_id == TOKENS["audio"]
    assert processor.video_token_id == TOKENS["video"]
    assert processor.tokenizer.convert_tokens_to_ids("<|im_end|>") == TOKENS["im_end"]
    assert "ready" in shown
    if family == QWEN25:
        assert set(model.speaker_map) == {"Chelsie", "Ethan"}  # from spk_dict.pt
    else:
        # The talker reads its audio config for audio input with audio output.
        assert model.talker.config.audio_config is model.config.thinker_config.audio_config


@pytest.mark.parametrize("family", FAMILIES)
def test_audio_output_off_builds_no_talker(tiny: Any, family: str) -> None:
    loaded, _ = load_cpu(tiny[family], audio_output="off")
    assert not loaded.speaks
    assert not loaded.model.has_talker
    assert not hasattr(loaded.model, "talker")
    assert loaded.processor is not None


def test_audio_output_auto_on_a_checkpoint_without_a_talker(thinking_dir: Path) -> None:
    loaded, _ = load_cpu(thinking_dir)
    assert not loaded.speaks
    assert not loaded.model.has_talker


def test_audio_output_on_without_a_talker_is_refused(thinking_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="no talker") as raised:
        load_cpu(thinking_dir, audio_output="on")
    assert str(thinking_dir) in str(raised.value)


def test_a_checkpoint_without_weights_is_refused(tiny: Any, tmp_path: Path) -> None:
    directory = tmp_path / "no-weights"
    shutil.copytree(tiny[QWEN3], directory, ignore=shutil.ignore_patterns("*.safetensors"))
    assert not list(directory.glob("*.safetensors"))
    with pytest.raises(CheckpointError, match="no weights") as raised:
        load_cpu(directory)
    assert str(directory) in str(raised.value)


def test_not_enough_memory_is_refused_before_loading(tiny: Any) -> None:
    with pytest.raises(CheckpointError, match="not enough memory") as raised:
        load_cpu(tiny[QWEN3], memory_headroom=1e9)
    assert "on cpu" in str(raised.value)


def test_weight_bytes_sums_the_safetensors(tiny: Any) -> None:
    directory = tiny[QWEN3]
    files = list(directory.glob("*.safetensors"))
    assert files
    assert weight_bytes(directory) == sum(f.stat().st_size for f in files)


def test_resolve_device_and_dtype() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("cuda:1") == "cuda:1"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("auto", "cuda") == "bfloat16"
    assert resolve_dtype("float16", "cpu") == "float16"


@pytest.mark.parametrize("family", FAMILIES)
def test_dummy_weights_need_no_weight_files(tiny: Any, family: str, tmp_path: Path) -> None:
    """load_format = "dummy": the architecture with random weights, for load tests."""
    directory = tmp_path / family
    shutil.copytree(tiny[family], directory)
    for weights in directory.glob("*.safetensors"):
        weights.unlink()
    settings = TransformersSettings(device="cpu", load_format="dummy")
    info = inspect_checkpoint(ServedCheckpoint(checkpoint=str(directory)))
    loaded = load(info, settings, console=Console(file=io.StringIO()))
    assert loaded.speaks
    for name, param in loaded.model.named_parameters():
        assert torch.isfinite(param).all(), name
        if param.dim() >= 2:
            assert param.abs().max() > 0, name  # nothing left at zero (routers included)
    again = load(info, settings, console=Console(file=io.StringIO()))
    first = next(iter(loaded.model.parameters()))
    assert torch.equal(first, next(iter(again.model.parameters())))  # seeded

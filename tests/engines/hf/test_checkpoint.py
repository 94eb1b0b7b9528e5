"""What a checkpoint is, from its config; the served names built from it."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import transformers

from omniserve.catalog import Catalog
from omniserve.config import ServedCheckpoint
from omniserve.engines.hf.checkpoint import (
    CheckpointError,
    CheckpointInfo,
    inspect_checkpoint,
    kind_from_name,
    served_spec,
    voice_map,
)
from tiny_omni import QWEN3, QWEN3_SPEAKERS, QWEN25, QWEN25_SPEAKERS

CATALOG = Catalog.default()
FLASH = CATALOG.get("qwen3-omni-flash")
SEVEN_B = CATALOG.get("qwen2.5-omni-7b")


def inspect(path: Path | str, **kwargs: Any) -> CheckpointInfo:
    return inspect_checkpoint(ServedCheckpoint(checkpoint=str(path), **kwargs))


def info(family: str = QWEN3, **changes: Any) -> CheckpointInfo:
    base = CheckpointInfo(
        source="/models/tiny",
        revision=None,
        family=family,  # type: ignore[arg-type]
        kind="instruct",
        has_talker=True,
        speakers=QWEN3_SPEAKERS if family == QWEN3 else QWEN25_SPEAKERS,
        context=4096,
    )
    return replace(base, **changes)


# -- inspect_checkpoint ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "speakers"), [(QWEN25, QWEN25_SPEAKERS), (QWEN3, QWEN3_SPEAKERS)]
)
def test_inspect_tiny_checkpoints(tiny: Any, family: str, speakers: tuple[str, ...]) -> None:
    found = inspect(tiny[family])
    assert found.family == family
    assert found.kind == "instruct"
    assert found.has_talker
    assert set(found.speakers) == set(speakers)  # Qwen2.5 from spk_dict.pt, Qwen3 from config
    assert found.context == 4096
    assert found.source == str(tiny[family])
    assert found.revision is None


def test_inspect_a_checkpoint_without_a_talker(thinking_dir: Path) -> None:
    found = inspect(thinking_dir)
    assert thinking_dir.name.endswith("-Thinking")
    assert (found.family, found.kind, found.has_talker, found.speakers) == (
        QWEN3,
        "thinking",
        False,
        (),
    )


@pytest.mark.parametrize(
    ("name", "kind"),
    [("tiny-Captioner", "captioner"), ("tiny-Thinking", "thinking"), ("tiny-Instruct", "instruct")],
)
def test_kind_comes_from_the_directory_name(
    tiny: Any, tmp_path: Path, name: str, kind: str
) -> None:
    directory = tmp_path / name
    directory.mkdir()
    shutil.copy(tiny[QWEN3] / "config.json", directory)
    assert inspect(directory).kind == kind
    assert inspect(f"{directory}/").kind == kind


def test_a_configured_kind_wins_over_the_name(tiny: Any, tmp_path: Path) -> None:
    directory = tmp_path / "tiny-Thinking"
    directory.mkdir()
    shutil.copy(tiny[QWEN3] / "config.json", directory)
    assert inspect(directory, kind="instruct").kind == "instruct"


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("Qwen/Qwen3-Omni-30B-A3B-Instruct", "instruct"),
        ("Qwen/Qwen3-Omni-30B-A3B-Thinking", "thinking"),
        ("Qwen/Qwen3-Omni-30B-A3B-Captioner", "captioner"),
        ("Qwen/Qwen2.5-Omni-7B", "instruct"),
        ("/models/qwen3-omni-thinking/", "thinking"),
    ],
)
def test_kind_from_name(source: str, kind: str) -> None:
    assert kind_from_name(source) == kind


def test_a_config_of_another_model_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "gpt2"
    transformers.GPT2Config().save_pretrained(directory)
    with pytest.raises(CheckpointError) as raised:
        inspect(directory)
    assert str(directory) in str(raised.value)
    assert "gpt2" in str(raised.value)


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(CheckpointError) as raised:
        inspect(missing)
    assert str(missing) in str(raised.value)


def test_a_qwen25_talker_without_speakers_is_refused(tiny: Any, tmp_path: Path) -> None:
    directory = tmp_path / "no-speakers"
    directory.mkdir()
    shutil.copy(tiny[QWEN25] / "config.json", directory)
    with pytest.raises(CheckpointError, match=r"spk_dict\.pt") as raised:
        inspect(directory)
    assert str(directory) in str(raised.value)


# -- voice_map -------------------------------------------------------------------------------


def test_voices_map_to_a_speaker_of_their_gender_in_the_models_spelling() -> None:
    mapping = voice_map(FLASH, info(QWEN3), {})
    assert set(mapping) == set(FLASH.voice_names)
    for voice in FLASH.voices:
        assert mapping[voice.name] == {"female": "chelsie", "male": "ethan"}[voice.gender]


def test_a_voice_named_like_a_speaker_is_that_speaker() -> None:
    december = Catalog.default().get("qwen3-omni-flash-2025-12-01")
    with_aiden = voice_map(december, info(QWEN3, speakers=("ethan", "chelsie", "aiden")), {})
    assert with_aiden["Aiden"] == "aiden"
    assert with_aiden["Dylan"] == "ethan"  # other male voices keep the gender default
    assert voice_map(december, info(QWEN3), {})["Aiden"] == "ethan"  # no aiden: by gender


def test_qwen25_voices_map_to_its_own_speakers() -> None:
    assert voice_map(SEVEN_B, info(QWEN25), {}) == {"Ethan": "Ethan", "Chelsie": "Chelsie"}


def test_voice_overrides_win_and_match_speakers_case_insensitively() -> None:
    mapping = voice_map(FLASH, info(QWEN3), {"Cherry": "ETHAN", "Ethan": "Chelsie"})
    assert mapping["Cherry"] == "ethan"
    assert mapping["Ethan"] == "chelsie"
    assert mapping["Jennifer"] == "chelsie"  # the others keep their defaults


def test_an_override_for_a_voice_the_catalog_lacks_is_refused() -> None:
    with pytest.raises(CheckpointError, match="Nobody") as raised:
        voice_map(FLASH, info(QWEN3), {"Nobody": "ethan"})
    assert "Cherry" in str(raised.value)  # lists the voices there are


def test_a_speaker_the_model_lacks_is_refused() -> None:
    with pytest.raises(CheckpointError) as raised:
        voice_map(FLASH, info(QWEN3), {"Cherry": "Serena"})
    message = str(raised.value)
    assert "Cherry" in message and "Serena" in message
    assert "ethan" in message and "chelsie" in message  # lists the speakers there are


def test_default_speakers_the_model_lacks_are_refused() -> None:
    with pytest.raises(CheckpointError, match="Chelsie"):
        voice_map(FLASH, info(QWEN3, speakers=("ethan",)), {})


# -- served_spec -----------------------------------------------------------------------------


def test_served_spec_caps_limits_at_the_context() -> None:
    spec = served_spec(FLASH.name, FLASH, answer=info(), thinker=None, speaks=True)
    assert spec.name == FLASH.name
    assert spec.limits.context == 4096
    assert spec.limits.max_input == spec.limits.max_output == 4095
    assert spec.thinking_limits is None  # no thinking checkpoint
    assert not spec.supports_thinking
    assert spec.voices == FLASH.voices
    assert spec.audio_output
    assert spec.snapshot == FLASH.snapshot
    assert "/models/tiny" in spec.description


def test_served_spec_keeps_limits_below_the_context() -> None:
    spec = served_spec(
        SEVEN_B.name, SEVEN_B, answer=info(QWEN25, context=10**6), thinker=None, speaks=True
    )
    assert spec.limits == SEVEN_B.limits


def test_served_spec_without_speech_has_no_voices() -> None:
    spec = served_spec("my-omni", FLASH, answer=info(), thinker=None, speaks=False)
    assert spec.name == "my-omni"
    assert spec.voices == ()
    assert not spec.audio_output
    assert spec.snapshot is None  # a new name is not the catalog's snapshot


def test_served_spec_with_a_thinker_caps_its_limits_too() -> None:
    thinker = info(kind="thinking", has_talker=False, speakers=(), context=2048)
    spec = served_spec(FLASH.name, FLASH, answer=info(), thinker=thinker, speaks=True)
    assert spec.limits.context == 2048  # the smaller of the two contexts
    assert spec.thinking_limits is not None
    assert spec.thinking_limits.context == 2048
    assert spec.thinking_limits.max_reasoning == 2047
    assert spec.thinking_limits.max_input == 2047


def test_served_spec_of_a_thinker_alone() -> None:
    thinker = info(kind="thinking", has_talker=False, speakers=())
    spec = served_spec(FLASH.name, FLASH, answer=None, thinker=thinker, speaks=False)
    assert spec.supports_thinking
    assert spec.thinking_limits is not None and spec.thinking_limits.context == 4096
    assert spec.voices == ()

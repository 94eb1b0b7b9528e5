"""The model catalog against the reference: limits, voices, languages, media, tokens, prices."""

from __future__ import annotations

import pytest

from omniserve.catalog import (
    FLASH_0915,
    FLASH_1201,
    TEN_LANGUAGES,
    ZH_EN,
    Catalog,
    Language,
    ModelSpec,
    build_models,
)
from omniserve.errors import ModelNotFound

CATALOG = Catalog.default()

FLASH_NAMES = (
    "qwen3-omni-flash",
    "qwen3-omni-flash-2025-09-15",
    "qwen3-omni-flash-0915",
    "qwen3-omni-flash-2025-12-01",
)
TURBO_NAMES = (
    "qwen-omni-turbo",
    "qwen-omni-turbo-latest",
    "qwen-omni-turbo-2025-03-26",
    "qwen-omni-turbo-2025-01-19",
)
OPEN_NAME = "qwen2.5-omni-7b"
SMALL_NAMES = (*TURBO_NAMES, OPEN_NAME)  # 32k context, zh/en, turbo media limits

FLASH_VOICES = (
    "Cherry",
    "Ethan",
    "Nofish",
    "Jennifer",
    "Ryan",
    "Katerina",
    "Elias",
    "Jada",
    "Dylan",
    "Sunny",
    "Li",
    "Marcus",
    "Roy",
    "Peter",
    "Rocky",
    "Kiki",
    "Eric",
)
TURBO_VOICES = ("Cherry", "Serena", "Ethan", "Chelsie")
OPEN_VOICES = ("Ethan", "Chelsie")
DIALECTS = {
    "Jada": "Shanghainese",
    "Dylan": "Beijing",
    "Sunny": "Sichuanese",
    "Li": "Nanjing",
    "Marcus": "Shaanxi",
    "Roy": "Minnan",
    "Peter": "Tianjin",
    "Rocky": "Cantonese",
    "Kiki": "Cantonese",
    "Eric": "Sichuanese",
}
MB = 1024 * 1024


def spec(name: str) -> ModelSpec:
    return CATALOG.get(name)


def test_every_model_is_served_once() -> None:
    assert CATALOG.names() == [
        "qwen3-omni-flash",
        "qwen3-omni-flash-2025-09-15",
        "qwen3-omni-flash-0915",
        "qwen3-omni-flash-2025-12-01",
        "qwen-omni-turbo",
        "qwen-omni-turbo-latest",
        "qwen-omni-turbo-2025-03-26",
        "qwen-omni-turbo-2025-01-19",
        "qwen2.5-omni-7b",
    ]
    assert [m.name for m in CATALOG] == CATALOG.names()
    assert all(name in CATALOG for name in CATALOG.names())
    assert "qwen-omni-plus" not in CATALOG
    assert 5 not in CATALOG


@pytest.mark.parametrize("name", FLASH_NAMES)
def test_flash_limits(name: str) -> None:
    model = spec(name)
    assert model.family == "qwen3-omni-flash"
    assert model.supports_thinking
    normal = model.mode_limits(False)
    assert (normal.context, normal.max_input, normal.max_output) == (65_536, 49_152, 16_384)
    assert normal.max_reasoning is None
    thinking = model.mode_limits(True)
    assert (thinking.context, thinking.max_input, thinking.max_output) == (
        65_536,
        16_384,
        16_384,
    )
    assert thinking.max_reasoning == 32_768
    assert model.limits is normal
    assert model.thinking_limits is thinking


@pytest.mark.parametrize("name", SMALL_NAMES)
def test_turbo_and_open_limits(name: str) -> None:
    model = spec(name)
    assert not model.supports_thinking
    assert model.thinking_limits is None
    for thinking in (False, True):  # no thinking mode: the one set of limits either way
        limits = model.mode_limits(thinking)
        assert (limits.context, limits.max_input, limits.max_output) == (32_768, 30_720, 2_048)
        assert limits.max_reasoning is None


def test_versions_and_families() -> None:
    assert [(m.name, m.version) for m in CATALOG] == [
        ("qwen3-omni-flash", "stable"),
        ("qwen3-omni-flash-2025-09-15", "snapshot"),
        ("qwen3-omni-flash-0915", "snapshot"),
        ("qwen3-omni-flash-2025-12-01", "snapshot"),
        ("qwen-omni-turbo", "stable"),
        ("qwen-omni-turbo-latest", "latest"),
        ("qwen-omni-turbo-2025-03-26", "snapshot"),
        ("qwen-omni-turbo-2025-01-19", "snapshot"),
        ("qwen2.5-omni-7b", "open"),
    ]
    assert {spec(n).family for n in TURBO_NAMES} == {"qwen-omni-turbo"}
    assert spec(OPEN_NAME).family == "qwen2.5-omni"
    assert all(m.description for m in CATALOG)


# -- aliases -------------------------------------------------------------------------------


def test_flash_alias_points_to_0915_by_default() -> None:
    alias = spec("qwen3-omni-flash")
    assert alias.snapshot == FLASH_0915 == "qwen3-omni-flash-2025-09-15"
    assert alias.voice_names == FLASH_VOICES
    assert spec("qwen3-omni-flash-0915").snapshot == FLASH_0915
    assert spec(FLASH_0915).snapshot is None
    assert spec(FLASH_1201).snapshot is None


@pytest.mark.parametrize("via", ["build_models", "Catalog.default"])
def test_flash_alias_can_point_to_1201(via: str) -> None:
    catalog = (
        Catalog(build_models(FLASH_1201)) if via == "build_models" else Catalog.default(FLASH_1201)
    )
    alias = catalog.get("qwen3-omni-flash")
    assert alias.snapshot == FLASH_1201 == "qwen3-omni-flash-2025-12-01"
    assert alias.voice_names == catalog.get(FLASH_1201).voice_names
    # The dated snapshots do not move with the alias.
    assert catalog.get(FLASH_0915).voice_names == FLASH_VOICES
    assert catalog.get("qwen3-omni-flash-0915").snapshot == FLASH_0915
    assert catalog.names() == CATALOG.names()


@pytest.mark.parametrize(
    "target", ["qwen3-omni-flash", "qwen3-omni-flash-2025-11-01", "qwen-omni-turbo", ""]
)
def test_flash_alias_target_must_be_a_flash_snapshot(target: str) -> None:
    with pytest.raises(ValueError, match="qwen3-omni-flash can point to"):
        build_models(target)
    with pytest.raises(ValueError, match="qwen3-omni-flash can point to"):
        Catalog.default(target)


def test_turbo_aliases() -> None:
    assert spec("qwen-omni-turbo").snapshot == "qwen-omni-turbo-2025-03-26"
    assert spec("qwen-omni-turbo-latest").snapshot == "qwen-omni-turbo-2025-03-26"
    assert spec("qwen-omni-turbo-2025-03-26").snapshot is None
    assert spec("qwen-omni-turbo-2025-01-19").snapshot is None
    assert spec(OPEN_NAME).snapshot is None


# -- voices and languages ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qwen3-omni-flash", FLASH_0915, "qwen3-omni-flash-0915"])
def test_flash_voices_in_vendor_order(name: str) -> None:
    model = spec(name)
    assert model.voice_names == FLASH_VOICES
    assert len(model.voices) == 17
    assert model.default_voice == "Cherry"
    for voice in model.voices:
        assert voice.languages == TEN_LANGUAGES
        assert voice.dialect == DIALECTS.get(voice.name)
        assert voice.gender in ("female", "male")
        assert voice.display_name
        assert voice.description


def test_flash_dialect_voices() -> None:
    model = spec("qwen3-omni-flash")
    cantonese = [v.name for v in model.voices if v.dialect == "Cantonese"]
    assert cantonese == ["Rocky", "Kiki"]
    assert [v.name for v in model.voices if v.dialect == "Sichuanese"] == ["Sunny", "Eric"]
    assert [v.name for v in model.voices if v.dialect is None] == [
        "Cherry",
        "Ethan",
        "Nofish",
        "Jennifer",
        "Ryan",
        "Katerina",
        "Elias",
    ]


def test_flash_1201_has_the_17_and_more() -> None:
    names = spec(FLASH_1201).voice_names
    assert names[:17] == FLASH_VOICES
    assert {"Serena", "Chelsie", "Aiden", "Momo", "Vivian"} <= set(names[17:])
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("name", TURBO_NAMES)
def test_turbo_voices(name: str) -> None:
    model = spec(name)
    assert model.voice_names == TURBO_VOICES
    assert model.default_voice == "Cherry"
    assert all(v.languages == ZH_EN and v.dialect is None for v in model.voices)


def test_open_model_voices() -> None:
    model = spec(OPEN_NAME)
    assert model.voice_names == OPEN_VOICES
    assert model.default_voice == "Chelsie"
    assert all(v.languages == ZH_EN for v in model.voices)


def test_default_voice_is_one_of_the_models_voices() -> None:
    for model in CATALOG:
        voice = model.voice(model.default_voice)
        assert voice is not None
        assert voice.name == model.default_voice


def test_voice_lookup_is_exact() -> None:
    model = spec("qwen3-omni-flash")
    rocky = model.voice("Rocky")
    assert rocky is not None and rocky.dialect == "Cantonese"
    assert model.voice("rocky") is None
    assert model.voice("Serena") is None  # a turbo voice, not a 2025-09-15 one
    assert spec("qwen-omni-turbo").voice("Serena") is not None


def test_output_languages() -> None:
    assert [lang.value for lang in TEN_LANGUAGES] == [
        "zh",
        "en",
        "fr",
        "de",
        "ru",
        "it",
        "es",
        "pt",
        "ja",
        "ko",
    ]
    assert ZH_EN == (Language.ZH, Language.EN)
    for name in FLASH_NAMES:
        assert spec(name).output_languages == TEN_LANGUAGES
    for name in SMALL_NAMES:
        assert spec(name).output_languages == ZH_EN


# -- media, tokens, prices, limits ---------------------------------------------------------


@pytest.mark.parametrize("name", FLASH_NAMES)
def test_flash_media_limits(name: str) -> None:
    media = spec(name).media
    assert media.image_max_bytes == 10 * MB
    assert media.image_min_side == 10
    assert media.image_max_aspect == 200
    assert (media.audio_max_bytes, media.audio_max_seconds) == (100 * MB, 20 * 60)
    assert (media.video_max_bytes, media.video_max_seconds) == (256 * MB, 150)
    assert (media.frames_min, media.frames_max) == (2, 128)
    assert (media.audio_per_request, media.video_per_request) == (1, 1)
    assert media.data_uri_max_bytes == 10_485_760


@pytest.mark.parametrize("name", SMALL_NAMES)
def test_turbo_media_limits(name: str) -> None:
    media = spec(name).media
    assert media.image_max_bytes == 10 * MB
    assert media.image_min_side == 10
    assert media.image_max_aspect == 200
    assert (media.audio_max_bytes, media.audio_max_seconds) == (10 * MB, 3 * 60)
    assert (media.video_max_bytes, media.video_max_seconds) == (150 * MB, 40)
    assert (media.frames_min, media.frames_max) == (4, 80)
    assert (media.audio_per_request, media.video_per_request) == (1, 1)
    assert media.data_uri_max_bytes == 10_485_760


def test_token_factors() -> None:
    for name in FLASH_NAMES:
        tokens = spec(name).tokens
        assert tokens.image_factor == 32
        assert tokens.audio_tokens_per_second == 12.5
        assert tokens.output_audio_tokens_per_second == 12.5
    for name in SMALL_NAMES:
        tokens = spec(name).tokens
        assert tokens.image_factor == 28
        assert tokens.audio_tokens_per_second == 25
        assert tokens.output_audio_tokens_per_second == 25
    for model in CATALOG:
        tokens = model.tokens
        assert (tokens.image_min_tokens, tokens.image_max_tokens) == (4, 1280)
        assert tokens.video_fps == 2.0
        assert tokens.audio_output_prompt_tokens == 196  # 207 - 11 for "你是谁？"


def test_flash_prices() -> None:
    for name in FLASH_NAMES:
        beijing, singapore = spec(name).prices
        assert (beijing.region, beijing.currency) == ("cn-beijing", "CNY")
        assert (
            beijing.input_text,
            beijing.input_audio,
            beijing.input_image_video,
            beijing.output_text,
            beijing.output_text_multimodal_input,
            beijing.output_audio,
        ) == (1.8, 15.8, 3.3, 6.9, 12.7, 62.6)
        assert (singapore.region, singapore.currency) == ("ap-southeast-1", "USD")
        assert (
            singapore.input_text,
            singapore.input_audio,
            singapore.input_image_video,
            singapore.output_text,
            singapore.output_text_multimodal_input,
            singapore.output_audio,
        ) == (0.43, 3.81, None, 1.66, 3.06, 15.11)


def test_turbo_prices() -> None:
    for name in TURBO_NAMES:
        beijing, singapore = spec(name).prices
        assert (beijing.region, beijing.currency) == ("cn-beijing", "CNY")
        assert (
            beijing.input_text,
            beijing.input_audio,
            beijing.input_image_video,
            beijing.output_text,
            beijing.output_text_multimodal_input,
            beijing.output_audio,
        ) == (0.4, 25.0, 1.5, 1.6, 4.5, 50.0)
        assert singapore.region == "ap-southeast-1"
        assert (
            singapore.input_text,
            singapore.input_audio,
            singapore.input_image_video,
            singapore.output_text,
            singapore.output_text_multimodal_input,
            singapore.output_audio,
        ) == (0.07, 4.44, 0.21, 0.27, 0.63, 8.89)
    assert spec(OPEN_NAME).prices == ()


def test_rate_limits_and_free_quota() -> None:
    for model in CATALOG:
        assert model.rate_limits.requests_per_minute == 60
        assert model.rate_limits.tokens_per_minute == 100_000
        assert model.free_quota_tokens == 1_000_000


def test_system_prompt_with_audio() -> None:
    """Turbo silently ignores a system message when it speaks; the others honour it."""
    for name in TURBO_NAMES:
        assert not spec(name).system_prompt_with_audio
    for name in (*FLASH_NAMES, OPEN_NAME):
        assert spec(name).system_prompt_with_audio


# -- lookups -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qwen-omni-plus", "Qwen3-Omni-Flash", "qwen3-omni-flash ", ""])
def test_unknown_model(name: str) -> None:
    with pytest.raises(ModelNotFound) as info:
        CATALOG.get(name)
    err = info.value
    assert err.status == 404
    assert (err.code, err.type) == ("model_not_found", "invalid_request_error")
    assert err.message == f"The model {name} does not exist or you do not have access to it."
    assert err.param == "model"


def test_restricted_to() -> None:
    small = CATALOG.restricted_to(["qwen2.5-omni-7b", "qwen-omni-turbo"])
    assert small.names() == ["qwen2.5-omni-7b", "qwen-omni-turbo"]
    assert small.get("qwen-omni-turbo") is CATALOG.get("qwen-omni-turbo")
    assert "qwen3-omni-flash" not in small
    with pytest.raises(ModelNotFound):
        small.get("qwen3-omni-flash")
    assert CATALOG.restricted_to([]).names() == []
    assert len(CATALOG.names()) == 9  # the original is untouched


def test_restricted_to_an_unknown_model() -> None:
    with pytest.raises(ModelNotFound, match="The model nope does not exist"):
        CATALOG.restricted_to(["qwen-omni-turbo", "nope"])


def test_duplicate_names_are_rejected() -> None:
    models = build_models()
    with pytest.raises(ValueError, match="duplicate model name 'qwen-omni-turbo'"):
        Catalog([*models, spec("qwen-omni-turbo")])
    with pytest.raises(ValueError, match="duplicate model name"):
        CATALOG.restricted_to(["qwen-omni-turbo", "qwen-omni-turbo"])


def test_a_realtime_model_is_answered_by_the_chat_model_served() -> None:
    from omniserve.catalog import REALTIME_MODELS

    flash = REALTIME_MODELS["qwen3-omni-flash-realtime"]
    catalog = Catalog.default()
    assert flash.served_by(catalog) is flash  # its own snapshot
    only_stable = catalog.restricted_to(["qwen3-omni-flash"])
    served = flash.served_by(only_stable)
    assert served is not None and served.chat == "qwen3-omni-flash"
    assert flash.served_by(catalog.restricted_to(["qwen-omni-turbo"])) is None
    turbo = REALTIME_MODELS["qwen-omni-turbo-realtime"]
    assert turbo.served_by(catalog.restricted_to(["qwen-omni-turbo-latest"])).chat == (  # type: ignore[union-attr]
        "qwen-omni-turbo-latest"
    )

"""Catalog voices as espeak-ng settings, so every named voice sounds like itself.

Each voice name has a fixed row (variant, pitch, speed, amplitude) chosen from its description;
gender picks the variant family. espeak-ng has no Shanghainese, Sichuanese, Minnan, Shaanxi,
Nanjing, Tianjin or Beijing voice: those dialect voices read Mandarin with a character of their
own. Cantonese voices read Cantonese (``yue``). ``hak`` is Hakka, not Minnan.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from omniserve.catalog import Language, ModelSpec, Voice, build_models

# Mandarin is "cmn-latn-pinyin", not "cmn": espeak-ng 1.51's "cmn" speaks each character's
# tone number as an English digit ("jin one tian one", espeak-ng issues #1028 and #1370).
ESPEAK_LANGUAGES: dict[Language, str] = {
    Language.ZH: "cmn-latn-pinyin",
    Language.EN: "en-us",
    Language.FR: "fr-fr",
    Language.DE: "de",
    Language.RU: "ru",
    Language.IT: "it",
    Language.ES: "es",
    Language.PT: "pt-br",
    Language.JA: "ja",
    Language.KO: "ko",
}

_DIALECT_LANGUAGES: dict[str, str] = {"Cantonese": "yue"}


@dataclass(frozen=True)
class EspeakVoice:
    """How espeak-ng reads one sentence.

    espeak-ng 1.51 has no pitch-range flag (``-P``), so range comes only from the variant.
    """

    language: str  # espeak voice name: "cmn-latn-pinyin", "yue", "en-us"...
    variant: str  # espeak variant: "f1".."f5", "m1".."m7"
    pitch: int = 50  # 0..99
    speed: int = 175  # words per minute, 80..450
    amplitude: int = 100  # 0..200

    def __post_init__(self) -> None:
        if not 0 <= self.pitch <= 99:
            raise ValueError(f"pitch must be 0..99, not {self.pitch}")
        if not 80 <= self.speed <= 450:
            raise ValueError(f"speed must be 80..450 words a minute, not {self.speed}")
        if not 0 <= self.amplitude <= 200:
            raise ValueError(f"amplitude must be 0..200, not {self.amplitude}")

    @property
    def name(self) -> str:
        return f"{self.language}+{self.variant}"

    def args(self) -> list[str]:
        """The espeak-ng command-line flags for these settings."""
        return [
            "-v",
            self.name,
            "-p",
            str(self.pitch),
            "-s",
            str(self.speed),
            "-a",
            str(self.amplitude),
        ]


@dataclass(frozen=True)
class _Character:
    variant: str
    pitch: int
    speed: int
    amplitude: int = 100


# One row per voice name, after the vendor's description of the voice.
_CHARACTERS: dict[str, _Character] = {
    # female
    "Cherry": _Character("f3", 62, 175),  # sunny, friendly young woman
    "Serena": _Character("f2", 55, 160, 90),  # gentle
    "Chelsie": _Character("f5", 76, 182),  # anime-style girlfriend
    "Jennifer": _Character("f4", 48, 165, 110),  # cinematic American English
    "Katerina": _Character("f1", 38, 148, 115),  # mature, commanding, lingering
    "Jada": _Character("f2", 64, 198),  # brisk Shanghai lady
    "Sunny": _Character("f5", 70, 168),  # sweet Sichuan girl
    "Kiki": _Character("f3", 70, 182),  # sweet Hong Kong friend
    "Momo": _Character("f4", 66, 186),
    "Vivian": _Character("f1", 56, 172),
    # male
    "Ethan": _Character("m3", 50, 176),  # warm, lively northern Mandarin
    "Nofish": _Character("m2", 55, 182),  # designer without retroflexes
    "Ryan": _Character("m7", 45, 164, 115),  # rhythmic, dramatic
    "Elias": _Character("m1", 42, 152),  # lecturer
    "Dylan": _Character("m4", 53, 192),  # Beijing hutong youth
    "Li": _Character("m6", 36, 142, 90),  # patient yoga teacher
    "Marcus": _Character("m5", 30, 150, 110),  # few words, steady Shaanxi
    "Roy": _Character("m2", 62, 188),  # witty Taiwanese guy
    "Peter": _Character("m3", 58, 204),  # Tianjin crosstalk straight man
    "Rocky": _Character("m4", 47, 180),  # humorous Cantonese A-Qiang
    "Eric": _Character("m7", 57, 194),  # lively Chengdu man
    "Aiden": _Character("m1", 50, 170),
}

_FALLBACK = {"female": _Character("f1", 55, 175), "male": _Character("m1", 45, 175)}


def known_voice_names() -> frozenset[str]:
    """Voice names that have their own settings row."""
    return frozenset(_CHARACTERS)


def voice_settings(voice: Voice, language: Language) -> EspeakVoice:
    """The espeak-ng settings that read ``language`` text in ``voice``."""
    character = _CHARACTERS.get(voice.name) or _FALLBACK.get(voice.gender, _FALLBACK["female"])
    espeak_language = ESPEAK_LANGUAGES[language]
    if language is Language.ZH and voice.dialect is not None:
        espeak_language = _DIALECT_LANGUAGES.get(voice.dialect, espeak_language)
    return EspeakVoice(
        language=espeak_language,
        variant=character.variant,
        pitch=character.pitch,
        speed=character.speed,
        amplitude=character.amplitude,
    )


@dataclass(frozen=True)
class VoiceRow:
    """One line of ``omniserve voices``: a catalog voice and how espeak-ng reads it."""

    name: str
    display_name: str
    gender: str
    dialect: str  # "" for standard Mandarin
    chinese: str  # the espeak voice for Chinese text, e.g. "yue+m4"
    variant: str  # the variant every language is read with, e.g. "m4"
    pitch: int
    speed: int
    amplitude: int
    models: tuple[str, ...]


def espeak_voice_table(models: Iterable[ModelSpec] | None = None) -> list[VoiceRow]:
    """One row per voice name across ``models`` (the whole catalog by default)."""
    voices: dict[str, Voice] = {}
    served_by: dict[str, list[str]] = {}
    for model in build_models() if models is None else models:
        for voice in model.voices:
            voices.setdefault(voice.name, voice)
            served_by.setdefault(voice.name, []).append(model.name)
    rows = []
    for name, voice in voices.items():
        zh = voice_settings(voice, Language.ZH)
        rows.append(
            VoiceRow(
                name=name,
                display_name=voice.display_name,
                gender=voice.gender,
                dialect=voice.dialect or "",
                chinese=zh.name,
                variant=zh.variant,
                pitch=zh.pitch,
                speed=zh.speed,
                amplitude=zh.amplitude,
                models=tuple(served_by[name]),
            )
        )
    return rows

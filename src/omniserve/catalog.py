"""The model catalog: every served model, its aliases, limits, voices, token factors and prices.

Every rule that depends on the model reads from here and nowhere else. Figures come from the
vendor's Qwen-Omni documentation (models, voices, media limits, token formulas, rate limits,
prices); where the vendor is silent the gap-filler is named in the field's comment.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum

from omniserve.errors import ModelNotFound


class Language(StrEnum):
    """Output languages, as ISO 639-1 codes."""

    ZH = "zh"
    EN = "en"
    FR = "fr"
    DE = "de"
    RU = "ru"
    IT = "it"
    ES = "es"
    PT = "pt"
    JA = "ja"
    KO = "ko"


LANGUAGE_NAMES: dict[Language, str] = {
    Language.ZH: "Chinese",
    Language.EN: "English",
    Language.FR: "French",
    Language.DE: "German",
    Language.RU: "Russian",
    Language.IT: "Italian",
    Language.ES: "Spanish",
    Language.PT: "Portuguese",
    Language.JA: "Japanese",
    Language.KO: "Korean",
}

TEN_LANGUAGES: tuple[Language, ...] = tuple(Language)
ZH_EN: tuple[Language, ...] = (Language.ZH, Language.EN)


@dataclass(frozen=True)
class Voice:
    """A named voice as the API exposes it."""

    name: str
    display_name: str
    description: str
    gender: str  # "female" | "male"
    languages: tuple[Language, ...]
    dialect: str | None = None  # the Chinese dialect this voice speaks instead of Mandarin


@dataclass(frozen=True)
class ModeLimits:
    """Token limits of one mode (thinking or not) of a model."""

    context: int
    max_input: int
    max_output: int
    max_reasoning: int | None = None


@dataclass(frozen=True)
class MediaLimits:
    """Input media rules; sizes in bytes, durations in seconds."""

    image_max_bytes: int = 10 * 1024 * 1024
    image_min_side: int = 10  # both sides must be larger than this
    image_max_aspect: float = 200.0
    audio_max_bytes: int = 100 * 1024 * 1024
    audio_max_seconds: float = 20 * 60
    audio_per_request: int = 1
    video_max_bytes: int = 256 * 1024 * 1024
    video_max_seconds: float = 150
    video_per_request: int = 1
    frames_min: int = 2
    frames_max: int = 128
    data_uri_max_bytes: int = 10_485_760


@dataclass(frozen=True)
class TokenFactors:
    """How media and speech turn into tokens (vendor billing formulas)."""

    image_factor: int  # pixels per token side: 32 for qwen3-omni, 28 for turbo and Qwen2.5
    image_min_tokens: int = 4
    image_max_tokens: int = 1280
    audio_tokens_per_second: float = 12.5  # input audio; under one second counts as one
    output_audio_tokens_per_second: float = 12.5
    video_fps: float = 2.0
    # Tokens the vendor bills for its hidden voice-mode system prompt whenever audio output is on
    # ("你是谁？" bills 207 prompt tokens with audio against 11 without).
    audio_output_prompt_tokens: int = 196


@dataclass(frozen=True)
class Price:
    """Price per million tokens in one region; ``None`` where the vendor publishes none."""

    region: str
    currency: str
    input_text: float
    input_audio: float
    input_image_video: float | None
    output_text: float  # text out for text-only input
    output_text_multimodal_input: float  # text out when the input had image, audio or video
    output_audio: float  # per audio token; the text that goes with audio is then free


@dataclass(frozen=True)
class RateLimits:
    requests_per_minute: int = 60
    tokens_per_minute: int = 100_000


@dataclass(frozen=True)
class ModelSpec:
    """One servable model name and everything the rules need about it."""

    name: str
    family: str
    version: str  # "stable" | "latest" | "snapshot" | "open"
    description: str
    limits: ModeLimits
    thinking_limits: ModeLimits | None  # None: the model has no thinking mode
    voices: tuple[Voice, ...]
    default_voice: str
    output_languages: tuple[Language, ...]
    media: MediaLimits
    tokens: TokenFactors
    prices: tuple[Price, ...] = ()
    rate_limits: RateLimits = field(default_factory=RateLimits)
    snapshot: str | None = None  # the dated snapshot this alias currently points to
    system_prompt_with_audio: bool = True  # turbo silently ignores system messages with audio
    audio_output: bool = True  # False where the served weights have no talker
    # A captioner: every request's last user message carries one input_audio part.
    audio_input_required: bool = False
    video_input: bool = True  # False where the server behind it takes no video
    free_quota_tokens: int | None = 1_000_000  # Beijing region, 90 days

    @property
    def supports_thinking(self) -> bool:
        return self.thinking_limits is not None

    def mode_limits(self, thinking: bool) -> ModeLimits:
        if thinking and self.thinking_limits is not None:
            return self.thinking_limits
        return self.limits

    def voice(self, name: str) -> Voice | None:
        for voice in self.voices:
            if voice.name == name:
                return voice
        return None

    @property
    def voice_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.voices)


def _v(
    name: str,
    display: str,
    gender: str,
    description: str,
    languages: tuple[Language, ...] = TEN_LANGUAGES,
    dialect: str | None = None,
) -> Voice:
    return Voice(name, display, description, gender, languages, dialect)


FLASH_VOICES: tuple[Voice, ...] = (
    _v("Cherry", "芊悦", "female", "Sunny, positive, friendly and natural young woman."),
    _v("Ethan", "晨煦", "male", "Standard Mandarin with a slight northern accent; warm, lively."),
    _v("Nofish", "不吃鱼", "male", "A designer who cannot pronounce retroflex consonants."),
    _v("Jennifer", "詹妮弗", "female", "Premium, cinematic American English female voice."),
    _v("Ryan", "甜茶", "male", "Rhythmic and dramatic, realism with tension."),
    _v("Katerina", "卡捷琳娜", "female", "Mature, commanding voice with a lingering rhythm."),
    _v(
        "Elias", "墨讲师", "male", "A lecturer who turns complex knowledge into digestible stories."
    ),
    _v("Jada", "上海-阿珍", "female", "A brisk Shanghai lady.", dialect="Shanghainese"),
    _v("Dylan", "北京-晓东", "male", "A youth raised in Beijing's hutongs.", dialect="Beijing"),
    _v("Sunny", "四川-晴儿", "female", "A sweet Sichuan girl.", dialect="Sichuanese"),
    _v("Li", "南京-老李", "male", "A patient yoga teacher.", dialect="Nanjing"),
    _v(
        "Marcus",
        "陕西-秦川",
        "male",
        "Broad face, few words, a steady Shaanxi voice.",
        dialect="Shaanxi",
    ),
    _v("Roy", "闽南-阿杰", "male", "A witty, straightforward Taiwanese guy.", dialect="Minnan"),
    _v(
        "Peter",
        "天津-李彼得",
        "male",
        "Tianjin crosstalk, a professional straight man.",
        dialect="Tianjin",
    ),
    _v("Rocky", "粤语-阿强", "male", "Humorous A-Qiang, here to chat.", dialect="Cantonese"),
    _v("Kiki", "粤语-阿清", "female", "A sweet Hong Kong best friend.", dialect="Cantonese"),
    _v("Eric", "四川-程川", "male", "A lively man from Chengdu, Sichuan.", dialect="Sichuanese"),
)

# The 2025-12-01 snapshot has 49 voices; these are the ones the vendor's pages name.
FLASH_1201_EXTRA_VOICES: tuple[Voice, ...] = (
    _v("Serena", "苏瑶", "female", "A gentle young woman."),
    _v("Chelsie", "千雪", "female", "A virtual anime-style girlfriend."),
    _v("Aiden", "Aiden", "male", "Added in the 2025-12-01 snapshot."),
    _v("Momo", "Momo", "female", "Added in the 2025-12-01 snapshot."),
    _v("Vivian", "Vivian", "female", "Added in the 2025-12-01 snapshot."),
)

TURBO_VOICES: tuple[Voice, ...] = (
    _v("Cherry", "芊悦", "female", "Sunny, positive, friendly and natural young woman.", ZH_EN),
    _v("Serena", "苏瑶", "female", "A gentle young woman.", ZH_EN),
    _v(
        "Ethan",
        "晨煦",
        "male",
        "Standard Mandarin with a slight northern accent; warm, lively.",
        ZH_EN,
    ),
    _v("Chelsie", "千雪", "female", "A virtual anime-style girlfriend.", ZH_EN),
)

OPEN_VOICES: tuple[Voice, ...] = (
    _v(
        "Ethan",
        "晨煦",
        "male",
        "Standard Mandarin with a slight northern accent; warm, lively.",
        ZH_EN,
    ),
    _v("Chelsie", "千雪", "female", "A virtual anime-style girlfriend.", ZH_EN),
)

FLASH_LIMITS = ModeLimits(context=65_536, max_input=49_152, max_output=16_384)
FLASH_THINKING_LIMITS = ModeLimits(
    context=65_536, max_input=16_384, max_output=16_384, max_reasoning=32_768
)
TURBO_LIMITS = ModeLimits(context=32_768, max_input=30_720, max_output=2_048)

FLASH_MEDIA = MediaLimits()
TURBO_MEDIA = MediaLimits(
    audio_max_bytes=10 * 1024 * 1024,
    audio_max_seconds=3 * 60,
    video_max_bytes=150 * 1024 * 1024,
    video_max_seconds=40,
    frames_min=4,
    frames_max=80,
)

FLASH_TOKENS = TokenFactors(
    image_factor=32, audio_tokens_per_second=12.5, output_audio_tokens_per_second=12.5
)
TURBO_TOKENS = TokenFactors(
    image_factor=28, audio_tokens_per_second=25.0, output_audio_tokens_per_second=25.0
)

FLASH_PRICES = (
    Price("cn-beijing", "CNY", 1.8, 15.8, 3.3, 6.9, 12.7, 62.6),
    Price("ap-southeast-1", "USD", 0.43, 3.81, None, 1.66, 3.06, 15.11),
)
TURBO_PRICES = (
    Price("cn-beijing", "CNY", 0.4, 25.0, 1.5, 1.6, 4.5, 50.0),
    Price("ap-southeast-1", "USD", 0.07, 4.44, 0.21, 0.27, 0.63, 8.89),
)


def _flash(name: str, version: str, voices: tuple[Voice, ...], snapshot: str | None) -> ModelSpec:
    return ModelSpec(
        name=name,
        family="qwen3-omni-flash",
        version=version,
        description="Qwen3-Omni-Flash: hybrid thinking, 10 speech languages, dialect voices.",
        limits=FLASH_LIMITS,
        thinking_limits=FLASH_THINKING_LIMITS,
        voices=voices,
        default_voice="Cherry",
        output_languages=TEN_LANGUAGES,
        media=FLASH_MEDIA,
        tokens=FLASH_TOKENS,
        prices=FLASH_PRICES,
        snapshot=snapshot,
    )


def _turbo(name: str, version: str, snapshot: str | None) -> ModelSpec:
    return ModelSpec(
        name=name,
        family="qwen-omni-turbo",
        version=version,
        description="Qwen-Omni-Turbo (frozen): Chinese and English speech, four voices.",
        limits=TURBO_LIMITS,
        thinking_limits=None,
        voices=TURBO_VOICES,
        default_voice="Cherry",
        output_languages=ZH_EN,
        media=TURBO_MEDIA,
        tokens=TURBO_TOKENS,
        prices=TURBO_PRICES,
        snapshot=snapshot,
        system_prompt_with_audio=False,
    )


FLASH_0915 = "qwen3-omni-flash-2025-09-15"
FLASH_1201 = "qwen3-omni-flash-2025-12-01"
FLASH_ALIAS_TARGETS = (FLASH_0915, FLASH_1201)


def build_models(flash_alias_target: str = FLASH_0915) -> tuple[ModelSpec, ...]:
    """All models; ``qwen3-omni-flash`` copies the snapshot named by ``flash_alias_target``."""
    if flash_alias_target not in FLASH_ALIAS_TARGETS:
        raise ValueError(
            f"qwen3-omni-flash can point to {' or '.join(FLASH_ALIAS_TARGETS)}, "
            f"not {flash_alias_target!r}"
        )
    flash_1201_voices = FLASH_VOICES + FLASH_1201_EXTRA_VOICES
    alias_voices = FLASH_VOICES if flash_alias_target == FLASH_0915 else flash_1201_voices
    return (
        _flash("qwen3-omni-flash", "stable", alias_voices, flash_alias_target),
        _flash(FLASH_0915, "snapshot", FLASH_VOICES, None),
        _flash("qwen3-omni-flash-0915", "snapshot", FLASH_VOICES, FLASH_0915),
        _flash(FLASH_1201, "snapshot", flash_1201_voices, None),
        _turbo("qwen-omni-turbo", "stable", "qwen-omni-turbo-2025-03-26"),
        _turbo("qwen-omni-turbo-latest", "latest", "qwen-omni-turbo-2025-03-26"),
        _turbo("qwen-omni-turbo-2025-03-26", "snapshot", None),
        _turbo("qwen-omni-turbo-2025-01-19", "snapshot", None),
        ModelSpec(
            name="qwen2.5-omni-7b",
            family="qwen2.5-omni",
            version="open",
            description="Qwen2.5-Omni-7B, the open-weights model: Chinese and English speech.",
            limits=TURBO_LIMITS,
            thinking_limits=None,
            voices=OPEN_VOICES,
            default_voice="Chelsie",
            output_languages=ZH_EN,
            media=TURBO_MEDIA,
            tokens=TURBO_TOKENS,
            prices=(),
        ),
    )


class Catalog:
    """Looks models up by name; names are exact, as the vendor's are."""

    def __init__(self, models: Iterable[ModelSpec]) -> None:
        self._models: dict[str, ModelSpec] = {}
        for model in models:
            if model.name in self._models:
                raise ValueError(f"duplicate model name {model.name!r}")
            self._models[model.name] = model

    @classmethod
    def default(cls, flash_alias_target: str = FLASH_0915) -> Catalog:
        return cls(build_models(flash_alias_target))

    def get(self, name: str) -> ModelSpec:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFound(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._models.values())

    def names(self) -> list[str]:
        return list(self._models)

    def restricted_to(self, names: Iterable[str]) -> Catalog:
        """The same catalog limited to ``names`` (a deployment that serves only some models)."""
        wanted = list(names)
        return Catalog(self.get(n) for n in wanted)


@dataclass(frozen=True)
class RealtimeModel:
    """A model of the realtime API: the chat model that answers its turns, and its own
    defaults where they differ from the chat API's."""

    name: str
    chat: str  # the chat model each turn runs on (its limits, voices, prices)
    default_voice: str
    output_audio_format: str  # what session.created names the 24 kHz PCM16 output

    def served_by(self, catalog: Catalog) -> RealtimeModel | None:
        """This model answered by a chat model ``catalog`` serves: its own snapshot, else its
        family's stable name (an engine of open weights serving ``qwen3-omni-flash``), or
        None."""
        family = self.name.split("-realtime")[0]
        for name in (self.chat, family, f"{family}-latest"):
            if name in catalog:
                return self if name == self.chat else replace(self, chat=name)
        return None


REALTIME_MODELS: dict[str, RealtimeModel] = {
    m.name: m
    for m in (
        RealtimeModel(
            "qwen3-omni-flash-realtime", "qwen3-omni-flash-2025-12-01", "Cherry", "pcm24"
        ),
        RealtimeModel(
            "qwen3-omni-flash-realtime-2025-12-01", "qwen3-omni-flash-2025-12-01", "Cherry", "pcm24"
        ),
        RealtimeModel(
            "qwen3-omni-flash-realtime-2025-09-15", "qwen3-omni-flash-2025-09-15", "Cherry", "pcm24"
        ),
        RealtimeModel("qwen-omni-turbo-realtime", "qwen-omni-turbo", "Chelsie", "pcm16"),
        RealtimeModel(
            "qwen-omni-turbo-realtime-latest", "qwen-omni-turbo-latest", "Chelsie", "pcm16"
        ),
        RealtimeModel(
            "qwen-omni-turbo-realtime-2025-05-08", "qwen-omni-turbo-latest", "Chelsie", "pcm16"
        ),
    )
}

"""Built-in speech for engines without a voice of their own: PCM16 mono 24 kHz, by sentence."""

from omniserve.speech.language import detect_language
from omniserve.speech.pcm import (
    CHUNK_ALIGN,
    chunk_bytes_for,
    chunk_pcm,
    duration_seconds,
    parse_wav,
    resample_pcm16,
    wav_bytes,
)
from omniserve.speech.priority import PrioritySemaphore
from omniserve.speech.segmenter import SentenceSegmenter
from omniserve.speech.stream import speak_along
from omniserve.speech.synth import (
    EspeakSynthesizer,
    SpeechError,
    Synthesizer,
    ToneSynthesizer,
    make_synthesizer,
)
from omniserve.speech.voices import (
    ESPEAK_LANGUAGES,
    EspeakVoice,
    VoiceRow,
    espeak_voice_table,
    voice_settings,
)

__all__ = [
    "CHUNK_ALIGN",
    "ESPEAK_LANGUAGES",
    "EspeakSynthesizer",
    "EspeakVoice",
    "PrioritySemaphore",
    "SentenceSegmenter",
    "SpeechError",
    "Synthesizer",
    "ToneSynthesizer",
    "VoiceRow",
    "chunk_bytes_for",
    "chunk_pcm",
    "detect_language",
    "duration_seconds",
    "espeak_voice_table",
    "make_synthesizer",
    "parse_wav",
    "resample_pcm16",
    "speak_along",
    "voice_settings",
    "wav_bytes",
]
